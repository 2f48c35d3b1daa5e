"""Every number quoted from the paper (Kebaili et al., ISBI 2024) or the authors' code:
the one place tables and figures take them from to sit beside ours.

Table 1: PSNR, SSIM, #params and sampling time per volume (one RTX A6000). Table 2:
nnU-Net Dice and IoU of each training set. The authors' code counts are from their
released code and their ``paper.ipynb``, counted from the layer sizes of their configs
(``docs/paper_vs_code.md`` describes those models).
"""

from __future__ import annotations

#: Table 1 — method: (PSNR, SSIM, #params, seconds per volume)
TABLE1 = {
    "3D-LSGAN": (20.091, 0.601, 71e6, 0.002),
    "3D-LDM": (21.034, 0.677, 728e6, 13.324),
    "SBLDM (DDPM)": (21.466, 0.731, 159e6, 30.900),
    "SBLDM (DDIM)": (21.701, 0.726, 159e6, 1.965),
}

#: Table 2 — training set: (Dice, IoU)
TABLE2 = {
    "real": (0.714, 0.592),
    "real + augmentation (x5)": (0.806, 0.716),
    "synthetic only: 3D-LSGAN": (0.355, 0.302),
    "synthetic only: 3D-LDM": (0.529, 0.401),
    "synthetic only: SBLDM": (0.673, 0.551),
    "real + 3D-LSGAN": (0.623, 0.514),
    "real + 3D-LDM": (0.705, 0.583),
    "real + SBLDM": (0.815, 0.715),
    "real + SBLDM + augmentation": (0.834, 0.739),
}

#: SBLDM's networks in the authors' code: slice VAE, 3D UNet without / with its embedding
#: layers, and the paper's total
SBLDM_PARAMETERS = {"vae": 27.082e6, "unet": 132.101e6, "unet_with_embeddings": 135.2e6, "total": 159e6}

#: the authors' own counts in their ``paper.ipynb`` (thop): Table 1's 728M is 627.556M
#: (3D-LDM UNet) + 85.949M (3D VAE) + 14.745M (discriminator); the same notebook lists the
#: UNet with half the widths ("reduced number of filters") at 156.922M
AUTHORS_NOTEBOOK = {"ldm3d_unet": 627.556e6, "ldm3d_unet_reduced": 156.922e6, "ldm3d_autoencoder": 85.949e6,
                    "ldm3d_discriminator": 14.745e6}
