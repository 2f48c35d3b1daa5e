"""The four BraTS sequences through the data layer: discovery in the 2020, 2021 and 2023
names (mixed in one folder), per-sequence normalisation within the brain, the cache, the
nnU-Net export; missing or mismatched sequences refused with the file named."""

import json

import nibabel as nib
import numpy as np
import pytest

from sbldm import config
from sbldm.data import cohort

FOUR = ("t1n", "t1c", "t2w", "t2f")
SHAPE = (20, 22, 12)
#: each scheme's file suffix of T1, T1ce, T2, FLAIR (written here independently of the loader)
NAMES = {2020: ("_t1", "_t1ce", "_t2", "_flair", "_seg"), 2021: ("_t1", "_t1ce", "_t2", "_flair", "_seg"),
         2023: ("-t1n", "-t1c", "-t2w", "-t2f", "-seg")}
#: a distinct intensity scale per sequence, so a channel mix-up shows
SCALES = (100.0, 2000.0, 7.0, 350.0)


def _brain():
    g = np.indices(SHAPE).astype(float)
    return ((g[0] - 9.5) / 8) ** 2 + ((g[1] - 10.5) / 9) ** 2 + ((g[2] - 5.5) / 5) ** 2 <= 1


def _write(root, case_id, year, enhancing, affine=None, seed=0):
    """A skull-stripped case: every sequence 0 outside the brain, ``enhancing`` the label of
    the enhancing tumour (4 in BraTS 2020/2021, 3 in 2023)."""
    rng = np.random.default_rng(seed)
    folder = root / case_id
    folder.mkdir(parents=True)
    brain = _brain()
    aff = np.diag([1.0, 1.0, 1.5, 1.0]) if affine is None else affine
    seg = np.zeros(SHAPE, np.uint8)
    seg[6:12, 8:14, 4:8] = 2
    seg[8:11, 10:13, 5:7] = enhancing
    seg[9, 11, 5] = 1
    images = []
    for suffix, scale in zip(NAMES[year][:4], SCALES):
        img = np.where(brain, scale * rng.uniform(0.5, 1.5, SHAPE), 0.0).astype(np.float32)
        nib.save(nib.Nifti1Image(img, aff), folder / f"{case_id}{suffix}.nii.gz")
        images.append(img)
    nib.save(nib.Nifti1Image(seg, aff), folder / f"{case_id}{NAMES[year][4]}.nii.gz")
    return folder, images, seg


@pytest.fixture
def mixed(tmp_path):
    """One folder with a BraTS 2020, a 2021 (label 4) and two 2023 (label 3) cases."""
    root = tmp_path / "brats"
    written = {
        "BraTS20_Training_007": _write(root, "BraTS20_Training_007", 2020, 4, seed=1),
        "BraTS2021_00011": _write(root, "BraTS2021_00011", 2021, 4, seed=2),
        "BraTS-GLI-00003-000": _write(root, "BraTS-GLI-00003-000", 2023, 3, seed=3),
        "BraTS-GLI-00005-000": _write(root, "BraTS-GLI-00005-000", 2023, 3, seed=4),
    }
    return root, written


def _by_hand(image, brain):
    """[-1, 1] over the brain voxels, -1 outside, written out step by step."""
    lo, hi = image[brain].min(), image[brain].max()
    out = -np.ones(image.shape)
    out[brain] = 2 * (image[brain] - lo) / (hi - lo) - 1
    return out


