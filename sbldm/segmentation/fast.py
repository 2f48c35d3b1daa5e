"""Segmentation: the downstream task that synthetic (image, mask) pairs should help (paper §3.5).

The ``fast`` backend is a MONAI 3D U-Net trained with Dice + cross-entropy for a fixed
budget of optimiser steps on whole volumes (or random crops of ``seg_roi``), seeded, with
sliding-window inference. It is the default at ``smoke`` and ``small``; nnU-Net v2 is the
paper's backend (``sbldm.segmentation.nnunet``). Both take and give sbldm arrays: images (N, x, y, z)
in [-1, 1], and targets (N, x, y, z) that are either binary whole-tumour masks (``classes=2``,
the paper's task) or sbldm label maps (``classes=4``: 0 background, 1 necrosis, 2 oedema, 3
enhancing; multi-class softmax, the BraTS regions WT/TC/ET derived from the predicted map
where they are scored, ``sbldm.segmentation.brats_metrics``).

The same trained network also serves the evaluation (notebook 04): its Dice on synthetic
images against the synthetic masks (image-mask agreement), and its pooled bottleneck
activations as the feature space of the Fréchet distance.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from sbldm.config import Config, SegmentationConfig


#: output classes of the two segmentation tasks: the whole tumour, or sbldm's label maps
CLASSES = {"whole": 2, "regions": 4}


def build_unet(seg: SegmentationConfig, classes: int = 2, in_channels: int = 1):
    """A MONAI 3D U-Net: ``in_channels`` inputs (1: FLAIR; one per sequence), ``classes``
    outputs, widths ``seg.channels`` (``cfg.segmentation``)."""
    from monai.networks.nets import UNet

    ch = tuple(seg.channels)
    return UNet(spatial_dims=3, in_channels=int(in_channels), out_channels=int(classes), channels=ch,
                strides=(2,) * (len(ch) - 1), num_res_units=1, norm="instance")


def _check(images, masks, classes: int = 2):
    """(images as (N, S, x, y, z), masks): one sequence (N, x, y, z) gains its channel axis."""
    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim == 4:
        images = images[:, None]
    if images.ndim != 5 or masks.ndim != 4 or images.shape[:1] + images.shape[2:] != masks.shape:
        raise ValueError(f"images {images.shape} and masks {masks.shape} must be (N, x, y, z) both, or (N, S, x, y, z) "
                         "images of S sequences with (N, x, y, z) masks")
    if classes not in CLASSES.values():
        raise ValueError(f"classes must be 2 (whole tumour) or 4 (label maps), got {classes}")
    if masks.size and (masks.min() < 0 or masks.max() >= classes):
        kind = "binary masks" if classes == 2 else "label maps with values 0-3"
        raise ValueError(f"targets hold values {np.unique(masks)[:6].tolist()}; {classes} classes expect {kind}")
    return images, masks


def region_score(pred, target, classes: int) -> float:
    """The one number a learning curve follows: mean Dice over the cases of the whole
    tumour (``classes=2``), or of the mean over WT, TC and ET (``classes=4``, as BraTS ranks)."""
    if classes == 2:
        return float(np.mean([r["dice"] for r in evaluate(pred, target)]))
    from sbldm.segmentation.brats_metrics import region_dice_rows

    return float(np.mean([r["mean"] for r in region_dice_rows(pred, target)]))


@dataclass
class Segmenter:
    """A trained fast-backend network with its config; ``predict`` / ``features`` use it."""

    model: object
    cfg: Config
    losses: list
    curve: list = field(default_factory=list)
    classes: int = 2
    in_channels: int = 1

    def _roi(self, shape):
        return tuple(min(r, s) for r, s in zip(self.cfg.seg_roi, shape))

    def logits(self, images):
        import torch
        from monai.inferers import sliding_window_inference

        self.model.eval()
        out = []
        with torch.no_grad():
            for img in self._channels(images):
                x = torch.as_tensor(img)[None]
                with _autocast(self.cfg)():
                    lg = sliding_window_inference(x, self._roi(img.shape[1:]), 1, self.model, overlap=0.25)
                out.append(lg[0].float().numpy())
        return np.stack(out)

    def _channels(self, images) -> np.ndarray:
        """(N, S, x, y, z) float32 of (N, x, y, z) or (N, S, x, y, z) images, S this network's inputs."""
        images = np.asarray(images, np.float32)
        images = images[:, None] if images.ndim == 4 else images
        if images.ndim != 5 or images.shape[1] != self.in_channels:
            raise ValueError(f"this segmenter reads {self.in_channels} sequence(s) per volume; got images of shape "
                             f"{images.shape}")
        return images

    def predict(self, images) -> np.ndarray:
        """(N, x, y, z) uint8: binary masks (2 classes) or label maps (4 classes), the argmax."""
        return self.logits(images).argmax(1).astype(np.uint8)

    def features(self, images) -> np.ndarray:
        """(N, F) features: global average and max of the deepest encoder activations."""
        import torch

        feats = []
        deepest = _deepest_module(self.model)
        store = {}
        handle = deepest.register_forward_hook(lambda m, i, o: store.__setitem__("x", o))
        try:
            self.model.eval()
            with torch.no_grad():
                for img in self._channels(images):
                    self.model(_pad_to(torch.as_tensor(img)[None], 2 ** (len(self.cfg.seg_channels) - 1)))
                    h = store["x"][0].flatten(1)
                    feats.append(torch.cat([h.mean(1), h.amax(1)]).numpy())
        finally:
            handle.remove()
        return np.stack(feats)

    def save(self, path) -> None:
        import io

        import torch

        from sbldm.io import atomic_write_bytes

        buf = io.BytesIO()
        torch.save({"state_dict": self.model.state_dict(), "config": self.cfg.to_dict(), "losses": self.losses,
                    "curve": self.curve, "classes": self.classes, "in_channels": self.in_channels}, buf)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path) -> "Segmenter":
        import torch

        from sbldm.config import from_dict

        blob = torch.load(path, map_location="cpu", weights_only=False)
        cfg = from_dict(blob["config"])
        classes, in_channels = int(blob.get("classes", 2)), int(blob.get("in_channels", 1))
        model = build_unet(cfg.segmentation, classes, in_channels)
        model.load_state_dict(blob["state_dict"])
        return cls(model, cfg, blob["losses"], blob.get("curve", []), classes, in_channels)


