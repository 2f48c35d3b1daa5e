"""Figures a reader can decode: one palette for the tumour's regions, another for the
methods, a legend wherever colours carry meaning, and no blank panel."""

import itertools

import numpy as np
import pytest

from sbldm import plotting

SHAPE = (32, 32, 16)
REGION_NAMES = {"whole tumour", "enhancing", "necrosis"}


def _rgb(colour) -> np.ndarray:
    import matplotlib.colors as mcolors

    return np.asarray(mcolors.to_rgb(colour))


def _distance(a, b) -> float:
    return float(np.linalg.norm(_rgb(a) - _rgb(b)))


def _hex(colour) -> str:
    import matplotlib.colors as mcolors

    return mcolors.to_hex(colour)


def _volume(seed: int, centre=None, radius: float = 5.0):
    """A fake brain (an ellipsoid of noise in [-1, 1]) with a tumour: oedema, an enhancing
    rim and a necrotic core around ``centre``; returns (image, mask, label map)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    brain = ((x - 15.5) / 13) ** 2 + ((y - 15.5) / 14) ** 2 + ((z - 7.5) / 7) ** 2 <= 1
    c = (16, 16, 8) if centre is None else centre
    d = np.sqrt((x - c[0]) ** 2 + ((y - c[1]) / 1.2) ** 2 + ((z - c[2]) / 0.8) ** 2)
    labels = np.zeros(SHAPE, np.uint8)
    labels[(d <= radius) & brain] = plotting.OEDEMA
    labels[(d <= 0.6 * radius) & brain] = plotting.ENHANCING
    labels[(d <= 0.3 * radius) & brain] = plotting.NECROSIS
    image = np.where(brain, 0.1 + 0.15 * rng.standard_normal(SHAPE), -1.0)
    image = np.where(labels > 0, 0.8, image).astype(np.float32)
    return image, labels > 0, labels


@pytest.fixture(scope="module")
def volumes():
    vols = [_volume(s, centre=(12 + 2 * s, 14 + s, 7)) for s in range(4)]
    return tuple(np.array([v[i] for v in vols]) for i in range(3))


def _drawn(ax) -> bool:
    """Whether ``ax`` shows anything: an image, a contour, a line with points, a bar of
    some size, or text."""
    if ax.images or ax.collections or any(t.get_text().strip() for t in ax.texts):
        return True
    if any(len(line.get_xdata()) for line in ax.lines):
        return True
    return any(not hasattr(p, "get_width") or p.get_width() * p.get_height() != 0 for p in ax.patches)


def _blank_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible() and not _drawn(ax)]


def _legend_texts(fig) -> set[str]:
    """The labels of every legend of ``fig`` (figure legends and the axes' own)."""
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return {t.get_text() for legend in legends for t in legend.get_texts()}


def _outline_colours(fig) -> set[str]:
    found = set()
    for ax in fig.axes:
        for coll in ax.collections:
            for c in np.atleast_2d(coll.get_edgecolor()):
                if len(c):
                    found.add(_hex(c))
    return found


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plotting.agg_pyplot().close("all")


# -- the palettes -----------------------------------------------------------------------


def test_the_region_and_method_palettes_share_no_colour_and_stay_far_apart():
    regions = set(map(_hex, plotting.REGION_COLOURS.values()))
    methods = set(map(_hex, [*plotting.METHOD_COLOURS.values(), *plotting.EXTRA_METHOD_COLOURS]))
    marks = set(map(_hex, plotting.ANNOTATION_COLOURS.values()))
    assert not regions & methods and not regions & marks
    # no method and no annotation mark resembles a region (RGB distance, channels in [0, 1])
    for region, other in itertools.product(regions, methods | marks):
        assert _distance(region, other) >= 0.35, (region, other)
    # the regions apart from each other; oedema is the whole tumour's colour on purpose
    assert plotting.REGION_COLOURS["oedema"] == plotting.REGION_COLOURS["whole tumour"]
    distinct = [plotting.REGION_COLOURS[k] for k in ("whole tumour", "necrosis", "enhancing")]
    for a, b in itertools.combinations(distinct, 2):
        assert _distance(a, b) >= 0.5, (a, b)
    # the methods apart from each other too
    for a, b in itertools.combinations(plotting.METHOD_COLOURS.values(), 2):
        assert _distance(a, b) >= 0.2, (a, b)
    # each method also has a line style, for readers who cannot tell blue from purple
    assert set(plotting.METHOD_LINESTYLES) == set(plotting.METHOD_COLOURS)


def test_the_regions_stay_apart_for_colour_blind_readers():
    """Simulated deuteranopia and protanopia (Machado et al. 2009, severity 1, on linear RGB)."""
    matrices = [np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                          [-0.011820, 0.042940, 0.968881]]),
                np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                          [-0.003882, -0.048116, 1.051998]])]

    def seen(colour, m):
        c = _rgb(colour)
        linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        out = np.clip(m @ linear, 0, 1)
        return np.where(out <= 0.0031308, 12.92 * out, 1.055 * out ** (1 / 2.4) - 0.055)

    distinct = [plotting.REGION_COLOURS[k] for k in ("whole tumour", "necrosis", "enhancing")]
    for m in matrices:
        for a, b in itertools.combinations(distinct, 2):
            assert np.linalg.norm(seen(a, m) - seen(b, m)) >= 0.35, (a, b)


