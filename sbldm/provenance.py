"""What produced a result: git commit, library versions, the device. One owner for each,
used by the training run records, the notebook runner and the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

_PACKAGES = ("sbldm", "torch", "diffusers", "accelerate", "monai", "numpy", "nibabel", "papermill", "nnunetv2")


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """HEAD of the repository holding ``cwd`` (default: this package), with ``-dirty``
    when tracked files differ from it; ``None`` outside a git checkout."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if out.returncode != 0 or not out.stdout.strip():
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict:
    """Installed versions of Python and the libraries a result depends on."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def device_name(device: str | None = None) -> str:
    """One line naming the compute device: the CUDA GPU's name, or the CPU with its thread count."""
    import torch

    if (device is None or str(device).startswith("cuda")) and torch.cuda.is_available():
        index = torch.device(device).index if device and ":" in str(device) else 0
        return torch.cuda.get_device_name(index or 0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def hardware() -> dict:
    """Platform, CPU count, torch threads and CUDA devices (for training run records)."""
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device_name()}
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def data_source(results_dir: str | Path) -> str:
    """The data source notebook 00 recorded in ``results/<scale>/tables/data_summary.json``."""
    path = Path(results_dir) / "tables" / "data_summary.json"
    return json.loads(path.read_text())["source"] if path.is_file() else "see notebook 00"


def fingerprint(*parts) -> str:
    """A short content hash of arrays (dtype, shape and bytes), tensors, bytes and
    JSON-able values: what a training stage was made from (its data, the latents it
    consumed), recorded in its checkpoint and compared before it resumes."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for p in parts:
        if p is None:
            h.update(b"<none>")
            continue
        if hasattr(p, "detach") and hasattr(p, "cpu"):          # a torch tensor
            p = p.detach().cpu().numpy()
        if isinstance(p, np.ndarray):
            h.update(f"{p.dtype}{p.shape}".encode())
            h.update(np.ascontiguousarray(p).tobytes())
        elif isinstance(p, (bytes, bytearray)):
            h.update(bytes(p))
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"|")
    return h.hexdigest()[:16]
