"""Stage 2: the conditioned 3D denoising UNet over stacked slice latents (C, H', W', D).

diffusers has no true 3D convolutional UNet (its 3D UNets are video models with 2D
convolutions), so this one is written here in diffusers' style (``ModelMixin`` +
``ConfigMixin``, ``Timesteps`` + ``TimestepEmbedding``, pre-norm resnet blocks).

Topology, for ``block_out_channels=(c0, c1, ..., cL)`` (paper: 64, 128, 256, 512) and
``layers_per_block = n`` (paper: 2), following the authors' medfusion-style UNet:

- ``conv_in``: 3x3x3 conv, latent channels -> c0 (level 0 is this conv only);
- encoder levels ``i = 1..L``: ``n`` resnet blocks to ``c_i``, then a stride-2 3x3x3
  conv downsample after every level but the last, so there are ``L - 1``
  downsamplings (paper: 24x24x96 -> 12x12x48 -> 6x6x24);
- a middle of ``mid_layers`` (2) resnet blocks at cL, no attention anywhere;
- decoder levels ``i = L..1``: ``n + 1`` resnet blocks, each fed the concatenation of
  the running features and one skip (the outputs of ``conv_in``, every encoder block
  and every downsample, popped in reverse); all output ``c_i`` except the last, which
  outputs ``c_{i-1}``; then a nearest x2 upsample + 3x3x3 conv (at ``c_{i-1}``) after
  every level but the last;
- GroupNorm-SiLU and a zero-initialised 3x3x3 ``conv_out`` back to the latent channels.

Embeddings: ``emb = time_mlp(sinusoid(t)) + tau(c)`` with the time MLP 128 -> 512 -> 512
and tau 9 -> 256 -> 512 (paper sizes). In each resnet block:

- ``cond_fusion="scale_shift"`` (paper): ``h = GN(h) * (1 + scale) + shift`` with
  ``(scale, shift) = Linear(SiLU(emb))``;
- ``cond_fusion="add"`` (authors' code): ``h = h + Linear(SiLU(emb))`` after the first
  conv, before the second norm.

Classifier-free guidance: where the condition is dropped (training) or absent, tau(c)
is replaced by a learned null embedding.

Spatial sizes that are not multiples of ``2 ** (L - 1)`` are zero-padded at the end of
each axis before the network and cropped after.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from sbldm import _compat  # noqa: F401  (before diffusers: keeps torchvision out)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin

from sbldm.models._common import FreshStorageMixin, UmaskWeightsMixin, count_parameters

if TYPE_CHECKING:
    from sbldm.config import Config, UNetConfig


class ResnetBlock3D(nn.Module):
    """Pre-norm 3D resnet block with an embedding (added, or as scale and shift)."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, groups: int,
                 fusion: str = "scale_shift", dropout: float = 0.0, eps: float = 1e-6):
        super().__init__()
        if fusion not in ("scale_shift", "add"):
            raise ValueError(f"cond_fusion must be 'scale_shift' or 'add', got {fusion!r}")
        self.fusion = fusion
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, out_channels * (2 if fusion == "scale_shift" else 1))
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        e = self.emb_proj(self.act(emb))[:, :, None, None, None].to(h.dtype)
        if self.fusion == "add":
            h = self.norm2(h + e)
        else:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(self.act(h)))
        return self.shortcut(x) + h


