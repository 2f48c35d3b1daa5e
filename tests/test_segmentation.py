import math

import numpy as np
import pytest
from conftest import ball

from sbldm import config
from sbldm.segmentation import fast as seg


def test_case_metrics_hand_computed():
    a = np.zeros((10, 10, 10), np.uint8)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6] = 1          # 64 voxels
    b[4:8, 2:6, 2:6] = 1          # 64 voxels, 32 shared
    m = seg.case_metrics(a, b)
    assert m["dice"] == pytest.approx(0.5) and m["iou"] == pytest.approx(32 / 96)
    assert m["hd95"] == pytest.approx(2.0)       # the boxes are offset by two voxels along x
    assert seg.case_metrics(a, a) == {"dice": 1.0, "iou": 1.0, "hd95": 0.0}
    empty = np.zeros_like(a)
    assert seg.case_metrics(empty, empty)["dice"] == 1.0
    one_empty = seg.case_metrics(empty, a)
    assert one_empty["dice"] == 0.0 and math.isnan(one_empty["hd95"])
    with pytest.raises(ValueError, match="differs"):
        seg.case_metrics(a, a[:5])


def test_dice_iou_agree_with_monai():
    import torch
    from monai.metrics import compute_dice, compute_iou

    rng = np.random.default_rng(0)
    p = (rng.random((12, 12, 12)) > 0.6).astype(np.uint8)
    t = (rng.random((12, 12, 12)) > 0.5).astype(np.uint8)
    onehot = lambda m: torch.as_tensor(np.stack([1 - m, m]))[None].float()  # noqa: E731
    m = seg.case_metrics(p, t)
    assert m["dice"] == pytest.approx(float(compute_dice(onehot(p), onehot(t), include_background=False)))
    assert m["iou"] == pytest.approx(float(compute_iou(onehot(p), onehot(t), include_background=False)))


def _blob_data(n, shape=(16, 16, 16), seed=0):
    rng = np.random.default_rng(seed)
    masks = np.stack([ball(shape, centre=rng.uniform(5, 10, 3), radius=rng.uniform(2.5, 4)) for _ in range(n)])
    images = np.where(masks > 0, 0.8, -0.5) + rng.normal(0, 0.1, masks.shape)
    return images.astype(np.float32), masks


def test_fast_backend_learns_a_bright_blob_and_is_seeded():
    cfg = config.resolve("smoke", seg_channels=(8, 16), seg_iterations=60, seg_lr=1e-2, seg_batch_size=2,
                         seg_roi=(16, 16, 16))
    images, masks = _blob_data(6)
    model = seg.train_fast(images, masks, cfg, seed=0)
    assert model.losses[-1] < model.losses[0] * 0.7
    test_images, test_masks = _blob_data(3, seed=1)
    rows = seg.evaluate(model.predict(test_images), test_masks)
    assert np.mean([r["dice"] for r in rows]) > 0.8
    again = seg.train_fast(images, masks, cfg, seed=0, iterations=5)
    again2 = seg.train_fast(images, masks, cfg, seed=0, iterations=5)
    assert again.losses == again2.losses
    feats = model.features(test_images)
    assert feats.shape == (3, 2 * 16) and np.all(np.isfinite(feats))