def test_a_mixed_folder_loads_in_both_modality_settings_with_each_years_labels(mixed, tmp_path):
    root, written = mixed
    flair = cohort.find_cases(root)
    four = cohort.find_cases(root, modalities=FOUR)
    assert [c.case_id for c in flair] == [c.case_id for c in four] == sorted(written)
    schemes = {c.case_id: c.scheme for c in four}
    assert schemes == {"BraTS-GLI-00003-000": "BraTS 2023", "BraTS-GLI-00005-000": "BraTS 2023",
                       "BraTS20_Training_007": "BraTS 2020", "BraTS2021_00011": "BraTS 2021"}
    by_id = {c.case_id: c for c in four}
    assert [p.name for _, p in by_id["BraTS2021_00011"].sequences] == [
        "BraTS2021_00011_t1.nii.gz", "BraTS2021_00011_t1ce.nii.gz", "BraTS2021_00011_t2.nii.gz",
        "BraTS2021_00011_flair.nii.gz"]
    assert [m for m, _ in by_id["BraTS-GLI-00003-000"].sequences] == list(FOUR)
    for c in flair:                       # FLAIR only: the FLAIR file, no sequences
        assert c.sequences == () and c.image_path.name.endswith(("_flair.nii.gz", "-t2f.nii.gz"))
    brain = _brain()
    for c in four:
        _, images, seg = written[c.case_id]
        lc = cohort.load_case(c, SHAPE)
        assert lc.sequences.shape == (4, *SHAPE) and lc.modalities == FOUR
        for k in range(4):                # each sequence on its own, within the brain
            assert np.allclose(lc.sequences[k], _by_hand(images[k], brain), atol=1e-6)
        assert np.array_equal(lc.image, lc.sequences[3])          # the primary sequence is FLAIR
        assert set(np.unique(lc.labels)) == {0, 1, 2, 3}           # 2020/2021's 4 is 3 here
        assert np.array_equal(lc.labels == 3, (seg == 3) | (seg == 4))
    for c in flair:                       # the FLAIR-only path keeps the reference min-max
        _, images, _ = written[c.case_id]
        lc = cohort.load_case(c, SHAPE)
        lo, hi = images[3].min(), images[3].max()
        assert lc.sequences is None and np.allclose(lc.image, (2 * images[3] - lo - hi) / (hi - lo), atol=1e-6)
    # through the cache, both settings, and the primary sequence agrees
    cache4, cache1 = tmp_path / "p4", tmp_path / "p1"
    cohort.prepare_cohort(four, cache4, SHAPE, n_train=3, n_test=1, progress=False)
    cohort.prepare_cohort(flair, cache1, SHAPE, n_train=3, n_test=1, progress=False)
    p4, p1 = cohort.load_prepared(cache4, "all"), cohort.load_prepared(cache1, "all")
    assert p4.sequences.shape == (4, 4, *SHAPE) and p4.modalities == FOUR
    assert np.array_equal(p4.images, p4.sequences[:, 3]) and np.array_equal(p4.labels, p1.labels)
    assert p1.sequences is None and p1.modalities == ()
    assert not (cache1 / "cache" / "sequences.npy").exists()


def test_a_missing_t1ce_is_refused_with_the_file_named_and_only_when_asked_for(mixed):
    root, written = mixed
    (written["BraTS2021_00011"][0] / "BraTS2021_00011_t1ce.nii.gz").unlink()
    with pytest.raises(cohort.DataError, match=r"BraTS2021_00011_t1ce\.nii\.gz: missing T1ce image file of case"):
        cohort.find_cases(root, modalities=FOUR)
    assert len(cohort.find_cases(root)) == 4                   # FLAIR only does not need it
    (written["BraTS-GLI-00003-000"][0] / "BraTS-GLI-00003-000-t2f.nii.gz").unlink()
    with pytest.raises(cohort.DataError, match=r"BraTS-GLI-00003-000-t2f\.nii\.gz: missing FLAIR image file"):
        cohort.find_cases(root)


def test_a_sequence_on_another_grid_is_refused_naming_its_file(tmp_path):
    root = tmp_path / "brats"
    folder, images, _ = _write(root, "BraTS-GLI-00001-000", 2023, 3)
    shifted = np.diag([1.0, 1.0, 1.5, 1.0])
    shifted[0, 3] = 2.0
    nib.save(nib.Nifti1Image(images[1], shifted), folder / "BraTS-GLI-00001-000-t1c.nii.gz")
    (case,) = cohort.find_cases(root, modalities=FOUR)
    with pytest.raises(cohort.DataError, match=r"-t1c\.nii\.gz: T1ce lies on another grid.*differ by up to 2"):
        cohort.load_case(case, SHAPE)
    nib.save(nib.Nifti1Image(images[2][:, :, :10], np.diag([1.0, 1.0, 1.5, 1.0])),
             folder / "BraTS-GLI-00001-000-t2w.nii.gz")
    nib.save(nib.Nifti1Image(images[1], np.diag([1.0, 1.0, 1.5, 1.0])), folder / "BraTS-GLI-00001-000-t1c.nii.gz")
    with pytest.raises(cohort.DataError, match=r"-t2w\.nii\.gz: T2 shape \(20, 22, 10\) differs"):
        cohort.load_case(case, SHAPE)


