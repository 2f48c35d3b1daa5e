"""Figures: orthogonal views with the tumour outlined, feature histograms.

Arrays follow sbldm's convention (x, y, z); views are rotated so that anterior / superior
point up, as radiologists look at them.
"""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np

#: sbldm.data.tumour's labels and whole-tumour region (plotting sits below the data stage,
#: so they are repeated here; tests/test_tumour.py checks that they agree)
NECROSIS, OEDEMA, ENHANCING = 1, 2, 3
REGIONS = {"WT": (NECROSIS, OEDEMA, ENHANCING)}

VIEWS = ("axial", "coronal", "sagittal")
#: outlines of a label map (``sbldm.data.tumour``'s labels): the labels each outline
#: encloses, its colour and its name, drawn in this order
OUTLINES = ((REGIONS["WT"], "#2ca02c", "whole tumour"), ((NECROSIS,), "#ffd700", "necrosis"),
            ((ENHANCING,), "#d62728", "enhancing"))


def outline_legend(fig) -> None:
    """A legend of ``OUTLINES`` at the bottom of ``fig``."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, lw=1.5, label=n) for _, c, n in OUTLINES]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)


def label_colormap():
    """A colour map of label values 0-3 (background black, then the ``OUTLINES`` colours:
    necrosis, oedema as the whole tumour's, enhancing), for ``imshow(..., vmin=-0.5, vmax=3.5)``."""
    from matplotlib.colors import ListedColormap

    colours = {members: colour for members, colour, _ in OUTLINES}
    by_value = {0: "black", NECROSIS: colours[(NECROSIS,)], OEDEMA: colours[REGIONS["WT"]],
                ENHANCING: colours[(ENHANCING,)]}
    return ListedColormap([by_value[v] for v in sorted(by_value)])


def draw_outlines(ax, mask2d: np.ndarray | None = None, labels2d: np.ndarray | None = None,
                  color: str = "red", linewidth: float = 0.8) -> None:
    """Contours on ``ax``: one per region of ``OUTLINES`` for a label map, else the mask's in ``color``."""
    if labels2d is not None:
        outlines = [(np.isin(labels2d, members), colour) for members, colour, _ in OUTLINES]
    elif mask2d is not None:
        outlines = [(mask2d > 0, color)]
    else:
        return
    for m, colour in outlines:
        if m.any() and not m.all():
            ax.contour(m.astype(float), levels=[0.5], colors=colour, linewidths=linewidth)


def agg_pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        try:
            matplotlib.use("Agg")
        except Exception:  # an interactive session keeps its backend
            pass
    import matplotlib.pyplot as plt

    return plt


def tumour_centre(mask: np.ndarray) -> tuple[int, int, int]:
    """Voxel index of the tumour's centre of mass, or the volume centre for an empty mask."""
    if mask is not None and np.any(mask):
        return tuple(int(round(c)) for c in np.argwhere(mask > 0).mean(axis=0))
    return tuple(s // 2 for s in mask.shape)


def view_slice(volume: np.ndarray, view: str, index: int) -> np.ndarray:
    """2D slice of ``volume`` (x, y, z) for display: axial (z), coronal (y), sagittal (x)."""
    if view == "axial":
        return np.rot90(volume[:, :, index])
    if view == "coronal":
        return np.rot90(volume[:, index, :])
    if view == "sagittal":
        return np.rot90(volume[index, :, :])
    raise ValueError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")


def show_slice(ax, image: np.ndarray, mask: np.ndarray | None, view: str, index: int,
               title: str | None = None, color: str = "red", labels: np.ndarray | None = None) -> None:
    """One view of an (image, mask) pair on ``ax``: image in grey, mask as a contour, or,
    given a label map ``labels``, the sub-regions outlined in the colours of ``OUTLINES``."""
    ax.imshow(view_slice(image, view, index), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    draw_outlines(ax, None if mask is None else view_slice(mask, view, index),
                  None if labels is None else view_slice(labels, view, index), color)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)


def three_views(axes: Sequence, image: np.ndarray, mask: np.ndarray | None,
                centre: Sequence[int] | None = None, label: str | None = None,
                labels: np.ndarray | None = None) -> None:
    """Axial, coronal and sagittal views through ``centre`` (default: the tumour's centre),
    the sub-regions outlined where a label map ``labels`` is given."""
    c = tumour_centre(mask if mask is not None else np.zeros_like(image)) if centre is None else centre
    for ax, view, idx in zip(axes, VIEWS, (c[2], c[1], c[0])):
        show_slice(ax, image, mask, view, idx, title=f"{label} — {view}" if label else view, labels=labels)


def cases_figure(images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                 labels: Sequence[str] | None = None, suptitle: str | None = None,
                 label_maps: Sequence[np.ndarray] | None = None):
    """One row per case, three orthogonal views through the tumour with its outline (its
    sub-regions' outlines where ``label_maps`` are given)."""
    plt = agg_pyplot()
    n = len(images)
    height = 2.6 * n + (0.3 if label_maps is not None else 0)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, height), squeeze=False)
    for r in range(n):
        three_views(axes[r], images[r], masks[r], label=None if labels is None else labels[r],
                    labels=None if label_maps is None else label_maps[r])
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    # tight_layout leaves the suptitle out: keep a strip of 0.3 inch for it above the first row's titles
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / height) if suptitle else None)
    if label_maps is not None:
        fig.subplots_adjust(bottom=0.3 / height + 0.02)
        outline_legend(fig)
    return fig


