"""Training entry points of SBLDM's two stages (``train_vae``, ``train_diffusion``; and
``train_pipeline``: the second stage assembled into an ``SBLDMPipeline``) and the loop
every stage shares, the baselines' included (``run_training``: a ``StageSpec`` says what a
stage trains, a ``RunControl`` how the call drives it). The command line (one stage per
call, under ``accelerate launch`` for several processes) is ``sbldm.runner.train``.

Both stages share one loop (``run_training``) that gives:

- determinism: the data of step ``s`` (batch indices, flips, noise, timesteps,
  condition dropout, posterior samples) is a function of ``(seed, s, rank)`` only, so a
  run resumed from a checkpoint is bit-identical to an uninterrupted one on CPU;
- checkpoints every ``cfg.checkpoint_every`` steps, written atomically
  (``checkpoints/last.pt``: model, optimiser, step, RNG states, the data sampler's
  state), and ``resume=True`` continuing from it;
- a tqdm bar with the running loss, ``log.jsonl`` (step, loss terms, lr, time),
  ``loss_curve.png`` (drawn by ``sbldm.plotting.plot_loss_curve``);
- the trained model written with ``save_pretrained`` in ``out_dir`` plus ``run.json``
  (config, seed, library versions, hardware, git commit, wall time).
"""

from __future__ import annotations

import io
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sbldm.config import Config, resume_conflicts
from sbldm.provenance import fingerprint, git_commit, hardware, library_versions
from sbldm.runtime import cpu_setup, seed_everything, step_generator, step_rng
from sbldm.io import atomic_write_bytes, atomic_write_json, save_model
from sbldm.models._common import count_parameters
from sbldm.training.objectives import min_snr_weights, noise_batch, noise_loss, vae_loss

CHECKPOINT = "checkpoints/last.pt"


# -- reproducibility helpers --------------------------------------------------------------


def run_record(cfg: Config, stage: str, **extra) -> dict:
    return {"stage": stage, "scale": cfg.scale, "seed": cfg.seed, "config": cfg.to_dict(),
            "config_hash": cfg.hash(), "versions": library_versions(), "hardware": hardware(),
            "git_commit": git_commit(), **extra}


# -- logging ---------------------------------------------------------------------------------

class _Log:
    """``log.jsonl`` of a run; on resume, lines after the checkpoint's step are dropped."""

    def __init__(self, path: Path, keep_until: int):
        self.path = path
        self.records: list[dict] = []
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("step", 0) <= keep_until:
                    self.records.append(rec)
        self._rewrite()

    def _rewrite(self):
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in self.records).encode())

    def append(self, rec: dict):
        self.records.append(rec)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def read_log(out_dir: str | os.PathLike) -> list[dict]:
    """The records of a run's ``log.jsonl`` (step, loss terms, lr, time_s)."""
    path = Path(out_dir) / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- the shared loop ---------------------------------------------------------------------------

def _on_cpu(device: str | None) -> bool:
    return device == "cpu" or not torch.cuda.is_available()


def process_state(device: str | None = None):
    """accelerate's ``PartialState`` as ``make_accelerator`` sets it up: on a machine without
    a GPU it must be told so (``cpu=True``), or processes started together by
    ``accelerate launch`` would each believe they are alone."""
    from accelerate import PartialState

    return PartialState(cpu=_on_cpu(device))


def make_accelerator(cfg: Config, device: str | None = None):
    from accelerate import Accelerator

    cpu = _on_cpu(device)
    if not cpu and device and ":" in str(device):
        torch.cuda.set_device(torch.device(device))     # cuda:N: accelerate trains on the current device
    return Accelerator(mixed_precision=cfg.mixed_precision if not cpu else "no", cpu=cpu)


def _rng_states() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_states(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def input_conflicts(saved: dict | None, now: dict) -> list[str]:
    """``name: saved -> now`` for every input whose fingerprint differs from a checkpoint's
    (a checkpoint that recorded none predates input tracking and counts as different)."""
    if saved is None:
        return ["the checkpoint records no inputs (written before sbldm tracked them)"] if now else []
    return [f"{k} changed ({saved.get(k)} -> {now.get(k)})" for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k)]