def test_fast_backend_learns_sub_regions_from_label_maps(tmp_path):
    """Four classes (background, necrosis, oedema, enhancing) told apart by intensity: the
    argmax label map recovers each BraTS region; label maps are refused as binary targets,
    and a class count other than 2 or 4 is refused."""
    from sbldm.segmentation.brats_metrics import region_dice_rows

    def data(n, seed):
        rng = np.random.default_rng(seed)
        labels = []
        for _ in range(n):
            c = rng.uniform(6, 10, 3)
            lab = ball((16, 16, 16), c, 5).astype(np.uint8) * 2
            lab[ball((16, 16, 16), c, 3) > 0] = 3
            lab[ball((16, 16, 16), c, 1.6) > 0] = 1
            labels.append(lab)
        labels = np.stack(labels)
        return (np.choose(labels, [-0.7, 0.1, 0.45, 0.9]) + rng.normal(0, 0.05, labels.shape)).astype(np.float32), labels

    cfg = config.resolve("smoke", seg_channels=(8, 16), seg_lr=1e-2, seg_batch_size=2, seg_roi=(16, 16, 16))
    images, labels = data(6, 0)
    model = seg.train_fast(images, labels, cfg, seed=0, iterations=80, classes=4)
    test_images, test_labels = data(3, 1)
    pred = model.predict(test_images)
    assert set(np.unique(pred)) <= {0, 1, 2, 3}
    dice = {r["region"]: r["mean"] for r in region_dice_rows(pred, test_labels)}
    assert dice["WT"] > 0.8 and dice["TC"] > 0.7 and dice["ET"] > 0.5, dice
    assert seg.region_score(pred, test_labels, 4) == pytest.approx(np.mean(list(dice.values())))
    with pytest.raises(ValueError, match="2 classes expect binary masks"):
        seg.train_fast(images, labels, cfg, seed=0, iterations=1)
    with pytest.raises(ValueError, match="classes must be 2"):
        seg.train_fast(images, labels, cfg, seed=0, iterations=1, classes=3)
    model.save(tmp_path / "seg.pt")
    back = seg.Segmenter.load(tmp_path / "seg.pt")
    assert back.classes == 4 and np.array_equal(back.predict(test_images), pred)


def test_segmenter_save_load_round_trip(tmp_path):
    cfg = config.resolve("smoke", seg_channels=(4, 8), seg_iterations=2, seg_roi=(16, 16, 16))
    images, masks = _blob_data(2)
    model = seg.train_fast(images, masks, cfg, seed=0)
    model.save(tmp_path / "seg.pt")
    back = seg.Segmenter.load(tmp_path / "seg.pt")
    assert np.array_equal(back.logits(images), model.logits(images))


def test_mirroring_and_training_patches_are_seeded_and_change_what_is_seen(monkeypatch):
    """With ``seg_flip_axes`` the batches are mirrored at random (same seed, same batches);
    with ``seg_patch`` the network is trained on crops of that size but predicts whole volumes."""
    import torch

    images, masks = _blob_data(4, shape=(16, 16, 12))
    seen = []

    def spy(model):
        orig = model.forward

        def forward(x):
            seen.append(x.detach().clone())
            return orig(x)

        model.forward = forward
        return model

    import sbldm.segmentation.fast as fast_mod

    build = fast_mod.build_unet
    monkeypatch.setattr(fast_mod, "build_unet", lambda seg_cfg, classes=2, in_channels=1: spy(build(seg_cfg, classes, in_channels)))
    base = dict(seg_channels=(4, 8), seg_roi=(16, 16, 12), seg_batch_size=2)
    seg.train_fast(images, masks, config.resolve("smoke", **base), seed=0, iterations=6)
    plain, seen[:] = list(seen), []
    seg.train_fast(images, masks, config.resolve("smoke", seg_flip_axes=(0,), **base), seed=0, iterations=6)
    flipped, seen[:] = list(seen), []
    seg.train_fast(images, masks, config.resolve("smoke", seg_flip_axes=(0,), **base), seed=0, iterations=6)
    again, seen[:] = list(seen), []
    assert all(torch.equal(a, b) for a, b in zip(flipped, again))                 # seeded
    assert any(not torch.equal(a, b) for a, b in zip(plain, flipped))             # some batches mirrored
    pool = [torch.as_tensor(v) for v in images]
    # every training input is one of the volumes, possibly mirrored left-right
    for batch in flipped:
        for x in batch[:, 0]:
            assert any(torch.equal(x, v) or torch.equal(x, torch.flip(v, (0,))) for v in pool)
    model = seg.train_fast(images, masks, config.resolve("smoke", seg_patch=(8, 8, 8), **base), seed=0, iterations=2)
    assert {tuple(b.shape[2:]) for b in seen} == {(8, 8, 8)}                      # crops while training
    assert model.predict(images).shape == images.shape                           # whole volumes at inference
    with pytest.raises(ValueError, match="seg_flip_axes"):
        config.resolve("smoke", seg_flip_axes=(3,))


