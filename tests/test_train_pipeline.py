"""Training loop (deterministic resume, kill-and-resume through the CLI) and SBLDMPipeline."""

import json
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from model_helpers import make_prepared, randomise_output, set_overrides, tiny_cfg

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("cohort"))


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "diffusion_pytorch_model.safetensors"))


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# -- training -------------------------------------------------------------------------------------

def test_train_vae_writes_artefacts(prepared, tmp_path):
    from sbldm.data.cohort import load_prepared
    from sbldm.models.vae import SliceVAE
    from sbldm.training.trainer import train_vae

    cfg = tiny_cfg(vae_steps=6, checkpoint_every=3, log_every=2)
    vae = train_vae(cfg, load_prepared(prepared, "train"), tmp_path / "vae", progress=False)
    out = tmp_path / "vae"
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "run.json", "log.jsonl",
                 "loss_curve.png", "checkpoints/last.pt"):
        assert (out / name).is_file(), name
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "vae" and run["seed"] == 0 and run["steps"] == 6
    assert run["config"]["volume_shape"] == [16, 16, 8]
    assert "torch" in run["versions"] and "hardware" in run and "wall_time_s" in run
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6]
    assert all(k in log[0] for k in ("loss", "l1", "ssim", "kl", "lr", "time_s"))
    back = SliceVAE.from_pretrained(out)
    for (n, p), (_, q) in zip(vae.named_parameters(), back.named_parameters()):
        assert torch.equal(p, q), n
    # resuming a finished run trains no further and keeps the weights
    before = _weights(out)
    train_vae(cfg, load_prepared(prepared, "train"), out, progress=False)
    after = _weights(out)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # a checkpoint of another configuration is refused
    with pytest.raises(ValueError, match=r"another vae configuration \(vae_lr: 0\.001 -> 0\.0005\)"):
        train_vae(tiny_cfg(vae_steps=6, checkpoint_every=3, vae_lr=5e-4), load_prepared(prepared, "train"), out,
                  progress=False)


def test_diffusion_resume_is_bit_identical(tmp_path):
    from sbldm.training.trainer import train_diffusion

    cfg = tiny_cfg(diffusion_steps=6, checkpoint_every=2, log_every=1, unet_cond_dropout=0.5)
    rng = np.random.default_rng(0)
    lat = rng.normal(0, 2, (3, 2, 8, 8, 8)).astype(np.float32)
    cond = rng.uniform(0.2, 0.8, (3, 9)).astype(np.float32)
    train_diffusion(cfg, lat, cond, tmp_path / "full", latent_std=2.0, progress=False)
    train_diffusion(cfg, lat, cond, tmp_path / "part", latent_std=2.0, progress=False, stop_at=3)
    assert not (tmp_path / "part" / "run.json").exists()
    ck = torch.load(tmp_path / "part" / "checkpoints" / "last.pt", weights_only=False)
    assert ck["step"] == 2                          # stopped after step 3: last checkpoint at 2
    train_diffusion(cfg, lat, cond, tmp_path / "part", latent_std=2.0, progress=False)
    _assert_same_weights(tmp_path / "full", tmp_path / "part")
    assert json.loads((tmp_path / "part" / "run.json").read_text())["resumed_from"] == 2
    steps = [json.loads(line)["step"] for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]              # the log lines after the checkpoint were dropped, then rewritten
    scale = json.loads((tmp_path / "full" / "latent_scale.json").read_text())
    assert scale["scaling_factor"] == pytest.approx(0.5)
    # and a fresh run (resume=False) differs from nothing: it equals the full run again
    train_diffusion(cfg, lat, cond, tmp_path / "part", latent_std=2.0, progress=False, resume=False)
    _assert_same_weights(tmp_path / "full", tmp_path / "part")