def feature_histograms(features: np.ndarray, names: Sequence[str], groups: dict[str, np.ndarray] | None = None,
                       suptitle: str | None = None):
    """Histogram of each tumour feature; ``groups`` maps a label to a row mask (e.g. train/test)."""
    plt = agg_pyplot()
    features = np.asarray(features, dtype=float)
    groups = groups or {"all": np.ones(len(features), bool)}
    cols = 3
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for j, name in enumerate(names):
        ax = axes.flat[j]
        values = features[:, j]
        bins = np.histogram_bin_edges(values[np.isfinite(values)], bins=15)
        for label, rows_mask in groups.items():
            ax.hist(values[rows_mask], bins=bins, alpha=0.6, label=label)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(names):]:
        ax.set_axis_off()
    axes.flat[0].legend(fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig, path) -> None:
    """Save a figure as PNG atomically and close it."""
    import io
    from pathlib import Path

    from sbldm.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(Path(path), buf.getvalue())
    agg_pyplot().close(fig)


def plot_loss_curve(records: Sequence[dict], path=None, title: str = "training loss", key: str = "loss"):
    """Loss against step from a run's ``log.jsonl`` records (log scale when all positive);
    saved as PNG when ``path`` is given. Returns the figure (closed if saved)."""
    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    steps = [r["step"] for r in records if key in r]
    vals = [r[key] for r in records if key in r]
    ax.plot(steps, vals, marker="o" if len(steps) < 30 else None, ms=3)
    if vals and min(vals) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def slice_strip(rows: Sequence[tuple], n_slices: int = 8, suptitle: str | None = None):
    """Axial slices evenly spaced across the whole depth, one row per volume, with mask
    contours. ``rows``: ``(label, image (x, y, z), mask or None[, label map])``, e.g. real
    then reconstructed; with a label map the sub-regions are outlined (``OUTLINES``)."""
    plt = agg_pyplot()
    depth = rows[0][1].shape[2]
    idx = np.linspace(0, depth - 1, min(n_slices, depth)).round().astype(int)
    fig, axes = plt.subplots(len(rows), len(idx), figsize=(1.3 * len(idx), 1.45 * len(rows)), squeeze=False)
    for r, (label, image, mask, *maps) in enumerate(rows):
        for c, s in enumerate(idx):
            ax = axes[r, c]
            show_slice(ax, image, mask, "axial", int(s), title=f"z={s}" if r == 0 else None,
                       labels=maps[0] if maps else None)
            if c == 0:
                ax.set_axis_on()
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_ylabel(label, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def comparison_figure(methods: dict, n_volumes: int = 4, view: str = "axial", suptitle: str | None = None):
    """Figure 2: one row per method (``{name: (images, masks[, label maps])}``),
    ``n_volumes`` columns, each a slice through the volume's tumour in ``view`` with the
    mask outlined (the sub-regions where the row has label maps)."""
    plt = agg_pyplot()
    names = list(methods)
    fig, axes = plt.subplots(len(names), n_volumes, figsize=(2.1 * n_volumes, 2.2 * len(names)), squeeze=False)
    axis = {"axial": 2, "coronal": 1, "sagittal": 0}[view]
    for r, name in enumerate(names):
        images, masks, *maps = methods[name]
        maps = maps[0] if maps else None
        for c in range(n_volumes):
            ax = axes[r, c]
            if c >= len(images):
                ax.set_axis_off()
                continue
            centre = tumour_centre(masks[c])
            show_slice(ax, images[c], masks[c], view, centre[axis], labels=None if maps is None else maps[c])
        axes[r, 0].set_axis_on()
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
        for side in axes[r, 0].spines.values():
            side.set_visible(False)
        axes[r, 0].set_ylabel(name, fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def sweep_figure(images, masks, labels: Sequence[str], centres: Sequence[Sequence[float]] | None = None,
                 views: Sequence[str] = ("axial",), suptitle: str | None = None, label_maps=None):
    """Figure 3: one column per sweep value; per view a row of images (mask outlined in
    red, the requested centre marked with a cross) and a row of masks. With ``label_maps``
    the sub-regions are outlined (``OUTLINES``) and the mask row shows the label map in
    their colours. Column ``k`` is cut
    through ``centres[k]`` — the centre that column *requested* (default: its own tumour's
    centre of mass, or the volume centre when its mask is empty)."""
    plt = agg_pyplot()
    n = len(images)
    if centres is None:
        centres = [tumour_centre(m) for m in masks]
    cs = [tuple(int(round(float(v))) for v in c) for c in centres]
    axis_of = {"axial": 2, "coronal": 1, "sagittal": 0}
    # each view's rows as tall as its slices are (a coronal cut of a 64x64x32 volume is half as high)
    ratios = []
    for view in views:
        sl = view_slice(np.asarray(images[0]), view, 0)
        ratios += [sl.shape[0] / sl.shape[1]] * 2
    fig, axes = plt.subplots(2 * len(views), n, figsize=(1.9 * n, 1.9 * sum(ratios) + 0.6), squeeze=False,
                             gridspec_kw={"height_ratios": ratios})
    for v, view in enumerate(views):
        for k in range(n):
            c = [min(max(ci, 0), si - 1) for ci, si in zip(cs[k], np.shape(images[k]))]
            idx = c[axis_of[view]]
            lab = None if label_maps is None else label_maps[k]
            show_slice(axes[2 * v, k], images[k], masks[k], view, idx, title=labels[k] if v == 0 else None,
                       labels=lab)
            # the requested centre in display coordinates (view_slice rotates by 90 degrees)
            u, w = [c[a] for a in range(3) if a != axis_of[view]]
            rows_ = np.shape(view_slice(np.asarray(images[k]), view, idx))[0]
            axes[2 * v, k].plot([u], [rows_ - 1 - w], marker="+", color="yellow", ms=8, mew=1.2)
            if lab is None:
                axes[2 * v + 1, k].imshow(view_slice(masks[k], view, idx), cmap="gray", vmin=0, vmax=1,
                                          interpolation="nearest")
            else:
                axes[2 * v + 1, k].imshow(view_slice(lab, view, idx), cmap=label_colormap(), vmin=-0.5, vmax=3.5,
                                          interpolation="nearest")
            axes[2 * v + 1, k].set_axis_off()
        axes[2 * v, 0].text(-0.08, 0.5, view, transform=axes[2 * v, 0].transAxes, rotation=90,
                            va="center", ha="right", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def loss_curves(logs: dict, suptitle: str | None = None):
    """One panel per run: ``{name: (steps, losses)}``, raw and smoothed."""
    plt = agg_pyplot()
    fig, axes = plt.subplots(1, len(logs), figsize=(3.6 * len(logs), 2.8), squeeze=False)
    for ax, (name, (steps, losses)) in zip(axes[0], logs.items()):
        steps, losses = np.asarray(steps), np.asarray(losses, dtype=float)
        ax.plot(steps, losses, lw=0.6, alpha=0.5)
        if len(losses) > 10:
            k = max(len(losses) // 20, 2)
            ax.plot(steps[k - 1:], np.convolve(losses, np.ones(k) / k, mode="valid"), lw=1.2)
        # long titles (a loss's terms) are wrapped to the panel's width, never run into a neighbour
        ax.set_title("\n".join(textwrap.fill(line, 48) for line in str(name).split("\n")), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_yscale("log")
        ax.tick_params(labelsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def ablation_figure(rows: Sequence[dict], suptitle: str | None = None):
    """Bars per ablation row. Top: empty-mask fraction, Spearman of requested vs obtained
    volume, median centre distance and relative volume error (dashed: the chance floor).
    Bottom, when the rows carry them: realism and the tumours' insides, each beside the
    real test split's own value (the reference row without ``empty_fraction``): Fréchet
    latent distance, share of tumours with a dark part, share of masks in several pieces,
    and the mean over sub-regions of the intensity distance over the real spread."""
    plt = agg_pyplot()
    reference = next((r for r in rows if r.get("empty_fraction") in (None, "")), {})
    rows = [r for r in rows if r.get("empty_fraction") not in (None, "")]
    names = [str(r["row"]) for r in rows]

    def value(r, key):
        if key == "w_over_spread_mean":
            vals = [r.get(f"w_over_spread_{k}") for k in ("necrosis", "oedema", "enhancing")]
            vals = [float(v) for v in vals if v not in (None, "")]
            return float(np.mean(vals)) if vals else float("nan")
        v = r.get(key)
        return float("nan") if v in (None, "") else float(v)

    # (key, title, line from the first row's chance key or None, target, real reference key or None)
    panels = [("empty_fraction", "empty masks (fraction)", None, 0.05, None),
              ("spearman_volume", "Spearman, requested vs obtained volume", None, 0.9, None),
              ("centre_distance", "median centre distance (voxels)", "chance_centre_distance", 4.0, None),
              ("relative_volume_error", "median relative volume error", "chance_relative_volume_error", 0.35, None)]
    looks = [("frechet_latent", "Fréchet latent distance", None, None, "frechet_latent"),
             ("dark_core_share", "tumours with a dark part (share)", None, None, "dark_core_share"),
             ("multi_component_fraction", "masks in several pieces (share)", None, None, "multi_component_fraction"),
             ("w_over_spread_mean", "sub-region intensity distance / real spread", None, 0.5, "w_over_spread_mean")]
    looks = [p for p in looks if any(np.isfinite(value(r, p[0])) for r in rows)]
    n_rows = 2 if looks else 1
    fig, axes = plt.subplots(n_rows, 4, figsize=(16, n_rows * (0.5 * len(names) + 1.6) + 0.6), sharey=True,
                             squeeze=False)
    y = np.arange(len(names))
    for ax, (key, title, chance, target, ref_key) in zip(
            [*axes[0], *(axes[1] if looks else [])], panels + looks):
        vals = [value(r, key) for r in rows]
        ax.barh(y, vals, color="tab:blue")
        lines = []
        if chance:
            lines.append(float(rows[0][chance]))
            ax.axvline(lines[-1], color="k", ls="--", lw=1, label="random pairing")
        if ref_key and np.isfinite(value(reference, ref_key)):
            lines.append(value(reference, ref_key))
            ax.axvline(lines[-1], color="tab:red", ls="--", lw=1.5, label="real test split")
        if target is not None:
            lines.append(target)
            ax.axvline(target, color="tab:green", ls=":", lw=1.5, label="target")
        top = max([v for v in vals + lines if np.isfinite(v)] + [1e-6])
        ax.set_xlim(0, 1.1 * top)
        ax.set_title(title, fontsize=9)
        if lines:
            ax.legend(fontsize=7, loc="lower right")
    for ax in axes[1][len(looks):] if looks else []:
        ax.set_visible(False)
    for row_axes in axes:
        row_axes[0].set_yticks(y, names, fontsize=8)
    axes[0][0].invert_yaxis()                          # shared: every panel lists the rows top down
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def tumour_volume_histogram(volumes_ml: dict, reference: tuple[float, float] | None = None,
                            suptitle: str | None = None):
    """Histogram (log-spaced bins) of whole-tumour volumes in ml per group; ``reference``
    marks a (low, high) range, e.g. the phantom's 5-95% design range."""
    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    allv = np.concatenate([np.asarray(v, float) for v in volumes_ml.values()])
    allv = allv[np.isfinite(allv) & (allv > 0)]
    bins = np.geomspace(max(allv.min(), 1e-3) * 0.9, allv.max() * 1.1, 20) if len(allv) else 10
    for name, v in volumes_ml.items():
        ax.hist(np.asarray(v, float), bins=bins, alpha=0.6, label=f"{name} (median {np.median(v):.0f} ml)")
    if reference:
        for x in reference:
            ax.axvline(x, color="k", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("whole-tumour volume (ml)")
    ax.set_ylabel("volumes")
    ax.legend(fontsize=8)
    if suptitle:
        ax.set_title(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def tumour_intensity_figure(sets: dict, n_examples: int = 4, suptitle: str | None = None,
                            label_maps: dict | None = None):
    """Left: histograms of the intensities inside the tumour masks, one line per set
    (``{name: (images, masks)}``), the first set drawn filled as the reference. Right: the
    axial slice through the largest tumour of the first ``n_examples`` volumes of each set,
    cropped around the tumour, its sub-regions outlined in the colours of ``OUTLINES`` where
    ``label_maps`` has the set's label maps (``{name: labels}``), else its mask in red. Sets
    whose masks are all empty are left out."""
    plt = agg_pyplot()
    names = [k for k in sets if np.asarray(sets[k][1]).any()]       # a set without any tumour has nothing to show
    fig = plt.figure(figsize=(4.5 + 1.6 * n_examples, 1.7 * len(names) + 0.8))
    grid = fig.add_gridspec(len(names), n_examples + 2, width_ratios=[2.6, 0.2] + [1] * n_examples)
    ax_h = fig.add_subplot(grid[:, 0])
    bins = np.linspace(-1, 1, 41)
    for k, name in enumerate(names):
        images, masks = (np.asarray(a) for a in sets[name])
        labels = (label_maps or {}).get(name)
        if labels is not None and np.shape(labels) != masks.shape:
            raise ValueError(f"label maps of {name!r} have shape {np.shape(labels)}, its masks {masks.shape}")
        values = images[masks.astype(bool)]
        if values.size:
            ax_h.hist(values, bins=bins, density=True, histtype="stepfilled" if k == 0 else "step",
                      alpha=0.35 if k == 0 else 1.0, lw=1.5, label=name)
        shown = [i for i in range(len(masks)) if masks[i].any()][:n_examples]
        for j in range(n_examples):
            ax = fig.add_subplot(grid[k, j + 2])
            ax.set_axis_off()
            if j >= len(shown):
                continue
            im, m = images[shown[j]], masks[shown[j]].astype(bool)
            z = int(np.argmax(m.sum(axis=(0, 1))))
            xs, ys = np.nonzero(m[:, :, z])
            pad = 6
            x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, m.shape[0])
            y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, m.shape[1])
            lab = None if labels is None else np.asarray(labels[shown[j]])[x0:x1, y0:y1, :]
            show_slice(ax, im[x0:x1, y0:y1, :], m[x0:x1, y0:y1, :], "axial", z, labels=lab)
            if j == 0:
                ax.set_title(name, fontsize=8, loc="left")
    ax_h.set_xlabel("intensity inside the tumour mask")
    ax_h.set_ylabel("density")
    ax_h.legend(fontsize=7, loc="upper left")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    if any(n in (label_maps or {}) for n in names):
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        outline_legend(fig)
    else:
        fig.tight_layout()
    return fig
