"""The paper's claims against this project's measurements at one scale: ``claims`` gives
one row per claim (``claim``, ``measure``, ``paper``, ``sbldm``, ``verdict``, ``why``),
``write_claims`` writes them to ``results/<run>/tables/claims.{csv,md}``; the README's
claims block (``sbldm.report.readme``) and the model card show them.

The verdicts (``VERDICTS``):

- ``reproduced`` / ``refuted``: the measurement agrees with the claim / says the opposite;
- ``partly``: a claim of several parts of which some hold (a ranking with one pair
  reversed is refuted, one with a pair undecided is partly reproduced);
- ``no detectable effect``: a segmentation comparison that the training run, taken as the
  unit, cannot decide (``sbldm.segmentation.statistics.seed_paired``): its 95% interval
  includes 0, the effect is smaller than the seed-to-seed spread, or its t-test p over the
  per-seed differences does not survive Holm over every segmentation comparison of the
  table (the exact signed-rank p is shown beside it);
- ``not tested``: nothing at this scale measures it (or too little to decide), and why.

Segmentation claims are decided from the per-case tables (``table2_cases.csv``,
``scarce_cases.csv``), paired by training seed, whole-tumour Dice (the paper's measure).
Generation claims (Table 1, control) rest on one trained generator per method: they are
decided on the point estimates over the sampled volumes, and the row says so.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

from sbldm import paper
from sbldm.report.bench_rows import paired_sampling, sampling_rows
from sbldm.tables import finite as _num

REPRODUCED, REFUTED, PARTLY, NO_EFFECT, NOT_TESTED = (
    "reproduced", "refuted", "partly", "no detectable effect", "not tested")
VERDICTS = (REPRODUCED, REFUTED, PARTLY, NO_EFFECT, NOT_TESTED)
COLUMNS = ("claim", "measure", "paper", "sbldm", "verdict", "why")

#: control: Spearman (requested against drawn) at or above which a feature is followed,
#: and at or above which it is followed in part
FOLLOWED_RHO, PARTLY_RHO = 0.8, 0.3
#: control: the drawn centre must lie within this share of chance's distance (a random real tumour's)
CENTRE_SHARE = 0.25
#: DDIM's "negligible loss in quality" against DDPM: at most this PSNR (dB) and SSIM below
DDIM_PSNR_LOSS, DDIM_SSIM_LOSS = 0.5, 0.02
#: fewer sampled volumes than this do not decide a Table 1 comparison
MIN_VOLUMES = 10

#: the segmentation comparisons the claims state: name -> (row, reference, sign the paper claims)
SEGMENTATION = {
    "real + SBLDM vs real": ("real + SBLDM", "real", +1),
    "real + SBLDM vs real + 3D-LDM": ("real + SBLDM", "real + 3D-LDM", +1),
    "real + augmentation vs real": ("real + augmentation (x5)", "real", +1),
    "real + SBLDM + augmentation vs real + SBLDM": ("real + SBLDM + augmentation", "real + SBLDM", +1),
    "real + 3D-LSGAN vs real": ("real + 3D-LSGAN", "real", -1),
    "synthetic only: SBLDM vs 3D-LDM": ("synthetic only: SBLDM", "synthetic only: 3D-LDM", +1),
    "synthetic only: 3D-LDM vs 3D-LSGAN": ("synthetic only: 3D-LDM", "synthetic only: 3D-LSGAN", +1),
}
SCARCE = "real + SBLDM vs real, fewest real volumes"
NNUNET = "real + SBLDM vs real, nnU-Net"
SCARCE_NNUNET = "real + SBLDM vs real, fewest real volumes, nnU-Net"


def _csv(path: Path) -> list[dict]:
    return list(csv.DictReader(Path(path).open(newline=""))) if Path(path).is_file() else []


def _row(claim, measure, theirs, ours, verdict, why) -> dict:
    assert verdict in VERDICTS, verdict
    return {"claim": claim, "measure": measure, "paper": theirs, "sbldm": ours, "verdict": verdict, "why": why}


def _untested(claim, measure, theirs, why) -> dict:
    return _row(claim, measure, theirs, "—", NOT_TESTED, why)


# -- generation: Table 1 --------------------------------------------------------------------



def speed_reason(scale: str | None, bench_dir: Path | None) -> str:
    """Why SBLDM samples as fast as it does at ``scale``, from what was measured: the sampling
    benchmark of that scale on this CPU (``<scale>_cpu-*_fp32.json``: DDIM-50's denoising and
    decoding seconds per volume) and the two latents the scale's preset denoises; '' when
    ``scale`` is not a preset's name (a run folder with overrides or other data, which
    neither describes)."""
    from sbldm.config import SCALES, resolve

    if scale not in SCALES:
        return ""
    parts = []
    files = sorted(Path(bench_dir).glob(f"{scale}_cpu-*_fp32.json")) if bench_dir else []
    bench = json.loads(files[0].read_text()) if files else {}
    rows = sampling_rows(bench, dtype="fp32")
    if rows:
        r = rows[0]
        parts.append(f"SBLDM's sampling benchmark at this scale ({bench.get('device', '?')}, fp32) spends "
                     f"{float(r['denoise_s_per_volume']):.3g} s per volume in the 50 denoising steps and "
                     f"{float(r['decode_s_per_volume']):.2g} s decoding")
    cfg = resolve(scale)
    f = int(cfg.ldm3d_ae_downsampling)
    ldm = (int(cfg.ldm3d_ae_latent_channels), *(int(v) // f for v in cfg.volume_shape))
    parts.append(f"SBLDM's latent keeps every slice ({'x'.join(map(str, cfg.latent_shape))} against the "
                 f"3D-LDM's {'x'.join(map(str, ldm))})")
    return "; ".join(parts)


#: sampling times within this factor of each other count as equal (one timed call each)
SPEED_TIE = 1.1


def paper_size_speed(bench: dict | None) -> tuple[float, float, str] | None:
    """(SBLDM's, the 3D-LDM's DDIM-50 seconds per volume, where) at the paper's sizes from
    the ``paper`` benchmark (``_bench``: untrained networks of the paper preset, fp32), or
    None when it did not time the 3D-LDM."""
    if not bench:
        return None
    pairs = [p for p in paired_sampling(bench, "fp32") if p[1]["steps"] == 50]
    if not pairs:
        return None
    sbldm, ldm = pairs[0]
    return float(sbldm["total_s_per_volume"]), float(ldm["total_s_per_volume"]), bench.get("device", "?")


def table1_claims(t1: dict[str, dict], tables: dict[str, dict[str, dict]], real_psnr: float | None,
                  speed: str = "", paper_speed: tuple[float, float, str] | None = None) -> list[dict]:
    """PSNR, SSIM, sampling time and parameters (Table 1): SBLDM-DDIM against the two
    baselines at this scale; parameters from the ``paper`` preset's networks when the
    parameter tables count them."""
    out = []
    base = [m for m in ("3D-LDM", "3D-LSGAN") if m in t1]
    theirs_rank = {col: f"DDIM {paper.TABLE1['SBLDM (DDIM)'][i]:{fmt}}, DDPM {paper.TABLE1['SBLDM (DDPM)'][i]:{fmt}} vs "
                   + ", ".join(f"{m} {paper.TABLE1[m][i]:{fmt}}" for m in ("3D-LDM", "3D-LSGAN"))
                   for col, i, fmt in (("psnr", 0, ".2f"), ("ssim", 1, ".3f"))}
    for col, word in (("psnr", "PSNR"), ("ssim", "SSIM")):
        claim = f"SBLDM has a higher {word} than the 3D-LDM and the 3D-LSGAN (Table 1)"
        if "SBLDM (DDIM)" not in t1 or not base:
            out.append(_untested(claim, word, theirs_rank[col], "Table 1 (notebook 04) not produced yet"))
            continue
        ours = float(t1["SBLDM (DDIM)"][col])
        above = [m for m in base if ours > float(t1[m][col])]
        below = [m for m in base if m not in above]
        cells = f"DDIM {ours:.3g} vs " + ", ".join(f"{m} {float(t1[m][col]):.3g}" for m in base)
        why = ([f"below the {', the '.join(below)}" + (f", above the {', the '.join(above)}" if above else "")]
               if below else []) + [f"one trained generator per method, {int(float(t1['SBLDM (DDIM)'].get('n_samples') or 0))} volumes "
               "each, unpaired against the training split"]
        ddpm = t1.get("SBLDM (DDPM)")
        if ddpm is not None:
            why.append(f"DDPM {float(ddpm[col]):.3g} from {int(float(ddpm.get('n_samples') or 0))} volumes")
        if col == "psnr" and real_psnr is not None:
            why.append(f"unpaired PSNR rewards closeness to the average volume: the real test split scores "
                       f"{real_psnr:.2f}")
        out.append(_row(claim, word, theirs_rank[col], cells, REFUTED if below else REPRODUCED, "; ".join(why)))
    claim = "SBLDM (DDIM) samples a volume faster than the 3D-LDM (Table 1)"
    theirs = f"{paper.TABLE1['SBLDM (DDIM)'][3]:.3g} s vs {paper.TABLE1['3D-LDM'][3]:.3g} s"
    if "SBLDM (DDIM)" in t1 and "3D-LDM" in t1:
        a, b = float(t1["SBLDM (DDIM)"]["time_s_per_volume"]), float(t1["3D-LDM"]["time_s_per_volume"])
        device = t1["SBLDM (DDIM)"].get("device", "?")
        verdict = REPRODUCED if a < b else REFUTED
        why = f"{device}, the scale's networks" + (f"; {speed}" if speed else "")
        if paper_speed is not None:
            pa, pb, where = paper_speed
            ratio = pb / pa
            why += (f"; at the paper's sizes ({where}, untrained networks, fp32): SBLDM {pa:.3g} s vs the 3D-LDM "
                    f"{pb:.3g} s per volume")
            if abs(math.log(ratio)) < math.log(SPEED_TIE):
                fold = paper.TABLE1["3D-LDM"][3] / paper.TABLE1["SBLDM (DDIM)"][3]
                why += f" (within {SPEED_TIE - 1:.0%}: as fast as each other there, not {fold:.1f}x)"
            elif (ratio > 1) != (a < b):             # the two sizes disagree: the claim holds at one of them
                verdict = PARTLY
        out.append(_row(claim, "s / volume", theirs, f"{a:.3g} s vs {b:.3g} s", verdict, why))
    else:
        out.append(_untested(claim, "s / volume", theirs, "Table 1 (notebook 04) not produced yet"))
    out.append(_parameters_claim(t1, tables))
    return out


def _parameters_claim(t1: dict[str, dict], tables: dict) -> dict:
    claim = "SBLDM has fewer parameters than the 3D-LDM (Table 1)"
    theirs = f"{paper.TABLE1['SBLDM (DDIM)'][2] / 1e6:.0f}M vs {paper.TABLE1['3D-LDM'][2] / 1e6:.0f}M"
    sb = next((r for r in tables.get("parameters", []) if r["scale"] == "paper"
               and r["component"].startswith("total as Table 1 counts")), None)
    ldm = next((r for r in tables.get("baseline_parameters", []) if r["scale"] == "paper"
                and r["method"] == "3D-LDM, as Table 1 counted" and r["component"].startswith("total")), None)
    scale_note = ""
    if "SBLDM (DDIM)" in t1 and "3D-LDM" in t1:
        scale_note = (f"; this scale's presets: {float(t1['SBLDM (DDIM)']['params_M']):.2f}M vs "
                      f"{float(t1['3D-LDM']['params_M']):.2f}M")
    if sb is None or ldm is None:
        return _untested(claim, "parameters", theirs, "the parameter tables (notebooks 02, 03) not produced yet")
    a, b = float(sb["params_M"]), float(ldm["params_M"])
    return _row(claim, "parameters", theirs, f"{a:.0f}M vs {b:.0f}M", REPRODUCED if a < b else REFUTED,
                "counted from the `paper` preset's networks, each as Table 1 counts it" + scale_note)


def memory_claim(bench: dict | None) -> dict:
    """Training memory: SBLDM's largest training stage against the 3D-LDM's and a pixel-space
    3D DDPM's, from the ``paper``-scale benchmark (``results/bench``)."""
    claim = "SBLDM needs less training memory than a pixel-space 3D DDPM and the 3D-LDM (Sections 1, 4)"
    theirs = "no number (the pixel DDPM was left out for memory)"
    if not bench:
        return _untested(claim, "peak training memory", theirs, "no `paper`-scale benchmark (make bench / gpu-check)")
    peak = {r["component"]: r for r in bench.get("training", [])}
    need = ("slice_vae", "sbldm_unet", "ldm3d_autoencoder", "ldm3d_unet", "pixel_ddpm_unet")
    if any(k not in peak or _num(peak[k].get("peak_memory_MiB")) is None for k in need):
        return _untested(claim, "peak training memory", theirs, "the benchmark lacks a training stage")
    gib = {k: float(peak[k]["peak_memory_MiB"]) / 1024 for k in need}
    sbldm = max(gib["slice_vae"], gib["sbldm_unet"])
    ldm = max(gib["ldm3d_autoencoder"], gib["ldm3d_unet"])
    pixel = gib["pixel_ddpm_unet"]
    extrapolated = [k for k in need if str(peak[k].get("measured")).lower() == "false"]
    verdict = REPRODUCED if sbldm < ldm and sbldm < pixel else PARTLY if sbldm < max(ldm, pixel) else REFUTED
    return _row(claim, "peak training memory (GiB)", theirs,
                f"SBLDM {sbldm:.1f} vs 3D-LDM {ldm:.1f}, pixel DDPM {pixel:.1f}", verdict,
                f"the largest training stage of each at 192x192x96 (slice VAE: 32 slices; 3D networks: batch 1), "
                f"{bench.get('device', '?')}, {peak['sbldm_unet'].get('memory_kind', '')}"
                + (f"; extrapolated from smaller grids: {', '.join(extrapolated)}" if extrapolated else "")
                + "; not measured on a GPU")


