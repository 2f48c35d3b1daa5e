"""Quality against training compute for SBLDM, the 3D-LDM and the 3D-LSGAN: is a gap a
budget gap or a method gap?

Each generator trains once, extended by resuming: a *point* is the same run stopped at a
larger step count (the per-step random streams, the optimiser and the EMA continue, so
the point at 900 steps is the run at 1,800 seen halfway). At each point the generator is
saved under ``work/<run>/generator_budget/<generator>/points/<steps>/`` and scored
(``sbldm.evaluation.budget.score``) against the real training split of the same grid;
its row goes to ``rows/<generator>-<steps>.json`` beside it, so an interrupted sweep
resumes at the first point without a row.

- ``sbldm``: the slice VAE at ``--vae-steps`` (one run), the latent UNet at ``--sbldm``
  steps; its compute is the VAE's training time plus the UNet's.
- ``sbldm-vae<steps>``: an arm on a longer-trained slice VAE (``--vae-arms``; the same VAE
  run extended by resuming), its latent UNet at ``--vae-arm-points`` steps: the VAE's own
  budget point.
- ``vae_reconstruction``: each slice VAE's reconstructions of the first ``n`` training
  volumes, scored the same way: the decoder's ceiling, what no latent generator on that
  VAE can exceed (its ``steps`` are the VAE's, its hours the VAE's training).
- ``ldm3d``: the 3D autoencoder at the preset's ``ldm3d_ae_steps``, its UNet at
  ``--ldm3d`` steps; compute = both.
- ``lsgan3d``: ``--lsgan`` steps, with the preset's checkpoint selection on the training
  split (the point's generator is the best one scored up to that step).

``cpu_hours`` is the training's wall-clock time, in hours, on the machine that ran it
(``run.json``'s device; the committed table: a 2-core CPU), read from the runs' logs: it
counts training, not sampling or scoring.

``python -m sbldm.experiments.generator_budget --scale small`` trains and scores every
point not yet scored, then writes ``results/<run>/tables/generator_budget.{csv,md}`` and
``figures/generator_budget.png``; ``--train-only`` trains the points without scoring them.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from sbldm.io import atomic_write_json

GENERATORS = ("sbldm", "ldm3d", "lsgan3d")
#: the rows of a slice VAE's reconstructions (the decoder's ceiling)
CEILING = "vae_reconstruction"
#: default points at ``small``: SBLDM's latent UNet over 8x and beyond (the preset trains 1,800)
DEFAULT_POINTS = {"sbldm": (450, 900, 1800, 3600, 7200), "ldm3d": (750, 1500, 3000), "lsgan3d": (1500, 3000, 6000)}
DEFAULT_VAE_STEPS = 1500


def arm_name(vae_steps: int, method: str | None = None) -> str:
    """The SBLDM arm on a slice VAE trained ``vae_steps`` steps (beside the main ``sbldm``),
    with a method change of ``METHOD_CHANGES`` when ``method`` names one."""
    return f"sbldm-vae{int(vae_steps)}" + (f"-{method}" if method else "")


#: method changes measured at the best budget when a curve flattens before its target (notebook
#: 07's ablation measured them at 400 UNet steps): name -> config overrides of the latent UNet
METHOD_CHANGES = {"x0": {"diffusion_prediction_type": "sample"}, "minsnr5": {"diffusion_snr_gamma": 5.0}}


def _arm_order(generator: str) -> tuple:
    """Sort key of the SBLDM arms: by VAE steps, then the plain arm before its method changes."""
    rest = generator[len("sbldm-vae"):]
    steps, _, method = rest.partition("-")
    return int(steps), method


def kind_of(generator: str) -> str:
    """The registry kind behind a row's generator name (every SBLDM arm is ``sbldm``, the
    3D-LSGAN's unselected points ``lsgan3d``)."""
    return "sbldm" if generator.startswith("sbldm") else "lsgan3d" if generator.startswith("lsgan3d") else generator


def trained_generators(root: Path) -> list[str]:
    """The generators with trained points under ``root``, in table order: ``sbldm``, its
    VAE arms (by VAE steps), then the baselines."""
    found = [d.name for d in Path(root).glob("*") if (d / "points").is_dir()]
    arms = sorted((g for g in found if g.startswith("sbldm-vae")), key=_arm_order)
    return [g for g in ("sbldm", *arms, "ldm3d", "lsgan3d", LSGAN_LAST) if g in found]


