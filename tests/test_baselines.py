"""3D-LSGAN, 3D-LDM and the generator interface shared with SBLDM (tiny configs; paper counts)."""

import json

import numpy as np
import pytest
import torch

from model_helpers import BASELINES, make_prepared, randomise_output

NAMES = ("sbldm", "ldm3d", "lsgan3d")
BASE = BASELINES


def cfg(**kw):
    from sbldm.config import resolve

    return resolve("smoke", **{**BASE, **kw})


def build(name, **kw):
    """An untrained generator whose zero-initialised output convs are randomised, so
    samples depend on the noise (a zero conv would make every test below pass trivially)."""
    import sbldm

    gen = sbldm.build_generator(name, cfg(**kw))
    if name == "sbldm":
        randomise_output(gen.pipeline.vae, 1)
        randomise_output(gen.pipeline.unet, 2)
    elif name == "ldm3d":
        randomise_output(gen.unet, 3)
    return gen


def sample(gen, seed=0, n=2):
    opts = {} if gen.kind == "lsgan3d" else {"num_inference_steps": 3}
    return gen.generate(n, generator=torch.Generator().manual_seed(seed), **opts)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from sbldm.data.cohort import load_prepared

    return load_prepared(make_prepared(tmp_path_factory.mktemp("cohort")), "train")


# -- the interface ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_generate_shapes_ranges_and_determinism(name):
    gen = build(name)
    assert gen.kind == name and gen.volume_shape == (16, 16, 8)
    s = sample(gen)
    images, masks = s                                      # unpacks like a pair
    assert images.shape == masks.shape == (2, 16, 16, 8)
    assert images.dtype == np.float32 and masks.dtype == np.uint8
    assert images.min() >= -1 and images.max() <= 1
    assert set(np.unique(masks)) <= {0, 1}
    assert images.std() > 1e-4 and not np.allclose(images[0], images[1])   # depends on the noise
    again, other = sample(gen), sample(gen, seed=1)
    np.testing.assert_array_equal(again.images, images)
    np.testing.assert_array_equal(again.masks, masks)
    assert not np.allclose(other.images, images)
    counts = gen.num_parameters()
    assert counts["total"] >= counts["sampling"] > 0
    assert counts["total"] == sum(v for k, v in counts.items() if k not in ("total", "sampling"))


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, tmp_path):
    import sbldm
    from sbldm.generators.registry import generator_kind

    gen = build(name)
    gen.save_pretrained(tmp_path / "g")
    assert json.loads((tmp_path / "g" / "generator.json").read_text())["kind"] == name
    assert generator_kind(tmp_path / "g") == name
    loaded = sbldm.load_generator(tmp_path / "g")
    assert type(loaded) is type(gen) and loaded.num_parameters() == gen.num_parameters()
    a, b = sample(gen), sample(loaded)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)


def test_unknown_name_and_folder():
    import sbldm
    from sbldm.generators.registry import train_generator

    for fn in (lambda: sbldm.build_generator("ddpm3d", "smoke"),
               lambda: train_generator("ddpm3d", cfg(), None, "unused")):
        with pytest.raises(ValueError, match="sbldm, ldm3d, lsgan3d"):
            fn()
    with pytest.raises(FileNotFoundError, match="not a saved generator"):
        sbldm.load_generator(".")


def test_build_is_seeded_and_leaves_global_rng_alone():
    import sbldm

    state = torch.get_rng_state()
    a = sbldm.build_generator("lsgan3d", cfg())
    assert torch.equal(state, torch.get_rng_state())
    b = sbldm.build_generator("lsgan3d", cfg())
    c = sbldm.build_generator("lsgan3d", cfg(seed=1))
    assert torch.equal(a.generator.fc.weight, b.generator.fc.weight)
    assert not torch.equal(a.generator.fc.weight, c.generator.fc.weight)


