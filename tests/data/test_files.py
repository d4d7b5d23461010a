"""The file dataset plug-ins (npz, Parquet, ImageFolder) on tiny files written to tmp_path."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydantic import ValidationError

from raysim.data import DatasetNotFoundError, build_federation, channel_stats
from raysim.data.files import (
    ImageFolderParams,
    NpzParams,
    ParquetParams,
    encode_labels,
    load_imagefolder,
    load_npz,
    load_parquet,
)


def load(fn: Any, data_dir: Path | str | None, seed: int = 0, **params: Any) -> Any:
    return fn(
        data_dir=None if data_dir is None else str(data_dir),
        seed=seed,
        num_clients=3,
        params=fn.params_model(**params),
    )


def check(fn: Any, data_dir: Path, **params: Any) -> str | None:
    """The plug-in's check(): why the files cannot be used, without loading them."""
    return fn.check(data_dir=str(data_dir), params=fn.params_model(**params))  # type: ignore[no-any-return]


def refused(
    fn: Any,
    data_dir: Path,
    match: str,
    exc: type[Exception] = ValueError,
    *,
    found: bool = True,
    **params: Any,
) -> str:
    """The loader refuses with a message matching ``match`` (returned). ``found``: check() finds the
    problem too, with the same message (missing files, keys, columns, layout); else check() passes,
    because it reads no data (content problems: NaN, labels, lengths, undecodable images)."""
    with pytest.raises(exc, match=match) as info:
        load(fn, data_dir, **params)
    why = check(fn, data_dir, **params)
    if found:
        assert why == str(info.value)
    else:
        assert why is None
    return str(info.value)


def assert_dataset(ds: Any) -> None:
    """The Dataset invariants every loader promises."""
    for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a.reshape(-1)[0] = 0
    assert ds.y_train.dtype == ds.y_test.dtype == np.int64
    assert ds.input_shape == ds.x_train.shape[1:] == ds.x_test.shape[1:]
    assert len(ds.classes) == ds.num_classes
    if ds.x_train.ndim == 4:
        assert ds.x_train.dtype == np.uint8
        assert (ds.mean, ds.std) == channel_stats(ds.x_train)
    else:
        assert ds.x_train.dtype == np.float32 and ds.x_train.ndim == 2 and ds.mean == ds.std == ()


