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
