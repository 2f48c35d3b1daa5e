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

Metrics per test case (Dice, IoU, HD95), mean ± std over cases (and over training seeds
when several are run), and a paired Wilcoxon signed-rank test of each row against
"real". Beyond the paper: a data-scarce sweep of real vs real + SBLDM at several sizes.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np

from sbldm import paper
from sbldm.config import Config
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


def training_sets(train, samples: dict, cfg: Config, seed: int = 0) -> dict:
    """``{row: (images, masks)}`` for every Table 2 row."""
    n = len(train)
    real = (train.images, train.masks)
    aug = augment(*real, cfg.seg_augment_factor, seed=seed)
    synth = {}
    for name, key in SYNTHETIC.items():
        s = samples[key]
        if len(s["images"]) < n:
            raise ValueError(f"{key}: {len(s['images'])} synthetic volumes, need {n} (one per real volume); "
                             f"raise eval_n_samples")
        synth[name] = (s["images"][:n], s["masks"][:n])
    sets = {"real": real, f"real + augmentation (x{cfg.seg_augment_factor})": aug}
    for name, (im, m) in synth.items():
        sets[f"synthetic only: {name}"] = (im, m)
    for name, (im, m) in synth.items():
        sets[f"real + {name}"] = (np.concatenate([real[0], im]), np.concatenate([real[1], m]))
    sets["real + SBLDM + augmentation"] = (np.concatenate([aug[0], synth["SBLDM"][0]]),
                                           np.concatenate([aug[1], synth["SBLDM"][1]]))
    return sets


def train_and_predict(images, masks, test_images, cfg: Config, seed: int, work: Path, tag: str):
    """Train the configured backend on (images, masks) and predict ``test_images``."""
    if cfg.seg_backend == "fast":
        from sbldm.segmentation.fast import train_fast

        return train_fast(images, masks, cfg, seed=seed).predict(test_images), {"backend": "fast"}
    from sbldm.segmentation.fast import nnunet

    res = nnunet.train_and_predict(images, masks, test_images, cfg, work / "nnunet" / f"{tag}_seed{seed}", seed=seed)
    return res["predictions"], {k: v for k, v in res.items() if k != "predictions"}


def run_rows(sets: dict, test, cfg: Config, work: Path, seeds=None, progress=print) -> list[dict]:
    """Per-case metric rows ``{row, seed, case_id, dice, iou, hd95}`` for every row and seed."""
    seeds = tuple(cfg.seg_seeds if seeds is None else seeds)
    cases = []
    for k, (row, (images, masks)) in enumerate(sets.items()):
        for seed in seeds:
            t0 = time.time()
            pred, info = train_and_predict(images, masks, test.images, cfg, seed, work, f"row{k}")
            for r in evaluate(pred, test.masks, test.case_ids):
                cases.append({"row": row, "seed": seed, "n_train_volumes": len(images), **r})
            if progress:
                d = np.mean([c["dice"] for c in cases if c["row"] == row and c["seed"] == seed])
                progress(f"{row} (seed {seed}, {len(images)} volumes): Dice {d:.3f} in {time.time() - t0:.0f} s")
    return cases


def summarise(cases: list[dict], reference: str = "real") -> list[dict]:
    """Table 2 rows: mean ± std over test cases (seed-averaged per case), std across seeds,
    Wilcoxon p-value of the per-case Dice against ``reference``, the paper's numbers."""
    from scipy.stats import wilcoxon

    rows_order = list(dict.fromkeys(c["row"] for c in cases))

    def per_case(row, metric):
        by_case = {}
        for c in cases:
            if c["row"] == row:
                by_case.setdefault(c["case_id"], []).append(c[metric])
        return {k: float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else math.nan for k, v in by_case.items()}

    ref = per_case(reference, "dice") if reference in rows_order else None
    out = []
    for row in rows_order:
        seeds = sorted({c["seed"] for c in cases if c["row"] == row})
        entry = {"row": row, "n_train_volumes": next(c["n_train_volumes"] for c in cases if c["row"] == row),
                 "seeds": len(seeds)}
        for metric in ("dice", "iou", "hd95"):
            v = np.array(list(per_case(row, metric).values()))
            entry[f"{metric}_mean"] = float(np.nanmean(v))
            entry[f"{metric}_std"] = float(np.nanstd(v))
        if len(seeds) > 1:
            means = [np.mean([c["dice"] for c in cases if c["row"] == row and c["seed"] == s]) for s in seeds]
            entry["dice_std_across_seeds"] = float(np.std(means))
        d = per_case(row, "dice")
        if ref is not None and row != reference:
            keys = sorted(set(d) & set(ref))
            diff = np.array([d[k] - ref[k] for k in keys])
            entry["p_vs_real"] = float(wilcoxon(diff).pvalue) if np.any(diff != 0) and len(keys) > 1 else 1.0
        else:
            entry["p_vs_real"] = math.nan
        paper = PAPER_TABLE2.get(re.sub(r"\(x\d+\)", "(x5)", row), (None, None))
        entry["paper_dice"], entry["paper_iou"] = paper
        out.append(entry)
    return out


