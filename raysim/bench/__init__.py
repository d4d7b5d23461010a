"""Benchmarks that are part of the product: ``raysim bench scale`` and the cost model it fits.

- :mod:`raysim.bench.probe`: watches a ``raysim run`` subprocess from outside (peak RSS/USS of every
  process of its tree, by role; the Ray object store's bytes in use);
- :mod:`raysim.bench.scale`: runs FedAvg on Fashion-MNIST at several federation sizes, each as a fresh
  ``raysim run`` subprocess, plus the literal actor-per-client mode at a few actor counts;
- :mod:`raysim.bench.scale_report`: reads each run's rows and writes the tables, plots and README.md;
- :mod:`raysim.bench.model`: the cost model (round time, time to the first round, memory) fitted to
  those measurements by least squares, and its estimate for an experiment on a cluster
  (``raysim k8s render`` prints it);
- :mod:`raysim.bench.coefficients`: the fitted values the estimate uses by default.

Nothing here imports Ray at module level (the object-store query imports it lazily).
"""
