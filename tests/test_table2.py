import math

import numpy as np
import pytest
from conftest import ball

from sbldm import config
from sbldm.data.tumour import tumour_features
from sbldm.segmentation import fast, statistics, table2


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


class _Split:
    """A Prepared-like split of ``n`` blob volumes with isotropic 2 mm voxels."""

    def __init__(self, n, seed=0):
        self.images, self.masks = _vols(n, seed=seed)
        self.labels = self.masks * 2                       # oedema only: a label map of the whole tumour
        self.case_ids = [f"case{i}" for i in range(n)]
        self.affines = np.stack([np.diag([2.0, 2.0, 2.0, 1.0])] * n)

    def __len__(self):
        return len(self.images)


def _samples(n=5, seed=2, conditions=True):
    images, masks = _vols(n, seed=seed)
    cond = np.array([[f[k] for k in config.FEATURE_NAMES] for f in map(tumour_features, masks)])
    return {k: {"images": images, "masks": masks, "labels": masks * 2, "conditions": cond if conditions else None}
            for k in table2.SYNTHETIC.values()}


def test_training_sets_have_every_row_and_the_papers_ratio():
    cfg = config.resolve("smoke", seg_augment_factor=2)
    sets, report = table2.training_sets(_Split(4), _samples(), cfg)
    sizes = {k: len(v[0]) for k, v in sets.items()}
    assert sizes == {"real": 4, "real + augmentation (x2)": 8, "synthetic only: 3D-LSGAN": 4,
                     "synthetic only: 3D-LDM": 4, "synthetic only: SBLDM": 4, "real + 3D-LSGAN": 8,
                     "real + 3D-LDM": 8, "real + SBLDM": 8, table2.FILTERED: 8, "real + SBLDM + augmentation": 12}
    # the synthetic masks are exactly the tumours asked for: the filter keeps all of them
    assert report["kept"] == 4 and report["rejection_rate"] == 0
    with pytest.raises(ValueError, match="need 4"):
        table2.training_sets(_Split(4), {k: {"images": v["images"][:2], "masks": v["masks"][:2], "labels": None}
                                         for k, v in _samples().items()}, cfg)
    # without the requested tumours there is nothing to filter against: no filtered row, said by an empty report
    sets, report = table2.training_sets(_Split(4), _samples(conditions=False), cfg)
    assert table2.FILTERED not in sets and report == {}


def test_a_bad_synthetic_set_is_refused_naming_the_generator_and_volume():
    images, masks = _vols(4)
    images[2, 3, 3, 3] = np.nan
    with pytest.raises(table2.SyntheticSetError, match="3D-LDM: synthetic volume 2 holds NaN"):
        table2.check_synthetic("3D-LDM", images, masks)
    images, masks = _vols(4)
    masks = masks.astype(np.float32)
    masks[1, 0, 0, 0] = 0.5
    with pytest.raises(table2.SyntheticSetError, match="SBLDM: the mask of synthetic volume 1 is not binary"):
        table2.check_synthetic("SBLDM", images, masks)
    with pytest.raises(table2.SyntheticSetError, match="3D-LSGAN: images .* and masks"):
        table2.check_synthetic("3D-LSGAN", images, masks[:, :-1])
    samples = _samples()
    samples["SBLDM (DDIM)"]["images"] = samples["SBLDM (DDIM)"]["images"].copy()
    samples["SBLDM (DDIM)"]["images"][3] = np.inf
    with pytest.raises(table2.SyntheticSetError, match="SBLDM: synthetic volume 3"):
        table2.training_sets(_Split(4), samples, config.resolve("smoke"))


def test_quality_filter_rejects_empty_misplaced_and_mis_sized_tumours():
    shape = (24, 24, 16)
    cfg = config.resolve("smoke", seg_filter_max_centre_distance=3.0, seg_filter_max_volume_error=0.5)
    good = ball(shape, (10, 10, 8), 4)
    requested = np.array([tumour_features(good)[k] for k in config.FEATURE_NAMES])
    moved = ball(shape, (16, 10, 8), 4)                      # 6 voxels off
    small = ball(shape, (10, 10, 8), 2)                      # about 1/8 of the volume
    near = ball(shape, (11, 11, 8), 4)                       # 1.4 voxels off, same size
    masks = np.stack([good, np.zeros(shape, np.uint8), moved, small, near])
    keep, report = table2.quality_filter(masks, np.stack([requested] * 5), cfg)
    assert keep.tolist() == [True, False, False, False, True]
    assert report == {"n": 5, "rejected_empty": 1, "rejected_centre": 1, "rejected_volume": 1, "kept": 2,
                      "rejection_rate": pytest.approx(0.6)}
    with pytest.raises(ValueError, match="4 requested tumours for 5"):
        table2.quality_filter(masks, np.stack([requested] * 4), cfg)


def test_budget_from_the_learning_curve():
    curve = [{"iteration": 100, "val_dice": 0.5}, {"iteration": 200, "val_dice": 0.795},
             {"iteration": 300, "val_dice": 0.80}, {"iteration": 400, "val_dice": 0.79}]
    assert table2.choose_budget(curve, 0.01) == 200
    assert table2.choose_budget(curve, 0.0) == 300
    fit, val = table2.validation_split(10, 0.2, seed=3)
    assert len(val) == 2 and len(fit) == 8 and not set(fit) & set(val) and set(fit) | set(val) == set(range(10))
    assert np.array_equal(table2.validation_split(10, 0.2, seed=3)[1], val)
    assert len(table2.validation_split(2, 0.9)[0]) == 1        # never an empty fit set
    with pytest.raises(ValueError):
        table2.choose_budget([], 0.01)


