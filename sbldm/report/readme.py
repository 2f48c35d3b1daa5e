"""The README's results section, generated from ``results/<scale>/``: nothing in it is typed.

    python -m sbldm.report.readme --scale small            # rewrite the block in README.md
    python -m sbldm.report.readme --scale small --check    # exit 1 if README.md is out of date

The block sits between ``<!-- results:<scale>:start -->`` and ``<!-- results:<scale>:end -->``.
A second block, between ``<!-- bench:paper_cpu:start -->`` and ``<!-- bench:paper_cpu:end -->``,
sets the paper's efficiency claim beside the paper-size CPU benchmark
(``results/bench/paper_cpu-*_fp32.json``, written by ``make bench-paper-cpu``).
It states where the numbers come from (scale, data, hardware, run time and commit of
each notebook, from ``run.json``), then includes the tables notebooks 01-06 wrote (Table 1,
Table 2 and the metrics beyond them) and links the figures (Figure 2, Figure 3 and the
others). A table or figure that a notebook has not written yet is listed as missing,
never filled in.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sbldm.paths import REPO_ROOT
from sbldm.provenance import data_source
from sbldm.report.summaries import FOLDER

#: (title, table stem under tables/) in the order the README shows them
TABLES = (
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
    ("Slice VAE reconstruction", "vae_reconstruction"),
    ("Slice VAE mask term: does the necrosis survive? (training split)", "vae_mask_ablation"),
    ("Baselines: the 3D-LDM autoencoder's remedies (training split)", "baseline_ablation_autoencoder"),
    ("Baselines: the 3D-LSGAN's remedies (training split)", "baseline_ablation_lsgan"),
    ("Baselines: the trained 3D-LDM autoencoder's reconstruction check (training split)",
     "baseline_reconstruction_check"),
    ("Inside the tumours — real, through the slice VAE, and each generator's", "tumour_appearance"),
    ("Inside the tumours, per sub-region — shares, presence and median intensity against the real training "
     "tumours", "tumour_subregions"),
    ("Real tumours noised and denoised by SBLDM — where the inside of a tumour is lost", "tumour_denoising_probe"),
)
#: tables written by commands outside the notebook chain: shown when present, never "missing"
OUTSIDE_THE_CHAIN = {"baseline_ablation_autoencoder", "baseline_ablation_lsgan", "vae_mask_ablation"}
#: (caption, figure file under figures/)
FIGURES = (
    ("Figure 2 — real and synthetic volumes, axial", "figure2_axial.png"),
    ("Figure 2 — coronal", "figure2_coronal.png"),
    ("Conditioning ablation", "conditioning_ablation.png"),
    ("Figure 3 — requested tumour volume sweep", "figure3_volume_sweep.png"),
    ("Tumour position sweep", "figure3_position_sweep.png"),
    ("Data-scarce regime (no leakage: each size's generator saw that size's real volumes only)", "scarce_sweep.png"),
    ("Generators of the data-scarce regime (notebook 10)", "scarce_generators.png"),
    ("Segmenter learning curve (the budget of every Table 2 row)", "seg_learning_curve.png"),
    ("Inside the tumours: intensities within the masks and examples", "tumour_appearance.png"),
    ("SBLDM samples (notebook 02)", "diffusion_samples.png"),
    ("3D-LDM samples (notebook 03)", "baselines_samples_ldm3d.png"),
    ("3D-LSGAN samples (notebook 03)", "baselines_samples_lsgan3d.png"),
    ("Steering a tumour (notebook 08): requested vs obtained", "steer_example.png"),
    ("Whole-tumour volumes of the phantom cohort", "data_tumour_volumes.png"),
)


def markers(scale: str) -> tuple[str, str]:
    return f"<!-- results:{scale}:start -->", f"<!-- results:{scale}:end -->"


def _demote(md: str) -> str:
    """A table file's own ``###`` title becomes a bold line under the README's heading."""
    lines = md.strip().splitlines()
    if lines and lines[0].startswith("#"):
        lines[0] = f"**{lines[0].lstrip('#').strip()}**"
    return "\n".join(lines)


def _provenance(run: dict, source: str, scale: str, results_dir: Path | None = None) -> list[str]:
    nbs = run.get("notebooks", {})
    if not nbs:
        return [f"No notebook has run at `{scale}` yet (`results/{scale}/run.json` is missing or empty)."]
    devices = sorted({e.get("device", "?") for e in nbs.values()})
    commits = sorted({(e.get("git_commit") or "?")[:12] for e in nbs.values()})
    total = sum(float(e.get("wall_time_s", 0.0)) for e in nbs.values() if e.get("status") == "ok")
    lines = [f"Scale `{scale}`; data: {source}; hardware: {', '.join(devices)}; "
             f"{len(nbs)} notebook(s), {total / 60:.0f} min of wall time in all; commit(s) {', '.join(commits)}.", "",
             "| notebook | status | wall time | torch | commit |", "|---|---|---|---|---|"]
    stale = stale_notebooks(run, results_dir)
    for name, e in sorted(nbs.items()):
        status = e.get("status", "?") + (" — **stale**: ran before the data it should use" if name in stale else "")
        lines.append(f"| `{name}` | {status} | {float(e.get('wall_time_s', 0.0)) / 60:.1f} min "
                     f"| {e.get('versions', {}).get('torch', '?')} | {(e.get('git_commit') or '?')[:12]} |")
    if stale:
        lines += ["", f"**Stale results**: {', '.join(f'`{n}`' for n in sorted(stale))} ran before the data "
                      "(notebook 00) they build on was last prepared; their tables and figures below come from "
                      f"an earlier cohort until `python -m sbldm.runner --scale {scale}` re-runs them."]
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


def stale_notebooks(run: dict, results_dir: Path | None = None) -> set[str]:
    """Notebooks whose run finished before notebook 00's: the data they build on was
    prepared again after them, so their results come from an earlier cohort."""
    nbs = run.get("notebooks", {})
    first = next((n for n in sorted(nbs) if n.startswith("00")), None)
    t0 = finished_at(nbs[first], results_dir) if first else ""
    if not t0:
        return set()
    return {n for n, e in nbs.items() if n != first and finished_at(e, results_dir) < t0}


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
    """``path`` as the README links it: relative to ``link_root`` where it lies inside it."""
    try:
        return Path(path).resolve().relative_to(Path(link_root).resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def paper_cpu_bench(bench_dir: str | Path) -> Path | None:
    """The paper-size CPU benchmark the README quotes: ``paper_cpu-<device>_fp32.json``
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
    ddim = [s for s in r.get("sampling", []) if s.get("sampler") == "ddim"]
    if ddim:
        waits = "; ".join(f"{s['dtype']}{' autocast' if s['dtype'] != 'fp32' else ''}: "
                          f"{float(s['total_s_per_volume']):.0f} s (denoising {float(s['denoise_s_per_volume']):.0f} s, "
                          f"slice decoding {float(s['decode_s_per_volume']):.0f} s)" for s in ddim)
        src = f" (timed in {r['sampling_from'].split(' ')[0]})" if r.get("sampling_from") else ""
        out += ["", f"A user without a GPU waits, per SBLDM volume of DDIM-{ddim[0]['steps']} at this size on "
                    f"{r.get('device')}{src}: {waits}."]
    return "\n".join(out).rstrip() + "\n"


