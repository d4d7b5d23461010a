"""``parquet``: a dataset from a Parquet file or folder, read with pyarrow; optionally federated by nature."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from raysim.data.datasets import Dataset, DatasetNotFoundError
from raysim.data.files.common import (
    Fraction,
    Params,
    Shape,
    build_dataset,
    check_finite,
    encode_labels,
    locate,
    missing,
    nonempty,
    read_image,
    seeded_split,
    to_inputs,
)
from raysim.data.partition import stratified_split


class ParquetParams(Params):
    """``data.dataset_params`` of ``parquet``."""

    # a .parquet file or a folder of them; a relative path is taken under data.data_dir.
    # None: data.data_dir itself
    path: str | None = None
    # the label column (integers or strings)
    label: str = "label"
    # the feature columns: scalar numbers (one vector per row), or one list/binary column of pixels
    # with `shape`. None: every column other than label, client, split and a stored pandas index
    features: tuple[str, ...] | None = None
    # one image's shape, (C, H, W) or (H, W) ((H, W, C) with layout nhwc): the feature columns'
    # values per row (pixels 0..255, or PNG/JPEG bytes) are reshaped into an image
    shape: Shape | None = None
    # axis order of the pixels in the list/binary column
    layout: Literal["nchw", "nhwc"] = "nchw"
    # a column of client ids: the data is federated by nature (data.partition: natural)
    client: str | None = None
    # a column of "train"/"test" values; None: a seeded test_fraction split (per client with `client`)
    split: str | None = None
    test_fraction: Fraction = 0.2
    num_classes: Annotated[int, Field(ge=2)] | None = None


_PNG, _JPEG = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


def _parquet_files(data_dir: str | None, params: ParquetParams) -> list[Path]:
    p = locate(data_dir, params.path, "parquet", "Parquet file or folder")
    if not p.exists():
        raise missing(
            "parquet",
            p,
            "a .parquet file or a folder of them",
            "fix data.dataset_params.path / data.data_dir",
        )
    if not p.is_dir():
        return [p]
    files = sorted(f for f in p.rglob("*.parquet") if f.is_file())
    if not files:
        raise DatasetNotFoundError(
            f"dataset 'parquet': {p} holds no *.parquet files; expected one or more there. To fix: write the "
            "table with pyarrow.parquet.write_table / DataFrame.to_parquet into that folder, or name the file "
            "in data.dataset_params.path"
        )
    return files


def _parquet_schema(files: list[Path]) -> pa.Schema:
    """The files' common schema (read from their footers only); unreadable or differing files refused."""
    first: pa.Schema | None = None
    for f in files:
        try:
            schema = pq.read_schema(f)
        except (OSError, pa.ArrowException) as e:
            raise ValueError(
                f"dataset 'parquet': {f} is not a readable Parquet file ({e}); rewrite it with pyarrow or pandas"
            ) from e
        if first is None:
            first = schema
        elif not schema.equals(first):
            raise ValueError(
                f"dataset 'parquet': {f} has columns {_columns(schema)} but {files[0]} has {_columns(first)}; "
                "every file of the folder must have the same columns and types"
            )
    assert first is not None
    return first


def _columns(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name} ({f.type})" for f in schema)


def _is_array(t: pa.DataType) -> bool:
    if pa.types.is_struct(t):
        return t.get_field_index("bytes") >= 0
    return (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
    )


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _parquet_plan(files: list[Path], params: ParquetParams) -> tuple[list[str], bool]:
    """The feature columns and whether they are one list/binary column; every named column checked."""
    schema = _parquet_schema(files)
    where = f"dataset 'parquet': {files[0]}" + (
        f" (and {len(files) - 1} more files)" if len(files) > 1 else ""
    )
    for field, col in (("label", params.label), ("client", params.client), ("split", params.split)):
        if col is not None and col not in schema.names:
            hive = any(part.startswith(f"{col}=") for f in files for part in f.parts)
            raise ValueError(
                f"{where} has no column {col!r}; its columns are {_columns(schema)}. To fix: name the "
                f"{field} column in data.dataset_params.{field}"
                + (
                    f" (folders named {col}=... are not read as a column: write {col!r} into the files)"
                    if hive
                    else ""
                )
            )
    taken = {params.label, params.client, params.split}
    if params.features is None:
        # pandas stores a DataFrame's index as a column: an index is not a feature
        index = {c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)}
        features = [n for n in schema.names if n not in taken and n not in index]
    else:
        features = list(params.features)
        gone = [c for c in features if c not in schema.names]
        if gone:
            raise ValueError(
                f"{where} has no column {', '.join(map(repr, gone))}; its columns are {_columns(schema)}. "
                "To fix: list existing columns in data.dataset_params.features"
            )
        used = [c for c in features if c in taken]
        if used:
            raise ValueError(
                f"{where}: column {used[0]!r} is the label, client or split column, not a feature"
            )
    if not features:
        raise ValueError(
            f"{where} has no feature columns besides {', '.join(repr(c) for c in taken if c)}; "
            "add them or list them in data.dataset_params.features"
        )
    types = {c: schema.field(c).type for c in features}
    arrays = [c for c in features if _is_array(types[c])]
    if arrays and len(features) > 1:
        raise ValueError(
            f"{where}: column {arrays[0]!r} ({types[arrays[0]]}) holds a list per row, so it must be the only "
            f"feature, but the features are {features}; set data.dataset_params.features to [{arrays[0]!r}] "
            "or to scalar columns only"
        )
    if arrays:
        t = types[arrays[0]]
        binary = not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))
        if binary and params.shape is None:
            raise ValueError(
                f"{where}: column {arrays[0]!r} ({t}) holds bytes per row: give one image's shape as "
                "data.dataset_params.shape, e.g. [1, 28, 28]"
            )
        if not binary and not _is_number(t.value_type):
            raise ValueError(f"{where}: column {arrays[0]!r} ({t}) must hold lists of numbers")
        return features, True
    bad = [c for c in features if not _is_number(types[c])]
    if bad:
        raise ValueError(
            f"{where}: feature column {bad[0]!r} is {types[bad[0]]}, not numbers; features are number columns "
            "or one list/binary column. Leave it out with data.dataset_params.features, or name it as "
            "the label/client/split column"
        )
    return features, False


