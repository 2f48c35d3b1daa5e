"""3D-LSGAN baseline (paper §3.3; the authors' ``train_lsgan.py``).

Networks: ``sbldm.models.gan3d`` (``LSGANGenerator3D``, ``Discriminator3D``); the
generator outputs FLAIR and the whole-tumour mask, as the authors, or FLAIR and the BraTS
regions WT, TC, ET with ``tumour_labels="regions"``.

Training (least-squares GAN, Mao et al. 2017), per step as the authors: a generator
update on ``(mean D(G(z)) - real_label)^2``, then a discriminator update on
``0.5 [(D(x) - real_label)^2 + (D(G(z)) - fake_label)^2]`` with the same fake batch,
noisy labels (real 1 - 0.05 n, fake 0.05 n), Adam 2e-4 betas (0.5, 0.999), gradient
norms clipped at 5, batch 2. One Adam with two parameter groups stands for the
authors' two (Adam's state is per parameter and parameters without a gradient are
skipped, so the updates are the same), which lets the package's training loop
checkpoint and resume it like any other stage.

Stabilisers beyond the authors' recipe, each a config field that is off at ``paper``:
a slower discriminator (``lsgan_d_lr``, two time-scales), instance noise on the
discriminator's inputs (``lsgan_instance_noise``, annealed linearly to 0 over the run), and
checkpoint selection on the training split (``lsgan_select_every``): every so many steps
the generator draws ``lsgan_select_samples`` volumes from fixed noise and they are scored
by ``selection_score``; the best generator is what training returns and saves.

Difference to the authors' code: the LS loss averages the patch scores per volume
before comparing with that volume's label (the authors averaged over the whole batch
first). Sampling runs the generator in eval mode (batch-norm running statistics), so a
volume does not depend on the others drawn with it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from sbldm import _compat  # noqa: F401  (before diffusers: keeps torchvision out)
from diffusers.utils.torch_utils import randn_tensor

from sbldm.generators.common import (MODEL_DIR, Samples, check_training_data, read_marker,
                                     to_samples, volume_batch, write_marker)
from sbldm.models.gan3d import Discriminator3D, LSGANGenerator3D, check_discriminator_fits
from sbldm.training.objectives import discriminator_loss, generator_loss, noisy_labels
from sbldm.models._common import count_parameters
from sbldm.io import save_model

KIND = "lsgan3d"


def build_networks(cfg) -> tuple[LSGANGenerator3D, Discriminator3D]:
    """(generator, discriminator) of a config's ``lsgan_*`` fields."""
    check_discriminator_fits(cfg.volume_shape, cfg.lsgan_d_layers, "lsgan_d_layers")
    from sbldm.data.cohort import TUMOUR_CHANNELS

    channels = 1 + len(TUMOUR_CHANNELS[cfg.tumour_labels])
    g = LSGANGenerator3D(volume_shape=tuple(cfg.volume_shape), latent_dim=cfg.lsgan_latent_dim,
                         channels=cfg.lsgan_g_channels, upsamplings=cfg.lsgan_upsamplings, out_channels=channels)
    d = Discriminator3D(in_channels=channels, channels=cfg.lsgan_d_channels, layers=cfg.lsgan_d_layers)
    return g, d


