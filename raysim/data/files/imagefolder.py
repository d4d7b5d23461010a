"""``imagefolder``: a dataset from a tree of PNG/JPEG files, decoded once with Pillow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field

from raysim.data.datasets import Dataset, DatasetNotFoundError
from raysim.data.files.common import (
    Fraction,
    Params,
    build_dataset,
    locate,
    missing,
    nonempty,
    read_image,
    seeded_split,
)


class ImageFolderParams(Params):
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


def _folder_layout(data_dir: str | None, params: ImageFolderParams) -> tuple[Path, Path | None]:
    """The training root and the test root (None: split by test_fraction)."""
    root = locate(data_dir, params.path, "imagefolder", "image folder")
    if not root.exists():
        raise missing(
            "imagefolder",
            root,
            "a folder <root>/<class>/*.png|jpg (or <root>/train/<class>/... and <root>/test/<class>/...)",
            "fix data.dataset_params.path / data.data_dir",
        )
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"dataset 'imagefolder': {root} is a file; expected the folder that holds one subfolder per "
            "class. To fix: point data.dataset_params.path / data.data_dir at that folder"
        )
    train, test = root / "train", root / "test"
    if train.is_dir() != test.is_dir():
        have, lack = (train, test) if train.is_dir() else (test, train)
        raise DatasetNotFoundError(
            f"dataset 'imagefolder': {have} exists but {lack} does not; expected both, each with one "
            "subfolder per class. To fix: add it, or put the class folders directly under "
            f"{root} to split them by test_fraction"
        )
    return (train, test) if train.is_dir() else (root, None)


def _listing(
    folder: Path, class_to_idx: dict[str, int] | None, extensions: tuple[str, ...]
) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """(path, class index) of every image under ``folder/<class>/`` (sorted) and the class map."""
    from torchvision.datasets.folder import find_classes, make_dataset

    exts = tuple(e.lower() for e in extensions)
    try:
        found, own = find_classes(str(folder))
    except FileNotFoundError as e:
        raise DatasetNotFoundError(
            f"dataset 'imagefolder': {folder} holds no class folders ({e}); expected "
            f"{folder}/<class>/<image>{'|'.join(exts)}, one subfolder per class"
        ) from None
    if class_to_idx is not None:
        extra = sorted(set(found) - set(class_to_idx))
        if extra:
            raise ValueError(
                f"dataset 'imagefolder': {folder} has class folder(s) {extra} that the training folder lacks; "
                "every test class needs training images"
            )
    mapping = class_to_idx if class_to_idx is not None else own
    counts = dict.fromkeys(found, 0)
    items = make_dataset(str(folder), {c: mapping[c] for c in found}, extensions=exts, allow_empty=True)
    names = {v: c for c, v in mapping.items()}
    for _, idx in items:
        counts[names[idx]] += 1
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise DatasetNotFoundError(
            f"dataset 'imagefolder': class folder {folder / empty[0]} holds no {'/'.join(exts)} files "
            f"({len(empty)} such folders); put its images there, remove it, or set "
            "data.dataset_params.extensions"
        )
    return items, mapping


def _check_imagefolder(*, data_dir: str | None, params: ImageFolderParams) -> str | None:
    """Why ``load_imagefolder`` cannot use the folder (None: it can); lists files, decodes none."""
    try:
        train, test = _folder_layout(data_dir, params)
        _, mapping = _listing(train, None, params.extensions)
        if test is not None:
            _listing(test, mapping, params.extensions)
    except (DatasetNotFoundError, ValueError) as e:
        return str(e)
    return None


def _read_images(items: list[tuple[str, int]], params: ImageFolderParams) -> np.ndarray:
    """Decode every file once (Pillow) into one uint8 (N, C, H, W) array.

    Sizes must agree unless ``size`` resizes them; with ``grayscale`` None gray images are repeated
    to three channels when any image has colour.
    """
    out: list[np.ndarray] = []
    for path, _ in items:
        try:
            img = read_image(path, params.grayscale, params.size)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"dataset 'imagefolder': {path} is not an image Pillow can decode ({e}); replace or remove it"
            ) from e
        if out and img.shape[1:] != out[0].shape[1:]:
            h, w = img.shape[1:]
            raise ValueError(
                f"dataset 'imagefolder': {path} is {w}x{h} (WxH) but {items[0][0]} is "
                f"{out[0].shape[2]}x{out[0].shape[1]}; images of mixed sizes need data.dataset_params.size: "
                "[H, W] to resize them all"
            )
        out.append(img)
    c = max((len(a) for a in out), default=1)
    x = np.empty((len(out), c, *(out[0].shape[1:] if out else (0, 0))), dtype=np.uint8)
    for i, a in enumerate(out):
        x[i] = a  # broadcasts one gray channel to three
    return x


def load_imagefolder(
    *, data_dir: str | None, seed: int, num_clients: int, params: ImageFolderParams
) -> Dataset:
    """A dataset from an ImageFolder tree of PNG/JPEG files (see :class:`ImageFolderParams`).

    Classes are the sorted class folder names of the training root (``classes``); every image is
    decoded once with Pillow into uint8 ``(N, C, H, W)``. Without ``train/`` and ``test/``
    folders a seeded stratified ``test_fraction`` of the images is the test split.
    """
    train_root, test_root = _folder_layout(data_dir, params)
    items, mapping = _listing(train_root, None, params.extensions)
    test_items = _listing(test_root, mapping, params.extensions)[0] if test_root is not None else []
    x = _read_images(items + test_items, params)
    y = np.array([c for _, c in items + test_items], dtype=np.int64)
    classes = tuple(sorted(mapping, key=mapping.__getitem__))
    if test_root is not None:
        train, test = np.arange(len(items)), np.arange(len(items), len(y))
    else:
        train, test = seeded_split(y, params.test_fraction, seed)
    nonempty(
        len(train),
        len(test),
        f"dataset 'imagefolder': {train_root.parent if test_root is not None else train_root}",
        "add images (or raise test_fraction when there are few)",
    )
    return build_dataset("imagefolder", x[train], y[train], x[test], y[test], len(classes), classes)


load_imagefolder.params_model = ImageFolderParams  # type: ignore[attr-defined]
load_imagefolder.check = _check_imagefolder  # type: ignore[attr-defined]
