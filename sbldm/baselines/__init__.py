"""The two 3D baselines of the paper's comparison (§3.3, Table 1 and Table 2).

- ``lsgan3d``: a DCGAN-style 3D least-squares GAN (the authors' ``train_lsgan.py``).
- ``ldm3d``: a 3D latent diffusion model: a 3D KL autoencoder on whole (image, mask)
  volumes and an unconditional 3D denoising UNet on its latent.

Both generate joint (FLAIR, mask) volumes like SBLDM and are used through
``sbldm.generators`` (``build_generator``, ``load_generator``, ``train_generator``).
"""