def loss_interval(worse: dict, better: dict, col: str) -> tuple[float, float, float]:
    """``better``'s mean of ``col`` minus ``worse``'s (how much ``worse`` loses), with its 95%
    Welch interval from the two rows' per-volume std and counts (``<col>_std``,
    ``n_samples``): (loss, low, high); the interval is NaN without a std or with fewer than
    2 volumes on a side."""
    import math

    from scipy import stats

    m1, m2 = float(worse[col]), float(better[col])
    n1, n2 = int(float(worse.get("n_samples") or 0)), int(float(better.get("n_samples") or 0))
    s1, s2 = _num(worse.get(f"{col}_std")), _num(better.get(f"{col}_std"))
    loss = m2 - m1
    if min(n1, n2) < 2 or s1 is None or s2 is None:
        return loss, math.nan, math.nan
    v1, v2 = s1 ** 2 / n1, s2 ** 2 / n2
    se = math.sqrt(v1 + v2)
    if se == 0:
        return loss, loss, loss
    df = (v1 + v2) ** 2 / (v1 ** 2 / (n1 - 1) + v2 ** 2 / (n2 - 1))
    half = float(stats.t.ppf(0.975, df)) * se
    return loss, loss - half, loss + half


def paired_loss_interval(volumes: list[dict], worse: str, better: str, col: str) -> tuple[float, float, float, int]:
    """``better``'s minus ``worse``'s ``col`` volume by volume (``table1_volumes`` rows: volume
    k of both answers the same request from the same noise against the same real volume),
    over the volumes both have: (mean loss, 95% t-interval low, high, pairs); NaN bounds
    with fewer than 2 pairs."""
    import math

    from scipy import stats

    a = {int(float(r["volume"])): _num(r.get(col)) for r in volumes if r.get("method") == worse}
    b = {int(float(r["volume"])): _num(r.get(col)) for r in volumes if r.get("method") == better}
    d = [b[k] - a[k] for k in sorted(set(a) & set(b)) if a[k] is not None and b[k] is not None]
    if not d:
        return math.nan, math.nan, math.nan, 0
    mean = sum(d) / len(d)
    if len(d) < 2:
        return mean, math.nan, math.nan, len(d)
    sd = (sum((x - mean) ** 2 for x in d) / (len(d) - 1)) ** 0.5
    half = float(stats.t.ppf(0.975, len(d) - 1)) * sd / len(d) ** 0.5
    return mean, mean - half, mean + half, len(d)


