"""Table 2's statistics: how the per-case scores of every (row, seed) training become a
row of the table.

- ``summarise``: per row, the mean over training seeds of the per-seed mean score with its
  spread across seeds, and a paired test against the reference row (Wilcoxon signed-rank
  on the per-case scores averaged over seeds, Holm-corrected over the rows compared,
  ``holm``);
- ``seeds_above``: in how many seeds a row beat the reference trained with the same seed;
- ``regions_of``, ``summarised_regions``: the BraTS regions a set of rows was scored on;
- ``seed_paired``, ``verdicts``: a row against the reference with the training run as the
  unit (per-seed paired differences, a hierarchical bootstrap interval, a t-test over
  seeds with the signed-rank test beside it, Holm over a whole family, "no detectable
  effect" below the seed spread).

The rows come from ``sbldm.segmentation.table2.run_rows``.
"""

from __future__ import annotations

import math
import re

import numpy as np

from sbldm.data.tumour import REGIONS
from sbldm.paper import TABLE2 as PAPER_TABLE2


def holm(pvalues: dict) -> dict:
    """Holm-Bonferroni adjusted p-values of a family ``{name: p}`` (NaN entries left out)."""
    items = sorted(((p, k) for k, p in pvalues.items() if not math.isnan(p)))
    m, out, running = len(items), {}, 0.0
    for i, (p, k) in enumerate(items):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return {k: out.get(k, math.nan) for k in pvalues}


def _per_case(cases, row, metric) -> dict:
    by_case = {}
    for c in cases:
        if c["row"] == row:
            by_case.setdefault(c["case_id"], []).append(float(c[metric]))
    return {k: float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else math.nan for k, v in by_case.items()}


def _by_seed(cases, row, metric, reduce=np.mean) -> dict:
    """{seed: ``reduce`` of ``metric`` over ``row``'s test cases with that seed}, seeds in order."""
    seeds = sorted({c["seed"] for c in cases if c["row"] == row})
    return {s: float(reduce([float(c[metric]) for c in cases if c["row"] == row and c["seed"] == s])) for s in seeds}


def _per_seed(cases, row, metric, reduce=np.mean) -> list[float]:
    return list(_by_seed(cases, row, metric, reduce).values())


def seeds_above(cases, row, reference, metric) -> int:
    """Training seeds where ``row``'s mean ``metric`` over the test cases is above
    ``reference``'s with the same seed. The paired test of ``summarise`` runs on per-case
    values averaged over seeds, so it cannot tell a gain that every seed shows from one that
    a single weak reference seed makes; this count can."""
    mine, theirs = _by_seed(cases, row, metric), _by_seed(cases, reference, metric)
    return sum(int(mine[s] > theirs[s]) for s in mine.keys() & theirs.keys())


#: per-region columns ``score`` adds, averaged like Dice in ``summarise``
REGION_METRICS = ("dice", "lesion_dice", "lesion_hd95", "false_positives", "missed")


def regions_of(cases: list[dict]) -> list[str]:
    """The BraTS regions scored in these per-case rows (WT, TC, ET; or WT alone)."""
    return [r for r in REGIONS if cases and f"dice_{r}" in cases[0]]


def summarised_regions(row) -> list[str]:
    """The BraTS regions a summarised row (``summarise``, or read back from its CSV, where a
    column may be present but empty) carries Dice for."""
    return [r for r in REGIONS if row.get(f"dice_{r}_mean") not in (None, "")]


def _paired_p(d: dict, ref: dict) -> float:
    from scipy.stats import wilcoxon

    keys = sorted(set(d) & set(ref))
    diff = np.array([d[k] - ref[k] for k in keys])
    diff = diff[~np.isnan(diff)]
    return float(wilcoxon(diff).pvalue) if np.any(diff != 0) and len(diff) > 1 else 1.0