class LSGAN3D:
    """The 3D-LSGAN as a generator (``sbldm.generators.registry`` interface)."""

    kind = KIND

    def __init__(self, generator: LSGANGenerator3D, discriminator: Discriminator3D | None = None):
        self.generator = generator
        self.discriminator = discriminator

    @classmethod
    def from_config(cls, cfg) -> "LSGAN3D":
        return cls(*build_networks(cfg))

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        return tuple(self.generator.config.volume_shape)

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def to(self, device) -> "LSGAN3D":
        self.generator.to(device)
        if self.discriminator is not None:
            self.discriminator.to(device)
        return self

    def num_parameters(self) -> dict:
        """Parameters per network; ``total`` = every trained network (generator and
        discriminator), ``sampling`` = what generating needs (the generator)."""
        g, d = count_parameters(self.generator), count_parameters(self.discriminator)
        return {"generator": g, "discriminator": d, "total": g + d, "sampling": g}

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator | None = None, batch_size: int = 8,
                 noise: torch.Tensor | None = None) -> Samples:
        """``n`` volumes from noise drawn with ``generator`` (or the given (n, latent_dim)
        ``noise``), in chunks of ``batch_size``."""
        g = self.generator
        was_training = g.training
        g.eval()
        try:
            dev, dtype = self.device, next(g.parameters()).dtype
            if noise is None:
                noise = randn_tensor((int(n), g.config.latent_dim), generator=generator, device=dev, dtype=dtype)
            elif tuple(noise.shape) != (int(n), g.config.latent_dim):
                raise ValueError(f"noise must have shape {(int(n), g.config.latent_dim)}, got {tuple(noise.shape)}")
            noise = noise.to(dev, dtype)
            out = [g(noise[s:s + batch_size]).float().cpu() for s in range(0, int(n), max(int(batch_size), 1))]
        finally:
            g.train(was_training)
        return to_samples(torch.cat(out) if out else torch.zeros(0, g.config.out_channels, *self.volume_shape))

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        d = Path(directory)
        self.generator.save_pretrained(d / "generator")
        if self.discriminator is not None:
            self.discriminator.save_pretrained(d / "discriminator")
        write_marker(d, KIND, volume_shape=list(self.volume_shape))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "LSGAN3D":
        d = Path(directory)
        read_marker(d, KIND)
        g = LSGANGenerator3D.from_pretrained(d / "generator").eval()
        disc = Discriminator3D.from_pretrained(d / "discriminator") if (d / "discriminator").is_dir() else None
        return cls(g, disc)


#: files of checkpoint selection in the run folder: one row per scored step, the kept generator
SELECTION_LOG = "selection.jsonl"
SELECTED_DIR = "selected"
#: a sample set with more empty masks than this is ranked after every set below it
SELECTION_MAX_EMPTY = 0.1


def selection_score(real_features: np.ndarray, masks: np.ndarray) -> dict:
    """How far a set of generated whole-tumour ``masks`` lies from the training tumours:
    ``distance``, the mask-feature distance of ``sbldm.data.tumour.feature_distribution_distance`` (Wasserstein
    distance per tumour feature in units of the training spread, averaged over the 9
    features; a collapsed generator scores high because its spread is gone), over the
    non-empty masks, and ``empty_fraction``. ``rank`` orders sets: those with at most
    ``SELECTION_MAX_EMPTY`` empty masks by distance, then the others by their empty share."""
    from sbldm.data.tumour import feature_distribution_distance, mask_features

    got = feature_distribution_distance(real_features, mask_features(masks))
    empty, dist = float(got["empty_fraction"]), float(got["mean"])
    dist = dist if np.isfinite(dist) else float("inf")
    rank = dist if empty <= SELECTION_MAX_EMPTY else 1e6 * (1.0 + empty)
    return {"distance": dist, "empty_fraction": empty, "rank": rank}


def best_score(rows: list[dict]) -> dict | None:
    """The kept row of a selection log: the lowest ``rank``, the earlier step on a tie."""
    return min(rows, key=lambda r: (r["rank"], r["step"]), default=None)


def selection_rows(run_dir: str | os.PathLike) -> list[dict]:
    """The scores of checkpoint selection in ``run_dir`` (``SELECTION_LOG``), [] without."""
    import json

    log = Path(run_dir) / SELECTION_LOG
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def selected_step(run_dir: str | os.PathLike, up_to: int | None = None) -> int | None:
    """The step of the generator checkpoint selection kept in ``run_dir`` by step ``up_to``
    (default: the whole log): the best row of ``SELECTION_LOG`` up to it; None without
    selection."""
    best = best_score([r for r in selection_rows(run_dir) if up_to is None or r["step"] <= int(up_to)])
    return None if best is None else int(best["step"])