def ddim_claim(t1: dict[str, dict], volumes: list[dict] | None = None) -> dict:
    """DDIM's loss against DDPM per column with its 95% interval: reproduced when both
    intervals stay below the negligible margins, refuted when either lies wholly above its
    margin, and undecided (not tested, with the reason) when an interval spans its margin.
    With Table 1's per-volume rows (``volumes``) the interval pairs the volumes (same
    request, noise and real partner), else it is Welch's over the two sets."""
    claim = "DDIM (50 steps) loses only negligible quality against DDPM (Table 1)"
    theirs = (f"PSNR {paper.TABLE1['SBLDM (DDIM)'][0]:.2f} vs {paper.TABLE1['SBLDM (DDPM)'][0]:.2f}, SSIM "
              f"{paper.TABLE1['SBLDM (DDIM)'][1]:.3f} vs {paper.TABLE1['SBLDM (DDPM)'][1]:.3f}")
    if "SBLDM (DDIM)" not in t1 or "SBLDM (DDPM)" not in t1:
        return _untested(claim, "PSNR, SSIM", theirs, "Table 1 has no DDPM row")
    ddim, ddpm = t1["SBLDM (DDIM)"], t1["SBLDM (DDPM)"]
    n = min(int(float(ddim.get("n_samples") or 0)), int(float(ddpm.get("n_samples") or 0)))
    cells = (f"PSNR {float(ddim['psnr']):.2f} vs {float(ddpm['psnr']):.2f}, SSIM {float(ddim['ssim']):.3f} vs "
             f"{float(ddpm['ssim']):.3f} ({int(float(ddpm.get('n_samples') or 0))} DDPM volumes)")
    if n < MIN_VOLUMES:
        return _row(claim, "PSNR, SSIM", theirs, cells, NOT_TESTED,
                    f"{n} DDPM volumes ({float(ddpm['time_s_per_volume']):.0f} s each on this hardware) cannot "
                    f"decide it; at least {MIN_VOLUMES} are needed")
    margins = {"psnr": DDIM_PSNR_LOSS, "ssim": DDIM_SSIM_LOSS}
    paired = {col: paired_loss_interval(volumes or [], "SBLDM (DDIM)", "SBLDM (DDPM)", col) for col in margins}
    if all(v[3] >= MIN_VOLUMES for v in paired.values()):
        found, how = {col: v[:3] for col, v in paired.items()}, f"paired volume by volume ({paired['psnr'][3]} pairs)"
    else:
        found, how = {col: loss_interval(ddim, ddpm, col) for col in margins}, "unpaired (Welch) interval"
    words = "; ".join(f"{col.upper()} loss {v[0]:+.3g} (95% {v[1]:+.3g} to {v[2]:+.3g}, margin {margins[col]})"
                      for col, v in found.items())
    if any(v[1] != v[1] for v in found.values()):           # NaN: no per-volume spread recorded
        return _row(claim, "PSNR, SSIM", theirs, cells, NOT_TESTED,
                    f"Table 1 records no per-volume spread to put an interval on the loss; {n} volumes")
    if all(v[2] <= margins[col] for col, v in found.items()):
        verdict, lead = REPRODUCED, "negligible: both intervals below the margins"
    elif any(v[1] > margins[col] for col, v in found.items()):
        verdict, lead = REFUTED, "a loss above the margin"
    else:
        verdict, lead = NOT_TESTED, "undecided: an interval spans its margin (more DDPM volumes needed)"
    return _row(claim, "PSNR, SSIM", theirs, cells, verdict, f"{lead}; {words}; DDIM and DDPM volumes from the "
                f"same requested conditions, {how}")


