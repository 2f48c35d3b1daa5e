"""What the latent UNet takes besides the latent, computed from the paper's 9 tumour
features (and, for the loss, the training masks): the normalised condition vectors, the
spatial prior, the tumour-weighted loss maps (``diffusion_inputs`` gathers them for a
training split) and the checks every requested condition passes before sampling. The
pipeline component that stores the normaliser and training features is
``sbldm.diffusion.conditioner.TumourConditioner``.

The paper feeds the 9-vector ``c`` through an MLP ``tau`` into every resnet block
(a global scale/shift): the network has to learn where ``(x, y, z)`` lies from zero
padding alone. sbldm can add a *spatial route* for the same information: the requested
tumour rendered as a soft ellipsoid on the latent grid (centre ``(x, y, z)``, semi-axes
from the box ``(w, h, d)`` shrunk so that its volume follows ``voxel_volume``), given to
the UNet as an extra input channel (``unet_spatial_prior``). It is computed from the
9-vector alone, so users still condition with the paper's features, and it is zeroed
together with the vector when the condition is dropped (classifier-free guidance).
The tumour-weighted loss maps (``diffusion_tumour_weight``) weight the diffusion loss
inside and around the tumour's latent footprint.

Beyond the paper, ``condition_subregions`` appends two numbers to the 9-vector: the shares
of the tumour's voxels that are necrosis and enhancing tumour
(``sbldm.data.tumour.SUBREGION_FEATURES``), each z-scored over the training tumours
(``subregion_stats``, ``subregion_vectors``), so a user can ask for a tumour with or
without a necrotic core. A request that leaves them out draws them from a training tumour.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from sbldm.data.tumour import FEATURE_NAMES, FeatureNormalizer, as_matrix

#: sharpness of the rendered ellipsoid's edge (logistic slope in units of its radius)
PRIOR_EDGE = 6.0


def latent_grid(volume_shape: Sequence[int], downsampling: int) -> tuple[int, int, int]:
    """(H', W', D) of the stacked latent: in-plane sizes over the VAE's downsampling, depth kept."""
    x, y, z = (int(s) for s in volume_shape)
    f = int(downsampling)
    if x % f or y % f:
        raise ValueError(f"volume shape {tuple(volume_shape)}: in-plane sizes must be divisible by {f}")
    return x // f, y // f, z


def brain_support(images, downsampling: int) -> np.ndarray:
    """(H', W', D) boolean map, on the stacked latent's grid, of where at least one of the
    training ``images`` (N, x, y, z) has brain tissue (``sbldm.data.cohort.brain_mask``) in
    the cell's ``downsampling`` x ``downsampling`` block: a tumour centred outside it would
    be drawn where the model has only ever seen background."""
    import torch
    import torch.nn.functional as F

    from sbldm.data.cohort import brain_mask

    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"brain_support needs (N, x, y, z) images, N > 0, got shape {images.shape}")
    latent_grid(images.shape[1:], downsampling)                 # refuses shapes the grid cannot take
    union = torch.from_numpy(brain_mask(images).any(axis=0).astype(np.float32))
    f = int(downsampling)
    pooled = F.max_pool3d(union[None, None], kernel_size=(f, f, 1))[0, 0]
    return pooled.numpy() > 0


def render_prior(raw_features, volume_shape: Sequence[int], downsampling: int) -> np.ndarray:
    """(N, 1, H', W', D) float32 in [0, 1]: each requested tumour as a soft ellipsoid on the
    latent grid.

    Feature units are voxels of the volume grid (``sbldm.data.tumour.tumour_features``). A
    latent voxel ``i`` covers volume voxels ``[i f, (i + 1) f)`` in-plane, so a volume
    coordinate ``u`` sits at ``(u - (f - 1) / 2) / f`` on the latent grid. The ellipsoid
    inscribed in the box has volume ``pi/6 w h d``; its semi-axes are scaled by
    ``(voxel_volume / (pi/6 w h d))^(1/3)`` (clipped to [0.5, 1]) so that a compact and a
    sprawling tumour of one box differ.
    """
    raw = as_matrix(raw_features)
    f = float(downsampling)
    gx, gy, gz = latent_grid(volume_shape, int(downsampling))
    vol, cx, cy, cz, w, h, d = (raw[:, k][:, None, None, None] for k in (0, 3, 4, 5, 6, 7, 8))
    shrink = np.clip(np.cbrt(np.maximum(vol, 0) / np.maximum(np.pi / 6 * w * h * d, 1e-9)), 0.5, 1.0)
    centre = [(cx - (f - 1) / 2) / f, (cy - (f - 1) / 2) / f, cz]
    semi = [np.maximum(shrink * w / (2 * f), 0.5), np.maximum(shrink * h / (2 * f), 0.5),
            np.maximum(shrink * d / 2, 0.5)]
    ii, jj, kk = np.meshgrid(np.arange(gx), np.arange(gy), np.arange(gz), indexing="ij")
    r = np.sqrt(((ii[None] - centre[0]) / semi[0]) ** 2 + ((jj[None] - centre[1]) / semi[1]) ** 2
                + ((kk[None] - centre[2]) / semi[2]) ** 2)
    prior = 1.0 / (1.0 + np.exp(-PRIOR_EDGE * (1.0 - r)))
    return prior[:, None].astype(np.float32)


