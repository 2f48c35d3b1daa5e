"""Reading the sampling rows of a benchmark result (``results/bench/*.json``, written by
``python -m sbldm.runner.bench``): which rows time whose DDIM sampling, at which steps and
dtype, and which SBLDM and 3D-LDM rows compare at equal settings. The benchmark writes
these rows; the claims table, the results page and the benchmark's own markdown read them
here, so the report stage needs nothing from the runner."""

from __future__ import annotations


def row_dtype(result: dict, row: dict) -> str:
    """A sampling row's dtype: its own, else the result's (rows written before each carried one)."""
    return row.get("dtype", result.get("dtype", "fp32"))


def sampling_rows(result: dict, generator: str = "SBLDM", steps: int | None = 50,
                  dtype: str | None = None) -> list[dict]:
    """The DDIM sampling rows of a benchmark ``result`` of one generator (rows without a
    ``generator`` are SBLDM's: results written before the 3D-LDM was timed) at ``steps``
    steps and in ``dtype`` (None: any), batch 1."""
    return [r for r in result.get("sampling", []) if r.get("generator", "SBLDM") == generator
            and r.get("sampler") == "ddim" and (steps is None or r.get("steps") == steps) and r.get("batch", 1) == 1
            and (dtype is None or row_dtype(result, r) == dtype)]


def paired_sampling(result: dict, dtype: str | None = None) -> list[tuple[dict, dict]]:
    """(SBLDM's row, the 3D-LDM's row) of a benchmark ``result`` timed at the same DDIM steps
    and dtype (only ``dtype`` when given): the speed comparison the paper makes."""
    out = []
    for ldm in sampling_rows(result, "3D-LDM", None, dtype):
        same = sampling_rows(result, steps=ldm["steps"], dtype=row_dtype(result, ldm))
        if same:
            out.append((same[0], ldm))
    return out