# -- generation: control ---------------------------------------------------------------------

def control_claims(adherence: list[dict], budget: list[dict]) -> list[dict]:
    """Size and position control (notebook 04's adherence table) and shape control
    (sphericity and surface area: the adherence table when it has them, else SBLDM's largest
    budget point of the budget curves)."""
    claim = "SBLDM follows the requested tumour size and position (Section 3.4, Fig. 3)"
    theirs = "shown in Fig. 3, no number"
    out = []
    if not adherence:
        out.append(_untested(claim, "Spearman (volume), centre distance", theirs, "notebook 04 not produced yet"))
    else:
        a = adherence[0]
        rho, dist, chance = (float(a["spearman_volume"]), float(a["centre_distance"]),
                             float(a["chance_centre_distance"]))
        size_ok, place_ok = rho >= FOLLOWED_RHO, dist <= CENTRE_SHARE * chance
        verdict = REPRODUCED if size_ok and place_ok else PARTLY if size_ok or place_ok else REFUTED
        out.append(_row(claim, "Spearman (volume), centre distance (voxels)", theirs,
                        f"{rho:.2f}, {dist:.2f} (chance {chance:.1f})", verdict,
                        f"{a.get('n', '?')} requests drawn from the training features, guidance "
                        f"{a.get('guidance_scale', '?')}; followed: Spearman >= {FOLLOWED_RHO} and the centre within "
                        f"{CENTRE_SHARE:g} x chance's distance; relative volume error "
                        f"{float(a['relative_volume_error']):.2f}, empty {float(a['empty_fraction']):.0%}"))
    claim = "SBLDM follows the requested tumour shape: sphericity, surface area (Section 2.3)"
    theirs = "no number"
    source, row = None, None
    if adherence and _num(adherence[0].get("spearman_sphericity")) is not None:
        source, row = "notebook 04's requests", adherence[0]
    else:
        pts = [r for r in budget if r.get("generator") == "sbldm" and _num(r.get("spearman_sphericity")) is not None]
        if pts:
            row = max(pts, key=lambda r: float(r["cpu_hours"]))
            source = f"the budget curves' SBLDM at {row['steps']} UNet steps ({float(row['cpu_hours']):.2f} h)"
    if row is None:
        out.append(_untested(claim, "Spearman (sphericity, surface area)", theirs, "no adherence table with shape"))
        return out
    sph, area = float(row["spearman_sphericity"]), float(row["spearman_surface_area"])
    verdict = REPRODUCED if sph >= FOLLOWED_RHO else PARTLY if sph >= PARTLY_RHO else REFUTED
    out.append(_row(claim, "Spearman (sphericity, surface area)", theirs, f"{sph:.2f}, {area:.2f}", verdict,
                    f"{source}; surface area grows with volume, so sphericity is the shape test; followed: "
                    f">= {FOLLOWED_RHO}, in part: >= {PARTLY_RHO}"))
    return out


# -- segmentation -----------------------------------------------------------------------------

def _metric(cases: list[dict]) -> str:
    return "dice_WT" if cases and "dice_WT" in cases[0] else "dice"


