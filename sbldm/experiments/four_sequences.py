"""Beyond the paper: SBLDM of the four BraTS sequences (notebook 12).

The paper generates FLAIR only and leaves the other sequences to future work, while every
BraTS segmenter reads T1, T1ce, T2 and FLAIR. Here the same method carries all four:

- **data**: the cases of the FLAIR run, read with their four sequences, each normalised on
  its own within the brain (``prepare_four``: ``work/<run>/four_sequences/data``; the
  phantom's own folder is read again, nothing is regenerated; the split is the FLAIR
  run's, checked case by case);
- **slice VAE**: four image channels before the tumour channels; its latent channels are
  chosen by a reconstruction check on a held-out part of the training split, per sequence
  and per sub-region on T1ce and FLAIR (``latent_check``, ``choose_latent_channels``);
  nothing is chosen on the test split;
- **latent UNet and pipeline**: as notebook 02's, on the four-sequence latents
  (``train_four``); the pipeline returns every sequence and the label map, and
  ``save_nifti`` writes one BraTS 2023 folder per generated case;
- **segmentation** (``segmentation_study``): at the smallest real-set size and at the full
  split, the segmenter reads the four sequences or the FLAIR alone, trained on the real
  volumes only or with the synthetic ones of the generator that saw those volumes (the
  same synthetic draws for both), every training seed on its own draw, the budget chosen
  on a validation part of that size's own real volumes for each input; the comparisons
  are seed-paired with Holm over all of them (``comparison_rows``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from sbldm.config import Config
from sbldm.data.cohort import Prepared
from sbldm.experiments import scarce_regime as sr
from sbldm.io import save_model
from sbldm.segmentation import statistics, table2

#: the four BraTS 2023 sequences, in BraTS order: T1, T1ce, T2, FLAIR
FOUR = ("t1n", "t1c", "t2w", "t2f")

#: the segmentation study's rows: what the segmenter is trained on and what it reads
REAL4, SYN4 = "real, 4 sequences", "real + SBLDM, 4 sequences"
REAL1, SYN1 = "real, FLAIR", "real + SBLDM, FLAIR"
#: (row, reference, what the difference measures)
COMPARISONS = ((REAL4, REAL1, "what the other three sequences buy, real volumes only"),
               (SYN1, REAL1, "what SBLDM buys a FLAIR segmenter"),
               (SYN4, REAL4, "what SBLDM buys a four-sequence segmenter"),
               (SYN4, SYN1, "what the other three sequences buy, with SBLDM"))


def four_dir(work: Path) -> Path:
    """Where the four-sequence model and its data live: ``work/<run>/four_sequences``."""
    return Path(work) / "four_sequences"


def four_config(cfg: Config, latent_channels: int | None = None) -> Config:
    """``cfg`` reading the four sequences (and with ``latent_channels`` slice-VAE latent
    channels, when given)."""
    out = cfg.replace(modalities=FOUR)
    return out if latent_channels is None else out.replace(vae_latent_channels=int(latent_channels))


def prepare_four(cfg: Config, work: Path, data=None, progress: bool = True) -> Path:
    """The four-sequence cohort of the run in ``work`` (``work/four_sequences/data``),
    prepared once: the BraTS folder ``data``, else the phantom cohort notebook 00 wrote
    (``work/data/phantom-v<N>``, read again with its four sequences). The split must be the
    FLAIR run's, case by case (same cases, same seed): a prepared folder that no longer
    matches it is prepared again. Returns the folder."""
    from sbldm.data.cohort import load_split
    from sbldm.data.prepare import prepare

    base, d = Path(work) / "data", four_dir(work) / "data"
    if not (base / "split.json").is_file():
        raise FileNotFoundError(f"{base / 'split.json'}: the FLAIR run's data is not prepared; run notebook 00 first")
    wanted = load_split(base / "split.json")
    mods = d / "cache" / "modalities.json"
    if (d / "split.json").is_file() and mods.is_file() and tuple(json.loads(mods.read_text())) == FOUR \
            and load_split(d / "split.json") == wanted:
        return d
    phantom = None
    if data is None:
        from sbldm.data.phantom import PHANTOM_VERSION

        phantom = base / f"phantom-v{PHANTOM_VERSION}"
        if not phantom.is_dir():
            raise FileNotFoundError(f"{phantom}: no phantom cohort of this version; run notebook 00 first")
    prepare(four_config(cfg), d, brats_dir=data, progress=progress, export=False, phantom_dir=phantom)
    got = load_split(d / "split.json")
    if got != wanted:
        raise ValueError(f"{d}: the four-sequence split differs from the FLAIR run's ({base / 'split.json'}); "
                         "the same cases and seed should give the same split")
    return d


# -- the slice VAE's latent channels ----------------------------------------------------

def reconstruction_rows(vae, cfg: Config, split: Prepared) -> list[dict]:
    """A four-sequence VAE's reconstruction of ``split``: per sequence PSNR and SSIM per
    volume, per sub-region mean |error| on T1ce and FLAIR
    (``sbldm.evaluation.reconstruction.sequence_reconstruction_rows``) and the decoded
    label map's Dice per region (``sequence`` "label map")."""
    from sbldm.diffusion.latents import reconstruct_volumes
    from sbldm.evaluation.reconstruction import sequence_reconstruction_rows
    from sbldm.segmentation.brats_metrics import region_dice_rows
    from sbldm.training.trainer import model_images

    images = model_images(cfg, split)
    rec, _, rec_labels = reconstruct_volumes(vae, images, split.labels)
    rows = sequence_reconstruction_rows(images, rec, cfg.modalities, split.labels)
    if rec_labels is not None:
        rows += [{"sequence": "label map", "metric": f"{r['region']} Dice, per volume", "mean": r["mean"],
                  "std": r["std"], "n": r["n"]} for r in region_dice_rows(rec_labels, split.labels)]
    return rows


