"""Time and memory benchmark: ``python -m sbldm.runner.bench --scale small``.

Measures, on the current device, with untrained networks of a preset's sizes (speed and
memory do not depend on the weights):

- sampling time per volume of SBLDM with DDIM (10, 25, 50 steps) and DDPM (all steps),
  split into denoising and slice decoding, for batch sizes 1..N;
- one training step (forward + backward + optimiser) and its peak memory for the slice
  VAE, the SBLDM latent UNet, the 3D-LDM autoencoder and UNet, and a pixel-space 3D DDPM
  UNet of the SBLDM UNet's widths on the whole (image, mask) volume — the model the
  paper calls too expensive. Each training measurement runs in its own subprocess so
  its peak memory is its own. GPU: ``torch.cuda.max_memory_allocated``. CPU: the
  process's peak resident memory *above its baseline* once torch, the networks' code
  and the inputs are loaded (``cpu_peak_increase``), so the libraries (~0.7 GB of torch
  and friends, the same on both sides of a ratio) are not counted; the raw peak RSS is
  reported beside it.

Medians of several runs after a warm-up, ``torch.cuda.synchronize()`` on GPU. Output:
``results/bench/<scale>_<device>_<dtype>.json`` and ``.md`` with the device, dtype and
versions.

Paper size on a CPU (``--scale paper --device cpu``; the paper's efficiency claim measured
where no GPU is): every training step runs in a subprocess whose address space may grow
by at most ``--memory-limit-gib`` beyond its loaded baseline (``RLIMIT_AS``), so a network
that does not fit fails its own allocation instead of taking the machine down. Such a
network is measured again at a half, a quarter and if need be an eighth of the volume's
edge, and its paper-size step time and memory are extrapolated from the two largest
sizes that ran, linear in the voxel count (``extrapolate``; activations grow with the
voxels, the weights and optimiser state do not); the table says which rows are measured
and which extrapolated. Every row is also given as a ratio to the SBLDM latent UNet's.
``--sampling-dtypes fp32 bf16`` times the DDIM sampling in each dtype in one run;
``--sampling-from <earlier .json>`` reuses an earlier run's sampling times (same scale
and device) and measures only the training steps.

``--fast-paths [VARIANT ...]`` instead compares, in one run, the plain path with bf16
autocast, channels-last(-3d) memory, ``torch.compile`` of the UNet and their combinations
(``VARIANTS``): DDIM sampling per volume (with each variant's deviation from the plain
latents) and the SBLDM UNet's training step. Output ``..._fastpaths.json`` / ``.md``.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sbldm.config import SCALES
from sbldm.paths import REPO_ROOT, slug
from sbldm.provenance import device_name
from sbldm.report.bench_rows import paired_sampling, sampling_rows

COMPONENTS = ("slice_vae", "sbldm_unet", "ldm3d_autoencoder", "ldm3d_unet", "pixel_ddpm_unet")


def _median_time(fn, repeats: int, warmup: int = 1) -> float:
    from sbldm.evaluation.generation import time_per_volume

    return time_per_volume(fn, n_volumes_per_call=1, repeats=repeats, warmup=warmup)["median_s"]


def _autocast(device: str, dtype: str):
    import contextlib

    import torch

    if dtype == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


#: the fast paths of issue #8, each measured against the plain path in the same run
VARIANTS = ("plain", "bf16", "channels_last", "compile", "compile+bf16", "compile+channels_last+bf16")


def variant_flags(variant: str) -> dict:
    parts = set(variant.split("+"))
    unknown = parts - {"plain", "bf16", "channels_last", "compile"}
    if unknown:
        raise ValueError(f"unknown fast path(s) {sorted(unknown)} in {variant!r}; variants: {', '.join(VARIANTS)}")
    return {"bf16": "bf16" in parts, "channels_last": "channels_last" in parts, "compile": "compile" in parts}


def _train_step_setup(component: str, cfg, device: str):
    """(model, step function) for one training step of ``component`` at ``cfg``'s sizes."""
    import torch

    from sbldm.models.unet3d import build_unet, latent_unet
    from sbldm.models.vae import build_vae, relative_positions
    from sbldm.training.objectives import vae_loss

    g = torch.Generator(device="cpu").manual_seed(0)
    x_, y_, z_ = cfg.volume_shape
    f = cfg.vae_downsampling

    def noise_step(model, shape, cond):
        x = torch.randn(shape, generator=g).to(device)
        t = torch.randint(0, 1000, (shape[0],), generator=g).to(device)
        eps = torch.randn(shape, generator=g).to(device)

        def loss():
            return torch.nn.functional.mse_loss(model(x + eps, t, cond), eps)
        return loss

    if component == "slice_vae":
        model = build_vae(cfg.vae, cfg.tumour_labels).to(device)
        x = (torch.rand((cfg.vae_batch_size, model.config.in_channels, x_, y_), generator=g) * 2 - 1).to(device)
        pos = relative_positions(z_)[:cfg.vae_batch_size].to(device)
        loss = lambda: vae_loss(model, x, pos, kl_weight=cfg.vae_kl_weight,  # noqa: E731
                                mask_weight=cfg.vae_mask_weight)["loss"]
        unit = f"batch of {cfg.vae_batch_size} slices {x_}x{y_}"
    elif component == "sbldm_unet":
        model = latent_unet(cfg).to(device)
        b = cfg.diffusion_batch_size
        loss = noise_step(model, (b, cfg.vae_latent_channels, x_ // f, y_ // f, z_), torch.rand(b, 9).to(device))
        unit = f"batch of {b} latents {cfg.vae_latent_channels}x{x_ // f}x{y_ // f}x{z_}"
    elif component == "pixel_ddpm_unet":
        model = build_unet(cfg.unet, in_channels=2).to(device)     # the SBLDM UNet's widths
        b = cfg.diffusion_batch_size
        loss = noise_step(model, (b, 2, x_, y_, z_), torch.rand(b, 9).to(device))
        unit = f"batch of {b} volumes 2x{x_}x{y_}x{z_}"
    elif component in ("ldm3d_autoencoder", "ldm3d_unet"):
        from sbldm.generators.ldm3d import build_networks
        from sbldm.training.objectives import autoencoder_loss, autoencoder_loss_options

        ae, unet, _ = build_networks(cfg)
        if component == "ldm3d_autoencoder":
            model = ae.to(device)
            b = cfg.ldm3d_ae_batch_size
            c = model.config.in_channels
            x = (torch.rand((b, c, x_, y_, z_), generator=g) * 2 - 1).to(device)
            loss = lambda: autoencoder_loss(model, x, **autoencoder_loss_options(cfg))[0]["loss"]  # noqa: E731
            unit = f"batch of {b} volumes {c}x{x_}x{y_}x{z_}"
        else:
            model = unet.to(device)
            b = cfg.ldm3d_diffusion_batch_size
            lat = ae.latent_shape(cfg.volume_shape)
            loss = noise_step(model, (b, *lat), None)
            unit = f"batch of {b} latents {'x'.join(map(str, lat))}"
    else:
        raise ValueError(f"unknown component {component!r}; choose one of {', '.join(COMPONENTS)}")
    return model, loss, unit


def _rss_kib(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (Linux ``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class cpu_peak_increase:
    """Peak resident memory of this process above its level on entry, in bytes.

    On entry the kernel's high-water mark is reset (``/proc/self/clear_refs``, Linux >= 4.0)
    so a transient peak before the block (imports) is not counted; on exit
    ``increase = VmHWM - VmRSS at entry``. Where the reset is not allowed it falls back to
    ``ru_maxrss`` at exit minus ``VmRSS`` at entry (``exact`` False: an earlier higher
    peak would then be counted)::

        with cpu_peak_increase() as mem:
            train_step()
        mem.increase, mem.peak, mem.baseline     # bytes
    """

    def __enter__(self):
        import gc

        gc.collect()
        self.baseline = (_rss_kib("VmRSS") or 0) * 1024
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.exact = _rss_kib("VmHWM") is not None
        except OSError:
            self.exact = False
        return self

    def __exit__(self, *exc):
        hwm = _rss_kib("VmHWM") if self.exact else None
        self.peak = hwm * 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.increase = max(0, self.peak - self.baseline)
        return False


def limit_memory_growth(gib: float) -> int:
    """Let this process's address space grow by at most ``gib`` GiB from now on
    (``RLIMIT_AS``, Linux): an allocation beyond it fails with an out-of-memory error in
    this process instead of the machine swapping or its OOM killer picking a victim.
    Returns the limit in bytes."""
    size = (_rss_kib("VmSize") or 0) * 1024
    limit = int(size + gib * 2 ** 30)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return limit


#: the batch sizes ``--train-batch`` sets: every 3D network's (the slice VAE trains on slices)
TRAIN_BATCH_FIELDS = ("diffusion_batch_size", "ldm3d_ae_batch_size", "ldm3d_diffusion_batch_size")


def measure_train_step(component: str, scale: str, device: str, dtype: str, repeats: int,
                       variant: str = "plain", shape=None, memory_limit_gib: float | None = None,
                       warmup: int = 1, train_batch: int | None = None) -> dict:
    """One component's training step time and peak memory (run in a fresh process);
    ``variant`` adds fast paths (``VARIANTS``; its ``bf16`` overrides ``dtype``);
    ``shape`` replaces the preset's volume shape; ``train_batch`` the batch of the 3D
    networks (``TRAIN_BATCH_FIELDS``; the slice VAE keeps its batch of slices);
    ``memory_limit_gib`` caps the growth of the process's address space once its libraries
    are loaded (``limit_memory_growth``)."""
    import torch

    from sbldm.config import resolve
    from sbldm.models._common import count_parameters

    torch.set_flush_denormal(True)
    fields = {} if shape is None else {"volume_shape": tuple(int(v) for v in shape)}
    if train_batch is not None:
        fields.update(dict.fromkeys(TRAIN_BATCH_FIELDS, int(train_batch)))
    cfg = resolve(scale, **fields)
    if memory_limit_gib is not None and device == "cpu":
        limit_memory_growth(memory_limit_gib)
    flags = variant_flags(variant)
    dtype = "bf16" if flags["bf16"] else dtype
    model, loss_fn, unit = _train_step_setup(component, cfg, device)
    if flags["channels_last"]:
        model.to(memory_format=torch.channels_last_3d if component != "slice_vae" else torch.channels_last)
    if flags["compile"]:
        model.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        with _autocast(device, dtype):
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with cpu_peak_increase() as mem:       # baseline: libraries, weights and inputs loaded
        t = _median_time(step, repeats, warmup=max(warmup, 2) if flags["compile"] else warmup)
    out = {"component": component, "variant": variant, "unit": unit, "volume_shape": list(cfg.volume_shape),
           "params_M": count_parameters(model) / 1e6, "step_s": t}
    if device == "cuda":
        out.update(peak_memory_MiB=torch.cuda.max_memory_allocated() / 2 ** 20,
                   memory_kind="cuda max_memory_allocated")
    else:
        out.update(peak_memory_MiB=mem.increase / 2 ** 20, peak_rss_MiB=mem.peak / 2 ** 20,
                   baseline_rss_MiB=mem.baseline / 2 ** 20,
                   memory_kind="CPU peak RSS above baseline" + ("" if mem.exact else " (approx.: HWM not reset)"))
    return out


def measure_sampling(scale: str, device: str, dtype: str, repeats: int, steps=(10, 25, 50),
                     ddpm: bool = True, batch_sizes=(1,)) -> list[dict]:
    """SBLDM sampling time per volume, denoising and decoding apart."""
    import torch

    from sbldm.diffusion.pipeline import SBLDMPipeline

    torch.set_flush_denormal(True)
    pipe = SBLDMPipeline.from_scale(scale).to(device)
    cfg_shape = pipe.volume_shape
    rows = []
    cond = np.full((1, 9), 0.5, np.float32)
    plans = [("ddim", s) for s in steps] + ([("ddpm", pipe.scheduler.config.num_train_timesteps)] if ddpm else [])
    for b in batch_sizes:
        conds = np.repeat(cond, b, axis=0)
        for sampler, n_steps in plans:
            gen = torch.Generator(device="cpu").manual_seed(0)
            reps = 1 if sampler == "ddpm" else repeats

            last = {}

            def denoise():
                with _autocast(device, dtype):
                    last["latent"] = pipe(conditions=conds, num_volumes=b, sampler=sampler, num_inference_steps=n_steps,
                                          generator=gen, output_type="latent").images

            t_den = _median_time(denoise, reps, warmup=0 if sampler == "ddpm" else 1)
            lat = torch.as_tensor(last["latent"]).to(device)     # the timed call's latent: no extra denoising

            def decode():
                with _autocast(device, dtype):
                    return pipe.decode_latents(lat, 16)

            t_dec = _median_time(decode, repeats)
            rows.append({"sampler": sampler, "steps": n_steps, "batch": b, "volume_shape": list(cfg_shape),
                         "denoise_s_per_volume": t_den / b, "decode_s_per_volume": t_dec / b,
                         "total_s_per_volume": (t_den + t_dec) / b})
    return rows


def measure_ldm3d_sampling(scale: str, device: str, dtype: str, repeats: int, steps: int = 50,
                           warmup: int = 1) -> dict:
    """The 3D-LDM baseline's sampling time per volume at ``scale`` (its preset's untrained
    networks, DDIM-``steps``, one volume): denoising and decoding apart, as
    ``measure_sampling`` times SBLDM, so that the paper's speed claim can be checked at the
    paper's sizes on any machine. ``warmup``: untimed calls before the timed ones (1, as
    ``measure_sampling`` gives SBLDM's DDIM). Rows carry ``generator`` "3D-LDM"."""
    import torch

    from sbldm.config import resolve
    from sbldm.generators.ldm3d import LDM3D

    torch.set_flush_denormal(True)
    pipe = LDM3D.from_config(resolve(scale)).to(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    last = {}

    def denoise():
        with _autocast(device, dtype):
            last["latent"] = pipe(1, generator=gen, sampler="ddim", num_inference_steps=steps, output_type="latent")

    t_den = _median_time(denoise, repeats, warmup=warmup)
    lat = torch.as_tensor(last["latent"]).to(device)             # the timed call's latent: no extra denoising

    def decode():
        with _autocast(device, dtype), torch.no_grad():
            return pipe.autoencoder.decode(lat * pipe.latent_std)

    t_dec = _median_time(decode, repeats, warmup=warmup)
    return {"generator": "3D-LDM", "sampler": "ddim", "steps": int(steps), "batch": 1,
            "volume_shape": list(pipe.volume_shape), "latent_shape": list(pipe.latent_shape),
            "denoise_s_per_volume": t_den, "decode_s_per_volume": t_dec, "total_s_per_volume": t_den + t_dec}


def _bench_pipeline(scale: str, pipeline: str | None):
    """A trained pipeline from ``pipeline``, else an untrained one of the preset whose
    zero-initialised output convolution gets seeded random weights (so its samples, and
    their deviations between fast paths, depend on every layer)."""
    import torch

    from sbldm.diffusion.pipeline import SBLDMPipeline

    if pipeline:
        return SBLDMPipeline.from_pretrained(pipeline)
    torch.manual_seed(0)
    pipe = SBLDMPipeline.from_scale(scale)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pipe.unet.conv_out.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return pipe


def measure_fast_paths(scale: str, device: str, repeats: int, variants=VARIANTS, steps: int = 50,
                       batch: int = 1, pipeline: str | None = None) -> list[dict]:
    """DDIM sampling time per volume (denoising and decoding apart) of each fast-path
    variant, with the largest deviation of its latents from the plain path's."""
    import torch

    torch.set_flush_denormal(True)
    conds = np.full((batch, 9), 0.5, np.float32)
    rows, ref = [], None
    for variant in variants:
        flags = variant_flags(variant)
        pipe = _bench_pipeline(scale, pipeline).to(device)
        pipe.enable_fast_paths(compile=flags["compile"], channels_last=flags["channels_last"])
        dtype = "bf16" if flags["bf16"] else "fp32"

        def denoise():
            with _autocast(device, dtype):
                return pipe(conditions=conds, num_volumes=batch, num_inference_steps=steps,
                            generator=torch.Generator(device="cpu").manual_seed(0), output_type="latent").images

        t0 = time.perf_counter()
        lat = denoise()                        # first call: compilation, if any
        first = time.perf_counter() - t0
        t_den = _median_time(denoise, repeats, warmup=0)
        z = torch.as_tensor(lat).to(device)

        def decode():
            with _autocast(device, dtype):
                return pipe.decode_latents(z, 16)

        t_dec = _median_time(decode, repeats)
        ref = lat if ref is None else ref
        rows.append({"variant": variant, "steps": steps, "batch": batch, "first_call_s": first,
                     "denoise_s_per_volume": t_den / batch, "decode_s_per_volume": t_dec / batch,
                     "total_s_per_volume": (t_den + t_dec) / batch,
                     "max_latent_deviation": float(np.abs(lat - ref).max())})
    plain = rows[0]["total_s_per_volume"]
    for r in rows:
        r["speedup"] = plain / r["total_s_per_volume"]
    return rows


def device_file_part(device: str) -> str:
    """``CPU (x86_64, 2 threads)`` -> ``cpu-x86-64-2-threads``: the device in a result file's name."""
    return slug(device.lower(), "-", ascii_only=True, collapse=True, strip=True)


def markdown(result: dict) -> str:
    from sbldm.tables import to_markdown

    s = result["sampling"]
    ddim50 = next(iter(sampling_rows(result)), None)
    ddpm = next((r for r in s if r["sampler"] == "ddpm" and r["batch"] == 1), None)
    lines = [f"### Benchmark — scale `{result['scale']}` {tuple(result['volume_shape'])}, {result['device']}, "
             f"{result['dtype']}", "", "Sampling (per volume, each generator's preset networks untrained"
             + (f"; rows of an earlier result kept: {result['sampling_from']}" if result.get("sampling_from") else "")
             + "):", "",
             to_markdown([{"generator": "SBLDM", **r} for r in s],
                         ["generator", "sampler", "steps", "batch", *(["dtype"] if any("dtype" in r for r in s) else
                                                                       []),
                          "denoise_s_per_volume", "decode_s_per_volume", "total_s_per_volume"], digits=4), ""]
    for same, ldm in paired_sampling(result):
        lines += [f"DDIM-{ldm['steps']} per volume{' in ' + ldm['dtype'] if ldm.get('dtype') else ''}: SBLDM "
                  f"{same['total_s_per_volume']:.3g} s, the 3D-LDM {ldm['total_s_per_volume']:.3g} s "
                  f"(SBLDM {ldm['total_s_per_volume'] / same['total_s_per_volume']:.2f}x as fast)", ""]
    if ddim50 and ddpm:
        lines.append(f"DDPM-{ddpm['steps']} / DDIM-50 wall-time ratio: "
                     f"{ddpm['total_s_per_volume'] / ddim50['total_s_per_volume']:.1f}x "
                     f"(step ratio {ddpm['steps'] / 50:.0f}x; decoding is paid once by both)")
        lines.append("")
    train = result["training"]
    cols = ["component", "unit", "params_M", "step_s", "peak_memory_MiB", "peak_rss_MiB", "memory_kind"]
    if any("time_vs_sbldm" in r for r in train):
        cols += ["time_vs_sbldm", "memory_vs_sbldm"]
    if any("measured" in r for r in train):
        cols += ["measured", "failed_at_shape", "error"]
    lines += ["Training step (forward + backward + AdamW"
              + (f"; from {result['training_from']}" if result.get("training_from") else "") + "):", "",
              to_markdown(train, cols, digits=4)]
    if result.get("memory_limit_gib") is not None:
        lines += ["", f"Each step ran in its own process whose address space could grow by at most "
                      f"{result['memory_limit_gib']} GiB; a network that ran out was measured at a half, a quarter and "
                      "if need be an eighth of each edge and extrapolated to the full size from the two largest that "
                      "ran, linear in the voxel count (measured = False)."]
    by = {r["component"]: r for r in train if "step_s" in r}
    if "sbldm_unet" in by and "pixel_ddpm_unet" in by:
        a, p = by["sbldm_unet"], by["pixel_ddpm_unet"]
        lines += ["", f"SBLDM latent UNet vs pixel-space 3D DDPM UNet (same widths, same batch): "
                      f"{p['step_s'] / a['step_s']:.1f}x faster per step, "
                      f"{p['peak_memory_MiB'] / a['peak_memory_MiB']:.1f}x less peak memory "
                      f"({_memory_words(a)})"]
    lines += ["", f"versions: {json.dumps(result['versions'])}"]
    return "\n".join(lines) + "\n"


def _memory_words(row: dict) -> str:
    if row.get("memory_kind", "").startswith("cuda"):
        return "GPU allocations"
    return (f"CPU peak resident memory above each process's baseline of ~{row.get('baseline_rss_MiB') or 0:.0f} MiB "
            "of libraries, weights and inputs; peak_rss_MiB is the raw peak")


def fast_paths_markdown(result: dict) -> str:
    from sbldm.tables import to_markdown

    lines = [f"### Fast paths — scale `{result['scale']}` {tuple(result['volume_shape'])}, {result['device']}", "",
             f"SBLDM DDIM-{result['sampling'][0]['steps']} per volume, batch {result['sampling'][0]['batch']} "
             "(median after the first call; first_call_s includes any compilation):", "",
             f"weights: {result.get('weights', 'untrained')}", "",
             to_markdown(result["sampling"], ["variant", "first_call_s", "denoise_s_per_volume", "decode_s_per_volume",
                                              "total_s_per_volume", "speedup", "max_latent_deviation"], digits=4), "",
             "SBLDM latent UNet training step:", "",
             to_markdown(result["training"], ["variant", "unit", "step_s", "peak_memory_MiB", "peak_rss_MiB", "memory_kind"],
                         digits=4),
             "", f"versions: {json.dumps(result['versions'])}"]
    return "\n".join(lines) + "\n"


#: what an allocation that failed under the memory limit says (torch's CPU allocator, numpy, Python)
OUT_OF_MEMORY = ("can't allocate memory", "MemoryError", "out of memory", "Cannot allocate memory",
                 "std::bad_alloc")


def train_step_subprocess(comp: str, args, device: str, variant: str = "plain", shape=None) -> dict:
    cmd = [sys.executable, "-m", "sbldm.runner.bench", "--one", comp, "--variant", variant,
           "--scale", args.scale, "--device", device, "--dtype", args.dtype, "--repeats", str(args.repeats),
           "--warmup", str(getattr(args, "warmup", 1))]
    if shape is not None:
        cmd += ["--shape", *map(str, shape)]
    if getattr(args, "memory_limit_gib", None) is not None:
        cmd += ["--memory-limit-gib", str(args.memory_limit_gib)]
    if getattr(args, "train_batch", None) is not None:
        cmd += ["--train-batch", str(args.train_batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        oom = proc.returncode in (-9, 137) or any(m in proc.stderr for m in OUT_OF_MEMORY)
        print(f"  {comp} ({variant}{', ' + 'x'.join(map(str, shape)) if shape else ''}): "
              f"{'out of memory' if oom else err}", flush=True)
        return {"component": comp, "variant": variant, "error": err, "out_of_memory": oom,
                **({"volume_shape": list(shape)} if shape else {})}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def extrapolate(rows: list[dict], shape) -> dict:
    """Step time and peak memory at ``shape`` from measurements at two smaller shapes, each
    linear in the voxel count (``a + b * voxels`` through both points; the constant holds
    the weights and optimiser state, the slope the activations)."""
    pts = sorted((float(np.prod(r["volume_shape"])), r) for r in rows if "step_s" in r)
    if len(pts) < 2:
        raise ValueError("extrapolation needs measurements at two sizes")
    (v1, r1), (v2, r2) = pts[-2], pts[-1]
    target = float(np.prod(shape))

    def line(key):
        b = (r2[key] - r1[key]) / (v2 - v1)
        return r2[key] + b * (target - v2)

    return {"step_s": line("step_s"), "peak_memory_MiB": line("peak_memory_MiB"),
            "from_shapes": [r1["volume_shape"], r2["volume_shape"]]}


#: the edge divisors tried, in order, when a network runs out of memory at the full size
SMALLER_EDGE_DIVISORS = (2, 4, 8)


def train_step_or_extrapolate(comp: str, args, device: str, shape) -> dict:
    """The step measured at ``shape``; if it runs out of memory under the limit, measured at
    a half, a quarter and, while fewer than two of those ran, an eighth of each edge, and
    extrapolated to ``shape`` from the two largest that ran (``extrapolate``), with the
    failed size recorded."""
    row = train_step_subprocess(comp, args, device, shape=shape)
    if "step_s" in row or not row.get("out_of_memory"):
        return {**row, "measured": "step_s" in row}
    smaller = []
    for k in SMALLER_EDGE_DIVISORS:
        if sum("step_s" in r for r in smaller) >= 2:
            break
        smaller.append(train_step_subprocess(comp, args, device, shape=[max(1, s // k) for s in shape]))
    out = {"component": comp, "variant": "plain", "measured": False, "failed_at_shape": list(shape),
           "memory_limit_gib": args.memory_limit_gib, "smaller": smaller}
    try:
        est = extrapolate(smaller, shape)
    except ValueError:
        out["error"] = (f"out of memory at {'x'.join(map(str, shape))} under {args.memory_limit_gib} GiB, and the "
                        "smaller sizes did not both run")
        return out
    ok = next(r for r in smaller if "step_s" in r)
    return {**out, "unit": ok["unit"].replace("x".join(map(str, ok["volume_shape"])), "x".join(map(str, shape))),
            "params_M": ok["params_M"], "step_s": est["step_s"], "peak_memory_MiB": est["peak_memory_MiB"],
            "memory_kind": ok["memory_kind"] + ", extrapolated", "extrapolated_from": est["from_shapes"],
            "volume_shape": list(shape)}


def add_ratios(train: list[dict], reference: str = "sbldm_unet") -> None:
    """Each row's step time and peak memory as a ratio to the reference component's."""
    ref = next((r for r in train if r["component"] == reference and "step_s" in r), None)
    for r in train:
        if ref is not None and "step_s" in r:
            r["time_vs_sbldm"] = r["step_s"] / ref["step_s"]
            r["memory_vs_sbldm"] = r["peak_memory_MiB"] / max(ref["peak_memory_MiB"], 1e-9)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sbldm.runner.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="small", choices=SCALES, help="preset whose network sizes and volume "
                                                                    "shape are measured (default: small)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="where to measure; auto = the GPU if there is one (a missing GPU is refused)")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"),
                    help="fp32, or bf16 autocast for sampling and the training steps")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions per measurement (median reported)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1], help="volumes sampled at once")
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50], help="DDIM step counts to time")
    ap.add_argument("--no-ddpm", action="store_true", help="skip the 1000-step DDPM timing")
    ap.add_argument("--no-ldm3d", action="store_true",
                    help="skip the 3D-LDM's DDIM sampling time (at the largest of --steps), the paper's speed claim; "
                         "with --sampling-from it is timed only in the dtypes the earlier result lacks")
    ap.add_argument("--components", nargs="+", default=list(COMPONENTS), choices=COMPONENTS, metavar="COMPONENT",
                    help=f"networks whose training step and peak memory are measured: {', '.join(COMPONENTS)}")
    ap.add_argument("--out", default=str(REPO_ROOT / "results" / "bench"), help="folder of the JSON and Markdown results")
    ap.add_argument("--fast-paths", nargs="*", default=None, metavar="VARIANT",
                    help=f"instead of the main benchmark, compare the fast paths with the plain path "
                         f"(default variants: {' '.join(VARIANTS)})")
    ap.add_argument("--pipeline", default=None,
                    help="a trained pipeline folder for --fast-paths (default: untrained networks of the preset)")
    ap.add_argument("--memory-limit-gib", type=float, default=None,
                    help="CPU: let each training-step process grow by at most this many GiB; a network that runs "
                         "out is measured smaller and extrapolated (default: no limit)")
    ap.add_argument("--sampling-dtypes", nargs="+", default=None, choices=("fp32", "bf16"),
                    help="time the sampling in each of these dtypes (default: --dtype)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls before the timed ones")
    ap.add_argument("--train-batch", type=int, default=None, metavar="N",
                    help="batch of the 3D networks' training steps (default: each preset's; the slice VAE keeps "
                         "its batch of slices)")
    ap.add_argument("--sampling-from", default=None, metavar="JSON",
                    help="take the sampling rows from this earlier result of the same scale and device instead "
                         "of timing them again; the 3D-LDM is still timed in any dtype they lack (unless --no-ldm3d)")
    ap.add_argument("--training-from", default=None, metavar="JSON",
                    help="take the training steps from this earlier result of the same scale, device, dtype, memory "
                         "limit and batch instead of measuring them again (the sampling is timed, all in this run)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="plain", help=argparse.SUPPRESS)
    ap.add_argument("--shape", type=int, nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.train_batch is not None and args.train_batch < 1:
        ap.error(f"--train-batch must be at least 1, got {args.train_batch}")
    import torch

    from sbldm.config import resolve
    from sbldm.provenance import library_versions

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU is available here")
    if args.one:
        print(json.dumps(measure_train_step(args.one, args.scale, device, args.dtype, args.repeats, args.variant,
                                            shape=args.shape, memory_limit_gib=args.memory_limit_gib,
                                            warmup=args.warmup, train_batch=args.train_batch)))
        return 0
    cfg = resolve(args.scale)
    result = {"scale": args.scale, "volume_shape": list(cfg.volume_shape), "device": device_name(device),
              "dtype": args.dtype, "versions": library_versions(), "repeats": args.repeats,
              "memory_limit_gib": args.memory_limit_gib, "train_batch": args.train_batch}
    out = Path(args.out)
    if args.fast_paths is not None:
        variants = tuple(args.fast_paths) or VARIANTS
        for v in variants:
            variant_flags(v)                  # refuse a typo before anything runs
        variants = ("plain", *[v for v in variants if v != "plain"])   # the reference comes first
        print(f"fast paths on {result['device']}: {', '.join(variants)} ...", flush=True)
        result["sampling"] = measure_fast_paths(args.scale, device, args.repeats, variants, max(args.steps),
                                                max(args.batch_sizes), args.pipeline)
        result["weights"] = args.pipeline or "untrained (random output layer)"
        result["training"] = [train_step_subprocess("sbldm_unet", args, device, v) for v in variants]
        _write(out / f"{args.scale}_{device_file_part(result['device'])}_fastpaths", result, fast_paths_markdown(result))
        return 0
    result["sampling"] = []
    dtypes = args.sampling_dtypes or [args.dtype]
    if args.sampling_from:
        result["sampling"], result["sampling_from"] = earlier_sampling(args.sampling_from, result)
    for dtype in [] if args.sampling_from else dtypes:
        print(f"sampling on {result['device']}, {dtype} ...", flush=True)
        result["sampling"] += [{**r, "dtype": dtype} for r in measure_sampling(
            args.scale, device, dtype, args.repeats, tuple(args.steps), not args.no_ddpm, tuple(args.batch_sizes))]
    # the 3D-LDM in every sampling dtype an earlier result (--sampling-from) does not time it in
    timed = {r.get("dtype", args.dtype) for r in result["sampling"] if r.get("generator") == "3D-LDM"}
    ldm_dtypes = [] if args.no_ldm3d else [d for d in dtypes if d not in timed]
    if args.sampling_from and args.training_from and not ldm_dtypes:
        raise SystemExit("--sampling-from and --training-from together, with the 3D-LDM timed already or "
                         "--no-ldm3d: nothing would be measured")
    for dtype in ldm_dtypes:
        print(f"3D-LDM sampling on {result['device']}, {dtype} ...", flush=True)
        # one untimed call first, whatever --warmup says: SBLDM's DDIM timings always have one
        result["sampling"].append({**measure_ldm3d_sampling(args.scale, device, dtype, args.repeats,
                                                            max(args.steps), warmup=1), "dtype": dtype})
    result["training"] = []
    if args.training_from:
        result["training"], result["training_from"] = earlier_sampling(args.training_from, result, "training")
    for comp in [] if args.training_from else args.components:
        print(f"training step: {comp} ...", flush=True)
        if args.memory_limit_gib is not None and device == "cpu":
            result["training"].append(train_step_or_extrapolate(comp, args, device, cfg.volume_shape))
        else:
            result["training"].append(train_step_subprocess(comp, args, device))
    add_ratios(result["training"])
    _write(out / f"{args.scale}_{device_file_part(result['device'])}_{args.dtype}", result, markdown(result))
    return 0


def earlier_sampling(path, result: dict, part: str = "sampling") -> tuple[list[dict], str]:
    """The ``part`` rows ("sampling" or "training") of an earlier benchmark result at
    ``path`` and a note naming it; refused with a clear message when it is missing,
    unreadable, or of another scale or device (for training rows also another dtype,
    memory limit or batch) than ``result``."""
    path = Path(path)
    flag = f"--{part}-from"
    try:
        earlier = json.loads(path.read_text())
    except OSError as e:
        raise SystemExit(f"{flag} {path}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise SystemExit(f"{flag} {path}: not a benchmark result (invalid JSON: {e})") from None
    if not isinstance(earlier, dict) or not earlier.get(part):
        raise SystemExit(f"{flag} {path}: it holds no {part} times")
    keys = ("scale", "device") + (("dtype", "memory_limit_gib", "train_batch") if part == "training" else ())
    for key in keys:
        if earlier.get(key) != result.get(key):
            raise SystemExit(f"{flag} {path}: measured with {key} {earlier.get(key)!r}, "
                             f"this run is {result.get(key)!r}")
    # an earlier result that itself took them from another keeps naming where they were timed
    return earlier[part], earlier.get(f"{part}_from") or f"{path.name} (an earlier run on the same device)"


def _write(stem: Path, result: dict, md: str) -> None:
    """``<stem>.json`` and ``<stem>.md``, atomically; the table also to stdout."""
    from sbldm.io import atomic_write_bytes, atomic_write_json

    atomic_write_json(stem.with_suffix(".json"), result)
    atomic_write_bytes(stem.with_suffix(".md"), md.encode())
    print(md)


if __name__ == "__main__":
    sys.exit(main())
