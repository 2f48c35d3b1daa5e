"""The 3D-LSGAN's networks (paper §3.3; the authors' ``train_lsgan.py``) and the 3D patch
discriminator that the 3D-LSGAN and the 3D-LDM's optional VAE-GAN term share.

Generator (DCGAN-style, derived from the volume shape so every preset works): noise
z in R^latent_dim -> Linear -> (C, x/2^n, y/2^n, z/2^n) -> BN, ReLU -> (n - 1) x
[nearest upsample x2, conv3, BN, ReLU], halving the width each time -> nearest upsample
x2, conv3 to the model-space channels -> tanh. At ``paper``: 2048 -> 512 x 6x6x3 -> ... ->
2 x 192x192x96, as the authors.

Discriminator: ``layers`` 3D convs k4 s2 (batch norm, LeakyReLU 0.2), widths 64 .. 1024 at
``paper``. How they train is in ``sbldm.generators.lsgan3d`` and ``sbldm.training.objectives``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from sbldm import _compat  # noqa: F401  (before diffusers: keeps torchvision out)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from sbldm.models._common import UmaskWeightsMixin


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation, as the authors' ``weights_init_normal``: conv weights
    N(0, 0.02), batch-norm scales N(1, 0.02) and shifts 0 (linear layers keep torch's)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def discriminator_widths(channels: int, layers: int) -> list[int]:
    """Widths of the ``layers - 1`` hidden convs: channels / 2**(layers-2), ..., channels."""
    return [max(channels // 2 ** (layers - 2 - i), 1) for i in range(layers - 1)]


def check_discriminator_fits(shape, layers: int, what: str) -> None:
    need = 2 ** layers
    if min(shape) < need:
        raise ValueError(f"{what}: {layers} stride-2 convs need every side of volume_shape {tuple(shape)} >= {need}")


class Discriminator3D(UmaskWeightsMixin, ModelMixin, ConfigMixin):
    """3D convolutional discriminator of the authors' LSGAN: ``layers`` convs k4 s2 p1;
    the first without normalisation, the others with batch norm, all but the last
    followed by LeakyReLU(0.2); the last maps to one channel. The output is a patch map
    (B, 1, x', y', z'); the LS-GAN losses average it per volume."""

    @register_to_config
    def __init__(self, in_channels: int = 2, channels: int = 1024, layers: int = 6):
        super().__init__()
        if layers < 2:
            raise ValueError(f"a discriminator needs at least 2 layers, got {layers}")
        widths = discriminator_widths(channels, layers)
        mods: list[nn.Module] = [nn.Conv3d(in_channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        for a, b in zip(widths[:-1], widths[1:]):
            mods += [nn.Conv3d(a, b, 4, 2, 1), nn.BatchNorm3d(b), nn.LeakyReLU(0.2)]
        mods.append(nn.Conv3d(widths[-1], 1, 4, 2, 1))
        self.net = nn.Sequential(*mods)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LSGANGenerator3D(UmaskWeightsMixin, ModelMixin, ConfigMixin):
    """Noise (B, latent_dim) -> (B, 2, x, y, z) in [-1, 1]."""

    @register_to_config
    def __init__(self, volume_shape: Sequence[int] = (192, 192, 96), latent_dim: int = 2048,
                 channels: int = 512, upsamplings: int = 5, out_channels: int = 2):
        super().__init__()
        f = 2 ** upsamplings
        if upsamplings < 1 or any(int(s) % f for s in volume_shape):
            raise ValueError(f"volume_shape {tuple(volume_shape)} must be divisible by 2**upsamplings = {f}")
        if channels // 2 ** (upsamplings - 1) < 1:
            raise ValueError(f"channels={channels} cannot be halved {upsamplings - 1} times")
        self.base_shape = tuple(int(s) // f for s in volume_shape)
        self.fc = nn.Linear(latent_dim, channels * math.prod(self.base_shape))
        self.bn_in = nn.BatchNorm3d(channels)
        widths = [channels // 2 ** k for k in range(upsamplings)]       # 512, 256, 128, 64, 32
        self.convs = nn.ModuleList(nn.Conv3d(a, b, 3, padding=1) for a, b in zip(widths[:-1], widths[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm3d(b) for b in widths[1:])
        self.conv_out = nn.Conv3d(widths[-1], out_channels, 3, padding=1)
        dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.config.channels, *self.base_shape)
        h = F.relu(self.bn_in(h))
        for conv, norm in zip(self.convs, self.norms):
            h = F.relu(norm(conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))))
        return torch.tanh(self.conv_out(F.interpolate(h, scale_factor=2.0, mode="nearest")))