def table2_markdown(rows: list[dict], scale: str, backend: str, data: str, n_test: int) -> str:
    lines = ["| training set | volumes | DSC (ours) | IoU (ours) | HD95 vox (ours) | p vs real | DSC (paper) | IoU (paper) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["p_vs_real"]
        ptxt = "—" if p != p else (f"{p:.2g}" + (" *" if p < 0.05 else ""))
        lines.append(f"| {r['row']} | {r['n_train_volumes']} | {r['dice_mean']:.3f} ± {r['dice_std']:.3f} | "
                     f"{r['iou_mean']:.3f} ± {r['iou_std']:.3f} | {r['hd95_mean']:.2f} ± {r['hd95_std']:.2f} | {ptxt} | "
                     f"{r['paper_dice'] or '—'} | {r['paper_iou'] or '—'} |")
    notes = [
        f"scale `{scale}`, data: {data}, backend `{backend}`, {n_test} real test volumes; mean ± std across test cases"
        + (" (per-case values averaged over training seeds)" if any(r["seeds"] > 1 for r in rows) else ", one training seed"),
        "p vs real: two-sided Wilcoxon signed-rank test of per-case Dice against the 'real' row; * p < 0.05",
        "HD95 in voxels of the resampled grid; NaN when a prediction or mask is empty is left out of its mean",
        "the paper's numbers: nnU-Net on BraTS at 192x192x96 with 100 real training volumes",
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def scarce_sweep(train, samples: dict, test, cfg: Config, work: Path, sizes, seed: int = 0, progress=print) -> list[dict]:
    """Dice of real-only vs real + SBLDM (as many synthetic as real) at each real-set size."""
    synth = samples[SYNTHETIC["SBLDM"]]
    rows = []
    order = np.random.default_rng(seed).permutation(len(train))
    for n in sizes:
        n = min(int(n), len(train))
        idx = np.sort(order[:n])
        real = (train.images[idx], train.masks[idx])
        for name, (im, m) in {"real": real,
                              "real + SBLDM": (np.concatenate([real[0], synth["images"][:n]]),
                                               np.concatenate([real[1], synth["masks"][:n]]))}.items():
            pred, _ = train_and_predict(im, m, test.images, cfg, seed, work, f"scarce{n}_{name.replace(' ', '')}")
            d = [r["dice"] for r in evaluate(pred, test.masks)]
            rows.append({"n_real": n, "training_set": name, "dice_mean": float(np.mean(d)), "dice_std": float(np.std(d))})
            if progress:
                progress(f"scarce sweep: {n} real, {name}: Dice {np.mean(d):.3f}")
    return rows


def scarce_figure(rows: list[dict], scale: str):
    from sbldm.plotting import agg_pyplot

    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name in dict.fromkeys(r["training_set"] for r in rows):
        rs = [r for r in rows if r["training_set"] == name]
        x = [r["n_real"] for r in rs]
        ax.errorbar(x, [r["dice_mean"] for r in rs], yerr=[r["dice_std"] for r in rs], marker="o", capsize=3, label=name)
    ax.set_xlabel("real training volumes")
    ax.set_ylabel("Dice on the real test split")
    ax.set_title(f"data-scarce sweep ({scale})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
