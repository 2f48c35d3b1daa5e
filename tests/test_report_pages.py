"""The generated pages: the README's claims block, results/<scale>/README.md and the
efficiency block of docs/benchmarks.md are written from the results, and the check fails
whenever one of them and the results disagree."""

import json
from pathlib import Path

from claims_helpers import write_cases
from claims_helpers import write_csv as _write_csv
from sbldm import paper
from sbldm.report import readme as gen


def _t1(method, psnr, ssim, params_m, time_s, n=100):
    return {"method": method, "psnr": psnr, "psnr_std": 0.1, "ssim": ssim, "ssim_std": 0.01, "n_samples": n,
            "params_M": params_m, "time_s_per_volume": time_s, "device": "CPU (test)"}


def _t2(row, dice, p="nan", seeds=3):
    return {"row": row, "seeds": seeds, "dice_mean": dice, "dice_WT_mean": dice, "p_holm": p, "p_holm_WT": p}


def _results(d: Path) -> Path:
    """A results/<scale> folder with the four tables the claims read, a run record and one
    Markdown table for the results page."""
    tables = d / "tables"
    _write_csv(tables / "table1.csv", [_t1("3D-LSGAN", 17.0, 0.40, 1.5, 0.01), _t1("3D-LDM", 18.0, 0.60, 1.7, 1.2),
                                       _t1("SBLDM (DDPM)", 18.5, 0.65, 5.0, 200.0, n=2),
                                       _t1("SBLDM (DDIM)", 18.4, 0.55, 5.0, 0.9)])
    _write_csv(tables / "table2.csv", [
        _t2("real", 0.60), _t2("real + augmentation (x5)", 0.70, 0.01), _t2("synthetic only: 3D-LSGAN", 0.10, 1e-9),
        _t2("synthetic only: 3D-LDM", 0.40, 1e-9), _t2("synthetic only: SBLDM", 0.50, 1e-5),
        _t2("real + 3D-LSGAN", 0.58, 0.5), _t2("real + 3D-LDM", 0.66, 0.03), _t2("real + SBLDM", 0.65, 0.2),
        _t2("real + SBLDM + augmentation", 0.72, 0.001)])
    write_cases(tables)
    _write_csv(tables / "table2_nnunet_check.csv", [_t2("real", 0.70, seeds=1), _t2("real + SBLDM", 0.60, 1e-6, 1)])
    sweep = [{"n_real": n, "training_set": ts, "dice_WT": wt, "p_holm_WT": p, "dice_TC": tc, "p_holm_TC": q}
             for n, ts, wt, p, tc, q in ((10, "real", 0.50, "nan", 0.20, "nan"),
                                         (10, "real + SBLDM", 0.55, 0.001, 0.19, 0.6),
                                         (100, "real", 0.60, "nan", 0.40, "nan"),
                                         (100, "real + SBLDM", 0.65, 0.2, 0.41, 0.3))]
    _write_csv(tables / "scarce_sweep.csv", sweep)
    (tables / "table1.md").write_text("### Table 1 (test)\n\n| a |\n|---|\n| 1 |\n")
    (d / "run.json").write_text(json.dumps({"notebooks": {
        "04_evaluate_generation": {"status": "ok", "device": "CPU (test)", "wall_time_s": 60.0}}}))
    return d


def test_the_claims_block_shows_the_claims_table_with_its_verdicts(tmp_path):
    from sbldm.report.claims import claims

    d = _results(tmp_path / "results" / "small")
    block = gen.claims_section(d, "small", link_root=tmp_path)
    lines = [line for line in block.splitlines() if line.startswith("| ") and "---" not in line][1:]
    expected = claims(d)
    assert len(lines) == len(expected)
    for line, row in zip(lines, expected):
        cells = [c.strip() for c in line.strip("| ").split(" | ")]
        assert cells[0] == row["claim"] and cells[4] == row["verdict"] and cells[5] == row["why"]
    by = {r["claim"]: r for r in expected}
    assert by["SBLDM has a higher PSNR than the 3D-LDM and the 3D-LSGAN (Table 1)"]["verdict"] == "reproduced"
    # Table 2's claims come from the per-case table, paired by seed (claims_helpers.OFFSETS)
    assert by["real + SBLDM beats real only (Table 2)"]["verdict"] == "reproduced"
    assert by["augmentation (x5) beats real only (Table 2)"]["verdict"] == "no detectable effect"
    # the paper's numbers come from sbldm.paper
    assert f"{paper.TABLE2['real + SBLDM'][0]:.3f} vs {paper.TABLE2['real'][0]:.3f}" in \
        by["real + SBLDM beats real only (Table 2)"]["paper"]
    # provenance, the rule, the verdict counts and the links
    assert "hardware: CPU (test)" in block and "the training run as the unit" in block
    assert "Verdicts: " in block and "](results/small/tables/claims.md)" in block
    assert "](results/small/README.md)" in block


