"""The generators' budget curves: the measures against independent counts, a point
extended by resuming is the longer run, and the sweep writes its table and figure."""

import json

import numpy as np
import pytest

from model_helpers import BASELINES, make_prepared


def test_pieces_count_corner_touching_cubes_once_at_26_and_twice_at_6():
    from sbldm.evaluation.budget import pieces

    m = np.zeros((3, 12, 12, 12), bool)
    m[0, 2:5, 2:5, 2:5] = True
    m[0, 5:8, 5:8, 5:8] = True          # touches the first only at a corner
    m[1, 1:4, 1:4, 1:4] = True
    m[1, 8:11, 8:11, 8:11] = True       # apart
    # volume 2 is empty: left out
    assert pieces(m, 6) == {"mean": 2.0, "multi_share": 1.0}
    assert pieces(m, 26) == {"mean": 1.5, "multi_share": 0.5}
    with pytest.raises(ValueError, match="6 or 26"):
        pieces(m, 18)
    assert np.isnan(pieces(np.zeros((2, 4, 4, 4)), 26)["mean"])


def test_pieces_agree_with_scikit_image_on_random_masks():
    from skimage.measure import label

    from sbldm.evaluation.budget import pieces

    rng = np.random.default_rng(0)
    masks = rng.random((6, 10, 10, 10)) > 0.8
    for conn, sk in ((6, 1), (26, 3)):
        counts = [label(m, connectivity=sk).max() for m in masks]
        assert pieces(masks, conn)["mean"] == pytest.approx(np.mean(counts))
    # random specks are many pieces at 6-connectivity and fewer at 26
    assert pieces(masks, 6)["mean"] > pieces(masks, 26)["mean"] > 1


def _brain_with_tumour(inside: float, texture: float = 0.0, seed: int = 0):
    """A brain of intensity 0 (+ small noise) with a ball tumour of ``inside`` (+ texture)."""
    rng = np.random.default_rng(seed)
    img = np.full((1, 24, 24, 12), -1.0, np.float32)
    img[0, 2:22, 2:22, 1:11] = rng.normal(0.0, 0.05, (20, 20, 10))
    lab = np.zeros(img.shape, np.uint8)
    zz, yy, xx = np.ogrid[:24, :24, :12]
    ball = (zz - 12) ** 2 + (yy - 12) ** 2 + ((xx - 6) * 2) ** 2 <= 16
    lab[0][ball] = 2
    img[0][ball] = inside + rng.normal(0.0, texture, ball.sum()) if texture else inside
    return img, lab


def test_dark_part_share_and_texture_follow_the_interior():
    from sbldm.evaluation.appearance import subregion_appearance
    from sbldm.evaluation.budget import dark_part_share

    bright, lab = _brain_with_tumour(0.5)
    dark, _ = _brain_with_tumour(-0.5)
    rows = subregion_appearance(np.concatenate([bright, dark]), np.concatenate([lab, lab]))
    assert [r["median_z_oedema"] > 0 for r in rows] == [True, False]
    assert dark_part_share(rows) == 0.5
    assert dark_part_share(rows[:1]) == 0.0 and np.isnan(dark_part_share([]))
    # an even lesion has no texture; a textured one its spread in z units (the brain's IQR)
    assert rows[0]["std_z_tumour"] == pytest.approx(0.0, abs=1e-6)
    textured, _ = _brain_with_tumour(0.5, texture=0.1, seed=1)
    (row,) = subregion_appearance(textured, lab)
    brain = textured[0][(textured[0] > -1) & ~(lab[0] > 0)]
    iqr = np.subtract(*np.percentile(brain, [75, 25]))
    assert row["std_z_tumour"] == pytest.approx(0.1 / iqr, rel=0.25)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from sbldm.data.cohort import load_prepared

    root = make_prepared(tmp_path_factory.mktemp("cohort"))
    return load_prepared(root, "train"), load_prepared(root, "test")


def cfg(**kw):
    from sbldm.config import resolve

    return resolve("smoke", **{**BASELINES, "eval_batch_size": 2, **kw})


