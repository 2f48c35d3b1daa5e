"""Figures: orthogonal views with the tumour outlined, feature histograms.

Arrays follow sbldm's convention (x, y, z); views are rotated so that anterior / superior
point up, as radiologists look at them.

Two palettes, never mixed: ``REGION_COLOURS`` for the tumour's regions (outlines, label
maps, per-region histograms) and ``METHOD_COLOURS`` for the data sets and generators
(real splits, the VAE reconstruction, 3D-LSGAN, 3D-LDM, SBLDM). Annotation marks (a
requested centre) use ``ANNOTATION_COLOURS``, which neither palette shares; every figure
whose colours carry meaning carries a legend.
"""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np

from sbldm.labels import ENHANCING, LABEL_NAMES, NECROSIS, OEDEMA, REGIONS  # noqa: F401  (OEDEMA: the labels figures draw)

VIEWS = ("axial", "coronal", "sagittal")

#: the one palette of the tumour's regions, used by every figure that draws a region:
#: bluish green, yellow and vermillion of Okabe & Ito's colour-blind-safe set, saturated
#: so that they stand out on a grey MRI. Oedema has the whole tumour's colour on purpose:
#: the whole-tumour outline is oedema's outer edge, and a label map fills oedema out to it.
REGION_COLOURS = {"whole tumour": "#009E73", "oedema": "#009E73", "necrosis": "#F0E442", "enhancing": "#D55E00"}
#: the label value of each sub-region
LABEL_REGIONS = LABEL_NAMES
#: a tumour drawn as a binary mask is the whole tumour
MASK_COLOUR = REGION_COLOURS["whole tumour"]

#: the palette of the data sets and methods: greys for real data and what is derived from
#: it, blues for the baselines, purples for SBLDM; none near a region colour
#: (tests/test_plotting.py checks the distance). Blue and purple look alike to some
#: colour-blind readers, so every method also has its own line style (``METHOD_LINESTYLES``).
METHOD_COLOURS = {
    "real (train split)": "#1A1A1A",
    "real (test split)": "#7A7A7A",
    "VAE reconstruction": "#B3B3B3",
    "3D-LSGAN": "#56B4E9",
    "3D-LDM": "#1F4E9C",
    "SBLDM (DDPM)": "#A77BD0",
    "SBLDM (DDIM)": "#5B2A86",
}
METHOD_LINESTYLES = {
    "real (train split)": "-",
    "real (test split)": (0, (6, 2)),
    "VAE reconstruction": (0, (1, 1.5)),
    "3D-LSGAN": (0, (6, 2, 1, 2)),
    "3D-LDM": (0, (3, 1.5)),
    "SBLDM (DDPM)": (0, (6, 1.5, 1, 1.5, 1, 1.5)),
    "SBLDM (DDIM)": "-",
}
#: colours for sets ``method_key`` does not recognise, in the order they appear
EXTRA_METHOD_COLOURS = ("#4C72B0", "#8C96C6", "#2F4F6F", "#6B6B9A")

#: marks that annotate a panel (the requested centre: white with a black edge, readable on
#: black, grey and white, and unlike any region or method)
ANNOTATION_COLOURS = {"centre": "#FFFFFF", "centre_edge": "#000000"}

#: outlines of a label map (``sbldm.data.tumour``'s labels): the labels each outline
#: encloses, its colour and its name, drawn in this order (necrosis last: where it borders
#: the enhancing rim, the two outlines coincide and necrosis's would be hidden)
OUTLINES = ((REGIONS["WT"], REGION_COLOURS["whole tumour"], "whole tumour"),
            ((ENHANCING,), REGION_COLOURS["enhancing"], "enhancing"),
            ((NECROSIS,), REGION_COLOURS["necrosis"], "necrosis"))


