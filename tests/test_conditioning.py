"""The tumour channel: spatial prior, tumour-weighted loss, z-scored conditions, EMA,
bf16 training, and the checks every requested condition passes."""

import json
import warnings

import numpy as np
import pytest
import torch

from conftest import ball
from model_helpers import randomise_output, tiny_cfg
from sbldm.data.tumour import FEATURE_NAMES, FeatureNormalizer, tumour_features
from sbldm.diffusion import unet_inputs as cond


def _raw(x=20.0, y=12.0, z=5.0, w=8.0, h=8.0, d=8.0, v=None, sph=0.8):
    v = np.pi / 6 * w * h * d if v is None else v
    return np.array([[v, 4 * np.pi * (w / 2) ** 2, sph, x, y, z, w, h, d]])


def test_the_prior_is_an_ellipsoid_of_the_requested_size_at_the_requested_place():
    # a sphere of diameter 16 voxels at (20, 12, 5) on a 32 x 32 x 16 grid, latent x4 in-plane
    p = cond.render_prior(_raw(w=16, h=16, d=8), (32, 32, 16), 4)
    assert p.shape == (1, 1, 8, 8, 16) and 0 <= p.min() and p.max() <= 1
    peak = np.unravel_index(np.argmax(p[0, 0]), p.shape[2:])
    # volume coordinate u sits at (u - 1.5) / 4 on the latent grid: 20 -> 4.6, 12 -> 2.6
    assert abs(peak[0] - 4.625) <= 0.5 and abs(peak[1] - 2.625) <= 0.5 and peak[2] == 5
    # the 0.5 level set is the ellipsoid with semi-axes (16/8, 16/8, 8/2) latent voxels
    expected = 4 / 3 * np.pi * 2 * 2 * 4
    assert abs((p > 0.5).sum() - expected) / expected < 0.35
    # a compact tumour in the same box renders smaller; a tumour elsewhere renders elsewhere
    small = cond.render_prior(_raw(w=16, h=16, d=8, v=0.2 * np.pi / 6 * 16 * 16 * 8), (32, 32, 16), 4)
    assert (small > 0.5).sum() < (p > 0.5).sum()
    moved = cond.render_prior(_raw(x=8, w=16, h=16, d=8), (32, 32, 16), 4)
    assert np.argmax(moved[0, 0].sum(axis=(1, 2))) < np.argmax(p[0, 0].sum(axis=(1, 2)))


def test_the_prior_of_a_real_tumour_covers_its_downsampled_mask():
    mask = ball((32, 32, 16), centre=(20, 12, 7), radius=5)
    f = tumour_features(mask)
    prior = cond.render_prior(np.array([[f[k] for k in FEATURE_NAMES]]), (32, 32, 16), 4)[0, 0]
    tumour = cond.tumour_weight_maps(mask[None], 4, dilate=0)[0, 0] > 0
    assert prior[tumour].mean() > 0.5 and prior[~tumour].mean() < 0.1


def test_tumour_weight_maps_mark_the_patch_and_its_dilated_rim():
    masks = np.zeros((1, 16, 16, 8), np.uint8)
    masks[0, 9, 5, 3] = 1                       # latent voxel (2, 1, 3) with f = 4
    m = cond.tumour_weight_maps(masks, 4, dilate=1)[0, 0]
    assert m.shape == (4, 4, 8)
    expected = np.zeros_like(m)
    expected[1:4, 0:3, 2:5] = 1
    np.testing.assert_array_equal(m, expected)


