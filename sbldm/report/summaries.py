"""The closing "what this shows" cell of each notebook, written from its own results.

Each function takes the rows a notebook just wrote and returns a few Markdown lines that
state the numbers and what they do (and do not) support; nothing here is typed by hand.
"""

from __future__ import annotations

import math

import numpy as np

SMOKE = "- smoke scale: a plumbing check; these numbers mean nothing."

#: the folder under results/<run>/ that keeps each notebook's closing summary (the results
#: page's "What the numbers say", results/<run>/README.md, comes from it)
FOLDER = "summaries"


def save(out_dir, notebook: str, markdown: str) -> str:
    """Write a notebook's closing summary to ``out_dir/summaries/<notebook>.md`` (atomically)
    and return it, so the notebook shows what the results page will quote."""
    from pathlib import Path

    from sbldm.io import atomic_write_bytes

    path = Path(out_dir) / FOLDER / f"{notebook}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (markdown.rstrip() + "\n").encode())
    return markdown


def baselines(scale: str, check: dict, selection: list[dict] | None) -> str:
    """Notebook 03: does the 3D-LDM's autoencoder draw tumours, which 3D-LSGAN step was kept."""
    lines = [f"At `{scale}`:"]
    regions = ", ".join(f"{k[:2].upper()} {_f(check[k])}" for k in ("wt_dice", "tc_dice", "et_dice") if k in check)
    lines.append(f"- the 3D-LDM autoencoder decodes {check['n_volumes']} training volumes with Dice {regions} "
                 f"({_pct(check['wt_empty_fraction'])} decoded empty); its gate is "
                 f"{_f(check.get('min_dice', 0.0))} (0 = report only).")
    if selection:
        kept = min(selection, key=lambda r: (r["rank"], r["step"]))
        last = selection[-1]
        lines.append(f"- the 3D-LSGAN generator kept is step {kept['step']} of {last['step']}: mask-feature distance "
                     f"{_f(kept['distance'])} to the training tumours with {_pct(kept['empty_fraction'])} empty "
                     f"(last step: {_f(last['distance'])}, {_pct(last['empty_fraction'])} empty); scored on the "
                     "training split only.")
    else:
        lines.append("- the 3D-LSGAN generator is the last step's (no checkpoint selection).")
    if scale == "smoke":
        lines.append(SMOKE)
    return "\n".join(lines)


