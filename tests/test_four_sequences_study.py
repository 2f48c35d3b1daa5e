"""Notebook 12's study of four sequences: the FLAIR run's cases read again with their four
sequences (same split, prepared once), the latent channels chosen by the reconstruction
check's rule, the seed-paired comparisons with Holm over the whole table (against scipy's
signed-rank test), the interiors per sequence against intensities put in by hand, and
the figure of every sequence."""

import math
import types

import numpy as np
import pytest
from scipy.stats import ttest_1samp

from sbldm import config
from sbldm.data import cohort
from sbldm.experiments import four_sequences as fs
from test_sequences import _write

PSNR = fs.PSNR


@pytest.fixture
def folder(tmp_path):
    """Five BraTS 2023 cases with four sequences."""
    root = tmp_path / "brats"
    for k in range(5):
        _write(root, f"BraTS-GLI-{k:05d}-000", 2023, 3, seed=k)
    return root


def test_the_four_sequence_cohort_is_the_flair_runs_cases_and_split_prepared_once(folder, tmp_path):
    from sbldm.data.prepare import prepare

    cfg = config.resolve("smoke", n_train=3, n_test=2, volume_shape=(16, 16, 8))
    work = tmp_path / "work"
    with pytest.raises(FileNotFoundError, match="run notebook 00 first"):
        fs.prepare_four(cfg, work, data=folder)
    prepare(cfg, work / "data", brats_dir=folder, progress=False, export=False)         # the FLAIR run
    flair = cohort.load_prepared(work / "data", "train")
    assert flair.sequences is None
    d = fs.prepare_four(cfg, work, data=folder)
    assert d == work / "four_sequences" / "data"
    train, test = cohort.load_prepared(d, "train"), cohort.load_prepared(d, "test")
    assert train.case_ids == flair.case_ids and test.case_ids == cohort.load_prepared(work / "data", "test").case_ids
    assert train.modalities == fs.FOUR and train.sequences.shape == (3, 4, 16, 16, 8)
    np.testing.assert_array_equal(train.images, train.sequences[:, 3])       # the FLAIR is the primary image
    np.testing.assert_array_equal(train.labels, flair.labels)
    stamp = (d / "cache" / "sequences.npy").stat().st_mtime_ns
    assert fs.prepare_four(cfg, work, data=folder) == d                           # prepared once
    assert (d / "cache" / "sequences.npy").stat().st_mtime_ns == stamp
    # a FLAIR run whose split no longer matches: prepared again, and refused since the same cases
    # and seed cannot give that split
    split = cohort.load_split(work / "data" / "split.json")
    split["train"][0], split["test"][0] = split["test"][0], split["train"][0]
    cohort.save_split(work / "data" / "split.json", split)
    with pytest.raises(ValueError, match="four-sequence split differs from the FLAIR run's"):
        fs.prepare_four(cfg, work, data=folder)


def _rows(c: int, psnr: dict, errors: dict) -> list[dict]:
    rows = [{"latent_channels": c, "sequence": s, "metric": PSNR, "mean": v} for s, v in psnr.items()]
    rows += [{"latent_channels": c, "sequence": s, "metric": f"{r}: mean |error|", "mean": v}
             for (s, r), v in errors.items()]
    return rows + [{"latent_channels": c, "sequence": "label map", "metric": "WT Dice, per volume", "mean": 0.1 * c}]


