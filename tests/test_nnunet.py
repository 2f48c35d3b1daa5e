"""The nnU-Net v2 backend: pure helpers here always; the real integration (plan,
preprocess with the integrity check, train with the narrow plan, predict) when the
nnunet extra is installed (``-m nnunet``). The export's integrity check alone is in
test_data.py."""

import json
import os
import sys

import numpy as np
import pytest

from sbldm import config
from sbldm.segmentation import nnunet

from conftest import ball


def _blobs(n, shape=(32, 32, 16), seed=0):
    """Dark noisy volumes with one bright ball each (radius 4-5), masks of the balls."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        centre = [rng.uniform(0.35 * s, 0.65 * s) for s in shape]
        m = ball(shape, centre, rng.uniform(4, 5))
        images.append(np.clip(-0.5 + 0.1 * rng.standard_normal(shape) + 1.2 * m, -1, 1).astype(np.float32))
        masks.append(m)
    return np.stack(images), np.stack(masks)


# -- helpers (no nnunetv2 needed) ------------------------------------------------------

def test_the_brats_regions_are_exported_for_nnunets_region_training_and_come_back_as_label_maps(tmp_path):
    """nnU-Net's own label handling reads the exported dataset.json as the nested regions WT,
    TC, ET, and turns perfect region outputs back into the very label map that was exported."""
    pytest.importorskip("nnunetv2")
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    images, _ = _blobs(2)
    labels = np.zeros(images.shape, np.uint8)
    labels[:, 8:24, 8:24, 4:12] = 2
    labels[:, 12:20, 12:20, 6:10] = 3
    labels[0, 14:18, 14:18, 7:9] = 1                # necrosis in the first case only
    out = nnunet.export(tmp_path, images, labels, labels="regions")
    spec = json.loads((out["dataset_folder"] / "dataset.json").read_text())
    lm = LabelManager(spec["labels"], spec["regions_class_order"])
    assert lm.has_regions and [set(np.atleast_1d(r)) for r in lm.foreground_regions] == [{1, 2, 3}, {1, 3}, {3}]
    for lab in labels:
        probs = np.stack([np.isin(lab, np.atleast_1d(r)) for r in lm.foreground_regions]).astype(np.float32)
        np.testing.assert_array_equal(lm.convert_probabilities_to_segmentation(probs), lab)
    whole = json.loads((nnunet.export(tmp_path / "w", images, labels > 0)["dataset_folder"] / "dataset.json")
                       .read_text())
    assert whole["labels"] == {"background": 0, "tumour": 1} and "regions_class_order" not in whole
    with pytest.raises(ValueError, match="label map must hold 0-3 only"):
        nnunet.export(tmp_path / "bad", images, labels + 1, labels="regions")


def test_parse_folds():
    assert nnunet.parse_folds("all") == ["all"]
    assert nnunet.parse_folds(3) == ["3"]
    assert nnunet.parse_folds("5fold") == ["0", "1", "2", "3", "4"]
    assert nnunet.parse_folds("0, 2") == ["0", "2"]
    for bad in ("", "x", "all,1", "-1"):
        with pytest.raises(ValueError, match="seg_nnunet_fold"):
            nnunet.parse_folds(bad)


def test_narrow_features_follow_design():
    assert nnunet.narrow_features(6) == [8, 16, 32, 64, 80, 80]
    assert nnunet.narrow_features(4, base=4, cap=16) == [4, 8, 16, 16]


def test_environment_is_a_copy_with_the_run_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("SBLDM_NNUNET_EPOCHS", "77")   # a stale setting must not reach nnU-Net
    before = dict(os.environ)
    env = nnunet.environment(tmp_path, device="cpu", threads=1, seed=3, iterations=5)
    assert dict(os.environ) == before
    assert env["nnUNet_raw"] == str(tmp_path.resolve() / "nnUNet_raw")
    assert env["nnUNet_preprocessed"] == str(tmp_path.resolve() / "nnUNet_preprocessed")
    assert env["nnUNet_results"] == str(tmp_path.resolve() / "nnUNet_results")
    assert os.path.isfile(os.path.join(env["nnUNet_extTrainer"], "sbldm_trainers.py"))
    assert env["nnUNet_n_proc_DA"] == "0" and env["nnUNet_compile"] == "f"
    assert env["SBLDM_NNUNET_SEED"] == "3" and env["SBLDM_NNUNET_ITERATIONS"] == "5"
    assert "SBLDM_NNUNET_EPOCHS" not in env
    assert env["SBLDM_NNUNET_THREADS"] == "1" and env["OMP_NUM_THREADS"] == "1"
    gpu = nnunet.environment(tmp_path, device="cuda")
    assert "nnUNet_compile" not in gpu or gpu["nnUNet_compile"] == os.environ.get("nnUNet_compile")


def test_missing_nnunetv2_names_the_extra(monkeypatch):
    monkeypatch.setattr(nnunet, "available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install -e \.\[nnunet\]"):
        nnunet.require()
    images, masks = _blobs(1, (8, 8, 8))
    with pytest.raises(ImportError, match="nnunet extra"):
        nnunet.train_and_predict(images, masks, images, config.resolve("smoke"), "unused")


def test_launcher_refuses_unknown_entry():
    from sbldm.segmentation import _nnunet_launch

    with pytest.raises(SystemExit, match="usage"):
        _nnunet_launch.main(["fit"])


def test_export_layout_and_rerun_rules(tmp_path):
    images, masks = _blobs(3, (8, 8, 8))
    out = nnunet.export(tmp_path, images[:2], masks[:2], images[2:], dataset_id=5, name="T")
    folder = out["dataset_folder"]
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["train_000_0000.nii.gz", "train_001_0000.nii.gz"]
    assert [p.name for p in (folder / "imagesTs").iterdir()] == ["test_000_0000.nii.gz"]
    assert not (folder / "labelsTs").exists()          # no test masks given: no labels written
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2
    # a work_dir sbldm made is replaced on a re-run; a foreign one is not touched
    nnunet.export(tmp_path, images[:1], masks[:1], None, dataset_id=5, name="T")
    assert len(list((folder / "imagesTr").iterdir())) == 1
    with pytest.raises(FileExistsError, match="overwrite=True"):
        nnunet.export(tmp_path, images[:1], masks[:1], None, dataset_id=5, name="T", overwrite=False)
    foreign = tmp_path / "foreign"
    (foreign / "nnUNet_raw" / "Dataset005_Other").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        nnunet.export(foreign, images[:1], masks[:1], None, dataset_id=5, name="T")
    with pytest.raises(ValueError, match="overlap"):
        nnunet.export(tmp_path / "x", images[:1], masks[:1], images[:1], train_ids=["a"], test_ids=["a"])


def test_an_export_of_several_sequences_writes_one_input_channel_each(tmp_path):
    import nibabel as nib

    images, masks = _blobs(3, (8, 8, 8))
    two = np.stack([images, -images], axis=1)                   # (N, 2, x, y, z): the second the negative
    out = nnunet.export(tmp_path, two[:2], masks[:2], two[2:], dataset_id=6, name="S",
                        channels=nnunet.channel_names(("t1c", "flair")))
    folder = out["dataset_folder"]
    assert json.loads((folder / "dataset.json").read_text())["channel_names"] == {"0": "T1ce", "1": "FLAIR"}
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [
        "train_000_0000.nii.gz", "train_000_0001.nii.gz", "train_001_0000.nii.gz", "train_001_0001.nii.gz"]
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["test_000_0000.nii.gz", "test_000_0001.nii.gz"]
    for k in (0, 1):
        np.testing.assert_allclose(np.asarray(nib.load(folder / "imagesTs" / f"test_000_000{k}.nii.gz").dataobj),
                                   two[2, k], atol=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        nnunet.export(tmp_path / "b", two[:2, :, :-1], masks[:2], None, channels=["T1ce", "FLAIR"])
    with pytest.raises(ValueError, match=r"2 image channel\(s\) for the 1 channel name"):
        nnunet.export(tmp_path / "c", two[:2], masks[:2], None)


def test_narrow_plans_copy(tmp_path):
    folder = tmp_path / "nnUNet_preprocessed" / "Dataset007_T"
    folder.mkdir(parents=True)
    arch = {"arch_kwargs": {"n_stages": 5, "features_per_stage": [32, 64, 128, 256, 320]}}
    plans = {"plans_name": "nnUNetPlans", "configurations": {
        "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "patch_size": [16, 32, 32], "batch_size": 2,
                       "spacing": [1, 1, 1], "architecture": arch},
        "3d_lowres": {"inherits_from": "3d_fullres"}}}
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    path = nnunet.write_plan_copy(tmp_path, 7, "T")
    narrow = json.loads(path.read_text())
    assert narrow["plans_name"] == nnunet.NARROW_PLANS
    conf = narrow["configurations"]["3d_fullres"]
    assert conf["architecture"]["arch_kwargs"]["features_per_stage"] == [8, 16, 32, 64, 80]
    assert conf["data_identifier"] == "nnUNetPlans_3d_fullres"    # reads the same preprocessed data
    assert nnunet.read_plan(tmp_path, 7, "T", nnunet.NARROW_PLANS)["patch_size"] == [16, 32, 32]
    assert json.loads((folder / "nnUNetPlans.json").read_text()) == plans    # the stock plan is left alone
    assert nnunet.read_plan(tmp_path, 7, "T", nnunet.NARROW_PLANS)["batch_size"] == 2     # nnU-Net's batch kept
    # a fixed batch, with the narrow widths or with nnU-Net's own
    nnunet.write_plan_copy(tmp_path, 7, "T", batch_size=5)
    assert nnunet.read_plan(tmp_path, 7, "T", nnunet.NARROW_PLANS)["batch_size"] == 5
    nnunet.write_plan_copy(tmp_path, 7, "T", plans_name=nnunet.FIXED_BATCH_PLANS, batch_size=4, narrow=False)
    fixed = nnunet.read_plan(tmp_path, 7, "T", nnunet.FIXED_BATCH_PLANS)
    assert fixed["batch_size"] == 4 and fixed["features_per_stage"] == [32, 64, 128, 256, 320]
    with pytest.raises(ValueError, match="batch_size"):
        nnunet.write_plan_copy(tmp_path, 7, "T", batch_size=0)
    assert json.loads((folder / "nnUNetPlans.json").read_text()) == plans


# -- the real thing --------------------------------------------------------------------

def _assert_no_leak(before):
    """No variable of the test process changed, and none of the nnU-Net run's appeared
    (libraries imported meanwhile, e.g. MONAI by the metrics, may add their own)."""
    after = dict(os.environ)
    assert {k: after.get(k) for k in before} == before
    leaked = {k for k in set(after) - set(before)
              if k.startswith(("nnUNet", "SBLDM", "OMP_", "MKL_", "OPENBLAS_", "PYTHON"))}
    assert not leaked


@pytest.mark.nnunet
@pytest.mark.slow
def test_smoke_run_plan_preprocess_train_predict(tmp_path):
    pytest.importorskip("nnunetv2")
    cfg = config.resolve("smoke", tumour_labels="whole")      # the paper's binary task; label maps: notebook 06
    assert cfg.seg_nnunet_augmentation and cfg.seg_nnunet_fold == "all"
    train_images, train_masks = _blobs(4, seed=0)
    test_images, test_masks = _blobs(2, seed=1)
    env_before = dict(os.environ)
    modules_before = {m for m in ("timm", "torchvision") if m in sys.modules}
    res = nnunet.train_and_predict(train_images, train_masks, test_images, cfg, tmp_path / "run", seed=0,
                                   test_masks=test_masks, device="cpu", threads=1, tta=True)
    # nothing of the nnU-Net subprocesses leaks into this process
    _assert_no_leak(env_before)
    assert {m for m in ("timm", "torchvision") if m in sys.modules} == modules_before
    pred = res["predictions"]
    assert pred.shape == test_images.shape and pred.dtype == np.uint8
    assert set(np.unique(pred).tolist()) <= {0, 1}
    assert [r["case_id"] for r in res["metrics"]] == ["test_000", "test_001"]
    # the settings recorded are the ones used
    assert res["trainer"] == "sbldmTrainer" and res["stock_trainer"] == "nnUNetTrainer"
    assert res["augmentation"] is True and res["tta"] is True
    assert res["plans"] == nnunet.NARROW_PLANS and res["narrow"] is True
    assert res["features_per_stage"][0] == 8 and max(res["features_per_stage"]) <= 80
    assert res["folds"] == ["all"] and res["final_validation"] is False
    assert (res["epochs"], res["iterations_per_epoch"]) == (cfg.seg_nnunet_epochs, cfg.seg_nnunet_iterations)
    model = res["paths"]["model"]
    assert model.name == "sbldmTrainer__sbldmNarrowPlans__3d_fullres"
    assert (model / "fold_all" / "checkpoint_final.pth").is_file()
    log = (res["paths"]["logs"] / "train_fold_all.log").read_text()
    assert f"num_epochs={cfg.seg_nnunet_epochs}, num_iterations_per_epoch={cfg.seg_nnunet_iterations}" in log
    assert "features_per_stage': [8, 16" in log and "seed=0" in log
    assert "verify_dataset_integrity Done" in (res["paths"]["logs"] / "plan_and_preprocess.log").read_text()
    assert set(res["timings"]) >= {"export", "plan_and_preprocess", "train", "predict", "total"}
    # the kept model segments more images later (e.g. synthetic ones): same images, same masks
    again = nnunet.predict_images(res, test_images, tag="again")
    np.testing.assert_array_equal(again, pred)

    # The authors' setting, no augmentation, on the same preprocessed data: one short epoch.
    env = nnunet.environment(tmp_path / "run", device="cpu", threads=1, seed=0, epochs=1, iterations=1,
                             val_iterations=1, final_validation=False)
    nnunet.train(tmp_path / "run", fold="all", trainer=nnunet.TRAINERS[False], plans_name=nnunet.NARROW_PLANS,
                 env=env)
    import torch

    ckpt = torch.load(tmp_path / "run" / "nnUNet_results" / "Dataset211_sbldm"
                      / "sbldmTrainerNoDA__sbldmNarrowPlans__3d_fullres" / "fold_all" / "checkpoint_final.pth",
                      map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "sbldmTrainerNoDA" and ckpt["inference_allowed_mirroring_axes"] is None
    _assert_no_leak(env_before)


@pytest.mark.nnunet
@pytest.mark.slow
def test_a_failing_step_shows_nnunets_log_tail(tmp_path):
    pytest.importorskip("nnunetv2")
    with pytest.raises(nnunet.NnUNetError) as info:
        nnunet.train(tmp_path, 998, env=nnunet.environment(tmp_path, threads=1))
    message = str(info.value)
    assert "'train_fold_all' failed" in message and "last" in message
    assert "998" in message                       # nnU-Net's own complaint about the missing dataset
    assert (tmp_path / "logs" / "train_fold_all.log").is_file()