def point_dir(root: Path, generator: str, steps: int) -> Path:
    return Path(root) / generator / "points" / str(int(steps))


def row_path(root: Path, generator: str, steps: int) -> Path:
    return Path(root) / "rows" / f"{generator}-{int(steps)}.json"


def _copy_model(src: Path, dst: Path) -> None:
    """``src`` copied to ``dst`` through a temporary sibling, so a killed copy leaves no
    half-written point behind."""
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)


class SBLDMRun:
    """The slice VAE (trained once) and the latent UNet extended point by point, under
    ``<root>/<name>``. ``extends``: another run's VAE folder that this run's VAE continues
    (copied when this run has none yet), so a longer VAE budget is the same run extended."""

    def __init__(self, cfg, train, root: Path, vae_steps: int, progress: bool = True, name: str = "sbldm",
                 extends: Path | None = None, method: str | None = None):
        self.cfg = cfg.replace(vae_steps=int(vae_steps), **METHOD_CHANGES.get(method or "", {}))
        if method and method not in METHOD_CHANGES:
            raise ValueError(f"unknown method change {method!r}; known: {', '.join(METHOD_CHANGES)}")
        self.name, self.extends, self.method = name, extends, method
        self.train, self.root, self.progress = train, Path(root) / name, progress
        self._vae = self._latents = None

    def vae(self):
        from sbldm.training.trainer import train_vae

        if self._vae is None:
            if self.extends is not None and not (self.root / "vae").exists():
                if not (Path(self.extends) / "checkpoints").is_dir():
                    raise FileNotFoundError(f"{self.extends}: no slice VAE run to extend")
                self.root.mkdir(parents=True, exist_ok=True)
                _copy_model(Path(self.extends), self.root / "vae")
            self._vae = train_vae(self.cfg, self.train, self.root / "vae", progress=self.progress)
        return self._vae

    def latents(self):
        from sbldm.diffusion.latents import encode_dataset

        if self._latents is None:
            self._latents = encode_dataset(self.vae(), self.train.images, self.train.labels,
                                           case_ids=self.train.case_ids, progress=self.progress)
        return self._latents

    def train_to(self, steps: int) -> Path:
        from sbldm.generators.registry import SBLDMGenerator
        from sbldm.training.trainer import train_pipeline

        cfg = self.cfg.replace(diffusion_steps=int(steps))
        dst = point_dir(self.root.parent, self.name, steps)
        if not (dst / "budget.json").is_file():
            pipe = train_pipeline(cfg, self.vae(), self.latents(), self.train, self.root / "unet",
                                  progress=self.progress)
            tmp = self.root / "model.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            SBLDMGenerator(pipe, cfg.sampler, cfg.num_inference_steps, cfg.eta, cfg.guidance_scale).save_pretrained(tmp)
            _copy_model(tmp, dst)
            shutil.rmtree(tmp)
            atomic_write_json(dst / "budget.json", {"steps": int(steps), "vae_steps": self.cfg.vae_steps,
                                                    "method": self.method or "",
                                                    "changes": METHOD_CHANGES.get(self.method or "", {}),
                                                    "train_seconds": self.seconds()})
        return dst

    def seconds(self) -> float:
        from sbldm.training.trainer import training_seconds

        return self.vae_seconds() + training_seconds(self.root / "unet")

    def vae_seconds(self) -> float:
        from sbldm.training.trainer import training_seconds

        return training_seconds(self.root / "vae")


