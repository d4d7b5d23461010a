"""Loaders on tiny hand-written files in each on-disk format, plus the real offline datasets."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raysim.data import (
    DATASETS,
    DatasetNotFoundError,
    channel_stats,
    dataset_available,
    load_dataset,
    read_idx,
)
from raysim.data import datasets as D

# ------------------------------------------------------------------------------------ file writers


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = False) -> Path:
    """Write ``arr`` in idx format: 00 00 <type> <ndim>, big-endian uint32 dims, big-endian data."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    code = codes[arr.dtype]
    payload = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload += arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def tiny_images(n: int, h: int = 4, w: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w), dtype=np.uint8)


def write_mnist_like(folder: Path, names: dict[str, str], n_train: int, n_test: int, classes: int, gz: bool):
    x_tr, x_te = tiny_images(n_train, seed=1), tiny_images(n_test, seed=2)
    y_tr = (np.arange(n_train) % classes).astype(np.uint8)
    y_te = (np.arange(n_test) % classes).astype(np.uint8)
    write_idx(folder / names["train_images"], x_tr, gz=gz)
    write_idx(folder / names["train_labels"], y_tr, gz=gz)
    write_idx(folder / names["test_images"], x_te, gz=gz)
    write_idx(folder / names["test_labels"], y_te, gz=gz)
    return x_tr, y_tr, x_te, y_te


def py2_cifar_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """The opcodes Python 2 + numpy wrote for the original CIFAR-10 batches (protocol 2, str payloads)."""

    def s(b: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING: a Python 2 str
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)

    shape = b"(" + b"".join(b"J" + struct.pack("<i", d) for d in data.shape) + b"t"
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R"
        + b"(K\x01" + shape + b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R"
        + b"(K\x03" + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + s(data.tobytes()) + b"tb"
    )  # fmt: skip
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + array + s(b"labels") + label_list + b"u."


def write_cifar(
    folder: Path, per_batch: int = 3, n_test: int = 4, *, py2: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        if py2:
            (folder / name).write_bytes(py2_cifar_batch(data, labels))
        else:
            with open(folder / name, "wb") as f:
                pickle.dump({b"batch_label": b"x", b"data": data, b"labels": labels}, f, protocol=2)
        xs.append(data)
        ys.append(np.array(labels))
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture
def no_default_fashion(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(D, "FASHION_MNIST_DEFAULT_DIR", tmp_path / "not-installed")


# ------------------------------------------------------------------------------------------ idx


def test_read_idx_hand_made_uint8_and_int32(tmp_path: Path) -> None:
    raw = bytes([0, 0, 0x08, 2]) + struct.pack(">II", 2, 3) + bytes(range(6))
    (tmp_path / "a").write_bytes(raw)
    raw32 = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + struct.pack(">ii", 258, -1)
    (tmp_path / "b").write_bytes(gzip.compress(raw32))

    a = read_idx(tmp_path / "a")
    b = read_idx(tmp_path / "b")

    assert a.dtype == np.uint8 and a.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert b.dtype == np.int32 and b.tolist() == [258, -1]


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path: Path) -> None:
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "short").write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10) + bytes(3))

    with pytest.raises(ValueError, match=r"not an idx file: its first bytes are 89504e47"):
        read_idx(tmp_path / "png")
    with pytest.raises(
        ValueError, match=r"truncated or corrupt: dimensions \(10,\) need 10 data bytes, found 3"
    ):
        read_idx(tmp_path / "short")


# --------------------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_torchvision_layout(tmp_path: Path, gz: bool) -> None:
    x_tr, y_tr, x_te, y_te = write_mnist_like(tmp_path / "MNIST" / "raw", D._MNIST_FILES, 12, 5, 10, gz)

    ds = load_dataset("mnist", data_dir=str(tmp_path))

    assert ds.name == "mnist" and ds.num_classes == 10 and ds.input_shape == (1, 4, 4)
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape == (12, 1, 4, 4)
    assert np.array_equal(ds.x_train[:, 0], x_tr) and np.array_equal(ds.x_test[:, 0], x_te)
    assert ds.y_train.dtype == np.int64 and ds.y_train.tolist() == y_tr.tolist()
    assert ds.y_test.tolist() == y_te.tolist()
    assert ds.mean == pytest.approx((x_tr.mean() / 255,)) and ds.std == pytest.approx((x_tr.std() / 255,))
    assert dataset_available("mnist", str(tmp_path)) is None


