"""One generator's sample set scored against the real training split, for the budget
curves (``sbldm.experiments.generator_budget``): interiors, shape pieces, sharpness,
realism, adherence to the request, the smallest request, diversity and memorisation.

``reference(train, test, features)`` computes the real data's side once;
``score(generator, kind, cfg, ref, ...)`` draws a sample set and returns one flat row;
``set_measures(images, labels, ref)`` is the part that needs no generator (the real test
split gets the same row, as the target a generator should reach).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

#: a sub-region counts as a dark part when its median z against normal brain is below this
DARK_Z = -0.5
#: the requests of the smallest-request test: the smallest training tumour, this many noise seeds
SMALLEST_SEEDS = 8
#: what the issue asks of the adopted generator (the README quotes them): |pieces - real|,
#: |dark share - real|, interior Wasserstein over spread, Fréchet over the real test split's
TARGETS = {"multi_piece_26_gap": 0.05, "dark_part_share_gap": 0.15, "interior_w_over_spread": 0.5,
           "frechet_ratio": 1.5, "smallest_empty": 0}


def pieces(masks, connectivity: int = 26) -> dict:
    """Connected pieces of each non-empty mask at 6- or 26-connectivity: their mean number
    and the share of masks in more than one piece."""
    from scipy import ndimage

    if connectivity not in (6, 26):
        raise ValueError(f"connectivity must be 6 or 26, got {connectivity}")
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    counts = [int(ndimage.label(m, structure=structure)[1]) for m in np.asarray(masks).astype(bool) if m.any()]
    if not counts:
        return {"mean": math.nan, "multi_share": math.nan}
    c = np.asarray(counts, float)
    return {"mean": float(c.mean()), "multi_share": float((c > 1).mean())}


def dark_part_share(rows: list[dict], threshold: float = DARK_Z) -> float:
    """Share of tumours (``subregion_appearance`` rows) with a sub-region whose median z is
    below ``threshold`` (darker than normal brain)."""
    from sbldm.data.tumour import LABEL_NAMES

    if not rows:
        return math.nan
    dark = [any(np.isfinite(r[f"median_z_{n}"]) and r[f"median_z_{n}"] < threshold for n in LABEL_NAMES.values())
            for r in rows]
    return float(np.mean(dark))


def _labels(images, masks, labels):
    """Sub-region label maps; a generator that draws only the whole tumour gets its mask as
    oedema (no core)."""
    if labels is not None:
        return np.asarray(labels, np.uint8)
    return np.asarray(masks, np.uint8) * 2


def reference(train, test, features=None) -> dict:
    """The real side of every comparison: the training split's tumour interiors
    (``subregion_appearance`` rows), its sharpness, its Fréchet features (``features``:
    images -> (N, F); None skips the Fréchet distance), and the real test split's Fréchet
    distance and nearest-training SSIM (what a generator that draws new real-looking
    volumes scores)."""
    from sbldm.evaluation.appearance import subregion_appearance
    from sbldm.evaluation.frechet import frechet_distance
    from sbldm.evaluation.generation import nearest_ssim
    from sbldm.evaluation.appearance import sharpness

    ref = {"train": train, "rows": subregion_appearance(train.images, train.labels),
           "sharpness": sharpness(train.images, train.labels), "features": features,
           "test_nearest": float(np.median(nearest_ssim(test.images, train.images)))
           if _ssim_fits(train.images) else math.nan}
    ref["real"] = {"dark_part_share": dark_part_share(ref["rows"]),
                   "texture_std_z": float(np.nanmedian([r["std_z_tumour"] for r in ref["rows"]])),
                   "multi_piece_26": pieces(train.labels > 0, 26)["multi_share"]}
    if features is not None:
        ref["train_features"] = features(train.images)
        ref["test_frechet"] = frechet_distance(ref["train_features"], features(test.images))
    return ref


def set_measures(images, masks, labels, ref: dict) -> dict:
    """Everything about one set of volumes that needs no generator, against ``ref``."""
    from sbldm.data.tumour import LABEL_NAMES
    from sbldm.evaluation.appearance import sharpness, subregion_appearance, subregion_summary

    images = np.asarray(images, np.float32)
    labels = _labels(images, masks, labels)
    wt = labels > 0
    rows = subregion_appearance(images, labels)
    summary = subregion_summary(rows, ref["rows"])
    real = ref["real"]
    sharp = sharpness(images, labels)
    p6, p26 = pieces(wt, 6), pieces(wt, 26)
    names = list(LABEL_NAMES.values())
    w = [summary[f"w_over_spread_{n}"] for n in names]
    out = {"n": int(len(images)), "empty_share": float((~wt.reshape(len(wt), -1).any(1)).mean()),
           "core_share": summary["core_share"],
           **{f"median_z_{n}": summary[f"median_z_{n}"] for n in names},
           **{f"w_over_spread_{n}": summary[f"w_over_spread_{n}"] for n in names},
           "interior_w_over_spread": float(np.nanmax(w)) if np.any(np.isfinite(w)) else math.nan,
           "dark_part_share": dark_part_share(rows), "dark_part_share_real": real["dark_part_share"],
           "texture_std_z": float(np.nanmedian([r["std_z_tumour"] for r in rows])) if rows else math.nan,
           "texture_std_z_real": real["texture_std_z"],
           "laplacian_ratio": sharp["laplacian"] / ref["sharpness"]["laplacian"],
           "high_frequency_ratio": sharp["high_frequency"] / ref["sharpness"]["high_frequency"],
           "pieces_6": p6["mean"], "multi_piece_6": p6["multi_share"],
           "pieces_26": p26["mean"], "multi_piece_26": p26["multi_share"],
           "multi_piece_26_real": real["multi_piece_26"]}
    out["dark_part_share_gap"] = abs(out["dark_part_share"] - real["dark_part_share"])
    out["multi_piece_26_gap"] = abs(out["multi_piece_26"] - real["multi_piece_26"])
    out.update(_realism(images, ref))
    return out


def _ssim_fits(volumes) -> bool:
    """Whether the volumes hold Table 1's 11^3 SSIM window."""
    from sbldm.evaluation.generation import SSIM_WIN

    return min(np.asarray(volumes).shape[1:]) >= SSIM_WIN


