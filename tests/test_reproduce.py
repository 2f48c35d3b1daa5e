"""The runner refuses bad parameters before running, and the notebook chain runs at smoke."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sbldm.runner import reproduce

ROOT = Path(__file__).resolve().parent.parent


def test_typo_in_a_parameter_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(reproduce.RunnerError, match="unknown parameter.*'scael'.*declare:.*seed"):
        reproduce.plan("smoke", {"scael": "small"})
    with pytest.raises(reproduce.RunnerError, match="unknown scale 'tiny'"):
        reproduce.plan("tiny", {})
    with pytest.raises(ValueError, match="vae_lrr"):
        reproduce.plan("smoke", {"overrides": {"vae_lrr": 1}})
    with pytest.raises(reproduce.RunnerError, match="--only 42"):
        reproduce.plan("smoke", {}, only=["42"])


def test_cli_exits_nonzero_with_the_error(capsys):
    assert reproduce.main(["--scale", "smoke", "-p", "scael=small"]) == 1
    assert "unknown parameter" in capsys.readouterr().err


def test_parse_value():
    assert reproduce.parse_value("3") == 3 and reproduce.parse_value("None") is None
    assert reproduce.parse_value("{'a': 1}") == {"a": 1} and reproduce.parse_value("abc") == "abc"


def _write_notebook(path, body):
    """A notebook at ``path``: the run parameters' cell, then one cell of ``body``."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell('scale = "smoke"\nseed = 0\ndata = None\noverrides = {}')
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _tiny_notebooks(tmp_path, fail=False):
    d = tmp_path / "notebooks"
    d.mkdir(parents=True)
    for i, body in enumerate(["open('out.txt', 'w').write(str(seed))",
                              "raise ValueError('boom')" if fail else "x = 1"]):
        _write_notebook(d / f"0{i}_step.ipynb", body)
    return d


def test_runner_records_skips_and_stops_on_failure(tmp_path):
    nbs = _tiny_notebooks(tmp_path)
    logs = []
    rec = reproduce.run("smoke", {"seed": 7}, notebooks_dir=nbs, results_root=tmp_path / "results", log=logs.append)
    assert (nbs / "out.txt").read_text() == "7"                       # ran with cwd = notebooks/
    entry = rec["notebooks"]["00_step"]
    assert entry["status"] == "ok" and entry["parameters"] == {"scale": "smoke", "seed": 7}
    assert {"config_hash", "git_commit", "versions", "device", "wall_time_s"} <= set(entry)
    on_disk = json.loads((tmp_path / "results" / "smoke+seed7" / "run.json").read_text())   # not results/smoke
    assert not (tmp_path / "results" / "smoke").exists()
    assert on_disk["notebooks"]["01_step"]["status"] == "ok"
    logs.clear()
    reproduce.run("smoke", {"seed": 7}, notebooks_dir=nbs, results_root=tmp_path / "results", log=logs.append)
    assert sum("up to date" in line for line in logs) == 2
    logs.clear()
    reproduce.run("smoke", {"seed": 8}, notebooks_dir=nbs, results_root=tmp_path / "results", log=logs.append)
    assert not any("up to date" in line for line in logs)

    bad = _tiny_notebooks(tmp_path / "bad", fail=True)
    with pytest.raises(reproduce.RunnerError, match="01_step failed.*ValueError: boom"):
        reproduce.run("smoke", {}, notebooks_dir=bad, results_root=tmp_path / "r2", log=logs.append)
    rec = json.loads((tmp_path / "r2" / "smoke" / "run.json").read_text())
    assert rec["failures"]["01_step"]["status"] == "failed" and "01_step" not in rec["notebooks"]
    assert (tmp_path / "r2" / "smoke" / "executed" / "01_step.failed.ipynb").is_file()   # kept for inspection
    assert "boom" in (tmp_path / "r2" / "smoke" / "logs" / "01_step.log").read_text()
    reproduce.run("smoke", {}, notebooks_dir=nbs, results_root=tmp_path / "r2", log=logs.append)   # fixed
    assert not (tmp_path / "r2" / "smoke" / "logs" / "01_step.log").exists()        # its traceback is gone
    assert not (tmp_path / "r2" / "smoke" / "executed" / "01_step.failed.ipynb").exists()


def test_a_failure_never_replaces_a_successful_run_and_only_runs_exactly_what_it_names(tmp_path):
    nbs = _tiny_notebooks(tmp_path)
    logs = []
    reproduce.run("smoke", {}, notebooks_dir=nbs, results_root=tmp_path / "results", log=logs.append)
    out = tmp_path / "results" / "smoke"
    # --only accepts 1 and 01, runs exactly that notebook, and leaves the other's skip state alone
    logs.clear()
    reproduce.run("smoke", {}, only=["1"], redo=True, notebooks_dir=nbs, results_root=tmp_path / "results",
                  log=logs.append)
    assert any("01_step: ok" in line for line in logs) and not any("00_step" in line for line in logs)
    logs.clear()
    reproduce.run("smoke", {}, notebooks_dir=nbs, results_root=tmp_path / "results", log=logs.append)
    assert sum("up to date" in line for line in logs) == 2
    with pytest.raises(reproduce.RunnerError, match="no such notebook"):
        reproduce.plan("smoke", {}, only=["7"], notebooks_dir=nbs)
    assert [p.name for p, _ in reproduce.plan("smoke", {}, only=["0"], notebooks_dir=nbs)] == ["00_step.ipynb"]
    # the same notebook now fails: the good executed copy and its record stay
    good = (out / "executed" / "01_step.ipynb").read_bytes()
    nb = json.loads((nbs / "01_step.ipynb").read_text())
    nb["cells"][1]["source"] = "raise ValueError('boom')"
    (nbs / "01_step.ipynb").write_text(json.dumps(nb))
    with pytest.raises(reproduce.RunnerError, match="boom"):
        reproduce.run("smoke", {}, notebooks_dir=nbs, results_root=tmp_path / "results", log=logs.append)
    rec = json.loads((out / "run.json").read_text())
    assert rec["notebooks"]["01_step"]["status"] == "ok" and rec["failures"]["01_step"]["status"] == "failed"
    assert (out / "executed" / "01_step.ipynb").read_bytes() == good


