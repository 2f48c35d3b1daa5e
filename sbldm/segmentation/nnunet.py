"""The ``nnunet`` segmentation backend: the real nnU-Net v2, driven from Python.

``train_and_predict(train_images, train_masks, test_images, cfg, work_dir)`` does what
the authors did by hand (``docs/paper_vs_code.md``, "Segmentation (Table 2)":
``nnUNetv2_train 211 3d_fullres all -tr nnUNetTrainerNoDA``) and hands back sbldm
arrays, like the ``fast`` backend:

1. export the cases with :func:`sbldm.data.cohort.export_nnunet` under ``work_dir/nnUNet_raw``;
2. ``nnUNetv2_plan_and_preprocess -c 3d_fullres --verify_dataset_integrity``;
3. on CPU (or when asked), a narrow copy of the plans (``features_per_stage`` 8, 16, ...
   capped at 80; ``docs/machine_notes.md``, "nnU-Net v2 on a CPU") under the plans name
   ``sbldmNarrowPlans``, which reads the same preprocessed data;
4. ``nnUNetv2_train 3d_fullres FOLD`` with ``sbldmTrainer`` (nnU-Net's default data
   augmentation, as the paper's text) or ``sbldmTrainerNoDA`` (none, as the authors'
   code), per ``cfg.seg_nnunet_augmentation``; these subclasses of the stock trainers
   (``sbldm/_nnunet_trainer``, found through ``nnUNet_extTrainer``) only change the
   epoch / iteration counts asked for (``cfg.seg_nnunet_epochs`` /
   ``seg_nnunet_iterations``; None keeps nnU-Net's 1000 x 250) and seed the run;
5. ``nnUNetv2_predict`` on the test images, read back as (N, x, y, z) uint8 masks.

Each step runs in a subprocess (``python -m sbldm.segmentation._nnunet_launch``, which keeps a broken
optional timm/torchvision from killing nnU-Net's trainer lookup), with ``nnUNet_raw``,
``nnUNet_preprocessed`` and ``nnUNet_results`` pointing into ``work_dir`` in that
subprocess's environment only. Its output goes to ``work_dir/logs/<step>.log``; a failing
step raises :class:`NnUNetError` with the log's tail.

The model folder nnU-Net writes is kept, so ``predict_images(result, images)`` segments
other images (e.g. synthetic ones) without training again. One ``work_dir`` holds one trained model:
give each seed / training set its own.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Sequence

import numpy as np

from sbldm.config import Config
from sbldm.paths import REPO_ROOT

INSTALL_HINT = "install the nnunet extra: pip install -e .[nnunet]"
CONFIGURATION = "3d_fullres"
STOCK_PLANS = "nnUNetPlans"
NARROW_PLANS = "sbldmNarrowPlans"
#: nnU-Net's widths with the batch fixed by ``seg_nnunet_batch_size`` (the narrow plan takes it too)
FIXED_BATCH_PLANS = "sbldmFixedBatchPlans"
TRAINERS = {True: "sbldmTrainer", False: "sbldmTrainerNoDA"}          # keyed by augmentation
STOCK_TRAINERS = {True: "nnUNetTrainer", False: "nnUNetTrainerNoDA"}  # what they equal when not shortened
DEFAULT_DATASET_ID = 211   # the authors' id for 100 real + 100 synthetic
DEFAULT_NAME = "sbldm"
LOG_TAIL_LINES = 60


class NnUNetError(RuntimeError):
    """An nnU-Net step failed; the message holds the command and the tail of its log."""


def available() -> bool:
    """Whether nnunetv2 is installed (without importing it)."""
    return importlib.util.find_spec("nnunetv2") is not None


def require() -> None:
    """Raise ImportError with the install hint when nnunetv2 is missing."""
    if not available():
        raise ImportError(f"the nnunet segmentation backend needs nnunetv2, which is not installed; {INSTALL_HINT}")


def trainer_dir() -> Path:
    from sbldm.segmentation._nnunet_trainer import TRAINER_DIR

    return TRAINER_DIR


# -- layout ------------------------------------------------------------------------------

def paths(work_dir: str | os.PathLike) -> dict[str, Path]:
    """nnU-Net's three folders and sbldm's log folder under ``work_dir``."""
    w = Path(work_dir).resolve()
    return {"raw": w / "nnUNet_raw", "preprocessed": w / "nnUNet_preprocessed",
            "results": w / "nnUNet_results", "logs": w / "logs"}


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{int(dataset_id):03d}_{name}"


def model_folder(work_dir, dataset_id: int, name: str, trainer: str, plans: str) -> Path:
    return paths(work_dir)["results"] / dataset_folder_name(dataset_id, name) / f"{trainer}__{plans}__{CONFIGURATION}"


def parse_folds(fold) -> list[str]:
    """``"all"`` -> ["all"]; ``"3"`` or 3 -> ["3"]; ``"5fold"`` -> ["0", ..., "4"];
    ``"0,2"`` -> ["0", "2"]. Predicting with several folds ensembles them (nnU-Net)."""
    text = str(fold).strip().lower()
    if text in ("5fold", "cv", "0-4"):
        return [str(i) for i in range(5)]
    folds = [f.strip() for f in text.split(",") if f.strip()]
    if not folds or any(f != "all" and not f.isdigit() for f in folds) or ("all" in folds and len(folds) > 1):
        raise ValueError(f"seg_nnunet_fold={fold!r}: use 'all', a fold number, a comma list of numbers or '5fold'")
    return folds


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def environment(work_dir, *, device: str = "cpu", threads: int | None = None, seed: int | None = None,
                epochs: int | None = None, iterations: int | None = None,
                val_iterations: int | None = None, final_validation: bool = True) -> dict[str, str]:
    """The environment of an nnU-Net subprocess: a copy of ``os.environ`` (not changed)
    with the run's folders, the trainer folder and sbldm's trainer settings."""
    p = paths(work_dir)
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("SBLDM_NNUNET_")]:
        del env[key]
    env.update(nnUNet_raw=str(p["raw"]), nnUNet_preprocessed=str(p["preprocessed"]),
               nnUNet_results=str(p["results"]), nnUNet_extTrainer=str(trainer_dir()),
               SBLDM_NNUNET_FINAL_VALIDATION="1" if final_validation else "0",
               PYTHONUNBUFFERED="1")
    # ``python -m sbldm.segmentation._nnunet_launch`` must find this very package.
    root = str(REPO_ROOT)
    env["PYTHONPATH"] = os.pathsep.join([root] + [q for q in env.get("PYTHONPATH", "").split(os.pathsep) if q])
    if device == "cpu":
        env["nnUNet_n_proc_DA"] = "0"   # data augmentation in the main process (2-core machines)
        env["nnUNet_compile"] = "f"
    for key, value in (("SBLDM_NNUNET_THREADS", threads), ("SBLDM_NNUNET_SEED", seed),
                       ("SBLDM_NNUNET_EPOCHS", epochs), ("SBLDM_NNUNET_ITERATIONS", iterations),
                       ("SBLDM_NNUNET_VAL_ITERATIONS", val_iterations)):
        if value is not None:
            env[key] = str(int(value))
    if threads is not None:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[key] = str(int(threads))
    return env


def run_step(step: str, entry: str, args: Sequence[str], env: dict, log_path: Path,
             verbose: bool = False) -> float:
    """Run ``python -m sbldm.segmentation._nnunet_launch ENTRY ARGS`` with ``env``; its output goes to
    ``log_path`` (and to stdout when ``verbose``). Returns the wall time in seconds;
    raises NnUNetError with the log's tail on failure."""
    cmd = [sys.executable, "-m", "sbldm.segmentation._nnunet_launch", entry, *map(str, args)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", bufsize=1)
        try:
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip("\n"))
                if verbose:
                    print(line, end="", flush=True)
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise NnUNetError(
            f"nnU-Net step '{step}' failed (exit status {rc}) after {seconds:.0f} s\n"
            f"command: {' '.join(cmd)}\nfull log: {log_path}\n"
            f"--- last {len(tail)} lines ---\n" + "\n".join(tail))
    return seconds