def latent_check(cfg: Config, train: Prepared, work: Path, seed: int = 0, resume: bool = True, device=None,
                 progress: bool = True) -> list[dict]:
    """Every ``four_latent_candidates`` slice VAE trained ``four_check_steps`` steps on the
    training split less a held-out part of it (``four_check_fraction``, seeded by
    ``seed``), reconstructing that part (``reconstruction_rows``). Resumable, in
    ``work/four_sequences/latent_check/latent<c>``. Rows carry ``latent_channels``,
    ``vae_steps``, ``trained_on`` and ``scored_on`` (volumes)."""
    from sbldm.training.trainer import train_vae

    fit, val = table2.validation_split(len(train), cfg.four_check_fraction, seed)
    fit_split, val_split = sr.subset_split(train, fit), sr.subset_split(train, val)
    rows = []
    for c in cfg.four_latent_candidates:
        ccfg = four_config(cfg, c).replace(vae_steps=cfg.four_check_steps)
        vae = train_vae(ccfg, fit_split, four_dir(work) / "latent_check" / f"latent{c}", resume=resume,
                        device=device, progress=progress).eval()
        rows += [{"latent_channels": int(c), "vae_steps": cfg.four_check_steps, "trained_on": len(fit),
                  "scored_on": len(val), **r} for r in reconstruction_rows(vae, ccfg, val_split)]
    return rows


PSNR = "PSNR (dB), per volume"