def test_the_claims_block_says_what_is_not_tested_and_why(tmp_path):
    d = tmp_path / "results" / "small"
    d.mkdir(parents=True)
    block = gen.claims_section(d, "small", link_root=tmp_path)
    verdicts = [line.strip("| ").split(" | ")[4] for line in block.splitlines()
                if line.startswith("| ") and "---" not in line][1:]
    assert verdicts and set(verdicts) == {"not tested"}          # nothing decided without a table
    assert "Table 1 (notebook 04) not produced yet" in block


def _repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    _results(root / "results" / "small")
    (root / "README.md").write_text("# x\n\n<!-- claims:small:start -->\n<!-- claims:small:end -->\n\nend\n")
    (root / "docs").mkdir()
    (root / "docs" / "benchmarks.md").write_text("# cost\n\n<!-- bench:paper_cpu:start -->\n"
                                                 "<!-- bench:paper_cpu:end -->\n")
    return root


def test_the_check_fails_whenever_a_generated_page_and_the_results_disagree(tmp_path, capsys):
    root = _repo(tmp_path)
    args = ["--scale", "small", "--readme", str(root / "README.md")]
    page = root / "results" / "small" / "README.md"
    assert gen.main(args + ["--check"]) == 1                     # nothing generated yet
    assert gen.main(args) == 0 and gen.main(args + ["--check"]) == 0
    assert "**Table 1 (test)**" in page.read_text() and "](../../README.md)" in page.read_text()
    assert "<!-- claims:small:start -->\n_Generated" in (root / "README.md").read_text()
    assert "Not measured here yet" in (root / "docs" / "benchmarks.md").read_text()
    generated = page.read_text()

    # results newer than the page: a table changed, the page not regenerated
    (root / "results" / "small" / "tables" / "table1.md").write_text("### Table 1 (test)\n\n| a |\n|---|\n| 2 |\n")
    assert gen.main(args + ["--check"]) == 1 and "results/small/README.md" in capsys.readouterr().err
    assert gen.main(args) == 0 and gen.main(args + ["--check"]) == 0 and "| 2 |" in page.read_text()
    # the page edited by hand, the results unchanged
    page.write_text(page.read_text().replace("| 2 |", "| 3 |"))
    assert gen.main(args + ["--check"]) == 1
    assert gen.main(args) == 0 and "| 3 |" not in page.read_text()
    # the page missing
    page.unlink()
    assert gen.main(args + ["--check"]) == 1
    assert gen.main(args) == 0 and page.read_text() != generated

    # the README's claims: a table the claims read changed, or the block edited by hand
    t1 = root / "results" / "small" / "tables" / "table1.csv"
    t1.write_text(t1.read_text().replace("SBLDM (DDIM),18.4", "SBLDM (DDIM),17.4", 1))
    assert gen.main(args + ["--check"]) == 1
    err = capsys.readouterr().err
    assert "claims block" in err and "claims.csv" in err
    assert gen.main(args) == 0 and gen.main(args + ["--check"]) == 0
    readme = root / "README.md"
    readme.write_text(readme.read_text().replace("| refuted", "| reproduced", 1))
    assert gen.main(args + ["--check"]) == 1
    assert gen.main(args) == 0 and readme.read_text().endswith("\n\nend\n")

    # the efficiency block of docs/benchmarks.md
    bench = root / "docs" / "benchmarks.md"
    bench.write_text(bench.read_text().replace("Not measured", "Measured"))
    assert gen.main(args + ["--check"]) == 1 and "efficiency block" in capsys.readouterr().err
    assert gen.main(args) == 0 and gen.main(args + ["--check"]) == 0

    # a page without its markers is an error, not a pass
    bench.write_text("# cost\n")
    assert gen.main(args + ["--check"]) == 1 and "bench:paper_cpu:start" in capsys.readouterr().err
    readme.write_text("# x\n")
    bench.write_text("<!-- bench:paper_cpu:start -->\n<!-- bench:paper_cpu:end -->\n")
    assert gen.main(args) == 1 and "claims:small:start" in capsys.readouterr().err