# -- steps -------------------------------------------------------------------------------

def _case_ids(ids, n: int, prefix: str) -> list[str]:
    ids = [f"{prefix}_{i:03d}" for i in range(n)] if ids is None else [str(i) for i in ids]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} {prefix} ids for {n} volumes")
    if len(set(ids)) != n:
        raise ValueError(f"{prefix} ids must be unique")
    return ids


def _as_volumes(images, what: str, channels: bool = False) -> np.ndarray:
    """``images`` as an array (N, x, y, z); with ``channels`` also (N, S, x, y, z), S sequences."""
    images = np.asarray(images)
    if images.ndim != 4 and not (channels and images.ndim == 5):
        raise ValueError(f"{what} must be (N, x, y, z){' or (N, S, x, y, z)' if channels else ''}, "
                         f"got shape {images.shape}")
    return images


def _spatial(images: np.ndarray) -> tuple:
    """(N, x, y, z) of (N, x, y, z) or (N, S, x, y, z) images."""
    return images.shape[:1] + images.shape[-3:]


def _write_channels(folder: Path, case_id: str, image) -> None:
    """One case's image as nnU-Net inputs ``{case}_0000`` .. ``{case}_000{S-1}``."""
    from sbldm.io import save_nifti

    image = np.asarray(image, np.float32)
    for k, channel in enumerate(image if image.ndim == 4 else image[None]):
        save_nifti(folder / f"{case_id}_{k:04d}.nii.gz", channel)


