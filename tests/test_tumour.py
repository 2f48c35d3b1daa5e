import numpy as np
import pytest
from conftest import ball

from sbldm.data import tumour
from sbldm.config import FEATURE_NAMES


def test_ball_features_match_analytic_values():
    r = 8.0
    m = ball((30, 30, 30), centre=(14, 15, 13), radius=r)
    f = tumour.tumour_features(m)
    assert list(f) == list(FEATURE_NAMES)
    assert f["voxel_volume"] == pytest.approx(4 / 3 * np.pi * r ** 3, rel=0.03)
    assert f["surface_area"] == pytest.approx(4 * np.pi * r ** 2, rel=0.08)
    # the marching-cubes mesh of a digital ball is slightly faceted: sphericity just below 1
    assert 0.88 < f["sphericity"] <= 1.0
    assert (f["x"], f["y"], f["z"]) == pytest.approx((14, 15, 13), abs=1e-9)
    assert (f["w"], f["h"], f["d"]) == (17, 17, 17)


def test_cube_features_and_spacing():
    m = np.zeros((20, 20, 20), np.uint8)
    m[2:12, 5:11, 3:7] = 1                     # 10 x 6 x 4 box
    f = tumour.tumour_features(m, spacing=(2.0, 1.0, 0.5))
    assert f["voxel_volume"] == 10 * 6 * 4 * 2.0 * 1.0 * 0.5
    assert (f["x"], f["y"], f["z"]) == (6.5, 7.5, 4.5)  # voxel coordinates, spacing-free
    assert (f["w"], f["h"], f["d"]) == (10, 6, 4)
    # a box is far from a ball
    assert f["sphericity"] < 0.85


def test_mesh_measures_agree_with_scikit_image():
    from skimage import measure

    m = ball((20, 20, 20), radius=5)
    verts, faces, _, _ = measure.marching_cubes(np.pad(m.astype(float), 1), 0.5)
    area, volume = tumour.mesh_area_volume(m)
    assert area == pytest.approx(measure.mesh_surface_area(verts, faces), rel=1e-6)
    assert volume == pytest.approx(m.sum(), rel=0.05)


def test_sphericity_of_ball_is_higher_than_of_elongated_blob():
    rod = np.zeros((40, 12, 12), np.uint8)
    rod[2:38, 4:8, 4:8] = 1
    assert tumour.tumour_features(ball(radius=6))["sphericity"] > tumour.tumour_features(rod)["sphericity"] + 0.2


def test_empty_mask_raises_or_gives_nan():
    empty = np.zeros((8, 8, 8))
    with pytest.raises(tumour.EmptyMaskError, match="empty"):
        tumour.tumour_features(empty)
    assert all(np.isnan(v) for v in tumour.tumour_features(empty, empty="nan").values())


def test_normalizer_round_trip_and_reference_scaling(tmp_path):
    feats = [tumour.tumour_features(ball((32, 32, 16), centre=(10, 12, 8), radius=r)) for r in (3, 4, 5)]
    norm = tumour.FeatureNormalizer.fit(feats, (32, 32, 16))
    z = norm.transform(feats)
    assert z[:, 0].max() == 1.0 and z[:, 1].max() == 1.0            # over the training max
    assert np.allclose(z[:, 2], [f["sphericity"] for f in feats])    # raw
    assert np.allclose(z[:, 3:6], [[10 / 32, 12 / 32, 8 / 16]] * 3)  # over the volume shape
    norm.save(tmp_path / "n.json")
    back = tumour.FeatureNormalizer.load(tmp_path / "n.json")
    assert np.allclose(back.inverse_transform(z), tumour.as_matrix(feats))