def test_a_unet_with_a_prior_ignores_it_where_the_condition_is_dropped():
    from sbldm.models.unet3d import latent_unet

    unet = latent_unet(tiny_cfg(unet_spatial_prior=True)).eval()
    randomise_output(unet)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 8, 8, 8, generator=g)
    c = torch.rand(2, 9, generator=g)
    prior = torch.rand(2, 1, 8, 8, 8, generator=g)
    with torch.no_grad():
        with_prior = unet(x, 10, c, prior=prior)
        no_prior = unet(x, 10, c, prior=torch.zeros_like(prior))
        dropped = unet(x, 10, c, drop_cond=torch.tensor([True, True]), prior=prior)
        unconditional = unet(x, 10, None)
    assert (with_prior - no_prior).abs().max() > 1e-4              # the prior reaches the output
    torch.testing.assert_close(dropped, unconditional)               # ... and is dropped with c
    plain = latent_unet(tiny_cfg())
    with pytest.raises(ValueError, match="no spatial prior"):
        plain(x, 10, c, prior=prior)


def test_zscored_conditions_have_unit_spread_and_round_trip():
    rng = np.random.default_rng(0)
    feats = rng.uniform(1, 50, (20, 9))
    n = FeatureNormalizer.fit(feats, (32, 32, 16), kind="zscore")
    z = n.transform(feats)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-9)
    np.testing.assert_allclose(n.inverse_transform(z), feats)
    again = FeatureNormalizer.from_dict(json.loads(json.dumps(n.to_dict())))
    np.testing.assert_allclose(again.transform(feats), z)
    m = FeatureNormalizer.fit(feats, (32, 32, 16))                    # the authors' max-scaling
    assert m.kind == "max" and np.isclose(m.transform(feats)[:, 0].max(), 1.0)
    with pytest.raises(ValueError, match="normalisation"):
        FeatureNormalizer.fit(feats, (32, 32, 16), kind="minmax")


def test_requested_conditions_are_checked_with_clear_errors():
    shape = (32, 32, 16)
    ok = _raw()
    cond.check_conditions(ok, shape)
    for k, value, match in [(0, float("nan"), "voxel_volume is NaN"), (6, -2.0, "w=-2 must be positive"),
                            (3, 40.0, "centre x=40 lies outside the volume"), (2, 1.5, "sphericity")]:
        bad = ok.copy()
        bad[0, k] = value
        with pytest.raises(ValueError, match=match):
            cond.check_conditions(bad, shape)
    train = np.repeat(ok, 3, axis=0) * np.array([[1, 1, 1, 1, 1, 1, 1, 1, 1]])
    big = ok.copy()
    big[0, 0] *= 10
    with pytest.warns(UserWarning, match="voxel_volume=.* outside the training range"):
        cond.check_conditions(big, shape, train)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cond.check_conditions(ok, shape, train)
    n = FeatureNormalizer.fit(np.vstack([ok, ok * 1.1]), shape)
    with pytest.raises(ValueError, match="look like raw features"):
        cond.check_normalised(ok, n)                                    # raw units where normalised expected
    cond.check_normalised(n.transform(ok), n)


def test_weighted_noise_loss_is_the_weighted_mean():
    from sbldm.training.objectives import noise_loss

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 4, 4, 4, generator=g), torch.randn(2, 3, 4, 4, 4, generator=g)
    w = 1 + 4 * (torch.rand(2, 1, 4, 4, 4, generator=g) > 0.8).float()
    err = (pred - target) ** 2
    expected = (err * w).sum() / (w.expand_as(err)).sum()
    torch.testing.assert_close(noise_loss(pred, target, "mse", weight=w), expected)
    torch.testing.assert_close(noise_loss(pred, target, "mse", weight=torch.ones_like(w)), err.mean())


def _train(tmp_path, name, **kw):
    from sbldm.training.trainer import train_diffusion

    rng = np.random.default_rng(0)
    lat = rng.normal(0, 1, (3, 2, 8, 8, 8)).astype(np.float32)
    c = rng.random((3, 9)).astype(np.float32)
    maps = rng.random((3, 1, 8, 8, 8)).astype(np.float32)
    cfg = tiny_cfg(**kw)
    return train_diffusion(cfg, lat, c, tmp_path / name, latent_std=1.0, progress=False,
                           priors=maps if cfg.unet_spatial_prior else None,
                           weights=(maps > 0.5).astype(np.float32) if cfg.diffusion_tumour_weight else None)


