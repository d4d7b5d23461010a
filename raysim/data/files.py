"""Datasets from the user's own files: an ``.npz``, Parquet files, or an ImageFolder tree.

Each loader is a dataset plug-in (``docs/extending.md``): a callable
``(*, data_dir, seed, num_clients, params) -> Dataset`` with a pydantic ``params_model`` (validating
``data.dataset_params``) and a ``check(*, data_dir, params) -> str | None`` that says why the files
cannot be used without loading them. The config names them ``npz``, ``parquet`` and ``imagefolder``.

Nothing downloads. The files are read once with the libraries made for them (numpy, pyarrow,
torchvision) into the arrays of :class:`~raysim.data.datasets.Dataset`: uint8 images ``(N, C, H, W)``
or float32 vectors ``(N, D)``, int64 labels ``0..K-1``. Every refusal names the file, the key or
column, what was expected and how to fix it: missing files raise
:class:`~raysim.data.datasets.DatasetNotFoundError`, files that are there but unusable ``ValueError``
(both become the CLI's exit-2 message).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from raysim.data.datasets import Dataset

Fraction = Annotated[float, Field(gt=0, lt=1)]
Shape = tuple[Annotated[int, Field(ge=1)], ...]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NpzParams(_Params):
    """``data.dataset_params`` of ``npz``."""

    # the .npz file; a relative path is taken under data.data_dir. None: data.data_dir is the file,
    # or a folder holding exactly one .npz
    path: str | None = None
    # the arrays' names in the file
    x_train: str = "x_train"
    y_train: str = "y_train"
    x_test: str = "x_test"
    y_test: str = "y_test"
    # the share of examples held out as the test split (seeded, stratified) when the file has no
    # test arrays
    test_fraction: Fraction = 0.2
    # one example's shape (C, H, W) or (H, W): each row of uint8 x is reshaped into an image
    shape: Shape | None = None
    # image arrays' axis order; "auto": (N, H, W, C) when the last axis is 1, 3 or 4 and axis 1 is not
    layout: Literal["auto", "nchw", "nhwc"] = "auto"
    # integer labels are class indices 0..num_classes-1; None: the distinct labels, sorted, become 0..K-1
    num_classes: Annotated[int, Field(ge=2)] | None = None


class ParquetParams(_Params):
    """``data.dataset_params`` of ``parquet``."""

    # a .parquet file or a folder of them; a relative path is taken under data.data_dir.
    # None: data.data_dir itself
    path: str | None = None
    # the label column (integers or strings)
    label: str = "label"
    # the feature columns: scalar numbers (one vector per row), or one list/binary column of pixels
    # with `shape`. None: every column other than label, client and split
    features: tuple[str, ...] | None = None
    # one example's shape (C, H, W) or (H, W) when the feature is a list/binary column of pixels
    shape: Shape | None = None
    # axis order of the pixels in the list/binary column
    layout: Literal["nchw", "nhwc"] = "nchw"
    # a column of client ids: the data is federated by nature (data.partition: natural)
    client: str | None = None
    # a column of "train"/"test" values; None: a seeded test_fraction split (per client with `client`)
    split: str | None = None
    test_fraction: Fraction = 0.2
    num_classes: Annotated[int, Field(ge=2)] | None = None


class ImageFolderParams(_Params):
    """``data.dataset_params`` of ``imagefolder``."""

    # the root folder: <root>/<class>/*.png|jpg, or <root>/train/<class>/... and <root>/test/<class>/...
    # A relative path is taken under data.data_dir. None: data.data_dir itself
    path: str | None = None
    # (H, W) every image is resized to; None: all images must have one size
    size: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = None
    # True: one gray channel; False: three RGB channels; None: gray when every image is gray
    grayscale: bool | None = None
    # the share held out as the test split (seeded, stratified) when there are no train/ and test/ folders
    test_fraction: Fraction = 0.2
    # file name endings that are images (case-insensitive); other files are ignored
    extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg")


def load_npz(*, data_dir: str | None, seed: int, num_clients: int, params: NpzParams) -> Dataset:
    """A dataset from one ``.npz`` file (see :class:`NpzParams`)."""
    raise NotImplementedError


def load_parquet(*, data_dir: str | None, seed: int, num_clients: int, params: ParquetParams) -> Dataset:
    """A dataset from a Parquet file or folder (see :class:`ParquetParams`)."""
    raise NotImplementedError


def load_imagefolder(
    *, data_dir: str | None, seed: int, num_clients: int, params: ImageFolderParams
) -> Dataset:
    """A dataset from an ImageFolder tree of PNG/JPEG files (see :class:`ImageFolderParams`)."""
    raise NotImplementedError


def _check_npz(*, data_dir: str | None, params: NpzParams) -> str | None:
    return None


def _check_parquet(*, data_dir: str | None, params: ParquetParams) -> str | None:
    return None


def _check_imagefolder(*, data_dir: str | None, params: ImageFolderParams) -> str | None:
    return None


load_npz.params_model = NpzParams  # type: ignore[attr-defined]
load_npz.check = _check_npz  # type: ignore[attr-defined]
load_parquet.params_model = ParquetParams  # type: ignore[attr-defined]
load_parquet.check = _check_parquet  # type: ignore[attr-defined]
load_imagefolder.params_model = ImageFolderParams  # type: ignore[attr-defined]
load_imagefolder.check = _check_imagefolder  # type: ignore[attr-defined]
