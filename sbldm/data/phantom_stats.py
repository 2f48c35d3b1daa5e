"""How a glioma case looks, in numbers: shape, sub-region shares and intensities, texture
and edges of one (image, segmentation) pair — the measures that compare the phantom
cohort (``sbldm.data.phantom``) with real BraTS cases.

Intensities are z values relative to the normal-appearing brain: ``z = (x - median) /
IQR`` over the brain voxels (image > 0: BraTS volumes are skull-stripped) outside the
whole tumour dilated by ``margin_mm`` (3 mm by default). Derivatives are in physical
units (z per mm, z per mm^2), so that at 1 mm they equal the per-voxel differences.

Labels: 1 necrosis (BraTS 2023 NCR, 2021 NCR/NET), 2 oedema, 3 (2023) or 4 (2021)
enhancing tumour; the core is necrosis + enhancing, the whole tumour every label > 0.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from sbldm.data.tumour import tumour_features

#: the label values of each sub-region in the maps these statistics read: sbldm's labels,
#: and a raw BraTS 2021 map's enhancing tumour 4 with them (the BraTS regions WT, TC, ET
#: built from these are ``sbldm.data.tumour.REGIONS``)
SUBREGION_LABELS = {"necrosis": (1,), "oedema": (2,), "enhancing": (3, 4)}
#: every measure ``phantom_statistics`` returns, in table order
MEASURES = (
    "volume_ml", "share_necrosis", "share_oedema", "share_enhancing",
    "median_z_necrosis", "median_z_oedema", "median_z_enhancing", "sphericity",
    "oedema_thickness_ratio", "core_touching_normal", "std_z_tumour", "laplacian_z_normal",
    "edge_gradient_z",
)


def _ball(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    half = [int(np.floor(radius_mm / s)) for s in spacing]
    g = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij", sparse=True)
    return sum(a ** 2 for a in g) <= radius_mm ** 2 + 1e-9


def _six_neighbours():
    from scipy import ndimage

    return ndimage.generate_binary_structure(3, 1)


def normal_brain(image: np.ndarray, seg: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 margin_mm: float = 3.0) -> np.ndarray:
    """Normal-appearing brain: voxels with ``image > 0`` outside the whole tumour dilated
    by a ball of ``margin_mm`` (at least one voxel)."""
    from scipy import ndimage

    wt = np.asarray(seg) > 0
    ball = _ball(max(margin_mm, float(max(spacing))), spacing)
    near = ndimage.binary_dilation(wt, structure=ball) if wt.any() else wt
    return (np.asarray(image) > 0) & ~near


def z_image(image: np.ndarray, seg: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
            margin_mm: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(z image, normal-brain mask): ``(image - median) / IQR`` of the normal-appearing brain."""
    nb = normal_brain(image, seg, spacing, margin_mm)
    ref = np.asarray(image, np.float64)[nb]
    if ref.size < 10:
        raise ValueError("too few normal-appearing brain voxels to standardise intensities")
    q1, med, q3 = np.percentile(ref, [25, 50, 75])
    iqr = q3 - q1 if q3 > q1 else 1.0
    return ((np.asarray(image, np.float32) - np.float32(med)) / np.float32(iqr)), nb


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one 6-neighbour outside it."""
    from sbldm.data.tumour import boundary

    return boundary(mask, 1)


def oedema_thickness_ratio(seg: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """p90 / p10 of the oedema's thickness around the core.

    Thickness is sampled on the whole tumour's boundary (tumour voxels with a 6-neighbour
    outside it) where that boundary is oedema: the distance (mm) from each such voxel to
    the nearest core voxel. Boundary voxels that are core themselves (the core touching
    normal brain) are left out; ``core_touching_normal`` measures them. NaN without core
    or without an oedema boundary. 1 for a concentric shell, large for uneven oedema.
    """
    from scipy import ndimage

    seg = np.asarray(seg)
    wt, core = seg > 0, np.isin(seg, SUBREGION_LABELS["necrosis"] + SUBREGION_LABELS["enhancing"])
    if not core.any():
        return float("nan")
    shell = _boundary(wt) & ~core
    if not shell.any():
        return float("nan")
    d = ndimage.distance_transform_edt(~core, sampling=spacing)[shell]
    p10, p90 = np.percentile(d, [10, 90])
    return float(p90 / p10) if p10 > 0 else float("nan")


def core_touching_normal(seg: np.ndarray, brain: np.ndarray) -> float:
    """Share of the core's surface that touches normal brain.

    The core's surface is counted in voxel faces: faces between a core voxel and a 6-
    neighbour outside the core. The share is the number of those faces whose neighbour is
    brain (``brain``) outside the whole tumour, over all of them. 0 when oedema covers
    the core, NaN without core.
    """
    seg = np.asarray(seg)
    wt, core = seg > 0, np.isin(seg, SUBREGION_LABELS["necrosis"] + SUBREGION_LABELS["enhancing"])
    if not core.any():
        return float("nan")
    normal = np.asarray(brain, bool) & ~wt
    faces = touching = 0
    for axis in range(3):
        c = np.pad(core, [(1, 1) if a == axis else (0, 0) for a in range(3)])
        n = np.pad(normal, [(1, 1) if a == axis else (0, 0) for a in range(3)])
        for shift in (1, -1):
            nb_core, nb_normal = np.roll(c, shift, axis=axis), np.roll(n, shift, axis=axis)
            face = c & ~nb_core
            faces += int(face.sum())
            touching += int((face & nb_normal).sum())
    return touching / faces if faces else float("nan")


def laplacian(z: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Discrete Laplacian in physical units: the sum over axes of second differences over spacing^2."""
    z = np.asarray(z, np.float32)
    out = np.zeros_like(z)
    for axis, s in enumerate(spacing):
        zp = np.pad(z, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")
        sl = [slice(None)] * 3
        lo, mid, hi = list(sl), list(sl), list(sl)
        lo[axis], mid[axis], hi[axis] = slice(0, -2), slice(1, -1), slice(2, None)
        out += (zp[tuple(lo)] - 2 * zp[tuple(mid)] + zp[tuple(hi)]) / np.float32(s * s)
    return out


def phantom_statistics(image: np.ndarray, seg: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                       margin_mm: float = 3.0) -> dict[str, float]:
    """The measures of ``MEASURES`` for one case (image: FLAIR, or any sequence).

    - ``volume_ml``: whole-tumour volume (labels > 0);
    - ``share_<region>``: voxels of necrosis (1), oedema (2), enhancing (3 or 4) over the
      whole tumour;
    - ``median_z_<region>``: median z of the region (NaN if empty), z relative to the
      normal-appearing brain (module docstring);
    - ``sphericity``: of the whole tumour, pyradiomics' definition via
      ``sbldm.data.tumour.tumour_features`` (marching-cubes mesh on the given grid);
    - ``oedema_thickness_ratio``: ``oedema_thickness_ratio``;
    - ``core_touching_normal``: ``core_touching_normal`` with the brain = image > 0;
    - ``std_z_tumour``: std of z over the whole tumour;
    - ``laplacian_z_normal``: mean |Laplacian of z| (z/mm^2) over the normal-appearing brain
      at least two voxels inside the brain (the skull-stripping edge left out);
    - ``edge_gradient_z``: mean gradient magnitude of z (z/mm, central differences) over the
      whole tumour's boundary voxels whose 6-neighbours outside the tumour are all brain.
    """
    from scipy import ndimage

    image, seg = np.asarray(image), np.asarray(seg)
    if image.shape != seg.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and segmentation {seg.shape} must be 3D of one shape")
    spacing = tuple(float(s) for s in spacing)
    wt = seg > 0
    if not wt.any():
        raise ValueError("the segmentation holds no tumour")
    z, nb = z_image(image, seg, spacing, margin_mm)
    brain = image > 0
    out: dict[str, float] = {"volume_ml": float(wt.sum()) * float(np.prod(spacing)) / 1000.0}
    n_wt = float(wt.sum())
    for name, labels in SUBREGION_LABELS.items():
        region = np.isin(seg, labels)
        out[f"share_{name}"] = float(region.sum()) / n_wt
        out[f"median_z_{name}"] = float(np.median(z[region])) if region.any() else float("nan")
    out["sphericity"] = tumour_features(wt, spacing)["sphericity"]
    out["oedema_thickness_ratio"] = oedema_thickness_ratio(seg, spacing)
    out["core_touching_normal"] = core_touching_normal(seg, brain)
    out["std_z_tumour"] = float(np.std(z[wt]))
    out["laplacian_z_normal"] = _laplacian_normal(z, nb, brain, spacing)
    grad = np.sqrt(sum(g ** 2 for g in np.gradient(z, *spacing)))
    border = _boundary(wt) & ~ndimage.binary_dilation(~brain, structure=_six_neighbours())
    out["edge_gradient_z"] = float(np.mean(grad[border])) if border.any() else float("nan")
    return {k: out[k] for k in MEASURES}


def _laplacian_normal(z: np.ndarray, normal: np.ndarray, brain: np.ndarray, spacing: Sequence[float]) -> float:
    """Mean |Laplacian of z| (z/mm^2) over the normal-appearing brain at least two voxels
    inside the brain (the skull-stripping edge left out)."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(brain, structure=_six_neighbours(), iterations=2)
    sel = normal & inner
    return float(np.mean(np.abs(laplacian(z, spacing)[sel]))) if sel.any() else float("nan")


#: the measures of ``sequence_statistics``, per case, over the four sequences
SEQUENCE_MEASURES = (
    "median_z_necrosis_t2f", "median_z_necrosis_t1c", "enhancing_minus_oedema_z_t1c", "std_z_enhancing_t1c",
    "median_z_tumour_t1n", "laplacian_z_normal_t1c", "laplacian_z_normal_t2w",
)
#: the measures of ``placement_statistics``: where the tumour sits and in how many pieces
PLACEMENT_MEASURES = ("core_sphericity", "n_components", "depth_mm", "cortex_share_5mm")


def brain_depth(brain: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Distance (mm) of every brain voxel to the brain's surface (the nearest voxel outside it)."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(np.pad(np.asarray(brain, bool), 1), sampling=spacing)[1:-1, 1:-1, 1:-1]


def placement_statistics(brain: np.ndarray, seg: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                         cortex_mm: float = 5.0) -> dict[str, float]:
    """Where the tumour sits and its shape beyond the whole tumour's.

    - ``core_sphericity``: sphericity of the core (necrosis + enhancing), as ``sphericity``;
    - ``n_components``: 26-connected components of the whole tumour (satellites count);
    - ``depth_mm``: the distance from the whole tumour's centroid to the brain's surface
      (``brain_depth`` at the nearest brain voxel);
    - ``cortex_share_5mm``: the share of the whole tumour within ``cortex_mm`` of the
      brain's surface (the cortex lies there).
    """
    from scipy import ndimage

    seg = np.asarray(seg)
    wt = seg > 0
    if not wt.any():
        raise ValueError("the segmentation holds no tumour")
    core = np.isin(seg, SUBREGION_LABELS["necrosis"] + SUBREGION_LABELS["enhancing"])
    depth = brain_depth(np.asarray(brain, bool) | wt, spacing)
    centre = np.round(np.argwhere(wt).mean(axis=0)).astype(int)
    inside = np.argwhere(depth > 0)
    nearest = inside[np.argmin(((inside - centre) ** 2).sum(axis=1))] if depth[tuple(centre)] == 0 else centre
    _, n = ndimage.label(wt, structure=np.ones((3, 3, 3), bool))
    return {"core_sphericity": tumour_features(core, spacing)["sphericity"] if core.any() else float("nan"),
            "n_components": float(n), "depth_mm": float(depth[tuple(nearest)]),
            "cortex_share_5mm": float(np.mean(depth[wt] <= cortex_mm))}


def sequence_statistics(images: Mapping[str, np.ndarray], seg: np.ndarray,
                        spacing: Sequence[float] = (1.0, 1.0, 1.0), margin_mm: float = 3.0) -> dict[str, float]:
    """The measures of ``SEQUENCE_MEASURES`` from a case's sequences (keys ``t1n``, ``t1c``,
    ``t2w``, ``t2f``; a missing sequence gives NaN for its measures), z per sequence as in
    ``z_image``:

    - ``median_z_necrosis_t2f``, ``median_z_necrosis_t1c``: necrosis on FLAIR and on T1ce;
    - ``enhancing_minus_oedema_z_t1c``: median z of the enhancing tumour minus that of the
      oedema, on T1ce (how much the enhancing tumour enhances);
    - ``std_z_enhancing_t1c``: std of z inside the enhancing tumour on T1ce (its texture);
    - ``median_z_tumour_t1n``: median z of the whole tumour on T1;
    - ``laplacian_z_normal_<seq>``: ``laplacian_z_normal`` of T1ce and T2.
    """
    seg = np.asarray(seg)
    region = {name: np.isin(seg, labels) for name, labels in SUBREGION_LABELS.items()}
    out = {m: float("nan") for m in SEQUENCE_MEASURES}

    def med(z, mask):
        return float(np.median(z[mask])) if mask.any() else float("nan")

    z = {name: z_image(img, seg, spacing, margin_mm) for name, img in images.items()}
    if "t2f" in z:
        out["median_z_necrosis_t2f"] = med(z["t2f"][0], region["necrosis"])
    if "t1c" in z:
        zc = z["t1c"][0]
        out["median_z_necrosis_t1c"] = med(zc, region["necrosis"])
        out["enhancing_minus_oedema_z_t1c"] = med(zc, region["enhancing"]) - med(zc, region["oedema"])
        out["std_z_enhancing_t1c"] = float(np.std(zc[region["enhancing"]])) if region["enhancing"].any() else float("nan")
    if "t1n" in z:
        out["median_z_tumour_t1n"] = med(z["t1n"][0], seg > 0)
    for name in ("t1c", "t2w"):
        if name in images:
            out[f"laplacian_z_normal_{name}"] = _laplacian_normal(z[name][0], z[name][1], np.asarray(images[name]) > 0,
                                                                  spacing)
    return out


def region_z_values(image: np.ndarray, seg: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                    margin_mm: float = 3.0) -> dict[str, np.ndarray]:
    """z values of each region and of the normal-appearing brain (``normal``), for histograms."""
    z, nb = z_image(image, seg, spacing, margin_mm)
    seg = np.asarray(seg)
    values = {name: z[np.isin(seg, labels)] for name, labels in SUBREGION_LABELS.items()}
    values["normal"] = z[nb]
    return values


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) from an affine's column norms."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


#: shares of cases (the ``median`` column of ``summarise``): the measure and the condition a case meets
CASE_SHARES = {"cases_with_core_touching_normal": ("core_touching_normal", lambda v: v > 0),
               "cases_reaching_cortex": ("cortex_share_5mm", lambda v: v > 0),
               "cases_with_satellites": ("n_components", lambda v: v > 1)}


def summarise(rows: Sequence[Mapping], measures: Sequence[str] = MEASURES,
              reference: Mapping[str, float] | None = None,
              targets: Mapping[str, tuple[float, float]] | None = None) -> list[dict]:
    """One row per measure: median, min and max over ``rows`` (NaN left out), the number
    of cases it was defined for, and the ``reference`` value if given (e.g. real cases);
    then the shares of cases of ``CASE_SHARES`` whose measure is among ``measures`` (in the
    median column). With ``targets`` ({measure: (low, high)}), a row with a target states
    it and whether the median lies within it (``meets``)."""
    out = []

    def finite(m):
        v = np.array([r[m] for r in rows], dtype=np.float64)
        return v[np.isfinite(v)]

    for m in measures:
        v = finite(m)
        out.append({"measure": m, "median": float(np.median(v)) if v.size else float("nan"),
                    "min": float(v.min()) if v.size else float("nan"),
                    "max": float(v.max()) if v.size else float("nan"), "n": int(v.size)})
    for name, (m, condition) in CASE_SHARES.items():
        if rows and m in measures:
            v = finite(m)
            out.append({"measure": name, "median": float(np.mean(condition(v))) if v.size else float("nan"),
                        "min": float("nan"), "max": float("nan"), "n": int(v.size)})
    for row in out:
        if reference is not None:
            row["real case"] = reference.get(row["measure"], float("nan"))
        if targets is not None:
            lo, hi = targets.get(row["measure"], (None, None))
            row["target"] = _target_words(lo, hi)
            row["meets"] = "" if lo is None and hi is None else (
                "yes" if (lo is None or row["median"] >= lo) and (hi is None or row["median"] <= hi) else "no")
    return out


def _target_words(lo, hi) -> str:
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f">= {lo:g}"
    if lo is None:
        return f"<= {hi:g}"
    return f"{lo:g} to {hi:g}"


#: the one real BraTS 2021 case the phantom was checked against (FLAIR, 1 mm), as reported
#: when the phantom's version 3 was designed (measures defined as here); not shipped data
REAL_CASE = {
    "volume_ml": 56.0, "share_necrosis": 0.00, "share_oedema": 0.86, "share_enhancing": 0.14,
    "median_z_necrosis": 1.5, "median_z_oedema": 1.3, "median_z_enhancing": 1.6, "sphericity": 0.63,
    "oedema_thickness_ratio": 8.3, "core_touching_normal": 0.08, "std_z_tumour": 0.77,
    "laplacian_z_normal": 0.59, "edge_gradient_z": 0.56,
}


#: medians of a panel of real BraTS glioma cases (BraTS 2013-2023 releases, expert labels;
#: nine cases with images, three with all four sequences), measured with the definitions
#: of this module at 1 mm when phantom version 4 was designed; not shipped data. The
#: grid-dependent ones (Laplacian, sphericity) compare only at 1 mm.
REAL_PANEL = {
    "median_z_necrosis": 2.2, "median_z_necrosis_t2f": 2.2, "median_z_necrosis_t1c": -0.6,
    "enhancing_minus_oedema_z_t1c": 1.5, "std_z_enhancing_t1c": 0.87,
    "laplacian_z_normal_t1c": 0.71, "laplacian_z_normal_t2w": 1.55, "core_sphericity": 0.62,
    "depth_mm": 26.0, "cortex_share_5mm": 0.06, "cases_reaching_cortex": 1.0, "cases_with_satellites": 0.7,
}
#: what phantom version 4 is calibrated to show (medians over the cohort, shares for the
#: ``cases_*`` rows): (low, high), None for an open end
PHANTOM_TARGETS = {
    "median_z_necrosis_t2f": (1.0, None), "enhancing_minus_oedema_z_t1c": (1.0, 2.0),
    "core_sphericity": (None, 0.70), "cases_reaching_cortex": (0.5, None), "cases_with_satellites": (0.25, None),
}


def case_statistics(images: Mapping[str, np.ndarray], seg: np.ndarray,
                    spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, float]:
    """Every measure of one case: ``phantom_statistics`` of its FLAIR (``t2f``, or the first
    sequence given), ``sequence_statistics`` and ``placement_statistics`` (the brain: the
    voxels any sequence marks)."""
    first = images["t2f"] if "t2f" in images else next(iter(images.values()))
    brain = np.zeros(np.shape(first), bool)
    for image in images.values():
        brain |= np.asarray(image) > 0
    return {**phantom_statistics(first, seg, spacing), **sequence_statistics(images, seg, spacing),
            **placement_statistics(brain, seg, spacing)}


def read_case(path_image: str | os.PathLike, path_seg: str | os.PathLike):
    """(image, label map in sbldm's convention, spacing) of one case's NIfTI files."""
    from sbldm.data.cohort import brats_labels, read_nifti

    image, affine = read_nifti(path_image)
    seg, _ = read_nifti(path_seg)
    return image, brats_labels(seg, path_seg), spacing_of(affine)