def test_the_latent_channels_are_the_fewest_that_keep_up_with_the_best_candidate():
    err = {("T1ce", "enhancing"): 0.10, ("FLAIR", "oedema"): 0.20}
    four = _rows(4, {"T1": 30.0, "FLAIR": 29.0}, err)
    eight = _rows(8, {"T1": 30.3, "FLAIR": 29.4}, {k: 0.95 * v for k, v in err.items()})
    choice = fs.choose_latent_channels(four + eight, 0.5, 0.1)
    assert choice == {"chosen": 4, "short": {4: [], 8: []}}                        # Dice is reported, not a criterion
    # 8 channels a full dB sharper on FLAIR: 4 falls short there
    eight = _rows(8, {"T1": 30.3, "FLAIR": 30.0}, err)
    choice = fs.choose_latent_channels(four + eight, 0.5, 0.1)
    assert choice == {"chosen": 8, "short": {4: ["FLAIR PSNR (dB), per volume"], 8: []}}
    assert fs.choose_latent_channels(four + eight, 1.0, 0.1)["chosen"] == 4        # within a wider tolerance
    # a sub-region error twice the best's: short there, whatever the PSNR
    eight = _rows(8, {"T1": 30.0, "FLAIR": 29.0}, {("T1ce", "enhancing"): 0.05, ("FLAIR", "oedema"): 0.20})
    assert fs.choose_latent_channels(four + eight, 0.5, 0.1) == {
        "chosen": 8, "short": {4: ["T1ce enhancing: mean |error|"], 8: []}}
    # neither keeps up everywhere: the one short in fewer criteria, then the fewer channels
    eight = _rows(8, {"T1": 31.0, "FLAIR": 29.0}, {("T1ce", "enhancing"): 0.2, ("FLAIR", "oedema"): 0.4})
    assert fs.choose_latent_channels(four + eight, 0.5, 0.1)["chosen"] == 4
    # a candidate that did not score a criterion falls short in it
    nan = _rows(8, {"T1": 35.0, "FLAIR": 35.0}, {("T1ce", "enhancing"): math.nan, ("FLAIR", "oedema"): 0.01})
    assert fs.choose_latent_channels(four + nan, 0.5, 0.1)["short"][8] == ["T1ce enhancing: mean |error|"]
    with pytest.raises(ValueError, match="no latent-channel candidates"):
        fs.choose_latent_channels([], 0.5, 0.1)


def _scatter(s: int) -> float:
    return 0.01 * ((3 * s) % 5 - 2)


def _cases(seeds: int, test_cases: int = 3) -> list[dict]:
    """Dice by construction: REAL4 = REAL1 + 0.1 (+-0.02 by seed, 0 on average over 5 or
    10 seeds), SBLDM adds nothing on the FLAIR (+-0.001
    alternating by seed) and takes 0.05 from the four-sequence segmenter."""
    out = []
    for n in (3, 6):
        for s in range(seeds):
            for k in range(test_cases):
                base = 0.5 + 0.01 * s + 0.02 * k
                wiggle = 0.001 * (1 if s % 2 else -1) * (1 + 0.1 * s)
                for row, v, reads in ((fs.REAL1, base, "FLAIR"), (fs.REAL4, base + 0.1 + _scatter(s), "four"),
                                      (fs.SYN1, base + wiggle, "FLAIR"), (fs.SYN4, base + 0.05, "four")):
                    out.append({"row": row, "seed": s, "case_id": f"c{k}", "n_real": n, "reads": reads,
                                **{f"dice_{g}": v for g in ("WT", "TC", "ET")}})
    return out


def test_every_comparison_is_seed_paired_with_holm_over_the_whole_table():
    rows = fs.comparison_rows(_cases(10))
    assert [(r["n_real"], r["training_set"], r["against"]) for r in rows[:5]] == [
        (3, fs.REAL1, ""), (3, fs.REAL4, fs.REAL1), (3, fs.SYN1, fs.REAL1), (3, fs.SYN4, fs.REAL4),
        (3, fs.SYN4, fs.SYN1)]
    by = {(r["n_real"], r["training_set"], r["against"]): r for r in rows}
    assert by[(3, fs.REAL1, "")]["verdict_WT"] == "" and by[(3, fs.REAL1, "")]["seeds"] == 10
    assert by[(6, fs.REAL4, fs.REAL1)]["diff_TC"] == pytest.approx(0.1)
    assert by[(6, fs.SYN4, fs.REAL4)]["diff_ET"] == pytest.approx(-0.05)
    assert by[(6, fs.SYN4, fs.SYN1)]["diff_WT"] == pytest.approx(0.05, abs=2e-3)
    # the t-test over the 10 per-seed differences, Holm over 2 sizes x 4 comparisons x 3 regions = 24:
    # SBLDM's -wiggle differences (2 sizes x 3 regions) scatter least and come first, so these six tied
    # p values come 7th to 12th and Holm multiplies them by 24 - 6 = 18
    raw = ttest_1samp([0.1 + _scatter(s) for s in range(10)], 0.0).pvalue
    first = ttest_1samp([0.05 - 0.001 * (1 if s % 2 else -1) * (1 + 0.1 * s) for s in range(10)], 0.0).pvalue
    assert first < raw < 1e-6
    assert by[(3, fs.REAL4, fs.REAL1)]["p_seeds_WT"] == pytest.approx(18 * raw, rel=1e-6)
    assert by[(3, fs.REAL4, fs.REAL1)]["verdict_WT"] == "gain" and by[(3, fs.SYN4, fs.REAL4)]["verdict_TC"] == "loss"
    assert by[(3, fs.SYN1, fs.REAL1)]["verdict_WT"] == "no detectable effect"
    # with 3 seeds the same effects cannot survive Holm over 24 comparisons (t-test p ~0.008, x 24 > 0.05)
    three = ttest_1samp([0.1 + _scatter(s) for s in range(3)], 0.0).pvalue
    assert 0.05 / 24 < three < 0.05
    few = {(r["n_real"], r["training_set"], r["against"]): r for r in fs.comparison_rows(_cases(3))}
    assert few[(3, fs.REAL4, fs.REAL1)]["ci95_low_WT"] > 0
    assert few[(3, fs.REAL4, fs.REAL1)]["verdict_WT"] == "no detectable effect"