def test_condition_sampler_gives_self_consistent_plausible_vectors():
    rng = np.random.default_rng(0)
    shape = (64, 64, 32)
    feats = [tumour.tumour_features(ball(shape, centre=rng.uniform(12, 20, 3), radius=r)) for r in (3, 4, 6, 8)]
    sampler = tumour.ConditionSampler(feats, shape)
    s = sampler.sample(500, rng=1)
    assert np.array_equal(s, sampler.sample(500, rng=1))
    assert np.allclose(s[:, 1], tumour.area_from(s[:, 0], s[:, 2]))  # area follows volume and sphericity
    half = s[:, 6:9] / 2
    assert np.all(s[:, 3:6] - half >= -1e-9) and np.all(s[:, 3:6] + half <= np.array(shape) + 1e-9)
    vol = tumour.as_matrix(feats)[:, 0]
    assert vol.min() * 0.4 < np.median(s[:, 0]) < vol.max() * 2.5


def test_sweep_varies_one_feature_and_keeps_position():
    base = tumour.tumour_features(ball((32, 32, 32), radius=5))
    sampler = tumour.ConditionSampler([base], (32, 32, 32))
    sw = sampler.sweep(base, "voxel_volume", [100, 400, 800])
    assert np.allclose(sw[:, 0], [100, 400, 800])
    assert np.allclose(sw[:, 3:6], tumour.as_matrix(base)[0, 3:6])
    assert np.all(np.diff(sw[:, 1]) > 0) and np.all(np.diff(sw[:, 6]) >= 0)
    with pytest.raises(ValueError, match="unknown feature"):
        sampler.sweep(base, "radius", [1])


def test_the_figures_outline_the_labels_of_the_data_stage():
    """One definition of the labels and regions (``sbldm.labels``) serves the data stage,
    the metrics and the figures: no module defines a ``REGIONS`` of its own."""
    import re
    from pathlib import Path

    from sbldm import labels, plotting
    from sbldm.data import tumour
    from sbldm.segmentation import brats_metrics

    assert plotting.REGIONS is tumour.REGIONS is brats_metrics.REGIONS is labels.REGIONS
    assert (plotting.NECROSIS, plotting.ENHANCING) == (tumour.NECROSIS, tumour.ENHANCING) == (1, 3)
    assert plotting.LABEL_REGIONS is labels.LABEL_NAMES
    defining = [str(p) for p in Path(labels.__file__).parent.rglob("*.py")
                if re.search(r"^REGIONS\s*[:=]", p.read_text(), re.M)]
    assert defining == [labels.__file__], defining


def test_the_appearance_figure_outlines_sub_regions_where_a_set_has_label_maps():
    """Notebook 09's examples: a set given label maps shows necrosis, enhancing and whole
    tumour in their own colours; a set with masks only shows its mask in the whole tumour's
    colour; label maps of another shape are refused, naming the set."""
    import matplotlib.colors as mcolors

    from sbldm import plotting

    labels = np.zeros((2, 16, 16, 8), np.uint8)
    labels[:, 4:12, 4:12, 2:6] = plotting.OEDEMA
    labels[:, 6:10, 6:10, 2:6] = plotting.ENHANCING
    labels[:, 7:9, 7:9, 2:6] = plotting.NECROSIS
    images = np.random.default_rng(0).uniform(-1, 1, labels.shape).astype(np.float32)
    masks = labels > 0

    def colours(fig):
        found = set()
        for ax in fig.axes:
            for coll in ax.collections:
                for c in np.atleast_2d(coll.get_edgecolor()):
                    if len(c):
                        found.add(mcolors.to_hex(c))
        return found

    outlined = {mcolors.to_hex(c) for _, c, _ in plotting.OUTLINES}
    fig = plotting.tumour_intensity_figure({"real": (images, masks)}, n_examples=2,
                                           label_maps={"real": labels})
    assert outlined <= colours(fig)
    fig = plotting.tumour_intensity_figure({"real": (images, masks)}, n_examples=2)
    assert colours(fig) == {mcolors.to_hex(plotting.REGION_COLOURS["whole tumour"])}
    with pytest.raises(ValueError, match="'real'"):
        plotting.tumour_intensity_figure({"real": (images, masks)}, n_examples=2, label_maps={"real": labels[:1]})