class BaselineRun:
    """A baseline trained through the registry's trainer into ``<root>/<name>/run`` and
    extended point by point: ``steps_field`` is the config field a point sets, ``stages``
    the run folders whose training time counts, ``record`` what else a point records."""

    name = steps_field = ""
    stages: tuple[str, ...] = ()

    def __init__(self, cfg, train, root: Path, progress: bool = True):
        self.cfg, self.train, self.root, self.progress = cfg, train, Path(root) / self.name, progress

    def record(self, cfg) -> dict:
        return {}

    def train_to(self, steps: int) -> Path:
        from sbldm.generators.registry import train_generator

        cfg = self.cfg.replace(**{self.steps_field: int(steps)})
        dst = point_dir(self.root.parent, self.name, steps)
        if not (dst / "budget.json").is_file():
            train_generator(self.name, cfg, self.train, self.root / "run", progress=self.progress)
            _copy_model(self.root / "run" / "model", dst)
            atomic_write_json(dst / "budget.json", {"steps": int(steps), **self.record(cfg),
                                                    "train_seconds": self.seconds()})
        return dst

    def seconds(self) -> float:
        from sbldm.training.trainer import training_seconds

        return sum(training_seconds(self.root / "run" / stage) for stage in self.stages)


class LDM3DRun(BaselineRun):
    """The 3D autoencoder at the preset's budget, the UNet extended point by point."""

    name, steps_field, stages = "ldm3d", "ldm3d_diffusion_steps", ("autoencoder", "unet")

    def record(self, cfg) -> dict:
        return {"ae_steps": cfg.ldm3d_ae_steps}


#: the 3D-LSGAN run's points with the generator training left at each, unselected
LSGAN_LAST = "lsgan3d-last"


class LSGANRun(BaselineRun):
    """The 3D-LSGAN extended point by point: its kept generator is the best scored so far
    by checkpoint selection on the training split (``budget.json``'s ``selected_step``),
    and ``LSGAN_LAST`` keeps, beside it, the generator of the point's last step (what
    training alone reached), saved when the run stands at that point."""

    name, steps_field, stages = "lsgan3d", "lsgan_steps", ("",)

    def train_to(self, steps: int) -> Path:
        from sbldm.generators.lsgan3d import last_generator, selected_step

        dst = super().train_to(steps)
        budget = read_budget(dst)
        if "selected_step" not in budget:
            budget["selected_step"] = selected_step(self.root / "run", steps)
            atomic_write_json(dst / "budget.json", budget)
        last = point_dir(self.root.parent, LSGAN_LAST, steps)
        if self.cfg.lsgan_select_every and not (last / "budget.json").is_file():    # without selection: the same
            at, gan = last_generator(self.root / "run")
            if at == int(steps):            # an earlier point's last generator is gone once the run moved on
                tmp = last.with_name(last.name + ".tmp")
                if tmp.exists():
                    shutil.rmtree(tmp)
                gan.save_pretrained(tmp)                # written beside, then renamed: never half a point
                if last.exists():
                    shutil.rmtree(last)
                tmp.rename(last)
                atomic_write_json(last / "budget.json", {"steps": int(steps), "selected_step": int(steps),
                                                         "train_seconds": budget["train_seconds"]})
        return dst


def runs(cfg, train, root: Path, vae_steps: int = DEFAULT_VAE_STEPS, progress: bool = True) -> dict:
    return {"sbldm": SBLDMRun(cfg, train, root, vae_steps, progress), "ldm3d": LDM3DRun(cfg, train, root, progress),
            "lsgan3d": LSGANRun(cfg, train, root, progress)}


def read_budget(point: Path) -> dict:
    return json.loads((Path(point) / "budget.json").read_text())


#: display names (the method palette's keys)
NAMES = {"sbldm": "SBLDM (DDIM)", "ldm3d": "3D-LDM", "lsgan3d": "3D-LSGAN", "real": "real (test split)",
         CEILING: "slice VAE reconstruction (the decoder's ceiling)",
         LSGAN_LAST: "3D-LSGAN, the last generator (unselected)"}


def display_name(generator: str) -> str:
    if generator.startswith("sbldm-vae"):
        steps, method = _arm_order(generator)
        return f"SBLDM (DDIM), slice VAE {steps} steps" + (f", {method}" if method else "")
    if generator.startswith("sbldm-"):
        return f"SBLDM (DDIM), {generator[len('sbldm-'):]}"
    return NAMES[generator]


def eval_segmenter(cfg, train, path: Path):
    """The real-data segmenter whose bottleneck is the Fréchet feature space (notebook
    04's, trained on the training split when its file is missing)."""
    from sbldm.segmentation import fast

    if Path(path).is_file():
        return fast.Segmenter.load(path)
    seg = fast.train_fast(train.images, train.masks, cfg, seed=cfg.seed)
    seg.save(path)
    return seg


