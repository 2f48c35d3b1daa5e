"""The 3D-LDM's first stage (paper §3.3): a 3D KL autoencoder on whole (FLAIR, tumour
channels) volumes, 2 -> 2 channels with the whole-tumour mask, 4 -> 4 with the BraTS
regions; pre-norm resnet blocks (GroupNorm, SiLU, 3x3x3 convs), strided-conv
downsampling and nearest-upsampling + conv, no attention. ``block_out_channels`` are the
widths per level (authors' 3D VAE: 64, 128, 256, 512) and ``downsampling`` the spatial
factor (paper text: x4, the default; authors' code: x8): the first log2(downsampling)
levels downsample, deeper levels keep the resolution. Its loss is
``sbldm.training.objectives.autoencoder_loss``; the 3D-LDM around it is
``sbldm.generators.ldm3d``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from sbldm import _compat  # noqa: F401  (before diffusers: keeps torchvision out)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.modeling_utils import ModelMixin

from sbldm.models._common import UmaskWeightsMixin


class ResBlock3D(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.block = nn.Sequential(nn.GroupNorm(groups, cin, eps=1e-6), nn.SiLU(), nn.Conv3d(cin, cout, 3, padding=1),
                                   nn.GroupNorm(groups, cout, eps=1e-6), nn.SiLU(), nn.Conv3d(cout, cout, 3, padding=1))
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.block(x)


class VolumePosterior(DiagonalGaussianDistribution):
    """diffusers' diagonal Gaussian q(z | x) (mean, log-variance clamped to [-30, 20],
    ``sample``, ``mode``) over (B, C, x', y', z') volume latents. Only ``kl`` differs:
    diffusers sums over dims 1-3, which are all of a 2D latent but leave a volume's depth
    axis unsummed; here it sums over every latent element, per volume, with the variance
    as ``std ** 2`` (how the 3D-LDMs were trained, so their results stay bit-identical)."""

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
        if other is not None:
            raise NotImplementedError("VolumePosterior.kl is against the standard normal only")
        return 0.5 * (self.mean ** 2 + self.std ** 2 - 1.0 - self.logvar).flatten(1).sum(1)


class AutoencoderKL3D(UmaskWeightsMixin, ModelMixin, ConfigMixin):
    """3D KL autoencoder: (B, 2, x, y, z) <-> (B, latent_channels, x/f, y/f, z/f)."""

    @register_to_config
    def __init__(self, in_channels: int = 2, out_channels: int = 2,
                 block_out_channels: Sequence[int] = (64, 128, 256, 512), downsampling: int = 4,
                 layers_per_block: int = 1, latent_channels: int = 6, norm_num_groups: int = 32,
                 scaling_factor: float = 1.0):
        super().__init__()
        ch = list(block_out_channels)
        n_down = int(round(math.log2(downsampling)))
        if downsampling < 1 or 2 ** n_down != downsampling or n_down > len(ch) - 1:
            raise ValueError(f"downsampling={downsampling} must be a power of two <= 2**(levels - 1) = "
                             f"{2 ** (len(ch) - 1)}")
        g = norm_num_groups
        self.n_down = n_down
        # encoder
        self.conv_in = nn.Conv3d(in_channels, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        prev = ch[0]
        for i, c in enumerate(ch):
            level = nn.ModuleList()
            for _ in range(layers_per_block):
                level.append(ResBlock3D(prev, c, g))
                prev = c
            level.append(nn.Conv3d(c, c, 3, stride=2, padding=1) if i < n_down else nn.Identity())
            self.down.append(level)
        self.enc_mid = ResBlock3D(prev, prev, g)
        self.enc_out = nn.Sequential(nn.GroupNorm(g, prev, eps=1e-6), nn.SiLU(),
                                     nn.Conv3d(prev, 2 * latent_channels, 3, padding=1))
        self.quant_conv = nn.Conv3d(2 * latent_channels, 2 * latent_channels, 1)
        # decoder
        self.post_quant_conv = nn.Conv3d(latent_channels, latent_channels, 1)
        self.dec_in = nn.Conv3d(latent_channels, prev, 3, padding=1)
        self.dec_mid = ResBlock3D(prev, prev, g)
        self.up = nn.ModuleList()
        for i in reversed(range(len(ch))):
            level = nn.ModuleList()
            for _ in range(layers_per_block + 1):
                level.append(ResBlock3D(prev, ch[i], g))
                prev = ch[i]
            if 1 <= i <= n_down:
                level.append(nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"),
                                           nn.Conv3d(prev, prev, 3, padding=1)))
            self.up.append(level)
        self.dec_out = nn.Sequential(nn.GroupNorm(g, prev, eps=1e-6), nn.SiLU(),
                                     nn.Conv3d(prev, out_channels, 3, padding=1))

    @property
    def downsampling_factor(self) -> int:
        return 2 ** self.n_down

    def latent_shape(self, volume_shape: Sequence[int]) -> tuple[int, int, int, int]:
        f = self.downsampling_factor
        if any(int(s) % f for s in volume_shape):
            raise ValueError(f"volume shape {tuple(volume_shape)} must be divisible by the downsampling factor {f}")
        return (self.config.latent_channels, *(int(s) // f for s in volume_shape))

    def encode(self, x: torch.Tensor) -> VolumePosterior:
        if x.ndim != 5:
            raise ValueError(f"AutoencoderKL3D needs (B, C, x, y, z) input, got {tuple(x.shape)}")
        self.latent_shape(x.shape[2:])
        h = self.conv_in(x)
        for level in self.down:
            for m in level:
                h = m(h)
        h = self.enc_out(self.enc_mid(h))
        return VolumePosterior(self.quant_conv(h))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.dec_mid(self.dec_in(self.post_quant_conv(z)))
        for level in self.up:
            for m in level:
                h = m(h)
        return self.dec_out(h)

    def forward(self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None):
        post = self.encode(x)
        z = post.sample(generator) if sample_posterior else post.mean
        return self.decode(z), post