@pytest.mark.slow
def test_a_point_extended_by_resuming_is_the_longer_run(cohort, tmp_path):
    import torch

    from sbldm.experiments import generator_budget as gb
    from sbldm.generators.registry import load_generator

    train, _ = cohort
    run = gb.SBLDMRun(cfg(), train, tmp_path / "a", vae_steps=2, progress=False)
    for steps in (2, 4):
        run.train_to(steps)
    straight = gb.SBLDMRun(cfg(), train, tmp_path / "b", vae_steps=2, progress=False)
    straight.train_to(4)
    a = load_generator(gb.point_dir(tmp_path / "a", "sbldm", 4)).pipeline.unet.state_dict()
    b = load_generator(gb.point_dir(tmp_path / "b", "sbldm", 4)).pipeline.unet.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the short point is another network, and each point records its training time
    c = load_generator(gb.point_dir(tmp_path / "a", "sbldm", 2)).pipeline.unet.state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a)
    budgets = [gb.read_budget(gb.point_dir(tmp_path / "a", "sbldm", s)) for s in (2, 4)]
    assert 0 < budgets[0]["train_seconds"] < budgets[1]["train_seconds"]
    assert budgets[1]["vae_steps"] == 2


@pytest.mark.slow
def test_the_sweep_scores_every_generator_and_writes_its_table_and_figure(cohort, tmp_path, monkeypatch):
    from sbldm.experiments import generator_budget as gb
    from sbldm.evaluation.budget import reference
    from sbldm.tables import read_csv

    train, test = cohort
    c = cfg()
    runs = gb.runs(c, train, tmp_path / "work", vae_steps=2, progress=False)
    points = {"sbldm": (2,), "ldm3d": (3,), "lsgan3d": (2, 4)}
    for g, steps in points.items():
        for s in steps:
            runs[g].train_to(s)
    seg = gb.eval_segmenter(c.replace(seg_iterations=2), train, tmp_path / "work" / "seg.pt")
    ref = reference(train, test, seg.features)
    rows = [gb.real_row(test, ref)]
    rows += [gb.score_point(c, tmp_path / "work", g, s, ref, n=3, progress=False)
             for g, steps in points.items() for s in steps]
    # the tiny cohort's 2 test volumes are too few for a Fréchet distance of their own, and
    # 16x16x8 volumes are smaller than the 11^3 SSIM window: those cells stay empty
    real = rows[0]
    assert np.isnan(real["frechet_ratio"]) and np.isnan(real["nearest_train_ssim_vs_test"])
    for r in rows[1:]:
        assert r["n"] == 3 and r["cpu_hours"] > 0 and np.isfinite(r["frechet"])
        assert 0 <= r["empty_share"] <= 1
    sb = rows[1]
    assert sb["generator"] == "sbldm" and 0 <= sb["smallest_empty"] <= 8
    assert {"spearman_sphericity", "spearman_surface_area", "box_error"} <= set(sb)
    assert "spearman_sphericity" not in rows[2]           # the 3D-LDM cannot be asked for a tumour
    # a scored point is read back, not drawn again
    before = gb.row_path(tmp_path / "work", "sbldm", 2).stat().st_mtime_ns
    assert gb.score_point(c, tmp_path / "work", "sbldm", 2, ref, n=3) == json.loads(
        gb.row_path(tmp_path / "work", "sbldm", 2).read_text())
    assert gb.row_path(tmp_path / "work", "sbldm", 2).stat().st_mtime_ns == before
    # what the volumes are worth to a segmenter trained on them alone, on real training volumes
    use = gb.utility_row(c, tmp_path / "work", "lsgan3d", 4, train, n_eval=3)
    assert use["synthetic_only_n_eval"] == 3
    assert 0 <= use["synthetic_only_dice_WT"] <= 1
    assert "synthetic_only_dice_TC" not in use                 # the tiny chain draws whole-tumour masks only
    assert gb.utility_path(tmp_path / "work", "lsgan3d", 4).is_file()
    # the score is the prediction's Dice on the first n_eval real training volumes, both ways:
    # a segmenter that returns the real masks scores 1, one that finds nothing scores 0
    from sbldm.segmentation import fast

    class Fixed:
        def __init__(self, out):
            self.out = out

        def predict(self, images):
            return self.out[:len(images)]

    for out, expected in ((train.masks * 2, 1.0), (np.zeros_like(train.masks), 0.0)):
        monkeypatch.setattr(fast, "train_fast", lambda *a, out=out, **k: Fixed(out))
        gb.utility_path(tmp_path / "work", "lsgan3d", 4).unlink()
        assert gb.utility_row(c, tmp_path / "work", "lsgan3d", 4, train, n_eval=3)["synthetic_only_dice_WT"] == expected
    # a second VAE budget: the same VAE run extended (its log continues), an SBLDM arm on it
    arm = gb.SBLDMRun(c, train, tmp_path / "work", 3, progress=False, name=gb.arm_name(3),
                      extends=runs["sbldm"].root / "vae")
    arm.train_to(2)
    assert arm.vae_seconds() > runs["sbldm"].vae_seconds() > 0
    assert gb.read_budget(gb.point_dir(tmp_path / "work", "sbldm-vae3", 2))["vae_steps"] == 3
    assert gb.trained_generators(tmp_path / "work") == ["sbldm", "sbldm-vae3", "ldm3d", "lsgan3d"]
    # a method change at that budget: the same VAE, the UNet with another prediction target
    x0 = gb.SBLDMRun(c, train, tmp_path / "work", 3, progress=False, name=gb.arm_name(3, "x0"), method="x0",
                     extends=arm.root / "vae")
    assert x0.cfg.diffusion_prediction_type == "sample" and x0.name == "sbldm-vae3-x0"
    x0.train_to(2)
    assert gb.read_budget(gb.point_dir(tmp_path / "work", "sbldm-vae3-x0", 2))["method"] == "x0"
    assert gb.trained_generators(tmp_path / "work") == ["sbldm", "sbldm-vae3", "sbldm-vae3-x0", "ldm3d", "lsgan3d"]
    with pytest.raises(ValueError, match="unknown method change 'nope'"):
        gb.SBLDMRun(c, train, tmp_path / "work", 3, method="nope")
    rows.append(gb.score_point(c, tmp_path / "work", "sbldm-vae3", 2, ref, n=3, progress=False))
    assert rows[-1]["generator"] == "sbldm-vae3" and "spearman_sphericity" in rows[-1]
    rows.append(gb.score_point(c, tmp_path / "work", "sbldm-vae3-x0", 2, ref, n=3, progress=False))
    assert rows[-1]["method"] == "x0"
    # each VAE's reconstructions of training volumes: the decoder's ceiling, at the VAE's hours
    for run in (runs["sbldm"], arm):
        ceiling = gb.ceiling_row(run, ref, n=3, progress=False)
        assert ceiling["generator"] == gb.CEILING and ceiling["steps"] == run.cfg.vae_steps
        assert ceiling["cpu_hours"] == pytest.approx(run.vae_seconds() / 3600)
        assert ceiling["n"] == 3 and np.isnan(ceiling["nearest_train_ssim_median"])
        rows.append(ceiling)
    gb.write_outputs(rows, tmp_path / "tables", tmp_path / "figures", c, 3, 2)
    table = read_csv(tmp_path / "tables" / "generator_budget.csv")
    assert [r["generator"] for r in table] == ["real", gb.CEILING, gb.CEILING, "sbldm", "sbldm-vae3", "sbldm-vae3-x0",
                                              "ldm3d", "lsgan3d", "lsgan3d"]
    assert list(table[0]) == list(gb.COLUMNS)
    assert (tmp_path / "figures" / "generator_budget.png").stat().st_size > 10_000
    targets = read_csv(tmp_path / "tables" / "generator_budget_targets.csv")
    assert {r["measure"] for r in targets} == {"multi_piece_26_gap", "dark_part_share_gap", "interior_w_over_spread",
                                               "frechet_ratio", "smallest_empty"}
    assert {r["generator"] for r in targets} == {"sbldm", "sbldm-vae3", "sbldm-vae3-x0"}   # not the ceiling
    matched = read_csv(tmp_path / "tables" / "generator_budget_table1.csv")
    assert {r["baseline"] for r in matched} == {"ldm3d", "lsgan3d"}          # the baselines only