def test_sbldm_adapter_without_training_features_draws_reference_conditions():
    s = sample(build("sbldm"), n=3)
    assert s.conditions.shape == (3, 9)
    vol, surface, sph = s.conditions[:, 0], s.conditions[:, 1], s.conditions[:, 2]
    assert np.all((vol >= 0.01) & (vol <= 0.9)) and np.allclose(surface, vol ** (2 / 3), rtol=1e-5)
    assert np.all((sph >= 0.25) & (sph <= 0.9))


def test_shapes_that_do_not_fit_are_refused_at_build():
    import sbldm

    with pytest.raises(ValueError, match="2\\*\\*upsamplings"):
        sbldm.build_generator("lsgan3d", cfg(volume_shape=(16, 16, 10)))
    with pytest.raises(ValueError, match="ldm3d_ae_downsampling"):
        sbldm.build_generator("ldm3d", cfg(volume_shape=(16, 16, 10)))
    with pytest.raises(ValueError, match="power of two"):
        cfg(ldm3d_ae_downsampling=3)


# -- the losses go down on a fixed tiny batch ----------------------------------------------------

def _fixed_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 2, 16, 16, 8, generator=g) * 2 - 1
    x[:, 1] = torch.where(x[:, 1] > 0.6, 1.0, -1.0)
    return x


def test_lsgan_discriminator_and_generator_objectives_decrease():
    from sbldm.training.objectives import discriminator_loss, generator_loss

    gan = build("lsgan3d")
    g, d = gan.generator, gan.discriminator
    x = _fixed_batch()
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    real_y, fake_y = torch.ones(2), torch.zeros(2)
    with torch.no_grad():
        fake = g(z)
    opt = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.5, 0.999))
    losses = []
    for _ in range(6):
        loss = discriminator_loss(d, x, fake, real_y, fake_y)["d_loss"]
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.7 * losses[0], losses
    d.eval()                                    # a fixed discriminator for the generator's steps
    d.requires_grad_(False)
    opt = torch.optim.Adam(g.parameters(), lr=5e-3, betas=(0.5, 0.999))
    losses = []
    for _ in range(10):
        loss, _ = generator_loss(g, d, z, real_y)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.8 * losses[0], losses


def test_ldm3d_autoencoder_and_diffusion_losses_decrease():
    from sbldm.training.objectives import autoencoder_loss

    ldm = build("ldm3d")
    ae, unet = ldm.autoencoder, ldm.unet
    assert ae.encode(_fixed_batch()).mean.shape == (2, 2, 4, 4, 2)       # x4 in every axis
    x = _fixed_batch()
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        terms, _ = autoencoder_loss(ae, x, generator=torch.Generator().manual_seed(0))
        losses.append(float(terms["loss"].detach()))
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
    assert losses[-1] < 0.8 * losses[0], losses
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(2, 2, 4, 4, 2, generator=g), torch.randn(2, 2, 4, 4, 2, generator=g)
    t = torch.tensor([100, 700])
    a = ldm.scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1, 1)
    noisy = a.sqrt() * z0 + (1 - a).sqrt() * noise
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        loss = ((unet(noisy, t, None) - noise) ** 2).mean()
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(p.grad is None for p in unet.cond_embedding.parameters())   # unconditional: tau unused


# -- training through the shared loop ---------------------------------------------------------

def test_train_lsgan3d_resume_is_bit_identical(prepared, tmp_path):
    import sbldm
    from sbldm.generators.registry import train_generator

    c = cfg()
    full = train_generator(sbldm.build_generator("lsgan3d", c), c, prepared, tmp_path / "full", progress=False)
    assert train_generator("lsgan3d", c, prepared, tmp_path / "cut", progress=False, stop_at=2) is None
    assert json.loads((tmp_path / "cut" / "log.jsonl").read_text().splitlines()[-1])["step"] == 2
    resumed = train_generator("lsgan3d", c, prepared, tmp_path / "cut", progress=False)
    for a, b in zip(full.generator.state_dict().values(), resumed.generator.state_dict().values()):
        assert torch.equal(a, b)
    for f in ("log.jsonl", "loss_curve.png", "run.json", "checkpoints/last.pt", "model/generator.json"):
        assert (tmp_path / "full" / f).is_file(), f
    log = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and {"g_loss", "d_loss", "d_real", "d_fake"} <= set(log[0])
    run = json.loads((tmp_path / "full" / "run.json").read_text())
    assert run["stage"] == "lsgan3d" and run["steps"] == 4
    np.testing.assert_array_equal(sample(sbldm.load_generator(tmp_path / "full")).images, sample(full).images)


