"""The pages that quote results, generated from ``results/<scale>/`` and ``results/bench/``:
nothing in them is typed.

    python -m sbldm.report.readme --scale small            # rewrite every generated page and block
    python -m sbldm.report.readme --scale small --check    # exit 1 if any of them is out of date

It writes three things:

- ``results/<scale>/README.md``, the results page, whole: where the numbers come from
  (scale, data, hardware, run time and commit of each notebook, from ``run.json``), each
  notebook's closing summary (``summaries/``), the tables notebooks 01-11 wrote (Table 1,
  Table 2 and the metrics beyond them) and the figures (Figure 2, Figure 3 and the
  others). A table or figure that a notebook has not written yet is listed as missing,
  never filled in.
- the claims block of ``README.md``, between ``<!-- claims:<scale>:start -->`` and
  ``<!-- claims:<scale>:end -->``: one row per claim of the paper, the paper's number
  (``sbldm.paper``) beside ours (``tables/table1.csv``, ``table2.csv``,
  ``table2_nnunet_check.csv``, ``scarce_sweep.csv``) and whether the claim holds, decided here.
- the efficiency block of ``docs/benchmarks.md``, between ``<!-- bench:paper_cpu:start -->``
  and ``<!-- bench:paper_cpu:end -->``: the paper's efficiency claim beside the paper-size
  CPU benchmark (``results/bench/paper_cpu-*_fp32.json``, written by ``make bench-paper-cpu``).

``results_section`` and ``update_readme`` put the results block between
``<!-- results:<scale>:start -->`` and ``<!-- results:<scale>:end -->`` of any other page.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from sbldm.paths import REPO_ROOT
from sbldm.provenance import data_source
from sbldm.report.bench_rows import row_dtype, sampling_rows
from sbldm.report.claims import VERDICTS, claims, update_claims_table
from sbldm.report.summaries import FOLDER
from sbldm.tables import finite as _num

#: (title, table stem under tables/) in the order the results page shows them
TABLES = (
    ("The paper's claims, each with its verdict at this scale", "claims"),
    ("Table 1 — generation quality, size and speed", "table1"),
    ("Beyond Table 1 — diversity, realism, mask realism, memorisation", "generation_extra"),
    ("Conditioning adherence", "conditioning_adherence"),
    ("Conditioning ablation — the paper's route vs the tumour-channel options, one training budget",
     "conditioning_ablation"),
    ("Table 2 — segmentation with synthetic training data", "table2"),
    ("Table 2, nnU-Net confirmation of real vs real + SBLDM", "table2_nnunet_check"),
    ("Data-scarce regime — the generators, each trained on its size's real volumes only", "scarce_generators"),
    ("Data-scarce regime — the shared slice VAE trained on the smallest subset vs on all", "scarce_vae_check"),
    ("Data-scarce regime — real only vs real + the synthetic volumes of a generator that saw the same real ones",
     "scarce_sweep"),
    ("Protocols of using synthetic volumes — mixing, another ratio, filtering, pre-training", "scarce_protocols"),
    ("Data-scarce regime, nnU-Net confirmation of real vs real + SBLDM at the smallest size", "scarce_nnunet_check"),
    ("Data-scarce regime — the shared slice VAE against one that saw only the smallest subset, in Dice",
     "scarce_leakfree"),
    ("The number of synthetic volumes — the paper's plateau", "synthetic_count_sweep"),
    ("Four sequences — the slice VAE's reconstruction per sequence and its latent channels",
     "four_sequences_reconstruction"),
    ("Four sequences — inside the tumour, per sequence and sub-region", "four_sequences_appearance"),
    ("Four sequences — the enhancing tumour per sequence against the real interquartile range",
     "four_sequences_enhancing"),
    ("Four sequences — conditioning adherence", "four_sequences_adherence"),
    ("Four sequences — four-channel against FLAIR-only segmenters, with and without SBLDM",
     "four_sequences_table2"),
    ("Slice VAE reconstruction", "vae_reconstruction"),
    ("Slice VAE mask term: does the necrosis survive? (training split)", "vae_mask_ablation"),
    ("Slice VAE: a weight-free sharpening term (training split)", "vae_sharpness"),
    ("Generators: quality against training compute, one run per generator extended by resuming", "generator_budget"),
    ("Generators: SBLDM's targets at its largest budget, and where its curve heads", "generator_budget_targets"),
    ("Generators: Table 1 at matched compute", "generator_budget_table1"),
    ("Baselines: the 3D-LDM autoencoder's remedies (training split)", "baseline_ablation_autoencoder"),
    ("Baselines: the 3D-LSGAN's remedies (training split)", "baseline_ablation_lsgan"),
    ("Baselines: the trained 3D-LDM autoencoder's reconstruction check (training split)",
     "baseline_reconstruction_check"),
    ("Inside the tumours — real, through the slice VAE, and each generator's", "tumour_appearance"),
    ("Inside the tumours, per sub-region — shares, presence and median intensity against the real training "
     "tumours", "tumour_subregions"),
    ("Real tumours noised and denoised by SBLDM — where the inside of a tumour is lost", "tumour_denoising_probe"),
    ("What each notebook cost to compute, from the times kept beside its work", "compute_cost"),
)
#: tables written by commands outside the notebook chain: shown when present, never "missing"
OUTSIDE_THE_CHAIN = {"claims", "baseline_ablation_autoencoder", "baseline_ablation_lsgan", "vae_mask_ablation",
                     "vae_sharpness", "generator_budget", "generator_budget_targets", "generator_budget_table1",
                     "compute_cost"}
#: tables and figures a notebook writes only when its data or config call for them (the
#: nnU-Net confirmations run where the fast segmenter finds an effect; the four-sequence
#: interiors need sub-region labels; the leak-free rows need a size below the full split;
#: the count sweep needs `seg_count_sweep`): shown when present, never "missing"
CONDITIONAL = {"table2_nnunet_check", "scarce_nnunet_check", "four_sequences_appearance",
               "four_sequences_enhancing", "scarce_leakfree", "synthetic_count_sweep"}
#: (caption, figure file under figures/)
FIGURES = (
    ("Figure 2 — real and synthetic volumes, axial", "figure2_axial.png"),
    ("Figure 2 — coronal", "figure2_coronal.png"),
    ("Conditioning ablation", "conditioning_ablation.png"),
    ("Figure 3 — requested tumour volume sweep", "figure3_volume_sweep.png"),
    ("Tumour position sweep", "figure3_position_sweep.png"),
    ("Data-scarce regime (each size's latent UNet saw that size's real volumes only; the slice VAE is shared)",
     "scarce_sweep.png"),
    ("The number of synthetic volumes: each count's gain over real only (the paper's plateau)",
     "synthetic_count_sweep.png"),
    ("Generators of the data-scarce regime (notebook 10)", "scarce_generators.png"),
    ("Segmenter learning curve (the budget of every Table 2 row)", "seg_learning_curve.png"),
    ("Inside the tumours: intensities within the masks and examples", "tumour_appearance.png"),
    ("SBLDM samples (notebook 02)", "diffusion_samples.png"),
    ("3D-LDM samples (notebook 03)", "baselines_samples_ldm3d.png"),
    ("3D-LSGAN samples (notebook 03)", "baselines_samples_lsgan3d.png"),
    ("Steering a tumour (notebook 08): requested vs obtained", "steer_example.png"),
    ("Whole-tumour volumes of the phantom cohort", "data_tumour_volumes.png"),
    ("Generators: quality against training compute", "generator_budget.png"),
    ("Four sequences: real cases and four-sequence SBLDM samples, every sequence (notebook 12)",
     "four_sequences_examples.png"),
)


#: captions of figures shown when present and never "missing" (diagnostics, the phantom's own
#: figures, the browser check's screenshots); any other figure is shown under its file name
MORE_FIGURES = {
    "figure2_sagittal.png": "Figure 2 — sagittal",
    "data_cases.png": "The cohort: example training cases (notebook 00)",
    "data_features.png": "The cohort: tumour features, training and test split (notebook 00)",
    "data_sequences.png": "The cohort: one case's sequences (notebook 00)",
    "data_phantom_cases.png": "The phantom cohort: cases beside their intensity histograms",
    "data_phantom_sequences.png": "The phantom cohort: one case's T1, T1ce, T2 and FLAIR with the region outlines",
    "data_phantom_shapes.png": "The phantom cohort: tumour sphericity against volume",
    "vae_loss.png": "Slice VAE training loss (notebook 01)",
    "vae_reconstruction.png": "Slice VAE: a test volume and its reconstruction, slice by slice (notebook 01)",
    "diffusion_loss.png": "Latent UNet training loss (notebook 02)",
    "baselines_loss.png": "Baselines' training losses (notebook 03)",
    "baselines_lsgan_selection.png": "The 3D-LSGAN's checkpoint selection on the training split (notebook 03)",
    "browser_steer_before.png": "Notebook 08 in JupyterLab in a headless browser, before steering",
    "browser_steer_after.png": "Notebook 08 in JupyterLab in a headless browser, after steering",
}


def markers(scale: str) -> tuple[str, str]:
    return f"<!-- results:{scale}:start -->", f"<!-- results:{scale}:end -->"


def _demote(md: str) -> str:
    """A table file's own ``###`` title becomes a bold line under the page's heading."""
    lines = md.strip().splitlines()
    if lines and lines[0].startswith("#"):
        lines[0] = f"**{lines[0].lstrip('#').strip()}**"
    return "\n".join(lines)


def _from_scratch(results_dir: Path | None) -> str:
    """What the notebooks cost from scratch, resumed sittings included, when
    ``tables/compute_cost.csv`` (``python -m sbldm.report.cost``) has measured it."""
    from sbldm.tables import read_csv

    path = None if results_dir is None else Path(results_dir) / "tables" / "compute_cost.csv"
    if path is None or not path.is_file():
        return ""
    rows = read_csv(path)
    total = next((_num(r["hours"]) for r in rows if r["notebook"] == "all of the above"), None)
    return "" if total is None else (f" ({total:.1f} h from scratch, every sitting and the commands outside the chain "
                                     "included: [compute cost](tables/compute_cost.md))")


def _provenance(run: dict, source: str, scale: str, results_dir: Path | None = None) -> list[str]:
    nbs = run.get("notebooks", {})
    if not nbs:
        return [f"No notebook has run at `{scale}` yet (`results/{scale}/run.json` is missing or empty)."]
    devices = sorted({e.get("device", "?") for e in nbs.values()})
    commits = sorted({(e.get("git_commit") or "?")[:12] for e in nbs.values()})
    total = sum(float(e.get("wall_time_s", 0.0)) for e in nbs.values() if e.get("status") == "ok")
    lines = [f"Scale `{scale}`; data: {source}; hardware: {', '.join(devices)}; "
             f"{len(nbs)} notebook(s), {total / 60:.0f} min of wall time in their last sittings"
             + _from_scratch(results_dir) + f"; commit(s) {', '.join(commits)}.", "",
             "| notebook | status | wall time | torch | commit |", "|---|---|---|---|---|"]
    stale = stale_notebooks(run, results_dir)
    for name, e in sorted(nbs.items()):
        status = e.get("status", "?") + (f" — **stale**: {STALE}" if name in stale else "")
        lines.append(f"| `{name}` | {status} | {float(e.get('wall_time_s', 0.0)) / 60:.1f} min "
                     f"| {e.get('versions', {}).get('torch', '?')} | {(e.get('git_commit') or '?')[:12]} |")
    if stale:
        lines += ["", f"**Stale results**: {', '.join(f'`{n}`' for n in sorted(stale))} ran before the data "
                      "or a model they build on (notebooks 00-03, 10) was last made; their tables and figures "
                      "below come from an earlier cohort or model until "
                      f"`python -m sbldm.runner --scale {scale}` re-runs them."]
    return lines


def finished_at(entry: dict, results_dir: Path | None = None) -> str:
    """When a notebook's recorded run finished (UTC, ISO 8601): the runner's record, else
    papermill's end time in the executed copy, else '' (unknown)."""
    if entry.get("finished_at"):
        return entry["finished_at"].replace("Z", "")[:19]
    if results_dir is not None and entry.get("executed"):
        try:
            nb = json.loads((Path(results_dir) / entry["executed"]).read_text())
            return str(nb["metadata"]["papermill"]["end_time"])[:19]
        except (OSError, KeyError, ValueError):
            pass
    return ""


