"""3D-LDM baseline (paper §3.3): a 3D latent diffusion model on whole volumes.

Stage 1, ``sbldm.models.autoencoder3d.AutoencoderKL3D``: a 3D KL autoencoder on
(FLAIR, tumour channels) volumes. Loss L1 + (1 - SSIM) + 1e-6 KL like the slice VAE, with the same optional class-balanced mask
term (``ldm3d_ae_mask_weight``; the authors had none); optionally (``ldm3d_ae_discriminator``)
plus a least-squares adversarial term from a 3D patch discriminator, which makes it
the "VAE-GAN" of the paper's text (the authors' code trained without one, the default).
Before the UNet trains, ``reconstruction_check`` decodes training volumes through their
posterior means and reports Dice per tumour region; below ``ldm3d_ae_min_dice`` (whole
tumour) training stops with a message, since a UNet on such latents can only draw what
the decoder can.

Stage 2: the package's ``ConditionedUNet3D`` used unconditionally (the condition is
always the learned null embedding; the unused condition MLP is frozen and left out of
the parameter counts), trained on the autoencoder's posterior means divided by their
global std, with the SBLDM schedule (diffusers ``DDPMScheduler``, scaled_linear
0.002 -> 0.02, T = 1000) and loss. Sampling: DDIM (eta 0 by default) or DDPM, then
decoding the whole volume at once.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from sbldm import _compat  # noqa: F401  (before diffusers: keeps torchvision out)
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from sbldm.diffusion.schedule import denoise, make_scheduler, sampling_scheduler
from sbldm.generators.common import (MODEL_DIR, check_training_data, read_marker, to_samples, volume_batch,
                                     write_marker)
from sbldm.models.autoencoder3d import AutoencoderKL3D, VolumePosterior  # noqa: F401  (saved pipelines name this module)
from sbldm.models.gan3d import Discriminator3D, check_discriminator_fits
from sbldm.models._common import count_parameters
from sbldm.io import save_model
from sbldm.training.objectives import autoencoder_loss, autoencoder_loss_options, autoencoder_loss_words, ls_loss

KIND = "ldm3d"
#: the autoencoder run folder's record of ``reconstruction_check``
RECONSTRUCTION_CHECK = "reconstruction_check.json"


# -- stage 1: the 3D KL autoencoder ---------------------------------------------------------


# -- the generator ---------------------------------------------------------------------------

def build_networks(cfg):
    """(autoencoder, unet, discriminator or None) of a config's ``ldm3d`` section."""
    from sbldm.data.cohort import TUMOUR_CHANNELS
    from sbldm.models.unet3d import build_unet

    channels = 1 + len(TUMOUR_CHANNELS[cfg.tumour_labels])
    sec = cfg.ldm3d.ae
    f = sec.downsampling
    if any(int(s) % f for s in cfg.volume_shape):
        raise ValueError(f"volume_shape {tuple(cfg.volume_shape)} must be divisible by ldm3d_ae_downsampling={f}")
    ae = AutoencoderKL3D(in_channels=channels, out_channels=channels, block_out_channels=tuple(sec.channels),
                         downsampling=f, layers_per_block=sec.layers_per_block, latent_channels=sec.latent_channels,
                         norm_num_groups=sec.norm_groups)
    unet = build_unet(cfg.ldm3d.unet, in_channels=sec.latent_channels)
    disc = None
    if sec.discriminator:
        check_discriminator_fits(cfg.volume_shape, sec.disc_layers, "ldm3d_disc_layers")
        disc = Discriminator3D(in_channels=channels, channels=sec.disc_channels, layers=sec.disc_layers)
    return ae, unet, disc


def unet_parameters(unet) -> int:
    """Parameters the unconditional UNet uses: all but the (unused) condition MLP."""
    return count_parameters(unet) - count_parameters(unet.cond_embedding)