def _deepest_module(model):
    """The bottom block of MONAI's nested UNet (its innermost SkipConnection's submodule)."""
    from monai.networks.layers.simplelayers import SkipConnection

    inner = None
    for m in model.modules():
        if isinstance(m, SkipConnection):
            inner = m
    if inner is None:
        raise ValueError("not a MONAI UNet")
    sub = inner.submodule
    return sub[1] if hasattr(sub, "__getitem__") and len(sub) > 1 else sub


def _pad_to(x, multiple: int):
    import torch.nn.functional as F

    pads = []
    for s in reversed(x.shape[2:]):
        extra = (-s) % multiple
        pads += [0, extra]
    return F.pad(x, pads) if any(pads) else x


def train_fast(images, masks, cfg: Config, seed: int = 0, iterations: int | None = None,
               progress: bool = False, val=None, eval_every: int | None = None, classes: int = 2,
               init: "Segmenter | None" = None) -> Segmenter:
    """Train the fast backend for ``iterations`` (default ``cfg.seg_iterations``) steps on
    ``masks``: binary masks (``classes=2``) or label maps (``classes=4``); ``images``: one
    sequence (N, x, y, z) or several (N, S, x, y, z), one input channel each.

    Each step draws ``seg_batch_size`` volumes (with replacement, from a seeded generator)
    and, if a volume exceeds ``seg_patch`` (default ``seg_roi``), a random crop of that size,
    biased to contain tumour half of the time, mirrored at random along ``seg_flip_axes``. Same seed, same data, same machine -> same network.

    With ``val=(images, masks)`` and ``eval_every``, the mean Dice on ``val`` is measured
    every ``eval_every`` steps (and at the last) and kept in ``Segmenter.curve`` as
    ``{"iteration", "val_dice", "train_loss"}`` rows (``val_dice``: ``region_score``): a
    learning curve of this very run (evaluation does not touch the random streams, so the
    network at step k is the one a ``k``-step budget gives).

    ``init``: a trained segmenter of the same widths and classes whose weights this run
    starts from (fine-tuning; a fresh optimiser, the same schedule).
    """
    import torch
    from monai.losses import DiceCELoss
    from tqdm.auto import tqdm

    images, masks = _check(images, masks, classes)
    torch.set_flush_denormal(True)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    in_channels = images.shape[1]
    model = build_unet(cfg.segmentation, classes, in_channels)
    if init is not None:
        if (init.classes, init.in_channels, tuple(init.cfg.seg_channels)) != (classes, in_channels, tuple(cfg.seg_channels)):
            raise ValueError(f"cannot start from a segmenter of {init.classes} classes, {init.in_channels} input(s) and "
                             f"widths {tuple(init.cfg.seg_channels)}: this run has {classes}, {in_channels} and "
                             f"{tuple(cfg.seg_channels)}")
        model.load_state_dict(init.model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.seg_lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    roi = tuple(min(r, s) for r, s in zip(cfg.seg_patch or cfg.seg_roi, masks.shape[1:]))
    multiple = 2 ** (len(cfg.seg_channels) - 1)
    losses, curve = [], []
    steps = cfg.seg_iterations if iterations is None else iterations
    if val is not None:
        val_images, val_masks = _check(*val, classes)
        if not eval_every or eval_every < 1:
            raise ValueError(f"eval_every must be a positive step count with val, got {eval_every!r}")
    seg = Segmenter(model, cfg, losses, curve, classes, in_channels)
    autocast = _autocast(cfg)
    model.train()
    for step in tqdm(range(1, steps + 1), desc="segmentation", disable=not progress):
        xs, ys = [], []
        for v in rng.integers(0, len(images), cfg.seg_batch_size):
            x, y = _crop(images[v], masks[v], roi, rng)
            for axis in cfg.seg_flip_axes:        # on-the-fly mirroring, as nnU-Net's default augmentation
                if rng.random() < 0.5:
                    x, y = np.flip(x, axis + 1), np.flip(y, axis)
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        x = _pad_to(torch.as_tensor(np.stack(xs), dtype=torch.float32), multiple)
        y = _pad_to(torch.as_tensor(np.stack(ys), dtype=torch.float32)[:, None], multiple)
        with autocast():
            out = model(x)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if val is not None and (step % eval_every == 0 or step == steps):
            dice = region_score(seg.predict(val_images), val_masks, classes)
            curve.append({"iteration": step, "val_dice": dice,
                          "train_loss": float(np.mean(losses[-eval_every:]))})
            model.train()
    return seg


def _autocast(cfg: Config):
    """bf16 autocast of the forward pass when ``seg_mixed_precision == "bf16"`` (the
    U-Net is convolutions only, which bf16 speeds up on this kind of CPU), else a no-op."""
    from sbldm.runtime import cpu_bf16

    if cfg.seg_mixed_precision in (None, "no", "bf16"):
        return lambda: cpu_bf16(cfg.seg_mixed_precision == "bf16")
    raise ValueError(f"seg_mixed_precision must be None, 'no' or 'bf16', got {cfg.seg_mixed_precision!r}")


def _crop(image, mask, roi, rng):
    """A ``roi`` crop of one volume: ``image`` (S, x, y, z), ``mask`` (x, y, z)."""
    if tuple(mask.shape) == tuple(roi):
        return image, mask
    if mask.any() and rng.random() < 0.5:           # a tumour voxel (any label) as the centre
        inside = np.argwhere(mask)
        centre = inside[rng.integers(len(inside))]
    else:
        centre = np.array([rng.integers(0, s) for s in mask.shape])
    start = [int(np.clip(c - r // 2, 0, s - r)) for c, r, s in zip(centre, roi, mask.shape)]
    sl = tuple(slice(a, a + r) for a, r in zip(start, roi))
    return image[(slice(None), *sl)], mask[sl]


# -- metrics --------------------------------------------------------------------------

def case_metrics(pred, target, spacing: Sequence[float] | None = None) -> dict:
    """Dice, IoU and HD95 (MONAI, in voxels unless ``spacing``) of one binary prediction.

    Conventions for empty masks: both empty -> Dice = IoU = 1, HD95 = 0; exactly one
    empty -> Dice = IoU = 0, HD95 = NaN (undefined; reported as missing)."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    p, t = np.asarray(pred) > 0, np.asarray(target) > 0
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from target shape {t.shape}")
    inter, ps, ts = np.logical_and(p, t).sum(), p.sum(), t.sum()
    if ps == 0 and ts == 0:
        return {"dice": 1.0, "iou": 1.0, "hd95": 0.0}
    dice = 2 * inter / (ps + ts)
    iou = inter / np.logical_or(p, t).sum()
    if ps == 0 or ts == 0:
        return {"dice": float(dice), "iou": float(iou), "hd95": math.nan}
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about an argument its own compute_hausdorff_distance passes internally
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        hd = compute_hausdorff_distance(torch.as_tensor(p)[None, None], torch.as_tensor(t)[None, None],
                                        percentile=95, spacing=spacing)
    return {"dice": float(dice), "iou": float(iou), "hd95": float(hd.reshape(-1)[0])}


def evaluate(pred_masks, target_masks, case_ids: Sequence[str] | None = None,
             spacings: Sequence[Sequence[float]] | None = None) -> list[dict]:
    """Per-case metrics rows ``{case_id, dice, iou, hd95, empty_prediction}``; HD95 in the
    units of ``spacings`` (one (sx, sy, sz) per case, e.g. mm) or else in voxels."""
    pred_masks, target_masks = np.asarray(pred_masks), np.asarray(target_masks)
    ids = case_ids if case_ids is not None else [str(i) for i in range(len(pred_masks))]
    sp = [None] * len(pred_masks) if spacings is None else [tuple(map(float, s)) for s in spacings]
    if len(sp) != len(pred_masks):
        raise ValueError(f"{len(sp)} spacings for {len(pred_masks)} predictions")
    return [{"case_id": c, **case_metrics(p, t, spacing=s), "empty_prediction": bool(not np.any(p))}
            for c, p, t, s in zip(ids, pred_masks, target_masks, sp)]
