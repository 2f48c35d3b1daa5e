"""Run the numbered notebooks in order with papermill: ``python -m sbldm.runner --scale smoke``.

Before anything runs, the requested parameters are checked against each notebook's
``parameters`` cell and unknown ones are refused (papermill alone only warns, so a typo
such as ``scael`` would silently run the defaults). Executed notebooks go to
``results/<run>/executed/`` (``<run>``: ``sbldm.runs.run_name``); ``results/<run>/run.json`` records, per notebook, the
parameters, config hash, seed, git commit, library versions, device, wall time and
status. A notebook that already completed with the same parameters and inputs (its own
source, the package source, and every upstream notebook) is skipped unless ``--redo``.
Each entry also records ``made_at``: when what the notebook writes last changed. A rerun
whose every rewritten result file (tables, figures) comes out byte-identical to the
previous run's keeps the previous ``made_at``, so re-making lost models with the same seeds
does not mark the notebooks that read them stale (``sbldm.report.readme.stale_notebooks``).
The notebooks run with ``notebooks/`` as working directory, exactly as when a person
opens them in JupyterLab, so a hand run and a runner run write the same files.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from sbldm.config import SCALES, resolve
from sbldm.config import fields as config_fields
from sbldm.io import atomic_write_bytes, atomic_write_json
from sbldm.paths import REPO_ROOT
from sbldm.provenance import device_name, git_commit, library_versions
from sbldm.runs import run_name

NOTEBOOKS = REPO_ROOT / "notebooks"
RESULTS = REPO_ROOT / "results"


class RunnerError(RuntimeError):
    pass


#: what a notebook's ``parameters`` cell may declare: what names the run (``scale``, ``seed``,
#: ``overrides``, ``data``, ``pipeline``: ``sbldm.runs.run_name``) or leaves every number as it
#: is (where files go, the device, resuming). Anything that changes a result is a config field,
#: set through ``overrides``, so that it names the run's folder and can never write into another's.
RUN_PARAMETERS = ("scale", "seed", "results_root", "work_root", "overrides", "data", "device", "pipeline", "resume")
#: notebook parameters that became config fields: old name -> the field to set in ``overrides``
RETIRED_PARAMETERS = {"guidance_scale": "guidance_scale", "steps": "steer_steps", "n_volumes": "eval_figure_volumes",
                      "medicalnet_path": "eval_medicalnet_path", "medicalnet_depth": "eval_medicalnet_depth",
                      "n_examples": "eval_appearance_examples", "n_probe": "eval_probe_volumes",
                      "probe_strengths": "eval_probe_strengths"}


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
    files = sorted((REPO_ROOT / "sbldm").rglob("*.py"))
    return _sha(*[f.relative_to(REPO_ROOT).as_posix().encode() + f.read_bytes() for f in files])


#: the result files whose bytes decide whether a rerun made the same thing (``products``)
PRODUCT_SUFFIXES = (".csv", ".json", ".png", ".npz", ".npy")


def products(out_dir: Path) -> dict[str, tuple[float, str]]:
    """``{path relative to out_dir: (mtime, sha256)}`` of the result files under a run's
    folder (``PRODUCT_SUFFIXES``), leaving out the runner's own: ``run.json``, the executed
    copies and the tracebacks."""
    out = {}
    if not out_dir.is_dir():
        return out
    for f in sorted(out_dir.rglob("*")):
        rel = f.relative_to(out_dir)
        if not f.is_file() or f.suffix not in PRODUCT_SUFFIXES or rel.parts[0] in ("executed", "logs") \
                or rel.as_posix() == "run.json":
            continue
        out[rel.as_posix()] = (f.stat().st_mtime, hashlib.sha256(f.read_bytes()).hexdigest())
    return out


def made_again(before: dict, after: dict, since: float) -> list[str] | None:
    """The files a run rewrote (modified at or after ``since``) when every one of them is
    byte-identical to what was there before it ran; None when it wrote none, a new one or a
    different one."""
    written = sorted(p for p, (mtime, _) in after.items() if mtime >= since)
    if not written or any(p not in before or before[p][1] != after[p][1] for p in written):
        return None
    return written


def environment() -> dict:
    """Library versions and the device the notebooks will use."""
    return {"versions": library_versions(), "device": device_name()}


def select(paths: list[Path], only: list[str] | None) -> list[Path]:
    """The notebooks named by number in ``only`` (``4`` and ``04`` alike), in chain order."""
    if not only:
        return list(paths)
    numbers = {}
    for p in paths:
        numbers[int(p.name.split("_", 1)[0])] = p
    chosen, missing = set(), []
    for o in only:
        key = str(o).split("_", 1)[0]
        if not key.isdigit() or int(key) not in numbers:
            missing.append(str(o))
        else:
            chosen.add(numbers[int(key)])
    if missing:
        raise RunnerError(f"--only {' '.join(missing)}: no such notebook; have "
                          f"{', '.join(p.name for p in paths)}")
    return [p for p in paths if p in chosen]


def plan(scale: str, params: dict[str, Any], only: list[str] | None = None,
         notebooks_dir: Path = NOTEBOOKS) -> list[tuple[Path, dict[str, Any]]]:
    """(notebook, parameters to inject) in order; refuses unknown scales and parameters
    (checked against every notebook of the chain, so ``--only`` accepts the same ones)."""
    if scale not in SCALES:
        raise RunnerError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
    all_paths = notebook_paths(notebooks_dir)
    if not all_paths:
        raise RunnerError(f"no numbered notebooks in {notebooks_dir}")
    paths = select(all_paths, only)
    declared = {p: declared_parameters(p) for p in all_paths}
    local = {p.name: sorted(set(d) - set(RUN_PARAMETERS)) for p, d in declared.items() if set(d) - set(RUN_PARAMETERS)}
    if local:
        raise RunnerError(f"notebook parameters that are neither run parameters nor config fields: {local}; "
                          "a parameter that changes a result must be a config field (sbldm.config), so that it "
                          "names the run's folder")
    known = set().union(*declared.values())
    fields = {f.name for f in config_fields()}
    as_fields = {k: RETIRED_PARAMETERS.get(k, k) for k in params
                 if k not in known and (k in fields or k in RETIRED_PARAMETERS)}
    if as_fields:
        moved = {f: params[k] for k, f in as_fields.items()}
        named = "; ".join(f"{k!r} is the config field {f!r}" if k == f else f"{k!r} is now the config field {f!r}"
                          for k, f in as_fields.items())
        raise RunnerError(f"{named}: set it through overrides, -p overrides='{json.dumps(moved)}', so that the run "
                          f"gets a folder of its own (results/{run_name(scale, params.get('seed', 0), moved)}/) "
                          "instead of writing over another run's results")
    unknown = sorted(set(params) - known)
    if unknown:
        raise RunnerError(f"unknown parameter(s) {', '.join(map(repr, unknown))}; the notebooks "
                          f"declare: {', '.join(sorted(known))}")
    overrides = params.get("overrides", {})
    if not isinstance(overrides, dict):
        raise RunnerError(f"overrides must be a dict, got {overrides!r}")
    resolve(scale, **overrides)   # unknown config fields fail here, before anything runs
    data = params.get("data")
    if data is not None and not Path(data).is_dir():
        raise RunnerError(f"--data {data}: no such folder")
    pipe = params.get("pipeline")
    if pipe is not None and not (Path(pipe) / "model_index.json").is_file():
        raise RunnerError(f"--pipeline {pipe}: not a saved SBLDMPipeline folder (no model_index.json)")
    return [(p, {"scale": scale, **{k: v for k, v in params.items() if k in declared[p]}}) for p in paths]


def run_folder(scale: str, params: dict[str, Any], results_root: Path = RESULTS) -> Path:
    """``results/<run>/`` of these parameters (``sbldm.runs.run_name``)."""
    return Path(results_root) / run_name(scale, params.get("seed", 0), params.get("overrides"), params.get("data"),
                                         params.get("pipeline"))


class _Lock:
    """One runner per results folder: a ``.lock`` file holding the runner's PID, refused
    while that process lives, taken over when it is gone (a killed runner)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and _alive(pid):
                    raise RunnerError(f"another runner (PID {pid}) is writing {self.path.parent}; "
                                      f"wait for it or stop it (remove {self.path} if that PID is not a runner)")
                self.path.unlink(missing_ok=True)     # stale: its runner is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise RunnerError(f"cannot take the lock {self.path}")

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kernel_name() -> str:
    """The "Python (sbldm)" kernel when it runs this interpreter, else ``python3``."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        spec = KernelSpecManager().get_kernel_spec("sbldm")
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return "sbldm"
    except Exception:
        pass
    return "python3"


def run(scale: str, params: dict[str, Any] | None = None, only: list[str] | None = None,
        redo: bool = False, notebooks_dir: Path = NOTEBOOKS, results_root: Path = RESULTS,
        log=print, progress: bool = False, echo=None) -> dict:
    """Execute the notebook chain (or the notebooks ``only`` names) into the run's folder
    ``results/<run>/`` (see ``run_folder``); return the run record (also ``run.json``).
    ``echo``: a text stream (e.g. ``sys.stdout``) that what the notebooks print goes to as
    they run (a multi-hour notebook's progress lines), besides the executed copies."""
    import papermill as pm

    params = dict(params or {})
    chain = plan(scale, params, None, notebooks_dir)
    selected = {p for p, _ in plan(scale, params, only, notebooks_dir)}
    out_dir = run_folder(scale, params, results_root)
    executed = out_dir / "executed"
    with _Lock(out_dir):
        executed.mkdir(parents=True, exist_ok=True)
        record_path = out_dir / "run.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        record.setdefault("notebooks", {})
        record["run"] = {"scale": scale, "overrides": params.get("overrides") or {}, "seed": params.get("seed", 0),
                         "data": params.get("data") or "phantom cohort",
                         "pipeline": params.get("pipeline") or "trained by notebook 02"}
        env = environment()
        commit = git_commit(REPO_ROOT)
        code_hash = package_hash()
        kernel = _kernel_name()
        upstream = b""
        t_total = time.time()
        rerun_downstream = False
        for path, nb_params in chain:
            # inputs chain over the whole chain, so --only leaves the others' skip state alone
            inputs = _sha(path.read_bytes(), json.dumps(nb_params, sort_keys=True).encode(),
                          code_hash.encode(), upstream)
            upstream = inputs.encode()
            if path not in selected:
                continue
            name = path.stem
            k = sorted(selected).index(path) + 1
            prev = record["notebooks"].get(name, {})
            prefix = f"[{k}/{len(selected)}] {name}"
            target = executed / path.name
            if not redo and not rerun_downstream and prev.get("status") == "ok" and prev.get("inputs") == inputs \
                    and target.is_file():
                log(f"{prefix}: up to date, skipped (use --redo to run it again)")
                continue
            rerun_downstream = True
            cfg = resolve(scale, **nb_params.get("overrides", {}))
            log(f"{prefix}: running ...")
            entry = {"parameters": nb_params, "config_hash": cfg.hash(), "seed": nb_params.get("seed", cfg.seed),
                     "git_commit": commit, **env, "inputs": inputs, "executed": str(target.relative_to(out_dir))}
            running = executed / f".{path.stem}.running.ipynb"
            before = products(out_dir) if prev.get("status") == "ok" else {}   # the folder as its last run left it
            t0 = time.time()
            try:
                pm.execute_notebook(str(path), str(running), parameters=nb_params, cwd=str(path.parent),
                                    kernel_name=kernel, progress_bar=progress, stdout_file=echo,
                                    kernel_manager_class=ipc_kernel_manager())
            except pm.PapermillExecutionError as e:
                failed = executed / f"{path.stem}.failed.ipynb"
                os.replace(running, failed)
                log_path = out_dir / "logs" / f"{path.stem}.log"
                atomic_write_bytes(log_path, _strip_ansi("\n".join(e.traceback or [])).encode())
                entry.update(status="failed", wall_time_s=round(time.time() - t0, 1),
                             error=f"{e.ename}: {e.evalue}", executed=str(failed.relative_to(out_dir)))
                record.setdefault("failures", {})[name] = entry      # an earlier ok entry stays
                atomic_write_json(record_path, record)
                raise RunnerError(f"{name} failed in cell {e.exec_count}: {e.ename}: {_first_line(e.evalue)} "
                                  f"(traceback: {log_path}; executed copy: {failed})") from None
            os.replace(running, target)
            (executed / f"{path.stem}.failed.ipynb").unlink(missing_ok=True)   # superseded by this success
            (out_dir / "logs" / f"{path.stem}.log").unlink(missing_ok=True)     # and so is its traceback
            entry.update(status="ok", wall_time_s=round(time.time() - t0, 1),
                         finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            # 2 s of slack: a file system that keeps whole seconds must not hide a rewritten file
            same = made_again(before, products(out_dir), t0 - 2) if before else None
            earlier = prev.get("made_at") or prev.get("finished_at")
            if same and earlier:
                entry.update(made_at=earlier, same_as_before=f"{len(same)} result files byte-identical to the "
                                                             f"previous run's (made {earlier})")
                log(f"{prefix}: every result it rewrote ({len(same)} files) is byte-identical to the previous "
                    f"run's: what it makes is unchanged since {earlier}")
            else:
                entry["made_at"] = entry["finished_at"]
            record["notebooks"][name] = entry
            record.get("failures", {}).pop(name, None)
            atomic_write_json(record_path, record)
            log(f"{prefix}: ok ({entry['wall_time_s']:.1f} s)")
        total = time.time() - t_total
        record["last_run"] = {"scale": scale, "total_wall_time_s": round(total, 1), "git_commit": commit, **env}
        atomic_write_json(record_path, record)
    log(f"done: {len(selected)} notebook(s) at scale {scale!r} in {total:.1f} s -> {out_dir}")
    return record


def ipc_kernel_manager():
    """A jupyter_client kernel manager whose kernel talks over local IPC sockets, not TCP:
    nothing listens on a network port, and the kernel has no reason to warn (ipykernel
    warns at every start about unencrypted TCP)."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            import uuid

            from jupyter_core.paths import jupyter_runtime_dir

            kwargs.setdefault("transport", "ipc")
            # the socket files live in Jupyter's private runtime folder, not in the notebook's
            # working directory (jupyter_client's default for IPC), and go when the kernel stops
            runtime = Path(jupyter_runtime_dir())
            runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
            kwargs.setdefault("ip", str(runtime / f"sbldm-{uuid.uuid4().hex[:12]}"))
            super().__init__(**kwargs)

    return IPCKernelManager


def _first_line(text: str) -> str:
    text = _strip_ansi(str(text)).strip()
    return text.splitlines()[0] if text else ""


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sbldm.runner", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="smoke", help=f"one of {', '.join(SCALES)}")
    ap.add_argument("--data", default=None, help="a BraTS 2021/2023 folder (default: the phantom cohort)")
    ap.add_argument("--only", nargs="+", default=None, help="notebook numbers to run, e.g. --only 04 05")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                    help="a notebook parameter, e.g. -p seed=1 -p overrides='{\"vae_steps\": 500}'")
    ap.add_argument("--pipeline", default=None,
                    help="a saved SBLDMPipeline (e.g. pretrained/small) that notebooks 04-08 evaluate instead of "
                         "the one notebook 02 trains; their results go to results/<scale>+pipe-<name>-<hash>/")
    ap.add_argument("--device", default=None, help="torch device for every notebook, e.g. cuda:1 (default: the GPU "
                                                 "if there is one, else the CPU)")
    ap.add_argument("--redo", action="store_true", help="run notebooks even if up to date")
    ap.add_argument("--echo", action="store_true",
                    help="print what the notebooks print while they run (progress of the long ones: each training, "
                         "each kept result read back)")
    args = ap.parse_args(argv)
    params: dict[str, Any] = {}
    for item in args.param:
        if "=" not in item:
            ap.error(f"-p {item!r}: expected NAME=VALUE")
        name, value = item.split("=", 1)
        params[name.strip()] = parse_value(value)
    if args.data:
        params["data"] = str(Path(args.data).resolve())
    if args.pipeline:
        params["pipeline"] = args.pipeline
    if params.get("pipeline"):        # notebooks run in notebooks/: a path relative to here must survive that
        params["pipeline"] = str(Path(params["pipeline"]).resolve())
    if args.device:
        from sbldm.runtime import pick_device

        try:
            params["device"] = pick_device(args.device)      # refused here, before any kernel starts
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    try:
        run(args.scale, params, args.only, args.redo, progress=True, echo=sys.stdout if args.echo else None)
    except (RunnerError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
