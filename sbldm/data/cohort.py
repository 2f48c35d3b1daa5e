"""Data layer: BraTS discovery and loading, splits, the prepared cache, datasets, nnU-Net export.

The data flow starts here: NIfTI volumes on disk -> ``load_case`` -> (image, label map)
arrays at the model's ``volume_shape`` -> a cache of ``.npy`` arrays -> slice and volume
datasets for the two training stages, in model space (``to_model_space``).

Array convention everywhere in sbldm: nibabel voxel order ``(x, y, z)``, axial slices
along the last axis; images float32 in [-1, 1]; masks uint8 in {0, 1} (whole tumour);
label maps uint8 in {0, 1 necrosis, 2 oedema, 3 enhancing} (``sbldm.data.tumour``).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from sbldm.data.tumour import ENHANCING, FeatureNormalizer, labels_from_regions, regions_from_labels, tumour_features
from sbldm.io import atomic_save_npy, atomic_write_json, save_nifti

#: labels a BraTS segmentation may hold (2021: 0,1,2,4; 2023: 0,1,2,3)
BRATS_LABELS = frozenset({0, 1, 2, 3, 4})
#: BraTS 2021's enhancing-tumour label, mapped to sbldm's (and BraTS 2023's) 3 at load time
BRATS2021_ENHANCING = 4

LAYOUTS = {
    "BraTS 2020": "BraTS20_Training_XXX/BraTS20_Training_XXX_{t1,t1ce,t2,flair}.nii.gz + BraTS20_Training_XXX_seg.nii.gz",
    "BraTS 2021": "BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair}.nii.gz + BraTS2021_XXXXX_seg.nii.gz",
    "BraTS 2023": "BraTS-GLI-XXXXX-XXX/BraTS-GLI-XXXXX-XXX-{t1n,t1c,t2w,t2f}.nii.gz + BraTS-GLI-XXXXX-XXX-seg.nii.gz",
}
#: the readers' names of the four sequences (sbldm names them as BraTS 2023 does)
SEQUENCE_NAMES = {"t1n": "T1", "t1c": "T1ce", "t2w": "T2", "t2f": "FLAIR"}
#: each naming scheme's file suffix of every sequence and of the segmentation
_SUFFIXES = {
    "BraTS 2020": {"t1n": "_t1", "t1c": "_t1ce", "t2w": "_t2", "t2f": "_flair", "seg": "_seg"},
    "BraTS 2021": {"t1n": "_t1", "t1c": "_t1ce", "t2w": "_t2", "t2f": "_flair", "seg": "_seg"},
    "BraTS 2023": {"t1n": "-t1n", "t1c": "-t1c", "t2w": "-t2w", "t2f": "-t2f", "seg": "-seg"},
}
_PATTERNS = (
    # (folder-name regex, naming scheme); each file as .nii.gz or .nii
    (re.compile(r"^BraTS20_(Training|Validation)_\d+$"), "BraTS 2020"),
    (re.compile(r"^BraTS20\d\d_\d+$"), "BraTS 2021"),
    (re.compile(r"^BraTS-[A-Z]+-\d+-\d+$"), "BraTS 2023"),
)
_EXTENSIONS = (".nii.gz", ".nii")


def sequence_names(modalities: Sequence[str]) -> tuple[str, ...]:
    """``modalities`` (``cfg.modalities``) by their BraTS 2023 names: "flair" is "t2f"."""
    from sbldm.config import SEQUENCE_ALIASES

    return tuple(SEQUENCE_ALIASES.get(m, m) for m in modalities)


def primary_sequence(modalities: Sequence[str]) -> str:
    """The sequence the FLAIR-reading stages take from a multi-sequence case: FLAIR when it
    was loaded (the paper's sequence), else the first."""
    names = sequence_names(modalities)
    return "t2f" if "t2f" in names else names[0]


def _nifti(folder: Path, stem: str) -> Path:
    """``folder/stem.nii.gz`` or ``folder/stem.nii``, whichever exists (``.nii.gz`` if neither)."""
    for ext in _EXTENSIONS:
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    return folder / f"{stem}{_EXTENSIONS[0]}"


class DataError(ValueError):
    """A data file is missing, unreadable or not what sbldm expects; names file and problem."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


@dataclass(frozen=True)
class Case:
    case_id: str
    image_path: Path                 # the primary sequence's file (FLAIR unless it was not asked for)
    mask_path: Path
    scheme: str = ""                 # the naming scheme: "BraTS 2020", "BraTS 2021" or "BraTS 2023"
    #: every requested sequence's file, ((BraTS 2023 name, path), ...) in the requested order;
    #: empty: the primary image only
    sequences: tuple[tuple[str, Path], ...] = ()


def find_cases(root: str | os.PathLike, skip_unlabelled: bool = False,
               modalities: Sequence[str] = ("flair",)) -> list[Case]:
    """All cases under ``root`` laid out as BraTS 2020, 2021 or 2023 (``.nii.gz`` or
    ``.nii``), sorted by ``case_id``; the schemes may be mixed in one folder. Each case
    holds the files of the sequences in ``modalities`` (``cfg.modalities``).

    A case folder missing a requested sequence raises ``DataError`` naming the file; so
    does one without a segmentation, unless ``skip_unlabelled`` (validation folders ship
    without labels): those cases are left out and listed in a warning. A folder holding
    no case at all raises ``DataError`` listing the layouts looked for.
    """
    import warnings

    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "not a directory")
    wanted = sequence_names(modalities)
    primary = primary_sequence(modalities)
    cases, skipped = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for pattern, scheme in _PATTERNS:
            if pattern.match(folder.name):
                suffix = _SUFFIXES[scheme]
                files = {m: _nifti(folder, f"{folder.name}{suffix[m]}") for m in wanted}
                mask = _nifti(folder, f"{folder.name}{suffix['seg']}")
                for m in wanted:
                    if not files[m].is_file():
                        raise DataError(files[m], f"missing {SEQUENCE_NAMES[m]} image file of case {folder.name}")
                if not mask.is_file():
                    if skip_unlabelled:
                        skipped.append(folder.name)
                        break
                    raise DataError(mask, f"missing segmentation file of case {folder.name} "
                                          "(skip_unlabelled=True leaves such cases out)")
                sequences = tuple((m, files[m]) for m in wanted) if len(wanted) > 1 else ()
                cases.append(Case(folder.name, files[primary], mask, scheme, sequences))
                break
    if skipped:
        warnings.warn(f"{len(skipped)} case(s) without a segmentation left out: {', '.join(skipped)}",
                      UserWarning, stacklevel=2)
    if not cases:
        layouts = "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items())
        raise DataError(root, f"no labelled cases found; looked for the layouts {layouts}")
    return sorted(cases, key=lambda c: c.case_id)


def case_files(root: str | os.PathLike, case_id: str, modalities: Sequence[str] = ("t1n", "t1c", "t2w", "t2f")
               ) -> dict[str, Path]:
    """The files of case ``case_id`` in the BraTS 2023 layout under ``root``: ``seg`` and
    one per sequence (``<root>/<id>/<id>-<sequence>.nii.gz``)."""
    folder = Path(root) / case_id
    suffix = _SUFFIXES["BraTS 2023"]
    return {"seg": folder / f"{case_id}{suffix['seg']}.nii.gz",
            **{m: folder / f"{case_id}{suffix[m]}.nii.gz" for m in sequence_names(modalities)}}


def save_case(root: str | os.PathLike, case_id: str, images: dict, labels: np.ndarray,
              affine: np.ndarray | None = None) -> dict[str, Path]:
    """Write one case in the BraTS 2023 layout (``case_files``): every sequence of ``images``
    (keyed by BraTS 2023 name or "flair") and the label map (sbldm's labels are BraTS
    2023's), each atomically, the FLAIR last so that a case with its FLAIR is complete.
    ``find_cases`` and ``load_case`` read it back. Returns the paths written."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", str(case_id)):
        raise ValueError(f"case id {case_id!r} may hold letters, digits, '_' and '-' only")
    names = sequence_names(list(images))
    paths = case_files(root, case_id, names)
    labels = np.asarray(labels)
    for name, image in zip(names, images.values()):
        if np.shape(image) != labels.shape:
            raise ValueError(f"case {case_id}: {SEQUENCE_NAMES[name]} shape {np.shape(image)} differs from the "
                             f"label map's {labels.shape}")
    save_nifti(paths["seg"], labels.astype(np.uint8), affine)
    order = sorted(zip(names, images.values()), key=lambda item: item[0] == "t2f")
    for name, image in order:
        save_nifti(paths[name], np.asarray(image), affine)
    return paths


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(data as float64 array, affine) of a 3D NIfTI; clear ``DataError`` on anything else."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError, ValueError) as e:
        raise DataError(path, f"cannot read NIfTI (truncated or corrupt file?): {e}") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(path, f"expected a 3D volume, got shape {data.shape} ({data.ndim}D)")
    return data, np.asarray(img.affine, dtype=np.float64)


def resample(volume: np.ndarray, shape: Sequence[int], order: int = 0) -> np.ndarray:
    """Resample ``volume`` to ``shape`` over its full field of view.

    Output voxel ``i`` samples source coordinate ``i * in_size / out_size``: the first
    voxel centres coincide, as with the authors' ``resample_to_output(voxel_sizes=
    in_shape / out_shape, order=0)`` followed by a crop to the target shape
    (240x240x155 -> 192x192x96). ``order=0`` is nearest neighbour (the reference),
    higher orders are spline interpolation.
    """
    from scipy import ndimage

    shape = tuple(int(s) for s in shape)
    if tuple(volume.shape) == shape:
        return volume.copy()
    zoom = [s_in / s_out for s_in, s_out in zip(volume.shape, shape)]
    return ndimage.affine_transform(volume, matrix=zoom, offset=0.0, output_shape=shape, order=order,
                                    mode="nearest", prefilter=order > 1)


def resampled_affine(affine: np.ndarray, in_shape: Sequence[int], out_shape: Sequence[int]) -> np.ndarray:
    """Affine of the grid ``resample`` produces, so resampled volumes can be written back out."""
    zoom = np.array([i / o for i, o in zip(in_shape, out_shape)], dtype=np.float64)
    return affine @ np.diag([*zoom, 1.0])


def normalize_intensity(image: np.ndarray, clip_percentiles: tuple[float, float] | None = None,
                        path: str | os.PathLike | None = None) -> np.ndarray:
    """Per-volume min-max to [-1, 1] (the authors' "centered-norm"), optionally after
    clipping to the given percentiles. Raises on NaN/Inf or a constant image."""
    if not np.all(np.isfinite(image)):
        n = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        raise DataError(path, f"image holds {n} NaN or Inf voxel(s)")
    image = image.astype(np.float64)
    if clip_percentiles is not None:
        lo, hi = np.percentile(image, clip_percentiles)
        image = np.clip(image, lo, hi)
    lo, hi = float(image.min()), float(image.max())
    if hi - lo <= 0:
        raise DataError(path, f"image is constant (every voxel = {lo}); cannot scale to [-1, 1]")
    return ((2.0 * image - lo - hi) / (hi - lo)).astype(np.float32)


def normalize_sequence(image: np.ndarray, brain: np.ndarray, clip_percentiles: tuple[float, float] | None = None,
                       path: str | os.PathLike | None = None) -> np.ndarray:
    """One sequence of a multi-sequence case, normalised on its own within the brain, as
    BraTS-style preprocessing does (each sequence's intensities mean something only
    relative to that sequence's brain): min-max over the ``brain`` voxels (after clipping
    to the given percentiles of those voxels) to [-1, 1]; the background is -1. Raises on
    NaN/Inf, an empty brain or a sequence constant over the brain."""
    if not np.all(np.isfinite(image)):
        n = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        raise DataError(path, f"image holds {n} NaN or Inf voxel(s)")
    brain = np.asarray(brain, bool)
    if brain.shape != image.shape:
        raise DataError(path, f"brain mask shape {brain.shape} differs from image shape {image.shape}")
    if not brain.any():
        raise DataError(path, "no brain voxel (every voxel of every sequence is 0)")
    values = image[brain].astype(np.float64)
    if clip_percentiles is not None:
        values = np.clip(values, *np.percentile(values, clip_percentiles))
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 0:
        raise DataError(path, f"image is constant within the brain (every voxel = {lo}); cannot scale to [-1, 1]")
    out = np.full(image.shape, -1.0, np.float32)
    out[brain] = (2.0 * values - lo - hi) / (hi - lo)
    return out


#: a voxel of a normalised image ([-1, 1], the skull-stripped background at -1) above this
#: is brain tissue
BRAIN_THRESHOLD = -0.9


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Boolean map of brain tissue in normalised image(s): ``image > BRAIN_THRESHOLD``."""
    return np.asarray(image) > BRAIN_THRESHOLD


def brats_labels(seg: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
    """The label map of a BraTS segmentation in sbldm's convention (uint8: 0 background,
    1 necrosis, 2 oedema, 3 enhancing): BraTS 2021's enhancing label 4 becomes 3. A value
    other than 0-4, a non-integer, NaN or a map holding both 3 and 4 (two conventions at
    once) is refused, naming the file and the value."""
    if not np.all(np.isfinite(seg)):
        raise DataError(path, "segmentation holds NaN or Inf voxel(s)")
    values = np.unique(seg)
    bad = [v for v in values if v != np.round(v) or int(np.round(v)) not in BRATS_LABELS]
    if bad:
        raise DataError(path, f"segmentation holds unexpected label value(s) {[float(b) for b in bad][:8]}; "
                              f"expected integers in {sorted(BRATS_LABELS)} (BraTS 2021: 0, 1, 2, 4; BraTS 2023: "
                              "0, 1, 2, 3)")
    present = {int(round(v)) for v in values}
    if {ENHANCING, BRATS2021_ENHANCING} <= present:
        raise DataError(path, "segmentation holds both 3 and 4: BraTS 2021 writes enhancing tumour as 4 and "
                              "BraTS 2023 as 3, so one map cannot hold both")
    labels = np.rint(seg).astype(np.uint8)
    labels[labels == BRATS2021_ENHANCING] = ENHANCING
    return labels


@dataclass
class LoadedCase:
    image: np.ndarray         # float32 (x, y, z) in [-1, 1]: the primary sequence (FLAIR)
    mask: np.ndarray          # uint8 (x, y, z) in {0, 1}
    affine: np.ndarray        # affine of the resampled grid
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    labels: np.ndarray | None = None   # uint8 (x, y, z): 0, 1 necrosis, 2 oedema, 3 enhancing
    #: float32 (C, x, y, z) in [-1, 1], the case's sequences in ``modalities`` order (None: one sequence)
    sequences: np.ndarray | None = None
    modalities: tuple[str, ...] = ()

    def __iter__(self):  # ``image, mask = load_case(...)``
        return iter((self.image, self.mask))


def load_case(case: Case, shape: Sequence[int] = (192, 192, 96), image_order: int = 0,
              clip_percentiles: tuple[float, float] | None = None,
              require_tumour: bool = False) -> LoadedCase:
    """Load one case as (image, mask) resampled to ``shape`` over the full field of view.

    The result unpacks as ``image, mask = load_case(case)``; it also carries ``labels``
    (the sub-region label map, ``brats_labels``, resampled by nearest neighbour like the
    mask, so ``labels > 0`` is the mask), ``affine`` (of the resampled grid) and
    ``source_affine`` for writing NIfTI back out.
    """
    if case.sequences:
        return _load_sequences(case, shape, image_order, clip_percentiles, require_tumour)
    image, affine = read_nifti(case.image_path)
    seg, seg_affine = read_nifti(case.mask_path)
    if image.shape != seg.shape:
        raise DataError(case.mask_path, f"segmentation shape {seg.shape} differs from image shape "
                                        f"{image.shape} ({case.image_path.name})")
    labels = brats_labels(seg, case.mask_path)
    if require_tumour and not labels.any():
        raise DataError(case.mask_path, "segmentation is empty (no tumour voxel)")
    image = normalize_intensity(image, clip_percentiles, case.image_path)
    out_image = _resample_image(image, shape, image_order)
    out_labels = resample(labels, shape, order=0).astype(np.uint8)
    return LoadedCase(out_image, (out_labels > 0).astype(np.uint8), resampled_affine(affine, image.shape, shape),
                      affine, tuple(image.shape), out_labels)


def _resample_image(image: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    out = resample(image, shape, order=order).astype(np.float32)
    np.clip(out, -1.0, 1.0, out=out)       # spline overshoot
    return out


#: how far two files' affines may differ (mm, or the matrix's unit) and still be one grid
AFFINE_TOLERANCE = 1e-3


def _load_sequences(case: Case, shape, image_order: int, clip_percentiles, require_tumour: bool) -> LoadedCase:
    """``load_case`` of a multi-sequence case: every sequence on the segmentation's grid
    (shape and affine, else ``DataError`` naming the file), the brain = the voxels any
    sequence marks (skull-stripped BraTS is 0 outside it), each sequence normalised on its
    own within it (``normalize_sequence``)."""
    seg, seg_affine = read_nifti(case.mask_path)
    raw = {}
    for name, path in case.sequences:
        image, affine = read_nifti(path)
        if image.shape != seg.shape:
            raise DataError(path, f"{SEQUENCE_NAMES[name]} shape {image.shape} differs from the segmentation's "
                                  f"{seg.shape} ({case.mask_path.name})")
        if not np.allclose(affine, seg_affine, atol=AFFINE_TOLERANCE):
            raise DataError(path, f"{SEQUENCE_NAMES[name]} lies on another grid than the segmentation "
                                  f"({case.mask_path.name}): affines differ by up to "
                                  f"{float(np.abs(affine - seg_affine).max()):.4g}")
        raw[name] = image
    labels = brats_labels(seg, case.mask_path)
    if require_tumour and not labels.any():
        raise DataError(case.mask_path, "segmentation is empty (no tumour voxel)")
    brain = np.zeros(seg.shape, bool)
    for image in raw.values():
        brain |= np.nan_to_num(image) != 0
    paths = dict(case.sequences)
    stack = np.stack([_resample_image(normalize_sequence(raw[name], brain, clip_percentiles, paths[name]), shape,
                                      image_order) for name, _ in case.sequences])
    names = tuple(name for name, _ in case.sequences)
    primary = stack[names.index(primary_sequence(names))].copy()
    out_labels = resample(labels, shape, order=0).astype(np.uint8)
    return LoadedCase(primary, (out_labels > 0).astype(np.uint8), resampled_affine(seg_affine, seg.shape, shape),
                      seg_affine, tuple(seg.shape), out_labels, sequences=stack, modalities=names)


# -- splits ---------------------------------------------------------------------------

def make_split(case_ids: Sequence[str], n_train: int, n_test: int, seed: int = 0) -> dict:
    """Seeded disjoint train/test split of ``case_ids`` (sorted lists in the result)."""
    ids = sorted(case_ids)
    if n_train + n_test > len(ids):
        raise ValueError(f"split needs {n_train} train + {n_test} test cases but only {len(ids)} were found")
    order = np.random.default_rng(seed).permutation(len(ids))
    train = sorted(ids[i] for i in order[:n_train])
    test = sorted(ids[i] for i in order[n_train:n_train + n_test])
    return {"seed": int(seed), "train": train, "test": test}


def save_split(path: str | os.PathLike, split: dict) -> None:
    atomic_write_json(path, split)


def load_split(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "split file not found; run notebooks/00_prepare_data.ipynb first")
    split = json.loads(path.read_text())
    if set(split["train"]) & set(split["test"]):
        raise DataError(path, "train and test splits overlap")
    return split


# -- prepared cache ----------------------------------------------------------------------

@dataclass
class Prepared:
    """One split of the prepared cohort, in memory: what the training stages consume."""

    case_ids: list[str]
    images: np.ndarray            # (N, x, y, z) float32 in [-1, 1]
    masks: np.ndarray             # (N, x, y, z) uint8: the whole tumour, labels > 0
    features: np.ndarray          # (N, 9) raw tumour features (voxel units)
    normalizer: FeatureNormalizer
    affines: np.ndarray           # (N, 4, 4)
    labels: np.ndarray            # (N, x, y, z) uint8: 0, 1 necrosis, 2 oedema, 3 enhancing
    #: (N, C, x, y, z) float32 in [-1, 1], every loaded sequence in ``modalities`` order; None
    #: when one sequence was loaded (it is ``images``)
    sequences: np.ndarray | None = None
    modalities: tuple[str, ...] = ()

    @property
    def conditions(self) -> np.ndarray:
        """(N, 9) float32 normalised condition vectors."""
        return self.normalizer.transform(self.features).astype(np.float32)

    def __len__(self) -> int:
        return len(self.case_ids)

    @property
    def grid_affine(self) -> np.ndarray:
        """The affine of the resampled grid the models are trained on: the median over the
        split's cases (BraTS cases share one 1 mm grid, so all are equal there), which the
        pipeline stores so that generated volumes overlay a training case in a viewer."""
        if not len(self.affines):
            raise ValueError("an empty split has no grid affine")
        return np.median(np.asarray(self.affines, np.float64), axis=0)


def prepare_cohort(cases: Sequence[Case], out_dir: str | os.PathLike, shape: Sequence[int],
                   n_train: int, n_test: int, seed: int = 0, image_order: int = 0,
                   clip_percentiles: tuple[float, float] | None = None,
                   progress: bool = True) -> dict:
    """Load every case once, write the cache, the split, the tumour features and the
    feature normaliser (fitted on the training split) under ``out_dir``.

    Layout: ``cache/{images,labels,affines}.npy`` (the masks are ``labels > 0``), ``cache/case_ids.json``,
    ``split.json``, ``features.json`` (raw), ``normalizer.json``; for multi-sequence cases
    (``find_cases(..., modalities=...)``) also ``cache/sequences.npy`` (N, C, x, y, z) and
    ``cache/modalities.json``, with ``images.npy`` the primary sequence (FLAIR). Returns the
    split. Cases without tumour are refused (the model is conditioned on tumour features).
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    split = make_split([c.case_id for c in cases], n_train, n_test, seed)
    wanted = set(split["train"]) | set(split["test"])
    chosen = [c for c in cases if c.case_id in wanted]
    shape = tuple(int(s) for s in shape)
    images = np.empty((len(chosen), *shape), np.float32)
    labels = np.empty((len(chosen), *shape), np.uint8)
    affines = np.empty((len(chosen), 4, 4), np.float64)
    names = {tuple(m for m, _ in c.sequences) for c in chosen}
    if len(names) > 1:
        raise ValueError(f"the cases hold different sequences {sorted(names)}; find them with one modalities")
    modalities = names.pop() if names else ()
    sequences = np.empty((len(chosen), len(modalities), *shape), np.float32) if modalities else None
    feats = {}
    for i, case in enumerate(tqdm(chosen, desc="load cases", disable=not progress)):
        lc = load_case(case, shape, image_order=image_order, clip_percentiles=clip_percentiles)
        if not lc.mask.any():
            raise DataError(case.mask_path, f"no tumour voxel left after resampling to {shape}")
        images[i], labels[i], affines[i] = lc.image, lc.labels, lc.affine
        if sequences is not None:
            sequences[i] = lc.sequences
        feats[case.case_id] = tumour_features(lc.mask)
    cache = out / "cache"
    if sequences is not None:
        atomic_save_npy(cache / "sequences.npy", sequences)
        atomic_write_json(cache / "modalities.json", list(modalities))
    else:               # a cache rebuilt with one sequence keeps no stale multi-sequence arrays
        for stale in (cache / "sequences.npy", cache / "modalities.json"):
            stale.unlink(missing_ok=True)
    atomic_save_npy(cache / "images.npy", images)
    atomic_save_npy(cache / "labels.npy", labels)
    atomic_save_npy(cache / "affines.npy", affines)
    atomic_write_json(cache / "case_ids.json", [c.case_id for c in chosen])
    atomic_write_json(out / "features.json", feats)
    normalizer = FeatureNormalizer.fit([feats[c] for c in split["train"]], shape)
    normalizer.save(out / "normalizer.json")
    save_split(out / "split.json", split)
    return split