def test_per_sequence_normalisation_against_values_computed_by_hand():
    image = np.array([[[0.0, 10.0], [20.0, 30.0]], [[40.0, 0.0], [0.0, 0.0]]])
    brain = image > 0
    out = cohort.normalize_sequence(image, brain)
    # brain voxels 10, 20, 30, 40 -> lo 10, hi 40: 10 -> -1, 20 -> -1/3, 30 -> 1/3, 40 -> 1; background -1
    assert np.allclose(out, [[[-1, -1], [-1 / 3, 1 / 3]], [[1, -1], [-1, -1]]])
    # the percentiles are those of the brain voxels: the 50th of 10, 20, 30, 40 is 25
    clipped = cohort.normalize_sequence(image, brain, clip_percentiles=(0.0, 50.0))
    assert np.allclose(clipped, [[[-1, -1], [1 / 3, 1]], [[1, -1], [-1, -1]]])
    # a dark brain voxel is not background: 0 inside the brain maps by the brain's range
    brain[1, 1, 1] = True
    assert cohort.normalize_sequence(image, brain)[1, 1, 1] == pytest.approx(-1.0)
    assert cohort.normalize_sequence(image + 5, brain)[0, 0, 1] == pytest.approx(-1 + 2 * 10 / 40)
    with pytest.raises(cohort.DataError, match="constant within the brain"):
        cohort.normalize_sequence(np.where(brain, 3.0, 0.0), brain, path="x.nii.gz")
    with pytest.raises(cohort.DataError, match="no brain voxel"):
        cohort.normalize_sequence(image, np.zeros_like(brain))
    with pytest.raises(cohort.DataError, match="NaN or Inf"):
        cohort.normalize_sequence(np.where(brain, np.nan, 0.0), brain)


def test_the_nnunet_export_carries_every_sequence_as_a_channel(mixed, tmp_path):
    root, _ = mixed
    cases = cohort.find_cases(root, modalities=FOUR)
    cohort.prepare_cohort(cases, tmp_path / "p", SHAPE, n_train=3, n_test=1, progress=False)
    train = cohort.load_prepared(tmp_path / "p", "train")
    names = [cohort.SEQUENCE_NAMES[m] for m in train.modalities]
    folder = cohort.export_nnunet(tmp_path / "raw", 7, "Four",
                                  list(zip(train.case_ids, train.sequences, train.labels, train.affines)),
                                  labels="regions", channel_name=names)
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    case = train.case_ids[0]
    files = sorted(p.name for p in (folder / "imagesTr").glob(f"{case}_*.nii.gz"))
    assert files == [f"{case}_{k:04d}.nii.gz" for k in range(4)]
    t1ce = np.asarray(nib.load(folder / "imagesTr" / f"{case}_0001.nii.gz").dataobj)
    assert np.allclose(t1ce, train.sequences[0, 1])
    with pytest.raises(ValueError, match="4 image channel.*3 channel name"):
        cohort.export_nnunet(tmp_path / "raw", 8, "Bad", [(case, train.sequences[0], train.labels[0])],
                             labels="regions", channel_name=names[:3])


def test_modalities_is_a_checked_config_field_that_leaves_the_presets_hash_alone():
    cfg = config.resolve("small", modalities=list(FOUR))
    assert cfg.modalities == FOUR and cfg.data.modalities == FOUR
    assert config.resolve("small").modalities == ("flair",) == config.resolve("paper").modalities
    assert cfg.hash() != config.resolve("small").hash()
    assert set(config.stages_reading("modalities")) == set(config.STAGES)
    with pytest.raises(ValueError, match="names a sequence twice"):
        config.resolve("small", modalities=["flair", "t2f"])
    with pytest.raises(ValueError, match="modalities=.*'t1'.*not valid"):
        config.resolve("small", modalities=["t1"])


def test_a_case_saved_in_the_brats_2023_layout_reads_back_with_every_sequence(tmp_path):
    rng = np.random.default_rng(0)
    brain = _brain()
    images = {m: np.where(brain, s * rng.uniform(0.5, 1.5, SHAPE), 0).astype(np.float32) for m, s in zip(FOUR, SCALES)}
    labels = np.zeros(SHAPE, np.uint8)
    labels[6:12, 8:14, 4:8] = 2
    labels[8:11, 10:13, 5:7] = 3
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    paths = cohort.save_case(tmp_path, "BraTS-GLI-00009-000", images, labels, affine)
    assert sorted(p.name for p in paths.values()) == sorted(
        f"BraTS-GLI-00009-000-{s}.nii.gz" for s in ("seg", *FOUR))
    (case,) = cohort.find_cases(tmp_path, modalities=FOUR)
    lc = cohort.load_case(case, SHAPE)
    assert np.array_equal(lc.labels, labels) and np.allclose(lc.source_affine, affine)
    for k, m in enumerate(FOUR):
        assert np.allclose(lc.sequences[k], _by_hand(images[m], brain), atol=1e-6)
    with pytest.raises(ValueError, match="T1ce shape"):
        cohort.save_case(tmp_path, "BraTS-GLI-00010-000", {"t1c": images["t1c"][:-1]}, labels)
