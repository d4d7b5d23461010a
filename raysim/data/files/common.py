"""What the file loaders share: params base, path lookup, labels, inputs and the Dataset they build."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from raysim.data.datasets import Dataset, DatasetNotFoundError, channel_stats
from raysim.data.partition import stratified_split

Fraction = Annotated[float, Field(gt=0, lt=1)]
# one image's shape: (C, H, W), (H, W, C) or (H, W)
Shape = Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=2, max_length=3)]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def locate(data_dir: str | None, path: str | None, name: str, what: str) -> Path:
    """The file or folder ``path`` names (relative paths under ``data_dir``), or ``data_dir`` itself."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_absolute() and data_dir is not None:
            p = Path(data_dir).expanduser() / p
        return p
    if data_dir is None:
        raise DatasetNotFoundError(
            f"dataset {name!r}: no {what} given; set data.dataset_params.path to it "
            "(or data.data_dir, --data-dir)"
        )
    return Path(data_dir).expanduser()


def missing(name: str, p: Path, what: str, how: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(f"dataset {name!r}: {p} does not exist; expected {what} there. To fix: {how}")


def encode_labels(
    values: np.ndarray, where: str, num_classes: int | None
) -> tuple[np.ndarray, int, tuple[str, ...]]:
    """Labels as int64 codes ``0..K-1``, ``K`` and the class names (``names[code]``).

    Without ``num_classes`` the distinct values, sorted, become ``0..K-1`` (deterministic, and the
    identity for labels that already are ``0..K-1``). With it, integer labels are class indices and
    must lie in ``0..num_classes-1``. Missing labels and fractional ones are refused; ``where`` names
    the file and column (or key) in the message.
    """
    v = np.asarray(values)
    if v.ndim != 1:
        raise ValueError(f"{where}: labels must be one value per example, got an array of shape {v.shape}")
    if v.dtype == object:
        bad = np.flatnonzero([x is None for x in v])
        if len(bad):
            raise ValueError(
                f"{where}: {len(bad)} labels are missing (first at row {bad[0]}); give every example a label"
            )
        kinds = {type(x) for x in v}
        if not kinds <= {str}:
            raise ValueError(
                f"{where}: labels must be integers or strings, got {sorted(k.__name__ for k in kinds)}"
            )
        v = v.astype(str)
    if v.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(v) | (v != np.round(v)))
        if len(bad):
            raise ValueError(
                f"{where}: {len(bad)} labels are missing (NaN) or not whole numbers (first at row {bad[0]}: "
                f"{v[bad[0]]}); labels must be integers or strings"
            )
        v = v.astype(np.int64)
    if v.dtype.kind == "b":
        v = v.astype(np.int64)
    if v.dtype.kind in "iu":
        if num_classes is not None:
            bad = np.flatnonzero((v < 0) | (v >= num_classes))
            if len(bad):
                raise ValueError(
                    f"{where}: {len(bad)} labels are outside 0..{num_classes - 1} (first at row {bad[0]}: "
                    f"{v[bad[0]]}); with dataset_params.num_classes={num_classes} labels are class indices. "
                    "Fix the labels, raise num_classes, or leave it out to number the distinct labels 0..K-1"
                )
            return v.astype(np.int64), num_classes, tuple(str(c) for c in range(num_classes))
        classes, codes = np.unique(v, return_inverse=True)
        return codes.astype(np.int64), len(classes), tuple(str(c) for c in classes)
    if v.dtype.kind == "U":
        classes, codes = np.unique(v, return_inverse=True)
        if num_classes is not None and num_classes != len(classes):
            raise ValueError(
                f"{where}: {len(classes)} distinct string labels but dataset_params.num_classes={num_classes}; "
                "string labels are numbered 0..K-1 in sorted order: leave num_classes out"
            )
        return codes.astype(np.int64), len(classes), tuple(str(c) for c in classes)
    raise ValueError(f"{where}: labels must be integers or strings, got dtype {v.dtype}")


def check_finite(x: np.ndarray, where: str) -> None:
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            rows = np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))
            raise ValueError(
                f"{where}: {len(rows)} examples hold NaN or infinite features (first at row {rows[0]}); "
                "drop or impute them before loading"
            )