def score_point(cfg, root: Path, generator: str, steps: int, ref: dict, n: int, progress: bool = True) -> dict:
    """The row of one trained point (read back when it was scored before)."""
    from sbldm.evaluation.budget import score
    from sbldm.generators.registry import load_generator

    out = row_path(root, generator, steps)
    point = point_dir(root, generator, steps)
    budget = read_budget(point)
    if out.is_file():                   # a row scored before the kept step was recorded gets it from budget.json
        row = json.loads(out.read_text())
        return {**row, **({"selected_step": budget["selected_step"]} if "selected_step" in budget else {})}
    gen = load_generator(point)
    row = {"generator": generator, "steps": int(steps), "cpu_hours": budget["train_seconds"] / 3600,
           **{k: v for k, v in budget.items() if k.endswith("_steps") or k in ("method", "selected_step")},
           **score(gen, kind_of(generator), ref, n, seed=cfg.seed, batch_size=cfg.eval_batch_size,
                   cache=point / "samples.npz", progress=progress)}
    row["generator"] = generator
    atomic_write_json(out, row)
    return row


#: real training volumes the synthetic-only segmenter is scored on (``utility_row``)
UTILITY_EVAL = 50
#: the whole-tumour Dice a baseline's synthetic-only segmenter should reach to count as trained
#: (the paper's 3D-LSGAN: 0.355 in its Table 2)
UTILITY_TARGET = 0.3


def utility_path(root: Path, generator: str, steps: int) -> Path:
    return Path(root) / "rows" / f"{generator}-{int(steps)}.utility.json"


def utility_row(cfg, root: Path, generator: str, steps: int, train, n_eval: int = UTILITY_EVAL) -> dict:
    """What a point's volumes are worth to a segmenter: the fast backend trained on the
    point's scored sample set alone (``samples.npz``; ``cfg.seg_iterations`` steps, seed
    ``cfg.seed``; a whole-tumour mask counts as oedema, no core), its volume Dice per BraTS
    region (``synthetic_only_dice_WT/TC/ET``) on the first ``n_eval`` real training volumes.
    The generator trained on those volumes, the segmenter did not; the test split chooses
    nothing. Read back when measured before (``rows/<generator>-<steps>.utility.json``)."""
    from sbldm.segmentation.brats_metrics import region_dice_rows
    from sbldm.segmentation.fast import CLASSES, train_fast

    out = utility_path(root, generator, steps)
    if out.is_file():
        return json.loads(out.read_text())
    with np.load(point_dir(root, generator, steps) / "samples.npz", allow_pickle=False) as z:
        images = z["images"]
        labels = z["labels"] if "labels" in z.files and z["labels"].size else z["masks"].astype(np.uint8) * 2
    regions = cfg.tumour_labels == "regions"
    targets = labels if regions else (labels > 0).astype(np.uint8)
    seg = train_fast(images, targets, cfg, seed=cfg.seed, classes=CLASSES[cfg.tumour_labels])
    pred = np.asarray(seg.predict(train.images[:n_eval]))
    ref = np.asarray(train.labels[:n_eval])
    if not regions:                  # binary predictions: the whole tumour only, as oedema
        pred = (pred > 0).astype(np.uint8) * 2
    dice = {r["region"]: r["mean"] for r in region_dice_rows(pred, ref)}
    row = {f"synthetic_only_dice_{k}": v for k, v in dice.items() if regions or k == "WT"}
    row["synthetic_only_n_eval"] = int(len(ref))
    atomic_write_json(out, row)
    return row


#: columns that mean nothing for reconstructions of training volumes (each is its own nearest)
_NOT_FOR_CEILING = ("nearest_train_ssim_median", "nearest_train_ssim_max", "nearest_train_ssim_vs_test")


