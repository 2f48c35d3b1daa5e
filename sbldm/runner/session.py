"""What every numbered notebook (and a notebook of your own) starts from.

    from sbldm.runner.session import open_session
    s = open_session("small", seed=0)
    s.cfg, s.work, s.out            # the resolved config, work/<run>/, results/<run>/ (run_name)
    s.train, s.test                 # the prepared splits (loaded on first use)
    s.source                        # where the data came from (notebook 00's summary)

``open_session`` resolves the scale's config with the overrides (refusing unknown ones),
creates ``results/<run>/tables`` and ``figures``, sets the CPU thread count, and picks
the device. The prepared splits are read from ``work/<run>/data`` when first asked for,
so notebook 00 — which writes them — can use a session too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sbldm.config import Config, resolve, run_name
from sbldm.provenance import data_source

SMOKE_NOTE = "smoke scale: a plumbing check on a few tiny phantom volumes; its numbers mean nothing."


@dataclass
class Session:
    scale: str
    seed: int
    cfg: Config
    work: Path                  # work/<run>/: prepared data, checkpoints, models (not committed)
    out: Path                   # results/<run>/: tables/ and figures/
    device: str
    _splits: dict = field(default_factory=dict, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.work / "data"

    def split(self, name: str):
        """The prepared ``train`` or ``test`` split (``sbldm.data.Prepared``), loaded once."""
        if name not in self._splits:
            from sbldm.data.cohort import load_prepared

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


def project_root() -> Path:
    """The sbldm checkout this package runs from (the folder holding ``notebooks/`` and
    ``sbldm/``), or the current directory for an installed, non-editable package."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "notebooks").is_dir() and (here / "sbldm").is_dir() else Path.cwd()


def open_session(scale: str, seed: int = 0, overrides: dict | None = None, work_root: str | Path | None = None,
                 results_root: str | Path | None = None, device: str | None = None,
                 data: str | Path | None = None) -> Session:
    """A ``Session`` for ``scale``; ``overrides`` are config fields (see ``sbldm.config``),
    ``data`` a BraTS folder (None: the phantom cohort).

    Folders: ``work_root/<run>`` and ``results_root/<run>``, where ``<run>`` is
    ``sbldm.config.run_name(scale, seed, overrides, data)`` — so a run with overrides,
    another seed or other data never writes into the committed ``results/<scale>/``.
    The roots default to the project's ``work/`` and ``results/`` wherever the notebook
    runs from."""
    from sbldm.runtime import cpu_setup, pick_device

    cfg = resolve(scale, seed=seed, **(overrides or {}))
    if data is not None and not Path(data).is_dir():
        raise FileNotFoundError(f"data folder {data} does not exist (or is not a folder)")
    cpu_setup()
    root = project_root()
    name = run_name(scale, seed, overrides, data)
    out = Path(results_root if results_root is not None else root / "results") / name
    work = Path(work_root if work_root is not None else root / "work") / name
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    device = pick_device(device)
    return Session(scale, int(seed), cfg, work, out, device)
