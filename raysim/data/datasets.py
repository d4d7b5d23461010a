"""Dataset loaders: local files only, numpy arrays out.

Every loader returns a :class:`Dataset` whose arrays are read-only (the driver puts them in the
object store once; a client is an index array into them, never a copy). Images are uint8 in
channel-first layout ``(N, C, H, W)``; vector data is float32 ``(N, D)``; labels are int64.

Built-in names (:data:`DATASETS`, the built-in table of ``raysim.plugins`` kind ``datasets``; a
config's ``data.dataset`` may also be an entry point of group ``raysim.datasets`` or an import path
``package.module:loader``, called as ``loader(*, data_dir, seed, num_clients, params)``):

- ``fashion-mnist``: idx files from Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``) or ``data_dir``.
- ``digits``: scikit-learn's bundled 8x8 digits, seeded stratified 80/20 train/test split.
- ``synthetic``: Synthetic(alpha, beta) of the FedProx paper (Li et al., 2020, section 5.1),
  generated procedurally; federated by nature (``natural_train`` / ``natural_test``).
- ``mnist``, ``emnist`` (balanced split), ``cifar10``: torchvision's on-disk layout under ``data_dir``.
  They cannot be downloaded on these machines; a missing file raises :class:`DatasetNotFoundError`.
- ``npz``, ``parquet``, ``imagefolder``: a user's files (``raysim.data.files``, imported on first use).
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from raysim.data.partition import stratified_split

BUILTIN_DATASETS: tuple[str, ...] = ("fashion-mnist", "digits", "synthetic", "mnist", "emnist", "cifar10")
# the built-in datasets known not to be federated by nature (config-time refusal of partition 'natural')
NOT_NATURAL: tuple[str, ...] = ("fashion-mnist", "digits", "mnist", "emnist", "cifar10")

FASHION_MNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")

_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_EMNIST_FILES = {
    "train_images": "emnist-balanced-train-images-idx3-ubyte",
    "train_labels": "emnist-balanced-train-labels-idx1-ubyte",
    "test_images": "emnist-balanced-test-images-idx3-ubyte",
    "test_labels": "emnist-balanced-test-labels-idx1-ubyte",
}
_CIFAR10_FILES = {**{f"data_batch_{i}": f"data_batch_{i}" for i in range(1, 6)}, "test_batch": "test_batch"}

_NUM_CLASSES = {"fashion-mnist": 10, "digits": 10, "synthetic": 10, "mnist": 10, "emnist": 47, "cifar10": 10}

# Synthetic(alpha, beta): 60 features, 10 classes (FedProx paper, section 5.1).
SYNTHETIC_DIM = 60
SYNTHETIC_CLASSES = 10
SYNTHETIC_TRAIN_FRACTION = 0.8


@dataclass(frozen=True, kw_only=True, eq=False)
class Dataset:
    """A loaded dataset. Arrays are made read-only on construction.

    ``mean``/``std`` are the per-channel statistics of ``x_train / 255`` (computed exactly from the
    training split) for uint8 data, and empty tuples for float data. ``natural_train[k]`` /
    ``natural_test[k]`` are client ``k``'s positions into ``x_train`` / ``x_test`` when the dataset is
    federated by nature (``synthetic``), else ``None``. ``classes[c]`` names class ``c`` and
    ``client_ids[k]`` natural client ``k`` when the files say so (``raysim.data.files``), else ``None``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    natural_train: tuple[np.ndarray, ...] | None = None
    natural_test: tuple[np.ndarray, ...] | None = None
    classes: tuple[str, ...] | None = None
    client_ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise ValueError(
                f"dataset {self.name!r}: {len(self.classes)} class names for {self.num_classes} classes"
            )
        if self.client_ids is not None and len(self.client_ids) != len(self.natural_train or ()):
            raise ValueError(f"dataset {self.name!r}: client_ids must name each natural client once")
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if len(x) != len(y):
                raise ValueError(f"dataset {self.name!r}: {len(x)} {split} inputs but {len(y)} labels")
            if tuple(x.shape[1:]) != tuple(self.input_shape):
                raise ValueError(
                    f"dataset {self.name!r}: x_{split} has shape {x.shape}, expected (N, *{self.input_shape})"
                )
            if y.dtype != np.int64:
                raise ValueError(f"dataset {self.name!r}: y_{split} must be int64, got {y.dtype}")
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(
                    f"dataset {self.name!r}: y_{split} has labels outside 0..{self.num_classes - 1} "
                    f"(min {y.min()}, max {y.max()})"
                )
        for arr in (self.x_train, self.y_train, self.x_test, self.y_test):
            arr.setflags(write=False)
        for parts in (self.natural_train, self.natural_test):
            for idx in parts or ():
                idx.setflags(write=False)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where raysim looked; the message says where and how to get them."""


# --------------------------------------------------------------------------------------------- idx


_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently gunzipping it when it starts with the gzip magic."""
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        return f.read()


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (the MNIST family's format), gzipped or not.

    Layout: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions, then one
    big-endian uint32 per dimension, then the data in row-major order.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path} is not an idx file: its first bytes are {raw[:4].hex()}, expected 0000<type><ndim> "
            "(e.g. 00000803 for uint8 images); re-copy the original file"
        )
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: the idx header declares {ndim} dimensions")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: dimensions {dims} need {expected} data bytes, "
            f"found {len(raw) - header}; re-copy the original file"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