def load_prepared(prepared_dir: str | os.PathLike, split: str = "train") -> Prepared:
    """The ``train`` or ``test`` split (or ``all``) of a cohort written by ``prepare_cohort``."""
    from sbldm.data.tumour import FEATURE_NAMES

    d = Path(prepared_dir)
    cache = d / "cache"
    if (cache / "masks.npy").is_file() and not (cache / "labels.npy").is_file():
        raise DataError(cache, "prepared before sub-region labels were kept (a masks.npy cache without "
                               "labels.npy); run notebooks/00_prepare_data.ipynb again to rebuild it")
    for p in (cache / "images.npy", cache / "labels.npy", cache / "case_ids.json", d / "features.json",
              d / "normalizer.json", d / "split.json"):
        if not p.is_file():
            raise DataError(p, "prepared file missing; run notebooks/00_prepare_data.ipynb "
                               "(sbldm.data.cohort.prepare_cohort) first")
    ids = json.loads((cache / "case_ids.json").read_text())
    if split == "all":
        wanted = ids
    elif split in ("train", "test"):
        wanted = load_split(d / "split.json")[split]
    else:
        raise ValueError(f"unknown split {split!r}; choose train, test or all")
    index = {c: i for i, c in enumerate(ids)}
    rows = [index[c] for c in wanted]
    images = np.load(cache / "images.npy", mmap_mode="r")
    labels = np.ascontiguousarray(np.load(cache / "labels.npy", mmap_mode="r")[rows])
    affines = np.load(cache / "affines.npy")
    feats = json.loads((d / "features.json").read_text())
    sequences, modalities = None, ()
    if (cache / "sequences.npy").is_file():
        modalities = tuple(json.loads((cache / "modalities.json").read_text()))
        sequences = np.ascontiguousarray(np.load(cache / "sequences.npy", mmap_mode="r")[rows])
    return Prepared(
        case_ids=list(wanted),
        images=np.ascontiguousarray(images[rows]),
        masks=(labels > 0).astype(np.uint8),
        features=np.array([[feats[c][k] for k in FEATURE_NAMES] for c in wanted], dtype=np.float64),
        normalizer=FeatureNormalizer.load(d / "normalizer.json"),
        affines=affines[rows],
        labels=labels,
        sequences=sequences,
        modalities=modalities,
    )


