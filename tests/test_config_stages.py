"""Config fields declare the training stages that read them; resume checks use that
declaration. Checked here against what each stage's training code actually reads."""

import dataclasses

import numpy as np
import pytest

from model_helpers import make_prepared, tiny_cfg
from sbldm import config

#: fields a training run reads that do not change its trajectory (bookkeeping, the
#: sampler settings a saved model carries, the step counts that extend a run)
BOOKKEEPING = {"scale", "checkpoint_every", "log_every", "sampler", "num_inference_steps", "eta",
               "ldm3d_ae_min_dice"}     # a gate before the 3D-LDM's UNet: it stops a run, never changes one
#: properties (of the config or of a section, by path) and the fields they read
PROPERTIES = {("vae_downsampling",): {"vae_channels"}, ("vae", "downsampling"): {"vae_channels"},
              ("latent_shape",): {"vae_latent_channels", "vae_channels", "volume_shape"}}


class Recording:
    """A Config (or section) stand-in that records, under its flat name, every field read
    through it: ``cfg.vae_lr`` and ``cfg.vae.lr`` both record ``vae_lr``."""

    def __init__(self, obj, path=(), read=None):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_path", tuple(path))
        object.__setattr__(self, "read", set() if read is None else read)

    def __getattr__(self, name):
        value = getattr(self._obj, name)
        path = self._path + (name,)
        if path in PROPERTIES:
            self.read.update(PROPERTIES[path])
        elif dataclasses.is_dataclass(value):
            return Recording(value, path, self.read)
        elif not callable(value):
            self.read.add(config.flat_name(path) if self._path else name)
        return value



@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("cohort"))


def _steps(stage):
    wanted = {stage, *config.UPSTREAM[stage]}
    return {f.name for f in config.fields() if wanted & set(f.stages) and f.extends}


def _check(stage, rec):
    declared = set(config.stage_fields(stage)) | _steps(stage) | BOOKKEEPING
    undeclared = sorted(rec.read - declared)
    assert not undeclared, f"stage {stage!r} reads fields it does not declare: {undeclared}"


def _data(cfg, n=4):
    rng = np.random.default_rng(0)
    x, y, z = cfg.volume_shape
    images = rng.uniform(-1, 1, (n, x, y, z)).astype(np.float32)
    labels = np.zeros((n, x, y, z), np.uint8)          # label maps: oedema around enhancing around necrosis
    labels[:, x // 3: x // 2, y // 3: y // 2, z // 3: z // 2] = 2
    labels[:, x // 3 + 1: x // 2 - 1, y // 3 + 1: y // 2 - 1, z // 3: z // 2] = 3
    labels[:, x // 3 + 2: x // 2 - 2, y // 3 + 2: y // 2 - 2, z // 3: z // 2] = 1
    return images, labels


def test_the_slice_vae_and_the_latent_unet_read_only_what_they_declare(tmp_path, prepared):
    from sbldm.training.trainer import train_diffusion, train_vae

    rec = Recording(tiny_cfg(vae_steps=2, checkpoint_every=2))
    from sbldm.data.cohort import load_prepared

    train_vae(rec, load_prepared(prepared, "train"), tmp_path / "vae", progress=False)
    _check("vae", rec)
    rec = Recording(tiny_cfg(diffusion_steps=2, checkpoint_every=2))
    rng = np.random.default_rng(0)
    train_diffusion(rec, rng.normal(0, 1, (3, 2, 8, 8, 8)).astype(np.float32), rng.random((3, 9)).astype(np.float32),
                    tmp_path / "unet", latent_std=1.0, progress=False)
    _check("diffusion", rec)


@pytest.mark.slow
def test_the_baselines_read_only_what_they_declare(tmp_path):
    from sbldm.generators.ldm3d import train_ldm3d
    from sbldm.generators.lsgan3d import train_lsgan3d

    cfg = config.resolve("smoke", lsgan_steps=2, ldm3d_ae_steps=2, ldm3d_diffusion_steps=2, checkpoint_every=2)
    rec = Recording(cfg)
    train_lsgan3d(rec, _data(cfg), tmp_path / "lsgan", progress=False)
    _check("lsgan3d", rec)
    rec = Recording(cfg)
    train_ldm3d(rec, _data(cfg), tmp_path / "ldm3d", progress=False)
    _check("ldm3d_unet", rec)     # the 3D-LDM's UNet stage includes its autoencoder upstream


@pytest.mark.parametrize("name", [f.name for f in config.fields()])
def test_changing_a_field_refuses_resume_in_exactly_the_stages_that_read_it(name):
    cfg = config.resolve("smoke")
    saved = cfg.to_dict()
    value = getattr(cfg, name)
    changed = {**saved, name: _another(value)}
    for stage in config.STAGES:
        reads = stage in config.stages_reading(name) or any(
            up in config.stages_reading(name) for up in config.UPSTREAM[stage])
        extends = next(f.extends for f in config.fields() if f.name == name)
        conflicts = config.resume_conflicts(stage, changed, cfg)
        assert bool(conflicts) == (reads and not extends), (name, stage, conflicts)


def _another(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, tuple):
        return tuple(value) + (1,)
    return "something else"


def test_the_3d_ldm_has_its_own_fields_and_no_stage_is_declared_by_name_prefix_alone():
    # the 3D-LDM autoencoder's SSIM range is its own field: changing the slice VAE's does not touch it
    assert config.stages_reading("vae_ssim_range") == ("vae",)
    assert config.stages_reading("ldm3d_ae_ssim_range") == ("ldm3d_ae",)
    assert "diffusion_prediction_type" not in config.stage_fields("ldm3d_unet")
    assert "ldm3d_diffusion_prediction_type" in config.stage_fields("ldm3d_unet")
    assert "vae_channels" in config.stage_fields("diffusion")        # upstream of the latent UNet
    with pytest.raises(ValueError, match="unknown training stage"):
        config.stage_fields("vea")


def test_a_checkpoint_saved_under_a_renamed_field_is_read_under_its_new_name():
    """``diffusion_tumor_weight`` became ``diffusion_tumour_weight``: a checkpoint that
    recorded the old name is compared (and a run record rebuilt) under the new one, so a
    changed weight is still caught and an unchanged one is not reported."""
    from sbldm.config import from_dict, resolve, resume_conflicts

    cfg = resolve("smoke", diffusion_tumour_weight=4.0)
    old = {**cfg.to_dict(), "diffusion_tumor_weight": 4.0}
    del old["diffusion_tumour_weight"]
    assert resume_conflicts("diffusion", old, cfg) == []
    assert resume_conflicts("diffusion", {**old, "diffusion_tumor_weight": 1.0}, cfg) == [
        "diffusion_tumour_weight: 1.0 -> 4.0"]
    assert from_dict(old) == cfg