def images(n: int, seed: int = 0, shape: tuple[int, ...] = (5, 6)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


# -------------------------------------------------------------------------------------------- npz


def test_npz_train_and_test_arrays(tmp_path: Path) -> None:
    x, xt = images(20), images(8, 1)
    y, yt = np.arange(20) % 3, np.arange(8) % 3
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    ds = load(load_npz, tmp_path)  # data_dir holding exactly one .npz
    assert_dataset(ds)
    assert ds.x_train.shape == (20, 1, 5, 6) and ds.input_shape == (1, 5, 6)
    assert np.array_equal(ds.x_train[:, 0], x) and np.array_equal(ds.x_test[:, 0], xt)
    assert np.array_equal(ds.y_train, y) and np.array_equal(ds.y_test, yt)
    assert ds.num_classes == 3 and ds.classes == ("0", "1", "2") and ds.name == "npz"
    assert check(load_npz, tmp_path) is None


def test_npz_vectors_split_by_seed_stratified_and_reproducible(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float64)
    x[:, 0] = np.arange(100)  # row id, to find each example again
    y = np.repeat(["cat", "dog"], [60, 40])
    np.savez(tmp_path / "v.npz", features=x, target=y)
    kw = dict(path=str(tmp_path / "v.npz"), x_train="features", y_train="target", test_fraction=0.25)
    ds = load(load_npz, None, seed=1, **kw)
    assert_dataset(ds)
    assert ds.x_train.shape == (75, 4) and ds.x_test.shape == (25, 4)
    assert ds.classes == ("cat", "dog") and ds.num_classes == 2
    assert np.bincount(ds.y_test).tolist() == [15, 10]  # stratified: 60/40 of 25
    rows = np.concatenate([ds.x_train[:, 0], ds.x_test[:, 0]]).astype(int)
    assert sorted(rows) == list(range(100))  # disjoint, covering
    assert np.array_equal(ds.y_train, (np.asarray(y)[ds.x_train[:, 0].astype(int)] == "dog").astype(int))
    again, other = load(load_npz, None, seed=1, **kw), load(load_npz, None, seed=2, **kw)
    assert np.array_equal(again.x_test, ds.x_test) and np.array_equal(again.y_train, ds.y_train)
    assert not np.array_equal(other.x_test[:, 0], ds.x_test[:, 0])


def test_npz_shape_layout_and_relative_path(tmp_path: Path) -> None:
    x = images(12, shape=(6, 5, 3))  # channels last
    np.savez(tmp_path / "a.npz", x_train=x, y_train=np.arange(12) % 2)
    np.savez(tmp_path / "b.npz", x_train=x.reshape(12, -1), y_train=np.arange(12) % 2)
    ds = load(load_npz, tmp_path, path="a.npz", test_fraction=0.5)
    assert ds.input_shape == (3, 6, 5) and len(ds.mean) == 3
    flat = load(load_npz, tmp_path, path="b.npz", shape=(6, 5, 3), layout="nhwc", test_fraction=0.5)
    assert np.array_equal(flat.x_train, ds.x_train)
    assert load(load_npz, tmp_path, path="b.npz", test_fraction=0.5).x_train.dtype == np.float32


def test_npz_refusals_name_the_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "d.npz"
    refused(load_npz, tmp_path, "holds no .npz file", DatasetNotFoundError)
    refused(load_npz, tmp_path, r"nope\.npz does not exist", DatasetNotFoundError, path="nope.npz")
    with pytest.raises(DatasetNotFoundError, match="dataset_params.path"):
        load(load_npz, None)
    np.savez(f, x=images(4), y=np.arange(4))
    msg = refused(load_npz, tmp_path, "has no array 'x_train'; it holds x, y")
    assert str(f) in msg and "dataset_params.x_train" in msg
    assert "has no array 'x_train'" in check(load_npz, tmp_path)
    np.savez(tmp_path / "e.npz", x=images(2))
    assert "2 .npz files" in check(load_npz, tmp_path)
    (tmp_path / "e.npz").unlink()
    np.savez(f, x_train=images(4), y_train=np.arange(4), x_test=images(2))
    refused(load_npz, tmp_path, "test array 'x_test' but no 'y_test'")
    np.savez(f, x_train=images(4), y_train=np.arange(3))
    refused(load_npz, tmp_path, "'x_train' holds 4 examples but 'y_train' holds 3 labels", found=False)
    bad = np.ones((10, 3))
    bad[7, 1] = np.nan
    np.savez(f, x_train=bad, y_train=np.arange(10) % 2)
    refused(load_npz, tmp_path, r"'x_train'.*1 examples hold NaN .*row 7", found=False)
    np.savez(f, x_train=images(10), y_train=np.arange(10))
    refused(
        load_npz, tmp_path, r"'y_train'.*labels are outside 0\.\.4 .*row 5: 5", num_classes=5, found=False
    )
    np.savez(f, x_train=np.ones((10, 2, 2)), y_train=np.arange(10))
    refused(load_npz, tmp_path, "images must be uint8 pixels 0..255, got float64", found=False)
    np.savez(f, x_train=images(10), y_train=np.full(10, 0.5))
    refused(load_npz, tmp_path, "not whole numbers", found=False)
    np.savez(f, x_train=np.array([{"a": 1}] * 4, dtype=object), y_train=np.arange(4))
    refused(load_npz, tmp_path, "cannot be read without pickle", found=False)
    np.savez(f, x_train=images(3), y_train=np.arange(3))
    refused(load_npz, tmp_path, "the test split is empty", test_fraction=0.1, found=False)
    refused(load_npz, tmp_path, r"shape=\[2, 2\] needs 4", shape=(2, 2), found=False)
    f.write_bytes(b"not a zip")
    refused(load_npz, tmp_path, "not a readable .npz file")


def test_params_models_forbid_unknown_keys_and_are_frozen() -> None:
    for model in (NpzParams, ParquetParams, ImageFolderParams):
        with pytest.raises(ValidationError, match="typo"):
            model(**{"typo": 1})
        with pytest.raises(ValidationError):
            model().test_fraction = 0.5  # type: ignore[misc]
        with pytest.raises(ValidationError):
            model(test_fraction=1.0)


def test_encode_labels() -> None:
    codes, k, names = encode_labels(np.array([7, 3, 7, 5]), "f", None)
    assert codes.tolist() == [2, 0, 2, 1] and k == 3 and names == ("3", "5", "7")
    codes, k, names = encode_labels(np.array([1.0, 0.0]), "f", 4)
    assert codes.tolist() == [1, 0] and codes.dtype == np.int64 and k == 4
    with pytest.raises(ValueError, match="1 labels are missing"):
        encode_labels(np.array(["a", None], dtype=object), "f column 'y'", None)
    with pytest.raises(ValueError, match="num_classes"):
        encode_labels(np.array(["a", "b"]), "f", 3)


# ---------------------------------------------------------------------------------------- parquet


def write(path: Path, **cols: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)
    return path


def test_parquet_scalar_columns_to_vectors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 40
    a, b = rng.normal(size=n), rng.integers(0, 9, size=n)
    y = np.where(np.arange(n) < 30, "x", "y")
    write(tmp_path / "t.parquet", a=a, b=b, label=y, note=np.array(["?"] * n))
    ds = load(load_parquet, tmp_path / "t.parquet", features=("b", "a"), test_fraction=0.25)
    assert_dataset(ds)
    assert ds.x_train.shape == (30, 2) and ds.classes == ("x", "y")
    rows = np.concatenate([ds.x_train, ds.x_test])
    assert sorted(map(tuple, rows)) == sorted(zip(b.astype(np.float32), a.astype(np.float32), strict=True))
    assert np.bincount(ds.y_test).tolist() == [8, 2]
    again = load(load_parquet, tmp_path / "t.parquet", features=("b", "a"), test_fraction=0.25)
    assert np.array_equal(again.x_test, ds.x_test)
    msg = refused(load_parquet, tmp_path, "feature column 'note' is string")
    assert "t.parquet" in msg


def test_parquet_list_column_images_and_split_column(tmp_path: Path) -> None:
    x = images(30, shape=(2, 3, 3))
    y = np.arange(30) % 5
    split = np.where(np.arange(30) % 3 == 0, "test", "train")
    pix = pa.array(list(x.reshape(30, -1)), type=pa.list_(pa.uint8()))
    write(tmp_path / "p.parquet", pixels=pix, label=y, part=split)
    ds = load(load_parquet, tmp_path, shape=(2, 3, 3), split="part")
    assert_dataset(ds)
    assert np.array_equal(ds.x_test, x[split == "test"]) and np.array_equal(ds.y_train, y[split == "train"])
    assert ds.natural_train is None and ds.input_shape == (2, 3, 3)
    # no shape: the lists are vectors
    assert load(load_parquet, tmp_path, split="part").x_train.shape == (20, 18)
    # the same pixels as raw bytes, as (H, W, C) rows
    raw = pa.array([r.tobytes() for r in x.transpose(0, 2, 3, 1).reshape(30, -1)], type=pa.binary())
    write(tmp_path / "p.parquet", pixels=raw, label=y, part=split)
    assert np.array_equal(
        load(load_parquet, tmp_path, shape=(3, 3, 2), layout="nhwc", split="part").x_test, ds.x_test
    )
    refused(load_parquet, tmp_path, r"holds bytes per row: give one image's shape", split="part")


def test_parquet_encoded_png_column(tmp_path: Path) -> None:
    x = images(6, shape=(1, 4, 5))
    pngs = [write_png_bytes(im) for im in x]
    write(
        tmp_path / "i.parquet", image=pa.array([{"bytes": b, "path": None} for b in pngs]), label=[0, 1] * 3
    )
    ds = load(load_parquet, tmp_path, shape=(1, 4, 5), test_fraction=0.5)
    assert np.array_equal(
        load(load_parquet, tmp_path, shape=(4, 5, 1), layout="nhwc", test_fraction=0.5).x_train, ds.x_train
    )
    assert np.array_equal(
        np.sort(np.concatenate([ds.x_train, ds.x_test]).reshape(6, -1), axis=0),
        np.sort(x.reshape(6, -1), axis=0),
    )
    refused(
        load_parquet,
        tmp_path,
        r"row 0 is a 5x4 image but dataset_params.shape is \[1, 5, 4\]",
        shape=(1, 5, 4),
        found=False,
    )


def write_png_bytes(img: np.ndarray) -> bytes:
    """(C, H, W) uint8 as PNG bytes."""
    buf = io.BytesIO()
    pil(img).save(buf, format="PNG")
    return buf.getvalue()


def pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img[0] if len(img) == 1 else img.transpose(1, 2, 0))


