"""Shared by the notebook generators in tools/: the parameters cell and the writer.

Every numbered notebook starts with a ``parameters`` cell (papermill and sbldm.reproduce
read it) of the same five parameters, then opens an ``sbldm.session``.
"""

from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def parameters(seed_doc: str, overrides_example: str = "", *extra: tuple[str, str]) -> str:
    """The parameters cell: scale, seed (``seed_doc``), results_root, work_root, overrides,
    then ``extra`` (assignment, comment) pairs, comments aligned."""
    rows = [('scale = "smoke"', "smoke | small | paper"),
            ("seed = 0", seed_doc),
            ('results_root = "../results"', "tables and figures go to results/<scale>/"),
            ('work_root = "../work"', "prepared data, checkpoints, models go to work/<scale>/ (not committed)"),
            ("overrides = {}", "config overrides" + (f", e.g. {overrides_example}" if overrides_example else "")),
            *extra]
    return "\n".join(f"{code:<28} # {doc}" for code, doc in rows)


SESSION = '''from sbldm.session import open_session

s = open_session(scale, seed, overrides, work_root, results_root)
cfg, work, out, device = s.cfg, s.work, s.out, s.device'''


def write(name: str, cells) -> Path:
    """Write notebooks/<name> from ``cells``: ("md" | "code", source) pairs; the first code
    cell is tagged ``parameters``; cell ids are stable (cell-00, cell-01, ...)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    tagged = False
    for kind, src in cells:
        src = src.strip("\n")
        if kind == "md":
            cell = nbformat.v4.new_markdown_cell(src)
        elif kind == "code":
            cell = nbformat.v4.new_code_cell(src)
            if not tagged:
                cell.metadata["tags"] = ["parameters"]
                tagged = True
        else:
            raise ValueError(f"cell kind must be 'md' or 'code', got {kind!r}")
        nb.cells.append(cell)
    for i, c in enumerate(nb.cells):
        c["id"] = f"cell-{i:02d}"
    nbformat.validate(nb)
    path = NOTEBOOKS / name
    nbformat.write(nb, path)
    print("wrote", path)
    return path
