"""Write a naturally partitioned Parquet dataset with a known cluster structure (LEAF-style: one row
per example, a client-id column), for raysim's built-in ``parquet`` dataset.

Each client draws its own examples from Fashion-MNIST (the idx files of Debian's
``dataset-fashion-mnist``) and belongs to one of ``--groups`` rotation groups: client ``c`` is in group
``c % groups`` and every image it holds is turned by ``group * 360 / groups`` degrees. The groups are
the ground truth a clustered algorithm should recover; the file records each row's ``rotation``.

Columns: ``client`` (int32), ``split`` ("train" / "test"), ``label`` (int64), ``pixels`` (28 x 28
uint8 bytes, row-major) and ``rotation`` (degrees). The config reads it with::

    data:
      dataset: parquet
      partition: natural
      dataset_params: {path: examples/data/rotated_fmnist.parquet, features: [pixels],
                       shape: [1, 28, 28], client: client, split: split}

    python examples/make_data.py                      # 8 clients, 2 groups (0 and 180 degrees)
    python examples/make_data.py --clients 40 --groups 4 --train 300 --out /tmp/big.parquet
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FMNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = Path("examples/data/rotated_fmnist.parquet")  # from the repository root, as the configs say


def read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST format): a big-endian header of dimensions, then uint8 values."""
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    def pair(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        found = [
            folder / f"{prefix}-{kind}-idx{d}-ubyte{ext}"
            for kind, d in (("images", 3), ("labels", 1))
            for ext in (".gz", "")
        ]
        images = next((p for p in found[:2] if p.exists()), None)
        labels = next((p for p in found[2:] if p.exists()), None)
        if images is None or labels is None:
            raise SystemExit(
                f"Fashion-MNIST's {prefix} files are not in {folder}: install the Debian package "
                "dataset-fashion-mnist (`make data`), or pass --source FOLDER holding the *-ubyte.gz files"
            )
        return read_idx(images), read_idx(labels).astype(np.int64)

    return {"train": pair("train"), "test": pair("t10k")}


def make_table(
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    clients: int,
    groups: int,
    train: int,
    test: int,
    seed: int,
) -> pa.Table:
    """The federated table: each client's ``train``/``test`` examples drawn without replacement
    (no example is held by two clients), rotated by its group's angle."""
    if groups not in (1, 2, 4) or groups > clients:
        raise SystemExit(f"--groups must be 1, 2 or 4 (quarter turns) and at most --clients, got {groups}")
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {"client": [], "split": [], "label": [], "pixels": [], "rotation": []}
    for split, per_client in (("train", train), ("test", test)):
        x, y = data[split]
        if clients * per_client > len(y):
            raise SystemExit(f"{clients} clients x {per_client} {split} examples > the {len(y)} there are")
        order = rng.permutation(len(y))[: clients * per_client].reshape(clients, per_client)
        for c in range(clients):
            quarter_turns = (c % groups) * (4 // groups)
            images = np.rot90(x[order[c]], k=quarter_turns, axes=(1, 2))
            cols["client"] += [c] * per_client
            cols["split"] += [split] * per_client
            cols["label"] += y[order[c]].tolist()
            cols["pixels"] += [np.ascontiguousarray(im).tobytes() for im in images]
            cols["rotation"] += [90 * quarter_turns] * per_client
    types = {
        "client": pa.int32(),
        "split": pa.string(),
        "label": pa.int64(),
        "pixels": pa.binary(),
        "rotation": pa.int32(),
    }
    return pa.table({k: pa.array(v, type=types[k]) for k, v in cols.items()})


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the Parquet file (default {DEFAULT_OUT})")
    ap.add_argument("--source", type=Path, default=FMNIST, help="folder of Fashion-MNIST's idx files")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--groups", type=int, default=2, help="rotation groups: 1, 2 or 4")
    ap.add_argument("--train", type=int, default=100, help="training examples per client")
    ap.add_argument("--test", type=int, default=40, help="test examples per client")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    table = make_table(
        load_fashion_mnist(a.source),
        clients=a.clients,
        groups=a.groups,
        train=a.train,
        test=a.test,
        seed=a.seed,
    )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_name(a.out.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(a.out)  # never a half-written file under the final name
    print(f"wrote {a.out}: {a.clients} clients in {a.groups} rotation groups, {table.num_rows} rows")
    return a.out


if __name__ == "__main__":
    main()