def _number(v, spec: str) -> str:
    """``v`` formatted with ``spec``, or a dash when it is missing or not a number."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "—"
    return "—" if math.isnan(v) else format(v, spec)


def _f(v, digits: int = 2) -> str:
    return _number(v, f".{digits}f")


def generation(scale: str, table1_rows: list[dict], extra_rows: list[dict], adherence_rows: list[dict]) -> str:
    """Notebook 04: Table 1, the metrics beyond it, conditioning adherence."""
    lines = [f"At `{scale}`:"]
    by = {r["method"]: r for r in table1_rows}
    if by:
        best = max(by.values(), key=lambda r: float(r["psnr"]))
        lines.append(f"- the paper's unpaired PSNR ranks **{best['method']}** first ({_f(best['psnr'])} dB); it "
                     "measures closeness to an arbitrary real brain, so read it with the realism columns below.")
    real = next((r for r in extra_rows if str(r["method"]).startswith("real")), None)
    for r in extra_rows:
        if real is not None and r is not real and r.get("frechet_distance") not in (None, ""):
            lines.append(f"- {r['method']}: Fréchet distance {_f(r['frechet_distance'])} (real test split "
                         f"{_f(real['frechet_distance'])}), pairwise MS-SSIM {_f(r['ms_ssim_pairwise'], 3)} "
                         f"(real {_f(real['ms_ssim_pairwise'], 3)}), empty masks {_f(r['empty_masks'])}.")
    for r in adherence_rows:
        lines.append(f"- SBLDM asked for {r['n']} tumours at guidance {_f(r['guidance_scale'], 1)}: "
                     f"{_f(r['empty_fraction'])} empty, volume Spearman {_f(r['spearman_volume'])}, centre "
                     f"{_f(r['centre_distance'], 1)} voxels off (random pairing: {_f(r.get('chance_centre_distance'), 1)}), "
                     f"relative volume error {_f(r['relative_volume_error'])} (random pairing: "
                     f"{_f(r.get('chance_relative_volume_error'))})"
                     + (f"; shape: sphericity Spearman {_f(r['spearman_sphericity'])} (median error "
                        f"{_f(r.get('sphericity_error'))}), surface-area Spearman {_f(r['spearman_surface_area'])}, "
                        f"box error {_f(r.get('box_error'))}" if r.get("spearman_sphericity") not in (None, "") else "")
                     + ".")
    if scale == "smoke":
        lines.append(SMOKE)
    return "\n".join(lines)


def sweeps(scale: str, requested_volumes, volume_masks, requested_centres, position_masks) -> str:
    """Notebook 05: how the obtained tumours follow Figure 3's sweeps."""
    got = [int(np.asarray(m).sum()) for m in volume_masks]
    lines = [f"At `{scale}`, along the volume sweep (one seed, one initial noise):",
             "- requested " + ", ".join(f"{v:.0f}" for v in requested_volumes) + " voxels; obtained "
             + ", ".join(str(g) for g in got) + " voxels"
             + (f" (Spearman {_spearman(requested_volumes, got)})." if len(got) > 2 else ".")]
    dists = []
    for c, m in zip(requested_centres, position_masks):
        m = np.asarray(m) > 0
        dists.append(float(np.linalg.norm(np.argwhere(m).mean(0) - np.asarray(c, float))) if m.any() else math.nan)
    lines.append("- along the position sweep the obtained tumour's centre lies "
                 + ", ".join("no tumour" if math.isnan(d) else f"{d:.1f}" for d in dists)
                 + " voxels from each requested centre.")
    if scale == "smoke":
        lines.append(SMOKE)
    return "\n".join(lines)


def _spearman(a, b) -> str:
    from scipy.stats import spearmanr

    if np.ptp(np.asarray(b, float)) == 0:
        return "undefined: every obtained volume equal"
    return _f(spearmanr(a, b).statistic)


def _regions(row: dict) -> list[str]:
    from sbldm.segmentation.statistics import summarised_regions

    return summarised_regions(row)


def _significant_regions(r: dict, real: dict, below: bool = False) -> list[tuple[str, float]]:
    """(region, Holm p) of every region where row ``r`` lies above ``real`` (``below``: under
    it) with Holm p < 0.05 (the whole tumour, named WT, when the rows carry no regions)."""
    regions = _regions(real)
    keys = ([(f"dice_{g}_mean", f"p_holm_{g}", g) for g in regions] if len(regions) > 1
            else [("dice_mean", "p_holm", "WT")])
    return [(g, float(r[pk])) for dk, pk, g in keys
            if (float(r[dk]) < float(real[dk]) if below else float(r[dk]) > float(real[dk]))
            and float(r.get(pk, 1.0)) < 0.05]


def _seeds_above_text(r: dict, real: dict) -> str:
    """"ROW WT 2/3, TC 3/3": per region where ``r`` is significantly above ``real``, the
    seeds where it beat real only (``sbldm.segmentation.statistics.seeds_above``); '' when the row has no count."""
    parts = [f"{g} {int(float(r[k]))}/{r['seeds']}" for g, _ in _significant_regions(r, real)
             if r.get(k := f"seeds_above_real_{g}") not in (None, "")]
    return f"{r['row']} {', '.join(parts)}" if parts else ""


def _seeds_above_rows(rows: dict, real: dict) -> str:
    """``_seeds_above_text`` of every row but real only, joined with "; "; '' when none
    has a count or real only ran with one seed (no seeds to compare)."""
    parts = [text for name, r in rows.items() if name != "real" and (text := _seeds_above_text(r, real))]
    return "; ".join(parts) if parts and int(real.get("seeds") or 1) > 1 else ""


