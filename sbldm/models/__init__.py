"""Networks of SBLDM: the slice VAE (stage 1) and the conditioned 3D latent UNet (stage 2)."""