def channel_names(modalities) -> list[str]:
    """nnU-Net's ``channel_names`` of the sequences ``modalities`` (``cfg.modalities``):
    T1, T1ce, T2, FLAIR (every one z-scored by nnU-Net, as for BraTS)."""
    from sbldm.data.cohort import SEQUENCE_NAMES, sequence_names

    return [SEQUENCE_NAMES[m] for m in sequence_names(modalities)]


MARKER = ".sbldm_nnunet"


def _clear_dataset(work_dir, dataset_id: int, overwrite: bool | None) -> None:
    """Remove an earlier run's ``Dataset{id}_*`` folders from ``work_dir``: always with
    ``overwrite=True``, never with False, and with None only if sbldm made ``work_dir``
    (its marker file is there), so a re-run replaces its own run but no one else's."""
    w = Path(work_dir)
    found = [d for key in ("raw", "preprocessed", "results") if paths(w)[key].is_dir()
             for d in paths(w)[key].glob(f"Dataset{int(dataset_id):03d}_*")]
    if overwrite is None:
        overwrite = (w / MARKER).is_file()
    if found and not overwrite:
        raise FileExistsError(
            f"{w} already holds nnU-Net dataset {int(dataset_id)} ({', '.join(map(str, found))}); "
            f"use a fresh work_dir or pass overwrite=True")
    for d in found:
        shutil.rmtree(d)
    w.mkdir(parents=True, exist_ok=True)
    (w / MARKER).write_text("made by sbldm.segmentation.nnunet; its nnU-Net datasets are replaced on re-runs\n")


