"""sbldm: 3D MRI synthesis with slice-based latent diffusion models (Kebaili et al., ISBI 2024).

Heavy pieces (torch, diffusers) load on first use: ``sbldm.SBLDMPipeline``,
``sbldm.SliceVAE`` and ``sbldm.ConditionedUNet3D`` are resolved lazily, so
``import sbldm`` stays fast.
"""

__version__ = "0.1.0"

_LAZY = {
    "SBLDMPipeline": ("sbldm.diffusion.pipeline", "SBLDMPipeline"),
    "SliceVAE": ("sbldm.models.vae", "SliceVAE"),
    "ConditionedUNet3D": ("sbldm.models.unet3d", "ConditionedUNet3D"),
    "build_generator": ("sbldm.generators.registry", "build_generator"),
    "load_generator": ("sbldm.generators.registry", "load_generator"),
    "train_generator": ("sbldm.generators.registry", "train_generator"),
    "open_session": ("sbldm.runner.session", "open_session"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sbldm' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
