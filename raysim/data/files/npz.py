"""``npz``: a dataset from one ``.npz`` file (numpy arrays, no pickles)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from raysim.data.datasets import Dataset, DatasetNotFoundError
from raysim.data.files.common import (
    Fraction,
    Params,
    Shape,
    build_dataset,
    encode_labels,
    locate,
    missing,
    nonempty,
    seeded_split,
    to_inputs,
)


class NpzParams(Params):
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
    # one image's shape, (C, H, W) or (H, W) ((H, W, C) with layout nhwc): each row of x, pixels
    # 0..255, is reshaped into an image
    shape: Shape | None = None
    # image arrays' axis order; "auto": (N, H, W, C) when the last axis is 1, 3 or 4 and axis 1 is not
    layout: Literal["auto", "nchw", "nhwc"] = "auto"
    # integer labels are class indices 0..num_classes-1; None: the distinct labels, sorted, become 0..K-1
    num_classes: Annotated[int, Field(ge=2)] | None = None


def _npz_file(data_dir: str | None, params: NpzParams) -> Path:
    p = locate(data_dir, params.path, "npz", "an .npz file")
    if not p.exists():
        raise missing("npz", p, "an .npz file", "fix data.dataset_params.path / data.data_dir")
    if p.is_dir():
        found = sorted(p.glob("*.npz"))
        if len(found) != 1:
            what = (
                "no .npz file"
                if not found
                else f"{len(found)} .npz files ({', '.join(f.name for f in found)})"
            )
            raise DatasetNotFoundError(
                f"dataset 'npz': {p} holds {what}; expected exactly one there. To fix: name the file in "
                "data.dataset_params.path"
            )
        p = found[0]
    return p


def _npz_keys(p: Path, params: NpzParams) -> bool:
    """Check the file is an .npz holding the arrays ``params`` name; True when it has a test split."""
    try:
        with np.load(p, allow_pickle=False) as f:
            keys = set(f.files) if hasattr(f, "files") else None
    except (OSError, ValueError) as e:
        raise ValueError(
            f"dataset 'npz': {p} is not a readable .npz file ({e}); write it with numpy.savez"
        ) from e
    if keys is None:
        raise ValueError(
            f"dataset 'npz': {p} holds a single array, not an .npz archive; write it with numpy.savez"
        )
    have = ", ".join(sorted(keys)) or "nothing"
    for field in ("x_train", "y_train"):
        key = getattr(params, field)
        if key not in keys:
            raise ValueError(
                f"dataset 'npz': {p} has no array {key!r}; it holds {have}. To fix: name the training "
                f"array in data.dataset_params.{field}"
            )
    has_x, has_y = params.x_test in keys, params.y_test in keys
    if has_x != has_y:
        there, gone = (params.x_test, params.y_test) if has_x else (params.y_test, params.x_test)
        raise ValueError(
            f"dataset 'npz': {p} has test array {there!r} but no {gone!r} (it holds {have}); store both, "
            "or neither to split the training arrays by test_fraction"
        )
    return has_x


def _check_npz(*, data_dir: str | None, params: NpzParams) -> str | None:
    """Why ``load_npz`` cannot use the file (None: it can); reads the archive's index only."""
    try:
        _npz_keys(_npz_file(data_dir, params), params)
    except (DatasetNotFoundError, ValueError) as e:
        return str(e)
    return None


def _npz_array(f: Any, p: Path, key: str) -> np.ndarray:
    try:
        return np.asarray(f[key])
    except ValueError as e:  # object arrays need pickles, which are never loaded
        raise ValueError(
            f"dataset 'npz': {p} array {key!r} cannot be read without pickle ({e}); store numbers or "
            "strings, not Python objects"
        ) from e


def load_npz(*, data_dir: str | None, seed: int, num_clients: int, params: NpzParams) -> Dataset:
    """A dataset from one ``.npz`` file (see :class:`NpzParams`).

    ``x``: float/int ``(N, D)`` -> float32 vectors; uint8 ``(N, H, W)`` / ``(N, C, H, W)`` /
    ``(N, H, W, C)`` -> images; any rows with ``shape`` -> images. Without test arrays a seeded
    stratified ``test_fraction`` of the training arrays is the test split.
    """
    p = _npz_file(data_dir, params)
    has_test = _npz_keys(p, params)
    keys = [params.x_train, params.y_train] + ([params.x_test, params.y_test] if has_test else [])
    with np.load(p, allow_pickle=False) as f:
        arrays = [_npz_array(f, p, k) for k in keys]
    pairs = [(arrays[0], arrays[1], keys[0], keys[1])]
    if has_test:
        pairs.append((arrays[2], arrays[3], keys[2], keys[3]))
    for x, y, kx, ky in pairs:
        if len(x) != len(y) or x.ndim == 0:
            raise ValueError(
                f"dataset 'npz': {p} array {kx!r} holds {len(x) if x.ndim else 0} examples but {ky!r} holds "
                f"{len(y) if y.ndim else 0} labels; they must match one to one"
            )
    xs = [
        to_inputs(x, f"dataset 'npz': {p} array {kx!r}", params.shape, params.layout) for x, _, kx, _ in pairs
    ]
    ys = [y for _, y, _, _ in pairs]
    n_train = len(ys[0])
    codes, k, classes = encode_labels(
        np.concatenate(ys) if has_test else ys[0],
        f"dataset 'npz': {p} array {params.y_train!r}" + (f" / {params.y_test!r}" if has_test else ""),
        params.num_classes,
    )
    if has_test:
        if xs[0].shape[1:] != xs[1].shape[1:]:
            raise ValueError(
                f"dataset 'npz': {p} arrays {keys[0]!r} and {keys[2]!r} hold examples of different shapes "
                f"{xs[0].shape[1:]} and {xs[1].shape[1:]}; store train and test alike"
            )
        x_train, y_train, x_test, y_test = xs[0], codes[:n_train], xs[1], codes[n_train:]
    else:
        train, test = seeded_split(codes, params.test_fraction, seed)
        x_train, y_train, x_test, y_test = xs[0][train], codes[train], xs[0][test], codes[test]
    nonempty(
        len(y_train),
        len(y_test),
        f"dataset 'npz': {p}",
        "store examples in both splits (or raise test_fraction when the file has few examples)",
    )
    return build_dataset("npz", x_train, y_train, x_test, y_test, k, classes)


load_npz.params_model = NpzParams  # type: ignore[attr-defined]
load_npz.check = _check_npz  # type: ignore[attr-defined]