def method_key(name) -> str | None:
    """The ``METHOD_COLOURS`` entry a set's name refers to, or None: "real (train split)
    through the slice VAE" -> VAE reconstruction, "real + SBLDM" -> SBLDM (DDIM) (a mix is
    drawn as what was added), "train" -> real (train split)."""
    n = str(name).lower()
    if "vae" in n or "reconstruct" in n:
        return "VAE reconstruction"
    if "+" in n:
        added = method_key(n.rsplit("+", 1)[1])
        if added is not None:
            return added
    if "lsgan" in n:
        return "3D-LSGAN"
    if "sbldm" in n or "ddim" in n or "ddpm" in n:
        return "SBLDM (DDPM)" if "ddpm" in n else "SBLDM (DDIM)"
    if "ldm" in n:
        return "3D-LDM"
    if "test" in n:
        return "real (test split)"
    if "real" in n or "train" in n:
        return "real (train split)"
    return None


def method_styles(names: Sequence) -> dict:
    """``{name: {"color", "linestyle"}}`` from the method palette; a name it does not know,
    or a second name for the same method, gets the next ``EXTRA_METHOD_COLOURS`` colour
    (solid), so that no two sets of one figure share a colour."""
    styles, used, extra = {}, set(), iter(EXTRA_METHOD_COLOURS * (1 + len(names) // len(EXTRA_METHOD_COLOURS)))
    for name in names:
        key = method_key(name)
        if key is None or key in used:
            styles[name] = {"color": next(extra), "linestyle": "-"}
        else:
            used.add(key)
            styles[name] = {"color": METHOD_COLOURS[key], "linestyle": METHOD_LINESTYLES[key]}
    return styles


def region_entries(label_maps: bool = True, fills: bool = False) -> tuple[list, list]:
    """Legend handles and labels of the regions: the ``OUTLINES`` of a label map, or for
    binary masks only the mask's outline (the whole tumour); ``fills``: the label maps are
    also shown filled (necrosis, oedema, enhancing in ``REGION_COLOURS``)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if not label_maps:
        return [Line2D([], [], color=MASK_COLOUR, lw=1.5)], ["tumour mask (whole tumour)"]
    if not fills:
        return [Line2D([], [], color=c, lw=1.5) for _, c, _ in OUTLINES], [n for _, _, n in OUTLINES]
    names = {"whole tumour": "whole tumour (outline) / oedema (fill)"}
    return ([(Line2D([], [], color=c, lw=1.5), Patch(fc=c, ec="none")) for _, c, _ in OUTLINES],
            [names.get(n, n) for _, _, n in OUTLINES])


def centre_handle(label: str = "requested centre"):
    """Legend handle of the centre mark drawn by ``mark_centre``."""
    import matplotlib.patheffects as pe
    from matplotlib.lines import Line2D

    return Line2D([], [], ls="none", marker="+", ms=9, mew=1.6, color=ANNOTATION_COLOURS["centre"], label=label,
                  path_effects=[pe.Stroke(linewidth=3.2, foreground=ANNOTATION_COLOURS["centre_edge"]), pe.Normal()])


def mark_centre(ax, u: float, v: float) -> None:
    """The requested centre at display position (u, v): a white cross edged in black."""
    import matplotlib.patheffects as pe

    ax.plot([u], [v], ls="none", marker="+", ms=9, mew=1.6, color=ANNOTATION_COLOURS["centre"],
            path_effects=[pe.Stroke(linewidth=3.2, foreground=ANNOTATION_COLOURS["centre_edge"]), pe.Normal()])


def figure_legend(fig, handles, labels=None, ncol: int | None = None, fontsize: float = 8):
    """A legend along the bottom of ``fig`` (tuples of handles are drawn side by side)."""
    from matplotlib.layout_engine import ConstrainedLayoutEngine
    from matplotlib.legend_handler import HandlerTuple

    if labels is None:
        labels = [h.get_label() for h in handles]
    constrained = isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    return fig.legend(handles, labels, loc="outside lower center" if constrained else "lower center",
                      ncol=ncol or len(handles), fontsize=fontsize, frameon=False,
                      handler_map={tuple: HandlerTuple(ndivide=None, pad=0.4)})


def outline_legend(fig, label_maps: bool = True, fills: bool = False, extra: Sequence = ()):
    """A legend of the regions (``region_entries``) at the bottom of ``fig``, followed by
    ``extra`` handles (e.g. ``centre_handle()``). Returns the legend."""
    handles, labels = region_entries(label_maps, fills)
    extra = list(extra)
    return figure_legend(fig, [*handles, *extra], [*labels, *(h.get_label() for h in extra)])


def layout(fig, suptitle: str | None = None, legend: bool = False, legend_rows: int = 1) -> None:
    """The suptitle, and for a figure without constrained layout ``tight_layout`` leaving a
    strip of 0.35 inch for the suptitle above the panels and of 0.3 inch per legend row
    below them (``figure_legend`` draws there). Figures of images use constrained layout
    (``layout="constrained"``), which keeps the titles of aspect-locked images apart."""
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    if isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine):
        return
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, 0.3 * legend_rows / height if legend else 0, 1, 1 - 0.35 / height if suptitle else 1))


def note_axes(ax, text: str) -> None:
    """``ax`` as a boxed note instead of an empty panel (a row shorter than the others)."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=8, color="0.3",
            wrap=True, bbox={"boxstyle": "round,pad=0.6", "fc": "0.96", "ec": "0.75", "lw": 0.8})


def label_colormap():
    """A colour map of label values 0-3 (background black, then necrosis, oedema and
    enhancing in ``REGION_COLOURS``), for ``imshow(..., vmin=-0.5, vmax=3.5)``."""
    from matplotlib.colors import ListedColormap

    by_value = {0: "black", **{v: REGION_COLOURS[name] for v, name in LABEL_REGIONS.items()}}
    return ListedColormap([by_value[v] for v in sorted(by_value)])


def draw_outlines(ax, mask2d: np.ndarray | None = None, labels2d: np.ndarray | None = None,
                  color: str | None = None, linewidth: float = 0.8) -> None:
    """Contours on ``ax``: one per region of ``OUTLINES`` for a label map, else the mask's
    in ``color`` (default ``MASK_COLOUR``, the whole tumour's)."""
    if labels2d is not None:
        outlines = [(np.isin(labels2d, members), colour) for members, colour, _ in OUTLINES]
    elif mask2d is not None:
        outlines = [(mask2d > 0, color or MASK_COLOUR)]
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
               title: str | None = None, color: str | None = None, labels: np.ndarray | None = None) -> None:
    """One view of an (image, mask) pair on ``ax``: image in grey, mask as a contour (in
    ``color``, default the whole tumour's), or, given a label map ``labels``, the
    sub-regions outlined in the colours of ``OUTLINES``."""
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
    sub-regions' outlines where ``label_maps`` are given), the outlines' legend below."""
    plt = agg_pyplot()
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.6 * n + 0.6), squeeze=False, layout="constrained")
    for r in range(n):
        three_views(axes[r], images[r], masks[r], label=None if labels is None else labels[r],
                    labels=None if label_maps is None else label_maps[r])
    layout(fig, suptitle, legend=True)
    outline_legend(fig, label_maps=label_maps is not None)
    return fig


def feature_histograms(features: np.ndarray, names: Sequence[str], groups: dict[str, np.ndarray] | None = None,
                       suptitle: str | None = None):
    """Histogram of each tumour feature; ``groups`` maps a label to a row mask (e.g. train/test),
    each drawn in its ``method_styles`` colour (the first filled, the others as lines)."""
    plt = agg_pyplot()
    features = np.asarray(features, dtype=float)
    groups = groups or {"all": np.ones(len(features), bool)}
    styles = method_styles(list(groups))
    cols = 3
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for j, name in enumerate(names):
        ax = axes.flat[j]
        values = features[:, j]
        bins = np.histogram_bin_edges(values[np.isfinite(values)], bins=15)
        for k, (label, rows_mask) in enumerate(groups.items()):
            colour = styles[label]["color"]
            if k == 0:
                ax.hist(values[rows_mask], bins=bins, color=colour, alpha=0.22, label=label)
            else:
                ax.hist(values[rows_mask], bins=bins, histtype="step", lw=1.8, color=colour, label=label)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(names):]:
        ax.set_axis_off()
    axes.flat[0].legend(fontsize=7)
    layout(fig, suptitle)
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


def _has_content(image: np.ndarray) -> np.ndarray:
    """Per axial slice: whether it shows anything brighter than the volume's background."""
    image = np.asarray(image, float)
    lo, hi = np.nanmin(image), np.nanmax(image)
    return (image > lo + 0.02 * (hi - lo)).any(axis=(0, 1)) if hi > lo else np.zeros(image.shape[2], bool)