# ------------------------------------------------------------------------------------ file lookup


def _find_file(dirs: list[Path], filename: str) -> Path | None:
    for d in dirs:
        for name in (filename, filename + ".gz"):
            p = d / name
            if p.is_file():
                return p
    return None


def _candidate_dirs(name: str, data_dir: str | None) -> list[Path]:
    root = Path(data_dir).expanduser() if data_dir is not None else None
    if name == "fashion-mnist":
        dirs = [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"] if root is not None else []
        return dirs + [FASHION_MNIST_DEFAULT_DIR]
    if root is None:
        return []
    if name == "mnist":
        return [root / "MNIST" / "raw", root]
    if name == "emnist":
        return [root / "EMNIST" / "raw", root / "EMNIST" / "raw" / "gzip", root]
    if name == "cifar10":
        return [root / "cifar-10-batches-py", root]
    return []


def _expected_layout(name: str) -> str:
    if name == "fashion-mnist":
        return f"{', '.join(f + '.gz' for f in _MNIST_FILES.values())} (gzipped or not)"
    if name == "mnist":
        return "<data_dir>/MNIST/raw/{" + ",".join(_MNIST_FILES.values()) + "}[.gz]"
    if name == "emnist":
        return "<data_dir>/EMNIST/raw/{" + ",".join(_EMNIST_FILES.values()) + "}[.gz]"
    return "<data_dir>/cifar-10-batches-py/{data_batch_1..data_batch_5,test_batch} (CIFAR-10 python version)"


def _locate(name: str, data_dir: str | None) -> dict[str, Path]:
    """Find every file a file-backed dataset needs, or raise DatasetNotFoundError saying what to do."""
    files = {"fashion-mnist": _MNIST_FILES, "mnist": _MNIST_FILES, "emnist": _EMNIST_FILES}.get(
        name, _CIFAR10_FILES
    )
    dirs = _candidate_dirs(name, data_dir)
    found = {key: _find_file(dirs, fname) for key, fname in files.items()}
    missing = [files[k] for k, p in found.items() if p is None]
    if not missing:
        return {k: p for k, p in found.items() if p is not None}
    looked = ", ".join(str(d) for d in dirs) if dirs else "nowhere (no data_dir was given)"
    if name == "fashion-mnist":
        how = (
            "install it with `apt-get install -y dataset-fashion-mnist` (files land in "
            f"{FASHION_MNIST_DEFAULT_DIR}) or pass --data-dir (config: data.data_dir) pointing at a "
            "directory that holds them"
        )
    else:
        how = (
            "it cannot be downloaded on this machine: copy the files there yourself as "
            f"{_expected_layout(name)} and pass --data-dir (config: data.data_dir) with that <data_dir>"
        )
    raise DatasetNotFoundError(
        f"dataset {name!r}: missing {', '.join(missing)}; looked in {looked}. To fix: {how}."
    )


def dataset_available(
    name: str, data_dir: str | None = None, params: Mapping[str, Any] | BaseModel | None = None
) -> str | None:
    """``None`` when ``load_dataset(name, data_dir=data_dir)`` would find its data, else why not.

    Checks file presence only (no loading), for config validation: a plug-in dataset's optional
    ``check(*, data_dir, params)`` answers for it (no ``check``: assumed there). An unknown name
    returns the message listing the valid names.
    """
    from raysim.plugins import PluginError, resolve, validate_params

    try:
        loader = resolve("datasets", name)
        check = getattr(loader, "check", None)
        if check is None:
            return None
        return check(data_dir=data_dir, params=validate_params("datasets", name, loader, params))  # type: ignore[no-any-return]
    except PluginError as err:
        return str(err)


# ----------------------------------------------------------------------------------------- loaders


_STATS_BLOCK = 4096  # images per bincount in channel_stats (4096 28x28 images: 26 MB of int64)


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of ``x / 255`` for uint8 ``(N, C, H, W)`` data (via histograms)."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        # counted a block of images at a time: bincount converts its input to int64, 8 bytes per
        # pixel (376 MB at once for Fashion-MNIST's training set, the driver's peak); the counts,
        # and so the statistics, are the same integers whatever the blocks
        counts_int = np.zeros(256, dtype=np.int64)
        for start in range(0, len(x), _STATS_BLOCK):
            counts_int += np.bincount(x[start : start + _STATS_BLOCK, c].reshape(-1), minlength=256)
        counts = counts_int.astype(np.float64)
        total = counts.sum()
        mean = float(counts @ levels / total)
        var = float(counts @ (levels - mean) ** 2 / total)
        means.append(mean)
        stds.append(float(np.sqrt(var)))
    return tuple(means), tuple(stds)


def _image_dataset(
    name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Dataset:
    mean, std = channel_stats(x_train)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=_NUM_CLASSES[name],
        input_shape=tuple(int(s) for s in x_train.shape[1:]),
        mean=mean,
        std=std,
    )


def _load_idx_pair(images: Path, labels: Path, transpose: bool) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise ValueError(f"{images}: expected uint8 images of shape (N, H, W), got {x.dtype} {x.shape}")
    if y.ndim != 1:
        raise ValueError(f"{labels}: expected a 1-d label array, got shape {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels")
    if transpose:
        x = x.transpose(0, 2, 1)
    return np.ascontiguousarray(x[:, None, :, :]), y.astype(np.int64)


def _load_idx_dataset(name: str, data_dir: str | None) -> Dataset:
    files = _locate(name, data_dir)
    transpose = name == "emnist"  # EMNIST's idx files store every image transposed
    x_train, y_train = _load_idx_pair(files["train_images"], files["train_labels"], transpose)
    x_test, y_test = _load_idx_pair(files["test_images"], files["test_labels"], transpose)
    return _image_dataset(name, x_train, y_train, x_test, y_test)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickle CIFAR-10 batches, refusing anything but numpy arrays and builtins.

    Unpickling can run arbitrary code; CIFAR batches only need numpy's array reconstruction.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 encode bytes this way
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a CIFAR-10 batch file: only numpy arrays are "
                "expected; use the original 'CIFAR-10 python version' files"
            )
        return super().find_class(module, name)


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        try:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise ValueError(f"{path} is not a CIFAR-10 python batch: {e}") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 python batch: expected a dict with b'data' and b'labels'")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(
            f"{path}: expected b'data' uint8 (N, 3072) and N labels, got {data.dtype} {data.shape} "
            f"and {len(labels)} labels"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar10(data_dir: str | None) -> Dataset:
    files = _locate("cifar10", data_dir)
    parts = [_load_cifar_batch(files[f"data_batch_{i}"]) for i in range(1, 6)]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _load_cifar_batch(files["test_batch"])
    return _image_dataset("cifar10", x_train, y_train, np.ascontiguousarray(x_test), y_test)


