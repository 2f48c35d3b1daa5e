"""What tumours look like inside (notebook 09): pieces, dark cores, contrast and spread of
the tumours of a set of volumes (``tumour_appearance``, ``subregion_appearance``); and how
sharp the normal brain around them is (``sharpness``: the slice VAE's sharpening term and
the generators' budget curves)."""

from __future__ import annotations

import math

import numpy as np

from sbldm.data.cohort import brain_mask


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
        brain = im[brain_mask(im) & ~m]
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


def subregion_appearance(images, labels) -> list[dict]:
    """Per volume whose label map holds a tumour: the share of each sub-region (necrosis,
    oedema, enhancing) in the whole tumour, whether it has a core (TC = necrosis or
    enhancing), and each present sub-region's median intensity in z units: (x - median)
    / IQR of the normal-appearing brain (``sbldm.data.phantom_stats.z_image``: the brain
    outside the tumour dilated by 3 voxels; the brain is ``brain_mask`` of the image in
    [-1, 1], shifted up by 1, everything else set to 0: a decoded background a hair above
    -1 is not brain). ``std_z_tumour`` is the spread of z over the whole tumour (its
    texture: a flat, even lesion scores low). A sub-region a volume lacks gets NaN, and so
    does every z measure of a volume with too little normal brain left to standardise against."""
    from sbldm.data.phantom_stats import z_image
    from sbldm.data.tumour import LABEL_NAMES, check_labels, region_mask

    images = np.asarray(images, np.float32)
    labels = check_labels(labels)
    if images.shape != labels.shape:
        raise ValueError(f"images {images.shape} and label maps {labels.shape} must have the same shape")
    rows = []
    for im, lab in zip(images, labels):
        wt = lab > 0
        if not wt.any():
            continue
        try:
            z, _ = z_image(np.where(brain_mask(im), im + 1.0, 0.0), lab)
        except ValueError:                  # the tumour and its margin cover the brain: no reference
            z = None
        row = {"has_core": bool(region_mask(lab, "TC").any()),
               "std_z_tumour": float(np.std(z[wt])) if z is not None else math.nan}
        for value, name in LABEL_NAMES.items():
            region = lab == value
            row[f"share_{name}"] = float(region.sum() / wt.sum())
            row[f"median_z_{name}"] = float(np.median(z[region])) if region.any() and z is not None else math.nan
        rows.append(row)
    return rows


def subregion_summary(rows: list[dict], reference: list[dict] | None = None) -> dict:
    """One set's ``subregion_appearance`` rows summarised: the share of tumours with a core,
    per sub-region the share of tumours that have it, the median of its volume share and of
    its median z; against ``reference`` rows (the real training tumours) also the
    Wasserstein distance between the two sets' per-tumour median z, divided by the
    reference's standard deviation (``w_over_spread_<name>``; 0 = the same distribution)."""
    from scipy.stats import wasserstein_distance

    from sbldm.data.tumour import LABEL_NAMES

    out = {"n": len(rows), "core_share": float(np.mean([r["has_core"] for r in rows])) if rows else math.nan}
    for name in LABEL_NAMES.values():
        z = np.array([r[f"median_z_{name}"] for r in rows], float)
        present = np.isfinite(z)
        out[f"present_{name}"] = float(present.mean()) if len(z) else math.nan
        out[f"share_{name}"] = float(np.median([r[f"share_{name}"] for r in rows])) if rows else math.nan
        out[f"median_z_{name}"] = float(np.median(z[present])) if present.any() else math.nan
        if reference is not None:
            ref = np.array([r[f"median_z_{name}"] for r in reference], float)
            ref = ref[np.isfinite(ref)]
            spread = float(ref.std()) if len(ref) > 1 else math.nan
            out[f"w_over_spread_{name}"] = (float(wasserstein_distance(z[present], ref)) / spread
                                            if present.any() and len(ref) and spread > 0 else math.nan)
    return out


def normal_brain(images, labels, margin: int = 2) -> np.ndarray:
    """Brain voxels (``sbldm.data.cohort.brain_mask``) at least ``margin`` voxels in-plane
    from the background and from the whole tumour: where sharpness means anatomy."""
    from scipy import ndimage

    from sbldm.data.cohort import brain_mask

    brain = brain_mask(images)
    tumour = np.asarray(labels) > 0
    plane = np.zeros((1, 3, 3, 1), bool)
    plane[0, :, :, 0] = True
    inner = ndimage.binary_erosion(brain, structure=plane, iterations=margin)
    near = ndimage.binary_dilation(tumour, structure=plane, iterations=margin)
    return inner & ~near


def sharpness(images, labels) -> dict:
    """``{"laplacian": ..., "high_frequency": ...}`` of volumes (N, x, y, z) in [-1, 1]."""
    from sbldm.data.cohort import brain_mask
    from sbldm.metrics import high_frequency_share, laplacian_energy

    return {"laplacian": laplacian_energy(images, normal_brain(images, labels)),
            "high_frequency": high_frequency_share(images, brain_mask(images))}


def sequence_appearance(sequences, labels, modalities) -> dict[str, list[dict]]:
    """``subregion_appearance`` of every sequence of (N, S, x, y, z) volumes (``modalities``
    order, BraTS 2023 names): ``{sequence name: rows}``, each sub-region's median intensity
    in z units against that sequence's normal-appearing brain."""
    from sbldm.data.cohort import sequence_names

    seqs = np.asarray(sequences, np.float32)
    names = sequence_names(modalities)
    if seqs.ndim != 5 or seqs.shape[1] != len(names):
        raise ValueError(f"sequences must be (N, {len(names)}, x, y, z) for {names}, got {seqs.shape}")
    return {name: subregion_appearance(seqs[:, k], labels) for k, name in enumerate(names)}


def within_real_spread(generated: list[dict], real: list[dict], key: str = "median_z_enhancing") -> dict:
    """Is the generated tumours' median of ``key`` (per-tumour values of
    ``subregion_appearance`` rows) inside the interquartile range of the real tumours'?
    ``{generated, real_q25, real_median, real_q75, inside}``; NaN and False when either set
    has no finite value."""
    g = np.array([r[key] for r in generated], float)
    q = np.array([r[key] for r in real], float)
    g, q = g[np.isfinite(g)], q[np.isfinite(q)]
    if not len(g) or not len(q):
        return {"generated": math.nan, "real_q25": math.nan, "real_median": math.nan, "real_q75": math.nan,
                "inside": False}
    med = float(np.median(g))
    lo, mid, hi = (float(v) for v in np.percentile(q, [25, 50, 75]))
    return {"generated": med, "real_q25": lo, "real_median": mid, "real_q75": hi, "inside": bool(lo <= med <= hi)}