def _seed_level(r: dict, suffix: str) -> bool:
    """Whether row ``r`` carries a seed-paired Holm p for ``suffix`` (a region, or "all")."""
    p = r.get(f"p_seeds_{suffix}")
    return p not in (None, "") and not math.isnan(float(p)) and int(r.get("seeds") or 1) > 1


def _dice_text(r: dict, ref: dict | None = None) -> str:
    """"Dice WT/TC/ET a/b/c (+d/+e/+f vs real; seed-paired Holm p ...)" of a summarised row,
    or the whole tumour's Dice when the rows carry no regions. The p named is the seed-paired
    one (the training run as the unit) where the row has it, else the per-case test's,
    labelled as such."""
    regions = _regions(r)
    if len(regions) < 2:
        text = f"Dice {_f(r['dice_mean'], 3)} ± {_f(r.get('dice_seed_std'), 3)}"
        if ref is not None:
            delta = float(r["dice_mean"]) - float(ref["dice_mean"])
            suffix = regions[0] if regions else "all"      # the whole tumour alone (WT) or no regions at all
            seed = _seed_level(r, suffix)
            p = r.get(f"p_seeds_{suffix}" if seed else "p_holm")
            label = "seed-paired Holm p" if seed else "Holm p"
            ptxt = f", {label} = {float(p):.2g}" if p not in (None, "") and not math.isnan(float(p)) else ""
            text += f" ({'+' if delta >= 0 else ''}{delta:.3f} vs real{ptxt})"
        return text
    text = f"Dice {'/'.join(regions)} " + "/".join(_f(r[f"dice_{g}_mean"], 3) for g in regions)
    if ref is not None:
        deltas = "/".join(f"{float(r[f'dice_{g}_mean']) - float(ref[f'dice_{g}_mean']):+.3f}" for g in regions)
        seed = all(_seed_level(r, g) for g in regions)
        ps = "/".join(_p(r.get(f"p_seeds_{g}" if seed else f"p_holm_{g}")) for g in regions)
        text += f" ({deltas} vs real; {'seed-paired Holm p' if seed else 'Holm p'} {ps})"
    elif int(r.get("seeds") or 2) > 1:   # one seed has no spread to state
        text += " (seed std " + "/".join(_f(r[f"dice_{g}_seed_std"], 3) for g in regions) + ")"
    return text


def _p(p) -> str:
    return _number(p, ".2g")


def _has_verdicts(r: dict) -> bool:
    return any(k.startswith("verdict_") for k in r)


def _verdict_suffixes(r: dict) -> list[str]:
    """The suffixes of a row's seed-paired verdicts: its regions (WT alone for the paper's
    whole-tumour mask), or "all" when the rows carry none."""
    return [k[len("verdict_"):] for k in r if k.startswith("verdict_")]


def held_back(verdict: str, lo: float, hi: float, p_holm) -> str:
    """What kept a "no detectable effect" whose 95% interval clears 0 from being a gain or a
    loss: " (Holm p ...)" where its Holm-adjusted seed-level p is 0.05 or more, else
    " (smaller than the seed spread)", the verdict's two other conditions; '' for any other
    verdict or interval, or without a p."""
    from sbldm.segmentation.statistics import NO_EFFECT

    if verdict != NO_EFFECT or not (lo > 0 or hi < 0) or p_holm in (None, "") or math.isnan(float(p_holm)):
        return ""
    return f" (Holm p {_p(p_holm)})" if float(p_holm) >= 0.05 else " (smaller than the seed spread)"


def _verdict_text(r: dict, prefix: str = "") -> str:
    """"WT +0.051 [-0.012, +0.110], 2/3 seeds above, no detectable effect; ..." of a row
    compared with the training run as the unit (``statistics.seed_paired``): its
    ``<prefix>diff_<region>``, ``<prefix>ci95_low/high_<region>`` and ``<prefix>verdict_<region>``
    columns (a summarised row, or a table's row read back); '' without them. A "no detectable
    effect" whose interval excludes 0 says what held it back: its Holm p, or the seed spread."""

    parts = []
    for key in [k for k in r if k.startswith(f"{prefix}verdict_")]:
        g = key[len(f"{prefix}verdict_"):]
        diff = r.get(f"{prefix}diff_{g}")
        if r[key] in (None, "") or diff in (None, "") or math.isnan(float(diff)):
            continue
        lo, hi = float(r[f"{prefix}ci95_low_{g}"]), float(r[f"{prefix}ci95_high_{g}"])
        above = r.get(f"{prefix}seeds_above_real_{g}", "")
        seeds = f", {int(float(above))}/{r['seeds']} seeds above" if above not in (None, "") else ""
        why = held_back(r[key], lo, hi, r.get(f"{prefix}p_seeds_{g}"))
        parts.append(f"{'WT' if g == 'all' else g} {float(diff):+.3f} [{lo:+.3f}, {hi:+.3f}]{seeds}, {r[key]}{why}")
    return "; ".join(parts)