def test_outlines_and_the_label_colour_map_come_from_the_region_palette():
    import matplotlib.colors as mcolors

    for _, colour, name in plotting.OUTLINES:
        assert colour == plotting.REGION_COLOURS[name]
    assert {name for _, _, name in plotting.OUTLINES} == REGION_NAMES
    cmap = plotting.label_colormap()
    for value, name in plotting.LABEL_REGIONS.items():
        assert _hex(cmap(value)) == _hex(plotting.REGION_COLOURS[name])
    assert _hex(cmap(0)) == _hex("black")
    assert plotting.MASK_COLOUR == plotting.REGION_COLOURS["whole tumour"]
    assert mcolors.to_hex(plotting.MASK_COLOUR) != mcolors.to_hex("red")


def test_method_styles_name_every_set_of_the_project_in_the_method_palette():
    from sbldm.report.summaries import VAE_ROW

    expect = {"real (train split)": "real (train split)", "real (test split)": "real (test split)",
              "train": "real (train split)", "test": "real (test split)", VAE_ROW: "VAE reconstruction",
              "3D-LSGAN": "3D-LSGAN", "3D-LDM": "3D-LDM", "SBLDM (DDPM)": "SBLDM (DDPM)",
              "SBLDM (DDIM)": "SBLDM (DDIM)", "real + SBLDM": "SBLDM (DDIM)", "real + 3D-LSGAN": "3D-LSGAN"}
    for name, key in expect.items():
        assert plotting.method_key(name) == key, name
    assert plotting.method_key("something else") is None
    styles = plotting.method_styles(["3D-LDM", "SBLDM (DDIM)", "SBLDM pre-train, real fine-tune", "mystery"])
    assert styles["3D-LDM"]["color"] == plotting.METHOD_COLOURS["3D-LDM"]
    # a second name for one method and an unknown name get colours of their own
    colours = [s["color"] for s in styles.values()]
    assert len(set(colours)) == len(colours)
    assert styles["mystery"]["color"] in plotting.EXTRA_METHOD_COLOURS


# -- legends and blank panels -----------------------------------------------------------


def test_figure_2_marks_a_short_row_instead_of_leaving_blank_panels_and_has_an_outline_legend(volumes):
    images, masks, labels = volumes
    rows = {"real (train split)": (images, masks, labels), "3D-LSGAN": (images, masks),
            "SBLDM (DDPM)": (images[:2], masks[:2], labels[:2])}
    fig = plotting.comparison_figure(rows, n_volumes=4, view="axial")
    assert _blank_axes(fig) == []
    notes = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert notes == ["only 2 volumes in this set"]
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == list(rows)
    assert REGION_NAMES <= _legend_texts(fig)
    assert _outline_colours(fig) <= set(map(_hex, plotting.REGION_COLOURS.values()))
    # rows of masks only: the legend names the mask's outline
    fig = plotting.comparison_figure({"3D-LSGAN": (images, masks)}, n_volumes=2, view="coronal")
    assert _legend_texts(fig) == {"tumour mask (whole tumour)"}
    assert _blank_axes(fig) == []