def _check_comparison(check: dict[str, dict]) -> dict | None:
    """The nnU-Net confirmation's real + SBLDM against real only in whole-tumour Dice, as
    ``statistics.seed_paired`` gives it, read back from the summarised check table
    (``table2_nnunet_check.csv``: its seed-paired columns, the unadjusted t-test p); the
    verdict before any Holm is re-derived from the interval and the seed spread. None
    without the two rows or with fewer than 2 seeds."""
    from sbldm.segmentation.statistics import seed_verdict

    row = check.get("real + SBLDM")
    if row is None or "real" not in check or int(float(row.get("seeds") or 0)) < 2:
        return None
    g = "WT" if _num(row.get("diff_WT")) is not None else "all"
    diff, lo, hi = (_num(row.get(f"{k}_{g}")) for k in ("diff", "ci95_low", "ci95_high"))
    p = _num(row.get(f"p_seeds_raw_{g}"))
    if None in (diff, lo, hi, p):
        return None
    spread = _num(row.get(f"seed_spread_{g}"))
    spread = float("nan") if spread is None else spread
    seeds = int(float(row["seeds"]))
    above = row.get(f"seeds_above_real_{g}", "")
    return {"diff": diff, "lo": lo, "hi": hi, "p_seeds": p, "p_rank": _num(row.get(f"p_rank_raw_{g}")),
            "seed_spread": spread, "seeds": seeds, "seeds_above": int(float(above)) if _num(above) is not None else 0,
            "verdict": seed_verdict(diff, lo, hi, spread, seeds)}


def seed_comparisons(cases: list[dict], scarce_cases: list[dict], nnunet_check: dict[str, dict] | None = None,
                     scarce_check: dict[str, dict] | None = None) -> dict:
    """``statistics.seed_paired`` for every comparison of ``SEGMENTATION`` the per-case table
    holds, the scarce one at the sweep's fewest real volumes, and the nnU-Net confirmations
    of real + SBLDM (``_check_comparison``, from their summarised tables: notebook 06's at
    the full split, notebook 11's at the fewest real volumes), with Holm over all of them
    (``statistics.verdicts``)."""
    from sbldm.segmentation.statistics import seed_paired, verdicts

    rows = {c["row"] for c in cases}
    found = {}
    for name, (row, ref, _) in SEGMENTATION.items():
        row = _row_name(row, rows)
        if row in rows and ref in rows:
            found[name] = seed_paired(cases, row, ref, _metric(cases))
    if scarce_cases:
        n = min(int(float(c["n_real"])) for c in scarce_cases)
        at = [c for c in scarce_cases if int(float(c["n_real"])) == n]
        if {"real", "real + SBLDM"} <= {c["row"] for c in at}:
            found[SCARCE] = {**seed_paired(at, "real + SBLDM", "real", _metric(at)), "n_real": n}
    if (check := _check_comparison(nnunet_check or {})) is not None:
        found[NNUNET] = check
    if (check := _check_comparison(scarce_check or {})) is not None:
        found[SCARCE_NNUNET] = check
    return verdicts(found)


def _row_name(row: str, rows) -> str:
    """The table's name of a paper row whose augmentation factor may differ (``(x5)``)."""
    if row in rows:
        return row
    pattern = re.escape(re.sub(r" \(x\d+\)", "", row)) + r" \(x\d+\)"
    return next((r for r in rows if re.fullmatch(pattern, r)), row)


def _seed_verdict(result: dict, sign: int) -> str:
    v = result["verdict"]
    if v == "gain":
        return REPRODUCED if sign > 0 else REFUTED
    if v == "loss":
        return REPRODUCED if sign < 0 else REFUTED
    return NO_EFFECT


def _seed_why(r: dict) -> str:
    base = (f"{r['diff']:+.3f} per seed, 95% {r['lo']:+.3f} to {r['hi']:+.3f}; seed spread {r['seed_spread']:.3f}; "
            f"{r['seeds']} seeds ({r['seeds_above']} above); t-test p {r['p_seeds']:.2g}, Holm {r['p_holm']:.2g}"
            + (f"; signed-rank p {r['p_rank']:.2g}" if _num(r.get("p_rank")) is not None else ""))
    if r["verdict"] not in ("gain", "loss"):
        reasons = []
        if r["seeds"] < 2:
            reasons.append("fewer than 2 seeds")
        if r["lo"] <= 0 <= r["hi"]:
            reasons.append("the interval includes 0")
        if _num(r["seed_spread"]) is not None and abs(r["diff"]) < r["seed_spread"]:
            reasons.append("smaller than the seed spread")
        if not reasons:
            reasons.append("does not survive Holm over the table's comparisons")
        base += "; " + ", ".join(reasons)
    return base


def _against_paper(r: dict, paper_diff: float | None) -> str:
    """Where the paper's own difference falls against this project's 95% interval: a "no
    detectable effect" whose interval lies below the paper's gain rules that gain out at
    this scale, one that holds it is merely too wide to tell. "" without a paper number."""
    if paper_diff is None or not math.isfinite(paper_diff) or not all(
            _num(r.get(k)) is not None and math.isfinite(float(r[k])) for k in ("lo", "hi")):
        return ""
    where = ("above" if paper_diff > r["hi"] else "below" if paper_diff < r["lo"] else "inside")
    return f"; the paper's {paper_diff:+.3f} lies {where} the interval"


def _means(cases: list[dict], row: str) -> float | None:
    import numpy as np

    metric = _metric(cases)
    by_seed: dict = {}
    for c in cases:
        if c["row"] == row and _num(c.get(metric)) is not None:
            by_seed.setdefault(c["seed"], []).append(float(c[metric]))
    return float(np.mean([np.mean(v) for v in by_seed.values()])) if by_seed else None