def _verdict_lines(rows: dict, real: dict, indent: str = "") -> list[str]:
    """The seed-paired verdict of every row against real only, and the rows with a detected
    gain or loss (interval clear of 0, effect at least the seed spread, Holm over the table)."""
    from sbldm.segmentation.statistics import GAIN, LOSS

    lines = []
    for name, r in rows.items():
        if name != "real" and (text := _verdict_text(r)):
            lines.append(f"{indent}- {name} minus real only, per training seed (mean, 95% interval): {text}.")
    for word, label in ((GAIN, "a detected gain"), (LOSS, "a detected loss")):
        hit = []
        for name, r in rows.items():
            regions = ["WT" if g == "all" else g for g in _verdict_suffixes(r) if r.get(f"verdict_{g}") == word]
            if name != "real" and regions:
                hit.append(f"{name} ({', '.join(regions)})")
        lines.append(f"{indent}- rows with {label} over real only (the training run as the unit, Holm over rows x "
                     f"regions): " + ("; ".join(hit) if hit else "none") + ".")
    return lines


def _nnunet_line(nnunet_rows: list[dict], where: str = "") -> str | None:
    """The nnU-Net confirmation of real + SBLDM against real only (its summarised rows), in
    one line; ``where``: e.g. " at 10 real volumes"."""
    nb = {r["row"]: r for r in nnunet_rows}
    empty = [name for name, r in nb.items()
             if float(r.get("empty_predictions", 0) or 0) >= float(r.get("n_test", 0) or 0) > 0]
    seeds = int(float(next(iter(nb.values())).get("seeds") or 1))
    which = "one seed" if seeds == 1 else f"{seeds} seeds"
    if empty:
        return (f"- nnU-Net confirmation{where} ({which}): it predicted no tumour in any test case for "
                + ", ".join(empty) + "; at this budget it confirms nothing.")
    if "real" in nb and "real + SBLDM" in nb:
        paired = _verdict_text(nb["real + SBLDM"]) if seeds > 1 and _has_verdicts(nb["real + SBLDM"]) else ""
        return (f"- nnU-Net confirmation{where} ({which}): real {_dice_text(nb['real'])}; real + SBLDM "
                f"{_dice_text(nb['real + SBLDM'], nb['real'])}"
                + (f"; real + SBLDM minus real only, per training seed (Holm over this check's regions): "
                   f"{paired}" if paired else "") + ".")
    return None