def export(work_dir, train_images, train_masks, test_images=None, *, dataset_id: int = DEFAULT_DATASET_ID,
           name: str = DEFAULT_NAME, train_ids=None, test_ids=None, test_masks=None,
           overwrite: bool | None = None, labels: str = "whole", channels=("FLAIR",)) -> dict:
    """Write the nnU-Net raw dataset; returns ``{dataset_folder, test_folder, train_ids, test_ids}``.

    Images: (N, x, y, z), or (N, S, x, y, z) with the S sequences named by ``channels``
    (``channel_names``). Test images go to ``imagesTs`` (with ``labelsTs`` when ``test_masks`` are given).
    ``labels``: "whole" (masks written binary) or "regions" (sbldm label maps, declared as the
    nested BraTS regions WT, TC, ET for nnU-Net's region-based training:
    ``sbldm.data.cohort.NNUNET_LABELS``)."""
    from sbldm.data.cohort import export_nnunet

    train_images = _as_volumes(train_images, "train_images", channels=True)
    train_masks = _as_volumes(train_masks, "train_masks")
    if _spatial(train_images) != train_masks.shape:
        raise ValueError(f"train images {train_images.shape} and masks {train_masks.shape} differ in shape")
    train_ids = _case_ids(train_ids, len(train_images), "train")
    test_images = None if test_images is None else _as_volumes(test_images, "test_images", channels=True)
    n_test = 0 if test_images is None else len(test_images)
    test_ids = _case_ids(test_ids, n_test, "test")
    if set(train_ids) & set(test_ids):
        raise ValueError(f"train and test ids overlap: {sorted(set(train_ids) & set(test_ids))[:5]}")
    if test_masks is not None:
        test_masks = _as_volumes(test_masks, "test_masks")
        if test_images is None or test_masks.shape != _spatial(test_images):
            raise ValueError("test_masks must match test_images in shape")
    _clear_dataset(work_dir, dataset_id, overwrite)
    raw = paths(work_dir)["raw"]
    target = (lambda m: np.asarray(m, np.uint8)) if labels == "regions" else (lambda m: (m > 0).astype(np.uint8))
    cases = [(c, img, target(m)) for c, img, m in zip(train_ids, train_images, train_masks)]
    test_cases = [] if test_masks is None else [
        (c, img, target(m)) for c, img, m in zip(test_ids, test_images, test_masks)]
    folder = export_nnunet(raw, dataset_id, name, cases, test_cases, labels=labels, channel_name=list(channels))
    if test_images is not None and test_masks is None:
        for c, img in zip(test_ids, test_images):
            _write_channels(folder / "imagesTs", c, img)
    return {"dataset_folder": folder, "test_folder": folder / "imagesTs", "train_ids": train_ids,
            "test_ids": test_ids}


def plan_and_preprocess(work_dir, dataset_id: int = DEFAULT_DATASET_ID, *, env: dict | None = None,
                        num_processes: int = 1, verbose: bool = False) -> float:
    """nnU-Net's fingerprint, plan and ``3d_fullres`` preprocessing with its dataset
    integrity check. Returns the wall time."""
    env = environment(work_dir) if env is None else env
    n = str(int(num_processes))
    return run_step("plan_and_preprocess", "plan_and_preprocess",
                    ["-d", str(int(dataset_id)), "-c", CONFIGURATION, "-np", n, "-npfp", n,
                     "--verify_dataset_integrity"],
                    env, paths(work_dir)["logs"] / "plan_and_preprocess.log", verbose)


def narrow_features(n_stages: int, base: int = 8, cap: int = 80) -> list[int]:
    """``base * 2**i`` capped at ``cap``: nnU-Net's 32..320 divided by 4."""
    return [min(base * 2 ** i, cap) for i in range(n_stages)]


def write_plan_copy(work_dir, dataset_id: int = DEFAULT_DATASET_ID, name: str = DEFAULT_NAME,
                    base: int = 8, cap: int = 80, plans_name: str = NARROW_PLANS,
                    batch_size: int | None = None, narrow: bool = True) -> Path:
    """Copy ``nnUNetPlans.json`` to ``{plans_name}.json`` with narrow ``features_per_stage``
    in every configuration (``narrow=False`` keeps nnU-Net's widths) and, given
    ``batch_size``, that batch for ``3d_fullres`` instead of the planned one (same patch
    size, same preprocessed data)."""
    from sbldm.io import atomic_write_json

    folder = paths(work_dir)["preprocessed"] / dataset_folder_name(dataset_id, name)
    src = folder / f"{STOCK_PLANS}.json"
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found: run plan_and_preprocess first")
    plans = json.loads(src.read_text())
    plans["plans_name"] = plans_name
    for conf in plans["configurations"].values():
        kwargs = conf.get("architecture", {}).get("arch_kwargs", {})
        if narrow and "features_per_stage" in kwargs:
            kwargs["features_per_stage"] = narrow_features(len(kwargs["features_per_stage"]), base, cap)
    if batch_size is not None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        plans["configurations"][CONFIGURATION]["batch_size"] = int(batch_size)
    dst = folder / f"{plans_name}.json"
    atomic_write_json(dst, plans)
    return dst


