"""open_session: what every notebook starts from."""

import json

import pytest

from model_helpers import make_prepared


def test_session_resolves_creates_folders_and_loads_splits_lazily(tmp_path):
    from sbldm.data.cohort import DataError, load_prepared
    from sbldm.runner.session import SMOKE_NOTE, open_session

    s = open_session("smoke", seed=3, overrides={"vae_steps": 7}, work_root=tmp_path / "work",
                     results_root=tmp_path / "results", device="cpu")
    assert s.cfg.seed == 3 and s.cfg.vae_steps == 7 and s.cfg.scale == "smoke"
    # seed 3 and an override: the run's own folders, never results/smoke of the committed run
    from sbldm.runs import run_name

    name = run_name("smoke", 3, {"vae_steps": 7})
    assert name.startswith("smoke+seed3+") and not (tmp_path / "results" / "smoke").exists()
    assert (tmp_path / "results" / name / "tables").is_dir() and (s.out / "figures").is_dir()
    assert s.work == tmp_path / "work" / name and s.note == SMOKE_NOTE
    assert s.source == "see notebook 00"                        # nothing prepared yet, and no error
    with pytest.raises(DataError, match="run notebooks/00_prepare_data"):
        s.train                                                 # noqa: B018  (loaded on first use)
    prepared = make_prepared(tmp_path / "p")
    s.work.mkdir(parents=True)
    (s.work / "data").symlink_to(prepared, target_is_directory=True)
    assert s.train.case_ids == load_prepared(prepared, "train").case_ids
    assert s.train is s.train                                   # loaded once
    (s.out / "tables" / "data_summary.json").write_text(json.dumps({"source": "BraTS 2021 at /data"}))
    assert s.source == "BraTS 2021 at /data"


def test_session_refuses_unknown_scale_and_override(tmp_path):
    from sbldm.runner.session import open_session

    with pytest.raises(ValueError, match="valid scales"):
        open_session("smol", results_root=tmp_path)
    with pytest.raises(ValueError, match="'vae_stpes'"):
        open_session("small", overrides={"vae_stpes": 3}, results_root=tmp_path)
    assert open_session("small", results_root=tmp_path).note is None


def test_session_finds_the_project_folders_from_anywhere(tmp_path, monkeypatch):
    from sbldm.paths import project_root
    from sbldm.runner.session import open_session

    monkeypatch.chdir(tmp_path)
    root = project_root()
    assert (root / "notebooks").is_dir() and (root / "sbldm").is_dir()
    s = open_session("smoke", device="cpu")
    assert s.out == root / "results" / "smoke" and s.work == root / "work" / "smoke"
    assert not any(tmp_path.iterdir())                  # nothing created where the user stands
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_session("smoke", data=tmp_path / "no-such-folder")
    with pytest.raises(ValueError, match="no CUDA GPU|CUDA device"):
        open_session("smoke", device="cuda:3") if not __import__("torch").cuda.is_available() else \
            open_session("smoke", device="cuda:99")


def _saved_pipeline(folder, **overrides):
    from sbldm.diffusion.pipeline import SBLDMPipeline

    SBLDMPipeline.from_scale("smoke", **overrides).save_pretrained(folder)
    return folder


def test_a_saved_pipeline_names_its_run_by_content_not_by_place(tmp_path):
    import shutil

    from sbldm.runs import run_name

    a = _saved_pipeline(tmp_path / "a" / "small")
    b = tmp_path / "elsewhere" / "small"
    shutil.copytree(a, b)
    name = run_name("smoke", pipeline=a)
    assert name.startswith("smoke+pipe-small-") and name == run_name("smoke", pipeline=b)
    (b / "MODEL_CARD.md").write_text("words only")
    assert run_name("smoke", pipeline=b) == name                      # a model card is not the model
    weights = next(b.glob("unet/*.safetensors"))
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    assert run_name("smoke", pipeline=b) != name                      # other weights, another run
    assert run_name("smoke") == "smoke"
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        run_name("smoke", pipeline=tmp_path)