#: the notebooks that prepare the data or train models (later notebooks analyse them)
MAKERS = ("00", "01", "02", "03", "10")


def stale_notebooks(run: dict, results_dir: Path | None = None) -> set[str]:
    """Notebooks whose results no longer describe this run: those that finished before a
    notebook that made what they build on (``MAKERS`` numbered below them: the data, the
    slice VAE, the generators, the data-scarce generators) last finished. After the preset
    adopts a new generator and notebooks 00-03 rerun, the segmentation notebooks that have
    not rerun are stale; an analysis notebook rerun after another is not, and neither is one
    whose maker re-ran and wrote its results byte for byte again (its ``made_at``)."""
    nbs = run.get("notebooks", {})
    done = {n: finished_at(e, results_dir) for n, e in nbs.items()}
    # when what a maker makes last changed: a rerun that rewrote its results byte for byte keeps
    # its earlier time (``sbldm.runner.reproduce``: ``made_at``)
    made = {n: (e.get("made_at") or "").replace("Z", "")[:19] or done[n] for n, e in nbs.items()}
    makers = [m for m in nbs if m[:2] in MAKERS and made[m]]
    return {n for n in nbs for m in makers if m[:2] < n[:2] and done[n] < made[m]}


#: what a stale notebook's mark says
STALE = "ran before the data or a model it builds on was last made"


