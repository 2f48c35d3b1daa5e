import json

import nibabel as nib
import numpy as np
import pytest
from conftest import ball

from sbldm.data import cohort as data


def test_find_cases_both_layouts_sorted(write_case, tmp_path):
    write_case("BraTS2021_00012", layout=2021)
    write_case("BraTS-GLI-00003-000", layout=2023)
    write_case("BraTS2021_00002", layout=2021)
    (tmp_path / "brats" / "notes").mkdir()
    cases = data.find_cases(tmp_path / "brats")
    assert [c.case_id for c in cases] == ["BraTS-GLI-00003-000", "BraTS2021_00002", "BraTS2021_00012"]
    assert cases[1].image_path.name == "BraTS2021_00002_flair.nii.gz"
    assert cases[0].mask_path.name == "BraTS-GLI-00003-000-seg.nii.gz"


def test_find_cases_empty_folder_names_layouts(tmp_path):
    with pytest.raises(data.DataError, match="no labelled cases found.*BraTS 2021.*BraTS 2023"):
        data.find_cases(tmp_path)


def test_find_cases_missing_file_named(write_case, tmp_path):
    folder = write_case("BraTS2021_00001", layout=2021)
    (folder / "BraTS2021_00001_seg.nii.gz").unlink()
    with pytest.raises(data.DataError, match=r"BraTS2021_00001_seg\.nii\.gz.*missing segmentation"):
        data.find_cases(tmp_path / "brats")


def test_load_case_scales_resamples_and_keeps_affine(write_case, tmp_path):
    rng = np.random.default_rng(1)
    image = rng.uniform(10, 500, (40, 44, 24)).astype(np.float32)
    seg = np.zeros(image.shape, np.uint8)
    seg[10:30, 12:30, 6:18] = 2
    seg[15:20, 15:20, 10:12] = 4
    affine = np.array([[-1.2, 0, 0, 90], [0, -1.0, 0, 120], [0, 0, 1.5, -60], [0, 0, 0, 1]])
    write_case("BraTS2021_00001", image=image, seg=seg, affine=affine, layout=2021)
    (case,) = data.find_cases(tmp_path / "brats")
    lc = data.load_case(case, shape=(20, 22, 12))
    img, mask = lc                                        # unpacks like a tuple
    assert img.shape == mask.shape == (20, 22, 12)
    assert img.dtype == np.float32 and mask.dtype == np.uint8
    # min-max to [-1, 1] on the source volume, then nearest neighbour: a subset of its voxels
    lo, hi = image.min(), image.max()
    assert np.allclose(img, ((2 * image - lo - hi) / (hi - lo))[::2, ::2, ::2], atol=1e-6)
    assert set(np.unique(mask)) == {0, 1}
    # nearest neighbour over the full field of view: every other voxel of a 2x grid
    assert np.array_equal(mask, (seg > 0)[::2, ::2, ::2])
    assert np.allclose(lc.source_affine, affine)
    # the resampled affine maps output voxel i to the source voxel it was taken from
    assert np.allclose(lc.affine @ np.array([3, 4, 5, 1.0]), affine @ np.array([6, 8, 10, 1.0]))


def test_resample_mask_agrees_with_image_and_linear_is_smooth():
    m = ball((48, 48, 30), radius=10)
    out = data.resample(m, (24, 24, 15), order=0)
    assert out.shape == (24, 24, 15)
    assert abs(out.sum() * 8 - m.sum()) / m.sum() < 0.1
    ramp = np.broadcast_to(np.arange(48, dtype=float)[:, None, None], (48, 48, 30))
    third = data.resample(ramp, (36, 48, 30), order=1)       # 48 -> 36: factor 4/3
    assert np.allclose(third[:, 0, 0], np.arange(36) * 4 / 3)
    lin = data.resample(ramp, (24, 24, 15), order=1)
    assert np.allclose(lin[:, 0, 0], np.arange(24) * 2.0)     # first voxel centres coincide