def test_emnist_images_are_transposed_back(tmp_path: Path) -> None:
    upright = np.zeros((3, 4, 4), dtype=np.uint8)
    upright[:, 0, :] = 255  # a bar along the top row
    raw = tmp_path / "EMNIST" / "raw"
    f = D._EMNIST_FILES
    write_idx(raw / f["train_images"], upright.transpose(0, 2, 1).copy(), gz=True)  # stored transposed
    write_idx(raw / f["train_labels"], np.array([0, 46, 20], dtype=np.uint8), gz=True)
    write_idx(raw / f["test_images"], upright[:1].transpose(0, 2, 1).copy(), gz=True)
    write_idx(raw / f["test_labels"], np.array([3], dtype=np.uint8), gz=True)

    ds = load_dataset("emnist", data_dir=str(tmp_path))

    assert ds.num_classes == 47 and ds.y_train.tolist() == [0, 46, 20]
    assert np.array_equal(ds.x_train[:, 0], upright)
    assert ds.x_train.flags.c_contiguous


@pytest.mark.parametrize("py2", [False, True], ids=["python3-pickles", "python2-pickles"])
def test_cifar10_pickles(tmp_path: Path, py2: bool) -> None:
    x, y = write_cifar(tmp_path / "cifar-10-batches-py", py2=py2)

    ds = load_dataset("cifar10", data_dir=str(tmp_path))

    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.input_shape == (3, 32, 32) and len(ds.mean) == 3
    # row layout: 1024 red values, then 1024 green, then 1024 blue, each row-major 32x32
    assert ds.x_train[0, 1, 2, 5] == x[0, 1024 + 2 * 32 + 5]
    assert ds.x_test[3, 2, 31, 31] == x[-1, 3071]
    assert ds.y_train.tolist() == y[:15].tolist() and ds.y_test.tolist() == y[15:].tolist()
    assert ds.mean[2] == pytest.approx(x[:15, 2048:].mean() / 255)


