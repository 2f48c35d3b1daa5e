"""Figures of the phantom cohort (notebook 00): cases with their sub-regions outlined next
to the histograms of their intensities, the four sequences of one case, and the cohort's
tumour shapes.

Sub-regions are outlined in the regions' palette (``sbldm.plotting.REGION_COLOURS``):
necrosis yellow, enhancing tumour vermillion, the whole tumour (oedema's outer edge)
bluish green. Intensities are z values relative to the normal-appearing brain
(``sbldm.data.phantom_stats``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from sbldm import plotting
from sbldm.plotting import agg_pyplot, draw_outlines, outline_legend, view_slice

#: histogram colours: each sub-region in its ``sbldm.plotting.REGION_COLOURS`` colour (oedema
#: as the whole tumour's outline), grey for normal brain
REGION_COLOURS = {"normal": "0.6", **{k: plotting.REGION_COLOURS[k] for k in ("oedema", "enhancing", "necrosis")}}
SEQUENCE_NAMES = {"t1n": "T1", "t1c": "T1ce", "t2w": "T2", "t2f": "FLAIR"}


def tumour_slice(seg: np.ndarray) -> int:
    """Axial index with the largest whole-tumour area (the middle slice if none)."""
    area = (np.asarray(seg) > 0).sum(axis=(0, 1))
    return int(np.argmax(area)) if area.any() else seg.shape[2] // 2


def _window(image: np.ndarray) -> tuple[float, float]:
    """The 0.5-99.5 percentile window of the brain: the voxels above the background, which
    is 0 in raw skull-stripped images and -1 in normalised ones."""
    values = image[image > min(0.0, float(image.min()))]
    return (float(np.percentile(values, 0.5)), float(np.percentile(values, 99.5))) if values.size else (0.0, 1.0)


def _crop(seg2d: np.ndarray, margin: int) -> tuple[slice, slice]:
    rows, cols = np.nonzero(seg2d)
    if not len(rows):
        return slice(None), slice(None)
    size = max(rows.max() - rows.min(), cols.max() - cols.min()) // 2 + margin
    cr, cc = (rows.max() + rows.min()) // 2, (cols.max() + cols.min()) // 2
    return (slice(max(cr - size, 0), cr + size + 1), slice(max(cc - size, 0), cc + size + 1))


def draw_case(ax, image: np.ndarray, seg: np.ndarray, index: int | None = None, crop: bool = False,
              title: str | None = None, outlines: bool = True, aspect: float = 1.0) -> None:
    """Axial slice ``index`` (default: the largest tumour area) of ``image`` with the
    sub-regions outlined; ``crop`` zooms onto the tumour."""
    k = tumour_slice(seg) if index is None else index
    img, lab = view_slice(image, "axial", k), view_slice(seg, "axial", k)
    lo, hi = _window(image)
    sl = _crop(lab > 0, margin=max(4, lab.shape[0] // 20)) if crop else (slice(None), slice(None))
    img, lab = img[sl], lab[sl]
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", aspect=aspect)
    if outlines:
        draw_outlines(ax, labels2d=lab, linewidth=0.9)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)


def phantom_cases_figure(cases: Sequence[tuple], suptitle: str | None = None, bins: np.ndarray | None = None):
    """One row per case: the axial FLAIR slice through the tumour's largest extent, a
    zoom onto the tumour (outlines in ``sbldm.plotting.REGION_COLOURS``, legend below),
    and histograms of the z values of the normal-appearing brain and of each sub-region.

    ``cases``: tuples ``(image, seg, spacing, label)``.
    """
    from sbldm.data.phantom_stats import region_z_values

    plt = agg_pyplot()
    bins = np.linspace(-4, 6, 61) if bins is None else bins
    n = len(cases)
    fig, axes = plt.subplots(n, 3, figsize=(9.5, 2.7 * n + 0.7), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1.5]}, layout="constrained")
    for r, (image, seg, spacing, label) in enumerate(cases):
        draw_case(axes[r, 0], image, seg, title=f"{label} — FLAIR, axial")
        draw_case(axes[r, 1], image, seg, crop=True, title="tumour")
        ax = axes[r, 2]
        values = region_z_values(image, seg, spacing)
        for name in ("normal", "oedema", "enhancing", "necrosis"):
            v = values[name]
            if v.size:
                ax.hist(np.clip(v, bins[0], bins[-1]), bins=bins, density=True, histtype="step", lw=1.4,
                        color=REGION_COLOURS[name], label=f"{name} (median {np.median(v):+.1f})")
        ax.set_xlabel("z (IQRs of normal brain above its median)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5, frameon=False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    outline_legend(fig)
    return fig


def sequences_figure(images: Mapping[str, np.ndarray], seg: np.ndarray, label: str | None = None,
                     suptitle: str | None = None):
    """The sequences of one case (keys ``t1n, t1c, t2w, t2f``): the axial slice through the
    tumour's largest extent (top) and a zoom onto the tumour with the outlines (bottom)."""
    plt = agg_pyplot()
    names = [k for k in SEQUENCE_NAMES if k in images] or list(images)
    fig, axes = plt.subplots(2, len(names), figsize=(2.6 * len(names), 5.9), squeeze=False, layout="constrained")
    k = tumour_slice(seg)
    for j, name in enumerate(names):
        title = SEQUENCE_NAMES.get(name, name) + (f" — {label}" if label and j == 0 else "")
        draw_case(axes[0, j], images[name], seg, index=k, title=title, outlines=False)
        draw_case(axes[1, j], images[name], seg, index=k, crop=True, title="tumour")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    outline_legend(fig)
    return fig


