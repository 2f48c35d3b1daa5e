"""One interface over the three generators of the paper's comparison.

    gen = sbldm.build_generator("ldm3d", "small")          # untrained; "sbldm" | "ldm3d" | "lsgan3d"
    gen = sbldm.train_generator(gen, cfg, prepared_train, "work/small/ldm3d")
    gen = sbldm.load_generator("work/small/ldm3d")           # reads which kind from the folder
    images, masks = gen.generate(4, generator=torch.Generator().manual_seed(0))
    gen.num_parameters()                                     # {..., "total": .., "sampling": ..}

Every generator has ``kind``, ``volume_shape``, ``generate(n, generator=None, **options)``
returning ``Samples`` (``images`` (n, x, y, z) float32 in [-1, 1], ``masks`` (n, x, y, z)
uint8 in {0, 1}, nibabel (x, y, z) order as ``sbldm.data.cohort.load_case``; ``conditions``
for SBLDM), ``num_parameters()`` (per network, ``total`` = every trained network,
``sampling`` = those sampling needs), ``save_pretrained(dir)``, ``from_pretrained(dir)``
and ``to(device)``. A saved folder holds ``generator.json`` naming its kind.

Options of ``generate``: SBLDM ``sampler``, ``num_inference_steps``, ``conditions``
(feature dicts, (n, 9) normalised vectors, or None to draw them from the training
features), ``guidance_scale``, ``eta``; 3D-LDM ``sampler``, ``num_inference_steps``,
``eta``, ``batch_size``; 3D-LSGAN ``batch_size``. Unset options take the defaults of the
config the generator was built with.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sbldm.io import save_model

NAMES = ("sbldm", "ldm3d", "lsgan3d")


def _check_name(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"unknown generator {name!r}; valid generators: {', '.join(NAMES)}")
    return name


def reference_random_conditions(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 9) normalised conditions drawn as the authors' ``sample.py`` does when given
    none: volume ~ U(0.01, 0.9), surface = volume^(2/3), sphericity ~ U(0.25, 0.9), the
    six position / extent features ~ U(0.01, 0.99). Used only by a pipeline that knows
    no training features (e.g. untrained)."""
    vol = rng.uniform(0.01, 0.9, n)
    out = np.column_stack([vol, vol ** (2 / 3), rng.uniform(0.25, 0.9, n), rng.uniform(0.01, 0.99, (n, 6))])
    return out.astype(np.float32)


class SBLDMGenerator:
    """``SBLDMPipeline`` behind the generator interface."""

    kind = "sbldm"

    def __init__(self, pipeline, sampler: str = "ddim", num_inference_steps: int = 50, eta: float = 0.0,
                 guidance_scale: float = 1.0):
        self.pipeline = pipeline
        self.sampler, self.num_inference_steps = sampler, int(num_inference_steps)
        self.eta, self.guidance_scale = float(eta), float(guidance_scale)

    @classmethod
    def from_config(cls, cfg) -> "SBLDMGenerator":
        from sbldm.models.unet3d import latent_unet
        from sbldm.models.vae import build_vae
        from sbldm.diffusion.pipeline import SBLDMPipeline

        pipe = SBLDMPipeline.from_components(cfg, build_vae(cfg.vae, cfg.tumour_labels), latent_unet(cfg))
        return cls(pipe, cfg.sampler, cfg.num_inference_steps, cfg.eta, cfg.guidance_scale)

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        return tuple(self.pipeline.volume_shape)

    def to(self, device) -> "SBLDMGenerator":
        self.pipeline.to(device)
        return self

    def num_parameters(self) -> dict:
        n = dict(self.pipeline.num_parameters())
        n["sampling"] = n["total"]
        return n

    def generate(self, n: int, generator=None, sampler: str | None = None, num_inference_steps: int | None = None,
                 conditions=None, guidance_scale: float | None = None, eta: float | None = None,
                 progress: bool = False, **kwargs):
        import torch

        from sbldm.generators.common import Samples

        pipe = self.pipeline
        if conditions is None and (pipe.train_features is None or pipe.normalizer is None):
            seed = generator.initial_seed() if isinstance(generator, torch.Generator) else None
            conditions = reference_random_conditions(int(n), np.random.default_rng(seed))
        sampler = sampler or self.sampler
        steps = num_inference_steps or (self.num_inference_steps if sampler == "ddim" else None)
        out = pipe(conditions=conditions, num_volumes=int(n), num_inference_steps=steps, sampler=sampler,
                   eta=self.eta if eta is None else float(eta),
                   guidance_scale=self.guidance_scale if guidance_scale is None else float(guidance_scale),
                   generator=generator, progress=progress, **kwargs)
        return Samples(out.images, out.masks, out.conditions, out.affine, out.raw_conditions, out.labels,
                       out.sequences, out.modalities)

    def _defaults(self) -> dict:
        return {"sampler": self.sampler, "num_inference_steps": self.num_inference_steps, "eta": self.eta,
                "guidance_scale": self.guidance_scale}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        from sbldm.generators.common import write_marker

        self.pipeline.save_pretrained(directory)
        write_marker(directory, self.kind, volume_shape=list(self.volume_shape), **self._defaults())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "SBLDMGenerator":
        import json

        from sbldm.generators.common import MARKER
        from sbldm.diffusion.pipeline import SBLDMPipeline

        d = Path(directory)
        pipe = SBLDMPipeline.from_pretrained(d)
        meta = json.loads((d / MARKER).read_text()) if (d / MARKER).is_file() else {}
        if meta.get("kind", cls.kind) != cls.kind:
            raise ValueError(f"{d} holds a {meta.get('kind')!r} generator, not 'sbldm'")
        return cls(pipe, **{k: meta[k] for k in ("sampler", "num_inference_steps", "eta", "guidance_scale")
                            if k in meta})


