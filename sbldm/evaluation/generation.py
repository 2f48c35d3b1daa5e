"""Evaluation of generated volumes: the paper's Table 1 metrics and the ones it lacked.

All functions take sbldm arrays: images (N, x, y, z) float in [-1, 1], masks (N, x, y, z)
binary. Images are compared in [0, 1].

- ``unpaired_psnr_ssim`` — Table 1 exactly as the authors computed it (REFERENCE_CODE.md
  §6): each synthetic volume against a randomly permuted real *training* volume, FLAIR
  only, mapped to [0, 1], PSNR with data range 1 and a 3D SSIM with an 11^3 *uniform*
  window (torchmetrics ``gaussian_kernel=False``; identical to scikit-image's
  ``structural_similarity(gaussian_weights=False, use_sample_covariance=False)``).
  It measures closeness to an arbitrary real brain, not realism: read it beside the rest.
- ``pairwise_ms_ssim`` — diversity (MONAI MS-SSIM; kernel and scales recorded).
- ``frechet_distance`` — realism from feature statistics (features from a network trained
  in the project on real data, or from local MedicalNet weights; see ``sbldm.evaluation.frechet``).
- ``feature_distribution_distance`` — mask realism: Wasserstein distance between the
  tumour-feature distributions of real and synthetic masks, per feature, divided by the
  real feature's standard deviation.
- ``conditioning_adherence`` — requested vs obtained tumour features (SBLDM only).
- ``nearest_ssim`` — memorisation: SSIM of each volume to its nearest real training volume.
- ``time_per_volume`` — median wall time of several calls after a warm-up, synchronised on GPU.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np

from sbldm.config import FEATURE_NAMES
from sbldm.data.tumor import tumor_features
from sbldm import paper
from sbldm.metrics import psnr_volumes
from sbldm.provenance import device_name

#: the paper's Table 1 as printed: (PSNR, SSIM, "#params", "time per volume")
PAPER_TABLE1 = {m: (p, s, f"{n / 1e6:.0f}M", f"{t:.3f} s") for m, (p, s, n, t) in paper.TABLE1.items()}


def _unit(x) -> np.ndarray:
    return np.clip((np.asarray(x, dtype=np.float64) + 1.0) / 2.0, 0.0, 1.0)


SSIM_WIN, SSIM_K1, SSIM_K2 = 11, 0.01, 0.03   # the authors' 3D SSIM: 11^3 uniform window


def ssim_uniform(a, b, win_size: int = SSIM_WIN, data_range: float = 1.0, k1: float = SSIM_K1, k2: float = SSIM_K2):
    """SSIM with a uniform ``win_size``-wide window over the valid region, population
    covariance, mean over the map: the uniform-kernel SSIM of torchmetrics <= 1.4.1
    (``gaussian_kernel=False``; later torchmetrics versions average over the padded image
    and differ by up to ~0.2) and scikit-image's ``structural_similarity`` with
    ``use_sample_covariance=False`` averaged over its valid region (tests check the latter).

    ``a`` and ``b`` are (..., X, Y, Z) arrays in [0, data_range] (or 2D (..., H, W) when
    the window is 2D-only); leading dimensions are batch: one value per leading index.
    """
    import torch

    ta = torch.as_tensor(np.array(a, dtype=np.float64))
    tb = torch.as_tensor(np.array(b, dtype=np.float64))
    if ta.shape != tb.shape:
        raise ValueError(f"ssim: shapes differ, {tuple(ta.shape)} vs {tuple(tb.shape)}")
    if ta.ndim < 3:
        raise ValueError(f"ssim_uniform needs 3D volumes (..., X, Y, Z), got {tuple(ta.shape)}")
    lead = ta.shape[:-3]
    spatial = ta.shape[-3:]
    if min(spatial) < win_size:
        raise ValueError(f"ssim window {win_size} larger than the volume {tuple(spatial)}")
    x = ta.reshape(-1, 1, *spatial)
    y = tb.reshape(-1, 1, *spatial)
    mx, my = _window_mean(x, win_size), _window_mean(y, win_size)
    sxx = _window_mean(x * x, win_size) - mx * mx
    syy = _window_mean(y * y, win_size) - my * my
    sxy = _window_mean(x * y, win_size) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return _ssim_from_moments(mx, my, sxx, syy, sxy, c1, c2).reshape(lead).numpy()


def _window_mean(t, win: int):
    """The mean over a uniform ``win``^3 window (valid region) of (N, 1, X, Y, Z), as three
    1D box means: the numbers of one avg_pool3d of ``win``^3, ~40x fewer operations at 11^3."""
    import torch.nn.functional as F

    for k in ((win, 1, 1), (1, win, 1), (1, 1, win)):
        t = F.avg_pool3d(t, k, stride=1)
    return t


def _ssim_from_moments(mx, my, vx, vy, cxy, c1: float, c2: float):
    """Mean SSIM per volume from local means, variances and covariance maps."""
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def _mean_std(values) -> dict:
    """Mean and std over the finite values, with ``n`` the finite count and ``n_nonfinite``
    the rest (a synthetic volume identical to its real partner has PSNR = inf: it is
    counted there, not silently dropped)."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    return {"mean": float(finite.mean()) if len(finite) else math.nan,
            "std": float(finite.std()) if len(finite) else math.nan,
            "n": int(len(finite)), "n_nonfinite": int(len(v) - len(finite))}