class LDM3D(DiffusionPipeline):
    """The 3D-LDM as a diffusers pipeline, behind the generator interface
    (``sbldm.generators.registry``).

    Components: ``autoencoder`` (``AutoencoderKL3D``; its config holds the latent
    ``scaling_factor``, 1 / the global std of the training posterior means), ``unet``
    (``ConditionedUNet3D``, used unconditionally), ``scheduler`` (the training schedule) and,
    when it was trained as the paper's VAE-GAN, ``discriminator`` (training only). The
    pipeline's own config holds the volume shape and the sampling defaults. ``pipe(n)`` and
    ``pipe.generate(n)`` sample; ``save_pretrained`` / ``from_pretrained`` are diffusers'.
    """

    kind = KIND
    model_cpu_offload_seq = "unet->autoencoder"
    _optional_components = ["discriminator"]

    def __init__(self, autoencoder: AutoencoderKL3D, unet, scheduler, discriminator: Discriminator3D | None = None,
                 volume_shape: list | tuple = (192, 192, 96), sampler: str = "ddim", num_inference_steps: int = 50,
                 eta: float = 0.0):
        super().__init__()
        self.register_modules(autoencoder=autoencoder, unet=unet, scheduler=scheduler, discriminator=discriminator)
        self.register_to_config(volume_shape=[int(s) for s in volume_shape], sampler=sampler,
                                num_inference_steps=int(num_inference_steps), eta=float(eta))
        self.unet.cond_embedding.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg) -> "LDM3D":
        """An untrained 3D-LDM of a config's ``ldm3d_*`` fields (name kept from the generator
        interface: this is not diffusers' ``from_config``)."""
        ae, unet, disc = build_networks(cfg)
        return cls(ae, unet, make_scheduler(cfg, cfg.ldm3d_diffusion_prediction_type), disc, cfg.volume_shape,
                   cfg.sampler, cfg.num_inference_steps, cfg.eta)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "LDM3D":
        path = Path(pretrained_model_name_or_path)
        meta = read_marker(path, KIND)                 # refuses a folder of another generator, naming it
        if meta.get("format", 1) < 2 or not (path / "model_index.json").is_file():
            raise ValueError(f"{path}: a 3D-LDM saved in the older layout that kept the latent scale in "
                             "generator.json (no model_index.json); a 3D-LDM folder is a diffusers pipeline now. "
                             "Retrain it (notebook 03) or re-save it")
        from sbldm.models import gan3d, unet3d  # noqa: F401  (diffusers loads classes from imported modules)

        pipe = super().from_pretrained(str(path), **kwargs)
        pipe.autoencoder.eval()
        pipe.unet.eval()
        return pipe

    def save_pretrained(self, save_directory, **kwargs) -> None:
        super().save_pretrained(save_directory, **kwargs)
        write_marker(save_directory, KIND, format=2)

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.config.volume_shape)

    @property
    def latent_std(self) -> float:
        return 1.0 / float(self.autoencoder.config.scaling_factor)

    def set_latent_std(self, latent_std: float) -> "LDM3D":
        if not latent_std > 0:
            raise ValueError(f"latent_std must be positive, got {latent_std}")
        self.autoencoder.register_to_config(scaling_factor=1.0 / float(latent_std))
        return self

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return self.autoencoder.latent_shape(self.volume_shape)

    def num_parameters(self) -> dict:
        """Parameters per network; ``total`` = every trained network (autoencoder, its
        discriminator if any, UNet: what the paper's 728M counts), ``sampling`` =
        autoencoder + UNet. The UNet's unused condition MLP is not counted."""
        ae, d, u = count_parameters(self.autoencoder), count_parameters(self.discriminator), unet_parameters(self.unet)
        return {"autoencoder": ae, "discriminator": d, "unet": u, "total": ae + d + u, "sampling": ae + u}

    @torch.no_grad()
    def __call__(self, num_volumes: int = 1, generator: torch.Generator | None = None, sampler: str | None = None,
                 num_inference_steps: int | None = None, eta: float | None = None, batch_size: int = 4,
                 noise: torch.Tensor | None = None, progress: bool = False, output_type: str = "np"):
        """``num_volumes`` volumes: latent noise (drawn with ``generator``, or ``noise``)
        denoised by DDIM (``eta``) or DDPM, times ``latent_std``, decoded. Defaults come
        from the config the model was built with. ``output_type="latent"`` returns the
        model-space latents."""
        n = int(num_volumes)
        sampler = sampler or self.config.sampler
        eta = self.config.eta if eta is None else float(eta)
        steps = num_inference_steps or (self.config.num_inference_steps if sampler == "ddim" else None)
        dev, dtype = self.unet.device, self.unet.dtype
        sched = sampling_scheduler(self.scheduler, sampler, steps, dev)
        shape = (n, *self.latent_shape)
        if noise is None:
            noise = randn_tensor(shape, generator=generator, device=dev, dtype=dtype)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        modes = (self.unet.training, self.autoencoder.training)
        self.unet.eval()
        self.autoencoder.eval()
        try:
            lat_out, vol_out = [], []
            for s in range(0, n, max(int(batch_size), 1)):
                lat = denoise(lambda x, t: self.unet(x, t, None), noise[s:s + batch_size].to(dev, dtype), sched,
                              eta=eta, generator=generator, progress=progress, desc="ldm3d")
                if output_type == "latent":
                    lat_out.append(lat.float().cpu())
                else:
                    vol_out.append(self.autoencoder.decode((lat * self.latent_std).to(self.autoencoder.dtype))
                                   .float().cpu())
        finally:
            self.unet.train(modes[0])
            self.autoencoder.train(modes[1])
        if output_type == "latent":
            return torch.cat(lat_out).numpy() if lat_out else np.zeros((0, *self.latent_shape), np.float32)
        return to_samples(torch.cat(vol_out) if vol_out
                          else torch.zeros(0, self.autoencoder.config.out_channels, *self.volume_shape))

    def generate(self, n: int, generator: torch.Generator | None = None, **options):
        """The generator interface's name for ``__call__``."""
        return self(n, generator=generator, **options)