def segmentation(scale: str, rows: list[dict], nnunet_rows: list[dict] | None = None,
                 filter_report: dict | None = None, confirm_skipped: bool = False) -> str:
    """Notebook 06: Table 2 (per BraTS region when the rows carry them), the nnU-Net
    confirmation (``confirm_skipped``: it was not run, the fast backend finding no effect)."""
    by = {r["row"]: r for r in rows}
    real = by.get("real")
    lines = [f"At `{scale}`:"]
    if real is not None:
        lines.append(f"- real volumes only: {_dice_text(real)} across {real.get('seeds', 1)} seed(s).")
    for name, r in by.items():
        if name == "real" or real is None:
            continue
        lines.append(f"- {name}: {_dice_text(r, real)}.")
    if real is not None and _has_verdicts(real):
        lines += _verdict_lines(by, real)
        better = [name for name, r in by.items() if name != "real" and _significant_regions(r, real)]
        lines.append("- secondary (pairs test cases averaged over seeds, so it ignores the run-to-run variance): rows "
                     "above real only with per-case Holm p < 0.05: " + (", ".join(better) if better else "none") + ".")
    elif real is not None:
        better = [name for name, r in by.items() if name != "real" and _significant_regions(r, real)]
        lines.append("- rows significantly above real only in at least one region (Holm p < 0.05): "
                     + (", ".join(better) if better else "none") + ".")
        if seedwise := _seeds_above_rows(by, real):
            lines.append("- of those gains, the seeds where the row's mean Dice beats real only's with the same "
                         "seed (the test above pairs cases, not seeds): " + seedwise + ".")
        worse = [f"{name} ({', '.join(g for g, _ in lost)})" for name, r in by.items()
                 if name != "real" and (lost := _significant_regions(r, real, below=True))]
        lines.append("- rows significantly below real only (Holm p < 0.05), in the regions named: "
                     + ("; ".join(worse) if worse else "none") + ".")
    if filter_report:
        lines.append(f"- the quality filter rejected {_pct(filter_report.get('rejection_rate'))} of the SBLDM volumes "
                     f"({filter_report.get('rejected_empty', 0)} with an empty mask).")
    if nnunet_rows:
        if line := _nnunet_line(nnunet_rows):
            lines.append(line)
    elif confirm_skipped:
        lines.append("- nnU-Net confirmation: not run, the fast backend finds no effect of real + SBLDM against real "
                     "only in any region (seed-paired), so there is nothing to confirm.")
    if scale == "smoke":
        lines.append(SMOKE)
    return "\n".join(lines)


def scarce_study(scale: str, summary: list[dict], protocol_sizes, nnunet_rows: list[dict] | None = None,
                 nnunet_at: int | None = None, leakfree_rows: list[dict] | None = None,
                 count_rows: list[dict] | None = None) -> str:
    """Notebook 11: at every real-set size, which way of using the synthetic volumes, if any,
    beats real only, by how much and with what p (Holm within the size); then the nnU-Net
    confirmation at ``nnunet_at`` real volumes (``nnunet_rows``; not run when None), the
    leak-free rows and the synthetic-count sweep, each as its table gives it."""
    lines = [f"At `{scale}` (each size's synthetic volumes from a latent UNet trained on that many real volumes):"]
    for n in dict.fromkeys(r["n_real"] for r in summary):
        sel = {r["row"]: r for r in summary if r["n_real"] == n}
        real = sel.get("real")
        if real is None:
            continue
        lines.append(f"- {n} real volumes, real only: {_dice_text(real)}.")
        for name, r in sel.items():
            if name != "real":
                lines.append(f"  - {name}: {_dice_text(r, real)}.")
        if _has_verdicts(real):
            lines += _verdict_lines(sel, real, indent="  ")
        else:
            wins = [f"{name} ({g}, p = {_p(p)})" for name, r in sel.items() if name != "real"
                    for g, p in _significant_regions(r, real)]
            lines.append(f"  - beats real only at {n} (Holm p < 0.05): "
                         + (", ".join(wins) if wins else "no protocol") + ".")
            if seedwise := _seeds_above_rows(sel, real):
                lines.append("  - of those gains, the seeds where the row's mean Dice beats real only's with the same "
                             "seed (the test pairs cases, not seeds): " + seedwise + ".")
            losses = [f"{name} ({g}, p = {_p(p)})" for name, r in sel.items() if name != "real"
                      for g, p in _significant_regions(r, real, below=True)]
            if losses:
                lines.append(f"  - below real only at {n} (Holm p < 0.05): " + ", ".join(losses) + ".")
        regions = [g for g in _regions(real) if f"lesion_dice_{g}_mean" in real]
        if regions:                                       # the protocol sizes: lesion-wise Dice, no test
            lesion = lambda r: "/".join(_f(r[f"lesion_dice_{g}_mean"], 3) for g in regions)  # noqa: E731
            lines.append(f"  - lesion-wise Dice {'/'.join(regions)} (BraTS 2023: missed and false-positive lesions "
                         f"count; mean over seeds, untested): real {lesion(real)}; "
                         + "; ".join(f"{name} {lesion(r)}" for name, r in sel.items() if name != "real") + ".")
    if nnunet_at is not None:
        line = _nnunet_line(nnunet_rows, f" at {nnunet_at} real volumes") if nnunet_rows else None
        lines.append(line or f"- nnU-Net confirmation at {nnunet_at} real volumes: not run, the fast backend finds no "
                             "effect of real + SBLDM there (seed-paired), so there is nothing to confirm.")
    for r in leakfree_rows or []:
        text = _verdict_text(r)
        if not text:
            continue
        what = (f"what the shared slice VAE bought, {r['training_set']}" if "minus" in str(r["training_set"])
                else f"{r['training_set']} minus real only")
        lines.append(f"- without leakage at {r['n_real']} real volumes, {what}, per training seed over {r['seeds']} "
                     f"seeds: {text}.")
    for n in dict.fromkeys(r["n_real"] for r in count_rows or []):
        sel = [r for r in count_rows if r["n_real"] == n]
        col = "dice_WT" if "dice_WT" in sel[0] else "dice"
        curve = ", ".join(f"{r['synthetic_volumes']}: {_f(r.get(col), 3)}" for r in sel)
        beyond = "; ".join(f"{r['synthetic_volumes']} {t}" for r in sel if (t := _verdict_text(r, "vs_100_")))
        lines.append(f"- synthetic-count sweep at {n} real volumes, whole-tumour Dice by synthetic volumes: {curve}"
                     + (f"; against 100 synthetic volumes, per training seed: {beyond}" if beyond else "") + ".")
    if scale == "smoke":
        lines.append(SMOKE)
    return "\n".join(lines)


