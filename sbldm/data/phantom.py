"""The phantom cohort: a BraTS-like data set made from real anatomy, so sbldm runs end to
end without downloading BraTS.

Per subject, from nilearn's bundled MNI152 2009 template (brain mask, grey- and
white-matter probability maps):

1. geometry — the template scaled to an adult brain volume, an affine jitter (rotation,
   per-axis scale, shift) and a smooth random deformation map the subject's grid into
   template space;
2. tumour — a lobulated core (necrosis inside a patchy, off-centre enhancing part)
   grown by oedema of uneven reach: thicker along white matter, lobulated by smooth
   noise, pushed to one side, and in a share of cases absent over part of the core, so
   that the core touches normal brain; the surrounding anatomy is pushed outwards (mass
   effect);
3. contrast — the four BraTS sequences (T1, T1ce, T2, FLAIR) from the same anatomy and
   labels: tissue contrasts per sequence, tumour sub-regions set in units of the normal
   brain's interquartile range above its median (drawn per case and per region), smooth
   texture and dark vessel/sulcal streaks inside the tumour, a diffuse oedema edge, a
   multiplicative bias field, noise, and the point-spread function of a thick-slice scan
   resampled to the output grid (smoother along z); zero outside the brain (BraTS volumes
   are skull-stripped).

Cases are written in the BraTS 2023 layout (``BraTS-GLI-XXXXX-000/...-{t1n,t1c,t2w,t2f}
.nii.gz`` and ``...-seg.nii.gz`` with labels 0 background, 1 necrosis, 2 oedema, 3
enhancing), so the real BraTS loader reads them (the sequences ``cfg.modalities`` names). Case
``i`` depends only on ``(seed, i, PHANTOM_VERSION)`` and the parameters: the same seed
gives the same volumes, and a larger cohort extends a smaller one.

Sources of the ranges below: each constant says where it comes from. Where a range is a
design choice checked against one real BraTS 2021 case (whole tumour 56 ml; sub-region
shares 0.00/0.86/0.14; FLAIR median z +1.5/+1.3/+1.6 for necrosis/oedema/enhancing;
sphericity 0.63; oedema thickness p90/p10 8.3; 8% of the core's surface touching normal
brain; std z inside the tumour 0.77; normal-brain mean |Laplacian| 0.59 z/mm^2; edge
gradient 0.56 z/mm; numbers from a comparison made during development, the case itself
does not ship with sbldm; ``sbldm.data.phantom_stats`` measures the same quantities on
any case) and a second real label map (shares 0.16/0.60/0.24, sphericity 0.51, p90/p10 32, 22% of the core touching
normal brain), it says so: these are not statistics fitted to BraTS. Version 4 was
recalibrated against the medians of a panel of real BraTS gliomas
(``sbldm.data.phantom_stats.REAL_PANEL``); the constants it changed say so. Measured with
``sbldm.data.phantom_stats`` on 30 cases at the ``small`` preset's geometry (120x120x78 at
2 mm; medians): FLAIR necrosis z 2.05 (4 of 30 cystic, dark), T1ce enhancing minus oedema
1.44 z, std of z inside the enhancing tumour on T1ce 0.85, T1ce necrosis -0.58, T1 tumour
-0.14; core sphericity 0.56, whole tumour 0.57; centroid depth 28 mm, 29 of 30 tumours within
5 mm of the brain's surface; 15 of 30 with satellites. At 1 mm (3 cases) the normal brain's
mean |Laplacian of z| is 0.46-0.73 on FLAIR, 0.63-0.84 on T1ce and 0.41-0.81 on T2 (real
panel 0.59, 0.71 and 1.55: the phantom's T2 stays smoother, see ``NOISE_FACTOR``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from sbldm.data.cohort import Case, case_files, find_cases, save_case
from sbldm.data.tumour import ENHANCING, NECROSIS, OEDEMA
from sbldm.io import atomic_write_json

# 4: recalibrated against a panel of real BraTS gliomas (below, "the real panel"): FLAIR
#    necrosis mostly bright (a dark cystic minority), a gentler, textured T1ce enhancement
#    with gaps in the wall, T1 tumour near isointense, per-sequence noise and blur, tumours
#    placed in lobar white matter so that they reach towards the cortex, rougher cores and
#    occasional satellite lesions.
# 3: lobulated tumours with oedema of uneven thickness along white matter, eccentric cores
#    that may touch normal brain, per-case tumour contrasts (necrosis dark to bright),
#    smooth texture, thick-slice PSF, adult brain volume, all four BraTS sequences.
# 2: whole-tumour volumes log-normal around 60 ml (BraTS-like), was log-uniform 0.4-150 ml
PHANTOM_VERSION = 4

#: BraTS 2023 file suffixes: T1 (native), T1 post-contrast, T2, T2-FLAIR; the chain reads FLAIR
SEQUENCES = ("t1n", "t1c", "t2w", "t2f")
FLAIR = "t2f"

# -- volumes ---------------------------------------------------------------------------

# Whole-tumour (oedema + core) volume of the phantom's gliomas, in ml: log-normal with
# this median and log-standard deviation, truncated to ``tumour_volume_range``. Adult
# gliomas in the BraTS cohorts are large: the FLAIR-hyperintense whole tumour typically
# measures tens of ml up to a few hundred ml, a few percent of a ~1.3 l brain (Menze et
# al., "The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)", IEEE TMI 34(10),
# 2015; Bakas et al., "Advancing The Cancer Genome Atlas glioma MRI collections with
# expert segmentation labels and radiomic features", Sci. Data 4:170117, 2017). The
# median and spread below are our approximation of that range, not statistics fitted to
# BraTS (no BraTS labels ship with sbldm): with a BraTS folder, notebook 00's histogram
# shows the real distribution beside the phantom's.
TUMOUR_VOLUME_MEDIAN_ML = 60.0
TUMOUR_VOLUME_LOG_STD = 0.75          # 5th-95th percentile ~ 17-205 ml

# Brain tissue (grey + white matter) volume the template is scaled to, in ml. Adult brain
# volumes measured on MRI average about 1.27 l in men and 1.13 l in women (Allen, Damasio
# & Grabowski, "Normal neuroanatomical variation in the human brain: an MRI-volumetric
# study", Am. J. Phys. Anthropol. 118:341-358, 2002); the MNI152 2009 template is larger
# than an average brain (its GM+WM maps sum to ~1.67 l, its brain mask to ~1.88 l), so it
# is shrunk isotropically to this volume (brain mask then ~1.36 l) before the per-case
# scale jitter (``PhantomParams.scale_jitter``, ~9% std in volume, close to the ~10%
# between-subject std of that study). The tumour and its mass effect add to it: the
# brain masks of 24 cases measured 1.47 l at the median (1.25-1.79 l).
ADULT_BRAIN_TISSUE_ML = 1200.0

# -- tumour shape ----------------------------------------------------------------------
# The shape ranges are design choices checked against the real case and the second
# label map (module docstring), not fitted. With version 3's ranges, 24 cases at 1 mm gave
# whole-tumour sphericity median 0.61 (range 0.41-0.79; real 0.63 and 0.51), oedema
# thickness p90/p10 median 6.3 (2.9-16; real 8.3 and 32) and the core touching normal
# brain in 58% of cases (7% of its surface at the median; real 8% and 22%); version 4's
# at the small grid: sphericity 0.57 (0.40-0.73), p90/p10 5.3, the core touching normal
# brain in 53% of cases. Bakas et al. 2017 (above)
# released pyradiomics shape features (sphericity among them) of the TCGA-GBM/LGG
# segmentations: with a BraTS folder, ``sbldm.data.phantom_stats`` measures the same.

#: share of the whole tumour that is core (necrosis + enhancing); real: 0.14 and 0.40
CORE_SHARE_RANGE = (0.12, 0.5)
#: lobes of the core (sum of Gaussians) and their spread (std of the lobe offsets and
#: the range of lobe widths, both over the core's equivalent-sphere radius); v4 spreads
#: them further: the real panel's cores have sphericity 0.62 at the median, v3's 0.76
CORE_LOBES_RANGE = (3, 7)
CORE_LOBE_OFFSET = 0.75
CORE_LOBE_WIDTH_RANGE = (0.35, 0.75)
#: relative roughness of the core's blob field, smooth noise at CORE_ROUGHNESS_LENGTH times
#: the core radius (v3: 0.2-0.45 at half the radius, too round against the real panel)
CORE_ROUGHNESS_RANGE = (0.35, 0.75)
CORE_ROUGHNESS_LENGTH = 0.35
#: share of cases with a necrotic part, and its share of the core (real: 0 and 0.4)
NECROSIS_PROBABILITY = 0.75
NECROSIS_SHARE_RANGE = (0.15, 0.65)
#: enhancing rim: log-std of its thickness along the core's border (patchiness) and how
#: strongly it is pushed to one side (off-centre), exp(k * cos(angle)); v4 crenellates it
#: more (the real panel's walls are thick, crenellated, with gaps)
ENHANCING_PATCHINESS_RANGE = (0.6, 1.3)
#: gaps in the enhancing wall: this share of the enhancing rim, where smooth noise (at
#: ENHANCING_GAP_LENGTH_MM) is highest, does not enhance and is labelled non-enhancing core
#: (label 1) instead; design choice after the real panel's walls
ENHANCING_GAP_SHARE_RANGE = (0.05, 0.3)
ENHANCING_GAP_LENGTH_MM = 6.0
ENHANCING_ECCENTRICITY_RANGE = (0.3, 1.5)
#: oedema reach (distance from the core) relative to its reach in white matter, in pure
#: grey matter / CSF: oedema spreads along white-matter tracts and spares cortex
OEDEMA_WM_FLOOR = 0.35
#: log-std of the oedema reach over the tumour (smooth noise at two scales, mm): lobulation
OEDEMA_LOBULATION_RANGE = (0.2, 0.5)
OEDEMA_LOBE_LENGTH_MM = (14.0, 6.0)
#: how strongly the oedema grows to one side of the core, exp(k * cos(angle)): eccentric core
OEDEMA_ECCENTRICITY_RANGE = (0.2, 1.2)
#: least oedema reach (mm) where the core is covered; the grid's coarsest spacing if larger
OEDEMA_MIN_REACH_MM = 1.5
#: share of cases whose core reaches normal brain, and the solid-angle share of the core
#: left uncovered by oedema there (real: 8% and 22% of the core surface)
CORE_EXPOSED_PROBABILITY = 0.5
CORE_EXPOSED_SHARE_RANGE = (0.05, 0.3)
#: mass effect: share of the displacement at the tumour centre
MASS_EFFECT_RANGE = (0.2, 0.45)
#: where the tumour centre sits: white matter at a depth below the brain's surface drawn
#: from this range, in units of the tumour's equivalent-sphere radius (at least
#: TUMOUR_DEPTH_MIN_MM), so that large tumours reach towards the cortex. The real panel's
#: gliomas are lobar (frontal, temporal, parietal, occipital) at a median depth of 26 mm,
#: every one reaching within 5 mm of the cortex (median share of the whole tumour there
#: 0.06); v3's centres sat deep, at 35 mm, none reaching it. Gliomas arise in the
#: cerebral hemispheres' white matter, mostly frontal and temporal (Louis et al., WHO
#: Classification of Tumours of the CNS, 2021); the depth range is a design choice.
TUMOUR_DEPTH_RANGE = (0.6, 1.2)
TUMOUR_DEPTH_MIN_MM = 10.0
#: satellite lesions: 7 of the real panel's 10 label maps have more than one 26-connected
#: whole-tumour component; v3 had none. Per case, with this probability, 1-3 small lesions
#: (this share of the whole tumour's volume each, oedema around a core in half of them) at
#: this gap (mm) beyond the main tumour's equivalent-sphere radius. Design choices; at the
#: coarser grids a satellite may merge with the tumour or fall below a voxel.
SATELLITE_PROBABILITY = 0.55
SATELLITE_COUNT_RANGE = (1, 3)
SATELLITE_VOLUME_SHARE_RANGE = (0.01, 0.06)
SATELLITE_GAP_MM_RANGE = (4.0, 14.0)
SATELLITE_CORE_PROBABILITY = 0.5

# -- contrast --------------------------------------------------------------------------
#: tissue signal per sequence relative to white matter (= 1): (low, high) of CSF and of
#: grey matter, drawn uniformly per case. Standard appearances: T1 and T1ce WM > GM > CSF;
#: T2 CSF > GM > WM; FLAIR GM > WM > CSF (CSF suppressed). Design choices in the usual
#: proportions of clinical 1.5-3 T scans.
TISSUE_CONTRAST = {
    "t1n": {"csf": (0.30, 0.45), "gm": (0.65, 0.80)},
    "t1c": {"csf": (0.32, 0.48), "gm": (0.68, 0.82)},
    "t2w": {"csf": (2.0, 2.8), "gm": (1.25, 1.5)},
    "t2f": {"csf": (0.2, 0.35), "gm": (1.15, 1.35)},
}
#: tumour sub-region signal per sequence in z units (interquartile ranges of the normal
#: brain above its median), each drawn uniformly per case and region, set before noise,
#: bias and blurring, which pull the measured z towards 0. Standard glioma appearances:
#: oedema bright on T2 and FLAIR; enhancing tumour bright on T1ce only; necrosis bright on
#: T2. v4 moves them towards the real panel's medians (measured with
#: ``sbldm.data.phantom_stats``): necrosis on FLAIR bright (z 2.2; 7 of 8 cases), on T1ce
#: -0.6 (v3 measured -1.8); T1ce enhancing 1.5 above oedema (v3: 3.1); T1 tumour iso- to
#: slightly hyperintense in the few real T1 scans (weak evidence), so near 0 here.
TUMOUR_Z_RANGES = {
    "t1n": {"necrosis": (-1.0, 0.4), "oedema": (-0.6, 0.4), "enhancing": (-0.4, 0.8)},
    "t1c": {"necrosis": (-1.3, 0.1), "oedema": (-1.0, 0.0), "enhancing": (0.6, 2.0)},
    "t2w": {"necrosis": (1.5, 4.5), "oedema": (1.0, 3.0), "enhancing": (0.3, 2.0)},
    "t2f": {"necrosis": (1.6, 3.6), "oedema": (1.1, 3.0), "enhancing": (1.0, 3.0)},
}
#: the minority of necrotic cores that is cystic, fluid-filled: dark on FLAIR, T1 and
#: T1ce, very bright on T2 (1 of the real panel's 8 necrotic cases was dark on FLAIR)
NECROSIS_CYSTIC_PROBABILITY = 0.15
NECROSIS_CYSTIC_Z_RANGES = {"t1n": (-2.6, -1.2), "t1c": (-2.6, -1.2), "t2w": (3.0, 5.0), "t2f": (-2.0, -0.4)}
#: speckle of the enhancing tumour on T1ce: std (z units) of fine texture at this length
#: (mm): the real panel's enhancing tumour varies inside by a std of 0.87 z on T1ce, v3's 0.64
ENHANCING_SPECKLE_Z_RANGE = (0.4, 0.9)
ENHANCING_SPECKLE_LENGTH_MM = 2.0
#: std (z units) of the smooth texture inside the tumour (3 and 8 mm correlation lengths)
TUMOUR_TEXTURE_Z_RANGE = (0.25, 0.55)
TUMOUR_TEXTURE_LENGTH_MM = (3.0, 8.0)
#: oedema hyperintensity at the core relative to its far edge (brighter near the core),
#: decaying with this length (mm)
OEDEMA_NEAR_CORE_GAIN = 0.4
OEDEMA_NEAR_CORE_MM = 8.0
#: share of CSF left dark inside oedema (sulci and ventricles stay CSF-like: dark streaks on FLAIR)
CSF_SPARING_RANGE = (0.5, 0.9)
#: vessel/sulcal streaks inside the tumour: depth (z units; bright on T1ce), a zero-level
#: sheet of smooth noise with this correlation length (mm) and half-width (noise units)
VESSEL_Z_RANGE = (0.5, 1.5)
VESSEL_LENGTH_MM = 8.0
VESSEL_WIDTH = 0.2
#: width (mm) of the oedema's diffuse edge (logistic), the label boundary at its half-way point
EDGE_WIDTH_MM_RANGE = (0.8, 2.0)
#: partial volume of the core's sub-regions (Gaussian sigma, mm)
PARTIAL_VOLUME_MM = 0.7
#: normal-tissue texture: std relative to the signal and correlation length (mm)
BRAIN_TEXTURE = 0.03
BRAIN_TEXTURE_LENGTH_MM = 4.0
#: point-spread function (Gaussian sigma, mm) of a thick-slice clinical scan resampled to
#: 1 mm: Menze et al. 2015 (above) describe the BraTS FLAIR as 2D acquisitions of 2-6 mm
#: slices (T2 likewise), all co-registered and resampled to 1 mm isotropic. A slice of
#: thickness s has a profile of std s/sqrt(12): 0.9-1.6 mm for 3-5.5 mm slices; in-plane
#: pixels of ~1 mm give ~0.4-0.6 mm. Design choices in those ranges.
PSF_SIGMA_XY_MM_RANGE = (0.4, 0.6)
PSF_SIGMA_Z_MM_RANGE = (0.9, 1.6)
#: T1 and T1ce are usually 3D acquisitions of ~1 mm: their slice profile is thin
PSF_SIGMA_Z_3D_MM_RANGE = (0.4, 0.7)
PSF_3D_SEQUENCES = ("t1n", "t1c")
#: noise of each sequence relative to ``PhantomParams.noise`` (FLAIR's). The real panel's
#: normal brain is rougher on T1ce and much rougher on T2 (mean |Laplacian of z| 0.71 and
#: 1.55 z/mm^2 at 1 mm against FLAIR's 0.59; v3 gave 0.41 and 0.30). T1ce reaches it with
#: the thin 3D slice profile alone; on T2 noise that reached it (x9-11) made a salt-and-
#: pepper image no scanner gives, since the real T2's roughness is sharp anatomy (sulcal
#: CSF) that the smooth template lacks: x3 is a compromise, and T2 stays smoother than real
NOISE_FACTOR = {"t1n": 1.0, "t1c": 1.0, "t2w": 3.0, "t2f": 1.0}
#: correlation length (mm) of the bias field and of the random deformation
BIAS_LENGTH_MM = 90.0
DEFORMATION_LENGTH_MM = 40.0
#: int16 value of white matter (per sequence and case, drawn uniformly)
WM_GAIN_RANGE = (350.0, 650.0)


@dataclass(frozen=True)
class PhantomParams:
    shape: tuple[int, int, int] = (240, 240, 155)          # BraTS grid
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # mm
    tumour_volume_range: tuple[float, float] = (8_000.0, 300_000.0)  # whole tumour, mm^3: truncation
    tumour_volume_median_ml: float = TUMOUR_VOLUME_MEDIAN_ML            # log-normal median
    tumour_volume_log_std: float = TUMOUR_VOLUME_LOG_STD                # log-normal sigma
    deformation_mm: float = 3.0          # std of the smooth random displacement
    rotation_deg: float = 4.0            # std of the rotation about each axis
    scale_jitter: float = 0.03           # std of the per-axis scale (volume std ~9%, Allen et al. 2002)
    # Gaussian noise std relative to white matter (= 1) of a 1 mm voxel before the PSF; a
    # coarser voxel averages several, so its noise falls with sqrt(voxel volume). Chosen so
    # that the normal brain's mean |Laplacian| at 1 mm lands near the real case's 0.59
    # z/mm^2 (design choice checked against that case). In the brain the signal is far
    # above the noise, where Rician noise is Gaussian.
    noise: float = 0.085
    bias: float = 0.08                   # std of the log bias field
    version: int = PHANTOM_VERSION


@dataclass
class PhantomSubject:
    """One phantom subject: the four sequences (int16, keyed by ``SEQUENCES``), the
    segmentation (uint8, labels 0-3) and the affine they share; ``tissue`` (brain, csf,
    gm, wm partial volumes on the output grid) when asked for."""
    images: dict
    seg: np.ndarray
    affine: np.ndarray
    tissue: dict | None = None

    @property
    def flair(self) -> np.ndarray:
        return self.images[FLAIR]


@lru_cache(maxsize=1)
def _template():
    """Brain mask, GM and WM probability maps of MNI152 2009 (1 mm) and their affine."""
    from nilearn import datasets

    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    brain = mask_img.get_fdata(dtype=np.float32)
    # the GM map spills outside the brain mask; keep the brain only
    gm, wm = gm * brain, wm * brain
    return brain, gm, wm, np.asarray(mask_img.affine, dtype=np.float64)


@lru_cache(maxsize=1)
def template_scale() -> float:
    """Isotropic factor that takes the MNI152 template's tissue volume to ``ADULT_BRAIN_TISSUE_ML``."""
    _, gm, wm, aff = _template()
    tissue_ml = float(gm.sum() + wm.sum()) * abs(np.linalg.det(aff[:3, :3])) / 1000.0
    return float((ADULT_BRAIN_TISSUE_ML / tissue_ml) ** (1 / 3))