def read_plan(work_dir, dataset_id: int, name: str, plans_name: str) -> dict:
    """The ``3d_fullres`` patch size, batch size and widths nnU-Net planned."""
    plans = json.loads((paths(work_dir)["preprocessed"] / dataset_folder_name(dataset_id, name)
                        / f"{plans_name}.json").read_text())
    conf = plans["configurations"][CONFIGURATION]
    return {"patch_size": list(conf["patch_size"]), "batch_size": int(conf["batch_size"]),
            "features_per_stage": list(conf["architecture"]["arch_kwargs"]["features_per_stage"]),
            "spacing": list(conf["spacing"])}


def train(work_dir, dataset_id: int = DEFAULT_DATASET_ID, *, fold: str = "all", trainer: str = TRAINERS[True],
          plans_name: str = STOCK_PLANS, device: str = "cpu", env: dict | None = None,
          verbose: bool = False) -> float:
    """``nnUNetv2_train DATASET 3d_fullres FOLD -tr TRAINER -p PLANS -device DEVICE``."""
    env = environment(work_dir, device=device) if env is None else env
    return run_step(f"train_fold_{fold}", "train",
                    [str(int(dataset_id)), CONFIGURATION, str(fold), "-tr", trainer, "-p", plans_name,
                     "-device", device],
                    env, paths(work_dir)["logs"] / f"train_fold_{fold}.log", verbose)


def predict(work_dir, input_folder, output_folder, dataset_id: int = DEFAULT_DATASET_ID, *,
            folds: Sequence[str] = ("all",), trainer: str = TRAINERS[True], plans_name: str = STOCK_PLANS,
            device: str = "cpu", tta: bool = True, env: dict | None = None, verbose: bool = False) -> float:
    """``nnUNetv2_predict`` (sequential: ``-npp 0 -nps 0``) of every ``*_0000.nii.gz`` in
    ``input_folder`` into ``output_folder``. Returns the wall time."""
    env = environment(work_dir, device=device) if env is None else env
    args = ["-i", str(input_folder), "-o", str(output_folder), "-d", str(int(dataset_id)),
            "-c", CONFIGURATION, "-f", *map(str, folds), "-tr", trainer, "-p", plans_name,
            "-device", device, "-npp", "0", "-nps", "0", "--disable_progress_bar"]
    if not tta:
        args.append("--disable_tta")
    return run_step("predict", "predict", args, env, paths(work_dir)["logs"] / "predict.log", verbose)


def read_predictions(output_folder, case_ids: Sequence[str], shape=None,
                     labels: str = "whole") -> tuple[np.ndarray, list[Path]]:
    """(N, x, y, z) uint8 masks (``labels="whole"``) or label maps (``"regions"``) of
    ``{case}.nii.gz`` in ``output_folder``, in ``case_ids`` order."""
    from sbldm.data.cohort import read_nifti

    files = [Path(output_folder) / f"{c}.nii.gz" for c in case_ids]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise NnUNetError(f"nnU-Net wrote no prediction for {len(missing)} case(s), e.g. {missing[0]}")
    read = (lambda a: np.rint(a).astype(np.uint8)) if labels == "regions" else (lambda a: (a > 0).astype(np.uint8))
    masks = np.stack([read(read_nifti(f)[0]) for f in files])
    if shape is not None and masks.shape[1:] != tuple(shape):
        raise NnUNetError(f"predictions have shape {masks.shape[1:]}, the test images {tuple(shape)}")
    return masks, files


# -- the whole run -------------------------------------------------------------------------

