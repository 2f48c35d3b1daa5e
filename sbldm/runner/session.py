"""What every numbered notebook (and a notebook of your own) starts from.

    from sbldm.runner.session import open_session
    s = open_session("small", seed=0)
    s.cfg, s.work, s.out            # the resolved config, work/<run>/, results/<run>/ (run_name)
    s.train, s.test                 # the prepared splits (loaded on first use)
    s.source                        # where the data came from (notebook 00's summary)

    s = open_session("small", pipeline="pretrained/small")   # evaluate a saved pipeline
    s.generator_dirs()              # where each generator of the comparison is read from

``open_session`` resolves the scale's config with the overrides (refusing unknown ones),
creates ``results/<run>/tables`` and ``figures``, sets the CPU thread count, and picks
the device. The prepared splits are read from ``work/<run>/data`` when first asked for,
so notebook 00 — which writes them — can use a session too.

With ``pipeline`` (a saved ``SBLDMPipeline`` folder, e.g. the shipped
``pretrained/small``), notebooks 04-07 evaluate that model instead of the one notebook
02 trains: results and caches go to their own ``+pipe-<name>-<hash>`` folders, while the
prepared data and any trained baselines are read from the plain run's ``work/<run>/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sbldm.config import Config, resolve
from sbldm.paths import project_root
from sbldm.provenance import data_source
from sbldm.runs import run_name

SMOKE_NOTE = "smoke scale: a plumbing check on a few tiny phantom volumes; its numbers mean nothing."


@dataclass
class Session:
    scale: str
    seed: int
    cfg: Config
    work: Path                  # work/<run>/: prepared data, checkpoints, models (not committed)
    out: Path                   # results/<run>/: tables/ and figures/
    device: str
    pipeline: Path | None = None    # a saved SBLDMPipeline evaluated instead of work/<run>/pipeline
    base_work: Path | None = None   # work/<run>/ of the plain run: prepared data, baselines
    _splits: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.base_work is None:
            self.base_work = self.work

    @property
    def data_dir(self) -> Path:
        return self.base_work / "data"

    def generator_dirs(self) -> dict[str, Path]:
        """Where each generator of the comparison is read from: SBLDM from ``pipeline`` if
        one was given (else notebook 02's ``work/<run>/pipeline``), the baselines from
        notebook 03's folders."""
        return {"sbldm": self.pipeline or self.work / "pipeline",
                "ldm3d": self.base_work / "ldm3d" / "model", "lsgan3d": self.base_work / "lsgan3d" / "model"}

    def sample_dirs(self) -> dict[str, Path]:
        """Where each generator's synthetic volumes are cached: SBLDM's in this run's
        ``work/<run>/samples``, the baselines' beside their models in the plain run's (the
        same models give the same volumes, so a run on a saved pipeline reuses them)."""
        return {"sbldm": self.work / "samples", "ldm3d": self.base_work / "samples",
                "lsgan3d": self.base_work / "samples"}

    def slice_vae(self):
        """The slice VAE in fp32 on the session's device, eval mode: the given pipeline's, or
        the one notebook 01 trained."""
        if self.pipeline is not None:
            from sbldm.diffusion.pipeline import SBLDMPipeline

            vae = SBLDMPipeline.from_pretrained(self.pipeline).vae
        else:
            from sbldm.models.vae import SliceVAE
            from sbldm.paths import restore_hint

            if not (self.work / "vae" / "config.json").is_file():
                raise FileNotFoundError(f"{self.work / 'vae'}: no trained slice VAE; run notebook 01 at "
                                        f"`{self.scale}` first{restore_hint(self.work)}")
            vae = SliceVAE.from_pretrained(self.work / "vae")
        return vae.float().to(self.device).eval()

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


def _check_pipeline_shape(pipeline: Path, cfg: Config) -> None:
    import json

    meta = pipeline / "conditioner" / "config.json"
    shape = json.loads(meta.read_text()).get("volume_shape") if meta.is_file() else None
    if shape is not None and tuple(shape) != tuple(cfg.volume_shape):
        raise ValueError(f"{pipeline}: the pipeline generates volumes of shape {tuple(shape)}, but the "
                         f"`{cfg.scale}` run's data are {tuple(cfg.volume_shape)}; pick the matching scale")


def open_session(scale: str, seed: int = 0, overrides: dict | None = None, work_root: str | Path | None = None,
                 results_root: str | Path | None = None, device: str | None = None,
                 data: str | Path | None = None, pipeline: str | Path | None = None) -> Session:
    """A ``Session`` for ``scale``; ``overrides`` are config fields (see ``sbldm.config``),
    ``data`` a BraTS folder (None: the phantom cohort), ``pipeline`` a saved pipeline to
    evaluate instead of the trained one (None: ``work/<run>/pipeline``).

    Folders: ``work_root/<run>`` and ``results_root/<run>``, where ``<run>`` is
    ``sbldm.runs.run_name(scale, seed, overrides, data)`` — so a run with overrides,
    another seed or other data never writes into the committed ``results/<scale>/``.
    The roots default to the project's ``work/`` and ``results/`` wherever the notebook
    runs from (``sbldm.paths.project_root``)."""
    from sbldm.runtime import cpu_setup, pick_device

    cfg = resolve(scale, seed=seed, **(overrides or {}))
    if data is not None and not Path(data).is_dir():
        raise FileNotFoundError(f"data folder {data} does not exist (or is not a folder)")
    cpu_setup()
    root = project_root()
    name = run_name(scale, seed, overrides, data, pipeline)     # refuses a folder that holds no pipeline
    if pipeline:
        _check_pipeline_shape(Path(pipeline), cfg)
    out = Path(results_root if results_root is not None else root / "results") / name
    work_root = Path(work_root if work_root is not None else root / "work")
    work = work_root / name
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    device = pick_device(device)
    base = work_root / run_name(scale, seed, overrides, data) if pipeline else work
    return Session(scale, int(seed), cfg, work, out, device, Path(pipeline).resolve() if pipeline else None, base)