@pytest.mark.parametrize("disc", [False, True])
def test_train_ldm3d_end_to_end(prepared, tmp_path, disc):
    import sbldm
    from sbldm.generators.registry import train_generator

    c = cfg(ldm3d_ae_discriminator=disc)
    gen = train_generator("ldm3d", c, prepared, tmp_path, progress=False)
    assert (tmp_path / "discriminator").is_dir() == disc
    ae_run = json.loads((tmp_path / "autoencoder" / "run.json").read_text())
    unet_run = json.loads((tmp_path / "unet" / "run.json").read_text())
    assert ae_run["discriminator"] is disc and ae_run["downsampling"] == 4
    log = [json.loads(line) for line in (tmp_path / "autoencoder" / "log.jsonl").read_text().splitlines()]
    assert ("d_loss" in log[0]) is disc
    # the latent scale is the global std of the training posterior means, as SBLDM's
    from sbldm.generators.ldm3d import encode_means

    std = float(encode_means(gen.autoencoder, prepared.images, prepared.masks).astype(np.float64).std())
    assert gen.latent_std == pytest.approx(std, rel=1e-5) and unet_run["latent_std"] == pytest.approx(std, rel=1e-5)
    loaded = sbldm.load_generator(tmp_path)                # the training folder finds model/
    assert loaded.latent_std == gen.latent_std and (loaded.discriminator is not None) is disc
    s = sample(loaded)
    assert s.images.shape == (2, 16, 16, 8)
    np.testing.assert_array_equal(s.images, sample(gen).images)
    # a diffusers pipeline folder: the latent scale in the autoencoder's config, the
    # discriminator a component only when there is one
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert index["_class_name"] == "LDM3D" and index["volume_shape"] == [16, 16, 8]
    assert (index["discriminator"][1] == "Discriminator3D") is disc
    ae_config = json.loads((tmp_path / "model" / "autoencoder" / "config.json").read_text())
    assert ae_config["scaling_factor"] == pytest.approx(1 / std, rel=1e-5)


def test_a_3d_ldm_folder_of_the_old_layout_is_refused_by_name(tmp_path):
    from sbldm.generators.common import write_marker
    from sbldm.generators.ldm3d import LDM3D

    write_marker(tmp_path, "ldm3d", volume_shape=[16, 16, 8], latent_std=0.7)
    with pytest.raises(ValueError, match="saved in the older layout that kept the latent scale in generator.json"):
        LDM3D.from_pretrained(tmp_path)
    write_marker(tmp_path, "lsgan3d")
    with pytest.raises(ValueError, match="'lsgan3d' generator, not 'ldm3d'"):
        LDM3D.from_pretrained(tmp_path)


# -- paper-preset sizes ------------------------------------------------------------------------------

def test_paper_parameter_counts():
    """Built on the CPU from the ``paper`` preset, no forward pass. 3D-LSGAN: exactly the
    authors' train_lsgan.py layer sizes (recomputed independently from that file's
    layer list). 3D-LDM: the design values of this architecture (authors' widths, x4)
    within 0.5%, and the autoencoder within 1% of the authors' 85.949M."""
    from sbldm.generators import ldm3d, lsgan3d
    from sbldm.generators.parameters import authors_lsgan_counts
    from sbldm.paper import AUTHORS_NOTEBOOK
    from sbldm.config import resolve

    paper = resolve("paper")
    gan = lsgan3d.LSGAN3D.from_config(paper).num_parameters()
    ref = authors_lsgan_counts()
    assert gan["generator"] == ref["generator"] == 118_005_858
    assert gan["discriminator"] == ref["discriminator"] == 44_644_033
    del gan
    ldm = ldm3d.LDM3D.from_config(paper).num_parameters()
    assert ldm["discriminator"] == 0 and ldm["total"] == ldm["sampling"]
    assert ldm["autoencoder"] == pytest.approx(85.78e6, rel=5e-3)
    assert ldm["autoencoder"] == pytest.approx(AUTHORS_NOTEBOOK["ldm3d_autoencoder"], rel=1e-2)
    assert ldm["unet"] == pytest.approx(137.66e6, rel=5e-3)


