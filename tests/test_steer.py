"""The interactive steering of notebook 08, driven in-process (no browser)."""

import numpy as np
import pytest
import torch
from model_helpers import make_prepared, randomise_output, tiny_cfg


@pytest.fixture(scope="module")
def steer(tmp_path_factory):
    from sbldm.data.cohort import load_prepared
    from sbldm.diffusion.pipeline import SBLDMPipeline
    from sbldm.models.unet3d import latent_unet
    from sbldm.models.vae import build_vae
    from sbldm.report.steer import TumourSteering

    train = load_prepared(make_prepared(tmp_path_factory.mktemp("cohort")), "train")
    cfg = tiny_cfg()
    torch.manual_seed(0)
    vae, unet = build_vae(cfg.vae, cfg.tumour_labels).eval(), latent_unet(cfg).eval()
    randomise_output(vae)
    randomise_output(unet, std=0.3)
    pipe = SBLDMPipeline.from_components(cfg, vae, unet, normalizer=train.normalizer, train_features=train.features,
                                         affine=train.grid_affine)
    return TumourSteering(pipe, steps=2, bf16=False)


def test_requests_stay_consistent_and_unknown_controls_are_refused(steer):
    from sbldm.data.tumour import area_from

    before = steer.request()
    after = steer.set(voxel_volume=2 * before["voxel_volume"])
    assert after["voxel_volume"] == pytest.approx(2 * before["voxel_volume"])
    # the box grows with the cube root of the volume (clipped to the volume), the area follows
    for k in ("w", "h", "d"):
        assert after[k] == pytest.approx(min(before[k] * 2 ** (1 / 3), steer.shape["whd".index(k)]))
    assert after["surface_area"] == pytest.approx(area_from(after["voxel_volume"], after["sphericity"]))
    assert steer.set(sphericity=0.6)["surface_area"] == pytest.approx(area_from(after["voxel_volume"], 0.6))
    with pytest.raises(ValueError, match="unknown control"):
        steer.set(surface_area=3.0)


def test_widget_callbacks_generate_show_and_save(steer, tmp_path):
    import nibabel as nib

    panel = steer.widget(out_dir=tmp_path)
    w = steer._widgets
    assert len(w["sliders"]) == 8 and panel is not None
    w["save"].click()
    assert "generate first" in w["status"].value
    w["generate"].click()
    first_fig, first_req = steer.figure, steer.last_request
    assert "generated in" in w["status"].value and first_fig is not None   # (the Output widget needs a kernel)
    rows = steer.comparison()
    assert [r["feature"] for r in rows][:3] == ["voxel_volume", "surface_area", "sphericity"]
    assert rows[3]["requested"] == pytest.approx(w["sliders"]["x"].value)
    # move the tumour and grow it: a new request, a new figure, different features asked for
    w["sliders"]["x"].value = w["sliders"]["x"].value + 3
    w["sliders"]["voxel_volume"].value = w["sliders"]["voxel_volume"].value * 0.6   # off the slider's grid
    vol = w["sliders"]["voxel_volume"]
    assert abs(np.log10(vol.value) - np.log10(0.6 * first_req["voxel_volume"])) <= vol.step / 2 + 1e-9
    w["generate"].click()
    assert steer.figure is not first_fig
    assert steer.last_request["x"] == pytest.approx(first_req["x"] + 3)
    assert steer.last_request["voxel_volume"] == pytest.approx(vol.value, rel=1e-12)   # what is shown is asked for
    assert steer.last_request["w"] < first_req["w"]                        # the box shrank with it
    w["save"].click()
    img_path = next(tmp_path.glob("*_flair.nii.gz"))
    np.testing.assert_allclose(nib.load(str(img_path)).affine, steer.pipe.affine)
    assert "saved" in w["status"].value


def test_every_slider_starts_on_its_grid_and_the_request_is_what_the_panel_shows(steer):
    """A browser draws a slider only at ``min + k * step`` (in the exponent for a log
    slider): an initial value off that grid is shown as another value than the one Python
    asks for. The median training tumour (the panel's start) is generally off any grid."""
    from sbldm.config import FEATURE_NAMES

    steer.values = dict(zip(FEATURE_NAMES, map(float, steer.base)))       # the panel's starting request
    steer.widget()
    w = steer._widgets
    for name, s in [*w["sliders"].items(), ("guidance", w["guidance"]), ("steps", w["steps"])]:
        position = np.log10(s.value) if s.__class__.__name__ == "FloatLogSlider" else s.value
        k = (position - s.min) / s.step
        assert abs(k - round(k)) < 1e-9, (name, s.value, s.min, s.step)
        assert s.min <= position <= s.max + 1e-12, name
    assert steer.base[0] != pytest.approx(w["sliders"]["voxel_volume"].value, rel=1e-9)   # the start was off-grid
    req = steer.request()
    for k, s in w["sliders"].items():
        assert req[k] == pytest.approx(s.value, rel=1e-12), k
    # a value set from Python off the grid moves onto it, and the request follows
    w["sliders"]["sphericity"].value = w["sliders"]["sphericity"].value + 0.0042
    assert abs(round(w["sliders"]["sphericity"].value / 0.01) * 0.01 - w["sliders"]["sphericity"].value) < 1e-9


def test_the_panel_says_why_when_a_tumour_is_asked_for_outside_every_training_brain(steer, tmp_path):
    support = np.ones(steer.pipe.latent_shape()[1:], bool)
    support[0, 0, :] = False                                   # the corner column is background in every brain
    steer.pipe.set_metadata(brain_support=support)
    try:
        steer.widget(out_dir=tmp_path)
        w = steer._widgets
        w["generate"].click()
        assert "generated in" in w["status"].value
        before = steer.last
        w["sliders"]["x"].value, w["sliders"]["y"].value = 1, 1
        w["generate"].click()
        assert "not generated" in w["status"].value and "none of the training brains" in w["status"].value
        assert steer.last is before                            # nothing drawn, the last volume kept
    finally:
        steer.pipe.register_modules(conditioner=steer.pipe.conditioner.build(
            steer.pipe.volume_shape, steer.pipe.normalizer, steer.pipe.train_features, steer.pipe.affine))