def as_images(x: np.ndarray, where: str) -> np.ndarray:
    """uint8 pixels: uint8 as is, other integers when they lie in 0..255; floats refused."""
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind in "iub" and (x.size == 0 or (x.min() >= 0 and x.max() <= 255)):
        return x.astype(np.uint8)
    raise ValueError(
        f"{where}: images must be uint8 pixels 0..255, got {x.dtype}"
        + (f" values {x.min()}..{x.max()}" if x.size and x.dtype.kind in "iuf" else "")
        + "; scale them to 0..255 and store uint8, or store (N, D) vectors instead"
    )


def reshape_images(x: np.ndarray, shape: tuple[int, ...], channels_last: bool, where: str) -> np.ndarray:
    """Rows of pixels to ``(N, C, H, W)``: ``shape`` is (C, H, W), (H, W, C) with ``channels_last``, or (H, W)."""
    if len(shape) not in (2, 3):
        raise ValueError(f"dataset_params.shape={list(shape)}: give (C, H, W) or (H, W) for images")
    size = int(np.prod(shape))
    per = int(np.prod(x.shape[1:])) if x.ndim > 1 else 0
    if per != size:
        raise ValueError(
            f"{where}: each example holds {per} values but dataset_params.shape={list(shape)} needs {size}; "
            "fix shape"
        )
    x = as_images(x, where).reshape(len(x), *shape)
    if len(shape) == 2:
        return x[:, None]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if channels_last else x


def to_inputs(x: np.ndarray, where: str, shape: tuple[int, ...] | None, layout: str) -> np.ndarray:
    """An array from a file as Dataset inputs: uint8 ``(N, C, H, W)`` images or float32 ``(N, D)``."""
    if shape is not None:
        return reshape_images(x, shape, layout == "nhwc", where)
    if x.ndim == 2:
        if x.dtype.kind not in "iufb":
            raise ValueError(f"{where}: features must be numbers, got dtype {x.dtype}")
        check_finite(x, where)
        return x.astype(np.float32, copy=False)
    if x.ndim == 3:
        return as_images(x, where)[:, None]
    if x.ndim == 4:
        x = as_images(x, where)
        last = layout == "nhwc" or (
            layout == "auto" and x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4)
        )
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if last else x
    raise ValueError(
        f"{where}: expected vectors (N, D) or images (N, H, W) / (N, C, H, W) / (N, H, W, C), got shape "
        f"{x.shape}; reshape it, or give dataset_params.shape for one example's (C, H, W)"
    )


def seeded_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified (train, test) positions, each in file order."""
    test, train = stratified_split(y, fraction, np.random.default_rng(seed))
    return np.sort(train), np.sort(test)


def nonempty(n_train: int, n_test: int, where: str, how: str) -> None:
    for split, n in (("train", n_train), ("test", n_test)):
        if n == 0:
            raise ValueError(f"{where}: the {split} split is empty; {how}")


def build_dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    classes: tuple[str, ...],
    **natural: Any,
) -> Dataset:
    images = x_train.ndim == 4
    mean, std = channel_stats(x_train) if images else ((), ())
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(x_train),
        y_train=y_train,
        x_test=np.ascontiguousarray(x_test),
        y_test=y_test,
        num_classes=num_classes,
        input_shape=tuple(int(s) for s in x_train.shape[1:]),
        mean=mean,
        std=std,
        classes=classes,
        **natural,
    )


_GRAY_MODES = ("1", "L", "LA", "La", "I", "F")


def read_image(source: str | bytes, gray: bool | None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one image file (a path, or its bytes) with Pillow to uint8 ``(C, H, W)``.

    ``gray`` True: one luminance channel; False: RGB (alpha dropped); None: one channel for gray
    images, RGB for the rest. 16-bit gray keeps its top 8 bits. ``size`` (H, W) resizes (bilinear,
    antialiased when shrinking). Raises ``OSError``/``ValueError`` when Pillow cannot decode it.
    """
    from PIL import Image

    with Image.open(source if isinstance(source, str) else io.BytesIO(source)) as f:
        f.load()
        img: Image.Image = f
        if img.mode.startswith("I;16"):
            img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8))
        one = gray if gray is not None else img.mode in _GRAY_MODES or img.mode.startswith("I;16")
        img = img.convert("L" if one else "RGB")
        if size is not None and (img.height, img.width) != tuple(size):
            img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))
