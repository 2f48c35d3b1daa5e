import os
import stat

import numpy as np
import pytest

from sbldm import io


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_the_users_umask_gives(tmp_path, umask, expected):
    """Results, arrays, volumes and a saved model's weights alike (safetensors writes the
    weights through a private temporary file: 0600 unless sbldm sets the mode)."""
    from sbldm.models.unet3d import ConditionedUNet3D

    model = ConditionedUNet3D(in_channels=2, block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=4,
                              cond_hidden_dim=4, time_proj_dim=4, embed_dim=8, mid_layers=1)
    old = os.umask(umask)
    try:
        io.atomic_write_json(tmp_path / "a.json", {"x": 1})
        io.atomic_save_npy(tmp_path / "a.npy", np.zeros(3))
        io.save_nifti(tmp_path / "a.nii.gz", np.zeros((2, 2, 2), np.float32))
        model.save_pretrained(tmp_path / "model")
    finally:
        os.umask(old)
    for name in ("a.json", "a.npy", "a.nii.gz", "model/config.json", "model/diffusion_pytorch_model.safetensors"):
        assert _mode(tmp_path / name) == expected, name


def test_every_model_with_weights_saves_them_with_the_umask_mode():
    """The umask fix lives in one mixin: every sbldm model class that saves weights derives from it."""
    from diffusers.models.modeling_utils import ModelMixin

    from sbldm.diffusion.conditioner import TumourConditioner
    from sbldm.generators import common, ldm3d, lsgan3d
    from sbldm.models import unet3d, vae
    from sbldm.models._common import UmaskWeightsMixin

    classes = {obj for mod in (common, ldm3d, lsgan3d, unet3d, vae) for obj in vars(mod).values()
               if isinstance(obj, type) and issubclass(obj, ModelMixin) and obj.__module__.startswith("sbldm.")}
    assert {c.__name__ for c in classes} >= {"SliceVAE", "ConditionedUNet3D", "AutoencoderKL3D", "Discriminator3D",
                                             "LSGANGenerator3D"}
    assert all(issubclass(c, UmaskWeightsMixin) for c in classes - {TumourConditioner}), classes


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_named_in_the_error_not_the_temporary_file(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "keep.json").write_text("{}")
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match=str(folder / "new.json")):
            io.atomic_write_json(folder / "new.json", {})
    finally:
        folder.chmod(0o755)
    assert (folder / "keep.json").read_text() == "{}"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "t.json"
    io.atomic_write_json(target, {"old": True})
    with pytest.raises(TypeError):
        io.atomic_write_json(target, {"bad": object()})
    assert target.read_text().strip().endswith("}") and "old" in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_saved_volume_pairs_read_back_with_their_affine(tmp_path):
    import nibabel as nib

    aff = np.diag([-2.0, -2.0, 3.0, 1.0])
    paths = io.save_samples_nifti(tmp_path, np.zeros((2, 4, 4, 3), np.float32), np.ones((2, 4, 4, 3), np.uint8),
                                  affine=aff)
    assert len(paths) == 2
    img = nib.load(str(paths[1][1]))
    assert np.allclose(img.affine, aff) and img.get_fdata().sum() == 48
