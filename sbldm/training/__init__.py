"""Training.

- ``objectives``: every generator's loss (diffusion, autoencoders, least-squares GAN);
- ``trainer``: one resumable, seeded, accelerate-driven loop, and SBLDM's two stages
  (the slice VAE, the latent UNet) on it.
"""
