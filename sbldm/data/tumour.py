"""Tumour features: the 9-vector c that conditions SBLDM (paper §2.3).

Order: ``voxel_volume, surface_area, sphericity, x, y, z, w, h, d``. Definitions follow
pyradiomics' shape features (which the authors used) and their code:

- ``voxel_volume``: number of tumour voxels times the voxel volume (pyradiomics
  ``VoxelVolume``);
- ``surface_area``: area of the marching-cubes mesh of the mask at level 0.5, the mask
  zero-padded by one voxel (pyradiomics ``SurfaceArea``);
- ``sphericity``: ``pi^(1/3) (6 V)^(2/3) / A`` with ``V`` the volume enclosed by that
  mesh (pyradiomics ``MeshVolume``) — 1 for a ball, lower for anything else;
- ``x, y, z``: centre of mass in voxel coordinates (``scipy.ndimage.center_of_mass``);
- ``w, h, d``: extents in voxels of the bounding box of all tumour voxels.

Sub-regions (beyond the paper, which uses the whole tumour only): sbldm keeps BraTS label
maps in one convention, 0 background, 1 necrosis (necrotic / non-enhancing core), 2
oedema, 3 enhancing tumour (BraTS 2021 writes enhancing as 4, BraTS 2023 as 3; the loader
maps 4 to 3), and derives the BraTS evaluation regions where they are used: whole tumour
WT = {1, 2, 3}, tumour core TC = {1, 3}, enhancing tumour ET = {3} (``REGIONS``). The
regions are nested (ET inside TC inside WT), which is how the models carry them: one
channel per region, decoded back to a label map by ``labels_from_regions``.

An empty mask has no tumour features: ``tumour_features`` raises ``EmptyMaskError``
by default, or returns NaN for every feature with ``empty="nan"`` (what the evaluation
of synthetic masks, which may come out empty, uses).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from sbldm.config import FEATURE_NAMES
# the labels and BraTS regions, defined in sbldm.labels, are part of this module's interface
from sbldm.labels import ENHANCING, LABEL_NAMES, NECROSIS, OEDEMA, REGIONS, VALID_LABELS  # noqa: F401


def check_labels(labels, name: str = "labels") -> np.ndarray:
    """``labels`` as an array, after checking it holds only ``VALID_LABELS``; raises
    ``ValueError`` naming ``name`` and the unexpected values (a BraTS 2021 map with
    enhancing tumour as 4 must be mapped to 3 first), a boolean mask or a non-numeric map."""
    arr = np.asarray(labels)
    if arr.dtype == bool:
        raise ValueError(f"{name}: expected an integer label map, got a boolean mask")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name}: expected a numeric label map, got dtype {arr.dtype}")
    ok = np.isin(arr, VALID_LABELS)
    if not ok.all():
        bad = np.unique(arr[~ok]).tolist()
        shown = [int(v) if math.isfinite(v) and v == round(v) else v for v in bad[:8]]
        raise ValueError(
            f"{name}: unexpected label value(s) {shown}; expected sbldm labels {list(VALID_LABELS)} "
            "(0 background, 1 necrosis, 2 oedema, 3 enhancing). BraTS 2021 maps write enhancing tumour as 4: "
            "map 4 to 3 when loading (sbldm.data.cohort.brats_labels)")
    return arr


def region_mask(labels, region: str) -> np.ndarray:
    """Boolean mask of a BraTS region (``"WT"``, ``"TC"`` or ``"ET"``) of a label map."""
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; expected one of {sorted(REGIONS)}")
    return np.isin(check_labels(labels), REGIONS[region])


def regions_from_labels(labels: np.ndarray) -> np.ndarray:
    """(3, ...) uint8 stack of the WT, TC and ET masks of a label map."""
    return np.stack([region_mask(labels, r) for r in REGIONS]).astype(np.uint8)


def labels_from_regions(wt, tc, et) -> np.ndarray:
    """The label map of three region masks, nested by construction: TC counts only inside
    WT and ET only inside TC, so a decoder's stray core outside the tumour is dropped;
    WT alone is oedema (2), TC without ET necrosis (1), ET enhancing (3)."""
    wt = np.asarray(wt, bool)
    tc = wt & np.asarray(tc, bool)
    et = tc & np.asarray(et, bool)
    out = np.zeros(wt.shape, np.uint8)
    out[wt] = OEDEMA
    out[tc] = NECROSIS
    out[et] = ENHANCING
    return out


#: the optional sub-region condition (beyond the paper; ``condition_subregions``): the shares
#: of the tumour's voxels that are necrosis and enhancing tumour
SUBREGION_FEATURES = ("necrosis_share", "enhancing_share")


def subregion_shares(labels) -> np.ndarray:
    """(N, 2) ``SUBREGION_FEATURES`` of label maps (N, x, y, z), or (2,) of one map: the
    necrosis and enhancing voxels over the tumour's voxels (NaN for a map without tumour)."""
    arr = check_labels(labels)
    one = arr.ndim == 3
    arr = arr[None] if one else arr
    flat = arr.reshape(len(arr), -1)
    tumour = (flat > 0).sum(1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.stack([(flat == NECROSIS).sum(1) / tumour, (flat == ENHANCING).sum(1) / tumour], axis=1)
    out[tumour == 0] = np.nan
    return out[0] if one else out


def boundary(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Voxels of the binary ``mask`` with at least one neighbour outside it (or outside the
    array): ``connectivity`` 1 = face neighbours (6 in 3D), ``mask.ndim`` = all of them."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


class EmptyMaskError(ValueError):
    """The mask holds no tumour voxel, so tumour features are undefined."""


def _mesh(mask: np.ndarray, spacing: Sequence[float]):
    from skimage import measure

    padded = np.pad(mask.astype(np.float32), 1)
    verts, faces, _, _ = measure.marching_cubes(padded, level=0.5, spacing=tuple(float(s) for s in spacing))
    return verts, faces


def mesh_area_volume(mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> tuple[float, float]:
    """(surface area, enclosed volume) of the marching-cubes mesh of a binary mask."""
    verts, faces = _mesh(mask, spacing)
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    cross = np.cross(b - a, c - a)
    area = 0.5 * np.linalg.norm(cross, axis=1).sum()
    # divergence theorem: signed tetrahedra against the origin
    volume = abs(np.einsum("ij,ij->i", a, np.cross(b, c)).sum()) / 6.0
    return float(area), float(volume)


def tumour_features(mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                   empty: str = "raise") -> dict[str, float]:
    """The 9 raw tumour features of a binary 3D mask (see module docstring for units)."""
    from scipy import ndimage

    mask = np.asarray(mask) > 0
    if mask.ndim != 3:
        raise ValueError(f"tumour_features needs a 3D mask, got shape {mask.shape}")
    if not mask.any():
        if empty == "nan":
            return {k: float("nan") for k in FEATURE_NAMES}
        if empty != "raise":
            raise ValueError(f"empty must be 'raise' or 'nan', got {empty!r}")
        raise EmptyMaskError("mask is empty: tumour features are undefined")
    spacing = tuple(float(s) for s in spacing)
    voxel_volume = float(mask.sum()) * float(np.prod(spacing))
    area, mesh_volume = mesh_area_volume(mask, spacing)
    sphericity = np.pi ** (1 / 3) * (6 * mesh_volume) ** (2 / 3) / area
    x, y, z = ndimage.center_of_mass(mask)
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    w, h, d = (s.stop - s.start for s in box)
    return {"voxel_volume": voxel_volume, "surface_area": area, "sphericity": float(sphericity),
            "x": float(x), "y": float(y), "z": float(z), "w": float(w), "h": float(h), "d": float(d)}


def as_matrix(features: Sequence[Mapping[str, float]] | Mapping[str, float] | np.ndarray) -> np.ndarray:
    """(N, 9) float64 array from feature dicts (or pass an array through); a dict with a
    missing or an unknown key is refused, naming the keys."""
    if isinstance(features, Mapping):
        features = [features]
    if isinstance(features, np.ndarray):
        arr = np.atleast_2d(features.astype(np.float64))
    else:
        for i, f in enumerate(features):
            if isinstance(f, Mapping):
                missing = [k for k in FEATURE_NAMES if k not in f]
                extra = [k for k in f if k not in FEATURE_NAMES]
                if missing or extra:
                    raise ValueError(f"condition {i}: " + "; ".join(
                        ([f"missing key(s) {', '.join(missing)}"] if missing else [])
                        + ([f"unknown key(s) {', '.join(map(str, extra))}"] if extra else []))
                        + f" (the 9 features are {', '.join(FEATURE_NAMES)})")
        arr = np.array([[f[k] for k in FEATURE_NAMES] for f in features], dtype=np.float64)
    if arr.shape[-1] != len(FEATURE_NAMES):
        raise ValueError(f"feature vectors need {len(FEATURE_NAMES)} entries ({', '.join(FEATURE_NAMES)}), "
                         f"got shape {arr.shape}")
    return arr


NORMALIZATIONS = ("max", "zscore")


class FeatureNormalizer:
    """Maps raw tumour features to the condition vector the UNet sees, and back.

    ``kind="max"`` — the authors' normalisation: volume and area over the training
    maximum, sphericity raw, ``x, w`` over the first size of the volume, ``y, h`` over the
    second, ``z, d`` over the depth. Every feature then lies in [0, 1] but with very
    different spreads (sphericity std ~0.05, box ~0.06, volume ~0.2 on the phantom).
    ``kind="zscore"`` — each feature minus its training mean, over its training std, so
    that every feature moves the condition embedding by a comparable amount.
    ``inverse_transform`` undoes either.
    """

    def __init__(self, max_volume: float, max_area: float, shape: Sequence[int], kind: str = "max",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        if kind not in NORMALIZATIONS:
            raise ValueError(f"condition normalisation must be one of {', '.join(NORMALIZATIONS)}, got {kind!r}")
        self.max_volume, self.max_area = float(max_volume), float(max_area)
        self.shape = tuple(int(s) for s in shape)
        self.kind = kind
        sx, sy, sz = self.shape
        if kind == "max":
            self.offset = np.zeros(len(FEATURE_NAMES))
            self.scale = np.array([self.max_volume, self.max_area, 1.0, sx, sy, sz, sx, sy, sz], dtype=np.float64)
        else:
            if mean is None or std is None:
                raise ValueError("a z-score normaliser needs the training mean and std of every feature")
            self.offset = np.asarray(mean, dtype=np.float64)
            self.scale = np.where(np.asarray(std, dtype=np.float64) > 0, np.asarray(std, dtype=np.float64), 1.0)

    @classmethod
    def fit(cls, features, shape: Sequence[int], kind: str = "max") -> "FeatureNormalizer":
        arr = as_matrix(features)
        if np.isnan(arr).any():
            raise ValueError("cannot fit the feature normaliser on NaN features (empty masks?)")
        return cls(arr[:, 0].max(), arr[:, 1].max(), shape, kind, arr.mean(axis=0), arr.std(axis=0))

    def transform(self, features) -> np.ndarray:
        return (as_matrix(features) - self.offset) / self.scale

    def inverse_transform(self, vectors) -> np.ndarray:
        return as_matrix(np.asarray(vectors)) * self.scale + self.offset

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "max_volume": self.max_volume, "max_area": self.max_area,
             "shape": list(self.shape), "feature_names": list(FEATURE_NAMES)}
        if self.kind == "zscore":
            d.update(mean=self.offset.tolist(), std=self.scale.tolist())
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "FeatureNormalizer":
        return cls(d["max_volume"], d["max_area"], d["shape"], d.get("kind", "max"), d.get("mean"), d.get("std"))

    def save(self, path: str | os.PathLike) -> None:
        from sbldm.io import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureNormalizer":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def __repr__(self) -> str:
        return (f"FeatureNormalizer(kind={self.kind!r}, max_volume={self.max_volume:g}, "
                f"max_area={self.max_area:g}, shape={self.shape})")


def area_from(volume: np.ndarray, sphericity: np.ndarray) -> np.ndarray:
    """Surface area implied by a volume and a sphericity: ``pi^(1/3) (6V)^(2/3) / s``."""
    return np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / sphericity


class ConditionSampler:
    """Draws plausible raw feature vectors from the training distribution.

    The authors drew each feature uniformly and independently, which gives impossible
    tumours (a bounding box smaller than the volume, a centre at the border). Here a
    training tumour is drawn at random and perturbed (a smoothed bootstrap): log-volume
    and sphericity jittered, the box scaled with the cube root of the volume change, the
    centre moved a little; the surface area is then recomputed from volume and
    sphericity so that the vector stays self-consistent, and the box is kept inside the
    volume.
    """

    def __init__(self, train_features, shape: Sequence[int], jitter: float = 0.15):
        self.raw = as_matrix(train_features)
        self.shape = np.array(shape, dtype=np.float64)
        self.jitter = float(jitter)

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """(n, 9) raw feature vectors."""
        rng = np.random.default_rng(rng)
        base = self.raw[rng.integers(0, len(self.raw), size=n)].copy()
        factor = np.exp(rng.normal(0.0, self.jitter, size=n))
        sph = np.clip(base[:, 2] + rng.normal(0.0, 0.5 * self.jitter * base[:, 2].std() + 1e-3, size=n), 0.2, 0.95)
        return self._rescale(base, factor, sph, rng.normal(0.0, self.jitter, size=(n, 3)))

    def _rescale(self, base, factor, sph, shift) -> np.ndarray:
        out = base.copy()
        out[:, 0] = base[:, 0] * factor
        out[:, 2] = sph
        out[:, 1] = area_from(out[:, 0], sph)
        out[:, 6:9] = np.minimum(base[:, 6:9] * np.cbrt(factor)[:, None], self.shape)
        centre = base[:, 3:6] + shift * base[:, 6:9]
        half = out[:, 6:9] / 2
        out[:, 3:6] = np.clip(centre, half, self.shape - half)
        return out

    def sweep(self, base, feature: str, values: Sequence[float], consistent: bool = True) -> np.ndarray:
        """Raw vectors equal to ``base`` but for ``feature`` set to each of ``values``.

        With ``consistent`` and ``feature='voxel_volume'`` the surface area and the box
        follow the volume (sphericity and centre fixed), as a real tumour's would.
        """
        if feature not in FEATURE_NAMES:
            raise ValueError(f"unknown feature {feature!r}; choose one of {', '.join(FEATURE_NAMES)}")
        base = as_matrix(base)[0]
        out = np.repeat(base[None], len(values), axis=0)
        j = FEATURE_NAMES.index(feature)
        out[:, j] = np.asarray(values, dtype=np.float64)
        if consistent and feature == "voxel_volume":
            factor = out[:, 0] / max(base[0], 1e-9)
            out = self._rescale(np.repeat(base[None], len(values), axis=0), factor,
                                np.full(len(values), base[2]), np.zeros((len(values), 3)))
        return out


def feature_summary(splits: Mapping[str, np.ndarray]) -> list[dict]:
    """Rows (one per feature) of mean, std, min and max of raw features in each split."""
    rows = []
    for j, name in enumerate(FEATURE_NAMES):
        row = {"feature": name}
        for split, arr in splits.items():
            col = as_matrix(np.asarray(arr))[:, j]
            row.update({f"{split}_mean": float(np.nanmean(col)), f"{split}_std": float(np.nanstd(col)),
                        f"{split}_min": float(np.nanmin(col)), f"{split}_max": float(np.nanmax(col))})
        rows.append(row)
    return rows


def mask_features(masks) -> np.ndarray:
    """(N, 9) raw tumour features of binary masks; NaN rows for empty masks."""
    return np.array([[f[k] for k in FEATURE_NAMES] for f in (tumour_features(m, empty="nan") for m in masks)])


def feature_distribution_distance(real_features, synthetic_features) -> dict:
    """Per-feature Wasserstein-1 distance / std of the real feature, plus the mean over
    features and the fraction of synthetic masks without tumour (excluded)."""
    from scipy.stats import wasserstein_distance

    real = np.asarray(real_features, np.float64)
    syn = np.asarray(synthetic_features, np.float64)
    empty = np.isnan(syn).any(axis=1)
    syn = syn[~empty]
    out = {}
    for j, name in enumerate(FEATURE_NAMES):
        scale = real[:, j].std() or 1.0
        out[name] = float(wasserstein_distance(real[:, j], syn[:, j]) / scale) if len(syn) else math.nan
    out["mean"] = float(np.mean([out[n] for n in FEATURE_NAMES]))
    out["empty_fraction"] = float(empty.mean()) if len(empty) else math.nan
    return out