def summarise(cases: list[dict], reference: str = "real") -> list[dict]:
    """Table 2 rows: mean over seeds of the per-seed mean Dice/IoU, their spread across
    seeds (sample std; 0 with one seed), the std across cases of the seed-averaged per-case
    Dice, HD95 over the cases where it is defined with the mean number of empty predictions
    per seed beside it, and the Wilcoxon signed-rank p-value of the seed-averaged per-case
    Dice against ``reference``, raw and Holm-corrected over the rows compared.

    With region columns (``score``): for every region R, ``dice_R``, ``lesion_dice_R``,
    ``lesion_hd95_R`` (mean over seeds of the per-seed mean, ``_seed_std`` beside each),
    false positives and missed lesions per case, the paired test of ``dice_R`` against
    ``reference`` (``p_vs_real_R``, ``p_holm_R``; Holm within each region), and the number
    of seeds where the row's mean ``dice_R`` beats the reference's with the same seed
    (``seeds_above_real_R``, ``seeds_above``).

    The training run as the unit (``seed_paired``; the per-case Wilcoxon above is the
    secondary test): per region ``diff_R`` with its 95% interval ``ci95_low_R`` /
    ``ci95_high_R``, the t-test over the per-seed differences ``p_seeds_R`` (Holm over
    every row x region of this table; the unadjusted one is ``p_seeds_raw_R``; the exact
    signed-rank p beside it, unadjusted, ``p_rank_raw_R``), ``seed_spread_R`` and
    ``verdict_R`` (gain, loss or no detectable effect); without regions the suffix is
    ``all``. ``backend``: the segmenter(s) that trained the row, when the cases say."""
    rows_order = list(dict.fromkeys(c["row"] for c in cases))
    regions = regions_of(cases)
    ref = _per_case(cases, reference, "dice") if reference in rows_order else None
    ref_r = {r: _per_case(cases, reference, f"dice_{r}") for r in regions} if ref is not None else {}
    out, family = [], {}
    for row in rows_order:
        sel = [c for c in cases if c["row"] == row]
        seeds = sorted({c["seed"] for c in sel})
        entry = {"row": row, "n_train_volumes": sel[0]["n_train_volumes"], "seeds": len(seeds),
                 "n_test": len({c["case_id"] for c in sel})}
        backends = sorted({c["backend"] for c in sel if c.get("backend")})
        if backends:                    # the segmenter that trained the row (a protocol may need the fast one)
            entry["backend"] = "+".join(backends)
        metrics = ["dice", "iou"] + [f"{m}_{r}" for r in regions for m in REGION_METRICS]
        for metric in metrics:
            per_seed = _per_seed(cases, row, metric)
            entry[f"{metric}_mean"] = float(np.mean(per_seed))
            entry[f"{metric}_seed_std"] = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
        entry["dice_case_std"] = float(np.nanstd(list(_per_case(cases, row, "dice").values())))
        hd = np.array([float(c["hd95"]) for c in sel])
        entry["hd95_mean"] = float(np.nanmean(hd)) if np.any(~np.isnan(hd)) else math.nan
        entry["hd95_n"] = int(np.sum(~np.isnan(hd)))
        entry["empty_predictions"] = float(np.mean(_per_seed(cases, row, "empty_prediction", reduce=np.sum)))
        entry["seconds_per_training"] = float(np.mean([c.get("seconds", math.nan) for c in sel]))
        compared = ref is not None and row != reference
        entry["p_vs_real"] = _paired_p(_per_case(cases, row, "dice"), ref) if compared else math.nan
        for r in regions:
            entry[f"p_vs_real_{r}"] = _paired_p(_per_case(cases, row, f"dice_{r}"), ref_r[r]) if compared else math.nan
            if compared:
                entry[f"seeds_above_real_{r}"] = seeds_above(cases, row, reference, f"dice_{r}")
        if compared:
            for r in regions or ["dice"]:
                metric = f"dice_{r}" if regions else "dice"
                family[(row, r)] = seed_paired(cases, row, reference, metric)
        paper = PAPER_TABLE2.get(re.sub(r"\(x\d+\)", "(x5)", row), (None, None))
        entry["paper_dice"], entry["paper_iou"] = paper
        out.append(entry)
    adjusted = holm({r["row"]: r["p_vs_real"] for r in out})
    for r in out:
        r["p_holm"] = adjusted[r["row"]]
    for region in regions:
        adjusted = holm({r["row"]: r[f"p_vs_real_{region}"] for r in out})
        for r in out:
            r[f"p_holm_{region}"] = adjusted[r["row"]]
    judged = verdicts(family)
    for r in out:
        for region in regions or ["dice"]:
            v = judged.get((r["row"], region))
            suffix = region if regions else "all"
            for key in ("diff", "lo", "hi", "p_seeds", "p_holm", "p_rank", "seed_spread"):
                name = {"diff": f"diff_{suffix}", "lo": f"ci95_low_{suffix}", "hi": f"ci95_high_{suffix}",
                        "p_seeds": f"p_seeds_raw_{suffix}", "p_holm": f"p_seeds_{suffix}",
                        "p_rank": f"p_rank_raw_{suffix}", "seed_spread": f"seed_spread_{suffix}"}[key]
                r[name] = v[key] if v else math.nan
            r[f"verdict_{suffix}"] = v["verdict"] if v else ""
            if v and not regions:           # the regions have their count (seeds_above); the whole tumour alone not
                r["seeds_above_real_all"] = v["seeds_above"]
    return out


