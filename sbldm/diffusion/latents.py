"""Slice latents stacked into 3D: the data of the diffusion stage.

Each volume (x, y, z) is encoded slice by slice (the VAE in eval mode, each slice told
its relative position) and the posterior means (and standard deviations) are stacked
back to ``Z`` of shape (C, H', W', D): depth stays the last spatial axis, as in the
authors' code. The cache holds the posterior MEAN and std, not a sample.

Latent scaling: the diffusion model works on ``Z * scaling_factor`` with
``scaling_factor = 1 / std(means over the training set)`` (the authors divided by this
"std_norm"); decoding multiplies back by ``latent_std = 1 / scaling_factor``.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sbldm.data.cohort import check_not_a_mask, from_model_space, to_model_space
from sbldm.io import atomic_save_npy, atomic_write_json


@dataclass
class Latents:
    mean: np.ndarray          # (N, C, H', W', D) float32 posterior means
    std: np.ndarray           # (N, C, H', W', D) float32 posterior standard deviations
    latent_std: float         # global std of the means (training set)
    case_ids: list | None = None

    @property
    def scaling_factor(self) -> float:
        return 1.0 / self.latent_std

    def __len__(self) -> int:
        return len(self.mean)


@contextlib.contextmanager
def _eval_mode(vae, device=None):
    """The VAE on ``device`` (if given) in eval mode, its training flag restored after."""
    if device is not None:
        vae.to(device)
    was_training = vae.training
    vae.eval()
    try:
        yield vae
    finally:
        vae.train(was_training)


@torch.no_grad()
def encode_volumes(vae, images: np.ndarray, labels: np.ndarray, batch_size: int = 32,
                   device: str | torch.device | None = None, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Posterior (mean, std) of every volume, each (N, C, H', W', D) float32. ``labels``:
    the label maps (``Prepared.labels``; a VAE of the whole tumour also takes masks);
    ``images``: (N, x, y, z), or (N, S, x, y, z) for a VAE of S sequences."""
    from tqdm.auto import tqdm

    check_volumes(vae, images, labels)
    check_not_a_mask(labels, vae.tumour_labels)
    means, stds = [], []
    with _eval_mode(vae, device):
        for v in tqdm(range(len(images)), desc="encode latents", disable=not progress):
            x = torch.from_numpy(to_model_space(images[v], labels[v], vae.tumour_labels))   # (C_in, X, Y, D)
            mu, sd = vae.encode_volume(x, chunk=batch_size)
            means.append(mu.cpu().numpy())
            stds.append(sd.cpu().numpy())
    return np.stack(means).astype(np.float32), np.stack(stds).astype(np.float32)


def check_volumes(vae, images, labels) -> None:
    """Refuse volumes a VAE cannot read: labels (N, x, y, z) and images (N, x, y, z) for a
    VAE of one sequence, (N, S, x, y, z) for one of S sequences (``vae.image_channels``)."""
    c = getattr(vae, "image_channels", 1)
    images, labels = np.shape(images), np.shape(labels)
    want = labels if c == 1 else labels[:1] + (c,) + labels[1:]
    if len(labels) != 4 or images != want:
        raise ValueError(f"images {images} and labels {labels}: this VAE reads "
                         + ("(N, x, y, z) images with (N, x, y, z) labels" if c == 1 else
                            f"(N, {c}, x, y, z) images of {c} sequences with (N, x, y, z) labels"))


def global_std(means: np.ndarray) -> float:
    """The global latent std of the training means (the authors' ``std_norm``)."""
    s = float(np.asarray(means, dtype=np.float64).std())
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"latent std is {s}; cannot scale the latents (constant or broken encoder?)")
    return s


def encode_dataset(vae, images, labels, batch_size: int = 32, device=None, case_ids=None,
                   progress: bool = True) -> Latents:
    """``Latents`` of volumes and their label maps (see ``encode_volumes``), scaled by their global std."""
    mean, std = encode_volumes(vae, images, labels, batch_size, device, progress)
    return Latents(mean, std, global_std(mean), None if case_ids is None else list(case_ids))


def save_latents(directory: str | os.PathLike, latents: Latents) -> None:
    """``mean.npy``, ``std.npy`` and ``latents.json`` (latent_std, scaling_factor, ids)."""
    d = Path(directory)
    atomic_save_npy(d / "mean.npy", latents.mean)
    atomic_save_npy(d / "std.npy", latents.std)
    atomic_write_json(d / "latents.json", {
        "latent_std": latents.latent_std, "scaling_factor": latents.scaling_factor,
        "shape": list(latents.mean.shape), "case_ids": latents.case_ids,
    })


def load_latents(directory: str | os.PathLike) -> Latents:
    d = Path(directory)
    meta_path = d / "latents.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no latent cache; encode with sbldm.diffusion.latents.encode_dataset first")
    meta = json.loads(meta_path.read_text())
    return Latents(np.load(d / "mean.npy"), np.load(d / "std.npy"), float(meta["latent_std"]), meta.get("case_ids"))


@torch.no_grad()
def reconstruct_volumes(vae, images: np.ndarray, labels: np.ndarray, batch_size: int = 32, device=None,
                        progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """VAE reconstructions through the posterior mean of volumes and their label maps:
    (images (N, x, y, z) float32 in [-1, 1] — (N, S, x, y, z) for a VAE of S sequences —,
    masks (N, x, y, z) uint8, the decoded whole-tumour channel thresholded at 0, label maps
    (N, x, y, z) uint8 or None for a VAE of the whole tumour only;
    ``sbldm.data.cohort.from_model_space``)."""
    from tqdm.auto import tqdm

    check_volumes(vae, images, labels)
    out_i, out_m, out_l = [], [], []
    with _eval_mode(vae, device):
        for v in tqdm(range(len(images)), desc="reconstruct", disable=not progress):
            x = torch.from_numpy(to_model_space(images[v], labels[v], vae.tumour_labels))
            mean, _ = vae.encode_volume(x, chunk=batch_size)
            image, mask, lab = from_model_space(vae.decode_volume(mean, chunk=batch_size), with_labels=True,
                                                image_channels=getattr(vae, "image_channels", 1))
            out_i.append(image)
            out_m.append(mask)
            out_l.append(lab)
    return np.stack(out_i), np.stack(out_m), None if out_l[0] is None else np.stack(out_l)
