"""The optional sub-region condition (``condition_subregions``): the necrosis and enhancing
shares of the tumour join the paper's 9 features, from the data through training to the
pipeline and the steering panel."""

import numpy as np
import pytest
import torch

from model_helpers import REGIONS, make_prepared, tiny_cfg
from sbldm import config
from sbldm.data.cohort import load_prepared
from sbldm.data.tumour import SUBREGION_FEATURES, subregion_shares
from sbldm.diffusion import unet_inputs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny pipeline trained 2 steps with the condition, and its training split."""
    from sbldm.diffusion.latents import encode_dataset
    from sbldm.models.vae import build_vae
    from sbldm.training.trainer import train_pipeline

    root = tmp_path_factory.mktemp("subregions")
    train = load_prepared(make_prepared(root), "train")
    cfg = tiny_cfg(**REGIONS, condition_subregions=True, diffusion_steps=2, checkpoint_every=1)
    torch.manual_seed(0)
    vae = build_vae(cfg.vae, cfg.tumour_labels).eval()
    latents = encode_dataset(vae, train.images, train.labels, progress=False)
    return train_pipeline(cfg, vae, latents, train, root / "diffusion", progress=False), train


def test_shares_by_hand():
    lab = np.zeros((2, 4, 4, 4), np.uint8)
    lab[0, :2] = 2
    lab[0, 0, :2] = 1          # 8 of 32 tumour voxels are necrosis
    lab[0, 1, :1] = 3          # 4 are enhancing
    np.testing.assert_allclose(subregion_shares(lab[0]), [8 / 32, 4 / 32])
    both = subregion_shares(lab)
    assert both.shape == (2, 2) and np.isnan(both[1]).all()       # no tumour, no shares
    with pytest.raises(ValueError, match="unexpected label value"):
        subregion_shares(np.full((2, 2, 2), 4, np.uint8))


def test_requests_no_tumour_could_have_are_refused():
    assert unet_inputs.check_subregions([0.2, 0.3]).shape == (1, 2)
    for bad, what in (([1.2, 0.0], "lies in"), ([-0.1, 0.2], "lies in"), ([0.7, 0.6], "more than the whole"),
                      ([np.nan, 0.1], "lies in")):
        with pytest.raises(ValueError, match=what):
            unet_inputs.check_subregions(bad)
    with pytest.raises(ValueError, match="needs tumour_labels='regions'"):
        config.resolve("smoke", tumour_labels="whole", condition_subregions=True)


def test_the_unet_learns_from_eleven_values_with_the_shares_z_scored(tmp_path):
    from sbldm.models.unet3d import latent_unet

    train = load_prepared(make_prepared(tmp_path), "train")
    cfg = tiny_cfg(**REGIONS, condition_subregions=True)
    inputs = unet_inputs.diffusion_inputs(cfg, train)
    shares = subregion_shares(train.labels)
    assert inputs["conditions"].shape == (len(train), 11)
    np.testing.assert_allclose(inputs["conditions"][:, 9:], (shares - shares.mean(0)) / np.maximum(shares.std(0), 1e-3),
                               rtol=1e-5)
    assert latent_unet(cfg).config.cond_dim == 11 and latent_unet(tiny_cfg(**REGIONS)).config.cond_dim == 9
    assert unet_inputs.diffusion_inputs(tiny_cfg(**REGIONS), train)["subregions"] is None


def test_the_pipeline_takes_draws_and_keeps_the_shares(trained, tmp_path):
    from sbldm.diffusion.pipeline import SBLDMPipeline

    pipe, train = trained
    stats = pipe.conditioner.subregions
    np.testing.assert_allclose(stats["train"], subregion_shares(train.labels))
    seen = []
    hook = pipe.unet.register_forward_hook(lambda m, args, out: seen.append(args[2].detach().clone()))
    try:
        out = pipe(num_volumes=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                   subregions=[[0.1, 0.2], [0.3, 0.1]])
    finally:
        hook.remove()
    np.testing.assert_allclose(out.subregions, [[0.1, 0.2], [0.3, 0.1]])
    want = (np.array([[0.1, 0.2], [0.3, 0.1]]) - np.array(stats["mean"])) / np.array(stats["std"])
    np.testing.assert_allclose(seen[0][:, 9:].numpy(), want, rtol=1e-5)            # what the UNet is given
    # as keys of feature dicts
    request = {k: float(v) for k, v in zip(config.FEATURE_NAMES, train.features[0])}
    keyed = pipe(conditions=[{**request, "necrosis_share": 0.25, "enhancing_share": 0.5}], num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(keyed.subregions, [[0.25, 0.5]])
    with pytest.raises(ValueError, match="in every condition, or in none"):
        pipe(conditions=[{**request, "necrosis_share": 0.25}], num_inference_steps=2)
    # none asked for: drawn from the training tumours, seeded
    drawn = pipe(num_volumes=3, num_inference_steps=2, generator=torch.Generator().manual_seed(5))
    assert all(any(np.allclose(row, t) for t in stats["train"]) for row in drawn.subregions)
    again = pipe(num_volumes=3, num_inference_steps=2, generator=torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(drawn.subregions, again.subregions)
    # saved and loaded, the same pipeline
    pipe.save_pretrained(tmp_path / "pipe")
    back = SBLDMPipeline.from_pretrained(tmp_path / "pipe")
    np.testing.assert_allclose(back.conditioner.subregions["mean"], stats["mean"])
    b = back(num_volumes=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
             subregions=[[0.1, 0.2], [0.3, 0.1]])
    np.testing.assert_allclose(b.images, out.images, atol=1e-5)


def test_a_pipeline_without_the_condition_refuses_the_shares(trained):
    from sbldm.diffusion.pipeline import SBLDMPipeline
    from sbldm.models.unet3d import latent_unet

    pipe, train = trained
    cfg = tiny_cfg(**REGIONS)
    plain = SBLDMPipeline.from_components(cfg, pipe.vae, latent_unet(cfg), normalizer=train.normalizer,
                                          train_features=train.features)
    assert plain.conditioner.subregions is None
    with pytest.raises(ValueError, match="trained without the sub-region condition"):
        plain(num_volumes=1, num_inference_steps=2, subregions=[[0.1, 0.2]])
    request = {k: float(v) for k, v in zip(config.FEATURE_NAMES, train.features[0])}
    with pytest.raises(ValueError, match="trained without the sub-region condition"):
        plain(conditions=[{**request, "necrosis_share": 0.1, "enhancing_share": 0.2}], num_inference_steps=2)
    with pytest.raises(ValueError, match="the UNet takes 11 condition values"):
        SBLDMPipeline.from_components(cfg, pipe.vae, pipe.unet, normalizer=train.normalizer)


def test_the_steering_panel_gets_its_sliders(trained, tmp_path):
    pytest.importorskip("ipywidgets")
    from sbldm.report.steer import TumourSteering

    pipe, _ = trained
    steer = TumourSteering(pipe, steps=2, bf16=False)
    steer.widget(out_dir=tmp_path)
    sliders = steer._widgets["sliders"]
    assert set(SUBREGION_FEATURES) <= set(sliders)
    sliders["necrosis_share"].value = 0.3
    sliders["enhancing_share"].value = 0.2
    steer._widgets["generate"].click()
    np.testing.assert_allclose(steer.last.subregions, [[0.3, 0.2]])
    assert "necrosis_share" in "".join(t.get_text() for t in steer.figure.axes[3].texts)
    sliders["necrosis_share"].value = 0.9                # with enhancing 0.2: more than the whole tumour
    steer._widgets["generate"].click()
    assert "not generated" in steer._widgets["status"].value
