"""The data-scarce regime without leakage: nested subsets, generators that see only their
subset, and the protocol rows (sbldm.experiments.scarce_regime)."""

import numpy as np
import pytest
from conftest import ball

from model_helpers import make_prepared
from sbldm import config
from sbldm.data.cohort import load_prepared
from sbldm.experiments import scarce_regime as sr
from sbldm.segmentation import table2


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("cohort"))


def test_subsets_are_nested_seeded_and_capped():
    subsets = sr.real_subsets(20, (5, 10, 50), seed=3)
    assert list(subsets) == [5, 10, 20] and list(subsets[20]) == list(range(20))
    assert set(subsets[5]) <= set(subsets[10]) and len(set(subsets[10])) == 10
    assert all(np.array_equal(a, b) for a, b in zip(subsets.values(), sr.real_subsets(20, (5, 10, 50), 3).values()))
    assert not np.array_equal(sr.real_subsets(20, (5,), 4)[5], subsets[5])
    with pytest.raises(ValueError, match="positive"):
        sr.real_subsets(20, (0, 5))


def test_a_subset_split_knows_nothing_of_the_other_volumes(prepared):
    train = load_prepared(prepared, "train")
    idx = np.array([0, 2])
    sub = sr.subset_split(train, idx)
    assert sub.case_ids == [train.case_ids[0], train.case_ids[2]] and np.array_equal(sub.labels, train.labels[idx])
    # the normaliser is refitted on the subset: its largest volume maps to the subset's maximum
    assert sub.normalizer.to_dict()["max_volume"] == pytest.approx(train.features[idx, 0].max())

    from sbldm.diffusion.latents import Latents, global_std

    rng = np.random.default_rng(0)
    mean = rng.normal(0, 1, (len(train), 2, 4, 4, 3)).astype(np.float32)
    mean[1] *= 10                                                      # one loud volume left out
    lat = sr.subset_latents(Latents(mean, np.ones_like(mean), global_std(mean), list(train.case_ids)), idx)
    assert lat.latent_std == pytest.approx(global_std(mean[idx])) and lat.latent_std < global_std(mean) / 2
    assert lat.case_ids == sub.case_ids


def test_protocol_rows_use_the_same_volumes_in_their_own_ways():
    cfg = config.resolve("smoke", seg_protocol_synthetic_fraction=0.5, seg_pretrain_fraction=0.25)
    shape = (16, 16, 12)
    real = (np.zeros((2, *shape), np.float32), np.stack([ball(shape, (8, 8, 6), 3)] * 2) * 2)
    masks = np.stack([ball(shape, (8, 8, 6), 3), np.zeros(shape, np.uint8), ball(shape, (8, 8, 6), 3),
                      ball(shape, (8, 8, 6), 3)])
    from sbldm.data.tumour import tumour_features

    req = np.array([[tumour_features(ball(shape, (8, 8, 6), 3))[k] for k in config.FEATURE_NAMES]] * 4)
    synth = (np.ones((4, *shape), np.float32), masks * 3, req)
    sets, report = sr.protocol_sets(real, synth, cfg)
    assert list(sets) == [sr.REAL, sr.REAL_AUG, sr.MIXING, "real + 50% of SBLDM", sr.FILTERED, sr.PRETRAIN]
    assert [table2.n_volumes(v) for v in sets.values()] == [2, 4, 6, 4, 5, 6]    # smoke augments x2
    assert np.array_equal(sets[sr.REAL_AUG][0][:2], real[0])                   # the originals, then their copies
    assert report["rejected_empty"] == 1 and report["kept"] == 3           # the empty synthetic mask is dropped
    pre = sets[sr.PRETRAIN]
    assert pre.fraction == 0.25 and pre.pretrain[0] is synth[0] and pre.finetune[0] is real[0]
    assert np.array_equal(sets[sr.MIXING][1][2:], synth[1])                 # real first, then every synthetic one
    only_two, _ = sr.protocol_sets(real, (synth[0], synth[1], None), cfg, protocols=False)
    assert list(only_two) == [sr.REAL, sr.REAL_AUG, sr.MIXING]           # augmentation is a row at every size
    no_requests, report = sr.protocol_sets(real, (synth[0], synth[1], None), cfg)
    assert sr.FILTERED not in no_requests and report == {}


