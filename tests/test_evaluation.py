import math

import numpy as np
import pytest
from conftest import ball

from sbldm.evaluation import generation as ev
from sbldm.evaluation.frechet import frechet_distance
from sbldm.metrics import finite_summary, psnr_volumes, to_unit


@pytest.fixture(scope="module")
def vols():
    rng = np.random.default_rng(0)
    base = np.stack([ball((24, 24, 16), centre=rng.uniform(8, 14, 3), radius=5) for _ in range(4)]).astype(float)
    return base * 1.6 - 0.8 + rng.normal(0, 0.1, base.shape)     # in about [-1, 1]


def test_uniform_ssim_matches_scikit_image_both_ways(vols):
    from skimage.metrics import structural_similarity

    a, b = to_unit(vols[0]), to_unit(vols[1])
    ref = structural_similarity(a, b, win_size=11, gaussian_weights=False, use_sample_covariance=False, data_range=1.0)
    assert ev.ssim_uniform(a, b) == pytest.approx(ref, abs=1e-10)
    assert ev.ssim_uniform(b, a) == pytest.approx(ref, abs=1e-10)
    assert ev.ssim_uniform(a, a) == pytest.approx(1.0)
    # batched over a leading axis
    batched = ev.ssim_uniform(np.stack([a, a]), np.stack([b, a]))
    assert batched.shape == (2,) and batched[0] == pytest.approx(ref) and batched[1] == pytest.approx(1.0)


def test_psnr_of_known_noise_level():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.2, 0.8, (2, 20, 20, 20))
    noise = rng.normal(0, 0.05, a.shape)
    p = psnr_volumes(a + noise, a)
    expected = 10 * np.log10(1 / (noise ** 2).reshape(2, -1).mean(1))
    assert np.allclose(p, expected) and np.all(np.abs(p - 26.02) < 0.2)   # -10 log10(0.05^2)
    assert math.isinf(psnr_volumes(a, a)[0])


def test_unpaired_psnr_ssim_pairs_each_sample_with_a_permuted_real_volume(vols):
    r = ev.unpaired_psnr_ssim(vols, vols, seed=3)
    assert sorted(r["pairs"]) == [0, 1, 2, 3]
    expected = np.mean([ev.ssim_uniform(to_unit(vols[k]), to_unit(vols[j])) for k, j in enumerate(r["pairs"])])
    assert r["ssim"]["mean"] == pytest.approx(expected)
    more = ev.unpaired_psnr_ssim(np.concatenate([vols, vols]), vols, seed=3)
    assert more["ssim"]["n"] == 8 and sorted(more["pairs"][4:]) == [0, 1, 2, 3]


def test_ms_ssim_identical_is_one_and_noise_lowers_it(vols):
    same = ev.pairwise_ms_ssim(np.stack([vols[0]] * 3))
    assert same["mean"] == pytest.approx(1.0, abs=1e-5) and same["kernel_size"] in (3, 5)
    diverse = ev.pairwise_ms_ssim(vols)
    assert diverse["mean"] < 0.99 and diverse["n"] == 6
    k, w = ev.ms_ssim_setup((192, 192, 96))
    assert (k, len(w)) == (5, 5)                    # paper size: all five scales with kernel 5
    assert len(ev.ms_ssim_setup((64, 64, 32))[1]) < 5


def test_frechet_distance_zero_for_same_and_shift_squared():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(400, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + np.array([2.0, 0, 0])) == pytest.approx(4.0, rel=1e-6)
    b = rng.normal(size=(400, 3)) * 2
    assert frechet_distance(a, b) > 1.0


