"""``TumourConditioner``: the pipeline component that knows what a trained SBLDM was
conditioned on, so that a saved pipeline folder is diffusers' own layout and nothing
else (``model_index.json`` plus one sub-folder per component).

Its config holds the feature normaliser (``sbldm.data.tumour.FeatureNormalizer``), the
training tumours' 9 features (the distribution conditions are drawn from when none are
given), the volume shape the pipeline generates, the training grid's voxel-to-world
affine, where the training brains have brain tissue (``brain_support`` on the latent
grid, bit-packed: a requested centre outside it is refused) and, for a pipeline trained
with ``condition_subregions``, the training tumours' sub-region shares with their mean and
std (``subregions``, ``sbldm.diffusion.unet_inputs.subregion_stats``). It has no weights: diffusers saves components that are models or schedulers, so
it is a parameter-free ``ModelMixin`` that saves and loads its config alone. (What the
UNet is given from these, and the checks on requested conditions, are
``sbldm.diffusion.unet_inputs``.) Saved pipelines name this module in their
``model_index.json``: it keeps its name.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from sbldm import _compat  # noqa: F401  (before diffusers: keeps torchvision out)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from sbldm.data.tumour import FeatureNormalizer, as_matrix


def pack_mask(mask) -> dict:
    """A boolean array as JSON: its shape and its bits (``np.packbits``, base64)."""
    import base64

    m = np.asarray(mask, bool)
    return {"shape": [int(s) for s in m.shape], "bits": base64.b64encode(np.packbits(m.ravel())).decode("ascii")}


def unpack_mask(packed: dict) -> np.ndarray:
    import base64

    shape = tuple(int(s) for s in packed["shape"])
    bits = np.unpackbits(np.frombuffer(base64.b64decode(packed["bits"]), np.uint8))
    return bits[:int(np.prod(shape))].reshape(shape).astype(bool)


def _check_affine(affine) -> np.ndarray:
    a = np.asarray(affine, np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ValueError(f"affine must be a finite, invertible 4x4 voxel-to-world matrix, got {a.tolist()}")
    return a


class TumourConditioner(ModelMixin, ConfigMixin):
    """Normaliser, training features, volume shape, grid affine and brain support of a
    pipeline (each may be None: an untrained pipeline knows only its shape)."""

    @register_to_config
    def __init__(self, volume_shape: Sequence[int] | None = None, normalizer: dict | None = None,
                 train_features: list | None = None, affine: list | None = None, brain_support: dict | None = None,
                 subregions: dict | None = None):
        super().__init__()
        # no weights, but diffusers asks every component for its dtype and device: a scalar
        # that moves with the pipeline answers (not saved)
        self.register_buffer("anchor", torch.zeros(()), persistent=False)
        self._normalizer = None if normalizer is None else FeatureNormalizer.from_dict(normalizer)
        self._features = None if train_features is None else as_matrix(np.asarray(train_features, np.float64))
        self._affine = None if affine is None else _check_affine(affine)
        self._brain = None if brain_support is None else unpack_mask(brain_support)
        self._subregions = None
        if subregions is not None:
            from sbldm.diffusion.unet_inputs import subregion_stats

            self._subregions = subregion_stats(subregions["train"])
        if volume_shape is not None and len(volume_shape) != 3:
            raise ValueError(f"volume_shape must be (x, y, z), got {volume_shape}")

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """Its config is all it has: ``save_directory/config.json``."""
        os.makedirs(save_directory, exist_ok=True)
        self.save_config(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None, **kwargs):
        """Read back from ``config.json`` (diffusers passes loading options such as
        ``torch_dtype``: there are no weights for them to apply to)."""
        path = os.path.join(os.fspath(pretrained_model_name_or_path), subfolder or "")
        return cls.from_config(cls.load_config(path))

    @classmethod
    def build(cls, volume_shape=None, normalizer: FeatureNormalizer | None = None, train_features=None,
              affine=None, brain_support=None, subregions: dict | None = None) -> "TumourConditioner":
        """From Python objects (a ``FeatureNormalizer``, arrays) rather than their JSON forms."""
        return cls(volume_shape=None if volume_shape is None else [int(s) for s in volume_shape],
                   normalizer=None if normalizer is None else normalizer.to_dict(),
                   train_features=None if train_features is None
                   else as_matrix(np.asarray(train_features, np.float64)).tolist(),
                   affine=None if affine is None else _check_affine(affine).tolist(),
                   brain_support=None if brain_support is None else pack_mask(brain_support),
                   subregions=None if subregions is None else {"train": np.asarray(subregions["train"]).tolist()})

    def updated(self, **changes) -> "TumourConditioner":
        """A copy with some of ``volume_shape``, ``normalizer``, ``train_features``, ``affine``,
        ``brain_support``, ``subregions`` replaced."""
        now = {"volume_shape": self.volume_shape, "normalizer": self.normalizer,
               "train_features": self.train_features, "affine": self.affine, "brain_support": self.brain_support,
               "subregions": self.subregions}
        now.update({k: v for k, v in changes.items() if v is not None})
        return self.build(**now)

    @property
    def volume_shape(self) -> tuple[int, int, int] | None:
        s = self.config.volume_shape
        return None if s is None else tuple(int(v) for v in s)

    @property
    def normalizer(self) -> FeatureNormalizer | None:
        return self._normalizer

    @property
    def train_features(self) -> np.ndarray | None:
        return self._features

    @property
    def affine(self) -> np.ndarray | None:
        return self._affine

    @property
    def subregions(self) -> dict | None:
        """``{"train", "mean", "std"}`` of the training tumours' necrosis and enhancing shares
        for a pipeline conditioned on them (``condition_subregions``), else None."""
        return self._subregions

    @property
    def brain_support(self) -> np.ndarray | None:
        """(H', W', D) boolean map of where the training brains have brain tissue
        (``sbldm.diffusion.unet_inputs.brain_support``), or None."""
        return self._brain