def _volumes(enhancing_t1ce: float, n: int = 4, seed: int = 0):
    """(N, 4, x, y, z) brains of noise around 0 (background -1) with one tumour: oedema,
    enhancing rim and necrosis; the enhancing tumour ``enhancing_t1ce`` above the brain on
    T1ce only, the oedema 0.4 above it on FLAIR only."""
    rng = np.random.default_rng(seed)
    shape = (24, 24, 12)
    g = np.indices(shape).astype(float)
    brain = ((g[0] - 11.5) / 10) ** 2 + ((g[1] - 11.5) / 10) ** 2 + ((g[2] - 5.5) / 5.5) ** 2 <= 1
    labels = np.zeros((n, *shape), np.uint8)
    seqs = np.full((n, 4, *shape), -1.0, np.float32)
    for v in range(n):
        labels[v, 6:13, 6:13, 3:8] = 2
        labels[v, 7:12, 7:12, 4:7] = 3
        labels[v, 9, 9, 5] = 1
        for s in range(4):
            seqs[v, s][brain] = np.clip(rng.normal(0.0, 0.1, int(brain.sum())), -0.8, 0.8)
        seqs[v, 1][labels[v] == 3] += enhancing_t1ce
        seqs[v, 3][labels[v] == 2] += 0.4
    return seqs, labels


def test_the_interiors_are_read_per_sequence_and_the_enhancing_tumour_must_enhance_on_t1ce():
    seqs, labels = _volumes(0.5)
    real = types.SimpleNamespace(sequences=seqs, labels=labels)
    rows, enh = fs.appearance_rows(real, {"sequences": seqs, "labels": labels})
    by = {(r["set"], r["sequence"]): r for r in rows}
    assert by[("real (train split)", "T1ce")]["median_z_enhancing"] > 2            # 0.5 over an IQR of ~0.13
    assert abs(by[("real (train split)", "T1")]["median_z_enhancing"]) < 0.5
    assert by[("real (train split)", "FLAIR")]["median_z_oedema"] > 2
    assert by[("SBLDM, 4 sequences", "T1ce")]["w_over_spread_enhancing"] == pytest.approx(0.0, abs=1e-9)
    assert enh["T1ce"]["inside"]
    assert enh["T1ce"]["generated"] == pytest.approx(by[("real (train split)", "T1ce")]["median_z_enhancing"])
    table = {r["sequence"]: r for r in fs.enhancing_rows(enh)}
    assert list(table) == ["T1", "T1ce", "T2", "FLAIR"] and table["T1ce"]["inside_real_iqr"]
    assert table["T1ce"]["real_q25"] <= table["T1ce"]["generated_median_z"] <= table["T1ce"]["real_q75"]
    flat, flat_labels = _volumes(0.0, seed=1)                                      # enhancing only in its label
    rows, enh = fs.appearance_rows(real, {"sequences": flat, "labels": flat_labels})
    assert not enh["T1ce"]["inside"] and abs(enh["T1ce"]["generated"]) < 0.5
    with pytest.raises(ValueError, match="carries no sequences"):
        fs.appearance_rows(real, {"sequences": None, "labels": labels})
    # a model of the whole tumour (the paper's label mode) draws no sub-regions: nothing to read, said as NaN
    rows, enh = fs.appearance_rows(real, {"sequences": seqs, "labels": None, "masks": labels > 0})
    assert rows == [] and enh == {} and fs.enhancing_rows(enh) == []
    whole = fs.example_cases(types.SimpleNamespace(sequences=seqs, labels=labels, case_ids=list("abcd")),
                             {"sequences": seqs, "labels": None, "masks": (labels > 0).astype(np.uint8)}, k=1)
    assert set(np.unique(whole[1][2])) == {0, 2}                     # outlined as the whole tumour