def _realism(images, ref: dict) -> dict:
    from sbldm.evaluation.frechet import frechet_distance
    from sbldm.evaluation.generation import nearest_ssim, pairwise_ms_ssim, unpaired_psnr_ssim

    div = pairwise_ms_ssim(images, max_volumes=20, seed=0)
    if _ssim_fits(images):
        near = nearest_ssim(images, ref["train"].images)
        table1 = unpaired_psnr_ssim(images, ref["train"].images, seed=0)
    else:                          # volumes smaller than the SSIM window (tests' tiny grids): no SSIM
        near = np.full(len(images), math.nan)
        table1 = {"psnr": {"mean": math.nan}, "ssim": {"mean": math.nan}}
    out = {"psnr": table1["psnr"]["mean"], "ssim": table1["ssim"]["mean"], "ms_ssim_pairwise": div["mean"],
           "nearest_train_ssim_median": float(np.median(near)),
           "nearest_train_ssim_max": float(np.max(near)),
           "nearest_train_ssim_vs_test": float(np.median(near)) / ref["test_nearest"]}
    if ref.get("features") is not None and len(images) > 2:
        fd = frechet_distance(ref["train_features"], ref["features"](images))
        out.update(frechet=fd, frechet_ratio=fd / ref["test_frechet"])
    else:
        out.update(frechet=math.nan, frechet_ratio=math.nan)
    return out


def _gen(seed: int):
    import torch

    return torch.Generator().manual_seed(int(seed))