def test_parameter_table_rows_and_notes():
    from sbldm.generators.parameters import comparison_parameter_rows, parameter_notes

    rows = comparison_parameter_rows("paper")
    by = {(r["method"], r["component"].split(" (")[0]): r for r in rows}
    assert by[("3D-LSGAN", "total")]["paper_table1_M"] == 71
    assert by[("3D-LDM, as Table 1 counted", "total")]["paper_table1_M"] == 728
    assert by[("3D-LDM, as Table 1 counted", "total")]["authors_code_M"] == pytest.approx(728.25, abs=0.01)
    assert by[("3D-LDM, as Table 1 counted", "UNet")]["params_M"] == pytest.approx(539.16, rel=5e-3)
    notes = parameter_notes(rows)
    assert any("71M" in n for n in notes) and any("728M" in n for n in notes)


def test_train_sbldm_through_the_same_interface(prepared, tmp_path):
    import sbldm
    from sbldm.generators.registry import train_generator

    gen = train_generator("sbldm", cfg(), prepared, tmp_path, progress=False)
    for f in ("vae/run.json", "unet/run.json", "model/model_index.json", "model/generator.json"):
        assert (tmp_path / f).is_file(), f
    loaded = sbldm.load_generator(tmp_path)
    assert loaded.kind == "sbldm" and loaded.pipeline.train_features is not None
    a, b = sample(gen), sample(loaded)
    assert a.images.shape == (2, 16, 16, 8) and a.conditions.shape == (2, 9)
    np.testing.assert_array_equal(a.images, b.images)


def test_sbldm_samples_keep_the_requested_tumours_and_an_older_cache_recovers_them(prepared, tmp_path):
    """Table 2's quality filter needs the tumour each SBLDM volume was asked for: the sample
    cache stores it, and ``requested_conditions`` re-draws it from the batch seeds for a
    cache written without it."""
    from sbldm.evaluation import table1
    from sbldm.evaluation.sample_cache import batch_seed, cached_samples

    gen = build("sbldm")
    gen.pipeline.set_metadata(normalizer=prepared.normalizer, train_features=prepared.features)

    def fn(b, s):
        out = gen.generate(b, generator=torch.Generator().manual_seed(s), num_inference_steps=2)
        return out.images, out.masks, out.raw_conditions

    got = cached_samples(tmp_path / "s.npz", fn, 5, seed=3, batch_size=2, progress=False)
    assert got["conditions"].shape == (5, 9)
    np.testing.assert_allclose(table1.requested_conditions(gen, 5, 3, 2), got["conditions"])
    first = gen.generate(2, generator=torch.Generator().manual_seed(batch_seed(3, 0)), num_inference_steps=2)
    np.testing.assert_allclose(first.raw_conditions, got["conditions"][:2])
    np.testing.assert_allclose(prepared.normalizer.transform(first.raw_conditions), first.conditions, rtol=1e-5)
    assert not np.allclose(got["conditions"][0], got["conditions"][2])      # each batch its own requests


# -- the baselines of issue "Baselines that work": labels, the mask term, the checks ----------