class Downsample3D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample3D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ConditionedUNet3D(FreshStorageMixin, UmaskWeightsMixin, ModelMixin, ConfigMixin):
    """3D denoising UNet (it predicts the noise, v or x0 as its scheduler's ``prediction_type``
    says) conditioned on time and a tumour feature vector."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 6,
        out_channels: int | None = None,
        block_out_channels: Sequence[int] = (64, 128, 256, 512),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        cond_dim: int = 9,
        cond_hidden_dim: int = 256,
        time_proj_dim: int = 128,
        embed_dim: int = 512,
        cond_fusion: str = "scale_shift",
        mid_layers: int = 2,
        dropout: float = 0.0,
        prior_channels: int = 0,
    ):
        super().__init__()
        ch = list(block_out_channels)
        if len(ch) < 2:
            raise ValueError("block_out_channels needs at least two widths (conv_in width, one level)")
        g = norm_num_groups
        out_channels = in_channels if out_channels is None else out_channels

        # [sin, cos] order with frequency shift 1, as the authors' SinusoidalPosEmb
        self.time_proj = Timesteps(time_proj_dim, flip_sin_to_cos=False, downscale_freq_shift=1)
        self.time_embedding = TimestepEmbedding(time_proj_dim, embed_dim)
        self.cond_embedding = nn.Sequential(nn.Linear(cond_dim, cond_hidden_dim), nn.SiLU(),
                                            nn.Linear(cond_hidden_dim, embed_dim))
        self.null_cond = nn.Parameter(torch.zeros(embed_dim))

        def block(cin, cout):
            return ResnetBlock3D(cin, cout, embed_dim, g, cond_fusion, dropout)

        # the spatial prior (sbldm.diffusion.unet_inputs.render_prior) enters beside the latent
        self.conv_in = nn.Conv3d(in_channels + prior_channels, ch[0], 3, padding=1)
        skips = [ch[0]]
        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        prev = ch[0]
        levels = range(1, len(ch))
        for i in levels:
            blocks = nn.ModuleList()
            for _ in range(layers_per_block):
                blocks.append(block(prev, ch[i]))
                prev = ch[i]
                skips.append(prev)
            self.down_blocks.append(blocks)
            if i < len(ch) - 1:
                self.downsamplers.append(Downsample3D(prev))
                skips.append(prev)
            else:
                self.downsamplers.append(nn.Identity())

        self.mid_blocks = nn.ModuleList([block(prev, prev) for _ in range(mid_layers)])

        self.up_blocks = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i in reversed(levels):
            blocks = nn.ModuleList()
            for j in range(layers_per_block + 1):
                out = ch[i - 1] if j == layers_per_block else ch[i]
                blocks.append(block(prev + skips.pop(), out))
                prev = out
            self.up_blocks.append(blocks)
            self.upsamplers.append(Upsample3D(prev) if i > 1 else nn.Identity())
        assert not skips

        self.norm_out = nn.GroupNorm(g, prev, eps=1e-6)
        self.conv_out = nn.Conv3d(prev, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.act = nn.SiLU()

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 2)

    def embedding_parameters(self) -> int:
        """Parameters of the embedding path (time MLP, tau, null embedding, per-block projections)."""
        n = count_parameters(self.time_embedding) + count_parameters(self.cond_embedding) + self.null_cond.numel()
        return n + sum(count_parameters(mod.emb_proj) for mod in self.modules() if isinstance(mod, ResnetBlock3D))

    def embed(self, timestep, cond: torch.Tensor | None, batch: int, device, dtype,
              drop_cond: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device)
        if t.ndim == 0:
            t = t[None]
        t = t.expand(batch) if t.numel() == 1 else t.reshape(batch)
        emb = self.time_embedding(self.time_proj(t).to(dtype))
        null = self.null_cond.to(dtype)[None].expand(batch, -1)
        if cond is None:
            c = null
        else:
            cond = torch.as_tensor(cond, device=device, dtype=dtype).reshape(batch, -1)
            c = self.cond_embedding(cond)
            if drop_cond is not None:
                c = torch.where(drop_cond.to(device).reshape(batch, 1), null, c)
        return emb + c

    def forward(self, sample: torch.Tensor, timestep, cond: torch.Tensor | None = None,
                drop_cond: torch.Tensor | None = None, prior: torch.Tensor | None = None):
        """Predicted noise (or velocity) for ``sample`` (B, C, X, Y, Z) at ``timestep`` under
        condition ``cond`` (B, 9) normalised; ``cond=None`` or ``drop_cond[b]=True`` uses the
        null (unconditional) embedding. With ``prior_channels``, ``prior`` (B, P, X, Y, Z)
        is the rendered tumour; it is zeroed where the condition is absent or dropped."""
        if sample.ndim != 5:
            raise ValueError(f"ConditionedUNet3D needs (B, C, X, Y, Z) input, got {tuple(sample.shape)}")
        b = sample.shape[0]
        emb = self.embed(timestep, cond, b, sample.device, sample.dtype, drop_cond)
        p = self.config.prior_channels
        if p:
            if prior is None or cond is None:
                prior = sample.new_zeros((b, p, *sample.shape[2:]))
            else:
                prior = prior.to(sample.device, sample.dtype)
                if drop_cond is not None:
                    prior = prior * (~drop_cond.to(sample.device).reshape(b, 1, 1, 1, 1)).to(sample.dtype)
            sample = torch.cat([sample, prior], dim=1)
        elif prior is not None:
            raise ValueError("this UNet was built without prior_channels; it takes no spatial prior")
        m = self.size_multiple
        size = sample.shape[2:]
        pad = [(-s) % m for s in size]
        h = F.pad(sample, [p for s in reversed(pad) for p in (0, s)]) if any(pad) else sample

        h = self.conv_in(h)
        skips = [h]
        for blocks, down in zip(self.down_blocks, self.downsamplers):
            for blk in blocks:
                h = blk(h, emb)
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        for blk in self.mid_blocks:
            h = blk(h, emb)
        for blocks, up in zip(self.up_blocks, self.upsamplers):
            for blk in blocks:
                h = blk(torch.cat([h, skips.pop()], dim=1), emb)
            h = up(h)
        h = self.conv_out(self.act(self.norm_out(h)))
        if any(pad):
            h = h[:, :, :size[0], :size[1], :size[2]]
        return h


def build_unet(unet: "UNetConfig", *, in_channels: int, prior_channels: int = 0,
               cond_dim: int = 9) -> ConditionedUNet3D:
    """The 3D UNet of a ``sbldm.config.UNetConfig`` section (SBLDM's ``cfg.unet``, the
    3D-LDM's ``cfg.ldm3d.unet``) taking ``in_channels`` latent channels plus
    ``prior_channels`` spatial-prior channels, conditioned on a ``cond_dim``-vector."""
    return ConditionedUNet3D(
        in_channels=in_channels,
        block_out_channels=tuple(unet.channels),
        layers_per_block=unet.layers_per_block,
        norm_num_groups=unet.norm_groups,
        cond_hidden_dim=unet.cond_hidden_dim,
        time_proj_dim=unet.time_proj_dim,
        embed_dim=unet.embed_dim,
        cond_fusion=unet.cond_fusion,
        mid_layers=unet.mid_layers,
        prior_channels=prior_channels,
        cond_dim=cond_dim,
    )


def latent_unet(cfg: "Config") -> ConditionedUNet3D:
    """SBLDM's latent UNet: ``cfg.unet`` over the slice VAE's latent channels, one
    spatial-prior channel when ``cfg.condition.spatial_prior``, and the 9 tumour features
    (+ the 2 sub-region shares when ``cfg.condition.subregions``)."""
    return build_unet(cfg.unet, in_channels=cfg.vae.latent_channels,
                      prior_channels=1 if cfg.condition.spatial_prior else 0,
                      cond_dim=9 + (2 if cfg.condition.subregions else 0))