def data_fingerprint(images, masks) -> str:
    """Identity of a training set of (image, mask) volumes."""
    return fingerprint(np.asarray(images), np.asarray(masks))


@dataclass(frozen=True)
class RunControl:
    """How a call drives its runs, the same for every stage it trains: ``resume`` from the
    run folder's checkpoint (False deletes it), a ``progress`` bar, ``stop_at`` (stop after
    that many steps, as if killed just after the step: tests, training in slices) and
    ``step_delay`` (seconds slept after each step: tests)."""

    resume: bool = True
    progress: bool = True
    stop_at: int | None = None
    step_delay: float = 0.0


@dataclass
class StageSpec:
    """What one stage trains and records.

    One step is ``loss_fn(step, rng, model)`` -> backward -> ``optimizer.step()``. A stage
    with several updates per step (a GAN) gives ``train_step(step, rng, model, optimizer)``
    instead, which does its own backward passes and updates and returns the detached terms
    (with ``loss``). ``save(unwrapped, out_dir)`` replaces ``save_pretrained`` for a model
    that is several networks (an ``nn.ModuleDict``). ``ema`` (a diffusers ``EMAModel`` of
    the model's parameters) is updated after every optimiser step, saved in the
    checkpoint, and its averaged weights are what the finished model carries (the raw
    weights stay in the checkpoint, so a longer run resumes from them). ``inputs`` names
    what the stage was made from, each with its ``sbldm.provenance.fingerprint`` (the data,
    the latents of an upstream model): a checkpoint resumes only when they match.
    ``record`` goes into ``run.json``; ``batch_size`` is the per-process batch."""

    name: str
    total_steps: int
    loss_fn: Callable[[int, Any, Any], dict] | None = None
    train_step: Callable | None = None
    save: Callable | None = None
    ema: Any = None
    inputs: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)
    batch_size: int | None = None


def _load_checkpoint(ckpt_path: Path, spec: StageSpec, cfg: Config, model, optimizer) -> tuple[int, float]:
    """Restore model, optimiser, EMA and RNG states from ``ckpt_path`` after checking that
    it is this stage's, of a compatible configuration and of the same inputs; returns
    (its step, its wall time)."""
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as e:           # truncated or corrupt: torch raises several kinds
        raise ValueError(f"{ckpt_path} cannot be read ({type(e).__name__}: {e}); the checkpoint is corrupt or "
                         "truncated. Delete it to train this stage from scratch (or restore a copy)") from e
    stage = spec.name
    if ckpt.get("stage") != stage:
        raise ValueError(f"{ckpt_path} is a {ckpt.get('stage')!r} checkpoint, not {stage!r}")
    conflicts = resume_conflicts(stage, ckpt.get("config") or {}, cfg)
    if conflicts:
        raise ValueError(f"{ckpt_path} was written with another {stage} configuration ("
                         + "; ".join(conflicts) + "); use resume=False or another out_dir")
    changed = input_conflicts(ckpt.get("inputs"), spec.inputs)
    if changed:
        raise ValueError(f"{ckpt_path} was trained on other inputs ({'; '.join(changed)}): resuming it would "
                         "mix two runs. Retrain from scratch (resume=False; in the notebook chain "
                         "-p resume=False) or give this run another work folder")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if spec.ema is not None:
        if "ema" not in ckpt:
            raise ValueError(f"{ckpt_path} holds no EMA weights (it was trained without EMA); "
                             "use resume=False or another out_dir")
        spec.ema.load_state_dict(ckpt["ema"])
    _set_rng_states(ckpt["rng"])
    return int(ckpt["step"]), float(ckpt.get("wall_time_s", 0.0))