def test_parquet_natural_clients_each_carry_their_id(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    owners = rng.choice(["u7", "u1", "u3"], size=90)
    rowid = np.arange(90)
    y = rng.integers(0, 4, size=90)
    # feature 0 is the row: every example can be traced back to its client
    write(tmp_path / "c.parquet", row=rowid.astype(np.float64), label=y, user=owners)
    ds = load(load_parquet, tmp_path, client="user", test_fraction=0.3, seed=5)
    assert_dataset(ds)
    assert ds.client_ids == ("u1", "u3", "u7") and len(ds.natural_train) == len(ds.natural_test) == 3
    for k, cid in enumerate(ds.client_ids):
        tr, te = ds.natural_train[k], ds.natural_test[k]
        assert not tr.flags.writeable
        assert (owners[ds.x_train[tr, 0].astype(int)] == cid).all()
        assert (owners[ds.x_test[te, 0].astype(int)] == cid).all()
        n = (owners == cid).sum()
        assert len(te) == round(0.3 * n) and len(tr) + len(te) == n
    assert sum(map(len, ds.natural_train)) == len(ds.y_train)
    assert np.array_equal(
        load(load_parquet, tmp_path, client="user", test_fraction=0.3, seed=5).x_test, ds.x_test
    )
    fed = build_federation(ds, scheme="natural", num_clients=3, seed=0, val_fraction=0.0)
    for k, shard in enumerate(fed.clients):
        assert (owners[ds.x_train[shard.train_idx, 0].astype(int)] == ds.client_ids[k]).all()
        assert np.array_equal(np.sort(shard.test_idx), ds.natural_test[k])
    # a split column decides each client's test rows
    split = np.where(rowid % 4 == 0, "test", "train")
    write(tmp_path / "c.parquet", row=rowid.astype(np.float64), label=y, user=owners, s=split)
    ds = load(load_parquet, tmp_path, client="user", split="s")
    for k, cid in enumerate(ds.client_ids):
        assert sorted(ds.x_test[ds.natural_test[k], 0].astype(int)) == list(
            rowid[(owners == cid) & (rowid % 4 == 0)]
        )


def test_parquet_folder_reads_files_in_path_order(tmp_path: Path) -> None:
    write(tmp_path / "d" / "b.parquet", f=[3.0, 4.0], label=[1, 0])
    write(tmp_path / "d" / "a.parquet", f=[1.0, 2.0], label=[0, 1])
    write(tmp_path / "d" / "sub" / "c.parquet", f=[5.0, 6.0], label=[1, 0])
    (tmp_path / "d" / "README.txt").write_text("ignored")
    ds = load(load_parquet, tmp_path, path="d", split=None, test_fraction=0.5, seed=0)
    assert sorted(np.concatenate([ds.x_train, ds.x_test])[:, 0]) == [1, 2, 3, 4, 5, 6]
    assert list(ds.x_train[:, 0]) == sorted(ds.x_train[:, 0])  # file order kept (a, b, sub/c)
    write(tmp_path / "d" / "b.parquet", f=[3.0, np.nan], label=[1, 0])
    msg = refused(load_parquet, tmp_path, r"row 3\)", path="d", found=False)
    assert msg.endswith(f"(row 3 of the folder is row 1 of {tmp_path / 'd' / 'b.parquet'})")
    write(tmp_path / "d" / "z.parquet", f=[1, 2], label=[0, 1])  # int64 column, the others double
    msg = refused(load_parquet, tmp_path, "must have the same columns and types", path="d")
    assert "z.parquet" in msg


def test_parquet_refusals_name_file_and_column(tmp_path: Path) -> None:
    f = tmp_path / "t.parquet"
    refused(load_parquet, tmp_path, "holds no \\*.parquet files", DatasetNotFoundError)
    refused(load_parquet, tmp_path, "nope.parquet does not exist", DatasetNotFoundError, path="nope.parquet")
    write(f, a=[1.0, 2.0, 3.0, 4.0], y=[0, 1, 0, 1])
    msg = refused(load_parquet, tmp_path, r"has no column 'label'; its columns are a \(double\), y \(int64\)")
    assert str(f) in msg and "dataset_params.label" in msg
    assert "has no column 'label'" in check(load_parquet, tmp_path)
    assert check(load_parquet, tmp_path, label="y") is None
    refused(load_parquet, tmp_path, "has no column 'b'", label="y", features=("a", "b"))
    refused(load_parquet, tmp_path, "has no column 'who'", label="y", client="who")
    write(f, a=[1.0, np.nan, 3.0, 4.0], label=[0, 1, 0, 1])
    refused(
        load_parquet,
        tmp_path,
        r"column 'a': 1 examples hold NaN or infinite features \(first at row 1\)",
        found=False,
    )
    write(f, a=pa.array([1.0, None, 3.0, 4.0]), label=[0, 1, 0, 1])
    refused(load_parquet, tmp_path, r"column 'a': 1 rows are empty \(first at row 1\)", found=False)
    write(f, a=[1.0, 2.0, 3.0, 4.0], label=pa.array([0, None, 0, 1]))
    refused(load_parquet, tmp_path, r"column 'label': 1 labels are missing", found=False)
    write(f, a=[1.0, 2.0, 3.0, 4.0], label=[0, 1, 9, 1])
    refused(
        load_parquet,
        tmp_path,
        r"column 'label': 1 labels are outside 0\.\.1 .*row 2: 9",
        num_classes=2,
        found=False,
    )
    write(f, a=[1.0, 2.0, 3.0, 4.0], label=[0, 1, 0, 1], s=["train", "test", "dev", "train"])
    refused(load_parquet, tmp_path, r"column 's': row 2 is 'dev'", split="s", found=False)
    write(f, a=[1.0, 2.0, 3.0, 4.0], label=[0, 1, 0, 1], s=["train"] * 4)
    refused(
        load_parquet,
        tmp_path,
        r"the test split is empty; put 'train' and 'test' rows in column 's'",
        split="s",
        found=False,
    )
    write(f, a=[1.0, 2.0, 3.0, 4.0], label=[0, 1, 0, 1], s=["train", "train", "test", "test"], u=[1, 1, 2, 2])
    refused(
        load_parquet,
        tmp_path,
        "column 'u': client '2' has no training rows",
        split="s",
        client="u",
        found=False,
    )
    write(f, v=pa.array([[1, 2], [3, 4], [5], [6, 7]], type=pa.list_(pa.int64())), label=[0, 1, 0, 1])
    refused(load_parquet, tmp_path, r"column 'v': row 2 holds 1 values but row 0 holds 2", found=False)
    write(f, v=pa.array([[1, 2], [3, 4], [5, 6], [7, 8]]), a=[1, 2, 3, 4], label=[0, 1, 0, 1])
    refused(load_parquet, tmp_path, "must be the only feature")
    write(f, v=pa.array([[1, 2], [3, 4], [5, 6], [7, 300]]), label=[0, 1, 0, 1])
    refused(
        load_parquet,
        tmp_path,
        "images must be uint8 pixels 0..255, got int64 values 1..300",
        shape=(1, 2),
        found=False,
    )
    f.write_bytes(b"PAR1 not really")
    assert "not a readable Parquet file" in check(load_parquet, tmp_path)


# ------------------------------------------------------------------------------------ imagefolder


def make_folder(
    root: Path, per_class: dict[str, int], shape: tuple[int, int, int] = (1, 6, 5), seed: int = 0
) -> None:
    rng = np.random.default_rng(seed)
    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pil(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(root / cls / f"{i}.png")


def test_imagefolder_seeded_split(tmp_path: Path) -> None:
    make_folder(tmp_path, {"cat": 6, "ant": 4})
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = load(load_imagefolder, tmp_path, test_fraction=0.5)
    assert_dataset(ds)
    assert ds.classes == ("ant", "cat") and ds.input_shape == (1, 6, 5) and ds.name == "imagefolder"
    assert np.bincount(ds.y_test).tolist() == [2, 3] and len(ds.y_train) == 5
    stored = np.concatenate([ds.x_train, ds.x_test])
    cat0 = np.asarray(Image.open(tmp_path / "cat" / "0.png"))[None]
    assert any(np.array_equal(s, cat0) for s in stored[np.concatenate([ds.y_train, ds.y_test]) == 1])
    again = load(load_imagefolder, tmp_path, test_fraction=0.5)
    assert np.array_equal(again.x_test, ds.x_test) and np.array_equal(again.y_test, ds.y_test)
    assert check(load_imagefolder, tmp_path) is None


def test_imagefolder_train_test_folders_colour_and_resize(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"a": 2, "b": 2}, shape=(3, 8, 8))
    make_folder(tmp_path / "test", {"b": 1}, shape=(1, 8, 8), seed=1)  # a gray one among RGB
    pil(np.zeros((3, 8, 8), np.uint8)).save(tmp_path / "test" / "b" / "x.JPG", format="JPEG")
    ds = load(load_imagefolder, tmp_path)
    assert_dataset(ds)
    assert (
        ds.input_shape == (3, 8, 8) and ds.y_train.tolist() == [0, 0, 1, 1] and ds.y_test.tolist() == [1, 1]
    )
    g = ds.x_test[0]
    assert np.array_equal(g[0], g[1]) and np.array_equal(g[1], g[2])  # gray repeated to RGB
    gray = load(load_imagefolder, tmp_path, grayscale=True, size=(4, 3))
    assert gray.input_shape == (1, 4, 3) and len(gray.mean) == 1
    assert load(load_imagefolder, tmp_path, grayscale=False).input_shape == (3, 8, 8)


def test_imagefolder_refusals(tmp_path: Path) -> None:
    refused(load_imagefolder, tmp_path, "nope does not exist", DatasetNotFoundError, path="nope")
    refused(load_imagefolder, tmp_path, "holds no class folders", DatasetNotFoundError)
    make_folder(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "c").mkdir()
    msg = refused(
        load_imagefolder, tmp_path, "class folder .*c holds no .png/.jpg/.jpeg files", DatasetNotFoundError
    )
    assert "holds no" in check(load_imagefolder, tmp_path)
    assert str(tmp_path / "c") in msg
    (tmp_path / "c").rmdir()
    pil(np.zeros((1, 3, 3), np.uint8)).save(tmp_path / "b" / "small.png")
    msg = refused(
        load_imagefolder,
        tmp_path,
        r"small\.png is 3x3 \(WxH\) but .*0\.png is 5x6; .*size: \[H, W\]",
        found=False,
    )
    assert load(load_imagefolder, tmp_path, size=(6, 5), test_fraction=0.4).input_shape == (1, 6, 5)
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG garbage")
    refused(
        load_imagefolder, tmp_path, r"broken\.png is not an image Pillow can decode", size=(6, 5), found=False
    )
    root = tmp_path / "tt"
    make_folder(root / "train", {"a": 1})
    refused(load_imagefolder, root, r"train exists but .*test does not", DatasetNotFoundError)
    make_folder(root / "test", {"z": 1})
    refused(load_imagefolder, root, r"class folder\(s\) \['z'\] that the training folder lacks")


def test_parquet_from_pandas_leaves_the_index_out(tmp_path: Path) -> None:
    import pandas as pd

    df = pd.DataFrame({"a": np.arange(10.0), "b": np.arange(10.0) * 2, "label": ["p", "q"] * 5})
    df[df.a % 3 != 0].to_parquet(tmp_path / "t.parquet")  # the filtered index 1, 2, 4, ... is a column
    assert "__index_level_0__" in pq.read_schema(tmp_path / "t.parquet").names
    ds = load(load_parquet, tmp_path, test_fraction=0.25)
    assert ds.input_shape == (2,)
    assert sorted(np.concatenate([ds.x_train, ds.x_test])[:, 0]) == [1, 2, 4, 5, 7, 8]
    # a hive-partitioned folder: the folder name is not a column, and the message says so
    write(tmp_path / "h" / "user=u1" / "p.parquet", a=[1.0, 2.0], label=[0, 1])
    refused(
        load_parquet,
        tmp_path,
        r"no column 'user'.*folders named user=\.\.\. are not read",
        path="h",
        client="user",
    )
