import os
import stat

import numpy as np
import pytest

from sbldm import io


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_the_users_umask_gives(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        io.atomic_write_json(tmp_path / "a.json", {"x": 1})
        io.atomic_save_npy(tmp_path / "a.npy", np.zeros(3))
        io.save_nifti(tmp_path / "a.nii.gz", np.zeros((2, 2, 2), np.float32))
    finally:
        os.umask(old)
    for name in ("a.json", "a.npy", "a.nii.gz"):
        assert _mode(tmp_path / name) == expected, name


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