def test_a_second_runner_on_the_same_folder_exits_naming_the_first(tmp_path):
    import subprocess
    import sys

    nbs = _tiny_notebooks(tmp_path)
    folder = tmp_path / "results" / "smoke"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder.mkdir(parents=True)
        (folder / ".lock").write_text(str(holder.pid))
        with pytest.raises(reproduce.RunnerError, match=f"PID {holder.pid}"):
            reproduce.run("smoke", {}, notebooks_dir=nbs, results_root=tmp_path / "results", log=print)
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its stale lock is taken over, and released at the end
    reproduce.run("smoke", {}, notebooks_dir=nbs, results_root=tmp_path / "results", log=print)
    assert not (folder / ".lock").exists()


def test_runs_with_overrides_seeds_or_other_data_get_their_own_folders(tmp_path):
    from sbldm.runs import run_name

    assert run_name("small") == "small"
    a, b = run_name("small", overrides={"vae_steps": 5}), run_name("small", overrides={"vae_steps": 6})
    assert a.startswith("small+") and b.startswith("small+") and a != b
    assert run_name("small", overrides={"vae_steps": 5}) == a                  # stable
    brats = tmp_path / "BraTS2021"
    brats.mkdir()
    d = run_name("small", data=brats)
    assert d.startswith("small-BraTS2021-") and d != run_name("small", data=tmp_path)
    assert run_name("small", seed=3) == "small+seed3"
    with pytest.raises(reproduce.RunnerError, match="no such folder"):
        reproduce.plan("smoke", {"data": str(tmp_path / "missing")})


def test_a_result_changing_parameter_can_never_write_into_the_committed_run(tmp_path):
    """``-p guidance_scale=3.0`` on notebook 07 used to be a notebook-local parameter that
    left the run named ``small``: the committed table would have been overwritten. It is a
    config field now; the runner refuses it as a notebook parameter, naming the override
    that gives the run its own folder, and every notebook declares run parameters only."""
    for name, field in (("guidance_scale", "guidance_scale"), ("n_volumes", "eval_figure_volumes"),
                        ("medicalnet_path", "eval_medicalnet_path"), ("steps", "steer_steps")):
        with pytest.raises(reproduce.RunnerError, match=f"'{name}' is.*config field '{field}'.*overrides="):
            reproduce.plan("small", {name: 3.0}, only=["07"])
    with pytest.raises(reproduce.RunnerError, match="'eval_n_samples' is the config field"):
        reproduce.plan("small", {"eval_n_samples": 3})
    steps = reproduce.plan("small", {"overrides": {"guidance_scale": 3.0}}, only=["07"])
    assert [p.name for p, _ in steps] == ["07_conditioning_ablation.ipynb"]
    folder = reproduce.run_folder("small", steps[0][1], tmp_path)
    assert folder != tmp_path / "small" and folder.name.startswith("small+")
    assert reproduce.run_folder("small", {"overrides": {}}, tmp_path) == tmp_path / "small"   # the other way
    for nb in reproduce.notebook_paths():
        assert set(reproduce.declared_parameters(nb)) <= set(reproduce.RUN_PARAMETERS), nb.name
    # what the runner accepts as notebook-local goes into no number: a notebook that declares
    # something else is refused before anything runs
    nbs = tmp_path / "nbs"
    _copy_notebooks(nbs)
    nb = nbs / "07_conditioning_ablation.ipynb"
    nb.write_text(nb.read_text().replace('"overrides = {}', '"n_rows = 3\\n",\n    "overrides = {}', 1))
    assert "n_rows" in reproduce.declared_parameters(nb)
    with pytest.raises(reproduce.RunnerError, match="neither run parameters nor config fields.*n_rows"):
        reproduce.plan("small", {}, notebooks_dir=nbs)


def _copy_notebooks(dest: Path) -> None:
    """The numbered notebooks only (not checkpoints or a running kernel's files)."""
    dest.mkdir(parents=True)
    for nb in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"):
        shutil.copy2(nb, dest / nb.name)


def test_kernels_talk_over_ipc_sockets_kept_out_of_the_notebook_folder(tmp_path, monkeypatch):
    from jupyter_core.paths import jupyter_runtime_dir

    monkeypatch.chdir(tmp_path)
    km = reproduce.ipc_kernel_manager()(kernel_name="python3")
    assert km.transport == "ipc"
    assert Path(km.ip).parent == Path(jupyter_runtime_dir()) and not Path(km.ip).is_relative_to(tmp_path)


def _tree_digest(folder: Path) -> dict:
    import hashlib

    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}