def test_ema_weights_are_what_the_model_carries_and_resume_exactly(tmp_path):
    from sbldm.models.unet3d import ConditionedUNet3D

    kw = dict(diffusion_ema_decay=0.9, unet_spatial_prior=True, diffusion_tumour_weight=4.0)
    full = _train(tmp_path, "full", diffusion_steps=4, **kw)
    _train(tmp_path, "split", diffusion_steps=2, checkpoint_every=2, **kw)
    split = _train(tmp_path, "split", diffusion_steps=4, **kw)
    for a, b in zip(full.state_dict().values(), split.state_dict().values()):
        torch.testing.assert_close(a, b)
    raw = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)["model"]
    saved = ConditionedUNet3D.from_pretrained(tmp_path / "full").state_dict()
    differs = [k for k in raw if not torch.equal(raw[k], saved[k])]
    assert differs                               # the saved model is the average, not the last step
    assert json.loads((tmp_path / "full" / "run.json").read_text())["ema"] is True
    with pytest.raises(ValueError, match="asks for priors"):
        from sbldm.training.trainer import train_diffusion

        train_diffusion(tiny_cfg(unet_spatial_prior=True), np.zeros((3, 2, 8, 8, 8), np.float32),
                        np.zeros((3, 9), np.float32), tmp_path / "x", latent_std=1.0, progress=False)


def test_bf16_autocast_trains_on_cpu_and_is_recorded(tmp_path):
    _train(tmp_path, "bf16", diffusion_steps=2, diffusion_mixed_precision="bf16")
    rec = json.loads((tmp_path / "bf16" / "run.json").read_text())
    assert rec["autocast"] == "bf16" and np.isfinite(rec["final_loss"])


@pytest.fixture(scope="module")
def prior_pipe(tmp_path_factory):
    from model_helpers import make_prepared
    from sbldm.data.cohort import load_prepared
    from sbldm.diffusion.pipeline import SBLDMPipeline
    from sbldm.models.unet3d import latent_unet
    from sbldm.models.vae import build_vae

    cfg = tiny_cfg(unet_spatial_prior=True, condition_normalization="zscore")
    train = load_prepared(make_prepared(tmp_path_factory.mktemp("cohort")), "train")
    torch.manual_seed(0)
    vae, unet = build_vae(cfg.vae, cfg.tumour_labels).eval(), latent_unet(cfg).eval()
    randomise_output(vae)
    randomise_output(unet, std=0.3)
    inputs = cond.diffusion_inputs(cfg, train)
    assert inputs["priors"].shape == (len(train.features), 1, 8, 8, 8) and inputs["weights"] is None
    return SBLDMPipeline.from_components(cfg, vae, unet, normalizer=inputs["normalizer"],
                                         train_features=train.features, latent_std=1.0)


def test_the_pipeline_renders_the_requested_tumour_for_its_unet(prior_pipe, monkeypatch, tmp_path):
    from sbldm.diffusion.pipeline import SBLDMPipeline

    seen = []
    forward = prior_pipe.unet.forward

    def spy(sample, t, c=None, drop_cond=None, prior=None):
        seen.append(None if prior is None else prior.clone())
        return forward(sample, t, c, drop_cond=drop_cond, prior=prior)

    monkeypatch.setattr(prior_pipe.unet, "forward", spy)
    raw = prior_pipe.train_features[:2]
    request = [dict(zip(FEATURE_NAMES, map(float, r))) for r in raw]
    prior_pipe(conditions=request, num_inference_steps=2, guidance_scale=2.0,
               generator=torch.Generator().manual_seed(0))
    expected = torch.from_numpy(cond.render_prior(raw, (16, 16, 8), 2))
    assert len(seen) == 2 and seen[0].shape == (4, 1, 8, 8, 8)       # doubled for guidance
    torch.testing.assert_close(seen[0][:2], expected)
    monkeypatch.undo()
    prior_pipe.save_pretrained(tmp_path / "p")
    again = SBLDMPipeline.from_pretrained(tmp_path / "p")
    assert again.unet.config.prior_channels == 1 and again.normalizer.kind == "zscore"


