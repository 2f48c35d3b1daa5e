import math

import numpy as np
import pytest
from conftest import ball

from sbldm import config
from sbldm.segmentation import table2


def _vols(n=3, shape=(16, 16, 12), seed=0):
    rng = np.random.default_rng(seed)
    masks = np.stack([ball(shape, centre=rng.uniform(5, 9, 3), radius=3) for _ in range(n)])
    return (np.where(masks > 0, 0.7, -0.6) + rng.normal(0, 0.05, masks.shape)).astype(np.float32), masks


def test_augment_makes_factor_times_the_set_seeded_and_binary():
    images, masks = _vols()
    ai, am = table2.augment(images, masks, 3, seed=1)
    assert ai.shape == (9, 16, 16, 12) and am.dtype == np.uint8 and set(np.unique(am)) <= {0, 1}
    assert np.array_equal(ai[:3], images) and np.array_equal(am[:3], masks)   # originals first
    assert not np.allclose(ai[3:6], images)                                   # copies differ
    bi, bm = table2.augment(images, masks, 3, seed=1)
    assert np.array_equal(ai, bi) and np.array_equal(am, bm)
    assert ai.min() >= -1 and ai.max() <= 1
    # the tumour stays where the image is bright: augmentation moves image and mask together
    assert ai[3:][am[3:] > 0].mean() > ai[3:][am[3:] == 0].mean() + 0.8
    with pytest.raises(ValueError):
        table2.augment(images, masks, 0)


def test_training_sets_have_every_row_and_the_papers_ratio():
    class P:  # a Prepared-like real split
        images, masks = _vols(4)

        def __len__(self):
            return 4

    samples = {k: {"images": _vols(5, seed=2)[0], "masks": _vols(5, seed=2)[1]} for k in table2.SYNTHETIC.values()}
    cfg = config.resolve("smoke", seg_augment_factor=2)
    sets = table2.training_sets(P(), samples, cfg)
    sizes = {k: len(v[0]) for k, v in sets.items()}
    assert sizes == {"real": 4, "real + augmentation (x2)": 8, "synthetic only: 3D-LSGAN": 4,
                     "synthetic only: 3D-LDM": 4, "synthetic only: SBLDM": 4, "real + 3D-LSGAN": 8,
                     "real + 3D-LDM": 8, "real + SBLDM": 8, "real + SBLDM + augmentation": 12}
    with pytest.raises(ValueError, match="need 4"):
        table2.training_sets(P(), {k: {"images": v["images"][:2], "masks": v["masks"][:2]} for k, v in samples.items()}, cfg)


def test_summarise_means_seeds_and_paired_test():
    cases = []
    for seed in (0, 1):
        for i in range(8):
            cases.append({"row": "real", "seed": seed, "n_train_volumes": 4, "case_id": f"c{i}",
                          "dice": 0.5 + 0.01 * i, "iou": 0.4, "hd95": 3.0})
            cases.append({"row": "real + SBLDM", "seed": seed, "n_train_volumes": 8, "case_id": f"c{i}",
                          "dice": 0.7 + 0.01 * i + 0.02 * seed, "iou": 0.6, "hd95": math.nan if i == 0 else 2.0})
    rows = table2.summarise(cases)
    real, syn = rows
    assert real["dice_mean"] == pytest.approx(0.535) and math.isnan(real["p_vs_real"])
    assert syn["dice_mean"] == pytest.approx(0.745) and syn["dice_std_across_seeds"] == pytest.approx(0.01)
    assert syn["p_vs_real"] < 0.05                     # better on every one of 8 cases
    assert syn["hd95_mean"] == pytest.approx(2.0)      # the NaN case left out
    assert (syn["paper_dice"], real["paper_dice"]) == (0.815, 0.714)
    md = table2.table2_markdown(rows, "smoke", "fast", "test", 8)
    assert "real + SBLDM" in md and "0.815" in md and "*" in md
