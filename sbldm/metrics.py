"""Image and mask metrics: PSNR, SSIM, Dice, and the primitives every metric shares.

Conventions: images are compared in [0, 1] (``to_unit`` maps sbldm's [-1, 1]);
masks are binary. ``ssim_torch`` is differentiable (used by the VAE loss); the other
functions take numpy arrays or tensors and return floats. ``ssim_map`` (SSIM from local
moments) and ``finite_summary`` (mean and std over the finite values) are the one
formula of each that the generation metrics (``sbldm.evaluation.generation``) use too.

SSIM here is the standard gaussian-window SSIM (window 11, sigma 1.5, K1 0.01, K2 0.03,
"valid" filtering) of Wang et al. 2004, averaged over the map, in 2D for (B, C, H, W)
and 3D for (B, C, X, Y, Z) inputs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def to_unit(x):
    """[-1, 1] -> [0, 1], clipped."""
    if isinstance(x, torch.Tensor):
        return ((x + 1) / 2).clamp(0, 1)
    return np.clip((np.asarray(x, dtype=np.float64) + 1) / 2, 0, 1)


def ssim_map(mx, my, vx, vy, cxy, c1: float, c2: float):
    """The SSIM map from local means ``mx``, ``my``, variances ``vx``, ``vy`` and
    covariance ``cxy`` (tensors of one shape), with the stabilising constants ``c1``, ``c2``."""
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def finite_summary(values) -> dict:
    """Mean and std over the finite values, with ``n`` the finite count and ``n_nonfinite``
    the rest (a synthetic volume identical to its real partner has PSNR = inf: it is
    counted there, not silently dropped)."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    return {"mean": float(finite.mean()) if len(finite) else math.nan,
            "std": float(finite.std()) if len(finite) else math.nan,
            "n": int(len(finite)), "n_nonfinite": int(len(v) - len(finite))}


def _gaussian(size: int, sigma: float, dtype, device) -> torch.Tensor:
    r = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim_torch(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = 11,
               sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03, reduction: str = "mean") -> torch.Tensor:
    """Differentiable gaussian-window SSIM of (B, C, *spatial) tensors (2D or 3D).

    The window shrinks to the smallest spatial size if that is below ``win_size``
    (odd sizes kept). ``reduction='none'`` gives one value per (batch, channel).
    """
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
    nd = x.ndim - 2
    if nd not in (2, 3):
        raise ValueError(f"ssim needs (B, C, H, W) or (B, C, X, Y, Z), got {tuple(x.shape)}")
    win = min(win_size, *x.shape[2:])
    if win % 2 == 0:
        win -= 1
    c = x.shape[1]
    g = _gaussian(win, sigma, x.dtype, x.device)
    conv = F.conv2d if nd == 2 else F.conv3d

    def blur(t):
        for axis in range(nd):
            shape = [1] * nd
            shape[axis] = win
            t = conv(t, g.reshape(1, 1, *shape).repeat(c, 1, *([1] * nd)), groups=c)
        return t

    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ssim_map(mx, my, sxx, syy, sxy, c1, c2).flatten(2).mean(-1)
    return s.mean() if reduction == "mean" else s


def _tensor(a) -> torch.Tensor:
    return a.detach().double() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a, dtype=np.float64))


def ssim(x, y, data_range: float = 1.0) -> float:
    """Mean SSIM of two images of equal shape: 2D (H, W), 3D (X, Y, Z), or batched
    (B, C, ...). Inputs should already be in [0, data_range]."""
    a, b = _tensor(x), _tensor(y)
    if a.ndim in (2, 3):
        a, b = a[None, None], b[None, None]
    return float(ssim_torch(a, b, data_range=data_range))


def _psnr_from_mse(mse, data_range: float):
    """PSNR in dB from mean squared errors (``inf`` where the error is 0)."""
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range ** 2 / np.asarray(mse, dtype=np.float64))


def psnr(x, y, data_range: float = 1.0) -> float:
    """PSNR in dB of ``x`` against ``y`` (same shape, values in [0, data_range]) over all
    their elements; ``inf`` when they are equal."""
    a, b = _tensor(x), _tensor(y)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    return float(_psnr_from_mse(float(((a - b) ** 2).mean()), data_range))