def test_feature_distance_and_adherence_on_balls():
    shape = (32, 32, 32)
    real = [ball(shape, radius=r) for r in (4, 5, 6, 7)]
    real_f = ev.mask_features(real)
    d_same = ev.feature_distribution_distance(real_f, real_f)
    assert d_same["mean"] == pytest.approx(0.0) and d_same["empty_fraction"] == 0.0
    shifted = [ball(shape, centre=(19.5, 15.5, 15.5), radius=r) for r in (4, 5, 6, 7)] + [np.zeros(shape)]
    d = ev.feature_distribution_distance(real_f, ev.mask_features(shifted))
    assert d["x"] > 1.0 and d["voxel_volume"] == pytest.approx(0.0) and d["empty_fraction"] == 0.2
    # adherence: the masks obtained are exactly the requested ones
    a = ev.conditioning_adherence(real_f, real)
    assert a["relative_volume_error"] == 0 and a["centre_distance"] == 0 and a["spearman_volume"] == pytest.approx(1.0)
    b = ev.conditioning_adherence(real_f, real[::-1])
    assert b["spearman_volume"] == pytest.approx(-1.0) and b["relative_volume_error"] > 0.3


def test_nearest_ssim_detects_a_copy(vols):
    copies = ev.nearest_ssim(vols[:2], vols)
    assert np.allclose(copies, 1.0)
    held_out = ev.nearest_ssim(vols[:2], vols, exclude_self=True)
    assert np.all(held_out < 0.99)
    # the shared-statistics path gives the pairwise SSIM of ssim_uniform (checked against
    # scikit-image above), maximised over the other volumes
    unit = np.clip((vols + 1) / 2, 0, 1)
    pairwise = [max(ev.ssim_uniform(unit[i], unit[j]) for j in range(len(vols)) if j != i) for i in range(2)]
    np.testing.assert_allclose(held_out, pairwise, rtol=1e-12)


def test_time_per_volume_reports_median_and_device():
    calls = []
    t = ev.time_per_volume(lambda: calls.append(1), n_volumes_per_call=2, repeats=3, warmup=2)
    assert len(calls) == 5 and t["median_s"] >= 0
    from sbldm.provenance import device_name

    assert t["device"] == device_name()          # the device line every record uses


def test_medicalnet_features_load_from_a_local_file_and_refuse_others(tmp_path):
    import torch
    from monai.networks.nets import resnet10

    from sbldm.evaluation import frechet as features

    net = resnet10(spatial_dims=3, n_input_channels=1, feed_forward=False, shortcut_type="B", bias_downsample=False)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "r10.pth")
    fx = features.MedicalNetFeatures(tmp_path / "r10.pth", depth=10)
    vols = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 16))
    f = fx(vols)
    assert f.shape == (2, 512) and np.all(np.isfinite(f))
    net.eval()
    with torch.no_grad():
        x = torch.as_tensor(vols[0], dtype=torch.float32)[None, None]
        ref = net((x - x.mean()) / (x.std() + 1e-6)).numpy()[0]
    assert np.allclose(f[0], ref, atol=1e-5)          # the very weights of the file
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="match"):
        features.MedicalNetFeatures(tmp_path / "other.pth", depth=10)
    with pytest.raises(FileNotFoundError, match="downloads nothing"):
        features.MedicalNetFeatures(tmp_path / "missing.pth")


# -- defects found by independent cross-checks --------------------------------------------

def test_ms_ssim_scales_pass_monais_own_size_check():
    """MONAI's compute_ms_ssim divides by (scales-1)^2: a 40-44 voxel side with kernel 5
    must get 3 scales, not 4 (which MONAI rejects)."""
    import torch
    from monai.metrics.regression import compute_ms_ssim

    for side in (40, 41, 44, 45, 64, 96):
        k, w = ev.ms_ssim_setup((96, 96, side), kernel_size=5)
        x = torch.rand(1, 1, 96, 96, side)
        compute_ms_ssim(x, x, spatial_dims=3, kernel_size=k, weights=w)      # MONAI accepts it
    assert len(ev.ms_ssim_setup((96, 96, 40))[1]) == 3
    assert len(ev.ms_ssim_setup((96, 96, 64))[1]) == 4     # 64 // 9 = 7 > 4 and 64 // 8 = 8 >= 5


