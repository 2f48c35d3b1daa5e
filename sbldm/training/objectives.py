"""The training objectives, one place for every generator's loss: what a training step of
each stage minimises.

- Diffusion (SBLDM's latent UNet and the 3D-LDM's UNet): ``noise_batch`` draws a batch of
  noised latents and the target (noise, velocity or x0), ``noise_loss`` is the MSE (paper)
  or L1 (authors' code), ``min_snr_weights`` the optional min-SNR-gamma weights.
- Autoencoders (the slice VAE and the 3D-LDM's volume autoencoder): ``kl_autoencoder_loss``
  = L1 + (1 - SSIM) + KL [+ ``balanced_mask_l1``]; ``vae_loss`` and ``autoencoder_loss`` run
  a model and apply it.
- The least-squares GAN of the 3D-LSGAN (Mao et al. 2017): ``ls_loss``, ``noisy_labels``,
  ``generator_loss``, ``discriminator_loss``.

The loops that minimise them are ``sbldm.training.trainer`` (SBLDM) and the baselines'
trainers in ``sbldm.generators``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from sbldm.config import PREDICTION_TYPES
from sbldm.runtime import step_generator

if TYPE_CHECKING:
    from sbldm.models.autoencoder3d import AutoencoderKL3D
    from sbldm.models.vae import SliceVAE


# -- diffusion ---------------------------------------------------------------------------------

def noise_batch(data: torch.Tensor, rng: np.random.Generator, batch_size: int, alphas_cumprod: torch.Tensor,
                prediction_type: str = "epsilon"):
    """One diffusion training batch drawn by ``rng`` (deterministic in the step's rng):
    (indices, noisy latents x_t, the regression target, timesteps, the torch generator for
    any further draws of the step).

    The target is the noise ``eps`` (``prediction_type="epsilon"``, the paper), the
    velocity ``v = sqrt(a) eps - sqrt(1 - a) x_0`` (``"v_prediction"``, Salimans & Ho 2022)
    or the clean latent ``x_0`` (``"sample"``), with ``a`` the cumulative alpha at the
    drawn timestep.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
    idx = torch.from_numpy(rng.integers(0, len(data), size=batch_size))
    gen = step_generator(rng)
    z0 = data[idx]
    noise = torch.randn(z0.shape, generator=gen)
    t = torch.randint(0, len(alphas_cumprod), (len(idx),), generator=gen)
    a = alphas_cumprod[t].reshape(-1, *([1] * (z0.ndim - 1)))
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = a.sqrt() * noise - (1 - a).sqrt() * z0
    else:
        target = z0
    return idx, a.sqrt() * z0 + (1 - a).sqrt() * noise, target, t, gen


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights of min-SNR-gamma (Hang et al., ICCV 2023; diffusers'
    ``snr_gamma``): with SNR = a / (1 - a) at each timestep, ``min(SNR, gamma)`` expressed
    for the target the model regresses: / SNR for the noise, / (SNR + 1) for the velocity,
    as is for x_0. It caps the weight of the low-noise steps, which otherwise dominate."""
    a = alphas_cumprod[t].double()
    snr = a / (1 - a)
    w = torch.clamp(snr, max=float(gamma))
    if prediction_type == "epsilon":
        w = w / snr
    elif prediction_type == "v_prediction":
        w = w / (snr + 1)
    return w.float()


def noise_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse",
               weight: torch.Tensor | None = None, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """MSE (paper) or L1 (authors' code) between the prediction and its target (noise,
    velocity or x_0, see ``noise_batch``), in float32; with ``weight`` (broadcast over the
    channels) the weighted mean ``sum(w e) / sum(w)``, per element; with ``sample_weight``
    (B,) each example's mean error is scaled by its weight before the batch mean
    (``min_snr_weights``)."""
    err = pred.float() - target
    err = err.abs() if kind == "l1" else err ** 2
    if sample_weight is None:
        if weight is None:
            return err.mean()
        w = weight.float().expand_as(err)
        return (w * err).sum() / w.sum()
    dims = tuple(range(1, err.ndim))
    if weight is None:
        per_sample = err.mean(dim=dims)
    else:
        w = weight.float().expand_as(err)
        per_sample = (w * err).sum(dim=dims) / w.sum(dim=dims)
    return (sample_weight.to(per_sample) * per_sample).mean()


# -- autoencoders -----------------------------------------------------------------------------

def balanced_mask_l1(recon: torch.Tensor, x: torch.Tensor, nested: bool = False, band: int = 0,
                     image_channels: int = 1) -> torch.Tensor:
    """Class-balanced L1 of the tumour channels (the channels after the ``image_channels``
    image channels of model space, {-1, 1}):
    per channel, the mean absolute error inside the region (x > 0) and outside it,
    averaged, then averaged over the channels; a channel whose region is absent from the
    batch counts its outside error only. A tumour covers ~1% of the voxels, so in the
    plain L1 a decoder that draws no tumour at all is close to optimal; here missing the
    tumour costs as much as painting the background.

    ``nested`` (for the nested region channels WT, TC, ET): each channel after the first
    splits its outside into the part inside the previous channel's region and the rest, and
    averages three means: inside, that ring, the rest. For ET the ring is the necrosis (TC
    without ET), for TC the oedema. Without it the necrosis is a sliver of ET's outside,
    dominated by background, and an ET channel that covers the whole core costs almost
    nothing: measured at `small`, a 5000-step VAE decoded no necrosis at all
    (docs/decisions.md, "Necrosis through the slice VAE").

    ``band`` > 0: a channel without such a ring (the first, or every channel when not
    ``nested``) takes as its ring the ``band``-pixel (or voxel) band just outside its
    region, so painting the tumour larger than it is costs as much as missing it; without
    it the balance tolerates over-drawn regions (the background's error is spread over
    the whole outside)."""
    r, t = recon[:, image_channels:].float(), x[:, image_channels:].float()
    err = (r - t).abs()
    inside = t > 0
    dims = [0] + list(range(2, t.ndim))                  # all but the channel axis

    def mean_over(where):
        n = where.sum(dim=dims)
        return (err * where).sum(dim=dims) / n.clamp(min=1), n > 0

    e_in, has_in = mean_over(inside)
    if not nested and band <= 0:
        e_out, _ = mean_over(~inside)
        return torch.where(has_in, 0.5 * (e_in + e_out), e_out).mean()
    ring = torch.zeros_like(inside)
    if band > 0:
        pool = torch.nn.functional.max_pool2d if t.ndim == 4 else torch.nn.functional.max_pool3d
        ring = pool(inside.float(), 2 * band + 1, stride=1, padding=band) > 0
    if nested and t.shape[1] > 1:                         # the enclosing region's ring, where there is one
        parent = torch.cat([torch.zeros_like(inside[:, :1]), inside[:, :-1]], dim=1)
        ring = torch.cat([ring[:, :1], parent[:, 1:]], dim=1)
    e_ring, has_ring = mean_over(ring & ~inside)
    e_rest, has_rest = mean_over(~ring & ~inside)
    terms = torch.stack([e_in, e_ring, e_rest])
    present = torch.stack([has_in, has_ring, has_rest]).float()
    return ((terms * present).sum(0) / present.sum(0).clamp(min=1)).mean()


def kl_autoencoder_loss(recon: torch.Tensor, x: torch.Tensor, posterior, *, kl_weight: float = 1e-6,
                        ssim_weight: float = 1.0, ssim_range: str = "signed", mask_weight: float = 0.0,
                        mask_nested: bool = False, mask_band: int = 0, image_channels: int = 1) -> dict:
    """The loss of every KL autoencoder of the package (the slice VAE here, the 3D-LDM's
    ``AutoencoderKL3D``): L1 + ssim_weight (1 - SSIM) + kl_weight KL, from a
    reconstruction ``recon`` of ``x`` (2D slices or 3D volumes) and the ``posterior`` it was
    decoded from (its ``kl()`` per example, averaged over the batch).

    ``ssim_range="signed"`` (default) computes SSIM per channel on the model's [-1, 1]
    values with data range 2 (gaussian window 11); ``"unit"`` maps both to [0, 1] first, as
    the authors' pytorch_msssim call did. In [0, 1] the skull-stripped background and the
    mask's background sit at exactly 0, where SSIM's luminance term
    (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1) with C1 = 1e-4 punishes any deviation so hard
    that a freshly initialised VAE collapses to a dark output: measured at `small` (64x64
    slices, lr 5e-4, 300 steps), image PSNR 12.9 dB with "unit" vs 28.2 dB with "signed"
    (and 27.0 dB with L1 alone). SSIM is computed (and logged) whatever its weight.

    ``mask_weight`` > 0 adds that weight times ``balanced_mask_l1`` of the tumour channels
    (beyond the authors' loss, which has no mask term; ``mask_nested`` balances each region
    channel against the ring its enclosing region leaves, ``mask_band`` against the band
    just outside it; see there; ``image_channels``: how many leading channels are images).

    Returns a dict of scalar tensors: ``loss`` (with its graph), then the detached terms
    ``l1``, ``ssim`` and ``kl`` (and ``mask`` with a mask term)."""
    from sbldm.metrics import ssim_torch

    l1 = (recon - x).abs().mean()
    if ssim_range == "signed":
        ssim = ssim_torch(recon, x, data_range=2.0)
    elif ssim_range == "unit":
        ssim = ssim_torch((recon + 1) / 2, (x + 1) / 2)
    else:
        raise ValueError(f"ssim_range must be 'signed' or 'unit', got {ssim_range!r}")
    kl = posterior.kl().mean()
    loss = l1 + ssim_weight * (1 - ssim) + kl_weight * kl
    out = {"loss": loss, "l1": l1.detach(), "ssim": ssim.detach(), "kl": kl.detach()}
    if mask_weight > 0:
        mask = balanced_mask_l1(recon, x, nested=mask_nested, band=mask_band, image_channels=image_channels)
        out["loss"] = loss + mask_weight * mask
        out["mask"] = mask.detach()
    return out


def frequency_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A weight-free sharpening term: the mean over the 2D spectrum (``torch.fft.rfft2``,
    orthonormal, over the last two axes) of |F(recon) - F(x)| weighted by the radial
    frequency over its maximum, so that the fine detail an L1 + SSIM loss lets a decoder
    blur away costs in proportion to its frequency. The complex difference counts phase as
    well as amplitude: a sharp edge in the wrong place is not rewarded. Computed in float32.
    In the spirit of the focal frequency loss (Jiang et al., ICCV 2021), with a fixed
    radial weight instead of its adaptive one."""
    fr = torch.fft.rfft2(recon.float(), norm="ortho")
    fx = torch.fft.rfft2(x.float(), norm="ortho")
    h, w = x.shape[-2], x.shape[-1]
    fy = torch.fft.fftfreq(h, device=x.device).abs()[:, None]
    fz = torch.fft.rfftfreq(w, device=x.device)[None, :]
    radius = torch.sqrt(fy ** 2 + fz ** 2)
    weight = radius / radius.max()
    return (weight * (fr - fx).abs()).mean()


def vae_loss(model: SliceVAE, x: torch.Tensor, slice_pos, *, kl_weight: float = 1e-6,
             ssim_weight: float = 1.0, ssim_range: str = "signed", lpips_weight: float = 0.0, lpips=None,
             generator: torch.Generator | None = None, mask_weight: float = 0.0, mask_nested: bool = False,
             mask_band: int = 0, frequency_weight: float = 0.0, image_channels: int | None = None) -> dict:
    """The slice VAE's training loss on slices ``x`` at ``slice_pos``: ``kl_autoencoder_loss``
    of a reconstruction through a posterior sample (SSIM on [-1, 1] by default, see there),
    plus lpips_weight LPIPS on the first image channel and frequency_weight
    ``frequency_loss`` on every image channel (``image_channels``; default: the model's
    sequences, read through a DDP wrapper). Returns a dict of scalar tensors, ``loss`` first."""
    c = image_channels if image_channels is not None else getattr(model, "module", model).image_channels
    recon, posterior = model(x, slice_pos, sample_posterior=True, generator=generator)
    out = kl_autoencoder_loss(recon, x, posterior, kl_weight=kl_weight, ssim_weight=ssim_weight,
                              ssim_range=ssim_range, mask_weight=mask_weight, mask_nested=mask_nested,
                              mask_band=mask_band, image_channels=c)
    if frequency_weight > 0:
        fl = frequency_loss(recon[:, :c], x[:, :c])
        out["frequency"] = fl.detach()
        out["loss"] = out["loss"] + frequency_weight * fl
    if lpips_weight > 0:
        if lpips is None:
            raise ValueError("vae_lpips_weight > 0 needs an LPIPS network; sbldm downloads nothing: "
                             "set vae_lpips_path to local LPIPS weights or set vae_lpips_weight=0")
        lp = lpips(recon[:, :1].clamp(-1, 1), x[:, :1]).mean()
        out["lpips"] = lp.detach()
        out["loss"] = out["loss"] + lpips_weight * lp
    return out


def autoencoder_loss(ae: AutoencoderKL3D, x: torch.Tensor, *, kl_weight: float = 1e-6, ssim_weight: float = 1.0,
                     ssim_range: str = "signed", mask_weight: float = 0.0, mask_nested: bool = False,
                     mask_band: int = 0, generator: torch.Generator | None = None) -> tuple[dict, torch.Tensor]:
    """(terms, the reconstruction) of volumes ``x`` through a posterior sample: the slice
    VAE's loss, ``kl_autoencoder_loss`` (with its class-balanced mask term
    at ``mask_weight`` > 0, nested and banded as there), computed in float32 (the
    reconstruction is returned as the autoencoder gave it, for the adversarial term)."""
    recon, post = ae(x, sample_posterior=True, generator=generator)
    return kl_autoencoder_loss(recon.float(), x.float(), post, kl_weight=kl_weight, ssim_weight=ssim_weight,
                               ssim_range=ssim_range, mask_weight=mask_weight, mask_nested=mask_nested,
                               mask_band=mask_band), recon


def autoencoder_loss_options(cfg) -> dict:
    """``autoencoder_loss``'s weights and mask-term options from a config's ``ldm3d_ae_*`` fields."""
    return {"kl_weight": cfg.ldm3d_ae_kl_weight, "ssim_weight": cfg.ldm3d_ae_ssim_weight,
            "ssim_range": cfg.ldm3d_ae_ssim_range, "mask_weight": cfg.ldm3d_ae_mask_weight,
            "mask_nested": cfg.ldm3d_ae_mask_nested, "mask_band": cfg.ldm3d_ae_mask_band}


def autoencoder_loss_words(cfg) -> str:
    """The autoencoder's loss terms in words, as its training record names them."""
    mask = ""
    if cfg.ldm3d_ae_mask_weight:
        how = [w for w, on in (("nested", cfg.ldm3d_ae_mask_nested),
                               (f"{cfg.ldm3d_ae_mask_band}-voxel band", cfg.ldm3d_ae_mask_band)) if on]
        mask = " + mask_weight balanced mask L1" + (f" ({', '.join(how)})" if how else "")
    return "L1 + ssim_weight (1 - SSIM) + kl_weight KL" + mask


# -- the least-squares GAN -------------------------------------------------------------------

def ls_loss(d_out: torch.Tensor, target: torch.Tensor | float) -> torch.Tensor:
    """Least-squares GAN loss: mean over the batch of (mean patch score - target)^2."""
    score = d_out.flatten(1).mean(1)
    target = torch.as_tensor(target, dtype=score.dtype, device=score.device).expand_as(score)
    return F.mse_loss(score, target)


def noisy_labels(batch: int, noise: float, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(real, fake) targets as the authors drew them: 1 - noise * n and noise * n, n ~ N(0, 1)."""
    real = 1.0 - noise * torch.randn(batch, generator=generator)
    fake = noise * torch.randn(batch, generator=generator)
    return real, fake


def generator_loss(g, d, z: torch.Tensor, real_label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(LS loss of the generator, the fake batch)."""
    fake = g(z)
    return ls_loss(d(fake), real_label), fake


def discriminator_loss(d, real: torch.Tensor, fake: torch.Tensor, real_label, fake_label) -> dict:
    d_real = ls_loss(d(real), real_label)
    d_fake = ls_loss(d(fake.detach()), fake_label)
    return {"d_loss": 0.5 * (d_real + d_fake), "d_real": d_real, "d_fake": d_fake}