def test_the_pipeline_refuses_malformed_conditions(prior_pipe):
    good = dict(zip(FEATURE_NAMES, map(float, prior_pipe.train_features[0])))
    with pytest.raises(ValueError, match="missing key.*sphericity"):
        prior_pipe(conditions=[{k: v for k, v in good.items() if k != "sphericity"}], num_inference_steps=1)
    with pytest.raises(ValueError, match="unknown key.*volume_ml"):
        prior_pipe(conditions=[{**good, "volume_ml": 3.0}], num_inference_steps=1)
    with pytest.raises(ValueError, match="centre x=.* outside the volume"):
        prior_pipe(conditions=[{**good, "x": 99.0}], num_inference_steps=1)
    with pytest.raises(ValueError, match="look like raw features"):
        prior_pipe(conditions=prior_pipe.train_features[:1], num_inference_steps=1)


def test_the_conditioner_component_keeps_what_it_is_given_and_refuses_a_bad_affine(tmp_path):
    from sbldm.data.tumour import FeatureNormalizer
    from sbldm.diffusion.conditioner import TumourConditioner

    feats = np.abs(np.random.default_rng(0).normal(10, 2, (5, 9))) + 1
    norm = FeatureNormalizer.fit(feats, (32, 32, 16), kind="zscore")
    c = TumourConditioner.build((32, 32, 16), norm, feats, np.diag([2.0, 2.0, 3.0, 1.0]))
    moved = c.updated(affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    assert moved.volume_shape == (32, 32, 16) and moved.normalizer.to_dict() == norm.to_dict()
    np.testing.assert_array_equal(moved.train_features, feats)
    np.testing.assert_array_equal(moved.affine, np.eye(4))
    c.save_pretrained(tmp_path / "c")
    back = TumourConditioner.from_pretrained(tmp_path, subfolder="c")
    np.testing.assert_array_equal(back.normalizer.transform(feats), norm.transform(feats))
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["config.json"]      # no weights to store
    with pytest.raises(ValueError, match="invertible 4x4"):
        TumourConditioner.build((32, 32, 16), affine=np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"\(x, y, z\)"):
        TumourConditioner(volume_shape=[32, 32])


def test_a_tumour_requested_where_no_training_brain_has_brain_is_refused_by_name(tmp_path):
    from sbldm.diffusion.conditioner import TumourConditioner, pack_mask, unpack_mask

    shape = (32, 32, 16)
    # two "brains": balls of radius 8 around (12, 16, 8) and (20, 16, 8); background -1
    images = np.full((2, *shape), -1.0, np.float32)
    for k, cx in enumerate((12, 16)):
        images[k][ball(shape, (cx + 4 * k, 16, 8), 8.0) > 0] = 0.3
    support = cond.brain_support(images, 4)
    assert support.shape == (8, 8, 16)
    # independent answer: a latent cell is brain if any voxel of its 4x4x1 block is in either ball
    union = (images > -0.9).any(0)
    expect = union.reshape(8, 4, 8, 4, 16).any(axis=(1, 3))
    np.testing.assert_array_equal(support, expect)
    inside, corner = _raw(x=16, y=16, z=8), _raw(x=1, y=1, z=8)
    cond.check_conditions(inside, shape, brain=support)
    with pytest.raises(ValueError, match=r"condition 0: the centre \(1, 1, 8\) lies where none of the training brains"):
        cond.check_conditions(corner, shape, brain=support)
    cond.check_conditions(corner, shape)                     # without a brain map: only the volume's bounds
    # through the conditioner's JSON config and back
    assert np.array_equal(unpack_mask(json.loads(json.dumps(pack_mask(support)))), support)
    c = TumourConditioner.build(shape, brain_support=support)
    c.save_pretrained(tmp_path / "c")
    np.testing.assert_array_equal(TumourConditioner.from_pretrained(tmp_path, subfolder="c").brain_support, support)
    assert TumourConditioner.build(shape).brain_support is None