def test_diffusion_l1_loss_and_seed_change_the_result(tmp_path):
    from sbldm.training.trainer import train_diffusion

    rng = np.random.default_rng(0)
    lat = rng.normal(0, 1, (2, 2, 8, 8, 8)).astype(np.float32)
    cond = rng.uniform(0.2, 0.8, (2, 9)).astype(np.float32)
    for name, kw in (("a", {}), ("b", {"seed": 1}), ("c", {"diffusion_loss": "l1"})):
        train_diffusion(tiny_cfg(diffusion_steps=2, **kw), lat, cond, tmp_path / name, latent_std=1.0, progress=False)
    wa, wb, wc = (_weights(tmp_path / n) for n in "abc")
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def _cli(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "sbldm.runner.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_kill_and_resume_through_the_cli(prepared, tmp_path):
    """SIGKILL a VAE run after its first checkpoint, resume it, compare with an
    uninterrupted run; then train the diffusion stage from it and write a pipeline."""
    from sbldm.data.cohort import load_prepared
    from sbldm.diffusion.pipeline import SBLDMPipeline
    from sbldm.training.trainer import train_vae

    overrides = dict(vae_steps=24, checkpoint_every=4, log_every=4)
    args = ["vae", "--scale", "smoke", "--prepared", str(prepared), "--out", str(tmp_path / "killed"),
            "--threads", "1", "--no-progress", "--set", *set_overrides(**overrides)]
    proc = _cli([*args, "--step-delay", "0.25"])
    ckpt = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert ckpt.exists(), proc.communicate()[0] if proc.poll() is not None else "no checkpoint in time"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "run.json").exists()          # it really was interrupted
    step_at_kill = torch.load(ckpt, weights_only=False)["step"]
    assert 4 <= step_at_kill < 24

    resumed = _cli(args)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    run = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert run["resumed_from"] == step_at_kill

    train_vae(tiny_cfg(**overrides), load_prepared(prepared, "train"), tmp_path / "straight", progress=False)
    _assert_same_weights(tmp_path / "straight", tmp_path / "killed")

    diff = _cli(["diffusion", "--scale", "smoke", "--prepared", str(prepared), "--vae", str(tmp_path / "killed"),
                 "--out", str(tmp_path / "diffusion"), "--pipeline", str(tmp_path / "pipeline"), "--threads", "1",
                 "--no-progress", "--set", *set_overrides(diffusion_steps=3, checkpoint_every=2)])
    output = diff.communicate(timeout=300)[0]
    assert diff.returncode == 0, output
    assert (tmp_path / "diffusion" / "latents" / "mean.npy").is_file()
    pipe = SBLDMPipeline.from_pretrained(tmp_path / "pipeline")
    assert pipe.latent_std == pytest.approx(json.loads((tmp_path / "diffusion" / "latents" / "latents.json")
                                                       .read_text())["latent_std"])
    assert pipe.train_features.shape == (4, 9)
    out = pipe(num_volumes=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 16, 16, 8)


# -- pipeline ---------------------------------------------------------------------------------------

@pytest.fixture
def pipe(prepared):
    from sbldm.data.cohort import load_prepared
    from sbldm.models.unet3d import latent_unet
    from sbldm.models.vae import build_vae
    from sbldm.diffusion.pipeline import SBLDMPipeline

    cfg = tiny_cfg()
    torch.manual_seed(0)
    vae, unet = build_vae(cfg.vae, cfg.tumour_labels).eval(), latent_unet(cfg).eval()
    randomise_output(vae)
    randomise_output(unet, std=0.3)
    with torch.no_grad():
        unet.null_cond.normal_(0, 1)            # a trained null embedding differs from tau(c)
    train = load_prepared(prepared, "train")
    return SBLDMPipeline.from_components(cfg, vae, unet, normalizer=train.normalizer,
                                         train_features=train.features, latent_std=1.7)


def _g(seed):
    return torch.Generator().manual_seed(seed)


