"""Running the paper.

- ``reproduce``: the notebook chain (``python -m sbldm.runner``), its run folders and records;
- ``session``: what a notebook opens (config, run folders, data, device);
- ``train``: the command-line trainer of each stage;
- ``bench``: the benchmarks (``make bench-paper-cpu``);
- ``gpu_check``: paper-scale GPU timings and memory (``make gpu-check``).
"""