# -- the training run as the unit ----------------------------------------------------------

#: verdict words of ``seed_paired``
GAIN, LOSS, NO_EFFECT = "gain", "loss", "no detectable effect"


def paired_differences(cases, row, reference, metric) -> dict:
    """``{seed: (case_ids, row - reference)}`` over the seeds both rows were trained with and
    the test cases both scored (NaN pairs dropped): the unit is the (seed, case) pair of
    two trainings that share their seed."""
    mine, theirs = {}, {}
    for c in cases:
        if c["row"] in (row, reference):
            (mine if c["row"] == row else theirs)[(c["seed"], c["case_id"])] = float(c[metric])
    out = {}
    for seed in sorted({s for s, _ in mine} & {s for s, _ in theirs}):
        ids = sorted(k for s, k in mine if s == seed and (s, k) in theirs)
        d = np.array([mine[(seed, k)] - theirs[(seed, k)] for k in ids])
        keep = ~np.isnan(d)
        if keep.any():
            out[seed] = ([k for k, ok in zip(ids, keep) if ok], d[keep])
    return out


def hierarchical_bootstrap(per_seed: list[np.ndarray], n_boot: int = 2000, seed: int = 0,
                           level: float = 0.95) -> tuple[float, float]:
    """A ``level`` percentile interval for the mean over seeds of the per-seed mean of
    ``per_seed`` (one array of case-level values per training seed): each replicate draws
    the seeds with replacement, then the cases within each drawn seed with replacement, so
    both the run-to-run and the case-to-case variance are in the interval."""
    rng = np.random.default_rng(seed)
    k = len(per_seed)
    if k == 0:
        return math.nan, math.nan
    stats = np.empty(n_boot)
    sizes = {len(d) for d in per_seed}
    if len(sizes) == 1:     # every seed scored the same cases: one draw per replicate, the same random stream
        m, values = sizes.pop(), np.stack([np.asarray(d, dtype=float) for d in per_seed])
        for b in range(n_boot):
            picks = rng.integers(0, k, k)
            stats[b] = values[picks[:, None], rng.integers(0, m, k * m).reshape(k, m)].mean(axis=1).mean()
    else:
        for b in range(n_boot):
            picks = rng.integers(0, k, k)
            stats[b] = np.mean([per_seed[i][rng.integers(0, len(per_seed[i]), len(per_seed[i]))].mean()
                                for i in picks])
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


#: the tests over the per-seed differences ``seed_paired`` can decide with
SEED_TESTS = ("t", "signed-rank")


