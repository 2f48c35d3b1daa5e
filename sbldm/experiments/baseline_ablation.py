"""The baselines' ablation (issue "Baselines that work"): which change makes each 3D
baseline draw what it should at a preset's budget, measured on the training split only.

- 3D-LDM autoencoder (``AUTOENCODER_ROWS``): the authors' loss, then the class-balanced mask
  term, then more width at full resolution; each trained for ``cfg.ldm3d_ae_steps`` steps
  and scored by ``sbldm.generators.ldm3d.reconstruction_check`` (per-region Dice of training
  volumes decoded through their posterior means). The UNet can only draw what this
  decoder draws, so this is the stage that decides whether any mask comes out.
- 3D-LSGAN (``LSGAN_ROWS``): the authors' recipe, a slower discriminator, then instance
  noise; each trained for ``cfg.lsgan_steps`` steps with checkpoint selection scoring the
  generator every ``select_every`` steps on fixed noise
  (``sbldm.generators.lsgan3d.selection_score``: mask-feature distance to the training
  tumours, empty share). A row reports the last and the best scored step, so it shows
  both what a stabiliser does and what selection adds.

Every row trains in its own resumable run folder, ``work/<run>/baseline_ablation/<row>/``.
``python -m sbldm.experiments.baseline_ablation --scale small`` writes
``results/<run>/tables/baseline_ablation_{autoencoder,lsgan}.{csv,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from sbldm.paths import slug

#: the 3D-LDM autoencoder rows (fields set on top of the config; the first is the authors' loss)
AUTOENCODER_ROWS = {
    "authors' loss (L1 + SSIM + KL), widths 4-16-32": {"ldm3d_ae_mask_weight": 0.0, "ldm3d_ae_channels": (4, 16, 32)},
    "+ class-balanced mask term": {"ldm3d_ae_mask_weight": 1.0, "ldm3d_ae_channels": (4, 16, 32),
                                   "ldm3d_ae_mask_nested": False, "ldm3d_ae_mask_band": 0},
    "+ mask term, widths 16-32-32": {"ldm3d_ae_mask_weight": 1.0, "ldm3d_ae_channels": (16, 32, 32),
                                     "ldm3d_ae_mask_nested": False, "ldm3d_ae_mask_band": 0},
    "+ mask term nested, 2-voxel band, widths 16-32-32": {"ldm3d_ae_mask_weight": 1.0, "ldm3d_ae_channels": (16, 32, 32),
                                                           "ldm3d_ae_mask_nested": True, "ldm3d_ae_mask_band": 2},
    # the nested term at full weight costs the image (notebook 03 at 500 steps: image MAE 0.175
    # against 0.07 with the plain mask term, and samples without a brain); a lighter weight
    # asks whether the regions survive when the image gets more of the gradient
    "+ mask term nested, 2-voxel band, weight 0.3, widths 16-32-32": {
        "ldm3d_ae_mask_weight": 0.3, "ldm3d_ae_channels": (16, 32, 32), "ldm3d_ae_mask_nested": True,
        "ldm3d_ae_mask_band": 2},
    # ... and twice the budget: does the image come back with more steps, as it did for the
    # plain mask term between 300 and 500 steps?
    "+ mask term nested, 2-voxel band, widths 16-32-32, 1000 steps": {
        "ldm3d_ae_mask_weight": 1.0, "ldm3d_ae_channels": (16, 32, 32), "ldm3d_ae_mask_nested": True,
        "ldm3d_ae_mask_band": 2, "ldm3d_ae_steps": 1000},
}

#: the 3D-LSGAN rows (the first is the authors' recipe; every row is scored for selection)
LSGAN_ROWS = {
    "authors' recipe": {"lsgan_d_lr": None, "lsgan_instance_noise": 0.0},
    "discriminator lr / 4": {"lsgan_d_lr": 5e-5, "lsgan_instance_noise": 0.0},
    "discriminator lr / 4 + instance noise 0.1": {"lsgan_d_lr": 5e-5, "lsgan_instance_noise": 0.1},
}


def autoencoder_rows(cfg, train, work_dir, rows: dict = AUTOENCODER_ROWS, n_check: int = 20,
                     progress: bool = True) -> list[dict]:
    """One row per autoencoder setting: its reconstruction check on the first ``n_check``
    training volumes, the parameters and the training time."""
    from sbldm.generators.common import check_training_data
    from sbldm.generators.ldm3d import reconstruction_check, train_autoencoder
    from sbldm.models._common import count_parameters
    from sbldm.training.trainer import RunControl, training_seconds

    images, labels = check_training_data(train, cfg.tumour_labels)
    out = []
    for name, fields in rows.items():
        row_cfg = cfg.replace(**fields)
        run_dir = Path(work_dir) / "autoencoder" / slug(name)
        ae = train_autoencoder(row_cfg, (images, labels), run_dir, control=RunControl(progress=progress))
        check = reconstruction_check(ae, images, labels, n=n_check, batch_size=row_cfg.ldm3d_ae_batch_size)
        out.append({"row": name, "steps": row_cfg.ldm3d_ae_steps, "params_M": count_parameters(ae) / 1e6,
                    "train_time_s": training_seconds(run_dir), **check,
                    "fields": ", ".join(f"{k}={v}" for k, v in fields.items())})
    return out


def lsgan_rows(cfg, train, work_dir, rows: dict = LSGAN_ROWS, select_every: int = 100,
               progress: bool = True) -> list[dict]:
    """One row per 3D-LSGAN setting: the selection score of the last step and of the best
    scored step (mask-feature distance, empty share, and the share of masks in several
    pieces of the best generator's fixed-noise samples), the final losses, the time."""
    from sbldm.evaluation.appearance import tumour_appearance
    from sbldm.generators.lsgan3d import SELECTION_LOG, best_score, selection_noise, train_lsgan3d
    from sbldm.training.trainer import read_log, training_seconds

    out = []
    for name, fields in rows.items():
        row_cfg = cfg.replace(lsgan_select_every=select_every, **fields)
        run_dir = Path(work_dir) / "lsgan" / slug(name)
        gan = train_lsgan3d(row_cfg, train, run_dir, progress=progress)
        scores = [json.loads(line) for line in (run_dir / SELECTION_LOG).read_text().splitlines() if line.strip()]
        last, best = scores[-1], best_score(scores)
        noise = selection_noise(row_cfg)
        s = gan.generate(len(noise), noise=noise)
        look = tumour_appearance(s.images, s.masks)
        end = [r for r in read_log(run_dir) if "d_loss" in r][-1]
        out.append({"row": name, "steps": row_cfg.lsgan_steps, "train_time_s": training_seconds(run_dir),
                    "last_distance": last["distance"], "last_empty": last["empty_fraction"],
                    "best_step": best["step"], "best_distance": best["distance"], "best_empty": best["empty_fraction"],
                    "best_multi_component_fraction": look["multi_component_fraction"],
                    "g_loss_end": end["g_loss"], "d_loss_end": end["d_loss"],
                    "fields": ", ".join(f"{k}={v}" for k, v in fields.items())})
    return out


def select_rows(rows: dict, wanted: list[str] | None) -> dict:
    """The rows whose names contain one of the ``wanted`` texts (all when None); an
    unmatched text is an error naming the rows there are."""
    if not wanted:
        return dict(rows)
    unmatched = [w for w in wanted if not any(w in name for name in rows)]
    if unmatched:
        raise SystemExit(f"--rows {unmatched}: no such row; the rows are: {list(rows)}")
    return {name: fields for name, fields in rows.items() if any(w in name for w in wanted)}


def _number(v):
    try:
        return float(v) if v not in ("", None) else None
    except (TypeError, ValueError):
        return v


def merge_rows(csv_path: Path, new_rows: list[dict], order: list[str]) -> list[dict]:
    """``new_rows`` replacing the rows of the same name in an earlier table at ``csv_path``
    (kept as they were, numbers read back), in ``order``; rows of names no longer defined
    are dropped."""
    from sbldm.tables import read_csv

    by_name = {}
    if Path(csv_path).is_file():
        by_name = {r["row"]: {k: (v if k in ("row", "fields") else _number(v)) for k, v in r.items()}
                   for r in read_csv(csv_path)}
    by_name.update({r["row"]: r for r in new_rows})
    return [by_name[name] for name in order if name in by_name]


def main(argv=None) -> None:
    from sbldm.config import resolve
    from sbldm.data.cohort import load_prepared
    from sbldm.paths import REPO_ROOT
    from sbldm.runs import run_name
    from sbldm.tables import write_table

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="small")
    ap.add_argument("--only", choices=("autoencoder", "lsgan"), default=None)
    ap.add_argument("--select-every", type=int, default=100)
    ap.add_argument("--ae-steps", type=int, default=None, help="every autoencoder row's budget (default: the preset's)")
    ap.add_argument("--lsgan-steps", type=int, default=None, help="every 3D-LSGAN row's budget (default: the preset's)")
    ap.add_argument("--rows", nargs="+", default=None, metavar="TEXT",
                    help="train only the rows whose names contain one of these texts; the table keeps the other "
                         "rows it already has (each row states its own steps)")
    args = ap.parse_args(argv)
    cfg = resolve(args.scale)
    run = run_name(args.scale)
    work, tables = REPO_ROOT / "work" / run, REPO_ROOT / "results" / run / "tables"
    train = load_prepared(work / "data", "train")          # the prepared cohort of notebook 00
    budgets = {k: v for k, v in (("ldm3d_ae_steps", args.ae_steps), ("lsgan_steps", args.lsgan_steps)) if v}
    cfg = cfg.replace(**budgets)
    notes = [f"scale `{cfg.scale}`, seed {cfg.seed}, {len(train.images)} training volumes; training split only "
             "(the test split is never used to choose a setting or a checkpoint)"]
    if args.only in (None, "autoencoder"):
        chosen = select_rows(AUTOENCODER_ROWS, args.rows)
        rows = autoencoder_rows(cfg, train, work / "baseline_ablation", rows=chosen)
        if args.rows:
            rows = merge_rows(tables / "baseline_ablation_autoencoder.csv", rows, list(AUTOENCODER_ROWS))
        write_table(rows, tables / "baseline_ablation_autoencoder",
                    title=f"3D-LDM autoencoder ablation ({cfg.scale})",
                    notes=notes + [f"every row trains the steps of its `steps` column (batch {cfg.ldm3d_ae_batch_size}); "
                                   "*_dice: volume Dice per region of the first 20 training volumes decoded through "
                                   "their posterior means (sbldm.generators.ldm3d.reconstruction_check); "
                                   "wt_empty_fraction: of those, decoded without tumour"])
    if args.only in (None, "lsgan"):
        rows = lsgan_rows(cfg, train, work / "baseline_ablation", rows=select_rows(LSGAN_ROWS, args.rows),
                          select_every=args.select_every)
        if args.rows:
            rows = merge_rows(tables / "baseline_ablation_lsgan.csv", rows, list(LSGAN_ROWS))
        write_table(rows, tables / "baseline_ablation_lsgan", title=f"3D-LSGAN ablation ({cfg.scale})",
                    notes=notes + [f"every row trains {cfg.lsgan_steps} steps (batch {cfg.lsgan_batch_size}); every "
                                   f"{args.select_every} steps {cfg.lsgan_select_samples} volumes from fixed noise "
                                   "are scored on the training tumours: *_distance = mask-feature distance (Wasserstein "
                                   "per tumour feature over the training spread, mean of 9), *_empty = masks without "
                                   "tumour; best = lowest distance among scores with <= 10% empty",
                                   "best_multi_component_fraction: masks in several pieces among the best generator's "
                                   "fixed-noise samples"])


if __name__ == "__main__":
    main()