def ceiling_row(run: SBLDMRun, ref: dict, n: int, progress: bool = True) -> dict:
    """The row of ``run``'s slice VAE reconstructing the first ``n`` training volumes
    through its posterior mean (read back when scored before): what the decoder can show
    at best. Its Fréchet distance is the cost of decoding alone (the real volumes against
    themselves score 0); the memorisation columns stay empty."""
    import math

    from sbldm.diffusion.latents import reconstruct_volumes
    from sbldm.evaluation.budget import set_measures

    out = row_path(run.root.parent, CEILING, run.cfg.vae_steps)
    if out.is_file():
        return json.loads(out.read_text())
    train = run.train
    images, masks, labels = reconstruct_volumes(run.vae(), train.images[:n], train.labels[:n], progress=progress)
    row = {"generator": CEILING, "steps": run.cfg.vae_steps, "cpu_hours": run.vae_seconds() / 3600,
           "vae_steps": run.cfg.vae_steps, **set_measures(images, masks, labels, ref)}
    row.update({k: math.nan for k in _NOT_FOR_CEILING})
    atomic_write_json(out, row)
    return row


def real_row(test, ref: dict) -> dict:
    from sbldm.evaluation.budget import set_measures

    return {"generator": "real", "steps": None, "cpu_hours": None,
            **set_measures(test.images, test.masks, test.labels, ref)}


#: the columns of the committed table, in this order (the rows hold a few more)
COLUMNS = ("generator", "steps", "cpu_hours", "vae_steps", "ae_steps", "method", "selected_step", "n", "empty_share", "core_share",
           "w_over_spread_necrosis", "w_over_spread_oedema", "w_over_spread_enhancing", "interior_w_over_spread",
           "median_z_necrosis", "median_z_oedema", "median_z_enhancing",
           "dark_part_share", "dark_part_share_real", "texture_std_z", "texture_std_z_real",
           "laplacian_ratio", "high_frequency_ratio",
           "pieces_6", "multi_piece_6", "pieces_26", "multi_piece_26", "multi_piece_26_real",
           "psnr", "ssim", "frechet", "frechet_ratio", "ms_ssim_pairwise",
           "nearest_train_ssim_median", "nearest_train_ssim_max", "nearest_train_ssim_vs_test",
           "relative_volume_error", "centre_distance", "empty_fraction",
           "spearman_voxel_volume", "spearman_surface_area", "spearman_sphericity", "spearman_x", "spearman_y",
           "spearman_z", "spearman_w", "spearman_h", "spearman_d", "sphericity_error", "box_error",
           "smallest_requested_voxels", "smallest_empty", "smallest_volume_ratio", "seconds_per_volume",
           "synthetic_only_dice_WT", "synthetic_only_dice_TC", "synthetic_only_dice_ET")


def table_notes(cfg, n: int, vae_steps: int) -> list[str]:
    from sbldm.evaluation.budget import DARK_Z, SMALLEST_SEEDS

    return [
        f"scale `{cfg.scale}`, seed {cfg.seed}; one training run per generator extended by resuming, scored at each "
        f"point on {n} volumes (DDIM {cfg.num_inference_steps} under bf16 autocast for the diffusion models); "
        "every comparison is against the real training split (the test split chose nothing); the `real` row is the "
        "real test split scored the same way (the target)",
        f"cpu_hours: training wall-clock hours on the machine that ran it (2-core CPU for the committed table): "
        f"SBLDM = slice VAE ({vae_steps} steps) + latent UNet; 3D-LDM = autoencoder + UNet; sampling not counted",
        "w_over_spread_*: Wasserstein distance between the per-tumour median z of a sub-region and the real "
        "training tumours', over their std; interior_w_over_spread: the worst of the three",
        f"dark_part_share: tumours with a sub-region whose median z is below {DARK_Z} (darker than normal brain); "
        "texture_std_z: median std of z inside the whole tumour",
        "laplacian_ratio / high_frequency_ratio: the normal brain's mean |in-plane Laplacian| and the share of "
        "spectral energy above half Nyquist, over the real training split's (1 = as sharp)",
        "pieces_6/26: mean connected pieces of the whole tumour; multi_piece_*: share in more than one piece",
        "psnr, ssim: Table 1's unpaired measures (volume k against a random training volume), so Table 1 can be "
        "read at matched compute",
        "frechet: Fréchet distance in the real-data segmenter's bottleneck features to the training split; "
        "frechet_ratio: over the real test split's",
        "nearest_train_ssim_*: SSIM of each volume to its nearest training volume (memorisation); _vs_test: the "
        "median over the real test split's",
        "SBLDM only (the baselines cannot be asked for a tumour): spearman_* requested against drawn per feature, "
        "sphericity_error, box_error, relative_volume_error, centre_distance (voxels), empty_fraction; "
        f"smallest_*: the smallest training tumour requested with {SMALLEST_SEEDS} noise seeds",
        f"synthetic_only_dice_*: volume Dice per BraTS region of the fast segmenter ({cfg.seg_iterations} steps) "
        f"trained on the point's {n} volumes alone, on the first {UTILITY_EVAL} real training volumes (the test "
        "split chooses nothing)",
        "method: a method change of the latent UNet at that budget (" + "; ".join(
            f"{k}: {', '.join(f'{f}={v}' for f, v in c.items())}" for k, c in METHOD_CHANGES.items())
        + "), the arm named sbldm-vae<steps>-<method>",
        "sbldm-vae<steps>: SBLDM on the same slice VAE run extended to that many steps (the VAE's second budget); "
        f"{CEILING}: that VAE's reconstructions of the first n training volumes (steps and cpu_hours: the VAE's), "
        "what no generator decoded by it can exceed; its Fréchet distance is the cost of decoding alone (real "
        "against itself: 0), its memorisation columns are empty",
    ]