@pytest.mark.parametrize("name", ("ldm3d", "lsgan3d"))
def test_baselines_of_the_regions_draw_label_maps_like_sbldm(name):
    from model_helpers import REGIONS

    gen = build(name, **REGIONS)
    s = sample(gen)
    assert s.labels is not None and s.labels.shape == (2, 16, 16, 8)
    assert set(np.unique(s.labels)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(s.masks, (s.labels > 0).astype(np.uint8))
    whole = sample(build(name))
    assert whole.labels is None                          # the paper's binary mask: no label map
    net = gen.autoencoder if name == "ldm3d" else gen.generator
    assert net.config.out_channels == 4


class _StubPosterior:
    def __init__(self, x):
        self.mean = x


class _StubAutoencoder(torch.nn.Module):
    """Encodes to the input itself and decodes it back, optionally with the tumour
    channels wiped (-1): a perfect and a tumour-blind decoder whose check is known."""

    def __init__(self, channels, blind=False):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.blind = blind
        self.config = type("C", (), {"in_channels": channels})()

    def encode(self, x):
        return _StubPosterior(x)

    def decode(self, z):
        z = z.clone()
        if self.blind:
            z[:, 1:] = -1
        return z


def test_reconstruction_check_on_decoders_with_known_answers(prepared):
    from sbldm.generators.ldm3d import check_reconstruction, reconstruction_check

    perfect = reconstruction_check(_StubAutoencoder(4), prepared.images, prepared.labels, n=3)
    assert perfect["n_volumes"] == 3
    assert perfect["wt_dice"] == perfect["tc_dice"] == perfect["et_dice"] == 1.0
    assert perfect["wt_empty_fraction"] == 0.0 and perfect["image_mae"] < 1e-6
    blind = reconstruction_check(_StubAutoencoder(4, blind=True), prepared.images, prepared.labels, n=3)
    assert blind["wt_dice"] == blind["tc_dice"] == blind["et_dice"] == 0.0 and blind["wt_empty_fraction"] == 1.0
    whole = reconstruction_check(_StubAutoencoder(2), prepared.images, prepared.masks, n=3)
    assert whole["wt_dice"] == 1.0 and "tc_dice" not in whole
    check_reconstruction(blind, 0.0, "here")                 # 0: report only
    check_reconstruction(perfect, 0.9, "here")
    with pytest.raises(RuntimeError, match=r"Dice 0.000 \(100% decoded empty\), below ldm3d_ae_min_dice=0.5"):
        check_reconstruction(blind, 0.5, "here")


def test_3d_ldm_stops_before_its_unet_when_the_autoencoder_draws_no_tumour(prepared, tmp_path):
    from model_helpers import REGIONS
    from sbldm.generators.registry import train_generator

    c = cfg(ldm3d_ae_min_dice=1.0, ldm3d_ae_mask_weight=1.0, **REGIONS)
    with pytest.raises(RuntimeError, match="ldm3d_ae_min_dice=1.0"):
        train_generator("ldm3d", c, prepared, tmp_path, progress=False)
    check = json.loads((tmp_path / "autoencoder" / "reconstruction_check.json").read_text())
    assert check["min_dice"] == 1.0 and 0 <= check["wt_dice"] < 1 and "et_dice" in check
    assert not (tmp_path / "unet").exists()
    log = [json.loads(line) for line in (tmp_path / "autoencoder" / "log.jsonl").read_text().splitlines()]
    assert "mask" in log[0]                                  # the mask term was trained
    run = json.loads((tmp_path / "autoencoder" / "run.json").read_text())
    assert "mask_weight" in run["loss_terms"] and run["tumour_labels"] == "regions"


def test_selection_score_ranks_collapse_and_empty_masks_behind_the_real_spread():
    from sbldm.evaluation.generation import mask_features
    from sbldm.generators.lsgan3d import SELECTION_MAX_EMPTY, selection_score

    grid = np.indices((16, 16, 8)).astype(float)
    rng = np.random.default_rng(0)
    masks = []
    for _ in range(12):
        c = rng.uniform([5, 5, 3], [11, 11, 5])
        r = rng.uniform(1.5, 4.0)
        masks.append((((grid - c[:, None, None, None]) ** 2).sum(0) <= r * r).astype(np.uint8))
    masks = np.array(masks)
    real = mask_features(masks)
    same = selection_score(real, masks)
    assert same["distance"] == pytest.approx(0.0, abs=1e-9) and same["rank"] == same["distance"]
    collapsed = selection_score(real, np.repeat(masks[:1], 12, 0))
    assert collapsed["distance"] > 0.3 and collapsed["rank"] > same["rank"]
    some_empty = masks.copy()
    some_empty[:6] = 0
    empty = selection_score(real, some_empty)
    assert empty["empty_fraction"] == 0.5 > SELECTION_MAX_EMPTY and empty["rank"] > collapsed["rank"]


def test_lsgan_checkpoint_selection_keeps_the_best_generator_and_resumes(prepared, tmp_path):
    import sbldm
    from sbldm.models.gan3d import LSGANGenerator3D
    from sbldm.generators.registry import train_generator

    c = cfg(lsgan_select_every=2, lsgan_select_samples=4, lsgan_steps=6)
    full = train_generator("lsgan3d", c, prepared, tmp_path / "full", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "full" / "selection.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    best = min(rows, key=lambda r: (r["rank"], r["step"]))
    kept = json.loads((tmp_path / "full" / "selected" / "selection.json").read_text())
    assert kept["step"] == best["step"]
    chosen = LSGANGenerator3D.from_pretrained(tmp_path / "full" / "selected")
    saved = sbldm.load_generator(tmp_path / "full").generator
    for a, b, d in zip(chosen.state_dict().values(), saved.state_dict().values(), full.generator.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, d)
    # cut after the first score and resumed: the same scores, the same kept generator
    assert train_generator("lsgan3d", c, prepared, tmp_path / "cut", progress=False, stop_at=3) is None
    resumed = train_generator("lsgan3d", c, prepared, tmp_path / "cut", progress=False)
    assert (tmp_path / "cut" / "selection.jsonl").read_text() == (tmp_path / "full" / "selection.jsonl").read_text()
    for a, b in zip(full.generator.state_dict().values(), resumed.generator.state_dict().values()):
        assert torch.equal(a, b)


def test_lsgan_stabilisers_change_training_and_the_discriminator_learns_at_its_own_rate(prepared, tmp_path):
    from sbldm.generators.registry import train_generator

    plain = train_generator("lsgan3d", cfg(), prepared, tmp_path / "plain", progress=False)
    c = cfg(lsgan_d_lr=1e-5, lsgan_instance_noise=0.3)
    stable = train_generator("lsgan3d", c, prepared, tmp_path / "stable", progress=False)
    ckpt = torch.load(tmp_path / "stable" / "checkpoints" / "last.pt", weights_only=False)
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == [c.lsgan_lr, 1e-5]
    assert any(not torch.equal(a, b) for a, b in zip(plain.generator.state_dict().values(),
                                                     stable.generator.state_dict().values()))
    with pytest.raises(ValueError, match="lsgan_d_lr"):
        cfg(lsgan_d_lr=0.0)
    with pytest.raises(ValueError, match="ldm3d_ae_min_dice"):
        cfg(ldm3d_ae_min_dice=1.5)


def test_baseline_ablation_rows_train_score_and_resume(prepared, tmp_path):
    from model_helpers import REGIONS
    from sbldm.experiments.baseline_ablation import autoencoder_rows, lsgan_rows

    c = cfg(lsgan_select_samples=4, **REGIONS)
    ae_rows = {"plain": {"ldm3d_ae_mask_weight": 0.0}, "masked": {"ldm3d_ae_mask_weight": 1.0}}
    rows = autoencoder_rows(c, prepared, tmp_path, ae_rows, n_check=3, progress=False)
    assert [r["row"] for r in rows] == ["plain", "masked"]
    for r in rows:
        assert r["n_volumes"] == 3 and 0 <= r["wt_dice"] <= 1 and 0 <= r["et_dice"] <= 1 and r["train_time_s"] > 0
    assert rows[0]["fields"] == "ldm3d_ae_mask_weight=0.0"
    gan = lsgan_rows(c, prepared, tmp_path, {"authors": {}, "slow D": {"lsgan_d_lr": 1e-5}}, select_every=2,
                     progress=False)
    assert [r["row"] for r in gan] == ["authors", "slow D"]
    for r in gan:
        assert r["best_step"] in (2, 4) and r["steps"] == 4 and 0 <= r["last_empty"] <= 1
    again = lsgan_rows(c, prepared, tmp_path, {"authors": {}}, select_every=2, progress=False)   # resumes: no retraining
    assert again[0]["best_distance"] == gan[0]["best_distance"]


class _FixedReconstruction(torch.nn.Module):
    """An autoencoder whose reconstruction is given: the loss's mask options are then the
    only thing that changes its mask term."""

    def __init__(self, recon):
        super().__init__()
        self.recon = recon

    def forward(self, x, sample_posterior=True, generator=None):
        return self.recon, type("P", (), {"kl": lambda self: torch.zeros(1)})()


def test_3d_ldm_autoencoder_loss_takes_the_nested_and_banded_mask_term_from_the_config():
    from sbldm.training.objectives import autoencoder_loss, autoencoder_loss_options, autoencoder_loss_words

    x = -torch.ones(1, 4, 16, 16, 16)                          # image + WT, TC, ET
    x[:, 1, 4:12, 4:12, 4:12] = 1                             # 512 voxels of tumour, oedema around a core
    x[:, 2, 6:10, 6:10, 6:10] = 1                             # a core of 64: half necrosis,
    x[:, 3, 6:10, 6:10, 6:8] = 1                              # half enhancing
    recon = x.clone()
    recon[:, 3] = x[:, 2]                                     # enhancing painted over the necrosis (32 voxels)
    recon[:, 1, 3:13, 3:13, 3:13] = 1                         # the whole tumour one voxel too large (488)
    plain = cfg(ldm3d_ae_mask_weight=1.0)
    nested = cfg(ldm3d_ae_mask_weight=1.0, ldm3d_ae_mask_nested=True, ldm3d_ae_mask_band=2)
    terms = {name: autoencoder_loss(_FixedReconstruction(recon), x, **autoencoder_loss_options(c))[0]["mask"].item()
             for name, c in (("plain", plain), ("nested", nested))}
    # by hand, errors of 2 per wrong voxel. Plain: per channel (inside + outside) / 2, the
    # outside being everything else: WT 488 wrong of 4096 - 512, TC none, ET 32 of 4096 - 32.
    assert terms["plain"] == pytest.approx((2 * 488 / 3584 / 2 + 0 + 2 * 32 / 4064 / 2) / 3)
    # nested with a 2-voxel band: WT (inside, its band of 12^3 - 8^3, the rest) / 3; TC's
    # ring (the oedema) is right; ET's ring is the necrosis, all 32 wrong.
    assert terms["nested"] == pytest.approx((2 * 488 / 1216 / 3 + 0 + 2 / 3) / 3)
    assert autoencoder_loss_words(nested).endswith("balanced mask L1 (nested, 2-voxel band)")
    assert "mask" not in autoencoder_loss_words(cfg(ldm3d_ae_mask_weight=0.0))
    with pytest.raises(ValueError, match="ldm3d_ae_mask_band"):
        cfg(ldm3d_ae_mask_band=-1)


def test_ablation_rows_are_chosen_by_name_and_merged_with_the_earlier_table(tmp_path):
    """`--rows` trains a subset; the table keeps the other rows it had, in the defined order,
    numbers read back as numbers, and rows no longer defined dropped."""
    from sbldm.experiments.baseline_ablation import AUTOENCODER_ROWS, merge_rows, select_rows
    from sbldm.tables import write_table

    chosen = select_rows(AUTOENCODER_ROWS, ["1000 steps"])
    assert list(chosen) == ["+ mask term nested, 2-voxel band, widths 16-32-32, 1000 steps"]
    assert chosen[next(iter(chosen))]["ldm3d_ae_steps"] == 1000
    assert select_rows(AUTOENCODER_ROWS, None) == AUTOENCODER_ROWS
    with pytest.raises(SystemExit, match="no such row"):
        select_rows(AUTOENCODER_ROWS, ["no row has this"])
    # every mask row states its own nested / band choice, so the preset's cannot leak in
    assert all("ldm3d_ae_mask_nested" in f for f in AUTOENCODER_ROWS.values() if f["ldm3d_ae_mask_weight"] > 0)

    order = list(AUTOENCODER_ROWS)
    old = [{"row": order[0], "steps": 300, "wt_dice": 0.0, "fields": "a"},
           {"row": order[2], "steps": 300, "wt_dice": 0.59, "fields": "b"},
           {"row": "a row since removed", "steps": 300, "wt_dice": 0.9, "fields": "c"}]
    write_table(old, tmp_path / "t")
    new = [{"row": order[2], "steps": 500, "wt_dice": 0.58, "fields": "b"},
           {"row": order[-1], "steps": 1000, "wt_dice": 0.71, "fields": "d"}]
    merged = merge_rows(tmp_path / "t.csv", new, order)
    assert [r["row"] for r in merged] == [order[0], order[2], order[-1]]
    assert merged[0]["steps"] == 300.0 and merged[0]["wt_dice"] == 0.0 and merged[0]["fields"] == "a"
    assert merged[1]["steps"] == 500 and merged[1]["wt_dice"] == 0.58
    assert merge_rows(tmp_path / "missing.csv", new, order) == new


def test_a_kept_sample_set_is_extended_to_more_volumes_not_drawn_again(tmp_path):
    """Asking for more volumes of the same set draws only the missing batches, and gives
    what a fresh draw of that many would; a set that does not end on a batch boundary, or
    that was drawn with another seed, is drawn again."""
    from sbldm.evaluation.sample_cache import batch_seed, cached_samples

    calls = []

    def fn(b, s):
        calls.append(s)
        rng = np.random.default_rng(s)          # + b: like SBLDM's requests, a volume depends on its batch's size
        return (rng.normal(size=(b, 2, 2, 2)) + b).astype(np.float32), np.zeros((b, 2, 2, 2), np.uint8)

    four = cached_samples(tmp_path / "s.npz", fn, 4, seed=3, batch_size=2, meta={"m": 1}, progress=False)
    assert calls == [batch_seed(3, 0), batch_seed(3, 2)]
    calls.clear()
    six = cached_samples(tmp_path / "s.npz", fn, 6, seed=3, batch_size=2, meta={"m": 1}, progress=False)
    assert calls == [batch_seed(3, 4)]                                    # only the missing batch
    fresh = cached_samples(tmp_path / "fresh.npz", fn, 6, seed=3, batch_size=2, meta={"m": 1}, progress=False)
    np.testing.assert_array_equal(six["images"], fresh["images"])
    np.testing.assert_array_equal(six["images"][:4], four["images"])
    assert len(six["seconds"]) == 3
    calls.clear()
    assert cached_samples(tmp_path / "s.npz", fn, 6, seed=3, batch_size=2, meta={"m": 1}, progress=False)["images"].shape[0] == 6
    assert calls == []                                                    # kept as it is now
    odd = cached_samples(tmp_path / "odd.npz", fn, 3, seed=3, batch_size=2, meta={"m": 1}, progress=False)
    assert calls[-2:] == [batch_seed(3, 0), batch_seed(3, 2)]             # a whole last batch, cut to 1
    np.testing.assert_array_equal(odd["images"], fresh["images"][:3])     # so a set is a prefix of any larger one
    calls.clear()
    cached_samples(tmp_path / "odd.npz", fn, 6, seed=3, batch_size=2, meta={"m": 1}, progress=False)
    assert calls == [batch_seed(3, 0), batch_seed(3, 2), batch_seed(3, 4)]   # 3 ends mid-batch: drawn again
    calls.clear()
    cached_samples(tmp_path / "s.npz", fn, 8, seed=4, batch_size=2, meta={"m": 1}, progress=False)
    assert len(calls) == 4                                                # another seed: another set