def test_a_generator_that_saw_more_real_volumes_is_refused(tmp_path, monkeypatch):
    """The study checks each size's record: synthetic volumes of a generator that saw more
    than n real volumes would leak, and the study says so before training anything."""
    class Split:
        def __init__(self, n):
            self.images = np.zeros((n, 8, 8, 8), np.float32)
            self.labels = np.zeros((n, 8, 8, 8), np.uint8)
            self.masks = self.labels
            self.case_ids = [f"c{i}" for i in range(n)]
            self.affines = np.stack([np.eye(4)] * n)

        def __len__(self):
            return len(self.images)

    monkeypatch.setattr(table2, "run_rows", lambda *a, **k: pytest.fail("trained despite the leak"))
    train, test = Split(6), Split(2)
    samples = {3: {"images": np.zeros((2, 8, 8, 8), np.float32), "masks": np.zeros((2, 8, 8, 8), np.uint8),
                   "labels": np.zeros((2, 8, 8, 8), np.uint8), "conditions": None}}
    with pytest.raises(ValueError, match="the generator for 3 real volumes saw 6"):
        sr.scarce_study(train, test, config.resolve("smoke"), tmp_path, {3: np.arange(3)}, samples,
                        {3: {"unet_saw": 6, "vae_saw": 6}})


def test_the_summary_names_only_significant_gains():
    from sbldm.report.summaries import scarce_study

    def row(name, n, et, p):
        r = {"row": name, "n_real": n, "seeds": 3}
        for g, v in (("WT", 0.8), ("TC", 0.6), ("ET", et)):
            r.update({f"dice_{g}_mean": v, f"dice_{g}_seed_std": 0.01, f"p_holm_{g}": float("nan") if name == "real"
                      else (p if g == "ET" else 1.0)})
        return r

    summary = [row("real", 10, 0.5, None), row("real + SBLDM", 10, 0.6, 0.01), row(sr.PRETRAIN, 10, 0.7, 0.2),
               row("real", 100, 0.7, None), row("real + SBLDM", 100, 0.65, 0.001)]
    text = scarce_study("small", summary, (10, 100))
    assert "beats real only at 10 (Holm p < 0.05): real + SBLDM (ET, p = 0.01)." in text
    assert "beats real only at 100 (Holm p < 0.05): no protocol." in text      # significant, but worse
    assert "below real only at 100 (Holm p < 0.05): real + SBLDM (ET, p = 0.001)." in text
    assert "below real only at 10 " not in text
    assert "lesion-wise" not in text                      # no lesion columns, no line
    assert "of those gains" not in text                   # rows without a per-seed count: no line
    summary[1]["seeds_above_real_ET"] = 2                 # the gain at 10 holds in 2 of 3 seeds
    summary[4]["seeds_above_real_ET"] = 0                 # a significant loss is not a gain to count
    text = scarce_study("small", summary, (10, 100))
    assert "seed (the test pairs cases, not seeds): real + SBLDM ET 2/3." in text
    assert text.count("of those gains") == 1


def test_the_scarce_summary_quotes_lesion_wise_dice_where_the_rows_have_it():
    from sbldm.report.summaries import scarce_study

    def row(name, lesion_wt):
        r = {"row": name, "n_real": 10, "seeds": 3}
        for g in ("WT", "TC", "ET"):
            r.update({f"dice_{g}_mean": 0.6, f"dice_{g}_seed_std": 0.01, f"p_holm_{g}": 1.0,
                      f"lesion_dice_{g}_mean": lesion_wt if g == "WT" else 0.2})
        return r

    text = scarce_study("small", [row("real", 0.275), row("real + SBLDM", 0.157)], (10,))
    assert "lesion-wise Dice WT/TC/ET" in text
    assert "real 0.275/0.200/0.200; real + SBLDM 0.157/0.200/0.200." in text


