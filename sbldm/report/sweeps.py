"""Figure 3's conditioned sweeps: one SBLDM, one seed, one feature changed at a time."""

from __future__ import annotations

import numpy as np

from sbldm.config import FEATURE_NAMES, Config
from sbldm.data.tumor import ConditionSampler


def _generate_one(gen, raw, cfg: Config, seed: int):
    import torch

    out = gen.generate(1, generator=torch.Generator().manual_seed(int(seed)),
                       conditions=[dict(zip(FEATURE_NAMES, raw))], sampler="ddim",
                       num_inference_steps=cfg.num_inference_steps, eta=0.0)
    images, masks = (out[0], out[1]) if isinstance(out, tuple) else (out.images, out.masks)
    return images[0], masks[0]


def median_tumour(train) -> np.ndarray:
    """Raw features of the training tumour with the median volume: the sweeps' base."""
    order = np.argsort(train.features[:, 0])
    return train.features[order[len(order) // 2]]


def volume_sweep(gen, train, cfg: Config, values, seed: int = 0):
    """Normalised tumour volume swept over ``values`` (0..1 of the training maximum), the
    other features following it consistently (area, box), centre fixed, same noise."""
    base = median_tumour(train)
    raw_values = np.asarray(values, float) * train.normalizer.max_volume
    sweep = ConditionSampler(train.features, cfg.volume_shape).sweep(base, "voxel_volume", raw_values)
    pairs = [_generate_one(gen, v, cfg, seed) for v in sweep]
    return [p[0] for p in pairs], [p[1] for p in pairs], [f"volume {v:.2f}" for v in values]


def position_sweep(gen, train, cfg: Config, n: int = 5, seed: int = 0):
    """The base tumour moved to the centres of ``n`` training tumours spread along x."""
    base = median_tumour(train)
    order = np.argsort(train.features[:, 3])
    picks = order[np.linspace(0, len(order) - 1, n).round().astype(int)]
    images, masks, labels = [], [], []
    for i in picks:
        raw = base.copy()
        raw[3:6] = train.features[i, 3:6]
        im, m = _generate_one(gen, raw, cfg, seed)
        images.append(im)
        masks.append(m)
        labels.append("centre ({:.0f}, {:.0f}, {:.0f})".format(*raw[3:6]))
    return images, masks, labels