def _draw(generator, kind: str, n: int, seed: int, conditions=None, bf16: bool = True):
    """(images, masks, labels) of ``n`` volumes; SBLDM with the requested ``conditions``
    (raw (n, 9)), the baselines unconditioned; diffusion models under bf16 autocast on the
    CPU when ``bf16``."""
    import torch

    from sbldm.config import FEATURE_NAMES
    from sbldm.runtime import cpu_bf16

    with cpu_bf16(bf16 and kind != "lsgan3d" and not torch.cuda.is_available()):
        if kind == "sbldm":
            conds = [dict(zip(FEATURE_NAMES, map(float, v))) for v in conditions]
            out = generator.generate(n, generator=_gen(seed), conditions=conds)
        else:
            out = generator.generate(n, generator=_gen(seed))
    return np.asarray(out.images, np.float32), np.asarray(out.masks, np.uint8), out.labels


def requests(train_features, volume_shape, n: int, seed: int) -> np.ndarray:
    """The raw tumour requests of a scored set: drawn from the training distribution
    (``ConditionSampler``), the same for every point and generator."""
    from sbldm.data.tumour import ConditionSampler

    return ConditionSampler(train_features, volume_shape).sample(n, rng=seed + 17)


def smallest_request(generator, train_features, seeds: int = SMALLEST_SEEDS, seed: int = 0) -> dict:
    """The smallest training tumour, requested ``seeds`` times with fresh noise: how many
    come out empty, and the median drawn volume over the requested one."""
    from sbldm.data.tumour import as_matrix

    feats = as_matrix(train_features)
    req = feats[int(np.argmin(feats[:, 0]))]
    images, masks, _ = _draw(generator, "sbldm", seeds, seed + 23, conditions=np.repeat(req[None], seeds, 0))
    vox = masks.reshape(seeds, -1).sum(1)
    return {"smallest_requested_voxels": float(req[0]), "smallest_empty": int((vox == 0).sum()),
            "smallest_volume_ratio": float(np.median(vox) / req[0])}


def score(generator, kind: str, ref: dict, n: int, cache: str | Path, seed: int = 0, batch_size: int = 10,
          progress: bool = False) -> dict:
    """One row: ``n`` volumes drawn from ``generator`` (a registry generator of ``kind``)
    with the requests ``requests`` gives, scored by ``set_measures``; for SBLDM also the
    adherence to the request (Spearman per feature, box and sphericity error, the
    volume and centre errors) and the smallest-request test. ``cache`` (.npz,
    ``cached_samples``) keeps the sample set, so a killed scoring does not draw it again."""
    from sbldm.evaluation.generation import conditioning_adherence
    from sbldm.evaluation.sample_cache import batch_seed, cached_samples

    train = ref["train"]
    req = requests(train.features, train.images.shape[1:], n, seed)

    def sample_fn(b, batch):
        done = batch - batch_seed(seed, 0)          # the batch's first volume (cached_samples' seeds)
        images, masks, labels = _draw(generator, kind, b, batch, conditions=req[done:done + b])
        return images, masks, req[done:done + b], labels

    s = cached_samples(cache, sample_fn, n, seed, batch_size, meta={"kind": kind}, progress=progress)
    row = {"generator": kind, **set_measures(s["images"], s["masks"], s["labels"], ref),
           "seconds_per_volume": float(np.median(s["seconds"])) if len(s["seconds"]) else math.nan}
    if kind == "sbldm":
        adh = conditioning_adherence(req, s["masks"])
        row.update({k: v for k, v in adh.items() if k not in ("n",)})
        row.update(smallest_request(generator, train.features, seed=seed))
    return row


#: a target further than this many doublings of the budget away counts as out of reach
MAX_DOUBLINGS = 20


