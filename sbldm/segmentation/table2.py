"""Table 2 (notebook 06): does synthetic data help a segmentation network? (paper §3.5)

Every row trains the same segmentation backend on a different training set and tests it
on the held-out real test split:

- real — the real training split;
- real + augmentation (x5) — the real split plus augmented copies up to 5x its size
  (MONAI random flips, small rotations and scaling, elastic deformation, intensity
  shift/scale, noise; offline, seeded);
- synthetic only — as many synthetic volumes of one generator as there are real ones;
- real + synthetic — both (the paper: 100 + 100);
- real + SBLDM + augmentation — the augmented real set plus the SBLDM volumes.

The protocol (issue "Table 2 that can show the paper's effect"):

- the fast backend's budget of optimiser steps is chosen from a learning curve of a
  real-only run validated on a part of the real training split (``learning_curve``), and
  applied to every row the same way;
- every row is trained with every seed of ``seg_seeds``; the table gives the mean over
  seeds of the per-seed mean Dice with its spread across seeds, and tests each row against
  "real" on the per-case Dice averaged over seeds (Wilcoxon signed-rank, Holm-corrected for
  the number of rows compared);
- synthetic sets are checked (shapes, NaN, binary masks) and, for the extra
  "real + SBLDM (filtered)" row, quality-filtered against the tumour each volume was
  asked for, with the rejection rate recorded;
- HD95 in mm (the resampled grid's spacing) with the number of empty predictions beside it;
- beyond the paper's table: the data-scarce regime, real-only vs real + 100 SBLDM volumes
  at several real-set sizes, every point over the same seeds.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np

from sbldm import paper
from sbldm.config import Config
from sbldm.data.tumour import tumour_features
from sbldm.segmentation.fast import evaluate

PAPER_TABLE2 = paper.TABLE2

#: Table 1 sample sets used as each generator's synthetic data
SYNTHETIC = {"3D-LSGAN": "3D-LSGAN", "3D-LDM": "3D-LDM", "SBLDM": "SBLDM (DDIM)"}


def augment(images, masks, factor: int, seed: int = 0):
    """``factor - 1`` randomly augmented copies of every (image, mask), appended to the
    originals: ``factor`` x the input. MONAI transforms, seeded; masks stay binary."""
    from monai.transforms import (Compose, Rand3DElasticd, RandAffined, RandFlipd, RandGaussianNoised,
                                  RandScaleIntensityd, RandShiftIntensityd)

    images, masks = np.asarray(images, np.float32), np.asarray(masks, np.uint8)
    if factor < 1:
        raise ValueError(f"augmentation factor must be >= 1, got {factor}")
    keys = ("image", "mask")
    t = Compose([
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandAffined(keys, prob=0.8, rotate_range=(0.0, 0.0, np.deg2rad(10)), scale_range=(0.1, 0.1, 0.1),
                    mode=("bilinear", "nearest"), padding_mode="border"),
        Rand3DElasticd(keys, sigma_range=(5, 7), magnitude_range=(20, 60), prob=0.3,
                       mode=("bilinear", "nearest"), padding_mode="border"),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
        RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        RandGaussianNoised("image", std=0.03, prob=0.3),
    ])
    t.set_random_state(seed=seed)
    out_i, out_m = [images], [masks]
    for _ in range(factor - 1):
        ai, am = [], []
        for im, m in zip(images, masks):
            d = t({"image": im[None], "mask": m[None].astype(np.float32)})
            ai.append(np.clip(np.asarray(d["image"][0], np.float32), -1, 1))
            am.append((np.asarray(d["mask"][0]) > 0.5).astype(np.uint8))
        out_i.append(np.stack(ai))
        out_m.append(np.stack(am))
    return np.concatenate(out_i), np.concatenate(out_m)



#: the quality-filtered SBLDM row (not in the paper)
FILTERED = "real + SBLDM (filtered)"


class SyntheticSetError(ValueError):
    """A synthetic training set that cannot be used (shape, NaN, non-binary mask)."""


def check_synthetic(name: str, images, masks) -> tuple[np.ndarray, np.ndarray]:
    """``(images, masks)`` as arrays, or ``SyntheticSetError`` naming ``name`` and the first bad volume."""
    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 4 or images.shape != masks.shape:
        raise SyntheticSetError(f"{name}: images {images.shape} and masks {masks.shape} must both be (N, x, y, z)")
    for i, (im, m) in enumerate(zip(images, masks)):
        if not np.all(np.isfinite(im)):
            raise SyntheticSetError(f"{name}: synthetic volume {i} holds NaN or infinite intensities")
        if not np.all(np.isin(m, (0, 1))):
            raise SyntheticSetError(f"{name}: the mask of synthetic volume {i} is not binary "
                                    f"(values {np.unique(m)[:5].tolist()})")
    return images.astype(np.float32), masks.astype(np.uint8)


def quality_filter(masks, requested, cfg: Config) -> tuple[np.ndarray, dict]:
    """Which synthetic volumes carry the tumour they were asked for: a non-empty mask whose
    centre lies within ``seg_filter_max_centre_distance`` voxels of the requested centre and
    whose volume is within ``seg_filter_max_volume_error`` (relative) of the requested one.
    ``requested``: the raw 9-feature rows the volumes were sampled with (voxel units of the
    training grid, as ``sbldm.data.tumour``). Returns (keep mask, counts of each rejection)."""
    masks, req = np.asarray(masks), np.asarray(requested, np.float64)
    if len(req) != len(masks):
        raise ValueError(f"{len(req)} requested tumours for {len(masks)} synthetic masks")
    keep = np.zeros(len(masks), bool)
    report = {"n": int(len(masks)), "rejected_empty": 0, "rejected_centre": 0, "rejected_volume": 0}
    for i, (m, r) in enumerate(zip(masks, req)):
        f = tumour_features(m, empty="nan")
        if math.isnan(f["voxel_volume"]):
            report["rejected_empty"] += 1
            continue
        if np.linalg.norm(np.array([f["x"], f["y"], f["z"]]) - r[3:6]) > cfg.seg_filter_max_centre_distance:
            report["rejected_centre"] += 1
            continue
        if abs(f["voxel_volume"] - r[0]) > cfg.seg_filter_max_volume_error * max(r[0], 1e-9):
            report["rejected_volume"] += 1
            continue
        keep[i] = True
    report["kept"] = int(keep.sum())
    report["rejection_rate"] = float(1 - keep.mean()) if len(keep) else math.nan
    return keep, report


def synthetic_sets(samples: dict, n: int) -> dict:
    """``{generator: (images, masks, requested features or None)}``: the first ``n`` volumes
    of each generator's Table 1 sample set, checked (generators without samples, e.g.
    baselines not trained when a shipped pipeline is evaluated, are left out)."""
    out = {}
    for name, key in SYNTHETIC.items():
        if key not in samples:
            continue
        s = samples[key]
        if len(s["images"]) < n:
            raise ValueError(f"{key}: {len(s['images'])} synthetic volumes, need {n} (one per real volume); "
                             f"raise eval_n_samples")
        im, m = check_synthetic(name, s["images"][:n], s["masks"][:n])
        cond = s.get("conditions")
        out[name] = (im, m, None if cond is None else np.asarray(cond)[:n])
    return out


def training_sets(train, samples: dict, cfg: Config, seed: int = 0) -> tuple[dict, dict]:
    """``({row: (images, masks)}, filter report)`` for every Table 2 row, plus the
    quality-filtered SBLDM row when SBLDM's requested tumours are known."""
    n = len(train)
    real = (np.asarray(train.images), np.asarray(train.masks))
    aug = augment(*real, cfg.seg_augment_factor, seed=seed)
    synth = synthetic_sets(samples, n)
    sets = {"real": real, f"real + augmentation (x{cfg.seg_augment_factor})": aug}
    for name, (im, m, _) in synth.items():
        sets[f"synthetic only: {name}"] = (im, m)
    for name, (im, m, _) in synth.items():
        sets[f"real + {name}"] = (np.concatenate([real[0], im]), np.concatenate([real[1], m]))
    report = {}
    im, m, req = synth["SBLDM"]
    if req is not None:
        keep, report = quality_filter(m, req, cfg)
        sets[FILTERED] = (np.concatenate([real[0], im[keep]]), np.concatenate([real[1], m[keep]]))
    sets["real + SBLDM + augmentation"] = (np.concatenate([aug[0], im]), np.concatenate([aug[1], m]))
    return sets, report


