"""Slice VAE, conditioned 3D UNet, latents, metrics (tiny configs; paper-size counts)."""

import numpy as np
import pytest
import torch

from model_helpers import make_prepared, randomise_output, tiny_cfg


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("cohort"))


def _vae(**kw):
    from sbldm.models.vae import build_vae

    torch.manual_seed(0)
    cfg = tiny_cfg(**kw)
    m = build_vae(cfg.vae, cfg.tumour_labels)
    randomise_output(m)
    return m.eval()


def _unet(**kw):
    from sbldm.models.unet3d import latent_unet

    torch.manual_seed(0)
    m = latent_unet(tiny_cfg(**kw))
    randomise_output(m)
    return m.eval()


# -- VAE --------------------------------------------------------------------------------------

def test_vae_shapes():
    vae = _vae()
    x = torch.rand(3, 2, 16, 16) * 2 - 1
    pos = torch.tensor([0.0, 0.5, 1.0])
    post = vae.encode(x, pos)
    assert post.mean.shape == (3, 2, 8, 8)        # factor 2 for two widths, 2 latent channels
    rec, post2 = vae(x, pos, sample_posterior=False)
    assert rec.shape == x.shape
    assert vae.decode(post.mean, pos).shape == x.shape
    with pytest.raises(ValueError, match="divisible"):
        vae.encode(torch.zeros(1, 2, 15, 16), torch.zeros(1))
    with pytest.raises(ValueError, match="slice_pos"):
        vae.encode(x)


def test_slice_embedding_changes_decoder_and_switch_removes_it():
    on, off = _vae(), _vae(vae_slice_embedding=False)
    z = torch.randn(2, 2, 8, 8)
    a, b = on.decode(z, torch.tensor([0.0, 0.0])), on.decode(z, torch.tensor([0.2, 0.9]))
    assert not torch.allclose(a, b, atol=1e-6)
    # neighbouring slices get different embeddings too
    e = on._temb(torch.tensor([3 / 95, 4 / 95]), 2, z)
    assert not torch.allclose(e[0], e[1])
    names_on = {n for n, _ in on.named_parameters()}
    names_off = {n for n, _ in off.named_parameters()}
    assert any("pos_embedding" in n or "time_emb_proj" in n for n in names_on)
    assert not any("pos_embedding" in n or "time_emb_proj" in n for n in names_off)
    assert sum(p.numel() for p in off.parameters()) < sum(p.numel() for p in on.parameters())
    torch.testing.assert_close(off.decode(z, torch.tensor([0.0, 0.0])), off.decode(z, torch.tensor([0.2, 0.9])))
    torch.testing.assert_close(off.decode(z, None), off.decode(z, torch.tensor([0.3, 0.4])))


def test_vae_save_load_roundtrip(tmp_path):
    from sbldm.models.vae import SliceVAE

    vae = _vae()
    vae.save_pretrained(tmp_path / "vae")
    back = SliceVAE.from_pretrained(tmp_path / "vae").eval()
    assert list(back.config.block_out_channels) == list(vae.config.block_out_channels)
    x, pos = torch.rand(2, 2, 16, 16), torch.tensor([0.1, 0.7])
    torch.testing.assert_close(back(x, pos, sample_posterior=False)[0], vae(x, pos, sample_posterior=False)[0],
                               rtol=0, atol=0)