def test_every_figure_with_outlines_has_a_legend_naming_the_regions(volumes):
    images, masks, labels = volumes
    figures = {
        "cases": plotting.cases_figure(images[:2], masks[:2], labels=["a", "b"], label_maps=labels[:2]),
        "strip": plotting.slice_strip([("real (test split)", images[0], masks[0], labels[0]),
                                       ("slice-VAE reconstruction", images[1], masks[1], labels[1])], n_slices=6),
        "appearance": plotting.tumour_intensity_figure({"real (train split)": (images, masks)}, 2,
                                                       label_maps={"real (train split)": labels}),
        "sweep": plotting.sweep_figure(images, masks, ["a", "b", "c", "d"], views=("axial", "coronal"),
                                       label_maps=list(labels)),
    }
    for name, fig in figures.items():
        named = [{t.get_text().split(" (")[0] for t in legend.get_texts()} for legend in fig.legends]
        assert any(REGION_NAMES <= names for names in named), name
        assert _blank_axes(fig) == [], name
    masks_only = {
        "cases": plotting.cases_figure(images[:2], masks[:2]),
        "strip": plotting.slice_strip([("real (test split)", images[0], masks[0])], n_slices=4),
        "appearance": plotting.tumour_intensity_figure({"3D-LSGAN": (images, masks)}, 2),
        "sweep": plotting.sweep_figure(images, masks, ["a", "b", "c", "d"]),
    }
    for name, fig in masks_only.items():
        assert "tumour mask (whole tumour)" in _legend_texts(fig), name
        assert _outline_colours(fig) == {_hex(plotting.MASK_COLOUR)}, name


def test_the_sweep_marks_the_requested_centre_in_no_region_colour_and_says_so(volumes):
    images, masks, labels = volumes
    centres = [(12 + 2 * s, 14 + s, 7) for s in range(4)]
    fig = plotting.sweep_figure(images, masks, ["a", "b", "c", "d"], centres, views=("axial",), label_maps=list(labels))
    marks = [line for ax in fig.axes for line in ax.lines if line.get_marker() == "+"]
    assert len(marks) == 4
    regions = set(map(_hex, plotting.REGION_COLOURS.values()))
    assert all(_hex(m.get_color()) not in regions for m in marks)
    assert all(min(_distance(m.get_color(), r) for r in regions) >= 0.35 for m in marks)
    assert "requested centre" in _legend_texts(fig)


def test_the_appearance_figure_draws_methods_apart_from_regions_and_no_blank_panel(volumes):
    images, masks, labels = volumes
    sets = {"real (train split)": (images, masks), "3D-LSGAN": (images, masks), "3D-LDM": (images, masks),
            "SBLDM (DDPM)": (images[:2], masks[:2])}
    fig = plotting.tumour_intensity_figure(sets, 4, label_maps={"real (train split)": labels})
    assert _blank_axes(fig) == []
    assert any("only 2 volumes" in t.get_text() for ax in fig.axes for t in ax.texts)
    hist = fig.axes[0]
    regions = list(plotting.REGION_COLOURS.values())
    for patch in hist.patches:
        colour = patch.get_edgecolor() if patch.get_fill() is False else patch.get_facecolor()
        assert min(_distance(colour[:3], r) for r in regions) >= 0.35
    assert {t.get_text() for t in hist.get_legend().get_texts()} == set(sets)