# -- the budget ------------------------------------------------------------------------

def validation_split(n: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) indices of ``n`` training volumes, seeded; at least one of each."""
    if n < 2:
        raise ValueError(f"a validation split needs at least 2 training volumes, got {n}")
    n_val = min(n - 1, max(1, round(fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def choose_budget(curve: list[dict], tolerance: float) -> int:
    """The first iteration whose validation Dice is within ``tolerance`` of the curve's best."""
    if not curve:
        raise ValueError("empty learning curve")
    best = max(r["val_dice"] for r in curve)
    return int(next(r["iteration"] for r in curve if r["val_dice"] >= best - tolerance))


def learning_curve(train, cfg: Config, seed: int = 0, progress=print) -> dict:
    """A real-only fast-backend run on the training split minus ``seg_val_fraction`` of it,
    validated every ``seg_curve_every`` steps up to ``seg_iterations``: ``{"curve", "budget",
    "n_fit", "n_val", "seconds", "seconds_per_iteration"}``."""
    from sbldm.segmentation.fast import train_fast

    fit, val = validation_split(len(train), cfg.seg_val_fraction, seed)
    images, masks = np.asarray(train.images), np.asarray(train.masks)
    t0 = time.time()
    seg = train_fast(images[fit], masks[fit], cfg, seed=seed, val=(images[val], masks[val]),
                     eval_every=cfg.seg_curve_every)
    seconds = time.time() - t0
    budget = choose_budget(seg.curve, cfg.seg_plateau_tolerance)
    if progress:
        best = max(r["val_dice"] for r in seg.curve)
        progress(f"learning curve: best validation Dice {best:.3f}; budget {budget} iterations "
                 f"(first within {cfg.seg_plateau_tolerance} of the best) in {seconds:.0f} s")
    return {"curve": seg.curve, "budget": budget, "n_fit": int(len(fit)), "n_val": int(len(val)),
            "seconds": seconds}


