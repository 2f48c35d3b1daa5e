"""What each notebook cost to compute, from the times kept beside its work.

A notebook that resumes across sessions reports only its last sitting's wall time
(``run.json``); what it cost from scratch is in its artefacts:

- **trainings**: every training run's ``log.jsonl`` ends on its wall time, summed over
  resumptions (``sbldm.training.trainer.training_seconds``);
- **synthetic draws**: every kept sample set (``*.npz``) holds each volume's sampling time;
- **segmenter trainings**: every (row, seed) of a per-case table (``table2_cases``,
  ``scarce_cases``, ...) carries its training and scoring time, and so do the nnU-Net
  confirmations' kept results and the learning curves that chose the budgets.

``compute_cost(work, results)`` attributes each to the notebook (or command) that made it,
by where it lies; a segmenter training two notebooks share (one kept result read back by
both) counts in each notebook's total and once in the grand total.
``python -m sbldm.report.cost --scale small`` writes ``results/<run>/tables/compute_cost.*``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

#: the notebooks (and commands) work is attributed to, in the order the table shows them
OWNERS = {
    "01": "01 slice VAE", "02": "02 latent UNet", "03": "03 baselines", "04": "04 Table 1",
    "06": "06 segmentation study", "07": "07 conditioning ablation", "10": "10 data-scarce generators",
    "11": "11 data-scarce regime", "12": "12 four sequences",
    "budget": "generator budget curves (python -m sbldm.experiments.generator_budget)",
    "sharpness": "slice-VAE sharpening term (vae_sharpness)",
}

#: (notebook, what, training-run folders relative to work/<run>, as globs)
TRAININGS = (
    ("01", "slice VAE", ("vae",)),
    ("02", "latent UNet", ("diffusion",)),
    ("03", "3D-LDM autoencoder and UNet, 3D-LSGAN", ("ldm3d/autoencoder", "ldm3d/unet", "lsgan3d")),
    ("07", "ablation latent UNets", ("ablation/*",)),
    ("10", "latent UNets of the smaller real sets", ("scarce/n*/diffusion",)),
    ("10", "slice VAEs of the leak check", ("scarce/vae_check/*",)),
    ("10", "leak-free latent UNets", ("scarce/leakfree/*/diffusion",)),
    ("12", "latent-channel check VAEs", ("four_sequences/latent_check/*",)),
    ("12", "four-sequence slice VAE", ("four_sequences/vae",)),
    ("12", "four-sequence latent UNets", ("four_sequences/diffusion", "four_sequences/scarce/n*/diffusion")),
    ("budget", "generators along their budget curves", ("generator_budget/**",)),
    ("sharpness", "slice VAEs with and without the term", ("vae_sharpness/*",)),
)

#: (notebook, what, pattern over a sample set's path relative to work/<run>); the first match wins
DRAWS = (
    ("12", "four-sequence synthetic draws", r"^four_sequences/"),
    ("budget", "sample sets of the budget points", r"^generator_budget/"),
    ("10", "Table 1 sets of the smaller real sets' generators", r"^scarce/.*/samples/sbldm_ddim\.npz$"),
    ("11", "synthetic-count pools", r"_n\d+(_bf16)?\.npz$"),
    ("11", "each training seed's draw of the smaller sets' generators", r"^scarce/"),
    ("04", "Table 1 sample sets", r"^samples/(sbldm_ddim|sbldm_ddpm|3dldm|3dlsgan)\.npz$"),
    ("06", "each training seed's synthetic draw", r"^samples/"),
)

#: (notebook, per-case tables of its segmenter trainings under results/<run>/tables)
CASE_TABLES = (
    ("06", ("table2_cases",)),
    ("11", ("scarce_cases", "scarce_leakfree_cases", "synthetic_count_cases")),
    ("12", ("four_sequences_cases",)),
)

#: (notebook, kept nnU-Net confirmation results, learning curves), relative to work/<run>
SEGMENTATION_WORK = (
    ("06", ("nnunet_check/segmentation/cases",), ("segmentation/learning_curve.json",)),
    ("11", ("scarce_n*/nnunet_check/segmentation/cases",), ("segmentation/learning_curve_n*.json",)),
    ("12", ("four_sequences/nnunet_check/segmentation/cases",), ("four_sequences/segmentation/learning_curve_*.json",)),
)


def _runs(work: Path, patterns) -> list[Path]:
    """The training-run folders (those with a ``log.jsonl``) the globs name; a glob ending
    in ``/**`` takes every run below its folder."""
    found = set()
    for p in patterns:
        if p.endswith("/**"):
            found |= {f.parent for f in (work / p[:-3]).rglob("log.jsonl")}
        else:
            found |= {d for d in work.glob(p) if (d / "log.jsonl").is_file()}
    return sorted(found)


def training_rows(work: Path) -> list[dict]:
    """One row per ``TRAININGS`` entry with kept runs: ``runs`` and ``hours`` (their logs'
    final wall times)."""
    from sbldm.training.trainer import training_seconds

    rows = []
    for owner, what, patterns in TRAININGS:
        seconds = [s for s in (training_seconds(d) for d in _runs(work, patterns)) if math.isfinite(s)]
        if seconds:
            rows.append({"owner": owner, "kind": "training", "what": what, "runs": len(seconds),
                         "hours": sum(seconds) / 3600})
    return rows


def _rows_of(path: Path, member: str) -> int | None:
    """The first dimension of ``member`` in the ``.npz`` at ``path``, read from its header
    (the array itself is not loaded)."""
    import zipfile

    with zipfile.ZipFile(path) as zf, zf.open(f"{member}.npy") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape = read(f)[0]
    return int(shape[0]) if shape else None


def sample_seconds(path: Path) -> float:
    """The sampling time a kept sample set records: its batches' time per volume
    (``sbldm.evaluation.sample_cache``), averaged, times its volumes. NaN when it records
    none or cannot be read."""
    try:
        with np.load(path) as z:
            if "seconds" not in z.files or "images" not in z.files:
                return math.nan
            per_volume = np.asarray(z["seconds"], dtype=float)
        n = _rows_of(path, "images")
    except (OSError, ValueError, KeyError):
        return math.nan
    return float(per_volume.mean() * n) if per_volume.size and n else math.nan


def draw_rows(work: Path) -> list[dict]:
    """One row per ``DRAWS`` entry with kept sample sets: ``runs`` (sets) and ``hours``."""
    acc: dict[tuple, list] = {}
    for f in sorted(work.rglob("*.npz")):
        rel = f.relative_to(work).as_posix()
        if "/samples/" not in f"/{rel}" and not rel.startswith("generator_budget/"):
            continue
        match = next(((o, w) for o, w, pat in DRAWS if re.search(pat, rel)), None)
        s = sample_seconds(f)
        if match and math.isfinite(s):
            acc.setdefault(match, []).append(s)
    return [{"owner": o, "kind": "sampling", "what": w, "runs": len(v), "hours": sum(v) / 3600}
            for (o, w), v in acc.items()]


def _trainings_of(rows: list[dict]) -> dict:
    """Per-case rows -> ``{(size, row, seed, backend): seconds}``: each training once."""
    out = {}
    for r in rows:
        size = r.get("n_real") or r.get("n_train_volumes") or ""
        out[(str(size), r.get("row", ""), str(r.get("seed", "")), r.get("backend", "") or "fast")] = float(r["seconds"])
    return out


def segmentation_rows(work: Path, results: Path) -> tuple[list[dict], dict]:
    """Rows of the segmenter trainings each notebook's per-case tables, nnU-Net
    confirmations and learning curves record, and ``{owner: [seconds of each training]}``
    (to find what two notebooks share)."""
    from sbldm.tables import read_csv

    rows, trainings = [], {}
    for owner, stems in CASE_TABLES:
        found = {}
        for stem in stems:
            path = results / "tables" / f"{stem}.csv"
            if path.is_file():
                found.update(_trainings_of(read_csv(path)))
        for backend in sorted({k[3] for k in found}):
            secs = [s for k, s in found.items() if k[3] == backend]
            rows.append({"owner": owner, "kind": "segmentation", "what": f"segmenter trainings ({backend} backend)",
                         "runs": len(secs), "hours": sum(secs) / 3600})
        trainings[owner] = list(found.values())
    for owner, checks, curves in SEGMENTATION_WORK:
        secs = [float(json.loads(f.read_text())["seconds"]) for p in checks for d in work.glob(p)
                for f in sorted(d.glob("*.json"))]
        if secs:
            rows.append({"owner": owner, "kind": "segmentation", "what": "nnU-Net confirmation trainings",
                         "runs": len(secs), "hours": sum(secs) / 3600})
            trainings.setdefault(owner, []).extend(secs)
        curve = [float(json.loads(f.read_text())["result"]["seconds"]) for p in curves for f in sorted(work.glob(p))]
        if curve:
            rows.append({"owner": owner, "kind": "segmentation", "what": "learning curves choosing the budget",
                         "runs": len(curve), "hours": sum(curve) / 3600})
    return rows, trainings


#: appended to a part's ``what`` when its hours come from the earlier table (``with_earlier``)
CARRIED = " (from the earlier table: its work is no longer here)"


def with_earlier(parts: list[dict], earlier: list[dict]) -> list[dict]:
    """``parts`` (measured here) together with the parts of ``earlier`` (rows of a
    compute-cost table written before) that this machine no longer measures in full, as
    parts (``owner`` from the notebook's name, ``what`` marked ``CARRIED``): a machine whose
    ``work/`` was lost (a fresh clone that went on from the committed results) keeps what
    the earlier work cost instead of dropping it. A part measured again on at least as many
    runs replaces its earlier row; measured again on fewer (one of Table 1's four sets drawn
    anew, say), the earlier row stands in its place, so nothing counts twice. A new list;
    ``parts`` is left as it was."""
    names = {v: k for k, v in OWNERS.items()}
    have = {(r["owner"], r["kind"], r["what"]): r for r in parts}
    superseded, kept_earlier = set(), []
    for r in earlier:
        owner, what = names.get(r.get("notebook")), str(r.get("what", "")).replace(CARRIED, "")
        if owner is None or r.get("kind") == "total":
            continue
        now = have.get((owner, r["kind"], what))
        runs = int(float(r["runs"])) if str(r.get("runs", "")).strip() else 0
        if now is not None:
            if int(now["runs"]) >= runs:
                continue
            superseded.add(id(now))
        kept_earlier.append({"owner": owner, "kind": r["kind"], "what": what + CARRIED, "runs": runs,
                             "hours": float(r["hours"])})
    return [r for r in parts if id(r) not in superseded] + kept_earlier


def compute_cost(work: str | Path, results: str | Path, earlier: list[dict] | None = None) -> list[dict]:
    """The table: per notebook (``OWNERS``) its parts (``kind``, ``what``, ``runs``,
    ``hours``), then its ``total``; a last row the grand total with every shared segmenter
    training counted once. ``earlier``: the rows of the table written before, whose parts
    no longer measured here in full are kept (``with_earlier``). Empty without any kept work."""
    work, results = Path(work), Path(results)
    seg, trainings = segmentation_rows(work, results)
    measured = training_rows(work) + draw_rows(work) + seg
    parts = with_earlier(measured, earlier or [])
    for r in measured:             # a segmentation part the earlier row stands in for shares nothing here
        if r["kind"] == "segmentation" and not any(r is p for p in parts):
            trainings.pop(r["owner"], None)
    out = []
    for owner, name in OWNERS.items():
        mine = [r for r in parts if r["owner"] == owner]
        if not mine:
            continue
        out += [{"notebook": name, **{k: r[k] for k in ("kind", "what", "runs", "hours")}} for r in mine]
        out.append({"notebook": name, "kind": "total", "what": "", "runs": "", "hours": sum(r["hours"] for r in mine)})
    if out:
        # a kept result two notebooks read back has the same recorded seconds in both
        seen, shared = set(), 0.0
        for owner in trainings:
            for s in trainings[owner]:
                if s in seen:
                    shared += s
                seen.add(s)
        total = sum(r["hours"] for r in out if r["kind"] == "total") - shared / 3600
        out.append({"notebook": "all of the above", "kind": "total",
                    "what": "segmenter trainings shared by notebooks counted once", "runs": "",
                    "hours": total})
    return out


def hours_of(rows: list[dict], *prefixes: str) -> float:
    """The summed totals of the notebooks whose names start with ``prefixes`` (e.g. "06",
    "10", "11"), segmenter trainings they share counted in each."""
    return sum(r["hours"] for r in rows if r["kind"] == "total" and r["notebook"].startswith(prefixes))


def write_cost(work: str | Path, results: str | Path, scale: str) -> list[dict]:
    """``compute_cost`` into ``results/tables/compute_cost.{csv,md}``."""
    from sbldm.tables import write_table

    from sbldm.tables import read_csv

    before = Path(results) / "tables" / "compute_cost.csv"
    rows = compute_cost(work, results, earlier=read_csv(before) if before.is_file() else None)
    notes = ["hours: wall-clock hours on the machine that ran each part, from the times kept beside the work "
             "(training logs, sample sets, per-case segmentation tables, nnU-Net results, learning curves), so "
             "a notebook resumed across sessions counts every session's share; loading, scoring of generators and "
             "plotting are not counted",
             "a segmenter training that two notebooks share (a kept result read back) counts in each notebook's "
             "total and once in the last row"]
    measured = {r["notebook"][:2] for r in rows if r["kind"] == "total"}
    sums = [f"notebooks {' + '.join(group)}: {hours_of(rows, *group):.1f} h" for group in (("06", "10", "11"), ("12",))
            if measured & set(group)]
    if sums:
        notes.append("; ".join(sums).replace("notebooks 12:", "notebook 12:"))
    write_table(rows, Path(results) / "tables" / "compute_cost", title=f"What each notebook cost to compute ({scale})",
                notes=notes, columns=("notebook", "kind", "what", "runs", "hours"), digits=2)
    return rows


def main(argv=None) -> None:
    import argparse

    from sbldm.paths import REPO_ROOT
    from sbldm.runs import run_name

    ap = argparse.ArgumentParser(prog="python -m sbldm.report.cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="small")
    ap.add_argument("--work-root", default=str(REPO_ROOT / "work"))
    args = ap.parse_args(argv)
    name = run_name(args.scale)
    rows = write_cost(Path(args.work_root) / name, REPO_ROOT / "results" / name, args.scale)
    for r in rows:
        if r["kind"] == "total":
            print(f"{r['hours']:7.2f} h  {r['notebook']}")


if __name__ == "__main__":
    main()