def test_pipeline_outputs_and_determinism(pipe, tmp_path):
    cond = np.random.default_rng(0).uniform(0.2, 0.8, (2, 9)).astype(np.float32)
    a = pipe(conditions=cond, num_inference_steps=3, generator=_g(0))
    assert a.images.shape == (2, 16, 16, 8) and a.images.dtype == np.float32
    assert a.masks.shape == (2, 16, 16, 8) and a.masks.dtype == np.uint8
    assert a.images.min() >= -1 and a.images.max() <= 1 and set(np.unique(a.masks)) <= {0, 1}
    np.testing.assert_array_equal(a.conditions, cond)
    b = pipe(conditions=cond, num_inference_steps=3, generator=_g(0))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    c = pipe(conditions=cond, num_inference_steps=3, generator=_g(1))
    assert not np.array_equal(a.images, c.images)
    # DDPM as well (few steps to keep it quick)
    d1 = pipe(conditions=cond, sampler="ddpm", num_inference_steps=3, generator=_g(0))
    d2 = pipe(conditions=cond, sampler="ddpm", num_inference_steps=3, generator=_g(0))
    np.testing.assert_array_equal(d1.images, d2.images)
    # decode chunk size does not change the result
    e = pipe(conditions=cond, num_inference_steps=3, generator=_g(0), decode_chunk_size=3)
    np.testing.assert_allclose(e.images, a.images, atol=1e-6)
    paths = a.save_nifti(tmp_path / "nii")
    import nibabel as nib

    assert len(paths) == 2
    assert nib.load(str(paths[0][0])).shape == (16, 16, 8)
    np.testing.assert_array_equal(np.asarray(nib.load(str(paths[1][1])).dataobj), a.masks[1])


def test_samples_carry_the_training_grid_geometry_into_nifti(tmp_path):
    """A cohort on an anisotropic, LPS-flipped, shifted grid: the pipeline stores that grid
    (through save/load), and a saved sample reads back with nibabel on the same grid as a
    training case: same spacing, orientation and origin, qform and sform both set."""
    import nibabel as nib

    from sbldm.data.cohort import load_prepared
    from sbldm.diffusion.pipeline import SBLDMPipeline
    from sbldm.models.unet3d import latent_unet
    from sbldm.models.vae import build_vae

    affine = np.array([[-1.2, 0, 0, 90.0], [0, -1.2, 0, 110.0], [0, 0, 2.5, -60.0], [0, 0, 0, 1]])
    train = load_prepared(make_prepared(tmp_path / "cohort", affine=affine), "train")
    np.testing.assert_allclose(train.grid_affine, affine)      # same shape, so the grid is the source's
    cfg = tiny_cfg()
    pipe = SBLDMPipeline.from_components(cfg, build_vae(cfg.vae, cfg.tumour_labels).eval(), latent_unet(cfg).eval(),
                                         normalizer=train.normalizer, train_features=train.features,
                                         affine=train.grid_affine)
    pipe.save_pretrained(tmp_path / "pipe")
    back = SBLDMPipeline.from_pretrained(tmp_path / "pipe")
    out = back(num_volumes=1, num_inference_steps=2, generator=_g(0))
    (img_path, seg_path), = out.save_nifti(tmp_path / "nii")
    case = nib.load(str(next((tmp_path / "cohort" / "brats").glob("*/*-t2f.nii.gz"))))
    for path in (img_path, seg_path):
        img = nib.load(str(path))
        np.testing.assert_allclose(img.header.get_zooms(), case.header.get_zooms())     # 1.2, 1.2, 2.5 mm
        assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(case.affine) == ("L", "P", "S")
        np.testing.assert_allclose(img.affine, case.affine)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        np.testing.assert_allclose(img.get_qform(), affine)
    # an explicit affine still wins; an invalid one is refused
    (p2, _), = out.save_nifti(tmp_path / "nii2", affine=np.eye(4))
    np.testing.assert_allclose(nib.load(str(p2)).affine, np.eye(4))
    with pytest.raises(ValueError, match="invertible 4x4"):
        back.set_metadata(affine=np.zeros((4, 4)))


def test_pipeline_conditions_from_dicts_and_training_distribution(pipe):
    from sbldm.data.tumour import FEATURE_NAMES

    raw = pipe.train_features[:2]
    dicts = [dict(zip(FEATURE_NAMES, r)) for r in raw]
    a = pipe(conditions=dicts, num_inference_steps=2, generator=_g(0))
    np.testing.assert_allclose(a.conditions, pipe.normalizer.transform(raw), rtol=1e-6)
    b = pipe(conditions=pipe.normalizer.transform(raw), num_inference_steps=2, generator=_g(0))
    np.testing.assert_allclose(a.images, b.images, atol=1e-6)
    c1 = pipe(num_volumes=3, num_inference_steps=2, generator=_g(5))
    c2 = pipe(num_volumes=3, num_inference_steps=2, generator=_g(5))
    assert c1.conditions.shape == (3, 9) and c1.raw_conditions.shape == (3, 9)
    np.testing.assert_array_equal(c1.conditions, c2.conditions)
    np.testing.assert_array_equal(c1.images, c2.images)