def test_the_results_page_links_its_figures_from_where_it_lies(tmp_path):
    d = _results(tmp_path / "results" / "small")
    (d / "figures").mkdir()
    (d / "figures" / "figure2_axial.png").write_bytes(b"png")
    page = gen.results_page(d, "small", readme=tmp_path / "README.md")
    assert page.startswith("# Results at `small`\n") and "](figures/figure2_axial.png)" in page
    assert "](results/small/figures" not in page and "## Table 1 — generation quality" in page
    assert "from this folder" in page
    # the same block on a page at the repository root keeps its links from there
    assert "](results/small/figures/figure2_axial.png)" in gen.results_section(d, "small", link_root=tmp_path)


def test_every_table_and_figure_a_notebook_wrote_is_on_the_results_page(tmp_path):
    """A table or figure the page does not name is still shown (under its own title, or a
    known caption, else its file name); per-case rows are linked, not shown; a conditional
    table (an nnU-Net check the data did not call for) is never 'missing'."""
    d = _results(tmp_path / "results" / "small")
    t, f = d / "tables", d / "figures"
    f.mkdir()
    (t / "brand_new.md").write_text("### A table nobody listed (small)\n\n| x |\n|---|\n| 7 |\n")
    (t / "untitled.md").write_text("| y |\n|---|\n| 8 |\n")
    (t / "four_sequences_cases.md").write_text("### per case\n\n| z |\n|---|\n| 9 |\n")
    for name in ("vae_loss.png", "something_else.png", "synthetic_count_sweep.png"):
        (f / name).write_bytes(b"png")
    page = gen.results_page(d, "small")
    assert "## A table nobody listed (small)\n\n| x |\n|---|\n| 7 |" in page
    assert "## `untitled`\n\n| y |" in page
    assert "| z |" not in page and "[`four_sequences_cases`](tables/four_sequences_cases.csv)" in page
    assert "**Slice VAE training loss (notebook 01)**" in page
    assert "![`something_else.png`](figures/something_else.png)" in page
    assert "the paper's plateau)**" in page
    missing = page.split("Not produced yet at `small`: ")[1]
    assert "`tables/four_sequences_table2.md`" in missing and "`figures/four_sequences_examples.png`" in missing
    for conditional in ("nnunet_check", "scarce_leakfree", "synthetic_count_sweep", "four_sequences_appearance"):
        assert conditional not in missing, conditional


def test_the_results_page_gives_the_cost_from_scratch_once_it_is_measured(tmp_path):
    from sbldm.tables import write_table

    d = _results(tmp_path / "results" / "small")
    page = gen.results_page(d, "small", readme=tmp_path / "README.md")
    assert "1 min of wall time in their last sittings;" in page and "from scratch" not in page
    write_table([{"notebook": "06 segmentation study", "kind": "total", "what": "", "runs": "", "hours": 5.0},
                 {"notebook": "all of the above", "kind": "total", "what": "", "runs": "", "hours": 12.34}],
                d / "tables" / "compute_cost")
    page = gen.results_page(d, "small", readme=tmp_path / "README.md")
    assert "in their last sittings (12.3 h from scratch" in page and "](tables/compute_cost.md)" in page
    assert "## What each notebook cost to compute" in page


def test_the_claims_block_says_who_wins_table1_at_matched_compute_and_where_sbldm_misses_its_targets(tmp_path):
    from sbldm.evaluation.budget import matched_table1, target_report
    from sbldm.tables import write_table

    d = _results(tmp_path / "results" / "small")
    assert "matched training compute" not in gen.claims_section(d, "small", link_root=tmp_path)
    rows = [{"generator": "sbldm", "steps": s, "cpu_hours": h, "psnr": p, "ssim": 0.6, "seconds_per_volume": 2.0,
             "frechet_ratio": f, "interior_w_over_spread": 0.4, "multi_piece_26_gap": 0.3, "dark_part_share_gap": 0.1,
             "smallest_empty": 0}
            for s, h, p, f in ((900, 0.5, 17.0, 8.0), (1800, 0.7, 18.0, 4.0), (3600, 1.0, 18.5, 2.0))]
    rows.append({"generator": "ldm3d", "steps": 1500, "cpu_hours": 0.9, "psnr": 19.0, "ssim": 0.5,
                 "seconds_per_volume": 1.0})
    write_table(matched_table1(rows), d / "tables" / "generator_budget_table1")
    write_table(target_report(rows), d / "tables" / "generator_budget_targets")
    block = gen.claims_section(d, "small", link_root=tmp_path)
    matched = next(line for line in block.splitlines() if line.startswith("Table 1 at matched training compute"))
    assert "the 3D-LDM at 1500 steps (0.90 h) against SBLDM at 3600 steps (1.00 h)" in matched
    assert "not matched yet" not in matched and "the real test split itself" not in matched   # no budget table
    assert "PSNR: the 3D-LDM, SSIM: SBLDM, time per volume: the 3D-LDM" in matched
    targets = next(line for line in block.splitlines() if line.startswith("SBLDM: targets"))
    assert "(1.00 training hours" in targets
    assert "met: dark_part_share_gap, interior_w_over_spread, smallest_empty;" in targets
    # the Fréchet ratio halves per doubling: the line meets 1.5 within one more doubling
    assert "frechet_ratio 2 (target 1.5; the curve reaches it near" in targets
    # the pieces gap is flat: out of reach of budget alone
    assert "multi_piece_26_gap 0.3 (target 0.05; the curve does not fall steadily towards it" in targets
    # an arm measured at one budget has no curve to read
    write_table([{"generator": "sbldm-vae5000", **t} for t in target_report(rows[2:3] and [
        {**rows[2], "generator": "sbldm-vae5000"}], "sbldm-vae5000")], d / "tables" / "generator_budget_targets")
    block = gen.claims_section(d, "small", link_root=tmp_path)
    arm = next(line for line in block.splitlines() if line.startswith("SBLDM on the slice VAE at 5000 steps"))
    assert "frechet_ratio 2 (target 1.5; one budget measured, no curve yet)" in arm