def slice_strip(rows: Sequence[tuple], n_slices: int = 8, suptitle: str | None = None):
    """Axial slices evenly spaced across the depth that shows anything in some row (black
    slices above and below the head are left out), one row per volume, with mask
    contours. ``rows``: ``(label, image (x, y, z), mask or None[, label map])``, e.g. real
    then reconstructed; with a label map the sub-regions are outlined (``OUTLINES``).
    The outlines' legend is below."""
    plt = agg_pyplot()
    depth = rows[0][1].shape[2]
    shown = np.flatnonzero(np.any([_has_content(r[1]) for r in rows], axis=0))
    first, last = (shown[0], shown[-1]) if len(shown) else (0, depth - 1)
    idx = np.unique(np.linspace(first, last, min(n_slices, last - first + 1)).round().astype(int))
    fig, axes = plt.subplots(len(rows), len(idx), figsize=(1.3 * len(idx), 1.45 * len(rows) + 0.6), squeeze=False,
                             layout="constrained")
    for r, (label, image, mask, *maps) in enumerate(rows):
        for c, s in enumerate(idx):
            ax = axes[r, c]
            show_slice(ax, image, mask, "axial", int(s), title=f"z={s}" if r == 0 else None,
                       labels=maps[0] if maps else None)
            if c == 0:
                ax.set_axis_on()
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_ylabel(textwrap.fill(str(label), 16), fontsize=8)
    layout(fig, suptitle, legend=True)
    outline_legend(fig, label_maps=any(len(r) > 3 and r[3] is not None for r in rows))
    return fig


