"""Shipping a trained pipeline in the repository (``sbldm.report.ship``) and the shipped one."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import make_prepared, randomise_output, tiny_cfg

ROOT = Path(__file__).resolve().parent.parent


def test_ship_stores_half_precision_weights_that_load_as_fp32_and_sample_alike(tmp_path):
    from safetensors import safe_open

    from sbldm.data.cohort import load_prepared
    from sbldm.diffusion.pipeline import SBLDMPipeline
    from sbldm.models.unet3d import latent_unet
    from sbldm.models.vae import build_vae
    from sbldm.report import ship

    work = tmp_path / "work" / "smoke"
    shutil.copytree(make_prepared(tmp_path / "cohort"), work / "data")
    train = load_prepared(work / "data", "train")
    cfg = tiny_cfg()
    torch.manual_seed(0)
    vae, unet = build_vae(cfg.vae, cfg.tumour_labels).eval(), latent_unet(cfg).eval()
    randomise_output(vae)
    randomise_output(unet, std=0.3)
    pipe = SBLDMPipeline.from_components(cfg, vae, unet, normalizer=train.normalizer, train_features=train.features)
    pipe.save_pretrained(work / "pipeline")
    dest = ship.ship("smoke", work_root=tmp_path / "work", results_root=tmp_path / "results",
                     dest_root=tmp_path / "pretrained", check_volumes=1, check_steps=2)
    assert dest == tmp_path / "pretrained" / "smoke" and not (tmp_path / "pretrained" / "smoke.partial").exists()
    with safe_open(str(dest / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    shipped_bytes = (dest / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert shipped_bytes < 0.6 * (work / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    back = SBLDMPipeline.from_pretrained(dest)
    assert {p.dtype for p in back.unet.parameters()} == {p.dtype for p in back.vae.parameters()} == {torch.float32}
    np.testing.assert_allclose(back.affine, train.grid_affine)           # the grid comes along
    a = pipe(num_volumes=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    b = back(num_volumes=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(b.conditions, a.conditions)
    assert np.abs(a.images - b.images).max() < 0.05                       # fp16 rounding, not another model
    card = (dest / ship.CARD).read_text()
    assert "fp16" in card and "largest image difference" in card and "not for clinical use" in card


@pytest.mark.skipif(not (ROOT / "pretrained" / "small").is_dir(), reason="no shipped small pipeline")
def test_the_shipped_small_pipeline_is_the_small_preset_and_samples():
    from sbldm.config import resolve
    from sbldm.diffusion.pipeline import SBLDMPipeline
    from sbldm.models.unet3d import latent_unet
    from sbldm.models.vae import build_vae

    folder = ROOT / "pretrained" / "small"
    cfg = resolve("small")
    for name, built in (("unet", latent_unet(cfg)), ("vae", build_vae(cfg.vae, cfg.tumour_labels))):
        saved = json.loads((folder / name / "config.json").read_text())
        expected = {k: (list(v) if isinstance(v, tuple) else v) for k, v in built.config.items()
                    if not k.startswith("_") and k != "scaling_factor"}        # learnt from the latents, not preset
        assert {k: saved[k] for k in expected} == expected, name
    assert 0.5 < json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"] < 2
    meta = json.loads((folder / "conditioner" / "config.json").read_text())
    assert tuple(meta["volume_shape"]) == cfg.volume_shape and meta["normalizer"]["kind"] == cfg.condition_normalization
    assert meta["affine"] is not None and len(meta["train_features"]) == cfg.n_train
    assert meta["brain_support"]["shape"] == [cfg.volume_shape[0] // cfg.vae_downsampling,
                                              cfg.volume_shape[1] // cfg.vae_downsampling, cfg.volume_shape[2]]
    pipe = SBLDMPipeline.from_pretrained(folder)
    out = pipe(num_volumes=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, *cfg.volume_shape) and np.isfinite(out.images).all()
    assert out.labels is not None and out.labels.shape == out.images.shape     # the regions: a label map
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 15e6      # the size budget


def test_the_card_quotes_table2_per_region_and_says_when_it_is_stale(tmp_path):
    from sbldm import config
    from sbldm.report import ship
    from sbldm.tables import write_table

    res = tmp_path / "results"
    rows = [{"row": name, "seeds": 3, "dice_mean": d, "dice_WT_mean": d, "dice_TC_mean": d - 0.1, "dice_ET_mean": d - 0.2}
            for name, d in (("real", 0.9), ("real + SBLDM", 0.8))]
    write_table(rows, res / "tables" / "table2")
    run = {"notebooks": {"00_prepare_data": {"status": "ok", "finished_at": "2026-11-30T10:00:00+00:00"},
                         "06_segmentation_study": {"status": "ok", "finished_at": "2026-11-30T12:00:00+00:00"}}}
    (res / "run.json").write_text(json.dumps(run))
    card = ship.model_card(config.resolve("smoke"), "smoke", res, None)
    assert "Table 2 (3 segmenter seeds, Dice WT/TC/ET): real 0.900/0.800/0.700, real + SBLDM 0.800/0.700/0.600" in card
    assert "stale" not in card
    run["notebooks"]["00_prepare_data"]["finished_at"] = "2026-11-30T13:00:00+00:00"     # the data prepared again after
    (res / "run.json").write_text(json.dumps(run))
    assert "stale: from an earlier cohort" in ship.model_card(config.resolve("smoke"), "smoke", res, None)