def lsgan_trained(budget: list[dict]) -> tuple[bool | None, str]:
    """Whether the 3D-LSGAN the claims compare against learnt at all, from its budget
    curve (``generator_budget.csv``: every ``lsgan3d*`` point, the generator checkpoint
    selection kept and the last one): (its best synthetic-only WT Dice reaches
    ``UTILITY_TARGET``, a sentence saying so), or (None, "") without a curve. Beating a
    baseline that did not train is not a result, so a claim against it is then not tested."""
    from sbldm.experiments.generator_budget import UTILITY_TARGET

    rows = [r for r in budget if str(r.get("generator", "")).startswith("lsgan3d")
            and _num(r.get("synthetic_only_dice_WT")) is not None]
    if not rows:
        return None, ""
    best = max(rows, key=lambda r: _num(r["synthetic_only_dice_WT"]))
    dice, ok = _num(best["synthetic_only_dice_WT"]), _num(best["synthetic_only_dice_WT"]) >= UTILITY_TARGET
    steps = sorted({int(_num(r["steps"])) for r in rows})
    kept = "the last generator" if best["generator"] != "lsgan3d" else "the generator selection kept"
    text = (f"its budget curve ({len(rows)} points, {steps[0]}-{steps[-1]} steps) gives at best a synthetic-only "
            f"WT Dice of {dice:.3f} ({kept} at {int(_num(best['steps']))} steps), "
            f"{'at or above' if ok else 'below'} the {UTILITY_TARGET} a trained baseline reaches (the paper's "
            f"{paper.TABLE2['synthetic only: 3D-LSGAN'][0]:.3f})")
    same = [v for v in (_num(r.get("ms_ssim_pairwise")) for r in rows) if v is not None]
    real = next((_num(r.get("ms_ssim_pairwise")) for r in budget if r.get("generator") == "real"), None)
    if same and real is not None and min(same) > real:
        text += (f"; its volumes are closer to one another than real ones are (pairwise MS-SSIM {min(same):.2f}-"
                 f"{max(same):.2f}, real {real:.2f}): it collapses onto a few outputs")
    return ok, text


def segmentation_claims(cases: list[dict], scarce_cases: list[dict], nnunet_check: dict[str, dict],
                        sweep_counts: list[dict], lsgan: tuple[bool | None, str] = (None, ""),
                        scarce_check: dict[str, dict] | None = None) -> list[dict]:
    """The segmentation claims; ``lsgan``: ``lsgan_trained``'s verdict on the 3D-LSGAN, which
    turns the claims against it into "not tested" when it did not train; ``scarce_check``:
    notebook 11's nnU-Net confirmation at the fewest real volumes, which the data-scarce
    claim quotes (and which makes a fast-backend gain it does not confirm "partly")."""
    comp = seed_comparisons(cases, scarce_cases, nnunet_check, scarce_check)
    rows_in = {c["row"] for c in cases}
    out = []
    measure = "Dice (WT), per training seed"

    def paper_cells(row, ref):
        return f"{paper.TABLE2[row][0]:.3f} vs {paper.TABLE2[ref][0]:.3f}"

    def paper_diff(row, ref):
        return paper.TABLE2[row][0] - paper.TABLE2[ref][0]

    def ours(row, ref, at=None):
        src = at if at is not None else cases
        a, b = _means(src, _row_name(row, rows_in)), _means(src, ref)
        return "—" if a is None or b is None else f"{a:.3f} vs {b:.3f}"

    def one(claim, name, paper_key=None, paper_ref=None):
        row, ref, sign = SEGMENTATION[name]
        theirs = paper_cells(paper_key or row, paper_ref or ref)
        if name not in comp:
            return _untested(claim, measure, theirs, "Table 2 (notebook 06) has not trained these rows")
        gap = _against_paper(comp[name], paper_diff(paper_key or row, paper_ref or ref))
        return _row(claim, measure, theirs, ours(row, ref), _seed_verdict(comp[name], sign),
                    _seed_why(comp[name]) + gap)

    out.append(one("real + SBLDM beats real only (Table 2)", "real + SBLDM vs real"))
    out.append(one("real + SBLDM beats real + the 3D-LDM (Table 2)", "real + SBLDM vs real + 3D-LDM"))
    out.append(one("augmentation (x5) beats real only (Table 2)", "real + augmentation vs real"))
    out.append(one("real + SBLDM + augmentation beats real + SBLDM (Table 2)",
                   "real + SBLDM + augmentation vs real + SBLDM"))
    untrained = lsgan[0] is False
    lsgan_claim = one("real + 3D-LSGAN is worse than real only (Table 2)", "real + 3D-LSGAN vs real")
    if untrained and lsgan_claim["verdict"] != NOT_TESTED:
        lsgan_claim = {**lsgan_claim, "verdict": NOT_TESTED,
                       "why": f"the 3D-LSGAN did not learn at this scale: {lsgan[1]}; measured: {lsgan_claim['why']}"}
    out.append(lsgan_claim)
    # the synthetic-only ranking: two pairs
    claim = "synthetic only: SBLDM > 3D-LDM > 3D-LSGAN (Table 2)"
    theirs = " > ".join(f"{paper.TABLE2[f'synthetic only: {m}'][0]:.3f}" for m in ("SBLDM", "3D-LDM", "3D-LSGAN"))
    pairs = ["synthetic only: SBLDM vs 3D-LDM", "synthetic only: 3D-LDM vs 3D-LSGAN"]
    if all(p in comp for p in pairs):
        vs = [_seed_verdict(comp[p], +1) for p in pairs]
        verdict = (REFUTED if REFUTED in vs else REPRODUCED if all(v == REPRODUCED for v in vs)
                   else PARTLY if REPRODUCED in vs else NO_EFFECT)
        ranked = ("SBLDM", "3D-LDM", "3D-LSGAN")
        why = "; ".join(f"{p.split(': ')[1]}: {_seed_why(comp[p])}"
                        + _against_paper(comp[p], paper_diff(f"synthetic only: {ranked[i]}",
                                                             f"synthetic only: {ranked[i + 1]}"))
                        for i, p in enumerate(pairs))
        if untrained:               # only SBLDM against the 3D-LDM can decide; the LSGAN's third place is untested
            verdict = {REPRODUCED: PARTLY, NO_EFFECT: NO_EFFECT, REFUTED: REFUTED}[vs[0]]
            why = f"the 3D-LSGAN's place is not tested, it did not learn at this scale: {lsgan[1]}; measured: {why}"
        means = [_means(cases, f"synthetic only: {m}") for m in ("SBLDM", "3D-LDM", "3D-LSGAN")]
        out.append(_row(claim, measure, theirs, " > ".join(f"{m:.3f}" for m in means), verdict, why))
    else:
        out.append(_untested(claim, measure, theirs, "Table 2 (notebook 06) has not trained these rows"))
    out.append(_nnunet_claim(nnunet_check, comp.get(NNUNET)))
    claim = "synthetic volumes help when real volumes are scarce (the title)"
    if SCARCE in comp:
        r = comp[SCARCE]
        at = [c for c in scarce_cases if int(float(c["n_real"])) == r["n_real"]]
        verdict, why = _seed_verdict(r, +1), _seed_why(r)
        if (check := comp.get(SCARCE_NNUNET)) is not None:
            why += f"; nnU-Net at {r['n_real']} real volumes, {check['seeds']} seeds: {_seed_why(check)}"
            verdict, said = _two_segmenters(verdict, _seed_verdict(check, +1))
            why += said
        out.append(_row(f"{claim}: real + SBLDM beats real only at {r['n_real']} real volumes", measure,
                        "no number in its tables", ours("real + SBLDM", "real", at), verdict, why))
    else:
        out.append(_untested(claim, measure, "no number in its tables", "the data-scarce sweep (notebook 11) not run"))
    out.append(plateau_claim(sweep_counts))
    return out