def _load_digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # values are integers 0..16; scale to the full uint8 range
    x = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = np.asarray(bunch.target, dtype=np.int64)
    test, train = stratified_split(y, 0.2, np.random.default_rng(seed))
    train.sort()
    test.sort()
    return _image_dataset("digits", x[train], y[train], x[test], y[test])


def synthetic_client_sizes(num_clients: int, rng: np.random.Generator) -> np.ndarray:
    """Heavy-tailed samples per client: ``50 + floor(LogNormal(4, 2))`` (at least 50, median ~105)."""
    return 50 + np.floor(rng.lognormal(mean=4.0, sigma=2.0, size=num_clients)).astype(np.int64)


def _load_synthetic(seed: int, num_clients: int, alpha: float, beta: float) -> Dataset:
    """Synthetic(alpha, beta) from the FedProx paper (Li et al., 2020, section 5.1).

    For client k: ``u_k ~ N(0, alpha)``, ``W_k ~ N(u_k, 1)`` (10x60), ``b_k ~ N(u_k, 1)`` (10);
    ``B_k ~ N(0, beta)``, ``v_k[j] ~ N(B_k, 1)``; ``x ~ N(v_k, Sigma)`` with diagonal
    ``Sigma_jj = j^-1.2``; ``y = argmax(softmax(W_k x + b_k))``. ``alpha`` controls how much the
    clients' models differ, ``beta`` how much their features differ. The paper writes ``N(0, alpha)``;
    here ``alpha`` and ``beta`` are used as standard deviations (the common reading, so Synthetic(1, 1)
    matches the usual benchmark). Sample counts are heavy-tailed (:func:`synthetic_client_sizes`);
    each client's samples are split 80/20 into its train and test parts.
    """
    if num_clients < 1:
        raise ValueError(f"synthetic: num_clients must be >= 1, got {num_clients}")
    if alpha < 0 or beta < 0:
        raise ValueError(f"synthetic: alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    rng = np.random.default_rng(seed)
    d, c = SYNTHETIC_DIM, SYNTHETIC_CLASSES
    sd = np.arange(1, d + 1, dtype=np.float64) ** -0.6  # sqrt(j^-1.2)
    sizes = synthetic_client_sizes(num_clients, rng)
    xs_tr, ys_tr, xs_te, ys_te = [], [], [], []
    nat_tr, nat_te = [], []
    off_tr = off_te = 0
    for k in range(num_clients):
        u = rng.normal(0.0, alpha)
        w = rng.normal(u, 1.0, size=(c, d))
        b = rng.normal(u, 1.0, size=c)
        big_b = rng.normal(0.0, beta)
        v = rng.normal(big_b, 1.0, size=d)
        n = int(sizes[k])
        x = v + rng.standard_normal((n, d)) * sd
        y = np.argmax(x @ w.T + b, axis=1).astype(np.int64)
        n_tr = int(np.floor(SYNTHETIC_TRAIN_FRACTION * n))
        xs_tr.append(x[:n_tr])
        ys_tr.append(y[:n_tr])
        xs_te.append(x[n_tr:])
        ys_te.append(y[n_tr:])
        nat_tr.append(np.arange(off_tr, off_tr + n_tr, dtype=np.int64))
        nat_te.append(np.arange(off_te, off_te + n - n_tr, dtype=np.int64))
        off_tr += n_tr
        off_te += n - n_tr
    return Dataset(
        name="synthetic",
        x_train=np.concatenate(xs_tr).astype(np.float32),
        y_train=np.concatenate(ys_tr),
        x_test=np.concatenate(xs_te).astype(np.float32),
        y_test=np.concatenate(ys_te),
        num_classes=c,
        input_shape=(d,),
        mean=(),
        std=(),
        natural_train=tuple(nat_tr),
        natural_test=tuple(nat_te),
    )


# ------------------------------------------------------------------------- the built-in table


def _check_files(name: str) -> Callable[..., str | None]:
    def check(*, data_dir: str | None, params: Any = None) -> str | None:
        try:
            _locate(name, data_dir)
        except DatasetNotFoundError as e:
            return str(e)
        return None

    return check


def _idx_loader(name: str) -> Callable[..., Dataset]:
    def load(*, data_dir: str | None, seed: int, num_clients: int, params: Any = None) -> Dataset:
        return _load_idx_dataset(name, data_dir)

    load.check = _check_files(name)  # type: ignore[attr-defined]
    return load


def _digits(*, data_dir: str | None, seed: int, num_clients: int, params: Any = None) -> Dataset:
    return _load_digits(seed)


def _cifar10(*, data_dir: str | None, seed: int, num_clients: int, params: Any = None) -> Dataset:
    return _load_cifar10(data_dir)


_cifar10.check = _check_files("cifar10")  # type: ignore[attr-defined]


class SyntheticParams(BaseModel):
    """Synthetic(alpha, beta): set through ``data.synthetic_alpha`` / ``data.synthetic_beta``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    alpha: Annotated[float, Field(ge=0)] = 1.0
    beta: Annotated[float, Field(ge=0)] = 1.0


def _synthetic(*, data_dir: str | None, seed: int, num_clients: int, params: SyntheticParams) -> Dataset:
    return _load_synthetic(seed, num_clients, params.alpha, params.beta)


_synthetic.params_model = SyntheticParams  # type: ignore[attr-defined]

# name -> loader (the plug-in contract), or an import path imported on first use (raysim.plugins)
DATASETS: dict[str, Callable[..., Dataset] | str] = {
    "fashion-mnist": _idx_loader("fashion-mnist"),
    "digits": _digits,
    "synthetic": _synthetic,
    "mnist": _idx_loader("mnist"),
    "emnist": _idx_loader("emnist"),
    "cifar10": _cifar10,
    "npz": "raysim.data.files:load_npz",
    "parquet": "raysim.data.files:load_parquet",
    "imagefolder": "raysim.data.files:load_imagefolder",
}


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    seed: int = 0,
    num_clients: int = 100,
    synthetic_alpha: float = 1.0,
    synthetic_beta: float = 1.0,
    params: Mapping[str, Any] | BaseModel | None = None,
) -> Dataset:
    """Load dataset ``name`` (built-in, entry point or import path: ``raysim.plugins``) from local
    files or generate it; ``params`` is ``data.dataset_params``, validated by the loader's
    ``params_model``.

    ``seed`` drives the digits train/test split and the synthetic generator; ``num_clients``,
    ``synthetic_alpha`` and ``synthetic_beta`` only apply to ``synthetic``. File-backed datasets raise
    :class:`DatasetNotFoundError` when their files are absent.
    """
    from raysim.plugins import resolve, validate_params

    loader = resolve("datasets", name)
    if name == "synthetic" and not params:
        params = {"alpha": synthetic_alpha, "beta": synthetic_beta}
    p = validate_params("datasets", name, loader, params)
    ds = loader(data_dir=data_dir, seed=seed, num_clients=num_clients, params=p)
    if not isinstance(ds, Dataset):
        raise TypeError(f"dataset {name!r} returned {type(ds).__name__}, not a raysim.data.Dataset")
    return ds
