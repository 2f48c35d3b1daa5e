"""The compute-cost table: every kept time found, attributed to the notebook that made it,
summed by hand here."""

import json

import numpy as np
import pytest

from sbldm.evaluation.sample_cache import cached_samples
from sbldm.report import cost
from sbldm.tables import read_csv, write_table


def _log(run_dir, seconds):
    run_dir.mkdir(parents=True)
    lines = [{"step": 50 * (k + 1), "loss": 1.0, "time_s": t} for k, t in enumerate(seconds)]
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def _samples(path, n, batch, monkeypatch, per_volume):
    """A sample set written by the project's own cache, with a clock that ticks
    ``per_volume`` seconds per volume drawn."""
    clock = {"t": 0.0}
    monkeypatch.setattr("sbldm.evaluation.sample_cache.time.perf_counter", lambda: clock["t"])

    def fn(b, s):
        clock["t"] += per_volume * b
        return np.zeros((b, 4, 4, 2), np.float32), np.zeros((b, 4, 4, 2), np.uint8)

    cached_samples(path, fn, n, 0, batch, progress=False)


def _cases(stem, trainings, **extra):
    rows = [{"row": row, "seed": seed, "case_id": f"c{k}", "seconds": secs, **extra}
            for row, seed, secs in trainings for k in range(3)]          # 3 test cases per training
    write_table(rows, stem)


def test_every_kept_time_is_found_attributed_and_summed(tmp_path, monkeypatch):
    work, results = tmp_path / "work", tmp_path / "results"
    (results / "tables").mkdir(parents=True)
    _log(work / "vae", [100.0, 3600.0])                                  # the last record: wall time, resumes included
    _log(work / "scarce" / "n10" / "diffusion", [1800.0])
    _log(work / "scarce" / "leakfree" / "vae10" / "diffusion", [900.0])
    _log(work / "generator_budget" / "sbldm" / "unet", [720.0])        # runs nested at any depth below the folder
    _log(work / "generator_budget" / "ldm3d" / "run" / "autoencoder", [180.0])
    (work / "diffusion").mkdir()                                         # a run without its log: not counted
    _samples(work / "samples" / "sbldm_ddim.npz", 10, 4, monkeypatch, 2.0)             # Table 1 (04): 20 s
    _samples(work / "samples" / "sbldm_ddim_draw1_bf16.npz", 10, 4, monkeypatch, 1.0)  # 06: 10 s
    _samples(work / "samples" / "sbldm_ddim_n40_bf16.npz", 40, 10, monkeypatch, 0.5)   # 11's pool: 20 s
    _samples(work / "scarce" / "n10" / "samples" / "sbldm_ddim.npz", 10, 5, monkeypatch, 3.0)  # 10: 30 s
    _samples(work / "scarce" / "n10" / "samples" / "sbldm_ddim_draw2_bf16.npz", 10, 5, monkeypatch, 1.5)  # 11: 15 s
    _cases(results / "tables" / "table2_cases", [("real", 0, 80.0), ("real + SBLDM", 0, 90.0), ("real", 1, 70.0)],
           backend="fast")
    _cases(results / "tables" / "scarce_cases", [("real", 0, 80.0), ("real", 0, 40.0)], backend="fast")
    rows = read_csv(results / "tables" / "scarce_cases.csv")
    for r in rows[3:]:                                                   # the second: another size
        r["n_real"] = 10
    for r in rows[:3]:
        r["n_real"] = 100
    write_table(rows, results / "tables" / "scarce_cases")
    check = work / "nnunet_check" / "segmentation" / "cases"
    check.mkdir(parents=True)
    for k, secs in enumerate((1500.0, 1700.0)):
        (check / f"{k}.json").write_text(json.dumps({"row": "real", "seed": k, "seconds": secs, "rows": []}))
    (work / "segmentation").mkdir()
    (work / "segmentation" / "learning_curve.json").write_text(json.dumps({"key": "k", "result": {"seconds": 60.0}}))
    (work / "segmentation" / "learning_curve_n10.json").write_text(
        json.dumps({"key": "k", "result": {"seconds": 30.0}}))

    table = cost.compute_cost(work, results)
    got = {(r["notebook"][:2], r["kind"], r["what"]): (r["runs"], r["hours"]) for r in table}
    h = 1 / 3600
    assert got[("01", "training", "slice VAE")] == (1, pytest.approx(1.0))
    assert ("02", "total", "") not in got                                 # nothing measured, no row
    assert got[("ge", "training", "generators along their budget curves")] == (2, pytest.approx(0.25))
    assert got[("04", "sampling", "Table 1 sample sets")] == (1, pytest.approx(20 * h))
    assert got[("06", "sampling", "each training seed's synthetic draw")] == (1, pytest.approx(10 * h))
    assert got[("06", "segmentation", "segmenter trainings (fast backend)")] == (3, pytest.approx(240 * h))
    assert got[("06", "segmentation", "nnU-Net confirmation trainings")] == (2, pytest.approx(3200 * h))
    assert got[("06", "segmentation", "learning curves choosing the budget")] == (1, pytest.approx(60 * h))
    assert got[("06", "total", "")][1] == pytest.approx((10 + 240 + 3200 + 60) * h)
    assert got[("10", "training", "latent UNets of the smaller real sets")] == (1, pytest.approx(0.5))
    assert got[("10", "training", "leak-free latent UNets")] == (1, pytest.approx(0.25))
    assert got[("10", "sampling", "Table 1 sets of the smaller real sets' generators")] == (1, pytest.approx(30 * h))
    assert got[("11", "sampling", "synthetic-count pools")] == (1, pytest.approx(20 * h))
    assert got[("11", "sampling", "each training seed's draw of the smaller sets' generators")] == (
        1, pytest.approx(15 * h))
    assert got[("11", "segmentation", "segmenter trainings (fast backend)")] == (2, pytest.approx(120 * h))
    assert got[("11", "segmentation", "learning curves choosing the budget")] == (1, pytest.approx(30 * h))
    # 11's real at 100 is 06's kept result read back (the same 80 s): in both totals, once overall
    totals = sum(r["hours"] for r in table if r["kind"] == "total" and r["notebook"] != "all of the above")
    assert table[-1]["notebook"] == "all of the above" and table[-1]["hours"] == pytest.approx(totals - 80 * h)
    assert cost.hours_of(table, "06", "10", "11") == pytest.approx(
        got[("06", "total", "")][1] + got[("10", "total", "")][1] + got[("11", "total", "")][1])

    written = cost.write_cost(work, results, "small")
    assert read_csv(results / "tables" / "compute_cost.csv")[0]["notebook"] == written[0]["notebook"]
    md = (results / "tables" / "compute_cost.md").read_text()
    assert "notebooks 06 + 10 + 11:" in md and "notebook 12" not in md                # 12 measured nothing here


