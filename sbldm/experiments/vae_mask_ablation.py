"""Does the slice VAE decode necrosis? The mask term's balance, measured at one budget on
the training split only (issue "Tumours with their insides").

With the region channels (WT, TC, ET), the class-balanced mask term weighs each channel's
inside against its whole outside. The necrosis (TC without ET) is a sliver of ET's outside,
so an ET channel that covers the whole core costs almost nothing, and a VAE trained that way
decodes no necrosis label at all. ``vae_mask_nested`` balances each channel against the
ring its enclosing region leaves as well, and ``vae_mask_band`` the whole tumour against a
band just outside it (``sbldm.models.vae.balanced_mask_l1``).

Rows (``ROWS``): the mask term as it was, and nested; each a slice VAE trained from scratch
for ``--steps`` steps (default: the preset's ``vae_steps``) in its own resumable folder
``work/<run>/vae_mask_ablation/<row>/``, scored on the first ``--n-check`` training volumes
reconstructed through their posterior means: Dice per BraTS region, Dice of the necrosis
label, and the share of volumes with necrosis whose reconstruction decodes any.

``python -m sbldm.experiments.vae_mask_ablation --scale small --steps 1000`` writes
``results/<run>/tables/vae_mask_ablation.{csv,md}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sbldm.paths import slug

#: the rows (fields set on top of the config)
ROWS = {
    "mask term balanced per channel (inside vs outside)": {"vae_mask_nested": False},
    "mask term nested (inside vs ring of the enclosing region vs rest)": {"vae_mask_nested": True},
    "nested + a 2-pixel band around the whole tumour": {"vae_mask_nested": True, "vae_mask_band": 2},
}


def necrosis_scores(pred_labels, ref_labels) -> dict:
    """Dice of the necrosis label over the volumes whose reference has any (mean), and
    the share of those whose prediction decodes any necrosis."""
    from sbldm.data.tumour import NECROSIS
    from sbldm.segmentation.brats_metrics import dice

    has = [k for k in range(len(ref_labels)) if (ref_labels[k] == NECROSIS).any()]
    if not has:
        return {"necrosis_dice": float("nan"), "necrosis_decoded": float("nan"), "n_with_necrosis": 0}
    return {"necrosis_dice": float(np.mean([dice(pred_labels[k] == NECROSIS, ref_labels[k] == NECROSIS) for k in has])),
            "necrosis_decoded": float(np.mean([(pred_labels[k] == NECROSIS).any() for k in has])),
            "n_with_necrosis": len(has)}


def rows(cfg, train, work_dir, n_check: int = 20, progress: bool = True) -> list[dict]:
    from sbldm.data.tumour import ENHANCING
    from sbldm.diffusion.latents import reconstruct_volumes
    from sbldm.segmentation.brats_metrics import region_dice_rows
    from sbldm.training.trainer import train_vae, training_seconds

    images, labels = np.asarray(train.images)[:n_check], np.asarray(train.labels)[:n_check]
    out = []
    for name, fields in ROWS.items():
        row_cfg = cfg.replace(**fields)
        run_dir = Path(work_dir) / slug(name)
        vae = train_vae(row_cfg, train, run_dir, progress=progress)
        _, _, rec = reconstruct_volumes(vae.float().cpu(), images, labels)
        regions = {f"{r['region']}_dice": r["mean"] for r in region_dice_rows(rec, labels)}
        out.append({"row": name, "steps": row_cfg.vae_steps, "train_time_s": training_seconds(run_dir), **regions,
                    **necrosis_scores(rec, labels),
                    "enhancing_share": float((rec == ENHANCING).sum() / max((rec > 0).sum(), 1)),
                    "real_enhancing_share": float((labels == ENHANCING).sum() / max((labels > 0).sum(), 1)),
                    "fields": ", ".join(f"{k}={v}" for k, v in fields.items())})
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
    ap.add_argument("--n-check", type=int, default=20)
    args = ap.parse_args(argv)
    cfg = resolve(args.scale)
    if cfg.tumour_labels != "regions":
        raise SystemExit(f"scale {args.scale!r} carries the whole tumour only (tumour_labels={cfg.tumour_labels!r}): "
                         "there is no necrosis to decode")
    if args.steps:
        cfg = cfg.replace(vae_steps=args.steps)
    run = run_name(args.scale)
    work, tables = REPO_ROOT / "work" / run, REPO_ROOT / "results" / run / "tables"
    train = load_prepared(work / "data", "train")          # the prepared cohort of notebook 00
    result = rows(cfg, train, work / "vae_mask_ablation", n_check=args.n_check)
    write_table(result, tables / "vae_mask_ablation", title=f"Slice VAE mask term: does necrosis survive? ({cfg.scale})",
                notes=[f"scale `{cfg.scale}`, seed {cfg.seed}; every row trains {cfg.vae_steps} steps (batch "
                       f"{cfg.vae_batch_size}) from scratch; training split only (the first {args.n_check} training "
                       "volumes through their posterior means; the test split chose nothing)",
                       "*_dice: volume Dice per BraTS region; necrosis_dice: Dice of label 1 over the volumes that have "
                       "necrosis; necrosis_decoded: share of those whose reconstruction decodes any; enhancing_share: "
                       "enhancing voxels over tumour voxels, decoded vs real"])


if __name__ == "__main__":
    main()
