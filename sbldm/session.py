"""What every numbered notebook (and a notebook of your own) starts from.

    from sbldm.session import open_session
    s = open_session("small", seed=0)
    s.cfg, s.work, s.out            # the resolved config, work/small/, results/small/
    s.train, s.test                 # the prepared splits (loaded on first use)
    s.source                        # where the data came from (notebook 00's summary)

``open_session`` resolves the scale's config with the overrides (refusing unknown ones),
creates ``results/<scale>/tables`` and ``figures``, sets the CPU thread count, and picks
the device. The prepared splits are read from ``work/<scale>/data`` when first asked for,
so notebook 00 — which writes them — can use a session too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config, resolve

SMOKE_NOTE = "smoke scale: a plumbing check on a few tiny phantom volumes; its numbers mean nothing."


@dataclass
class Session:
    scale: str
    seed: int
    cfg: Config
    work: Path                  # work/<scale>/: prepared data, checkpoints, models (not committed)
    out: Path                   # results/<scale>/: tables/ and figures/
    device: str
    _splits: dict = field(default_factory=dict, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.work / "data"

    def split(self, name: str):
        """The prepared ``train`` or ``test`` split (``sbldm.data.Prepared``), loaded once."""
        if name not in self._splits:
            from .data import load_prepared

            self._splits[name] = load_prepared(self.data_dir, name)
        return self._splits[name]

    @property
    def train(self):
        return self.split("train")

    @property
    def test(self):
        return self.split("test")

    @property
    def source(self) -> str:
        """The data source notebook 00 recorded (BraTS folder or the phantom cohort)."""
        return data_source(self.out)

    @property
    def note(self) -> str | None:
        """A caveat for tables and figures of this scale (smoke numbers mean nothing)."""
        return SMOKE_NOTE if self.scale == "smoke" else None


def data_source(results_dir: str | Path) -> str:
    """The data source notebook 00 recorded in ``results/<scale>/tables/data_summary.json``."""
    path = Path(results_dir) / "tables" / "data_summary.json"
    return json.loads(path.read_text())["source"] if path.is_file() else "see notebook 00"


def open_session(scale: str, seed: int = 0, overrides: dict | None = None, work_root: str | Path = "../work",
                 results_root: str | Path = "../results", device: str | None = None) -> Session:
    """A ``Session`` for ``scale``; ``overrides`` are config fields (see ``sbldm.config``)."""
    import torch

    from .train import cpu_setup

    cfg = resolve(scale, seed=seed, **(overrides or {}))
    cpu_setup()
    out = Path(results_root) / scale
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return Session(scale, int(seed), cfg, Path(work_root) / scale, out, device)