def _finish_run(spec: StageSpec, cfg: Config, unwrapped, out_dir: Path, records: list[dict], accelerator,
                resumed_from: int | None, wall_time: Callable[[], float]) -> None:
    """The finished run's files (main process): the model (with its EMA weights, if any),
    ``loss_curve.png`` and ``run.json`` (``wall_time()``: the run's seconds so far)."""
    from sbldm.plotting import plot_loss_curve

    if spec.ema is not None:
        spec.ema.copy_to(unwrapped.parameters())      # the finished model carries the averaged weights
    if spec.save is None:
        save_model(unwrapped, out_dir)                # unchanged files keep their times
    else:
        spec.save(unwrapped, out_dir)
    plot_loss_curve(records, out_dir / "loss_curve.png", title=f"{spec.name} ({cfg.scale})")
    batch_size = spec.batch_size
    atomic_write_json(out_dir / "run.json", run_record(
        cfg, spec.name, steps=spec.total_steps, resumed_from=resumed_from, wall_time_s=wall_time(),
        final_loss=records[-1]["loss"] if records else None,
        num_parameters=count_parameters(unwrapped),
        num_processes=accelerator.num_processes, per_process_batch_size=batch_size,
        effective_batch_size=None if batch_size is None else batch_size * accelerator.num_processes,
        mixed_precision=str(accelerator.mixed_precision),
        inputs=dict(spec.inputs), **spec.record))


def run_training(spec: StageSpec, cfg: Config, model, optimizer, accelerator, out_dir: Path,
                 control: RunControl = RunControl()):
    """Train ``model`` through ``spec.total_steps`` steps of ``spec`` into ``out_dir``, as
    ``control`` says; returns (unwrapped model, finished: bool).

    Several processes (``accelerate launch --num_processes P``): each process draws its
    own batch of ``spec.batch_size`` from the step's ``(seed, step, rank)`` stream, DDP
    averages the gradients, so a step learns from ``P x batch_size`` examples (``run.json``:
    ``num_processes``, ``per_process_batch_size``, ``effective_batch_size``); ``log.jsonl``
    then also carries each process's loss (``loss_per_process``). Only the main process
    writes the checkpoint, the log, the loss curve, the model and the run record; a
    checkpoint resumes under any number of processes, the step count continuing."""
    from tqdm.auto import tqdm

    stage, total_steps, ema = spec.name, spec.total_steps, spec.ema
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and accelerator.num_processes != world:
        raise RuntimeError(f"launched as one of {world} processes, but the accelerator sees "
                           f"{accelerator.num_processes}: each process would train alone and overwrite the others' "
                           "files. Build it with sbldm.training.trainer.make_accelerator (or process_state) ")
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT
    start = 0
    resumed_from = None
    wall_before = 0.0
    if control.resume and ckpt_path.is_file():
        start, wall_before = _load_checkpoint(ckpt_path, spec, cfg, model, optimizer)
        resumed_from = start
    elif not control.resume and ckpt_path.is_file():
        ckpt_path.unlink()

    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    main = accelerator.is_main_process
    log = _Log(out_dir / "log.jsonl", start) if main else None
    rank = accelerator.process_index

    def save_checkpoint(step: int, wall: float):
        if not main:
            return
        buf = io.BytesIO()
        torch.save({"stage": stage, "step": step, "config_hash": cfg.hash(), "config": cfg.to_dict(),
                    "model": unwrapped.state_dict(), "optimizer": optimizer.state_dict(),
                    "rng": _rng_states(), "wall_time_s": wall,
                    **({"ema": ema.state_dict()} if ema is not None else {}), "inputs": dict(spec.inputs),
                    "sampler": {"kind": "numpy default_rng([seed, step, rank])", "seed": cfg.seed,
                                "next_step": step}}, buf)
        atomic_write_bytes(ckpt_path, buf.getvalue())

    t0 = time.perf_counter()
    window: dict[str, list[float]] = {}
    running = None
    model.train()
    bar = tqdm(total=total_steps, initial=start, desc=f"train {stage}", disable=not (control.progress and main),
               dynamic_ncols=True)
    try:
        for step in range(start, total_steps):
            rng = step_rng(cfg.seed, step, rank)
            if spec.train_step is None:
                terms = spec.loss_fn(step, rng, model)
                loss = terms["loss"]
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.step(unwrapped.parameters())
            else:
                terms = spec.train_step(step, rng, model, optimizer)
                loss = terms["loss"]
            value = float(loss.detach())
            if not np.isfinite(value):
                raise FloatingPointError(f"{stage} loss became {value} at step {step + 1}; lower the learning rate")
            running = value if running is None else 0.95 * running + 0.05 * value
            for k, v in terms.items():
                window.setdefault(k, []).append(float(v.detach()) if torch.is_tensor(v) else float(v))
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}")
            done = step + 1
            if done % max(cfg.log_every, 1) == 0 or done == total_steps:
                per_process = None
                if accelerator.num_processes > 1:       # every process takes part in the gather
                    mine = torch.tensor([float(np.mean(window["loss"]))], device=accelerator.device)
                    per_process = [float(v) for v in accelerator.gather(mine).cpu()]
                if main:
                    rec = {"step": done, **{k: float(np.mean(v)) for k, v in window.items()},
                           "lr": optimizer.param_groups[0]["lr"], "time_s": wall_before + time.perf_counter() - t0}
                    if per_process is not None:
                        rec["loss_per_process"] = per_process
                    log.append(rec)
                window = {}
            if done % max(cfg.checkpoint_every, 1) == 0 or done == total_steps:
                save_checkpoint(done, wall_before + time.perf_counter() - t0)
            if control.step_delay:
                time.sleep(control.step_delay)
            if control.stop_at is not None and done >= control.stop_at and done < total_steps:
                accelerator.wait_for_everyone()
                return unwrapped, False
    finally:
        bar.close()

    accelerator.wait_for_everyone()
    if main:
        _finish_run(spec, cfg, unwrapped, out_dir, log.records, accelerator, resumed_from,
                    lambda: wall_before + time.perf_counter() - t0)
    return unwrapped, True