def test_non_finite_values_are_counted_not_dropped():
    from sbldm.evaluation.table1 import table1_rows

    r = finite_summary([10.0, float("inf"), 20.0])
    assert r["mean"] == 15.0 and r["n"] == 2 and r["n_nonfinite"] == 1
    rows = table1_rows({"SBLDM (DDIM)": {"psnr": r, "ssim": finite_summary([0.5, 0.6, 0.7]), "params": 1,
                                         "time": {"median_s": 1.0, "device": "CPU"}}})
    assert rows[0]["n_samples"] == 3 and rows[0]["psnr_nonfinite"] == 1


def test_volume_dice_sees_false_positive_slices_that_slice_dice_ignores():
    from sbldm.metrics import reconstruction_metrics

    rng = np.random.default_rng(0)
    img = rng.uniform(-1, 1, (1, 8, 8, 6)).astype(np.float32)
    mask = np.zeros((1, 8, 8, 6), np.uint8)
    mask[0, 2:5, 2:5, 1:3] = 1                  # 18 voxels on slices 1-2
    rec = mask.copy()
    rec[0, 2:5, 2:5, 4:6] = 1                   # 18 false-positive voxels on tumour-free slices
    m = reconstruction_metrics(img, mask, img, rec)
    assert m["dice"]["mean"] == 1.0             # slice Dice only looks at slices 1-2
    assert m["dice_3d"]["mean"] == pytest.approx(2 * 18 / (18 + 36))


def test_reconstruction_rows_name_the_metrics_and_add_one_dice_row_per_region():
    from sbldm.evaluation.reconstruction import reconstruction_rows

    rng = np.random.default_rng(0)
    img = rng.uniform(-1, 1, (2, 8, 8, 6)).astype(np.float32)
    labels = np.zeros((2, 8, 8, 6), np.uint8)
    labels[:, 2:6, 2:6, 1:4] = 2                # oedema around
    labels[:, 3:5, 3:5, 2] = 3                  # an enhancing core of 4 voxels
    rec = labels.copy()
    rec[1][rec[1] == 3] = 2                     # the second volume loses its enhancing core
    rows = reconstruction_rows(img, labels > 0, img, rec > 0, labels, rec, only=("dice_3d",))
    by = {r["metric"]: r for r in rows}
    assert list(by) == ["mask Dice, per volume (false-positive slices count)", "WT Dice, per volume",
                        "TC Dice, per volume", "ET Dice, per volume"]
    assert by["WT Dice, per volume"]["mean"] == 1.0 and by["ET Dice, per volume"]["mean"] == 0.5
    assert by["ET Dice, per volume"]["n"] == 2
    assert len(reconstruction_rows(img, labels > 0, img, rec > 0)) == 6     # no label maps: no region rows
    with pytest.raises(ValueError, match="unknown metric"):
        reconstruction_rows(img, labels > 0, img, rec > 0, only=("fid",))


def test_image_mask_agreement_leaves_out_volumes_whose_mask_is_empty():
    from types import SimpleNamespace

    from sbldm.config import resolve
    from sbldm.evaluation.table1 import extra_metrics

    rng = np.random.default_rng(1)
    shape = (4, 32, 32, 16)
    masks = np.zeros(shape, np.uint8)
    masks[:2, 10:16, 10:16, 5:9] = 1           # two volumes with a tumour, two without
    images = rng.uniform(-1, 1, shape).astype(np.float32)
    real = SimpleNamespace(images=images, masks=masks, features=rng.uniform(1, 2, (4, 9)))

    class Segmenter:                            # predicts nothing at all
        def predict(self, x):
            return np.zeros(np.shape(x), np.uint8)

        def features(self, x):
            return np.asarray(x).reshape(len(x), -1)[:, :8]

    cfg = resolve("smoke", eval_n_diversity=4)
    rows = extra_metrics({"all empty": {"images": images, "masks": np.zeros(shape, np.uint8)}}, real, real,
                         Segmenter(), cfg)
    empty = rows[1]
    # before: an empty prediction on an empty mask scored Dice 1, so this generator got 1.0
    assert np.isnan(empty["seg_dice_on_own_mask"]) and empty["n_empty_own_mask"] == 4
    assert rows[0]["seg_dice_on_own_mask"] == 0.0 and rows[0]["n_empty_own_mask"] == 2


