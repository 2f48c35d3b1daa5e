"""Stage 0 — data: BraTS folders or the phantom cohort -> (image, mask) volumes at the model grid, the train/test split, and the 9 tumour features that condition generation (paper §2.3, §3.1)."""