def test_the_table2_summary_names_rows_above_and_below_real_per_region():
    from sbldm.report.summaries import segmentation

    def row(name, wt, p_wt, et, p_et):
        r = {"row": name, "seeds": 3}
        for g, v, p in (("WT", wt, p_wt), ("TC", 0.5, 1.0), ("ET", et, p_et)):
            r.update({f"dice_{g}_mean": v, f"dice_{g}_seed_std": 0.01, f"p_holm_{g}": p})
        return r

    nan = float("nan")
    text = segmentation("small", [row("real", 0.6, nan, 0.4, nan), row("real + SBLDM", 0.7, 0.001, 0.3, 0.002),
                                  row("real + 3D-LDM", 0.65, 0.2, 0.35, 0.3)])
    assert "above real only in at least one region (Holm p < 0.05): real + SBLDM." in text
    assert "below real only (Holm p < 0.05), in the regions named: real + SBLDM (ET)." in text
    nnunet = [dict(row("real", 0.0, nan, 0.0, nan), empty_predictions=100.0, n_test=100),
              dict(row("real + SBLDM", 0.0, 1.0, 0.0, 1.0), empty_predictions=100.0, n_test=100)]
    text = segmentation("small", [row("real", 0.6, nan, 0.4, nan)], nnunet)
    assert "predicted no tumour in any test case for real, real + SBLDM; at this budget it confirms nothing" in text
    nnunet[0]["empty_predictions"] = nnunet[1]["empty_predictions"] = 0.0
    assert "nnU-Net confirmation (3 seeds): real Dice" in segmentation("small", [row("real", 0.6, nan, 0.4, nan)], nnunet)
    # not run: the fast backend found nothing to confirm
    assert "nnU-Net confirmation: not run" in segmentation("small", [row("real", 0.6, nan, 0.4, nan)],
                                                           confirm_skipped=True)
    # a one-seed row has no spread across seeds to state; a three-seed row states it
    for r in nnunet:
        r["seeds"] = 1
    one_seed = segmentation("small", [row("real", 0.6, nan, 0.4, nan)], nnunet).splitlines()[-1]
    assert "seed std" not in one_seed and "real Dice WT/TC/ET 0.000/0.500/0.000;" in one_seed
    assert "(seed std 0.010/0.010/0.010)" in segmentation("small", [row("real", 0.6, nan, 0.4, nan)])


def test_a_scarce_generator_learns_from_its_subset_only(prepared, tmp_path):
    """Trained end to end on 2 of 4 training volumes: the pipeline samples conditions from
    those 2 tumours only, its normaliser and brain support come from them, and its record
    says what each network saw."""
    import json

    from model_helpers import tiny_cfg
    from sbldm.diffusion.latents import encode_dataset
    from sbldm.models.vae import build_vae

    cfg = tiny_cfg(diffusion_steps=2, checkpoint_every=1)
    train = load_prepared(prepared, "train")
    vae = build_vae(cfg.vae, cfg.tumour_labels).eval()
    latents = encode_dataset(vae, train.images, train.masks, case_ids=train.case_ids, progress=False)
    idx = sr.real_subsets(len(train), [2], seed=0)[2]
    pipe = sr.train_scarce_generator(cfg, vae, latents, train, idx, tmp_path / "n2", progress=False)
    assert np.array_equal(pipe.train_features, train.features[idx])
    assert pipe.normalizer.to_dict()["max_volume"] == pytest.approx(train.features[idx, 0].max())
    record = json.loads((tmp_path / "n2" / "record.json").read_text())
    assert (record["n_real"], record["unet_saw"], record["vae_saw"]) == (2, 2, 4)
    assert record["case_ids"] == [train.case_ids[i] for i in idx]
    assert (tmp_path / "n2" / "pipeline").is_dir()
    # run again (a notebook resumed in a later session): the finished generator is saved again
    # without touching a file, so its synthetic draw stays cached instead of being sampled anew
    drawn = sr.samples_of(tmp_path / "n2", cfg, progress=False)
    cached = {f: f.stat().st_mtime_ns for f in (tmp_path / "n2").rglob("*") if f.is_file() and "samples" in f.parts}
    weights = {f: f.stat().st_mtime_ns for f in (tmp_path / "n2" / "pipeline").rglob("*") if f.is_file()}
    again = sr.train_scarce_generator(cfg, vae, latents, train, idx, tmp_path / "n2", progress=False)
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "n2" / "pipeline").rglob("*") if f.is_file()} == weights
    np.testing.assert_array_equal(sr.samples_of(tmp_path / "n2", cfg, progress=False)["images"], drawn["images"])
    assert cached and {f: f.stat().st_mtime_ns for f in cached} == cached
    assert np.array_equal(again.train_features, pipe.train_features)
    with pytest.raises(ValueError, match="latents for"):
        sr.train_scarce_generator(cfg, vae, sr.subset_latents(latents, idx), train, idx, tmp_path / "x")