def seed_test(means, test: str = "t") -> float:
    """Two-sided p of "the mean per-seed difference is 0" over ``means`` (one difference
    per training seed). ``"t"``: the one-sample t-test (scipy's ``ttest_1samp``); its p
    falls as the effect grows against the seeds' scatter. ``"signed-rank"``: Wilcoxon's
    exact test, whose p cannot go below 2 / 2^k with k seeds however large the effect
    (0.002 at 10 seeds). 1.0 with fewer than 2 seeds or every difference 0; 0.0 for a
    t-test over identical non-zero differences (no scatter beyond rounding)."""
    from scipy.stats import ttest_1samp, wilcoxon

    if test not in SEED_TESTS:
        raise ValueError(f"test must be one of {SEED_TESTS}, got {test!r}")
    means = np.asarray(means, dtype=float)
    if len(means) < 2 or not np.any(means != 0):
        return 1.0
    if test == "signed-rank":
        return float(wilcoxon(means).pvalue)
    if np.ptp(means) <= 1e-9 * np.abs(means).max():    # no scatter beyond rounding: t is unbounded
        return 0.0
    return float(ttest_1samp(means, 0.0).pvalue)


def seed_verdict(diff: float, lo: float, hi: float, spread: float, seeds: int) -> str:
    """The verdict before any Holm: ``"gain"`` or ``"loss"`` when there are at least 2 seeds,
    the 95% interval ``lo``..``hi`` excludes 0 and ``|diff|`` reaches the real-only seed
    ``spread`` (NaN: none known), else ``"no detectable effect"``."""
    detected = (lo > 0 or hi < 0) and (math.isnan(spread) or abs(diff) >= spread) and seeds > 1
    return (GAIN if diff > 0 else LOSS) if detected else NO_EFFECT


def seed_paired(cases, row, reference, metric, n_boot: int = 2000, seed: int = 0, test: str = "t") -> dict:
    """``row`` against ``reference`` with the training run as the unit.

    Per training seed, the mean over test cases of ``row - reference`` (both trained with
    that seed). Returns ``diff`` (their mean over seeds), ``lo``/``hi`` (the 95%
    ``hierarchical_bootstrap`` interval), ``p_seeds`` (``seed_test`` over the per-seed
    differences with ``test``, by default the t-test: the decision test) and ``p_rank``
    (the exact signed-rank test over the same differences, a secondary column whose floor
    is 2 / 2^seeds), ``seed_spread`` (the std over seeds of ``reference``'s per-seed mean:
    the run-to-run noise of the baseline), ``seeds`` and ``seeds_above`` (seeds where the
    difference is positive), and ``verdict``: ``"gain"`` or ``"loss"`` only when the
    interval excludes 0 and the effect is at least the seed spread, else ``"no detectable
    effect"`` (the p value is adjusted over a family later, ``holm``, and can demote a
    verdict there: ``verdicts``)."""
    paired = paired_differences(cases, row, reference, metric)
    per_seed = [d for _, d in paired.values()]
    if not per_seed:
        return {"diff": math.nan, "lo": math.nan, "hi": math.nan, "p_seeds": math.nan, "p_rank": math.nan,
                "seed_spread": math.nan, "seeds": 0, "seeds_above": 0, "verdict": NO_EFFECT}
    means = np.array([d.mean() for d in per_seed])
    lo, hi = hierarchical_bootstrap(per_seed, n_boot, seed)
    ref_means = [v for s, v in _by_seed(cases, reference, metric, reduce=np.nanmean).items() if s in paired]
    spread = float(np.std(ref_means, ddof=1)) if len(ref_means) > 1 else math.nan
    diff = float(means.mean())
    return {"diff": diff, "lo": lo, "hi": hi, "p_seeds": seed_test(means, test),
            "p_rank": seed_test(means, "signed-rank"), "seed_spread": spread, "seeds": int(len(means)),
            "seeds_above": int((means > 0).sum()), "verdict": seed_verdict(diff, lo, hi, spread, len(means))}


def verdicts(comparisons: dict, alpha: float = 0.05) -> dict:
    """``seed_paired`` results of one family (``{name: result}``, e.g. every row x region x
    size a headline states) with ``p_holm`` (Holm over the whole family) added, and a
    ``verdict`` kept only where ``p_holm`` < ``alpha`` as well."""
    adjusted = holm({k: r["p_seeds"] for k, r in comparisons.items()})
    out = {}
    for k, r in comparisons.items():
        r = {**r, "p_holm": adjusted[k]}
        if r["verdict"] != NO_EFFECT and not (r["p_holm"] < alpha):
            r["verdict"] = NO_EFFECT
        out[k] = r
    return out
