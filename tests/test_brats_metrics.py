"""sbldm.segmentation.brats_metrics on hand-made label maps whose answers are worked out by hand."""

import numpy as np
import pytest
from conftest import ball
from scipy.spatial.distance import cdist

from sbldm.segmentation import brats_metrics as bm

PEN = bm.HD95_PENALTY_MM


def box(shape, *ranges):
    """Boolean mask with the box [a0:b0, a1:b1, a2:b2] set."""
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in ranges)] = True
    return m


def brute_hd95(a, b, spacing):
    """HD95 computed independently: surface voxels by explicit 6-neighbour shifts, every
    pairwise distance by cdist, numpy's (linear) percentile, max of both directions."""
    def surface_points(m):
        padded = np.pad(m, 1)
        interior = m.copy()
        for axis in range(3):
            for step in (-1, 1):
                interior &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(m & ~interior) * np.asarray(spacing, float)
    d = cdist(surface_points(a), surface_points(b))
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


# --- constants and labels ---------------------------------------------------------------


def test_parameters_are_the_brats_gli_2023_ones():
    assert bm.REGIONS == {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    assert (bm.HD95_PENALTY_MM, bm.LESION_DILATION_ITERATIONS, bm.MIN_LESION_VOLUME_MM3) == (374.0, 3, 50.0)
    assert (bm.LESION_CONNECTIVITY, bm.LESION_DILATION_CONNECTIVITY) == (26, 2)


def test_region_masks_from_labels():
    labels = np.array([[[0, 1, 2, 3]]], np.uint8)
    assert bm.region_mask(labels, "WT").tolist() == [[[False, True, True, True]]]
    assert bm.region_mask(labels, "TC").tolist() == [[[False, True, False, True]]]   # oedema is not core
    assert bm.region_mask(labels, "ET").tolist() == [[[False, False, False, True]]]
    assert bm.region_mask(labels.astype(float), "TC").tolist() == [[[False, True, False, True]]]  # nibabel floats
    with pytest.raises(ValueError, match="unknown region"):
        bm.region_mask(labels, "NCR")


def test_brats2021_label_4_is_refused_naming_the_value():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[1:3, 1:3, 1:3] = 4
    labels[4, 4, 4] = 7
    with pytest.raises(ValueError, match=r"unexpected label value\(s\) \[4, 7\].*map 4 to 3"):
        bm.region_mask(labels, "ET")
    with pytest.raises(ValueError, match=r"reference: unexpected label value\(s\) \[4, 7\]"):
        bm.score_case(np.zeros_like(labels), labels)
    with pytest.raises(ValueError, match=r"prediction: unexpected label value\(s\) \[2.5\]"):
        bm.score_case(np.full((6, 6, 6), 2.5), np.zeros((6, 6, 6)))


# --- volume Dice and HD95 ----------------------------------------------------------------


def test_empty_conventions():
    shape = (10, 10, 10)
    empty, blob = np.zeros(shape, bool), box(shape, (2, 6), (2, 6), (2, 6))
    assert bm.dice(empty, empty) == 1.0 and bm.hd95(empty, empty) == 0.0
    for p, r in ((blob, empty), (empty, blob)):
        assert bm.dice(p, r) == 0.0
        assert bm.hd95(p, r) == PEN
        lw = bm.lesion_wise_scores(p, r)
        assert (lw.dice, lw.hd95) == (0.0, PEN)              # one missed lesion or one false positive
    lw = bm.lesion_wise_scores(empty, empty)
    assert (lw.dice, lw.hd95, lw.n_lesions, lw.n_false_positive) == (1.0, 0.0, 0, 0)
    s = bm.score_case(np.zeros(shape, np.uint8), np.zeros(shape, np.uint8))
    assert all(s[f"{r}_dice"] == 1.0 and s[f"{r}_hd95"] == 0.0 and s[f"{r}_lesion_dice"] == 1.0
               and s[f"{r}_lesion_hd95"] == 0.0 for r in bm.REGIONS)


def test_hd95_analytic_offset_plates_anisotropic():
    # Two 8x8x1 plates 3 slices apart: every voxel is on the surface and its nearest
    # voxel on the other plate is straight above it, so every distance is 3 * sz.
    shape, spacing = (12, 12, 10), (0.8, 1.2, 2.5)
    a, b = box(shape, (2, 10), (2, 10), (2, 3)), box(shape, (2, 10), (2, 10), (5, 6))
    assert bm.hd95(a, b, spacing) == pytest.approx(7.5)
    assert bm.hd95(b, a, spacing) == pytest.approx(7.5)
    assert bm.hd95(a, a, spacing) == 0.0


def test_hd95_is_robust_to_a_far_outlier():
    # ref = a 4^3 cube (56 surface voxels) + 1 far voxel; pred = the cube. ref->pred
    # distances: 56 zeros and one large value; the 95th percentile (index 0.95 * 56 = 53.2
    # of 57 sorted values) is 0, so HD95 is 0 while the plain Hausdorff distance is not.
    shape = (30, 8, 8)
    cube = box(shape, (1, 5), (1, 5), (1, 5))
    ref = cube.copy()
    ref[28, 2, 2] = True
    assert bm.hd95(cube, ref) == 0.0
    assert bm.dice(cube, ref) == pytest.approx(128 / 129)


@pytest.mark.filterwarnings("ignore::FutureWarning")   # MONAI's own deprecation notice
def test_hd95_matches_independent_brute_force_and_monai():
    # MONAI's compute_hausdorff_distance(percentile=95) uses the same surface (mask XOR its
    # 6-connected erosion), Euclidean distances with spacing and a linear percentile.
    import torch
    from monai.metrics import compute_hausdorff_distance

    shape, spacing = (26, 24, 20), (1.0, 0.7, 2.0)
    a = ball(shape, centre=(12, 11, 9), radius=6.0).astype(bool)
    b = ball(shape, centre=(14, 10, 10), radius=5.0).astype(bool) | box(shape, (3, 6), (3, 5), (2, 4))
    ours = bm.hd95(a, b, spacing)
    assert ours == pytest.approx(brute_hd95(a, b, spacing), abs=1e-9)
    onehot = [torch.from_numpy(m[None, None].astype(np.float32)) for m in (a, b)]
    theirs = compute_hausdorff_distance(onehot[0], onehot[1], include_background=True, percentile=95,
                                        spacing=list(spacing))
    assert ours == pytest.approx(float(theirs), abs=1e-4)
    assert ours > 1.0


def _challenge_hd95(pred, ref, spacing):
    """HD95 as the BraTS 2023 scripts compute it: DeepMind's surface_distance (surfels on the
    voxel-corner grid, area-weighted percentile)."""
    sd = pytest.importorskip("surface_distance")
    dist = sd.compute_surface_distances(np.asarray(ref, bool), np.asarray(pred, bool), spacing)
    return float(sd.compute_robust_hausdorff(dist, 95))


def _sphere(shape, centre, radius):
    g = np.indices(shape).astype(float)
    return sum((g[i] - centre[i]) ** 2 for i in range(3)) <= radius ** 2


def test_hd95_against_the_challenge_scripts_surfels_is_what_the_docstring_states():
    """The module docstring says how far this HD95 lies from the challenge's: within one
    voxel along the coarsest axis for compact masks, and as far as a satellite's distance
    when the satellite sits at the 5% mark. Both halves are measured here against
    ``surface_distance``."""
    shape = (64, 64, 48)
    sphere = _sphere(shape, (32, 32, 24), 10)
    cube = np.zeros(shape, bool)
    cube[20:40, 20:40, 15:30] = True
    compact = [(_sphere(shape, (32, 32, 24), 12), sphere), (_sphere(shape, (35, 32, 24), 10), sphere), (cube, sphere)]
    worst = 0.0
    for pred, ref in compact:
        for spacing in ((1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (1.0, 1.0, 3.0)):
            ours, theirs = bm.hd95(pred, ref, spacing), _challenge_hd95(pred, ref, spacing)
            assert ours > 1.0 and theirs > 1.0
            worst = max(worst, abs(ours - theirs) / max(spacing))
    assert 0.5 < worst <= 1.0 + 1e-9      # the stated bound, and not a vacuous one
    # a 7 x 7 x 1 plate 30 voxels from a sphere: its surface share sits at the 5% mark
    main = _sphere(shape, (32, 20, 24), 10)
    plate = main.copy()
    plate[32:39, 50:57, 24] = True
    for pred, ref in ((plate, main), (main, plate)):
        assert bm.hd95(pred, ref) == 0.0
        assert _challenge_hd95(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx(21.38, abs=0.01)
    # away from the mark they agree again: a 5 x 5 x 1 plate is below it for both, an
    # 8 x 8 x 2 one above it for both
    for size, expected in (((5, 5, 1), 0.0), ((8, 8, 2), 24.0)):
        other = main.copy()
        other[32:32 + size[0], 50:50 + size[1], 24:24 + size[2]] = True
        assert bm.hd95(other, main) == pytest.approx(expected, abs=1.0)
        assert _challenge_hd95(other, main, (1.0, 1.0, 1.0)) == pytest.approx(expected, abs=1.0)


def test_spacing_and_mask_validation():
    a = box((6, 6, 6), (1, 3), (1, 3), (1, 3))
    with pytest.raises(ValueError, match="spacing"):
        bm.hd95(a, a, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        bm.hd95(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="binary mask"):
        bm.dice(a.astype(np.uint8) * 3, a)
    with pytest.raises(ValueError, match="shapes differ"):
        bm.dice(a, a[:-1])


# --- lesion-wise ------------------------------------------------------------------------


SHAPE = (40, 16, 16)
CUBE_A = ((2, 6), (4, 8), (4, 8))      # 64 voxels
CUBE_B = ((30, 34), (4, 8), (4, 8))    # 64 voxels, 24 voxels from A: far beyond the dilation


def test_one_lesion_found_one_missed():
    a, b = box(SHAPE, *CUBE_A), box(SHAPE, *CUBE_B)
    ref, pred = a | b, a
    lw = bm.lesion_wise_scores(pred, ref)
    assert (lw.n_lesions, lw.n_detected, lw.n_missed, lw.n_false_positive) == (2, 1, 1, 0)
    assert lw.dice == pytest.approx((1.0 + 0.0) / 2)
    assert lw.hd95 == pytest.approx((0.0 + PEN) / 2)
    assert bm.dice(pred, ref) == pytest.approx(2 * 64 / (64 + 128))      # 2/3
    # and through score_case, as label maps (enhancing tumour: the cube is in all three regions)
    s = bm.score_case(pred.astype(np.uint8) * 3, ref.astype(np.uint8) * 3, (1, 1, 1))
    for r in bm.REGIONS:
        assert s[f"{r}_lesion_dice"] == pytest.approx(0.5) and s[f"{r}_lesion_hd95"] == pytest.approx(PEN / 2)
        assert s[f"{r}_dice"] == pytest.approx(2 / 3)
        assert (s[f"{r}_n_lesions"], s[f"{r}_n_missed"], s[f"{r}_n_false_positive"]) == (2, 1, 0)


def test_perfect_prediction_plus_far_false_positive():
    a = box(SHAPE, *CUBE_A)
    fp = box(SHAPE, (30, 33), (4, 7), (4, 7))                  # 27 voxels, far away
    lw = bm.lesion_wise_scores(a | fp, a)
    assert (lw.n_lesions, lw.n_detected, lw.n_false_positive) == (1, 1, 1)
    assert lw.dice == pytest.approx(0.5)                       # (1 + 0) / (1 GT + 1 FP)
    assert lw.hd95 == pytest.approx(PEN / 2)
    assert bm.dice(a | fp, a) == pytest.approx(2 * 64 / (64 + 64 + 27))   # 128/155


def test_small_lesion_ignored_with_the_prediction_on_it():
    a = box(SHAPE, *CUBE_A)
    small = box(SHAPE, (30, 33), (4, 7), (4, 7))               # 27 voxels = 27 mm³ <= 50
    for pred in (a, a | small, a | box(SHAPE, (31, 34), (5, 8), (5, 8))):
        lw = bm.lesion_wise_scores(pred, a | small)
        assert (lw.dice, lw.hd95) == (1.0, 0.0)
        assert (lw.n_lesions, lw.n_small_ignored, lw.n_false_positive, lw.n_missed) == (1, 1, 0, 0)
    # only small lesions, nothing predicted: nothing is scored (the scripts give 1 / 0)
    lw = bm.lesion_wise_scores(np.zeros(SHAPE, bool), small)
    assert (lw.dice, lw.hd95, lw.n_lesions) == (1.0, 0.0, 0)
    # the threshold is a volume in mm³ and "at most 50" is dropped: 50 voxels out, 51 in;
    # 27 voxels of 2 mm³ (54 mm³) in
    fifty = box(SHAPE, (30, 35), (4, 9), (4, 6))
    assert bm.lesion_wise_scores(a, a | fifty).n_small_ignored == 1
    fifty_one = fifty.copy()
    fifty_one[35, 4, 4] = True
    lw = bm.lesion_wise_scores(a, a | fifty_one)
    assert (lw.n_small_ignored, lw.n_missed, lw.dice) == (0, 1, pytest.approx(0.5))
    lw = bm.lesion_wise_scores(a, a | small, spacing=(2.0, 1.0, 1.0))
    assert (lw.n_small_ignored, lw.n_missed, lw.dice) == (0, 1, pytest.approx(0.5))


def test_dilation_decides_matching():
    # A spans x = 2..5; 3 dilation steps reach x = 8. A predicted blob starting at x = 8
    # (a 2-voxel gap, not touching A) is matched; one starting at x = 9 is a false positive.
    a = box(SHAPE, *CUBE_A)
    near = box(SHAPE, (8, 10), (4, 6), (4, 6))                 # 8 voxels
    lw = bm.lesion_wise_scores(a | near, a)
    assert (lw.n_false_positive, lw.n_detected) == (0, 1)
    assert lw.lesions[0].matched_components and len(lw.lesions[0].matched_components) == 2
    assert lw.dice == pytest.approx(2 * 64 / (64 + 64 + 8))
    assert lw.hd95 == pytest.approx(brute_hd95(a | near, a, (1, 1, 1)))
    far = box(SHAPE, (9, 11), (4, 6), (4, 6))
    lw = bm.lesion_wise_scores(a | far, a)
    assert (lw.n_false_positive, lw.dice, lw.hd95) == (1, pytest.approx(0.5), pytest.approx(PEN / 2))
    # the dilation is 18-connected: 3 steps reach the diagonal offset (2, 2, 2) from A's
    # corner but not (3, 3, 3), which a 26-connected dilation would reach
    corner = (5, 7, 7)
    for offset, n_fp in ((2, 0), (3, 1)):
        pred = a.copy()
        pred[tuple(c + offset for c in corner)] = True
        assert bm.lesion_wise_scores(pred, a).n_false_positive == n_fp
    # a larger dilation (e.g. 4 steps) brings the far blob in
    assert bm.lesion_wise_scores(a | far, a, dilation_iterations=4).n_false_positive == 0


def test_reference_blobs_within_the_dilation_are_one_lesion():
    a = box(SHAPE, *CUBE_A)
    a2 = box(SHAPE, (9, 13), (4, 8), (4, 8))                   # 3-voxel gap: dilations touch
    lw = bm.lesion_wise_scores(a, a | a2)
    assert (lw.n_lesions, lw.n_missed) == (1, 0)
    assert lw.dice == pytest.approx(2 * 64 / (64 + 128))       # 2/3, not (1 + 0) / 2


def test_one_prediction_over_two_lesions_counts_for_both():
    a, b = box(SHAPE, *CUBE_A), box(SHAPE, *CUBE_B)
    big = box(SHAPE, (2, 34), (4, 8), (4, 8))                  # 512 voxels covering both
    lw = bm.lesion_wise_scores(big, a | b)
    assert (lw.n_lesions, lw.n_detected, lw.n_false_positive) == (2, 2, 0)
    assert lw.dice == pytest.approx(2 * 64 / (64 + 512))


def test_score_case_regions_and_keys():
    # core: necrosis 1 inside enhancing 3, wrapped in oedema 2; the prediction calls the
    # necrosis oedema, so WT and ET are perfect and TC loses the necrosis.
    shape = (24, 24, 24)
    ref = np.zeros(shape, np.uint8)
    ref[4:20, 4:20, 4:20] = 2          # 4096 voxels
    ref[7:17, 7:17, 7:17] = 3          # 1000
    ref[10:14, 10:14, 10:14] = 1       # 64
    pred = ref.copy()
    pred[pred == 1] = 2
    s = bm.score_case(pred, ref, spacing=(1.0, 1.0, 1.0))
    expected_keys = {f"{r}_{k}" for r in ("WT", "TC", "ET") for k in (
        "dice", "hd95", "lesion_dice", "lesion_hd95", "n_lesions", "n_detected", "n_missed",
        "n_false_positive", "n_small_ignored")}
    assert set(s) == expected_keys
    assert s["WT_dice"] == 1.0 and s["ET_dice"] == 1.0 and s["WT_hd95"] == 0.0
    assert s["TC_dice"] == pytest.approx(2 * 936 / (936 + 1000))
    assert s["TC_lesion_dice"] == pytest.approx(s["TC_dice"])   # one lesion, one component
    assert s["TC_hd95"] == pytest.approx(brute_hd95(pred == 3, np.isin(ref, (1, 3)), (1, 1, 1)))
    assert s["ET_lesion_dice"] == 1.0 and s["ET_n_lesions"] == 1
    with pytest.raises(ValueError, match="3-D"):
        bm.lesion_wise_scores(np.ones((4, 4), bool), np.ones((4, 4), bool))


def test_region_dice_rows_average_the_per_case_dice_of_each_region():
    ref = np.zeros((2, 6, 6, 6), np.uint8)
    ref[:, 1:5, 1:5, 1:5] = 2
    ref[:, 2:4, 2:4, 2:4] = 3                 # 8 enhancing voxels inside 64 of whole tumour
    pred = ref.copy()
    pred[1][pred[1] == 3] = 1                 # case 1: enhancing read as necrosis -> ET missed, TC kept
    rows = {r["region"]: r for r in bm.region_dice_rows(pred, ref)}
    assert rows["WT"]["mean"] == 1.0 and rows["TC"]["mean"] == 1.0
    assert rows["ET"]["mean"] == 0.5 and rows["ET"]["std"] == 0.5 and rows["ET"]["n"] == 2
    assert rows["ET"]["n_empty_reference"] == 0
    with pytest.raises(ValueError, match="differ in shape"):
        bm.region_dice_rows(pred[:1], ref)
