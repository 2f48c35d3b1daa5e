"""The paper-scale GPU check: ``make gpu-check`` (or ``python -m sbldm.runner.gpu_check``).

One prepared command for the minutes a CUDA GPU is at hand. With no data set and random
weights (speed and memory do not depend on them) it measures, at the ``paper`` preset
(192 x 192 x 96):

- SBLDM sampling per volume: DDIM-50 plain, bf16 autocast, ``torch.compile`` and
  channels-last (``sbldm.runner.bench.measure_fast_paths``), and DDPM with every step in
  fp32 and bf16;
- one training step's time and peak GPU memory (``torch.cuda.max_memory_allocated``) of
  the SBLDM latent UNet, the slice VAE, the 3D-LDM autoencoder and UNet and a
  pixel-space 3D DDPM UNet of the SBLDM widths, each in its own process and each as a
  ratio to the SBLDM UNet (an out-of-memory is reported as such: it is a result);
- a short training smoke: a few phantom volumes made at BraTS size, the slice VAE and
  the latent UNet trained for a few steps each at the preset's sizes, one DDIM volume
  sampled from the result.

It writes ``results/bench/<scale>_<gpu>_gpucheck.json`` and ``.md`` and checks the
paper-scale targets (DDIM-50 in bf16 <= 0.25 s per volume; SBLDM training peak memory
<= 1/4 of the pixel-space DDPM's and <= 1/2 of the 3D-LDM's). On a machine without a
CUDA GPU it refuses in one line; ``--device cpu --scale smoke`` runs the same code on
the CPU in seconds (what the test suite does).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from sbldm.config import SCALES
from sbldm.paths import REPO_ROOT
from sbldm.provenance import device_name, library_versions

TARGET_DDIM50_BF16_S = 0.25          # issue "Scale out, proven": per volume at 192x192x96 on one H100
TARGET_MEMORY_VS_PIXEL = 0.25
TARGET_MEMORY_VS_LDM3D = 0.5
VARIANTS = ("plain", "bf16", "compile", "channels_last", "compile+bf16")


class Refused(RuntimeError):
    pass


def pick(device: str, scale: str) -> str:
    """The device to measure on, or ``Refused`` with the one line to print."""
    import torch

    if device == "cuda":
        if not torch.cuda.is_available():
            raise Refused("no CUDA GPU on this machine (torch.cuda.is_available() is False): the GPU check "
                          "measures paper-scale GPU time and memory; run it where a GPU is")
        return "cuda"
    if scale != "smoke":
        raise Refused(f"--device cpu runs only with --scale smoke (a test of this script), not {scale!r}")
    return "cpu"


def training_smoke(scale: str, device: str, steps: int, work: Path, n_cases: int = 4) -> dict:
    """Phantom volumes at BraTS size, prepared at the preset's shape; ``steps`` steps of the
    slice VAE and of the latent UNet; one DDIM volume from the result."""
    import numpy as np
    import torch

    from sbldm.config import resolve
    from sbldm.data.cohort import load_prepared, prepare_cohort
    from sbldm.data.phantom import make_phantom_cohort
    from sbldm.diffusion.latents import encode_dataset
    from sbldm.training.trainer import train_pipeline, train_vae

    cfg = resolve(scale, vae_steps=steps, diffusion_steps=steps, checkpoint_every=steps, log_every=max(1, steps // 5),
                  n_train=n_cases - 1, n_test=1)
    out = {"steps_per_stage": steps, "volumes": n_cases}
    t0 = time.perf_counter()
    shape = (240, 240, 155) if scale != "smoke" else tuple(2 * s for s in cfg.volume_shape)
    cases = make_phantom_cohort(work / "phantom", n_cases, seed=0, shape=shape, progress=False)
    prepare_cohort(cases, work / "data", cfg.volume_shape, n_train=n_cases - 1, n_test=1, seed=0, progress=False)
    train = load_prepared(work / "data", "train")
    out["data_s"] = time.perf_counter() - t0
    for stage in ("vae", "diffusion"):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        if stage == "vae":
            vae = train_vae(cfg, train, work / "vae", resume=False, progress=False, device=device)
            lat = encode_dataset(vae, train.images, train.labels, case_ids=train.case_ids, progress=False)
        else:
            pipe = train_pipeline(cfg, vae, lat, train, work / "unet", resume=False, progress=False, device=device)
        seconds = time.perf_counter() - t0
        rec = json.loads((work / ("vae" if stage == "vae" else "unet") / "run.json").read_text())
        out[stage] = {"seconds": seconds, "s_per_step": rec["wall_time_s"] / steps,
                      "final_loss": rec["final_loss"], "batch_size": rec.get("per_process_batch_size"),
                      "peak_memory_MiB": torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else None}
    pipe = pipe.to(device)
    t0 = time.perf_counter()
    sample = pipe(num_volumes=1, num_inference_steps=50, generator=torch.Generator().manual_seed(0))
    out["sample_s"] = time.perf_counter() - t0
    out["sample_finite"] = bool(np.isfinite(sample.images).all())
    return out


def _ratios(training: list[dict]) -> list[dict]:
    by = {r["component"]: r for r in training}
    ref = by.get("sbldm_unet", {})
    for r in training:
        for key in ("step_s", "peak_memory_MiB"):
            if key in r and key in ref and ref[key]:
                r[f"{key}_vs_sbldm"] = r[key] / ref[key]
    return training


def targets(result: dict) -> list[dict]:
    """The paper-scale targets, each with the measured value and whether it is met."""
    rows = []
    bf16 = next((r for r in result["ddim"] if r["variant"] == "bf16"), None)
    if bf16:
        rows.append({"target": f"DDIM-50 bf16 per volume <= {TARGET_DDIM50_BF16_S} s",
                     "measured": bf16["total_s_per_volume"], "met": bf16["total_s_per_volume"] <= TARGET_DDIM50_BF16_S})
    by = {r["component"]: r for r in result["training"]}
    s = by.get("sbldm_unet", {}).get("peak_memory_MiB")
    for comp, limit, words in (("pixel_ddpm_unet", TARGET_MEMORY_VS_PIXEL, "pixel-space 3D DDPM"),
                               ("ldm3d_autoencoder", TARGET_MEMORY_VS_LDM3D, "3D-LDM autoencoder"),
                               ("ldm3d_unet", TARGET_MEMORY_VS_LDM3D, "3D-LDM UNet")):
        other = by.get(comp, {})
        if s and other.get("peak_memory_MiB"):
            ratio = s / other["peak_memory_MiB"]
            rows.append({"target": f"SBLDM UNet training peak memory <= {limit:g} x {words}", "measured": ratio,
                         "met": ratio <= limit})
        elif s and "error" in other:
            rows.append({"target": f"SBLDM UNet training peak memory <= {limit:g} x {words}",
                         "measured": f"{words}: {other['error']}", "met": "out of memory" in other["error"].lower()})
    return rows


def markdown(result: dict) -> str:
    from sbldm.tables import to_markdown

    lines = [f"### GPU check — scale `{result['scale']}` {tuple(result['volume_shape'])}, {result['device']}", "",
             f"{result['when']}; wall time {result['wall_s']:.0f} s; random weights", "",
             "SBLDM DDIM-50 per volume (batch 1; first_call_s includes compilation):", "",
             to_markdown(result["ddim"], ["variant", "first_call_s", "denoise_s_per_volume", "decode_s_per_volume",
                                          "total_s_per_volume", "speedup", "max_latent_deviation"], digits=4), "",
             "SBLDM DDPM (every step) per volume:", "",
             to_markdown(result["ddpm"], ["dtype", "steps", "denoise_s_per_volume", "decode_s_per_volume",
                                          "total_s_per_volume"], digits=4), "",
             "Training step (forward + backward + AdamW), each network in its own process:", "",
             to_markdown(result["training"], ["component", "unit", "params_M", "step_s", "peak_memory_MiB",
                                              "step_s_vs_sbldm", "peak_memory_MiB_vs_sbldm", "error"], digits=4), ""]
    smoke = result.get("training_smoke")
    if smoke:
        lines += ["Training smoke (phantom volumes at the preset's shape):", "",
                  to_markdown([{"stage": k, **v} for k, v in smoke.items() if isinstance(v, dict)],
                              ["stage", "s_per_step", "seconds", "final_loss", "batch_size", "peak_memory_MiB"],
                              digits=4), "",
                  f"{smoke['steps_per_stage']} steps per stage on {smoke['volumes']} volumes; data {smoke['data_s']:.0f} s; "
                  f"one DDIM-50 volume from the result in {smoke['sample_s']:.2f} s "
                  f"({'finite' if smoke['sample_finite'] else 'NOT finite'})", ""]
    lines += ["Targets:", "", to_markdown(result["targets"], ["target", "measured", "met"], digits=3), "",
              f"versions: {json.dumps(result['versions'])}"]
    return "\n".join(lines) + "\n"


def run(scale: str, device: str, repeats: int, train_steps: int, out_dir: Path, variants=VARIANTS) -> Path:
    """Measure, write ``<scale>_<device>_gpucheck.{json,md}`` under ``out_dir``; return the JSON path."""
    import torch

    from sbldm.config import resolve
    from sbldm.runner import bench
    from sbldm.io import atomic_write_bytes, atomic_write_json

    t_start = time.perf_counter()
    cfg = resolve(scale)
    result = {"scale": scale, "volume_shape": list(cfg.volume_shape), "device": device_name(device),
              "versions": library_versions(), "repeats": repeats, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"GPU check on {result['device']}: DDIM-50 fast paths ...", flush=True)
    result["ddim"] = bench.measure_fast_paths(scale, device, repeats, variants, steps=50, batch=1)
    result["ddpm"] = []
    for dtype in ("fp32", "bf16"):
        print(f"  DDPM ({dtype}) ...", flush=True)
        row = bench.measure_sampling(scale, device, dtype, 1, steps=(), ddpm=True)[0]
        result["ddpm"].append({"dtype": dtype, **row})
    ns = argparse.Namespace(scale=scale, dtype="fp32", repeats=repeats)
    result["training"] = []
    for comp in bench.COMPONENTS:
        print(f"  training step: {comp} ...", flush=True)
        result["training"].append(bench.train_step_subprocess(comp, ns, device))
    _ratios(result["training"])
    if train_steps:
        print(f"  training smoke ({train_steps} steps per stage) ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="sbldm-gpucheck-") as tmp:
            result["training_smoke"] = training_smoke(scale, device, train_steps, Path(tmp))
        if device == "cuda":
            torch.cuda.empty_cache()
    result["targets"] = targets(result)
    result["wall_s"] = time.perf_counter() - t_start
    stem = Path(out_dir) / f"{scale}_{bench.device_file_part(result['device'])}_gpucheck"
    atomic_write_json(stem.with_suffix(".json"), result)
    md = markdown(result)
    atomic_write_bytes(stem.with_suffix(".md"), md.encode())
    print(md)
    return stem.with_suffix(".json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sbldm.runner.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="paper", choices=SCALES, help="preset measured (default: paper)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cuda (default); cpu only with --scale smoke, to test this script")
    ap.add_argument("--repeats", type=int, default=2, help="timed repetitions per measurement (median)")
    ap.add_argument("--train-steps", type=int, default=30, help="steps per stage of the training smoke (0: skip)")
    ap.add_argument("--out", default=str(REPO_ROOT / "results" / "bench"), help="folder of the JSON and Markdown")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="VARIANT",
                    help=f"DDIM-50 fast paths to time (default: {' '.join(VARIANTS)})")
    a = ap.parse_args(argv)
    from sbldm.runner.bench import variant_flags

    for v in a.variants:
        try:
            variant_flags(v)
        except ValueError as e:
            ap.error(str(e))

    if a.repeats < 1 or a.train_steps < 0:
        ap.error("--repeats must be >= 1 and --train-steps >= 0")
    try:
        device = pick(a.device, a.scale)
    except Refused as e:
        print(f"gpu-check: {e}", file=sys.stderr)
        return 2
    run(a.scale, device, a.repeats, a.train_steps, Path(a.out), ("plain", *[v for v in a.variants if v != "plain"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
