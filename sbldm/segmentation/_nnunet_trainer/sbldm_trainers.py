"""sbldm's nnU-Net v2 trainers, read from the environment of the nnU-Net subprocess.

``sbldmTrainer`` is nnU-Net's default trainer (its default data augmentation, as the
paper's text says) and ``sbldmTrainerNoDA`` is ``nnUNetTrainerNoDA`` (augmentation and
test-time mirroring off, as the authors' code ran it). Both only change what these
variables ask for and are otherwise the stock trainers, so with none of them set they
train exactly like ``nnUNetTrainer`` / ``nnUNetTrainerNoDA`` (1000 epochs x 250
iterations):

- ``SBLDM_NNUNET_EPOCHS``: ``num_epochs`` (the poly learning-rate schedule follows it)
- ``SBLDM_NNUNET_ITERATIONS``: ``num_iterations_per_epoch``
- ``SBLDM_NNUNET_VAL_ITERATIONS``: ``num_val_iterations_per_epoch``
- ``SBLDM_NNUNET_SEED``: seeds ``random``, numpy and torch before anything is drawn
- ``SBLDM_NNUNET_FINAL_VALIDATION``: ``0`` skips the prediction of the validation cases
  after training (with fold ``all`` they are the training cases, so it says nothing)

nnU-Net finds these classes by name through ``nnUNet_extTrainer``; they are found
again, by the same name, when predicting (only ``build_network_architecture`` is used
there, which they do not change).
"""

import os
import random

import numpy as np
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA import nnUNetTrainerNoDA


def _int_env(name):
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    number = int(value)
    if number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


class _SbldmSettings:
    """Mixin: apply the SBLDM_NNUNET_* settings after the stock ``__init__``."""

    def _apply_sbldm_settings(self):
        seed = os.environ.get("SBLDM_NNUNET_SEED", "").strip() or None
        if seed is not None:
            seed = int(seed)
            random.seed(seed)
            np.random.seed(seed % 2 ** 32)
            torch.manual_seed(seed)
        epochs = _int_env("SBLDM_NNUNET_EPOCHS")
        iterations = _int_env("SBLDM_NNUNET_ITERATIONS")
        val_iterations = _int_env("SBLDM_NNUNET_VAL_ITERATIONS")
        if epochs is not None:
            self.num_epochs = epochs
        if iterations is not None:
            self.num_iterations_per_epoch = iterations
        if val_iterations is not None:
            self.num_val_iterations_per_epoch = val_iterations
        self.sbldm_final_validation = os.environ.get("SBLDM_NNUNET_FINAL_VALIDATION", "1").strip() != "0"
        self.print_to_log_file(
            f"sbldm trainer {type(self).__name__}: num_epochs={self.num_epochs}, "
            f"num_iterations_per_epoch={self.num_iterations_per_epoch}, "
            f"num_val_iterations_per_epoch={self.num_val_iterations_per_epoch}, seed={seed}, "
            f"final_validation={self.sbldm_final_validation}")

    def perform_actual_validation(self, save_probabilities: bool = False):
        if not self.sbldm_final_validation:
            self.print_to_log_file("sbldm: final validation skipped (SBLDM_NNUNET_FINAL_VALIDATION=0)")
            return
        return super().perform_actual_validation(save_probabilities)


class sbldmTrainer(_SbldmSettings, nnUNetTrainer):
    """nnU-Net's default trainer (default data augmentation) with sbldm's settings."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._apply_sbldm_settings()


class sbldmTrainerNoDA(_SbldmSettings, nnUNetTrainerNoDA):
    """``nnUNetTrainerNoDA`` (no data augmentation, no mirroring) with sbldm's settings."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._apply_sbldm_settings()