def unpaired_psnr_ssim(synthetic, real_train, seed: int = 0) -> dict:
    """The paper's PSNR/SSIM: synthetic volume k vs real training volume perm[k].

    With more synthetic than real volumes the permutation is drawn again for each block
    of ``len(real_train)``. Returns ``{"psnr": {mean, std, n}, "ssim": {...}, "pairs": [...]}``.
    """
    syn, real = _unit(synthetic), _unit(real_train)
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.permutation(len(real)) for _ in range(-(-len(syn) // len(real)))])[: len(syn)]
    p = psnr_volumes(syn, real[idx])
    s = ssim_uniform(syn, real[idx])
    return {"psnr": _mean_std(p), "ssim": _mean_std(s), "pairs": idx.tolist()}


def ms_ssim_setup(shape: Sequence[int], kernel_size: int = 5, max_scales: int = 5) -> tuple[int, tuple[float, ...]]:
    """(kernel size, weights) for 3D MS-SSIM at ``shape``: as many of the standard five
    scales as fit: the coarsest scale must still hold a kernel (side // 2^(scales-1) >=
    kernel), and MONAI's own check (``compute_ms_ssim``, MONAI 1.4-1.5) must pass, which
    divides by (scales - 1)^2 rather than 2^(scales - 1): side // (scales-1)^2 > kernel-1
    (the two differ at 4 scales, so a side of 40-44 voxels takes 3 scales with kernel 5)."""
    full = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    for k in (kernel_size, 3):
        for n in range(max_scales, 0, -1):
            side = min(shape)
            if side // 2 ** (n - 1) >= k and side // max(1, (n - 1) ** 2) > k - 1:
                w = np.asarray(full[:n])
                return k, tuple((w / w.sum()).tolist())
    raise ValueError(f"volume {tuple(shape)} too small for MS-SSIM")


def pairwise_ms_ssim(volumes, max_volumes: int = 20, seed: int = 0, kernel_size: int = 5) -> dict:
    """Mean MS-SSIM over all pairs among (up to ``max_volumes``) volumes: lower = more diverse."""
    import torch
    from monai.metrics.regression import compute_ms_ssim

    v = _unit(volumes)
    if len(v) > max_volumes:
        v = v[np.sort(np.random.default_rng(seed).choice(len(v), max_volumes, replace=False))]
    k, weights = ms_ssim_setup(v.shape[1:], kernel_size)
    i, j = np.triu_indices(len(v), 1)
    t = torch.as_tensor(v, dtype=torch.float32)[:, None]
    vals = []
    for start in range(0, len(i), 16):
        a, b = t[i[start:start + 16]], t[j[start:start + 16]]
        vals.append(compute_ms_ssim(a, b, spatial_dims=3, data_range=1.0, kernel_size=k,
                                    weights=weights).reshape(-1).numpy())
    vals = np.concatenate(vals) if vals else np.array([])
    return {**_mean_std(vals), "kernel_size": k, "scales": len(weights), "volumes": int(len(v))}


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two (N, F) feature sets."""
    from scipy import linalg

    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(ca @ cb)
    if not np.all(np.isfinite(covmean)):
        eps = np.eye(len(ca)) * 1e-6
        covmean = linalg.sqrtm((ca + eps) @ (cb + eps))
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean))


def mask_features(masks) -> np.ndarray:
    """(N, 9) raw tumour features of binary masks; NaN rows for empty masks."""
    return np.array([[f[k] for k in FEATURE_NAMES] for f in (tumor_features(m, empty="nan") for m in masks)])


def feature_distribution_distance(real_features, synthetic_features) -> dict:
    """Per-feature Wasserstein-1 distance / std of the real feature, plus the mean over
    features and the fraction of synthetic masks without tumour (excluded)."""
    from scipy.stats import wasserstein_distance

    real = np.asarray(real_features, np.float64)
    syn = np.asarray(synthetic_features, np.float64)
    empty = np.isnan(syn).any(axis=1)
    syn = syn[~empty]
    out = {}
    for j, name in enumerate(FEATURE_NAMES):
        scale = real[:, j].std() or 1.0
        out[name] = float(wasserstein_distance(real[:, j], syn[:, j]) / scale) if len(syn) else math.nan
    out["mean"] = float(np.mean([out[n] for n in FEATURE_NAMES]))
    out["empty_fraction"] = float(empty.mean()) if len(empty) else math.nan
    return out


def conditioning_adherence(requested_features, masks) -> dict:
    """How closely generated masks follow the requested (raw) features.

    ``relative_volume_error``: median |V_obtained - V_requested| / V_requested;
    ``centre_distance``: median distance in voxels between requested and obtained centre
    of mass; ``spearman_volume`` / ``pearson_volume``: correlation between requested and
    obtained volume; ``empty_fraction``: masks with no tumour (counted as errors of 100%).
    """
    from scipy.stats import pearsonr, spearmanr

    req = np.asarray(requested_features, np.float64)
    got = mask_features(masks)
    empty = np.isnan(got[:, 0])
    got_vol = np.where(empty, 0.0, got[:, 0])
    rel = np.abs(got_vol - req[:, 0]) / np.maximum(req[:, 0], 1e-9)
    dist = np.linalg.norm(got[~empty, 3:6] - req[~empty, 3:6], axis=1)
    ok = len(req) > 2 and np.ptp(req[:, 0]) > 0 and np.ptp(got_vol) > 0
    return {
        "relative_volume_error": float(np.median(rel)),
        "centre_distance": float(np.median(dist)) if len(dist) else math.nan,
        "spearman_volume": float(spearmanr(req[:, 0], got_vol).statistic) if ok else math.nan,
        "pearson_volume": float(pearsonr(req[:, 0], got_vol).statistic) if ok else math.nan,
        "empty_fraction": float(empty.mean()),
        "n": int(len(req)),
    }


def nearest_ssim(queries, references, exclude_self: bool = False, chunk: int = 32) -> np.ndarray:
    """For each query volume, the highest uniform-window SSIM to any reference volume
    (``ssim_uniform`` of every pair, computed from window statistics shared across pairs:
    each volume's local means and second moments once, only the cross moment per pair).

    A generator that memorised its training set gives values near 1 for its samples,
    higher than those of held-out real volumes against the same training set.
    """
    import torch

    win, c1, c2 = SSIM_WIN, SSIM_K1 ** 2, SSIM_K2 ** 2     # ssim_uniform's defaults, data range 1
    q = torch.as_tensor(np.asarray(_unit(queries), dtype=np.float64))[:, None]
    r = torch.as_tensor(np.asarray(_unit(references), dtype=np.float64))[:, None]
    if q.shape[2:] != r.shape[2:]:
        raise ValueError(f"nearest_ssim: volume shapes differ, {tuple(q.shape[2:])} vs {tuple(r.shape[2:])}")
    if min(q.shape[2:]) < win:
        raise ValueError(f"ssim window {win} larger than the volume {tuple(q.shape[2:])}")
    r_mean, r_var = [], []
    for start in range(0, len(r), chunk):
        block = r[start:start + chunk]
        m = _window_mean(block, win)
        r_mean.append(m)
        r_var.append(_window_mean(block * block, win) - m * m)
    r_mean, r_var = torch.cat(r_mean), torch.cat(r_var)
    best = np.full(len(q), -np.inf)
    for i in range(len(q)):
        qm = _window_mean(q[i:i + 1], win)
        qv = _window_mean(q[i:i + 1] ** 2, win) - qm * qm
        for start in range(0, len(r), chunk):
            sl = slice(start, start + chunk)
            cov = _window_mean(q[i:i + 1] * r[sl], win) - qm * r_mean[sl]
            sim = _ssim_from_moments(qm, r_mean[sl], qv, r_var[sl], cov, c1, c2).numpy()
            if exclude_self:
                same = torch.all((r[sl] == q[i:i + 1]).flatten(1), dim=1).numpy()
                sim = np.where(same, -np.inf, sim)
            best[i] = max(best[i], float(sim.max()))
    return best


def time_per_volume(fn: Callable[[], object], n_volumes_per_call: int = 1, repeats: int = 3,
                    warmup: int = 1) -> dict:
    """Median wall time per volume of ``fn()`` over ``repeats`` calls after ``warmup``
    calls, with ``torch.cuda.synchronize()`` around each call on a GPU."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) / n_volumes_per_call)
    return {"median_s": float(np.median(times)), "times_s": times, "repeats": repeats, "warmup": warmup,
            "device": device_name()}


# -- sampling, cached ---------------------------------------------------------------------

def batch_seed(seed: int, done: int) -> int:
    """The seed of the sampling batch that starts at volume ``done`` of a set drawn with ``seed``."""
    return int(seed) * 100_003 + int(done)


def cached_samples(path, sample_fn: Callable[[int, int], tuple], n: int, seed: int, batch_size: int,
                   meta: dict | None = None, progress: bool = True) -> dict:
    """``n`` samples from ``sample_fn(n_batch, seed_batch) -> (images, masks[, raw_conditions])``
    in batches, saved to ``path`` (.npz, atomically) and reused while ``n``, ``seed`` and
    ``meta`` are unchanged. Returns ``{images, masks, conditions (or None), seconds}``
    where ``seconds`` is the wall time per volume of each batch."""
    import io
    import json
    from pathlib import Path

    from tqdm.auto import tqdm

    from sbldm.io import atomic_write_bytes

    path = Path(path)
    key = json.dumps({"n": n, "seed": seed, "meta": meta or {}}, sort_keys=True, default=str)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return {"images": z["images"], "masks": z["masks"],
                        "conditions": z["conditions"] if z["conditions"].size else None,
                        "seconds": z["seconds"].tolist()}
    images, masks, conds, seconds = [], [], [], []
    done = 0
    with tqdm(total=n, desc=path.stem, disable=not progress) as bar:
        while done < n:
            b = min(batch_size, n - done)
            t0 = time.perf_counter()
            out = sample_fn(b, batch_seed(seed, done))
            seconds.append((time.perf_counter() - t0) / b)
            images.append(np.asarray(out[0], np.float32))
            masks.append(np.asarray(out[1], np.uint8))
            if len(out) > 2 and out[2] is not None:
                conds.append(np.asarray(out[2], np.float64))
            done += b
            bar.update(b)
    result = {"images": np.concatenate(images), "masks": np.concatenate(masks),
              "conditions": np.concatenate(conds) if conds else None, "seconds": seconds}
    buf = io.BytesIO()
    np.savez(buf, key=np.array(key), images=result["images"], masks=result["masks"],
             conditions=result["conditions"] if result["conditions"] is not None else np.zeros(0),
             seconds=np.asarray(seconds))
    atomic_write_bytes(path, buf.getvalue())
    return result


# -- Table 1 -------------------------------------------------------------------------------

def table1_rows(results: dict) -> list[dict]:
    """Rows of Table 1 from ``{method: {"psnr", "ssim", "params", "time"}}`` with the
    paper's numbers beside ours (methods named as in ``PAPER_TABLE1``)."""
    rows = []
    for method, r in results.items():
        paper = PAPER_TABLE1.get(method, (None, None, None, None))
        rows.append({
            "method": method,
            "psnr": r["psnr"]["mean"], "psnr_std": r["psnr"]["std"],
            "ssim": r["ssim"]["mean"], "ssim_std": r["ssim"]["std"],
            "n_samples": r["psnr"]["n"] + r["psnr"].get("n_nonfinite", 0),
            "psnr_nonfinite": r["psnr"].get("n_nonfinite", 0),
            "params_M": r["params"] / 1e6,
            "time_s_per_volume": r["time"]["median_s"], "device": r["time"]["device"],
            "paper_psnr": paper[0], "paper_ssim": paper[1], "paper_params": paper[2], "paper_time": paper[3],
        })
    return rows


def table1_markdown(rows: list[dict], scale: str, seed: int, data: str) -> tuple[str, list[str]]:
    """Markdown of Table 1 (ours ± std beside the paper) and its notes."""
    head = ("| method | PSNR (ours) | SSIM (ours) | #params (ours) | time / volume (ours) | "
            "PSNR (paper) | SSIM (paper) | #params (paper) | time (paper) |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['method']} | {r['psnr']:.3f} ± {r['psnr_std']:.3f} | {r['ssim']:.3f} ± {r['ssim_std']:.3f} "
                     f"| {r['params_M']:.1f}M | {r['time_s_per_volume']:.3f} s | {r['paper_psnr'] or '—'} | "
                     f"{r['paper_ssim'] or '—'} | {r['paper_params'] or '—'} | {r['paper_time'] or '—'} |")
    devices = sorted({r["device"] for r in rows})
    notes = [
        f"scale `{scale}`, data: {data}, seed {seed}, samples per method: "
        + ", ".join(f"{r['method']} {r['n_samples']}" for r in rows),
        f"our timings on {', '.join(devices)} (median of timed volumes after a warm-up); the paper's on one RTX A6000",
        "PSNR/SSIM are computed as the authors did: unpaired, each synthetic volume against a randomly "
        "permuted real training volume, FLAIR only in [0, 1], 3D SSIM with an 11^3 uniform window; "
        "they measure closeness to an arbitrary real brain, not realism — see the second table",
        "#params: every network used at sampling (SBLDM: slice VAE + 3D UNet; 3D-LDM: autoencoder + UNet; "
        "3D-LSGAN: generator)",
    ]
    return "\n".join(lines), notes


def write_table1(rows: list[dict], stem, scale: str, seed: int, data: str) -> str:
    """Write ``stem.csv`` (all columns) and ``stem.md`` (ours beside the paper, with notes)."""
    from pathlib import Path

    from sbldm.io import atomic_write_bytes
    from sbldm.tables import write_table

    write_table(rows, stem)
    md, notes = table1_markdown(rows, scale, seed, data)
    text = f"### Table 1 ({scale})\n\n{md}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    atomic_write_bytes(Path(stem).with_suffix(".md"), text.encode())
    return text


def adherence_by_chance(requested_features, real_features, seed: int = 0) -> dict:
    """The adherence a generator would score by ignoring the request: each requested tumour
    paired with a random real tumour (``real_features``, raw) as if that were obtained —
    the floor that ``conditioning_adherence`` must beat to show control."""
    req = np.asarray(requested_features, np.float64)
    real = np.asarray(real_features, np.float64)
    pick = real[np.random.default_rng(seed).integers(0, len(real), len(req))]
    return {"relative_volume_error": float(np.median(np.abs(pick[:, 0] - req[:, 0]) / np.maximum(req[:, 0], 1e-9))),
            "centre_distance": float(np.median(np.linalg.norm(pick[:, 3:6] - req[:, 3:6], axis=1)))}


def tumour_appearance(images, masks, dark_core_min: float = 0.05) -> dict:
    """What the tumours look like inside, over the volumes whose mask is not empty.

    Per volume (images in [-1, 1], background at -1; masks binary):

    - ``components``: connected pieces of the mask (6-connectivity);
    - ``dark_fraction``: share of tumour voxels darker than the median of the brain around
      it (non-background voxels outside the mask). FLAIR shows oedema bright and a
      necrotic core dark, so real tumours often carry a dark part;
    - ``contrast``: mean tumour intensity minus the mean of a 2-voxel ring outside it;
    - ``intensity_std``: std of the intensities inside the tumour.

    Returns the number of volumes (``n``) and of empty masks (``n_empty``), the mean
    number of components and the share of masks in several pieces, the median
    ``dark_fraction``, the share of tumours with a dark part (``dark_fraction >=
    dark_core_min``), and the medians of ``contrast`` and ``intensity_std``.
    """
    from scipy import ndimage

    images, masks = np.asarray(images, np.float32), np.asarray(masks).astype(bool)
    if images.shape != masks.shape:
        raise ValueError(f"images {images.shape} and masks {masks.shape} must have the same shape")
    comps, dark, contrast, spread = [], [], [], []
    empty = 0
    for im, m in zip(images, masks):
        if not m.any():
            empty += 1
            continue
        comps.append(int(ndimage.label(m)[1]))
        inside = im[m]
        brain = im[(im > -0.9) & ~m]
        dark.append(float((inside < np.median(brain)).mean()) if brain.size else math.nan)
        ring = ndimage.binary_dilation(m, iterations=2) & ~m
        contrast.append(float(inside.mean() - im[ring].mean()) if ring.any() else math.nan)
        spread.append(float(inside.std()))
    c, d = np.array(comps, float), np.array(dark, float)

    def median(v):
        v = np.asarray(v, float)
        return float(np.nanmedian(v)) if np.any(np.isfinite(v)) else math.nan

    return {"n": len(images), "n_empty": empty,
            "components_mean": float(c.mean()) if len(c) else math.nan,
            "multi_component_fraction": float((c > 1).mean()) if len(c) else math.nan,
            "dark_fraction_median": median(d),
            "dark_core_share": float((d >= dark_core_min).mean()) if len(d) else math.nan,
            "contrast_median": median(contrast), "intensity_std_median": median(spread)}


def denoising_probe(pipe, images, masks, features, strengths=(0.1, 0.3, 0.5, 0.7, 1.0), steps: int = 50,
                    seed: int = 0, bf16: bool = False) -> list[dict]:
    """Where the pipeline loses what real tumours look like: real volumes are encoded,
    noised to each ``strength`` of the way into a DDIM-``steps`` schedule
    (``SBLDMPipeline(start_latents=..., strength=...)``), denoised with their own tumour
    features as the condition, decoded, and described by ``tumour_appearance``. One row
    per strength (plus ``0``: the volumes through the VAE alone); what survives a low
    strength but not a high one is what the model cannot draw from noise."""
    import torch

    from sbldm.runtime import cpu_bf16

    start = pipe.encode(images, masks)
    rows = []
    for strength in (0.0, *strengths):
        if strength == 0.0:
            vols = pipe.decode_latents(start)
            im, m = vols[:, 0].clamp(-1, 1).numpy(), (vols[:, 1] > 0).numpy().astype(np.uint8)
        else:
            g = torch.Generator().manual_seed(int(seed))
            with cpu_bf16(bf16):
                out = pipe([dict(zip(FEATURE_NAMES, map(float, f))) for f in np.asarray(features)],
                           num_volumes=len(start), num_inference_steps=steps, generator=g,
                           start_latents=start, strength=float(strength))
            im, m = out.images, out.masks
        rows.append({"strength": float(strength), "denoising_steps": max(1, round(strength * steps)) if strength else 0,
                     **tumour_appearance(im, m)})
    return rows