# -- training ----------------------------------------------------------------------------------

def _tumour_representation(ae: AutoencoderKL3D) -> str:
    from sbldm.data.cohort import tumour_labels_of

    return tumour_labels_of(ae.config.in_channels)


@torch.no_grad()
def encode_means(ae: AutoencoderKL3D, images: np.ndarray, labels: np.ndarray, batch_size: int = 2) -> np.ndarray:
    """(N, C, x/f, y/f, z/f) posterior means of every volume (the diffusion stage's data);
    ``labels``: label maps (or whole-tumour masks for a 2-channel autoencoder)."""
    from sbldm.data.cohort import to_model_space

    kind = _tumour_representation(ae)
    was = ae.training
    ae.eval()
    dev = next(ae.parameters()).device
    out = []
    try:
        for s in range(0, len(images), batch_size):
            x = np.stack([to_model_space(images[i], labels[i], kind) for i in range(s, min(s + batch_size, len(images)))])
            out.append(ae.encode(torch.from_numpy(x).to(dev)).mean.float().cpu())
    finally:
        ae.train(was)
    return torch.cat(out).numpy()


@torch.no_grad()
def reconstruction_check(ae: AutoencoderKL3D, images: np.ndarray, labels: np.ndarray, n: int = 20,
                         batch_size: int = 2) -> dict:
    """How well the autoencoder decodes tumours: the first ``n`` volumes encoded to their
    posterior means and decoded; per region (WT, and TC and ET for an autoencoder of the
    regions) the mean volume Dice (``sbldm.metrics.dice``, both empty = 1), the share of
    decoded volumes without tumour where the input had one, and the image's mean absolute
    error. Training data only: this is a check of the autoencoder, not a test result."""
    from sbldm.data.cohort import from_model_space, to_model_space
    from sbldm.data.tumour import REGIONS
    from sbldm.metrics import dice

    kind = _tumour_representation(ae)
    n = min(int(n), len(images))
    was = ae.training
    ae.eval()
    dev = next(ae.parameters()).device
    rec_images, rec_masks, rec_labels = [], [], []
    try:
        for s in range(0, n, batch_size):
            x = np.stack([to_model_space(images[i], labels[i], kind) for i in range(s, min(s + batch_size, n))])
            out = ae.decode(ae.encode(torch.from_numpy(x).to(dev)).mean)
            im, mk, lb = from_model_space(out, with_labels=True)
            rec_images.append(im)
            rec_masks.append(mk)
            if lb is not None:
                rec_labels.append(lb)
    finally:
        ae.train(was)
    rec_images, rec_masks = np.concatenate(rec_images), np.concatenate(rec_masks)
    ref = np.asarray(labels[:n])
    result = {"n_volumes": n, "image_mae": float(np.abs(rec_images - np.asarray(images[:n])).mean()),
              "wt_dice": float(np.mean([dice(rec_masks[k], ref[k] > 0) for k in range(n)])),
              "wt_empty_fraction": float(np.mean([not rec_masks[k].any() and (ref[k] > 0).any() for k in range(n)]))}
    if rec_labels:
        rec = np.concatenate(rec_labels)
        for region in ("TC", "ET"):
            members = REGIONS[region]
            result[f"{region.lower()}_dice"] = float(np.mean([dice(np.isin(rec[k], members), np.isin(ref[k], members))
                                                              for k in range(n)]))
    return result


def check_reconstruction(check: dict, min_dice: float, where) -> None:
    """Stop before the UNet trains when the autoencoder decodes the whole tumour with a Dice
    below ``min_dice`` (0: report only), saying what to change."""
    if min_dice > 0 and not check["wt_dice"] >= min_dice:
        raise RuntimeError(
            f"{where}: the 3D-LDM autoencoder decodes the whole tumour of {check['n_volumes']} training volumes with "
            f"Dice {check['wt_dice']:.3f} ({check['wt_empty_fraction']:.0%} decoded empty), below "
            f"ldm3d_ae_min_dice={min_dice}; a UNet trained on its latents could only draw what it decodes. Train the "
            "autoencoder longer (ldm3d_ae_steps), give it the mask term (ldm3d_ae_mask_weight) or more width "
            "(ldm3d_ae_channels), or set ldm3d_ae_min_dice=0 to go on anyway")


