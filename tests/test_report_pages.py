"""The generated pages: the README's claims block, results/<scale>/README.md and the
efficiency block of docs/benchmarks.md are written from the results, and the check fails
whenever one of them and the results disagree."""

import csv
import json
from pathlib import Path

from sbldm import paper
from sbldm.report import readme as gen


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


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


def test_the_claims_block_decides_every_claim_from_the_tables(tmp_path):
    d = _results(tmp_path / "results" / "small")
    block = gen.claims_section(d, "small", link_root=tmp_path)
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in block.splitlines()
            if line.startswith("| ") and "---" not in line}
    holds = {claim: cells[-1].rstrip(" |") for claim, cells in rows.items()}
    assert holds["SBLDM's PSNR is above the 3D-LDM's and the 3D-LSGAN's (Table 1)"] == "yes"
    assert holds["SBLDM's SSIM is above the 3D-LDM's and the 3D-LSGAN's (Table 1)"] == "DDPM only"
    assert holds["SBLDM (DDIM) samples a volume faster than the 3D-LDM (Table 1)"] == "yes"
    assert holds["SBLDM has fewer parameters than the 3D-LDM (Table 1)"] == "no"
    # against real only the paired test decides; elsewhere the means, marked untested
    assert holds["real + SBLDM beats real only (Table 2)"] == "not significant (Holm p 0.2)"
    assert holds["real + SBLDM beats real only, with nnU-Net as in the paper (1 seed)"] == "no: lower (Holm p 1e-06)"
    assert holds["real + SBLDM beats real + the 3D-LDM and real + the 3D-LSGAN (Table 2)"] == "no (untested)"
    assert holds["synthetic-only SBLDM beats synthetic-only 3D-LDM and 3D-LSGAN (Table 2)"] == "yes (untested)"
    assert holds["real + SBLDM + augmentation is the best training set (Table 2)"] == "yes (untested)"
    scarce = next(c for c in holds if c.startswith("the title"))
    assert "(10 real volumes, the fewest here)" in scarce
    assert holds[scarce] == "WT yes (Holm p 0.001); TC no (Holm p 0.6)"
    # the paper's numbers come from sbldm.paper, ours from the tables, with the sample count where it is small
    psnr = rows["SBLDM's PSNR is above the 3D-LDM's and the 3D-LSGAN's (Table 1)"]
    assert f"DDIM {paper.TABLE1['SBLDM (DDIM)'][0]:.2f}" in psnr[2] and "DDPM 18.50 (2 volumes)" in psnr[3]
    assert f"{paper.TABLE2['real + SBLDM'][0]:.3f} vs {paper.TABLE2['real'][0]:.3f}" in \
        rows["real + SBLDM beats real only (Table 2)"][2]
    # provenance, the caveat on seed comparisons and the link to the results page
    assert "hardware: CPU (test)" in block and "training run" in block
    assert "](results/small/README.md)" in block


def test_the_claims_block_says_what_is_not_produced_yet(tmp_path):
    d = tmp_path / "results" / "small"
    d.mkdir(parents=True)
    block = gen.claims_section(d, "small", link_root=tmp_path)
    assert "Table 1 not produced yet" in block and block.count("not produced yet") >= 6
    verdicts = [line.rstrip(" |").rsplit(" | ", 1)[-1] for line in block.splitlines()
                if line.startswith("| ") and "---" not in line][1:]
    assert verdicts and set(verdicts) == {"—"}                  # nothing decided without a table


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
    t2 = root / "results" / "small" / "tables" / "table2.csv"
    t2.write_text(t2.read_text().replace("real + SBLDM,3,0.65,0.65,", "real + SBLDM,3,0.75,0.75,", 1))
    assert gen.main(args + ["--check"]) == 1 and "claims block" in capsys.readouterr().err
    assert gen.main(args) == 0 and gen.main(args + ["--check"]) == 0
    readme = root / "README.md"
    readme.write_text(readme.read_text().replace("| yes", "| no", 1))
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
    targets = next(line for line in block.splitlines() if line.startswith("SBLDM's targets"))
    assert "(1.00 training hours" in targets
    assert "met: dark_part_share_gap, interior_w_over_spread, smallest_empty;" in targets
    # the Fréchet ratio halves per doubling: the line meets 1.5 within one more doubling
    assert "frechet_ratio 2 (target 1.5; the curve reaches it near" in targets
    # the pieces gap is flat: out of reach of budget alone
    assert "multi_piece_26_gap 0.3 (target 0.05; the curve does not fall steadily towards it" in targets


def test_a_table2_with_seed_paired_verdicts_decides_the_claims_by_them(tmp_path):
    d = _results(tmp_path / "results" / "small")
    before = gen.claims_section(d, "small", link_root=tmp_path)
    assert "Wilcoxon over test cases" in before and "provisional" in before
    rows = list(csv.DictReader((d / "tables" / "table2.csv").open()))
    for r in rows:
        r.update({"verdict_WT": "", "ci95_low_WT": "nan", "ci95_high_WT": "nan"})
        if r["row"] == "real + SBLDM":       # a mean gain whose interval crosses 0: no detectable effect
            r.update({"verdict_WT": "no detectable effect", "ci95_low_WT": -0.02, "ci95_high_WT": 0.09})
    _write_csv(d / "tables" / "table2.csv", rows)
    sweep = list(csv.DictReader((d / "tables" / "scarce_sweep.csv").open()))
    for r in sweep:
        r.update({"verdict_WT": "gain" if r["training_set"] == "real + SBLDM" else "",
                  "ci95_low_WT": 0.01, "ci95_high_WT": 0.08, "verdict_TC": "", "ci95_low_TC": "", "ci95_high_TC": ""})
    _write_csv(d / "tables" / "scarce_sweep.csv", sweep)
    block = gen.claims_section(d, "small", link_root=tmp_path)
    line = next(x for x in block.splitlines() if x.startswith("| real + SBLDM beats real only (Table 2)"))
    assert line.endswith("| no detectable effect (-0.020 to +0.090 per seed, 95%) |")
    title = next(x for x in block.splitlines() if x.startswith("| the title"))
    assert "WT yes (+0.010 to +0.080 per seed, 95%)" in title
    assert "TC not significant" in title or "TC no" in title or "TC yes" in title     # no verdict: the old test
    assert "the training run is the unit" in block and "provisional" not in block
