"""Shipping a trained pipeline in the repository (``sbldm.report.ship``) and the shipped one."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import make_prepared, randomise_output, tiny_cfg

ROOT = Path(__file__).resolve().parent.parent


def _trained_work(tmp_path):
    """``work/smoke`` as notebooks 00-02 leave it, with a tiny pipeline of random outputs:
    (work folder, training split, slice VAE, latent UNet, pipeline)."""
    from sbldm.data.cohort import load_prepared
    from sbldm.diffusion.pipeline import SBLDMPipeline
    from sbldm.models.unet3d import latent_unet
    from sbldm.models.vae import build_vae

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
    return work, train, vae, unet, pipe


def test_ship_stores_half_precision_weights_that_load_as_fp32_and_sample_alike(tmp_path):
    from safetensors import safe_open

    from sbldm.diffusion.pipeline import SBLDMPipeline
    from sbldm.report import ship

    work, train, vae, unet, pipe = _trained_work(tmp_path)
    dest = ship.ship("smoke", work_root=tmp_path / "work", results_root=tmp_path / "results",
                     dest_root=tmp_path / "pretrained", check_volumes=1, check_steps=2, speed_steps=2)
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
    # the speed measured when shipped, fp32 and bf16 on a CPU, and the Use snippet takes the fast path
    assert "## Speed" in card and "DDIM-2 on" in card and " s in fp32" in card
    assert torch.cuda.is_available() or "under bf16 autocast" in card
    assert "with cpu_bf16(not torch.cuda.is_available()):" in card


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
        if name == "vae":                       # a VAE saved before the field reads as FLAIR (SliceVAE's default)
            saved = {"modalities": ["t2f"], **saved}
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


def test_the_card_lists_the_claims_with_their_verdicts_and_the_interiors_at_its_budget(tmp_path):
    from sbldm import config
    from sbldm.report import ship
    from sbldm.tables import write_table

    cfg = config.resolve("smoke")
    res = tmp_path / "results"
    write_table([{"claim": "real + SBLDM beats real only (Table 2)", "measure": "Dice", "paper": "0.815 vs 0.714",
                  "sbldm": "0.680 vs 0.629", "verdict": "no detectable effect", "why": "3 seeds"}],
                res / "tables" / "claims")
    base = {"interior_w_over_spread": 0.7, "dark_part_share": 0.0, "dark_part_share_real": 0.09,
            "multi_piece_26": 0.18, "multi_piece_26_real": 0.48, "spearman_sphericity": 0.59,
            "spearman_surface_area": 0.95, "frechet_ratio": 6.5}
    write_table([{"generator": "real", "steps": "", "vae_steps": "", **base, "interior_w_over_spread": 0.19},
                 {"generator": "sbldm", "steps": cfg.diffusion_steps + 1, "vae_steps": cfg.vae_steps, **base},
                 {"generator": "sbldm-vae9", "steps": cfg.diffusion_steps, "vae_steps": cfg.vae_steps,
                  **base, "interior_w_over_spread": 0.66}], res / "tables" / "generator_budget")
    card = ship.model_card(cfg, "smoke", res, None)
    assert "- real + SBLDM beats real only (Table 2): **no detectable effect** (paper 0.815 vs 0.714; here " \
           "0.680 vs 0.629)" in card
    # the budget row with this preset's VAE and UNet steps, against the real test split
    assert "worst sub-region Wasserstein over the real spread 0.66 (real test split 0.19)" in card
    assert "in more than one piece 18% (real 48%)" in card and "sphericity Spearman 0.59" in card


FOUR = ("t1n", "t1c", "t2w", "t2f")


def _four_sequence_work(tmp_path):
    """work/smoke/four_sequences with a tiny prepared cohort of four sequences (three
    transforms of the FLAIR before it) and an untrained four-sequence pipeline."""
    from model_helpers import REGIONS

    from sbldm.data.cohort import load_prepared
    from sbldm.diffusion.pipeline import SBLDMPipeline
    from sbldm.io import atomic_save_npy, atomic_write_json
    from sbldm.models.unet3d import latent_unet
    from sbldm.models.vae import build_vae

    base = tmp_path / "work" / "smoke" / "four_sequences"
    shutil.copytree(make_prepared(tmp_path / "cohort"), base / "data")
    im = np.load(base / "data" / "cache" / "images.npy")
    atomic_save_npy(base / "data" / "cache" / "sequences.npy",
                    np.stack([-im, 0.5 * im, np.clip(im + 0.3, -1, 1), im], axis=1).astype(np.float32))
    atomic_write_json(base / "data" / "cache" / "modalities.json", list(FOUR))
    train = load_prepared(base / "data", "train")
    cfg = tiny_cfg(**REGIONS, modalities=list(FOUR))
    torch.manual_seed(0)
    vae, unet = build_vae(cfg.vae, cfg.tumour_labels, cfg.modalities).eval(), latent_unet(cfg).eval()
    randomise_output(vae)
    randomise_output(unet, std=0.3)
    SBLDMPipeline.from_components(cfg, vae, unet, normalizer=train.normalizer,
                                  train_features=train.features).save_pretrained(base / "pipeline")
    return train


def _writes_brats_folders_read_back(pipe, out_dir):
    """A pipeline of four sequences writes one BraTS 2023 folder per volume, which the
    project's own loader reads back, every sequence and the labels."""
    from model_helpers import assert_brats_folders_read_back

    out = pipe(num_volumes=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.sequences.shape[:2] == (2, 4) and out.modalities == FOUR
    assert_brats_folders_read_back(out, out_dir)


def test_a_four_sequence_pipeline_ships_beside_the_flair_one_with_its_own_card(tmp_path):
    from sbldm.diffusion.pipeline import SBLDMPipeline
    from sbldm.report import ship
    from sbldm.tables import write_table

    with pytest.raises(FileNotFoundError, match="run notebook 12 at `smoke` first"):
        ship.ship("smoke", work_root=tmp_path / "work", dest_root=tmp_path / "pretrained", four_sequences=True)
    train = _four_sequence_work(tmp_path)
    res = tmp_path / "results" / "smoke"
    write_table([{"n_real": 3, "training_set": "real, 4 sequences", "against": "real, FLAIR", "seeds": 10,
                  "diff_WT": 0.02, "ci95_low_WT": 0.01, "ci95_high_WT": 0.03, "verdict_WT": "gain"}],
                res / "tables" / "four_sequences_table2")
    write_table([{"region": "enhancing tumour", "sequence": "T1ce", "generated_median_z": 2.5, "real_q25": 1.75,
                  "real_median": 2.25, "real_q75": 3.0, "inside_real_iqr": True}],
                res / "tables" / "four_sequences_enhancing")
    dest = ship.ship("smoke", work_root=tmp_path / "work", results_root=tmp_path / "results",
                     dest_root=tmp_path / "pretrained", check_volumes=1, check_steps=2, speed_steps=2,
                     four_sequences=True)
    assert dest == tmp_path / "pretrained" / "smoke-4seq"
    card = (dest / ship.CARD).read_text()
    assert "generates T1, T1ce, T2, FLAIR and the tumour sub-region label map" in card and "BraTS 2023" in card
    assert "- 3 real volumes, real, 4 sequences minus real, FLAIR (10 seeds, Dice, 95% interval, verdict after " \
           "Holm): WT +0.020 [+0.010, +0.030] gain" in card
    assert "- the generated median 2.50 lies inside the real training tumours' interquartile range [1.75, 3.00] " \
           "on T1ce" in card
    assert "_name_or_path" not in (dest / "model_index.json").read_text()     # no path of this machine shipped
    assert 'SBLDMPipeline.from_pretrained("pretrained/smoke-4seq")' in card and "not for clinical use" in card
    back = SBLDMPipeline.from_pretrained(dest)
    np.testing.assert_allclose(back.affine, train.grid_affine)
    _writes_brats_folders_read_back(back, tmp_path / "cases")


@pytest.mark.skipif(not (ROOT / "pretrained" / "small-4seq").is_dir(), reason="no shipped four-sequence pipeline")
def test_the_shipped_four_sequence_pipeline_writes_brats_folders_the_loader_reads_back(tmp_path):
    from sbldm.diffusion.pipeline import SBLDMPipeline

    _writes_brats_folders_read_back(SBLDMPipeline.from_pretrained(ROOT / "pretrained" / "small-4seq"), tmp_path)


@pytest.mark.skipif(not (ROOT / "pretrained" / "small").is_dir(), reason="no shipped small pipeline")
def test_the_readme_snippet_runs_as_written_on_the_shipped_model(tmp_path, monkeypatch):
    """The README's "import sbldm in your own notebook" block, run as a user pastes it (only
    the step count cut to 2 and the output folder moved): the request it makes lies in the
    brain, the volume comes out in the documented form and the named files are written."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## import sbldm in your own notebook", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "num_inference_steps=50" in block and 'save_nifti("samples/")' in block, "the README's snippet changed"
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(block.replace("num_inference_steps=50", "num_inference_steps=2")
                 .replace('"samples/"', repr(str(tmp_path / "samples"))), "README.md", "exec"), scope)
    out = scope["out"]
    assert out.images.shape == (1, 64, 64, 32) and out.masks.shape == (1, 64, 64, 32)
    assert out.images.min() >= -1 and out.images.max() <= 1 and set(np.unique(out.masks)) <= {0, 1}
    named = [w.strip(",") for w in block.split('save_nifti("samples/")', 1)[1].split("\n", 1)[0].split() if ".nii" in w]
    assert named and all((tmp_path / "samples" / n).is_file() for n in named), named


def test_the_card_gives_the_training_time_the_logs_kept_resumed_sittings_included(tmp_path):
    from sbldm import config
    from sbldm.report import ship

    work = tmp_path / "work"
    for d, times in (("vae", [600.0, 3852.0]), ("diffusion", [100.0, 1260.0])):
        (work / d).mkdir(parents=True)
        (work / d / "log.jsonl").write_text("".join(json.dumps({"step": k, "loss": 1.0, "time_s": t}) + "\n"
                                                    for k, t in enumerate(times)))
    hours = ship.training_hours(work)
    assert hours == {"slice VAE": 3852.0 / 3600, "latent UNet": 1260.0 / 3600}
    card = ship.model_card(config.resolve("smoke"), "smoke", tmp_path / "results", None, hours=hours)
    assert "training time slice VAE 1.07 h, latent UNet 0.35 h (from the training logs" in card
    assert "wall time of notebook" not in card
    (work / "diffusion" / "log.jsonl").unlink()
    card = ship.model_card(config.resolve("smoke"), "smoke", tmp_path / "results", None,
                           hours=ship.training_hours(work))
    assert "training time slice VAE 1.07 h (from" in card
    assert "training time not kept" in ship.model_card(config.resolve("smoke"), "smoke", tmp_path / "results", None)


def test_the_cards_segmentation_verdict_names_where_nnunet_does_not_confirm_the_fast_segmenter():
    from sbldm.report import ship

    def row(et_diff, et_verdict, seeds=10, et_dice=0.15):
        return {"seeds": seeds, "diff_WT": -0.004, "ci95_low_WT": -0.06, "ci95_high_WT": 0.05,
                "verdict_WT": "no detectable effect", "diff_ET": et_diff, "ci95_low_ET": et_diff - 0.03,
                "ci95_high_ET": et_diff + 0.03, "verdict_ET": et_verdict, "dice_ET_mean": et_dice}

    fast, real_fast = row(0.13, "gain"), row(float("nan"), "", et_dice=0.146)
    lines = ship.segmentation_verdict(fast, row(-0.015, "no detectable effect", 3), ["WT", "ET"], real_fast,
                                      row(float("nan"), "", 3, et_dice=0.336))
    assert lines[0].endswith("WT -0.004 [-0.060, +0.050] no detectable effect; ET +0.130 [+0.100, +0.160] gain")
    assert lines[1].startswith("- the same under nnU-Net (3 seeds): WT -0.004")
    assert lines[2] == ("- caveat: the fast segmenter's ET gain does not hold under nnU-Net (real only: ET 0.146 fast, "
                        "0.336 nnU-Net): the gain is not shown beyond the weaker segmenter")
    loss = ship.segmentation_verdict(row(-0.13, "loss"), row(0.0, "no detectable effect", 3), ["WT", "ET"])
    assert loss[-1].startswith("- caveat: the fast segmenter's ET loss does not hold under nnU-Net: the loss is not")
    # confirmed: no caveat; never checked: said so
    assert not any("caveat" in s for s in ship.segmentation_verdict(fast, row(0.12, "gain", 3), ["WT", "ET"]))
    assert "not confirmed under nnU-Net" in ship.segmentation_verdict(fast, None, ["WT", "ET"])[-1]
    # a table without seed-paired columns (an older run): nothing claimed
    assert ship.segmentation_verdict({"dice_WT_mean": 0.6}, None, ["WT"]) == []
    # a "no detectable effect" whose interval clears 0 says what held it back (as the summaries do)
    held = {**row(-0.044, "no detectable effect", 3), "p_seeds_ET": 0.21}
    assert ship.segmentation_verdict(fast, held, ["ET"])[1].endswith(
        "ET -0.044 [-0.074, -0.014] no detectable effect (Holm p 0.21)")
    held["p_seeds_ET"] = 0.01
    assert ship.segmentation_verdict(fast, held, ["ET"])[1].endswith("no detectable effect (smaller than the seed spread)")


def test_restore_puts_a_shipped_pipeline_back_as_notebooks_01_02_leave_it(tmp_path):
    """``restore`` is ``ship`` backwards: the pipeline, the slice VAE and the latents the
    later notebooks read, from the fp16 weights; it refuses to replace trained weights and
    names what is missing."""
    from sbldm.diffusion.latents import encode_dataset, load_latents
    from sbldm.diffusion.pipeline import SBLDMPipeline
    from sbldm.models.vae import SliceVAE
    from sbldm.report import ship

    work, train, vae, unet, pipe = _trained_work(tmp_path)
    shipped = tmp_path / "pretrained"
    ship.ship("smoke", work_root=tmp_path / "work", results_root=tmp_path / "results", dest_root=shipped,
              check_volumes=0)
    card, record = shipped / "smoke" / ship.CARD, shipped / "smoke" / ship.RECORD
    # ship writes the hours it put on the card into a record beside it, for restore to read back
    logged = {k: h for k, h in ship.training_hours(work).items() if h == h}
    assert json.loads(record.read_text())["training_hours"] == pytest.approx(logged, abs=1e-4)
    # a folder shipped before the record existed: the card's sentence is read
    card.write_text(card.read_text().replace("training time not kept",
                                             "training time slice VAE 1.07 h, latent UNet 0.35 h (from the logs)"))
    record.unlink()
    assert ship.shipped_hours(shipped / "smoke") == {"slice VAE": 1.07, "latent UNet": 0.35}
    # the record wins over the card where both are there
    record.write_text(json.dumps({"training_hours": {"slice VAE": 2.5, "latent UNet": 0.75}}))
    assert ship.shipped_hours(shipped / "smoke") == {"slice VAE": 2.5, "latent UNet": 0.75}
    record.unlink()
    with pytest.raises(FileExistsError, match="already holds pipeline"):
        ship.restore("smoke", work_root=tmp_path / "work", src_root=shipped, progress=False)
    shutil.rmtree(work / "pipeline")
    with pytest.raises(FileNotFoundError, match="no shipped pipeline"):
        ship.restore("smoke", work_root=tmp_path / "work", src_root=tmp_path / "nowhere", progress=False)
    with pytest.raises(ValueError, match="unknown scale|scale"):
        ship.restore("huge", work_root=tmp_path / "work", src_root=shipped, progress=False)
    bare = tmp_path / "bare"
    with pytest.raises(FileNotFoundError, match="notebook 00"):
        ship.restore("smoke", work_root=bare, src_root=shipped, progress=False)

    out = ship.restore("smoke", work_root=tmp_path / "work", src_root=shipped, progress=False)
    assert out == work and not list(work.glob("*.partial"))
    back = SBLDMPipeline.from_pretrained(work / "pipeline")
    assert {p.dtype for p in back.unet.parameters()} == {torch.float32}
    rounded = {k: v.half().float() for k, v in unet.state_dict().items()}
    for k, v in back.unet.state_dict().items():                        # the shipped weights, fp16-rounded
        torch.testing.assert_close(v, rounded[k], rtol=0, atol=0)
    vae_back = SliceVAE.from_pretrained(work / "vae").eval()
    for k, v in vae_back.state_dict().items():
        torch.testing.assert_close(v, vae.state_dict()[k].half().float(), rtol=0, atol=0)
    # the latents are the restored VAE's encoding of the training split, as notebook 02 writes them
    lat = load_latents(work / "latents")
    ref = encode_dataset(vae_back, train.images, train.labels, case_ids=train.case_ids, progress=False)
    np.testing.assert_allclose(lat.mean, ref.mean, rtol=1e-6, atol=1e-6)
    assert lat.case_ids == list(train.case_ids)
    kept = json.loads((work / ship.RESTORED).read_text())
    assert kept["fp16_rounded"] and kept["training_hours"] == {"slice VAE": 1.07, "latent UNet": 0.35}
    assert ship.training_hours(work) == {"slice VAE": 1.07, "latent UNet": 0.35}   # no logs: the card's
    # a second restore replaces only when asked
    with pytest.raises(FileExistsError):
        ship.restore("smoke", work_root=tmp_path / "work", src_root=shipped, progress=False)
    ship.restore("smoke", work_root=tmp_path / "work", src_root=shipped, force=True, progress=False)


def test_the_storage_check_compares_every_sequence_of_a_pipeline_of_several():
    """half_precision_effect reads out.sequences where the pipeline makes several: a change in
    T1ce alone (the FLAIR, out.images, identical) must show."""
    import types

    from sbldm.report import ship

    flair = np.zeros((1, 4, 4, 2), np.float32)
    masks = np.zeros((1, 4, 4, 2), np.uint8)

    def pipe(t1ce):
        seqs = np.zeros((1, 4, 4, 4, 2), np.float32)
        seqs[:, 1] = t1ce
        return lambda **_: types.SimpleNamespace(images=flair, masks=masks, sequences=seqs)

    out = ship.half_precision_effect(pipe(0.0), pipe(0.25), n=1, steps=1)
    assert out["max_abs_image_difference"] == pytest.approx(0.25) and out["mask_voxels_differing"] == 0.0
    one = lambda **_: types.SimpleNamespace(images=flair, masks=masks, sequences=None)   # noqa: E731
    assert ship.half_precision_effect(one, one, n=1, steps=1)["max_abs_image_difference"] == 0.0


def test_a_restored_pipeline_keeps_the_storage_check_of_the_copy_it_came_from(tmp_path):
    """Weights restored from fp16 storage compared with their own rounding show no change at
    all: the card must carry the check measured on the trained fp32 weights, or say it was not
    measured, never the vacuous zero."""
    from sbldm.report import ship

    measured = {"volumes": 4, "ddim_steps": 20, "max_abs_image_difference": 0.0031,
                "mean_abs_image_difference": 0.00012, "mask_voxels_differing": 0.0005}
    card = "\n".join(ship.speed_and_storage(None, measured))
    assert ship.card_storage(card) == pytest.approx(measured)           # the card's line reads back
    assert ship.card_storage("## Storage\n") is None
    work = tmp_path / "work"
    work.mkdir()
    assert ship.restored_storage(work) is None                         # trained here: measure it
    src = tmp_path / "pretrained" / "small"
    src.mkdir(parents=True)
    (src / ship.CARD).write_text(card)
    (work / ship.RESTORED).write_text(json.dumps({"from": str(src), "fp16_rounded": True}))
    kept = ship.restored_storage(work)                                  # an old record: the card's numbers
    assert kept["kept_from"] == "pretrained/small"
    assert kept["max_abs_image_difference"] == pytest.approx(0.0031)
    text = "\n".join(ship.speed_and_storage(None, kept))
    assert "0.0031" in text and "cannot be repeated" in text and str(tmp_path) not in text
    (work / ship.RESTORED).write_text(json.dumps({"from": str(src), "fp16_rounded": True, "storage": None}))
    nothing = ship.restored_storage(work)
    assert nothing == {"restored": True}
    text = "\n".join(ship.speed_and_storage(None, nothing))
    assert "Not measured" in text and "0.0000" not in text
