"""What every peer script of the W1 comparison shares: reading the shared .npz, the Fashion-MNIST
files, raysim's ``cnn-small`` rebuilt in plain torch, evaluation and the result line.

Imports numpy and torch only (never raysim): it runs inside each peer's own virtual environment.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

RESULT_TAG = "W1RESULT "


# ------------------------------------------------------------------------------------------- data


def read_idx(path: str | Path) -> np.ndarray:
    """An MNIST-family idx file (gzipped): big-endian header, then the values."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not a uint8 idx file")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class W1Data:
    """The shared federation of one run: written once by run.py from raysim's own
    ``build_federation`` and ``sample_cohort`` (see run.py), read here by every peer."""

    def __init__(self, npz_path: str | Path) -> None:
        z = np.load(npz_path, allow_pickle=False)
        self.num_clients = int(z["num_clients"])
        self.offsets = z["train_offsets"]  # client k: train_idx[offsets[k]:offsets[k+1]]
        self.train_idx = z["train_idx"]
        self.cohorts = z["cohorts"]  # (rounds, clients_per_round); row t-1 is round t
        self.init_params = z["init_params"].astype(np.float32)
        self.mean, self.std = float(z["mean"]), float(z["std"])
        self.epochs, self.batch_size, self.lr = int(z["epochs"]), int(z["batch_size"]), float(z["lr"])
        data_dir = Path(str(z["data_dir"]))
        # raysim's inputs: x / 255, then (x - mean) / std per channel, NCHW float32
        self.x_train = self._normalise(read_idx(data_dir / "train-images-idx3-ubyte.gz"))
        self.y_train = torch.from_numpy(read_idx(data_dir / "train-labels-idx1-ubyte.gz").astype(np.int64))
        self.x_test = self._normalise(read_idx(data_dir / "t10k-images-idx3-ubyte.gz"))
        self.y_test = torch.from_numpy(read_idx(data_dir / "t10k-labels-idx1-ubyte.gz").astype(np.int64))

    def _normalise(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)  # (N, 1, 28, 28)
        return (x / 255.0 - self.mean) / self.std

    def client_idx(self, k: int) -> np.ndarray:
        return self.train_idx[self.offsets[k] : self.offsets[k + 1]]

    def client_size(self, k: int) -> int:
        return int(self.offsets[k + 1] - self.offsets[k])


# ------------------------------------------------------------------------------------------ model


def cnn_small_layers(num_classes: int = 10, h: int = 28, w: int = 28) -> list[nn.Module]:
    """raysim's ``cnn-small`` (raysim/models/registry.py), layer for layer: conv16 - conv32 - fc,
    3x3 convolutions with padding 1, each followed by ReLU and 2x2 max-pool."""
    return [
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (h // 4) * (w // 4), num_classes),
    ]


def cnn_small() -> nn.Sequential:
    return nn.Sequential(*cnn_small_layers())


def load_flat(module: nn.Module, flat: np.ndarray) -> None:
    """raysim's flat initial vector into ``module``'s parameters, in parameter order."""
    vec = torch.from_numpy(np.array(flat, dtype=np.float32))
    n = sum(p.numel() for p in module.parameters())
    if vec.numel() != n:
        raise ValueError(f"flat vector has {vec.numel()} values, the model {n}")
    # copied into the parameters (torch's vector_to_parameters would make them views of ``vec``)
    off = 0
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(vec[off : off + p.numel()].view_as(p))
            off += p.numel()


@torch.no_grad()
def test_accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> float:
    module.eval()
    correct = 0
    for s in range(0, len(y), batch):
        correct += int((module(x[s : s + batch]).argmax(1) == y[s : s + batch]).sum())
    module.train()
    return correct / len(y)


# ----------------------------------------------------------------------------------------- output


def versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = "not installed"
    return out


def emit(result: dict) -> None:
    """The one line run.py parses (everything else a peer prints is for the log)."""
    sys.stdout.write(RESULT_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()


def one_thread() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


now = time.perf_counter