def test_a_pipeline_refuses_a_tumour_centred_outside_every_training_brain(pipe, prepared, tmp_path):
    from sbldm.data.cohort import load_prepared
    from sbldm.data.tumour import FEATURE_NAMES
    from sbldm.diffusion.pipeline import SBLDMPipeline
    from sbldm.diffusion.unet_inputs import brain_support

    train = load_prepared(prepared, "train")
    images = train.images.copy()
    images[:, :4, :4] = -1.0                            # no training brain reaches one corner column
    support = brain_support(images, pipe.vae.downsampling_factor)
    assert not support[0, 0].any() and support.any()
    pipe.set_metadata(brain_support=support)
    request = dict(zip(FEATURE_NAMES, train.features[0]))
    pipe(conditions=[request], num_inference_steps=2, generator=_g(0))      # a training tumour: inside
    x, y, z = np.argwhere(~support)[0]
    f = pipe.vae.downsampling_factor
    outside = {**request, "x": float(x * f), "y": float(y * f), "z": float(z)}
    pipe.save_pretrained(tmp_path / "p")
    for p in (pipe, SBLDMPipeline.from_pretrained(tmp_path / "p")):
        with pytest.raises(ValueError, match="none of the training brains has brain tissue"):
            p(conditions=[outside], num_inference_steps=2, generator=_g(0))
        # the same tumour as a normalised (N, 9) vector gets the same verdict; the inside one passes
        as_vector = p.normalizer.transform(np.array([[outside[k] for k in FEATURE_NAMES]])).astype(np.float32)
        with pytest.raises(ValueError, match="none of the training brains has brain tissue"):
            p(conditions=as_vector, num_inference_steps=2, generator=_g(0))
        inside = p.normalizer.transform(train.features[:1]).astype(np.float32)
        p(conditions=inside, num_inference_steps=2, generator=_g(0))
    pipe.set_metadata(brain_support=np.ones_like(support))     # the module's pipe: every centre allowed again


def test_ddim_eta(pipe):
    cond = np.random.default_rng(1).uniform(0.2, 0.8, (1, 9)).astype(np.float32)
    noise = torch.randn(1, 2, 8, 8, 8, generator=_g(42))
    kw = dict(conditions=cond, num_inference_steps=4, latents=noise, output_type="latent")
    a0 = pipe(eta=0.0, generator=_g(0), **kw).images
    b0 = pipe(eta=0.0, generator=_g(1), **kw).images
    np.testing.assert_array_equal(a0, b0)                   # eta=0: deterministic given the noise
    a1 = pipe(eta=1.0, generator=_g(0), **kw).images
    b1 = pipe(eta=1.0, generator=_g(1), **kw).images
    assert not np.allclose(a1, b1)                          # eta=1: stochastic
    np.testing.assert_array_equal(a1, pipe(eta=1.0, generator=_g(0), **kw).images)