def test_cifar10_refuses_pickles_that_run_code(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": os.system, b"labels": []}, f)  # a reference to a callable, not an array

    with pytest.raises(ValueError, match=r"data_batch_3 is not a CIFAR-10 python batch: refusing to load"):
        load_dataset("cifar10", data_dir=str(tmp_path))


def test_fashion_mnist_from_data_dir(tmp_path: Path, no_default_fashion: None) -> None:
    write_mnist_like(tmp_path / "fm", D._MNIST_FILES, 8, 4, 10, gz=True)

    ds = load_dataset("fashion-mnist", data_dir=str(tmp_path / "fm"))

    assert ds.x_train.shape == (8, 1, 4, 4) and ds.num_classes == 10


def test_digits_scaled_and_stratified() -> None:
    ds = load_dataset("digits", seed=3)

    assert ds.x_train.dtype == np.uint8 and ds.input_shape == (1, 8, 8)
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert len(ds.y_test) == 359  # round(0.2 * 1797)
    # 0..16 scaled by 255/16 and rounded: 16 -> 255, 8 -> 128 (rint of 127.5), 1 -> 16
    values = set(np.unique(ds.x_train).tolist())
    assert {0, 16, 128, 255} <= values
    assert values <= {int(np.rint(v * 255 / 16)) for v in range(17)}
    # stratified: each class's test share within one example of 20%
    tr, te = np.bincount(ds.y_train), np.bincount(ds.y_test)
    assert np.all(np.abs(te - 0.2 * (tr + te)) <= 1)
    again, other = load_dataset("digits", seed=3), load_dataset("digits", seed=4)
    assert np.array_equal(again.x_test, ds.x_test)
    assert not np.array_equal(other.y_test, ds.y_test)


def test_synthetic_structure_and_determinism() -> None:
    ds = load_dataset("synthetic", seed=1, num_clients=30)

    assert ds.x_train.dtype == np.float32 and ds.input_shape == (60,) and ds.num_classes == 10
    assert ds.mean == () and ds.std == ()
    assert ds.natural_train is not None and ds.natural_test is not None
    assert len(ds.natural_train) == len(ds.natural_test) == 30
    tr = np.concatenate(ds.natural_train)
    te = np.concatenate(ds.natural_test)
    assert np.array_equal(tr, np.arange(len(ds.y_train))) and np.array_equal(te, np.arange(len(ds.y_test)))
    for a, b in zip(ds.natural_train, ds.natural_test, strict=True):
        n = len(a) + len(b)
        assert n >= 50 and len(a) == int(np.floor(0.8 * n))
    same = load_dataset("synthetic", seed=1, num_clients=30)
    other = load_dataset("synthetic", seed=2, num_clients=30)
    assert np.array_equal(same.x_train, ds.x_train) and np.array_equal(same.y_test, ds.y_test)
    assert len(other.y_train) != len(ds.y_train) or not np.array_equal(other.x_train, ds.x_train)


def test_synthetic_covariance_and_beta() -> None:
    ds = load_dataset("synthetic", seed=0, num_clients=100, synthetic_beta=0.0)
    assert ds.natural_train is not None
    # within a client x ~ N(v_k, Sigma) with Sigma_jj = j^-1.2: pooled within-client variance
    centred = np.concatenate([ds.x_train[p] - ds.x_train[p].mean(axis=0) for p in ds.natural_train])
    var = (centred.astype(np.float64) ** 2).sum(axis=0) / (len(centred) - len(ds.natural_train))
    expected = np.arange(1, 61) ** -1.2
    assert np.allclose(var, expected, rtol=0.05)

    # beta spreads the clients' feature means: B_k ~ N(0, beta) shifts every coordinate of v_k
    def spread(beta: float) -> float:
        d = load_dataset("synthetic", seed=0, num_clients=40, synthetic_beta=beta)
        assert d.natural_train is not None
        return float(np.std([d.x_train[p].mean() for p in d.natural_train]))

    assert spread(0.0) < 0.5 < 3.0 < spread(5.0)


def test_loaded_arrays_are_read_only() -> None:
    ds = load_dataset("digits")

    with pytest.raises(ValueError, match="read-only"):
        ds.x_train[0, 0, 0, 0] = 1


def test_channel_stats_hand_computed() -> None:
    x = np.array([[[[0, 255]], [[51, 51]]]], dtype=np.uint8)  # one image, 2 channels of 1x2

    mean, std = channel_stats(x)

    assert mean == pytest.approx((0.5, 0.2)) and std == pytest.approx((0.5, 0.0))


def test_channel_stats_by_blocks_equal_one_bincount(monkeypatch: pytest.MonkeyPatch) -> None:
    """channel_stats counts a block of images at a time (no int64 copy of the whole array): the
    same bits as one bincount over everything, blocks that do not divide the images included."""
    import raysim.data.datasets as D

    x = np.random.default_rng(3).integers(0, 256, size=(101, 3, 5, 4), dtype=np.uint8)
    levels = np.arange(256, dtype=np.float64) / 255.0
    want_m, want_s = [], []
    for c in range(3):
        counts = np.bincount(x[:, c].reshape(-1), minlength=256).astype(np.float64)
        m = float(counts @ levels / counts.sum())
        want_m.append(m)
        want_s.append(float(np.sqrt(float(counts @ (levels - m) ** 2 / counts.sum()))))
    for block in (1, 7, 100, 101, 4096):
        monkeypatch.setattr(D, "_STATS_BLOCK", block)
        assert channel_stats(x) == (tuple(want_m), tuple(want_s)), block


# ------------------------------------------------------------------------------- missing / unknown


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar100'; valid names: fashion-mnist, digits"):
        load_dataset("cifar100")
    assert "valid names" in (dataset_available("cifar100") or "")
    assert set(DATASETS) == {"fashion-mnist", "digits", "synthetic", "mnist", "emnist", "cifar10"} | {
        "npz",
        "parquet",
        "imagefolder",  # the file datasets of raysim.data.files, imported on first use
    }


def test_fashion_mnist_missing_says_apt_get_and_data_dir(tmp_path: Path, no_default_fashion: None) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", data_dir=str(tmp_path))

    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and str(tmp_path) in msg
    assert "apt-get install -y dataset-fashion-mnist" in msg and "--data-dir" in msg
    assert isinstance(err.value, FileNotFoundError)
    assert dataset_available("fashion-mnist", str(tmp_path)) == msg


@pytest.mark.parametrize(
    ("name", "layout"),
    [("mnist", "MNIST/raw/"), ("emnist", "EMNIST/raw/"), ("cifar10", "cifar-10-batches-py/")],
)
def test_torchvision_style_missing_message(tmp_path: Path, name: str, layout: str) -> None:
    with pytest.raises(DatasetNotFoundError) as no_dir:
        load_dataset(name)
    with pytest.raises(DatasetNotFoundError) as empty_dir:
        load_dataset(name, data_dir=str(tmp_path))

    assert "no data_dir was given" in str(no_dir.value)
    msg = str(empty_dir.value)
    assert layout in msg and "cannot be downloaded" in msg and "--data-dir" in msg and "data.data_dir" in msg
    assert str(tmp_path) in msg


def test_missing_lists_only_the_absent_files(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "MNIST" / "raw", D._MNIST_FILES, 4, 2, 10, gz=False)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()

    problem = dataset_available("mnist", str(tmp_path))

    assert problem is not None and "missing t10k-labels-idx1-ubyte;" in problem
    assert "train-images" not in problem.split(";")[0]


def test_always_available_datasets() -> None:
    assert dataset_available("digits") is None
    assert dataset_available("synthetic", "/nonexistent") is None


# --------------------------------------------------------------------------------- real offline data

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.skipif(
    not FASHION.exists(),
    reason="dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)",
)
def test_real_fashion_mnist() -> None:
    ds = load_dataset("fashion-mnist")

    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    # the published normalisation constants of Fashion-MNIST
    assert ds.mean[0] == pytest.approx(0.2860, abs=1e-4) and ds.std[0] == pytest.approx(0.3530, abs=1e-4)


def test_data_layer_imports_neither_ray_nor_torch() -> None:
    code = (
        "import sys, raysim.data; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'torchvision')))"
    )

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout.strip() == "[]"