def budget_figure(rows: list[dict], path, suptitle: str | None = None) -> None:
    """Quality against training hours, the three generators on one axis per measure, the
    real test split (and the target, where one is set) as horizontal lines."""
    import math

    from sbldm.evaluation.budget import TARGETS
    from sbldm.plotting import agg_pyplot, figure_legend, layout, method_styles, save_figure
    from sbldm.tables import finite

    from matplotlib.ticker import FuncFormatter, NullFormatter

    plt = agg_pyplot()
    panels = [("frechet_ratio", "Fréchet distance / real test split's", TARGETS["frechet_ratio"], None),
              ("interior_w_over_spread", "worst interior W / spread", TARGETS["interior_w_over_spread"], None),
              ("dark_part_share", "share of tumours with a dark part", None, "dark_part_share_real"),
              ("multi_piece_26", "share in >1 piece (26-conn.)", None, "multi_piece_26_real"),
              ("laplacian_ratio", "normal-brain |Laplacian| / real", None, None),
              ("spearman_sphericity", "Spearman, sphericity asked vs drawn", None, None),
              ("synthetic_only_dice_WT", "synthetic-only segmenter, WT Dice", UTILITY_TARGET, None)]
    real = next((r for r in rows if r["generator"] == "real"), None)
    gens = list(dict.fromkeys(r["generator"] for r in rows if r["generator"] != "real"))
    styles = method_styles([display_name(g) for g in gens] + [NAMES["real"]])
    fig, axes = plt.subplots(2, 4, figsize=(15.5, 6.6))
    axes.flat[-1].set_axis_off()                # seven measures
    handles = []
    for ax, (key, title, target, real_key) in zip(axes.flat, panels):
        for g in gens:
            pts = sorted((r for r in rows if r["generator"] == g), key=lambda r: r["cpu_hours"])
            xs = [r["cpu_hours"] for r in pts]
            ys = [r.get(key, math.nan) for r in pts]
            st = dict(styles[display_name(g)])
            if g == CEILING:            # a ceiling, at the VAE's own hours: dotted, starred
                st["linestyle"] = ":"
            (h,) = ax.plot(xs, ys, marker="*" if g == CEILING else "o", ms=6 if g == CEILING else 4,
                           label=display_name(g), **st)
            if ax is axes.flat[0]:
                handles.append(h)
            for x, y, r in zip(xs, ys, pts):
                if y is not None and math.isfinite(y):
                    ax.annotate(str(r["steps"]), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6,
                                color=st["color"])
        ref_value = real.get(real_key or key) if real else None
        if real_key:
            ref_value = next((r[real_key] for r in rows if r.get(real_key) is not None), None)
        if ref_value is not None and math.isfinite(ref_value):
            h = ax.axhline(ref_value, color=styles[NAMES["real"]]["color"], lw=1, ls="--",
                           label="real (training split)" if real_key else NAMES["real"])
        if target is not None:
            ax.axhline(target, color="0.4", lw=0.8, ls=":")
            ax.text(1.0, target, " target", transform=ax.get_yaxis_transform(), fontsize=7, va="center",
                    color="0.3", clip_on=False)
        if not any(finite(r.get(key)) is not None for r in rows if r["generator"] != "real"):
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", fontsize=8, color="0.4")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.set_xscale("log", base=2)            # each tick one doubling of the training hours
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training hours (this CPU)", fontsize=8)
        ax.tick_params(labelsize=7)
    from matplotlib.lines import Line2D

    handles.append(Line2D([], [], color=styles[NAMES["real"]]["color"], ls="--", lw=1,
                          label="real (dashed: the panel's real reference)"))
    handles.append(Line2D([], [], color="0.4", ls=":", lw=0.8, label="target"))
    layout(fig, suptitle, legend=True)
    figure_legend(fig, handles)
    save_figure(fig, path)