def test_the_training_counts_are_generated_from_the_presets(tmp_path):
    from sbldm.config import resolve
    from sbldm.experiments.scarce_regime import training_counts

    # paper: 10 Table 2 rows x 3 seeds; 4 sizes x 3 sweep rows x 3 seeds; 2 protocol sizes x
    # (ratio, filtered) x 3 seeds; 3 leak-free rows x 3 seeds; the counts not trained already (200 and 400:
    # 0, 50 and 100 are the real, ratio and mixing rows) x 2 sizes x 3 seeds, all on nnU-Net; pre-training
    # then fine-tuning on the fast one
    c = training_counts(resolve("paper"))
    assert (c["table2"], c["sweep"], c["protocols"], c["pretrain_finetune"]) == (30, 36, 12, 6)
    assert (c["leakfree"], c["count_sweep"], c["learning_curves"]) == (9, 12, 0)
    assert c["nnunet"] == 30 + 36 + 12 + 9 + 12 and c["fast"] == 6
    # the first look asks for the whole split only: no leak-free rows, the count sweep at one size
    look = training_counts(resolve("paper", **gen.FIRST_LOOK))
    assert look["nnunet"] == 10 + 3 + 2 + 0 + 2 and look["fast"] == 1 and look["sizes"] == [100]
    # small: the fast backend leads; nnU-Net confirms 2 rows x 3 seeds in each notebook; 1 + 2 learning curves
    small = training_counts(resolve("small"))
    assert small["nnunet"] == 2 * 2 * 3
    assert small["sizes"] == [10, 100] and small["fast"] == 100 + 60 + 40 + 20 + 30 + 40 + 3
    page = tmp_path / "paper_scale.md"
    page.write_text("x\n" + "\n".join(gen.COUNT_MARKERS) + "\ny\n")
    assert not gen.update_counts(page, check=True)
    assert gen.update_counts(page) and gen.update_counts(page, check=True)
    assert "train at most 99 nnU-Nets" in page.read_text() and page.read_text().endswith("\ny\n")
    assert gen.update_counts(tmp_path / "nothing.md" if (tmp_path / "nothing.md").write_text("no markers") else page)


def test_the_claims_block_states_the_decoders_ceiling(tmp_path):
    from sbldm.tables import write_table

    d = _results(tmp_path / "results" / "small")
    row = {"generator": "vae_reconstruction", "steps": 1500, "multi_piece_26": 0.2, "multi_piece_26_real": 0.48,
           "dark_part_share": 0.0, "dark_part_share_real": 0.09, "interior_w_over_spread": 0.61,
           "laplacian_ratio": 0.39}
    write_table([{**row, "generator": "real"}, row, {**row, "steps": 5000, "multi_piece_26": 0.4}],
                d / "tables" / "generator_budget")
    block = gen.claims_section(d, "small", link_root=tmp_path)
    line = next(x for x in block.splitlines() if x.startswith("The slice VAE's own reconstructions"))
    assert "at 1500 VAE steps: in more than one piece 20% (real 48%), with a dark part 0% (real 9%), worst " \
           "interior Wasserstein/spread 0.61, normal-brain |Laplacian| 0.39 of real; at 5000 VAE steps: in more " \
           "than one piece 40%" in line