def psnr_volumes(a, b, data_range: float = 1.0) -> np.ndarray:
    """PSNR in dB per leading index of (..., X, Y, Z) arrays (one value per volume)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr_volumes: shapes differ, {a.shape} vs {b.shape}")
    return _psnr_from_mse(((a - b) ** 2).reshape(*a.shape[:-3], -1).mean(-1), data_range)


def dice(pred, target, empty: float = 1.0) -> float:
    """Dice coefficient of two binary masks; ``empty`` when both are empty."""
    p = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred) > 0
    t = np.asarray(target.detach().cpu() if isinstance(target, torch.Tensor) else target) > 0
    if p.shape != t.shape:
        raise ValueError(f"dice: shapes differ, {p.shape} vs {t.shape}")
    denom = p.sum() + t.sum()
    return float(empty) if denom == 0 else float(2.0 * np.logical_and(p, t).sum() / denom)


def reconstruction_metrics(images, masks, rec_images, rec_masks) -> dict:
    """Slice-wise reconstruction quality of volumes (N, x, y, z), sbldm conventions.

    - ``psnr`` / ``ssim``: 2D, per axial slice, images mapped to [0, 1], over every slice;
    - ``psnr_3d`` / ``ssim_3d``: the same per whole volume;
    - ``dice``: per axial slice over tumour-bearing slices only (reconstructed mask
      already thresholded) — blind to false-positive slices, hence also
    - ``dice_3d``: per whole volume (``nan`` where both masks are empty is not possible:
      prepared volumes always hold a tumour; an empty pair would score 1).

    Returns ``{name: {"mean", "std", "n"}}``: mean and std over the finite values, ``n``
    over all of them.
    """
    images, rec_images = np.asarray(images), np.asarray(rec_images)
    masks, rec_masks = np.asarray(masks), np.asarray(rec_masks)
    if images.shape != rec_images.shape or masks.shape != rec_masks.shape or images.shape != masks.shape:
        raise ValueError("reconstruction_metrics: real and reconstructed arrays must share one (N, x, y, z) shape")
    vals: dict[str, list[float]] = {"psnr": [], "ssim": [], "dice": [], "dice_3d": [], "psnr_3d": [], "ssim_3d": []}
    for v in range(len(images)):
        a, b = to_unit(images[v]), to_unit(rec_images[v])
        vals["psnr_3d"].append(psnr(b, a))
        vals["ssim_3d"].append(ssim(b, a))
        vals["dice_3d"].append(dice(rec_masks[v], masks[v]))
        ta = torch.as_tensor(a).permute(2, 0, 1)[:, None]        # (D, 1, x, y)
        tb = torch.as_tensor(b).permute(2, 0, 1)[:, None]
        vals["ssim"].extend(ssim_torch(tb, ta, reduction="none")[:, 0].tolist())
        mse = ((ta - tb) ** 2).flatten(1).mean(1)
        vals["psnr"].extend(float(p) for p in _psnr_from_mse(mse.numpy(), 1.0))
        for s in range(images.shape[-1]):
            if masks[v, :, :, s].any():
                vals["dice"].append(dice(rec_masks[v, :, :, s], masks[v, :, :, s]))
    out = {}
    for k, v in vals.items():
        summary = finite_summary(v)
        out[k] = {"mean": summary["mean"], "std": summary["std"], "n": summary["n"] + summary["n_nonfinite"]}
    return out


def laplacian_energy(volumes, region) -> float:
    """Sharpness: the mean |in-plane Laplacian| (second differences along x and y, voxel
    units, of each axial slice) of ``volumes`` (N, x, y, z) over the voxels of ``region``
    (same shape; the one-voxel in-plane border left out). A blurred copy of a volume scores
    lower than the volume; compare a reconstruction's value with the real one's."""
    v = np.asarray(volumes, np.float64)
    r = np.asarray(region, bool)
    if v.shape != r.shape:
        raise ValueError(f"volumes {v.shape} and region {r.shape} differ in shape")
    lap = np.zeros_like(v)
    inner = (slice(None), slice(1, -1), slice(1, -1), slice(None))
    lap[inner] = (v[:, 2:, 1:-1] + v[:, :-2, 1:-1] + v[:, 1:-1, 2:] + v[:, 1:-1, :-2] - 4 * v[:, 1:-1, 1:-1])
    keep = np.zeros_like(r)
    keep[inner] = r[inner]
    if not keep.any():
        return float("nan")
    return float(np.mean(np.abs(lap[keep])))


def high_frequency_share(volumes, brain, cutoff: float = 0.5) -> float:
    """Fine detail: over the axial slices holding brain, the mean share of each slice's
    spectral energy (|2D FFT|^2 of the slice minus its mean, background included) at radial
    frequencies above ``cutoff`` times the Nyquist frequency. Blurring lowers it."""
    v = np.asarray(volumes, np.float64)
    b = np.asarray(brain, bool)
    fy = np.abs(np.fft.fftfreq(v.shape[1]))[:, None]
    fx = np.abs(np.fft.fftfreq(v.shape[2]))[None, :]
    high = np.sqrt(fy ** 2 + fx ** 2) > cutoff * 0.5
    shares = []
    for n in range(v.shape[0]):
        for k in range(v.shape[3]):
            if not b[n, :, :, k].any():
                continue
            s = v[n, :, :, k]
            p = np.abs(np.fft.fft2(s - s.mean())) ** 2
            total = p.sum()
            if total > 0:
                shares.append(p[high].sum() / total)
    return float(np.mean(shares)) if shares else float("nan")
