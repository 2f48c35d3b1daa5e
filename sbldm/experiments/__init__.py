"""Experiments beyond the paper that train or run models to answer one question.

- ``conditioning_ablation``: the paper's conditioning route against the tumour-channel
  options, one training budget (notebook 07);
- ``denoising_probe``: real tumours noised and denoised by SBLDM (notebook 09);
- ``scarce_regime``: one latent UNet per real-set size and the data-scarce sweep
  (notebooks 10 and 11);
- ``baseline_ablation``: the 3D-LDM autoencoder's and the 3D-LSGAN's remedies
  (``python -m sbldm.experiments.baseline_ablation``);
- ``vae_mask_ablation``: does the necrosis survive the slice VAE's mask term
  (``python -m sbldm.experiments.vae_mask_ablation``);
- ``vae_sharpness``: a weight-free sharpening term for the slice VAE
  (``python -m sbldm.experiments.vae_sharpness``);
- ``four_sequences``: SBLDM of T1, T1ce, T2 and FLAIR with their labels, its latent
  channels chosen by a reconstruction check, and four-channel against FLAIR-only
  segmenters (notebook 12);
- ``generator_budget``: quality against training compute for SBLDM, the 3D-LDM and the
  3D-LSGAN (``python -m sbldm.experiments.generator_budget``).
"""