def extrapolate(points: list[tuple[float, float]], target: float, last: int = 3) -> dict:
    """Where a curve of (training hours, measure) heads, for a measure that must fall to
    ``target``: a straight line through the last ``last`` points in log2(hours) (the change
    per doubling of the budget) and the hours at which it would reach the target.

    Returns ``met`` (the last point already meets it), ``per_doubling`` (the fitted change
    per doubling; NaN with fewer than 2 points), ``hours_to_target`` (the last point's hours
    when met; NaN unless each of the last ``last`` points is below the one before it (a
    single run's curve that rises or stalls at its end gives no line to trust), or when the
    line reaches the target only beyond ``MAX_DOUBLINGS`` doublings: budget alone is not
    shown to get there) and ``doublings`` (how many doublings past the last point)."""
    pts = sorted((float(h), float(v)) for h, v in points if math.isfinite(h) and h > 0 and math.isfinite(v))
    if not pts:
        return {"met": False, "per_doubling": math.nan, "hours_to_target": math.nan, "doublings": math.nan}
    h_last, v_last = pts[-1]
    if v_last <= target:
        return {"met": True, "per_doubling": _slope(pts[-last:]), "hours_to_target": h_last, "doublings": 0.0}
    slope = _slope(pts[-last:])
    tail = [v for _, v in pts[-last:]]
    steady = len(tail) > 1 and all(b < a for a, b in zip(tail, tail[1:]))
    doublings = (target - v_last) / slope if slope < 0 and steady else math.inf
    if doublings > MAX_DOUBLINGS:           # not falling steadily: budget alone is not shown to get there
        return {"met": False, "per_doubling": slope, "hours_to_target": math.nan, "doublings": math.nan}
    return {"met": False, "per_doubling": slope, "hours_to_target": h_last * 2 ** doublings, "doublings": doublings}


def _slope(pts) -> float:
    if len(pts) < 2:
        return math.nan
    x = np.log2([h for h, _ in pts])
    y = np.array([v for _, v in pts])
    if np.ptp(x) == 0:
        return math.nan
    return float(np.polyfit(x, y, 1)[0])


def target_report(rows: list[dict], generator: str = "sbldm") -> list[dict]:
    """Per target measure (``TARGETS``): ``generator``'s value at its largest budget, the
    target, whether it is met, and ``extrapolate``'s verdict on its curve."""
    pts = sorted((r for r in rows if r["generator"] == generator and r.get("cpu_hours")), key=lambda r: r["cpu_hours"])
    out = []
    for key, target in TARGETS.items():
        curve = [(r["cpu_hours"], float(r.get(key, math.nan))) for r in pts]
        ex = extrapolate(curve, target)
        out.append({"measure": key, "target": target, "value": curve[-1][1] if curve else math.nan,
                    "hours": curve[-1][0] if curve else math.nan, **ex})
    return out


#: Table 1's columns read from the budget rows, and which way is better
TABLE1_COLUMNS = {"psnr": "higher", "ssim": "higher", "seconds_per_volume": "lower"}


def matched_table1(rows: list[dict], generator: str = "sbldm", baselines=("ldm3d", "lsgan3d")) -> list[dict]:
    """Table 1 at matched compute: for every point of the ``baselines``, ``generator``'s
    point with the nearest training hours (ratio in log scale), both points' Table 1
    measures and the winner of each (``TABLE1_COLUMNS``)."""
    mine = [r for r in rows if r["generator"] == generator and r.get("cpu_hours")]
    out = []
    for other in rows:
        if other["generator"] not in baselines or not other.get("cpu_hours") or not mine:
            continue
        near = min(mine, key=lambda r: abs(math.log(r["cpu_hours"] / other["cpu_hours"])))
        row = {"baseline": other["generator"], "baseline_steps": other["steps"], "baseline_hours": other["cpu_hours"],
               f"{generator}_steps": near["steps"], f"{generator}_hours": near["cpu_hours"]}
        for col, better in TABLE1_COLUMNS.items():
            a, b = float(near.get(col, math.nan)), float(other.get(col, math.nan))
            row[f"{col}_{generator}"], row[f"{col}_baseline"] = a, b
            if math.isfinite(a) and math.isfinite(b) and a != b:
                row[f"{col}_winner"] = generator if (a > b) == (better == "higher") else other["generator"]
            else:
                row[f"{col}_winner"] = "tie" if a == b else ""
        out.append(row)
    return out