@pytest.mark.slow
def test_a_brats_run_after_a_phantom_run_trains_anew_and_leaves_the_phantom_run_alone(tmp_path):
    """Notebooks 00-01 on the phantom cohort, then on a BraTS-layout folder at the same scale:
    the BraTS run gets its own results and work folders, prepares its own data and trains its
    own VAE from step 0; not one file of the phantom run changes."""
    from model_helpers import write_brats

    from sbldm.runs import run_name

    nbs = tmp_path / "notebooks"
    _copy_notebooks(nbs)
    results, work = tmp_path / "results", tmp_path / "work"
    reproduce.run("smoke", {}, only=["00", "01"], notebooks_dir=nbs, results_root=results, log=print)
    before = {"results": _tree_digest(results / "smoke"), "work": _tree_digest(work / "smoke")}
    brats = write_brats(tmp_path / "BraTS2021", n_cases=10, shape=(40, 40, 20))
    rec = reproduce.run("smoke", {"data": str(brats)}, only=["0", "1"], notebooks_dir=nbs, results_root=results,
                        log=print)
    assert all(e["status"] == "ok" for e in rec["notebooks"].values()) and len(rec["notebooks"]) == 2
    name = run_name("smoke", data=brats)
    assert name.startswith("smoke-BraTS2021-")
    assert _tree_digest(results / "smoke") == before["results"] and _tree_digest(work / "smoke") == before["work"]
    ids = json.loads((work / name / "data" / "split.json").read_text())
    assert set(ids["train"]) | set(ids["test"]) <= {f"BraTS-GLI-{k:05d}-000" for k in range(10)}
    def steps(run):
        return [json.loads(line)["step"] for line in (work / run / "vae" / "log.jsonl").read_text().splitlines()
                if '"step"' in line]

    assert steps(name) == steps("smoke") and len(steps(name)) > 1   # every step trained, none resumed
    from safetensors.numpy import load_file

    def weights(run):
        return load_file(str(next((work / run / "vae").rglob("*.safetensors"))))

    a, b = weights("smoke"), weights(name)
    assert a.keys() == b.keys() and any(not np.array_equal(a[k], b[k]) for k in a)
    assert json.loads((results / name / "run.json").read_text())["run"]["data"] == str(brats)


