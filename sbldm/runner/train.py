"""Train one stage from the command line, in one process or several through accelerate.

    python -m sbldm.runner.train vae --scale smoke --prepared work/smoke/data --out work/smoke/vae
    python -m sbldm.runner.train diffusion --scale smoke --prepared work/smoke/data \\
        --vae work/smoke/vae --out work/smoke/diffusion [--pipeline work/smoke/pipeline]
    python -m sbldm.runner.train ldm3d --scale smoke --prepared work/smoke/data --out work/smoke/ldm3d
    accelerate launch -m sbldm.runner.train vae --scale paper ...   # multi-GPU / mixed precision
    accelerate launch --multi_gpu --num_processes 2 -m sbldm.runner.train vae ...   # no GPU: 2 CPU processes (gloo)

Re-running a command resumes its stage from ``OUT/checkpoints/last.pt``, under any
number of processes (``sbldm.training.trainer.run_training``). Under several processes
the diffusion stage's latents are encoded once, by the main process, and the pipeline
folder is written by it alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sbldm.config import resolve
from sbldm.io import save_model
from sbldm.runtime import cpu_setup


def parse_sets(items) -> dict:
    """``["k=v", ...]`` -> ``{k: v}``, each value read as JSON where it parses (else a string)."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sbldm.runner.train", description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=("vae", "diffusion", "ldm3d", "lsgan3d"),
                   help="SBLDM's two stages, or a baseline of the comparison (its model goes to OUT/model)")
    p.add_argument("--scale", default="smoke")
    p.add_argument("--prepared", required=True, help="prepared cohort folder (notebook 00)")
    p.add_argument("--out", required=True, help="output folder of this stage")
    p.add_argument("--vae", help="trained VAE folder (diffusion stage)")
    p.add_argument("--pipeline", help="also write the full pipeline here (diffusion stage)")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--step-delay", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: slow a run down
    a = p.parse_args(argv)

    from sbldm.data.cohort import load_prepared

    overrides = parse_sets(a.set)
    if a.seed is not None:
        overrides["seed"] = a.seed
    cfg = resolve(a.scale, **overrides)
    cpu_setup(a.threads)
    train = load_prepared(a.prepared, "train")
    if a.stage == "vae":
        from sbldm.training.trainer import train_vae

        train_vae(cfg, train, a.out, resume=not a.no_resume, progress=not a.no_progress, step_delay=a.step_delay)
        return 0
    if a.stage in ("ldm3d", "lsgan3d"):
        from sbldm.generators.ldm3d import train_ldm3d
        from sbldm.generators.lsgan3d import train_lsgan3d

        fit = train_ldm3d if a.stage == "ldm3d" else train_lsgan3d
        fit(cfg, train, a.out, resume=not a.no_resume, progress=not a.no_progress, step_delay=a.step_delay)
        return 0
    if not a.vae:
        p.error("the diffusion stage needs --vae (a trained VAE folder)")
    from sbldm.diffusion.latents import encode_dataset, load_latents, save_latents
    from sbldm.models.vae import SliceVAE
    from sbldm.training.trainer import process_state, train_pipeline

    state = process_state()
    vae = SliceVAE.from_pretrained(a.vae).eval()
    cache = Path(a.out) / "latents"
    with state.main_process_first():      # the main process encodes and saves, the others read its cache
        try:
            lat = load_latents(cache)
        except FileNotFoundError:
            lat = encode_dataset(vae, train.images, train.labels, case_ids=train.case_ids, progress=not a.no_progress)
            save_latents(cache, lat)
    pipe = train_pipeline(cfg, vae, lat, train, a.out, resume=not a.no_resume, progress=not a.no_progress,
                          step_delay=a.step_delay)
    if a.pipeline and state.is_main_process:
        save_model(pipe, a.pipeline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