def test_necrosis_scores_by_hand():
    from sbldm.experiments.vae_mask_ablation import necrosis_scores

    ref = np.zeros((3, 4, 4, 4), np.uint8)
    ref[0, :2] = 1                                   # 32 necrosis voxels
    ref[1, :1] = 1                                   # 16
    ref[2, :2] = 3                                   # no necrosis: left out
    pred = np.zeros_like(ref)
    pred[0, :1] = 1                                  # half of case 0's necrosis: Dice 2*16/(16+32)
    pred[1] = 3                                      # case 1: enhancing over its necrosis, none decoded
    s = necrosis_scores(pred, ref)
    assert s["n_with_necrosis"] == 2 and s["necrosis_decoded"] == 0.5
    assert s["necrosis_dice"] == pytest.approx((2 * 16 / 48 + 0.0) / 2)
    assert np.isnan(necrosis_scores(pred, np.zeros_like(ref))["necrosis_dice"])


def test_each_size_gets_the_budget_of_its_own_real_volumes(prepared, tmp_path):
    import json

    cfg = config.resolve("smoke", volume_shape=(16, 16, 8), seg_roi=(16, 16, 8), seg_iterations=6, seg_curve_every=2)
    train = load_prepared(prepared, "train")
    subsets = sr.real_subsets(len(train), (2, 4))
    budgets = sr.size_budgets(train, subsets, cfg, tmp_path, progress=None)
    assert set(budgets) == {2, 4} and all(b in (2, 4, 6) for b in budgets.values())
    for n, idx in subsets.items():
        kept = json.loads((tmp_path / "segmentation" / f"learning_curve_n{n}.json").read_text())["result"]
        assert kept["budget"] == budgets[n] and kept["n_fit"] + kept["n_val"] == n   # that size's volumes only
        # the same as the learning curve run on that subset by hand
        by_hand = table2.learning_curve(sr.subset_split(train, idx), cfg, progress=None)
        assert by_hand["budget"] == budgets[n]
    with pytest.raises(ValueError, match="validation part"):
        sr.size_budgets(train, {1: subsets[2][:1]}, cfg, tmp_path, progress=None)


@pytest.mark.slow
def test_the_leak_free_generator_saw_only_its_volumes_and_the_study_pairs_the_two_vaes(prepared, tmp_path,
                                                                                        monkeypatch):
    import json

    from model_helpers import tiny_cfg
    from sbldm.diffusion.pipeline import SBLDMPipeline

    cfg = tiny_cfg(scarce_vae_check_steps=2, diffusion_steps=2, eval_n_samples=2, eval_batch_size=2,
                   seg_seeds=(0, 1))
    train, test = load_prepared(prepared, "train"), load_prepared(prepared, "test")
    dirs = sr.train_leakfree_generators(cfg, train, 2, tmp_path, seed=0, progress=False)
    assert set(dirs) == {2, len(train)}
    idx = sr.real_subsets(len(train), [2], 0)[2]
    for vae_saw, d in dirs.items():
        record = json.loads((d / "record.json").read_text())
        assert record["unet_saw"] == 2 and record["vae_saw"] == vae_saw and record["case_ids"] == \
            [train.case_ids[i] for i in idx]
        assert record["vae_steps"] == 2
        # the conditions it samples come from those two tumours only
        pipe = SBLDMPipeline.from_pretrained(d / "pipeline")
        np.testing.assert_allclose(np.asarray(pipe.train_features), train.features[idx])
    # the leak-free VAE is the one vae_subset_check trains on the subset
    assert (sr.vae_check_dir(tmp_path, 2) / "diffusion_pytorch_model.safetensors").is_file()

    seen = []

    def fake(images, masks, test_images, cfg, seed, work, tag, iterations=None):
        seen.append((seed, len(images), float(np.asarray(images).sum())))
        return np.asarray(table2.targets(test, cfg)), {"backend": "fake"}

    monkeypatch.setattr(table2, "train_and_predict", fake)
    cases = sr.leakfree_study(train, test, cfg, tmp_path, 2, seed=0, iterations=3, progress=None)
    assert {c["row"] for c in cases} == {sr.REAL, sr.LEAKFREE, sr.SHARED_VAE}
    assert {(c["row"], c["vae_saw"]) for c in cases} == {(sr.REAL, 0), (sr.LEAKFREE, 2),
                                                         (sr.SHARED_VAE, len(train))}
    # 3 rows x 2 seeds; the synthetic rows hold 2 real + 2 synthetic volumes, a draw of their own per seed
    assert len(seen) == 6 and sorted(n for _, n, _ in seen) == [2, 2, 4, 4, 4, 4]
    assert len({x for s, n, x in seen if n == 4}) == 4
    rows = sr.leakfree_rows(cases)
    assert [r["training_set"] for r in rows][-1] == f"{sr.SHARED_VAE} minus {sr.LEAKFREE}"
    assert rows[-1]["seeds"] == 2 and "verdict_WT" in rows[-1]
    # the predictions are perfect in every row: no difference, no effect
    assert rows[-1]["diff_WT"] == 0 and rows[-1]["verdict_WT"] == "no detectable effect"