def write_outputs(rows: list[dict], tables_dir: Path, figures_dir: Path, cfg, n: int, vae_steps: int) -> str:
    from sbldm.tables import write_table

    def order(r):
        g = r["generator"]
        rank = {"real": 0, CEILING: 1, "sbldm": 2, "ldm3d": 4, "lsgan3d": 5, LSGAN_LAST: 6}.get(g, 3)
        return rank, _arm_order(g) if g.startswith("sbldm-vae") else (0, ""), r["steps"] or 0

    rows = sorted(rows, key=order)
    md = write_table(rows, Path(tables_dir) / "generator_budget", columns=COLUMNS,
                     title=f"Generators: quality against training compute ({cfg.scale})",
                     notes=table_notes(cfg, n, vae_steps))
    budget_figure(rows, Path(figures_dir) / "generator_budget.png",
                  suptitle=f"Quality against training compute ({cfg.scale}; each point one run, extended)")
    from sbldm.evaluation.budget import MAX_DOUBLINGS, matched_table1, target_report

    matched = matched_table1(rows)
    if matched:
        write_table(matched, Path(tables_dir) / "generator_budget_table1",
                    title=f"Table 1 at matched compute ({cfg.scale})",
                    notes=["each baseline point against SBLDM's point with the nearest training hours (this CPU)",
                           "psnr, ssim: Table 1's unpaired measures against the real training split (higher is "
                           "better); seconds_per_volume: sampling time per volume, DDIM under bf16 autocast for the "
                           "diffusion models (lower is better); *_winner: the better of the two"])

    arms = list(dict.fromkeys(r["generator"] for r in rows if r["generator"].startswith("sbldm")))
    targets = [{"generator": g, **t} for g in arms for t in target_report(rows, g)]
    write_table(targets, Path(tables_dir) / "generator_budget_targets",
                title=f"SBLDM's targets at its largest budget, and where its curve heads ({cfg.scale})",
                notes=["generator: the SBLDM arm (sbldm-vae<steps>: on a slice VAE trained that many steps); "
                       "value: the arm at its largest budget (hours: its training hours); met: value <= target",
                       "per_doubling: the change per doubling of the training hours, a straight line through the "
                       "last three points in log2(hours); hours_to_target: where that line reaches the target, NaN "
                       "unless each of those points is below the one before it, or when the line needs more than "
                       f"{MAX_DOUBLINGS} doublings (budget alone not shown to get there); an extrapolation of one "
                       "run, not a measurement",
                       "*_gap: |SBLDM - real training split|; interior_w_over_spread: the worst sub-region's "
                       "Wasserstein distance over the real spread; frechet_ratio: over the real test split's; "
                       "smallest_empty: of 8 requests of the smallest training tumour"])
    return md


