"""The metrics of generated volumes: the paper's Table 1 metrics and the ones it lacked.

All functions take sbldm arrays: images (N, x, y, z) float in [-1, 1], masks (N, x, y, z)
binary. Images are compared in [0, 1].

- ``unpaired_psnr_ssim`` — Table 1 exactly as the authors computed it (their released
  code; ``docs/paper_vs_code.md``, "Evaluation (Table 1)"): each synthetic volume against a
  randomly permuted real *training* volume, FLAIR only, mapped to [0, 1], PSNR with data
  range 1 and a 3D SSIM with an 11^3 *uniform* window (torchmetrics
  ``gaussian_kernel=False``; identical to scikit-image's
  ``structural_similarity(gaussian_weights=False, use_sample_covariance=False)``).
  It measures closeness to an arbitrary real brain, not realism: read it beside the rest.
- ``pairwise_ms_ssim`` — diversity (MONAI MS-SSIM; kernel and scales recorded).
- ``feature_distribution_distance`` — mask realism: Wasserstein distance between the
  tumour-feature distributions of real and synthetic masks, per feature, divided by the
  real feature's standard deviation.
- ``conditioning_adherence`` — requested vs obtained tumour features (SBLDM only), and
  ``adherence_by_chance``, the floor it must beat.
- ``nearest_ssim`` — memorisation: SSIM of each volume to its nearest real training volume.
- ``time_per_volume`` — median wall time of several calls after a warm-up, synchronised on GPU.

Realism from feature statistics (the Fréchet distance) is in ``sbldm.evaluation.frechet``,
what tumours look like inside in ``sbldm.evaluation.appearance``.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np

from sbldm.data.tumour import feature_distribution_distance, mask_features, tumour_features  # noqa: F401  (re-exported)
from sbldm.metrics import finite_summary, psnr_volumes, ssim_map, to_unit
from sbldm.provenance import device_name
from sbldm.tables import row_columns

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
    return ssim_map(mx, my, sxx, syy, sxy, c1, c2).flatten(1).mean(1).reshape(lead).numpy()


def _window_mean(t, win: int):
    """The mean over a uniform ``win``^3 window (valid region) of (N, 1, X, Y, Z), as three
    1D box means: the numbers of one avg_pool3d of ``win``^3, ~40x fewer operations at 11^3."""
    import torch.nn.functional as F

    for k in ((win, 1, 1), (1, win, 1), (1, 1, win)):
        t = F.avg_pool3d(t, k, stride=1)
    return t


def unpaired_psnr_ssim(synthetic, real_train, seed: int = 0) -> dict:
    """The paper's PSNR/SSIM: synthetic volume k vs real training volume perm[k].

    With more synthetic than real volumes the permutation is drawn again for each block
    of ``len(real_train)``. Returns ``{"psnr": {mean, std, n}, "ssim": {...}, "pairs": [...],
    "values": {"psnr": [...], "ssim": [...]}}`` (per synthetic volume; sets drawn with the
    same ``seed`` pair volume k with the same real volume).
    """
    syn, real = to_unit(synthetic), to_unit(real_train)
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.permutation(len(real)) for _ in range(-(-len(syn) // len(real)))])[: len(syn)]
    p = psnr_volumes(syn, real[idx])
    s = ssim_uniform(syn, real[idx])
    return {"psnr": finite_summary(p), "ssim": finite_summary(s), "pairs": idx.tolist(),
            "values": {"psnr": [float(v) for v in p], "ssim": [float(v) for v in s]}}


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

    v = to_unit(volumes)
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
    return {**finite_summary(vals), "kernel_size": k, "scales": len(weights), "volumes": int(len(v))}


def conditioning_adherence(requested_features, masks) -> dict:
    """How closely generated masks follow the requested (raw) features.

    ``relative_volume_error``: median |V_obtained - V_requested| / V_requested;
    ``centre_distance``: median distance in voxels between requested and obtained centre
    of mass; ``spearman_volume`` / ``pearson_volume``: correlation between requested and
    obtained volume; ``empty_fraction``: masks with no tumour (counted as errors of 100%).
    Shape and the rest of the request: ``spearman_<feature>`` for each of the 9 features
    (requested against obtained over the non-empty masks; ``spearman_voxel_volume`` is
    ``spearman_volume`` without the empty masks), so ``spearman_sphericity`` and
    ``spearman_surface_area`` say whether the shape asked for is the shape drawn;
    ``sphericity_error``: median |obtained - requested| sphericity; ``box_error``: median
    relative error of the bounding box's three extents (w, h, d), over the non-empty masks.
    """
    from scipy.stats import pearsonr, spearmanr

    from sbldm.config import FEATURE_NAMES

    req = np.asarray(requested_features, np.float64)
    got = mask_features(masks)
    empty = np.isnan(got[:, 0])
    got_vol = np.where(empty, 0.0, got[:, 0])
    rel = np.abs(got_vol - req[:, 0]) / np.maximum(req[:, 0], 1e-9)
    dist = np.linalg.norm(got[~empty, 3:6] - req[~empty, 3:6], axis=1)
    ok = len(req) > 2 and np.ptp(req[:, 0]) > 0 and np.ptp(got_vol) > 0
    full, drawn = req[~empty], got[~empty]

    def rank_corr(k):
        a, b = full[:, k], drawn[:, k]
        return float(spearmanr(a, b).statistic) if len(a) > 2 and np.ptp(a) > 0 and np.ptp(b) > 0 else math.nan

    box = np.abs(drawn[:, 6:9] - full[:, 6:9]) / np.maximum(full[:, 6:9], 1e-9)
    return {
        "relative_volume_error": float(np.median(rel)),
        "centre_distance": float(np.median(dist)) if len(dist) else math.nan,
        "spearman_volume": float(spearmanr(req[:, 0], got_vol).statistic) if ok else math.nan,
        "pearson_volume": float(pearsonr(req[:, 0], got_vol).statistic) if ok else math.nan,
        "empty_fraction": float(empty.mean()),
        "n": int(len(req)),
        **{f"spearman_{name}": rank_corr(k) for k, name in enumerate(FEATURE_NAMES)},
        "sphericity_error": float(np.median(np.abs(drawn[:, 2] - full[:, 2]))) if len(full) else math.nan,
        "box_error": float(np.median(box)) if len(box) else math.nan,
    }


def adherence_by_chance(requested_features, real_features, seed: int = 0) -> dict:
    """The adherence a generator would score by ignoring the request: each requested tumour
    paired with a random real tumour (``real_features``, raw) as if that were obtained —
    the floor that ``conditioning_adherence`` must beat to show control."""
    req = np.asarray(requested_features, np.float64)
    real = np.asarray(real_features, np.float64)
    pick = real[np.random.default_rng(seed).integers(0, len(real), len(req))]
    return {"relative_volume_error": float(np.median(np.abs(pick[:, 0] - req[:, 0]) / np.maximum(req[:, 0], 1e-9))),
            "centre_distance": float(np.median(np.linalg.norm(pick[:, 3:6] - req[:, 3:6], axis=1)))}


def nearest_ssim(queries, references, exclude_self: bool = False, chunk: int = 32) -> np.ndarray:
    """For each query volume, the highest uniform-window SSIM to any reference volume
    (``ssim_uniform`` of every pair, computed from window statistics shared across pairs:
    each volume's local means and second moments once, only the cross moment per pair).

    A generator that memorised its training set gives values near 1 for its samples,
    higher than those of held-out real volumes against the same training set.
    """
    import torch

    win, c1, c2 = SSIM_WIN, SSIM_K1 ** 2, SSIM_K2 ** 2     # ssim_uniform's defaults, data range 1
    q = torch.as_tensor(np.asarray(to_unit(queries), dtype=np.float64))[:, None]
    r = torch.as_tensor(np.asarray(to_unit(references), dtype=np.float64))[:, None]
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
            sim = ssim_map(qm, r_mean[sl], qv, r_var[sl], cov, c1, c2).flatten(1).mean(1).numpy()
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


def precision_agreement(fp32: dict, bf16: dict, real_train, seed: int = 0) -> list[dict]:
    """Does sampling under bf16 autocast change what a generator draws? ``fp32`` and ``bf16``:
    sample sets (``{"images", "masks", "conditions"}``, e.g. ``sbldm.evaluation.table1``'s)
    drawn with the same batch seeds, so volume k of both answers the same request from the
    same starting noise. One row per set: adherence to the requests (``conditioning_adherence``)
    and the paper's unpaired PSNR/SSIM against ``real_train``; then one row of the pairs: mask
    Dice between the two draws of each request (empty pairs count 1) and the mean absolute
    image difference (images in [-1, 1])."""
    from sbldm.metrics import dice

    n = min(len(fp32["masks"]), len(bf16["masks"]))
    if n < 1:
        raise ValueError("precision_agreement needs at least one volume in each set")
    req = np.asarray(fp32["conditions"], np.float64)[:n]
    if bf16.get("conditions") is not None and not np.allclose(np.asarray(bf16["conditions"])[:n], req):
        raise ValueError("the two sets answer different requests: draw them with the same batch seeds")
    rows = []
    for name, s in (("fp32", fp32), ("bf16", bf16)):
        a = conditioning_adherence(req, np.asarray(s["masks"])[:n])
        q = unpaired_psnr_ssim(np.asarray(s["images"])[:n], real_train, seed=seed)
        rows.append({"set": name, "n": n, "relative_volume_error": a["relative_volume_error"],
                     "centre_distance": a["centre_distance"], "spearman_volume": a["spearman_volume"],
                     "spearman_sphericity": a["spearman_sphericity"], "empty_fraction": a["empty_fraction"],
                     "psnr": q["psnr"]["mean"], "ssim": q["ssim"]["mean"]})
    pair_dice = [dice(np.asarray(bf16["masks"][k]) > 0, np.asarray(fp32["masks"][k]) > 0) for k in range(n)]
    diff = [float(np.mean(np.abs(np.asarray(bf16["images"][k], np.float64) - np.asarray(fp32["images"][k], np.float64))))
            for k in range(n)]
    rows.append({"set": "bf16 vs fp32, same request and noise", "n": n, "pair_mask_dice_median": float(np.median(pair_dice)),
                 "pair_mask_dice_min": float(np.min(pair_dice)), "pair_image_mae": float(np.mean(diff))})
    columns = row_columns(rows)                                      # every row every column (a table)
    return [{c: r.get(c) for c in columns} for r in rows]