def _row_label(ax, name: str) -> None:
    """``name`` as the y label of a row's first panel (its frame hidden)."""
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_ylabel(name, fontsize=9)


def sequences_figure(cases: Sequence[tuple], names: Sequence[str], suptitle: str | None = None):
    """One row per case, one column per MRI sequence: the axial slice through the tumour's
    centre, each sequence on its own grey scale ([-1, 1]), the sub-regions outlined
    (``OUTLINES``), the outlines' legend below. ``cases``: ``(name, sequences (S, x, y, z),
    label map (x, y, z) or None)``; ``names``: the S sequences' display names."""
    plt = agg_pyplot()
    n, s = len(cases), len(names)
    fig, axes = plt.subplots(n, s, figsize=(1.9 * s + 0.5, 1.95 * n + 0.7), squeeze=False, layout="constrained")
    for r, (name, seqs, labels) in enumerate(cases):
        seqs = np.asarray(seqs)
        if seqs.ndim != 4 or seqs.shape[0] != s:
            raise ValueError(f"{name}: sequences must be ({s}, x, y, z) for {list(names)}, got {seqs.shape}")
        mask = (np.asarray(labels) > 0) if labels is not None else np.zeros(seqs.shape[1:], bool)
        z = tumour_centre(mask)[2]
        for k in range(s):
            show_slice(axes[r, k], seqs[k], None, "axial", z, title=names[k] if r == 0 else None, labels=labels)
        _row_label(axes[r, 0], textwrap.fill(str(name), 18))
    layout(fig, suptitle, legend=True)
    outline_legend(fig, label_maps=True)
    return fig