def _classes() -> dict:
    from sbldm.generators.ldm3d import LDM3D
    from sbldm.generators.lsgan3d import LSGAN3D

    return {"sbldm": SBLDMGenerator, "ldm3d": LDM3D, "lsgan3d": LSGAN3D}


def build_generator(name: str, scale="smoke", **overrides):
    """An untrained generator ``name`` (``sbldm``, ``ldm3d`` or ``lsgan3d``) of a preset
    (``scale``: a preset name, or a ``Config``) with config ``overrides``. Weights are
    initialised under ``cfg.seed`` without touching the global torch random state."""
    import torch

    from sbldm.config import Config, resolve

    _check_name(name)
    if isinstance(scale, Config):
        fields = scale.to_dict()
        cfg = resolve(fields.pop("scale"), **{**fields, **overrides}) if overrides else scale
    else:
        cfg = resolve(scale, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _classes()[name].from_config(cfg)


def generator_kind(directory: str | os.PathLike) -> str:
    """The kind of generator a saved folder holds (``generator.json``; a bare
    ``SBLDMPipeline`` folder counts as ``sbldm``)."""
    import json

    from sbldm.generators.common import MARKER, MODEL_DIR

    d = Path(directory)
    if (d / MARKER).is_file():
        return _check_name(json.loads((d / MARKER).read_text()).get("kind"))
    if (d / "model_index.json").is_file():
        return "sbldm"
    if (d / MODEL_DIR / MARKER).is_file():
        return generator_kind(d / MODEL_DIR)
    raise FileNotFoundError(f"{d}: not a saved generator (no {MARKER} or model_index.json); "
                            "train one with sbldm.train_generator or notebooks 02/03")


def load_generator(directory: str | os.PathLike):
    """The generator saved in ``directory`` (or in the ``model/`` folder of a training
    folder given to ``train_generator``), whichever kind it is."""
    from sbldm.generators.common import MARKER, MODEL_DIR

    d = Path(directory)
    kind = generator_kind(d)
    if not (d / MARKER).is_file() and not (d / "model_index.json").is_file():
        d = d / MODEL_DIR
    return _classes()[kind].from_pretrained(d)


def train_generator(gen, cfg, train, out_dir: str | os.PathLike, resume: bool = True, progress: bool = True,
                    stop_at: int | None = None, device: str | None = None):
    """Train ``gen`` (a generator from ``build_generator`` or a name) with ``cfg`` on the
    ``train`` split (``sbldm.data.Prepared``) into ``out_dir``, resuming from its
    checkpoints; returns the trained generator, also saved in ``out_dir/model`` (None if
    ``stop_at`` interrupted it). Each run folder (checkpoints, ``log.jsonl``,
    ``loss_curve.png``, ``run.json``) is ``out_dir`` (3D-LSGAN) or a stage folder under it.

    ``sbldm`` trains its two stages from ``cfg`` (``vae/``, then latents and ``unet/``);
    the baselines start from ``gen``'s networks."""
    name = _check_name(gen if isinstance(gen, str) else gen.kind)
    model = None if isinstance(gen, str) else gen
    out = Path(out_dir)
    if name == "lsgan3d":
        from sbldm.generators.lsgan3d import train_lsgan3d

        return train_lsgan3d(cfg, train, out, resume=resume, progress=progress, stop_at=stop_at, device=device,
                             model=model)
    if name == "ldm3d":
        from sbldm.generators.ldm3d import train_ldm3d

        return train_ldm3d(cfg, train, out, resume=resume, progress=progress, stop_at=stop_at, device=device,
                           model=model)
    return _train_sbldm(cfg, train, out, resume, progress, stop_at, device)


def _train_sbldm(cfg, train, out: Path, resume, progress, stop_at, device):
    from sbldm.diffusion.latents import encode_dataset
    from sbldm.training.trainer import train_pipeline, train_vae

    vae = train_vae(cfg, train, out / "vae", resume=resume, progress=progress, stop_at=stop_at, device=device)
    if stop_at is not None and stop_at < cfg.vae_steps:
        return None
    lat = encode_dataset(vae, train.images, train.labels, case_ids=train.case_ids, progress=progress)
    pipe = train_pipeline(cfg, vae, lat, train, out / "unet", resume=resume, progress=progress, stop_at=stop_at,
                          device=device)
    if pipe is None:
        return None
    gen = SBLDMGenerator(pipe, cfg.sampler, cfg.num_inference_steps, cfg.eta, cfg.guidance_scale)
    save_model(gen, out / "model")
    return gen
