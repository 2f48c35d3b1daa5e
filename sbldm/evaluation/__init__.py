"""Measuring generation (Table 1 and beyond).

- ``generation``: unpaired PSNR/SSIM, diversity, mask realism, conditioning adherence,
  memorisation, time per volume;
- ``frechet``: the Fréchet distance and its feature extractors;
- ``appearance``: what the tumours look like inside (dark cores, spread, sub-regions);
- ``reconstruction``: the slice VAE's reconstruction metrics;
- ``sample_cache``: the cached sample sets notebooks 04-06 and 09 share;
- ``table1``: Table 1 and the metrics beyond it;
- ``budget``: one sample set scored for the generators' budget curves (interiors, pieces,
  sharpness, realism, adherence, the smallest request, memorisation).
"""