def _check_parquet(*, data_dir: str | None, params: ParquetParams) -> str | None:
    """Why ``load_parquet`` cannot use the files (None: it can); reads their footers only."""
    try:
        _parquet_plan(_parquet_files(data_dir, params), params)
    except (DatasetNotFoundError, ValueError) as e:
        return str(e)
    return None


def _no_nulls(col: pa.ChunkedArray | pa.Array, where: str) -> None:
    if col.null_count:
        rows = np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))
        raise ValueError(
            f"{where}: {col.null_count} rows are empty (first at row {rows[0]}); fill or drop them"
        )


def _decode(blobs: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """PNG/JPEG bytes per row to uint8 ``(N, C, H, W)`` with Pillow; each must have ``shape``."""
    c, h, w = shape if len(shape) == 3 else (1, *shape)
    if c not in (1, 3):
        raise ValueError(f"{where}: encoded images decode to 1 or 3 channels; dataset_params.shape has {c}")
    out = np.empty((len(blobs), c, h, w), dtype=np.uint8)
    for i, b in enumerate(blobs):
        try:
            img = read_image(bytes(b), gray=c == 1)
        except (OSError, ValueError) as e:
            raise ValueError(f"{where}: row {i} is not an image Pillow can decode ({e})") from e
        if img.shape != (c, h, w):
            raise ValueError(
                f"{where}: row {i} is a {img.shape[2]}x{img.shape[1]} image but dataset_params.shape is "
                f"{list(shape)}; resize the images or fix shape"
            )
        out[i] = img
    return out


def _array_column(col: pa.ChunkedArray, params: ParquetParams, where: str) -> np.ndarray:
    """One list/binary column: a vector per row, or pixels per row with ``shape``."""
    arr = col.combine_chunks()
    if pa.types.is_struct(arr.type):  # e.g. Hugging Face's Image feature: {bytes, path}
        arr = arr.field("bytes")
    _no_nulls(arr, where)
    n = len(arr)
    if (
        pa.types.is_list(arr.type)
        or pa.types.is_large_list(arr.type)
        or pa.types.is_fixed_size_list(arr.type)
    ):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        values = arr.flatten()
        _no_nulls(values, where + " (inside the lists)")
        x = values.to_numpy(zero_copy_only=False)
    else:
        blobs = arr.to_numpy(zero_copy_only=False)
        if n and bytes(blobs[0][:8]).startswith((_PNG, _JPEG)):
            assert params.shape is not None
            s = params.shape
            return _decode(blobs, (s[2], s[0], s[1]) if params.layout == "nhwc" and len(s) == 3 else s, where)
        lengths = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=n)
        x = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    want = int(np.prod(params.shape)) if params.shape is not None else (int(lengths[0]) if n else 0)
    bad = np.flatnonzero(lengths != want)
    if len(bad):
        raise ValueError(
            f"{where}: row {bad[0]} holds {lengths[bad[0]]} values but "
            + (
                f"dataset_params.shape={list(params.shape)} needs {want}"
                if params.shape
                else f"row 0 holds {want}"
            )
            + f" ({len(bad)} rows differ); every row must hold one example of the same size"
        )
    x = x.reshape(n, want)
    return to_inputs(x, where, params.shape, params.layout)


def _scalar_columns(table: pa.Table, features: list[str], params: ParquetParams, where: str) -> np.ndarray:
    cols = []
    for c in features:
        col = table[c]
        _no_nulls(col, f"{where} column {c!r}")
        v = col.to_numpy()
        check_finite(v, f"{where} column {c!r}")
        cols.append(v)
    x = np.column_stack(cols)
    return to_inputs(x, f"{where} columns {features[0]!r}..{features[-1]!r}", params.shape, params.layout)


