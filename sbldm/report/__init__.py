"""Turning results into what a reader sees.

- ``claims``: the paper's claims, each with its verdict at one scale (``tables/claims.*``);
- ``cost``: what each notebook cost from scratch, from the times kept beside its work
  (``tables/compute_cost.*``);
- ``readme``: the generated pages: the README's claims block, ``results/<scale>/README.md``
  and the efficiency block of ``docs/benchmarks.md``;
- ``bench_rows``: reads the sampling rows of a benchmark result (``results/bench/*.json``);
- ``summaries``: each notebook's closing summary, saved and quoted on the results page;
- ``sweeps``: the tumour-size and position sweeps of Figure 3;
- ``phantom_figures``: the phantom cohort against real tumours;
- ``steer``: the interactive steering panel of notebook 08;
- ``ship``: ships a trained pipeline as ``pretrained/<scale>`` with its model card;
- ``browser_check``: notebook 08 in JupyterLab in a headless Chromium, screenshots.
"""
