"""How a process is set up before it computes: CPU threads and denormals, seeds, device."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def cpu_setup(threads: int | None = None) -> None:
    """Flush denormal floats (a conv backward pass on CPU otherwise slows 20-50x once
    weights turn subnormal; docs/machine_notes.md) and optionally set the thread count."""
    import torch

    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(int(threads))


def cpu_bf16(enabled: bool = True):
    """A fresh context that autocasts to bf16 on the CPU when ``enabled`` (3D convolutions
    gain on this kind of CPU while bf16 matmuls lose; docs/machine_notes.md), else one that does nothing."""
    import contextlib

    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def pick_device(device: str | None = None) -> str:
    """``device`` checked (``cuda:1`` on a machine with one GPU is refused with a clear
    error), or ``cuda`` when a GPU is available and ``cpu`` otherwise."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r}: {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but no CUDA GPU is available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} requested but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return str(dev)


def step_rng(seed: int, step: int, rank: int = 0) -> np.random.Generator:
    """The numpy generator of one training step: a function of (seed, step, rank) only."""
    return np.random.default_rng([int(seed), int(step), int(rank)])


def step_generator(rng: np.random.Generator) -> torch.Generator:
    """A CPU torch generator seeded from a step's numpy generator."""
    import torch

    return torch.Generator().manual_seed(int(rng.integers(0, 2 ** 63 - 1)))