def test_vae_loss_decreases_on_a_tiny_overfit_case():
    from sbldm.models.vae import build_vae
    from sbldm.training.objectives import vae_loss

    torch.manual_seed(0)
    cfg = tiny_cfg()
    vae = build_vae(cfg.vae, cfg.tumour_labels)
    x = torch.rand(4, 2, 16, 16) * 2 - 1
    pos = torch.linspace(0, 1, 4)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for i in range(60):
        out = vae_loss(vae, x, pos, kl_weight=1e-6, generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_lpips_without_local_weights_is_refused(tmp_path):
    from sbldm.training.trainer import train_vae

    cfg = tiny_cfg(vae_lpips_weight=0.5)
    with pytest.raises(ValueError, match="vae_lpips_path"):
        train_vae(cfg, (np.zeros((1, 16, 16, 8), np.float32), np.zeros((1, 16, 16, 8), np.uint8)), tmp_path)


# -- UNet -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fusion", ["scale_shift", "add"])
def test_unet_shapes_condition_and_null(fusion):
    unet = _unet(unet_cond_fusion=fusion)
    z = torch.randn(2, 2, 8, 8, 8)
    t = torch.tensor([10, 900])
    c1, c2 = torch.rand(2, 9), torch.rand(2, 9)
    out = unet(z, t, c1)
    assert out.shape == z.shape
    assert not torch.allclose(out, unet(z, t, c2), atol=1e-6)          # the condition matters
    assert not torch.allclose(out, unet(z, torch.tensor([500, 20]), c1), atol=1e-6)  # so does time
    uncond = unet(z, t, None)
    torch.testing.assert_close(unet(z, t, c1, drop_cond=torch.tensor([True, True])), uncond)
    mixed = unet(z, t, c1, drop_cond=torch.tensor([True, False]))
    torch.testing.assert_close(mixed[1], out[1])
    torch.testing.assert_close(mixed[0], uncond[0])


def test_unet_odd_sizes_are_padded_and_cropped():
    unet = _unet()
    z = torch.randn(1, 2, 7, 9, 5)
    assert unet(z, 3, torch.rand(1, 9)).shape == z.shape


def test_unet_zero_initialised_output():
    from sbldm.models.unet3d import latent_unet

    unet = latent_unet(tiny_cfg())
    assert torch.count_nonzero(unet(torch.randn(1, 2, 8, 8, 8), 5, torch.rand(1, 9))) == 0


def test_unet_save_load_roundtrip(tmp_path):
    from sbldm.models.unet3d import ConditionedUNet3D

    unet = _unet(unet_cond_fusion="add")
    unet.save_pretrained(tmp_path / "unet")
    back = ConditionedUNet3D.from_pretrained(tmp_path / "unet").eval()
    assert back.config.cond_fusion == "add"
    z, c = torch.randn(1, 2, 8, 8, 8), torch.rand(1, 9)
    torch.testing.assert_close(back(z, 7, c), unet(z, 7, c), rtol=0, atol=0)


def test_unet_loss_decreases_on_a_tiny_overfit_case():
    from sbldm.models.unet3d import latent_unet

    torch.manual_seed(0)
    unet = latent_unet(tiny_cfg())
    g = torch.Generator().manual_seed(0)
    z, noise, c = torch.randn(2, 2, 8, 8, 8, generator=g), torch.randn(2, 2, 8, 8, 8, generator=g), torch.rand(2, 9)
    t = torch.tensor([100, 600])
    opt = torch.optim.AdamW(unet.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = ((unet(z + noise, t, c) - noise) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]


# -- paper sizes --------------------------------------------------------------------------------

def test_paper_parameter_counts():
    """The authors' code (``sbldm.paper.SBLDM_PARAMETERS``): VAE 27.08M; UNet 132.1M without
    embedding MLPs and projections, 135.2M with them (additive fusion)."""
    from sbldm.config import resolve
    from sbldm.models._common import count_parameters as n
    from sbldm.models.unet3d import latent_unet
    from sbldm.models.vae import build_vae
    from sbldm.paper import SBLDM_PARAMETERS as authors

    vae = build_vae(resolve("paper", vae_slice_embedding=False).vae, "whole")
    assert abs(n(vae) - authors["vae"]) / authors["vae"] < 0.02
    assert vae.downsampling_factor == 8 and vae.config.latent_channels == 6
    del vae
    unet = latent_unet(resolve("paper", unet_cond_fusion="add"))
    total = n(unet)
    assert abs(total - authors["unet_with_embeddings"]) / authors["unet_with_embeddings"] < 0.01
    assert abs(total - unet.embedding_parameters() - authors["unet"]) / authors["unet"] < 0.01
    del unet
    # the paper's scale-shift fusion only doubles the per-block projections
    unet = latent_unet(resolve("paper"))
    assert authors["unet_with_embeddings"] < n(unet) < 140e6


# -- latents and metrics ---------------------------------------------------------------------------

def test_encode_volumes_stacks_slices_in_depth(prepared, tmp_path):
    from sbldm.data.cohort import load_prepared
    from sbldm.diffusion.latents import encode_dataset, load_latents, save_latents
    from sbldm.models.vae import relative_positions

    train = load_prepared(prepared, "train")
    vae = _vae()
    lat = encode_dataset(vae, train.images, train.masks, batch_size=3, progress=False)
    assert lat.mean.shape == (4, 2, 8, 8, 8) and lat.std.shape == lat.mean.shape
    assert (lat.std > 0).all()
    assert lat.latent_std == pytest.approx(float(lat.mean.std()), rel=1e-5)
    # slice 5 of volume 1 is the posterior mean of that slice at its position
    from sbldm.data.cohort import to_model_space

    x = torch.from_numpy(to_model_space(train.images[1][:, :, 5], train.masks[1][:, :, 5]))[None]
    with torch.no_grad():
        mu = vae.encode(x, relative_positions(8, [5])).mean[0].numpy()
    np.testing.assert_allclose(lat.mean[1, :, :, :, 5], mu, atol=1e-5)
    save_latents(tmp_path / "lat", lat)
    back = load_latents(tmp_path / "lat")
    np.testing.assert_array_equal(back.mean, lat.mean)
    assert back.scaling_factor == pytest.approx(1 / lat.latent_std)


def test_metrics():
    from sbldm.metrics import dice, psnr, reconstruction_metrics, ssim

    rng = np.random.default_rng(0)
    a = rng.random((16, 16))
    assert psnr(a, a) == float("inf")
    assert psnr(a, np.clip(a + 0.1, 0, 1)) > psnr(a, np.clip(a + 0.3, 0, 1))
    assert psnr(np.zeros(4), np.full(4, 0.1)) == pytest.approx(20.0)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, rng.random((16, 16))) < 0.3
    m1 = np.zeros((4, 4), np.uint8)
    m1[:2] = 1
    m2 = np.zeros((4, 4), np.uint8)
    m2[1:3] = 1
    assert dice(m1, m2) == pytest.approx(0.5)
    assert dice(np.zeros(3), np.zeros(3)) == 1.0
    img = rng.random((2, 16, 16, 4)) * 2 - 1
    mask = np.zeros((2, 16, 16, 4), np.uint8)
    mask[:, 4:8, 4:8, 1] = 1
    r = reconstruction_metrics(img, mask, img, mask)
    assert r["dice"] == {"mean": 1.0, "std": 0.0, "n": 2}
    assert r["ssim"]["mean"] == pytest.approx(1.0) and r["ssim"]["n"] == 8


def test_import_sbldm_stays_light():
    import subprocess
    import sys

    code = "import sys, sbldm; assert 'torch' not in sys.modules and 'diffusers' not in sys.modules; print(sbldm.SliceVAE.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "SliceVAE"


def test_volume_encoding_is_the_stack_of_slice_encodings_and_decodes_back():
    from sbldm.models.vae import relative_positions

    vae = _vae().eval()
    g = torch.Generator().manual_seed(0)
    vol = torch.rand(2, 16, 16, 6, generator=g) * 2 - 1
    mean, std = vae.encode_volume(vol, chunk=4)                      # chunks of 4 and 2 slices
    assert mean.shape == (vae.config.latent_channels, 16 // vae.downsampling_factor,
                          16 // vae.downsampling_factor, 6) and (std > 0).all()
    with torch.no_grad():
        for k in (0, 5):                                              # slice k alone, told its own position
            post = vae.encode(vol[..., k][None], relative_positions(6)[k:k + 1])
            torch.testing.assert_close(mean[..., k], post.mean[0])
        dec = vae.decode_volume(mean, chunk=4)
        one = vae.decode(mean[..., 3][None], relative_positions(6)[3:4])[0]
    assert dec.shape == (2, 16, 16, 6)
    torch.testing.assert_close(dec[..., 3], one)
    with pytest.raises(ValueError, match="one \\(2, X, Y, D\\) volume"):
        vae.encode_volume(vol[None])


# -- the BraTS regions through the VAE and the pipeline ------------------------------------------

def test_a_regions_vae_carries_wt_tc_et_and_the_pipeline_returns_label_maps(prepared, tmp_path):
    """tumour_labels="regions": the VAE takes and returns (image, WT, TC, ET); encoding uses
    the label maps, reconstruction and sampling decode them back to nested label maps whose
    non-zero part is the whole-tumour mask, and NIfTI output holds the BraTS label values."""
    import nibabel as nib

    from model_helpers import REGIONS
    from sbldm.data.cohort import load_prepared, to_model_space
    from sbldm.diffusion.latents import encode_dataset, reconstruct_volumes
    from sbldm.diffusion.pipeline import SBLDMPipeline

    train = load_prepared(prepared, "train")
    assert set(np.unique(train.labels).tolist()) == {0, 1, 2, 3}        # the tiny cohort has every sub-region
    vae, whole = _vae(**REGIONS), _vae()
    assert (vae.config.in_channels, vae.config.out_channels, vae.tumour_labels) == (4, 4, "regions")
    assert whole.tumour_labels == "whole"
    with pytest.raises(ValueError, match=r"needs one \(4, X, Y, D\) volume \(regions"):
        vae.encode_volume(torch.from_numpy(to_model_space(train.images[0], train.labels[0], "whole")))
    lat = encode_dataset(vae, train.images, train.labels, batch_size=4, progress=False)
    assert lat.mean.shape == (4, 2, 8, 8, 8)
    # the label map changes the latent where a mask would not (TC and ET are encoded)
    no_core = np.where(train.labels > 0, 2, 0).astype(np.uint8)
    assert not np.allclose(encode_dataset(vae, train.images, no_core, progress=False).mean, lat.mean)
    images, masks, labels = reconstruct_volumes(vae, train.images[:2], train.labels[:2])
    assert labels.shape == masks.shape == (2, 16, 16, 8) and labels.dtype == np.uint8
    np.testing.assert_array_equal(masks, labels > 0)
    assert reconstruct_volumes(whole, train.images[:1], train.labels[:1])[2] is None
    pipe = SBLDMPipeline.from_components(tiny_cfg(**REGIONS), vae, _unet(), normalizer=train.normalizer,
                                         train_features=train.features, latent_std=lat.latent_std,
                                         affine=train.grid_affine)
    out = pipe(num_volumes=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.labels is not None and out.labels.shape == out.masks.shape
    np.testing.assert_array_equal(out.masks, out.labels > 0)
    assert set(np.unique(out.labels).tolist()) <= {0, 1, 2, 3}
    (img, seg), _ = out.save_nifti(tmp_path / "nifti")
    np.testing.assert_array_equal(np.asarray(nib.load(str(seg)).dataobj), out.labels[0])


def test_the_balanced_mask_term_weighs_a_missed_tumour_like_a_painted_background():
    from sbldm.training.objectives import balanced_mask_l1

    x = -torch.ones(2, 3, 10, 10)            # (image, two tumour channels)
    x[:, 0] = 0.3
    x[0, 1, 4, 4] = 1.0                      # channel 1: one tumour pixel in 200
    recon = x.clone()
    assert balanced_mask_l1(recon, x).item() == 0.0
    recon[:, 1:] = -1.0                      # a decoder that draws no tumour
    # channel 1: inside error 2, outside 0 -> 1.0; channel 2 has no region: outside error 0
    assert balanced_mask_l1(recon, x).item() == pytest.approx(0.5)
    assert (recon - x)[:, 1].abs().mean().item() == pytest.approx(2 / 200)   # what plain L1 charges for it
    recon[:, 2] = -0.5                       # a uniformly wrong background on the region-free channel
    assert balanced_mask_l1(recon, x).item() == pytest.approx(0.5 * (1.0 + 0.5))
    recon[0, 0] = 5.0                        # the image channel is not part of it
    assert balanced_mask_l1(recon, x).item() == pytest.approx(0.75)


def test_the_nested_mask_term_charges_an_enhancing_channel_that_covers_the_necrosis():
    """WT, TC, ET channels on a line of 103 voxels: tumour at 0-2, core at 0-1, enhancing at
    0, so voxel 1 is necrosis. A decoder drawing enhancing over the necrosis errs by 2 at one
    voxel of ET's 102 outside: balanced per channel that costs 0.5 * 2/102 on ET; nested, the
    necrosis is ET's ring inside the core, one of three classes: 2/3 on ET."""
    from sbldm.training.objectives import balanced_mask_l1

    x = -torch.ones(1, 4, 103)
    x[0, 0] = 0.1
    x[0, 1, :3] = 1.0                        # WT
    x[0, 2, :2] = 1.0                        # TC
    x[0, 3, :1] = 1.0                        # ET
    recon = x.clone()
    assert balanced_mask_l1(recon, x, nested=True).item() == 0.0
    recon[0, 3, 1] = 1.0                     # enhancing drawn over the necrosis
    assert balanced_mask_l1(recon, x).item() == pytest.approx(0.5 * 2 / 102 / 3)
    assert balanced_mask_l1(recon, x, nested=True).item() == pytest.approx(2 / 3 / 3)
    recon = x.clone()
    recon[0, 2, 2] = 1.0                     # the core drawn over the oedema: TC's ring inside WT
    assert balanced_mask_l1(recon, x, nested=True).item() == pytest.approx(2 / 3 / 3)
    recon = x.clone()
    recon[0, 1, 50] = 1.0                    # a stray tumour voxel in the background: WT has no ring
    assert balanced_mask_l1(recon, x, nested=True).item() == pytest.approx(0.5 * 2 / 100 / 3)


def test_the_vae_loss_adds_the_mask_term_only_when_weighted():
    from sbldm.training.objectives import vae_loss

    vae = _vae()
    x = -torch.ones(2, 2, 16, 16)
    x[:, 1, 4:8, 4:8] = 1.0
    g = lambda: torch.Generator().manual_seed(0)   # noqa: E731
    plain = vae_loss(vae, x, torch.zeros(2), generator=g())
    with_mask = vae_loss(vae, x, torch.zeros(2), generator=g(), mask_weight=2.0)
    assert "mask" not in plain and with_mask["mask"] > 0
    assert with_mask["loss"].item() == pytest.approx(plain["loss"].item() + 2.0 * with_mask["mask"].item(), rel=1e-6)


def test_a_slice_dataset_of_another_tumour_representation_is_refused(prepared, tmp_path):
    from model_helpers import REGIONS
    from sbldm.data.cohort import SliceDataset, load_prepared
    from sbldm.diffusion.latents import encode_volumes
    from sbldm.training.trainer import train_vae

    train = load_prepared(prepared, "train")
    ds = SliceDataset(train.images, train.labels, tumour_labels="whole")
    with pytest.raises(ValueError, match="tumour_labels='whole' but the config asks for 'regions'"):
        train_vae(tiny_cfg(**REGIONS, vae_steps=1), ds, tmp_path / "vae", progress=False)
    with pytest.raises(ValueError, match="binary whole-tumour masks"):
        encode_volumes(_vae(**REGIONS), train.images, train.masks, progress=False)


def test_the_band_charges_a_tumour_painted_too_large():
    """One tumour pixel in a 9x9 slice, painted as a 3x3 square: balanced inside vs outside
    charges the 8 extra pixels over 80 outside ones; with a 1-pixel band they are all of
    the band's 8 pixels, one class of three."""
    from sbldm.training.objectives import balanced_mask_l1

    x = -torch.ones(1, 2, 9, 9)
    x[0, 1, 4, 4] = 1.0
    recon = x.clone()
    recon[0, 1, 3:6, 3:6] = 1.0
    assert balanced_mask_l1(recon, x).item() == pytest.approx(0.5 * 16 / 80)
    assert balanced_mask_l1(recon, x, band=1).item() == pytest.approx(2 / 3)
    assert balanced_mask_l1(x, x, band=1).item() == 0.0
    assert balanced_mask_l1(recon[:, :, :, :, None].expand(1, 2, 9, 9, 1).contiguous(),
                            x[:, :, :, :, None].contiguous(), band=1).item() == pytest.approx(2 / 3)   # 3D alike
