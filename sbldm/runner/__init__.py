"""Running the paper: the notebook chain (``python -m sbldm.runner``), the session a notebook opens, and the benchmarks (``bench``)."""
