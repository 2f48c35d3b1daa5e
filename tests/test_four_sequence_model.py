"""SBLDM of several sequences: the model space carries every sequence before the tumour
channels and gives them back; the slice VAE, its loss, the latents and the pipeline follow
the sequences the config names, and a FLAIR-only split is refused by a four-sequence config."""

import dataclasses

import numpy as np
import pytest
import torch

from model_helpers import REGIONS, make_prepared, tiny_cfg
from sbldm.data import cohort

FOUR = ("t1n", "t1c", "t2w", "t2f")


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    """The tiny prepared cohort with four sequences: three transforms of the FLAIR (each
    distinct, so a channel mix-up shows) and the FLAIR last, as BraTS orders them."""
    root = make_prepared(tmp_path_factory.mktemp("four"))
    train = cohort.load_prepared(root, "train")
    im = train.images
    seqs = np.stack([-im, 0.5 * im, np.clip(im + 0.3, -1, 1), im], axis=1).astype(np.float32)
    return dataclasses.replace(train, sequences=seqs, modalities=FOUR)


def test_the_model_space_stacks_the_sequences_before_the_tumour_and_gives_them_back():
    rng = np.random.default_rng(0)
    labels = np.zeros((8, 8, 4), np.uint8)
    labels[2:6, 2:6, 1:3] = 2
    labels[3:5, 3:5, 1:3] = 3
    labels[3, 3, 1] = 1
    seqs = rng.uniform(-1, 1, (4, 8, 8, 4)).astype(np.float32)
    x = cohort.to_model_space(seqs, labels, "regions")
    assert x.shape == (7, 8, 8, 4)
    np.testing.assert_array_equal(x[:4], seqs)
    np.testing.assert_array_equal(x[4] > 0, labels > 0)                   # WT
    np.testing.assert_array_equal(x[5] > 0, (labels == 1) | (labels == 3))  # TC
    np.testing.assert_array_equal(x[6] > 0, labels == 3)                  # ET
    image, mask, back = cohort.from_model_space(x, with_labels=True, image_channels=4)
    np.testing.assert_array_equal(image, seqs)
    np.testing.assert_array_equal(mask, labels > 0)
    np.testing.assert_array_equal(back, labels)
    # a batch keeps its channel axis; one sequence keeps the paper's (x, y, z) image
    batch = cohort.from_model_space(np.stack([x, x]), image_channels=4)[0]
    assert batch.shape == (2, 4, 8, 8, 4)
    one = cohort.to_model_space(seqs[3], labels, "whole")
    assert one.shape == (2, 8, 8, 4) and cohort.from_model_space(one)[0].shape == (8, 8, 4)
    assert cohort.tumour_labels_of(7, 4) == "regions" and cohort.tumour_labels_of(5, 4) == "whole"
    with pytest.raises(ValueError, match="7 model-space channels with 1 image channel"):
        cohort.tumour_labels_of(7)
    with pytest.raises(ValueError, match="differ in shape"):
        cohort.to_model_space(seqs[:, :6], labels, "whole")


def test_slices_of_several_sequences_carry_each_sequence_in_order(four):
    ds = cohort.SliceDataset(four.sequences, four.labels, tumour_labels="regions")
    assert ds.image_channels == 4 and len(ds) == len(four) * four.labels.shape[-1]
    item = ds[5]
    v, s = item["volume_index"], item["slice_index"]
    assert item["x"].shape == (7, *four.labels.shape[1:3])
    np.testing.assert_array_equal(item["x"][:4], four.sequences[v, :, :, :, s])
    np.testing.assert_array_equal(item["x"][4] > 0, four.labels[v, :, :, s] > 0)
    with pytest.raises(ValueError, match=r"\(N, S, x, y, z\) images of S sequences"):
        cohort.SliceDataset(four.sequences[:, :, :-1], four.labels, tumour_labels="regions")


