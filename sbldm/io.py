"""Writing files safely: every result, checkpoint and volume sbldm writes goes through here.

Writes are atomic (a temporary file in the target folder, then a rename), so a reader
or a killed run sees the old file or the new one, never half of one; the new file gets
the permissions the user's umask gives a newly created file (``mkstemp`` alone would
leave it readable by its owner only).
"""

from __future__ import annotations

import filecmp
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Give ``path`` the mode the user's umask gives a newly created file (for a file a
    library wrote through a private temporary file, which leaves it readable by its
    owner only)."""
    os.chmod(path, 0o666 & ~_umask())


# -- writing --------------------------------------------------------------------------

def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see the
    old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except PermissionError as e:
        raise PermissionError(f"cannot write {path}: its folder {path.parent} is not writable") from e
    try:
        follow_umask(tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except PermissionError as e:
            raise PermissionError(f"cannot write {path}: the file or its folder is read-only") from e
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path,)):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    import io as _io

    buf = _io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def save_model(model, directory: str | os.PathLike) -> bool:
    """``model.save_pretrained(directory)`` (a pipeline, a network, a generator), keeping
    every file whose bytes are already there untouched: written beside in a temporary
    sibling folder, only the files that differ are moved in (each by a rename). Saving a
    resumed, already finished model again then changes nothing, its files' times included,
    which the cached sample sets key on (``sbldm.evaluation.table1.sample_row``): a rerun
    does not redraw hours of samples. The folder a model was loaded from, which diffusers
    writes into its configs (``_name_or_path``), is left out: it names a place on one
    machine and would make a reloaded model's files differ. Files the save no longer
    writes are left alone. Returns True when a file was written."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.saving")
    if tmp.exists():
        shutil.rmtree(tmp)            # a killed earlier save
    try:
        model.save_pretrained(tmp)
        for f in tmp.rglob("*.json"):
            config = json.loads(f.read_text())
            if isinstance(config, dict) and config.pop("_name_or_path", None) is not None:
                f.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")   # diffusers' layout
        changed = False
        for f in sorted(q for q in tmp.rglob("*") if q.is_file()):
            target = directory / f.relative_to(tmp)
            if target.is_file() and filecmp.cmp(f, target, shallow=False):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, target)
            changed = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return changed


def save_nifti(path: str | os.PathLike, volume: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Write a 3D volume as NIfTI, atomically, with qform and sform both set to ``affine``
    (code 1, scanner; identity if none is given), so viewers agree on its geometry."""
    import nibabel as nib

    affine = np.eye(4) if affine is None else np.asarray(affine, np.float64)
    img = nib.Nifti1Image(volume, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    atomic_write_bytes(path, _nifti_bytes(img, str(path).endswith(".gz")))


def _nifti_bytes(img, compress: bool) -> bytes:
    import io

    raw = img.to_bytes()
    if not compress:
        return raw
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
        f.write(raw)
    return buf.getvalue()


def save_samples_nifti(out_dir, images, masks, prefix: str = "sample", affine=None,
                       labels=None) -> list[tuple[Path, Path]]:
    """Write each (image, mask) pair as ``{prefix}_{k:03d}_flair.nii.gz`` / ``..._seg.nii.gz``.
    With ``labels`` (label maps, sbldm's convention: 1 necrosis, 2 oedema, 3 enhancing, as
    BraTS 2023 writes them) the segmentation holds the label map instead of the binary mask."""
    out = Path(out_dir)
    paths = []
    segs = masks if labels is None else labels
    for k, (im, m) in enumerate(zip(images, segs)):
        pi, pm = out / f"{prefix}_{k:03d}_flair.nii.gz", out / f"{prefix}_{k:03d}_seg.nii.gz"
        save_nifti(pi, np.asarray(im, np.float32), affine)
        save_nifti(pm, np.asarray(m, np.uint8), affine)
        paths.append((pi, pm))
    return paths
