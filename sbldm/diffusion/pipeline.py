"""``SBLDMPipeline``: sample conditioned (FLAIR, mask) volumes from a trained SBLDM.

    pipe = SBLDMPipeline.from_pretrained("work/small/pipeline")
    out = pipe(num_volumes=2, generator=torch.Generator().manual_seed(0))
    out.images.shape, out.masks.shape      # (2, x, y, z) float32 in [-1, 1], uint8 {0, 1}
    out.save_nifti("samples/")             # sample_000_flair.nii.gz + sample_000_seg.nii.gz, ...

Components: ``vae`` (``SliceVAE``; its config holds the latent ``scaling_factor``),
``unet`` (``ConditionedUNet3D``), ``scheduler`` (diffusers ``DDPMScheduler``, the training
schedule) and ``conditioner`` (``TumourConditioner``: the feature normaliser, the training
tumour features conditions are drawn from, the volume shape and the grid affine). A
saved folder is diffusers' layout and nothing else.

Sampling: Gaussian noise of shape (N, C, H', W', D) is denoised by DDIM
(``num_inference_steps``, ``eta``; eta=0 is deterministic given the initial noise) or
DDPM (all ``num_train_timesteps`` steps), with classifier-free guidance when
``guidance_scale != 1`` (1 gives exactly the conditional prediction, no extra pass).
The latent is multiplied back by ``latent_std`` and decoded slice by slice, each slice
told its relative position, in chunks of ``decode_chunk_size`` slices.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from sbldm import _compat  # noqa: F401  (before diffusers: keeps torchvision out)
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from sbldm.data.cohort import from_model_space
from sbldm.data.tumour import SUBREGION_FEATURES, ConditionSampler, FeatureNormalizer, as_matrix
from sbldm.diffusion.conditioner import TumourConditioner
from sbldm.diffusion.schedule import SAMPLERS, denoise, make_scheduler, sampling_scheduler
from sbldm.diffusion.unet_inputs import (check_conditions, check_normalised, check_subregions, latent_grid,
                                         render_prior, subregion_vectors)
from sbldm.io import save_samples_nifti
from sbldm.models._common import count_parameters

OLD_METADATA = "sbldm.json"      # the older layout's metadata file, refused by name


@dataclass
class SBLDMOutput(BaseOutput):
    """Sampled volumes: ``images`` (N, x, y, z) float32 in [-1, 1], ``masks`` (N, x, y, z)
    uint8 in {0, 1} (the whole tumour), ``conditions`` (N, 9) normalised and
    ``raw_conditions`` (N, 9) in feature units (None if no normaliser is known),
    ``affine`` the 4x4 voxel-to-world matrix of the training grid (None if the pipeline
    does not know it), ``labels`` (N, x, y, z) uint8 sub-region label maps (1 necrosis, 2
    oedema, 3 enhancing; ``masks == labels > 0``) from a pipeline whose VAE carries the
    BraTS regions, else None; ``subregions`` (N, 2) the necrosis and enhancing shares asked
    for, from a pipeline conditioned on them (``condition_subregions``), else None. From a
    pipeline of several sequences (``cfg.modalities``): ``sequences`` (N, S, x, y, z) float32
    in [-1, 1], every sequence in ``modalities`` order (BraTS 2023 names), with ``images``
    the FLAIR among them; else both None."""

    images: np.ndarray
    masks: np.ndarray
    conditions: np.ndarray
    raw_conditions: np.ndarray | None = None
    affine: np.ndarray | None = None
    labels: np.ndarray | None = None
    subregions: np.ndarray | None = None
    sequences: np.ndarray | None = None
    modalities: tuple[str, ...] | None = None

    def save_nifti(self, out_dir: str | os.PathLike, prefix: str = "sample", affine=None) -> list[tuple[Path, Path]]:
        """Each volume as NIfTI, on the training grid's geometry unless ``affine`` is given:
        the FLAIR and its segmentation (the label map with BraTS 2023 values where the
        pipeline draws sub-regions, else the binary whole-tumour mask). From a pipeline of
        several sequences, each volume is a BraTS 2023 case folder
        ``BraTS-<PREFIX>-<k:05d>-000/`` with every sequence (``-t1n``, ``-t1c``, ``-t2w``,
        ``-t2f``) and ``-seg``, which ``sbldm.data.cohort.find_cases`` reads back. Returns
        the (FLAIR, segmentation) paths of each volume."""
        aff = self.affine if affine is None else affine
        if self.sequences is None:
            return save_samples_nifti(out_dir, self.images, self.masks, prefix, aff, labels=self.labels)
        import re

        from sbldm.data.cohort import primary_sequence, save_case

        tag = re.sub("[^A-Z]", "", str(prefix).upper()) or "SBLDM"
        segs = self.masks if self.labels is None else self.labels
        out = []
        for k in range(len(self.sequences)):
            paths = save_case(out_dir, f"BraTS-{tag}-{k:05d}-000", dict(zip(self.modalities, self.sequences[k])),
                              segs[k], aff)
            out.append((paths[primary_sequence(self.modalities)], paths["seg"]))
        return out


def untrained_normalizer(cfg) -> FeatureNormalizer:
    """A stand-in feature normaliser for a pipeline that has seen no data: the authors'
    ``max`` normalisation against a ball of 10% of the volume, so that the conditions an
    untrained pipeline draws (``reference_random_conditions``, in [0, 1]) map to raw
    tumours inside the volume, which a UNet with a spatial prior needs."""
    n = float(np.prod(cfg.volume_shape)) * 0.1
    area = (36 * np.pi * n ** 2) ** (1 / 3)      # surface of a ball of n voxels
    return FeatureNormalizer(n, area, cfg.volume_shape, kind="max")


def _feature_dicts(conditions) -> list:
    """The feature dicts of a request given as one dict or a list of them, else []."""
    if isinstance(conditions, Mapping):
        return [conditions]
    if isinstance(conditions, (list, tuple)) and conditions and isinstance(conditions[0], Mapping):
        return list(conditions)
    return []


class SBLDMPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "unet->vae"
    _exclude_from_cpu_offload = ["conditioner"]

    def __init__(self, vae, unet, scheduler, conditioner: TumourConditioner):
        super().__init__()
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler, conditioner=conditioner)
        self._channels_last = False           # set by enable_fast_paths

    # -- what the pipeline knows besides its networks ------------------------------------

    @property
    def latent_std(self) -> float:
        """The std the latents were divided by: ``1 / vae.config.scaling_factor``."""
        return 1.0 / float(self.vae.config.scaling_factor)

    @property
    def normalizer(self) -> FeatureNormalizer | None:
        return self.conditioner.normalizer

    @property
    def train_features(self) -> np.ndarray | None:
        """(N, 9) raw features of the training tumours (conditions are drawn from them)."""
        return self.conditioner.train_features

    @property
    def volume_shape(self) -> tuple[int, int, int] | None:
        return self.conditioner.volume_shape

    @property
    def affine(self) -> np.ndarray | None:
        """Voxel -> world (mm) matrix of the training grid."""
        return self.conditioner.affine

    def set_metadata(self, latent_std: float | None = None, normalizer: FeatureNormalizer | None = None,
                     train_features=None, volume_shape: Sequence[int] | None = None,
                     affine=None, brain_support=None, subregions: dict | None = None) -> "SBLDMPipeline":
        """Set what is given (None keeps the current value): the latent scale goes to
        ``vae.config.scaling_factor``, the rest to the ``conditioner`` component."""
        if latent_std is not None:
            if not latent_std > 0:
                raise ValueError(f"latent_std must be positive, got {latent_std}")
            self.vae.register_to_config(scaling_factor=1.0 / float(latent_std))
        if any(v is not None for v in (normalizer, train_features, volume_shape, affine, brain_support, subregions)):
            self.register_modules(conditioner=self.conditioner.updated(
                volume_shape=volume_shape, normalizer=normalizer, train_features=train_features, affine=affine,
                brain_support=brain_support, subregions=subregions))
        return self

    @classmethod
    def from_components(cls, cfg, vae, unet, normalizer=None, train_features=None, latent_std: float | None = None,
                        affine=None, brain_support=None, subregions: dict | None = None):
        """``latent_std``: the latents' global std (sets ``vae.config.scaling_factor``; None keeps
        the VAE's); ``affine``: the training grid's voxel-to-world matrix (``Prepared.grid_affine``);
        ``brain_support``: where the training brains have brain
        (``sbldm.diffusion.unet_inputs.brain_support``; requested centres outside it are refused);
        ``subregions``: the training tumours' sub-region shares (``subregion_stats``) of a UNet
        conditioned on them."""
        expected = 11 if subregions is not None else 9
        if unet.config.get("cond_dim", 9) != expected:
            raise ValueError(f"the UNet takes {unet.config.get('cond_dim', 9)} condition values, but the pipeline "
                             f"would give it {expected} (sub-region shares "
                             f"{'known' if subregions is not None else 'not known'})")
        pipe = cls(vae=vae, unet=unet, scheduler=make_scheduler(cfg), conditioner=TumourConditioner())
        return pipe.set_metadata(latent_std, normalizer, train_features, cfg.volume_shape, affine, brain_support,
                                 subregions)

    @classmethod
    def from_scale(cls, scale: str, **overrides) -> "SBLDMPipeline":
        """An untrained pipeline of a preset (``overrides`` are config fields)."""
        from sbldm.config import resolve
        from sbldm.models.unet3d import latent_unet
        from sbldm.models.vae import build_vae

        cfg = resolve(scale, **overrides)
        return cls.from_components(cfg, build_vae(cfg.vae, cfg.tumour_labels), latent_unet(cfg),
                                   normalizer=untrained_normalizer(cfg))

    # -- persistence: diffusers' own (model_index.json and one folder per component) -----

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        path = Path(pretrained_model_name_or_path)
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"{path}: not a saved SBLDMPipeline folder (no model_index.json)")
        if (path / OLD_METADATA).is_file():
            raise ValueError(f"{path}: saved in the older layout that kept the latent scale, normaliser, "
                             f"training features, shape and affine in {OLD_METADATA}; sbldm now keeps the scale in "
                             "vae/config.json (scaling_factor = 1 / latent_std) and the rest in the conditioner "
                             "component. Re-save the pipeline with a current sbldm")
        # diffusers loads components only from modules already imported
        from sbldm.models import unet3d, vae  # noqa: F401

        pipe = super().from_pretrained(str(path), **kwargs)
        if "torch_dtype" not in kwargs and any(p.dtype == torch.float16 for p in pipe.unet.parameters()):
            pipe.to(torch.float32)          # weights stored in fp16 to save space (sbldm.report.ship)
        return pipe

    # -- fast paths ----------------------------------------------------------------------

    def enable_fast_paths(self, compile: bool = False, channels_last: bool = False,
                          compile_mode: str | None = None) -> "SBLDMPipeline":
        """Optional speed-ups of sampling, each off by default and measured against the plain
        path by ``python -m sbldm.runner.bench --fast-paths``:

        - ``channels_last``: the UNet's weights and the latent in ``channels_last_3d`` and the
          VAE in ``channels_last`` (often faster 3D/2D convolutions on GPU);
        - ``compile``: ``torch.compile`` of the UNet in place (its first call compiles, for
          tens of seconds; the saved weights are unchanged). ``compile_mode`` is passed on
          (e.g. ``"max-autotune"``).

        bf16 is not a switch here: wrap the call in ``torch.autocast("cuda", torch.bfloat16)``.
        Outputs agree with the plain path to floating-point rounding.
        """
        if channels_last:
            self.unet.to(memory_format=torch.channels_last_3d)
            self.vae.to(memory_format=torch.channels_last)
        self._channels_last = bool(channels_last)
        if compile:
            self.unet.compile(mode=compile_mode)
        return self

    # -- sizes ----------------------------------------------------------------------------

    def num_parameters(self) -> dict:
        n_vae, n_unet = count_parameters(self.vae), count_parameters(self.unet)
        return {"vae": n_vae, "unet": n_unet, "total": n_vae + n_unet}

    def latent_shape(self, volume_shape: Sequence[int] | None = None) -> tuple[int, int, int, int]:
        shape = volume_shape or self.volume_shape
        if shape is None:
            raise ValueError("the pipeline knows no volume shape; pass volume_shape=(x, y, z)")
        return (self.vae.config.latent_channels, *latent_grid(shape, self.vae.downsampling_factor))

    # -- conditions ----------------------------------------------------------------------------

    def prepare_conditions(self, conditions, num_volumes: int, generator=None) -> tuple[np.ndarray, np.ndarray | None]:
        """(normalised (N, 9), raw (N, 9) or None) from feature dicts, a normalised array or None.

        Feature dicts must hold exactly the 9 features (a missing or extra key is refused,
        naming it); every condition is checked (``sbldm.diffusion.unet_inputs``): NaN,
        non-positive sizes, a centre outside the volume or outside every training brain are
        refused, values outside the training range draw a warning; normalised vectors are
        mapped back to features and checked the same way. A raw-unit array passed where
        normalised vectors are expected is refused."""
        shape = self.volume_shape
        if conditions is None:
            if self.train_features is None or self.normalizer is None:
                raise ValueError("this pipeline holds no training features to draw conditions from; "
                                 "pass conditions explicitly")
            seed = generator.initial_seed() if isinstance(generator, torch.Generator) else None
            sampler = ConditionSampler(self.train_features, self.normalizer.shape)
            raw = sampler.sample(num_volumes, np.random.default_rng(seed))
            return self.normalizer.transform(raw).astype(np.float32), raw
        rows = _feature_dicts(conditions)
        if rows:
            if self.normalizer is None:
                raise ValueError("raw feature dicts need the pipeline's feature normaliser, which it lacks")
            raw = as_matrix([{k: v for k, v in r.items() if k not in SUBREGION_FEATURES} for r in rows])
            # missing and unknown keys are refused there; the sub-region shares are prepare_subregions' business
            if shape is not None:
                check_conditions(raw, shape, self.train_features, self.conditioner.brain_support)
            return self.normalizer.transform(raw).astype(np.float32), raw
        arr = np.asarray(conditions.detach().cpu() if torch.is_tensor(conditions) else conditions, dtype=np.float32)
        if self.normalizer is not None:
            arr = check_normalised(arr, self.normalizer).astype(np.float32)
        else:
            arr = np.atleast_2d(arr)
            if arr.shape[1] != 9:
                raise ValueError(f"conditions must be (N, 9) normalised vectors, got shape {arr.shape}")
        raw = self.normalizer.inverse_transform(arr) if self.normalizer is not None else None
        if raw is not None and shape is not None:      # judged like feature dicts: the same tumour, the same verdict
            check_conditions(raw, shape, self.train_features, self.conditioner.brain_support)
        return arr, raw

    def prepare_subregions(self, conditions, subregions, num_volumes: int, generator=None) -> np.ndarray | None:
        """(N, 2) necrosis and enhancing shares for a pipeline conditioned on them, else None.

        Taken from ``subregions`` ((N, 2) or one row), else from the ``necrosis_share`` and
        ``enhancing_share`` keys of feature dicts (all or none of the dicts), else drawn from
        the training tumours (seeded by ``generator``). A pipeline without the condition
        refuses them, naming the field it was trained without."""
        rows = _feature_dicts(conditions)
        given = [all(k in r for k in SUBREGION_FEATURES) for r in rows]
        partial = [any(k in r for k in SUBREGION_FEATURES) and not g for r, g in zip(rows, given)]
        stats = self.conditioner.subregions
        if stats is None:
            if subregions is not None or any(given) or any(partial):
                raise ValueError("this pipeline was trained without the sub-region condition (condition_subregions): "
                                 f"it cannot take {' or '.join(SUBREGION_FEATURES)}")
            return None
        if any(partial) or (any(given) and not all(given)):
            raise ValueError(f"give both {' and '.join(SUBREGION_FEATURES)} in every condition, or in none")
        if subregions is not None:
            shares = check_subregions(subregions)
        elif rows and all(given):
            shares = check_subregions([[float(r[k]) for k in SUBREGION_FEATURES] for r in rows])
        else:
            seed = generator.initial_seed() if isinstance(generator, torch.Generator) else None
            train = np.asarray(stats["train"])
            shares = train[np.random.default_rng([0 if seed is None else seed, 1]).integers(0, len(train), num_volumes)]
        if len(shares) == 1 and num_volumes > 1:
            shares = np.repeat(shares, num_volumes, axis=0)
        if len(shares) != num_volumes:
            raise ValueError(f"{len(shares)} sub-region share rows for {num_volumes} volumes")
        return shares

    # -- sampling ------------------------------------------------------------------------------

    def _predict(self, latents, t, cond, guidance_scale: float, drop=None, prior=None):
        """Model output; with guidance, ``cond`` (and ``prior``) are already doubled
        (conditional half, then unconditional half) and ``drop`` marks the second half, all
        built once per call of the pipeline so the loop makes no host-device copies."""
        if guidance_scale == 1.0:
            return self.unet(latents, t, cond, prior=prior)
        if drop is None:
            drop = torch.arange(2 * len(latents), device=latents.device) >= len(latents)
            cond = torch.cat([cond, cond])
            prior = None if prior is None else torch.cat([prior, prior])
        eps_c, eps_u = self.unet(torch.cat([latents, latents]), t, cond, drop_cond=drop, prior=prior).chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)

    @torch.no_grad()
    def encode(self, images, labels, progress: bool = False) -> torch.Tensor:
        """Model-space latents (N, C, H', W', D) of (image, label map) volumes (N, x, y, z): the
        slice VAE's posterior means, stacked, times ``vae.config.scaling_factor`` (what
        ``start_latents`` takes and ``decode_latents`` undoes)."""
        from sbldm.diffusion.latents import encode_volumes

        means, _ = encode_volumes(self.vae, np.asarray(images, np.float32), np.asarray(labels), progress=progress)
        return torch.from_numpy(means / np.float32(self.latent_std))

    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int = 16) -> torch.Tensor:
        """(N, C_out, x, y, z) decoded volumes from model-space latents (N, C, H', W', D)."""
        z = latents * self.latent_std
        vols = [self.vae.decode_volume(z[v], chunk=decode_chunk_size) for v in range(len(z))]   # (C_out, x, y, z) each
        return torch.stack(vols)

    def volumes(self, decoded) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(images, masks, labels, sequences) of decoded model-space volumes (``decode_latents``):
        ``sbldm.data.cohort.from_model_space`` with the VAE's image channels; from a VAE of
        several sequences ``images`` is the FLAIR (or the first sequence) and ``sequences``
        all of them (N, S, x, y, z), else ``sequences`` is None."""
        from sbldm.data.cohort import primary_sequence

        c = self.vae.image_channels
        images, masks, labels = from_model_space(decoded, with_labels=True, image_channels=c)
        if c == 1:
            return images, masks, labels, None
        names = self.vae.modalities
        return images[:, names.index(primary_sequence(names))], masks, labels, images

    @torch.no_grad()
    def __call__(self, conditions=None, num_volumes: int | None = None, num_inference_steps: int | None = None,
                 sampler: str = "ddim", eta: float = 0.0, guidance_scale: float = 1.0,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 decode_chunk_size: int = 16, output_type: str = "np", progress: bool = False,
                 volume_shape: Sequence[int] | None = None, start_latents: torch.Tensor | None = None,
                 strength: float = 1.0, subregions=None):
        """Sample volumes; see the module docstring. ``latents`` fixes the initial noise.

        ``start_latents`` (model-space latents of volumes, ``encode``) with ``strength`` in
        (0, 1] start from those volumes instead of pure noise, as diffusers' image-to-image
        pipelines do: they are noised to the timestep ``strength`` of the way into the
        schedule and denoised from there (the last ``round(strength * steps)`` steps), so
        a small strength keeps the volume and 1 forgets it.

        ``output_type``: ``"np"`` (images / masks as numpy) or ``"latent"`` (the denoised
        model-space latents as the ``images`` field, no decoding).

        ``subregions``: (N, 2) necrosis and enhancing shares of the tumour for a pipeline
        conditioned on them (``prepare_subregions``; feature dicts may carry them as keys).
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if output_type not in ("np", "latent"):
            raise ValueError(f"output_type must be 'np' or 'latent', got {output_type!r}")
        cond_np, raw = self.prepare_conditions(conditions, num_volumes or 1, generator)
        if num_volumes is None:
            num_volumes = len(cond_np)
        if len(cond_np) != num_volumes:
            if len(cond_np) == 1:
                cond_np = np.repeat(cond_np, num_volumes, axis=0)
                raw = None if raw is None else np.repeat(raw, num_volumes, axis=0)
            else:
                raise ValueError(f"{len(cond_np)} conditions for num_volumes={num_volumes}")
        shares = self.prepare_subregions(conditions, subregions, num_volumes, generator)
        unet_cond = cond_np if shares is None else np.concatenate(
            [cond_np, subregion_vectors(shares, self.conditioner.subregions)], axis=1)
        device = self._execution_device
        dtype = next(self.unet.parameters()).dtype
        cond = torch.from_numpy(unet_cond).to(device, dtype)

        sched = sampling_scheduler(self.scheduler, sampler, num_inference_steps, device)
        shape = (num_volumes, *self.latent_shape(volume_shape))
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
            latents = latents.to(device, dtype)
        if not 0.0 < float(strength) <= 1.0:
            raise ValueError(f"strength must lie in (0, 1], got {strength}")
        if start_latents is not None:
            start = torch.as_tensor(start_latents).to(device, dtype)
            if tuple(start.shape) != shape:
                raise ValueError(f"start_latents must have shape {shape}, got {tuple(start.shape)}")
            keep = max(1, round(float(strength) * len(sched.timesteps)))
            sched.timesteps = sched.timesteps[-keep:]
            latents = sched.add_noise(start, latents, sched.timesteps[:1])
        elif strength != 1.0:
            raise ValueError("strength < 1 needs start_latents (the volumes to start from)")
        if self._channels_last:
            latents = latents.contiguous(memory_format=torch.channels_last_3d)
        prior = None
        if self.unet.config.get("prior_channels", 0):
            if raw is None:
                raise ValueError("this pipeline's UNet takes a spatial prior, rendered from raw features; "
                                 "it needs its feature normaliser to read normalised conditions")
            prior = torch.from_numpy(render_prior(raw, volume_shape or self.volume_shape,
                                                  self.vae.downsampling_factor)).to(device, dtype)
        drop = None
        if guidance_scale != 1.0:
            drop = torch.arange(2 * num_volumes, device=device) >= num_volumes
            cond = torch.cat([cond, cond])
            prior = None if prior is None else torch.cat([prior, prior])
        latents = denoise(lambda x, t: self._predict(x, t, cond, float(guidance_scale), drop, prior), latents, sched,
                          eta=eta, generator=generator, progress=progress, desc="sbldm")
        if output_type == "latent":
            return SBLDMOutput(latents.float().cpu().numpy(), None, cond_np, raw, self.affine, subregions=shares)
        images, masks, labels, seqs = self.volumes(self.decode_latents(latents, decode_chunk_size))
        return SBLDMOutput(images, masks, cond_np, raw, self.affine, labels, shares, seqs,
                           None if seqs is None else self.vae.modalities)

