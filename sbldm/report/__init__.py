"""Turning results into what a reader sees: the tumour-size and position sweeps of Figure 3 (``sweeps``) and the README results block (``readme``)."""