def main(argv=None) -> None:
    from sbldm.config import resolve
    from sbldm.data.cohort import load_prepared
    from sbldm.paths import REPO_ROOT
    from sbldm.runs import run_name

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="small")
    ap.add_argument("--generators", nargs="+", default=list(GENERATORS), choices=GENERATORS)
    for g in GENERATORS:
        ap.add_argument(f"--{g}", type=int, nargs="+", default=None, help=f"{g}'s points (training steps)")
    ap.add_argument("--vae-steps", type=int, default=DEFAULT_VAE_STEPS, help="the slice VAE's budget")
    ap.add_argument("--vae-arms", type=int, nargs="*", default=[],
                    help="further slice VAE budgets (the same VAE run extended), each an SBLDM arm sbldm-vae<steps>")
    ap.add_argument("--vae-arm-points", type=int, nargs="+", default=[1800],
                    help="the latent UNet's points on each further VAE")
    ap.add_argument("--method-arms", nargs="*", default=[], choices=list(METHOD_CHANGES),
                    help="method changes, each an arm on the last VAE budget at --vae-arm-points")
    ap.add_argument("--n", type=int, default=None,
                    help="volumes scored per point (default: eval_n_samples, Table 1's count; at small the test "
                         "split's size, so the Fréchet distances share their small-sample bias)")
    ap.add_argument("--train-only", action="store_true", help="train the points, score nothing")
    ap.add_argument("--table-only", action="store_true", help="write the table and figure from the scored rows")
    ap.add_argument("--overrides", type=json.loads, default={},
                    help="config overrides as JSON, e.g. '{\"vae_lr\": 1e-4}': the study of that run "
                         "(work/<run>/, results/<run>/, as the notebook chain names it)")
    ap.add_argument("--work-root", type=Path, default=REPO_ROOT / "work",
                    help="where work/<run>/data (notebook 00's) is read and the runs are kept")
    ap.add_argument("--results-root", type=Path, default=REPO_ROOT / "results", help="where results/<run>/ goes")
    args = ap.parse_args(argv)
    if not isinstance(args.overrides, dict):
        ap.error(f"--overrides must be a JSON object, got {args.overrides!r}")
    cfg = resolve(args.scale, **args.overrides)
    n = args.n or cfg.eval_n_samples
    run = run_name(args.scale, overrides=args.overrides)
    work = Path(args.work_root) / run
    if not (work / "data").is_dir():
        ap.error(f"{work / 'data'} holds no prepared cohort: run notebook 00 for this run first "
                 f"(python -m sbldm.runner --scale {args.scale} --only 00)")
    root = work / "generator_budget"
    train = load_prepared(work / "data", "train")
    wanted = {g: getattr(args, g) or DEFAULT_POINTS[g] for g in args.generators}
    vae_runs = [SBLDMRun(cfg, train, root, args.vae_steps)] + [
        SBLDMRun(cfg, train, root, s, name=arm_name(s), extends=root / "sbldm" / "vae") for s in args.vae_arms]
    last = vae_runs[-1]
    method_runs = [SBLDMRun(cfg, train, root, last.cfg.vae_steps, method=m, extends=last.root / "vae",
                            name=arm_name(last.cfg.vae_steps, m) if last.name != "sbldm" else f"sbldm-{m}")
                   for m in args.method_arms]
    if not args.table_only:
        gens = runs(cfg, train, root, args.vae_steps)
        for g, points in wanted.items():
            for steps in points:
                gens[g].train_to(steps)
                print(f"{g} at {steps} steps: {read_budget(point_dir(root, g, steps))}", flush=True)
        for arm in vae_runs[1:] + method_runs:
            for steps in args.vae_arm_points:
                arm.train_to(steps)
                print(f"{arm.name} at {steps} steps: {read_budget(point_dir(root, arm.name, steps))}", flush=True)
    if args.train_only:
        return
    test = load_prepared(work / "data", "test")
    from sbldm.evaluation.budget import reference

    seg = eval_segmenter(cfg, train, root / "eval_segmenter.pt")
    ref = reference(train, test, seg.features)
    rows = [real_row(test, ref)]
    for vrun in vae_runs:
        if args.table_only and not row_path(root, CEILING, vrun.cfg.vae_steps).is_file():
            continue
        rows.append(ceiling_row(vrun, ref, n))
        print(f"scored the slice VAE at {vrun.cfg.vae_steps} steps", flush=True)
    for g in trained_generators(root):
        for steps in sorted(int(p.name) for p in (root / g / "points").glob("*") if (p / "budget.json").is_file()):
            if args.table_only and not row_path(root, g, steps).is_file():
                continue
            rows.append({**score_point(cfg, root, g, steps, ref, n), **utility_row(cfg, root, g, steps, train)})
            print(f"scored {g} at {steps} steps", flush=True)
    results = Path(args.results_root) / run
    print(write_outputs(rows, results / "tables", results / "figures", cfg, n, args.vae_steps))


if __name__ == "__main__":
    main()