def train_and_predict(train_images, train_masks, test_images, cfg: Config, work_dir, seed: int = 0, *,
                      test_masks=None, train_ids=None, test_ids=None,
                      dataset_id: int = DEFAULT_DATASET_ID, name: str = DEFAULT_NAME,
                      augmentation: bool | None = None, narrow: bool | None = None,
                      fold: str | None = None, epochs: int | None = None, iterations: int | None = None,
                      batch_size: int | None = None,
                      device: str | None = None, threads: int | None = None, tta: bool | None = None,
                      final_validation: bool | None = None, overwrite: bool | None = None,
                      labels: str | None = None, verbose: bool = False) -> dict:
    """Train nnU-Net v2 on (train_images, train_masks) and segment test_images.

    Arrays follow sbldm's convention: images (N, x, y, z) float in [-1, 1] — or
    (N, S, x, y, z), the sequences of ``cfg.modalities`` as nnU-Net's input channels —, masks
    (N, x, y, z) binary, or label maps with ``labels="regions"`` (nnU-Net then trains the
    nested regions WT, TC, ET, as it trains BraTS, and predicts label maps). Keyword
    arguments left at None come from ``cfg``: ``labels`` (``tumour_labels``),
    ``augmentation`` (``seg_nnunet_augmentation``: nnU-Net's default augmentation, or
    none as ``nnUNetTrainerNoDA``), ``narrow`` (``seg_nnunet_narrow``; None = narrow plans
    on CPU only), ``fold`` (``seg_nnunet_fold``), ``epochs`` / ``iterations``
    (``seg_nnunet_epochs`` / ``seg_nnunet_iterations``; None = nnU-Net's 1000 x 250).
    ``batch_size`` (default ``cfg.seg_nnunet_batch_size``; None = nnU-Net's plan, which
    grows with the number of training volumes) fixes the ``3d_fullres`` batch.
    ``device`` defaults to cuda when available; ``threads`` (torch threads of the nnU-Net
    processes) to this process's torch thread count. ``final_validation`` (nnU-Net's
    prediction of the validation cases after training) defaults to off for fold ``all``,
    where those are the training cases. ``tta`` is nnU-Net's mirroring at inference
    (default: on, as nnU-Net, except on CPU where its 8 passes per volume cost ~4 s per
    64x64x32 volume; the no-augmentation trainer never mirrors).

    ``overwrite``: None replaces an earlier run in ``work_dir`` only if sbldm made it.

    Returns a dict: ``predictions`` (N, x, y, z) uint8, ``pred_paths``, ``test_ids``,
    ``metrics`` (per-case Dice/IoU/HD95 when ``test_masks`` are given, else None), the
    settings used (``trainer``, ``stock_trainer``, ``plans``, ``narrow``, ``augmentation``,
    ``folds``, ``epochs``, ``iterations_per_epoch``, ``val_iterations_per_epoch``,
    ``patch_size``, ``batch_size``, ``features_per_stage``, ``device``, ``threads``,
    ``seed``, ``tta``, ``final_validation``), ``paths`` and ``timings`` (seconds per step,
    and ``total``).
    """
    require()
    t_start = time.perf_counter()
    train_images = _as_volumes(train_images, "train_images", channels=True)
    test_images = _as_volumes(test_images, "test_images", channels=True)
    n_channels = train_images.shape[1] if train_images.ndim == 5 else 1
    if (test_images.shape[1] if test_images.ndim == 5 else 1) != n_channels:
        raise ValueError(f"train images carry {n_channels} sequence(s) and test images {test_images.shape}")
    if n_channels == 1:
        names = ["FLAIR"]
    elif n_channels == len(cfg.modalities):
        names = channel_names(cfg.modalities)
    else:
        raise ValueError(f"images of {n_channels} sequences for the config's {len(cfg.modalities)} {tuple(cfg.modalities)}")
    augmentation = cfg.seg_nnunet_augmentation if augmentation is None else bool(augmentation)
    labels = cfg.tumour_labels if labels is None else labels
    device = default_device() if device is None else device
    narrow = cfg.seg_nnunet_narrow if narrow is None else narrow
    narrow = (device == "cpu") if narrow is None else bool(narrow)
    folds = parse_folds(cfg.seg_nnunet_fold if fold is None else fold)
    epochs = cfg.seg_nnunet_epochs if epochs is None else epochs
    iterations = cfg.seg_nnunet_iterations if iterations is None else iterations
    val_iterations = None if iterations is None else max(1, round(iterations / 5))  # nnU-Net: 50 per 250
    if final_validation is None:
        final_validation = folds != ["all"]
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    tta = (device != "cpu") if tta is None else bool(tta)
    trainer = TRAINERS[augmentation]
    batch_size = cfg.seg_nnunet_batch_size if batch_size is None else batch_size
    plans_name = NARROW_PLANS if narrow else (FIXED_BATCH_PLANS if batch_size is not None else STOCK_PLANS)
    env = environment(work_dir, device=device, threads=threads, seed=seed, epochs=epochs,
                      iterations=iterations, val_iterations=val_iterations,
                      final_validation=final_validation)
    timings = {}

    t0 = time.perf_counter()
    exported = export(work_dir, train_images, train_masks, test_images, dataset_id=dataset_id, name=name,
                      train_ids=train_ids, test_ids=test_ids, test_masks=test_masks, overwrite=overwrite,
                      labels=labels, channels=names)
    timings["export"] = time.perf_counter() - t0
    timings["plan_and_preprocess"] = plan_and_preprocess(work_dir, dataset_id, env=env, verbose=verbose)
    if plans_name != STOCK_PLANS:
        write_plan_copy(work_dir, dataset_id, name, plans_name=plans_name, batch_size=batch_size, narrow=narrow)
    plan = read_plan(work_dir, dataset_id, name, plans_name)
    timings["train"] = 0.0
    for f in folds:
        timings[f"train_fold_{f}"] = train(work_dir, dataset_id, fold=f, trainer=trainer, plans_name=plans_name,
                                           device=device, env=env, verbose=verbose)
        timings["train"] += timings[f"train_fold_{f}"]
    out = Path(work_dir).resolve() / "predictions"
    if out.exists():
        shutil.rmtree(out)
    timings["predict"] = predict(work_dir, exported["test_folder"], out, dataset_id, folds=folds, trainer=trainer,
                                 plans_name=plans_name, device=device, tta=tta, env=env, verbose=verbose)
    pred, files = read_predictions(out, exported["test_ids"], test_images.shape[-3:], labels)
    metrics = None
    if test_masks is not None:
        from sbldm.segmentation.fast import evaluate

        metrics = evaluate(pred > 0, np.asarray(test_masks) > 0, exported["test_ids"])
    timings["total"] = time.perf_counter() - t_start
    p = paths(work_dir)
    return {
        "predictions": pred, "pred_paths": files, "test_ids": exported["test_ids"],
        "train_ids": exported["train_ids"], "metrics": metrics,
        "labels": labels, "trainer": trainer, "stock_trainer": STOCK_TRAINERS[augmentation], "augmentation": augmentation,
        "plans": plans_name, "narrow": narrow, "configuration": CONFIGURATION, "folds": folds,
        "epochs": 1000 if epochs is None else int(epochs),
        "iterations_per_epoch": 250 if iterations is None else int(iterations),
        "val_iterations_per_epoch": 50 if val_iterations is None else int(val_iterations),
        **plan, "device": device, "threads": int(threads), "seed": seed, "tta": bool(tta and augmentation),
        "final_validation": bool(final_validation), "dataset_id": int(dataset_id),
        "dataset": dataset_folder_name(dataset_id, name),
        "paths": {**{k: v for k, v in p.items()}, "dataset_raw": exported["dataset_folder"],
                  "model": model_folder(work_dir, dataset_id, name, trainer, plans_name), "predictions": out},
        "timings": timings,
    }


def predict_images(run: dict, images, case_ids: Sequence[str] | None = None, tag: str = "extra",
                   verbose: bool = False) -> np.ndarray:
    """Segment more images with the model of a finished ``train_and_predict`` run
    (``run`` is its result), e.g. synthetic volumes; (N, x, y, z) uint8 masks or label maps,
    as the run was trained."""
    require()
    images = _as_volumes(images, "images", channels=True)
    ids = _case_ids(case_ids, len(images), "case")
    work_dir = run["paths"]["raw"].parent
    inputs, out = work_dir / f"inputs_{tag}", work_dir / f"predictions_{tag}"
    for folder in (inputs, out):
        if folder.exists():
            shutil.rmtree(folder)
    for c, img in zip(ids, images):
        _write_channels(inputs, c, img)
    env = environment(work_dir, device=run["device"], threads=run["threads"], seed=run["seed"])
    predict(work_dir, inputs, out, run["dataset_id"], folds=run["folds"], trainer=run["trainer"],
            plans_name=run["plans"], device=run["device"], tta=run["tta"], env=env, verbose=verbose)
    return read_predictions(out, ids, images.shape[-3:], run.get("labels", "whole"))[0]