# -- datasets for training ------------------------------------------------------------

#: the tumour channels of model space after the image: the paper's binary whole-tumour
#: mask, or the three nested BraTS regions (``sbldm.data.tumour.REGIONS``)
TUMOUR_CHANNELS = {"whole": ("WT",), "regions": ("WT", "TC", "ET")}


def tumour_labels_of(n_channels: int, image_channels: int = 1) -> str:
    """Which ``TUMOUR_CHANNELS`` a model of ``n_channels`` model-space channels carries,
    ``image_channels`` of them images (the MRI sequences, ``cfg.modalities``)."""
    for name, channels in TUMOUR_CHANNELS.items():
        if n_channels == image_channels + len(channels):
            return name
    raise ValueError(f"{n_channels} model-space channels with {image_channels} image channel(s) match no tumour "
                     f"representation ({', '.join(f'{k}: {image_channels + len(v)}' for k, v in TUMOUR_CHANNELS.items())})")


def check_not_a_mask(labels: np.ndarray, tumour_labels: str) -> None:
    """Refuse binary masks where the BraTS regions are wanted: a set of label maps holding
    only 0 and 1 would be read as tumours made of necrosis alone (real and phantom label
    maps always hold oedema, 2)."""
    arr = np.asarray(labels)
    if tumour_labels == "regions" and arr.any() and arr.max() <= 1:
        raise ValueError("binary whole-tumour masks given where sub-region label maps are needed "
                         "(tumour_labels='regions'): pass the label maps (Prepared.labels), not the masks")