def test_guidance_scale_one_is_the_conditional_sampler(pipe):
    from diffusers import DDIMScheduler

    cond = np.random.default_rng(2).uniform(0.2, 0.8, (2, 9)).astype(np.float32)
    noise = torch.randn(2, 2, 8, 8, 8, generator=_g(3))
    kw = dict(conditions=cond, num_inference_steps=4, latents=noise, output_type="latent")
    guided1 = pipe(guidance_scale=1.0, **kw).images
    # the plain conditional DDIM loop, written out
    sched = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, set_alpha_to_one=False)
    sched.set_timesteps(4)
    x = noise.clone()
    c = torch.from_numpy(cond)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(pipe.unet(x, t, c), t, x, eta=0.0).prev_sample
    np.testing.assert_array_equal(guided1, x.numpy())
    guided3 = pipe(guidance_scale=3.0, **kw).images
    assert not np.allclose(guided1, guided3)
    # guidance 0 is the unconditional model
    uncond = pipe(guidance_scale=0.0, **kw).images
    x = noise.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(pipe.unet(x, t, None), t, x, eta=0.0).prev_sample
    np.testing.assert_allclose(uncond, x.numpy(), rtol=1e-4, atol=1e-4)   # batch of 4 vs 2: last bits differ
    # guidance 3: eps_u + 3 (eps_c - eps_u), written out with separate passes
    x = noise.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            eps_c, eps_u = pipe.unet(x, t, c), pipe.unet(x, t, None)
            x = sched.step(eps_u + 3.0 * (eps_c - eps_u), t, x, eta=0.0).prev_sample
    np.testing.assert_allclose(guided3, x.numpy(), rtol=2e-3, atol=2e-3)  # batching noise, amplified x3


def test_pipeline_save_load_roundtrip(pipe, tmp_path):
    from sbldm import SBLDMPipeline

    pipe.save_pretrained(tmp_path / "p")
    # diffusers' layout and nothing else: the latent scale in the VAE's config (as diffusers
    # keeps it), what conditions mean in the conditioner's
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["conditioner", "model_index.json", "scheduler",
                                                                  "unet", "vae"]
    assert json.loads((tmp_path / "p" / "vae" / "config.json").read_text())["scaling_factor"] == pytest.approx(1 / 1.7)
    cond = json.loads((tmp_path / "p" / "conditioner" / "config.json").read_text())
    assert cond["volume_shape"] == [16, 16, 8] and len(cond["train_features"]) == len(pipe.train_features)
    assert json.loads((tmp_path / "p" / "model_index.json").read_text())["conditioner"] == [
        "sbldm.diffusion.conditioner", "TumourConditioner"]
    back = SBLDMPipeline.from_pretrained(tmp_path / "p")
    assert back.latent_std == pytest.approx(1.7)
    assert back.normalizer.to_dict() == pipe.normalizer.to_dict()
    np.testing.assert_array_equal(back.train_features, pipe.train_features)
    assert back.volume_shape == (16, 16, 8)
    a = pipe(num_volumes=2, num_inference_steps=3, generator=_g(0))
    b = back(num_volumes=2, num_inference_steps=3, generator=_g(0))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.conditions, b.conditions)


def test_saving_a_model_again_keeps_unchanged_files_and_their_times_and_writes_changed_ones(pipe, tmp_path):
    """sbldm.io.save_model: the cached sample sets key on the pipeline folder's file times, so
    saving the same (or a reloaded) pipeline again must touch nothing; new weights must land."""
    import os

    from sbldm import SBLDMPipeline
    from sbldm.io import save_model

    d = tmp_path / "pipeline"
    assert save_model(pipe, d)
    plain = tmp_path / "plain"
    pipe.save_pretrained(plain)                     # the same files as diffusers writes them
    files = sorted(f.relative_to(d) for f in d.rglob("*") if f.is_file())
    assert files == sorted(f.relative_to(plain) for f in plain.rglob("*") if f.is_file())
    assert all((d / f).read_bytes() == (plain / f).read_bytes() for f in files)
    old = {f: (d / f).stat().st_mtime_ns for f in files}
    for f in files:                                 # age them, so a rewrite would show
        os.utime(d / f, ns=(old[f] - 10**10, old[f] - 10**10))
    aged = {f: (d / f).stat().st_mtime_ns for f in files}
    assert not save_model(pipe, d)
    assert not save_model(SBLDMPipeline.from_pretrained(d), d)   # a reloaded pipeline writes the same bytes
    assert {f: (d / f).stat().st_mtime_ns for f in files} == aged
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())   # no temporary folder left
    with torch.no_grad():
        next(pipe.unet.parameters()).add_(1.0)
    assert save_model(pipe, d)
    now = {f: (d / f).stat().st_mtime_ns for f in files}
    changed = {f for f in files if now[f] != aged[f]}
    assert changed and all(f.parts[0] == "unet" for f in changed)          # only the UNet's weights moved
    back = SBLDMPipeline.from_pretrained(d)
    torch.testing.assert_close(next(back.unet.parameters()), next(pipe.unet.parameters()))