@pytest.mark.slow
def test_notebook_chain_runs_at_smoke(tmp_path):
    """The real chain, through the runner, on a copy of the notebooks: a broken notebook fails CI."""
    nbs = tmp_path / "notebooks"
    _copy_notebooks(nbs)
    rec = reproduce.run("smoke", {}, notebooks_dir=nbs, results_root=tmp_path / "results", log=print)
    assert all(e["status"] == "ok" for e in rec["notebooks"].values())
    out = tmp_path / "results" / "smoke"
    assert (out / "figures" / "data_cases.png").stat().st_size > 10_000
    assert (out / "tables" / "data_features.csv").is_file()
    assert (tmp_path / "work" / "smoke" / "data" / "nnunet_raw" / "Dataset001_RealTrain" / "dataset.json").is_file()
    from sbldm.tables import read_csv

    ablation = read_csv(out / "tables" / "conditioning_ablation.csv")
    assert len(ablation) == 8                                   # 7 rows + the real reference
    sub = next(r for r in ablation if "sub-region condition" in r["row"])
    assert float(sub["share_error"]) >= 0                       # asked-for vs drawn shares, measured
    # smoke draws label maps: every row carries the sub-region columns beside adherence and realism
    assert all(r["core_share"] not in ("", None) and r["dark_core_share"] not in ("", None) for r in ablation)
    assert [r["steps"] for r in ablation[:-1]][-1] == str(2 * int(ablation[0]["steps"]))   # the twice-the-budget row

    t1 = read_csv(out / "tables" / "table1.csv")
    assert [r["method"] for r in t1] == ["3D-LSGAN", "3D-LDM", "SBLDM (DDPM)", "SBLDM (DDIM)"]
    for r in t1:
        assert all(r[c] not in ("", "nan") for c in ("psnr", "ssim", "params_M", "time_s_per_volume", "device"))
    assert "21.701" in (out / "tables" / "table1.md").read_text()          # the paper beside ours
    vols = read_csv(out / "tables" / "table1_volumes.csv")                 # per volume, DDPM paired with DDIM
    pair = {(r["method"], r["volume"]): r["real_pair"] for r in vols}
    ddpm = [k for m, k in pair if m == "SBLDM (DDPM)"]
    assert ddpm and all(pair[("SBLDM (DDPM)", k)] == pair[("SBLDM (DDIM)", k)] for k in ddpm)
    t2 = [r["row"] for r in read_csv(out / "tables" / "table2.csv")]
    assert t2 == ["real", "real + augmentation (x2)", "synthetic only: 3D-LSGAN", "synthetic only: 3D-LDM",
                  "synthetic only: SBLDM", "real + 3D-LSGAN", "real + 3D-LDM", "real + SBLDM",
                  "real + SBLDM (filtered)", "real + SBLDM + augmentation"]
    assert len(read_csv(out / "tables" / "table2_cases.csv")) == 10 * 4 * 2   # every row x test case x seed
    assert {r["seeds"] for r in read_csv(out / "tables" / "table2.csv")} == {"2"}
    curve = read_csv(out / "tables" / "seg_learning_curve.csv")
    assert [r["iteration"] for r in curve] == ["4", "8"]
    t2 = read_csv(out / "tables" / "table2.csv")      # smoke carries label maps: Table 2 is scored per region
    assert all(r[f"{m}_{g}_mean"] not in ("", "nan") for r in t2 for g in ("WT", "TC", "ET")
               for m in ("dice", "lesion_dice", "lesion_hd95"))
    scarce = read_csv(out / "tables" / "scarce_sweep.csv")
    assert [(r["n_real"], r["training_set"]) for r in scarce] == [
        ("3", "real"), ("3", "real + augmentation"), ("3", "real + SBLDM"),
        ("6", "real"), ("6", "real + augmentation"), ("6", "real + SBLDM")]
    # the training run as the unit: every row against real only per seed, with its interval and verdict
    assert all(r[k] not in ("", "nan") for r in scarce if r["training_set"] != "real"
               for k in ("diff_WT", "ci95_low_WT", "ci95_high_WT", "p_seeds_WT", "verdict_WT"))
    # no leakage: each size's synthetic volumes come from a latent UNet trained on that many real volumes
    assert all(r["generator_saw_real"] == r["n_real"] for r in scarce)
    gens = read_csv(out / "tables" / "scarce_generators.csv")
    assert [(r["n_real"], r["latent_unet_saw"], r["vae_saw"]) for r in gens] == [("3", "3", "6"), ("6", "6", "6")]
    assert {r["vae_trained_on"] for r in read_csv(out / "tables" / "scarce_vae_check.csv")} == {"3", "6"}
    protocols = read_csv(out / "tables" / "scarce_protocols.csv")
    assert [r["protocol"] for r in protocols if r["n_real"] == "3"] == [
        "real", "real + augmentation", "real + SBLDM", "real + 50% of SBLDM", "real + SBLDM (filtered)",
        "SBLDM pre-train, real fine-tune"]
    check = [r["row"] for r in read_csv(out / "tables" / "table2_nnunet_check.csv")]
    assert check == ["real", "real + SBLDM"]            # smoke confirms always (seg_nnunet_check_always)
    # each training seed trained on its own synthetic draw: seed 1's sets are cached beside Table 1's
    samples = tmp_path / "work" / "smoke" / "samples"
    assert any(p.name.endswith("_draw1_bf16.npz") for p in samples.rglob("*.npz"))    # bf16 draws (smoke: on)
    precision = read_csv(out / "tables" / "synthetic_precision.csv")
    assert [r["set"] for r in precision][:2] == ["fp32", "bf16"] and 0 <= float(precision[2]["pair_mask_dice_median"]) <= 1
    # without leakage at all: the slice VAE too saw only the smallest subset; what the shared one bought
    leak = read_csv(out / "tables" / "scarce_leakfree.csv")
    assert [(r["training_set"], r["vae_saw_real"]) for r in leak[:3]] == [
        ("real", "0"), ("real + SBLDM, VAE saw these only", "3"), ("real + SBLDM, VAE saw all", "6")]
    assert leak[-1]["training_set"].endswith("minus real + SBLDM, VAE saw these only")
    assert leak[-1]["verdict_WT"] in ("gain", "loss", "no detectable effect")
    # the plateau: real plus 0, 2 and 4 synthetic volumes at the smallest and the full size
    counts = read_csv(out / "tables" / "synthetic_count_sweep.csv")
    assert [(r["n_real"], r["synthetic_volumes"]) for r in counts] == [
        ("3", "0"), ("3", "2"), ("3", "4"), ("6", "0"), ("6", "2"), ("6", "4")]
    claims = read_csv(out / "tables" / "claims.csv") if (out / "tables" / "claims.csv").is_file() else None
    assert claims is None or all(r["verdict"] for r in claims)
    # notebook 12: the four-sequence model, its latent channels chosen on the training split, and
    # four-channel against FLAIR-only segmenters at the smallest and the full size
    recon = read_csv(out / "tables" / "four_sequences_reconstruction.csv")
    assert {r["sequence"] for r in recon} == {"T1", "T1ce", "T2", "FLAIR", "label map"}
    assert {r["scored_on"] for r in recon if r["vae"].startswith("check")} == {"held-out 1 of the training split"}
    assert len({r["vae"] for r in recon if r["chosen"] == "True"}) == 2          # the chosen check arm and the adopted VAE
    four = read_csv(out / "tables" / "four_sequences_table2.csv")
    assert [(r["n_real"], r["training_set"], r["against"]) for r in four[:5]] == [
        ("3", "real, FLAIR", ""), ("3", "real, 4 sequences", "real, FLAIR"), ("3", "real + SBLDM, FLAIR", "real, FLAIR"),
        ("3", "real + SBLDM, 4 sequences", "real, 4 sequences"), ("3", "real + SBLDM, 4 sequences", "real + SBLDM, FLAIR")]
    assert all(r[f"ci95_low_{g}"] not in ("", "nan") for r in four if r["against"] for g in ("WT", "TC", "ET"))
    assert [r["sequence"] for r in read_csv(out / "tables" / "four_sequences_appearance.csv")][:4] == [
        "T1", "T1ce", "T2", "FLAIR"]
    assert (tmp_path / "work" / "smoke" / "four_sequences" / "scarce" / "n3" / "pipeline" / "model_index.json").is_file()
    inside = [r["set"] for r in read_csv(out / "tables" / "tumour_appearance.csv")]
    assert inside == ["real (train split)", "real (test split)", "real (train split) through the slice VAE",
                      "3D-LSGAN", "3D-LDM", "SBLDM (DDPM)", "SBLDM (DDIM)"]
    probe = read_csv(out / "tables" / "tumour_denoising_probe.csv")
    assert [float(r["strength"]) for r in probe] == [0.0, 0.1, 0.3, 0.5, 0.7, 1.0]
    extra = read_csv(out / "tables" / "generation_extra.csv")
    assert [r["method"] for r in extra][0] == "real (test split)" and len(extra) == 5
    for name in ("figure2_axial", "figure2_coronal", "figure2_sagittal", "figure3_volume_sweep",
                 "figure3_position_sweep", "scarce_sweep", "scarce_generators", "seg_learning_curve", "vae_reconstruction", "diffusion_samples",
                 "conditioning_ablation", "data_tumour_volumes", "steer_example", "tumour_appearance",
                 "four_sequences_examples"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 5_000, name
    # the README block generated from these results carries their tables and figures verbatim
    from sbldm.report.readme import results_section, update_readme

    block = results_section(out, "smoke", link_root=tmp_path)
    assert (out / "tables" / "table1.md").read_text().strip().splitlines()[2] in block     # Table 1's header row
    assert (out / "tables" / "table2.md").read_text().strip().splitlines()[-1] in block
    assert "](results/smoke/figures/figure2_axial.png)" in block and "Not produced yet" not in block
    assert "smoke" in block and "CPU" in block                                             # provenance
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:smoke:start -->\nstale\n<!-- results:smoke:end -->\noutro\n")
    assert not update_readme(readme, out, "smoke", check=True)
    assert update_readme(readme, out, "smoke") and update_readme(readme, out, "smoke", check=True)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "stale" not in text

    # a saved pipeline evaluated instead of the trained one, with no baselines trained:
    # its own results folder, the baselines' rows left out, the plain run untouched
    from sbldm.runs import run_name

    shipped = tmp_path / "pretrained" / "smoke"
    shutil.copytree(tmp_path / "work" / "smoke" / "pipeline", shipped)
    for b in ("ldm3d", "lsgan3d"):
        shutil.rmtree(tmp_path / "work" / "smoke" / b)
    before = _tree_digest(out)
    rec = reproduce.run("smoke", {"pipeline": str(shipped)}, only=["05"], notebooks_dir=nbs,
                        results_root=tmp_path / "results", log=print)
    assert all(e["status"] == "ok" for e in rec["notebooks"].values())
    pipe_out = tmp_path / "results" / run_name("smoke", pipeline=shipped)
    assert pipe_out.name.startswith("smoke+pipe-smoke-") and _tree_digest(out) == before
    assert (pipe_out / "figures" / "figure3_volume_sweep.png").stat().st_size > 5_000
    assert json.loads((pipe_out / "run.json").read_text())["run"]["pipeline"] == str(shipped)


@pytest.mark.nnunet
def test_the_paper_presets_structure_runs_through_notebook_11_at_tiny_sizes(tmp_path):
    """The paper's structural choices (nnU-Net for every segmenter, the binary whole-tumour
    mask, no fast-backend check) at the smoke preset's sizes, one seed, one small real-set
    size and a short nnU-Net: notebook 11 completes, each protocol on nnU-Net but the one that
    needs the fast backend, which says so."""
    pytest.importorskip("nnunetv2")
    from sbldm.config import structure
    from sbldm.runs import run_name
    from sbldm.tables import read_csv

    overrides = {**structure("paper"), "seg_seeds": [0], "seg_scarce_sizes": [3], "seg_count_sweep": [0, 2],
                 "seg_nnunet_epochs": 1, "seg_nnunet_iterations": 2}
    assert overrides["seg_backend"] == "nnunet" and overrides["tumour_labels"] == "whole"
    nbs = tmp_path / "notebooks"
    _copy_notebooks(nbs)
    rec = reproduce.run("smoke", {"overrides": overrides}, only=["00", "01", "02", "10", "11"], notebooks_dir=nbs,
                        results_root=tmp_path / "results", log=print)
    assert [e["status"] for e in rec["notebooks"].values()] == ["ok"] * 5
    out = tmp_path / "results" / run_name("smoke", overrides=overrides)
    sweep = read_csv(out / "tables" / "scarce_sweep.csv")
    assert [r["training_set"] for r in sweep] == ["real", "real + augmentation", "real + SBLDM"]
    assert all(r["dice_WT"] not in ("", "nan") for r in sweep)         # the whole tumour only: no TC, ET
    assert "dice_TC" not in sweep[0]
    protocols = {r["protocol"]: r for r in read_csv(out / "tables" / "scarce_protocols.csv")}
    assert {p: r["backend"] for p, r in protocols.items()} == {
        "real": "nnunet", "real + augmentation": "nnunet", "real + SBLDM": "nnunet", "real + 50% of SBLDM": "nnunet",
        "real + SBLDM (filtered)": "nnunet", "SBLDM pre-train, real fine-tune": "fast"}
    leak = read_csv(out / "tables" / "scarce_leakfree.csv")
    assert [r["vae_saw_real"] for r in leak[:3]] == ["0", "3", "6"]
    counts = read_csv(out / "tables" / "synthetic_count_sweep.csv")
    assert [(r["n_real"], r["synthetic_volumes"]) for r in counts] == [("3", "0"), ("3", "2")]
    nnunet_runs = list((tmp_path / "work").rglob("checkpoint_final.pth"))
    assert nnunet_runs                                                   # nnU-Net trained, not the fast backend


def test_readme_results_block_is_generated_from_the_committed_small_results():
    """The small results page and the README's claims block are what `python -m
    sbldm.report.readme --scale small` makes of results/small/ — never typed by hand, never stale."""
    from sbldm.report.readme import update_claims, update_results_page

    assert update_results_page(ROOT / "results" / "small", "small", check=True, readme=ROOT / "README.md"), \
        "results/small/README.md is out of date with results/small: run python -m sbldm.report.readme --scale small"
    assert update_claims(ROOT / "README.md", ROOT / "results" / "small", "small", check=True), \
        "README.md's claims block is out of date with results/small: run python -m sbldm.report.readme --scale small"


def test_readme_efficiency_block_is_generated_from_the_committed_paper_cpu_bench():
    """The efficiency numbers of docs/benchmarks.md are what the generator makes of results/bench/."""
    from sbldm.report.readme import update_efficiency

    assert "<!-- bench:paper_cpu:start -->" in (ROOT / "docs" / "benchmarks.md").read_text()
    assert update_efficiency(ROOT / "docs" / "benchmarks.md", ROOT / "results" / "bench", check=True, link_root=ROOT), \
        "docs/benchmarks.md's efficiency block is out of date: run python -m sbldm.report.readme --scale small"


def _bench_row(comp, mem_mib, step_s, measured=True, **extra):
    return {"component": comp, "variant": "plain", "unit": f"unit of {comp}", "params_M": 10.0, "step_s": step_s,
            "peak_memory_MiB": mem_mib, "measured": measured, "memory_vs_sbldm": mem_mib / 1024.0,
            "time_vs_sbldm": step_s / 2.0, **extra}


def test_efficiency_block_reads_every_network_and_the_wait_from_the_bench_json(tmp_path):
    from sbldm.report.readme import efficiency_section, paper_cpu_bench, update_efficiency

    bench = tmp_path / "results" / "bench"
    bench.mkdir(parents=True)
    result = {"scale": "paper", "volume_shape": [192, 192, 96], "device": "CPU (test)", "dtype": "fp32",
              "memory_limit_gib": 16.0, "train_batch": 1,
              "sampling": [{"sampler": "ddim", "steps": 50, "dtype": "fp32", "denoise_s_per_volume": 300.0,
                            "decode_s_per_volume": 70.0, "total_s_per_volume": 370.0},
                           {"sampler": "ddim", "steps": 50, "dtype": "bf16", "denoise_s_per_volume": 120.0,
                            "decode_s_per_volume": 40.0, "total_s_per_volume": 160.0}],
              "training": [_bench_row("sbldm_unet", 1024.0, 2.0), _bench_row("slice_vae", 2048.0, 4.0),
                           _bench_row("ldm3d_autoencoder", 5120.0, 20.0, measured=False,
                                      extrapolated_from=[[48, 48, 24], [96, 96, 48]]),
                           _bench_row("ldm3d_unet", 512.0, 1.0),
                           {"component": "pixel_ddpm_unet", "variant": "plain", "measured": False,
                            "error": "out of memory at 192x192x96"}]}
    (bench / "paper_cpu-test_fp32_paper-batches.json").write_text(json.dumps({**result, "device": "other"}))
    assert paper_cpu_bench(bench) is None                      # variants are not quoted
    (bench / "paper_cpu-test_fp32.json").write_text(json.dumps(result))
    assert paper_cpu_bench(bench).name == "paper_cpu-test_fp32.json"
    md = efficiency_section(paper_cpu_bench(bench), tmp_path)
    assert "| SBLDM latent UNet | unit of sbldm_unet | 10.0 | 1.0 | 1.00 | 2.0 | 1.00 | measured |" in md
    assert "| 3D-LDM autoencoder | unit of ldm3d_autoencoder | 10.0 | 5.0 | 5.00 | 20.0 | 10.00 " \
           "| extrapolated from 48x48x24, 96x96x48 |" in md
    assert "did not run: out of memory at 192x192x96" in md
    # memory ratios of the diffusion routes (the slice VAE is shared by SBLDM and left out)
    assert "routes, SBLDM latent UNet : 3D-LDM autoencoder : 3D-LDM UNet = 1.00 : 5.00 : 0.50." in md
    assert "(unit of ldm3d_autoencoder) : slice VAE (unit of slice_vae) = 2.50 : 1." in md
    assert "Beyond" not in md                                  # nothing above 48 GB here
    big = {**result, "training": result["training"][:2] + [_bench_row("ldm3d_autoencoder", 50_000.0, 20.0)]}
    (bench / "big.json").write_text(json.dumps(big))
    assert "Beyond the 48 GB of the paper's GPU in training memory alone, at this batch: 3D-LDM autoencoder." \
        in efficiency_section(bench / "big.json")
    assert "fp32: 370 s (denoising 300 s, slice decoding 70 s); bf16 autocast: 160 s" in md
    assert "CPU (test)" in md and "other" not in md and "at batch 1" in md
    assert "The 3D-LDM at the same size" not in md
    # the 3D-LDM's sampling, timed beside SBLDM's: its own sentence, not one of SBLDM's waits
    timed = {**result, "sampling": result["sampling"] + [
        {"generator": "3D-LDM", "sampler": "ddim", "steps": 50, "dtype": "fp32", "denoise_s_per_volume": 500.0,
         "decode_s_per_volume": 400.0, "total_s_per_volume": 900.0}]}
    (bench / "timed.json").write_text(json.dumps(timed))
    md2 = efficiency_section(bench / "timed.json")
    assert "bf16 autocast: 160 s (denoising 120 s, slice decoding 40 s)." in md2
    assert "The 3D-LDM at the same size, for the paper's speed claim: fp32: 900 s per volume of DDIM-50 " \
           "(denoising 500 s, decoding 400 s)." in md2
    assert "Not measured" in efficiency_section(None)

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:paper_cpu:start -->\nstale\n<!-- bench:paper_cpu:end -->\noutro\n")
    assert not update_efficiency(readme, bench, check=True)
    assert update_efficiency(readme, bench) and update_efficiency(readme, bench, check=True)
    assert "stale" not in readme.read_text() and readme.read_text().endswith("outro\n")
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert update_efficiency(plain, bench) and plain.read_text() == "no markers\n"


def test_readme_block_lists_what_is_missing_and_needs_its_markers(tmp_path):
    from sbldm.report.readme import results_section, update_readme

    (tmp_path / "r" / "tables").mkdir(parents=True)
    (tmp_path / "r" / "tables" / "table1.md").write_text("### Table 1 (x)\n\n| a |\n|---|\n| 1 |\n")
    block = results_section(tmp_path / "r", "small", link_root=tmp_path)
    assert "**Table 1 (x)**" in block and "| 1 |" in block
    assert "`tables/table2.md`" in block and "`figures/figure2_axial.png`" in block   # listed as missing
    assert "No notebook has run" in block
    (tmp_path / "README.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="results:small:start"):
        update_readme(tmp_path / "README.md", tmp_path / "r", "small")


def test_cli_refuses_an_unavailable_device_and_a_missing_data_folder(capsys, tmp_path):
    import torch

    if not torch.cuda.is_available():
        assert reproduce.main(["--device", "cuda:0", "--only", "0"]) == 1
        assert "no CUDA GPU" in capsys.readouterr().err
    assert reproduce.main(["--device", "tpu0", "--only", "0"]) == 1
    assert "unknown device" in capsys.readouterr().err
    assert reproduce.main(["--data", str(tmp_path / "nope"), "--only", "0"]) == 1
    assert "no such folder" in capsys.readouterr().err


def test_bench_explains_every_option_and_refuses_unknown_components(capsys):
    from sbldm.runner import bench

    with pytest.raises(SystemExit):
        bench.main(["--help"])
    help_text = capsys.readouterr().out
    for option in ("--scale", "--device", "--dtype", "--repeats", "--batch-sizes", "--steps", "--components", "--out"):
        line = next(ln for ln in help_text.splitlines() if ln.strip().startswith(option))
        assert len(help_text.split(option, 2)[-1].split("\n  -")[0].strip()) > 10, line
    with pytest.raises(SystemExit):
        bench.main(["--components", "unet2d"])
    assert "invalid choice: 'unet2d'" in capsys.readouterr().err


def test_readme_block_flags_results_that_predate_the_data(tmp_path):
    from sbldm.report.readme import results_section, stale_notebooks

    d = tmp_path / "r"
    (d / "tables").mkdir(parents=True)
    run = {"notebooks": {
        "00_prepare_data": {"status": "ok", "finished_at": "2026-11-28T03:43:00Z"},
        "01_train_vae": {"status": "ok", "finished_at": "2026-11-28T03:50:00Z"},
        "02_train_diffusion": {"status": "ok", "finished_at": "2026-11-25T16:11:00Z"},
        "04_evaluate_generation": {"status": "ok"},                    # unknown finish time: earlier
    }}
    (d / "run.json").write_text(json.dumps(run))
    assert stale_notebooks(run, d) == {"02_train_diffusion", "04_evaluate_generation"}
    block = results_section(d, "small", link_root=tmp_path)
    assert "**Stale results**: `02_train_diffusion`, `04_evaluate_generation`" in block
    assert "`01_train_vae` | ok |" in block
    # a notebook that ran after the data but before the generator it analyses was retrained is stale;
    # an analysis notebook rerun after another analysis notebook is not
    run["notebooks"]["02_train_diffusion"]["finished_at"] = "2026-11-28T04:00:00Z"
    run["notebooks"]["04_evaluate_generation"]["finished_at"] = "2026-11-28T05:00:00Z"
    run["notebooks"]["06_segmentation_study"] = {"status": "ok", "finished_at": "2026-11-28T03:55:00Z"}
    run["notebooks"]["07_conditioning_ablation"] = {"status": "ok", "finished_at": "2026-11-28T04:30:00Z"}
    assert stale_notebooks(run, d) == {"06_segmentation_study"}
    run["notebooks"]["06_segmentation_study"]["finished_at"] = "2026-11-28T06:00:00Z"      # 06 reruns after 07
    assert stale_notebooks(run, d) == set()
    # notebook 11 builds on notebook 10's generators
    run["notebooks"]["10_scarce_generators"] = {"status": "ok", "finished_at": "2026-11-28T07:00:00Z"}
    run["notebooks"]["11_scarce_regime"] = {"status": "ok", "finished_at": "2026-11-28T06:30:00Z"}
    assert stale_notebooks(run, d) == {"11_scarce_regime"}


def test_notebook_summaries_are_saved_and_quoted_in_the_readme_block_with_their_staleness(tmp_path):
    from sbldm.report import summaries
    from sbldm.report.readme import results_section

    d = tmp_path / "r"
    (d / "tables").mkdir(parents=True)
    run = {"notebooks": {"00_prepare_data": {"status": "ok", "finished_at": "2026-11-28T03:43:00Z"},
                         "03_train_baselines": {"status": "ok", "finished_at": "2026-11-28T04:00:00Z"},
                         "06_segmentation_study": {"status": "ok", "finished_at": "2026-11-25T16:11:00Z"}}}
    (d / "run.json").write_text(json.dumps(run))
    check = {"n_volumes": 20, "wt_dice": 0.61, "tc_dice": 0.4, "et_dice": 0.2, "wt_empty_fraction": 0.05, "min_dice": 0.5}
    scores = [{"step": 100, "distance": 3.0, "empty_fraction": 0.0, "rank": 3.0},
              {"step": 200, "distance": 0.9, "empty_fraction": 0.0, "rank": 0.9},
              {"step": 300, "distance": 1.5, "empty_fraction": 0.5, "rank": 1.5e6}]
    text = summaries.baselines("small", check, scores)
    assert "Dice WT 0.61, TC 0.40, ET 0.20 (5% decoded empty)" in text
    assert "kept is step 200 of 300: mask-feature distance 0.90" in text and "(last step: 1.50, 50% empty)" in text
    assert "last step's" in summaries.baselines("small", {**check, "tc_dice": 0.4}, None)
    assert summaries.save(d, "03_train_baselines", text) == text
    assert (d / "summaries" / "03_train_baselines.md").read_text() == text + "\n"
    summaries.save(d, "06_segmentation_study", "- real only 0.9")
    block = results_section(d, "small", link_root=tmp_path)
    assert "**03_train_baselines**\n\n" + text in block
    assert "**06_segmentation_study** — **stale**: ran before the data or a model it builds on was last " \
        "made\n\n- real only 0.9" in block


def test_echo_streams_what_the_notebooks_print_while_they_run_and_nothing_without_it(tmp_path):
    """``--echo``: a multi-hour notebook's progress lines reach the terminal as they are
    printed, not only the executed copy at the end."""
    import io

    import nbformat

    nbs = _tiny_notebooks(tmp_path)
    nb = nbformat.read(nbs / "01_step.ipynb", as_version=4)
    nb.cells[1].source = "for k in range(3):\n    print(f'training {k} of 3, seed {seed}')"
    nbformat.write(nb, nbs / "01_step.ipynb")
    echo = io.StringIO()
    reproduce.run("smoke", {"seed": 3}, notebooks_dir=nbs, results_root=tmp_path / "results", log=lambda m: None,
                  echo=echo)
    assert echo.getvalue().splitlines() == [f"training {k} of 3, seed 3" for k in range(3)]
    quiet = io.StringIO()
    reproduce.run("smoke", {"seed": 4}, notebooks_dir=nbs, results_root=tmp_path / "results", log=quiet.write)
    assert "training" not in quiet.getvalue()


def test_a_maker_that_reruns_to_the_same_results_does_not_stale_what_read_it_and_one_that_changes_does(tmp_path):
    import time

    from sbldm.report.readme import stale_notebooks

    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    out = tmp_path / "results" / "smoke"
    _write_notebook(nbs / "00_make.ipynb", f"from pathlib import Path\nt = Path(r'{out}') / 'tables'\n"
                    "t.mkdir(parents=True, exist_ok=True)\n"
                    "(t / 'made.csv').write_text('value\\n' + open('value.txt').read())")
    _write_notebook(nbs / "05_read.ipynb", "x = 1")
    (nbs / "value.txt").write_text("1")
    kw = dict(notebooks_dir=nbs, results_root=tmp_path / "results")
    first = reproduce.run("smoke", {}, log=lambda _: None, **kw)["notebooks"]
    assert first["00_make"]["made_at"] == first["00_make"]["finished_at"]
    time.sleep(1.1)
    # the maker re-runs (its models were lost, say) and writes the same bytes: the reader stays current
    logs = []
    again = reproduce.run("smoke", {}, only=["00"], redo=True, log=logs.append, **kw)
    made = again["notebooks"]["00_make"]
    assert made["finished_at"] > first["05_read"]["finished_at"]
    assert made["made_at"] == first["00_make"]["made_at"]
    assert "1 result files byte-identical" in made["same_as_before"]
    assert any("byte-identical" in line for line in logs)
    assert stale_notebooks(again, out) == set()
    # it re-runs and writes something else: the reader that ran before it is stale
    time.sleep(1.1)
    (nbs / "value.txt").write_text("2")
    changed = reproduce.run("smoke", {}, only=["00"], redo=True, log=lambda _: None, **kw)
    assert changed["notebooks"]["00_make"]["made_at"] == changed["notebooks"]["00_make"]["finished_at"]
    assert "same_as_before" not in changed["notebooks"]["00_make"]
    assert stale_notebooks(changed, out) == {"05_read"}
    # writing it back does not un-stale the reader: the bytes match the run just before, not the reader's
    time.sleep(1.1)
    (nbs / "value.txt").write_text("1")
    back = reproduce.run("smoke", {}, only=["00"], redo=True, log=lambda _: None, **kw)
    assert stale_notebooks(back, out) == {"05_read"}


def test_made_again_needs_every_rewritten_file_identical_and_at_least_one():
    before = {"tables/a.csv": (1.0, "x"), "tables/b.csv": (1.0, "y")}
    rewritten = {"tables/a.csv": (5.0, "x"), "tables/b.csv": (1.0, "y")}
    assert reproduce.made_again(before, rewritten, 2.0) == ["tables/a.csv"]
    assert reproduce.made_again(before, {**rewritten, "tables/a.csv": (5.0, "z")}, 2.0) is None
    assert reproduce.made_again(before, {**before, "tables/c.csv": (5.0, "x")}, 2.0) is None   # a new file
    assert reproduce.made_again(before, before, 2.0) is None                                  # wrote nothing