@pytest.mark.slow
def test_learning_curve_points_are_the_networks_a_shorter_budget_gives():
    cfg = config.resolve("smoke", seg_channels=(4, 8), seg_roi=(16, 16, 12), seg_iterations=6, seg_curve_every=4,
                         seg_val_fraction=0.25, seg_plateau_tolerance=1.0, tumour_labels="whole")
    train = _Split(8)
    result = table2.learning_curve(train, cfg, seed=0, progress=None)
    assert [r["iteration"] for r in result["curve"]] == [4, 6]          # every 4 steps and the last
    assert result["budget"] == 4 and (result["n_fit"], result["n_val"]) == (6, 2)
    fit, val = table2.validation_split(8, 0.25, seed=0)
    short = fast.train_fast(train.images[fit], train.masks[fit], cfg, seed=0, iterations=4)
    dice = np.mean([r["dice"] for r in fast.evaluate(short.predict(train.images[val]), train.masks[val])])
    assert dice == pytest.approx(result["curve"][0]["val_dice"])


def test_holm_by_hand():
    adj = statistics.holm({"a": 0.01, "b": 0.04, "c": 0.03, "ref": math.nan})
    assert adj["a"] == pytest.approx(0.03) and adj["c"] == pytest.approx(0.06) and adj["b"] == pytest.approx(0.06)
    assert math.isnan(adj["ref"])
    # capped at 1, and never smaller than a smaller raw p's adjusted value (step-down monotonicity)
    assert statistics.holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}
    assert statistics.holm({"a": 0.001, "b": 0.3}) == {"a": pytest.approx(0.002), "b": pytest.approx(0.3)}


def test_summarise_means_seeds_and_paired_test():
    cases = []
    for seed in (0, 1):
        for i in range(8):
            cases.append({"row": "real", "seed": seed, "n_train_volumes": 4, "case_id": f"c{i}",
                          "dice": 0.5 + 0.01 * i, "iou": 0.4, "hd95": 3.0, "empty_prediction": False})
            cases.append({"row": "real + SBLDM", "seed": seed, "n_train_volumes": 8, "case_id": f"c{i}",
                          "dice": 0.0 if i == 0 else 0.7 + 0.01 * i + 0.02 * seed, "iou": 0.6,
                          "hd95": math.nan if i == 0 else 2.0, "empty_prediction": i == 0})
    rows = statistics.summarise(cases)
    real, syn = rows
    assert real["dice_mean"] == pytest.approx(0.535) and math.isnan(real["p_vs_real"])
    per_seed = [np.mean([0.0] + [0.7 + 0.01 * i + 0.02 * s for i in range(1, 8)]) for s in (0, 1)]
    assert syn["dice_mean"] == pytest.approx(np.mean(per_seed))
    assert syn["dice_seed_std"] == pytest.approx(np.std(per_seed, ddof=1)) and real["dice_seed_std"] == 0
    from scipy.stats import wilcoxon

    diff = [np.mean([0.0 if i == 0 else 0.7 + 0.01 * i + 0.02 * s for s in (0, 1)]) - (0.5 + 0.01 * i) for i in range(8)]
    assert syn["p_vs_real"] == pytest.approx(wilcoxon(diff).pvalue)   # paired on the seed-averaged per-case Dice
    assert syn["p_holm"] == pytest.approx(syn["p_vs_real"])   # one row compared: Holm changes nothing
    assert syn["hd95_mean"] == pytest.approx(2.0) and syn["hd95_n"] == 14       # the 2 undefined ones counted out
    assert syn["empty_predictions"] == 1.0 and real["empty_predictions"] == 0.0  # per seed, not hidden
    assert (syn["paper_dice"], real["paper_dice"]) == (0.815, 0.714)
    md = table2.table2_markdown(rows, "smoke", "fast", "test", 8, ["a note"])
    assert "real + SBLDM" in md and "0.815" in md and "*" in md and "1.0 / 8" in md and "- a note" in md


def test_evaluate_gives_hd95_in_mm_with_the_spacing():
    a = np.zeros((12, 12, 12), np.uint8)
    b = np.zeros_like(a)
    a[3:7, 3:7, 3:7] = 1
    b[3:7, 3:7, 5:9] = 1                                   # two voxels along z
    vox, mm = fast.evaluate([a], [b]), fast.evaluate([a], [b], spacings=[(1.0, 1.0, 3.0)])
    assert vox[0]["hd95"] == pytest.approx(2.0) and mm[0]["hd95"] == pytest.approx(6.0)
    assert mm[0]["dice"] == vox[0]["dice"] and not mm[0]["empty_prediction"]
    assert fast.evaluate([np.zeros_like(a)], [b])[0]["empty_prediction"]
    assert table2.spacings(_Split(2)) == [(2.0, 2.0, 2.0)] * 2


def _label_maps(n=3, shape=(16, 16, 12), seed=0):
    """Blob volumes with sub-regions: oedema shell, enhancing ring, necrotic centre."""
    rng = np.random.default_rng(seed)
    labels = []
    for _ in range(n):
        c = rng.uniform(6, 9, 3)
        lab = ball(shape, c, 4).astype(np.uint8) * 2
        lab[ball(shape, c, 2.5) > 0] = 3
        lab[ball(shape, c, 1.2) > 0] = 1
        labels.append(lab)
    labels = np.stack(labels)
    images = np.choose(labels, [-0.6, 0.0, 0.5, 0.9]) + rng.normal(0, 0.05, labels.shape)
    return images.astype(np.float32), labels


class _LabelSplit(_Split):
    def __init__(self, n, seed=0):
        super().__init__(n, seed)
        self.images, self.labels = _label_maps(n, seed=seed)
        self.masks = (self.labels > 0).astype(np.uint8)


def test_augment_keeps_label_values():
    images, labels = _label_maps()
    _, al = table2.augment(images, labels, 3, seed=0)
    assert set(np.unique(al)) <= {0, 1, 2, 3} and {1, 2, 3} <= set(np.unique(al[3:]))
    assert np.array_equal(al[:3], labels)


def test_label_maps_are_checked_and_a_set_without_them_is_refused():
    images, labels = _label_maps(2)
    table2.check_synthetic("SBLDM", images, labels, labels=True)          # 0-3 accepted
    with pytest.raises(table2.SyntheticSetError, match="SBLDM: the mask of synthetic volume 0 is not binary"):
        table2.check_synthetic("SBLDM", images, labels)
    bad = labels.copy()
    bad[1, 0, 0, 0] = 4                                                    # an unmapped BraTS 2021 enhancing
    with pytest.raises(table2.SyntheticSetError, match="label map of synthetic volume 1 .* values"):
        table2.check_synthetic("3D-LDM", images, bad, labels=True)
    with pytest.raises(table2.SyntheticSetError, match="3D-LSGAN: the sample set carries no sub-region label maps"):
        table2.synthetic_set("3D-LSGAN", {"images": images, "masks": labels > 0, "labels": None}, 2, labels=True)