def scarce_generators(scale: str, rows: list[dict], vae_check: list[dict]) -> str:
    """Notebook 10: what each generator of the data-scarce regime saw, how its samples
    compare with its own real tumours, and what the shared VAE's extra data is worth."""
    lines = [f"At `{scale}`:"]
    for r in rows:
        lines.append(f"- the generator for {r['n_real']} real volumes: latent UNet trained on {r['latent_unet_saw']}, "
                     f"slice VAE on {r['vae_saw']}; its {r['synthetic_volumes']} synthetic masks are "
                     f"{_pct(r['empty_masks'])} empty, mask-feature distance {_f(r['mask_feature_distance'])} to its "
                     f"own real tumours, necrosis drawn in {_pct(r['with_necrosis'])}.")
    sizes = sorted({int(r["vae_trained_on"]) for r in vae_check})
    if len(sizes) == 2:
        small, full = sizes
        by = {(int(r["vae_trained_on"]), r["metric"]): r for r in vae_check}
        parts = []
        for metric in dict.fromkeys(r["metric"] for r in vae_check):
            a, b = by.get((small, metric)), by.get((full, metric))
            if a and b:
                parts.append(f"{metric.split(',')[0]} {_f(a['mean'])} vs {_f(b['mean'])}")
        lines.append(f"- a slice VAE trained on {small} real volumes vs one trained on {full}, same budget, on the "
                     f"held-out split: " + "; ".join(parts) + ". The regime's generators share the one trained on "
                     f"{full}: the difference is what that sharing could add to the smaller sizes' synthetic volumes.")
    if scale == "smoke":
        lines.append(SMOKE)
    return "\n".join(lines)


VAE_ROW = "real (train split) through the slice VAE"


