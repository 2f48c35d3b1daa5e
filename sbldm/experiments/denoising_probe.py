"""The denoising probe of notebook 09: real volumes noised to a share of the schedule and
denoised by a trained SBLDM pipeline with their own tumour features, to find where the
inside of a tumour is lost (``denoising_probe``)."""

from __future__ import annotations

import numpy as np

from sbldm.config import FEATURE_NAMES
from sbldm.evaluation.appearance import tumour_appearance


def denoising_probe(pipe, images, labels, features, strengths=(0.1, 0.3, 0.5, 0.7, 1.0), steps: int = 50,
                    seed: int = 0, bf16: bool = False) -> list[dict]:
    """Where the pipeline loses what real tumours look like: real volumes are encoded,
    noised to each ``strength`` of the way into a DDIM-``steps`` schedule
    (``SBLDMPipeline(start_latents=..., strength=...)``), denoised with their own tumour
    features as the condition, decoded, and described by ``tumour_appearance``. One row
    per strength (plus ``0``: the volumes through the VAE alone); what survives a low
    strength but not a high one is what the model cannot draw from noise."""
    import torch

    from sbldm.runtime import cpu_bf16

    start = pipe.encode(images, labels)
    rows = []
    for strength in (0.0, *strengths):
        if strength == 0.0:
            im, m = pipe.volumes(pipe.decode_latents(start))[:2]
        else:
            g = torch.Generator().manual_seed(int(seed))
            with cpu_bf16(bf16):
                out = pipe([dict(zip(FEATURE_NAMES, map(float, f))) for f in np.asarray(features)],
                           num_volumes=len(start), num_inference_steps=steps, generator=g,
                           start_latents=start, strength=float(strength))
            im, m = out.images, out.masks
        rows.append({"strength": float(strength), "denoising_steps": max(1, round(strength * steps)) if strength else 0,
                     **tumour_appearance(im, m)})
    return rows
