"""Tiny configurations and a tiny prepared cohort for the model tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY = dict(
    volume_shape=(16, 16, 8), n_train=4, n_test=2, tumour_labels="whole",   # the paper's mask; see REGIONS
    vae_channels=(8, 16), vae_latent_channels=2, vae_norm_groups=4, vae_slice_embedding_dim=8,
    vae_batch_size=4, vae_lr=1e-3, vae_empty_slice_keep=1.0, vae_flip_prob=0.2,
    unet_channels=(8, 16, 16), unet_layers_per_block=1, unet_norm_groups=4, unet_embed_dim=16,
    unet_time_proj_dim=8, unet_cond_hidden_dim=8, unet_mid_layers=1,
    diffusion_batch_size=2, diffusion_lr=1e-3, num_inference_steps=4,
)


#: TINY with tiny baselines (3D-LSGAN, 3D-LDM) trained in a few steps each, with the
#: authors' recipe unless a test asks for a remedy (the smoke preset turns them on)
BASELINES = dict(
    TINY,
    lsgan_latent_dim=16, lsgan_g_channels=16, lsgan_upsamplings=2, lsgan_d_channels=16, lsgan_d_layers=3,
    lsgan_batch_size=2, lsgan_steps=4,
    lsgan_d_lr=None, lsgan_instance_noise=0.0, lsgan_select_every=0, ldm3d_ae_mask_weight=0.0,
    ldm3d_ae_channels=(4, 8, 8), ldm3d_ae_latent_channels=2, ldm3d_ae_norm_groups=4, ldm3d_ae_lr=1e-3,
    ldm3d_ae_steps=3, ldm3d_disc_channels=8, ldm3d_disc_layers=3,
    ldm3d_unet_channels=(8, 16, 16), ldm3d_unet_layers_per_block=1, ldm3d_unet_norm_groups=4,
    ldm3d_unet_mid_layers=1, ldm3d_diffusion_lr=1e-3, ldm3d_diffusion_steps=3,
    vae_steps=2, diffusion_steps=2, checkpoint_every=2, log_every=1,
)


#: TINY with the BraTS sub-regions as the VAE's tumour channels (the smoke and small presets')
REGIONS = dict(tumour_labels="regions")


def tiny_cfg(**overrides):
    from sbldm.config import resolve

    return resolve("smoke", **{**TINY, **overrides})


def set_overrides(**overrides) -> list[str]:
    """``--set`` arguments of the CLI for TINY + overrides."""
    import json

    return [f"{k}={json.dumps(v)}" for k, v in {**TINY, **overrides}.items()]


def randomise_output(model, seed: int = 0, std: float = 0.1) -> None:
    """Give the zero-initialised output conv random weights, so outputs depend on inputs."""
    import torch

    conv = model.dec_conv_out if hasattr(model, "dec_conv_out") else model.conv_out
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * std)
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * std)


def write_brats(brats: Path, n_cases: int = 6, shape=(16, 16, 8), seed: int = 0, affine=None) -> Path:
    """``n_cases`` tiny cases in the BraTS 2023 layout (smooth image, one ball tumour each:
    oedema (2) around an enhancing shell (3) around a necrotic centre (1))."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")).astype(np.float32)
    for k in range(n_cases):
        cid = f"BraTS-GLI-{k:05d}-000"
        folder = brats / cid
        folder.mkdir(parents=True, exist_ok=True)
        centre = np.array([rng.uniform(5, s - 5) if s > 10 else s / 2 for s in shape])
        radius = rng.uniform(2.0, 3.5)
        d2 = ((grid - centre[:, None, None, None]) ** 2).sum(0)
        seg = (d2 <= radius ** 2).astype(np.uint8) * 2
        seg[d2 <= (0.7 * radius) ** 2] = 3
        seg[d2 <= (0.35 * radius) ** 2] = 1
        brain = np.exp(-((grid[0] - (shape[0] - 1) / 2) ** 2 + (grid[1] - (shape[1] - 1) / 2) ** 2) / (2.5 * shape[0]))
        image = 100 * brain + 80 * (seg > 0) + rng.normal(0, 3, shape)
        aff = np.eye(4) if affine is None else np.asarray(affine, float)
        nib.save(nib.Nifti1Image(image.astype(np.float32), aff), folder / f"{cid}-t2f.nii.gz")
        nib.save(nib.Nifti1Image(seg, aff), folder / f"{cid}-seg.nii.gz")
    return brats


def make_prepared(root: Path, n_cases: int = 6, shape=(16, 16, 8), seed: int = 0, affine=None) -> Path:
    """A prepared cohort of ``n_cases`` tiny volumes (``write_brats``) through the real
    loader path (BraTS 2023 layout on disk -> prepare_cohort)."""
    from sbldm.data.cohort import find_cases, prepare_cohort

    brats = write_brats(root / "brats", n_cases, shape, seed, affine)
    out = root / "prepared"
    prepare_cohort(find_cases(brats), out, shape, n_train=4, n_test=2, seed=seed, image_order=1, progress=False)
    return out


def assert_brats_folders_read_back(out, folder) -> list:
    """``out.save_nifti(folder)`` of an ``SBLDMOutput`` of several sequences wrote one BraTS
    2023 case folder per volume, which the project's own loader reads back: every sequence
    (in ``out.modalities`` order, the same voxels) and the label map. Returns what
    ``save_nifti`` returned."""
    import nibabel as nib

    from sbldm.data import cohort

    written = out.save_nifti(folder)
    cases = cohort.find_cases(folder, modalities=out.modalities)
    assert [c.case_id for c in cases] == [f"BraTS-SAMPLE-{k:05d}-000" for k in range(len(out.sequences))]
    for k, case in enumerate(cases):
        assert [m for m, _ in case.sequences] == list(out.modalities)
        for i, (_, path) in enumerate(case.sequences):
            np.testing.assert_allclose(np.asarray(nib.load(path).dataobj), out.sequences[k, i], atol=1e-6)
        back = cohort.load_case(case, out.labels.shape[1:], require_tumour=False)
        np.testing.assert_array_equal(back.labels, out.labels[k])
        assert back.sequences.shape == out.sequences.shape[1:]
    return written
