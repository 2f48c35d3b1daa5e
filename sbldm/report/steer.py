"""Steer a tumour live: the interactive controls of notebook 08.

    from sbldm.diffusion.pipeline import SBLDMPipeline
    from sbldm.report.steer import TumourSteering

    steer = TumourSteering(SBLDMPipeline.from_pretrained("../pretrained/small"))
    steer.widget()           # sliders, "generate" and "save NIfTI" buttons, the figure below them

The controls are the paper's conditioning features: the whole-tumour volume, its
sphericity, its centre (x, y, z) and its bounding box (w, h, d), plus the guidance scale,
the number of DDIM steps and the seed. Changing the volume rescales the box as a real
tumour's would (``ConditionSampler.sweep``); the surface area always follows volume and
sphericity. ``generate`` samples one volume and draws axial, coronal and sagittal views
through the requested centre, the mask outlined, with the requested and the obtained
features side by side. A pipeline trained with the sub-region condition
(``condition_subregions``) gets two more sliders, the necrosis and enhancing shares of the
tumour. Everything works without a browser (``generate()`` and ``save()`` are plain
methods), which is how the tests and papermill drive it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from sbldm.config import FEATURE_NAMES
from sbldm.data.tumour import SUBREGION_FEATURES, ConditionSampler, area_from, subregion_shares, tumour_features
from sbldm.runtime import cpu_bf16

#: the features a user sets; the surface area follows from volume and sphericity
CONTROLS = ("voxel_volume", "sphericity", "x", "y", "z", "w", "h", "d")
#: grid of the volume slider, in log10(voxels): 0.02 is a 4.7% step
VOLUME_LOG_STEP = 0.02
#: grid of the sphericity slider
SPHERICITY_STEP = 0.01


def _on_grid(value: float, lo: float, hi: float, step: float) -> float:
    """``value`` moved to the nearest point ``lo + k * step`` inside [lo, hi]: a slider
    shows only such points, so a value off the grid would be shown as another one."""
    k = round((float(np.clip(value, lo, hi)) - lo) / step)
    return float(min(lo + k * step, hi))


def _on_log_grid(value: float, e_lo: float, e_hi: float, step: float) -> float:
    """``value`` moved to the nearest ``10 ** (e_lo + k * step)`` inside the slider's range."""
    return float(10.0 ** _on_grid(np.log10(max(float(value), 1e-12)), e_lo, e_hi, step))


def _snap_widget(slider) -> None:
    """Put a (log) float slider's value back on its grid if it was set off it."""
    if slider.__class__.__name__ == "FloatLogSlider":
        snapped = _on_log_grid(slider.value, slider.min, slider.max, slider.step)
    else:
        snapped = _on_grid(slider.value, slider.min, slider.max, slider.step)
    if not np.isclose(snapped, slider.value, rtol=1e-12, atol=0.0):
        slider.value = snapped


