"""Shared bits of sbldm's diffusers-style models: how they are loaded
(``FreshStorageMixin``), how their weights are saved (``UmaskWeightsMixin``) and how
their parameters are counted (``count_parameters``, the one counter of the package)."""

from __future__ import annotations

import os
from typing import Callable

import torch

from sbldm.io import follow_umask

#: file endings of the weights diffusers' ``save_pretrained`` writes (one file or shards)
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def count_parameters(module: torch.nn.Module | None, where: Callable[[str], bool] | None = None) -> int:
    """Number of parameters of ``module`` (0 for None), or of those whose name satisfies
    ``where``; works on the meta device (no weights needed)."""
    if module is None:
        return 0
    if where is None:
        return sum(p.numel() for p in module.parameters())
    return sum(p.numel() for name, p in module.named_parameters() if where(name))


class FreshStorageMixin:
    """``from_pretrained`` that moves every loaded tensor into freshly allocated storage.

    diffusers/safetensors may load weights as views into one buffer at offsets that are
    not SIMD-aligned; CPU BLAS kernels then take another code path and results differ
    from the saved model in the last bits. Reallocating makes a reloaded model give
    bit-identical outputs (resumed runs and reloaded pipelines reproduce exactly).
    """

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        with torch.no_grad():
            for p in model.parameters():
                p.data = p.data.clone()
            for mod in model.modules():
                for name, b in list(mod._buffers.items()):
                    if b is not None:
                        mod._buffers[name] = b.clone()
        return model


class UmaskWeightsMixin:
    """``save_pretrained`` whose weight files get the mode the user's umask gives every
    other file sbldm writes. safetensors writes them through a private temporary file,
    which would leave them readable by their owner only (0600) whatever the umask. Every
    sbldm model with weights derives from it, so a saved pipeline's weights follow too."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        out = super().save_pretrained(save_directory, *args, **kwargs)
        for entry in os.scandir(save_directory):
            if entry.is_file() and entry.name.endswith(WEIGHT_SUFFIXES):
                follow_umask(entry.path)
        return out