def comparison_figure(methods: dict, n_volumes: int = 4, view: str = "axial", suptitle: str | None = None):
    """Figure 2: one row per method (``{name: (images, masks[, label maps])}``), up to
    ``n_volumes`` columns, each a slice through the volume's tumour in ``view`` with the
    mask outlined (the sub-regions where the row has label maps); the outlines' legend
    below. Name a real row after its split ("real (train split)"). A row with fewer
    volumes than the others says so in one note across the columns it cannot fill
    instead of leaving them blank."""
    plt = agg_pyplot()
    names = list(methods)
    counts = {name: min(len(methods[name][0]), n_volumes) for name in names}
    n_cols = max(1, max(counts.values(), default=0))
    # rows as tall as the view's slices are (a coronal cut of a 64x64x32 volume is half as high)
    first = next((methods[name][0][0] for name in names if counts[name]), None)
    aspect = 1.0 if first is None else np.divide(*view_slice(np.asarray(first), view, 0).shape)
    height = (2.0 * aspect + 0.2) * len(names) + 0.7
    fig = plt.figure(figsize=(2.1 * max(n_cols, 2), height), layout="constrained")
    grid = fig.add_gridspec(len(names), n_cols)
    axis = {"axial": 2, "coronal": 1, "sagittal": 0}[view]
    any_maps = False
    for r, name in enumerate(names):
        images, masks, *maps = methods[name]
        maps = maps[0] if maps else None
        any_maps |= maps is not None
        k = counts[name]
        row = [fig.add_subplot(grid[r, c]) for c in range(k)]
        for c, ax in enumerate(row):
            centre = tumour_centre(masks[c])
            show_slice(ax, images[c], masks[c], view, centre[axis], labels=None if maps is None else maps[c])
        if k < n_cols:
            row.append(fig.add_subplot(grid[r, k:]))
            note_axes(row[-1], f"only {k} volume{'s' if k != 1 else ''} in this set" if k else "no volumes in this set")
        _row_label(row[0], name)
    layout(fig, suptitle, legend=True)
    outline_legend(fig, label_maps=any_maps)
    return fig


def sweep_figure(images, masks, labels: Sequence[str], centres: Sequence[Sequence[float]] | None = None,
                 views: Sequence[str] = ("axial",), suptitle: str | None = None, label_maps=None):
    """Figure 3: one column per sweep value; per view a row of images (the mask outlined in
    the whole tumour's colour, the requested centre marked with a white cross edged in
    black, ``mark_centre``) and a row of masks. With ``label_maps`` the sub-regions are
    outlined (``OUTLINES``) and the mask row shows the label map filled in
    ``REGION_COLOURS``; the legend below names the outlines, the fills and the cross.
    Column ``k`` is cut through ``centres[k]`` — the centre that column *requested*
    (default: its own tumour's centre of mass, or the volume centre when its mask is empty)."""
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
    fig, axes = plt.subplots(2 * len(views), n, figsize=(1.9 * n, 1.9 * sum(ratios) + 0.9), squeeze=False,
                             gridspec_kw={"height_ratios": ratios}, layout="constrained")
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
            mark_centre(axes[2 * v, k], u, rows_ - 1 - w)
            if lab is None:
                axes[2 * v + 1, k].imshow(view_slice(masks[k], view, idx), cmap="gray", vmin=0, vmax=1,
                                          interpolation="nearest")
            else:
                axes[2 * v + 1, k].imshow(view_slice(lab, view, idx), cmap=label_colormap(), vmin=-0.5, vmax=3.5,
                                          interpolation="nearest")
            axes[2 * v + 1, k].set_axis_off()
        axes[2 * v, 0].text(-0.08, 0.5, view, transform=axes[2 * v, 0].transAxes, rotation=90,
                            va="center", ha="right", fontsize=8)
        axes[2 * v + 1, 0].text(-0.08, 0.5, "label map" if label_maps is not None else "mask",
                                transform=axes[2 * v + 1, 0].transAxes, rotation=90, va="center", ha="right",
                                fontsize=7, color="0.35")
    layout(fig, suptitle, legend=True)
    outline_legend(fig, label_maps=label_maps is not None, fills=label_maps is not None, extra=[centre_handle()])
    return fig


