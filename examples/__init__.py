"""raysim's plug-in example: KMeansCFL (``my_algo``), a model (``my_model``) and a Parquet dataset
writer (``make_data``). From the repository root they import as ``examples.my_algo`` etc.; installed
(``pip install ./examples``) the same files are the package ``raysim_kmeans_example``, which
registers ``kmeans-cfl`` and ``tiny-cnn`` by entry point. docs/extending.md walks through them."""