def test_score_per_region_on_hand_made_maps():
    """A perfect prediction scores 1 everywhere; an empty one 0 with the BraTS penalty; a
    prediction that swaps enhancing for necrosis keeps WT and TC and loses ET."""
    from sbldm.segmentation import brats_metrics as bm

    cfg = config.resolve("smoke")
    test = _LabelSplit(2)
    perfect = table2.score(test.labels, test, cfg)
    assert all(r[f"{m}_{g}"] == 1.0 for r in perfect for g in ("WT", "TC", "ET") for m in ("dice", "lesion_dice"))
    assert all(r["dice"] == 1.0 and r["hd95"] == 0.0 and r[f"false_positives_{g}"] == 0
               for r in perfect for g in ("WT", "TC", "ET"))
    empty = table2.score(np.zeros_like(test.labels), test, cfg)
    assert all(r["dice_WT"] == 0 and r["lesion_dice_WT"] == 0 and r["lesion_hd95_WT"] == bm.HD95_PENALTY_MM
               and r["missed_WT"] == 1 and r["empty_prediction"] for r in empty)
    swapped = test.labels.copy()
    swapped[test.labels == 3] = 1
    rows = table2.score(swapped, test, cfg)
    assert all(r["dice_WT"] == 1 and r["dice_TC"] == 1 and r["dice_ET"] == 0 for r in rows)
    # whole-tumour chains score WT only, from the masks
    whole = table2.score(test.masks, test, config.resolve("smoke", tumour_labels="whole"))
    assert whole[0]["dice_WT"] == 1.0 and "dice_TC" not in whole[0]


def test_rows_are_kept_and_read_back_and_retrained_when_anything_changes(tmp_path, monkeypatch):
    cfg = config.resolve("smoke")
    test = _LabelSplit(2, seed=3)
    train = _LabelSplit(3)
    calls = []

    def fake(images, masks, test_images, cfg, seed, work, tag, iterations=None):
        calls.append((seed, len(images)))
        return np.asarray(test.labels), {"backend": "fake"}

    monkeypatch.setattr(table2, "train_and_predict", fake)
    sets = {"real": (train.images, train.labels)}
    first = table2.run_rows(sets, test, cfg, tmp_path, seeds=(0, 1), iterations=5, progress=None)
    assert len(calls) == 2 and len(list((tmp_path / "segmentation" / "cases").glob("*.json"))) == 2
    again = table2.run_rows({"same data, other name": sets["real"]}, test, cfg, tmp_path, seeds=(0, 1),
                            iterations=5, progress=None)
    assert len(calls) == 2                                   # read back: the key is the data, not the row's name
    assert [{k: v for k, v in r.items() if k != "row"} for r in again] == \
           [{k: v for k, v in r.items() if k != "row"} for r in first]
    table2.run_rows(sets, test, cfg, tmp_path, seeds=(0,), iterations=6, progress=None)          # another budget
    other = (train.images.copy(), train.labels.copy())
    other[1][0, 0, 0, 0] = 2
    table2.run_rows({"real": other}, test, cfg, tmp_path, seeds=(0,), iterations=5, progress=None)  # one voxel
    table2.run_rows(sets, test, config.resolve("smoke", seg_lr=0.5), tmp_path, seeds=(0,), iterations=5,
                    progress=None)                                                                 # a setting
    assert len(calls) == 5


def test_pretrain_then_finetune_is_the_two_runs_it_promises():
    cfg = config.resolve("smoke", seg_channels=(4, 8), seg_roi=(16, 16, 12), seg_iterations=4)
    synth, real = _label_maps(3, seed=1), _label_maps(2, seed=2)
    test_images = _label_maps(1, seed=4)[0]
    entry = table2.PretrainFinetune(synth, real, 0.25)
    assert table2.n_volumes(entry) == 5
    pred, info = table2.train_and_predict(entry, None, test_images, cfg, 0, None, "t", iterations=4)
    assert info["pretrain_steps"] == 1
    pre = fast.train_fast(*synth, cfg, seed=0, iterations=1, classes=4)
    tuned = fast.train_fast(*real, cfg, seed=0, iterations=3, classes=4, init=pre)
    assert np.array_equal(pred, tuned.predict(test_images))
    fresh = fast.train_fast(*real, cfg, seed=0, iterations=3, classes=4)
    assert not np.allclose(fresh.logits(test_images), tuned.logits(test_images))   # the pre-training mattered
    # under nnU-Net (the paper preset) the protocol runs with the fast backend, and says so
    ncfg = config.resolve("smoke", seg_channels=(4, 8), seg_roi=(16, 16, 12), seg_iterations=4, seg_backend="nnunet")
    npred, ninfo = table2.train_and_predict(entry, None, test_images, ncfg, 0, None, "t", iterations=4)
    assert ninfo["backend"] == "fast" and ninfo["instead_of"] == "nnunet"
    np.testing.assert_array_equal(npred, pred)