def test_the_tumour_term_reads_the_channels_after_the_images():
    """The balanced mask L1 of a 4-sequence batch equals the one computed on the same tumour
    channels behind a single image channel (the images do not enter it)."""
    from sbldm.training.objectives import balanced_mask_l1

    g = torch.Generator().manual_seed(0)
    x = torch.rand((2, 7, 8, 8), generator=g) * 2 - 1
    x[:, 4:] = torch.where(x[:, 4:] > 0.3, 1.0, -1.0)
    recon = torch.rand((2, 7, 8, 8), generator=g) * 2 - 1
    for nested, band in ((False, 0), (True, 1)):
        many = balanced_mask_l1(recon, x, nested=nested, band=band, image_channels=4)
        one = balanced_mask_l1(recon[:, 3:], x[:, 3:], nested=nested, band=band, image_channels=1)
        assert torch.allclose(many, one)
        other_images = recon.clone()
        other_images[:, :4] = 0
        assert torch.allclose(balanced_mask_l1(other_images, x, nested=nested, band=band, image_channels=4), many)


def test_a_vae_of_four_sequences_names_them_and_an_old_vae_reads_as_flair(tmp_path):
    from sbldm.models.vae import SliceVAE, build_vae

    cfg = tiny_cfg(**REGIONS, modalities=list(FOUR))
    vae = build_vae(cfg.vae, cfg.tumour_labels, cfg.modalities)
    assert (vae.config.in_channels, vae.image_channels, vae.modalities, vae.tumour_labels) == (7, 4, FOUR, "regions")
    vae.save_pretrained(tmp_path / "v")
    back = SliceVAE.from_pretrained(tmp_path / "v")
    assert back.modalities == FOUR and back.image_channels == 4
    flair = build_vae(cfg.vae, "whole", ["flair"])                     # the paper's VAE: FLAIR, named t2f
    assert (flair.config.in_channels, flair.modalities) == (2, ("t2f",))
    assert SliceVAE(in_channels=4, out_channels=4).modalities == ("t2f",)   # a config saved before the field
    with pytest.raises(ValueError, match="match no tumour representation"):
        SliceVAE(in_channels=4, out_channels=4, modalities=FOUR)


