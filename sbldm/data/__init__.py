"""Stage 0, data: BraTS folders or the phantom cohort -> (image, mask) volumes at the
model grid, the train/test split, and the 9 tumour features that condition generation
(paper §2.3, §3.1).

- ``cohort``: discover and load BraTS 2021/2023 folders and phantom cohorts, resample,
  normalise, split, the model space of the tumour channels, the nnU-Net export;
- ``phantom``: the BraTS-like phantom cohort built from the MNI152 anatomy nilearn ships;
- ``phantom_stats``: the statistics that compare phantom and real tumours;
- ``prepare``: the prepared-data folder notebook 00 writes and every later one reads;
- ``tumour``: the tumour features, the BraTS regions (``REGIONS``: WT, TC, ET) and labels.
"""