def _two_segmenters(fast: str, nnunet: str) -> tuple[str, str]:
    """One verdict on a claim that "synthetic volumes help" from the fast segmenter's and
    nnU-Net's (the paper's segmenter), and the words that say how they were combined: a gain
    the other does not confirm is only partly reproduced; a loss that the other does not
    contradict refutes the claim; a gain against a loss is partly reproduced."""
    if fast == nnunet:
        return fast, ""
    if REPRODUCED in (fast, nnunet):
        if REFUTED in (fast, nnunet):
            return PARTLY, "; the two segmenters disagree: one gains, the other loses"
        return PARTLY, ("; nnU-Net does not confirm the fast segmenter's gain" if fast == REPRODUCED
                        else "; nnU-Net finds a gain the fast segmenter does not")
    if REFUTED in (fast, nnunet):
        return REFUTED, ("; nnU-Net does not confirm the fast segmenter's loss" if fast == REFUTED
                         else "; nnU-Net, the paper's segmenter, finds a loss the fast segmenter does not")
    return fast, ""


def _nnunet_claim(check: dict[str, dict], judged: dict | None = None) -> dict:
    claim = "real + SBLDM beats real only, with nnU-Net as in the paper (Table 2)"
    theirs = f"{paper.TABLE2['real + SBLDM'][0]:.3f} vs {paper.TABLE2['real'][0]:.3f}"
    if "real" not in check or "real + SBLDM" not in check:
        return _untested(claim, "Dice (WT)", theirs, "the nnU-Net check (notebook 06) not run")
    a, b = check["real + SBLDM"], check["real"]
    dice = [_num(x.get("dice_WT_mean", x.get("dice_mean"))) for x in (a, b)]
    seeds = int(float(a.get("seeds") or 0))
    cells = f"{dice[0]:.3f} vs {dice[1]:.3f}" if None not in dice else "—"
    if seeds < 2:
        return _row(claim, "Dice (WT)", theirs, cells + f" ({seeds} seed)", NOT_TESTED,
                    f"{seeds} training seed: the training run cannot be the unit (at least 3 are needed)")
    if judged is None:
        return _row(claim, "Dice (WT)", theirs, cells, NOT_TESTED,
                    f"{seeds} seeds without seed-paired columns: no interval to decide on")
    gap = _against_paper(judged, paper.TABLE2["real + SBLDM"][0] - paper.TABLE2["real"][0])
    return _row(claim, "Dice (WT), per training seed", theirs, cells, _seed_verdict(judged, +1),
                f"nnU-Net, {seeds} seeds: {_seed_why(judged)}{gap}")


def plateau_claim(sweep_counts: list[dict]) -> dict:
    """The paper's plateau, from notebook 11's synthetic-count sweep at its largest real-set
    size: reproduced when 100 synthetic volumes gain over real only and no larger count
    gains over 100 (seed-paired, ``vs_100_verdict_WT``: no detected gain, which is not a
    shown equivalence, and the why says so); refuted when a larger count gains over 100;
    partly when one loses against 100 (no further gain, but a fall, not a plateau); not
    tested when the comparisons with 100 are missing."""
    claim = "beyond 100 synthetic volumes the Dice gain plateaus (Section 3.5)"
    measure = "Dice (WT) against synthetic count, per training seed"
    if not sweep_counts:
        return _untested(claim, measure, "no number (stated)",
                         "the synthetic-count sweep (0 to 400 synthetic volumes) has not run")
    n = max(int(float(r["n_real"])) for r in sweep_counts)
    at = {int(float(r["synthetic_volumes"])): r for r in sweep_counts if int(float(r["n_real"])) == n}
    region = "WT" if any("dice_WT" in r for r in at.values()) else "all"
    dice = "dice_WT" if region == "WT" else "dice"
    more = sorted(k for k in at if k > 100)
    if 100 not in at or not more:
        return _untested(claim, measure, "no number (stated)", f"the sweep at {n} real volumes has no 100 and no "
                         "larger count to compare")
    cells = ", ".join(f"{k}: {float(at[k][dice]):.3f}" for k in sorted(at))
    beyond = {k: at[k].get(f"vs_100_verdict_{region}") or "" for k in more}
    if not all(beyond.values()):
        return _untested(claim, measure, "no number (stated)",
                         f"the sweep at {n} real volumes carries no comparison of "
                         + ", ".join(str(k) for k, v in beyond.items() if not v) + " with 100")
    gain100 = at[100].get(f"verdict_{region}") == "gain"
    why = (f"{n} real volumes; 100 against real only: {at[100].get(f'verdict_{region}') or 'untested'}; "
           + "; ".join(f"{k} against 100: {v} ({float(at[k].get(f'vs_100_diff_{region}') or 'nan'):+.3f})"
                       for k, v in beyond.items())
           + " (seed-paired, Holm over the sweep's comparisons with 100)")
    if any(v == "gain" for v in beyond.values()):
        verdict = REFUTED
    elif not gain100:
        verdict = NO_EFFECT
        why += "; no gain at 100 to plateau from"
    elif any(v == "loss" for v in beyond.values()):
        verdict = PARTLY
        why += "; no further gain beyond 100, but a fall rather than a plateau"
    else:
        verdict = REPRODUCED
        why += "; no gain beyond 100 detected, which is not a shown equivalence"
    return _row(claim, measure, "no number (stated)", cells, verdict, why)


