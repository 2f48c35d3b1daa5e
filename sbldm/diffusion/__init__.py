"""Stage 2, the stacked latent and the conditioned 3D latent diffusion (paper §2.2-2.3).

- ``latents``: slice latents stacked into a 3D latent, their global std, the cache;
- ``conditioner``: the tumour-feature normaliser a saved pipeline carries;
- ``unet_inputs``: what the latent UNet is given beside the latent (checked conditions,
  the rendered spatial prior, the tumour loss weights, the sub-region shares);
- ``schedule``: the noise schedule and the sampling loop (DDPM, DDIM);
- ``pipeline``: ``SBLDMPipeline``, a diffusers pipeline from a feature request to decoded
  (image, label) volumes.
"""
