"""The conditioning ablation of notebook 07 (issue "Tumours on request"): the paper's
route for the condition against each option of ``sbldm.diffusion.unet_inputs``, at one
training budget shared by every row, on one trained slice VAE and one latent cache.

Per row: the latent UNet is trained for ``steps`` steps with the row's config fields
(``work/<run>/ablation/<row>/``, resumable), then asked for ``n_requests`` tumours drawn
from the training distribution (``ConditionSampler``, one fixed draw for every row) with
DDIM (the scores are kept in ``<row>/evaluation.json`` and read back while the weights,
the requests and the data are unchanged); the decoded masks are compared with the request (``conditioning_adherence``) and
the images with the real test split (realism):

- ``frechet_latent``: Fréchet distance between the slice-VAE posterior means of the
  generated volumes and of the real test volumes, average-pooled to (C, 2, 2, 4) — a
  feature space every row shares and that needs no extra network;
- ``ms_ssim_pairwise``: mean MS-SSIM among generated volumes (diversity; lower = more
  diverse);
- what the tumours look like inside (``sbldm.evaluation.appearance``): the share with a
  dark part and of masks in several pieces and, where the pipeline draws label maps, the
  share with a core and each sub-region's intensity distance to the real training
  tumours (``w_over_spread_*``);
- for the row conditioned on the sub-regions (``condition_subregions``; left out of a
  chain without label maps): ``share_error``, the mean absolute difference between the
  necrosis and enhancing shares asked for (drawn from training tumours) and those drawn.

The real test split's own values (test vs train for the Fréchet distance, test pairs for
MS-SSIM) and the chance floor of the adherence metrics (``adherence_by_chance``) come with
the table.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from sbldm.config import Config
from sbldm.evaluation import generation as ev
from sbldm.evaluation.frechet import frechet_distance
from sbldm.io import atomic_write_json
from sbldm.paths import slug

#: a row's sampled-and-scored result, kept beside its weights so that a rerun (a new
#: figure, a new row) does not sample the rows that did not change
EVALUATION_FILE = "evaluation.json"

#: the sub-region columns of a row whose pipeline draws label maps (``subregion_summary``
#: against the real training tumours)
APPEARANCE_COLUMNS = ("core_share", "w_over_spread_necrosis", "w_over_spread_oedema", "w_over_spread_enhancing")

#: the paper's route for the condition, every option of the tumour channel off (set
#: explicitly, so a preset that turns options on leaves this row the paper's). The
#: prediction target is the preset's in every row but the x0 one (v at ``small``, where
#: the noise target left the samples unformed: docs/paper_vs_code.md)
PAPER_ROUTE = {"condition_normalization": "max", "unet_spatial_prior": False, "diffusion_tumour_weight": 0.0,
               "diffusion_ema_decay": 0.0, "diffusion_mixed_precision": "no", "diffusion_snr_gamma": 0.0,
               "condition_subregions": False}

#: the tumour channel the ``small`` preset adopted from the first ablation (docs/paper_vs_code.md)
SMALL_ROUTE = {"diffusion_mixed_precision": "bf16", "condition_normalization": "zscore", "unet_spatial_prior": True}

#: the rows: the paper's route, the ``small`` route, then the remedies for tumours drawn
#: without their inside, one at a time (fields beyond PAPER_ROUTE; ``steps_factor``
#: multiplies the shared budget). The first ablation's other rows (fp32 vs bf16, a
#: tumour-weighted loss, EMA) and what they measured are in docs/decisions.md.
ROWS = {
    "paper route (bf16 autocast)": {"diffusion_mixed_precision": "bf16"},
    "small route (z-scored conditions + spatial prior)": SMALL_ROUTE,
    "small route without the spatial prior": {**SMALL_ROUTE, "unet_spatial_prior": False},
    "+ min-SNR weighting (gamma 5)": {**SMALL_ROUTE, "diffusion_snr_gamma": 5.0},
    "+ x0 target": {**SMALL_ROUTE, "diffusion_prediction_type": "sample"},
    "+ sub-region condition (necrosis and enhancing shares)": {**SMALL_ROUTE, "condition_subregions": True},
    "small route, twice the budget": {**SMALL_ROUTE, "steps_factor": 2},
}


def latent_features(vae, images, labels, pool=(2, 2, 4)) -> np.ndarray:
    """(N, F): slice-VAE posterior means of each (image, label map) volume, average-pooled to ``pool``."""
    from sbldm.diffusion.latents import encode_volumes

    mean, _ = encode_volumes(vae, np.asarray(images, np.float32), np.asarray(labels, np.uint8), progress=False)
    return pooled(mean, pool)


def pooled(means: np.ndarray, pool=(2, 2, 4)) -> np.ndarray:
    """(N, F): stacked posterior means (N, C, H', W', D) average-pooled to ``pool``."""
    import torch
    import torch.nn.functional as F

    return F.adaptive_avg_pool3d(torch.from_numpy(np.asarray(means, np.float32)), pool).flatten(1).numpy()


def run(cfg: Config, train, test, vae, latents, work_dir, rows: dict | None = None, steps: int = 500,
        n_requests: int = 50, guidance_scale: float = 1.0, num_inference_steps: int = 50,
        sample_autocast: bool = True, batch_size: int = 10, progress: bool = False, log=print) -> list[dict]:
    """One result row per ablation row (see the module docstring). ``sample_autocast``:
    sample under bf16 autocast on CPU (the benchmark's fast path), the same for every row."""
    import time

    import torch

    from sbldm.data.tumour import FEATURE_NAMES, ConditionSampler
    from sbldm.evaluation.appearance import subregion_appearance, subregion_summary, tumour_appearance
    from sbldm.runtime import cpu_bf16
    from sbldm.training.trainer import read_log, train_pipeline

    rows = ROWS if rows is None else rows
    requested = ConditionSampler(train.features, cfg.volume_shape).sample(n_requests, rng=cfg.seed + 17)
    chance = ev.adherence_by_chance(requested, train.features, seed=cfg.seed)
    real_test = latent_features(vae, test.images, test.labels)
    real_train = pooled(latents.mean)                  # the training latents are already encoded
    reference = subregion_appearance(train.images, train.labels) if train.labels.max() > 1 else None
    # what a row's kept evaluation must have been computed from to be read back
    evaluation_key = {"requests": _array_digest(requested), "test": _array_digest(test.images, test.labels),
                      "train": _array_digest(train.images, train.labels), "num_inference_steps": num_inference_steps,
                      "guidance_scale": float(guidance_scale), "sample_autocast": bool(sample_autocast),
                      "batch_size": int(batch_size), "seed": int(cfg.seed)}
    out = []
    for name, fields in rows.items():
        fields = dict(fields)
        if fields.get("condition_subregions") and cfg.tumour_labels != "regions":
            log(f"ablation row {name!r} left out: the sub-region condition needs label maps (tumour_labels='regions')")
            continue
        row_steps = int(steps * fields.pop("steps_factor", 1))
        row_cfg = cfg.replace(diffusion_steps=row_steps, **{**PAPER_ROUTE, **fields})
        folder = Path(work_dir) / slug(name, strip=True, lower=True, max_len=60)
        log(f"ablation row {name!r}: training {row_steps} steps -> {folder}")
        pipe = train_pipeline(row_cfg, vae, latents, train, folder, progress=progress)
        key = {**evaluation_key, "row": name, "steps": row_steps, "fields": fields,
               "weights": _file_digest(folder / "diffusion_pytorch_model.safetensors")}
        kept = _read_evaluation(folder, key)
        if kept is not None:                           # sampled and scored before, with these very inputs
            log(f"  -> read back from {folder / EVALUATION_FILE}")
            out.append(kept)
            continue
        log_records = read_log(folder)
        train_time = float(log_records[-1]["time_s"]) if log_records else float("nan")
        images, masks, drew_labels, asked = [], [], False, []
        t0 = time.perf_counter()
        bf16 = sample_autocast and pipe.device.type == "cpu"
        for start in range(0, len(requested), batch_size):
            block = requested[start:start + batch_size]
            with cpu_bf16(bf16):
                s = pipe(conditions=[dict(zip(FEATURE_NAMES, map(float, v))) for v in block], sampler="ddim",
                         num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                         generator=torch.Generator().manual_seed(cfg.seed + start))
            images.append(s.images)
            masks.append(s.masks if s.labels is None else s.labels)     # label maps where the model draws them
            drew_labels = s.labels is not None
            if s.subregions is not None:
                asked.append(s.subregions)
        images, labels = np.concatenate(images), np.concatenate(masks)
        masks = (labels > 0).astype(np.uint8)
        adh = ev.conditioning_adherence(requested, masks)
        div = ev.pairwise_ms_ssim(images, max_volumes=20, seed=cfg.seed)
        fd = frechet_distance(real_test, latent_features(vae, images, labels))
        look = tumour_appearance(images, masks)
        inside = subregion_summary(subregion_appearance(images, labels), reference) if drew_labels else {}
        share_error = float("nan")
        if asked and drew_labels:
            from sbldm.data.tumour import subregion_shares

            got = subregion_shares(labels)
            share_error = float(np.nanmean(np.abs(got - np.concatenate(asked))))
        out.append({"row": name, "steps": row_steps, "train_time_s": train_time,
                    "final_loss": log_records[-1]["loss"] if log_records else float("nan"),
                    **{k: adh[k] for k in ("empty_fraction", "spearman_volume", "relative_volume_error",
                                           "centre_distance")},
                    "chance_relative_volume_error": chance["relative_volume_error"],
                    "chance_centre_distance": chance["centre_distance"],
                    "frechet_latent": fd, "ms_ssim_pairwise": div["mean"],
                    "dark_core_share": look["dark_core_share"],
                    "multi_component_fraction": look["multi_component_fraction"],
                    **{k: inside[k] for k in APPEARANCE_COLUMNS if k in inside},
                    "share_error": share_error, "n_requests": int(n_requests),
                    "sample_time_s_per_volume": (time.perf_counter() - t0) / len(requested),
                    "fields": ", ".join(f"{k}={v}" for k, v in fields.items()) or "the paper's route"})
        atomic_write_json(folder / EVALUATION_FILE, {"key": json.loads(json.dumps(key, default=str)), "row": out[-1]})
        log(f"  -> empty {adh['empty_fraction']:.2f}, spearman {adh['spearman_volume']:.2f}, "
            f"centre {adh['centre_distance']:.1f} vx, rel. volume error {adh['relative_volume_error']:.2f}")
    look = tumour_appearance(test.images, test.masks)
    inside = subregion_summary(subregion_appearance(test.images, test.labels), reference) if reference else {}
    ref = {"row": "real test split (reference)", "frechet_latent": frechet_distance(real_test, real_train),
           "ms_ssim_pairwise": ev.pairwise_ms_ssim(test.images, max_volumes=20, seed=cfg.seed)["mean"],
           "dark_core_share": look["dark_core_share"], "multi_component_fraction": look["multi_component_fraction"],
           **{k: inside[k] for k in APPEARANCE_COLUMNS if k in inside}, "n_requests": len(test.images)}
    return out + [ref]


def _array_digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _read_evaluation(folder: Path, key: dict) -> dict | None:
    """A row's kept evaluation when it was computed from ``key``'s inputs, else None (a
    missing, unreadable or outdated file is simply recomputed)."""
    path = folder / EVALUATION_FILE
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(kept, dict) or kept.get("key") != json.loads(json.dumps(key, default=str)):
        return None
    return kept.get("row")


def summary(rows: list[dict], scale: str) -> str:
    """A few sentences on what the ablation table shows, written from its numbers."""
    runs = [r for r in rows if r.get("empty_fraction") is not None]
    if not runs:
        return "No ablation row ran."
    base, best = runs[0], min(runs, key=lambda r: (r["empty_fraction"], r["centre_distance"]))
    ref = next((r for r in rows if r not in runs), {})
    lines = [f"At `{scale}`, with {base['steps']} training steps per row and {base['n_requests']} requests:",
             f"- the paper's route leaves {base['empty_fraction']:.0%} of the masks empty, puts the obtained "
             f"tumour {base['centre_distance']:.1f} voxels from the requested centre (random pairing: "
             f"{base['chance_centre_distance']:.1f}) and reaches a volume Spearman of {base['spearman_volume']:.2f};",
             f"- the best row, **{best['row']}**, leaves {best['empty_fraction']:.0%} empty, is "
             f"{best['centre_distance']:.1f} voxels off, with Spearman {best['spearman_volume']:.2f} and a median "
             f"relative volume error of {best['relative_volume_error']:.2f} (chance: "
             f"{best['chance_relative_volume_error']:.2f});"]
    if ref:
        lines.append(f"- realism: Fréchet latent distance {base['frechet_latent']:.2f} (paper route) and "
                     f"{best['frechet_latent']:.2f} (best row) against {ref['frechet_latent']:.2f} between the real "
                     f"test and training splits; pairwise MS-SSIM {best['ms_ssim_pairwise']:.3f} against "
                     f"{ref['ms_ssim_pairwise']:.3f} among real test volumes.")
    if ref.get("dark_core_share") is not None:
        looks = ", ".join(f"{r['row']} {r['dark_core_share']:.2f}" for r in runs)
        lines.append(f"- inside the tumour: the share with a dark part is {ref['dark_core_share']:.2f} among real test "
                     f"tumours and, per row, {looks}; masks in several pieces: real "
                     f"{ref['multi_component_fraction']:.2f}, rows "
                     + ", ".join(f"{r['multi_component_fraction']:.2f}" for r in runs) + ".")
    if all(r.get("w_over_spread_necrosis") is not None for r in runs):
        closest = min(runs, key=lambda r: np.nanmean([r[f"w_over_spread_{k}"] for k in ("necrosis", "oedema", "enhancing")]))
        lines.append(f"- sub-region intensities closest to the real training tumours: **{closest['row']}** (Wasserstein "
                     "over the real spread: " + ", ".join(f"{k} {closest[f'w_over_spread_{k}']:.2f}"
                                                        for k in ("necrosis", "oedema", "enhancing"))
                     + f"; tumours with a core {closest['core_share']:.2f}).")
    bought = remedies_bought(rows)
    if bought:
        lines.append("- what each remedy bought against the small route (change in Fréchet distance, in the gap "
                     "to the real share of tumours with a dark part, in the mean sub-region intensity distance; "
                     "negative is better; and its training time):")
        for b in bought:
            lines.append(f"  - {b['row']}: Fréchet {b['frechet']:+.3f}, dark-part gap {b['dark_gap']:+.2f}, "
                         f"intensity distance {b['w_mean']:+.2f}, {b['train_time_s']:.0f} s "
                         f"(small route {b['base_train_time_s']:.0f} s)")
    if scale == "smoke":
        lines.append("- smoke scale: a plumbing check, these numbers mean nothing.")
    return "\n".join(lines)


def remedies_bought(rows: list[dict]) -> list[dict]:
    """Per remedy row (those after the small route), its change against the small route in
    the Fréchet distance, in the absolute gap to the real test split's share of tumours with
    a dark part, and in the mean over sub-regions of ``w_over_spread_*`` (nan where a row
    has no sub-regions), with its training time; [] without a small route or a reference."""
    runs = [r for r in rows if r.get("empty_fraction") is not None]
    ref = next((r for r in rows if r.get("empty_fraction") is None), None)
    base = next((r for r in runs if r["row"].startswith("small route (")), None)
    if ref is None or base is None or ref.get("dark_core_share") is None:
        return []

    def w_mean(r):
        vals = [r.get(f"w_over_spread_{k}") for k in ("necrosis", "oedema", "enhancing")]
        vals = [float(v) for v in vals if v is not None]
        return float(np.mean(vals)) if vals else float("nan")

    def gap(r):
        return abs(float(r["dark_core_share"]) - float(ref["dark_core_share"]))

    return [{"row": r["row"], "frechet": float(r["frechet_latent"]) - float(base["frechet_latent"]),
             "dark_gap": gap(r) - gap(base), "w_mean": w_mean(r) - w_mean(base),
             "train_time_s": float(r.get("train_time_s") or float("nan")),
             "base_train_time_s": float(base.get("train_time_s") or float("nan"))}
            for r in runs[runs.index(base) + 1:]]


def latent_channel_diagnostic(vae, latents, images, labels, n: int = 20) -> list[dict]:
    """Where the tumour lives in the stacked latent, per channel: the std of the posterior
    means over the training set (what the one global latent std flattens), and the RMS
    change of each channel inside the tumour footprint when the mask is erased
    (``encode(image, mask) - encode(image, 0)``), also in units of that channel's std. A
    mask carried by a low-variance channel is a small signal after global scaling.
    ``latents`` hold the encodings of ``images`` and their label maps ``labels``, in their order."""
    import torch

    from sbldm.data.cohort import to_model_space
    from sbldm.diffusion.unet_inputs import tumour_weight_maps

    means = np.asarray(latents.mean)
    std_c = means.std(axis=(0, 2, 3, 4))
    f = vae.downsampling_factor
    sel = np.arange(min(n, len(images)))
    diffs = []
    for v in sel:
        without = torch.from_numpy(to_model_space(images[v], np.zeros_like(labels[v]), vae.tumour_labels))
        b, _ = vae.encode_volume(without)
        foot = tumour_weight_maps((labels[v][None] > 0).astype(np.uint8), f, dilate=0)[0, 0] > 0
        d = (means[v] - b.cpu().numpy())[:, foot]                        # (C, tumour positions)
        diffs.append((d ** 2).mean(axis=1))
    rms = np.sqrt(np.mean(diffs, axis=0))
    return [{"channel": c, "std_of_means": float(std_c[c]), "global_std": float(latents.latent_std),
             "mask_effect_rms": float(rms[c]), "mask_effect_in_channel_stds": float(rms[c] / max(std_c[c], 1e-12))}
            for c in range(len(std_c))]
