"""The Fréchet distance of notebook 04 and the features it is computed on.

``frechet_distance(feats_a, feats_b)``: the distance between Gaussians fitted to two
(N, F) feature sets. Nothing is downloaded for the features; two sources:

- ``MedicalNetFeatures(weights_path, depth)``: a 3D ResNet (MONAI's ``resnet10`` ...
  ``resnet200``, configured as MedicalNet) loaded from MedicalNet weights a user already
  has on disk (e.g. ``resnet_10_23dataset.pth``); features = its globally pooled last
  stage (512 or 2048 values per volume).
- otherwise the bottleneck of the fast segmentation U-Net trained in the project on the
  real training split (``sbldm.segmentation.Segmenter.features``).

``feature_extractor(path, segmenter)`` returns ``(callable images -> (N, F), description)``
so the table can say which one was used.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DEPTHS = (10, 18, 34, 50, 101, 152, 200)


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two (N, F) feature sets."""
    from scipy import linalg

    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(ca @ cb)
    if not np.all(np.isfinite(covmean)):
        eps = np.eye(len(ca)) * 1e-6
        covmean = linalg.sqrtm((ca + eps) @ (cb + eps))
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean))


class MedicalNetFeatures:
    def __init__(self, weights_path: str | os.PathLike, depth: int = 10, device: str = "cpu"):
        import torch
        from monai.networks.nets import resnet
        from monai.networks.nets.resnet import get_medicalnet_pretrained_resnet_args

        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: MedicalNet weights not found (sbldm downloads nothing; "
                                    f"pass the path of a local .pth file)")
        if depth not in DEPTHS:
            raise ValueError(f"MedicalNet depth {depth} not available; choose one of {DEPTHS}")
        bias_downsample, shortcut = get_medicalnet_pretrained_resnet_args(depth)
        net = getattr(resnet, f"resnet{depth}")(spatial_dims=3, n_input_channels=1, feed_forward=False,
                                                shortcut_type=shortcut, bias_downsample=bias_downsample)
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state = blob.get("state_dict", blob) if isinstance(blob, dict) else blob
        state = {k.removeprefix("module."): v for k, v in state.items()}
        own = net.state_dict()
        matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if len(matched) < 0.9 * len(own):
            raise ValueError(f"{path}: only {len(matched)} of the {len(own)} tensors of a MedicalNet resnet{depth} "
                             f"match; is it MedicalNet resnet{depth} weights?")
        net.load_state_dict(matched, strict=False)
        self.net = net.to(device).eval()
        self.device = device
        self.description = f"MedicalNet resnet{depth} from {path.name} (pooled last stage)"

    def __call__(self, images) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for img in np.asarray(images, np.float32):
                x = torch.as_tensor(img)[None, None].to(self.device)
                x = (x - x.mean()) / (x.std() + 1e-6)          # MedicalNet's z-scored input
                out.append(self.net(x).reshape(-1).cpu().numpy())
        return np.stack(out)


def feature_extractor(medicalnet_path: str | os.PathLike | None, segmenter, depth: int = 10):
    """(images -> features, description): MedicalNet when a local path is given, else the
    project-trained segmentation U-Net."""
    if medicalnet_path:
        fx = MedicalNetFeatures(medicalnet_path, depth)
        return fx, fx.description
    return segmenter.features, ("bottleneck of the fast segmentation U-Net trained in this project on the real "
                                f"training split ({segmenter.cfg.seg_iterations} steps); no pretrained network")