#: the paper's GPU: an RTX A6000 with 48 GB (the paper's experimental setup)
PAPER_GPU_GB = 48
BENCH_MARKERS = ("<!-- bench:paper_cpu:start -->", "<!-- bench:paper_cpu:end -->")
#: the benchmark networks in the order the efficiency block shows them, with their names there
BENCH_NETWORKS = (("sbldm_unet", "SBLDM latent UNet"), ("slice_vae", "SBLDM slice VAE"),
                  ("ldm3d_autoencoder", "3D-LDM autoencoder"), ("ldm3d_unet", "3D-LDM UNet"),
                  ("pixel_ddpm_unet", "pixel-space 3D DDPM UNet (SBLDM's widths)"))


def _has_block(text: str, start: str, end: str) -> bool:
    return start in text and end in text and text.index(start) < text.index(end)


def _fill_block(readme: Path, start: str, end: str, body: str, check: bool) -> bool:
    """Put ``body`` between the ``start`` and ``end`` markers of ``readme`` (which has them);
    with ``check``, only report whether it is there already. True when it is (now)."""
    from sbldm.io import atomic_write_bytes

    text = readme.read_text()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n{body}{end}{tail}"
    if new == text:
        return True
    if check:
        return False
    atomic_write_bytes(readme, new.encode())
    return True


