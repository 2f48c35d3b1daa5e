"""What tumours look like inside (notebook 09): pieces, dark cores, contrast and spread of
the tumours of a set of volumes (``tumour_appearance``)."""

from __future__ import annotations

import math

import numpy as np


def tumour_appearance(images, masks, dark_core_min: float = 0.05) -> dict:
    """What the tumours look like inside, over the volumes whose mask is not empty.

    Per volume (images in [-1, 1], background at -1; masks binary):

    - ``components``: connected pieces of the mask (6-connectivity);
    - ``dark_fraction``: share of tumour voxels darker than the median of the brain around
      it (non-background voxels outside the mask). FLAIR shows oedema bright and a
      necrotic core dark, so real tumours often carry a dark part;
    - ``contrast``: mean tumour intensity minus the mean of a 2-voxel ring outside it;
    - ``intensity_std``: std of the intensities inside the tumour.

    Returns the number of volumes (``n``) and of empty masks (``n_empty``), the mean
    number of components and the share of masks in several pieces, the median
    ``dark_fraction``, the share of tumours with a dark part (``dark_fraction >=
    dark_core_min``), and the medians of ``contrast`` and ``intensity_std``.
    """
    from scipy import ndimage

    images, masks = np.asarray(images, np.float32), np.asarray(masks).astype(bool)
    if images.shape != masks.shape:
        raise ValueError(f"images {images.shape} and masks {masks.shape} must have the same shape")
    comps, dark, contrast, spread = [], [], [], []
    empty = 0
    for im, m in zip(images, masks):
        if not m.any():
            empty += 1
            continue
        comps.append(int(ndimage.label(m)[1]))
        inside = im[m]
        brain = im[(im > -0.9) & ~m]
        dark.append(float((inside < np.median(brain)).mean()) if brain.size else math.nan)
        ring = ndimage.binary_dilation(m, iterations=2) & ~m
        contrast.append(float(inside.mean() - im[ring].mean()) if ring.any() else math.nan)
        spread.append(float(inside.std()))
    c, d = np.array(comps, float), np.array(dark, float)

    def median(v):
        v = np.asarray(v, float)
        return float(np.nanmedian(v)) if np.any(np.isfinite(v)) else math.nan

    return {"n": len(images), "n_empty": empty,
            "components_mean": float(c.mean()) if len(c) else math.nan,
            "multi_component_fraction": float((c > 1).mean()) if len(c) else math.nan,
            "dark_fraction_median": median(d),
            "dark_core_share": float((d >= dark_core_min).mean()) if len(d) else math.nan,
            "contrast_median": median(contrast), "intensity_std_median": median(spread)}