def test_extrapolation_of_a_curve_in_doublings_of_the_budget():
    from sbldm.evaluation.budget import extrapolate, target_report

    falling = [(h, 2.0 - 0.2 * np.log2(h)) for h in (1, 2, 4, 8)]      # 1.4 at 8 hours, 0.2 lower per doubling
    ex = extrapolate(falling, target=1.0)
    assert ex["per_doubling"] == pytest.approx(-0.2) and ex["doublings"] == pytest.approx(2.0)
    assert ex["hours_to_target"] == pytest.approx(32.0) and not ex["met"]
    assert extrapolate(falling, target=1.5)["met"] and extrapolate(falling, target=1.5)["hours_to_target"] == 8
    flat = [(h, 1.4 + 0.01 * (h % 2)) for h in (1, 2, 4, 8)]
    assert np.isnan(extrapolate(flat, target=1.0)["hours_to_target"])    # not falling: budget alone does not do it
    # a drop then a rise at the end: the line through the last three still falls, but the
    # curve does not fall steadily, so nothing is extrapolated from it
    bumpy = [(1, 30.0), (2, 27.0), (4, 4.3), (8, 6.5)]
    assert np.isnan(extrapolate(bumpy, target=1.5)["hours_to_target"])
    assert extrapolate(bumpy, target=1.5)["per_doubling"] < 0
    rising = [(h, 1.0 + 0.1 * np.log2(h)) for h in (1, 2, 4, 8)]
    assert np.isnan(extrapolate(rising, target=0.5)["hours_to_target"])
    assert np.isnan(extrapolate([(1.0, 2.0)], target=1.0)["per_doubling"])
    rows = [{"generator": "sbldm", "cpu_hours": h, "frechet_ratio": v} for h, v in falling]
    rep = {r["measure"]: r for r in target_report(rows)}
    assert rep["frechet_ratio"]["value"] == pytest.approx(1.4) and rep["frechet_ratio"]["target"] == 1.5
    assert rep["frechet_ratio"]["met"] and not rep["interior_w_over_spread"]["met"]


