"""Every generator of the comparison behind one interface: SBLDM, 3D-LDM and 3D-LSGAN (paper §3.3) — build, train, load and sample them by name (``registry``)."""

from sbldm.generators.registry import NAMES, build_generator, load_generator, train_generator

__all__ = ["NAMES", "build_generator", "load_generator", "train_generator"]
