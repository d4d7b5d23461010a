"""Datasets from the user's own files: an ``.npz``, Parquet files, or an ImageFolder tree.

Each loader is a dataset plug-in (``docs/extending.md``): a callable
``(*, data_dir, seed, num_clients, params) -> Dataset`` with a pydantic ``params_model`` (validating
``data.dataset_params``) and a ``check(*, data_dir, params) -> str | None`` that says why the files
cannot be used without loading them. The config names them ``npz``, ``parquet`` and ``imagefolder``.

Nothing downloads. The files are read once with the libraries made for them (numpy, pyarrow,
torchvision's ImageFolder listing and Pillow, which torchvision's own ImageFolder decodes with) into the arrays of :class:`~raysim.data.datasets.Dataset`: uint8 images ``(N, C, H, W)``
or float32 vectors ``(N, D)``, int64 labels ``0..K-1``. Every refusal names the file, the key or
column, what was expected and how to fix it: missing files raise
:class:`~raysim.data.datasets.DatasetNotFoundError`, files that are there but unusable ``ValueError``
(both become the CLI's exit-2 message).
"""

from raysim.data.files.common import encode_labels
from raysim.data.files.imagefolder import ImageFolderParams, load_imagefolder
from raysim.data.files.npz import NpzParams, load_npz
from raysim.data.files.parquet import ParquetParams, load_parquet

__all__ = [
    "ImageFolderParams",
    "NpzParams",
    "ParquetParams",
    "encode_labels",
    "load_imagefolder",
    "load_npz",
    "load_parquet",
]