# -- stage 1 ------------------------------------------------------------------------------------

def _slice_dataset(cfg: Config, train):
    from sbldm.data.cohort import Prepared, SliceDataset

    if isinstance(train, SliceDataset):
        if train.tumour_labels != cfg.tumour_labels:
            raise ValueError(f"the slice dataset carries tumour_labels={train.tumour_labels!r} but the config asks "
                             f"for {cfg.tumour_labels!r}; build it with SliceDataset(..., tumour_labels=...)")
        return train
    if isinstance(train, Prepared):
        images, labels = model_images(cfg, train), train.labels
    else:
        images, labels = train                  # (images, label maps or whole-tumour masks)
    ds = SliceDataset(np.asarray(images), np.asarray(labels), empty_keep=cfg.vae_empty_slice_keep, seed=cfg.seed,
                      tumour_labels=cfg.tumour_labels)
    if ds.image_channels != len(cfg.modalities):
        raise ValueError(f"the slice dataset carries {ds.image_channels} image channel(s) but the config asks for the "
                         f"{len(cfg.modalities)} sequence(s) {tuple(cfg.modalities)}")
    return ds


def model_images(cfg: Config, split) -> np.ndarray:
    """The images a model of ``cfg`` reads from a ``Prepared`` split: the FLAIR (N, x, y, z)
    for one sequence, else every sequence of ``cfg.modalities`` (N, S, x, y, z), checked
    against the sequences the split was prepared with."""
    from sbldm.data.cohort import sequence_names

    if len(cfg.modalities) == 1:
        return split.images
    want = sequence_names(cfg.modalities)
    if split.sequences is None or tuple(split.modalities) != want:
        raise ValueError(f"the config asks for the sequences {want} but the data was prepared with "
                         f"{tuple(split.modalities) or ('flair',)}: prepare it again with modalities={list(cfg.modalities)}")
    return split.sequences