def train_autoencoder(cfg, train, out_dir: str | os.PathLike, ae: AutoencoderKL3D | None = None,
                      disc: Discriminator3D | None = None, control=None,
                      device: str | None = None) -> AutoencoderKL3D | None:
    """Stage 1 of the 3D-LDM alone: the autoencoder ``ae`` (default: built from ``cfg``, with
    its discriminator when ``cfg.ldm3d_ae_discriminator``) trained on ``train`` for
    ``cfg.ldm3d_ae_steps`` steps into the run folder ``out_dir``, as ``control``
    (``sbldm.training.trainer.RunControl``) says; None when stopped early (resume later)."""
    from sbldm.runtime import cpu_setup, seed_everything, step_generator
    from sbldm.training.trainer import RunControl, StageSpec, data_fingerprint, make_accelerator, run_training

    cpu_setup()
    if ae is None:
        seed_everything(cfg.seed)
        ae, _, disc = build_networks(cfg)
    control = control or RunControl()
    images, labels = check_training_data(train, cfg.tumour_labels, cfg.volume_shape)
    out = Path(out_dir)
    use_disc = disc is not None
    accelerator = make_accelerator(cfg, device)
    dev = accelerator.device
    if use_disc and accelerator.num_processes > 1:
        raise NotImplementedError("the VAE-GAN variant trains on one device "
                                  "(its alternating updates are not wrapped for DDP)")

    def ae_terms(m, x, rng):
        gen = step_generator(rng)
        eps_gen = torch.Generator(device=dev).manual_seed(int(gen.initial_seed())) if dev.type != "cpu" else gen
        with accelerator.autocast():
            return autoencoder_loss(m, x, **autoencoder_loss_options(cfg), generator=eps_gen)

    if not use_disc:
        def ae_loss_fn(step, rng, m):
            x = volume_batch(images, labels, rng, cfg.ldm3d_ae_batch_size, cfg.ldm3d_flip_prob, cfg.tumour_labels).to(dev)
            return ae_terms(m, x, rng)[0]

        ae_model, ae_opt, ae_step, ae_save = ae, torch.optim.Adam(ae.parameters(), lr=cfg.ldm3d_ae_lr), None, None
    else:
        def ae_step(step, rng, m, opt):
            net = accelerator.unwrap_model(m)
            a, d = net["autoencoder"], net["discriminator"]
            x = volume_batch(images, labels, rng, cfg.ldm3d_ae_batch_size, cfg.ldm3d_flip_prob, cfg.tumour_labels).to(dev)
            adv_on = step >= cfg.ldm3d_disc_start
            d.requires_grad_(False)
            terms, recon = ae_terms(a, x, rng)
            loss = terms["loss"]
            if adv_on:
                with accelerator.autocast():
                    g_adv = ls_loss(d(recon), 1.0)
                loss = loss + cfg.ldm3d_disc_weight * g_adv
                terms["g_adv"] = g_adv.detach()
            accelerator.backward(loss)
            d.requires_grad_(True)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if adv_on:
                with accelerator.autocast():
                    d_loss = 0.5 * (ls_loss(d(x), 1.0) + ls_loss(d(recon.detach()), 0.0))
                accelerator.backward(d_loss)
                opt.step()
                opt.zero_grad(set_to_none=True)
                terms["d_loss"] = d_loss.detach()
            terms["loss"] = loss.detach()
            return terms

        def ae_save(net, directory):
            net["autoencoder"].save_pretrained(directory)
            net["discriminator"].save_pretrained(directory.parent / "discriminator")

        ae_model = nn.ModuleDict({"autoencoder": ae, "discriminator": disc})
        ae_opt = torch.optim.Adam([{"params": ae.parameters()}, {"params": disc.parameters()}], lr=cfg.ldm3d_ae_lr)
        ae_loss_fn = None

    ae_spec = StageSpec("ldm3d_ae", cfg.ldm3d_ae_steps, loss_fn=ae_loss_fn, train_step=ae_step, save=ae_save,
                        inputs={"data": data_fingerprint(images, labels)},
                        record={"num_volumes": int(len(images)), "discriminator": use_disc,
                                "downsampling": ae.downsampling_factor, "tumour_labels": cfg.tumour_labels,
                                "loss_terms": autoencoder_loss_words(cfg) + (" (+ disc_weight LS-GAN)" if use_disc else "")},
                        batch_size=cfg.ldm3d_ae_batch_size)
    _, done = run_training(ae_spec, cfg, ae_model, ae_opt, accelerator, out, control)
    return ae if done else None


