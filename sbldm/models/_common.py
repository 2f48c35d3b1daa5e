"""Shared bits of sbldm's diffusers-style models."""

from __future__ import annotations

import torch


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
