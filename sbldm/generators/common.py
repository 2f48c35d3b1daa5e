"""Pieces the 3D baselines share: volume batches, the training-data check, the output
format and the folder marker (their networks are in ``sbldm.models``, their losses in
``sbldm.training.objectives``). The baselines carry the
same tumour channels as SBLDM (``cfg.tumour_labels``): the whole-tumour mask, or the BraTS
regions WT, TC, ET decoded back to a label map."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sbldm import _compat  # noqa: F401  (before diffusers: keeps torchvision out)

from sbldm.data.cohort import from_model_space, to_model_space
from sbldm.io import atomic_write_json
# 3D-LDM folders saved before the networks moved to sbldm.models name the discriminator's class here
from sbldm.models.gan3d import Discriminator3D  # noqa: F401

#: the file that tells ``sbldm.load_generator`` which kind of generator a folder holds
MARKER = "generator.json"
#: the sub-folder of a training folder that holds the trained generator
MODEL_DIR = "model"


@dataclass
class Samples:
    """Generated volumes in sbldm's array convention: ``images`` (N, x, y, z) float32 in
    [-1, 1], ``masks`` (N, x, y, z) uint8 in {0, 1}; ``conditions`` (N, 9) normalised for a
    conditioned generator, else None (``raw_conditions``: the same in feature units); ``affine`` the training grid's voxel-to-world matrix
    where the generator knows it (``save_nifti`` uses it); ``labels`` (N, x, y, z) uint8
    sub-region label maps (1 necrosis, 2 oedema, 3 enhancing) from a generator that draws
    them, else None; ``sequences`` (N, S, x, y, z) every sequence from a generator of several
    (``images`` is then its FLAIR), with their ``modalities``, else None. ``images, masks =
    samples`` unpacks."""

    images: np.ndarray
    masks: np.ndarray
    conditions: np.ndarray | None = None
    affine: np.ndarray | None = None
    raw_conditions: np.ndarray | None = None   # the requested tumours in feature units (SBLDM)
    labels: np.ndarray | None = None
    sequences: np.ndarray | None = None
    modalities: tuple[str, ...] | None = None

    def __iter__(self):
        return iter((self.images, self.masks))

    def __len__(self) -> int:
        return len(self.images)

    def save_nifti(self, out_dir: str | os.PathLike, prefix: str = "sample", affine=None):
        from sbldm.io import save_samples_nifti

        return save_samples_nifti(out_dir, self.images, self.masks, prefix, self.affine if affine is None else affine,
                                  labels=self.labels)


def to_samples(volumes: torch.Tensor, conditions=None) -> Samples:
    """(N, C, x, y, z) model-space volumes -> ``Samples`` (``sbldm.data.cohort.from_model_space``):
    C = 2 gives whole-tumour masks, C = 4 (the BraTS regions) label maps as well."""
    images, masks, labels = from_model_space(volumes, with_labels=True)
    return Samples(images, masks, conditions, labels=labels)


def write_marker(directory: str | os.PathLike, kind: str, **info) -> None:
    atomic_write_json(Path(directory) / MARKER, {"kind": kind, "format": 1, **info})


def read_marker(directory: str | os.PathLike, kind: str | None = None) -> dict:
    """The folder's generator marker; with ``kind``, refuse a folder of another kind."""
    path = Path(directory) / MARKER
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {MARKER}; not a saved sbldm generator folder")
    meta = json.loads(path.read_text())
    if kind is not None and meta.get("kind") != kind:
        raise ValueError(f"{directory} holds a {meta.get('kind')!r} generator, not {kind!r}")
    return meta


def volume_batch(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, batch_size: int,
                 flip_prob: float = 0.0, tumour_labels: str = "whole") -> torch.Tensor:
    """(B, C, x, y, z) float32 of one training step drawn by ``rng``: random volumes in
    model space (``to_model_space`` of ``tumour_labels``: C = 2 or 4), each in-plane axis
    flipped with probability ``flip_prob`` (the authors' augmentation)."""
    idx = rng.integers(0, len(images), size=batch_size)
    xs = []
    for i in idx:
        x = to_model_space(images[int(i)], labels[int(i)], tumour_labels)
        if flip_prob > 0:
            if rng.random() < flip_prob:
                x = x[:, ::-1]
            if rng.random() < flip_prob:
                x = x[:, :, ::-1]
        xs.append(np.ascontiguousarray(x))
    return torch.from_numpy(np.stack(xs))


def check_training_data(train, tumour_labels: str = "whole",
                        volume_shape=None) -> tuple[np.ndarray, np.ndarray]:
    """(images, tumour maps) of a ``Prepared`` split (its label maps) or an ``(images,
    label maps or masks)`` pair, checked: the same (N, x, y, z) shapes, N > 0, (x, y, z)
    equal to ``volume_shape`` when given, and label maps, not binary masks, where
    ``tumour_labels="regions"`` asks for the sub-regions."""
    from sbldm.data.cohort import Prepared, check_not_a_mask

    images, labels = (train.images, train.labels) if isinstance(train, Prepared) else train
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or images.shape != labels.shape or len(images) == 0:
        raise ValueError(f"training images {images.shape} and label maps {labels.shape} must both be (N, x, y, z), "
                         "N > 0")
    if volume_shape is not None and tuple(images.shape[1:]) != tuple(volume_shape):
        raise ValueError(f"training volumes have shape {images.shape[1:]}, config says {tuple(volume_shape)}")
    check_not_a_mask(labels, tumour_labels)
    return images, labels