def _split_column(col: pa.ChunkedArray, where: str) -> np.ndarray:
    """``True`` for the rows of a train/test column that are test rows."""
    _no_nulls(col, where)
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, col.type.value_type)
    v = col.to_numpy(zero_copy_only=False).astype(str)
    bad = np.flatnonzero((v != "train") & (v != "test"))
    if len(bad):
        raise ValueError(
            f"{where}: row {bad[0]} is {str(v[bad[0]])!r}; the split column holds 'train' or 'test'"
        )
    return v == "test"


def _groups(codes: np.ndarray, k: int) -> list[np.ndarray]:
    """Positions of each code ``0..k-1``, ascending."""
    order = np.argsort(codes, kind="stable")
    return np.split(order.astype(np.int64), np.cumsum(np.bincount(codes, minlength=k))[:-1])


def load_parquet(*, data_dir: str | None, seed: int, num_clients: int, params: ParquetParams) -> Dataset:
    """A dataset from a Parquet file or a folder of ``*.parquet`` files (see :class:`ParquetParams`).

    Rows are examples, read in file order (files sorted by path). With a ``client`` column the data
    is federated by nature: ``natural_train[k]`` / ``natural_test[k]`` hold the rows of the k-th
    client id in sorted order (``client_ids``), its test rows from the ``split`` column or a seeded
    stratified ``test_fraction`` of its own rows.
    """
    files = _parquet_files(data_dir, params)
    features, one_array = _parquet_plan(files, params)
    root = locate(data_dir, params.path, "parquet", "Parquet file or folder")
    where = f"dataset 'parquet': {files[0] if len(files) == 1 and not root.is_dir() else root}"
    needed = [c for c in (*features, params.label, params.client, params.split) if c is not None]
    try:
        tables = [pq.read_table(f, columns=needed) for f in files]
    except (OSError, pa.ArrowException) as e:
        raise ValueError(
            f"{where}: the Parquet data cannot be read ({e}); rewrite it with pyarrow or pandas"
        ) from e
    try:
        return _from_table(pa.concat_tables(tables), features, one_array, params, seed, where)
    except ValueError as e:
        if len(files) == 1:
            raise
        raise ValueError(_row_in_file(str(e), files, [len(t) for t in tables])) from e


def _row_in_file(message: str, files: list[Path], lengths: list[int]) -> str:
    """A message about row r of a folder's rows (read in path order) also names r's file and row there."""
    m = re.search(r"\brow (\d+)", message)
    if m is None:
        return message
    row = int(m.group(1))
    ends = np.cumsum(lengths)
    i = int(np.searchsorted(ends, row, side="right"))
    if i >= len(files):
        return message
    return f"{message} (row {row} of the folder is row {row - int(ends[i] - lengths[i])} of {files[i]})"


def _from_table(
    table: pa.Table, features: list[str], one_array: bool, params: ParquetParams, seed: int, where: str
) -> Dataset:
    """The Dataset of a table holding every row, in file order."""
    if one_array:
        x = _array_column(table[features[0]], params, f"{where} column {features[0]!r}")
    else:
        x = _scalar_columns(table, features, params, where)
    label = table[params.label]
    if pa.types.is_dictionary(label.type):
        label = pc.cast(label, label.type.value_type)
    y, k, classes = encode_labels(
        label.to_numpy(zero_copy_only=False), f"{where} column {params.label!r}", params.num_classes
    )
    rng = np.random.default_rng(seed)
    natural: dict[str, Any] = {}
    if params.client is None:
        if params.split is not None:
            is_test = _split_column(table[params.split], f"{where} column {params.split!r}")
            train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
        else:
            train, test = seeded_split(y, params.test_fraction, seed)
    else:
        ccol = table[params.client]
        _no_nulls(ccol, f"{where} column {params.client!r}")
        if pa.types.is_dictionary(ccol.type):
            ccol = pc.cast(ccol, ccol.type.value_type)
        ids, clients = np.unique(ccol.to_numpy(zero_copy_only=False), return_inverse=True)
        clients = clients.astype(np.int64)
        if params.split is not None:
            is_test = _split_column(table[params.split], f"{where} column {params.split!r}")
        else:
            is_test = np.zeros(len(y), dtype=bool)
            for pos in _groups(clients, len(ids)):
                held, _ = stratified_split(y[pos], params.test_fraction, rng)
                is_test[pos[held]] = True
        train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
        nat_train = _groups(clients[train], len(ids))
        empty = [i for i, p in enumerate(nat_train) if len(p) == 0]
        if empty:
            raise ValueError(
                f"{where} column {params.client!r}: client {str(ids[empty[0]])!r} has no training rows "
                f"({len(empty)} clients have none); give every client training rows or drop those clients"
            )
        natural = dict(
            natural_train=tuple(nat_train),
            natural_test=tuple(_groups(clients[test], len(ids))),
            client_ids=tuple(str(i) for i in ids),
        )
    how = (
        f"put 'train' and 'test' rows in column {params.split!r}"
        if params.split is not None
        else "add rows (or raise test_fraction when there are few)"
    )
    nonempty(len(train), len(test), where, how)
    return build_dataset("parquet", x[train], y[train], x[test], y[test], k, classes, **natural)


load_parquet.params_model = ParquetParams  # type: ignore[attr-defined]
load_parquet.check = _check_parquet  # type: ignore[attr-defined]