def test_summarise_tests_each_region_against_real():
    cases = []
    for seed in (0, 1):
        for i in range(8):
            base = {"seed": seed, "case_id": f"c{i}", "iou": 0.5, "hd95": 2.0, "empty_prediction": False}
            region = {f"{m}_{g}": 0.0 for g in ("WT", "TC", "ET") for m in ("lesion_hd95", "false_positives", "missed")}
            cases.append({**base, **region, "row": "real", "n_train_volumes": 4, "dice": 0.6, "dice_WT": 0.6,
                          "dice_TC": 0.5, "dice_ET": 0.4 + 0.01 * i, "lesion_dice_WT": 0.6, "lesion_dice_TC": 0.5,
                          "lesion_dice_ET": 0.4})
            cases.append({**base, **region, "row": "real + SBLDM", "n_train_volumes": 8, "dice": 0.6, "dice_WT": 0.6,
                          "dice_TC": 0.5, "dice_ET": 0.6 + 0.01 * i + 0.001 * seed, "lesion_dice_WT": 0.6,
                          "lesion_dice_TC": 0.5, "lesion_dice_ET": 0.6})
    real, syn = statistics.summarise(cases)
    assert syn["dice_ET_mean"] == pytest.approx(0.6 + 0.035 + 0.0005) and syn["dice_WT_mean"] == pytest.approx(0.6)
    assert syn["p_vs_real_WT"] == 1.0 and syn["p_vs_real_ET"] < 0.01       # ET differs in every case, WT in none
    assert syn["p_holm_ET"] == pytest.approx(syn["p_vs_real_ET"]) and math.isnan(real["p_holm_ET"])
    md = table2.table2_markdown([real, syn], "smoke", "fast", "test", 8)
    assert "Dice ET" in md and "lesion-wise Dice WT / TC / ET" in md and "BraTS 2023" in md
    assert syn["seeds_above_real_ET"] == 2 and syn["seeds_above_real_WT"] == 0 and "seeds_above_real_ET" not in real


def test_seeds_above_counts_seeds_not_cases_in_both_directions():
    """One weak reference seed makes a significant-looking mean gain; the seed count shows
    that the row beat the reference with only that seed. Seeds pair by their value."""
    def case(row, seed, i, dice):
        return {"row": row, "seed": seed, "case_id": f"c{i}", "dice_WT": dice}

    cases = []
    for i in range(6):
        cases += [case("real", 0, i, 0.70), case("real", 1, i, 0.70), case("real", 2, i, 0.40),
                  case("real + SBLDM", 0, i, 0.68), case("real + SBLDM", 1, i, 0.69), case("real + SBLDM", 2, i, 0.66),
                  case("real + SBLDM", 7, i, 0.99)]        # seed 7 has no real-only partner: not counted
    assert statistics.seeds_above(cases, "real + SBLDM", "real", "dice_WT") == 1
    assert statistics.seeds_above(cases, "real", "real + SBLDM", "dice_WT") == 2
    assert statistics.seeds_above(cases, "real", "real", "dice_WT") == 0   # equal is not above


def test_the_table2_summary_counts_the_seeds_behind_each_significant_gain():
    from sbldm.report.summaries import segmentation

    def row(name, wt, p_wt, above=None):
        r = {"row": name, "seeds": 3}
        for g, v, p in (("WT", wt, p_wt), ("TC", 0.5, 1.0), ("ET", 0.4, 1.0)):
            r.update({f"dice_{g}_mean": v, f"dice_{g}_seed_std": 0.01, f"p_holm_{g}": p})
        if above is not None:
            r.update(seeds_above_real_WT=above, seeds_above_real_TC=0, seeds_above_real_ET=0)
        return r

    nan = float("nan")
    text = segmentation("small", [row("real", 0.6, nan), row("real + SBLDM", 0.7, 0.001, 1),
                                  row("real + 3D-LDM", 0.5, 0.001, 0)])
    assert "beats real only's with the same seed (the test above pairs cases, not seeds): real + SBLDM WT 1/3." in text
    assert "3D-LDM WT" not in text              # significantly below, so not a gain to count
    assert "same seed" not in segmentation("small", [row("real", 0.6, nan), row("real + SBLDM", 0.7, 0.001)])


def test_a_cached_result_is_keyed_on_its_data_seed_settings_and_for_nnunet_its_label_declaration(monkeypatch):
    """The per-(row, seed) cache: the same inputs give the same key; another seed, budget or
    training image another; and nnU-Net's key, not the fast backend's, follows how the
    export declares the labels (a cached nnU-Net result of another declaration is not reused)."""
    from sbldm.data import cohort

    cfg = config.resolve("smoke")
    test, train = _Split(2, seed=1), _Split(3)
    entry = (train.images, train.labels)
    key = table2.case_key(entry, test, cfg, 0, 10)
    assert key == table2.case_key((train.images.copy(), train.labels.copy()), test, cfg, 0, 10)
    other = train.images.copy()
    other[0, 0, 0, 0] += 0.5
    assert len({key, table2.case_key(entry, test, cfg, 1, 10), table2.case_key(entry, test, cfg, 0, 20),
                table2.case_key((other, train.labels), test, cfg, 0, 10)}) == 4
    ncfg = config.resolve("smoke", seg_backend="nnunet")
    nkey = table2.case_key(entry, test, ncfg, 0, 10)
    monkeypatch.setitem(cohort.NNUNET_LABELS, cfg.tumour_labels, {"background": 0, "tumour": [1, 2, 3]})
    assert table2.case_key(entry, test, ncfg, 0, 10) != nkey
    assert table2.case_key(entry, test, cfg, 0, 10) == key


def test_a_change_of_the_study_keeps_every_result_a_change_of_the_training_does_not():
    """More seeds, other sizes, another draw policy or filter leave a (set, seed) result's key
    alone (its data, seed and budget are in it); a training setting changes it."""
    cfg = config.resolve("smoke")
    test, train = _Split(2, seed=1), _Split(3)
    entry = (train.images, train.labels)
    key = table2.case_key(entry, test, cfg, 0, 10)
    study = dict(seg_seeds=(0, 1, 2, 3), seg_scarce_sizes=(2, 5), seg_count_sweep=(0, 7), seg_redraw_synthetic=False,
                 seg_synthetic_bf16=not cfg.seg_synthetic_bf16, seg_nnunet_check_seeds=(4, 5), seg_augment_factor=3,
                 seg_filter_max_volume_error=0.1, seg_plateau_tolerance=0.5)
    assert set(study) <= set(table2.STUDY_ONLY)
    for name, value in study.items():
        assert table2.case_key(entry, test, cfg.replace(**{name: value}), 0, 10) == key, name
    for name, value in (("seg_lr", 0.5), ("seg_batch_size", 3), ("seg_flip_axes", (1,)), ("seg_iterations", 7)):
        assert table2.case_key(entry, test, cfg.replace(**{name: value}), 0, 10) != key, name


