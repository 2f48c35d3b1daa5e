"""Naming a run: the one owner of ``run_name`` (the folder of a run under ``work/`` and
``results/``) and of ``pipeline_identity`` (the hash of a saved pipeline's weights that
names the runs evaluating it)."""

from __future__ import annotations

import hashlib
import json
import os

from sbldm.config import SCALES
from sbldm.paths import slug


def _folder_part(path: str, fallback: str) -> str:
    """The last folder name of ``path`` in a run name: one ``_`` per character that is not a
    letter or digit, at most 40 characters, ``fallback`` when nothing is left."""
    return slug(os.path.basename(path.rstrip(os.sep)), max_len=40) or fallback


def pipeline_identity(pipeline: str | os.PathLike) -> str:
    """``<folder name>-<hash>`` of a saved pipeline folder: the hash is over its weights
    and configs (file names and bytes), so the same model names the same run wherever it
    lies and a retrained one never shares a folder with the old one."""
    path = os.path.abspath(os.fspath(pipeline))
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise FileNotFoundError(f"{pipeline}: not a saved SBLDMPipeline folder (no model_index.json)")
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if name.endswith((".json", ".safetensors", ".bin")) and name != "MODEL_CARD.md":
                full = os.path.join(root, name)
                digest.update(os.path.relpath(full, path).encode())
                with open(full, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
    return f"{_folder_part(path, 'pipeline')}-{digest.hexdigest()[:8]}"


def run_name(scale: str, seed: int = 0, overrides: dict | None = None, data: str | os.PathLike | None = None,
             pipeline: str | os.PathLike | None = None) -> str:
    """The folder name of a run under ``work/`` and ``results/``: runs that differ in data,
    seed, config or model never share a folder, the way nnU-Net names its output folders
    after trainer, plans and configuration.

    - ``<scale>``: the phantom cohort, seed 0, the preset as it is (the committed runs);
    - ``-<data set>-<hash>``: a BraTS folder (its name and a hash of its absolute path);
    - ``+seed<k>``: another seed; ``+<hash>``: config overrides (a hash of the sorted dict);
    - ``+pipe-<name>-<hash>``: notebooks 04-07 evaluating a saved pipeline (e.g. the
      shipped ``pretrained/small``) instead of the one notebook 02 trains
      (``pipeline_identity``).
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
    name = scale
    if data:
        path = os.path.abspath(os.fspath(data))
        name += f"-{_folder_part(path, 'data')}-{hashlib.sha256(path.encode()).hexdigest()[:6]}"
    if int(seed) != 0:
        name += f"+seed{int(seed)}"
    if overrides:
        blob = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
                          sort_keys=True, default=str)
        name += "+" + hashlib.sha256(blob.encode()).hexdigest()[:8]
    if pipeline:
        name += "+pipe-" + pipeline_identity(pipeline)
    return name
