"""Can the slice VAE keep the brain's fine detail without downloaded weights? A weight-free
sharpening term, measured at one budget on the training split only.

The authors sharpened their VAE with 0.5 x LPIPS, whose backbone weights sbldm cannot
download. ``vae_frequency_weight`` adds instead the L1 of the image channel's 2D spectra,
weighted towards high frequencies (``sbldm.training.objectives.frequency_loss``).

Rows (``ROWS``): the preset's loss, and the preset's loss plus the frequency term at each
weight of ``--weights``; each a slice VAE trained from scratch for ``--steps`` steps in its
own resumable folder ``work/<run>/vae_sharpness/<row>/``, scored on the first ``--n-check``
training volumes reconstructed through their posterior means:

- PSNR per volume (the image in [0, 1]) and volume Dice of each BraTS region;
- sharpness against the real volumes: the normal brain's mean |in-plane Laplacian|
  (``sbldm.metrics.laplacian_energy``) and the share of spectral energy above half the
  Nyquist frequency (``sbldm.metrics.high_frequency_share``), each as the reconstruction's
  value over the real one's (1 = as sharp as real).

``python -m sbldm.experiments.vae_sharpness --scale small --steps 1500`` writes
``results/<run>/tables/vae_sharpness.{csv,md}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sbldm.evaluation.appearance import sharpness
from sbldm.paths import slug

#: the row without the term; the others are named by their weight
BASELINE = "the preset's loss (L1 + SSIM + KL + mask term)"


def _row_name(weight: float) -> str:
    return BASELINE if weight == 0 else f"+ frequency term, weight {weight:g}"


def rows(cfg, train, work_dir, weights=(1.0,), n_check: int = 20, progress: bool = True) -> list[dict]:
    from sbldm.diffusion.latents import reconstruct_volumes
    from sbldm.metrics import psnr_volumes
    from sbldm.segmentation.brats_metrics import dice, region_dice_rows
    from sbldm.training.trainer import train_vae, training_seconds

    images, labels = np.asarray(train.images)[:n_check], np.asarray(train.labels)[:n_check]
    real = sharpness(images, labels)
    out = []
    for weight in (0.0, *weights):
        name = _row_name(weight)
        row_cfg = cfg.replace(vae_frequency_weight=float(weight))
        run_dir = Path(work_dir) / slug(name, collapse=True, strip=True, lower=True)
        vae = train_vae(row_cfg, train, run_dir, progress=progress)
        rec_images, rec_masks, rec_labels = reconstruct_volumes(vae.float().cpu(), images, labels)
        got = sharpness(rec_images, labels)
        if rec_labels is not None:
            regions = {f"{r['region']}_dice": r["mean"] for r in region_dice_rows(rec_labels, labels)}
        else:                  # a whole-tumour VAE: its mask is the whole tumour
            regions = {"WT_dice": float(np.mean([dice(m, l > 0) for m, l in zip(rec_masks, labels)]))}
        out.append({"row": name, "frequency_weight": float(weight), "steps": row_cfg.vae_steps,
                    "train_time_s": training_seconds(run_dir),
                    "psnr": float(np.mean(psnr_volumes((rec_images + 1) / 2, (images + 1) / 2))), **regions,
                    "laplacian_ratio": got["laplacian"] / real["laplacian"],
                    "high_frequency_ratio": got["high_frequency"] / real["high_frequency"]})
    return out


def main(argv=None) -> None:
    from sbldm.config import resolve
    from sbldm.data.cohort import load_prepared
    from sbldm.paths import REPO_ROOT
    from sbldm.runs import run_name
    from sbldm.tables import write_table

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="small")
    ap.add_argument("--steps", type=int, default=None, help="every row's budget (default: the preset's vae_steps)")
    ap.add_argument("--weights", type=float, nargs="+", default=[1.0], help="frequency-term weights beside 0")
    ap.add_argument("--n-check", type=int, default=20)
    args = ap.parse_args(argv)
    cfg = resolve(args.scale)
    if args.steps:
        cfg = cfg.replace(vae_steps=args.steps)
    run = run_name(args.scale)
    work, tables = REPO_ROOT / "work" / run, REPO_ROOT / "results" / run / "tables"
    train = load_prepared(work / "data", "train")          # the prepared cohort of notebook 00
    result = rows(cfg, train, work / "vae_sharpness", weights=args.weights, n_check=args.n_check)
    write_table(result, tables / "vae_sharpness",
                title=f"Slice VAE: a weight-free sharpening term ({cfg.scale})",
                notes=[f"scale `{cfg.scale}`, seed {cfg.seed}; every row trains {cfg.vae_steps} steps (batch "
                       f"{cfg.vae_batch_size}) from scratch; training split only (the first {args.n_check} training "
                       "volumes through their posterior means; the test split chose nothing)",
                       "psnr: per volume, image in [0, 1]; *_dice: volume Dice per BraTS region",
                       "laplacian_ratio: the normal brain's mean |in-plane Laplacian|, reconstruction over real; "
                       "high_frequency_ratio: the share of spectral energy above half the Nyquist frequency, "
                       "reconstruction over real (1 = as sharp as the real volumes)"])


if __name__ == "__main__":
    main()