def choose_latent_channels(rows: list[dict], psnr_tolerance: float, region_tolerance: float) -> dict:
    """The latent channels ``latent_check``'s rows support: the fewest whose PSNR is within
    ``psnr_tolerance`` dB of the best candidate's on every sequence and whose mean |error|
    in every sub-region (T1ce, FLAIR) is at most ``1 + region_tolerance`` times the best
    candidate's; if none keeps up everywhere, the one that falls short in the fewest
    criteria (then the fewer channels). Returns ``{"chosen", "short": {c: [criteria it
    falls short in]}}``."""
    candidates = sorted({int(r["latent_channels"]) for r in rows})
    if not candidates:
        raise ValueError("no latent-channel candidates were scored")
    value = {(int(r["latent_channels"]), r["sequence"], r["metric"]): float(r["mean"]) for r in rows}
    criteria = sorted({(s, m) for _, s, m in value if m == PSNR or m.endswith(": mean |error|")})
    short = {c: [] for c in candidates}
    for s, m in criteria:
        got = {c: value.get((c, s, m), math.nan) for c in candidates}
        finite = [v for v in got.values() if math.isfinite(v)]
        if not finite:
            continue
        for c, v in got.items():
            ok = (v >= max(finite) - psnr_tolerance) if m == PSNR else (v <= min(finite) * (1 + region_tolerance))
            if not (math.isfinite(v) and ok):
                short[c].append(f"{s} {m}")
    chosen = min(candidates, key=lambda c: (len(short[c]), c))
    return {"chosen": chosen, "short": short}


def check_table_rows(rows: list[dict], choice: dict) -> list[dict]:
    """``latent_check``'s rows for the table, each candidate's marked ``chosen`` or not."""
    return [{**r, "chosen": int(r["latent_channels"]) == choice["chosen"]} for r in rows]


# -- the model ---------------------------------------------------------------------------

def train_four(cfg4: Config, train: Prepared, work: Path, resume: bool = True, device=None, progress: bool = True):
    """The four-sequence SBLDM of ``cfg4`` (``four_config`` with the chosen latent
    channels): the slice VAE (``four_sequences/vae``), the latents of the training split
    (``four_sequences/latents``) and the latent UNet (``four_sequences/diffusion``),
    assembled and saved to ``four_sequences/pipeline``. Resumable. Returns (vae, latents,
    pipeline)."""
    from sbldm.diffusion.latents import encode_dataset, save_latents
    from sbldm.training.trainer import model_images, train_pipeline, train_vae

    d = four_dir(work)
    vae = train_vae(cfg4, train, d / "vae", resume=resume, device=device, progress=progress).eval()
    latents = encode_dataset(vae, model_images(cfg4, train), train.labels, device=device, case_ids=train.case_ids,
                             progress=progress)
    save_latents(d / "latents", latents)
    pipe = train_pipeline(cfg4, vae, latents, train, d / "diffusion", resume=resume, device=device, progress=progress)
    save_model(pipe, d / "pipeline")      # a resumed, finished model touches nothing: its draws stay cached
    return vae, latents, pipe


def generator_dir(work: Path, n: int, n_train: int) -> Path:
    """The four-sequence generator that saw ``n`` real volumes: notebook 12's full model
    (``four_sequences``) at the whole split, else ``four_sequences/scarce/n<n>``."""
    return four_dir(work) if int(n) >= int(n_train) else four_dir(work) / "scarce" / f"n{int(n)}"


def train_generators(cfg4: Config, vae, latents, train: Prepared, subsets: dict, work: Path, resume: bool = True,
                     device=None, progress: bool = True) -> dict[int, Path]:
    """``{n: generator folder}``: below the whole split, a latent UNet trained on the
    latents of those ``n`` volumes only (``sbldm.experiments.scarce_regime.train_scarce_generator``:
    the same budget, conditions and priors fitted on them; the slice VAE is shared)."""
    out = {}
    for n, idx in subsets.items():
        d = generator_dir(work, n, len(train))
        if n < len(train):
            sr.train_scarce_generator(cfg4, vae, latents, train, idx, d, resume=resume, device=device,
                                      progress=progress)
        out[n] = d
    return out


def samples(cfg4: Config, d: Path, seed: int, progress: bool = True) -> dict:
    """Training seed ``seed``'s synthetic set of the generator in ``d``: ``eval_n_samples``
    volumes with every sequence, drawn as Table 1's SBLDM (DDIM) row with that seed's own
    noise (``sbldm.segmentation.table2.synthetic_draw``; bf16 as ``seg_synthetic_bf16``),
    cached in ``d/samples``."""
    return sr.samples_of(d, cfg4, progress=progress, draw=table2.synthetic_draw(cfg4, seed),
                         bf16=cfg4.seg_synthetic_bf16)


