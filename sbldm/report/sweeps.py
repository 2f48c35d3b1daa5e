"""Figure 3's conditioned sweeps: one SBLDM, one seed, one feature changed at a time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sbldm.config import FEATURE_NAMES, Config
from sbldm.data.tumour import ConditionSampler


def _generate_one(gen, raw, cfg: Config, seed: int):
    import torch

    out = gen.generate(1, generator=torch.Generator().manual_seed(int(seed)),
                       conditions=[dict(zip(FEATURE_NAMES, raw))], sampler="ddim",
                       num_inference_steps=cfg.num_inference_steps, eta=0.0)
    if isinstance(out, tuple):
        return out[0][0], out[1][0], None
    return out.images[0], out.masks[0], None if getattr(out, "labels", None) is None else out.labels[0]


def _maps(maps: list) -> list | None:
    return None if any(m is None for m in maps) else maps


@dataclass
class Sweep:
    """One sweep of Figure 3: a generated volume per requested tumour (raw 9-vectors)."""
    images: list
    masks: list
    labels: list
    requested: np.ndarray          # (n, 9) raw features asked for, one row per column
    label_maps: list | None = None  # the sub-region label maps, where the generator draws them

    @property
    def centres(self) -> np.ndarray:
        return self.requested[:, 3:6]


def median_tumour(train) -> np.ndarray:
    """Raw features of the training tumour with the median volume: the sweeps' base."""
    order = np.argsort(train.features[:, 0])
    return train.features[order[len(order) // 2]]


def volume_sweep(gen, train, cfg: Config, n: int = 6, seed: int = 0):
    """The requested tumour volume swept geometrically from the smallest to the largest
    training tumour (the paper's Figure 3 sweeps the normalised volume; a request below the
    training minimum asks the model for what it never saw), the other features following
    it consistently (area, box), centre fixed, same initial noise. Returns images, masks,
    labels and the requested vectors (a ``Sweep``)."""
    base = median_tumour(train)
    vols = train.features[:, 0]
    raw_values = np.geomspace(vols.min(), vols.max(), n)
    sweep = ConditionSampler(train.features, cfg.volume_shape).sweep(base, "voxel_volume", raw_values)
    pairs = [_generate_one(gen, v, cfg, seed) for v in sweep]
    labels = [f"{v:.0f} vx ({v / vols.max():.2f} of max)" for v in sweep[:, 0]]
    return Sweep([p[0] for p in pairs], [p[1] for p in pairs], labels, np.asarray(sweep), _maps([p[2] for p in pairs]))


def position_sweep(gen, train, cfg: Config, n: int = 5, seed: int = 0):
    """The base tumour moved to the centres of ``n`` training tumours spread along x (a ``Sweep``)."""
    base = median_tumour(train)
    order = np.argsort(train.features[:, 3])
    picks = order[np.linspace(0, len(order) - 1, n).round().astype(int)]
    images, masks, labels, requested, maps = [], [], [], [], []
    for i in picks:
        raw = base.copy()
        raw[3:6] = train.features[i, 3:6]
        half = raw[6:9] / 2                       # keep the box inside the volume
        raw[3:6] = np.clip(raw[3:6], half, np.asarray(cfg.volume_shape) - 1 - half)
        im, m, lab = _generate_one(gen, raw, cfg, seed)
        images.append(im)
        masks.append(m)
        maps.append(lab)
        requested.append(raw)
        labels.append("centre ({:.0f}, {:.0f}, {:.0f})".format(*raw[3:6]))
    return Sweep(images, masks, labels, np.asarray(requested), _maps(maps))