def test_percentile_clipping_option():
    img = np.zeros((10, 10, 10))
    img[0, 0, 0] = 1e6                       # one hot voxel
    img[1:, 1:, 1:] = np.linspace(0, 100, 729).reshape(9, 9, 9)
    plain = data.normalize_intensity(img)
    clipped = data.normalize_intensity(img, clip_percentiles=(0.5, 99.5))
    assert np.ptp(plain[1:, 1:, 1:]) < 0.01 and np.ptp(clipped[1:, 1:, 1:]) > 1.5


# -- bad input: each gets a clear error naming the file and the problem ------------------

def _case(folder):
    return data.find_cases(folder.parent)[0]


def test_missing_file(tmp_path):
    case = data.Case("x", tmp_path / "nope-t2f.nii.gz", tmp_path / "nope-seg.nii.gz")
    with pytest.raises(data.DataError, match="nope-t2f.nii.gz: file does not exist"):
        data.load_case(case, (8, 8, 8))


def test_truncated_nifti(write_case):
    folder = write_case()
    p = folder / f"{folder.name}-t2f.nii.gz"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(data.DataError, match=r"t2f\.nii\.gz: cannot read NIfTI"):
        data.load_case(_case(folder), (8, 8, 8))


def test_not_a_nifti(write_case):
    folder = write_case()
    (folder / f"{folder.name}-seg.nii.gz").write_bytes(b"this is not an image")
    with pytest.raises(data.DataError, match=r"seg\.nii\.gz: cannot read NIfTI"):
        data.load_case(_case(folder), (8, 8, 8))


def test_4d_image(write_case):
    folder = write_case(image=np.ones((10, 10, 6, 3), np.float32), seg=np.zeros((10, 10, 6), np.uint8))
    with pytest.raises(data.DataError, match=r"t2f\.nii\.gz: expected a 3D volume, got shape \(10, 10, 6, 3\)"):
        data.load_case(_case(folder), (8, 8, 8))


def test_shape_mismatch(write_case):
    folder = write_case(image=np.random.rand(10, 10, 6).astype(np.float32), seg=np.zeros((10, 10, 5), np.uint8))
    with pytest.raises(data.DataError, match=r"seg\.nii\.gz: segmentation shape \(10, 10, 5\) differs from image shape \(10, 10, 6\)"):
        data.load_case(_case(folder), (8, 8, 8))


@pytest.mark.parametrize("bad", [5.0, 0.5, -1.0])
def test_unexpected_labels(write_case, bad):
    seg = np.zeros((10, 10, 6), np.float32)
    seg[2:4, 2:4, 2:4] = bad
    folder = write_case(image=np.random.rand(10, 10, 6).astype(np.float32), seg=seg)
    with pytest.raises(data.DataError, match=r"seg\.nii\.gz: segmentation holds unexpected label"):
        data.load_case(_case(folder), (8, 8, 8))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_voxels(write_case, bad):
    img = np.random.rand(10, 10, 6).astype(np.float32)
    img[1, 2, 3] = bad
    folder = write_case(image=img, seg=np.zeros((10, 10, 6), np.uint8))
    with pytest.raises(data.DataError, match=r"t2f\.nii\.gz: image holds 1 NaN or Inf voxel"):
        data.load_case(_case(folder), (8, 8, 8))


def test_constant_image(write_case):
    folder = write_case(image=np.full((10, 10, 6), 7.0, np.float32), seg=np.zeros((10, 10, 6), np.uint8))
    with pytest.raises(data.DataError, match=r"t2f\.nii\.gz: image is constant"):
        data.load_case(_case(folder), (8, 8, 8))


def test_empty_mask_refused_when_a_tumour_is_required(write_case):
    folder = write_case(image=np.random.rand(10, 10, 6).astype(np.float32), seg=np.zeros((10, 10, 6), np.uint8))
    image, mask = data.load_case(_case(folder), (8, 8, 8))
    assert mask.sum() == 0
    with pytest.raises(data.DataError, match=r"seg\.nii\.gz: segmentation is empty"):
        data.load_case(_case(folder), (8, 8, 8), require_tumour=True)


