"""The networks, one module each; how they train is in ``sbldm.training``.

- ``vae``: SBLDM's slice VAE with its slice-position embedding (stage 1);
- ``unet3d``: the conditioned 3D UNet, SBLDM's latent UNet and the 3D-LDM's (stage 2);
- ``autoencoder3d``: the 3D-LDM's volume autoencoder;
- ``gan3d``: the 3D-LSGAN's generator and the 3D patch discriminator;
- ``_common``: what every network shares (loading into fresh storage, weights saved with
  the umask's mode, parameter counting).
"""
