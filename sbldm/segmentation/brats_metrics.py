"""BraTS region metrics and the BraTS 2023 lesion-wise metrics, for sbldm's label maps.

Labels follow sbldm's convention: 0 background, 1 necrosis (necrotic / non-enhancing
core), 2 oedema, 3 enhancing tumour. BraTS 2021 writes enhancing tumour as 4; that map is
converted at load time (``sbldm.data.cohort.brats_labels``), and every function here that
takes a label map refuses any value outside {0, 1, 2, 3}, so an unmapped 2021 map cannot be
scored silently with an empty enhancing tumour. The three nested regions (``REGIONS``) are
whole tumour WT = {1, 2, 3}, tumour core TC = {1, 3} and enhancing tumour ET = {3}.

Volume ("legacy") metrics, per region
-------------------------------------
* Dice = 2|P ∩ R| / (|P| + |R|) over the whole volume.
* HD95, in mm: the surface of a mask is its voxels with at least one 6-neighbour outside
  the mask (outside the array counts as outside), i.e. the mask minus its erosion by the
  6-connected cross. For every surface voxel of P the Euclidean distance (voxel spacing
  applied) to the nearest surface voxel of R is taken, and vice versa; HD95 is the larger
  of the two 95th percentiles (linear interpolation, numpy's default). This is the
  definition of MONAI's ``compute_hausdorff_distance(..., percentile=95)`` with its
  default (non sub-voxel) edges, against which the tests check it.
* Empty masks (BraTS convention, as in the 2023 scripts): reference and prediction both
  empty -> Dice 1, HD95 0; exactly one empty -> Dice 0, HD95 = ``HD95_PENALTY_MM``. A
  finite HD95 is never clipped to the penalty (the scripts do not clip either).

Lesion-wise metrics, per region
-------------------------------
The definition is the one ranked in the BraTS 2023 segmentation challenges ("BraTS 2023
Lesion-Wise Performance Metrics for Segmentation Challenges", by R. Saluja for the
BraTS-GLI 2023 challenge; the published scripts are the ``eval.py`` / ``brats_metrics.py``
of the ``BraTS-2023-Metrics`` repository, and the organisers' announcement of the metric
on the challenge's Synapse forum). With the BraTS-GLI parameters:

1. The region's reference mask is dilated by ``LESION_DILATION_ITERATIONS`` = 3
   iterations of the 18-neighbourhood structuring element (scipy's
   ``generate_binary_structure(3, LESION_DILATION_CONNECTIVITY=2)``), and the dilated mask
   is split into 26-connected components (``LESION_CONNECTIVITY``). One ground-truth
   lesion is the set of (undilated) reference voxels inside one such component: reference
   blobs whose dilations touch form one lesion. The reference voxels themselves are never
   changed; the dilation only decides grouping and matching.
2. The prediction is split into 26-connected components.
3. Every predicted component that has at least one voxel inside a lesion's dilated extent
   is matched to that lesion (a component can match several lesions). The lesion's Dice
   and HD95 are computed between the lesion and the union of its matched components. A
   lesion with no match is missed: Dice 0, HD95 = ``HD95_PENALTY_MM``.
4. Lesions whose volume is at most ``MIN_LESION_VOLUME_MM3`` = 50 mm³ (voxel count times
   the voxel volume; 50 voxels at BraTS's 1 mm isotropic spacing; a lesion of exactly 50 is
   dropped) are left out of the score and the counts. A predicted component matched only
   to such small lesions is not a false positive either: it leaves the score with them.
5. Predicted components matched to no lesion are false positives; each enters the score as
   one more lesion with Dice 0 and HD95 = ``HD95_PENALTY_MM``.
6. Lesion-wise Dice = (sum of the kept lesions' Dice) / (kept lesions + false positives);
   lesion-wise HD95 = (sum of the kept lesions' HD95 + penalty x false positives) / (the
   same count). When that count is 0 (no kept lesion, no false positive, e.g. both masks
   empty) the scores are Dice 1 and HD95 0.

``HD95_PENALTY_MM`` = 374 mm is the value the 2023 scripts substitute for an infinite
HD95 (one side empty), for both the lesion-wise and the volume HD95; it is slightly more
than the 373.13 mm diagonal of the 240 x 240 x 155 mm BraTS volume.

Where this module departs from the scripts
------------------------------------------
* **HD95.** The scripts measure it with DeepMind's ``surface_distance`` package: surface
  elements on the voxel-corner grid, and a 95th percentile weighted by surface-element
  area. This module uses the voxel-surface definition above (MONAI's), interpolated.
  Measured against ``surface_distance`` 0.1 on hand-made cases (``tests/test_brats_metrics.py``,
  which runs both):

  - compact masks (spheres, a cube, 150 random ellipsoid pairs; spacings 1, 2 and
    1 x 1 x 3 mm): within one voxel along the coarsest axis. Over the ellipsoid pairs at
    most 0.53 mm at 1 mm, 1.22 mm at 2 mm and 2.98 mm at 1 x 1 x 3 mm, this module's
    value mostly the higher;
  - a mask with a small satellite whose share of the surface sits near the 5% mark: the
    two definitions put the satellite on different sides of the 95th percentile, and the
    HD95s differ by up to the satellite's distance from the rest. A 7 x 7 x 1-voxel plate
    30 voxels from a sphere of radius 10 gives 0.0 mm here and 21.4 mm in the scripts.

  So a single case's HD95 is comparable with the challenge's only when no such satellite
  is present; a mean over cases usually is, but not always. Dice, matching, counts and
  every other convention above are the scripts'.
* **Label 4.** BraTS 2021 writes enhancing tumour as 4. This project maps it to 3 when it
  loads a segmentation (``sbldm.data.cohort.brats_labels``), so 2021 and 2023 maps score
  alike. The 2023 scripts read labels 1, 2 and 3 only and silently leave a 4 out of every
  region, so a 2021 map scored there loses its enhancing tumour.
* Other challenges of 2023 use other parameters (BraTS-MEN and BraTS-MET dilate by 1
  iteration; BraTS-MET's volume threshold is 2); the functions take them as keyword
  arguments, defaulting to BraTS-GLI's.

Not the ``brats-evaluation`` package
------------------------------------
The PyPI package ``brats-evaluation`` (read at version 0.0.10; the later BraTS evaluation built on ``panoptica``)
scores lesions differently, so its numbers are not these: its glioma configuration pairs
reference and predicted connected components one-to-one (maximum bipartite matching on
Dice) without dilating the reference and without a minimum lesion size, and the
"lesion-wise" Dice it reports for gliomas is the mean Dice over matched pairs only (the
segmentation-quality term of panoptic quality), so a missed lesion or a false-positive
blob does not lower it as long as one pair is matched; an infinite HD95 becomes 373, not
374. This module follows the 2023 challenge's scripts, not that package.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from sbldm.data.tumour import boundary
from sbldm.data.tumour import REGIONS, VALID_LABELS, check_labels, region_mask  # noqa: F401  (re-exported: the regions scored here)

HD95_PENALTY_MM: float = 374.0
"""HD95 (mm) when exactly one side is empty, for a missed lesion and for a false positive."""

HD_PERCENTILE: float = 95.0
"""Percentile of the surface distances (HD95)."""

SURFACE_CONNECTIVITY: int = 1
"""Structuring element of the erosion that defines surface voxels: ``generate_binary_structure(ndim, 1)``,
the 6-neighbourhood in 3-D."""

LESION_CONNECTIVITY: int = 26
"""Neighbourhood of the connected components of reference and prediction (3-D: 26 = faces, edges, corners)."""

LESION_DILATION_CONNECTIVITY: int = 2
"""Structuring element of the reference dilation: ``generate_binary_structure(3, 2)``, the 18-neighbourhood."""

LESION_DILATION_ITERATIONS: int = 3
"""Iterations of the reference dilation (BraTS-GLI, -SSA, -PED 2023; -MEN and -MET use 1)."""

MIN_LESION_VOLUME_MM3: float = 50.0
"""Lesions of at most this volume (mm³) are not scored (BraTS-GLI, -SSA, -PED, -MEN 2023; -MET uses 2)."""

_CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}


# ---------------------------------------------------------------------------
# inputs


def _as_mask(mask, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype != bool:
        values = np.unique(arr)
        if not np.all(np.isin(values, (0, 1))):
            raise ValueError(f"{name}: expected a binary mask (bool or 0/1), got values {values[:8].tolist()}")
        arr = arr.astype(bool)
    return arr


def _check_pair(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    p, r = _as_mask(pred, "prediction"), _as_mask(ref, "reference")
    if p.shape != r.shape:
        raise ValueError(f"prediction and reference shapes differ: {p.shape} vs {r.shape}")
    if p.ndim == 0:
        raise ValueError("masks must have at least one dimension")
    return p, r


def _check_spacing(spacing, ndim: int) -> tuple[float, ...]:
    s = np.atleast_1d(np.asarray(spacing, dtype=float))
    if s.size == 1:
        s = np.repeat(s, ndim)
    if s.shape != (ndim,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing must be {ndim} positive finite numbers (mm per voxel, in array axis order), "
                         f"got {spacing!r}")
    return tuple(float(v) for v in s)


# ---------------------------------------------------------------------------
# volume metrics


def dice(pred, ref) -> float:
    """Dice of two binary masks; 1.0 when both are empty, 0.0 when exactly one is."""
    p, r = _check_pair(pred, ref)
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & r)) / total


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    return ndimage.find_objects(mask.astype(np.uint8))[0]


def _surface(mask: np.ndarray) -> np.ndarray:
    return boundary(mask, SURFACE_CONNECTIVITY)


def _hd_percentile_nonempty(p: np.ndarray, r: np.ndarray, spacing: tuple[float, ...], percentile: float) -> float:
    # Crop to the bounding box of both masks: every surface voxel and every nearest
    # surface voxel lies inside it, and a voxel on the box's face has its outside
    # neighbour outside both masks, so the crop changes no surface and no distance.
    box = _bounding_box(p | r)
    p, r = p[box], r[box]
    sp, sr = _surface(p), _surface(r)
    to_r = ndimage.distance_transform_edt(~sr, sampling=spacing)[sp]
    to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)[sr]
    return float(max(np.percentile(to_r, percentile), np.percentile(to_p, percentile)))


def hd95(pred, ref, spacing=1.0, penalty: float = HD95_PENALTY_MM) -> float:
    """95th-percentile symmetric Hausdorff distance (mm) between two binary masks.

    ``spacing``: voxel size in mm per array axis (one number for isotropic voxels).
    Both empty -> 0.0; exactly one empty -> ``penalty``. See the module docstring for the
    surface and percentile definition."""
    p, r = _check_pair(pred, ref)
    s = _check_spacing(spacing, p.ndim)
    has_p, has_r = bool(p.any()), bool(r.any())
    if not has_p and not has_r:
        return 0.0
    if not (has_p and has_r):
        return float(penalty)
    return _hd_percentile_nonempty(p, r, s, HD_PERCENTILE)


# ---------------------------------------------------------------------------
# lesion-wise metrics


@dataclass
class Lesion:
    """One ground-truth lesion: its volume, the predicted components matched to it, its scores."""

    volume_mm3: float
    n_voxels: int
    matched_components: tuple[int, ...]
    dice: float
    hd95: float
    scored: bool  # False when volume_mm3 <= the minimum lesion volume


@dataclass
class LesionWiseResult:
    """Lesion-wise Dice and HD95 of one region, with the counts behind them."""

    dice: float
    hd95: float
    n_lesions: int            # ground-truth lesions scored (above the volume threshold)
    n_detected: int           # scored lesions with at least one matched predicted component
    n_missed: int             # scored lesions with none
    n_false_positive: int     # predicted components matched to no lesion (small ones included)
    n_small_ignored: int      # lesions at or below the volume threshold, left out of score and counts
    lesions: list[Lesion] = field(default_factory=list)


def _components(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    if mask.ndim != 3:
        raise ValueError(f"lesion-wise metrics need 3-D masks, got {mask.ndim}-D")
    if connectivity not in _CONNECTIVITY_RANK:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    structure = ndimage.generate_binary_structure(3, _CONNECTIVITY_RANK[connectivity])
    labelled, n = ndimage.label(mask, structure=structure)
    return labelled, int(n)


def _merge_boxes(boxes: Sequence[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(b[d].start for b in boxes), max(b[d].stop for b in boxes)) for d in range(len(boxes[0])))


def lesion_wise_scores(pred, ref, spacing=1.0, *,
                       dilation_iterations: int = LESION_DILATION_ITERATIONS,
                       min_lesion_volume_mm3: float = MIN_LESION_VOLUME_MM3,
                       penalty: float = HD95_PENALTY_MM,
                       connectivity: int = LESION_CONNECTIVITY,
                       dilation_connectivity: int = LESION_DILATION_CONNECTIVITY) -> LesionWiseResult:
    """BraTS 2023 lesion-wise Dice and HD95 of two 3-D binary masks of one region.

    Steps and parameters as in the module docstring (defaults: BraTS-GLI 2023)."""
    p, r = _check_pair(pred, ref)
    s = _check_spacing(spacing, p.ndim)
    if int(dilation_iterations) != dilation_iterations or dilation_iterations < 0:
        raise ValueError(f"dilation_iterations must be a non-negative integer, got {dilation_iterations!r}")
    if dilation_connectivity not in (1, 2, 3):
        raise ValueError(f"dilation_connectivity must be 1, 2 or 3, got {dilation_connectivity!r}")
    voxel_mm3 = float(np.prod(s))

    pred_cc, n_pred = _components(p, connectivity)
    if dilation_iterations > 0 and r.any():
        structure = ndimage.generate_binary_structure(3, dilation_connectivity)
        dilated = ndimage.binary_dilation(r, structure=structure, iterations=int(dilation_iterations))
    else:
        dilated = r
    # One lesion = the reference voxels of one component of the dilated reference; the
    # component itself is the lesion's dilated extent (the union of its blobs' dilations).
    extent_cc, n_lesions = _components(dilated, connectivity)
    lesion_map = np.where(r, extent_cc, 0)

    extent_boxes = ndimage.find_objects(extent_cc)
    pred_boxes = ndimage.find_objects(pred_cc)
    pred_sizes = np.bincount(pred_cc.ravel(), minlength=n_pred + 1)

    matched_any: set[int] = set()
    lesions: list[Lesion] = []
    for k in range(1, n_lesions + 1):
        box = extent_boxes[k - 1]
        in_extent = extent_cc[box] == k
        matched = np.unique(pred_cc[box][in_extent])
        matched = tuple(int(c) for c in matched if c != 0)
        matched_any.update(matched)
        n_vox = int(np.count_nonzero(lesion_map[box] == k))
        if matched:
            joint = _merge_boxes([box] + [pred_boxes[c - 1] for c in matched])
            les = lesion_map[joint] == k
            union = np.isin(pred_cc[joint], matched)
            d = 2.0 * int(np.count_nonzero(les & union)) / (n_vox + int(pred_sizes[list(matched)].sum()))
            h = _hd_percentile_nonempty(union, les, s, HD_PERCENTILE)
        else:
            d, h = 0.0, float(penalty)
        vol = n_vox * voxel_mm3
        lesions.append(Lesion(volume_mm3=vol, n_voxels=n_vox, matched_components=matched, dice=d, hd95=h,
                              scored=vol > min_lesion_volume_mm3))

    kept = [les for les in lesions if les.scored]
    n_fp = n_pred - len(matched_any)
    denominator = len(kept) + n_fp
    if denominator == 0:
        lw_dice, lw_hd95 = 1.0, 0.0
    else:
        lw_dice = sum(les.dice for les in kept) / denominator
        lw_hd95 = (sum(les.hd95 for les in kept) + n_fp * float(penalty)) / denominator
    n_detected = sum(1 for les in kept if les.matched_components)
    return LesionWiseResult(dice=float(lw_dice), hd95=float(lw_hd95), n_lesions=len(kept), n_detected=n_detected,
                            n_missed=len(kept) - n_detected, n_false_positive=n_fp,
                            n_small_ignored=len(lesions) - len(kept), lesions=lesions)


# ---------------------------------------------------------------------------
# one case, three regions


def region_dice_rows(pred_labels, ref_labels) -> list[dict]:
    """Volume Dice per BraTS region over a set of cases: one row per region (``WT``,
    ``TC``, ``ET``) with the mean and std over the cases of ``dice(prediction's region,
    reference's region)`` (both empty counts 1, one empty 0, as ``dice`` says), the
    number of cases and how many of them have the region empty in the reference.
    ``pred_labels`` and ``ref_labels``: (N, x, y, z) label maps in sbldm's convention."""
    pred, ref = check_labels(pred_labels, "prediction"), check_labels(ref_labels, "reference")
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} label maps differ in shape")
    rows = []
    for region, members in REGIONS.items():
        p, r = np.isin(pred, members), np.isin(ref, members)
        d = np.array([dice(p[k], r[k]) for k in range(len(ref))])
        rows.append({"region": region, "mean": float(d.mean()), "std": float(d.std()), "n": int(len(d)),
                     "n_empty_reference": int(sum(not r[k].any() for k in range(len(ref))))})
    return rows