def test_the_nnunet_batch_is_in_nnunet_keys_only_so_kept_fast_results_stay_found():
    """``seg_nnunet_batch_size`` retrains an nnU-Net row when it changes, and leaves the
    fast backend's key exactly what it was before the field existed."""
    cfg = config.resolve("smoke")
    test, train = _Split(2, seed=1), _Split(3)
    entry = (train.images, train.labels)
    fast = table2.case_key(entry, test, cfg, 0, 10)
    assert table2.case_key(entry, test, config.resolve("smoke", seg_nnunet_batch_size=3), 0, 10) == fast
    settings = table2._settings(cfg)
    assert "seg_nnunet_batch_size" not in settings and "seg_nnunet_epochs" in settings
    nnunet_keys = {table2.case_key(entry, test, config.resolve("smoke", seg_backend="nnunet", seg_nnunet_batch_size=b),
                                   0, 10) for b in (None, 3, 5)}
    assert len(nnunet_keys) == 3


def _seed_cases(effects, n_cases=20, noise=0.0, seed_noise=None, rng=0):
    """Per-case rows of ``real`` and ``real + SBLDM`` trained with seeds 0..k-1: the row is
    the reference plus ``effects[s]`` in seed s (+ case noise); ``seed_noise[s]`` shifts
    both rows of seed s alike (a run that went well or badly)."""
    rng = np.random.default_rng(rng)
    cases = []
    for s, e in enumerate(effects):
        base = 0.6 + (seed_noise[s] if seed_noise is not None else 0.0)
        for i in range(n_cases):
            ref = base + rng.normal(0, 0.05)
            cases += [{"row": "real", "seed": s, "case_id": f"c{i}", "dice_WT": ref},
                      {"row": "real + SBLDM", "seed": s, "case_id": f"c{i}", "dice_WT": ref + e + rng.normal(0, noise)}]
    return cases


def test_seed_paired_difference_interval_and_test_against_independent_values():
    from scipy.stats import ttest_1samp, wilcoxon

    effects = [0.05, 0.04, 0.06, 0.05, 0.03, 0.07, 0.05, 0.04, 0.06, 0.05]
    cases = _seed_cases(effects, seed_noise=np.linspace(-0.01, 0.01, 10))
    r = statistics.seed_paired(cases, "real + SBLDM", "real", "dice_WT")
    assert r["diff"] == pytest.approx(np.mean(effects)) and r["seeds"] == 10 and r["seeds_above"] == 10
    # without case noise the interval is the bootstrap of the seed means alone: about
    # mean +- 1.96 sd / sqrt(k), inside the range of the effects
    sd = np.std(effects, ddof=1) / np.sqrt(len(effects))
    assert r["lo"] == pytest.approx(np.mean(effects) - 1.96 * sd, abs=0.6 * sd)
    assert r["hi"] == pytest.approx(np.mean(effects) + 1.96 * sd, abs=0.6 * sd)
    assert min(effects) <= r["lo"] < r["hi"] <= max(effects)
    assert r["p_seeds"] == pytest.approx(ttest_1samp(effects, 0.0).pvalue)      # the decision test
    assert r["p_rank"] == pytest.approx(wilcoxon(effects).pvalue) == 2 / 2 ** 10  # beside it, at its floor
    assert r["p_seeds"] < 1e-6 and r["verdict"] == statistics.GAIN
    # the mirror image is a loss with the same p
    back = statistics.seed_paired(cases, "real", "real + SBLDM", "dice_WT")
    assert back["diff"] == pytest.approx(-r["diff"]) and back["verdict"] == statistics.LOSS
    assert back["p_seeds"] == pytest.approx(r["p_seeds"]) and back["p_rank"] == pytest.approx(r["p_rank"])



def _bootstrap_by_hand(per_seed, n_boot, seed):
    """The hierarchical bootstrap written out, one seed and one case draw at a time."""
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        picks = rng.integers(0, len(per_seed), len(per_seed))
        stats.append(np.mean([per_seed[i][rng.integers(0, len(per_seed[i]), len(per_seed[i]))].mean() for i in picks]))
    return np.quantile(stats, 0.025), np.quantile(stats, 0.975)


def test_the_hierarchical_bootstrap_is_the_two_level_resampling_written_out():
    rng = np.random.default_rng(3)
    same = [rng.normal(0.05 * i, 0.2, 40) for i in range(7)]           # every seed scored the same cases
    ragged = [rng.normal(0.0, 0.2, m) for m in (40, 38, 40, 35)]     # a case without a score at some seeds
    for per_seed in (same, ragged):
        assert statistics.hierarchical_bootstrap(per_seed, 500, seed=4) == pytest.approx(
            _bootstrap_by_hand(per_seed, 500, 4), abs=1e-12)
    # the seeds' scatter widens it: the same cases with seed offsets spread 10x further apart
    lo, hi = statistics.hierarchical_bootstrap(same, 500, seed=4)
    wide = statistics.hierarchical_bootstrap([d + 0.45 * i for i, d in enumerate(same)], 500, seed=4)
    assert wide[1] - wide[0] > 3 * (hi - lo)
    assert all(math.isnan(v) for v in statistics.hierarchical_bootstrap([], 10))      # no seeds: no interval