def to_model_space(image: np.ndarray, labels: np.ndarray, tumour_labels: str = "whole") -> np.ndarray:
    """The image ([-1, 1]) and its tumour channels ({0, 1} -> {-1, 1}) stacked channel
    first: ``"whole"`` gives (image, WT) from a label map or a binary mask (WT = labels >
    0); ``"regions"`` gives (image, WT, TC, ET) from a label map (0-3). ``image``: one
    sequence (x, y[, z]) or several, channel first (C, x, y[, z]) in ``modalities`` order,
    which then lead the stack: (C images, tumour channels)."""
    if tumour_labels not in TUMOUR_CHANNELS:
        raise ValueError(f"tumour_labels must be one of {', '.join(TUMOUR_CHANNELS)}, got {tumour_labels!r}")
    labels = np.asarray(labels)
    image = np.asarray(image, np.float32)
    stack = image[None] if image.shape == labels.shape else image
    if stack.shape[1:] != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} differ in shape: give one sequence of the "
                         "labels' shape or (C, *labels.shape)")
    if tumour_labels == "whole":
        tumour = (labels > 0)[None]
    else:
        tumour = regions_from_labels(labels)
    return np.concatenate([stack, tumour.astype(np.float32) * 2.0 - 1.0])


def from_model_space(volumes, with_labels: bool = False, image_channels: int = 1):
    """The inverse of ``to_model_space`` for what a decoder outputs: volumes (C, x, y, z)
    or (N, C, x, y, z), numpy or torch (on any device), C = ``image_channels`` + 1 (WT) or
    + 3 (WT, TC, ET) -> (image float32 clamped to [-1, 1], mask uint8 = WT channel > 0),
    each (x, y, z) or (N, x, y, z); with several image channels the image keeps its channel
    axis: (image_channels, x, y, z) or (N, image_channels, x, y, z). With ``with_labels`` a
    third item, the label map (``labels_from_regions`` of the thresholded channels, so it is
    nested by construction), or None for whole-tumour volumes."""
    if hasattr(volumes, "detach"):                     # a torch tensor
        volumes = volumes.detach().float().cpu().numpy()
    v = np.asarray(volumes, dtype=np.float32)
    if v.ndim not in (4, 5):
        raise ValueError(f"expected (C, x, y, z) or (N, C, x, y, z) model-space volumes, got shape {v.shape}")
    c = int(image_channels)
    if c < 1:
        raise ValueError(f"image_channels must be >= 1, got {image_channels}")
    kind = tumour_labels_of(v.shape[-4], c)
    image = np.clip(v[..., :c, :, :, :], -1, 1).astype(np.float32)
    if c == 1:
        image = image[..., 0, :, :, :]
    mask = (v[..., c, :, :, :] > 0).astype(np.uint8)
    if not with_labels:
        return image, mask
    labels = None
    if kind == "regions":
        labels = labels_from_regions(*(v[..., c + k, :, :, :] > 0 for k in (0, 1, 2)))
    return image, mask, labels


