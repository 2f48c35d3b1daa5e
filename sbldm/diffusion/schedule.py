"""The noise schedule and the sampling loop, shared by SBLDM and the 3D-LDM baseline.

Training uses the DDPM forward process of ``make_scheduler`` (paper §2.3; the authors'
T=1000, scaled_linear 0.002 -> 0.02). Sampling runs either DDPM over every training
timestep or DDIM (Song et al., 2021) over ``num_inference_steps``, with ``eta`` = 0 for
the deterministic sampler (the authors' code was stuck at eta = 1).
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler

SAMPLERS = ("ddim", "ddpm")


def make_scheduler(cfg, prediction_type: str | None = None) -> DDPMScheduler:
    """The training noise schedule of a config (no x0 clipping: latents are not bounded);
    ``prediction_type`` defaults to ``cfg.diffusion_prediction_type``."""
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         beta_start=cfg.beta_start, beta_end=cfg.beta_end, clip_sample=False,
                         prediction_type=prediction_type or cfg.diffusion_prediction_type,
                         variance_type="fixed_small")


def sampling_scheduler(train_scheduler, sampler: str, num_inference_steps: int | None, device=None):
    """A DDIM (default 50 steps) or DDPM (default: every training timestep) scheduler with
    the training schedule's betas and prediction type, timesteps set on ``device``."""
    if sampler == "ddim":
        s = DDIMScheduler.from_config(train_scheduler.config, clip_sample=False, set_alpha_to_one=False)
        s.set_timesteps(num_inference_steps or 50, device=device)
    elif sampler == "ddpm":
        s = DDPMScheduler.from_config(train_scheduler.config)
        s.set_timesteps(num_inference_steps or s.config.num_train_timesteps, device=device)
    else:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    return s


def denoise(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor, scheduler,
            eta: float = 0.0, generator: torch.Generator | None = None, progress: bool = False,
            desc: str = "sampling") -> torch.Tensor:
    """Run the reverse process from ``noise`` (already the initial latent, unscaled):
    ``predict(latents, t)`` returns the model output the scheduler expects (noise, v or x0)."""
    from tqdm.auto import tqdm

    latents = noise * scheduler.init_noise_sigma
    kw = {"eta": float(eta)} if isinstance(scheduler, DDIMScheduler) else {}
    for t in tqdm(scheduler.timesteps, disable=not progress, desc=desc, leave=False):
        latents = scheduler.step(predict(latents, t), t, latents, generator=generator, **kw).prev_sample
    return latents
