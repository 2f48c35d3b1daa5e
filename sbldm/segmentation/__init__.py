"""The downstream task of paper §3.4: tumour segmentation trained on real and synthetic
volumes.

- ``fast``: the fast backend, a MONAI 3D U-Net for ``smoke``/``small``;
- ``nnunet``: nnU-Net v2, the paper's segmenter (``_nnunet_launch`` starts its entry
  points on a machine without timm);
- ``brats_metrics``: BraTS region metrics and the BraTS 2023 lesion-wise metrics;
- ``table2``: Table 2: the training sets, the budget, the runs and their results;
- ``statistics``: how the per-case scores of every training become a row of Table 2
  (seed means and spread, paired tests, Holm).
"""