def appearance(scale: str, rows: list[dict]) -> str:
    """Notebook 09: the tumours' insides, each set against the first (real) one; with a
    ``VAE_ROW``, whether the slice VAE's latent space keeps what the generators lose."""
    if not rows:
        return f"At `{scale}`: no tumours to compare."
    ref = rows[0]
    lines = [f"At `{scale}`, inside the tumour masks (a *dark part*: at least 5% of the tumour darker than the "
             "brain around it; medians over the volumes with a tumour):"]
    for r in rows:
        if int(r["n_empty"]) == int(r["n"]):
            lines.append(f"- {r['set']}: every mask is empty ({r['n']} of {r['n']}).")
            continue
        lines.append(f"- {r['set']}: dark part in {_pct(r['dark_core_share'])} of tumours (median dark share "
                     f"{_f(r['dark_fraction_median'], 3)}); spread {_f(r['intensity_std_median'], 3)}; contrast "
                     f"{_f(r['contrast_median'], 3)}; {_pct(r['multi_component_fraction'])} of masks in several pieces.")
    synth = [r for r in rows[1:] if not str(r["set"]).startswith("real") and int(r["n_empty"]) < int(r["n"])]
    flat = [r["set"] for r in synth if float(r["dark_core_share"]) < 0.5 * float(ref["dark_core_share"])]
    if flat:
        lines.append(f"- Fewer than half as many tumours with a dark part as in {ref['set']}: {', '.join(flat)}. "
                     "A segmenter trained on them learns bright tumours and can miss the dark cores of real ones.")
        vae = next((r for r in rows if r["set"] == VAE_ROW), None)
        if vae is not None and float(vae["dark_core_share"]) >= 0.5 * float(ref["dark_core_share"]):
            lines.append(f"- The slice VAE keeps them ({_pct(vae['dark_core_share'])} of the reconstructed training "
                         f"tumours have a dark part, against {_pct(ref['dark_core_share'])}): SBLDM's latent space can "
                         "carry a dark core, and it is lost in the latent diffusion stage.")
    return "\n".join(lines)


def _pct(v) -> str:
    return _number(v, ".0%")


def denoising_probe(rows: list[dict]) -> str:
    """Notebook 09's probe: up to which strength real tumours keep their dark part."""
    rows = sorted(rows, key=lambda r: float(r["strength"]))
    if not rows:
        return ""
    base = float(rows[0]["dark_core_share"])
    parts = [f"{float(r['strength']):g}: {_pct(r['dark_core_share'])}" for r in rows]
    line = ("- Real tumours noised and denoised by SBLDM, share with a dark part by strength (0 = through the VAE "
            "alone): " + ", ".join(parts) + ".")
    kept = [float(r["strength"]) for r in rows[1:] if float(r["dark_core_share"]) >= 0.5 * base]
    lost = [float(r["strength"]) for r in rows[1:] if float(r["dark_core_share"]) < 0.5 * base]
    if base > 0 and kept and lost and max(kept) < min(lost):
        last = rows[-1]
        line += (f" The dark part survives up to strength {max(kept):g} and falls below half its share from "
                 f"{min(lost):g}: the model keeps a core it is shown, and from strength {float(last['strength']):g} "
                 f"draws one in {_pct(last['dark_core_share'])} of the volumes (through the VAE alone: {_pct(base)}).")
    return line


