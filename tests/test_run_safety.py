"""Stages resume only from what they were made from: the data and the upstream model's latents."""

import json

import numpy as np
import pytest

from model_helpers import make_prepared, tiny_cfg


def _toy_latents():
    """Three (2, 8, 8, 8) latents and their conditions."""
    rng = np.random.default_rng(0)
    return rng.normal(0, 1, (3, 2, 8, 8, 8)).astype(np.float32), rng.random((3, 9)).astype(np.float32)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("cohort"))


def test_the_vae_refuses_to_resume_on_other_data(prepared, tmp_path):
    from sbldm.data.cohort import load_prepared
    from sbldm.training.trainer import train_vae

    train = load_prepared(prepared, "train")
    cfg = tiny_cfg(vae_steps=2, checkpoint_every=2)
    train_vae(cfg, train, tmp_path / "vae", progress=False)
    other = (train.images[::-1].copy(), train.masks[::-1].copy())         # same shapes, other volumes
    with pytest.raises(ValueError, match="other inputs.*data changed.*resume=False"):
        train_vae(tiny_cfg(vae_steps=3), other, tmp_path / "vae", progress=False)
    train_vae(tiny_cfg(vae_steps=3), (train.images, train.masks), tmp_path / "vae", progress=False)  # same data: resumes
    assert json.loads((tmp_path / "vae" / "run.json").read_text())["resumed_from"] == 2


def test_a_changed_upstream_vae_makes_the_diffusion_stage_refuse_or_retrain(tmp_path):
    from sbldm.training.trainer import train_diffusion

    lat, cond = _toy_latents()
    train_diffusion(tiny_cfg(diffusion_steps=2), lat, cond, tmp_path / "unet", latent_std=1.0, progress=False)
    rec = json.loads((tmp_path / "unet" / "run.json").read_text())
    assert set(rec["inputs"]) == {"latents", "conditions"}
    # a VAE trained a few steps more encodes other latents: extending the UNet is refused ...
    newer = lat + 0.01
    with pytest.raises(ValueError, match="latents changed"):
        train_diffusion(tiny_cfg(diffusion_steps=4), newer, cond, tmp_path / "unet", latent_std=1.0, progress=False)
    # ... and so is another latent scale or other conditions
    with pytest.raises(ValueError, match="latents changed"):
        train_diffusion(tiny_cfg(diffusion_steps=4), lat, cond, tmp_path / "unet", latent_std=2.0, progress=False)
    with pytest.raises(ValueError, match="conditions changed"):
        train_diffusion(tiny_cfg(diffusion_steps=4), lat, cond[::-1].copy(), tmp_path / "unet", latent_std=1.0,
                        progress=False)
    # asked to, it retrains from scratch on the new latents
    train_diffusion(tiny_cfg(diffusion_steps=2), newer, cond, tmp_path / "unet", latent_std=1.0, progress=False,
                    resume=False)
    assert json.loads((tmp_path / "unet" / "run.json").read_text())["resumed_from"] is None


def test_a_checkpoint_without_recorded_inputs_is_not_resumed(tmp_path):
    import torch

    from sbldm.training.trainer import CHECKPOINT, train_diffusion

    lat, cond = _toy_latents()
    train_diffusion(tiny_cfg(diffusion_steps=2), lat, cond, tmp_path / "u", latent_std=1.0, progress=False)
    path = tmp_path / "u" / CHECKPOINT
    ckpt = torch.load(path, weights_only=False)
    del ckpt["inputs"]
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="records no inputs"):
        train_diffusion(tiny_cfg(diffusion_steps=3), lat, cond, tmp_path / "u", latent_std=1.0, progress=False)


def test_a_corrupt_checkpoint_is_named_with_the_way_out(tmp_path):
    from sbldm.training.trainer import CHECKPOINT, train_diffusion

    lat, cond = _toy_latents()
    train_diffusion(tiny_cfg(diffusion_steps=2), lat, cond, tmp_path / "u", latent_std=1.0, progress=False)
    path = tmp_path / "u" / CHECKPOINT
    path.write_bytes(path.read_bytes()[:1000])                    # a run killed mid-copy, a full disk
    with pytest.raises(ValueError, match=f"{path}.*corrupt or truncated.*Delete it"):
        train_diffusion(tiny_cfg(diffusion_steps=3), lat, cond, tmp_path / "u", latent_std=1.0, progress=False)