def test_the_count_sweep_nests_each_seeds_synthetic_volumes_and_compares_with_100(prepared, tmp_path, monkeypatch):
    """Each training seed takes its own draw first, then the other seeds' draws: its sets are
    nested, its first draw's worth is the study's mixing set (read back, not retrained),
    and no volume appears twice in one set."""
    cfg = config.resolve("smoke", seg_count_sweep=(0, 1, 100, 150), seg_seeds=(0, 1, 2), eval_n_samples=100)
    train, test = load_prepared(prepared, "train"), load_prepared(prepared, "test")
    shape = train.images.shape[1:]
    asked = []

    def draw(noise):                       # 100 volumes per draw, every volume tagged by (draw, index)
        asked.append(noise)
        im = np.empty((100, *shape), np.float32)
        im[:] = (1000 * noise + np.arange(100, dtype=np.float32))[:, None, None, None] / 1e5
        return {"images": im, "labels": np.stack([train.labels[i % len(train)] for i in range(100)]),
                "masks": np.stack([train.masks[i % len(train)] for i in range(100)]), "conditions": None}

    trained = {}

    def fake(images, masks, test_images, cfg, seed, work, tag, iterations=None):
        trained[(seed, len(images))] = np.asarray(images)
        return np.asarray(table2.targets(test, cfg)), {"backend": "fake"}

    monkeypatch.setattr(table2, "train_and_predict", fake)
    # the study's mixing row of seed 1 (real + its own draw) is kept: the sweep reads it back
    real = sr.real_set(train, cfg, sr.subset_indices(len(train), 3, 0))
    own = table2.synthetic_set("SBLDM", draw(table2.synthetic_draw(cfg, 1)), 100, True, cfg)
    table2.run_rows({sr.MIXING: (np.concatenate([real[0], own[0]]), np.concatenate([real[1], own[1]]))}, test, cfg,
                    tmp_path, seeds=(1,), iterations=2, progress=None)
    trained.clear()
    cases = sr.count_sweep(train, test, cfg, tmp_path, 3, draw, seed=0, iterations=2, progress=None)
    assert {c["row"] for c in cases} == {"real", "real + 1 SBLDM", "real + 100 SBLDM", "real + 150 SBLDM"}
    assert {c["n_synthetic"] for c in cases} == {0, 1, 100, 150} and {c["n_real"] for c in cases} == {3}
    assert (1, 103) not in trained and (0, 103) in trained and (2, 103) in trained      # read back
    tag = lambda a: np.round(a[:, 0, 0, 0] * 1e5).astype(int)  # noqa: E731
    for seed in (0, 2):
        np.testing.assert_array_equal(trained[(seed, 103)], trained[(seed, 153)][:103])   # nested
        drawn = tag(trained[(seed, 153)][3:])
        assert len(set(drawn)) == 150                                                      # no volume twice
        first = 1000 * table2.synthetic_draw(cfg, seed)
        np.testing.assert_array_equal(drawn[:100], first + np.arange(100))                 # its own draw, in order
        after = table2.synthetic_draw(cfg, (seed + 1) % 3)                                 # then the next seed's
        assert set(drawn[100:] // 1000) == {after}
    assert not np.array_equal(trained[(0, 103)][3:], trained[(2, 103)][3:])
    # further draws: the other training seeds' first, then fresh noise seeds, never its own or one twice
    assert sr.extra_draws(cfg, 1, 2) == [table2.synthetic_draw(cfg, 2), table2.synthetic_draw(cfg, 0)]
    assert sr.extra_draws(cfg, 2, 3) == [cfg.seed, cfg.seed + 1, cfg.seed + 3]
    same = cfg.replace(seg_redraw_synthetic=False)                    # one shared draw: every extra is fresh
    assert sr.extra_draws(same, 0, 2) == [cfg.seed + 1, cfg.seed + 2]
    rows = sr.count_rows(cases)
    beyond = next(r for r in rows if r["training_set"] == "real + 150 SBLDM")
    assert beyond["vs_100_diff_WT"] == 0 and beyond["vs_100_verdict_WT"] == "no detectable effect"
    assert "vs_100_diff_WT" not in next(r for r in rows if r["training_set"] == "real + 100 SBLDM")
    # the table keeps the comparison with 100 that only the rows beyond it carry (the first row has none)
    from sbldm.tables import read_csv, write_table

    write_table(rows, tmp_path / "counts")
    table = {r["training_set"]: r for r in read_csv(tmp_path / "counts.csv")}
    assert table["real + 150 SBLDM"]["vs_100_verdict_WT"] == "no detectable effect"
    assert table["real"]["vs_100_verdict_WT"] == "" and "vs_100_verdict_WT" in (tmp_path / "counts.md").read_text()


def test_a_verdict_of_no_effect_whose_interval_clears_zero_says_what_held_it_back():
    from sbldm.report.summaries import _verdict_text

    row = {"row": "synthetic only: 3D-LDM", "seeds": 10, "diff_WT": -0.085, "ci95_low_WT": -0.138,
           "ci95_high_WT": -0.036, "p_seeds_WT": 0.28, "seeds_above_real_WT": 0, "verdict_WT": "no detectable effect",
           "diff_TC": -0.186, "ci95_low_TC": -0.231, "ci95_high_TC": -0.141, "p_seeds_TC": 0.0005,
           "seeds_above_real_TC": 0, "verdict_TC": "loss",
           "diff_ET": -0.028, "ci95_low_ET": -0.084, "ci95_high_ET": 0.037, "p_seeds_ET": 1.0,
           "seeds_above_real_ET": 4, "verdict_ET": "no detectable effect"}
    assert _verdict_text(row) == ("WT -0.085 [-0.138, -0.036], 0/10 seeds above, no detectable effect (Holm p 0.28); "
                                  "TC -0.186 [-0.231, -0.141], 0/10 seeds above, loss; "
                                  "ET -0.028 [-0.084, +0.037], 4/10 seeds above, no detectable effect")
    row["p_seeds_WT"] = 0.01                          # significant and clear of 0: the seed spread held it back
    assert "no detectable effect (smaller than the seed spread)" in _verdict_text(row)
    beyond = {"seeds": 10, "vs_100_diff_all": 0.01, "vs_100_ci95_low_all": -0.02, "vs_100_ci95_high_all": 0.04,
              "vs_100_verdict_all": "no detectable effect", "verdict_all": ""}
    assert _verdict_text(beyond, "vs_100_") == "WT +0.010 [-0.020, +0.040], no detectable effect"
    assert _verdict_text({"seeds": 3}) == ""


def test_the_summary_of_the_papers_whole_tumour_mask_names_its_seed_level_verdicts():
    """The paper's label mode scores the whole tumour alone (suffix WT, no TC or ET): the
    summary must quote its seed-paired p and verdicts, not fall back to the per-case test."""
    import numpy as np

    from sbldm.report.summaries import segmentation
    from sbldm.segmentation import statistics

    rng = np.random.default_rng(0)
    base = 0.6 + rng.normal(0, 0.01, 10)
    cases = []
    for row, gain in (("real", 0.0), ("real + SBLDM", 0.1)):
        for s in range(10):
            for k in range(20):
                d = float(np.clip(base[s] + gain + rng.normal(0, 0.02), 0, 1))
                cases.append({"row": row, "seed": s, "case_id": f"c{k}", "n_train_volumes": 100, "dice": d,
                              "iou": d / 2, "hd95": 3.0, "empty_prediction": 0, "dice_WT": d, "lesion_dice_WT": d,
                              "lesion_hd95_WT": 3.0, "false_positives_WT": 0, "missed_WT": 0})
    rows = statistics.summarise(cases)
    assert rows[1]["verdict_WT"] == "gain" and "verdict_all" not in rows[1]
    text = segmentation("paper", rows)
    assert "seed-paired Holm p" in text
    assert "rows with a detected gain over real only (the training run as the unit, Holm over rows x regions): " \
           "real + SBLDM (WT)." in text
    assert "real + SBLDM minus real only, per training seed (mean, 95% interval): WT +0.09" in text


def test_the_sweep_figure_draws_each_rows_seed_paired_difference_with_its_interval():
    """Below the means, each row minus real only with its 95% interval, read from the
    summarised rows' diff / ci95 columns; without them (one seed) only the means."""
    from matplotlib.collections import LineCollection

    def row(name, n, diff=None):
        r = {"row": name, "n_real": n, "seeds": 10, "dice_WT_mean": 0.6, "dice_WT_seed_std": 0.05}
        if diff is not None:
            r.update({"diff_WT": diff, "ci95_low_WT": diff - 0.02, "ci95_high_WT": diff + 0.03})
        return r

    summary = [row(sr.REAL, 10), row(sr.REAL, 100), row(sr.REAL_AUG, 10, -0.01), row(sr.REAL_AUG, 100, 0.02),
               row(sr.MIXING, 10, 0.05), row(sr.MIXING, 100, float("nan"))]
    fig = sr.sweep_figure(summary, ["WT"], "test")
    assert len(fig.axes) == 2
    lower = fig.axes[1]
    points = {c.get_label(): list(zip(c.lines[0].get_xdata(), c.lines[0].get_ydata())) for c in lower.containers}
    assert points["real + augmentation minus real only"] == [(9.5, -0.01), (95.0, 0.02)]
    assert points["real + SBLDM minus real only"] == [(10.5, 0.05)]          # the NaN at 100 left out
    bars = sorted(sorted(seg[:, 1]) for c in lower.collections if isinstance(c, LineCollection)
                  for seg in c.get_segments())
    assert np.allclose(bars, [(-0.03, 0.02), (0.0, 0.05), (0.03, 0.08)])
    # one seed: no paired columns, the means alone
    assert len(sr.sweep_figure([row(sr.REAL, 10), row(sr.MIXING, 10)], ["WT"], "test").axes) == 1


def test_the_count_figure_draws_the_gain_over_real_against_the_synthetic_count_and_rings_a_loss_to_100():
    from sbldm.segmentation.statistics import LOSS, NO_EFFECT

    def row(n, k, diff=None, vs100=None):
        r = {"n_real": n, "synthetic_volumes": k, "training_set": sr.count_row(k), "seeds": 10}
        if diff is not None:
            r.update({"diff_WT": diff, "ci95_low_WT": diff - 0.01, "ci95_high_WT": diff + 0.02})
        if vs100 is not None:
            r["vs_100_verdict_WT"] = vs100
        return r

    counts = [row(10, 0), row(10, 100, 0.04), row(10, 400, 0.01, LOSS),
              row(100, 0), row(100, 100, 0.02), row(100, 200, 0.03, NO_EFFECT)]
    ax = sr.count_figure(counts, ["WT"], "test").axes[0]
    lines = {c.get_label(): list(zip(c.lines[0].get_xdata(), c.lines[0].get_ydata())) for c in ax.containers}
    assert lines == {"10 real volumes": [(0, 0.0), (100, 0.04), (400, 0.01)],
                     "100 real volumes": [(0, 0.0), (100, 0.02), (200, 0.03)]}
    rings = [list(zip(line.get_xdata(), line.get_ydata())) for line in ax.lines if line.get_markersize() == 12]
    assert rings == [[(400, 0.01)]]                  # only the count that lost against 100
    # a table without seed-paired columns (one seed) draws nothing and raises nothing
    assert sr.count_figure([row(10, 0), row(10, 100)], ["WT"], "test").axes[0].containers == []