def test_bad_case_in_cohort_loses_nothing_already_written(write_case, tmp_path):
    for i in range(4):
        write_case(f"BraTS-GLI-{i:05d}-000")
    out = tmp_path / "prepared"
    data.prepare_cohort(data.find_cases(tmp_path / "brats"), out, (10, 10, 6), 2, 2)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    write_case("BraTS-GLI-00001-000", image=np.full((20, 22, 12), 3.0, np.float32))
    with pytest.raises(data.DataError, match="00001-000-t2f.nii.gz: image is constant"):
        data.prepare_cohort(data.find_cases(tmp_path / "brats"), out, (10, 10, 6), 2, 2)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# -- split, cache, datasets --------------------------------------------------------------

def test_split_is_seeded_disjoint_and_complete():
    ids = [f"c{i:03d}" for i in range(30)]
    a = data.make_split(ids, 10, 15, seed=3)
    assert a == data.make_split(list(reversed(ids)), 10, 15, seed=3)
    assert a != data.make_split(ids, 10, 15, seed=4)
    assert len(a["train"]) == 10 and len(a["test"]) == 15 and not set(a["train"]) & set(a["test"])
    with pytest.raises(ValueError, match="only 30"):
        data.make_split(ids, 20, 20)


def test_prepare_and_load_prepared(write_case, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        seg = np.zeros((20, 22, 12), np.uint8)
        seg[4 + i:10 + i, 6:12, 3:8] = 2
        write_case(f"BraTS-GLI-{i:05d}-000", image=rng.uniform(0, 9, (20, 22, 12)).astype(np.float32), seg=seg)
    out = tmp_path / "prepared"
    split = data.prepare_cohort(data.find_cases(tmp_path / "brats"), out, (10, 11, 6), 3, 2, seed=1)
    assert json.loads((out / "split.json").read_text()) == split
    train, test = data.load_prepared(out, "train"), data.load_prepared(out, "test")
    assert train.case_ids == split["train"] and len(test) == 2
    assert train.images.shape == (3, 10, 11, 6) and train.masks.dtype == np.uint8
    assert train.features.shape == (3, 9)
    assert train.conditions[:, 0].max() == pytest.approx(1.0)     # normaliser fitted on train
    with pytest.raises(ValueError, match="unknown split"):
        data.load_prepared(out, "val")


def test_load_prepared_missing_names_the_notebook(tmp_path):
    with pytest.raises(data.DataError, match="00_prepare_data"):
        data.load_prepared(tmp_path)


def test_slice_dataset_items_and_empty_slice_dropping():
    images = -np.ones((2, 8, 8, 10), np.float32)
    masks = np.zeros((2, 8, 8, 10), np.uint8)
    images[:, 2:6, 2:6, 3:7] = 0.5          # brain on slices 3..6
    masks[1, 3:5, 3:5, 4] = 1
    full = data.SliceDataset(images, masks, empty_keep=1.0)
    assert len(full) == 20
    item = full[14]
    assert item["x"].shape == (2, 8, 8) and item["depth"] == 10
    assert (item["volume_index"], item["slice_index"]) == (1, 4)
    assert item["x"][1].max() == 1.0 and item["x"][1].min() == -1.0  # mask channel in {-1, 1}
    dropped = data.SliceDataset(images, masks, empty_keep=0.0)
    assert len(dropped) == 8                 # only slices with brain or tumour
    assert {tuple(r) for r in dropped.index} == {(v, s) for v in (0, 1) for s in range(3, 7)}


def test_volume_dataset():
    ds = data.VolumeDataset(np.zeros((3, 4, 4, 2), np.float32), np.ones((3, 4, 4, 2), np.uint8), np.eye(3, 9))
    it = ds[1]
    assert it["x"].shape == (2, 4, 4, 2) and it["cond"].shape == (9,) and it["x"][1].min() == 1.0


# -- nnU-Net export ----------------------------------------------------------------------

def _export(tmp_path):
    m = ball((16, 16, 10), radius=3)
    img = np.random.default_rng(0).uniform(-1, 1, m.shape).astype(np.float32)
    return data.export_nnunet(tmp_path / "raw", 7, "Tiny", [(f"case_{i}", img, m) for i in range(3)],
                              test_cases=[("test_0", img, m)])


def test_export_nnunet_structure(tmp_path):
    folder = _export(tmp_path)
    assert folder.name == "Dataset007_Tiny"
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "FLAIR"} and ds["labels"] == {"background": 0, "tumour": 1}
    assert ds["numTraining"] == 3 and ds["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"case_{i}_0000.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"case_{i}.nii.gz" for i in range(3)]
    assert (folder / "imagesTs" / "test_0_0000.nii.gz").is_file()
    lab = nib.load(folder / "labelsTr" / "case_0.nii.gz").get_fdata()
    assert set(np.unique(lab)) == {0.0, 1.0}


