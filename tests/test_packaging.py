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
    from sbldm.runner.reproduce import declared_parameters, notebook_paths

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


# -- the package's layout: stages import only what comes before them ---------------------

#: shared modules first, then the stages in the order of the method's data flow
LAYERS = [
    {"config", "io", "provenance", "runtime", "metrics", "paper", "plotting", "tables", "_compat", "paths", "runs", "labels"},
    {"data"}, {"models"}, {"diffusion"}, {"training"}, {"generators"},
    {"segmentation"}, {"evaluation"}, {"experiments"}, {"report"}, {"runner"},
]


def _layer(top: str) -> int:
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"sbldm.{top} is in no layer of tests/test_packaging.py::LAYERS")


def _imports(path: Path):
    """(imported sbldm module, imported names, line) of every import in ``path``."""
    import ast

    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sbldm"):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            yield node.module, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("sbldm"):
                    yield a.name, [], node.lineno


def test_no_stage_imports_a_later_stage_and_no_private_name_crosses_modules():
    pkg = ROOT / "sbldm"
    problems = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg).parts
        if rel[0] in ("__init__.py", "__main__.py"):
            continue
        own_top = rel[0].removesuffix(".py")
        own_module = ".".join(("sbldm", *path.relative_to(pkg).with_suffix("").parts))
        for module, names, line in _imports(path):
            parts = module.split(".")
            if len(parts) == 1:      # from sbldm import _compat / io ...
                tops = names
            else:
                tops = [parts[1]]
            for top in tops:
                if top in ("__version__",):
                    continue
                if _layer(top) > _layer(own_top):
                    problems.append(f"{path.relative_to(ROOT)}:{line} imports sbldm.{top} (a later stage)")
            private = [n for n in names if n.startswith("_") and n != "_compat"]
            if private and module != own_module:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports private {private} from {module}")
    assert not problems, "\n".join(problems)


def test_package_tests_and_notebooks_pass_the_linter():
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    out = subprocess.run([ruff, "check", "--select", "F,E9", "sbldm", "tests", "notebooks"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_readme_layout_table_matches_the_tree():
    """Every subpackage of ``sbldm/`` has a row in the layout table (``docs/layout.md``, which
    the README links), and each row lists exactly the public modules the folder holds (a
    module added, renamed or removed without the table following fails here); the shared
    top-level modules are named too."""
    import re

    assert "(docs/layout.md)" in (ROOT / "README.md").read_text(), "the README must link the layout table"
    layout = (ROOT / "docs" / "layout.md").read_text()
    rows = {}
    for line in layout.splitlines():
        m = re.match(r"\| `sbldm/([a-z_]+)/` \|.*\| (.+) \|$", line)
        if m:
            rows[m.group(1)] = set(re.findall(r"`([a-z0-9_]+)`", m.group(2)))
    pkg = ROOT / "sbldm"
    folders = {p.parent.name for p in pkg.glob("*/__init__.py")}
    assert set(rows) == folders, f"layout rows {sorted(rows)} vs subpackages {sorted(folders)}"
    for folder, listed in rows.items():
        public = {p.stem for p in (pkg / folder).glob("*.py") if not p.stem.startswith("_")}
        assert listed == public, \
            f"sbldm/{folder}/: docs/layout.md lists {sorted(listed)}, the folder holds {sorted(public)}"
    shared_text = layout.split("small top-level modules")[1]
    shared = {p.stem for p in pkg.glob("*.py") if not p.stem.startswith("_")}
    missing = sorted(m for m in shared if f"`{m}`" not in shared_text)
    assert not missing, f"shared modules missing from docs/layout.md's paragraph: {missing}"


# -- the documentation: a short README, pages that link to files that exist -----------------

#: the pages a reader follows from the README
PAGES = ("README.md", "results/README.md", "results/*/README.md", "docs/*.md")


def test_the_readme_reads_in_ten_minutes():
    """At most 300 lines: everything longer lives on its own page, which the README links."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move a section to docs/ and link it"


def test_every_relative_link_of_the_readme_and_docs_resolves():
    """Links and images on README.md, the results pages and docs/*.md point at files that exist
    (a page moved or renamed without its links following fails here)."""
    import re

    link = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
    broken = []
    for pattern in PAGES:
        for page in sorted(ROOT.glob(pattern)):
            text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
            for target in link.findall(text):
                if re.match(r"[a-z]+:", target) or target.startswith("#"):
                    continue
                if not (page.parent / target.split("#")[0]).exists():
                    broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_package_docstring_names_each_of_its_modules():
    """A reader opening ``sbldm/<package>/__init__.py`` sees every module the package holds."""
    import ast

    missing = []
    for init in sorted((ROOT / "sbldm").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        for module in sorted(init.parent.glob("*.py")):
            name = module.stem
            if name in ("__init__", "__main__"):
                continue
            if f"``{name}``" not in doc:
                missing.append(f"{init.parent.name}.{name}")
    assert not missing, f"package docstrings do not name: {missing}"


def test_no_import_circles_not_even_through_imports_inside_functions():
    """The package's modules import one another without a circle, counting imports made
    inside functions too: a reader can follow any module's dependencies to their end."""
    import ast

    pkg = ROOT / "sbldm"
    mods = {}
    for p in pkg.rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = p
    graph = {}
    for name, p in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sbldm"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    circles, done = [], set()

    def visit(node, path):
        for nxt in graph[node]:
            if nxt in path:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert not circles, circles[:3]