def test_table1_at_matched_compute_pairs_the_nearest_budget_and_names_the_winner():
    from sbldm.evaluation.budget import matched_table1

    rows = [{"generator": "real", "steps": None, "cpu_hours": None, "psnr": 20.0},
            {"generator": "sbldm", "steps": 900, "cpu_hours": 0.4, "psnr": 17.0, "ssim": 0.7, "seconds_per_volume": 2.0},
            {"generator": "sbldm", "steps": 3600, "cpu_hours": 1.0, "psnr": 18.0, "ssim": 0.7, "seconds_per_volume": 2.0},
            {"generator": "ldm3d", "steps": 1500, "cpu_hours": 0.9, "psnr": 18.5, "ssim": 0.65, "seconds_per_volume": 1.0},
            {"generator": "lsgan3d", "steps": 1500, "cpu_hours": 0.3, "psnr": 16.0, "ssim": 0.7, "seconds_per_volume": 0.1}]
    by = {r["baseline"]: r for r in matched_table1(rows)}
    assert by["ldm3d"]["sbldm_steps"] == 3600 and by["lsgan3d"]["sbldm_steps"] == 900
    assert by["ldm3d"]["psnr_winner"] == "ldm3d" and by["ldm3d"]["ssim_winner"] == "sbldm"
    assert by["ldm3d"]["seconds_per_volume_winner"] == "ldm3d"             # lower is better
    assert by["lsgan3d"]["psnr_winner"] == "sbldm" and by["lsgan3d"]["ssim_winner"] == "tie"