def test_a_session_on_a_saved_pipeline_reads_data_and_baselines_from_the_plain_run(tmp_path):
    from sbldm.runner.session import open_session

    pipe = _saved_pipeline(tmp_path / "shipped")
    s = open_session("smoke", work_root=tmp_path / "work", results_root=tmp_path / "results", device="cpu",
                     pipeline=pipe)
    assert s.out.name.startswith("smoke+pipe-shipped-") and s.work.name == s.out.name
    assert s.base_work == tmp_path / "work" / "smoke" and s.data_dir == tmp_path / "work" / "smoke" / "data"
    dirs = s.generator_dirs()
    assert dirs["sbldm"] == pipe.resolve() and dirs["ldm3d"] == s.base_work / "ldm3d" / "model"
    assert s.slice_vae().training is False
    caches = s.sample_dirs()           # the baselines' volumes are shared with the plain run
    assert caches["sbldm"] == s.work / "samples" and caches["lsgan3d"] == s.base_work / "samples"
    plain = open_session("smoke", work_root=tmp_path / "work", results_root=tmp_path / "results", device="cpu")
    assert plain.generator_dirs()["sbldm"] == plain.work / "pipeline" and plain.base_work == plain.work
    assert set(plain.sample_dirs().values()) == {plain.work / "samples"}
    # a pipeline of another volume shape cannot be compared with this run's data
    other = _saved_pipeline(tmp_path / "other", volume_shape=(32, 32, 8))
    with pytest.raises(ValueError, match=r"\(32, 32, 8\).*\(32, 32, 16\)"):
        open_session("smoke", results_root=tmp_path / "results", work_root=tmp_path / "work", pipeline=other)


def test_missing_generators_are_refused_unless_optional(tmp_path, capsys):
    from sbldm.evaluation import table1

    pipe = _saved_pipeline(tmp_path / "shipped")
    dirs = {"sbldm": pipe, "ldm3d": tmp_path / "no" / "ldm3d", "lsgan3d": tmp_path / "no" / "lsgan3d"}
    with pytest.raises(FileNotFoundError, match="no trained ldm3d model"):
        table1.load_generators(dirs)
    gens = table1.load_generators(dirs, optional=("ldm3d", "lsgan3d"))
    assert list(gens) == ["sbldm"] and "lsgan3d: no trained model" in capsys.readouterr().out


def test_a_missing_slice_vae_or_pipeline_names_the_notebook_and_where_one_is_shipped_the_restore(tmp_path,
                                                                                                 monkeypatch):
    """A fresh clone has ``pretrained/<run>`` but no ``work/``: the error says how to go on."""
    from sbldm.evaluation import table1
    from sbldm import paths
    from sbldm.runner.session import open_session

    shipped = tmp_path / "pretrained"
    monkeypatch.setattr(paths, "SHIPPED", shipped)
    s = open_session("smoke", work_root=tmp_path / "work", results_root=tmp_path / "results", device="cpu")
    with pytest.raises(FileNotFoundError, match="no trained slice VAE; run notebook 01") as e:
        s.slice_vae()
    assert "--restore" not in str(e.value)                          # nothing shipped for this run
    with pytest.raises(FileNotFoundError, match="no trained sbldm model") as e:
        table1.load_generators({"sbldm": s.generator_dirs()["sbldm"]})
    assert "--restore" not in str(e.value)
    _saved_pipeline(shipped / "smoke")                               # a shipped pipeline of this run
    with pytest.raises(FileNotFoundError, match=r"ship --scale smoke --restore \(after notebook 00\)"):
        s.slice_vae()
    with pytest.raises(FileNotFoundError, match=r"run notebooks 02 and 03 first; or put the shipped one back"):
        table1.load_generators({"sbldm": s.generator_dirs()["sbldm"]})