def last_generator(run_dir: str | os.PathLike) -> tuple[int, "LSGAN3D"]:
    """(step, the 3D-LSGAN as training left it) of the run in ``run_dir``, read from its
    checkpoint: the generator of the last step, not the one checkpoint selection kept in
    ``model/`` (what training alone reached at that step)."""
    from sbldm.training.trainer import CHECKPOINT

    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint of a 3D-LSGAN run")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    gan = LSGAN3D.from_pretrained(run_dir / MODEL_DIR)
    for part in ("generator", "discriminator"):
        net = getattr(gan, part)
        if net is not None:
            net.load_state_dict({k[len(part) + 1:]: v for k, v in ckpt["model"].items() if k.startswith(part + ".")})
    return int(ckpt["step"]), gan


def selection_noise(cfg) -> torch.Tensor:
    """The fixed noise (``lsgan_select_samples``, ``lsgan_latent_dim``) the generator is scored on."""
    return torch.randn(cfg.lsgan_select_samples, cfg.lsgan_latent_dim,
                       generator=torch.Generator().manual_seed(cfg.seed + 1))


class _Selection:
    """Checkpoint selection of one run folder: scores the generator on fixed noise, keeps
    the best one in ``SELECTED_DIR`` (atomically) and the scores in ``SELECTION_LOG``.
    Rows from a step at or after the one being scored come from an earlier, abandoned run
    and are dropped, so a resumed run replays exactly and a restarted one starts clean."""

    def __init__(self, out_dir: Path, real_features: np.ndarray, noise: torch.Tensor):
        self.dir, self.real, self.noise = out_dir, real_features, noise
        self.log = out_dir / SELECTION_LOG

    def rows(self) -> list[dict]:
        return selection_rows(self.dir)

    def score(self, step: int, generator: LSGANGenerator3D) -> dict:
        import json
        import shutil

        from sbldm.io import atomic_write_bytes

        masks = LSGAN3D(generator).generate(len(self.noise), noise=self.noise).masks
        row = {"step": int(step), **selection_score(self.real, masks)}
        kept = [r for r in self.rows() if r["step"] < step]
        best = best_score(kept)
        if best is None or row["rank"] < best["rank"]:
            tmp = self.dir / (SELECTED_DIR + ".tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            generator.save_pretrained(tmp)
            (tmp / "selection.json").write_text(json.dumps(row))
            final = self.dir / SELECTED_DIR
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        atomic_write_bytes(self.log, "".join(json.dumps(r) + "\n" for r in kept + [row]).encode())
        return row


def train_lsgan3d(cfg, train, out_dir: str | os.PathLike, resume: bool = True, progress: bool = True,
                  stop_at: int | None = None, device: str | None = None, model: LSGAN3D | None = None,
                  step_delay: float = 0.0) -> LSGAN3D | None:
    """Train the 3D-LSGAN on ``train`` (a ``Prepared`` split or ``(images, masks)``) for
    ``cfg.lsgan_steps`` steps into ``out_dir`` (checkpoints, log, loss curve, run record;
    the trained generator in ``out_dir/model``: the last one, or with ``lsgan_select_every``
    the best-scoring one, ``out_dir/selection.jsonl`` holding the scores). ``model`` gives the initial networks (default: built
    from ``cfg`` under ``cfg.seed``). ``stop_at`` stops after that many steps (returns None:
    resume later)."""
    from sbldm.runtime import cpu_setup, seed_everything
    from sbldm.runtime import step_generator
    from sbldm.training.trainer import RunControl, StageSpec, data_fingerprint, make_accelerator, run_training

    cpu_setup()
    seed_everything(cfg.seed)
    images, labels = check_training_data(train, cfg.tumour_labels, cfg.volume_shape)
    gan = model or LSGAN3D.from_config(cfg)
    if gan.discriminator is None:
        raise ValueError("training needs the discriminator; this LSGAN3D has none")
    accelerator = make_accelerator(cfg, device)
    if accelerator.num_processes > 1:
        raise NotImplementedError("the 3D-LSGAN trains on one device (its alternating updates are not wrapped for DDP)")
    nets = nn.ModuleDict({"generator": gan.generator, "discriminator": gan.discriminator})
    d_lr = cfg.lsgan_lr if cfg.lsgan_d_lr is None else cfg.lsgan_d_lr
    optimizer = torch.optim.Adam([{"params": gan.generator.parameters()},
                                  {"params": gan.discriminator.parameters(), "lr": d_lr}],
                                 lr=cfg.lsgan_lr, betas=(cfg.lsgan_beta1, 0.999))
    dev = accelerator.device
    clip = cfg.lsgan_grad_clip
    out = Path(out_dir)
    selection = None
    if cfg.lsgan_select_every:
        from sbldm.data.tumour import mask_features

        selection = _Selection(out, mask_features(labels > 0), selection_noise(cfg).to(dev))

    def instance_noise(step: int, gen: torch.Generator):
        """Noise for the discriminator's inputs at ``step`` (None when off)."""
        sigma = cfg.lsgan_instance_noise * max(0.0, 1.0 - step / max(cfg.lsgan_steps, 1))
        if sigma <= 0:
            return None
        return lambda t: t + sigma * torch.randn(t.shape, generator=gen).to(t.device, t.dtype)

    def train_step(step, rng, m, opt):
        net = accelerator.unwrap_model(m)
        g, d = net["generator"], net["discriminator"]
        x = volume_batch(images, labels, rng, cfg.lsgan_batch_size, cfg.lsgan_flip_prob, cfg.tumour_labels).to(dev)
        gen = step_generator(rng)
        real_y, fake_y = (t.to(dev) for t in noisy_labels(len(x), cfg.lsgan_label_noise, gen))
        z = torch.randn(len(x), cfg.lsgan_latent_dim, generator=gen).to(dev)
        noisy = instance_noise(step, gen)
        d_in = d if noisy is None else (lambda v: d(noisy(v)))
        # generator update (the discriminator's weights get no gradient)
        d.requires_grad_(False)
        with accelerator.autocast():
            g_loss, fake = generator_loss(g, d_in, z, real_y)
        accelerator.backward(g_loss)
        d.requires_grad_(True)
        if clip:
            accelerator.clip_grad_norm_(g.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        # discriminator update on the same fake batch, detached
        with accelerator.autocast():
            terms = discriminator_loss(d_in, x, fake, real_y, fake_y)
        accelerator.backward(terms["d_loss"])
        if clip:
            accelerator.clip_grad_norm_(d.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        result = {k: v.detach() for k, v in terms.items()}
        if selection is not None and (step + 1) % cfg.lsgan_select_every == 0:
            row = selection.score(step + 1, g)
            result["select_distance"] = torch.tensor(min(row["distance"], 1e6))
            result["select_empty"] = torch.tensor(row["empty_fraction"])
        return {"loss": g_loss.detach() + result["d_loss"], "g_loss": g_loss.detach(), **result}

    def selected(generator: LSGANGenerator3D) -> LSGANGenerator3D:
        """The kept generator of checkpoint selection (``generator`` itself when off or
        when nothing was scored)."""
        if selection is None or not (out / SELECTED_DIR).is_dir():
            return generator
        return LSGANGenerator3D.from_pretrained(out / SELECTED_DIR).to(next(generator.parameters()).device)

    def save(net, directory):
        save_model(LSGAN3D(selected(net["generator"]), net["discriminator"]), directory / MODEL_DIR)

    record = {"num_volumes": int(len(images)), "tumour_labels": cfg.tumour_labels,
              "loss_terms": "loss = g_loss + d_loss (least-squares GAN)"}
    if selection is not None:
        record["selection"] = ("the generator kept is the best of those scored every lsgan_select_every steps "
                               "on the training split (sbldm.generators.lsgan3d.selection_score); scores in "
                               f"{SELECTION_LOG}")
    spec = StageSpec(KIND, cfg.lsgan_steps, train_step=train_step, save=save,
                     inputs={"data": data_fingerprint(images, labels)}, record=record,
                     batch_size=cfg.lsgan_batch_size)
    _, done = run_training(spec, cfg, nets, optimizer, accelerator, out,
                           RunControl(resume, progress, stop_at, step_delay))
    if not done:
        return None
    gan.generator = selected(gan.generator)
    gan.generator.eval()
    return gan