def vae_batch(ds, rng: np.random.Generator, batch_size: int, flip_prob: float = 0.0):
    """(x (B, C, X, Y), relative slice positions (B,)) of one step, drawn by ``rng``."""
    idx = rng.integers(0, len(ds), size=batch_size)
    xs, pos = [], []
    for i in idx:
        item = ds[int(i)]
        x = item["x"]
        if flip_prob > 0:
            if rng.random() < flip_prob:
                x = x[:, ::-1, :]
            if rng.random() < flip_prob:
                x = x[:, :, ::-1]
        xs.append(np.ascontiguousarray(x))
        pos.append(item["slice_index"] / max(item["depth"] - 1, 1))
    return torch.from_numpy(np.stack(xs)), torch.tensor(pos, dtype=torch.float32)


def training_seconds(run_dir) -> float:
    """The wall time a training run's log recorded at its last step (NaN without a log)."""
    records = [r for r in read_log(run_dir) if "time_s" in r]
    return float(records[-1]["time_s"]) if records else float("nan")


def train_vae(cfg: Config, train, out_dir: str | os.PathLike, resume: bool = True, progress: bool = True,
              stop_at: int | None = None, device: str | None = None, step_delay: float = 0.0):
    """Train the slice VAE on ``train`` (a ``Prepared`` split, a ``SliceDataset`` or an
    ``(images, label maps)`` pair; whole-tumour masks do for ``tumour_labels="whole"``) for
    ``cfg.vae_steps`` steps; returns the trained ``SliceVAE``.

    ``stop_at`` stops after that many steps (as if killed just after the step), for
    tests and for training in slices; ``resume`` continues from ``out_dir``'s checkpoint.
    """
    from sbldm.models.vae import build_vae

    cpu_setup()
    if cfg.vae_lpips_weight > 0:
        if not cfg.vae_lpips_path:
            raise ValueError("vae_lpips_weight > 0 needs LPIPS backbone weights on disk (vae_lpips_path); "
                             "sbldm downloads nothing. Set vae_lpips_weight=0 to train without LPIPS.")
        raise NotImplementedError("LPIPS from local weights is not implemented yet; set vae_lpips_weight=0")
    seed_everything(cfg.seed)
    ds = _slice_dataset(cfg, train)
    if len(ds) == 0:
        raise ValueError("the slice dataset is empty")
    accelerator = make_accelerator(cfg, device)
    model = build_vae(cfg.vae, cfg.tumour_labels, cfg.modalities)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.vae_lr)
    dev = accelerator.device

    def loss_fn(step, rng, m):
        x, pos = vae_batch(ds, rng, cfg.vae_batch_size, cfg.vae_flip_prob)
        gen = step_generator(rng)
        eps_gen = torch.Generator(device=dev).manual_seed(int(gen.initial_seed())) if dev.type != "cpu" else gen
        with accelerator.autocast():
            return vae_loss(m, x.to(dev), pos.to(dev), kl_weight=cfg.vae_kl_weight, ssim_weight=cfg.vae_ssim_weight,
                            ssim_range=cfg.vae_ssim_range, mask_weight=cfg.vae_mask_weight,
                            mask_nested=cfg.vae_mask_nested, mask_band=cfg.vae_mask_band, generator=eps_gen,
                            frequency_weight=cfg.vae_frequency_weight, image_channels=ds.image_channels)

    tumour = ds.labels if ds.tumour_labels == "regions" else (ds.labels > 0).astype(np.uint8)
    spec = StageSpec("vae", cfg.vae_steps, loss_fn=loss_fn, inputs={"data": data_fingerprint(ds.images, tumour)},
                     record={"num_slices": len(ds)}, batch_size=cfg.vae_batch_size)
    model, _ = run_training(spec, cfg, model, optimizer, accelerator, Path(out_dir),
                            RunControl(resume, progress, stop_at, step_delay))
    return model.eval()


# -- stage 2 ----------------------------------------------------------------------------------