def test_four_sequences_train_encode_and_sample_every_sequence(four, tmp_path):
    """A few steps of each stage on the four-sequence split: the pipeline returns every
    sequence, with the FLAIR as its image; a FLAIR-only split is refused by name."""
    from sbldm.diffusion.latents import encode_dataset, reconstruct_volumes
    from sbldm.training.trainer import model_images, train_pipeline, train_vae

    cfg = tiny_cfg(**REGIONS, modalities=list(FOUR), vae_steps=2, diffusion_steps=2)
    flair_only = dataclasses.replace(four, sequences=None, modalities=())
    with pytest.raises(ValueError, match=r"asks for the sequences \('t1n', 't1c', 't2w', 't2f'\).*prepared with"):
        train_vae(cfg, flair_only, tmp_path / "refused", progress=False)
    vae = train_vae(cfg, four, tmp_path / "vae", progress=False)
    assert vae.modalities == FOUR
    images = model_images(cfg, four)
    assert images.shape == (len(four), 4, *four.labels.shape[1:])
    rec_images, rec_masks, rec_labels = reconstruct_volumes(vae, images[:2], four.labels[:2])
    assert rec_images.shape == (2, 4, *four.labels.shape[1:]) and rec_labels.shape == four.labels[:2].shape
    with pytest.raises(ValueError, match=r"\(N, 4, x, y, z\) images of 4 sequences"):
        reconstruct_volumes(vae, four.images[:2], four.labels[:2])
    latents = encode_dataset(vae, images, four.labels, progress=False)
    pipe = train_pipeline(cfg, vae, latents, four, tmp_path / "unet", progress=False)
    out = pipe(num_volumes=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.sequences.shape == (2, 4, *four.labels.shape[1:]) and out.modalities == FOUR
    np.testing.assert_array_equal(out.images, out.sequences[:, 3])      # the FLAIR is the image
    assert out.masks.shape == out.labels.shape == (2, *four.labels.shape[1:])
    # each generated case a BraTS 2023 folder that the project's own loader reads back
    import nibabel as nib

    from model_helpers import assert_brats_folders_read_back

    written = assert_brats_folders_read_back(out, tmp_path / "cases")
    assert [p.name for p, _ in written] == ["BraTS-SAMPLE-00000-000-t2f.nii.gz", "BraTS-SAMPLE-00001-000-t2f.nii.gz"]
    # the steering panel shows every sequence the pipeline makes and saves them all
    from sbldm.report.steer import TumourSteering

    steer = TumourSteering(pipe, steps=2, bf16=False)
    steer.generate()
    titles = [ax.get_title() for ax in steer.figure.axes]
    assert titles[-4:] == ["T1, axial", "T1ce, axial", "T2, axial", "FLAIR, axial"] and len(titles) == 8
    (flair, seg), = steer.save(tmp_path / "steered")
    case, = cohort.find_cases(tmp_path / "steered", modalities=FOUR)
    assert flair.parent.name == case.case_id == "BraTS-STEERED-00000-000" and seg.name.endswith("-seg.nii.gz")
    np.testing.assert_allclose(np.asarray(nib.load(dict(case.sequences)["t1c"]).dataobj), steer.last.sequences[0, 1],
                               atol=1e-6)


def test_the_segmenter_reads_every_sequence_or_the_flair_alone(four):
    """``inputs`` and ``sample_inputs`` give the segmenter what it reads; augmentation moves
    the sequences and the tumour together; the training sets and the cached results' keys
    follow; a one-sequence sample set cannot feed a four-channel segmenter."""
    from sbldm.segmentation import table2

    cfg = tiny_cfg(**REGIONS, modalities=list(FOUR), seg_augment_factor=2)
    flair = cfg.replace(seg_sequences=("flair",))
    assert table2.inputs(four, cfg).shape == (len(four), 4, *four.labels.shape[1:])
    np.testing.assert_array_equal(table2.inputs(four, flair), four.images)          # the FLAIR, (N, x, y, z)
    np.testing.assert_array_equal(table2.inputs(four, tiny_cfg(**REGIONS)), four.images)   # a FLAIR-only chain
    np.testing.assert_array_equal(table2.inputs(four, cfg.replace(seg_sequences=("t1c", "flair"))),
                                  four.sequences[:, [1, 3]])
    with pytest.raises(ValueError, match="prepare it again with modalities"):
        table2.inputs(dataclasses.replace(four, sequences=None, modalities=()), cfg)
    samples = {"images": four.images, "masks": four.masks, "labels": four.labels, "conditions": four.features,
               "sequences": four.sequences}
    assert table2.sample_inputs("SBLDM", samples, cfg).shape == four.sequences.shape
    one = {**samples, "sequences": None}
    np.testing.assert_array_equal(table2.sample_inputs("3D-LDM", one, flair), four.images)
    with pytest.raises(table2.SyntheticSetError, match="3D-LDM: the sample set holds one sequence"):
        table2.sample_inputs("3D-LDM", one, cfg)
    # augmentation: a tumour painted bright in every sequence stays on the tumour in every sequence
    masks = (four.labels[:2] > 0).astype(np.uint8)
    painted = np.where(masks[:, None] > 0, 1.0, -1.0).repeat(4, axis=1).astype(np.float32)
    images, aug_masks = table2.augment(painted, masks, 2, seed=0)
    assert images.shape == (4, 4, *masks.shape[1:]) and np.array_equal(images[:2], painted)
    for k in (2, 3):
        for s in range(4):
            bright, tumour = images[k, s] > 0, aug_masks[k] > 0
            assert 2 * (bright & tumour).sum() / (bright.sum() + tumour.sum()) > 0.8
    sets, _ = table2.training_sets(four, {"SBLDM (DDIM)": samples}, cfg)
    assert sets["real"][0].shape[1] == 4 and sets["real + SBLDM"][0].shape == (2 * len(four), 4, *masks.shape[1:])
    fsets, _ = table2.training_sets(four, {"SBLDM (DDIM)": samples}, flair)
    assert fsets["real + SBLDM"][0].shape == (2 * len(four), *masks.shape[1:])
    test = dataclasses.replace(four)
    assert table2.case_key(sets["real"], test, cfg, 0, 5) != table2.case_key(fsets["real"], test, flair, 0, 5)


def test_reconstruction_and_appearance_are_read_sequence_by_sequence():
    """Errors put in by hand come out per sequence and region; each sequence's appearance is
    that sequence's own ``subregion_appearance``; the enhancing check against hand numbers."""
    from sbldm.evaluation.appearance import sequence_appearance, subregion_appearance, within_real_spread
    from sbldm.evaluation.reconstruction import sequence_reconstruction_rows

    rng = np.random.default_rng(0)
    labels = np.zeros((2, 16, 16, 12), np.uint8)
    labels[:, 4:10, 4:10, 3:9] = 2
    labels[:, 5:9, 5:9, 4:8] = 3
    labels[:, 6:8, 6:8, 5:7] = 1
    seqs = rng.uniform(-0.5, 0.5, (2, 2, 16, 16, 12)).astype(np.float32)
    rec = seqs.copy()
    rec[:, 0][labels == 3] += 0.2                     # T1ce: the enhancing tumour off by 0.2
    rec[:, 0][labels == 2] += 0.1                     # and the oedema by 0.1
    rec[:, 1] += 0.05                                 # FLAIR: everywhere by 0.05
    rows = sequence_reconstruction_rows(seqs, rec, ("t1c", "flair"), labels)
    by = {(r["sequence"], r["metric"]): r for r in rows}
    assert by[("T1ce", "enhancing: mean |error|")]["mean"] == pytest.approx(0.2, abs=1e-6)
    assert by[("T1ce", "oedema: mean |error|")]["mean"] == pytest.approx(0.1, abs=1e-6)
    assert by[("T1ce", "necrosis: mean |error|")]["mean"] == pytest.approx(0.0, abs=1e-7)
    assert all(by[("FLAIR", f"{r}: mean |error|")]["mean"] == pytest.approx(0.05, abs=1e-6)
               for r in ("necrosis", "oedema", "enhancing"))
    assert by[("FLAIR", "PSNR (dB), per volume")]["n"] == 2
    with pytest.raises(ValueError, match=r"\(N, 2, x, y, z\)"):
        sequence_reconstruction_rows(seqs[:, :1], rec[:, :1], ("t1c", "flair"), labels)
    brain = np.where(np.indices(labels.shape[1:]).sum(0) > 2, 0.2, -1.0).astype(np.float32)
    vols = np.stack([np.stack([brain + 0.5 * (labels[v] == 3), brain - 0.3 * (labels[v] > 0)]) for v in range(2)])
    app = sequence_appearance(vols, labels, ("t1c", "flair"))
    assert list(app) == ["t1c", "t2f"]
    assert app["t1c"] == subregion_appearance(vols[:, 0], labels) and app["t2f"] == subregion_appearance(vols[:, 1], labels)
    real = [{"median_z_enhancing": v} for v in (0.0, 1.0, 2.0, 3.0, 4.0)]     # quartiles 1 and 3
    assert within_real_spread([{"median_z_enhancing": 2.5}, {"median_z_enhancing": 1.5}], real)["inside"]
    out = within_real_spread([{"median_z_enhancing": 3.5}, {"median_z_enhancing": float("nan")}], real)
    assert (out["generated"], out["real_q25"], out["real_q75"], out["inside"]) == (3.5, 1.0, 3.0, False)