def test_export_nnunet_refuses_bad_input(tmp_path):
    img = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="binary"):
        data.export_nnunet(tmp_path, 1, "X", [("a", img, np.full((4, 4, 4), 2))])
    with pytest.raises(ValueError, match="differs"):
        data.export_nnunet(tmp_path, 1, "X", [("a", img, np.zeros((4, 4, 3)))])
    with pytest.raises(ValueError, match="1 to 999"):
        data.export_nnunet(tmp_path, 1000, "X", [("a", img, np.zeros((4, 4, 4)))])


@pytest.mark.nnunet
def test_export_passes_nnunets_integrity_check(tmp_path):
    pytest.importorskip("nnunetv2")
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(_export(tmp_path)), num_processes=1)


def test_brats_2020_names_uncompressed_nifti_and_unlabelled_cases(write_case, tmp_path):
    root = tmp_path / "brats"
    write_case("BraTS20_Training_001", layout=2021, root=root)
    folder = write_case("BraTS20_Training_002", layout=2021, root=root)
    # the second case as uncompressed .nii (what some exports hold)
    for f in list(folder.iterdir()):
        import nibabel as nib

        img = nib.load(str(f))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine), str(f).replace(".nii.gz", ".nii"))
        f.unlink()
    unlabelled = write_case("BraTS20_Training_003", layout=2021, root=root)
    (unlabelled / "BraTS20_Training_003_seg.nii.gz").unlink()
    with pytest.raises(data.DataError, match="BraTS20_Training_003_seg.*missing segmentation.*skip_unlabelled"):
        data.find_cases(root)
    with pytest.warns(UserWarning, match="1 case.*without a segmentation.*BraTS20_Training_003"):
        cases = data.find_cases(root, skip_unlabelled=True)
    assert [c.case_id for c in cases] == ["BraTS20_Training_001", "BraTS20_Training_002"]
    assert cases[1].image_path.name == "BraTS20_Training_002_flair.nii"
    lc = data.load_case(cases[1], (8, 8, 4))
    assert lc.image.shape == (8, 8, 4) and lc.mask.any()


def test_nnunet_export_is_rebuilt_never_merged(tmp_path):
    rng = np.random.default_rng(0)

    def case(cid):
        m = np.zeros((8, 8, 4), np.uint8)
        m[2:5, 2:5, 1:3] = 1
        return cid, rng.uniform(-1, 1, (8, 8, 4)).astype(np.float32), m

    data.export_nnunet(tmp_path, 1, "X", [case(f"phantom_{i}") for i in range(3)])
    folder = data.export_nnunet(tmp_path, 1, "X", [case(f"brats_{i}") for i in range(2)])
    names = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert names == ["brats_0_0000.nii.gz", "brats_1_0000.nii.gz"]
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset001_X"]       # no temporary left
    with pytest.raises(ValueError, match="mask must be binary"):
        bad = case("bad")
        data.export_nnunet(tmp_path, 1, "X", [(bad[0], bad[1], bad[2] * 3)])
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == names      # the earlier export intact