def _link(path: Path, link_root: str | Path) -> str:
    """``path`` as a page links it: relative to ``link_root`` (the page's folder) where it
    lies inside it, ``.`` for the folder itself."""
    try:
        return Path(path).resolve().relative_to(Path(link_root).resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def paper_cpu_bench(bench_dir: str | Path) -> Path | None:
    """The paper-size CPU benchmark the efficiency block quotes: ``paper_cpu-<device>_fp32.json``
    (variants such as ``..._fp32_paper-batches.json`` are kept beside it, not quoted)."""
    found = sorted(Path(bench_dir).glob("paper_cpu-*_fp32.json"))
    return found[-1] if found else None


def _gib(mib) -> str:
    return "—" if mib is None else f"{float(mib) / 1024:.1f}"


def efficiency_section(bench_json: str | Path | None, link_root: str | Path = REPO_ROOT) -> str:
    """The efficiency block: the paper's claim, then each network's training step at paper
    size (memory and time, as ratios to the SBLDM latent UNet's) and the DDIM-50 wait per
    volume, all read from ``bench_json``."""
    claim = ("The paper's second claim is efficiency: slicing the volume and diffusing in the stacked latent "
             "needs less computation and memory than pixel-space and standard latent 3D diffusion, and it leaves "
             "a pixel-space 3D DDPM out of its comparison for its memory use and sampling time (its experiments ran "
             "on one 48 GB GPU).")
    if bench_json is None or not Path(bench_json).is_file():
        return claim + " Not measured here yet: `make bench-paper-cpu` writes `results/bench/paper_cpu-*.json`.\n"
    path = Path(bench_json)
    r = json.loads(path.read_text())
    rel = _link(path, link_root)
    rows = {t["component"]: t for t in r.get("training", []) if t.get("variant", "plain") == "plain"}
    shape = "x".join(str(v) for v in r.get("volume_shape", []))
    batch = r.get("train_batch")
    out = [f"_Generated by `python -m sbldm.report.readme` from `{rel}`; do not edit by hand._", "", claim, "",
           f"Measured at the `{r.get('scale')}` preset's size ({shape}) on {r.get('device')}, random weights, "
           f"{r.get('dtype')}; one training step (forward, backward, AdamW) of each network"
           + (f", the 3D networks at batch {batch}" if batch else "")
           + f", each in its own process allowed {r.get('memory_limit_gib')} GiB above what it had loaded. "
           "Memory is the peak resident memory above that baseline (activations, gradients, optimiser state); "
           "a network that ran out was measured at smaller edges and extrapolated linearly in the voxel count.", "",
           "| network | unit | parameters (M) | peak memory (GiB) | memory vs SBLDM | step (s) | time vs SBLDM "
           "| how |", "|---|---|---|---|---|---|---|---|"]
    for comp, name in BENCH_NETWORKS:
        t = rows.get(comp)
        if t is None:
            continue
        if t.get("step_s") is None:
            out.append(f"| {name} | — | — | — | — | — | — | did not run: {t.get('error', '?')} |")
            continue
        how = "measured" if t.get("measured") else \
            f"extrapolated from {', '.join('x'.join(map(str, s)) for s in t.get('extrapolated_from', []))}"
        out.append(f"| {name} | {t.get('unit', '')} | {float(t['params_M']):.1f} | {_gib(t.get('peak_memory_MiB'))} "
                   f"| {float(t['memory_vs_sbldm']):.2f} | {float(t['step_s']):.1f} | {float(t['time_vs_sbldm']):.2f} "
                   f"| {how} |")
    ratios = [(name, rows[c].get("memory_vs_sbldm")) for c, name in BENCH_NETWORKS
              if c in rows and c != "slice_vae" and rows[c].get("memory_vs_sbldm") is not None]
    if ratios:
        out += ["", "- Training memory of the diffusion routes, " + " : ".join(n for n, _ in ratios) + " = "
                + " : ".join(f"{float(v):.2f}" for _, v in ratios) + "."]
    if rows.get("slice_vae", {}).get("peak_memory_MiB") and rows.get("ldm3d_autoencoder", {}).get("peak_memory_MiB"):
        out += [("" if ratios else "\n") + f"- Autoencoders, 3D-LDM autoencoder ({rows['ldm3d_autoencoder'].get('unit', '')}) : slice VAE "
                f"({rows['slice_vae'].get('unit', '')}) = "
                f"{rows['ldm3d_autoencoder']['peak_memory_MiB'] / rows['slice_vae']['peak_memory_MiB']:.2f} : 1."]
    over = [name for c, name in BENCH_NETWORKS
            if (rows.get(c, {}).get("peak_memory_MiB") or 0) * 2 ** 20 / 1e9 > PAPER_GPU_GB]
    if over:
        out += [f"- Beyond the {PAPER_GPU_GB} GB of the paper's GPU in training memory alone, at this batch: "
                + ", ".join(over) + "."]
    ddim = sampling_rows(r, steps=None)
    if ddim:
        waits = "; ".join(f"{row_dtype(r, s)}{' autocast' if row_dtype(r, s) != 'fp32' else ''}: "
                          f"{float(s['total_s_per_volume']):.0f} s (denoising {float(s['denoise_s_per_volume']):.0f} s, "
                          f"slice decoding {float(s['decode_s_per_volume']):.0f} s)" for s in ddim)
        src = f" (timed in {r['sampling_from'].split(' ')[0]})" if r.get("sampling_from") else ""
        out += ["", f"A user without a GPU waits, per SBLDM volume of DDIM-{ddim[0]['steps']} at this size on "
                    f"{r.get('device')}{src}: {waits}."]
    ldm = sampling_rows(r, "3D-LDM", steps=None)
    if ldm:
        out += ["", "The 3D-LDM at the same size, for the paper's speed claim: " + "; ".join(
            f"{row_dtype(r, s)}: {float(s['total_s_per_volume']):.0f} s per volume of DDIM-{s['steps']} "
            f"(denoising {float(s['denoise_s_per_volume']):.0f} s, decoding {float(s['decode_s_per_volume']):.0f} s)"
            for s in ldm) + "."]
    return "\n".join(out).rstrip() + "\n"


def update_efficiency(readme: str | Path, bench_dir: str | Path, check: bool = False,
                      link_root: str | Path | None = None) -> bool:
    """Replace the efficiency block (when the page ``readme`` has its markers); with ``check``,
    only report whether it is up to date. Returns True when it is (now) up to date. The
    block names its source relative to ``link_root`` (default: the page's folder)."""
    readme = Path(readme)
    if not _has_block(readme.read_text(), *BENCH_MARKERS):
        return True
    body = efficiency_section(paper_cpu_bench(bench_dir), readme.parent if link_root is None else link_root)
    return _fill_block(readme, *BENCH_MARKERS, body, check)


COUNT_MARKERS = ("<!-- counts:paper:start -->", "<!-- counts:paper:end -->")
#: the README's first look at `paper`: one seed, the full real set only
FIRST_LOOK = {"seg_seeds": [0], "seg_scarce_sizes": [100]}


def counts_section() -> str:
    """How many segmenters Table 2 and the data-scarce notebook train at ``paper``, and with
    the README's first-look overrides (``FIRST_LOOK``), from
    ``sbldm.experiments.scarce_regime.training_counts``."""
    from sbldm.config import resolve
    from sbldm.experiments.scarce_regime import training_counts

    full, look = training_counts(resolve("paper")), training_counts(resolve("paper", **FIRST_LOOK))
    cfg = resolve("paper")
    epochs = cfg.seg_nnunet_epochs or 1000

    def words(c):
        sizes = ", ".join(map(str, c["sizes"]))
        return (f"{c['nnunet']} nnU-Nets of {epochs} epochs (Table 2: {c['table2']}; the data-scarce sweep at "
                f"{len(c['sizes'])} real-set size{'s' * (len(c['sizes']) > 1)} ({sizes}): {c['sweep']}; its "
                f"protocols: {c['protocols']}; the leak-free rows: {c['leakfree']}; the synthetic-count sweep beyond "
                f"the study's own sets: {c['count_sweep']}) and {c['fast']} fast segmenter{'s' * (c['fast'] != 1)} (pre-training then "
                f"fine-tuning, which needs weights carried between two runs), over {c['seeds']} training "
                f"seed{'s' * (c['seeds'] > 1)}")

    return (f"_Generated by `python -m sbldm.report.readme` from the presets._ At `paper`, notebooks 06 and 11 "
            f"train at most {words(full)}; the first look (`-p overrides='{{\"seg_seeds\": [0], "
            f"\"seg_scarce_sizes\": [100]}}'`) trains at most {words(look)}, without a spread across seeds, which "
            "the tables then say. Rows whose training data and settings coincide (the full size's real and "
            "real + SBLDM rows of both notebooks, real only beside the leak-free and zero-count rows, the count "
            "sweep's sets of up to one draw, which are the mixing and ratio rows) are trained once and read back.\n")


def update_counts(page: str | Path, check: bool = False) -> bool:
    """Replace the counts block (when ``page`` has its markers); True when it is (now) up to date."""
    page = Path(page)
    if not _has_block(page.read_text(), *COUNT_MARKERS):
        return True
    return _fill_block(page, *COUNT_MARKERS, counts_section(), check)


def _per_row(stem: str) -> bool:
    """A table of per-case or per-volume rows (the input of a summarised table): linked from
    the page, not shown whole."""
    return stem.endswith("_cases") or stem == "table1_volumes"


def results_section(results_dir: str | Path, scale: str, link_root: str | Path = REPO_ROOT,
                    heading: str = "####") -> str:
    """The generated Markdown block (without its markers) for ``results_dir`` (= results/<scale>),
    its links relative to ``link_root`` (the folder of the page that shows it) and its
    sections under ``heading``."""
    d = Path(results_dir)
    run_path = d / "run.json"
    run = json.loads(run_path.read_text()) if run_path.is_file() else {}
    rel = _link(d, link_root)
    prefix = "" if rel == "." else f"{rel}/"
    source = "this folder" if rel == "." else f"`{rel}/`"
    out = [f"_Generated by `python -m sbldm.report.readme --scale {scale}` from {source}; do not edit by hand._", ""]
    out += _provenance(run, data_source(d), scale, d)
    said = sorted((d / FOLDER).glob("*.md")) if (d / FOLDER).is_dir() else []
    if said:
        out += ["", f"{heading} What the numbers say (each notebook's closing cell, `summaries/`)", ""]
        for path in said:
            stale = f" — **stale**: {STALE}" if path.stem in stale_notebooks(run, d) else ""
            out += [f"**{path.stem}**{stale}", "", path.read_text().rstrip(), ""]
    missing = []
    for title, stem in TABLES:
        path = d / "tables" / f"{stem}.md"
        if not path.is_file():
            if stem not in OUTSIDE_THE_CHAIN | CONDITIONAL:
                missing.append(f"`tables/{stem}.md`")
            continue
        out += ["", f"{heading} {title}", "", _demote(path.read_text())]
    named = {stem for _, stem in TABLES}
    others = sorted(p for p in (d / "tables").glob("*.md") if p.stem not in named) if (d / "tables").is_dir() else []
    rows = [p for p in others if _per_row(p.stem)]
    for path in [p for p in others if not _per_row(p.stem)]:      # every table a notebook wrote is on the page
        text = path.read_text().strip()
        title, _, body = text.partition("\n")
        out += (["", f"{heading} {title.lstrip('#').strip()}", "", body.strip()] if title.startswith("#")
                else ["", f"{heading} `{path.stem}`", "", text])
    if rows:
        out += ["", "Per-case and per-volume rows behind the tables above: "
                + ", ".join(f"[`{p.stem}`]({prefix}tables/{p.stem}.csv)" for p in rows) + "."]
    figs = [(cap, name) for cap, name in FIGURES if (d / "figures" / name).is_file()]
    shown = {name for _, name in FIGURES}
    figs += [(MORE_FIGURES.get(p.name, f"`{p.name}`"), p.name) for p in sorted((d / "figures").glob("*.png"))
             if p.name not in shown] if (d / "figures").is_dir() else []
    missing += [f"`figures/{name}`" for _, name in FIGURES
                if not (d / "figures" / name).is_file() and Path(name).stem not in OUTSIDE_THE_CHAIN | CONDITIONAL]
    if figs:
        out += ["", f"{heading} Figures", ""]
        for cap, name in figs:
            out += [f"**{cap}**", "", f"![{cap}]({prefix}figures/{name})", ""]
    if missing:
        out += [""] * (out[-1] != "") + [f"Not produced yet at `{scale}`: {', '.join(missing)}."]
    return "\n".join(out).rstrip() + "\n"


def results_page(results_dir: str | Path, scale: str, readme: str | Path | None = None) -> str:
    """``results/<scale>/README.md`` whole: a title, links back to ``readme`` (the project's
    README, when given) and to the index of results pages beside it, then the results block
    with its links relative to the page."""
    d = Path(results_dir)
    links = []
    if readme is not None:
        links.append(f"[The README]({_relpath(readme, d)}) sets the paper's claims against these numbers.")
    if (d.parent / "README.md").is_file():
        links.append("[The index of results](../README.md) says how each run was made.")
    out = [f"# Results at `{scale}`", ""]
    if links:
        out += [" ".join(links), ""]
    return "\n".join(out) + "\n" + results_section(d, scale, link_root=d, heading="##")


def update_results_page(results_dir: str | Path, scale: str, check: bool = False,
                        readme: str | Path | None = None) -> bool:
    """Write ``results/<scale>/README.md``; with ``check``, only report whether it is up to date
    (a missing page, a hand edit and results newer than the page all count as out of date).
    Returns True when the page is (now) up to date."""
    from sbldm.io import atomic_write_bytes

    page = Path(results_dir) / "README.md"
    new = results_page(results_dir, scale, readme)
    if page.is_file() and page.read_text() == new:
        return True
    if check:
        return False
    atomic_write_bytes(page, new.encode())
    return True


def _relpath(path: str | Path, start: str | Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


# -- the claims block: the paper's claims against this project's numbers --------------------

def claims_markers(scale: str) -> tuple[str, str]:
    return f"<!-- claims:{scale}:start -->", f"<!-- claims:{scale}:end -->"


def claims_section(results_dir: str | Path, scale: str, link_root: str | Path = REPO_ROOT,
                   bench_dir: str | Path | None = None) -> str:
    """The claims block (without its markers): the claims table (``sbldm.report.claims``:
    one row per claim of the paper, the paper's number, ours at ``scale``, the verdict and
    why), then the budget curves' sentences, all from ``results_dir``."""
    d = Path(results_dir)
    run_path = d / "run.json"
    run = json.loads(run_path.read_text()) if run_path.is_file() else {}
    nbs = run.get("notebooks", {})
    hardware = ", ".join(sorted({e.get("device", "?") for e in nbs.values()})) or "not recorded"
    rel = _link(d, link_root)
    rows = claims(d, bench_dir)
    out = [f"_Generated by `python -m sbldm.report.readme --scale {scale}` from `{rel}/tables/`; do not edit by "
           "hand._", "",
           f"Scale `{scale}`; data: {data_source(d)}; hardware: {hardware}. The paper's numbers (`sbldm.paper`) "
           f"come from BraTS at 192x192x96 on one RTX A6000. [Claims table]({rel}/tables/claims.md) "
           "(`tables/claims.csv`).", "",
           f"| the paper's claim | measure | the paper | `{scale}` | verdict | why |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append("| " + " | ".join(str(r[k]).replace("|", "/") for k in
                                     ("claim", "measure", "paper", "sbldm", "verdict", "why")) + " |")
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    out += ["", "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + ". Segmentation claims take "
                "the training run as the unit: whole-tumour Dice (the paper's measure) per training seed, paired by "
                "seed, with a 95% interval over seeds and test cases; a claim holds only when the interval excludes "
                "0, the effect reaches the seed-to-seed spread and the t-test over the per-seed differences survives "
                "Holm over every segmentation comparison of the table; otherwise it reads \"no detectable effect\". "
                "Generation claims rest on one trained generator per method."]
    stale = sorted(n for n in stale_notebooks(run, d) if n[:2] in ("04", "06", "11"))
    if stale:
        out += ["", f"**Stale**: {', '.join(f'`{n}`' for n in stale)} ran before the data or a model they build "
                    "on was last made (an earlier generator): the verdicts they give describe that one, not this."]
    out += _budget_lines(d, rel)
    out += ["", f"Every table, figure and notebook summary: [`{rel}/README.md`]({rel}/README.md)."]
    return "\n".join(out).rstrip() + "\n"


_GENERATOR_NAMES = {"sbldm": "SBLDM", "ldm3d": "the 3D-LDM", "lsgan3d": "the 3D-LSGAN"}
_TABLE1_WORDS = {"psnr": "PSNR", "ssim": "SSIM", "seconds_per_volume": "time per volume"}


def _budget_lines(d: Path, rel: str) -> list[str]:
    """Sentences from the budget curves' tables (``sbldm.experiments.generator_budget``):
    who wins each Table 1 column at matched training compute, and where SBLDM stands on its
    targets. Nothing when the tables are absent."""
    out = []
    matched_path = d / "tables" / "generator_budget_table1.csv"
    if matched_path.is_file():
        rows = list(csv.DictReader(matched_path.open(newline="")))
        parts = []
        for r in rows:
            wins = ", ".join(f"{_TABLE1_WORDS[c]}: {_GENERATOR_NAMES.get(r[f'{c}_winner'], r[f'{c}_winner'] or '—')}"
                             for c in _TABLE1_WORDS)
            ratio = max(float(r["baseline_hours"]), float(r["sbldm_hours"])) / \
                min(float(r["baseline_hours"]), float(r["sbldm_hours"]))
            apart = f", not matched yet: {ratio:.1f}x apart in hours" if ratio > 1.5 else ""
            parts.append(f"{_GENERATOR_NAMES[r['baseline']]} at {r['baseline_steps']} steps "
                         f"({float(r['baseline_hours']):.2f} h) against SBLDM at {r['sbldm_steps']} steps "
                         f"({float(r['sbldm_hours']):.2f} h{apart}) — {wins}")
        budget = {row["generator"]: row for row in csv.DictReader((d / "tables" / "generator_budget.csv").open())} \
            if (d / "tables" / "generator_budget.csv").is_file() else {}
        real_psnr = _num(budget.get("real", {}).get("psnr"))
        caveat = (f" Unpaired PSNR measures closeness to the average training volume, not realism: the real test "
                  f"split itself scores {real_psnr:.2f} dB." if real_psnr is not None else "")
        out += ["", f"Table 1 at matched training compute on this hardware ([table]({rel}/tables/"
                    "generator_budget_table1.md), [curves](" + rel + "/figures/generator_budget.png)): "
                + "; ".join(parts) + ". The paper ranks SBLDM first on PSNR and SSIM and faster than the 3D-LDM."
                + caveat]
    budget_path = d / "tables" / "generator_budget.csv"
    budget_rows = list(csv.DictReader(budget_path.open(newline=""))) if budget_path.is_file() else []
    from sbldm.report.claims import lsgan_trained

    trained, text = lsgan_trained(budget_rows)
    if trained is not None:
        real = next((r for r in budget_rows if r["generator"] == "real"), {})
        kept = [r for r in budget_rows if r["generator"] == "lsgan3d"]
        last = max(kept, key=lambda r: _num(r["steps"]) or 0) if kept else None
        shape = (f" At {last['steps']} steps the generator it keeps draws tumours in "
                 f"{_num(last['pieces_26']) or float('nan'):.1f} pieces on average (26-connectivity; real test split "
                 f"{_num(real.get('pieces_26')) or float('nan'):.1f}), {_num(last['core_share']) or 0:.0%} with a core."
                 if last else "")
        out += ["", f"The 3D-LSGAN ([curves]({rel}/figures/generator_budget.png)): {text}."
                + (" The claims against it stand." if trained else
                   " It has not learnt usable tumours at this scale, so the claims against it are not tested.") + shape]
    ceilings = [r for r in budget_rows if r["generator"] == "vae_reconstruction"]
    if ceilings:
        def pct(v):
            return "?" if _num(v) is None else f"{_num(v):.0%}"

        parts = [f"at {r['steps']} VAE steps: in more than one piece {pct(r['multi_piece_26'])} (real "
                 f"{pct(r['multi_piece_26_real'])}), with a dark part {pct(r['dark_part_share'])} (real "
                 f"{pct(r['dark_part_share_real'])}), worst interior Wasserstein/spread "
                 f"{_num(r['interior_w_over_spread']) or float('nan'):.2f}, normal-brain |Laplacian| "
                 f"{_num(r['laplacian_ratio']) or float('nan'):.2f} of real" for r in ceilings]
        out += ["", "The slice VAE's own reconstructions of training volumes, what no generator it decodes can "
                    "exceed (the `vae_reconstruction` rows of the [budget table](" + rel + "/tables/generator_budget.md)): "
                + "; ".join(parts) + "."]
    targets_path = d / "tables" / "generator_budget_targets.csv"
    if targets_path.is_file():
        table = list(csv.DictReader(targets_path.open(newline="")))
        for arm in dict.fromkeys(r.get("generator", "sbldm") for r in table):
            rows = [r for r in table if r.get("generator", "sbldm") == arm]
            met = [r["measure"] for r in rows if r["met"] == "True"]
            missed = []
            for r in rows:
                if r["met"] == "True":
                    continue
                hours = _num(r["hours_to_target"])
                if _num(r.get("per_doubling")) is None:          # a single point: no curve to read
                    where = "one budget measured, no curve yet"
                elif hours is not None:
                    where = f"the curve reaches it near {hours:.1f} h by extrapolation"
                else:
                    where = "the curve does not fall steadily towards it: budget alone is not shown to get there"
                missed.append(f"{r['measure']} {float(r['value']):.3g} (target {float(r['target']):.3g}; {where})")
            hours = next((_num(r["hours"]) for r in rows if _num(r["hours"]) is not None), None)
            steps, _, method = arm[len("sbldm-vae"):].partition("-")
            name = "SBLDM" if arm == "sbldm" else f"SBLDM on the slice VAE at {steps} steps" + (
                f" with the method change {method}" if method else "")
            out += ["", f"{name}: targets at its largest budget ({'?' if hours is None else f'{hours:.2f}'} training "
                        f"hours; [table]({rel}/tables/generator_budget_targets.md)): met: "
                    + (", ".join(met) if met else "none") + "; not met: " + ("; ".join(missed) if missed else "none")
                    + "."]
    return out


def update_claims(readme: str | Path, results_dir: str | Path, scale: str, check: bool = False) -> bool:
    """Replace the claims block of ``readme``; with ``check``, only report whether it is up to
    date. Returns True when it is (now) up to date."""
    readme = Path(readme)
    start, end = claims_markers(scale)
    if not _has_block(readme.read_text(), start, end):
        raise ValueError(f"{readme}: no '{start}' ... '{end}' block to fill")
    return _fill_block(readme, start, end, claims_section(results_dir, scale, readme.parent), check)


def update_readme(readme: str | Path, results_dir: str | Path, scale: str, check: bool = False) -> bool:
    """Replace the block between the scale's markers; with ``check``, only report whether
    it is up to date. Returns True when the README is (now) up to date."""
    readme = Path(readme)
    start, end = markers(scale)
    if not _has_block(readme.read_text(), start, end):
        raise ValueError(f"{readme}: no '{start}' ... '{end}' block to fill")
    return _fill_block(readme, start, end, results_section(results_dir, scale, readme.parent), check)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sbldm.report.readme", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="small")
    ap.add_argument("--readme", default=str(REPO_ROOT / "README.md"),
                    help="the README with the claims block (its folder is the repository root)")
    ap.add_argument("--results", default=None, help="results/<scale> folder (default: next to the README)")
    ap.add_argument("--bench-page", default=None,
                    help="the page with the efficiency block (default: docs/benchmarks.md next to the README)")
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated page or block is out of date")
    args = ap.parse_args(argv)
    root = Path(args.readme).parent
    results = Path(args.results) if args.results else root / "results" / args.scale
    bench_page = Path(args.bench_page) if args.bench_page else root / "docs" / "benchmarks.md"
    if not bench_page.is_file() or not _has_block(bench_page.read_text(), *BENCH_MARKERS):
        print(f"{bench_page}: no '{BENCH_MARKERS[0]}' ... '{BENCH_MARKERS[1]}' block to fill", file=sys.stderr)
        return 1
    try:
        stale = [] if update_claims_table(results, args.scale, check=args.check) else \
            [str(results / "tables" / "claims.csv")]
        if not update_claims(args.readme, results, args.scale, check=args.check):
            stale.append(f"{args.readme} (the claims block)")
    except ValueError as e:
        print(e, file=sys.stderr)
        return 1
    if not update_results_page(results, args.scale, check=args.check, readme=args.readme):
        stale.append(str(results / "README.md"))
    if not update_efficiency(bench_page, root / "results" / "bench", check=args.check, link_root=root):
        stale.append(f"{bench_page} (the efficiency block)")
    for page in (Path(args.readme), root / "docs" / "paper_scale.md"):
        if page.is_file() and not update_counts(page, check=args.check):
            stale.append(f"{page} (the training counts)")
    if args.check and stale:
        print(f"out of date: {'; '.join(stale)}; run python -m sbldm.report.readme --scale {args.scale}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
