"""Keep diffusers from importing torchvision / timm.

sbldm never uses torchvision or timm, but diffusers imports torchvision at model import
time whenever it is installed. The optional nnU-Net extra pulls in PyPI's torchvision,
which cannot be imported beside a CPU-only torch build (``operator torchvision::nms
does not exist``) and would make ``import diffusers.models`` fail. Importing this
module before diffusers' models tells diffusers that neither package is available.
"""

from __future__ import annotations


def hide_torchvision_from_diffusers() -> None:
    try:
        from diffusers.utils import import_utils
    except ImportError:  # pragma: no cover - diffusers missing: the caller's import fails clearly
        return
    for flag in ("_torchvision_available", "_timm_available"):
        if getattr(import_utils, flag, False):
            setattr(import_utils, flag, False)


hide_torchvision_from_diffusers()