class SliceDataset:
    """Axial slices of a set of volumes, for the slice VAE (stage 1).

    Item: dict with ``x`` (C, X, Y) float32 in [-1, 1] (``to_model_space`` of the image and
    the ``labels``, a label map or a whole-tumour mask, with ``tumour_labels``),
    ``slice_index`` (int), ``depth`` (int) and ``volume_index`` (int). ``images``: one
    sequence (N, x, y, z), or several (N, S, x, y, z) (``Prepared.sequences``), which then
    lead each slice's channels (``image_channels`` = S). Background-only slices (no brain
    in any sequence, no tumour) are kept with probability ``empty_keep`` (the authors kept
    10%), chosen once from ``seed``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, empty_keep: float = 1.0, seed: int = 0,
                 tumour_labels: str = "whole"):
        images, labels = np.asarray(images), np.asarray(labels)
        multi = images.ndim == 5
        if labels.ndim != 4 or (images.shape if not multi else images.shape[:1] + images.shape[2:]) != labels.shape:
            raise ValueError(f"images {images.shape} and labels {labels.shape} must be (N, x, y, z), or (N, S, x, y, z) "
                             "images of S sequences with (N, x, y, z) labels")
        check_not_a_mask(labels, tumour_labels)
        self.images, self.labels, self.tumour_labels = images, labels, tumour_labels
        self.image_channels = images.shape[1] if multi else 1
        n, depth = labels.shape[0], labels.shape[-1]
        self.depth = depth
        flat = (np.moveaxis(images, 1, -2) if multi else images).reshape(n, -1, depth)
        empty = (flat.max(axis=1) <= flat.min(axis=(1, 2))[:, None] + 1e-5) & ~labels.reshape(n, -1, depth).any(axis=1)
        keep = ~empty | (np.random.default_rng(seed).random(empty.shape) < empty_keep)
        self.index = np.argwhere(keep)                  # rows of (volume, slice)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        v, s = (int(t) for t in self.index[i])
        return {"x": to_model_space(self.images[v, ..., s], self.labels[v, :, :, s], self.tumour_labels),
                "slice_index": s, "depth": self.depth, "volume_index": v}


class VolumeDataset:
    """Whole volumes, for the 3D baselines. Item: ``x`` (2, X, Y, Z), ``cond`` (9,) if given."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, conditions: np.ndarray | None = None):
        if images.shape != masks.shape or images.ndim != 4:
            raise ValueError(f"images {images.shape} and masks {masks.shape} must both be (N, x, y, z)")
        self.images, self.masks, self.conditions = images, masks, conditions

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        item = {"x": to_model_space(self.images[i], self.masks[i]), "index": i}
        if self.conditions is not None:
            item["cond"] = np.asarray(self.conditions[i], dtype=np.float32)
        return item