# -- sub-region labels --------------------------------------------------------------------

def _seg_with_subregions(enhancing: int) -> np.ndarray:
    seg = np.zeros((20, 22, 12), np.uint8)
    seg[4:14, 6:16, 2:10] = 2                 # oedema
    seg[6:12, 8:14, 4:8] = enhancing          # enhancing core (3 in BraTS 2023, 4 in BraTS 2021)
    seg[8:10, 10:12, 5:7] = 1                 # necrosis inside it
    return seg


@pytest.mark.parametrize("layout, enhancing", [(2021, 4), (2023, 3)])
def test_both_brats_conventions_load_to_one_label_map(write_case, layout, enhancing):
    """BraTS 2021 (enhancing 4) and BraTS 2023 (enhancing 3) give the same label map, 0-3,
    and the whole-tumour mask is that map's non-zero part."""
    cid = "BraTS2021_00001" if layout == 2021 else "BraTS-GLI-00001-000"
    folder = write_case(cid, seg=_seg_with_subregions(enhancing), layout=layout)
    lc = data.load_case(_case(folder), (20, 22, 12))
    assert set(np.unique(lc.labels).tolist()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(lc.labels, _seg_with_subregions(3))      # same grid: nothing resampled
    np.testing.assert_array_equal(lc.mask, (lc.labels > 0).astype(np.uint8))


def test_a_label_map_with_both_3_and_4_or_an_unknown_label_is_refused_naming_file_and_value(write_case):
    seg = _seg_with_subregions(3)
    seg[0, 0, 0] = 4
    folder = write_case(seg=seg)
    with pytest.raises(data.DataError, match=r"seg\.nii\.gz: segmentation holds both 3 and 4"):
        data.load_case(_case(folder), (8, 8, 8))
    seg[0, 0, 0] = 7
    folder = write_case("BraTS-GLI-00002-000", seg=seg, root=folder.parent.parent / "other")
    with pytest.raises(data.DataError, match=r"BraTS-GLI-00002-000-seg\.nii\.gz: .*unexpected label value\(s\) \[7\.0\]"):
        data.load_case(_case(folder), (8, 8, 8))


def test_prepared_splits_carry_label_maps_and_an_old_cache_is_refused(write_case, tmp_path):
    import shutil

    rng = np.random.default_rng(0)
    for i in range(4):
        write_case(f"BraTS-GLI-{i:05d}-000", image=rng.uniform(0, 9, (20, 22, 12)).astype(np.float32),
                   seg=np.roll(_seg_with_subregions(3), i, axis=0))
    out = tmp_path / "prepared"
    data.prepare_cohort(data.find_cases(tmp_path / "brats"), out, (10, 11, 6), 2, 2, seed=0)
    train = data.load_prepared(out, "train")
    assert train.labels.shape == train.masks.shape == (2, 10, 11, 6) and train.labels.dtype == np.uint8
    assert set(np.unique(train.labels).tolist()) <= {0, 1, 2, 3} and (train.labels == 1).any()
    np.testing.assert_array_equal(train.masks, (train.labels > 0).astype(np.uint8))
    # a cache from before labels were kept (masks.npy only) names the fix
    np.save(out / "cache" / "masks.npy", train.masks)
    (out / "cache" / "labels.npy").unlink()
    with pytest.raises(data.DataError, match="before sub-region labels.*00_prepare_data"):
        data.load_prepared(out, "train")
    shutil.rmtree(out)


def test_regions_and_label_maps_round_trip_and_stay_nested():
    from sbldm.data.tumour import labels_from_regions, region_mask, regions_from_labels

    labels = _seg_with_subregions(3)
    wt, tc, et = regions_from_labels(labels)
    assert wt.sum() == (labels > 0).sum() and tc.sum() == np.isin(labels, (1, 3)).sum() and et.sum() == (labels == 3).sum()
    np.testing.assert_array_equal(region_mask(labels, "TC"), tc.astype(bool))
    np.testing.assert_array_equal(labels_from_regions(wt, tc, et), labels)
    # a core outside the whole tumour (a decoder's stray blob) is dropped, not kept as core
    stray = np.zeros_like(tc)
    stray[0, 0, 0] = 1
    out = labels_from_regions(wt, tc | stray, et | stray)
    assert out[0, 0, 0] == 0 and np.array_equal(out, labels)
    with pytest.raises(ValueError, match="unknown region"):
        region_mask(labels, "NET")
    with pytest.raises(ValueError, match=r"value\(s\) \[4\]"):
        regions_from_labels(np.full((2, 2, 2), 4, np.uint8))


def test_model_space_carries_the_regions_and_decodes_back_to_the_label_map():
    import torch

    labels = _seg_with_subregions(3)
    image = np.linspace(-1, 1, labels.size, dtype=np.float32).reshape(labels.shape)
    x = data.to_model_space(image, labels, "regions")
    assert x.shape == (4, *labels.shape) and set(np.unique(x[1:]).tolist()) == {-1.0, 1.0}
    np.testing.assert_array_equal(x[2] > 0, np.isin(labels, (1, 3)))       # TC channel
    im, mask, back = data.from_model_space(torch.from_numpy(x[None] * 0.9), with_labels=True)
    np.testing.assert_array_equal(back[0], labels)
    np.testing.assert_array_equal(mask[0], labels > 0)
    np.testing.assert_allclose(im[0], image * 0.9)
    # the paper's whole-tumour channel: the same mask from a label map or a binary mask, no label map back
    w = data.to_model_space(image, labels, "whole")
    np.testing.assert_array_equal(w, data.to_model_space(image, (labels > 0).astype(np.uint8)))
    assert w.shape == (2, *labels.shape) and data.from_model_space(w, with_labels=True)[2] is None
    with pytest.raises(ValueError, match="3 model-space channels"):
        data.from_model_space(np.zeros((3, 4, 4, 4)))


def test_binary_masks_are_refused_where_sub_region_label_maps_are_needed():
    """A whole-tumour mask read as a label map would be a tumour of necrosis alone."""
    images = np.zeros((1, 8, 8, 4), np.float32)
    mask = np.zeros((1, 8, 8, 4), np.uint8)
    mask[0, 2:5, 2:5, 1:3] = 1
    with pytest.raises(ValueError, match=r"binary whole-tumour masks .*Prepared\.labels"):
        data.SliceDataset(images, mask, tumour_labels="regions")
    assert len(data.SliceDataset(images, mask, tumour_labels="whole")) == 4          # the paper's mask: fine
    assert len(data.SliceDataset(images, mask * 2, tumour_labels="regions")) == 4    # oedema: a label map


def test_export_nnunet_writes_label_maps_and_declares_the_nested_brats_regions(tmp_path):
    m = ball((16, 16, 10), radius=4).astype(np.uint8) * 2
    m[ball((16, 16, 10), radius=2) > 0] = 3
    m[8, 8, 5] = 1
    img = np.zeros(m.shape, np.float32)
    folder = data.export_nnunet(tmp_path, 3, "Regions", [("a", img, m)], labels="regions")
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "whole_tumour": [1, 2, 3], "tumour_core": [1, 3], "enhancing_tumour": 3}
    assert ds["regions_class_order"] == [2, 1, 3]                  # WT painted as oedema, then TC, then ET
    lab = np.rint(nib.load(folder / "labelsTr" / "a.nii.gz").get_fdata())
    assert np.array_equal(lab, m)                                  # written as they are
    with pytest.raises(ValueError, match="label map must hold 0-3 only"):
        data.export_nnunet(tmp_path, 3, "Regions", [("a", img, np.where(m == 3, 4, m))], labels="regions")
    with pytest.raises(ValueError, match="labels must be one of"):
        data.export_nnunet(tmp_path, 3, "Regions", [("a", img, m)], labels="sub")