# -- the table ----------------------------------------------------------------------------------

def _bench(bench_dir: Path) -> dict | None:
    """The ``paper``-scale training benchmark on this project's reference CPU (the plain
    fp32 run), or None."""
    files = sorted(Path(bench_dir).glob("paper_*_fp32.json"))
    return json.loads(files[0].read_text()) if files else None


def claims(results_dir: str | Path, bench_dir: str | Path | None = None) -> list[dict]:
    """One row per claim of the paper (``COLUMNS``), decided from ``results_dir/tables`` and
    the benchmark in ``bench_dir`` (default: ``results/bench`` beside ``results_dir``)."""
    d = Path(results_dir)
    t = d / "tables"
    bench_dir = Path(bench_dir) if bench_dir is not None else d.parent / "bench"
    t1 = {r["method"]: r for r in _csv(t / "table1.csv")}
    budget = _csv(t / "generator_budget.csv")
    real_psnr = next((_num(r.get("psnr")) for r in budget if r.get("generator") == "real"), None)
    tables = {"parameters": _csv(t / "parameters.csv"), "baseline_parameters": _csv(t / "baseline_parameters.csv")}
    # the scale's own benchmark and latents describe the plain preset run only (results/<scale>)
    scale = d.name
    return (table1_claims(t1, tables, real_psnr, speed_reason(scale, bench_dir), paper_size_speed(_bench(bench_dir)))
            + [ddim_claim(t1, _csv(t / "table1_volumes.csv")), memory_claim(_bench(bench_dir))]
            + control_claims(_csv(t / "conditioning_adherence.csv"), budget)
            + segmentation_claims(_csv(t / "table2_cases.csv"), _csv(t / "scarce_cases.csv"),
                                  {r["row"]: r for r in _csv(t / "table2_nnunet_check.csv")},
                                  _csv(t / "synthetic_count_sweep.csv"), lsgan_trained(budget),
                                  {r["row"]: r for r in _csv(t / "scarce_nnunet_check.csv")}))


def write_claims(results_dir: str | Path, scale: str, bench_dir: str | Path | None = None) -> list[dict]:
    """``claims`` written to ``results_dir/tables/claims.{csv,md}``; returns the rows."""
    from sbldm.tables import write_table

    rows = claims(results_dir, bench_dir)
    write_table(rows, Path(results_dir) / "tables" / "claims", columns=COLUMNS, title=TITLE.format(scale=scale),
                notes=NOTES)
    return rows


TITLE = "The paper's claims at `{scale}`"
NOTES = ["verdicts: reproduced, refuted, partly, no detectable effect (the training run as the unit cannot decide "
         "it), not tested (and why); `python -m sbldm.report.claims` writes this table",
         "segmentation: whole-tumour Dice per training seed, paired by seed, 95% hierarchical bootstrap interval "
         "(seeds, then test cases), t-test over the per-seed differences (the exact signed-rank p beside it), Holm "
         "over every segmentation comparison here (the plateau: over the sweep's comparisons with 100); a "
         "verdict needs the interval to exclude 0, the effect to reach the seed spread and Holm p < 0.05",
         "\"the paper's <difference> lies above / inside / below the interval\": where the paper's own difference "
         "of the two rows (BraTS, nnU-Net) falls against this scale's 95% interval; outside it, a difference of the "
         "paper's size is ruled out here; inside it, the interval cannot tell the two apart",
         "generation: one trained generator per method; decided on the point estimates"]


def update_claims_table(results_dir: str | Path, scale: str, check: bool = False,
                        bench_dir: str | Path | None = None) -> bool:
    """Whether ``tables/claims.{csv,md}`` match what the results say now; without ``check``
    they are rewritten when they do not. Returns True when they are (now) up to date."""
    import tempfile

    from sbldm.io import atomic_write_bytes

    tables = Path(results_dir) / "tables"
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "tables"
        fresh.mkdir()
        stem = fresh / "claims"
        from sbldm.tables import write_table

        write_table(claims(results_dir, bench_dir), stem, columns=COLUMNS, title=TITLE.format(scale=scale),
                    notes=NOTES)
        new = {ext: (fresh / f"claims.{ext}").read_bytes() for ext in ("csv", "md")}
    same = all((tables / f"claims.{ext}").is_file() and (tables / f"claims.{ext}").read_bytes() == data
               for ext, data in new.items())
    if same or check:
        return same
    for ext, data in new.items():
        atomic_write_bytes(tables / f"claims.{ext}", data)
    return True


def main(argv=None) -> None:
    import argparse

    from sbldm.paths import REPO_ROOT
    from sbldm.runs import run_name

    ap = argparse.ArgumentParser(prog="python -m sbldm.report.claims", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="small")
    args = ap.parse_args(argv)
    rows = write_claims(REPO_ROOT / "results" / run_name(args.scale), args.scale)
    for r in rows:
        print(f"{r['verdict']:>22}  {r['claim']}")


if __name__ == "__main__":
    main()