# -- segmentation on four sequences and on the FLAIR ------------------------------------

def segmentation_study(cfg4: Config, train: Prepared, test: Prepared, work: Path, subsets: dict, dirs: dict,
                       seed: int = 0, progress=print) -> list[dict]:
    """Per-case rows (``sbldm.segmentation.table2.run_rows``' plus ``n_real``, ``reads``,
    ``iterations``) of ``REAL4``, ``SYN4``, ``REAL1`` and ``SYN1`` at every size of
    ``subsets``, every training seed: the segmenter reads the four sequences or the FLAIR
    alone, trained on the ``n`` real volumes or on them plus the synthetic set of the
    generator in ``dirs[n]`` (that seed's own draw; the FLAIR rows read the FLAIR of the
    same volumes). Each input gets its own budget at each size, chosen on a validation part
    of that size's real volumes (fast backend; ``table2.budget``), shared by its two rows."""
    labels = cfg4.tumour_labels == "regions"
    flair = cfg4.replace(seg_sequences=("t2f",))
    d = four_dir(work)
    cases = []
    for n, idx in subsets.items():
        for c, reads, (real_row, synth_row) in ((cfg4, "T1, T1ce, T2, FLAIR", (REAL4, SYN4)),
                                                (flair, "FLAIR", (REAL1, SYN1))):
            tag = "four" if c is cfg4 else "flair"
            steps = (int(table2.budget(sr.subset_split(train, idx), c, d, seed=seed, progress=progress,
                                       name=f"learning_curve_n{n}_{tag}")["budget"])
                     if c.seg_backend == "fast" else None)
            real = sr.real_set(train, c, idx)

            def sets_for(s, c=c, real=real, real_row=real_row, synth_row=synth_row, n=n):
                drawn = samples(cfg4, dirs[n], s, progress=False)
                im, tg, _ = table2.synthetic_set("SBLDM", drawn, len(drawn["images"]), labels, c)
                return {real_row: real, synth_row: (np.concatenate([real[0], im]), np.concatenate([real[1], tg]))}

            rows = table2.run_rows_by_seed(sets_for, test, c, d, iterations=steps, progress=progress,
                                           tag=f"four_n{n}_{tag}_")
            cases += [{**r, "n_real": int(n), "reads": reads, "iterations": steps} for r in rows]
    return cases


def comparison_rows(cases: list[dict]) -> list[dict]:
    """The four-sequence Table 2: per size, the FLAIR real-only row, then every
    ``COMPARISONS`` row against its reference: Dice per region (mean and seed std of the
    row), the seed-paired difference with its 95% interval (``statistics.seed_paired``),
    and the t-test p over the per-seed differences with Holm over every comparison x region
    x size of the table, with its verdict (``statistics.verdicts``)."""
    regions = statistics.regions_of(cases) or ["all"]
    metric = (lambda g: f"dice_{g}") if regions != ["all"] else (lambda g: "dice")
    sizes = list(dict.fromkeys(c["n_real"] for c in cases))
    family = {}
    for n in sizes:
        sel = [c for c in cases if c["n_real"] == n]
        for row, ref, _ in COMPARISONS:
            for g in regions:
                family[(n, row, ref, g)] = statistics.seed_paired(sel, row, ref, metric(g))
    judged = statistics.verdicts(family)
    out = []
    for n in sizes:
        sel = [c for c in cases if c["n_real"] == n]
        reads = {c["row"]: c["reads"] for c in sel}
        for row, ref, what in ((REAL1, "", "the baseline: real volumes, FLAIR only"), *COMPARISONS):
            r = {"n_real": n, "training_set": row, "reads": reads.get(row, ""), "against": ref, "measures": what}
            for g in regions:
                per_seed = [float(np.mean([c[metric(g)] for c in sel if c["row"] == row and c["seed"] == s]))
                            for s in sorted({c["seed"] for c in sel if c["row"] == row})]
                r[f"dice_{g}"] = float(np.mean(per_seed)) if per_seed else math.nan
                r[f"dice_{g}_seed_std"] = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else math.nan
                v = judged.get((n, row, ref, g), {})          # the baseline row: blank comparison columns
                r.update({f"diff_{g}": v.get("diff", ""), f"ci95_low_{g}": v.get("lo", ""),
                          f"ci95_high_{g}": v.get("hi", ""), f"p_seeds_{g}": v.get("p_holm", ""),
                          f"verdict_{g}": v.get("verdict", "")})
            r["seeds"] = len({c["seed"] for c in sel if c["row"] == row})
            out.append(r)
    return out