def train_diffusion(cfg: Config, latents, conditions: np.ndarray, out_dir: str | os.PathLike,
                    latent_std: float | None = None, resume: bool = True, progress: bool = True,
                    stop_at: int | None = None, device: str | None = None, step_delay: float = 0.0,
                    priors: np.ndarray | None = None, weights: np.ndarray | None = None):
    """Train the conditioned 3D UNet on stacked latents for ``cfg.diffusion_steps`` steps.

    ``latents``: a ``sbldm.diffusion.latents.Latents`` (its means and ``latent_std`` are used) or
    an (N, C, H', W', D) array of posterior means with ``latent_std`` given.
    ``conditions``: (N, 9) normalised condition vectors (N, 11 with the sub-region shares); ``priors`` (N, 1, H', W', D): the
    rendered tumours when ``cfg.unet_spatial_prior``; ``weights`` (N, 1, H', W', D): tumour
    maps when ``cfg.diffusion_tumour_weight > 0`` (all three from
    ``sbldm.diffusion.unet_inputs.diffusion_inputs``).
    The model sees ``means / latent_std``. Returns the trained ``ConditionedUNet3D`` (with
    its EMA weights when ``cfg.diffusion_ema_decay > 0``).
    """
    import contextlib

    from sbldm.diffusion.latents import Latents
    from sbldm.diffusion.schedule import make_scheduler
    from sbldm.models.unet3d import latent_unet

    cpu_setup()
    seed_everything(cfg.seed)
    if isinstance(latents, Latents):
        latent_std = latents.latent_std if latent_std is None else latent_std
        means = latents.mean
    else:
        means = np.asarray(latents, dtype=np.float32)
        if latent_std is None:
            raise ValueError("pass latent_std with a plain latent array (or a sbldm.diffusion.latents.Latents)")
    conditions = np.asarray(conditions, dtype=np.float32)
    if means.ndim != 5 or len(means) != len(conditions) or conditions.ndim != 2 or conditions.shape[1] not in (9, 11):
        raise ValueError(f"latents (N, C, H', W', D) {means.shape} and conditions (N, 9 or 11) {conditions.shape} "
                         "must match")
    if means.shape[1] != cfg.vae_latent_channels:
        raise ValueError(f"latents have {means.shape[1]} channels, config says vae_latent_channels="
                         f"{cfg.vae_latent_channels}")
    maps = {}
    for name, arr, wanted in (("priors", priors, cfg.unet_spatial_prior),
                              ("weights", weights, cfg.diffusion_tumour_weight > 0)):
        if wanted and arr is None:
            raise ValueError(f"the config asks for {name} (see sbldm.diffusion.unet_inputs.diffusion_inputs); "
                             "none were given")
        if arr is not None and wanted:
            arr = np.asarray(arr, dtype=np.float32)
            if arr.shape != (len(means), 1, *means.shape[2:]):
                raise ValueError(f"{name} must have shape {(len(means), 1, *means.shape[2:])}, got {arr.shape}")
            maps[name] = torch.from_numpy(arr)
    data = torch.from_numpy(means / np.float32(latent_std))
    cond = torch.from_numpy(conditions)
    scheduler = make_scheduler(cfg)
    accelerator = make_accelerator(cfg, device)
    model = latent_unet(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.diffusion_lr, weight_decay=cfg.diffusion_weight_decay)
    dev = accelerator.device
    alphas = scheduler.alphas_cumprod
    if cfg.diffusion_mixed_precision == "bf16":
        def autocast():
            return torch.autocast(dev.type, dtype=torch.bfloat16)
    elif cfg.diffusion_mixed_precision == "no":
        autocast = contextlib.nullcontext
    else:
        autocast = accelerator.autocast
    ema = None
    if cfg.diffusion_ema_decay > 0:
        from diffusers.training_utils import EMAModel

        # warm-up (decay 1 - (1 + step)^(-2/3), capped at diffusion_ema_decay): short runs average
        # over a horizon that grows with the run instead of being dominated by the initial weights
        ema = EMAModel(model.parameters(), decay=cfg.diffusion_ema_decay, use_ema_warmup=True, power=2 / 3)

    def loss_fn(step, rng, m):
        idx, noisy, target, t, gen = noise_batch(data, rng, cfg.diffusion_batch_size, alphas,
                                                 cfg.diffusion_prediction_type)
        drop = torch.rand(len(idx), generator=gen) < cfg.unet_cond_dropout
        prior = maps["priors"][idx].to(dev) if "priors" in maps else None
        with autocast():
            pred = m(noisy.to(dev), t.to(dev), cond[idx].to(dev), drop_cond=drop.to(dev), prior=prior)
        snr_w = (min_snr_weights(alphas, t, cfg.diffusion_snr_gamma, cfg.diffusion_prediction_type).to(dev)
                 if cfg.diffusion_snr_gamma else None)
        if "weights" in maps:
            w = 1.0 + cfg.diffusion_tumour_weight * maps["weights"][idx].to(dev)
            loss = noise_loss(pred, target.to(dev), cfg.diffusion_loss, weight=w, sample_weight=snr_w)
        else:
            loss = noise_loss(pred, target.to(dev), cfg.diffusion_loss, sample_weight=snr_w)
        return {"loss": loss}

    spec = StageSpec("diffusion", cfg.diffusion_steps, loss_fn=loss_fn, ema=ema,
                     inputs={"latents": fingerprint(means, float(latent_std)),
                             "conditions": fingerprint(conditions, maps.get("priors"), maps.get("weights"))},
                     record={"latent_std": float(latent_std), "scaling_factor": 1.0 / float(latent_std),
                             "num_volumes": int(len(data)), "latent_shape": list(means.shape[1:]),
                             "autocast": cfg.diffusion_mixed_precision or str(accelerator.mixed_precision),
                             "ema": bool(ema)},
                     batch_size=cfg.diffusion_batch_size)
    model, _ = run_training(spec, cfg, model, optimizer, accelerator, Path(out_dir),
                            RunControl(resume, progress, stop_at, step_delay))
    if accelerator.is_main_process:
        atomic_write_json(Path(out_dir) / "latent_scale.json",
                          {"latent_std": float(latent_std), "scaling_factor": 1.0 / float(latent_std)})
    return model.eval()