def test_the_ablation_figure_draws_zeros_visibly_and_defines_its_lines():
    rows = [{"row": name, "empty_fraction": 0.0, "spearman_volume": s, "centre_distance": 1.0,
             "chance_centre_distance": 12.0, "relative_volume_error": 0.2, "chance_relative_volume_error": 0.8}
            for name, s in (("a", 0.9), ("b", ""))]
    fig = plotting.ablation_figure(rows)
    empty = next(ax for ax in fig.axes if ax.get_title().startswith("empty masks"))
    zeros = [line for line in empty.lines if line.get_marker() == "o"]
    assert len(zeros) == 1 and list(zeros[0].get_xdata()) == [0, 0] and len(zeros[0].get_ydata()) == 2
    assert "0% empty in every row" in [t.get_text() for t in empty.texts]
    spearman = next(ax for ax in fig.axes if ax.get_title().startswith("Spearman"))
    assert "n/a" in [t.get_text() for t in spearman.texts]                  # row b has no value
    # each panel's lines are named in its legend, the kinds defined under the figure
    assert {t.get_text() for t in empty.get_legend().get_texts()} == {"target ≤ 0.05"}
    assert "target ≥ 0.9" in {t.get_text() for t in spearman.get_legend().get_texts()}
    definitions = {t.get_text().split(":")[0] for legend in fig.legends for t in legend.get_texts()}
    assert definitions == {"random pairing", "target"}
    assert all(":" in t.get_text() for legend in fig.legends for t in legend.get_texts())
    # no region colour among the reference lines
    regions = list(plotting.REGION_COLOURS.values())
    for ax in fig.axes:
        for line in ax.lines:
            assert min(_distance(line.get_color(), r) for r in regions) >= 0.35


def test_loss_curves_label_both_axes_and_mark_the_kept_step():
    steps = np.arange(100, 2100, 100)
    logs = {"distance": (steps, np.linspace(5, 1, len(steps))), "empty": (steps, np.full(len(steps), 0.01))}
    fig = plotting.loss_curves(logs, ylabel={"distance": "distance"}, mark=(1300, "kept: step 1300"))
    panels = fig.axes
    assert [ax.get_xlabel() for ax in panels] == ["step", "step"]
    assert [ax.get_ylabel() for ax in panels] == ["distance", "loss"]
    for ax in panels:
        assert any(list(line.get_xdata()) == [1300, 1300] for line in ax.lines)          # the kept step's line
        assert any(line.get_marker() == "*" for line in ax.lines)                         # and its point
    assert {"logged value", "kept: step 1300"} <= _legend_texts(fig)
    assert plotting.loss_curves({"a": (steps, np.ones(len(steps)))}).axes[0].get_ylabel() == "loss"


def test_the_steering_figure_outlines_with_a_legend_and_marks_the_requested_centre():
    from types import SimpleNamespace

    from sbldm.config import FEATURE_NAMES
    from sbldm.data.tumour import tumour_features
    from sbldm.report.steer import TumourSteering

    image, mask, labels = _volume(0, centre=(20, 12, 8))
    feats = tumour_features(mask)
    steer = object.__new__(TumourSteering)                  # the drawing only, without a pipeline
    steer.shape, steer.steps, steer.guidance_scale, steer.seed, steer.last_seconds = SHAPE, 2, 1.0, 0, 0.1
    steer.last = SimpleNamespace(images=image[None], masks=mask[None], labels=labels[None], subregions=None,
                                 raw_conditions=np.array([[feats[k] for k in FEATURE_NAMES]]))
    fig = steer.draw()
    assert REGION_NAMES | {"requested centre"} <= _legend_texts(fig)
    assert len([line for ax in fig.axes for line in ax.lines if line.get_marker() == "+"]) == 3


def test_the_segmentation_and_scarce_figures_use_no_region_colour():
    from sbldm.experiments import scarce_regime as sr
    from sbldm.segmentation import table2

    regions = list(plotting.REGION_COLOURS.values())
    result = {"curve": [{"iteration": i, "val_dice": 0.3, "train_loss": 0.8 - i / 1e4} for i in (250, 500, 750)],
              "budget": 500, "n_fit": 8, "n_val": 2, "regions": True}
    curve = table2.curve_figure(result, "test")
    assert any(t.startswith("training loss") for t in _legend_texts(curve))          # both axes' lines named
    summary = [{"row": row, "n_real": n, "seeds": 1, **{f"dice_{g}_mean": 0.5 for g in ("WT", "TC", "ET")},
                **{f"dice_{g}_seed_std": 0.0 for g in ("WT", "TC", "ET")}}
               for n in (10, 25) for row in (sr.REAL, sr.MIXING)]
    for fig in (curve, sr.sweep_figure(summary, ("WT", "TC", "ET"), "test")):
        for ax in fig.axes:
            for line in ax.lines:
                if line.get_color() not in ("k", "black"):
                    assert min(_distance(line.get_color(), r) for r in regions) >= 0.35, line.get_color()