def train_ldm3d(cfg, train, out_dir: str | os.PathLike, resume: bool = True, progress: bool = True,
                stop_at: int | None = None, device: str | None = None, model: LDM3D | None = None,
                step_delay: float = 0.0) -> LDM3D | None:
    """Train the 3D-LDM on ``train`` (a ``Prepared`` split or ``(images, label maps)``) into
    ``out_dir``: the autoencoder (``train_autoencoder``, ``cfg.ldm3d_ae_steps``, run folder
    ``autoencoder/``), the reconstruction check (``reconstruction_check.json`` there), the latent std of its posterior means, the UNet (``cfg.ldm3d_diffusion_steps``, run
    folder ``unet/``), then the whole generator saved in ``out_dir/model``. ``stop_at`` stops
    a stage after that many of its steps (returns None: resume later)."""
    from sbldm.diffusion.latents import global_std
    from sbldm.runtime import cpu_setup, seed_everything
    from sbldm.provenance import fingerprint
    from sbldm.training.objectives import noise_batch, noise_loss
    from sbldm.training.trainer import RunControl, StageSpec, make_accelerator, run_training

    cpu_setup()
    seed_everything(cfg.seed)
    images, labels = check_training_data(train, cfg.tumour_labels, cfg.volume_shape)
    out = Path(out_dir)
    ldm = model or LDM3D.from_config(cfg)
    ae, unet, disc = ldm.autoencoder, ldm.unet, ldm.discriminator
    control = RunControl(resume, progress, stop_at, step_delay)

    # stage 1: the autoencoder (with the optional adversarial term)
    if train_autoencoder(cfg, (images, labels), out / "autoencoder", ae, disc, control, device) is None:
        return None
    accelerator = make_accelerator(cfg, device)

    # the reconstruction check, then the latent scale: global std of the training posterior
    # means (as SBLDM)
    check = reconstruction_check(ae, images, labels, batch_size=cfg.ldm3d_ae_batch_size)
    if accelerator.is_main_process:
        from sbldm.io import atomic_write_json

        atomic_write_json(out / "autoencoder" / RECONSTRUCTION_CHECK, {**check, "min_dice": cfg.ldm3d_ae_min_dice})
    check_reconstruction(check, cfg.ldm3d_ae_min_dice, out / "autoencoder")
    means = encode_means(ae, images, labels, batch_size=cfg.ldm3d_ae_batch_size)
    latent_std = global_std(means)
    data = torch.from_numpy(means / np.float32(latent_std))

    # stage 2: the unconditional UNet
    scheduler = make_scheduler(cfg, cfg.ldm3d_diffusion_prediction_type)
    alphas = scheduler.alphas_cumprod
    unet.cond_embedding.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=cfg.ldm3d_diffusion_lr,
                            weight_decay=cfg.ldm3d_diffusion_weight_decay)
    accelerator = make_accelerator(cfg, device)
    dev = accelerator.device

    def unet_loss_fn(step, rng, m):
        _, noisy, target, t, _ = noise_batch(data, rng, cfg.ldm3d_diffusion_batch_size, alphas,
                                             cfg.ldm3d_diffusion_prediction_type)
        with accelerator.autocast():
            loss = noise_loss(m(noisy.to(dev), t.to(dev), None), target.to(dev), cfg.ldm3d_diffusion_loss)
        return {"loss": loss}

    unet_spec = StageSpec("ldm3d_unet", cfg.ldm3d_diffusion_steps, loss_fn=unet_loss_fn,
                          inputs={"latents": fingerprint(means, float(latent_std))},
                          record={"latent_std": latent_std, "scaling_factor": 1.0 / latent_std,
                                  "autoencoder_reconstruction_check": check,
                                  "num_volumes": int(len(data)), "latent_shape": list(means.shape[1:])},
                          batch_size=cfg.ldm3d_diffusion_batch_size)
    unet_model, done = run_training(unet_spec, cfg, unet, opt, accelerator, out / "unet", control)
    if not done:
        return None
    result = LDM3D(ae.eval(), unet_model.eval(), scheduler, disc, cfg.volume_shape, cfg.sampler,
                   cfg.num_inference_steps, cfg.eta).set_latent_std(latent_std)
    if accelerator.is_main_process:
        save_model(result, out / MODEL_DIR)
    return result
