"""Where the project lies and how a name becomes part of a file name: the one owner of
the checkout's root (``REPO_ROOT``, ``project_root``), of where shipped pipelines lie
(``SHIPPED``, ``restore_hint``) and of ``slug``."""

from __future__ import annotations

from pathlib import Path

#: the folder holding ``sbldm/`` (the checkout, for an editable install)
REPO_ROOT = Path(__file__).resolve().parents[1]
#: the pipelines shipped inside the repository, one folder per run (``sbldm.report.ship``)
SHIPPED = REPO_ROOT / "pretrained"


def project_root() -> Path:
    """The sbldm checkout this package runs from (the folder holding ``notebooks/`` and
    ``sbldm/``), or the current directory for an installed, non-editable package."""
    here = REPO_ROOT
    return here if (here / "notebooks").is_dir() and (here / "sbldm").is_dir() else Path.cwd()


def slug(text: str, sep: str = "_", *, drop: str = "", ascii_only: bool = False, collapse: bool = False,
         strip: bool = False, lower: bool = False, max_len: int | None = None) -> str:
    """``text`` as a file-name part: the characters in ``drop`` removed, every other
    character that is not a letter or digit (with ``ascii_only``: not an ASCII one)
    replaced by ``sep`` (a run of them by one ``sep`` with ``collapse``), ``sep`` stripped
    from both ends with ``strip``, the result lower-cased with ``lower`` and cut to
    ``max_len`` characters.

    >>> slug("CPU (x86_64, 2 threads)".lower(), "-", ascii_only=True, collapse=True, strip=True)
    'cpu-x86-64-2-threads'
    >>> slug("+ EMA (0.999)", strip=True, lower=True), slug("SBLDM (DDIM)", drop="()-", lower=True)
    ('ema__0_999', 'sbldm_ddim')
    """
    out: list[str] = []
    for c in text:
        if c in drop:
            continue
        if c.isalnum() and (c.isascii() or not ascii_only):
            out.append(c)
        elif not (collapse and out and out[-1] == sep):
            out.append(sep)
    name = "".join(out)
    if strip:
        name = name.strip(sep)
    if lower:
        name = name.lower()
    return name if max_len is None else name[:max_len]


def restore_hint(work_run: Path) -> str:
    """The sentence an error about a missing slice VAE or pipeline in ``work_run``
    (``work/<run>``) ends on: ``sbldm.report.ship``'s restore command where a pipeline for
    that run is shipped (a fresh clone has the shipped one, not ``work/``), else nothing."""
    name = Path(work_run).name
    if not (SHIPPED / name / "model_index.json").is_file():
        return ""
    return (f"; or put the shipped one back without training: python -m sbldm.report.ship --scale {name} --restore "
            f"(after notebook 00)")