# -- what the generated sequences look like inside the tumour ---------------------------

def appearance_rows(real: Prepared, generated: dict, modalities=FOUR) -> tuple[list[dict], dict]:
    """Each sub-region's median intensity in z units against the normal brain of the same
    sequence (``sbldm.evaluation.appearance.sequence_appearance``), per sequence, for the
    real training tumours and a generated sample set (``generated``: a sample dict with
    ``sequences`` and ``labels``), each generated sequence's distributions against the
    real ones (Wasserstein over the real spread). Returns (rows ``{set, sequence, n,
    core_share, median_z_<region>, w_over_spread_<region>, texture_std_z}``, the enhancing
    tumour per sequence name: ``within_real_spread`` of the generated median against the
    real interquartile range, ``{"T1ce": {generated, real_q25, real_median, real_q75,
    inside}, ...}``). A model of the whole tumour draws no sub-regions: ([], {})."""
    from sbldm.data.cohort import SEQUENCE_NAMES
    from sbldm.evaluation.appearance import sequence_appearance, subregion_summary, within_real_spread

    if generated.get("sequences") is None:
        raise ValueError("the generated set carries no sequences: sample a model of several sequences")
    if generated.get("labels") is None:         # a model of the whole tumour (tumour_labels="whole"): no sub-regions
        return [], {}
    ref = sequence_appearance(real.sequences, real.labels, modalities)
    gen = sequence_appearance(generated["sequences"], generated["labels"], modalities)
    rows = []
    for name, rs in (("real (train split)", ref), ("SBLDM, 4 sequences", gen)):
        for seq, app in rs.items():
            s = subregion_summary(app, ref[seq])
            rows.append({"set": name, "sequence": SEQUENCE_NAMES[seq], "n": s["n"], "core_share": s["core_share"],
                         **{k: s[k] for k in s if k.startswith(("median_z_", "w_over_spread_"))},
                         "texture_std_z": float(np.nanmedian([r["std_z_tumour"] for r in app])) if app else math.nan})
    enhancing = {SEQUENCE_NAMES[seq]: within_real_spread(gen[seq], ref[seq], "median_z_enhancing") for seq in gen}
    return rows, enhancing


def enhancing_rows(enhancing: dict) -> list[dict]:
    """``appearance_rows``' enhancing tumour as a table: one row per sequence, the generated
    tumours' median z, the real ones' quartiles and whether it falls inside them (the
    issue's test reads the T1ce row: the enhancing tumour must enhance on T1ce)."""
    return [{"region": "enhancing tumour", "sequence": s, "generated_median_z": v["generated"],
             "real_q25": v["real_q25"], "real_median": v["real_median"], "real_q75": v["real_q75"],
             "inside_real_iqr": v["inside"]} for s, v in enhancing.items()]


def example_cases(real: Prepared, generated: dict, k: int = 3) -> list[tuple]:
    """``k`` real training cases and ``k`` generated ones for ``sequences_figure``: (name,
    (S, x, y, z) sequences, label map; a whole-tumour mask shows as the whole tumour)."""
    out = [(f"real {real.case_ids[i]}", real.sequences[i], real.labels[i]) for i in range(min(k, len(real.case_ids)))]
    maps = generated.get("labels")
    if maps is None:                            # whole-tumour masks, outlined as the whole tumour
        maps = 2 * np.asarray(generated["masks"], np.uint8)
    out += [(f"SBLDM sample {i}", generated["sequences"][i], maps[i])
            for i in range(min(k, len(generated["sequences"])))]
    return out
