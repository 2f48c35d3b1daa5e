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
    inner = ndimage.binary_erosion(brain, structure=_six_neighbours(), iterations=2)
    sel = nb & inner
    out["laplacian_z_normal"] = float(np.mean(np.abs(laplacian(z, spacing)[sel]))) if sel.any() else float("nan")
    grad = np.sqrt(sum(g ** 2 for g in np.gradient(z, *spacing)))
    border = _boundary(wt) & ~ndimage.binary_dilation(~brain, structure=_six_neighbours())
    out["edge_gradient_z"] = float(np.mean(grad[border])) if border.any() else float("nan")
    return {k: out[k] for k in MEASURES}


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


def summarise(rows: Sequence[Mapping], measures: Sequence[str] = MEASURES,
              reference: Mapping[str, float] | None = None) -> list[dict]:
    """One row per measure: median, min and max over ``rows`` (NaN left out), the number
    of cases it was defined for, and the ``reference`` value if given (e.g. a real case)."""
    out = []
    for m in measures:
        v = np.array([r[m] for r in rows], dtype=np.float64)
        v = v[np.isfinite(v)]
        row = {"measure": m, "median": float(np.median(v)) if v.size else float("nan"),
               "min": float(v.min()) if v.size else float("nan"), "max": float(v.max()) if v.size else float("nan"),
               "n": int(v.size)}
        if reference is not None:
            row["real case"] = reference.get(m, float("nan"))
        out.append(row)
    if rows and "core_touching_normal" in measures:
        v = np.array([r["core_touching_normal"] for r in rows], dtype=np.float64)
        v = v[np.isfinite(v)]
        out.append({"measure": "cases_with_core_touching_normal", "median": float(np.mean(v > 0)) if v.size else float("nan"),
                    "min": float("nan"), "max": float("nan"), "n": int(v.size)})
    return out


#: the one real BraTS 2021 case the phantom was checked against (FLAIR, 1 mm), as reported
#: when the phantom's version 3 was designed (measures defined as here); not shipped data
REAL_CASE = {
    "volume_ml": 56.0, "share_necrosis": 0.00, "share_oedema": 0.86, "share_enhancing": 0.14,
    "median_z_necrosis": 1.5, "median_z_oedema": 1.3, "median_z_enhancing": 1.6, "sphericity": 0.63,
    "oedema_thickness_ratio": 8.3, "core_touching_normal": 0.08, "std_z_tumour": 0.77,
    "laplacian_z_normal": 0.59, "edge_gradient_z": 0.56,
}


def read_case(path_image: str | os.PathLike, path_seg: str | os.PathLike):
    """(image, label map in sbldm's convention, spacing) of one case's NIfTI files."""
    from sbldm.data.cohort import brats_labels, read_nifti

    image, affine = read_nifti(path_image)
    seg, _ = read_nifti(path_seg)
    return image, brats_labels(seg, path_seg), spacing_of(affine)