def curve_figure(result: dict, scale: str):
    from sbldm.plotting import agg_pyplot

    plt = agg_pyplot()
    curve = result["curve"]
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    ax.plot([r["iteration"] for r in curve], [r["val_dice"] for r in curve], marker="o", label="validation Dice")
    ax.axvline(result["budget"], color="k", ls="--", lw=1, label=f"budget: {result['budget']} iterations")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("Dice", color="C0")
    ax.set_ylim(0, 1)
    ax2 = ax.twinx()
    ax2.plot([r["iteration"] for r in curve], [r["train_loss"] for r in curve], color="C1", marker=".",
             label="training loss (Dice + CE)")
    ax2.set_ylabel("training loss", color="C1")
    ax.set_title(f"segmenter learning curve ({scale}): {result['n_fit']} real volumes, "
                 f"{result['n_val']} validation", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


# -- training every row ----------------------------------------------------------------

def train_and_predict(images, masks, test_images, cfg: Config, seed: int, work: Path, tag: str,
                      iterations: int | None = None):
    """Train the configured backend on (images, masks) and predict ``test_images``."""
    if cfg.seg_backend == "fast":
        from sbldm.segmentation.fast import train_fast

        return train_fast(images, masks, cfg, seed=seed, iterations=iterations).predict(test_images), {"backend": "fast"}
    from sbldm.segmentation import nnunet

    res = nnunet.train_and_predict(images, masks, test_images, cfg, work / "nnunet" / f"{tag}_seed{seed}", seed=seed)
    return res["predictions"], {k: v for k, v in res.items() if k != "predictions"}


def spacings(split) -> list[tuple[float, float, float]] | None:
    """Voxel sizes (mm) of a prepared split's resampled grid, from its affines."""
    affines = getattr(split, "affines", None)
    if affines is None:
        return None
    return [tuple(float(v) for v in np.linalg.norm(np.asarray(a)[:3, :3], axis=0)) for a in affines]


def run_rows(sets: dict, test, cfg: Config, work: Path, seeds=None, iterations: int | None = None,
             progress=print, tag: str = "row") -> list[dict]:
    """Per-case metric rows ``{row, seed, n_train_volumes, case_id, dice, iou, hd95,
    empty_prediction, seconds}`` for every row and seed (``tag`` names the rows' work folders)."""
    seeds = tuple(cfg.seg_seeds if seeds is None else seeds)
    sp = spacings(test)
    cases = []
    for k, (row, (images, masks)) in enumerate(sets.items()):
        for seed in seeds:
            t0 = time.time()
            pred, info = train_and_predict(images, masks, test.images, cfg, seed, work, f"{tag}{k}", iterations)
            seconds = time.time() - t0
            rows = evaluate(pred, test.masks, test.case_ids, spacings=sp)
            cases += [{"row": row, "seed": seed, "n_train_volumes": len(images), **r, "seconds": seconds} for r in rows]
            if progress:
                progress(f"{row} (seed {seed}, {len(images)} volumes): Dice {np.mean([r['dice'] for r in rows]):.3f} "
                         f"in {seconds:.0f} s")
    return cases


# -- the table -------------------------------------------------------------------------

def holm(pvalues: dict) -> dict:
    """Holm-Bonferroni adjusted p-values of a family ``{name: p}`` (NaN entries left out)."""
    items = sorted(((p, k) for k, p in pvalues.items() if not math.isnan(p)))
    m, out, running = len(items), {}, 0.0
    for i, (p, k) in enumerate(items):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return {k: out.get(k, math.nan) for k in pvalues}


def _per_case(cases, row, metric) -> dict:
    by_case = {}
    for c in cases:
        if c["row"] == row:
            by_case.setdefault(c["case_id"], []).append(float(c[metric]))
    return {k: float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else math.nan for k, v in by_case.items()}


def _per_seed(cases, row, metric, reduce=np.mean) -> list[float]:
    seeds = sorted({c["seed"] for c in cases if c["row"] == row})
    return [float(reduce([float(c[metric]) for c in cases if c["row"] == row and c["seed"] == s])) for s in seeds]


def summarise(cases: list[dict], reference: str = "real") -> list[dict]:
    """Table 2 rows: mean over seeds of the per-seed mean Dice/IoU, their spread across
    seeds (sample std; 0 with one seed), the std across cases of the seed-averaged per-case
    Dice, HD95 over the cases where it is defined with the mean number of empty predictions
    per seed beside it, and the Wilcoxon signed-rank p-value of the seed-averaged per-case
    Dice against ``reference``, raw and Holm-corrected over the rows compared."""
    from scipy.stats import wilcoxon

    rows_order = list(dict.fromkeys(c["row"] for c in cases))
    ref = _per_case(cases, reference, "dice") if reference in rows_order else None
    out = []
    for row in rows_order:
        sel = [c for c in cases if c["row"] == row]
        seeds = sorted({c["seed"] for c in sel})
        entry = {"row": row, "n_train_volumes": sel[0]["n_train_volumes"], "seeds": len(seeds),
                 "n_test": len({c["case_id"] for c in sel})}
        for metric in ("dice", "iou"):
            per_seed = _per_seed(cases, row, metric)
            entry[f"{metric}_mean"] = float(np.mean(per_seed))
            entry[f"{metric}_seed_std"] = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
        entry["dice_case_std"] = float(np.nanstd(list(_per_case(cases, row, "dice").values())))
        hd = np.array([float(c["hd95"]) for c in sel])
        entry["hd95_mean"] = float(np.nanmean(hd)) if np.any(~np.isnan(hd)) else math.nan
        entry["hd95_n"] = int(np.sum(~np.isnan(hd)))
        entry["empty_predictions"] = float(np.mean(_per_seed(cases, row, "empty_prediction", reduce=np.sum)))
        entry["seconds_per_training"] = float(np.mean([c.get("seconds", math.nan) for c in sel]))
        d = _per_case(cases, row, "dice")
        if ref is not None and row != reference:
            keys = sorted(set(d) & set(ref))
            diff = np.array([d[k] - ref[k] for k in keys])
            entry["p_vs_real"] = float(wilcoxon(diff).pvalue) if np.any(diff != 0) and len(keys) > 1 else 1.0
        else:
            entry["p_vs_real"] = math.nan
        paper = PAPER_TABLE2.get(re.sub(r"\(x\d+\)", "(x5)", row), (None, None))
        entry["paper_dice"], entry["paper_iou"] = paper
        out.append(entry)
    adjusted = holm({r["row"]: r["p_vs_real"] for r in out})
    for r in out:
        r["p_holm"] = adjusted[r["row"]]
    return out


def _p(p) -> str:
    return "—" if p != p else (f"{p:.2g}" + (" *" if p < 0.05 else ""))


def table2_markdown(rows: list[dict], scale: str, backend: str, data: str, n_test: int,
                    notes: list[str] = ()) -> str:
    lines = ["| training set | volumes | seeds | DSC (ours) | IoU (ours) | HD95 mm (ours) | empty pred. | "
             "p vs real (Holm) | DSC (paper) | IoU (paper) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['n_train_volumes']} | {r['seeds']} | {r['dice_mean']:.3f} ± {r['dice_seed_std']:.3f} | "
                     f"{r['iou_mean']:.3f} ± {r['iou_seed_std']:.3f} | {r['hd95_mean']:.1f} | "
                     f"{r['empty_predictions']:.1f} / {r['n_test']} | {_p(r['p_holm'])} | "
                     f"{r['paper_dice'] or '—'} | {r['paper_iou'] or '—'} |")
    n_seeds = max(r["seeds"] for r in rows)
    std = ("± the sample std across seeds of the per-seed mean" if n_seeds > 1
           else "one training seed, so no spread across seeds (± 0)")
    notes = [
        f"scale `{scale}`, data: {data}, backend `{backend}`, {n_test} real test volumes; DSC and IoU: mean over "
        f"{n_seeds} training seed(s) of the per-seed mean over test cases, {std}",
        "p vs real: two-sided Wilcoxon signed-rank test, paired by test case, of the per-case Dice averaged over the "
        "seeds, against the 'real' row; Holm-corrected for the number of rows compared; * p < 0.05. It accounts for "
        "case-to-case variation and multiple comparisons; seed-to-seed variation enters only through the averaging, "
        "and the draw of the synthetic volumes (one sample set per generator) and of the real split not at all",
        "HD95 in mm on the resampled grid, averaged over the (seed, case) pairs where both masks are non-empty; "
        "'empty pred.': test cases per seed (mean over seeds) where the network predicted no tumour at all "
        "(Dice 0, HD95 undefined)",
        *notes,
        "the paper's numbers: nnU-Net on BraTS at 192x192x96 with 100 real training volumes, one run",
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


# -- the data-scarce regime ------------------------------------------------------------

def scarce_regime(train, samples: dict, test, cfg: Config, work: Path, sizes=None, seeds=None,
                  iterations: int | None = None, reuse: list[dict] | None = None, progress=print) -> list[dict]:
    """Per-seed mean Dice of real-only vs real + SBLDM (all ``len(train)`` synthetic volumes,
    100 as in the paper) with ``n`` real volumes, for each size and seed. The real subset of
    size ``n`` is drawn with the training seed; at the full size it is the whole split, so
    the Table 2 cases in ``reuse`` (rows "real" and "real + SBLDM", same seeds) are reused."""
    sizes = tuple(cfg.seg_scarce_sizes if sizes is None else sizes)
    seeds = tuple(cfg.seg_seeds if seeds is None else seeds)
    synth_im, synth_m, _ = synthetic_sets(samples, len(train))["SBLDM"]
    images, masks = np.asarray(train.images), np.asarray(train.masks)
    out = []
    for n in sorted({min(int(s), len(train)) for s in sizes}):
        for seed in seeds:
            idx = np.sort(np.random.default_rng(seed).permutation(len(train))[:n])
            sets = {"real": (images[idx], masks[idx]),
                    "real + SBLDM": (np.concatenate([images[idx], synth_im]), np.concatenate([masks[idx], synth_m]))}
            for name, (im, m) in sets.items():
                prior = [c for c in (reuse or []) if c["row"] == name and c["seed"] == seed]
                reused = n == len(train) and bool(prior)
                if not reused:
                    prior = run_rows({name: (im, m)}, test, cfg, work, seeds=(seed,), iterations=iterations,
                                     progress=None, tag=f"scarce{n}_{name.replace(' ', '')}")
                dice, seconds = float(np.mean([c["dice"] for c in prior])), prior[0].get("seconds")
                out.append({"n_real": n, "n_synthetic": len(im) - n, "training_set": name, "seed": seed,
                            "dice_mean": dice, "seconds": seconds, "from_table2": reused})
                if progress:
                    progress(f"scarce regime: {n} real, {name}, seed {seed}: Dice {dice:.3f}")
    return out


def summarise_scarce(rows: list[dict]) -> list[dict]:
    """Per (n_real, training set): mean and sample std across seeds of the per-seed mean Dice."""
    out = []
    for key in dict.fromkeys((r["n_real"], r["training_set"]) for r in rows):
        d = [r["dice_mean"] for r in rows if (r["n_real"], r["training_set"]) == key]
        out.append({"n_real": key[0], "training_set": key[1], "seeds": len(d), "dice_mean": float(np.mean(d)),
                    "dice_seed_std": float(np.std(d, ddof=1)) if len(d) > 1 else 0.0})
    return out


def scarce_figure(summary: list[dict], scale: str):
    from sbldm.plotting import agg_pyplot

    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name in dict.fromkeys(r["training_set"] for r in summary):
        rs = [r for r in summary if r["training_set"] == name]
        ax.errorbar([r["n_real"] for r in rs], [r["dice_mean"] for r in rs], yerr=[r["dice_seed_std"] for r in rs],
                    marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xticks(sorted({r["n_real"] for r in summary}))
    ax.set_xticklabels([str(n) for n in sorted({r["n_real"] for r in summary})])
    ax.set_ylim(0, 1)
    ax.set_xlabel("real training volumes")
    ax.set_ylabel("Dice on the real test split")
    seeds = max(r["seeds"] for r in summary)
    ax.set_title(f"data-scarce regime ({scale}): mean ± std over {seeds} seed(s)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# -- the nnU-Net confirmation ---------------------------------------------------------

def nnunet_check(sets: dict, test, cfg: Config, work: Path, seed: int = 0, rows=("real", "real + SBLDM"),
                 progress=print) -> list[dict]:
    """The rows ``rows`` trained once more with the nnU-Net backend (one seed): does the fast
    backend's conclusion hold under the paper's segmenter?"""
    import dataclasses

    ncfg = dataclasses.replace(cfg, seg_backend="nnunet")
    chosen = {r: sets[r] for r in rows}
    cases = run_rows(chosen, test, ncfg, work / "nnunet_check", seeds=(seed,), progress=progress)
    return summarise(cases)
