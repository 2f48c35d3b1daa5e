"""The slice VAE's reconstruction table (notebook 01, and the data-scarce regime's VAE
check): the rows of ``sbldm.metrics.reconstruction_metrics`` under their table names, and
the volume Dice of each decoded BraTS region."""

from __future__ import annotations

from sbldm.metrics import reconstruction_metrics
from sbldm.segmentation.brats_metrics import region_dice_rows


#: the row names of ``reconstruction_metrics``' entries in a reconstruction table
RECONSTRUCTION_NAMES = {"psnr": "PSNR (dB), per slice", "ssim": "SSIM, per slice", "dice": "mask Dice, tumour slices",
                        "dice_3d": "mask Dice, per volume (false-positive slices count)",
                        "psnr_3d": "PSNR (dB), per volume", "ssim_3d": "SSIM, per volume"}


def reconstruction_rows(images, masks, rec_images, rec_masks, labels=None, rec_labels=None,
                        only: tuple[str, ...] | None = None) -> list[dict]:
    """The rows ``{metric, mean, std, n}`` of a reconstruction table: the entries of
    ``reconstruction_metrics`` (``only`` picks some of them, by key), and, where both label
    maps are given (a VAE of the BraTS regions), the volume Dice of each decoded region
    (``sbldm.segmentation.brats_metrics.region_dice_rows``)."""
    m = reconstruction_metrics(images, masks, rec_images, rec_masks)
    keys = list(m) if only is None else list(only)
    unknown = [k for k in keys if k not in m]
    if unknown:
        raise ValueError(f"reconstruction_rows: unknown metric(s) {unknown}; known: {sorted(m)}")
    rows = [{"metric": RECONSTRUCTION_NAMES[k], "mean": m[k]["mean"], "std": m[k]["std"], "n": m[k]["n"]}
            for k in keys]
    if labels is not None and rec_labels is not None:
        rows += [{"metric": f"{r['region']} Dice, per volume", "mean": r["mean"], "std": r["std"], "n": r["n"]}
                 for r in region_dice_rows(rec_labels, labels)]
    return rows


def sequence_reconstruction_rows(sequences, rec_sequences, modalities, labels,
                                 region_sequences: tuple[str, ...] = ("t1c", "t2f")) -> list[dict]:
    """A VAE of several sequences, sequence by sequence: rows ``{sequence, metric, mean,
    std, n}`` of each sequence's PSNR and SSIM per volume (``reconstruction_metrics``), and
    for the sequences of ``region_sequences`` (T1ce, where the enhancing tumour shows, and
    FLAIR, where the oedema does) the mean absolute error inside each sub-region of the real
    label map (necrosis, oedema, enhancing; images in [-1, 1]), over the volumes that have it.
    ``sequences`` and ``rec_sequences``: (N, S, x, y, z) in ``modalities`` order (BraTS 2023
    names); ``labels``: the real label maps (N, x, y, z)."""
    import numpy as np

    from sbldm.data.cohort import SEQUENCE_NAMES, sequence_names
    from sbldm.data.tumour import LABEL_NAMES

    seqs, recs, labels = np.asarray(sequences), np.asarray(rec_sequences), np.asarray(labels)
    names = sequence_names(modalities)
    if seqs.shape != recs.shape or seqs.ndim != 5 or seqs.shape[1] != len(names) or \
            seqs.shape[:1] + seqs.shape[2:] != labels.shape:
        raise ValueError(f"sequences {seqs.shape} and reconstructions {recs.shape} must be (N, {len(names)}, x, y, z) "
                         f"with labels (N, x, y, z), got labels {labels.shape}")
    masks = (labels > 0).astype(np.uint8)
    rows = []
    for k, name in enumerate(names):
        m = reconstruction_metrics(seqs[:, k], masks, recs[:, k], masks)
        for key in ("psnr_3d", "ssim_3d"):
            rows.append({"sequence": SEQUENCE_NAMES[name], "metric": RECONSTRUCTION_NAMES[key], **m[key]})
        if name not in region_sequences:
            continue
        for value, region in LABEL_NAMES.items():
            err = [float(np.abs(recs[v, k] - seqs[v, k])[labels[v] == value].mean())
                   for v in range(len(labels)) if (labels[v] == value).any()]
            rows.append({"sequence": SEQUENCE_NAMES[name], "metric": f"{region}: mean |error|",
                         "mean": float(np.mean(err)) if err else float("nan"),
                         "std": float(np.std(err)) if err else float("nan"), "n": len(err)})
    return rows