class TumourSteering:
    """Controls and a generate/save loop around one ``SBLDMPipeline``."""

    def __init__(self, pipe, steps: int = 20, guidance_scale: float = 1.0, seed: int = 0, bf16: bool = True):
        if pipe.train_features is None or pipe.volume_shape is None:
            raise ValueError("the pipeline holds no training features or volume shape to steer from "
                             "(save it with SBLDMPipeline.from_components(..., train_features=...))")
        self.pipe = pipe
        self.shape = tuple(pipe.volume_shape)
        feats = np.asarray(pipe.train_features, np.float64)
        self.lo, self.hi = feats.min(0), feats.max(0)
        self.base = feats[np.argsort(feats[:, 0])[len(feats) // 2]].copy()     # the median-volume tumour
        self.sampler = ConditionSampler(feats, self.shape)
        self.values = dict(zip(FEATURE_NAMES, map(float, self.base)))
        stats = pipe.conditioner.subregions
        # a pipeline conditioned on the sub-regions: start from the training tumours' median shares
        self.subregions = None if stats is None else dict(zip(SUBREGION_FEATURES,
                                                               map(float, np.median(np.asarray(stats["train"]), 0))))
        self.steps, self.guidance_scale, self.seed, self.bf16 = int(steps), float(guidance_scale), int(seed), bf16
        self.last = None               # the last SBLDMOutput
        self.last_seconds = None
        self.figure = None
        self._widgets = None

    # -- the request ----------------------------------------------------------------------

    def set(self, **values) -> dict:
        """Set any of ``CONTROLS`` (and the sub-region shares, for a pipeline conditioned on
        them); a new volume rescales the box (and the area) with it."""
        allowed = CONTROLS + (SUBREGION_FEATURES if self.subregions is not None else ())
        unknown = set(values) - set(allowed)
        if unknown:
            raise ValueError(f"unknown control(s) {', '.join(sorted(unknown))}; choose from {', '.join(allowed)}")
        for k in SUBREGION_FEATURES:
            if k in values:
                self.subregions[k] = float(values.pop(k))
        if "voxel_volume" in values and not any(k in values for k in ("w", "h", "d")):
            current = np.array([self.values[k] for k in FEATURE_NAMES])
            scaled = self.sampler.sweep(current, "voxel_volume", [float(values["voxel_volume"])])[0]
            self.values.update({k: float(v) for k, v in zip(FEATURE_NAMES, scaled) if k in ("w", "h", "d", "x", "y", "z")})
        self.values.update({k: float(v) for k, v in values.items()})
        self.values["surface_area"] = float(area_from(np.float64(self.values["voxel_volume"]),
                                                      np.float64(self.values["sphericity"])))
        return self.request()

    def request(self) -> dict:
        """The 9 raw features that ``generate`` asks for."""
        return {k: float(self.values[k]) for k in FEATURE_NAMES}

    # -- generation -----------------------------------------------------------------------

    def generate(self):
        """Sample one volume for the current request (DDIM, ``steps``, ``seed``); returns the
        ``SBLDMOutput`` and draws the figure."""
        import torch

        t0 = time.perf_counter()
        shares = None if self.subregions is None else [[self.subregions[k] for k in SUBREGION_FEATURES]]
        with cpu_bf16(self.bf16 and self.pipe.device.type == "cpu"):
            self.last = self.pipe(conditions=[self.request()], num_inference_steps=self.steps, sampler="ddim",
                                  eta=0.0, guidance_scale=self.guidance_scale,
                                  generator=torch.Generator().manual_seed(self.seed), subregions=shares)
        self.last_seconds = time.perf_counter() - t0
        self.figure = self.draw()
        return self.last

    def obtained(self) -> dict:
        """The 9 features of the last generated mask (NaN when it is empty)."""
        if self.last is None:
            raise ValueError("nothing generated yet: call generate() first")
        return tumour_features(self.last.masks[0], empty="nan")

    def comparison(self) -> list[dict]:
        """Rows ``{feature, requested, obtained}`` for the last generation."""
        got, req = self.obtained(), self.last_request
        return [{"feature": k, "requested": req[k], "obtained": got[k]} for k in FEATURE_NAMES]

    @property
    def last_request(self) -> dict:
        return dict(zip(FEATURE_NAMES, map(float, np.asarray(self.last.raw_conditions)[0])))

    def draw(self):
        """Axial, coronal and sagittal views through the requested centre (marked with a
        white cross), the mask or its sub-regions outlined, the legend below, and the
        requested vs obtained features."""
        from sbldm.plotting import (VIEWS, agg_pyplot, centre_handle, mark_centre, outline_legend, three_views,
                                    view_slice)

        plt = agg_pyplot()
        req = self.last_request
        centre = [int(np.clip(round(req[k]), 0, s - 1)) for k, s in zip(("x", "y", "z"), self.shape)]
        labels = None if self.last.labels is None else self.last.labels[0]
        seqs = getattr(self.last, "sequences", None)      # an output of one sequence may not carry it
        # two by two, so that the panel beside the sliders shows the views and the table at a
        # size whose text reads at the output area's width (about 700 px); a pipeline of several
        # sequences adds a row: every sequence's axial slice through the requested centre
        n_seq = 0 if seqs is None else seqs.shape[1]
        height = 6.8 + (2.3 if n_seq else 0.0)
        fig = plt.figure(figsize=(7.6, height))
        cols = math.lcm(2, n_seq) if n_seq else 2
        grid = fig.add_gridspec(3 if n_seq else 2, cols, height_ratios=(1, 1, 0.75) if n_seq else None)
        axes = [fig.add_subplot(grid[r, c * cols // 2:(c + 1) * cols // 2]) for r in range(2) for c in range(2)]
        three_views(axes[:3], self.last.images[0], self.last.masks[0], centre=centre, labels=labels)
        if n_seq:
            from sbldm.data.cohort import SEQUENCE_NAMES
            from sbldm.plotting import show_slice

            for k, name in enumerate(self.last.modalities):
                ax = fig.add_subplot(grid[2, k * cols // n_seq:(k + 1) * cols // n_seq])
                show_slice(ax, seqs[0, k], None, "axial", centre[2], title=f"{SEQUENCE_NAMES[name]}, axial",
                           labels=labels)
        for ax, view, axis in zip(axes[:3], VIEWS, (2, 1, 0)):      # the requested centre in display coordinates
            u, w = [centre[a] for a in range(3) if a != axis]
            mark_centre(ax, u, view_slice(self.last.images[0], view, centre[axis]).shape[0] - 1 - w)
        got = self.obtained()
        axes[3].set_axis_off()
        text = ["feature        requested  obtained"]
        for k in FEATURE_NAMES:
            text.append(f"{k:<14} {req[k]:>9.2f} {got[k]:>9.2f}")
        if self.last.subregions is not None and self.last.labels is not None:
            for k, asked, obtained in zip(SUBREGION_FEATURES, self.last.subregions[0], subregion_shares(self.last.labels[0])):
                text.append(f"{k[:14]:<14} {asked:>9.2f} {obtained:>9.2f}")
        axes[3].text(0, 1, "\n".join(text), family="monospace", fontsize=9.5, va="top")
        fig.suptitle(f"requested centre ({centre[0]}, {centre[1]}, {centre[2]}); DDIM-{self.steps}, guidance "
                     f"{self.guidance_scale:g}, seed {self.seed}; {self.last_seconds:.1f} s", fontsize=11)
        for ax in axes[:3]:
            ax.title.set_fontsize(11)
        fig.tight_layout(rect=(0, 0.45 / height, 1, 1))
        outline_legend(fig, label_maps=self.last.labels is not None, extra=[centre_handle()])
        return fig

    def save(self, out_dir, prefix: str = "steered") -> list[tuple[Path, Path]]:
        """The last volume as NIfTI on the training grid's geometry (``SBLDMOutput.save_nifti``):
        the FLAIR and its segmentation, or, from a pipeline of several sequences, a BraTS 2023
        case folder with every sequence and the labels. Returns the (FLAIR, segmentation) paths."""
        if self.last is None:
            raise ValueError("nothing generated yet: call generate() first")
        return self.last.save_nifti(out_dir, prefix=prefix)

    # -- widgets --------------------------------------------------------------------------

    def widget(self, out_dir="steered"):
        """The ipywidgets panel: one slider per control, guidance, steps, seed, and the
        generate and save buttons above the figure."""
        import ipywidgets as w

        sliders = {}
        for k in CONTROLS:
            j = FEATURE_NAMES.index(k)
            lo, hi = float(self.lo[j]), float(self.hi[j])
            if k in ("x", "y", "z", "w", "h", "d"):
                s = self.shape[("x", "y", "z", "w", "h", "d").index(k) % 3]
                sliders[k] = w.IntSlider(value=int(np.clip(round(self.values[k]), 1, s - 1)), min=1, max=s - 1,
                                         description=k)
            elif k == "voxel_volume":
                e_lo = np.floor(np.log10(max(lo, 1.0)) / VOLUME_LOG_STEP) * VOLUME_LOG_STEP
                e_hi = np.ceil(np.log10(max(hi, 1.0)) / VOLUME_LOG_STEP) * VOLUME_LOG_STEP
                sliders[k] = w.FloatLogSlider(value=_on_log_grid(self.values[k], e_lo, e_hi, VOLUME_LOG_STEP),
                                              base=10, min=e_lo, max=e_hi, step=VOLUME_LOG_STEP,
                                              description="volume (vx)")
            else:
                f_lo, f_hi = np.floor(lo / SPHERICITY_STEP) * SPHERICITY_STEP, np.ceil(hi / SPHERICITY_STEP) * SPHERICITY_STEP
                sliders[k] = w.FloatSlider(value=_on_grid(self.values[k], f_lo, f_hi, SPHERICITY_STEP), min=f_lo,
                                           max=f_hi, step=SPHERICITY_STEP, description=k)
        if self.subregions is not None:               # a pipeline conditioned on the sub-regions
            for k in SUBREGION_FEATURES:
                sliders[k] = w.FloatSlider(value=_on_grid(self.subregions[k], 0.0, 1.0, SPHERICITY_STEP), min=0.0,
                                           max=1.0, step=SPHERICITY_STEP, description=k.replace("_", " "))
        for k in ("voxel_volume", "sphericity"):      # a value set from Python lands on the grid the browser shows
            sliders[k].observe(lambda change, s=sliders[k]: _snap_widget(s), names="value")
        # what the panel shows is what it asks for: the request starts from the sliders' own values
        self.set(**{k: s.value for k, s in sliders.items()})
        guidance = w.FloatSlider(value=_on_grid(self.guidance_scale, 1.0, 5.0, 0.5), min=1.0, max=5.0, step=0.5,
                                 description="guidance")
        steps = w.IntSlider(value=int(_on_grid(self.steps, 5, 50, 5)), min=5, max=50, step=5, description="DDIM steps")
        seed = w.IntText(value=self.seed, description="seed")
        go, save = w.Button(description="generate", button_style="primary"), w.Button(description="save NIfTI")
        out, status = w.Output(), w.HTML()

        def on_volume(_change):
            self.set(voxel_volume=sliders["voxel_volume"].value)     # the value on the grid, not one set off it
            for k in ("w", "h", "d"):
                sliders[k].value = int(np.clip(round(self.values[k]), sliders[k].min, sliders[k].max))
            self.set(**{k: s.value for k, s in sliders.items()})

        def on_generate(_=None):
            self.set(**{k: s.value for k, s in sliders.items()})   # what is shown is what is asked for
            self.guidance_scale, self.steps, self.seed = float(guidance.value), int(steps.value), int(seed.value)
            try:
                self.generate()
            except ValueError as e:             # a request the model cannot draw (e.g. outside the brain): say why
                import html

                status.value = f"<b>not generated</b>: {html.escape(str(e))}"
                return
            out.clear_output(wait=True)
            with out:
                from IPython.display import display

                display(self.figure)
            status.value = f"generated in {self.last_seconds:.1f} s"

        def on_save(_=None):
            if self.last is None:
                status.value = "generate first"
                return
            (img, seg), = self.save(out_dir)
            if getattr(self.last, "sequences", None) is None:
                status.value = f"saved {img} and {seg}"
            else:
                from sbldm.data.cohort import SEQUENCE_NAMES

                names = ", ".join(SEQUENCE_NAMES[m] for m in self.last.modalities)
                status.value = f"saved {img.parent}/ ({names} and the labels)"

        sliders["voxel_volume"].observe(on_volume, names="value")
        go.on_click(on_generate)
        save.on_click(on_save)
        self._widgets = {"sliders": sliders, "guidance": guidance, "steps": steps, "seed": seed,
                         "generate": go, "save": save, "output": out, "status": status}
        controls = w.VBox([*sliders.values(), guidance, steps, seed, w.HBox([go, save]), status],
                          layout=w.Layout(min_width="360px"))     # room for the sliders' readouts
        return w.HBox([controls, out])
