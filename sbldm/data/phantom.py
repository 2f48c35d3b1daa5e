"""The phantom cohort: a BraTS-like data set made from real anatomy, so sbldm runs end to
end without downloading BraTS (DESIGN.md section 4).

Per subject, from nilearn's bundled MNI152 2009 template (brain mask, grey- and
white-matter probability maps):

1. geometry — an affine jitter (rotation, per-axis scale, shift) and a smooth random
   deformation map the subject's grid into template space;
2. tumour — a lobulated blob (a sum of Gaussians plus a smooth noise field, thresholded
   so that the whole tumour has a drawn volume) centred in white matter, with a core
   (enhancing rim, necrotic centre in large tumours) and surrounding oedema; the
   surrounding anatomy is pushed outwards (mass effect);
3. FLAIR-like contrast — CSF dark, grey matter brighter than white matter, oedema
   hyperintense, a multiplicative bias field, texture, Rician noise, zero outside the
   brain (BraTS volumes are skull-stripped).

Cases are written in the BraTS 2023 layout (``BraTS-GLI-XXXXX-000/...-t2f.nii.gz`` and
``...-seg.nii.gz`` with labels 0 background, 1 necrosis, 2 oedema, 3 enhancing), so the
real BraTS loader reads them. Case ``i`` depends only on ``(seed, i)``: the same seed
gives the same volumes, and a larger cohort extends a smaller one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from sbldm.data.cohort import Case, find_cases
from sbldm.io import atomic_write_json, save_nifti

PHANTOM_VERSION = 2   # 2: whole-tumour volumes log-normal around 60 ml (BraTS-like), was log-uniform 0.4-150 ml

# Whole-tumour (oedema + core) volume of the phantom's gliomas, in ml: log-normal with
# this median and log-standard deviation, truncated to ``tumor_volume_range``. Adult
# gliomas in the BraTS cohorts are large: the FLAIR-hyperintense whole tumour typically
# measures tens of ml up to a few hundred ml, a few percent of a ~1.3 l brain (Menze et
# al., "The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)", IEEE TMI 34(10),
# 2015; Bakas et al., "Advancing The Cancer Genome Atlas glioma MRI collections with
# expert segmentation labels and radiomic features", Sci. Data 4:170117, 2017). The
# median and spread below are our approximation of that range, not statistics fitted to
# BraTS (no BraTS labels ship with sbldm): with a BraTS folder, notebook 00's histogram
# shows the real distribution beside the phantom's.
TUMOR_VOLUME_MEDIAN_ML = 60.0
TUMOR_VOLUME_LOG_STD = 0.75          # 5th-95th percentile ~ 17-205 ml


@dataclass(frozen=True)
class PhantomParams:
    shape: tuple[int, int, int] = (240, 240, 155)          # BraTS grid
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # mm
    tumor_volume_range: tuple[float, float] = (8_000.0, 300_000.0)  # whole tumour, mm^3: truncation
    tumor_volume_median_ml: float = TUMOR_VOLUME_MEDIAN_ML            # log-normal median
    tumor_volume_log_std: float = TUMOR_VOLUME_LOG_STD                # log-normal sigma
    deformation_mm: float = 3.0          # std of the smooth random displacement
    rotation_deg: float = 4.0            # std of the rotation about each axis
    scale_jitter: float = 0.05           # std of the per-axis scale
    noise: float = 0.025                 # Rician noise, relative to white matter = 0.5
    bias: float = 0.12                   # std of the log bias field
    version: int = PHANTOM_VERSION


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


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], control: int, std: float,
                  n: int = 1) -> np.ndarray:
    """``n`` smooth random fields over ``shape``: cubic upsampling of a coarse Gaussian grid."""
    from scipy import ndimage

    coarse = rng.normal(0.0, std, size=(n, control, control, control)).astype(np.float32)
    zoom = [s / control for s in shape]
    return np.stack([ndimage.zoom(c, zoom, order=3, mode="nearest", grid_mode=True)[: shape[0], : shape[1], : shape[2]]
                     for c in coarse])


def _rotation(rng: np.random.Generator, std_deg: float) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.normal(0.0, std_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


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
    m, s = np.log(params.tumor_volume_median_ml), params.tumor_volume_log_std
    return float(np.exp(m - z * s)), float(np.exp(m + z * s))


def draw_tumor_volume_mm3(rng: np.random.Generator, params: PhantomParams) -> float:
    """One whole-tumour volume (mm^3): log-normal (median ``tumor_volume_median_ml``, log-std
    ``tumor_volume_log_std``) truncated to ``tumor_volume_range`` by inverse-CDF sampling,
    so one uniform draw gives one volume inside the range."""
    from scipy.special import ndtr, ndtri

    mu, sigma = np.log(params.tumor_volume_median_ml * 1000.0), float(params.tumor_volume_log_std)
    lo, hi = (float(v) for v in params.tumor_volume_range)
    if not 0 < lo <= hi:
        raise ValueError(f"tumor_volume_range must satisfy 0 < low <= high, got {params.tumor_volume_range}")
    if sigma <= 0:
        return float(np.clip(np.exp(mu), lo, hi))
    c_lo, c_hi = ndtr((np.log(lo) - mu) / sigma), ndtr((np.log(hi) - mu) / sigma)
    u = rng.uniform(c_lo, c_hi)
    return float(np.clip(np.exp(mu + sigma * ndtri(u)), lo, hi))


def make_phantom_case(index: int, seed: int = 0, params: PhantomParams = PhantomParams()
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FLAIR int16, segmentation uint8 with labels 0-3, affine) of phantom case ``index``."""
    from scipy import ndimage

    rng = np.random.default_rng([int(seed), int(index), PHANTOM_VERSION])
    brain_t, gm_t, wm_t, aff_t = _template()
    shape = tuple(int(s) for s in params.shape)
    spacing = np.asarray(params.spacing, dtype=np.float64)
    out_aff = output_affine(shape, spacing)

    # -- 1. geometry: output voxel -> world (mm, RAS) -> subject jitter -> template voxel
    centre_t = aff_t[:3, :3] @ (np.argwhere(brain_t > 0.5).mean(axis=0)) + aff_t[:3, 3]
    lin = _rotation(rng, params.rotation_deg) @ np.diag(1 + rng.normal(0, params.scale_jitter, 3))
    shift = centre_t + rng.normal(0, 2.0, 3)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    world = np.tensordot(out_aff[:3, :3].astype(np.float32), grid, axes=1) + out_aff[:3, 3, None, None, None].astype(np.float32)
    del grid
    control = max(4, int(round(max(np.asarray(shape) * spacing) / 40)))
    world += _smooth_field(rng, shape, control, params.deformation_mm, n=3)
    to_template = np.linalg.inv(aff_t)
    m = (to_template[:3, :3] @ lin).astype(np.float32)
    t = (to_template[:3, :3] @ shift + to_template[:3, 3]).astype(np.float32)

    def sample(maps, coords_world):
        coords = np.tensordot(m, coords_world, axes=1) + t[:, None, None, None]
        return [ndimage.map_coordinates(mp, coords, order=1, mode="constant", cval=0.0) for mp in maps]

    brain0, wm0 = sample((brain_t, wm_t), world)

    # -- 2. tumour: centre in white matter, away from the brain's edge
    depth_mm = ndimage.distance_transform_edt(brain0 > 0.5, sampling=spacing)
    volume_mm3 = draw_tumor_volume_mm3(rng, params)
    radius = (3 * volume_mm3 / (4 * np.pi)) ** (1 / 3)
    ok = (wm0 > 0.5) & (depth_mm > min(0.6 * radius + 4.0, 0.5 * depth_mm.max()))
    if not ok.any():
        ok = brain0 > 0.5
    candidates = np.argwhere(ok)
    centre_vox = candidates[rng.integers(len(candidates))].astype(np.float64)
    centre_w = out_aff[:3, :3] @ centre_vox + out_aff[:3, 3]

    # mass effect: sample the template closer to the tumour centre near it (pushes outwards)
    d = world - centre_w[:, None, None, None].astype(np.float32)
    r2 = (d ** 2).sum(axis=0)
    push = np.float32(rng.uniform(0.25, 0.5)) * np.exp(-r2 / np.float32(2 * (1.3 * radius) ** 2))
    world -= d * push
    del d, push
    brain, gm, wm = sample((brain_t, gm_t, wm_t), world)
    del world

    # lobulated blob: Gaussians around the centre plus smooth noise, in mm
    n_lobes = int(rng.integers(2, 7))
    offsets = rng.normal(0, 0.55 * radius, size=(n_lobes, 3))
    offsets[0] = 0.0
    sigmas = radius * rng.uniform(0.35, 0.8, n_lobes)
    weights = rng.uniform(0.6, 1.0, n_lobes)
    half = np.ceil(2.6 * radius / spacing).astype(int) + 2
    lo = np.maximum(centre_vox.astype(int) - half, 0)
    hi = np.minimum(centre_vox.astype(int) + half + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    pts = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")).astype(np.float64)
    rel = (pts - centre_vox[:, None, None, None]) * spacing[:, None, None, None]
    g = np.zeros(rel.shape[1:])
    for off, sig, wgt in zip(offsets, sigmas, weights):
        g += wgt * np.exp(-((rel - off[:, None, None, None]) ** 2).sum(axis=0) / (2 * sig ** 2))
    rough = _smooth_field(rng, g.shape, 7, rng.uniform(0.15, 0.35))[0]
    g = g * (1 + rough)
    inside = brain[box] > 0.5
    n_target = max(1, int(round(volume_mm3 / np.prod(spacing))))
    vals = np.sort(g[inside])[::-1]
    if len(vals) == 0:
        raise RuntimeError(f"phantom case {index}: tumour centre outside the brain")
    thr = vals[min(n_target, len(vals)) - 1]
    wt = (g >= thr) & inside
    wt_vals = g[wt]
    core_frac = rng.uniform(0.25, 0.6)
    thr_core = np.quantile(wt_vals, 1 - core_frac)
    core = wt & (g >= thr_core)
    has_necrosis = volume_mm3 > 8000 and rng.random() < 0.8
    thr_nec = np.quantile(wt_vals, 1 - core_frac * rng.uniform(0.3, 0.6)) if has_necrosis else np.inf
    necrosis = wt & (g >= thr_nec)

    seg = np.zeros(shape, np.uint8)
    seg_box = np.zeros(g.shape, np.uint8)
    seg_box[wt] = 2
    seg_box[core] = 3
    seg_box[necrosis] = 1
    seg[box] = seg_box

    # -- 3. FLAIR-like contrast
    jitter = rng.normal(1.0, 0.06, 4)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    flair = (0.10 * jitter[0]) * csf + (0.62 * jitter[1]) * gm + (0.50 * jitter[2]) * wm
    texture = 1 + _smooth_field(rng, shape, max(6, control * 3), 0.04)[0]
    flair *= texture
    # tumour: soft edge (partial volume) from the blob value around the threshold
    edge = np.clip((g - thr) / (0.25 * thr + 1e-9) + 0.5, 0.0, 1.0) * inside
    tumour_signal = np.where(necrosis, 0.45, np.where(core, 0.85, 1.0)) * (0.95 * jitter[3])
    tumour_signal = tumour_signal * (1 + 0.08 * _smooth_field(rng, g.shape, 6, 1.0)[0])
    flair[box] = (1 - edge) * flair[box] + edge * tumour_signal
    flair *= np.exp(_smooth_field(rng, shape, 3, params.bias)[0])
    n1, n2 = rng.normal(0, params.noise, size=(2, *shape)).astype(np.float32)
    flair = np.sqrt((flair + n1) ** 2 + n2 ** 2)
    flair[brain < 0.5] = 0.0          # skull-stripped
    seg[brain < 0.5] = 0
    flair_i16 = np.clip(np.round(flair * 800.0), 0, 32767).astype(np.int16)
    return flair_i16, seg, out_aff


def phantom_case_id(index: int) -> str:
    return f"BraTS-GLI-{index:05d}-000"


def make_phantom_cohort(out_dir: str | os.PathLike, n_cases: int, seed: int = 0,
                        shape: Sequence[int] = (240, 240, 155),
                        spacing: Sequence[float] = (1.0, 1.0, 1.0),
                        tumor_volume_range: tuple[float, float] | None = None,
                        progress: bool = True, **params) -> list[Case]:
    """Write ``n_cases`` phantom subjects to ``out_dir`` (BraTS 2023 layout); return the cases.

    Resumable: cases already on disk from the same parameters are kept; a folder holding a
    cohort made with other parameters is refused rather than overwritten.
    """
    from tqdm.auto import tqdm

    kw = dict(shape=tuple(int(s) for s in shape), spacing=tuple(float(s) for s in spacing), **params)
    if tumor_volume_range is not None:
        kw["tumor_volume_range"] = tuple(float(v) for v in tumor_volume_range)
    p = PhantomParams(**kw)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "phantom.json"
    record = {"generator": "sbldm.data.phantom", "seed": int(seed), "params": asdict(p)}
    if manifest.exists():
        old = json.loads(manifest.read_text())
        old_cmp = {k: old.get(k) for k in ("generator", "seed", "params")}
        if json.loads(json.dumps(record)) != old_cmp:
            raise ValueError(f"{out} already holds a phantom cohort made with other parameters "
                             f"({manifest}); choose another folder or remove it")
    for i in tqdm(range(n_cases), desc="phantom cohort", disable=not progress):
        cid = phantom_case_id(i)
        folder = out / cid
        image_path, seg_path = folder / f"{cid}-t2f.nii.gz", folder / f"{cid}-seg.nii.gz"
        if image_path.is_file() and seg_path.is_file():
            continue
        flair, seg, aff = make_phantom_case(i, seed, p)
        save_nifti(seg_path, seg, aff)
        save_nifti(image_path, flair, aff)      # image last: its presence marks a finished case
    n_total = max(n_cases, int(json.loads(manifest.read_text()).get("n_cases", 0)) if manifest.exists() else 0)
    atomic_write_json(manifest, {**record, "n_cases": n_total})
    wanted = {phantom_case_id(i) for i in range(n_cases)}
    return [c for c in find_cases(out) if c.case_id in wanted]
