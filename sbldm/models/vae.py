"""Stage 1: the slice VAE, a 2D KL autoencoder told where each slice sits. Its loss, which
the 3D-LDM's autoencoder shares, is ``sbldm.training.objectives.vae_loss``.

Built from diffusers' blocks (``ResnetBlock2D``, ``Downsample2D``, ``Upsample2D``,
``DiagonalGaussianDistribution``). Input and output channels: the FLAIR slice and its
tumour channels (``sbldm.data.cohort.TUMOUR_CHANNELS``: the whole-tumour mask, or the
BraTS regions WT, TC, ET), all in [-1, 1].

Topology (``block_out_channels=(c0, ..., cL)``, ``L`` downsamplings):

- encoder: ``conv_in`` (1 + tumour channels -> c0); for each level ``i = 1..L`` a stride-2 conv
  ``c_{i-1} -> c_i`` then ``layers_per_block`` resnet blocks at ``c_i``;
  GroupNorm-SiLU-conv to ``2 * latent_channels`` (mean, log-variance) and a 1x1
  ``quant_conv``;
- decoder: 1x1 ``post_quant_conv``, an input resnet block latent -> cL, then for each
  level in reverse a nearest-neighbour x2 upsample with a conv ``c_i -> c_{i-1}`` and
  ``layers_per_block`` resnet blocks at ``c_{i-1}``; GroupNorm-SiLU and a
  zero-initialised ``conv_out`` back to 1 + tumour channels.

This mirrors the authors' medfusion-style VAE (strided-conv down blocks, an input
resnet block in the decoder, upsample-then-conv up blocks, zero-initialised output).

At the paper preset ``(128, 256, 512, 512)``, 6 latent channels, 1 block per level,
this has 27.1M parameters without the slice embedding, like the authors' VAE
(27.08M); the slice embedding adds the sinusoid MLP and one projection per block.

Slice-position embedding l(i): the relative position ``p = i / (D - 1)`` in [0, 1] is
multiplied by ``position_scale`` (1000, so the sinusoid resolves neighbouring slices),
embedded with diffusers' ``Timesteps`` and a ``TimestepEmbedding`` MLP, and passed as
``temb`` to every resnet block of encoder and decoder (diffusers adds its projection
to the features after the first conv). ``slice_embedding=False`` removes it and its
weights (the authors' configuration).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn
from sbldm import _compat  # noqa: F401  (before diffusers: keeps torchvision out)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D

from sbldm.data.cohort import TUMOUR_CHANNELS, sequence_names, tumour_labels_of
from sbldm.models._common import FreshStorageMixin, UmaskWeightsMixin

if TYPE_CHECKING:
    from sbldm.config import SliceVAEConfig


def relative_positions(depth: int, index=None, device=None) -> torch.Tensor:
    """Relative positions ``i / (D - 1)`` in [0, 1] of slice indices (all slices if None)."""
    if index is None:
        index = torch.arange(depth, device=device)
    index = torch.as_tensor(index, device=device, dtype=torch.float32)
    return index / max(int(depth) - 1, 1)


class SliceVAE(FreshStorageMixin, UmaskWeightsMixin, ModelMixin, ConfigMixin):
    """2D KL autoencoder of (FLAIR, tumour channels) slices with an optional slice-position
    embedding. ``in_channels`` = ``out_channels`` = the image channels (``modalities``, BraTS
    2023 names in channel order: ("t2f",), the paper's FLAIR, or ("t1n", "t1c", "t2w", "t2f")
    for T1, T1ce, T2, FLAIR; ``cfg.modalities``) + the tumour channels of
    ``sbldm.data.cohort.TUMOUR_CHANNELS``: 1 for the paper's whole-tumour mask, 3 for the
    BraTS regions WT, TC, ET (``tumour_labels`` says which).

    ``scaling_factor`` is the latent scale, as in diffusers' ``AutoencoderKL``: the
    diffusion model works on ``latent * scaling_factor``, with ``scaling_factor = 1 /``
    the global std of the training posterior means (``sbldm.diffusion.latents``; the
    authors' "std_norm"). It is 1 until the latents of a training set set it
    (``register_to_config(scaling_factor=...)``) and is saved with the VAE's config."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 2,
        block_out_channels: Sequence[int] = (128, 256, 512, 512),
        latent_channels: int = 6,
        layers_per_block: int = 1,
        norm_num_groups: int = 32,
        slice_embedding: bool = True,
        slice_embedding_dim: int = 128,
        position_scale: float = 1000.0,
        scaling_factor: float = 1.0,
        modalities: Sequence[str] = ("t2f",),
    ):
        super().__init__()
        if not scaling_factor > 0:
            raise ValueError(f"scaling_factor must be positive, got {scaling_factor}")
        if not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must name one or more distinct sequences, got {modalities}")
        tumour_labels_of(in_channels, len(modalities))         # refuses a channel count that matches nothing
        if out_channels != in_channels:
            raise ValueError(f"a SliceVAE reconstructs its input: out_channels {out_channels} != in_channels {in_channels}")
        ch = list(block_out_channels)
        g = norm_num_groups
        if any(c % g for c in ch):
            raise ValueError(f"every VAE width {ch} must be divisible by norm_num_groups={g}")
        if slice_embedding:
            temb = 4 * slice_embedding_dim
            self.pos_proj = Timesteps(slice_embedding_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
            self.pos_embedding = TimestepEmbedding(slice_embedding_dim, temb)
        else:
            temb = None
            self.pos_proj = self.pos_embedding = None

        def block(cin, cout):
            return ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=temb, groups=g, eps=1e-6)

        # encoder: conv_in, then per level a (width-changing) strided downsample and resnet blocks
        self.enc_conv_in = nn.Conv2d(in_channels, ch[0], 3, padding=1)
        self.enc_down = nn.ModuleList()
        self.enc_blocks = nn.ModuleList()
        for i in range(1, len(ch)):
            self.enc_down.append(Downsample2D(ch[i - 1], use_conv=True, out_channels=ch[i], padding=1, name="op"))
            self.enc_blocks.append(nn.ModuleList([block(ch[i], ch[i]) for _ in range(layers_per_block)]))
        self.enc_norm_out = nn.GroupNorm(g, ch[-1], eps=1e-6)
        self.enc_conv_out = nn.Conv2d(ch[-1], 2 * latent_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)

        # decoder: an input resnet block latent -> cL, then per level an upsample (nearest x2 +
        # width-changing conv) and resnet blocks
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        self.dec_in = ResnetBlock2D(in_channels=latent_channels, out_channels=ch[-1], temb_channels=temb,
                                    groups=math.gcd(latent_channels, g), groups_out=g, eps=1e-6)
        self.dec_up = nn.ModuleList()
        self.dec_blocks = nn.ModuleList()
        for i in range(len(ch) - 1, 0, -1):
            self.dec_up.append(Upsample2D(ch[i], use_conv=True, out_channels=ch[i - 1]))
            self.dec_blocks.append(nn.ModuleList([block(ch[i - 1], ch[i - 1]) for _ in range(layers_per_block)]))
        self.dec_norm_out = nn.GroupNorm(g, ch[0], eps=1e-6)
        self.dec_conv_out = nn.Conv2d(ch[0], out_channels, 3, padding=1)
        nn.init.zeros_(self.dec_conv_out.weight)
        nn.init.zeros_(self.dec_conv_out.bias)
        self.act = nn.SiLU()

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def tumour_labels(self) -> str:
        """The tumour channels this VAE carries (``"whole"`` or ``"regions"``), from its channel count."""
        return tumour_labels_of(self.config.in_channels, self.image_channels)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The sequences of the image channels, in channel order (BraTS 2023 names)."""
        return tuple(self.config.get("modalities", ("t2f",)))

    @property
    def image_channels(self) -> int:
        """How many image channels (MRI sequences) lead each slice: 1 (the paper's FLAIR) or more."""
        return len(self.modalities)

    def _temb(self, slice_pos, batch: int, ref: torch.Tensor):
        if self.pos_embedding is None:
            return None
        if slice_pos is None:
            raise ValueError("this SliceVAE has a slice-position embedding: pass slice_pos "
                             "(relative positions in [0, 1], shape (B,))")
        pos = torch.as_tensor(slice_pos, device=ref.device, dtype=torch.float32).reshape(-1)
        if pos.numel() == 1 and batch > 1:
            pos = pos.expand(batch)
        if pos.numel() != batch:
            raise ValueError(f"slice_pos holds {pos.numel()} positions for a batch of {batch}")
        emb = self.pos_proj(pos * self.config.position_scale).to(ref.dtype)
        return self.pos_embedding(emb)

    def encode(self, x: torch.Tensor, slice_pos=None) -> DiagonalGaussianDistribution:
        """Posterior q(z | x, position) of slices ``x`` (B, C, H, W)."""
        f = self.downsampling_factor
        if x.ndim != 4 or x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"SliceVAE.encode needs (B, C, H, W) with H and W divisible by {f}, got {tuple(x.shape)}")
        temb = self._temb(slice_pos, x.shape[0], x)
        h = self.enc_conv_in(x)
        for down, blocks in zip(self.enc_down, self.enc_blocks):
            h = down(h)
            for b in blocks:
                h = b(h, temb)
        h = self.enc_conv_out(self.act(self.enc_norm_out(h)))
        return DiagonalGaussianDistribution(self.quant_conv(h))

    def decode(self, z: torch.Tensor, slice_pos=None) -> torch.Tensor:
        """Slices (B, C_out, H, W) decoded from latents ``z`` (B, C, H', W')."""
        temb = self._temb(slice_pos, z.shape[0], z)
        h = self.dec_in(self.post_quant_conv(z), temb)
        for up, blocks in zip(self.dec_up, self.dec_blocks):
            h = up(h)
            for b in blocks:
                h = b(h, temb)
        return self.dec_conv_out(self.act(self.dec_norm_out(h)))

    # -- volumes: the only place slices become a stacked latent and back ---------------------

    @torch.no_grad()
    def encode_volume(self, volume: torch.Tensor, chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, std) of a volume (C_in, X, Y, D) encoded slice by slice, each slice
        told its relative position, stacked in depth: two (C, X/f, Y/f, D) tensors."""
        if volume.ndim != 4 or volume.shape[0] != self.config.in_channels:
            raise ValueError(f"encode_volume needs one ({self.config.in_channels}, X, Y, D) volume "
                             f"({self.tumour_labels} tumour channels), got {tuple(volume.shape)}")
        depth = volume.shape[-1]
        dev = next(self.parameters()).device
        dtype = next(self.parameters()).dtype
        slices = volume.permute(3, 0, 1, 2)                                  # (D, C_in, X, Y)
        pos = relative_positions(depth, device=dev)
        mu, sd = [], []
        for s in range(0, depth, max(int(chunk), 1)):
            post = self.encode(slices[s:s + chunk].to(dev, dtype), pos[s:s + chunk])
            mu.append(post.mean.float())
            sd.append(post.std.float())
        return torch.cat(mu).permute(1, 2, 3, 0), torch.cat(sd).permute(1, 2, 3, 0)

    @torch.no_grad()
    def decode_volume(self, latent: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """A volume (C_out, X, Y, D) decoded slice by slice from a stacked latent (C, X/f, Y/f, D)."""
        if latent.ndim != 4:
            raise ValueError(f"decode_volume needs one (C, X', Y', D) latent, got {tuple(latent.shape)}")
        depth = latent.shape[-1]
        dev = next(self.parameters()).device
        dtype = next(self.parameters()).dtype
        slices = latent.permute(3, 0, 1, 2)                                  # (D, C, X', Y')
        pos = relative_positions(depth, device=dev)
        out = [self.decode(slices[s:s + chunk].to(dev, dtype), pos[s:s + chunk]).float()
               for s in range(0, depth, max(int(chunk), 1))]
        return torch.cat(out).permute(1, 2, 3, 0)

    def forward(self, x: torch.Tensor, slice_pos=None, sample_posterior: bool = True,
                generator: torch.Generator | None = None):
        """(reconstruction, posterior)."""
        posterior = self.encode(x, slice_pos)
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, slice_pos), posterior


def build_vae(vae: "SliceVAEConfig", tumour_labels: str, modalities: Sequence[str] = ("flair",)) -> SliceVAE:
    """The slice VAE of a ``sbldm.config.SliceVAEConfig`` section (``cfg.vae``) for the image
    channels of ``modalities`` (``cfg.modalities``) and the tumour channels of
    ``tumour_labels`` (``cfg.tumour_labels``)."""
    names = sequence_names(modalities)
    channels = len(names) + len(TUMOUR_CHANNELS[tumour_labels])
    return SliceVAE(
        modalities=names,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(vae.channels),
        latent_channels=vae.latent_channels,
        layers_per_block=vae.layers_per_block,
        norm_num_groups=vae.norm_groups,
        slice_embedding=vae.slice_embedding,
        slice_embedding_dim=vae.slice_embedding_dim,
    )


