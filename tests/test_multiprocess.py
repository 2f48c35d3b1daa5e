"""Training with several processes through accelerate, on the CPU (gloo), as a user
launches it: ``accelerate launch --multi_gpu --num_processes 2 -m sbldm.runner.train ...``
(on a machine without a GPU accelerate starts the processes with torchrun and they
train on the CPU, talking over gloo; ``--cpu`` would start one process unless MPI is set
up).

One VAE run is killed with SIGKILL three times and resumed under 2, then 1, then 2
processes; the step count must continue from the checkpoint each time. Then the
diffusion stage and the 3D-LDM baseline train under 2 processes and their models load
and sample like single-process ones."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from model_helpers import make_prepared

pytestmark = pytest.mark.slow

TINY = {"vae_steps": 16, "checkpoint_every": 2, "log_every": 2, "vae_batch_size": 4}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(processes: int, stage: str, prepared: Path, out: Path, sets: dict, *extra: str,
            step_delay: float = 0.0) -> subprocess.Popen:
    args = [stage, "--scale", "smoke", "--prepared", str(prepared), "--out", str(out), "--no-progress",
            "--step-delay", str(step_delay), "--set", *[f"{k}={json.dumps(v)}" for k, v in sets.items()], *extra]
    if processes == 1:
        cmd = [sys.executable, "-m", "sbldm.runner.train", *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_port()), "-m", "sbldm.runner.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = open(out.parent / f"{out.name}-launch.log", "a")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _checkpoint_step(out: Path) -> int | None:
    path = out / "checkpoints" / "last.pt"
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=False)["step"])


def _descendants(pid: int) -> list[int]:
    out = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids = [int(c) for c in children.read_text().split()]
        except OSError:
            continue
        for c in kids:
            out += [c, *_descendants(c)]
    return out


def _kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every worker, as a lost machine or a scheduler's kill does
    (torchrun starts its workers in sessions of their own: killing the launcher's process
    group alone would leave them training)."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _kill_after_new_checkpoint(proc: subprocess.Popen, out: Path, timeout: float = 240) -> tuple[int | None, int]:
    """Kill the whole launch once it has written a checkpoint beyond the one it started
    from: (step it started from, first step it wrote)."""
    start = _checkpoint_step(out)
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, f"the run ended early ({proc.returncode}); see {out.name}-launch.log"
        step = _checkpoint_step(out)
        if step is not None and step != start:
            _kill_all(proc)
            time.sleep(0.5)
            assert _checkpoint_step(out) == step, "a process of the killed run is still training"
            return start, step
        time.sleep(0.2)
    _kill_all(proc)
    raise AssertionError(f"no new checkpoint in {timeout} s")


def _finish(proc: subprocess.Popen, out: Path, timeout: float = 600) -> None:
    assert proc.wait(timeout=timeout) == 0, (out.parent / f"{out.name}-launch.log").read_text()[-3000:]


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("mp"), n_cases=6, shape=(32, 32, 16))


@pytest.fixture(scope="module")
def vae_run(prepared):
    """The killed-and-resumed VAE: (out folder, the steps each launch started from and wrote first)."""
    out = prepared.parent / "vae"
    history = []
    for processes in (2, 2, 1):
        history.append((processes, *_kill_after_new_checkpoint(_launch(processes, "vae", prepared, out, TINY,
                                                                       step_delay=0.4), out)))
    history.append((2, _checkpoint_step(out), None))
    _finish(_launch(2, "vae", prepared, out, TINY), out)
    return out, history


def test_a_killed_run_resumes_under_another_number_of_processes_and_the_step_count_continues(vae_run):
    out, history = vae_run
    every = TINY["checkpoint_every"]
    first = history[0]
    assert first[1] is None                                   # the first launch started from nothing
    for (procs, started, wrote), (_, next_started, _) in zip(history, history[1:]):
        assert next_started == wrote, "a launch resumed from another checkpoint than the last one written"
        if started is not None:
            # a launch that resumed writes its first checkpoint one interval after its start,
            # not at step `every` (which a run starting over would write)
            assert wrote == started + every, (procs, started, wrote)
    record = json.loads((out / "run.json").read_text())
    assert record["resumed_from"] == history[-1][1] and record["steps"] == TINY["vae_steps"]
    assert record["num_processes"] == 2
    assert record["per_process_batch_size"] == 4 and record["effective_batch_size"] == 8
    steps = [r["step"] for r in _log(out)]
    assert steps == list(range(2, TINY["vae_steps"] + 1, 2))   # one record per step: one writer, no replay


def test_each_process_learns_from_its_own_batch(vae_run):
    out, _ = vae_run
    per_process = [r["loss_per_process"] for r in _log(out) if "loss_per_process" in r]
    assert per_process and all(len(p) == 2 for p in per_process)
    # identical weights (DDP keeps them in step), so different losses mean different data
    assert all(abs(a - b) > 1e-7 for a, b in per_process)
    from sbldm.models.vae import SliceVAE

    vae = SliceVAE.from_pretrained(out)
    assert all(torch.isfinite(p).all() for p in vae.parameters())


def test_two_process_diffusion_and_baseline_give_models_that_load_and_sample(prepared, vae_run):
    from sbldm.diffusion.pipeline import SBLDMPipeline
    from sbldm.generators.registry import load_generator

    vae_dir, _ = vae_run
    diff, pipe_dir = prepared.parent / "diffusion", prepared.parent / "pipeline"
    _finish(_launch(2, "diffusion", prepared, diff, {"diffusion_steps": 6, "checkpoint_every": 3, "log_every": 3,
                                                     "diffusion_batch_size": 2},
                    "--vae", str(vae_dir), "--pipeline", str(pipe_dir)), diff)
    record = json.loads((diff / "run.json").read_text())
    assert record["num_processes"] == 2 and record["effective_batch_size"] == 4
    pipe = SBLDMPipeline.from_pretrained(pipe_dir)
    out = pipe(num_volumes=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 32, 32, 16) and np.isfinite(out.images).all()
    assert set(np.unique(out.masks)) <= {0, 1}

    ldm = prepared.parent / "ldm3d"
    _finish(_launch(2, "ldm3d", prepared, ldm, {"ldm3d_ae_steps": 4, "ldm3d_diffusion_steps": 4,
                                                "ldm3d_ae_discriminator": False, "checkpoint_every": 2,
                                                "log_every": 2}), ldm)
    for stage in ("autoencoder", "unet"):
        assert json.loads((ldm / stage / "run.json").read_text())["num_processes"] == 2
    gen = load_generator(ldm / "model")
    images = gen.generate(1, generator=torch.Generator().manual_seed(0), num_inference_steps=3).images
    assert images.shape == (1, 32, 32, 16) and np.isfinite(images).all()