def loss_curves(logs: dict, suptitle: str | None = None, ylabel="loss", mark: tuple | None = None):
    """One panel per run: ``{name: (steps, values)}``, raw and smoothed (a running mean),
    step on x and ``ylabel`` on y (one string, or ``{name: label}``; log-scaled where the
    values span more than a decade). ``mark``:
    ``(step, label)``, e.g. the kept checkpoint, drawn in every panel as a dashed line and
    a star on the curve. The legend below says which line is which."""
    from matplotlib.lines import Line2D

    plt = agg_pyplot()
    fig, axes = plt.subplots(1, len(logs), figsize=(3.6 * len(logs), 3.1), squeeze=False)
    raw_colour, mean_colour, mark_colour = "#9DB7D5", "#1F4E9C", "black"
    smoothed = set()
    for ax, (name, (steps, losses)) in zip(axes[0], logs.items()):
        steps, losses = np.asarray(steps), np.asarray(losses, dtype=float)
        ax.plot(steps, losses, lw=0.8, color=raw_colour)
        if len(losses) > 10:
            k = max(len(losses) // 20, 2)
            smoothed.add(k)
            ax.plot(steps[k - 1:], np.convolve(losses, np.ones(k) / k, mode="valid"), lw=1.4, color=mean_colour)
        if mark is not None:
            ax.axvline(mark[0], color=mark_colour, ls="--", lw=1)
            at = np.flatnonzero(steps == mark[0])
            if len(at) and np.isfinite(losses[at[0]]):
                ax.plot([mark[0]], [losses[at[0]]], ls="none", marker="*", ms=11, color=mark_colour, zorder=5)
        # long titles (a loss's terms) are wrapped to the panel's width, never run into a neighbour
        ax.set_title("\n".join(textwrap.fill(line, 48) for line in str(name).split("\n")), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel(ylabel.get(name, "loss") if isinstance(ylabel, dict) else ylabel, fontsize=8)
        finite = losses[np.isfinite(losses)]
        if len(finite) and finite.min() > 0 and finite.max() > 10 * finite.min():    # log only over a decade
            ax.set_yscale("log")
        ax.tick_params(labelsize=7)
    handles = [Line2D([], [], color=raw_colour, lw=0.8, label="logged value")]
    if smoothed:
        k = ", ".join(str(v) for v in sorted(smoothed))
        handles.append(Line2D([], [], color=mean_colour, lw=1.4, label=f"running mean of {k} logged values"))
    if mark is not None:
        handles.append(Line2D([], [], color=mark_colour, ls="--", lw=1, marker="*", ms=9, label=mark[1]))
    layout(fig, suptitle, legend=True)
    figure_legend(fig, handles)
    return fig


#: what each reference line of ``ablation_figure`` is
ABLATION_LINES = {
    "random pairing": "random pairing: each request paired with a random real training tumour (the chance level)",
    "real test split": "real test split: the measure on the real test volumes themselves",
    "target": "target: the value a row should reach (the project's goal for the measure; ≤ or ≥ as marked)",
}


def ablation_figure(rows: Sequence[dict], suptitle: str | None = None):
    """Bars per ablation row. Top: empty-mask fraction, Spearman of requested vs obtained
    volume, median centre distance and relative volume error. Bottom, when the rows carry
    them: realism and the tumours' insides, each beside the real test split's own value
    (the reference row without ``empty_fraction``): Fréchet latent distance, share of
    tumours with a dark part, share of masks in several pieces, and the mean over
    sub-regions of the intensity distance over the real spread.

    Reference lines (each panel's legend, defined under the figure, ``ABLATION_LINES``):
    random pairing (black dashed, the chance level), the real test split (grey dash-dot)
    and the target (black dotted, with its value and direction). A value of 0 is drawn as
    a marker on the axis, a missing one says "n/a", and a panel whose rows are all 0 says
    so ("0% empty in every row"), never an empty panel."""
    from matplotlib.lines import Line2D

    plt = agg_pyplot()
    reference = next((r for r in rows if r.get("empty_fraction") in (None, "")), {})
    rows = [r for r in rows if r.get("empty_fraction") not in (None, "")]
    names = [str(r["row"]) for r in rows]
    bar_colour = METHOD_COLOURS["SBLDM (DDIM)"]        # every row is an SBLDM sampled with DDIM
    real_colour = METHOD_COLOURS["real (test split)"]

    def value(r, key):
        if key == "w_over_spread_mean":
            vals = [r.get(f"w_over_spread_{k}") for k in ("necrosis", "oedema", "enhancing")]
            vals = [float(v) for v in vals if v not in (None, "")]
            return float(np.mean(vals)) if vals else float("nan")
        v = r.get(key)
        return float("nan") if v in (None, "") else float(v)

    # (key, title, line from the first row's chance key or None, (direction, target) or None,
    #  real reference key or None, what a panel of zeros says)
    panels = [("empty_fraction", "empty masks (fraction)", None, ("≤", 0.05), None, "0% empty in every row"),
              ("spearman_volume", "Spearman, requested vs obtained volume", None, ("≥", 0.9), None,
               "0 in every row"),
              ("centre_distance", "median centre distance (voxels)", "chance_centre_distance", ("≤", 4.0), None,
               "0 voxels off in every row"),
              ("relative_volume_error", "median relative volume error", "chance_relative_volume_error",
               ("≤", 0.35), None, "no volume error in any row")]
    looks = [("frechet_latent", "Fréchet latent distance", None, None, "frechet_latent", "0 in every row"),
             ("dark_core_share", "tumours with a dark part (share)", None, None, "dark_core_share",
              "no tumour with a dark part in any row"),
             ("multi_component_fraction", "masks in several pieces (share)", None, None, "multi_component_fraction",
              "no mask in several pieces in any row"),
             ("w_over_spread_mean", "sub-region intensity distance / real spread", None, ("≤", 0.5),
              "w_over_spread_mean", "0 in every row")]
    looks = [p for p in looks if any(np.isfinite(value(r, p[0])) for r in rows)]
    n_rows = 2 if looks else 1
    fig, axes = plt.subplots(n_rows, 4, figsize=(16, n_rows * (0.5 * len(names) + 1.6) + 1.0), sharey=True,
                             squeeze=False)
    y = np.arange(len(names))
    used = set()
    for ax, (key, title, chance, target, ref_key, zero_note) in zip(
            [*axes[0], *(axes[1] if looks else [])], panels + looks):
        vals = np.array([value(r, key) for r in rows], float)
        ax.barh(y, np.nan_to_num(vals), color=bar_colour, alpha=0.7)
        lines = []
        if chance:
            lines.append(float(rows[0][chance]))
            ax.axvline(lines[-1], color="k", ls="--", lw=1, label="random pairing")
            used.add("random pairing")
        if ref_key and np.isfinite(value(reference, ref_key)):
            lines.append(value(reference, ref_key))
            ax.axvline(lines[-1], color=real_colour, ls="-.", lw=1.5, label="real test split")
            used.add("real test split")
        if target is not None:
            lines.append(target[1])
            ax.axvline(target[1], color="k", ls=":", lw=1.8, label=f"target {target[0]} {target[1]:g}")
            used.add("target")
        top = max([v for v in [*vals, *lines] if np.isfinite(v)] + [1e-6])
        ax.set_xlim(0, 1.1 * top)
        # a 0 is a bar of no width: mark it on the axis; a missing value says so
        zero = np.isfinite(vals) & (vals == 0)
        if zero.any():
            ax.plot(np.zeros(zero.sum()), y[zero], ls="none", marker="o", ms=5, color=bar_colour, clip_on=False,
                    zorder=5)
        for yi in y[~np.isfinite(vals)]:
            ax.text(0.01 * top, yi, "n/a", va="center", fontsize=7, color="0.35")
        if len(vals) and zero.all():
            ax.text(0.5, 0.5, zero_note, transform=ax.transAxes, ha="center", va="center", fontsize=9,
                    bbox={"boxstyle": "round,pad=0.4", "fc": "white", "ec": "0.6", "lw": 0.8})
        ax.set_title(title, fontsize=9)
        if lines:
            ax.legend(fontsize=7, loc="best")
    for ax in axes[1][len(looks):] if looks else []:
        ax.set_visible(False)
    for row_axes in axes:
        row_axes[0].set_yticks(y, names, fontsize=8)
    axes[0][0].invert_yaxis()                          # shared: every panel lists the rows top down
    height = fig.get_size_inches()[1]
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout(rect=(0, 0.22 * len(used) / height + 0.02, 1, 1 - 0.35 / height if suptitle else 1))
    styles = {"random pairing": {"color": "k", "ls": "--", "lw": 1},
              "real test split": {"color": real_colour, "ls": "-.", "lw": 1.5},
              "target": {"color": "k", "ls": ":", "lw": 1.8}}
    kinds = [k for k in ABLATION_LINES if k in used]
    if kinds:
        fig.legend([Line2D([], [], **styles[k]) for k in kinds], [ABLATION_LINES[k] for k in kinds],
                   loc="lower left", ncol=1, fontsize=8, frameon=False, title="reference lines",
                   title_fontsize=8, alignment="left")
    return fig


def tumour_volume_histogram(volumes_ml: dict, reference: tuple[float, float] | None = None,
                            suptitle: str | None = None, reference_label: str = "reference range"):
    """Histogram (log-spaced bins) of whole-tumour volumes in ml per group (colours from
    ``method_styles``: "train" and "test" are the real splits); ``reference`` marks a
    (low, high) range named ``reference_label`` in the legend, e.g. the phantom's 5-95%
    design range."""
    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    allv = np.concatenate([np.asarray(v, float) for v in volumes_ml.values()])
    allv = allv[np.isfinite(allv) & (allv > 0)]
    bins = np.geomspace(max(allv.min(), 1e-3) * 0.9, allv.max() * 1.1, 20) if len(allv) else 10
    styles = method_styles(list(volumes_ml))
    for k, (name, v) in enumerate(volumes_ml.items()):
        label = f"{name} (median {np.median(v):.0f} ml)"
        if k == 0:
            ax.hist(np.asarray(v, float), bins=bins, alpha=0.22, color=styles[name]["color"], label=label)
        else:
            ax.hist(np.asarray(v, float), bins=bins, histtype="step", lw=1.8, color=styles[name]["color"], label=label)
    if reference:
        for j, x in enumerate(reference):
            ax.axvline(x, color="k", ls=":", lw=1, label=reference_label if j == 0 else None)
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
    (``{name: (images, masks)}``) in its ``method_styles`` colour and line style, the
    first set drawn filled as the reference. Right: the axial slice through the largest
    tumour of the first ``n_examples`` volumes of each set, cropped around the tumour, its
    sub-regions outlined in the colours of ``OUTLINES`` where ``label_maps`` has the set's
    label maps (``{name: labels}``), else its mask in the whole tumour's colour; a set
    with fewer tumours says so in a note instead of blank panels; the outlines' legend is
    below. Sets whose masks are all empty are left out."""
    plt = agg_pyplot()
    names = [k for k in sets if np.asarray(sets[k][1]).any()]       # a set without any tumour has nothing to show
    styles = method_styles(names)
    height = 1.7 * len(names) + 1.1
    fig = plt.figure(figsize=(4.5 + 1.6 * n_examples, height), layout="constrained")
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
                      alpha=0.3 if k == 0 else 1.0, lw=1.5, label=name, color=styles[name]["color"],
                      linestyle="-" if k == 0 else styles[name]["linestyle"])
        shown = [i for i in range(len(masks)) if masks[i].any()][:n_examples]
        for j, i in enumerate(shown):
            ax = fig.add_subplot(grid[k, j + 2])
            im, m = images[i], masks[i].astype(bool)
            z = int(np.argmax(m.sum(axis=(0, 1))))
            xs, ys = np.nonzero(m[:, :, z])
            pad = 6
            x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, m.shape[0])
            y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, m.shape[1])
            lab = None if labels is None else np.asarray(labels[i])[x0:x1, y0:y1, :]
            show_slice(ax, im[x0:x1, y0:y1, :], m[x0:x1, y0:y1, :], "axial", z, labels=lab)
            if j == 0:
                ax.set_title(name, fontsize=8, loc="left")
        if len(shown) < n_examples:
            note_axes(fig.add_subplot(grid[k, len(shown) + 2:]),
                      f"only {len(shown)} volume{'s' if len(shown) != 1 else ''} with a tumour in this set")
    ax_h.set_xticks([-1, -0.5, 0, 0.5, 1])
    ax_h.set_xlabel("intensity inside the tumour mask")
    ax_h.set_ylabel("density")
    ax_h.legend(fontsize=7, loc="upper left")
    layout(fig, suptitle, legend=True)
    outline_legend(fig, label_maps=any(n in (label_maps or {}) for n in names))
    return fig