def tumour_weight_maps(masks: np.ndarray, downsampling: int, dilate: int = 1) -> np.ndarray:
    """(N, 1, H', W', D) float32 in {0, 1}: latent positions whose ``f x f`` in-plane patch
    holds a tumour voxel, dilated by ``dilate`` latent voxels in 3D (the tumour and its rim)."""
    import torch
    import torch.nn.functional as F

    m = torch.from_numpy(np.asarray(masks, dtype=np.float32))[:, None]          # (N, 1, x, y, z)
    f = int(downsampling)
    m = F.max_pool3d(m, kernel_size=(f, f, 1), stride=(f, f, 1))
    if dilate > 0:
        k = 2 * int(dilate) + 1
        m = F.max_pool3d(m, kernel_size=k, stride=1, padding=int(dilate))
    return m.numpy().astype(np.float32)


# -- what a user may ask for -----------------------------------------------------------------

#: round-off allowed at the bounds of ``check_conditions``: 1e-3 voxels for centres and boxes,
#: 1e-3 for sphericity, and 1e-3 of the value for the training range
ROUND_OFF = 1e-3


def check_conditions(raw, volume_shape: Sequence[int], train_features=None, brain=None) -> np.ndarray:
    """``raw`` (N, 9) as float64 after refusing what cannot be a tumour: NaN or inf, a
    negative or zero size (volume, area, box), a sphericity outside (0, 1], a centre outside
    the volume and, given ``brain`` (a ``brain_support`` map), a centre where no training
    brain has brain tissue. Values outside the range seen in training get a warning naming
    the feature, its value and that range (the model has not learnt them). The bounds allow
    ``ROUND_OFF`` (voxels; relative for the training range), so that features that went
    through a float32 normalisation and back are judged like the raw ones."""
    arr = as_matrix(raw)
    eps = ROUND_OFF
    shape = np.asarray([int(s) for s in volume_shape], dtype=np.float64)
    for i, row in enumerate(arr):
        bad = [FEATURE_NAMES[k] for k in range(9) if not np.isfinite(row[k])]
        if bad:
            raise ValueError(f"condition {i}: {', '.join(bad)} is NaN or infinite")
        for k in (0, 1, 6, 7, 8):
            if row[k] <= 0:
                raise ValueError(f"condition {i}: {FEATURE_NAMES[k]}={row[k]:g} must be positive "
                                 f"(a tumour has a size)")
        if not 0 < row[2] <= 1.0 + eps:
            raise ValueError(f"condition {i}: sphericity={row[2]:g} must lie in (0, 1]")
        for k, axis in zip((3, 4, 5), range(3)):
            if not -eps <= row[k] <= shape[axis] - 1 + eps:
                raise ValueError(f"condition {i}: centre {FEATURE_NAMES[k]}={row[k]:g} lies outside the volume "
                                 f"(valid: 0 .. {shape[axis] - 1:g} voxels)")
        for k, axis in zip((6, 7, 8), range(3)):
            if row[k] > shape[axis] + eps:
                raise ValueError(f"condition {i}: box {FEATURE_NAMES[k]}={row[k]:g} exceeds the volume's "
                                 f"{shape[axis]:g} voxels")
        if brain is not None:
            brain = np.asarray(brain, bool)
            cell = tuple(min(max(int(row[3 + a] * brain.shape[a] / shape[a]), 0), brain.shape[a] - 1)
                         for a in range(3))
            if not brain[cell]:
                raise ValueError(
                    f"condition {i}: the centre ({row[3]:g}, {row[4]:g}, {row[5]:g}) lies where none of the training "
                    "brains has brain tissue (background); the model would draw the tumour outside the brain. "
                    "Move the centre into the brain")
    if train_features is not None:
        ref = as_matrix(train_features)
        lo, hi = np.nanmin(ref, axis=0), np.nanmax(ref, axis=0)
        slack = eps * np.maximum(np.abs(lo), np.abs(hi))
        lo, hi = lo - slack, hi + slack
        for k, name in enumerate(FEATURE_NAMES):
            out = (arr[:, k] < lo[k]) | (arr[:, k] > hi[k])
            if out.any():
                v = arr[out, k][0]
                warnings.warn(f"condition feature {name}={v:g} lies outside the training range "
                              f"[{lo[k]:g}, {hi[k]:g}] ({int(out.sum())} of {len(arr)} condition(s)); "
                              "the model has not seen such tumours", UserWarning, stacklevel=4)
    return arr


