"""The project's files agree with each other: dependencies, notebooks, CI."""

import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _conda_pip_requirements() -> list[str]:
    reqs, in_pip = [], False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("- pip:"):
            in_pip = True
            continue
        if in_pip and stripped.startswith("- "):
            reqs.append(stripped[2:].strip())
        elif in_pip and stripped and not stripped.startswith("#"):
            in_pip = False
    return reqs


def test_environment_yml_matches_pyproject():
    project = _pyproject()
    expected = {_name(r): r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    got = {_name(r): r.replace(" ", "") for r in _conda_pip_requirements()}
    assert got == expected


def test_source_notebooks_are_committed_without_outputs():
    for nb_path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, \
                    f"{nb_path.name} holds outputs: executed copies belong in results/<scale>/executed/"


def test_every_notebook_has_a_parameters_cell_with_scale_and_seed():
    from sbldm.reproduce import declared_parameters, notebook_paths

    paths = notebook_paths(ROOT / "notebooks")
    assert paths, "no notebooks"
    for p in paths:
        params = declared_parameters(p)
        assert params["scale"] == "smoke" and "seed" in params, p.name


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci
    assert "make test" in readme.split("\n## ")[0], "the README's opening must give the test command"
    assert "make smoke" in readme.split("\n## ")[0], "the README's opening must give the main command"
