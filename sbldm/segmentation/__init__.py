"""The downstream task of paper §3.4: tumour segmentation trained on real and synthetic volumes — the fast MONAI backend (``fast``), nnU-Net v2 (``nnunet``), and Table 2 (``table2``)."""