def check_normalised(vectors, normalizer: FeatureNormalizer) -> np.ndarray:
    """(N, 9) normalised vectors, refusing raw-unit vectors passed by mistake: a normalised
    vector has every feature within a few units (max-scaling: ~[0, 1]; z-score: a few
    stds), while raw features are voxel counts and coordinates (tens to thousands)."""
    arr = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    if arr.ndim != 2 or arr.shape[1] != 9:
        raise ValueError(f"conditions must be (N, 9) normalised vectors, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("conditions contain NaN or infinite values")
    limit = 3.0 if normalizer.kind == "max" else 12.0
    if np.abs(arr).max() > limit:
        k = int(np.argmax(np.abs(arr).max(axis=0)))
        raise ValueError(f"conditions look like raw features, not normalised vectors ({FEATURE_NAMES[k]} = "
                         f"{arr[:, k][np.argmax(np.abs(arr[:, k]))]:g}); pass raw features as dicts "
                         f"{{'voxel_volume': ..., ...}} or normalise them with pipe.normalizer.transform")
    return arr


# -- the optional sub-region condition -------------------------------------------------------

def subregion_stats(shares) -> dict:
    """``{"train", "mean", "std"}`` of the training tumours' sub-region shares (N, 2): what a
    pipeline keeps to z-score requested shares and to draw them when none are asked for."""
    arr = np.asarray(shares, np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or not len(arr):
        raise ValueError(f"sub-region shares must be (N, 2) with N >= 1, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("sub-region shares of the training tumours hold NaN (a label map without tumour?)")
    return {"train": arr.tolist(), "mean": arr.mean(0).tolist(), "std": np.maximum(arr.std(0), 1e-3).tolist()}


def check_subregions(shares) -> np.ndarray:
    """(N, 2) requested shares as float64, after refusing what no tumour has: NaN, a share
    outside [0, 1], necrosis and enhancing together above the whole tumour."""
    from sbldm.data.tumour import SUBREGION_FEATURES

    arr = np.atleast_2d(np.asarray(shares, np.float64))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"sub-region shares must be (N, 2) rows of {', '.join(SUBREGION_FEATURES)}, got shape "
                         f"{arr.shape}")
    for i, row in enumerate(arr):
        if not np.isfinite(row).all() or (row < 0).any() or (row > 1).any():
            raise ValueError(f"condition {i}: {SUBREGION_FEATURES[0]}={row[0]:g}, {SUBREGION_FEATURES[1]}={row[1]:g}; "
                             "each share of the tumour lies in [0, 1]")
        if row.sum() > 1 + 1e-9:
            raise ValueError(f"condition {i}: necrosis ({row[0]:g}) and enhancing ({row[1]:g}) shares add up to more "
                             "than the whole tumour")
    return arr


def subregion_vectors(shares, stats: dict) -> np.ndarray:
    """(N, 2) float32: the shares z-scored with the training ``stats``."""
    return ((np.asarray(shares, np.float64) - np.asarray(stats["mean"])) / np.asarray(stats["std"])).astype(np.float32)


# -- the diffusion stage's inputs ------------------------------------------------------------

def fit_normalizer(cfg, features) -> FeatureNormalizer:
    """The condition normaliser of ``cfg.condition_normalization`` fitted on training features."""
    return FeatureNormalizer.fit(features, cfg.volume_shape, kind=cfg.condition_normalization)


def diffusion_inputs(cfg, train, normalizer: FeatureNormalizer | None = None) -> dict:
    """Everything the latent UNet trains on besides the latents, from a prepared split:
    ``normalizer``, normalised ``conditions`` (N, 9; N, 11 with the sub-region shares when
    ``cfg.condition_subregions``, whose ``subregion_stats`` come as ``subregions``, else
    None), spatial ``priors`` (N, 1, H', W', D) or None, tumour ``weights`` maps
    (N, 1, H', W', D) or None — as ``cfg`` asks."""
    normalizer = normalizer or fit_normalizer(cfg, train.features)
    f = cfg.vae_downsampling
    conditions = normalizer.transform(train.features).astype(np.float32)
    subregions = None
    if getattr(cfg, "condition_subregions", False):
        from sbldm.data.tumour import subregion_shares

        subregions = subregion_stats(subregion_shares(train.labels))
        conditions = np.concatenate([conditions, subregion_vectors(subregions["train"], subregions)], axis=1)
    out = {"normalizer": normalizer, "conditions": conditions, "subregions": subregions,
           "priors": render_prior(train.features, cfg.volume_shape, f) if cfg.unet_spatial_prior else None,
           "weights": tumour_weight_maps(train.masks, f) if cfg.diffusion_tumour_weight > 0 else None}
    return out