def four_sequences(scale: str, choice: dict, check_rows: list[dict], appearance_rows: list[dict], enhancing: dict,
                   adherence_rows: list[dict], comparisons: list[dict], test_rows: list[dict] | None = None) -> str:
    """Notebook 12: the latent channels the reconstruction check chose and why, what the
    generated sequences look like inside the tumour (the enhancing tumour per sequence,
    ``enhancing`` keyed by sequence name, against the real interquartile range), adherence,
    and what the extra sequences and SBLDM's volumes buy a segmenter (seed-paired, Holm over
    the table)."""
    lines = [f"At `{scale}`:"]
    chosen = choice["chosen"]
    psnr = {}
    for r in check_rows:
        if r["metric"] == "PSNR (dB), per volume":
            psnr.setdefault(int(r["latent_channels"]), []).append(f"{r['sequence']} {_f(r['mean'], 1)}")
    arms = "; ".join(f"{c} channels: " + ", ".join(v) for c, v in sorted(psnr.items()))
    short = {c: s for c, s in choice["short"].items() if s}
    lines.append(f"- the slice VAE keeps **{chosen} latent channels**: held-out PSNR per sequence (dB) {arms}."
                 + (" Falling short of the best candidate: " + "; ".join(f"{c} channels in {len(s)} criteria ("
                                                                         + ", ".join(s[:3]) + ("…" if len(s) > 3 else "") + ")"
                                                                         for c, s in sorted(short.items())) + "."
                    if short else " Every candidate kept up with the best on every criterion; the fewest channels win."))
    if test_rows:
        t = {r["sequence"]: r["mean"] for r in test_rows if r["metric"] == "PSNR (dB), per volume"}
        dice = ", ".join(f"{r['metric'].split()[0]} {_f(r['mean'])}" for r in test_rows if r["sequence"] == "label map")
        lines.append("- the adopted VAE on the test split: PSNR " + ", ".join(f"{k} {_f(v, 1)}" for k, v in t.items())
                     + (f" dB; decoded label map Dice {dice}." if dice else " dB."))
    gen = {r["sequence"]: r for r in appearance_rows if not str(r["set"]).startswith("real")}
    real = {r["sequence"]: r for r in appearance_rows if str(r["set"]).startswith("real")}
    if gen:
        parts = [f"{s} {_f(g.get('median_z_enhancing'))} (real {_f(real.get(s, {}).get('median_z_enhancing'))})"
                 for s, g in gen.items()]
        lines.append("- the enhancing tumour's median z against the normal brain, per sequence: " + ", ".join(parts)
                     + ".")
        t1c = enhancing.get("T1ce", {})
        z = t1c.get("generated", math.nan)
        lines.append(f"- on T1ce the generated enhancing tumour's median z is {_f(z)} ("
                     + ("brighter" if z > 0 else "not brighter") + " than the normal brain), "
                     + ("inside" if t1c.get("inside") else "outside")
                     + f" the real training tumours' interquartile range [{_f(t1c.get('real_q25'))}, "
                     f"{_f(t1c.get('real_q75'))}]; inside it on "
                     + (", ".join(s for s, v in enhancing.items() if v.get("inside")) or "no sequence") + ".")
        worst = max(((s, k, float(v)) for s, g in gen.items() for k, v in g.items()
                     if k.startswith("w_over_spread_") and v not in (None, "") and not math.isnan(float(v))),
                    key=lambda t: t[2], default=None)
        if worst:
            lines.append(f"- the farthest sub-region from real: {worst[1][len('w_over_spread_'):]} on {worst[0]}, "
                         f"Wasserstein {_f(worst[2])} x the real spread.")
    for r in adherence_rows:
        lines.append(f"- asked for {r['n']} tumours at guidance {_f(r['guidance_scale'], 1)}: volume Spearman "
                     f"{_f(r['spearman_volume'])}, centre {_f(r['centre_distance'], 1)} voxels off, sphericity "
                     f"Spearman {_f(r.get('spearman_sphericity'))}, {_f(r['empty_fraction'])} empty.")
    sizes = sorted({int(r["n_real"]) for r in comparisons})
    if len(sizes) > 1:
        lines.append(f"- below the full split, the synthetic volumes come from a latent UNet that saw only those real "
                     f"volumes, decoded by the slice VAE trained on all {sizes[-1]}: at {', '.join(map(str, sizes[:-1]))} "
                     "real volumes the synthetic rows' VAE saw more real data than the real rows (notebook 11's "
                     "leak-free rows measure what that is worth, FLAIR only).")
    for r in comparisons:
        if not r.get("against"):
            continue
        parts = [f"{'WT' if g == 'all' else g} {float(r[f'diff_{g}']):+.3f} [{float(r[f'ci95_low_{g}']):+.3f}, "
                 f"{float(r[f'ci95_high_{g}']):+.3f}], {r[f'verdict_{g}']}"
                 for g in [k[len("diff_"):] for k in r if k.startswith("diff_")]
                 if r[f"diff_{g}"] not in (None, "") and not math.isnan(float(r[f"diff_{g}"]))]
        text = "; ".join(parts)
        if text:
            lines.append(f"- {r['n_real']} real volumes, {r['training_set']} minus {r['against']} ({r['measures']}), "
                         f"per training seed over {r.get('seeds', '?')} seeds (mean, 95% interval, verdict after Holm "
                         f"over the table): {text}.")
    if scale == "smoke":
        lines.append(SMOKE)
    return "\n".join(lines)
