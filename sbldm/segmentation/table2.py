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
  "real" (``sbldm.segmentation.statistics``); with ``seg_redraw_synthetic`` each seed
  trains on its own synthetic draw and augmentation (``synthetic_draw``,
  ``run_rows_by_seed``), so the spread holds the synthetic set's variance too;
- synthetic sets are checked (shapes, NaN, binary masks) and, for the extra
  "real + SBLDM (filtered)" row, quality-filtered against the tumour each volume was
  asked for, with the rejection rate recorded;
- HD95 in mm (the resampled grid's spacing) with the number of empty predictions beside it;
- with sub-region label maps (``tumour_labels="regions"``; the paper scores the whole tumour
  only) every row trains on label maps and is scored per BraTS region (WT, TC, ET): volume
  Dice and HD95, and the BraTS 2023 lesion-wise Dice and HD95
  (``sbldm.segmentation.brats_metrics``, which documents the definition it follows);
- every (row, seed) result is kept in ``work/<run>/segmentation/cases/`` under a key of its
  training data, test data and settings, so a killed run resumes and another notebook
  asking for the same training (notebook 11's full-size rows) reuses it.

The data-scarce regime and the protocols of using synthetic data are notebook 11's
(``sbldm.experiments.scarce_regime``).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sbldm import paper
from sbldm.config import Config
from sbldm.data.tumour import REGIONS, VALID_LABELS, tumour_features
from sbldm.segmentation.fast import CLASSES, evaluate
from sbldm.segmentation.statistics import summarise, summarised_regions

PAPER_TABLE2 = paper.TABLE2

#: Table 1 sample sets used as each generator's synthetic data
SYNTHETIC = {"3D-LSGAN": "3D-LSGAN", "3D-LDM": "3D-LDM", "SBLDM": "SBLDM (DDIM)"}


def read_sequences(cfg: Config) -> tuple[list[int], tuple[str, ...]]:
    """(indices into ``cfg.modalities``, their BraTS 2023 names) of the sequences the
    segmenter reads (``seg_sequences``; None: every loaded one)."""
    from sbldm.data.cohort import sequence_names

    names = sequence_names(cfg.modalities)
    read = names if cfg.seg_sequences is None else sequence_names(cfg.seg_sequences)
    return [names.index(r) for r in read], read


def _pick(sequences, cfg: Config) -> np.ndarray:
    """The ``read_sequences`` of (N, S, x, y, z) volumes: (N, S', x, y, z), or (N, x, y, z) for one."""
    idx, _ = read_sequences(cfg)
    seqs = np.asarray(sequences)
    return seqs[:, idx[0]] if len(idx) == 1 else seqs[:, idx]


def inputs(split, cfg: Config) -> np.ndarray:
    """What the segmenter reads of a prepared split: its FLAIR (N, x, y, z) in a chain of
    one sequence, else the sequences ``read_sequences`` names of those the models read
    (``sbldm.training.trainer.model_images``, which refuses a split of other sequences),
    (N, S, x, y, z), or (N, x, y, z) when that is one sequence."""
    from sbldm.training.trainer import model_images

    images = model_images(cfg, split)
    return np.asarray(images) if len(cfg.modalities) == 1 else _pick(images, cfg)


def sample_inputs(name: str, s: dict, cfg: Config) -> np.ndarray:
    """What the segmenter reads of a sample set (``sbldm.evaluation.table1``'s dict), as
    ``inputs`` of a split: a generator of several sequences gives them in ``cfg.modalities``
    order; one of one sequence can feed a segmenter of the FLAIR alone only."""
    if len(cfg.modalities) == 1:
        return np.asarray(s["images"])
    _, read = read_sequences(cfg)
    if s.get("sequences") is None:
        if read == ("t2f",):
            return np.asarray(s["images"])
        raise SyntheticSetError(f"{name}: the sample set holds one sequence; the segmenter reads {read}")
    return _pick(s["sequences"], cfg)


def targets(split, cfg: Config) -> np.ndarray:
    """What the segmenter learns of a prepared split: its label maps when the chain carries
    sub-regions (``cfg.tumour_labels == "regions"``), else its whole-tumour masks."""
    return np.asarray(split.labels if cfg.tumour_labels == "regions" else split.masks)


def augment(images, masks, factor: int, seed: int = 0):
    """``factor - 1`` randomly augmented copies of every (image, mask or label map), appended
    to the originals: ``factor`` x the input. MONAI transforms, seeded; masks and label maps
    are resampled nearest-neighbour, so they keep their values."""
    from monai.transforms import (Compose, Rand3DElasticd, RandAffined, RandFlipd, RandGaussianNoised,
                                  RandScaleIntensityd, RandShiftIntensityd)

    images, masks = np.asarray(images, np.float32), np.asarray(masks, np.uint8)
    multi = images.ndim == 5                  # (N, S, x, y, z): the sequences move together
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
            d = t({"image": im if multi else im[None], "mask": m[None].astype(np.float32)})
            out = np.asarray(d["image"], np.float32)
            ai.append(np.clip(out if multi else out[0], -1, 1))
            am.append(np.rint(np.asarray(d["mask"][0])).astype(np.uint8))
        out_i.append(np.stack(ai))
        out_m.append(np.stack(am))
    return np.concatenate(out_i), np.concatenate(out_m)


#: the quality-filtered SBLDM row (not in the paper)
FILTERED = "real + SBLDM (filtered)"


class SyntheticSetError(ValueError):
    """A synthetic training set that cannot be used (shape, NaN, a mask or label map with
    values it cannot hold, no label maps where the chain needs them)."""


def check_synthetic(name: str, images, masks, labels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(images, masks)`` as arrays, or ``SyntheticSetError`` naming ``name`` and the first
    bad volume; ``masks`` are binary, or label maps with values 0-3 when ``labels``."""
    images, masks = np.asarray(images), np.asarray(masks)
    spatial = images.shape if images.ndim == 4 else images.shape[:1] + images.shape[2:]
    if images.ndim not in (4, 5) or masks.ndim != 4 or spatial != masks.shape:
        raise SyntheticSetError(f"{name}: images {images.shape} and masks {masks.shape} must both be (N, x, y, z) "
                                "(or (N, S, x, y, z) images of S sequences)")
    valid = VALID_LABELS if labels else (0, 1)
    for i, (im, m) in enumerate(zip(images, masks)):
        if not np.all(np.isfinite(im)):
            raise SyntheticSetError(f"{name}: synthetic volume {i} holds NaN or infinite intensities")
        if not np.all(np.isin(m, valid)):
            what = "label map" if labels else "mask"
            kind = f"label values {list(valid)}" if labels else "binary"
            raise SyntheticSetError(f"{name}: the {what} of synthetic volume {i} is not {kind} "
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
        f = tumour_features(m > 0, empty="nan")
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


def synthetic_set(name: str, s: dict, n: int, labels: bool = False, cfg: Config | None = None) -> tuple:
    """``(images, masks or label maps, requested features or None)``: the first ``n`` volumes
    of one sample set, checked; ``labels`` asks for its sub-region label maps; with ``cfg``
    the images are what its segmenter reads (``sample_inputs``), else the FLAIR."""
    if len(s["images"]) < n:
        raise ValueError(f"{name}: {len(s['images'])} synthetic volumes, need {n}; raise eval_n_samples")
    if labels and s.get("labels") is None:
        raise SyntheticSetError(f"{name}: the sample set carries no sub-region label maps, and the segmenter "
                                "learns label maps (tumour_labels='regions'); resample it with a generator of "
                                "the regions")
    images = s["images"] if cfg is None else sample_inputs(name, s, cfg)
    im, m = check_synthetic(name, images[:n], (s["labels"] if labels else s["masks"])[:n], labels)
    cond = s.get("conditions")
    return im, m, None if cond is None else np.asarray(cond)[:n]


def synthetic_sets(samples: dict, n: int, labels: bool = False, cfg: Config | None = None) -> dict:
    """``{generator: (images, masks or label maps, requested features or None)}``: the first
    ``n`` volumes of each generator's Table 1 sample set, checked (generators without
    samples, e.g. baselines not trained when a shipped pipeline is evaluated, are left out)."""
    return {name: synthetic_set(name, samples[key], n, labels, cfg) for name, key in SYNTHETIC.items() if key in samples}


def training_sets(train, samples: dict, cfg: Config, seed: int = 0) -> tuple[dict, dict]:
    """``({row: (images, targets)}, filter report)`` for every Table 2 row, plus the
    quality-filtered SBLDM row when SBLDM's requested tumours are known; targets are label
    maps or whole-tumour masks as ``targets`` says."""
    n = len(train)
    real = (inputs(train, cfg), targets(train, cfg))
    aug = augment(*real, cfg.seg_augment_factor, seed=seed)
    synth = synthetic_sets(samples, n, labels=cfg.tumour_labels == "regions", cfg=cfg)
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
    validated every ``seg_curve_every`` steps up to ``seg_iterations`` (the whole tumour's
    Dice, or the mean over WT, TC and ET with label maps): ``{"curve", "budget",
    "n_fit", "n_val", "seconds", "seconds_per_iteration"}``."""
    from sbldm.segmentation.fast import train_fast

    fit, val = validation_split(len(train), cfg.seg_val_fraction, seed)
    images, masks = inputs(train, cfg), targets(train, cfg)
    t0 = time.time()
    seg = train_fast(images[fit], masks[fit], cfg, seed=seed, val=(images[val], masks[val]),
                     eval_every=cfg.seg_curve_every, classes=CLASSES[cfg.tumour_labels])
    seconds = time.time() - t0
    budget = choose_budget(seg.curve, cfg.seg_plateau_tolerance)
    if progress:
        best = max(r["val_dice"] for r in seg.curve)
        progress(f"learning curve: best validation Dice {best:.3f}; budget {budget} iterations "
                 f"(first within {cfg.seg_plateau_tolerance} of the best) in {seconds:.0f} s")
    return {"curve": seg.curve, "budget": budget, "n_fit": int(len(fit)), "n_val": int(len(val)),
            "seconds": seconds, "regions": cfg.tumour_labels == "regions"}


def budget(train, cfg: Config, work: Path, seed: int = 0, progress=print, name: str = "learning_curve") -> dict:
    """``learning_curve``'s result, kept in ``work/segmentation/<name>.json`` under a
    key of the training data, the seed and the segmentation settings: notebook 06 trains
    every row with the same budget, measured once; notebook 11 measures one per real-set
    size (``sbldm.experiments.scarce_regime.size_budgets``)."""
    from sbldm.io import atomic_write_json

    h = hashlib.sha256()
    _digest(h, inputs(train, cfg), targets(train, cfg))
    h.update(json.dumps({"seed": int(seed), "settings": _settings(cfg)}, sort_keys=True, default=str).encode())
    key = h.hexdigest()[:24]
    path = Path(work) / "segmentation" / f"{name}.json"
    if path.is_file():
        kept = json.loads(path.read_text())
        if kept.get("key") == key:
            return kept["result"]
    result = learning_curve(train, cfg, seed=seed, progress=progress)
    atomic_write_json(path, {"key": key, "result": result})
    return result


def curve_figure(result: dict, scale: str):
    from sbldm.plotting import agg_pyplot

    plt = agg_pyplot()
    curve = result["curve"]
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    what = "validation Dice" + (" (mean of WT, TC, ET)" if result.get("regions") else "")
    # neither colour is a region's or a method's (sbldm.plotting's palettes): a blue Dice, a grey loss
    dice_colour, loss_colour = "#1F4E9C", "0.45"
    ax.plot([r["iteration"] for r in curve], [r["val_dice"] for r in curve], marker="o", color=dice_colour, label=what)
    ax.axvline(result["budget"], color="k", ls="--", lw=1, label=f"budget: {result['budget']} iterations")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("Dice", color=dice_colour)
    ax.set_ylim(0, 1)
    ax2 = ax.twinx()
    ax2.plot([r["iteration"] for r in curve], [r["train_loss"] for r in curve], color=loss_colour, marker=".",
             ls=(0, (4, 2)), label="training loss (Dice + CE), right axis")
    ax2.set_ylabel("training loss", color=loss_colour)
    ax.set_title(f"segmenter learning curve ({scale}): {result['n_fit']} real volumes, "
                 f"{result['n_val']} validation", fontsize=9)
    # one legend for the lines of both axes, below the panel where it hides no point
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    fig.legend(handles, [h.get_label() for h in handles], loc="lower center", ncol=2, fontsize=7.5, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig


# -- training every row ----------------------------------------------------------------

@dataclass(frozen=True)
class PretrainFinetune:
    """A training set used in two phases (a protocol of notebook 11): ``pretrain`` (images,
    targets) for ``fraction`` of the budget, then ``finetune`` for the rest, starting from
    the pre-trained weights. The total number of optimiser steps is every row's budget."""

    pretrain: tuple
    finetune: tuple
    fraction: float

    def __len__(self) -> int:
        return len(self.pretrain[0]) + len(self.finetune[0])


def n_volumes(entry) -> int:
    """Training volumes of a set: an (images, targets) pair or a ``PretrainFinetune``."""
    return len(entry) if isinstance(entry, PretrainFinetune) else len(entry[0])


def train_and_predict(images, masks, test_images, cfg: Config, seed: int, work: Path, tag: str,
                      iterations: int | None = None):
    """Train the configured backend on (images, targets) — or on a ``PretrainFinetune``
    passed as ``images`` with ``masks`` None — and predict ``test_images``: (predictions,
    backend info with ``backend``, the one that trained). Targets are label maps with
    ``tumour_labels="regions"``, else masks. Pre-training then fine-tuning needs a network
    whose weights carry over between two runs at one budget: it runs with the fast backend
    whatever ``seg_backend`` says (``cfg.seg_iterations`` steps unless ``iterations``), and
    its info says so."""
    classes = CLASSES[cfg.tumour_labels]
    if isinstance(images, PretrainFinetune) and cfg.seg_backend != "fast":
        pred, info = train_and_predict(images, masks, test_images, cfg.replace(seg_backend="fast"), seed, work, tag,
                                       iterations)
        return pred, {**info, "instead_of": cfg.seg_backend}
    if cfg.seg_backend == "fast":
        from sbldm.segmentation.fast import train_fast

        if isinstance(images, PretrainFinetune):
            steps = cfg.seg_iterations if iterations is None else int(iterations)
            first = min(steps - 1, max(1, round(steps * images.fraction)))
            pre = train_fast(*images.pretrain, cfg, seed=seed, iterations=first, classes=classes)
            seg = train_fast(*images.finetune, cfg, seed=seed, iterations=steps - first, classes=classes, init=pre)
            return seg.predict(test_images), {"backend": "fast", "pretrain_steps": first}
        return (train_fast(images, masks, cfg, seed=seed, iterations=iterations, classes=classes).predict(test_images),
                {"backend": "fast"})
    from sbldm.segmentation import nnunet

    res = nnunet.train_and_predict(images, masks, test_images, cfg, work / "nnunet" / f"{tag}_seed{seed}", seed=seed)
    return res["predictions"], {"backend": "nnunet", **{k: v for k, v in res.items() if k != "predictions"}}


def spacings(split) -> list[tuple[float, float, float]] | None:
    """Voxel sizes (mm) of a prepared split's resampled grid, from its affines."""
    affines = getattr(split, "affines", None)
    if affines is None:
        return None
    return [tuple(float(v) for v in np.linalg.norm(np.asarray(a)[:3, :3], axis=0)) for a in affines]


def score(pred, test, cfg: Config) -> list[dict]:
    """Per-case rows of one trained network on the test split: ``dice``, ``iou``, ``hd95``
    (mm; NaN when one side is empty) and ``empty_prediction`` of the whole tumour, and for
    every region R (WT, TC, ET with label maps; WT alone otherwise) ``dice_R``, ``hd95_R``
    and the BraTS 2023 lesion-wise ``lesion_dice_R``, ``lesion_hd95_R``, with the lesion
    counts ``lesions_R``, ``missed_R`` and ``false_positives_R``
    (``sbldm.segmentation.brats_metrics``; HD95 there with the BraTS penalty for an empty side)."""
    from sbldm.segmentation import brats_metrics as bm

    pred, ref = np.asarray(pred), targets(test, cfg)
    sp = spacings(test) or [(1.0, 1.0, 1.0)] * len(ref)
    rows = evaluate(pred > 0, ref > 0, test.case_ids, spacings=sp)
    regions = tuple(REGIONS) if cfg.tumour_labels == "regions" else ("WT",)      # a binary mask's 1 lies in WT
    for row, p, r, s in zip(rows, pred, ref, sp):
        sc = bm.score_case(p, r, s, regions=regions)
        for region in regions:
            row.update({f"dice_{region}": sc[f"{region}_dice"], f"hd95_{region}": sc[f"{region}_hd95"],
                        f"lesion_dice_{region}": sc[f"{region}_lesion_dice"],
                        f"lesion_hd95_{region}": sc[f"{region}_lesion_hd95"],
                        f"lesions_{region}": sc[f"{region}_n_lesions"], f"missed_{region}": sc[f"{region}_n_missed"],
                        f"false_positives_{region}": sc[f"{region}_n_false_positive"]})
    return rows


#: nnU-Net settings the fast backend never reads, left out of its results' keys so that a
#: fast-backend result kept before the field existed is still found (the older nnU-Net
#: fields stay in every key: leaving them out now would orphan every kept result)
NNUNET_ONLY = ("seg_nnunet_batch_size",)


#: segmentation fields that shape the study (its seeds, sizes, rows, how its sets are drawn
#: and filtered, how a budget is chosen), not one training run, whose data, seed and budget
#: its key holds already: left out of the key, so that changing the study keeps every
#: result it still needs
STUDY_ONLY = ("seg_seeds", "seg_scarce_sizes", "seg_count_sweep", "seg_redraw_synthetic", "seg_synthetic_bf16",
              "seg_nnunet_check", "seg_nnunet_check_seeds", "seg_nnunet_check_always", "seg_val_fraction",
              "seg_curve_every", "seg_plateau_tolerance", "seg_filter_max_centre_distance",
              "seg_filter_max_volume_error", "seg_protocol_synthetic_fraction", "seg_pretrain_fraction",
              "seg_augment_factor")


def _settings(cfg: Config) -> dict:
    """The config fields a segmentation run's result depends on (besides its data and seed);
    a field added to the config later counts only when set away from its default, as in
    ``Config.hash``, so adding one keeps every kept result."""
    from sbldm.config import fields

    skip = STUDY_ONLY + (NNUNET_ONLY if cfg.seg_backend == "fast" else ())
    added = {f.name: f.default for f in fields() if f.added}
    return {k: v for k, v in cfg.to_dict().items()
            if (k.startswith("seg_") or k == "tumour_labels") and k not in skip
            and not (k in added and v == added[k])}


def _digest(h, *arrays) -> None:
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())


def case_key(entry, test, cfg: Config, seed: int, iterations: int | None) -> str:
    """The key of one (training set, seed) result: a hash of the training images and
    targets (both phases of a ``PretrainFinetune``), the test images, targets and spacing,
    the seed, the budget and every segmentation setting (for nnU-Net also how its export
    declares the labels)."""
    h = hashlib.sha256()
    if isinstance(entry, PretrainFinetune):
        h.update(f"pretrain-finetune {entry.fraction!r}".encode())
        _digest(h, *entry.pretrain, *entry.finetune)
    else:
        _digest(h, *entry)
    _digest(h, inputs(test, cfg), targets(test, cfg))
    h.update(json.dumps({"seed": int(seed), "iterations": iterations, "settings": _settings(cfg),
                         "spacings": spacings(test), "ids": list(test.case_ids)}, sort_keys=True,
                        default=str).encode())
    if cfg.seg_backend == "nnunet":     # how the export declares the labels changes what nnU-Net learns
        from sbldm.data.cohort import NNUNET_LABELS, NNUNET_REGIONS_CLASS_ORDER

        h.update(json.dumps({"nnunet_labels": NNUNET_LABELS[cfg.tumour_labels],
                             "regions_class_order": NNUNET_REGIONS_CLASS_ORDER.get(cfg.tumour_labels)},
                            sort_keys=True).encode())
    return h.hexdigest()[:24]


def run_rows(sets: dict, test, cfg: Config, work: Path, seeds=None, iterations: int | None = None,
             progress=print, tag: str = "row") -> list[dict]:
    """Per-case metric rows ``{row, seed, n_train_volumes, case_id, dice, iou, hd95,
    empty_prediction, <region metrics of score>, seconds}`` for every row and seed (``tag``
    names the rows' nnU-Net work folders). Each (row, seed) result is kept in
    ``work/segmentation/cases/<case_key>.json`` and read back instead of retrained."""
    from sbldm.io import atomic_write_json

    seeds = tuple(cfg.seg_seeds if seeds is None else seeds)
    cache = Path(work) / "segmentation" / "cases"
    cases = []
    for k, (row, entry) in enumerate(sets.items()):
        images, masks = (entry, None) if isinstance(entry, PretrainFinetune) else entry
        for seed in seeds:
            path = cache / f"{case_key(entry, test, cfg, seed, iterations)}.json"
            if path.is_file():
                done = json.loads(path.read_text())
                rows, seconds, reused = done["rows"], done["seconds"], True
                backend = done.get("backend", "fast" if isinstance(entry, PretrainFinetune) else cfg.seg_backend)
            else:
                t0 = time.time()
                pred, info = train_and_predict(images, masks, inputs(test, cfg), cfg, seed, work, f"{tag}{k}", iterations)
                seconds, reused, backend = time.time() - t0, False, info.get("backend", cfg.seg_backend)
                rows = score(pred, test, cfg)
                atomic_write_json(path, {"row": row, "seed": seed, "seconds": seconds, "backend": backend,
                                         "rows": rows})
            cases += [{"row": row, "seed": seed, "n_train_volumes": n_volumes(entry), "backend": backend, **r,
                       "seconds": seconds} for r in rows]
            if progress:
                progress(f"{row} (seed {seed}, {n_volumes(entry)} volumes): Dice {np.mean([r['dice'] for r in rows]):.3f} "
                         f"in {seconds:.0f} s" + (" (kept from an earlier run)" if reused else ""))
    return cases


def synthetic_draw(cfg: Config, seed: int) -> int:
    """The noise seed of the synthetic set that training seed ``seed`` trains on: ``cfg.seed
    + seed`` with ``seg_redraw_synthetic`` (training seed 0 keeps Table 1's set, every other
    seed a fresh draw of the same generator and condition distribution), else ``cfg.seed``
    (Table 1's one set for every seed)."""
    return cfg.seed + int(seed) if cfg.seg_redraw_synthetic else cfg.seed


def seed_sets(train, sets: dict, cfg: Config, draw_samples):
    """``sets_for(seed)`` for ``run_rows_by_seed``: ``sets`` (built on Table 1's sample sets)
    for a training seed whose draw is Table 1's (``synthetic_draw``; not with
    ``seg_synthetic_bf16``, whose draws are all bf16 and Table 1's fp32), else ``training_sets``
    on ``draw_samples(draw)`` (that draw's sample sets, e.g.
    ``sbldm.evaluation.table1.sample_methods(..., draw=draw)``) with the augmentation seeded
    by the same draw."""
    def sets_for(seed):
        draw = synthetic_draw(cfg, seed)
        if draw == cfg.seed and not cfg.seg_synthetic_bf16:
            return sets
        return training_sets(train, draw_samples(draw), cfg, seed=draw)[0]

    return sets_for


def run_rows_by_seed(sets_for, test, cfg: Config, work: Path, seeds=None, iterations: int | None = None,
                     progress=print, tag: str = "row") -> list[dict]:
    """``run_rows`` with training sets of their own per training seed: ``sets_for(seed)`` ->
    ``{row: entry}`` (e.g. built on that seed's synthetic draw, ``synthetic_draw``), built
    one seed at a time so that only one seed's sets are held in memory. The kept results of
    ``run_rows`` are keyed by the training data, so a seed whose sets did not change is read
    back."""
    cases = []
    for seed in tuple(cfg.seg_seeds if seeds is None else seeds):
        cases += run_rows(sets_for(seed), test, cfg, work, seeds=(seed,), iterations=iterations, progress=progress,
                          tag=tag)
    return cases


# -- the table -------------------------------------------------------------------------


def _p(p) -> str:
    return "—" if p != p else (f"{p:.2g}" + (" *" if p < 0.05 else ""))


def table2_markdown(rows: list[dict], scale: str, backend: str, data: str, n_test: int,
                    notes: list[str] = ()) -> str:
    regions = summarised_regions(rows[0]) if rows else []
    many = len(regions) > 1
    head = ["training set", "volumes", "seeds"]
    if many:
        head += [f"Dice {r}" for r in regions]
        head += [f"lesion-wise Dice {' / '.join(regions)}", f"lesion-wise HD95 mm {' / '.join(regions)}",
                 "IoU WT", "HD95 WT mm", "empty pred.", f"p vs real {' / '.join(regions)} (Holm)"]
    else:
        head += ["DSC (ours)", "IoU (ours)", "HD95 mm (ours)"]
        if regions:
            head += ["lesion-wise DSC", "lesion-wise HD95 mm"]
        head += ["empty pred.", "p vs real (Holm)"]
    head += ["DSC (paper)", "IoU (paper)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["row"], str(r["n_train_volumes"]), str(r["seeds"])]
        pm = lambda k, d=3: f"{r[k + '_mean']:.{d}f} ± {r[k + '_seed_std']:.{d}f}"  # noqa: E731
        empty = f"{r['empty_predictions']:.1f} / {r['n_test']}"
        if many:
            cells += [pm(f"dice_{g}") for g in regions]
            cells += [" / ".join(f"{r[f'lesion_dice_{g}_mean']:.3f}" for g in regions),
                      " / ".join(f"{r[f'lesion_hd95_{g}_mean']:.1f}" for g in regions),
                      pm("iou"), f"{r['hd95_mean']:.1f}", empty,
                      " / ".join(_p(r[f"p_holm_{g}"]) for g in regions)]
        else:
            cells += [pm("dice"), pm("iou"), f"{r['hd95_mean']:.1f}"]
            if regions:
                cells += [f"{r['lesion_dice_WT_mean']:.3f}", f"{r['lesion_hd95_WT_mean']:.1f}"]
            cells += [empty, _p(r["p_holm"])]
        cells += [str(r["paper_dice"] or "—"), str(r["paper_iou"] or "—")]
        lines.append("| " + " | ".join(cells) + " |")
    n_seeds = max(r["seeds"] for r in rows)
    std = ("± the sample std across seeds of the per-seed mean" if n_seeds > 1
           else "one training seed, so no spread across seeds (± 0)")
    what = (f"Dice per BraTS region ({', '.join(regions)}: whole tumour, tumour core, enhancing tumour)" if many
            else "DSC and IoU of the whole tumour")
    notes = [
        f"scale `{scale}`, data: {data}, backend `{backend}`, {n_test} real test volumes; {what}: mean over "
        f"{n_seeds} training seed(s) of the per-seed mean over test cases, {std}",
        "p vs real: two-sided Wilcoxon signed-rank test, paired by test case, of the per-case Dice averaged over the "
        "seeds, against the 'real' row; Holm-corrected for the number of rows compared"
        + (" (within each region)" if many else "") + "; * p < 0.05. It accounts for "
        "case-to-case variation and multiple comparisons; seed-to-seed variation enters only through the averaging, "
        "and the draw of the synthetic volumes (one sample set per generator) and of the real split not at all",
        "HD95 WT in mm on the resampled grid, averaged over the (seed, case) pairs where both masks are non-empty; "
        "'empty pred.': test cases per seed (mean over seeds) where the network predicted no tumour at all "
        "(Dice 0, HD95 undefined)",
        *(["lesion-wise Dice and HD95: the BraTS 2023 (BraTS-GLI) definition, sbldm.segmentation.brats_metrics: the "
           "reference dilated 3 times to group and match lesions, lesions of at most 50 mm³ left out, every missed "
           "lesion and every false-positive component scored Dice 0 and HD95 374 mm; a case with neither scores 1 and 0"]
          if regions else []),
        *notes,
        "the paper's numbers: nnU-Net on BraTS at 192x192x96 with 100 real training volumes, one run, whole tumour only",
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + seed_paired_markdown(rows)


def seed_paired_markdown(rows: list[dict]) -> str:
    """The rows of a summarised Table 2 against real only with the training run as the unit
    (``statistics.summarise``'s seed-paired columns): per row and region the mean per-seed
    difference with its 95% interval, the seeds above, the t-test p over seeds (raw and
    Holm over the table), the exact signed-rank p beside it, and the verdict. Empty when
    the rows carry no such columns (no real-only row) or one seed alone."""
    rows = [r for r in rows if r["seeds"] > 1 and any(k.startswith("verdict_") and r[k] for k in r)]
    if not rows:
        return ""
    suffixes = [k[len("verdict_"):] for k in rows[0] if k.startswith("verdict_")]
    lines = ["", "", "Against real only, the training run as the unit (paired by training seed):", "",
             "| training set | region | difference [95%] | seeds above | t-test p | Holm | signed-rank p | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for g in suffixes:
            d = r.get(f"diff_{g}")
            if d is None or d != d:
                continue
            above = r.get(f"seeds_above_real_{g}", "")
            lines.append(" | ".join([
                f"| {r['row']}", "WT" if g == "all" else g,
                f"{d:+.3f} [{r[f'ci95_low_{g}']:+.3f}, {r[f'ci95_high_{g}']:+.3f}]",
                f"{above}/{r['seeds']}" if above != "" else "—", _p(r[f"p_seeds_raw_{g}"]), _p(r[f"p_seeds_{g}"]),
                _p(r.get(f"p_rank_raw_{g}", float("nan"))), f"{r[f'verdict_{g}']} |"]))
    lines += ["", "- difference: the mean over training seeds of the per-seed mean over test cases of row - real "
                  "(both trained with that seed); 95% interval: hierarchical bootstrap, seeds then test cases",
              "- t-test p: one-sample t-test of the per-seed differences; Holm over every row x region of this table; "
                  "signed-rank p: the exact Wilcoxon test of the same differences, unadjusted (its smallest value is "
                  "2 / 2^seeds, 0.002 at 10 seeds)",
              "- verdict: a gain or loss only when the interval excludes 0, the difference reaches the seed-to-seed "
                  "spread of real only and the Holm p is below 0.05; otherwise no detectable effect"]
    return "\n".join(lines)


# -- the nnU-Net confirmation ---------------------------------------------------------

def effect_regions(rows: list[dict], row: str = "real + SBLDM") -> list[str]:
    """The regions (``all`` without regions) where ``row`` of a summarised table has a
    seed-paired verdict against real only that is a gain or a loss."""
    r = next((x for x in rows if x["row"] == row), None)
    if r is None:
        return []
    return [k[len("verdict_"):] for k, v in r.items() if k.startswith("verdict_") and v in ("gain", "loss")]


def confirmation_needed(rows: list[dict], cfg: Config, row: str = "real + SBLDM") -> bool:
    """Whether notebook 06 confirms ``row`` against real only with nnU-Net: with the fast
    backend and ``seg_nnunet_check``, where the fast backend finds an effect
    (``effect_regions``) or always with ``seg_nnunet_check_always``."""
    if cfg.seg_backend != "fast" or not cfg.seg_nnunet_check:
        return False
    return bool(cfg.seg_nnunet_check_always or effect_regions(rows, row))


def drop_nnunet_check(tables_dir: Path) -> list[Path]:
    """Remove ``table2_nnunet_check.*`` from ``tables_dir``: a run that does not confirm
    with nnU-Net (``confirmation_needed`` false) must not leave an earlier run's
    confirmation for the claims table to read as its own. Returns the files removed."""
    gone = []
    for f in sorted(Path(tables_dir).glob("table2_nnunet_check.*")):
        f.unlink()
        gone.append(f)
    return gone


def nnunet_check(sets, test, cfg: Config, work: Path, seeds=None, rows=("real", "real + SBLDM"),
                 progress=print) -> list[dict]:
    """The rows ``rows`` trained once more with the nnU-Net backend, with the seeds
    ``seeds`` (default ``seg_nnunet_check_seeds``): does the fast backend's conclusion hold
    under the paper's segmenter? ``sets``: the training sets, or ``sets_for(seed)`` (each
    seed on its own draw, ``run_rows_by_seed``)."""
    ncfg = cfg.replace(seg_backend="nnunet")
    seeds = tuple(cfg.seg_nnunet_check_seeds if seeds is None else seeds)
    sets_for = sets if callable(sets) else (lambda seed: sets)

    def chosen(seed):                   # one seed's sets built once, then the rows to confirm
        built = sets_for(seed)
        return {r: built[r] for r in rows}

    cases = run_rows_by_seed(chosen, test, ncfg, work / "nnunet_check", seeds=seeds, progress=progress)
    return summarise(cases)