def test_the_figure_shows_every_sequence_of_every_case():
    seqs, labels = _volumes(0.5, n=2)
    cases = fs.example_cases(types.SimpleNamespace(sequences=seqs, labels=labels, case_ids=["a", "b"]),
                             {"sequences": seqs, "labels": labels}, k=2)
    assert [c[0] for c in cases] == ["real a", "real b", "SBLDM sample 0", "SBLDM sample 1"]
    from sbldm.plotting import sequences_figure

    fig = sequences_figure(cases, ["T1", "T1ce", "T2", "FLAIR"])
    assert len(fig.axes) == 16 and [fig.axes[k].get_title() for k in range(4)] == ["T1", "T1ce", "T2", "FLAIR"]
    with pytest.raises(ValueError, match=r"real a: sequences must be \(3, x, y, z\)"):
        sequences_figure(cases, ["T1", "T1ce", "FLAIR"])


def test_the_config_reads_four_sequences_and_checks_the_study_fields():
    cfg = config.resolve("smoke")
    four = fs.four_config(cfg, 8)
    assert four.modalities == fs.FOUR and four.vae_latent_channels == 8 and fs.four_config(cfg).vae_latent_channels == 4
    assert fs.generator_dir("w", 6, 6).as_posix() == "w/four_sequences"
    assert fs.generator_dir("w", 3, 6).as_posix() == "w/four_sequences/scarce/n3"
    for bad, match in (({"four_latent_candidates": (4, 4)}, "distinct"), ({"four_check_fraction": 1.0}, r"\(0, 1\)"),
                       ({"four_check_steps": 0}, "positive integer"), ({"four_psnr_tolerance": -1.0}, ">= 0")):
        with pytest.raises(ValueError, match=match):
            config.resolve("smoke", **bad)


def test_the_summary_says_where_the_enhancing_tumour_lies_and_what_the_shared_vae_saw():
    from sbldm.report import summaries

    enhancing = {"T1": {"generated": 0.1, "real_q25": -0.2, "real_q75": 0.3, "inside": True},
                 "T1ce": {"generated": 2.5, "real_q25": 1.75, "real_q75": 3.0, "inside": True},
                 "FLAIR": {"generated": 4.0, "real_q25": 1.0, "real_q75": 2.0, "inside": False}}
    appearance = [{"set": "real (train split)", "sequence": "T1ce", "median_z_enhancing": 2.2},
                  {"set": "SBLDM, 4 sequences", "sequence": "T1ce", "median_z_enhancing": 2.5}]
    comparisons = [{"n_real": n, "training_set": "real, FLAIR", "against": ""} for n in (10, 100)]
    text = summaries.four_sequences("small", {"chosen": 8, "short": {}}, [], appearance, enhancing, [], comparisons)
    assert ("on T1ce the generated enhancing tumour's median z is 2.50 (brighter than the normal brain), inside the "
            "real training tumours' interquartile range [1.75, 3.00]; inside it on T1, T1ce.") in text
    assert "decoded by the slice VAE trained on all 100: at 10 real volumes" in text
    enhancing["T1ce"] = {"generated": -0.5, "real_q25": 1.75, "real_q75": 3.0, "inside": False}
    text = summaries.four_sequences("small", {"chosen": 8, "short": {}}, [], appearance, enhancing, [], comparisons[:1])
    assert "-0.50 (not brighter than the normal brain), outside" in text and "slice VAE trained on all" not in text