def test_tumour_centred_crops_of_a_label_map_centre_on_a_tumour_voxel():
    """The fast segmenter's crops are centred on a tumour voxel half of the time. A label map
    (values 1-3) sums to more than its voxel count; the crop must still draw its centre among
    the tumour voxels, never fail and always hold the tumour when the ROI can."""
    from sbldm.segmentation.fast import _crop

    image = np.zeros((1, 16, 16, 8), np.float32)
    labels = np.zeros((16, 16, 8), np.uint8)
    labels[12:14, 12:14, 6] = 3                 # 4 voxels summing to 12
    labels[13, 13, 6] = 1
    rng = np.random.default_rng(0)
    held = [(_crop(image, labels, (4, 4, 2), rng)[1] > 0).any() for _ in range(200)]
    assert 0.4 < np.mean(held) <= 1.0           # about half are tumour-centred, and those hold the tumour
    binary = labels > 0                         # a binary mask: the same draws as before the label maps
    a = _crop(image, binary, (4, 4, 2), np.random.default_rng(1))[1]
    b = _crop(image, labels, (4, 4, 2), np.random.default_rng(1))[1]
    assert np.array_equal(a, b > 0)


def test_the_fast_segmenter_reads_one_input_channel_per_sequence(tmp_path):
    """One sequence given with or without its channel axis trains the same network; two
    sequences make a two-input network whose crops keep the sequences and the mask aligned,
    which refuses one-sequence images and saves and loads with its inputs."""
    from model_helpers import tiny_cfg
    from sbldm.segmentation.fast import Segmenter, _crop, train_fast

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (3, 16, 16, 8)).astype(np.float32)
    masks = np.zeros((3, 16, 16, 8), np.uint8)
    masks[:, 5:9, 5:9, 2:6] = 1
    cfg = tiny_cfg(seg_channels=(4, 8), seg_batch_size=2, seg_roi=(8, 8, 8), seg_flip_axes=(0, 1))
    a = train_fast(images, masks, cfg, seed=3, iterations=3)
    b = train_fast(images[:, None], masks, cfg, seed=3, iterations=3)
    assert a.losses == b.losses and a.in_channels == b.in_channels == 1
    np.testing.assert_array_equal(a.predict(images), b.predict(images[:, None]))
    # crops of two sequences: the second is the first + 1 everywhere, the mask painted into the first
    two = np.stack([images, images + 1], axis=1)
    two[:, 0][masks > 0] = 5.0
    for seed in range(20):
        x, y = _crop(two[0], masks[0], (8, 8, 4), np.random.default_rng(seed))
        assert x.shape == (2, 8, 8, 4) and y.shape == (8, 8, 4)
        np.testing.assert_allclose((x[1] - 1)[y == 0], x[0][y == 0], atol=1e-6)
        np.testing.assert_array_equal(x[0] == 5.0, y > 0)
    seg = train_fast(two, masks, cfg, seed=3, iterations=2)
    assert seg.in_channels == 2 and seg.model.model[0].conv.unit0.conv.in_channels == 2
    with pytest.raises(ValueError, match="reads 2 sequence"):
        seg.predict(images)
    seg.save(tmp_path / "seg.pt")
    back = Segmenter.load(tmp_path / "seg.pt")
    assert back.in_channels == 2
    np.testing.assert_array_equal(back.predict(two), seg.predict(two))
    with pytest.raises(ValueError, match="images of S sequences"):
        train_fast(two[:, :, :-1], masks, cfg, iterations=1)
