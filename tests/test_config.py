import pytest

from sbldm import config


@pytest.mark.parametrize("scale", config.SCALES)
def test_presets_resolve(scale):
    cfg = config.resolve(scale)
    assert cfg.scale == scale
    assert cfg.volume_shape[0] % cfg.vae_downsampling == 0


def test_paper_preset_is_the_papers_geometry():
    cfg = config.resolve("paper")
    assert cfg.volume_shape == (192, 192, 96)
    assert (cfg.n_train, cfg.n_test) == (100, 100)
    assert cfg.vae_downsampling == 8 and cfg.latent_shape == (6, 24, 24, 96)
    assert cfg.unet_channels == (64, 128, 256, 512)
    assert (cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps) == (0.002, 0.02, 1000)


def test_overrides_apply_and_configs_are_frozen():
    cfg = config.resolve("smoke", vae_lr=0.5, volume_shape=[32, 32, 8])
    assert cfg.vae_lr == 0.5 and cfg.volume_shape == (32, 32, 8)
    with pytest.raises(Exception):
        cfg.vae_lr = 1.0
    assert cfg.hash() != config.resolve("smoke").hash()
    assert config.from_dict(cfg.to_dict()) == cfg


def test_unknown_scale_names_the_choices():
    with pytest.raises(ValueError, match="smoke, small, paper"):
        config.resolve("huge")


def test_unknown_override_names_the_choices():
    with pytest.raises(ValueError, match="'vae_lrr'.*valid parameters:.*vae_lr"):
        config.resolve("smoke", vae_lrr=1e-3)


@pytest.mark.parametrize("field,value", [("unet_cond_fusion", "concat"), ("sampler", "euler"),
                                         ("volume_shape", (30, 32, 16)), ("vae_empty_slice_keep", 2.0)])
def test_invalid_values_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        config.resolve("smoke", **{field: value})


@pytest.mark.parametrize("field, value, match", [
    ("vae_steps", "abc", "vae_steps='abc' is not valid; expected int"),
    ("vae_steps", -5, "vae_steps=-5 is not valid; expected a positive integer"),
    ("vae_steps", 2.5, "expected int"),
    ("vae_lr", 0, "a learning rate must be > 0"),
    ("diffusion_lr", float("inf"), "not a finite number"),
    ("unet_spatial_prior", 1, "expected bool"),
    ("vae_channels", 32, "expected tuple"),
    ("diffusion_batch_size", 0, "positive integer"),
])
def test_config_values_are_type_and_range_checked(field, value, match):
    with pytest.raises(ValueError, match=match):
        config.resolve("small", **{field: value})


def test_a_float_field_takes_an_int_and_lists_become_tuples():
    cfg = config.resolve("small", vae_lr=1, volume_shape=[64, 64, 32])
    assert cfg.vae_lr == 1 and cfg.volume_shape == (64, 64, 32)
