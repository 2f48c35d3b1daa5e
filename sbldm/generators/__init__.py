"""Every generator of the comparison behind one interface: SBLDM, 3D-LDM and 3D-LSGAN
(paper §3.3): build, train, load and sample them by name.

- ``registry``: ``build_generator``, ``train_generator``, ``load_generator`` by name, and
  SBLDM's wrapper;
- ``ldm3d``: the 3D-LDM baseline, its pipeline and trainer (networks:
  ``sbldm.models.autoencoder3d``, ``sbldm.models.unet3d``);
- ``lsgan3d``: the 3D-LSGAN baseline, its sampler and trainer with checkpoint selection
  (networks: ``sbldm.models.gan3d``);
- ``common``: what the baselines share (volume batches, the output format, the folder
  marker);
- ``parameters``: the parameter counts of Table 1.

Their losses are in ``sbldm.training.objectives``.
"""

from sbldm.generators.registry import NAMES, build_generator, load_generator, train_generator

__all__ = ["NAMES", "build_generator", "load_generator", "train_generator"]