def test_the_seed_test_is_not_floored_by_the_number_of_seeds_and_does_not_invent_effects():
    from scipy.stats import ttest_1samp

    # a 10-seed effect like the committed `small` run's enhancing-tumour gain (+0.13, every seed
    # above, seeds scattered by 0.06): over 9 rows x 3 regions the exact signed-rank test cannot
    # pass Holm (27 x 2/1024 = 0.053) whatever the effect; the t-test over the same seeds can
    effects = 0.13 + 0.06 * np.array([-1.5, -1.0, -0.6, -0.3, 0.0, 0.2, 0.5, 0.8, 1.2, 1.7])
    assert effects.min() > 0
    assert statistics.seed_test(effects, "signed-rank") * 27 > 0.05
    p = statistics.seed_test(effects)
    assert p == pytest.approx(ttest_1samp(effects, 0.0).pvalue) and p * 27 < 0.01
    # ... and the same family of 27 where nothing happens: differences scattered about 0 never pass
    rng = np.random.default_rng(7)
    nulls = [statistics.seed_test(rng.normal(0, 0.06, 10)) for _ in range(27)]
    assert min(statistics.holm(dict(enumerate(nulls))).values()) > 0.05
    # a large mean carried by one seed is not significant either
    assert statistics.seed_test([0.3] + [0.0] * 9) > 0.3
    # edge cases: fewer than 2 seeds or nothing but zeros give 1; identical non-zero differences 0
    assert statistics.seed_test([0.2]) == 1.0 and statistics.seed_test([0.0] * 5) == 1.0
    assert statistics.seed_test([0.02] * 4) == 0.0 and statistics.seed_test([0.02] * 4, "signed-rank") == 2 / 16
    with pytest.raises(ValueError, match="test must be one of"):
        statistics.seed_test(effects, "sign")


def test_an_effect_one_seed_carries_or_below_the_seed_spread_is_no_detectable_effect():
    # one seed's large gain, nine seeds of nothing: the mean is positive, the seeds are not
    one_seed = _seed_cases([0.3] + [0.0] * 9, noise=0.01)
    r = statistics.seed_paired(one_seed, "real + SBLDM", "real", "dice_WT")
    assert r["diff"] > 0.02 and r["seeds_above"] <= 6 and r["verdict"] == statistics.NO_EFFECT
    # a consistent gain of 0.01 while the baseline's runs spread by 0.08: not detectable
    spread = _seed_cases([0.01] * 10, seed_noise=np.random.default_rng(3).normal(0, 0.08, 10))
    r = statistics.seed_paired(spread, "real + SBLDM", "real", "dice_WT")
    assert r["lo"] > 0 and r["seed_spread"] > 0.04 and r["verdict"] == statistics.NO_EFFECT
    # a gain of 0.03 against a steady baseline (its seeds differ by case noise alone, ~0.011) is detected
    steady = statistics.seed_paired(_seed_cases([0.03] * 10), "real + SBLDM", "real", "dice_WT")
    assert steady["seed_spread"] < 0.02 and steady["verdict"] == statistics.GAIN
    # one seed: never a verdict
    assert statistics.seed_paired(_seed_cases([0.2]), "real + SBLDM", "real", "dice_WT")["verdict"] == \
        statistics.NO_EFFECT


