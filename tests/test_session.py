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
    from sbldm.config import run_name

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
    from sbldm.runner.session import open_session, project_root

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