def test_from_scale_and_parameter_counts():
    from sbldm import SBLDMPipeline

    p = SBLDMPipeline.from_scale("smoke")
    n = p.num_parameters()
    assert n["total"] == n["vae"] + n["unet"] > 0
    assert p.latent_shape() == (4, 8, 8, 16)
    with pytest.raises(ValueError, match="conditions"):
        p(num_volumes=1)                          # no training features to draw from


def test_an_untrained_pipeline_with_a_spatial_prior_samples_from_normalised_conditions():
    """The benchmark times untrained networks: a UNet with a spatial prior must still get
    a raw tumour to render, inside the volume."""
    from sbldm import SBLDMPipeline

    p = SBLDMPipeline.from_scale("smoke", unet_spatial_prior=True)
    raw = p.normalizer.inverse_transform(np.full((1, 9), 0.5))[0]
    assert np.allclose(raw[3:6], np.array(p.volume_shape) / 2)            # centre in the middle
    assert 0 < raw[0] < np.prod(p.volume_shape)
    out = p(num_volumes=1, conditions=np.full((1, 9), 0.5, np.float32), num_inference_steps=2, generator=_g(0))
    assert out.images.shape == (1, *p.volume_shape) and np.isfinite(out.images).all()


# -- prediction types -------------------------------------------------------------------------------