def score_case(pred_labels, ref_labels, spacing=1.0, regions=tuple(REGIONS), **lesion_kwargs) -> dict:
    """Volume and lesion-wise metrics of one case for WT, TC and ET.

    ``pred_labels``/``ref_labels``: 3-D sbldm label maps (values 0-3 only) of one shape;
    ``spacing``: mm per voxel along the array axes. ``lesion_kwargs`` go to
    ``lesion_wise_scores`` (defaults: BraTS-GLI 2023); ``regions`` names the regions scored
    (``("WT",)`` scores a binary whole-tumour mask, whose 1 lies in WT). Returns, for each region R,
    ``R_dice``, ``R_hd95``, ``R_lesion_dice``, ``R_lesion_hd95``, ``R_n_lesions``,
    ``R_n_detected``, ``R_n_missed``, ``R_n_false_positive`` and ``R_n_small_ignored``."""
    pred = check_labels(pred_labels, "prediction")
    ref = check_labels(ref_labels, "reference")
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference shapes differ: {pred.shape} vs {ref.shape}")
    penalty = float(lesion_kwargs.get("penalty", HD95_PENALTY_MM))
    out: dict = {}
    for region in regions:
        p, r = np.isin(pred, REGIONS[region]), np.isin(ref, REGIONS[region])
        lw = lesion_wise_scores(p, r, spacing, **lesion_kwargs)
        out[f"{region}_dice"] = dice(p, r)
        out[f"{region}_hd95"] = hd95(p, r, spacing, penalty=penalty)
        out[f"{region}_lesion_dice"] = lw.dice
        out[f"{region}_lesion_hd95"] = lw.hd95
        out[f"{region}_n_lesions"] = lw.n_lesions
        out[f"{region}_n_detected"] = lw.n_detected
        out[f"{region}_n_missed"] = lw.n_missed
        out[f"{region}_n_false_positive"] = lw.n_false_positive
        out[f"{region}_n_small_ignored"] = lw.n_small_ignored
    return out
