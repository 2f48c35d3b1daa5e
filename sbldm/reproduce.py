"""Run the numbered notebooks in order with papermill: ``python -m sbldm.reproduce --scale smoke``.

Before anything runs, the requested parameters are checked against each notebook's
``parameters`` cell and unknown ones are refused (papermill alone only warns, so a typo
such as ``scael`` would silently run the defaults). Executed notebooks go to
``results/<scale>/executed/``; ``results/<scale>/run.json`` records, per notebook, the
parameters, config hash, seed, git commit, library versions, device, wall time and
status. A notebook that already completed with the same parameters and inputs (its own
source, the package source, and every upstream notebook) is skipped unless ``--redo``.
The notebooks run with ``notebooks/`` as working directory, exactly as when a person
opens them in JupyterLab, so a hand run and a runner run write the same files.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .config import SCALES, resolve
from .data import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
RESULTS = ROOT / "results"


class RunnerError(RuntimeError):
    pass


def notebook_paths(notebooks_dir: Path = NOTEBOOKS) -> list[Path]:
    return sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))


def declared_parameters(path: Path) -> dict[str, Any]:
    """Names and default values assigned in the notebook's cell tagged ``parameters``."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = "".join(cell["source"])
            params = {}
            for node in ast.parse(src).body:
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for t in targets:
                        if isinstance(t, ast.Name):
                            try:
                                params[t.id] = ast.literal_eval(node.value)
                            except ValueError:
                                params[t.id] = None
            return params
    raise RunnerError(f"{path}: no cell tagged 'parameters'")


def parse_value(text: str) -> Any:
    """``-p name=value``: Python literals (numbers, True, None, lists, dicts) or a plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:16]


def package_hash() -> str:
    """Hash of the package source: a code change re-runs the notebooks."""
    files = sorted((ROOT / "sbldm").rglob("*.py"))
    return _sha(*[f.relative_to(ROOT).as_posix().encode() + f.read_bytes() for f in files])


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """Library versions and the device the notebooks will use."""
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for pkg in ("sbldm", "torch", "diffusers", "monai", "numpy", "nibabel", "papermill", "nnunetv2"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    except ImportError:
        device = "unknown"
    return {"versions": versions, "device": device}


def plan(scale: str, params: dict[str, Any], only: list[str] | None = None,
         notebooks_dir: Path = NOTEBOOKS) -> list[tuple[Path, dict[str, Any]]]:
    """(notebook, parameters to inject) in order; refuses unknown scales and parameters."""
    if scale not in SCALES:
        raise RunnerError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
    paths = notebook_paths(notebooks_dir)
    if only:
        missing = [o for o in only if not any(p.name.startswith(o) for p in paths)]
        if missing:
            raise RunnerError(f"--only {' '.join(missing)}: no such notebook; have "
                              f"{', '.join(p.name for p in paths)}")
        paths = [p for p in paths if any(p.name.startswith(o) for o in only)]
    if not paths:
        raise RunnerError(f"no numbered notebooks in {notebooks_dir}")
    declared = {p: declared_parameters(p) for p in paths}
    known = set().union(*declared.values())
    unknown = sorted(set(params) - known)
    if unknown:
        raise RunnerError(f"unknown parameter(s) {', '.join(map(repr, unknown))}; the selected notebooks "
                          f"declare: {', '.join(sorted(known))}")
    overrides = params.get("overrides", {})
    if not isinstance(overrides, dict):
        raise RunnerError(f"overrides must be a dict, got {overrides!r}")
    resolve(scale, **overrides)   # unknown config fields fail here, before anything runs
    return [(p, {"scale": scale, **{k: v for k, v in params.items() if k in declared[p]}}) for p in paths]


def run(scale: str, params: dict[str, Any] | None = None, only: list[str] | None = None,
        redo: bool = False, notebooks_dir: Path = NOTEBOOKS, results_root: Path = RESULTS,
        log=print) -> dict:
    """Execute the notebook chain; return the run record (also written to run.json)."""
    import papermill as pm

    params = dict(params or {})
    steps = plan(scale, params, only, notebooks_dir)
    out_dir = Path(results_root) / scale
    executed = out_dir / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    record_path = out_dir / "run.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record.setdefault("notebooks", {})
    env = environment()
    commit = git_commit()
    code_hash = package_hash()
    upstream = b""
    t_total = time.time()
    rerun_downstream = False
    for k, (path, nb_params) in enumerate(steps, 1):
        name = path.stem
        inputs = _sha(path.read_bytes(), json.dumps(nb_params, sort_keys=True).encode(),
                      code_hash.encode(), upstream)
        upstream = inputs.encode()
        prev = record["notebooks"].get(name, {})
        prefix = f"[{k}/{len(steps)}] {name}"
        if not redo and not rerun_downstream and prev.get("status") == "ok" and prev.get("inputs") == inputs \
                and (executed / path.name).is_file():
            log(f"{prefix}: up to date, skipped (use --redo to run it again)")
            continue
        rerun_downstream = True
        cfg = resolve(scale, **nb_params.get("overrides", {}))
        log(f"{prefix}: running ...", )
        t0 = time.time()
        entry = {"parameters": nb_params, "config_hash": cfg.hash(), "seed": nb_params.get("seed", cfg.seed),
                 "git_commit": commit, **env, "inputs": inputs, "executed": str((executed / path.name).relative_to(out_dir))}
        try:
            pm.execute_notebook(str(path), str(executed / path.name), parameters=nb_params,
                                cwd=str(path.parent), kernel_name="python3", progress_bar=False)
        except pm.PapermillExecutionError as e:
            entry.update(status="failed", wall_time_s=round(time.time() - t0, 1),
                         error=f"{e.ename}: {e.evalue}")
            record["notebooks"][name] = entry
            atomic_write_json(record_path, record)
            tb = "\n".join(e.traceback[-6:]) if e.traceback else ""
            raise RunnerError(f"{name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n{_strip_ansi(tb)}\n"
                              f"executed copy kept for inspection: {executed / path.name}") from None
        entry.update(status="ok", wall_time_s=round(time.time() - t0, 1))
        record["notebooks"][name] = entry
        atomic_write_json(record_path, record)
        log(f"{prefix}: ok ({entry['wall_time_s']:.1f} s)")
    total = time.time() - t_total
    record["last_run"] = {"scale": scale, "total_wall_time_s": round(total, 1), "git_commit": commit, **env}
    atomic_write_json(record_path, record)
    log(f"done: {len(steps)} notebook(s) at scale {scale!r} in {total:.1f} s -> {out_dir}")
    return record


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sbldm.reproduce", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="smoke", help=f"one of {', '.join(SCALES)}")
    ap.add_argument("--data", default=None, help="a BraTS 2021/2023 folder (default: the phantom cohort)")
    ap.add_argument("--only", nargs="+", default=None, help="notebook numbers to run, e.g. --only 04 05")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                    help="a notebook parameter, e.g. -p seed=1 -p overrides='{\"vae_steps\": 500}'")
    ap.add_argument("--redo", action="store_true", help="run notebooks even if up to date")
    args = ap.parse_args(argv)
    params: dict[str, Any] = {}
    for item in args.param:
        if "=" not in item:
            ap.error(f"-p {item!r}: expected NAME=VALUE")
        name, value = item.split("=", 1)
        params[name.strip()] = parse_value(value)
    if args.data:
        params["brats_dir"] = str(Path(args.data).resolve())
    try:
        run(args.scale, params, args.only, args.redo)
    except (RunnerError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