def test_velocity_target_matches_diffusers():
    """noise_batch's v target equals diffusers' own get_velocity; its eps target is the noise."""
    from sbldm.diffusion.schedule import make_scheduler
    from sbldm.training.objectives import noise_batch

    sched = make_scheduler(tiny_cfg(diffusion_prediction_type="v_prediction"))
    data = torch.randn(5, 2, 4, 4, 3, generator=_g(0))
    idx, noisy, v, t, _ = noise_batch(data, np.random.default_rng(1), 4, sched.alphas_cumprod, "v_prediction")
    idx2, noisy2, eps, t2, _ = noise_batch(data, np.random.default_rng(1), 4, sched.alphas_cumprod)
    assert torch.equal(idx, idx2) and torch.equal(t, t2) and torch.equal(noisy, noisy2)   # same draws
    torch.testing.assert_close(v, sched.get_velocity(data[idx], eps, t))
    torch.testing.assert_close(noisy, sched.add_noise(data[idx], eps, t))
    _, noisy3, x0, t3, _ = noise_batch(data, np.random.default_rng(1), 4, sched.alphas_cumprod, "sample")
    assert torch.equal(noisy3, noisy) and torch.equal(x0, data[idx])        # the x_0 target: the clean latent
    with pytest.raises(ValueError, match="prediction_type"):
        noise_batch(data, np.random.default_rng(1), 4, sched.alphas_cumprod, "x0")


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_match_diffusers_compute_snr(kind):
    """min(SNR, gamma) over SNR (noise), SNR + 1 (velocity) or 1 (x_0), with SNR = (alpha /
    sigma)^2 as diffusers' compute_snr forms it (its module imports torchvision, which a CPU
    torch cannot load beside it); a unit sample weight leaves the loss the plain mean."""
    from sbldm.diffusion.schedule import make_scheduler
    from sbldm.training.objectives import min_snr_weights, noise_loss

    sched = make_scheduler(tiny_cfg())
    t = torch.tensor([0, 10, 300, 999])
    alpha, sigma = sched.alphas_cumprod[t].double().sqrt(), (1 - sched.alphas_cumprod[t].double()).sqrt()
    snr = (alpha / sigma) ** 2
    expected = torch.clamp(snr, max=5.0) / {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}[kind]
    torch.testing.assert_close(min_snr_weights(sched.alphas_cumprod, t, 5.0, kind), expected.float())
    pred, target = torch.randn(4, 2, 3, 3, 3, generator=_g(2)), torch.randn(4, 2, 3, 3, 3, generator=_g(3))
    torch.testing.assert_close(noise_loss(pred, target, sample_weight=torch.ones(4)), noise_loss(pred, target))
    w = torch.tensor([1.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(noise_loss(pred, target, sample_weight=w), ((pred[0] - target[0]) ** 2).mean() / 4)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_sampler_follows_the_prediction_type(prepared, kind, monkeypatch):
    """An oracle denoiser of a one-point data set, written in either parameterisation, leads
    DDIM (eta 0) to that point; the same oracle read with the other parameterisation does not."""
    from sbldm.models.unet3d import latent_unet
    from sbldm.models.vae import build_vae
    from sbldm.diffusion.pipeline import SBLDMPipeline

    def build(k):
        cfg = tiny_cfg(diffusion_prediction_type=k)
        return SBLDMPipeline.from_components(cfg, build_vae(cfg.vae, cfg.tumour_labels).eval(), latent_unet(cfg).eval(), latent_std=1.0)

    pipe = build(kind)
    ac = pipe.scheduler.alphas_cumprod
    z0 = 2.0 * torch.randn(1, *pipe.latent_shape((8, 8, 8)), generator=_g(5))

    def oracle(latents, t, cond, guidance_scale, drop=None, prior=None):
        a = ac[int(t)]
        eps = (latents - a.sqrt() * z0) / (1 - a).sqrt()
        return eps if kind == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * z0

    kw = dict(conditions=np.zeros((1, 9), np.float32), num_inference_steps=20, output_type="latent",
              generator=_g(1), volume_shape=(8, 8, 8))
    monkeypatch.setattr(pipe, "_predict", oracle)
    out = torch.from_numpy(pipe(**kw).images)
    # DDIM's last step lands on alpha_cumprod[0] < 1: sqrt(1 - a0) ~ 0.045 of noise remains
    assert (out - z0).abs().mean() < 0.06             # measured 0.037 for both kinds
    other = build("v_prediction" if kind == "epsilon" else "epsilon")
    monkeypatch.setattr(other, "_predict", oracle)
    assert (torch.from_numpy(other(**kw).images) - z0).abs().mean() > 0.15   # 0.20 and 5.2


def test_resume_checks_only_what_the_stage_depends_on(tmp_path):
    """A checkpoint resumes under an evaluation change and under a larger step count (and
    then equals a run that had the larger count from the start); a change of the model or
    optimiser is refused, naming the field."""
    from sbldm.config import stage_fields
    from sbldm.training.trainer import train_diffusion

    rng = np.random.default_rng(0)
    lat = rng.normal(0, 1, (3, 2, 8, 8, 8)).astype(np.float32)
    cond = rng.uniform(0.2, 0.8, (3, 9)).astype(np.float32)
    kw = dict(latent_std=1.0, progress=False)
    train_diffusion(tiny_cfg(diffusion_steps=5), lat, cond, tmp_path / "full", **kw)
    train_diffusion(tiny_cfg(diffusion_steps=3, checkpoint_every=3), lat, cond, tmp_path / "ext", **kw)
    # more steps, another evaluation budget, another sampler: resumes at step 3
    train_diffusion(tiny_cfg(diffusion_steps=5, eval_n_samples=99, num_inference_steps=7), lat, cond,
                    tmp_path / "ext", **kw)
    assert json.loads((tmp_path / "ext" / "run.json").read_text())["resumed_from"] == 3
    _assert_same_weights(tmp_path / "full", tmp_path / "ext")
    with pytest.raises(ValueError, match=r"diffusion_lr: 0\.001 -> 0\.002"):
        train_diffusion(tiny_cfg(diffusion_steps=6, diffusion_lr=2e-3), lat, cond, tmp_path / "ext", **kw)
    with pytest.raises(ValueError, match="unet_channels"):
        train_diffusion(tiny_cfg(diffusion_steps=6, unet_channels=(8, 16, 32)), lat, cond, tmp_path / "ext", **kw)
    # the diffusion stage depends on the VAE upstream, never on evaluation or segmentation
    fields = stage_fields("diffusion")
    assert "vae_channels" in fields and "diffusion_lr" in fields and "seed" in fields
    assert not any(f.startswith(("eval_", "seg_", "lsgan_")) or f.endswith("_steps") for f in fields)
    assert "unet_channels" not in stage_fields("vae")
    with pytest.raises(ValueError, match="unknown training stage"):
        stage_fields("vea")


# -- fast paths (issue #8) --------------------------------------------------------------------------

def _fresh_copy(pipe):
    import copy

    return copy.deepcopy(pipe)


def test_channels_last_sampling_matches_the_plain_path(pipe):
    kw = dict(conditions=np.full((2, 9), 0.4, np.float32), num_inference_steps=4, output_type="latent")
    plain = pipe(generator=_g(0), **kw).images
    fast = _fresh_copy(pipe).enable_fast_paths(channels_last=True)
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last_3d)
    # rounding only: the random-weight UNet amplifies float32 differences over the steps
    assert np.abs(fast(generator=_g(0), **kw).images - plain).max() <= 1e-4 * np.abs(plain).max()
    assert np.abs(plain).max() > 0.1                        # the comparison is not of zeros


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(c) for c in ("cc", "gcc", "clang")),
                    reason="torch.compile on CPU needs a C compiler")