def _brain_with_tumours(tumours, shape=(40, 40, 40)):
    """Background -1, a brain ball of intensity 0, then (centre, radius, intensity) balls."""
    grid = np.indices(shape).astype(float)
    def ball(c, r):
        return ((grid - np.array(c, float)[:, None, None, None]) ** 2).sum(0) <= r ** 2
    im = np.full(shape, -1.0, np.float32)
    im[ball((20, 20, 20), 17)] = 0.0
    mask = np.zeros(shape, np.uint8)
    for c, r, v, in_mask in tumours:
        im[ball(c, r)] = v
        if in_mask:
            mask[ball(c, r)] = 1
    return im, mask


def test_tumour_appearance_sees_a_dark_core_pieces_and_contrast():
    from sbldm.evaluation.appearance import tumour_appearance

    # a bright tumour (radius 6) with a dark core (radius 3): 1/8 of its volume is dark
    cored = _brain_with_tumours([((20, 20, 20), 6, 0.8, True), ((20, 20, 20), 3, -0.5, True)])
    r = tumour_appearance(*[a[None] for a in cored])
    def voxels(r):                                         # voxel count of a digital ball of radius r
        return int((((np.indices((2 * r + 1,) * 3) - r) ** 2).sum(0) <= r * r).sum())

    exact = voxels(3) / voxels(6)
    assert r["dark_fraction_median"] == pytest.approx(exact, abs=1e-6) and r["dark_core_share"] == 1.0
    assert r["components_mean"] == 1 and r["multi_component_fraction"] == 0
    # a homogeneous bright tumour: no dark part, contrast to the brain around it, no spread
    plain = _brain_with_tumours([((20, 20, 20), 6, 0.8, True)])
    r = tumour_appearance(*[a[None] for a in plain])
    assert r["dark_fraction_median"] == 0 and r["dark_core_share"] == 0
    assert r["contrast_median"] == pytest.approx(0.8, abs=1e-6) and r["intensity_std_median"] == pytest.approx(0, abs=1e-6)
    # two pieces, and an empty mask counted apart
    two = _brain_with_tumours([((12, 20, 20), 3, 0.8, True), ((28, 20, 20), 3, 0.8, True)])
    empty = (plain[0], np.zeros_like(plain[1]))
    r = tumour_appearance(np.stack([two[0], empty[0]]), np.stack([two[1], empty[1]]))
    assert r["n"] == 2 and r["n_empty"] == 1 and r["components_mean"] == 2 and r["multi_component_fraction"] == 1
    with pytest.raises(ValueError, match="same shape"):
        tumour_appearance(np.zeros((1, 4, 4, 4)), np.zeros((1, 4, 4, 5)))


def test_the_denoising_probe_summary_names_where_the_core_is_lost():
    from sbldm.report.summaries import denoising_probe

    rows = [{"strength": s, "dark_core_share": v} for s, v in ((0.0, 0.7), (0.1, 0.6), (0.3, 0.6), (0.5, 0.1), (1.0, 0.0))]
    text = denoising_probe(rows)
    assert "survives up to strength 0.3 and falls below half its share from 0.5" in text and "0.5: 10%" in text
    assert "from strength 1 draws one in 0% of the volumes (through the VAE alone: 70%)" in text
    # 1 of 12 drawn from noise is said as such, not as "never"
    some = denoising_probe([{"strength": s, "dark_core_share": v} for s, v in ((0.0, 0.5), (0.3, 0.5), (1.0, 1 / 12))])
    assert "draws one in 8% of the volumes" in some
    # a model that keeps the core all the way draws no such conclusion
    kept = denoising_probe([{"strength": s, "dark_core_share": 0.7} for s in (0.0, 0.5, 1.0)])
    assert "falls below" not in kept and "1: 70%" in kept


