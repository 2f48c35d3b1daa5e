"""Stage 0: turn a data source (a BraTS folder or the phantom cohort) into the prepared
cohort every later stage reads: cache, split, tumour features, normaliser, nnU-Net export.

``work/<scale>/data/`` after ``prepare(cfg, work_dir)``::

    phantom-v<N>/       the phantom cohort as NIfTI (BraTS 2023 layout), if no BraTS folder;
                        <N> is PHANTOM_VERSION, so a newer phantom never meets an older one's files
    cache/              images.npy, labels.npy (sub-region label maps; masks = labels > 0),
                        affines.npy, case_ids.json; with several ``cfg.modalities`` also
                        sequences.npy (every sequence) and modalities.json
    split.json          seeded train/test split, reused by every stage
    features.json       raw tumour features of every case
    normalizer.json     feature normaliser fitted on the training split
    nnunet_raw/         Dataset001_RealTrain (train split) for nnU-Net v2
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sbldm.config import Config
from sbldm.data.cohort import SEQUENCE_NAMES, export_nnunet, find_cases, load_prepared, prepare_cohort


def phantom_tumour_volume_range(cfg: Config, min_voxels: int = 30,
                               base: tuple[float, float] = (8_000.0, 300_000.0)) -> tuple[float, float]:
    """Whole-tumour volume range (mm^3) for the phantom at ``cfg``'s geometry: the phantom's
    BraTS-like truncation range (``sbldm.data.phantom``), with the lower end raised so that a tumour keeps at least ``min_voxels``
    voxels after resampling to ``cfg.volume_shape``."""
    fov = np.asarray(cfg.phantom_shape) * np.asarray(cfg.phantom_spacing)
    voxel_mm3 = float(np.prod(fov / np.asarray(cfg.volume_shape)))
    lo = max(base[0], min_voxels * voxel_mm3)
    return lo, max(base[1], 4 * lo)


def prepare(cfg: Config, work_dir: str | os.PathLike, brats_dir: str | os.PathLike | None = None,
            progress: bool = True, export: bool = True, phantom_dir: str | os.PathLike | None = None) -> dict:
    """Prepare the cohort for ``cfg`` under ``work_dir`` (usually ``work/<scale>/data``).

    With ``brats_dir`` the cases come from that BraTS 2021/2023 folder; otherwise a
    phantom cohort of ``n_train + n_test`` subjects is made (or reused) in ``phantom_dir``
    (default ``work_dir/phantom-v<PHANTOM_VERSION>``; another run's folder is reused as it is,
    e.g. notebook 12 reads the four sequences of the cohort notebook 00 wrote). Returns a
    summary dict (source, case counts, paths; ``phantom_dir`` for the phantom).
    """
    work = Path(work_dir)
    if brats_dir:
        cases = find_cases(brats_dir, skip_unlabelled=cfg.data_skip_unlabelled, modalities=cfg.modalities)
        source = f"BraTS folder {brats_dir}"
    else:
        from sbldm.data.phantom import PHANTOM_VERSION, make_phantom_cohort

        phantom_dir = Path(phantom_dir) if phantom_dir is not None else work / f"phantom-v{PHANTOM_VERSION}"
        cases = make_phantom_cohort(
            phantom_dir, cfg.n_train + cfg.n_test, seed=cfg.seed,
            shape=cfg.phantom_shape, spacing=cfg.phantom_spacing,
            tumour_volume_range=phantom_tumour_volume_range(cfg), progress=progress, modalities=cfg.modalities)
        source = "phantom cohort (MNI152 anatomy, sbldm.data.phantom)"
    split = prepare_cohort(cases, work, cfg.volume_shape, cfg.n_train, cfg.n_test, seed=cfg.seed,
                           image_order=cfg.image_interp_order, clip_percentiles=cfg.clip_percentiles,
                           progress=progress)
    summary = {"source": source, "n_found": len(cases), "n_train": len(split["train"]),
               "n_test": len(split["test"]), "volume_shape": list(cfg.volume_shape), "work_dir": str(work)}
    if not brats_dir:
        summary["phantom_dir"] = str(phantom_dir)
    if export:
        train = load_prepared(work, "train")
        test = load_prepared(work, "test")
        regions = cfg.tumour_labels == "regions"      # label maps when the chain carries sub-regions

        def rows(s):         # every loaded sequence goes to nnU-Net, one channel each
            images = s.images if s.sequences is None else s.sequences
            return list(zip(s.case_ids, images, s.labels if regions else s.masks, s.affines))

        channels = [SEQUENCE_NAMES[m] for m in train.modalities] if train.modalities else "FLAIR"
        folder = export_nnunet(work / "nnunet_raw", 1, "RealTrain", rows(train), test_cases=rows(test),
                               labels=cfg.tumour_labels, channel_name=channels)
        summary["nnunet_dataset"] = str(folder)
    return summary