def test_compiled_unet_samples_like_the_plain_one_and_saves_the_same_weights(pipe, tmp_path):
    kw = dict(conditions=np.full((2, 9), 0.4, np.float32), num_inference_steps=3, output_type="latent")
    plain = pipe(generator=_g(0), **kw).images
    fast = _fresh_copy(pipe).enable_fast_paths(compile=True)
    assert np.abs(fast(generator=_g(0), **kw).images - plain).max() <= 1e-4 * np.abs(plain).max()
    fast.save_pretrained(tmp_path / "p")                    # in-place compile keeps the state-dict names
    from sbldm.diffusion.pipeline import SBLDMPipeline

    again = SBLDMPipeline.from_pretrained(tmp_path / "p")
    np.testing.assert_array_equal(again(generator=_g(0), **kw).images, plain)


def test_bench_refuses_an_unknown_fast_path():
    from sbldm.runner.bench import VARIANTS, variant_flags

    assert variant_flags("compile+bf16") == {"bf16": True, "channels_last": False, "compile": True}
    assert all(variant_flags(v) for v in VARIANTS)
    with pytest.raises(ValueError, match="channel_last"):
        variant_flags("channel_last")


def test_a_pipeline_folder_of_the_old_layout_is_refused_by_name(pipe, tmp_path):
    from sbldm import SBLDMPipeline

    pipe.save_pretrained(tmp_path / "p")
    (tmp_path / "p" / "sbldm.json").write_text(json.dumps({"latent_std": 1.7, "volume_shape": [16, 16, 8]}))
    with pytest.raises(ValueError, match="scaling_factor = 1 / latent_std"):
        SBLDMPipeline.from_pretrained(tmp_path / "p")


def test_start_latents_and_strength_keep_or_forget_the_volumes(pipe, prepared):
    """diffusers' image-to-image convention: a small strength ends near the given volumes'
    latents, strength 1 far from them."""
    from sbldm.data.cohort import load_prepared
    from sbldm.data.tumour import FEATURE_NAMES

    train = load_prepared(prepared, "train")
    start = pipe.encode(train.images[:2], train.masks[:2])
    assert start.shape == (2, *pipe.latent_shape())
    conditions = [dict(zip(FEATURE_NAMES, map(float, f))) for f in train.features[:2]]
    kw = dict(num_volumes=2, num_inference_steps=10, output_type="latent", generator=_g(0), conditions=conditions)
    near = torch.as_tensor(pipe(start_latents=start, strength=0.1, **kw).images)
    kw["generator"] = _g(0)
    far = torch.as_tensor(pipe(start_latents=start, strength=1.0, **kw).images)
    d_near, d_far = (near - start).abs().mean(), (far - start).abs().mean()
    assert d_near < 0.2 * d_far
    with pytest.raises(ValueError, match="strength must lie in"):
        pipe(start_latents=start, strength=0.0, **kw)
    with pytest.raises(ValueError, match="needs start_latents"):
        pipe(strength=0.5, **kw)
    with pytest.raises(ValueError, match="start_latents must have shape"):
        pipe(start_latents=start[:1], strength=0.5, **kw)
