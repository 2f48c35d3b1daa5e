"""nnU-Net v2 trainer subclasses for sbldm.

This folder is handed to nnU-Net through the ``nnUNet_extTrainer`` environment variable
(``sbldm.segmentation.nnunet`` does that); nnU-Net then imports ``sbldm_trainers`` as a top-level
module, so that module depends on nnU-Net, torch and the standard library only.
"""

from pathlib import Path

TRAINER_DIR = Path(__file__).resolve().parent