def update_efficiency(readme: str | Path, bench_dir: str | Path, check: bool = False) -> bool:
    """Replace the efficiency block (when the README has its markers); with ``check``,
    only report whether it is up to date. Returns True when it is (now) up to date."""
    readme = Path(readme)
    if not _has_block(readme.read_text(), *BENCH_MARKERS):
        return True
    return _fill_block(readme, *BENCH_MARKERS, efficiency_section(paper_cpu_bench(bench_dir), readme.parent), check)


def results_section(results_dir: str | Path, scale: str, link_root: str | Path = REPO_ROOT) -> str:
    """The generated Markdown block (without its markers) for ``results_dir`` (= results/<scale>)."""
    d = Path(results_dir)
    run_path = d / "run.json"
    run = json.loads(run_path.read_text()) if run_path.is_file() else {}
    rel = _link(d, link_root)
    out = ["_Generated by `python -m sbldm.report.readme --scale " + scale + "` from `" + rel + "/`; do not edit by hand._", ""]
    out += _provenance(run, data_source(d), scale, d)
    said = sorted((d / FOLDER).glob("*.md")) if (d / FOLDER).is_dir() else []
    if said:
        out += ["", "#### What the numbers say (each notebook's closing cell, `summaries/`)", ""]
        for path in said:
            stale = " — **stale**: ran before the data it should use" if path.stem in stale_notebooks(run, d) else ""
            out += [f"**{path.stem}**{stale}", "", path.read_text().rstrip(), ""]
    missing = []
    for title, stem in TABLES:
        path = d / "tables" / f"{stem}.md"
        if not path.is_file():
            if stem not in OUTSIDE_THE_CHAIN:
                missing.append(f"`tables/{stem}.md`")
            continue
        out += ["", f"#### {title}", "", _demote(path.read_text())]
    figs = [(cap, name) for cap, name in FIGURES if (d / "figures" / name).is_file()]
    missing += [f"`figures/{name}`" for _, name in FIGURES if not (d / "figures" / name).is_file()]
    if figs:
        out += ["", "#### Figures", ""]
        for cap, name in figs:
            out += [f"**{cap}**", "", f"![{cap}]({rel}/figures/{name})", ""]
    if missing:
        out += [""] * (out[-1] != "") + [f"Not produced yet at `{scale}`: {', '.join(missing)}."]
    return "\n".join(out).rstrip() + "\n"


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
    ap.add_argument("--readme", default=str(REPO_ROOT / "README.md"))
    ap.add_argument("--results", default=None, help="results/<scale> folder (default: next to the README)")
    ap.add_argument("--check", action="store_true", help="exit 1 if the README block is out of date")
    args = ap.parse_args(argv)
    results = Path(args.results) if args.results else Path(args.readme).parent / "results" / args.scale
    ok = update_readme(args.readme, results, args.scale, check=args.check)
    ok = update_efficiency(args.readme, Path(args.readme).parent / "results" / "bench", check=args.check) and ok
    if args.check and not ok:
        print(f"{args.readme}: the {args.scale} results or the efficiency block is out of date; run python -m sbldm.report.readme "
              f"--scale {args.scale}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
