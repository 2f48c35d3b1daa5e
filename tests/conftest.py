"""Shared test set-up: one torch thread (2-core machines slow down 20-35x when two busy
processes share threads), no GPU, a headless matplotlib."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

try:
    import torch

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
except ImportError:  # pragma: no cover
    pass


def ball(shape=(24, 24, 24), centre=None, radius=6.0) -> np.ndarray:
    """Digital ball: voxels whose centre lies within ``radius`` of ``centre``."""
    centre = np.array([(s - 1) / 2 for s in shape]) if centre is None else np.asarray(centre, float)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    return (((grid - centre[:, None, None, None]) ** 2).sum(0) <= radius ** 2).astype(np.uint8)


@pytest.fixture
def write_case(tmp_path):
    """Write one case in a BraTS layout; returns the case folder."""
    import nibabel as nib

    def _write(case_id="BraTS-GLI-00001-000", image=None, seg=None, affine=None, layout=2023, root=None):
        root = root or tmp_path / "brats"
        folder = root / case_id
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        image = rng.uniform(0, 100, (20, 22, 12)).astype(np.float32) if image is None else image
        if seg is None:
            seg = np.zeros(image.shape, np.uint8)
            seg[6:12, 8:14, 4:8] = 2
            seg[8:10, 10:12, 5:7] = 1
        aff = np.eye(4) if affine is None else affine
        im_suffix, seg_suffix = ("-t2f.nii.gz", "-seg.nii.gz") if layout == 2023 else ("_flair.nii.gz", "_seg.nii.gz")
        nib.save(nib.Nifti1Image(image, aff), folder / f"{case_id}{im_suffix}")
        nib.save(nib.Nifti1Image(seg, aff), folder / f"{case_id}{seg_suffix}")
        return folder

    return _write