def train_pipeline(cfg: Config, vae, latents, train, out_dir: str | os.PathLike, resume: bool = True,
                   progress: bool = True, stop_at: int | None = None, device: str | None = None,
                   step_delay: float = 0.0):
    """Stage 2 up to a sampling pipeline: the latent UNet trained (``train_diffusion``, run
    folder ``out_dir``) on ``latents`` (a ``sbldm.diffusion.latents.Latents``: the ``train``
    split encoded by ``vae``) with the conditions, spatial priors and tumour weights that
    ``sbldm.diffusion.unet_inputs.diffusion_inputs`` computes from ``train`` (a ``Prepared``
    split), then assembled with ``vae`` into an ``SBLDMPipeline`` that knows the feature
    normaliser, the training features, the latent scale, the training grid's affine and
    where the training brains have brain (``brain_support``).
    Returns None when ``stop_at`` stopped the run before ``cfg.diffusion_steps``; saving the
    pipeline is the caller's."""
    from sbldm.diffusion.pipeline import SBLDMPipeline
    from sbldm.diffusion.unet_inputs import brain_support, diffusion_inputs

    inputs = diffusion_inputs(cfg, train)
    unet = train_diffusion(cfg, latents, inputs["conditions"], out_dir, resume=resume, progress=progress,
                           stop_at=stop_at, device=device, step_delay=step_delay, priors=inputs["priors"],
                           weights=inputs["weights"])
    if stop_at is not None and stop_at < cfg.diffusion_steps:
        return None
    return SBLDMPipeline.from_components(cfg, vae, unet, normalizer=inputs["normalizer"],
                                         train_features=train.features, latent_std=latents.latent_std,
                                         affine=train.grid_affine,
                                         brain_support=brain_support(train.images, cfg.vae_downsampling),
                                         subregions=inputs["subregions"])
