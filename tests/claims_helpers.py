"""Per-case segmentation tables whose seed-paired verdicts are known by construction, for
the claims table and the README's claims block."""

import csv
from pathlib import Path

import numpy as np

SEEDS = 10
CASES = 20
#: each row's whole-tumour Dice relative to real only, per training seed
OFFSETS = {
    "real": 0.0,
    "real + augmentation (x5)": "alternating",          # +0.02 / -0.02 by seed: mean 0, no detectable effect
    "real + 3D-LDM": 0.0,
    "real + SBLDM": 0.10,                               # a clear gain, far above the seed spread
    "real + SBLDM + augmentation": 0.0,                 # 0.10 below real + SBLDM: the paper's claim refuted
    "real + 3D-LSGAN": -0.10,                           # worse than real, as the paper says
    "synthetic only: 3D-LSGAN": -0.50,
    "synthetic only: 3D-LDM": -0.20,
    "synthetic only: SBLDM": -0.10,
}


def _dice(rng, seed_base, offset, seed):
    if offset == "alternating":
        offset = 0.02 if seed % 2 else -0.02
    return np.clip(seed_base + offset + rng.normal(0, 0.02, CASES), 0, 1)


def case_rows(offsets: dict, n_real: int | None = None) -> list[dict]:
    rng = np.random.default_rng(0)
    seed_base = 0.6 + rng.normal(0, 0.02, SEEDS)           # the run-to-run spread of real only
    case_noise = rng.normal(0, 0.05, CASES)
    rows = []
    for name, offset in offsets.items():
        for seed in range(SEEDS):
            d = np.clip(_dice(rng, seed_base[seed], offset, seed) + case_noise, 0, 1)
            for k in range(CASES):
                row = {"row": name, "seed": seed, "case_id": f"case{k:02d}", "dice": d[k], "dice_WT": d[k]}
                if n_real is not None:
                    row["n_real"] = n_real
                rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_cases(tables: Path) -> None:
    """``table2_cases.csv`` (``OFFSETS``) and ``scarce_cases.csv``: at 10 real volumes real +
    SBLDM equals real only (no detectable effect), at 100 it gains."""
    write_csv(tables / "table2_cases.csv", case_rows(OFFSETS))
    write_csv(tables / "scarce_cases.csv", case_rows({"real": 0.0, "real + SBLDM": 0.0}, n_real=10)
              + case_rows({"real": 0.0, "real + SBLDM": 0.1}, n_real=100))