def test_verdicts_apply_holm_over_the_whole_family():
    from scipy.stats import ttest_1samp

    effects = [0.05, 0.02, 0.08, 0.04, 0.06, 0.03]          # six seeds: t-test p ~0.004
    p = ttest_1samp(effects, 0.0).pvalue
    gain = _seed_cases(effects)
    r = statistics.seed_paired(gain, "real + SBLDM", "real", "dice_WT")
    assert r["verdict"] == statistics.GAIN and r["p_seeds"] == pytest.approx(p)
    alone = statistics.verdicts({"a": r})
    assert alone["a"]["p_holm"] == pytest.approx(p) and alone["a"]["verdict"] == statistics.GAIN
    k = int(0.05 // p) + 1                                  # k such comparisons: k x p > 0.05
    family = statistics.verdicts({i: r for i in range(k)})
    assert family[0]["p_holm"] == pytest.approx(k * p) and family[0]["verdict"] == statistics.NO_EFFECT
    assert r["verdict"] == statistics.GAIN                  # the input is left as it was


def test_summarise_carries_the_seed_paired_verdict_with_holm_over_rows_and_regions():
    cases = _region_cases(_seed_cases([0.05] * 8, noise=0.02) + [{**c, "row": "real + noise"}
                                                                 for c in _seed_cases([0.0] * 8, noise=0.02, rng=1)
                                                                 if c["row"] == "real + SBLDM"])
    rows = {r["row"]: r for r in statistics.summarise(cases)}
    direct = statistics.seed_paired(cases, "real + SBLDM", "real", "dice_WT")
    sb, noise = rows["real + SBLDM"], rows["real + noise"]
    assert sb["diff_WT"] == pytest.approx(direct["diff"]) and sb["ci95_low_WT"] == pytest.approx(direct["lo"])
    # 2 rows x 3 regions compared: the three equal smallest p values (the t-test over the 8
    # per-seed differences, computed here from the cases) are multiplied by 6, 5 and 4, and
    # Holm keeps the running maximum; the exact signed-rank p (8 seeds all above: 2/256) beside
    from scipy.stats import ttest_1samp

    mine = {(c["seed"], c["case_id"]): c["dice_WT"] for c in cases if c["row"] == "real + SBLDM"}
    ref = {(c["seed"], c["case_id"]): c["dice_WT"] for c in cases if c["row"] == "real"}
    per_seed = [np.mean([mine[k] - ref[k] for k in ref if k[0] == s]) for s in range(8)]
    raw = ttest_1samp(per_seed, 0.0).pvalue
    assert direct["p_seeds"] == pytest.approx(raw) and sb["p_seeds_raw_WT"] == pytest.approx(raw)
    assert [sb[f"p_seeds_{r}"] for r in ("WT", "TC", "ET")] == pytest.approx([6 * raw] * 3)
    assert sb["p_rank_raw_WT"] == pytest.approx(2 / 256)
    assert sb["verdict_WT"] == statistics.GAIN and noise["verdict_WT"] == statistics.NO_EFFECT
    assert rows["real"]["verdict_WT"] == "" and math.isnan(rows["real"]["diff_WT"])


def test_the_table2_summary_leads_with_the_seed_paired_verdicts():
    from sbldm.report import summaries

    cases = []
    for c in _seed_cases([0.05] * 8) + [{**c, "row": "real + noise"} for c in _seed_cases([0.0] * 8, noise=0.02, rng=1)
                                         if c["row"] == "real + SBLDM"]:
        whole = {k: v for k, v in c.items() if k != "dice_WT"}        # rows without regions: "dice" alone
        cases.append({"n_train_volumes": 10, "dice": c["dice_WT"], "iou": c["dice_WT"] / 2, "hd95": 3.0,
                      "empty_prediction": 0, **whole})
    text = summaries.segmentation("small", statistics.summarise(cases))
    assert "rows with a detected gain over real only (the training run as the unit" in text
    gain = next(line for line in text.splitlines() if "detected gain" in line)
    assert "real + SBLDM (WT)" in gain and "real + noise" not in gain
    assert "real + noise minus real only, per training seed" in text and "no detectable effect" in text
    assert "secondary (pairs test cases" in text
    assert "8/8 seeds above" in text                      # the whole tumour alone has its count of seeds too
    # each row's line names the seed-paired p (the decision), not the per-case one
    rows = {r["row"]: r for r in statistics.summarise(cases)}
    line = next(ln for ln in text.splitlines() if ln.startswith("- real + noise: "))
    assert f"seed-paired Holm p = {rows['real + noise']['p_seeds_all']:.2g})" in line
    assert rows["real + noise"]["p_holm"] != rows["real + noise"]["p_seeds_all"]
    # with regions, the same; one seed has no seed-level p, so the per-case one is named plainly
    regional = statistics.summarise(_region_cases(_seed_cases([0.05, 0.04, 0.06, 0.05], noise=0.02)))
    line = next(ln for ln in summaries.segmentation("small", regional).splitlines() if ln.startswith("- real + SBLDM:"))
    ps = "/".join(f"{regional[1][f'p_seeds_{g}']:.2g}" for g in ("WT", "TC", "ET"))
    assert f"seed-paired Holm p {ps}" in line
    one = statistics.summarise([c for c in cases if c["seed"] == 0])
    line = next(ln for ln in summaries.segmentation("small", one).splitlines() if ln.startswith("- real + noise: "))
    assert "seed-paired" not in line and "Holm p = " in line


def test_each_training_seed_trains_on_its_own_synthetic_draw(tmp_path, monkeypatch):
    cfg = config.resolve("smoke", seg_seeds=(0, 1, 2))
    assert cfg.seg_redraw_synthetic and [table2.synthetic_draw(cfg, s) for s in (0, 1, 2)] == [0, 1, 2]
    assert table2.synthetic_draw(cfg.replace(seg_redraw_synthetic=False), 2) == cfg.seed   # Table 1's set for all
    test = _LabelSplit(2, seed=3)
    calls = []

    def fake(images, masks, test_images, cfg, seed, work, tag, iterations=None):
        calls.append((seed, float(np.asarray(images).sum())))
        return np.asarray(test.labels), {"backend": "fake"}

    monkeypatch.setattr(table2, "train_and_predict", fake)
    built = []

    def sets_for(seed):
        built.append(seed)
        draw = _LabelSplit(3, seed=10 + table2.synthetic_draw(cfg, seed))     # that seed's own draw
        return {"synthetic only": (draw.images, draw.labels)}

    cases = table2.run_rows_by_seed(sets_for, test, cfg, tmp_path, iterations=5, progress=None)
    assert built == [0, 1, 2] and [s for s, _ in calls] == [0, 1, 2]
    assert len({x for _, x in calls}) == 3                          # three different training sets
    assert sorted({c["seed"] for c in cases}) == [0, 1, 2] and {c["row"] for c in cases} == {"synthetic only"}
    # kept per (data, seed): run again, nothing retrains
    table2.run_rows_by_seed(sets_for, test, cfg, tmp_path, iterations=5, progress=None)
    assert len(calls) == 3


def test_a_sample_set_of_another_draw_is_another_set_cached_beside_table1s(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import torch

    from sbldm.evaluation import table1

    autocast = []

    class Gen:
        def generate(self, b, generator=None, **_):
            autocast.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
            g = torch.Generator().manual_seed(int(generator.initial_seed()))
            images = torch.rand((b, 4, 4, 2), generator=g).numpy()
            return SimpleNamespace(images=images, masks=(images > 0.5).astype(np.uint8), labels=None,
                                   raw_conditions=None)

    cfg = config.resolve("smoke", eval_n_samples=3, eval_batch_size=2)
    model = tmp_path / "model"
    model.mkdir()
    (model / "w").write_text("x")
    first = table1.sample_row("3D-LDM", Gen(), cfg, tmp_path / "cache", model, progress=False)
    same = table1.sample_row("3D-LDM", Gen(), cfg, tmp_path / "cache", model, progress=False, draw=cfg.seed)
    other = table1.sample_row("3D-LDM", Gen(), cfg, tmp_path / "cache", model, progress=False, draw=cfg.seed + 1)
    np.testing.assert_array_equal(first["images"], same["images"])
    assert not np.allclose(first["images"], other["images"])
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.npz")) == ["3dldm.npz", "3dldm_draw1.npz"]
    assert not any(autocast)                                          # Table 1's sets: fp32
    # a bf16 draw (seg_synthetic_bf16): sampled under bf16 autocast, a set of its own beside the fp32 one
    autocast.clear()
    bf = table1.sample_row("3D-LDM", Gen(), cfg, tmp_path / "cache", model, progress=False, bf16=True)
    assert autocast and all(autocast) and len(bf["images"]) == 3
    assert (tmp_path / "cache" / "3dldm_bf16.npz").is_file()
    autocast.clear()                                                  # the GAN has no bf16 path: its fp32 set
    table1.sample_row("3D-LSGAN", Gen(), cfg, tmp_path / "cache", model, progress=False, bf16=True)
    assert autocast and not any(autocast) and not (tmp_path / "cache" / "3dlsgan_bf16.npz").exists()
    # with bf16 draws, training seed 0 draws too: Table 1's fp32 sets are not a segmentation draw
    fp32_sets, drawn = {"real": "table 1"}, []
    sets_for = table2.seed_sets(None, fp32_sets, cfg.replace(seg_synthetic_bf16=True), lambda d: drawn.append(d))
    monkeypatch.setattr(table2, "training_sets", lambda train, samples, cfg, seed=0: ({"real": f"draw {seed}"}, None))
    assert sets_for(0) == {"real": "draw 0"} and drawn == [0]
    plain = cfg.replace(seg_synthetic_bf16=False)
    assert table2.seed_sets(None, fp32_sets, plain, lambda d: drawn.append(d))(0) is fp32_sets


def test_the_nnunet_confirmation_runs_where_the_fast_backend_finds_an_effect(tmp_path, monkeypatch):
    cfg = config.resolve("smoke", seg_nnunet_check_always=False, seg_nnunet_check_seeds=(0, 1))
    rows = [{"row": "real"}, {"row": "real + SBLDM", "verdict_WT": "no detectable effect", "verdict_TC": ""}]
    assert table2.effect_regions(rows) == [] and not table2.confirmation_needed(rows, cfg)
    assert table2.confirmation_needed(rows, cfg.replace(seg_nnunet_check_always=True))
    rows[1]["verdict_TC"] = "loss"
    assert table2.effect_regions(rows) == ["TC"] and table2.confirmation_needed(rows, cfg)
    assert not table2.confirmation_needed(rows, cfg.replace(seg_backend="nnunet"))    # nnU-Net leads already
    assert not table2.confirmation_needed(rows, cfg.replace(seg_nnunet_check=False))
    # the check trains the two rows with nnU-Net, every check seed on its own sets
    test = _LabelSplit(2, seed=3)
    seen = []

    def fake(images, masks, test_images, cfg, seed, work, tag, iterations=None):
        seen.append((cfg.seg_backend, seed, float(np.asarray(images).sum())))
        return np.asarray(test.labels), {"backend": cfg.seg_backend}

    monkeypatch.setattr(table2, "train_and_predict", fake)
    draws = {s: _LabelSplit(3, seed=20 + s) for s in (0, 1)}
    out = table2.nnunet_check(lambda s: {"real": (draws[s].images, draws[s].labels),
                                         "real + SBLDM": (draws[s].images + 1, draws[s].labels),
                                         "other": None}, test, cfg, tmp_path)
    assert [r["row"] for r in out] == ["real", "real + SBLDM"] and out[0]["seeds"] == 2
    assert out[0]["backend"] == "nnunet" and {b for b, _, _ in seen} == {"nnunet"}
    assert len({x for _, _, x in seen}) == 4


def _region_cases(gain_cases):
    out = []
    for c in gain_cases:
        full = {"n_train_volumes": 10, "dice": c["dice_WT"], "iou": c["dice_WT"] / 2, "hd95": 3.0,
                "empty_prediction": 0, **c}
        for region in ("WT", "TC", "ET"):
            full.update({f"dice_{region}": c["dice_WT"], f"lesion_dice_{region}": c["dice_WT"],
                         f"lesion_hd95_{region}": 2.0, f"false_positives_{region}": 0, f"missed_{region}": 0})
        out.append(full)
    return out


def test_the_table2_markdown_shows_the_seed_paired_comparison_beside_the_per_case_test():
    cases = _region_cases(_seed_cases([0.05, 0.04, 0.06, 0.05, 0.03, 0.07, 0.05, 0.04], noise=0.02)
                          + [{**c, "row": "real + noise"} for c in _seed_cases([0.0] * 8, noise=0.02, rng=1)
                             if c["row"] == "real + SBLDM"])
    rows = statistics.summarise(cases)
    md = table2.table2_markdown(rows, "smoke", "fast", "phantom", 20)
    block = md.split("Against real only, the training run as the unit")[1]
    lines = [ln for ln in block.splitlines() if ln.startswith("| real")]
    assert len(lines) == 6                                  # 2 rows x 3 regions, real only not against itself
    sb = next(r for r in rows if r["row"] == "real + SBLDM")
    first = lines[0].split(" | ")
    assert first[0] == "| real + SBLDM" and first[1] == "WT" and first[3] == "8/8"
    assert first[2] == f"{sb['diff_WT']:+.3f} [{sb['ci95_low_WT']:+.3f}, {sb['ci95_high_WT']:+.3f}]"
    assert first[-1] == "gain |" and "0.0078 *" in first[6]              # signed-rank 2/256, its floor
    assert all(ln.endswith("no detectable effect |") for ln in lines[3:])
    # one seed: no seed-paired verdicts, no block
    one = statistics.summarise([c for c in cases if c["seed"] == 0])
    assert "training run as the unit" not in table2.table2_markdown(one, "smoke", "fast", "phantom", 20)


def test_a_run_without_the_nnunet_confirmation_removes_an_earlier_one(tmp_path):
    for name in ("table2_nnunet_check.csv", "table2_nnunet_check.md", "table2.csv", "table2_cases.csv"):
        (tmp_path / name).write_text("x")
    gone = table2.drop_nnunet_check(tmp_path)
    assert sorted(p.name for p in gone) == ["table2_nnunet_check.csv", "table2_nnunet_check.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table2.csv", "table2_cases.csv"]
    assert table2.drop_nnunet_check(tmp_path) == []                     # nothing left to remove: no error


def test_the_nnunet_confirmation_line_carries_its_seed_paired_verdict():
    from sbldm.report import summaries

    check = statistics.summarise(_region_cases(_seed_cases([0.10, 0.11, 0.09], noise=0.005)))
    real = statistics.summarise(_region_cases(_seed_cases([0.0] * 3, noise=0.02)))
    line = next(ln for ln in summaries.segmentation("small", real, check).splitlines() if "nnU-Net confirmation" in ln)
    sb = next(r for r in check if r["row"] == "real + SBLDM")
    assert line.startswith("- nnU-Net confirmation (3 seeds): ")
    assert f"WT {sb['diff_WT']:+.3f} [{sb['ci95_low_WT']:+.3f}, {sb['ci95_high_WT']:+.3f}], 3/3 seeds above, " \
           f"{sb['verdict_WT']}" in line
    # with one seed there is nothing seed-paired to say
    one = statistics.summarise(_region_cases(_seed_cases([0.10], noise=0.005)))
    line = next(ln for ln in summaries.segmentation("small", real, one).splitlines() if "nnU-Net confirmation" in ln)
    assert "per training seed" not in line and line.startswith("- nnU-Net confirmation (one seed): ")