def test_subregion_appearance_reads_each_region_in_units_of_the_normal_brain():
    """A brain of two tissue values (IQR known) with a tumour of three sub-regions at set
    intensities: each region's median z is (value - median) / IQR of the brain around it."""
    from sbldm.evaluation.appearance import subregion_appearance, subregion_summary

    img = -np.ones((1, 24, 24, 24), np.float32)
    img[0, 2:22, 2:22, 2:22] = 0.0
    img[0, 2:22, 2:22, 2:12] = -0.2          # normal brain: half at -0.2, half at 0.0 -> median -0.1, IQR 0.2
    lab = np.zeros(img.shape, np.uint8)
    lab[0, 8:16, 8:16, 8:16] = 2
    lab[0, 10:14, 10:14, 10:14] = 3
    lab[0, 11:13, 11:13, 11:13] = 1
    img[lab == 2], img[lab == 3], img[lab == 1] = 0.3, 0.5, -0.5
    (row,) = subregion_appearance(img, lab)
    assert row["has_core"] and row["share_necrosis"] == pytest.approx(8 / 512)
    assert row["median_z_oedema"] == pytest.approx((0.3 + 0.1) / 0.2, rel=1e-5)
    assert row["median_z_enhancing"] == pytest.approx((0.5 + 0.1) / 0.2, rel=1e-5)
    assert row["median_z_necrosis"] == pytest.approx((-0.5 + 0.1) / 0.2, rel=1e-5)
    # a tumour without necrosis has NaN there; the summary counts where each region is present
    no_nec = np.where(lab == 1, 3, lab).astype(np.uint8)
    rows = subregion_appearance(np.concatenate([img, img]), np.concatenate([lab, no_nec]))
    assert np.isnan(rows[1]["median_z_necrosis"])
    s = subregion_summary(rows, rows)
    assert s["present_necrosis"] == 0.5 and s["core_share"] == 1.0 and s["n"] == 2
    # Wasserstein over the real spread: real oedema at z 2 and 3 (std 0.5), synthetic at 2 and 2 -> 0.5 / 0.5
    brighter = img.copy()
    brighter[lab == 2] = 0.5
    real = subregion_appearance(np.concatenate([img, brighter]), np.concatenate([lab, lab]))
    assert [r["median_z_oedema"] for r in real] == pytest.approx([2.0, 3.0], rel=1e-5)
    synth = subregion_summary(subregion_appearance(np.concatenate([img, img]), np.concatenate([lab, lab])), real)
    assert synth["w_over_spread_oedema"] == pytest.approx(1.0, rel=1e-5)
    assert subregion_summary(real, real)["w_over_spread_oedema"] == 0.0
    # a decoded volume's background sits a hair above -1: it is not brain, and the z values stay
    decoded = np.where(img == -1.0, -0.995, img).astype(np.float32)
    (again,) = subregion_appearance(decoded, lab)
    assert again["median_z_oedema"] == pytest.approx(row["median_z_oedema"], rel=1e-5)
    assert again["median_z_necrosis"] == pytest.approx(row["median_z_necrosis"], rel=1e-5)