# -- nnU-Net v2 export ------------------------------------------------------------------

#: the ``labels`` of an exported nnU-Net dataset.json, per ``tumour_labels``. The BraTS
#: regions are trained as nnU-Net trains BraTS (its region-based training: one sigmoid
#: output per nested region, WT = {1, 2, 3}, TC = {1, 3}, ET = {3}, instead of a softmax
#: over the three labels), and a prediction is written back as a label map by painting the
#: regions in ``NNUNET_REGIONS_CLASS_ORDER``: WT as oedema (2), then TC over it as necrosis
#: (1), then ET over that as enhancing (3).
NNUNET_LABELS = {"whole": {"background": 0, "tumour": 1},
                 "regions": {"background": 0, "whole_tumour": [1, 2, 3], "tumour_core": [1, 3],
                             "enhancing_tumour": 3}}
NNUNET_REGIONS_CLASS_ORDER = {"regions": [2, 1, 3]}


def export_nnunet(out_root: str | os.PathLike, dataset_id: int, name: str,
                  cases: Iterable[tuple], test_cases: Iterable[tuple] = (),
                  channel_name: str | Sequence[str] = "FLAIR", labels: str = "whole") -> Path:
    """Write an nnU-Net v2 raw dataset ``Dataset{id:03d}_{name}`` under ``out_root``.

    ``cases`` (and ``test_cases``, written to ``imagesTs``/``labelsTs``) are tuples
    ``(case_id, image, mask)`` or ``(case_id, image, mask, affine)``: real or synthetic
    volumes in sbldm's convention. An image of shape (C, x, y, z) holds C sequences, written
    as ``{case}_0000`` .. ``{case}_000{C-1}`` and named by ``channel_name`` (one name each,
    e.g. T1, T1ce, T2, FLAIR: ``dataset.json``'s ``channel_names``). With ``labels="whole"`` the masks are binary and written as
    0 (background) / 1 (tumour); with ``labels="regions"`` they are sbldm label maps, written as
    they are (0 background, 1 necrosis, 2 oedema, 3 enhancing) and declared as the nested
    BraTS regions WT, TC, ET (``NNUNET_LABELS``: nnU-Net's region-based training, as it trains
    BraTS; its predictions come back as label maps). The
    dataset is rebuilt, never merged: it is written to a temporary sibling folder and
    swapped in whole, so an earlier export of other cases leaves no file behind and a
    failed export leaves the earlier one intact. Returns the dataset folder.
    """
    import shutil

    if not (1 <= int(dataset_id) <= 999):
        raise ValueError(f"nnU-Net dataset ids run from 1 to 999, got {dataset_id}")
    if labels not in NNUNET_LABELS:
        raise ValueError(f"labels must be one of {', '.join(NNUNET_LABELS)}, got {labels!r}")
    allowed = {int(v) for value in NNUNET_LABELS[labels].values() for v in np.atleast_1d(value)}
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ValueError(f"dataset name {name!r} may hold letters, digits, '_' and '-' only")
    channels = [channel_name] if isinstance(channel_name, str) else list(channel_name)
    final = Path(out_root) / f"Dataset{int(dataset_id):03d}_{name}"
    folder = final.with_name(f".{final.name}.building-{os.getpid()}")
    shutil.rmtree(folder, ignore_errors=True)
    try:
        n_train = 0
        for sub_images, sub_labels, items in (("imagesTr", "labelsTr", cases), ("imagesTs", "labelsTs", test_cases)):
            for item in items:
                case_id, image, mask = item[:3]
                affine = item[3] if len(item) > 3 else None
                if not re.fullmatch(r"[A-Za-z0-9_\-]+", str(case_id)):
                    raise ValueError(f"case id {case_id!r} may hold letters, digits, '_' and '-' only")
                image = np.asarray(image, np.float32)
                stack = image if image.ndim == 4 else image[None]
                if stack.shape[1:] != np.shape(mask):
                    raise ValueError(f"case {case_id}: image shape {image.shape} differs from mask shape {mask.shape}")
                if len(stack) != len(channels):
                    raise ValueError(f"case {case_id}: {len(stack)} image channel(s) for the {len(channels)} "
                                     f"channel name(s) {channels}")
                found = np.unique(mask)
                if not set(found.tolist()) <= allowed:
                    what = "mask must be binary (0/1)" if labels == "whole" else "label map must hold 0-3 only"
                    raise ValueError(f"case {case_id}: {what}, found labels {found[:8].tolist()}")
                for k, channel in enumerate(stack):
                    save_nifti(folder / sub_images / f"{case_id}_{k:04d}.nii.gz", channel, affine)
                save_nifti(folder / sub_labels / f"{case_id}.nii.gz", np.asarray(mask, np.uint8), affine)
                n_train += sub_images == "imagesTr"
        if n_train == 0:
            raise ValueError("export_nnunet needs at least one training case")
        atomic_write_json(folder / "dataset.json", {
            "name": name,
            "description": f"exported by sbldm ({', '.join(channels)} in [-1, 1], "
                           + ("whole-tumour mask)" if labels == "whole" else "sub-region label map)"),
            "channel_names": {str(k): c for k, c in enumerate(channels)},
            "labels": NNUNET_LABELS[labels],
            **({"regions_class_order": NNUNET_REGIONS_CLASS_ORDER[labels]} if labels in NNUNET_REGIONS_CLASS_ORDER
               else {}),
            "numTraining": n_train,
            "file_ending": ".nii.gz",
        })
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        final.rename(old)
    folder.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final
