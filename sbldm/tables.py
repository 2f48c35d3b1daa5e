"""Tables as code writes them: a CSV for machines and a Markdown file for people.

Every number in a results table comes from here, never typed by hand.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Mapping, Sequence

from sbldm.io import atomic_write_bytes


def _fmt(v, digits: int) -> str:
    if isinstance(v, float):
        if v != v:
            return "—"
        return f"{v:.{digits}g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{v:.0f}"
    return "" if v is None else str(v)


def row_columns(rows: Sequence[Mapping]) -> list[str]:
    """Every key of ``rows``, in the order first met: a column that only later rows carry
    (a comparison made for some rows only) is kept, never dropped."""
    return list(dict.fromkeys(k for r in rows for k in r))


def to_markdown(rows: Sequence[Mapping], columns: Sequence[str] | None = None, digits: int = 3) -> str:
    columns = list(columns or row_columns(rows))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c), digits) for c in columns) + " |")
    return "\n".join(lines)


def write_table(rows: Sequence[Mapping], stem: str | os.PathLike, title: str | None = None,
                notes: Sequence[str] = (), columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """Write ``stem.csv`` and ``stem.md`` (title, table, notes) atomically; return the Markdown.
    Without ``columns``, every key any row carries (``row_columns``), blank where a row has none."""
    stem = Path(stem)
    columns = list(columns or row_columns(rows))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c) for c in columns})
    atomic_write_bytes(stem.with_suffix(".csv"), buf.getvalue().encode())
    md = (f"### {title}\n\n" if title else "") + to_markdown(rows, columns, digits)
    if notes:
        md += "\n\n" + "\n".join(f"- {n}" for n in notes)
    atomic_write_bytes(stem.with_suffix(".md"), (md + "\n").encode())
    return md


def read_csv(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def finite(value) -> float | None:
    """A table cell (a CSV string or a number) as a float, or None when it is empty, not a
    number or NaN."""
    import math

    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v