def shape_figure(rows: Sequence[Mapping], reference: Mapping[str, float] | None = None, suptitle: str | None = None):
    """The cohort's tumour shapes: whole-tumour volume against sphericity (left) and the
    histogram of sphericity (right); ``reference`` (e.g. ``phantom_stats.REAL_CASE``) is
    marked as a star / a dashed line."""
    plt = agg_pyplot()
    vol = np.array([r["volume_ml"] for r in rows], float)
    sph = np.array([r["sphericity"] for r in rows], float)
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.5, 3.2))
    a.scatter(vol, sph, s=14, alpha=0.7, label=f"phantom (n={len(rows)})")
    b.hist(sph[np.isfinite(sph)], bins=np.linspace(0.2, 1.0, 33), alpha=0.7)
    if reference:
        a.scatter([reference["volume_ml"]], [reference["sphericity"]], marker="*", s=120, color="k", label="real case")
        b.axvline(reference["sphericity"], color="k", ls="--", lw=1, label="real case")
        b.legend(fontsize=8)
    a.set_xscale("log")
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    a.xaxis.set_major_locator(FixedLocator([5, 10, 20, 50, 100, 200, 500]))
    a.xaxis.set_major_formatter(ScalarFormatter())
    a.xaxis.set_minor_formatter(NullFormatter())
    a.set_xlabel("whole-tumour volume (ml)")
    a.set_ylabel("sphericity")
    a.legend(fontsize=8)
    b.set_xlabel("sphericity of the whole tumour")
    b.set_ylabel("cases")
    b.set_title(f"median {np.nanmedian(sph):.2f}, range {np.nanmin(sph):.2f}-{np.nanmax(sph):.2f}", fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def phantom_cohort_report(folder, out, n_show: int = 3, max_cases: int | None = None, title: str = "",
                          notes: Sequence[str] = ()) -> str:
    """Figures and table of a phantom cohort written by ``sbldm.data.phantom.make_phantom_cohort``.

    Under ``out``: ``figures/data_phantom_cases.png`` (the first ``n_show`` cases, FLAIR
    with outlines beside their z histograms), ``figures/data_phantom_sequences.png`` (the
    four sequences of the first case), ``figures/data_phantom_shapes.png`` (sphericity and
    volume of every measured case) and ``tables/data_phantom_statistics.{csv,md}`` (median
    and range of each ``phantom_stats`` measure over the cases, every sequence and the
    tumour's placement included, with the real references and the phantom's targets beside them).
    ``max_cases`` limits the measured cases to the first ones. Returns the table's Markdown.
    """
    from pathlib import Path

    from sbldm import tables
    from sbldm.data import phantom_stats
    from sbldm.data.cohort import find_cases, read_nifti
    from sbldm.data.phantom import SEQUENCES
    from sbldm.plotting import save_figure

    out = Path(out)
    cases = find_cases(folder, modalities=SEQUENCES)
    if max_cases is not None:
        cases = cases[:max_cases]
    rows, shown, first_images = [], [], None
    for case in cases:
        image, seg, spacing = phantom_stats.read_case(case.image_path, case.mask_path)
        # every sequence read once: the FLAIR read_case already holds, the others from their files
        images = {name: image if path == case.image_path else read_nifti(path)[0] for name, path in case.sequences}
        rows.append({"case_id": case.case_id, **phantom_stats.case_statistics(images, seg, spacing)})
        if len(shown) < n_show:
            shown.append((image, seg, spacing, case.case_id))
        first_images = images if first_images is None else first_images
    save_figure(phantom_cases_figure(shown, suptitle=f"phantom cases — {title}"), out / "figures" / "data_phantom_cases.png")
    save_figure(sequences_figure(first_images, shown[0][1], label=cases[0].case_id,
                                 suptitle=f"the four sequences — {title}"),
                out / "figures" / "data_phantom_sequences.png")
    save_figure(shape_figure(rows, phantom_stats.REAL_CASE, suptitle=f"whole-tumour shape — {title}"),
                out / "figures" / "data_phantom_shapes.png")
    measures = (*phantom_stats.MEASURES, *phantom_stats.SEQUENCE_MEASURES, *phantom_stats.PLACEMENT_MEASURES)
    summary = phantom_stats.summarise(rows, measures, reference={**phantom_stats.REAL_CASE, **phantom_stats.REAL_PANEL},
                                      targets=phantom_stats.PHANTOM_TARGETS)
    return tables.write_table(
        summary, out / "tables" / "data_phantom_statistics",
        title=f"Phantom cohort statistics ({title}, {len(rows)} cases, all four sequences)",
        notes=["z: (x - median) / IQR of the normal-appearing brain (brain minus the whole tumour dilated by 3 mm), "
               "per sequence; measures without a sequence suffix are FLAIR's; derivatives in z/mm and z/mm^2; "
               "definitions in sbldm.data.phantom_stats.",
               "real case: the medians of a panel of real BraTS gliomas (phantom_stats.REAL_PANEL: nine with images, "
               "three with all four sequences) where it has the measure, else one BraTS 2021 case "
               "(phantom_stats.REAL_CASE); both at 1 mm, so the grid-dependent measures (Laplacian, edge gradient, "
               "sphericity, oedema thickness) compare only at 1 mm.",
               "target: what phantom version 4 is calibrated to show (phantom_stats.PHANTOM_TARGETS), on the median "
               "or, for the cases_* rows, on the share of cases; meets: whether this cohort does.",
               "cases_*: shares of cases (median column): core touching normal brain, any tumour within 5 mm of the "
               "brain's surface, more than one 26-connected whole-tumour component.",
               *notes],
        columns=["measure", "median", "min", "max", "n", "real case", "target", "meets"])