def test_nothing_kept_is_an_empty_table_and_a_broken_sample_set_is_skipped(tmp_path):
    assert cost.compute_cost(tmp_path / "work", tmp_path / "results") == []
    (tmp_path / "work" / "samples").mkdir(parents=True)
    (tmp_path / "work" / "samples" / "sbldm_ddim.npz").write_bytes(b"not a zip")
    assert np.isnan(cost.sample_seconds(tmp_path / "work" / "samples" / "sbldm_ddim.npz"))
    assert cost.compute_cost(tmp_path / "work", tmp_path / "results") == []


def test_work_lost_since_the_last_table_keeps_its_hours_and_work_measured_again_replaces_them(tmp_path):
    """A fresh machine that went on from the committed results has none of the earlier
    work: the table keeps what it cost (marked), and a part measured again is the new
    measurement, not both."""
    work, results = tmp_path / "work", tmp_path / "results"
    (results / "tables").mkdir(parents=True)
    _log(work / "vae", [3600.0])
    _log(work / "diffusion", [1800.0])
    _log(work / "scarce" / "n10" / "diffusion", [900.0])
    first = cost.write_cost(work, results, "small")
    assert first[-1]["hours"] == pytest.approx(1.75)
    import shutil

    shutil.rmtree(work)                                                  # the machine lost work/
    _log(work / "scarce" / "n10" / "diffusion", [720.0])                 # notebook 10 redone here
    again = cost.write_cost(work, results, "small")
    got = {(r["notebook"][:2], r["kind"], r["what"]): float(r["hours"]) for r in again}
    assert got[("01", "training", "slice VAE" + cost.CARRIED)] == pytest.approx(1.0)
    assert got[("02", "training", "latent UNet" + cost.CARRIED)] == pytest.approx(0.5)
    assert got[("10", "training", "latent UNets of the smaller real sets")] == pytest.approx(0.2)
    assert not any(k[0] == "10" and k[2].endswith(cost.CARRIED) for k in got)     # replaced, not both
    assert again[-1]["hours"] == pytest.approx(1.7)
    # a part measured again on fewer runs than the earlier table counted keeps the earlier row, once
    (work / "ablation" / "a").mkdir(parents=True)
    _log(work / "ablation" / "b", [360.0])
    _log(work / "ablation" / "c", [360.0])
    cost.write_cost(work, results, "small")
    shutil.rmtree(work / "ablation" / "c")
    fewer = cost.write_cost(work, results, "small")
    mine = [r for r in fewer if r["notebook"].startswith("07") and r["kind"] != "total"]
    assert [(r["what"], r["runs"], r["hours"]) for r in mine] == [("ablation latent UNets" + cost.CARRIED, 2,
                                                                    pytest.approx(0.2))]
    assert fewer[-1]["hours"] == pytest.approx(1.9)
    # carried twice (read back from the table that already marks it): marked once, same hours
    shutil.rmtree(work)
    third = cost.write_cost(work, results, "small")
    whats = [r["what"] for r in third if r["kind"] != "total"]
    assert "slice VAE" + cost.CARRIED in whats and all(w.count(cost.CARRIED) == 1 for w in whats)
    assert third[-1]["hours"] == pytest.approx(1.9)


def test_a_segmentation_part_the_earlier_row_stands_in_for_takes_no_shared_training_off_the_total(tmp_path):
    """11's kept results read back one of 06's trainings; when 11's part is the earlier table's
    (more runs than measured here), the shared seconds are not in the table twice, so the
    grand total subtracts nothing."""
    work, results = tmp_path / "work", tmp_path / "results"
    (results / "tables").mkdir(parents=True)
    _cases(results / "tables" / "table2_cases", [("real", 0, 360.0)], backend="fast")
    _cases(results / "tables" / "scarce_cases", [("real", 0, 360.0)], backend="fast", n_real=100)
    shared = cost.compute_cost(work, results)
    assert shared[-1]["hours"] == pytest.approx(0.1)                     # 0.1 h in both totals, once overall
    earlier = [{"notebook": cost.OWNERS["11"], "kind": "segmentation", "what": "segmenter trainings (fast backend)",
                "runs": "5", "hours": "0.5"}]
    table = cost.compute_cost(work, results, earlier=earlier)
    eleven = [r for r in table if r["notebook"].startswith("11") and r["kind"] != "total"]
    assert [(r["runs"], r["hours"]) for r in eleven] == [(5, 0.5)]
    assert table[-1]["hours"] == pytest.approx(0.1 + 0.5)