# -- smooth random fields ----------------------------------------------------------------

def _bspline3(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    return np.where(t < 1, 2 / 3 - t ** 2 + t ** 3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


class _SmoothNoise:
    """A smooth Gaussian random field of unit variance on an output grid: a cubic B-spline
    with i.i.d. normal coefficients every ``length_mm``, evaluated separably (one basis
    matrix per axis), so a field costs a few matrix products and can be evaluated on a
    sub-box or a strided grid with the same coefficients."""

    def __init__(self, rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float],
                 length_mm: float, n: int = 1):
        self.bases = []
        for size, step in zip(shape, spacing):
            x = np.arange(int(size)) * float(step) / float(length_mm)
            n_ctrl = int(np.ceil(x[-1] if len(x) else 0.0)) + 4
            w = _bspline3(x[:, None] + 1 - np.arange(n_ctrl)[None, :])
            w /= np.sqrt((w ** 2).sum(axis=1, keepdims=True))        # unit variance everywhere
            self.bases.append(w.astype(np.float32))
        self.coef = rng.standard_normal((n, *(b.shape[1] for b in self.bases)), dtype=np.float32)

    def __call__(self, box: Sequence[slice] | None = None, k: int = 0) -> np.ndarray:
        """The field on ``box`` (slices of the output grid; default all of it), component ``k``."""
        box = box or (slice(None),) * 3
        out = self.coef[k]
        for axis, (basis, sl) in enumerate(zip(self.bases, box)):
            b = basis[sl]
            used = np.flatnonzero(np.any(b != 0, axis=0))       # control points that reach the box
            b, out = b[:, used[0]: used[-1] + 1], np.take(out, np.arange(used[0], used[-1] + 1), axis=axis)
            out = np.moveaxis(np.tensordot(b, out, axes=(1, axis)), 0, axis)
        return np.ascontiguousarray(out, dtype=np.float32)


def _rotation(rng: np.random.Generator, std_deg: float) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.normal(0.0, std_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def output_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """BraTS-like LPS voxel axes: x runs right-to-left, y anterior-to-posterior, z up."""
    sx, sy, sz = spacing
    aff = np.diag([-sx, -sy, sz, 1.0])
    aff[:3, 3] = [sx * (shape[0] - 1) / 2, sy * (shape[1] - 1) / 2, -sz * (shape[2] - 1) / 2]
    return aff


def design_volume_range_ml(params: PhantomParams = PhantomParams(), coverage: float = 0.9) -> tuple[float, float]:
    """The central ``coverage`` range (ml) of the phantom's whole-tumour volume distribution
    before truncation (default: its 5th and 95th percentiles)."""
    from scipy.special import ndtri

    z = float(ndtri(0.5 + coverage / 2))
    m, s = np.log(params.tumour_volume_median_ml), params.tumour_volume_log_std
    return float(np.exp(m - z * s)), float(np.exp(m + z * s))


def draw_tumour_volume_mm3(rng: np.random.Generator, params: PhantomParams) -> float:
    """One whole-tumour volume (mm^3): log-normal (median ``tumour_volume_median_ml``, log-std
    ``tumour_volume_log_std``) truncated to ``tumour_volume_range`` by inverse-CDF sampling,
    so one uniform draw gives one volume inside the range."""
    from scipy.special import ndtr, ndtri

    mu, sigma = np.log(params.tumour_volume_median_ml * 1000.0), float(params.tumour_volume_log_std)
    lo, hi = (float(v) for v in params.tumour_volume_range)
    if not 0 < lo <= hi:
        raise ValueError(f"tumour_volume_range must satisfy 0 < low <= high, got {params.tumour_volume_range}")
    if sigma <= 0:
        return float(np.clip(np.exp(mu), lo, hi))
    c_lo, c_hi = ndtr((np.log(lo) - mu) / sigma), ndtr((np.log(hi) - mu) / sigma)
    u = rng.uniform(c_lo, c_hi)
    return float(np.clip(np.exp(mu + sigma * ndtri(u)), lo, hi))


# -- the subject -----------------------------------------------------------------------------

def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (1 + int(np.argmax(sizes)))


def _component_touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The connected components of ``mask`` that hold a voxel of ``seed``."""
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    keep = np.unique(lab[seed & mask])
    return np.isin(lab, keep[keep > 0])


def _tumour(rng: np.random.Generator, shape, spacing, centre_vox, volume_mm3, brain, wm):
    """Labels of the tumour around ``centre_vox`` in a box of the output grid.

    Returns ``(box, seg_box, fields)``: ``fields`` holds what the contrast needs
    (distance to the core, the oedema's reach, the box's radial unit vectors)."""
    from scipy import ndimage

    voxel_mm3 = float(np.prod(spacing))
    radius = (3 * volume_mm3 / (4 * np.pi)) ** (1 / 3)
    core_share = rng.uniform(*CORE_SHARE_RANGE)
    core_mm3 = core_share * volume_mm3
    r_core = (3 * core_mm3 / (4 * np.pi)) ** (1 / 3)

    half = np.ceil((2.6 * radius + 6.0) / spacing).astype(int)
    c = np.round(centre_vox).astype(int)
    lo, hi = np.maximum(c - half, 0), np.minimum(c + half + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    axes = [(np.arange(a, b) - cv) * sp for a, b, cv, sp in zip(lo, hi, centre_vox, spacing)]
    rx, ry, rz = np.meshgrid(*[a.astype(np.float32) for a in axes], indexing="ij", sparse=True)
    dist = np.sqrt(rx ** 2 + ry ** 2 + rz ** 2) + np.float32(1e-3)
    inside = brain[box] > 0.5
    wm_box = wm[box]

    # core: a sum of Gaussian lobes, roughened by smooth noise, thresholded to its volume
    n_lobes = int(rng.integers(CORE_LOBES_RANGE[0], CORE_LOBES_RANGE[1] + 1))
    offsets = rng.normal(0.0, CORE_LOBE_OFFSET * r_core, size=(n_lobes, 3))
    offsets[0] = 0.0
    widths = r_core * rng.uniform(*CORE_LOBE_WIDTH_RANGE, n_lobes)
    weights = rng.uniform(0.6, 1.0, n_lobes)
    blob = np.zeros(dist.shape, np.float32)
    for off, wd, wt in zip(offsets, widths, weights):
        blob += np.float32(wt) * np.exp(-((rx - off[0]) ** 2 + (ry - off[1]) ** 2 + (rz - off[2]) ** 2)
                                        / np.float32(2 * wd ** 2))
    rough = _SmoothNoise(rng, shape, spacing, max(CORE_ROUGHNESS_LENGTH * r_core, 3.0))
    blob *= 1 + np.float32(rng.uniform(*CORE_ROUGHNESS_RANGE)) * rough(box)
    n_core = max(1, int(round(core_mm3 / voxel_mm3)))
    vals = blob[inside]
    if not len(vals):
        raise RuntimeError("phantom: tumour centre outside the brain")
    thr = np.partition(vals, len(vals) - min(n_core, len(vals)))[len(vals) - min(n_core, len(vals))]
    core = _largest_component((blob >= thr) & inside)

    # oedema: a voxel is tumour if its distance to the core is below the local reach,
    # reach = T0 * (WM floor .. 1) * exp(lobulation noise + eccentricity), T0 set by the volume
    d_core = ndimage.distance_transform_edt(~core, sampling=spacing).astype(np.float32)
    lob_sigma = rng.uniform(*OEDEMA_LOBULATION_RANGE)
    lob = [_SmoothNoise(rng, shape, spacing, length) for length in OEDEMA_LOBE_LENGTH_MM]
    log_reach = np.float32(lob_sigma) * (np.float32(0.88) * lob[0](box) + np.float32(0.47) * lob[1](box))
    u = _unit_vector(rng)
    cos_u = (rx * u[0] + ry * u[1] + rz * u[2]) / dist
    log_reach += np.float32(rng.uniform(*OEDEMA_ECCENTRICITY_RANGE)) * cos_u
    shape_reach = (OEDEMA_WM_FLOOR + (1 - OEDEMA_WM_FLOOR) * np.clip(wm_box, 0, 1)) * np.exp(log_reach)
    cover = np.ones_like(dist)
    exposed = rng.random() < CORE_EXPOSED_PROBABILITY
    exposed_share = rng.uniform(*CORE_EXPOSED_SHARE_RANGE)
    v = _unit_vector(rng)
    if exposed:       # a cone of solid-angle share ``exposed_share`` around v without oedema
        cos_v = (rx * v[0] + ry * v[1] + rz * v[2]) / dist
        cover = np.clip((1 - 2 * exposed_share - cos_v) / 0.1, 0.0, 1.0).astype(np.float32)
    min_reach = max(OEDEMA_MIN_REACH_MM, 1.05 * float(max(spacing)))
    # per voxel, the least T0 that takes it into the tumour; T0 = the n-th smallest
    with np.errstate(divide="ignore", invalid="ignore"):
        t_crit = np.where(d_core <= cover * min_reach, 0.0, d_core / (cover * shape_reach)).astype(np.float32)
    t_crit[~np.isfinite(t_crit)] = np.inf
    t_crit[core] = 0.0
    cand = t_crit[inside]
    n_wt = min(max(int(round(volume_mm3 / voxel_mm3)), int(core.sum())), len(cand))
    t0 = float(np.partition(cand, n_wt - 1)[n_wt - 1]) if n_wt > 0 else 0.0
    wt = (t_crit <= t0) & inside
    wt = _component_touching(wt, core)
    reach = cover * np.maximum(np.float32(t0) * shape_reach, np.float32(min_reach))

    # necrosis: core voxels deeper than a patchy, off-centre rim of enhancing tumour
    necrosis = np.zeros_like(core)
    if rng.random() < NECROSIS_PROBABILITY:
        nec_share = rng.uniform(*NECROSIS_SHARE_RANGE)
        depth = ndimage.distance_transform_edt(core, sampling=spacing).astype(np.float32)
        rim_noise = _SmoothNoise(rng, shape, spacing, max(0.6 * r_core, 4.0))
        u_e = _unit_vector(rng)
        log_rim = (np.float32(rng.uniform(*ENHANCING_PATCHINESS_RANGE)) * rim_noise(box)
                   + np.float32(rng.uniform(*ENHANCING_ECCENTRICITY_RANGE))
                   * (rx * u_e[0] + ry * u_e[1] + rz * u_e[2]) / dist)
        score = depth / np.exp(log_rim)
        n_nec = int(round(nec_share * core.sum()))
        if n_nec > 0:
            cv = score[core]
            thr_n = np.partition(cv, len(cv) - n_nec)[len(cv) - n_nec]
            necrosis = core & (score >= thr_n)
    # gaps in the enhancing wall: where smooth noise is highest, the rim does not enhance
    enhancing = core & ~necrosis
    gap_noise = _SmoothNoise(rng, shape, spacing, ENHANCING_GAP_LENGTH_MM)(box)
    n_gap = int(round(rng.uniform(*ENHANCING_GAP_SHARE_RANGE) * enhancing.sum()))
    if 0 < n_gap < enhancing.sum():
        gv = gap_noise[enhancing]
        necrosis |= enhancing & (gap_noise >= np.partition(gv, len(gv) - n_gap)[len(gv) - n_gap])

    seg_box = np.zeros(dist.shape, np.uint8)
    seg_box[wt] = OEDEMA
    seg_box[core] = ENHANCING
    seg_box[necrosis] = NECROSIS
    satellites = _satellites(rng, seg_box, inside, (rx, ry, rz), radius, spacing)
    fields = {"d_core": d_core, "reach": reach, "rx": rx, "ry": ry, "rz": rz, "dist": dist,
              "satellites": satellites}
    return box, seg_box, fields


def _satellites(rng: np.random.Generator, seg_box: np.ndarray, inside: np.ndarray, r, radius: float,
                spacing) -> np.ndarray:
    """Add satellite lesions to ``seg_box`` in place (``SATELLITE_*``): small roughly round
    lesions of oedema, around an enhancing core in some, beyond the main tumour and apart
    from it (no 26-neighbour of it), inside the brain. Returns their whole-tumour mask."""
    from scipy import ndimage

    out = np.zeros(seg_box.shape, bool)
    if rng.random() >= SATELLITE_PROBABILITY:
        return out
    voxel_mm3 = float(np.prod(spacing))
    main = seg_box > 0
    near_main = ndimage.binary_dilation(main, structure=np.ones((3, 3, 3), bool), iterations=2)
    volume = float(main.sum()) * voxel_mm3
    for _ in range(int(rng.integers(SATELLITE_COUNT_RANGE[0], SATELLITE_COUNT_RANGE[1] + 1))):
        r_sat = (3 * rng.uniform(*SATELLITE_VOLUME_SHARE_RANGE) * volume / (4 * np.pi)) ** (1 / 3)
        r_sat = max(r_sat, 1.0 * float(max(spacing)))
        u = _unit_vector(rng)
        c = u * (radius + rng.uniform(*SATELLITE_GAP_MM_RANGE) + r_sat)
        d2 = (r[0] - np.float32(c[0])) ** 2 + (r[1] - np.float32(c[1])) ** 2 + (r[2] - np.float32(c[2])) ** 2
        lesion = (d2 <= np.float32(r_sat ** 2)) & inside & ~near_main
        if lesion.sum() < 2:
            continue
        out |= lesion
        seg_box[lesion] = OEDEMA
        if rng.random() < SATELLITE_CORE_PROBABILITY:
            seg_box[lesion & (d2 <= np.float32((0.5 * r_sat) ** 2))] = ENHANCING
    return out


def make_phantom_subject(index: int, seed: int = 0, params: PhantomParams = PhantomParams(),
                         with_tissue: bool = False) -> PhantomSubject:
    """The four sequences, the labels and the affine of phantom case ``index`` (and its
    tissue maps with ``with_tissue``, for checks)."""
    from scipy import ndimage
    from scipy.special import expit

    rng = np.random.default_rng([int(seed), int(index), PHANTOM_VERSION])
    brain_t, gm_t, wm_t, aff_t = _template()
    shape = tuple(int(s) for s in params.shape)
    spacing = np.asarray(params.spacing, dtype=np.float64)
    out_aff = output_affine(shape, spacing)

    # -- 1. geometry: output voxel -> world (mm) -> subject jitter and scale -> template voxel
    centre_t = aff_t[:3, :3] @ (np.argwhere(brain_t > 0.5).mean(axis=0)) + aff_t[:3, 3]
    lin = _rotation(rng, params.rotation_deg) @ np.diag(1 + rng.normal(0, params.scale_jitter, 3)) / template_scale()
    shift = centre_t + rng.normal(0, 2.0, 3)
    to_template = np.linalg.inv(aff_t)
    m = (to_template[:3, :3] @ lin).astype(np.float32)
    t = (to_template[:3, :3] @ shift + to_template[:3, 3]).astype(np.float32)
    deform = _SmoothNoise(rng, shape, spacing, DEFORMATION_LENGTH_MM, n=3)

    def world_coords(step: int = 1) -> np.ndarray:
        idx = [np.arange(0, s, step, dtype=np.float32) for s in shape]
        box = tuple(slice(None, None, step) for _ in shape)
        w = np.empty((3, *(len(i) for i in idx)), np.float32)
        for r in range(3):
            w[r] = (out_aff[r, 0] * idx[0][:, None, None] + out_aff[r, 1] * idx[1][None, :, None]
                    + out_aff[r, 2] * idx[2][None, None, :] + out_aff[r, 3]).astype(np.float32)
            w[r] += np.float32(params.deformation_mm) * deform(box, r)
        return w

    def sample(maps, w):
        coords = np.tensordot(m, w, axes=1) + t[:, None, None, None]
        return [ndimage.map_coordinates(mp, coords, order=1, mode="constant", cval=0.0, prefilter=False)
                for mp in maps]

    # tumour centre: white matter at a depth that lets the tumour reach towards the cortex
    # (TUMOUR_DEPTH_RANGE), found on a ~4 mm grid; the deepest white matter if none is there
    step = max(1, int(round(4.0 / float(spacing.min()))))
    brain_c, wm_c = sample((brain_t, wm_t), world_coords(step))
    depth_mm = ndimage.distance_transform_edt(brain_c > 0.5, sampling=spacing * step)
    volume_mm3 = draw_tumour_volume_mm3(rng, params)
    radius = (3 * volume_mm3 / (4 * np.pi)) ** (1 / 3)
    want = max(TUMOUR_DEPTH_MIN_MM, rng.uniform(*TUMOUR_DEPTH_RANGE) * radius)
    tol = max(3.0, float(spacing.max()) * step)
    ok = (wm_c > 0.5) & (np.abs(depth_mm - min(want, 0.8 * depth_mm.max())) <= tol)
    if not ok.any():
        ok = (wm_c > 0.5) & (depth_mm > min(0.6 * radius + 6.0, 0.5 * depth_mm.max()))
    if not ok.any():
        ok = brain_c > 0.5
    candidates = np.argwhere(ok)
    centre_vox = (candidates[rng.integers(len(candidates))] * step).astype(np.float64)
    centre_w = out_aff[:3, :3] @ centre_vox + out_aff[:3, 3]

    # mass effect: sample the template closer to the tumour centre near it (pushes outwards)
    world = world_coords(1)
    d = world - centre_w[:, None, None, None].astype(np.float32)
    push = np.float32(rng.uniform(*MASS_EFFECT_RANGE)) * np.exp(
        -(d ** 2).sum(axis=0) / np.float32(2 * (1.3 * radius) ** 2))
    world -= d * push
    del d, push
    brain, gm, wm = sample((brain_t, gm_t, wm_t), world)
    del world
    in_brain = brain > 0.5

    # -- 2. tumour labels
    box, seg_box, f = _tumour(rng, shape, spacing, centre_vox, volume_mm3, brain, wm)
    seg = np.zeros(shape, np.uint8)
    seg[box] = seg_box
    seg[~in_brain] = 0

    # -- 3. contrast: what the sequences share
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    texture = 1 + np.float32(BRAIN_TEXTURE) * _SmoothNoise(rng, shape, spacing, BRAIN_TEXTURE_LENGTH_MM)()
    sig = PARTIAL_VOLUME_MM / spacing
    w_nec = ndimage.gaussian_filter((seg_box == NECROSIS).astype(np.float32), sig)
    w_enh = ndimage.gaussian_filter((seg_box == ENHANCING).astype(np.float32), sig)
    w_core = np.clip(w_nec + w_enh, 0.0, 1.0)
    edge = np.float32(rng.uniform(*EDGE_WIDTH_MM_RANGE))
    soft = expit((f["reach"] - f["d_core"]) / edge).astype(np.float32)
    soft[brain[box] <= 0.5] = 0.0
    soft = np.maximum(soft, ndimage.gaussian_filter(f["satellites"].astype(np.float32), edge / spacing))
    w_oed = soft * (1 - w_core)
    alpha = w_core + w_oed * (1 - np.float32(rng.uniform(*CSF_SPARING_RANGE)) * csf[box])
    near = 1 - OEDEMA_NEAR_CORE_GAIN / 2 + OEDEMA_NEAR_CORE_GAIN * np.exp(-f["d_core"] / OEDEMA_NEAR_CORE_MM)
    tex_fields = [_SmoothNoise(rng, shape, spacing, length, n=len(SEQUENCES)) for length in TUMOUR_TEXTURE_LENGTH_MM]
    tex_z = rng.uniform(*TUMOUR_TEXTURE_Z_RANGE)
    vessel = np.exp(-(_SmoothNoise(rng, shape, spacing, VESSEL_LENGTH_MM)(box) / VESSEL_WIDTH) ** 2)
    vessel_z = rng.uniform(*VESSEL_Z_RANGE)
    psf_xy, psf_z, psf_z3d = (rng.uniform(*r) for r in (PSF_SIGMA_XY_MM_RANGE, PSF_SIGMA_Z_MM_RANGE,
                                                          PSF_SIGMA_Z_3D_MM_RANGE))
    # drawn from a stream of its own (seeded like the case's): late in the case's main stream
    # the draw came out far from uniform over the cases (15 of 40 below 0.2 at the small grid)
    cystic = np.random.default_rng([int(seed), int(index), PHANTOM_VERSION, 1]).random() < NECROSIS_CYSTIC_PROBABILITY
    speckle = _SmoothNoise(rng, shape, spacing, ENHANCING_SPECKLE_LENGTH_MM)(box)
    speckle_z = rng.uniform(*ENHANCING_SPECKLE_Z_RANGE)
    # white noise on a voxel of V mm^3 averages V voxels of 1 mm^3
    noise_std = params.noise / np.sqrt(float(np.prod(spacing)))
    sub = tuple(slice(None, None, 2) for _ in shape)

    images = {}
    for k, name in enumerate(SEQUENCES):
        c_csf, c_gm = (np.float32(rng.uniform(*TISSUE_CONTRAST[name][k])) for k in ("csf", "gm"))
        img = (c_csf * csf + c_gm * gm + wm) * texture
        ref = img[sub][in_brain[sub]]
        med, q1, q3 = np.percentile(ref, [50, 25, 75]) if len(ref) else (1.0, 0.75, 1.25)
        iqr = np.float32(max(q3 - q1, 1e-3))
        z = {r: rng.uniform(*TUMOUR_Z_RANGES[name][r]) for r in ("necrosis", "oedema", "enhancing")}
        if cystic:
            z["necrosis"] = rng.uniform(*NECROSIS_CYSTIC_Z_RANGES[name])
        level = (z["necrosis"] * w_nec + z["enhancing"] * w_enh + z["oedema"] * near * w_oed) / (w_core + w_oed + 1e-6)
        level = np.where(w_core + w_oed > 1e-4, level, z["oedema"] * near)
        tex = np.float32(tex_z) * (np.float32(0.8) * tex_fields[0](box, k) + np.float32(0.6) * tex_fields[1](box, k))
        streak = (1.0 if name == "t1c" else -1.0) * vessel_z * vessel
        if name == "t1c":                 # the enhancing tumour's speckle
            tex = tex + np.float32(speckle_z) * speckle * (w_enh / np.maximum(w_core + w_oed, 1e-6))
        tumour_signal = np.float32(med) + iqr * (level + tex + np.float32(streak))
        img[box] = (1 - alpha) * img[box] + alpha * tumour_signal
        img *= np.exp(np.float32(params.bias) * _SmoothNoise(rng, shape, spacing, BIAS_LENGTH_MM)())
        if noise_std > 0:
            img += np.float32(noise_std * NOISE_FACTOR[name]) * rng.standard_normal(shape, dtype=np.float32)
        psf = (psf_xy, psf_xy, psf_z3d if name in PSF_3D_SEQUENCES else psf_z)
        img = ndimage.gaussian_filter(img, np.asarray(psf) / spacing, truncate=3.0)
        gain = rng.uniform(*WM_GAIN_RANGE)
        out = np.clip(np.round(img * np.float32(gain)), 1, 32767).astype(np.int16)
        out[~in_brain] = 0          # skull-stripped; every brain voxel >= 1
        images[name] = out
    tissue = {"brain": brain, "csf": csf, "gm": gm, "wm": wm} if with_tissue else None
    return PhantomSubject(images, seg, out_aff, tissue)


def make_phantom_case(index: int, seed: int = 0, params: PhantomParams = PhantomParams()
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FLAIR int16, segmentation uint8 with labels 0-3, affine) of phantom case ``index``."""
    s = make_phantom_subject(index, seed, params)
    return s.flair, s.seg, s.affine


def phantom_case_id(index: int) -> str:
    return f"BraTS-GLI-{index:05d}-000"


def case_paths(folder: str | os.PathLike, case_id: str) -> dict[str, Path]:
    """Paths of a case's files in the BraTS 2023 layout: ``seg`` and one per sequence."""
    return case_files(folder, case_id, SEQUENCES)


def make_phantom_cohort(out_dir: str | os.PathLike, n_cases: int, seed: int = 0,
                        shape: Sequence[int] = (240, 240, 155),
                        spacing: Sequence[float] = (1.0, 1.0, 1.0),
                        tumour_volume_range: tuple[float, float] | None = None,
                        progress: bool = True, modalities: Sequence[str] = ("flair",), **params) -> list[Case]:
    """Write ``n_cases`` phantom subjects to ``out_dir`` (BraTS 2023 layout, four
    sequences and the labels); return the cases, holding the sequences of ``modalities``.

    Resumable: a case counts as finished when all five of its files exist (the FLAIR is
    written last); finished cases made with the same parameters are kept. A folder
    holding a cohort made with other parameters, or by another phantom version, is
    refused rather than overwritten, naming the fix.
    """
    from tqdm.auto import tqdm

    kw = dict(shape=tuple(int(s) for s in shape), spacing=tuple(float(s) for s in spacing), **params)
    if tumour_volume_range is not None:
        kw["tumour_volume_range"] = tuple(float(v) for v in tumour_volume_range)
    p = PhantomParams(**kw)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "phantom.json"
    record = {"generator": "sbldm.data.phantom", "seed": int(seed), "params": asdict(p)}
    if manifest.exists():
        old = json.loads(manifest.read_text())
        old_version = (old.get("params") or {}).get("version")
        if old_version != PHANTOM_VERSION:
            which = f"a version-{old_version}" if old_version is not None else "an unversioned"
            raise ValueError(f"{out} holds {which} phantom cohort ({manifest}) and this sbldm makes "
                             f"version {PHANTOM_VERSION}; remove {out} to regenerate it (then re-run the later "
                             "notebooks: what they trained on the old cohort is stale), or choose another folder")
        old_cmp = {k: old.get(k) for k in ("generator", "seed", "params")}
        if json.loads(json.dumps(record)) != old_cmp:
            raise ValueError(f"{out} already holds a phantom cohort made with other parameters "
                             f"({manifest}); choose another folder or remove it")
    for i in tqdm(range(n_cases), desc="phantom cohort", disable=not progress):
        cid = phantom_case_id(i)
        paths = case_paths(out, cid)
        if all(pth.is_file() for pth in paths.values()):
            continue
        s = make_phantom_subject(i, seed, p)
        save_case(out, cid, s.images, s.seg, s.affine)     # FLAIR last: with it, the case is finished
    n_total = max(n_cases, int(json.loads(manifest.read_text()).get("n_cases", 0)) if manifest.exists() else 0)
    atomic_write_json(manifest, {**record, "n_cases": n_total})
    wanted = {phantom_case_id(i) for i in range(n_cases)}
    return [c for c in find_cases(out, modalities=modalities) if c.case_id in wanted]
