"""Training loops for the slice VAE and the latent UNet: one resumable, seeded, accelerate-driven loop (``trainer``)."""