@pytest.mark.slow
def test_the_command_trains_scores_and_rewrites_its_table_from_the_kept_rows(tmp_path, capsys):
    """``python -m sbldm.experiments.generator_budget`` end to end on a tiny run: it trains
    the points asked for, scores them, and ``--table-only`` rewrites the same table from the
    kept rows without drawing again (its table step once crashed on a shadowed name)."""
    import shutil

    from sbldm.experiments import generator_budget as gb
    from sbldm.runs import run_name
    from sbldm.tables import read_csv

    overrides = {**BASELINES, "eval_batch_size": 2, "seg_iterations": 2}
    run = run_name("smoke", overrides=overrides)
    (tmp_path / "work" / run).mkdir(parents=True)
    shutil.move(make_prepared(tmp_path / "cohort"), tmp_path / "work" / run / "data")
    argv = ["--scale", "smoke", "--overrides", json.dumps(overrides), "--work-root", str(tmp_path / "work"),
            "--results-root", str(tmp_path / "results"), "--vae-steps", "2", "--n", "3",
            "--sbldm", "2", "4", "--ldm3d", "3", "--lsgan3d", "2"]
    gb.main(argv)
    out = tmp_path / "results" / run / "tables"
    table = read_csv(out / "generator_budget.csv")
    assert [(r["generator"], r["steps"]) for r in table[1:]] == [
        (gb.CEILING, "2"), ("sbldm", "2"), ("sbldm", "4"), ("ldm3d", "3"), ("lsgan3d", "2")]
    assert table[0]["generator"] == "real"
    assert all(float(r["cpu_hours"]) > 0 for r in table[1:])
    assert all(0 <= float(r["synthetic_only_dice_WT"]) <= 1 for r in table[2:])     # each point's utility
    root = tmp_path / "work" / run / "generator_budget"
    kept = {p: p.stat().st_mtime_ns for p in (root / "rows").glob("*.json")}
    assert len(kept) == 1 + 4 + 4                      # the ceiling, and each point's row and utility row
    before = (out / "generator_budget.csv").read_text()
    (out / "generator_budget.csv").unlink()
    gb.main(argv + ["--table-only"])
    assert (out / "generator_budget.csv").read_text() == before
    assert {p: p.stat().st_mtime_ns for p in (root / "rows").glob("*.json")} == kept      # nothing drawn again
    assert (tmp_path / "results" / run / "figures" / "generator_budget.png").is_file()
    # a run whose cohort was never prepared: the command says which notebook to run first
    with pytest.raises(SystemExit):
        gb.main(["--scale", "smoke", "--work-root", str(tmp_path / "nowhere")])
    assert "run notebook 00 for this run first" in capsys.readouterr().err


def test_the_lsgan_points_record_the_kept_step_and_keep_the_last_generator_beside_it(cohort, tmp_path):
    """With checkpoint selection on, each 3D-LSGAN point records which step selection kept,
    and ``lsgan3d-last`` keeps the generator training reached at that step (the run's
    checkpoint), scored like any point."""
    import torch

    from sbldm.experiments import generator_budget as gb
    from sbldm.generators.lsgan3d import last_generator, selected_step
    from sbldm.generators.registry import load_generator
    from sbldm.training.trainer import CHECKPOINT

    train, test = cohort
    c = cfg(lsgan_select_every=1, lsgan_select_samples=2)
    run = gb.LSGANRun(c, train, tmp_path / "work", progress=False)
    for steps in (2, 4):
        run.train_to(steps)
        ckpt = torch.load(run.root / "run" / CHECKPOINT, map_location="cpu", weights_only=False)
        last = load_generator(gb.point_dir(tmp_path / "work", gb.LSGAN_LAST, steps)).generator.state_dict()
        assert ckpt["step"] == steps
        assert all(torch.equal(last[k], ckpt["model"][f"generator.{k}"]) for k in last)     # the step's own weights
        kept = gb.read_budget(gb.point_dir(tmp_path / "work", "lsgan3d", steps))["selected_step"]
        assert kept == selected_step(run.root / "run", steps) and 1 <= kept <= steps
    rows = [json.loads(line) for line in (run.root / "run" / "selection.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    best = min(rows, key=lambda r: (r["rank"], r["step"]))
    assert selected_step(run.root / "run") == best["step"]
    assert last_generator(run.root / "run")[0] == 4
    assert gb.trained_generators(tmp_path / "work") == ["lsgan3d", gb.LSGAN_LAST]
    assert gb.kind_of(gb.LSGAN_LAST) == "lsgan3d" and gb.display_name(gb.LSGAN_LAST).startswith("3D-LSGAN")
    from sbldm.evaluation.budget import reference

    seg = gb.eval_segmenter(c.replace(seg_iterations=2), train, tmp_path / "seg.pt")
    row = gb.score_point(c, tmp_path / "work", gb.LSGAN_LAST, 4, reference(train, test, seg.features), n=3,
                         progress=False)
    assert row["generator"] == gb.LSGAN_LAST and row["selected_step"] == 4 and row["n"] == 3