def test_shape_adherence_tells_a_round_tumour_from_a_flat_one():
    """Spearman of sphericity and surface area, and the box error, against masks whose shape
    is known: the same masks score 1 and 0; swapping round and flat tumours scores -1."""
    shape = (32, 32, 32)
    round_ = [ball(shape, radius=r) for r in (4, 5, 6)]
    flat = []
    for w in (6, 9, 12):
        m = np.zeros(shape, np.uint8)
        m[16 - w // 2: 16 + w // 2, 16 - w // 2: 16 + w // 2, 15:17] = 1
        flat.append(m)
    masks = round_ + flat
    req = ev.mask_features(masks)
    a = ev.conditioning_adherence(req, masks)
    assert a["spearman_sphericity"] == pytest.approx(1.0) and a["spearman_surface_area"] == pytest.approx(1.0)
    assert a["box_error"] == 0 and a["sphericity_error"] == 0
    swapped = flat + round_                       # a flat tumour drawn where a round one was asked, and back
    b = ev.conditioning_adherence(req, swapped)
    assert b["spearman_sphericity"] < -0.5 and b["sphericity_error"] > 0.2 and b["box_error"] > 0.2
    with_empty = ev.conditioning_adherence(req, masks[:5] + [np.zeros(shape, np.uint8)])
    assert with_empty["empty_fraction"] == pytest.approx(1 / 6)
    assert with_empty["spearman_sphericity"] == pytest.approx(1.0)       # over the non-empty masks


def test_precision_agreement_pairs_the_two_draws_of_each_request():
    """Identical sets agree perfectly; a mask shifted by one voxel has the Dice counted by
    hand (a 4^3 cube against itself moved one voxel: overlap 48 of 64 + 64 -> 0.75), and the
    image difference is the shift's mean; sets answering different requests are refused."""
    from sbldm.evaluation.generation import precision_agreement

    rng = np.random.default_rng(0)
    masks = np.zeros((3, 16, 16, 12), np.uint8)
    masks[:, 4:8, 4:8, 2:6] = 1
    images = rng.uniform(-1, 1, (3, 16, 16, 12)).astype(np.float32)
    conditions = np.array([[64.0, 96.0, 0.8, 5.5, 5.5, 3.5, 4, 4, 4]] * 3)
    fp32 = {"images": images, "masks": masks, "conditions": conditions}
    real = rng.uniform(-1, 1, (4, 16, 16, 12)).astype(np.float32)
    same = precision_agreement(fp32, dict(fp32), real)
    assert [r["set"] for r in same][:2] == ["fp32", "bf16"]
    assert {k: v for k, v in same[0].items() if k != "set"} == {k: v for k, v in same[1].items() if k != "set"}
    assert list(same[0]) == list(same[2]) and same[0]["pair_image_mae"] is None      # one table, every column
    assert same[2]["pair_mask_dice_median"] == 1.0 and same[2]["pair_image_mae"] == 0.0
    shifted = np.roll(masks, 1, axis=1)
    moved = precision_agreement(fp32, {"images": images + 0.25, "masks": shifted, "conditions": conditions}, real)
    assert moved[2]["pair_mask_dice_median"] == pytest.approx(0.75) and moved[2]["pair_mask_dice_min"] == pytest.approx(0.75)
    assert moved[2]["pair_image_mae"] == pytest.approx(0.25, abs=1e-6)
    assert moved[1]["centre_distance"] == pytest.approx(1.0) and moved[0]["centre_distance"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="different requests"):
        precision_agreement(fp32, {**fp32, "conditions": conditions + 1}, real)


def test_ddim_and_ddpm_sets_must_answer_the_same_requests_volume_by_volume():
    from sbldm.evaluation.table1 import same_requests

    req = np.random.default_rng(0).uniform(size=(10, 9))
    ddim, ddpm = {"conditions": req}, {"conditions": req[:4].copy()}     # the DDPM set is shorter
    same_requests({"SBLDM (DDIM)": ddim, "SBLDM (DDPM)": ddpm})
    same_requests({"SBLDM (DDIM)": ddim, "SBLDM (DDPM)": {"conditions": None}})   # nothing stored: nothing to check
    same_requests({"SBLDM (DDIM)": ddim})
    shifted = {"conditions": req[1:5]}                                   # drawn in other batches
    with pytest.raises(ValueError, match="answer different requests volume by volume"):
        same_requests({"SBLDM (DDIM)": ddim, "SBLDM (DDPM)": shifted})
