"""Ship a trained SBLDM pipeline inside the repository: ``python -m sbldm.report.ship --scale small``.

Reads ``work/<run>/pipeline`` (notebook 02) and writes ``pretrained/<run>/`` (with
``--four-sequences``: notebook 12's ``work/<run>/four_sequences/pipeline`` to
``pretrained/<run>-4seq/``, with a card of its own): the same
pipeline with the UNet and slice-VAE weights stored in fp16 (half the bytes; they are cast
back to fp32 when loaded), the training grid's affine (so saved samples overlay the
training data), and ``MODEL_CARD.md`` written from ``results/<run>/``: data, training
budget, commit, headline numbers, and the measured effect of fp16 storage on samples;
``training.json`` beside it keeps the card's training time for ``--restore`` to read back.

    from sbldm.diffusion.pipeline import SBLDMPipeline
    pipe = SBLDMPipeline.from_pretrained("pretrained/small")

The folder is replaced as a whole (built beside it, then renamed), and only by this
command, i.e. when the ``small`` run is redone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from sbldm.config import Config, resolve
from sbldm.io import atomic_write_bytes, atomic_write_json, save_model
from sbldm.paths import REPO_ROOT, SHIPPED
from sbldm.runs import run_name

CARD = "MODEL_CARD.md"
#: beside the card: what the card says in words, for code to read back (``restore``)
RECORD = "training.json"


def half_precision_effect(pipe32, pipe16, n: int = 4, steps: int = 20, seed: int = 0) -> dict:
    """Sample ``n`` volumes (DDIM ``steps``, same requests and noise) with the fp32 weights
    and with the fp16-stored ones (cast back to fp32): the largest absolute image
    difference (images in [-1, 1]; every sequence of a pipeline of several) and the fraction
    of mask voxels that differ."""
    import torch

    outs = []
    for pipe in (pipe32, pipe16):
        outs.append(pipe(num_volumes=n, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed)))
    a, b = outs
    if getattr(a, "sequences", None) is not None:      # a pipeline of several sequences: every one of them
        a_im, b_im = a.sequences, b.sequences
    else:
        a_im, b_im = a.images, b.images
    return {"volumes": n, "ddim_steps": steps,
            "max_abs_image_difference": float(np.abs(a_im - b_im).max()),
            "mean_abs_image_difference": float(np.abs(a_im - b_im).mean()),
            "mask_voxels_differing": float((a.masks != b.masks).mean())}


def sampling_speed(pipe, steps: int, seed: int = 0) -> dict:
    """Seconds per volume (DDIM ``steps``, one volume per call, after one warm-up) with fp32
    weights as loaded, and under bf16 autocast on the CPU (``sbldm.runtime.cpu_bf16``; on a
    GPU only fp32 is timed here), with the device that ran them."""
    import torch

    from sbldm.evaluation.generation import time_per_volume
    from sbldm.provenance import device_name
    from sbldm.runtime import cpu_bf16

    def one():
        return pipe(num_volumes=1, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))

    out = {"ddim_steps": steps, "device": device_name("cuda" if torch.cuda.is_available() else "cpu"),
           "fp32_s": time_per_volume(one, repeats=1)["median_s"]}
    if not torch.cuda.is_available():
        with cpu_bf16():
            out["bf16_s"] = time_per_volume(one, repeats=1)["median_s"]
    return out


def _table(path: Path) -> list[dict]:
    from sbldm.tables import read_csv

    return read_csv(path) if path.is_file() else []


def speed_and_storage(speed: dict | None, half: dict | None) -> list[str]:
    """A card's Speed section (``sampling_speed``, when measured) and Storage section
    (``half_precision_effect``: what storing the weights in fp16 changes in the samples)."""
    lines = []
    if speed:
        lines += ["", "## Speed", "",
                  f"- measured when shipped, one volume, DDIM-{speed['ddim_steps']} on {speed['device']}: "
                  f"{speed['fp32_s']:.1f} s in fp32"
                  + (f", {speed['bf16_s']:.1f} s under bf16 autocast (the `Use` snippet's fast path on a CPU)"
                     if speed.get("bf16_s") else "")]
    lines += ["", "## Storage", ""]
    lead = "- UNet and VAE weights stored in fp16 and cast back to fp32 on loading."
    if half and half.get("restored"):
        lines.append(f"{lead} Not measured: these weights were restored from an fp16 copy, so there are no fp32 "
                     "weights to compare against.")
    elif half:
        on = f"on {half['volumes']} volumes (DDIM-{half['ddim_steps']}, same requests and noise)"
        found = (f"largest image difference {half['max_abs_image_difference']:.4f} (images in [-1, 1]; the FLAIR), "
                 f"mean {half['mean_abs_image_difference']:.5f}; {half['mask_voxels_differing']:.4%} of mask voxels "
                 "differ.")
        if half.get("kept_from"):
            lines.append(f"{lead} Measured when the trained fp32 weights were shipped ({half['kept_from']}; these "
                         f"weights were restored from that fp16 copy, so the check cannot be repeated on them) {on}: "
                         f"{found}")
        else:
            lines.append(f"{lead} Measured here {on} against the fp32 weights: {found}")
    return lines


def use_snippet(name: str, after: list[str]) -> list[str]:
    """A card's Use section: load ``pretrained/<name>``, sample one volume on the fast path
    (bf16 autocast on a CPU), then the lines ``after``."""
    return ["", "## Use", "", "```python", "import torch", "",
            "from sbldm.diffusion.pipeline import SBLDMPipeline", "from sbldm.runtime import cpu_bf16", "",
            f'pipe = SBLDMPipeline.from_pretrained("pretrained/{name}")',
            "# on a CPU, bf16 autocast runs the 3D convolutions several times faster (the card's Speed section)",
            "with cpu_bf16(not torch.cuda.is_available()):",
            "    out = pipe(num_volumes=1, conditions=[{...9 features...}])  # or none: drawn from the training set",
            *after, "```", ""]


def _paired(row: dict, g: str) -> str:
    from sbldm.report.summaries import held_back

    lo, hi = float(row.get(f"ci95_low_{g}", "nan")), float(row.get(f"ci95_high_{g}", "nan"))
    verdict = row.get(f"verdict_{g}", "")
    return (f"{g} {float(row[f'diff_{g}']):+.3f} [{lo:+.3f}, {hi:+.3f}] {verdict}"
            + held_back(verdict, lo, hi, row.get(f"p_seeds_{g}")))


def segmentation_verdict(fast: dict, nnunet: dict | None, regions: list[str], real_fast: dict | None = None,
                         real_nnunet: dict | None = None) -> list[str]:
    """The card's segmentation verdict: real + SBLDM minus real only per region, seed-paired
    (Table 2's ``diff_<g>``, ``ci95_*``, ``verdict_<g>``), under the fast backend and, when
    notebook 06 ran it, under nnU-Net, with the caveat where the two disagree (and both
    real-only rows' Dice, ``real_fast`` and ``real_nnunet``, when given)."""
    regions = [g for g in (regions or ["WT"]) if f"diff_{g}" in fast and fast[f"diff_{g}"] not in ("", "nan")]
    if not regions:
        return []
    out = ["- real + SBLDM minus real only, per training seed (mean [95%], verdict after Holm), fast segmenter: "
           + "; ".join(_paired(fast, g) for g in regions)]
    if nnunet is None:
        return out + ["- not confirmed under nnU-Net at this scale (notebook 06 runs that check only where the fast "
                      "segmenter finds an effect)"]
    shown = [g for g in regions if f"diff_{g}" in nnunet and nnunet[f"diff_{g}"] not in ("", "nan")]
    out.append(f"- the same under nnU-Net ({nnunet.get('seeds', '?')} seeds): " + "; ".join(_paired(nnunet, g)
                                                                                          for g in shown))
    from sbldm.segmentation.statistics import GAIN, LOSS

    lost = [g for g in shown if fast.get(f"verdict_{g}") in (GAIN, LOSS)
            and nnunet.get(f"verdict_{g}") != fast.get(f"verdict_{g}")]
    if lost:
        which = ", ".join(f"{g} {fast['verdict_' + g]}" for g in lost)
        base = ""
        if real_fast and real_nnunet:
            base = " (real only: " + ", ".join(
                f"{g} {float(real_fast[f'dice_{g}_mean']):.3f} fast, {float(real_nnunet[f'dice_{g}_mean']):.3f} nnU-Net"
                for g in lost if f"dice_{g}_mean" in real_fast and f"dice_{g}_mean" in real_nnunet) + ")"
        kinds = {fast[f"verdict_{g}"] for g in lost}
        effect = kinds.pop() if len(kinds) == 1 else "effect"
        out.append(f"- caveat: the fast segmenter's {which} does not hold under nnU-Net{base}: the {effect} is not "
                   "shown beyond the weaker segmenter")
    return out


def training_hours(work: Path) -> dict:
    """``{"slice VAE": h, "latent UNet": h}``: the training time the runs in ``work/vae`` and
    ``work/diffusion`` logged, resumed sittings included (NaN where no log is kept)."""
    from sbldm.training.trainer import training_seconds

    out = {name: training_seconds(Path(work) / d) / 3600 for name, d in (("slice VAE", "vae"),
                                                                         ("latent UNet", "diffusion"))}
    kept = Path(work) / RESTORED                # restored from a shipped card: the time its card gave
    if kept.is_file():
        hours = json.loads(kept.read_text()).get("training_hours", {})
        out = {k: (h if h == h else float(hours.get(k, h))) for k, h in out.items()}
    return out


def _hours_line(hours: dict | None) -> str:
    known = {k: h for k, h in (hours or {}).items() if h == h}
    return ("training time " + ", ".join(f"{k} {h:.2f} h" for k, h in known.items())
            + " (from the training logs, resumed sittings included)") if known else "training time not kept"


def model_card(cfg: Config, run: str, results: Path, half: dict | None, speed: dict | None = None,
               hours: dict | None = None) -> str:
    """The card's Markdown, every number read from ``results`` (or measured by ``ship``:
    ``half``, ``half_precision_effect``; ``speed``, ``sampling_speed``; ``hours``,
    ``training_hours``)."""
    record = json.loads((results / "run.json").read_text()) if (results / "run.json").is_file() else {}
    nbs = record.get("notebooks", {})
    trained = nbs.get("02_train_diffusion", {})
    lines = [f"# SBLDM, `{run}` preset — model card", "",
             "A slice-based latent diffusion model (Kebaili et al., ISBI 2024, as implemented by sbldm) that "
             "generates (FLAIR, " + ("tumour sub-region label map: 1 necrosis, 2 oedema, 3 enhancing"
                                     if cfg.tumour_labels == "regions" else "whole-tumour mask")
             + ") volumes conditioned on 9 tumour features.", "",
             "## Data", "",
             f"- {record.get('run', {}).get('data', 'phantom cohort')}: the sbldm phantom cohort (MNI152 anatomy with "
             f"synthetic tumours, `sbldm.data.phantom`), seed {cfg.seed}; {cfg.n_train} training volumes (the "
             f"{cfg.n_test} test volumes were never seen), resampled to {'x'.join(map(str, cfg.volume_shape))}.",
             "- Not trained on patient data; not for clinical use.", "",
             "## Training", "",
             f"- slice VAE: widths {list(cfg.vae_channels)}, {cfg.vae_latent_channels} latent channels, "
             f"{cfg.vae_steps} steps of batch {cfg.vae_batch_size}",
             f"- latent UNet: widths {list(cfg.unet_channels)}, {cfg.diffusion_steps} steps of batch "
             f"{cfg.diffusion_batch_size}, {cfg.diffusion_prediction_type}, mixed precision "
             f"{cfg.diffusion_mixed_precision or cfg.mixed_precision}; conditions {cfg.condition_normalization}-"
             f"normalised{', with the rendered tumour as an extra input' if cfg.unet_spatial_prior else ''}",
             f"- hardware: {trained.get('device', 'see results/' + run + '/run.json')}; commit "
             f"`{str(trained.get('git_commit', 'unknown'))[:12]}`; {_hours_line(hours)}", "",
             f"## Headline numbers (from `results/{run}/`)", ""]
    adh = [r for r in _table(results / "tables" / "conditioning_adherence.csv") if float(r["guidance_scale"]) == 1.0]
    if adh:
        r = adh[0]
        lines.append(f"- {r['n']} requested tumours, DDIM-{cfg.num_inference_steps}, no guidance: "
                     f"{float(r['empty_fraction']):.0%} empty masks, centre {float(r['centre_distance']):.2f} voxels "
                     f"from the request (random pairing {float(r['chance_centre_distance']):.1f}), volume Spearman "
                     f"{float(r['spearman_volume']):.3f}, median relative volume error "
                     f"{float(r['relative_volume_error']):.3f}")
    t1 = {r["method"]: r for r in _table(results / "tables" / "table1.csv")}
    if "SBLDM (DDIM)" in t1:
        r = t1["SBLDM (DDIM)"]
        lines.append(f"- Table 1 (unpaired, as the authors): PSNR {float(r['psnr']):.2f} dB, SSIM {float(r['ssim']):.3f}, "
                     f"{float(r['time_s_per_volume']):.1f} s per volume in fp32 on {r['device']}")
    from sbldm.tables import finite

    curves = _table(results / "tables" / "generator_budget.csv")
    real = next((r for r in curves if r.get("generator") == "real"), {})
    budget = [r for r in curves if r.get("generator", "").startswith("sbldm")
              and finite(r.get("steps")) == cfg.diffusion_steps and finite(r.get("vae_steps")) == cfg.vae_steps]
    if budget:
        b = budget[0]
        real_w = finite(real.get("interior_w_over_spread"))
        lines.append(f"- Inside the tumours and shape, from the budget curves' run at this budget (slice VAE "
                     f"{cfg.vae_steps} steps, UNet {cfg.diffusion_steps}; its own training run, 100 volumes): worst "
                     f"sub-region Wasserstein over the real spread {float(b['interior_w_over_spread']):.2f} (real test "
                     f"split {'?' if real_w is None else f'{real_w:.2f}'}), tumours with a part darker than normal brain "
                     f"{float(b['dark_part_share']):.0%} (real {float(b['dark_part_share_real']):.0%}), in more than one "
                     f"piece {float(b['multi_piece_26']):.0%} (real {float(b['multi_piece_26_real']):.0%}), sphericity "
                     f"Spearman {float(b['spearman_sphericity']):.2f}, surface-area Spearman "
                     f"{float(b['spearman_surface_area']):.2f}; Fréchet distance {float(b['frechet_ratio']):.1f}x the "
                     "real test split's")
    t2 = {r["row"]: r for r in _table(results / "tables" / "table2.csv")}
    if "real" in t2 and "real + SBLDM" in t2:
        from sbldm.report.readme import stale_notebooks
        from sbldm.segmentation.statistics import summarised_regions

        regions = summarised_regions(t2["real"])
        keys = [f"dice_{g}_mean" for g in regions] if len(regions) > 1 else ["dice_mean"]
        dice = lambda r: "/".join(f"{float(r[k]):.3f}" for k in keys)  # noqa: E731
        what = f"Dice {'/'.join(regions)}" if len(regions) > 1 else "whole-tumour Dice"
        stale = (" — stale: from an earlier cohort or model than this one"
                 if "06_segmentation_study" in stale_notebooks(record, results) else "")
        lines.append(f"- Table 2 ({t2['real'].get('seeds', '?')} segmenter seeds, {what}): real {dice(t2['real'])}, "
                     f"real + SBLDM {dice(t2['real + SBLDM'])}{stale}")
        check = {r["row"]: r for r in _table(results / "tables" / "table2_nnunet_check.csv")}
        lines += segmentation_verdict(t2["real + SBLDM"], check.get("real + SBLDM"), regions, t2["real"],
                                      check.get("real"))
    claims = _table(results / "tables" / "claims.csv")
    if claims:
        lines += ["", "## The paper's claims at this scale", "",
                  f"From `results/{run}/tables/claims.md`, where each verdict has its numbers and its reason. "
                  "Segmentation claims take the training run as the unit; \"no detectable effect\" means the seeds "
                  "cannot tell the effect from run-to-run noise.", ""]
        lines += [f"- {r['claim']}: **{r['verdict']}** (paper {r['paper']}; here {r['sbldm']})" for r in claims]
    lines += speed_and_storage(speed, half)
    lines += use_snippet(run, ['out.save_nifti("samples/")'])
    return "\n".join(lines)


def four_sequence_card(cfg: Config, run: str, name: str, results: Path, pipe, half: dict | None,
                       speed: dict | None = None) -> str:
    """The four-sequence pipeline's card (``pretrained/<run>-4seq``): what it generates, its
    training, and notebook 12's numbers read from ``results/<run>/tables/four_sequences_*``
    (reconstruction per sequence, the enhancing tumour on T1ce, adherence, the segmenters'
    comparisons with their seed-paired verdicts), speed, storage and use."""
    from sbldm.data.cohort import SEQUENCE_NAMES
    from sbldm.tables import finite

    record = json.loads((results / "run.json").read_text()) if (results / "run.json").is_file() else {}
    nb = record.get("notebooks", {}).get("12_four_sequences", {})
    seqs = ", ".join(SEQUENCE_NAMES[m] for m in pipe.vae.modalities)
    vae = pipe.vae.config
    lines = [f"# SBLDM of four sequences, `{run}` preset — model card", "",
             f"Beyond the paper: a slice-based latent diffusion model that generates {seqs} and the tumour "
             "sub-region label map (1 necrosis, 2 oedema, 3 enhancing) of one case at a time, conditioned on 9 tumour "
             "features. `out.save_nifti(folder)` writes one BraTS 2023 case folder per volume "
             "(`<id>-t1n/t1c/t2w/t2f/seg.nii.gz`), which BraTS loaders (this project's included) read.", "",
             "## Data", "",
             f"- the sbldm phantom cohort (MNI152 anatomy with synthetic tumours, `sbldm.data.phantom`), seed "
             f"{cfg.seed}: the cases and split of the FLAIR run, {cfg.n_train} training volumes (the {cfg.n_test} test "
             f"volumes were never seen), each sequence normalised on its own within the brain, resampled to "
             f"{'x'.join(map(str, cfg.volume_shape))}.",
             "- Not trained on patient data; not for clinical use.", "",
             "## Training", "",
             f"- slice VAE: {len(pipe.vae.modalities)} image channels, widths {list(vae['block_out_channels'])}, "
             f"{vae['latent_channels']} latent channels (chosen by notebook 12's reconstruction check on a held-out "
             f"part of the training split), {cfg.vae_steps} steps of batch {cfg.vae_batch_size}",
             f"- latent UNet: {cfg.diffusion_steps} steps of batch {cfg.diffusion_batch_size}, "
             f"{cfg.diffusion_prediction_type}, as the FLAIR model's (`pretrained/{run}`)",
             f"- hardware: {nb.get('device', 'see results/' + run + '/run.json')}; commit "
             f"`{str(nb.get('git_commit', 'unknown'))[:12]}`", "",
             f"## Numbers (from `results/{run}/tables/four_sequences_*`)", ""]
    rec = [r for r in _table(results / "tables" / "four_sequences_reconstruction.csv")
           if r["vae"].startswith("adopted")]
    psnr = [f"{r['sequence']} {float(r['mean']):.1f}" for r in rec if r["metric"] == "PSNR (dB), per volume"]
    if psnr:
        dice = [f"{r['metric'].split()[0]} {float(r['mean']):.2f}" for r in rec if r["sequence"] == "label map"]
        lines.append(f"- the slice VAE on the test split: PSNR (dB) {', '.join(psnr)}; decoded label map Dice "
                     f"{', '.join(dice)}")
    app = {(r["set"], r["sequence"]): r for r in _table(results / "tables" / "four_sequences_appearance.csv")}
    gen, real = app.get(("SBLDM, 4 sequences", "T1ce")), app.get(("real (train split)", "T1ce"))
    if gen and real:
        lines.append(f"- the enhancing tumour on generated T1ce: median z {float(gen['median_z_enhancing']):.2f} against "
                     f"the normal brain (real training tumours {float(real['median_z_enhancing']):.2f}); "
                     f"Wasserstein over the real spread {float(gen['w_over_spread_enhancing']):.2f}")
    enh = {r["sequence"]: r for r in _table(results / "tables" / "four_sequences_enhancing.csv")}.get("T1ce")
    if enh:
        inside = str(enh["inside_real_iqr"]).lower() in ("true", "1")
        lines.append(f"- the generated median {float(enh['generated_median_z']):.2f} lies "
                     + ("inside" if inside else "outside") + f" the real training tumours' interquartile range "
                     f"[{float(enh['real_q25']):.2f}, {float(enh['real_q75']):.2f}] on T1ce")
    adh = [r for r in _table(results / "tables" / "four_sequences_adherence.csv") if finite(r.get("guidance_scale")) == 1.0]
    if adh:
        r = adh[0]
        lines.append(f"- {r['n']} requested tumours, no guidance: {float(r['empty_fraction']):.0%} empty, centre "
                     f"{float(r['centre_distance']):.2f} voxels off, volume Spearman {float(r['spearman_volume']):.2f}")
    for r in _table(results / "tables" / "four_sequences_table2.csv"):
        if not r.get("against"):
            continue
        parts = [f"{g} {float(r[f'diff_{g}']):+.3f} [{float(r[f'ci95_low_{g}']):+.3f}, {float(r[f'ci95_high_{g}']):+.3f}] "
                 f"{r[f'verdict_{g}']}" for g in ("WT", "TC", "ET") if finite(r.get(f"diff_{g}")) is not None]
        if parts:
            lines.append(f"- {r['n_real']} real volumes, {r['training_set']} minus {r['against']} ({r['seeds']} seeds, "
                         f"Dice, 95% interval, verdict after Holm): " + "; ".join(parts))
    lines += speed_and_storage(speed, half)
    lines += use_snippet(name, [
        "out.sequences      # (N, 4, x, y, z): T1, T1ce, T2, FLAIR in [-1, 1]; out.labels: the label maps",
        'out.save_nifti("samples/")   # samples/BraTS-SAMPLE-00000-000/BraTS-SAMPLE-00000-000-t1n.nii.gz, ...'])
    return "\n".join(lines)


def ship(scale: str, work_root: Path = REPO_ROOT / "work", results_root: Path = REPO_ROOT / "results",
         dest_root: Path = SHIPPED, check_volumes: int = 4, check_steps: int = 20,
         speed_steps: int | None = None, four_sequences: bool = False) -> Path:
    """Write ``dest_root/<run>/`` from the trained pipeline of ``scale`` (default run folder);
    with ``check_volumes``, the card carries the fp16 storage check (``check_steps`` DDIM
    steps) and the sampling speed at ``speed_steps`` (default the preset's DDIM steps).
    ``four_sequences``: notebook 12's four-sequence pipeline to ``dest_root/<run>-4seq/``."""
    import torch

    from sbldm.data.cohort import load_prepared
    from sbldm.diffusion.pipeline import SBLDMPipeline

    cfg = resolve(scale)
    run = run_name(scale)
    base = Path(work_root) / run / ("four_sequences" if four_sequences else "")
    src = base / "pipeline"
    if not (src / "model_index.json").is_file():
        which = "notebook 12" if four_sequences else "notebooks 00-02"
        raise FileNotFoundError(f"{src}: no trained pipeline; run {which} at `{scale}` first")
    train = load_prepared(base / "data", "train")
    pipe32 = SBLDMPipeline.from_pretrained(src).set_metadata(affine=train.grid_affine)
    name = f"{run}-4seq" if four_sequences else run
    dest = Path(dest_root) / name
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(pipe32.to(torch.float16), tmp)     # no local path of this machine in the configs
    pipe16 = SBLDMPipeline.from_pretrained(tmp)
    # the source restored from an fp16 copy: comparing it with its own rounding says nothing
    half = None if four_sequences else restored_storage(base)
    if half is None and check_volumes:
        # the cast rounded pipe32's weights in place: compare against a fresh fp32 copy
        pipe32 = SBLDMPipeline.from_pretrained(src).set_metadata(affine=train.grid_affine)
        half = half_precision_effect(pipe32, pipe16, check_volumes, check_steps)
    speed = sampling_speed(pipe16, speed_steps or cfg.num_inference_steps) if check_volumes else None
    if four_sequences:
        card = four_sequence_card(cfg, run, name, Path(results_root) / run, pipe16, half, speed)
    else:
        hours = training_hours(base)
        card = model_card(cfg, run, Path(results_root) / run, half, speed, hours)
        known = {k: round(float(h), 4) for k, h in hours.items() if h == h}
        atomic_write_json(tmp / RECORD, {"training_hours": known,
                                         **({"storage": half} if half and not half.get("restored") else {})})
    atomic_write_bytes(tmp / CARD, card.encode())
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


#: written into ``work/<run>/`` by ``restore``: where its generator came from
RESTORED = "restored.json"


def shipped_hours(src: Path) -> dict:
    """``{"slice VAE": h, "latent UNet": h}`` of the pipeline shipped in ``src``: its
    ``training.json``, else (a folder shipped before that record existed) the card's
    training-time line; ``{}`` where neither keeps one."""
    record, card = Path(src) / RECORD, Path(src) / CARD
    if record.is_file():
        return {k: float(h) for k, h in json.loads(record.read_text()).get("training_hours", {}).items()}
    return card_hours(card.read_text()) if card.is_file() else {}


STORAGE_KEYS = ("volumes", "ddim_steps", "max_abs_image_difference", "mean_abs_image_difference",
                "mask_voxels_differing")


def shipped_storage(src: Path) -> dict | None:
    """The fp16 storage check (``half_precision_effect``'s numbers) of the pipeline shipped in
    ``src``: its ``training.json``, else its card's Storage line; None where neither has one."""
    record, card = Path(src) / RECORD, Path(src) / CARD
    if record.is_file():
        kept = json.loads(record.read_text()).get("storage")
        if kept:
            return {k: kept[k] for k in STORAGE_KEYS if k in kept}
    return card_storage(card.read_text()) if card.is_file() else None


def card_storage(card: str) -> dict | None:
    """The numbers of a card's Storage line (``speed_and_storage``), None where it has none."""
    import re

    m = re.search(r"on (\d+) volumes \(DDIM-(\d+)[^)]*\)[^:]*: largest image difference ([0-9.]+) .*?mean "
                  r"([0-9.]+); ([0-9.]+)% of mask voxels differ", card)
    if m is None:
        return None
    return {"volumes": int(m[1]), "ddim_steps": int(m[2]), "max_abs_image_difference": float(m[3]),
            "mean_abs_image_difference": float(m[4]), "mask_voxels_differing": float(m[5]) / 100}


def restored_storage(work: Path) -> dict | None:
    """None when ``work``'s pipeline was trained here; when ``restore`` put it back from an fp16
    copy, the storage check that copy's shipping measured (``kept_from`` names it), or
    ``{"restored": True}`` where none was kept."""
    kept = Path(work) / RESTORED
    if not kept.is_file():
        return None
    info = json.loads(kept.read_text())
    if not info.get("fp16_rounded"):
        return None
    src = Path(info.get("from", ""))
    # a restore from before the record kept it: the shipped copy's own record or card (still in place)
    storage = info["storage"] if "storage" in info else (shipped_storage(src) if src.name else None)
    return {**storage, "kept_from": f"pretrained/{src.name}"} if storage else {"restored": True}


def card_hours(card: str) -> dict:
    """``{"slice VAE": h, "latent UNet": h}`` from a card's training-time line (``_hours_line``),
    ``{}`` where the card kept none."""
    import re

    line = next((ln for ln in card.splitlines() if "training time" in ln), "")
    return {name: float(h) for name, h in re.findall(r"(slice VAE|latent UNet) ([0-9.]+) h", line)}


def restore(scale: str, work_root: Path = REPO_ROOT / "work", src_root: Path = SHIPPED, force: bool = False,
            progress: bool = True) -> Path:
    """The inverse of ``ship``: put the shipped pipeline ``src_root/<run>/`` back into
    ``work/<run>/`` as notebooks 01-02 leave it (``pipeline/``, the slice VAE in ``vae/``, the
    training split's ``latents/`` encoded by it), so that the notebooks after 02 (the
    data-scarce generators, the segmentation study) run on a machine whose ``work/`` was
    lost, without retraining the generator (1.4 h at ``small`` on a 2-core CPU).

    The weights come back from fp16 storage (the card gives what that changes in samples),
    so they are the trained ones rounded, not bit for bit; ``work/<run>/restored.json`` says
    so, with the card's training time (``training_hours`` reads it where no log is kept).
    Needs the prepared data (notebook 00) in ``work/<run>/data``; refuses to replace a
    trained ``vae/`` or ``pipeline/`` unless ``force``."""
    from sbldm.data.cohort import load_prepared
    from sbldm.diffusion.latents import encode_dataset, save_latents
    from sbldm.diffusion.pipeline import SBLDMPipeline
    from sbldm.provenance import git_commit

    resolve(scale)                                      # an unknown scale fails here, naming the presets
    run = run_name(scale)
    src, work = Path(src_root) / run, Path(work_root) / run
    if not (src / "model_index.json").is_file():
        raise FileNotFoundError(f"{src}: no shipped pipeline to restore (python -m sbldm.report.ship ships one)")
    if not (work / "data").is_dir():
        raise FileNotFoundError(f"{work / 'data'}: no prepared data; run notebook 00 at `{scale}` first "
                                f"(python -m sbldm.runner --scale {scale} --only 00)")
    taken = [d for d in ("vae", "pipeline") if (work / d).exists()]
    if taken and not force:
        raise FileExistsError(f"{work}: already holds {' and '.join(taken)}; restoring would replace trained "
                              "weights (pass force=True / --force to do it anyway)")
    train = load_prepared(work / "data", "train")
    pipe = SBLDMPipeline.from_pretrained(src)           # cast back to fp32
    if pipe.vae.image_channels != 1:
        raise ValueError(f"{src}: a {pipe.vae.image_channels}-sequence pipeline; restore puts back notebook 02's "
                         "one-sequence generator only (notebook 12 trains the four-sequence one)")
    shape = pipe.volume_shape
    if shape is not None and tuple(shape) != tuple(train.images.shape[1:4]):
        raise ValueError(f"{src}: a pipeline for volumes {shape}, but {work / 'data'} holds "
                         f"{tuple(train.images.shape[1:4])}")
    for name, save in (("pipeline", pipe.save_pretrained), ("vae", pipe.vae.save_pretrained)):
        tmp = work / f"{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        save(tmp)
        shutil.rmtree(work / name, ignore_errors=True)
        tmp.rename(work / name)
    vae = pipe.vae.float().eval()
    save_latents(work / "latents", encode_dataset(vae, train.images, train.labels, case_ids=train.case_ids,
                                                  progress=progress))
    atomic_write_json(work / RESTORED, {
        "from": str(src), "git_commit": git_commit(), "fp16_rounded": True, "training_hours": shipped_hours(src),
        "storage": shipped_storage(src)})
    return work


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sbldm.report.ship", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="small", help="the preset whose default run to ship (default: small)")
    ap.add_argument("--check-volumes", type=int, default=4, help="volumes sampled to measure the fp16 effect (0: skip)")
    ap.add_argument("--four-sequences", action="store_true",
                    help="ship notebook 12's four-sequence pipeline to pretrained/<run>-4seq instead")
    ap.add_argument("--restore", action="store_true",
                    help="the other way: put pretrained/<run> back into work/<run> (pipeline, slice VAE, latents) "
                         "so the notebooks after 02 run without retraining the generator")
    ap.add_argument("--force", action="store_true", help="with --restore: replace a trained work/<run>/vae or pipeline")
    a = ap.parse_args(argv)
    if a.restore:
        try:
            work = restore(a.scale, force=a.force)
        except (FileNotFoundError, FileExistsError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"restored {work} from {SHIPPED / run_name(a.scale)} (weights rounded to fp16 when shipped)")
        return 0
    try:
        dest = ship(a.scale, check_volumes=a.check_volumes, four_sequences=a.four_sequences)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"wrote {dest} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
