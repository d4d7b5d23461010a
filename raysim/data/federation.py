"""From a dataset to a federation: per-client train/val/test index arrays plus ground-truth groups.

A client is index arrays into the shared dataset (never a copy). Indices are always in the dataset's
original label space; a client's view applies ``transform_images(x, shard.rotation)`` to its images
and ``map_labels(y, shard.label_perm)`` to its labels (train, val and test alike).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from pydantic import BaseModel

from raysim.data import partition as P
from raysim.data.budget import check_federation_fits
from raysim.data.datasets import Dataset
from raysim.data.schemes import GROUP_SCHEMES, SCHEMES, SchemeKnobs, partition_pool, plugin_partition

if TYPE_CHECKING:  # pyarrow is imported where a table is written: hosts import this module too
    import pyarrow as pa

MAX_ROTATION_GROUPS = 4


@dataclass(frozen=True, kw_only=True, eq=False)
class ClientShard:
    """One client's data, as positions into the shared dataset.

    ``train_idx`` and ``val_idx`` index ``x_train`` (val is held out of the client's own shard, so it
    has the same distribution); ``test_idx`` indexes ``x_test``, drawn to match the client's train label
    distribution. ``train_idx`` is in random order, ``val_idx``/``test_idx`` sorted; trainers still
    shuffle every epoch. ``group`` is the ground-truth group (-1 when the scheme has none),
    ``rotation`` the quarter turns applied to the client's images, ``label_perm`` the map from
    original label to client label (``None`` = identity).
    """

    client_id: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    group: int
    rotation: int
    label_perm: np.ndarray | None

    def __post_init__(self) -> None:
        for arr in (self.train_idx, self.val_idx, self.test_idx, self.label_perm):
            if arr is not None:
                arr.setflags(write=False)


def _index_dtype(top: int) -> type[np.signedinteger[Any]]:
    """The narrowest of int32/int64 that holds positions up to ``top``: half the memory of a
    federation's index arrays for every dataset below 2^31 examples."""
    return np.int32 if top < 2**31 else np.int64


def _flat(arrays: Sequence[np.ndarray], dtype: Any = np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Arrays concatenated (as ``dtype``) with their offsets (``len(arrays) + 1``)."""
    off = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays)), out=off[1:])
    cat = np.concatenate(arrays).astype(dtype, copy=False) if len(arrays) else np.zeros(0, dtype)
    return cat, off


def _gather(values: np.ndarray, off: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The segments ``rows`` of a flat array with offsets ``off``, concatenated, and their offsets."""
    lens = off[rows + 1] - off[rows]
    new_off = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lens, out=new_off[1:])
    # position j of the result comes from off[row] + (j - new_off[k]) for the k-th row
    start = np.repeat(off[rows] - new_off[:-1], lens)
    return values[start + np.arange(new_off[-1], dtype=np.int64)], new_off


class ShardTable:
    """Many clients' shards as a few flat arrays: what a roaming actor needs to train any client.

    Every client's ``train_idx`` (and ``val_idx``, ``test_idx``) concatenated, with offsets; group,
    rotation and the index of its label map per client, rows sorted by client id. Pickled, it is a
    handful of numpy arrays (zero-copy in every actor of a node under Ray) instead of N
    ``ClientShard`` objects that each actor would unpickle into N x 7 Python objects (issue 13:
    744-934 bytes per client per actor, 4.6 GB a roaming actor at 10^6 clients in the cost model).
    The driver holds the federation as one too (issue 21: no Python object per client anywhere in
    set-up). Positions are stored as int32 below 2^31 examples; ``shard(cid)`` builds one client's
    ``ClientShard`` (int64, read-only) when a round asks for it.
    """

    client_ids: np.ndarray
    train_idx: np.ndarray
    train_off: np.ndarray
    val_idx: np.ndarray
    val_off: np.ndarray
    test_idx: np.ndarray
    test_off: np.ndarray
    group: np.ndarray
    rotation: np.ndarray
    perm_id: np.ndarray
    perms: np.ndarray

    def __init__(self, shards: Sequence[ClientShard]) -> None:
        order = sorted(shards, key=lambda s: s.client_id)
        ids = np.fromiter((s.client_id for s in order), dtype=np.int64, count=len(order))
        top = max((int(a.max()) for s in order for a in (s.train_idx, s.val_idx) if len(a)), default=0)
        dt = _index_dtype(max(top, max((int(s.test_idx.max()) for s in order if len(s.test_idx)), default=0)))
        train_idx, train_off = _flat([s.train_idx for s in order], dt)
        val_idx, val_off = _flat([s.val_idx for s in order], dt)
        test_idx, test_off = _flat([s.test_idx for s in order], dt)
        # label maps: few distinct ones (one per group), stored once each
        perms: list[np.ndarray] = []
        seen: dict[bytes, int] = {}
        perm_id = np.full(len(order), -1, dtype=np.int64)
        for i, s in enumerate(order):
            if s.label_perm is not None:
                key = np.asarray(s.label_perm, dtype=np.int64).tobytes()
                if key not in seen:
                    seen[key] = len(perms)
                    perms.append(np.asarray(s.label_perm, dtype=np.int64))
                perm_id[i] = seen[key]
        self._set(
            dict(
                client_ids=ids,
                train_idx=train_idx,
                train_off=train_off,
                val_idx=val_idx,
                val_off=val_off,
                test_idx=test_idx,
                test_off=test_off,
                group=np.fromiter((s.group for s in order), dtype=np.int64, count=len(order)),
                rotation=np.fromiter((s.rotation for s in order), dtype=np.int64, count=len(order)),
                perm_id=perm_id,
                perms=np.stack(perms) if perms else np.zeros((0, 0), dtype=np.int64),
            )
        )

    def _set(self, arrays: dict[str, np.ndarray], check: bool = True) -> None:
        ids = arrays["client_ids"]
        if check and len(ids) > 1 and not (np.diff(ids) > 0).all():
            if (np.diff(np.sort(ids)) == 0).any():
                raise ValueError("ShardTable: two shards with the same client id")
            raise ValueError("ShardTable: client ids must be sorted")
        for name, a in arrays.items():
            a.setflags(write=False)
            setattr(self, name, a)

    @classmethod
    def from_arrays(cls, **arrays: np.ndarray) -> ShardTable:
        """A table from its arrays (the names of the attributes; rows sorted by client id, ids
        distinct); ``perm_id`` and ``perms`` may be left out (no label maps)."""
        n = len(arrays["client_ids"])
        arrays.setdefault("perm_id", np.full(n, -1, dtype=np.int64))
        arrays.setdefault("perms", np.zeros((0, 0), dtype=np.int64))
        table = cls.__new__(cls)
        table._set({k: np.asarray(v) for k, v in arrays.items()})
        return table

    @classmethod
    def concat(cls, tables: Sequence[ShardTable]) -> ShardTable:
        """The clients of several tables (distinct ids, the same label maps) in one table."""
        if len(tables) == 1:
            return tables[0]
        perms = [t.perms for t in tables if t.perms.size]
        if any(not np.array_equal(p, perms[0]) for p in perms):
            raise ValueError("ShardTable.concat: the tables hold different label maps")
        out: dict[str, np.ndarray] = {"client_ids": np.concatenate([t.client_ids for t in tables])}
        for name in ("train", "val", "test"):
            offs = [getattr(t, f"{name}_off") for t in tables]
            base = np.cumsum([0] + [int(o[-1]) for o in offs])
            out[f"{name}_idx"] = np.concatenate([getattr(t, f"{name}_idx") for t in tables])
            out[f"{name}_off"] = np.concatenate(
                [o[:-1] + b for o, b in zip(offs, base[:-1], strict=True)] + [base[-1:]]
            )
        for name in ("group", "rotation", "perm_id"):
            out[name] = np.concatenate([getattr(t, name) for t in tables])
        out["perms"] = perms[0] if perms else np.zeros((0, 0), dtype=np.int64)
        table = cls.__new__(cls)
        table._set(out, check=False)  # rows in table order, sorted next
        return table.take(np.argsort(out["client_ids"], kind="stable"))

    def take(self, rows: np.ndarray) -> ShardTable:
        """The clients at positions ``rows`` of this table (their ids in ascending order), as a
        table of their own."""
        rows = np.asarray(rows, dtype=np.int64)
        out: dict[str, np.ndarray] = {"client_ids": self.client_ids[rows]}
        for name in ("train", "val", "test"):
            out[f"{name}_idx"], out[f"{name}_off"] = _gather(
                getattr(self, f"{name}_idx"), getattr(self, f"{name}_off"), rows
            )
        for name in ("group", "rotation", "perm_id"):
            out[name] = getattr(self, name)[rows]
        out["perms"] = self.perms
        return ShardTable.from_arrays(**out)

    def __len__(self) -> int:
        return len(self.client_ids)

    def _row(self, client_id: int) -> int | None:
        i = int(np.searchsorted(self.client_ids, client_id))
        return i if i < len(self.client_ids) and self.client_ids[i] == client_id else None

    def __contains__(self, client_id: object) -> bool:
        return isinstance(client_id, (int, np.integer)) and self._row(int(client_id)) is not None

    def n_train(self) -> np.ndarray:
        """Training examples per client (row order: by client id)."""
        return np.diff(self.train_off)

    def sizes(self) -> dict[int, int]:
        """Training examples per client, as a dict (small tables; ``n_train`` for arrays)."""
        return dict(zip(self.client_ids.tolist(), self.n_train().tolist(), strict=True))

    def shard(self, client_id: int) -> ClientShard:
        i = self._row(client_id)
        if i is None:
            raise KeyError(f"client {client_id} is not in this ShardTable")
        return self.shard_at(i)

    def shard_at(self, i: int) -> ClientShard:
        """The client in row ``i`` (0 <= i < len)."""
        p = int(self.perm_id[i])
        return ClientShard(
            client_id=int(self.client_ids[i]),
            train_idx=self.train_idx[self.train_off[i] : self.train_off[i + 1]].astype(np.int64, copy=False),
            val_idx=self.val_idx[self.val_off[i] : self.val_off[i + 1]].astype(np.int64, copy=False),
            test_idx=self.test_idx[self.test_off[i] : self.test_off[i + 1]].astype(np.int64, copy=False),
            group=int(self.group[i]),
            rotation=int(self.rotation[i]),
            label_perm=self.perms[p] if p >= 0 else None,
        )


class TableView:
    """Some clients of a ``ShardTable`` (a host's own), without copying its arrays: what a client
    actor reads its clients from when every actor of a node shares one table in Ray's object store
    (issue 21: the driver ships one table and each actor's client ids, not a table per actor).
    Answers what a host asks of its own clients: ``client_ids``, ``in``, ``shard``, ``len``."""

    def __init__(self, table: ShardTable, client_ids: np.ndarray) -> None:
        ids = np.unique(np.asarray(client_ids, dtype=np.int64))  # sorted, distinct
        rows = np.searchsorted(table.client_ids, ids)
        if len(ids) and (rows.max() >= len(table) or not np.array_equal(table.client_ids[rows], ids)):
            missing = ids[(rows >= len(table)) | (table.client_ids[np.minimum(rows, len(table) - 1)] != ids)]
            raise KeyError(f"clients {missing[:5].tolist()} are not in the table")
        ids.setflags(write=False)
        self.table, self.client_ids = table, ids

    def __len__(self) -> int:
        return len(self.client_ids)

    def __contains__(self, client_id: object) -> bool:
        if not isinstance(client_id, (int, np.integer)) or isinstance(client_id, bool):
            return False
        i = int(np.searchsorted(self.client_ids, int(client_id)))
        return i < len(self.client_ids) and self.client_ids[i] == client_id

    def shard(self, client_id: int) -> ClientShard:
        if client_id not in self:
            raise KeyError(f"client {client_id} is not in this TableView")
        return self.table.shard(client_id)

    def n_train(self) -> np.ndarray:
        """Training examples per client (in ``client_ids`` order)."""
        return self.table.n_train()[np.searchsorted(self.table.client_ids, self.client_ids)]

    def copy(self) -> ShardTable:
        """These clients as a table of their own (what a host keeps: its own clients' arrays)."""
        return self.table.take(np.searchsorted(self.table.client_ids, self.client_ids))


class ClientShards(Sequence[ClientShard]):
    """A federation's clients as a sequence of ``ClientShard`` built on access from its
    ``ShardTable`` (client ``k`` is ``clients[k]``): nothing is kept per client."""

    def __init__(self, table: ShardTable) -> None:
        self._table = table

    def __len__(self) -> int:
        return len(self._table)

    @overload
    def __getitem__(self, i: int) -> ClientShard: ...
    @overload
    def __getitem__(self, i: slice) -> list[ClientShard]: ...
    def __getitem__(self, i: int | slice) -> ClientShard | list[ClientShard]:
        if isinstance(i, slice):
            return [self._table.shard_at(k) for k in range(*i.indices(len(self)))]
        k = range(len(self))[i]  # IndexError past the end, negative indices from the end
        return self._table.shard_at(k)

    def __iter__(self) -> Iterator[ClientShard]:
        return (self._table.shard_at(k) for k in range(len(self)))


@dataclass(frozen=True, kw_only=True, eq=False)
class Federation:
    """All clients of an experiment, as one ``ShardTable`` (client ids 0..N-1, in row order);
    ``clients`` shows them as ``ClientShard`` objects, built on access. ``public_idx`` (into
    ``x_train``) is held by no client. ``num_groups`` is the number of ground-truth groups (0 when
    the scheme has none).
    """

    table: ShardTable
    public_idx: np.ndarray
    scheme: str
    num_groups: int

    def __post_init__(self) -> None:
        self.public_idx.setflags(write=False)

    @property
    def clients(self) -> ClientShards:
        return ClientShards(self.table)


# ------------------------------------------------------------------------------------- transforms


def transform_images(x: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate images by ``rotation`` quarter turns (counter-clockwise) on the last two axes.

    Works on a batch ``(B, C, H, W)`` or a single image; returns a C-contiguous array (``x`` itself
    when ``rotation`` is 0 and ``x`` is already contiguous).
    """
    if isinstance(rotation, bool) or not isinstance(rotation, int | np.integer) or not 0 <= rotation <= 3:
        raise ValueError(f"rotation must be an integer number of quarter turns in 0..3, got {rotation!r}")
    if x.ndim < 2:
        raise ValueError(f"transform_images needs images (..., H, W), got shape {x.shape}")
    if rotation == 0:
        return np.ascontiguousarray(x)
    if x.shape[-1] != x.shape[-2] and rotation % 2 == 1:
        raise ValueError(f"a quarter-turn rotation needs square images, got {x.shape[-2]}x{x.shape[-1]}")
    return np.ascontiguousarray(np.rot90(x, k=int(rotation), axes=(-2, -1)))


def map_labels(y: np.ndarray, perm: np.ndarray | None) -> np.ndarray:
    """Client labels: ``perm[y]`` (``y`` unchanged when ``perm`` is None)."""
    if perm is None:
        return y
    perm = np.asarray(perm)
    if perm.ndim != 1 or not np.array_equal(np.sort(perm), np.arange(len(perm))):
        raise ValueError(f"label_perm must be a permutation of 0..num_classes-1, got {perm}")
    return perm[y]


# ------------------------------------------------------------------------------------- federation


def _validate(
    ds: Dataset,
    scheme: str,
    num_clients: int,
    alpha: float,
    classes_per_client: int,
    sigma: float,
    num_groups: int,
    val_fraction: float,
    test_per_client: int | None,
    public_fraction: float,
    min_size: int,
    examples_per_client: int = 50,
) -> None:
    if scheme not in SCHEMES:
        from raysim.plugins import resolve

        resolve("partitions", scheme)  # PluginError (a ValueError) naming the valid ones
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (Dirichlet concentration; smaller = more skewed), got {alpha}")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0 (log-normal spread of client sizes), got {sigma}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not 0 <= public_fraction < 1:
        raise ValueError(f"public_fraction must be in [0, 1), got {public_fraction}")
    if test_per_client is not None and test_per_client < 1:
        raise ValueError(f"test_per_client must be >= 1 or None (proportional), got {test_per_client}")
    if scheme == "pathological" and not 1 <= classes_per_client <= ds.num_classes:
        raise ValueError(
            f"classes_per_client must be between 1 and {ds.num_classes} (the classes of {ds.name!r}), "
            f"got {classes_per_client}"
        )
    if scheme in GROUP_SCHEMES:
        if not 1 <= num_groups <= num_clients:
            raise ValueError(
                f"num_groups must be between 1 and num_clients ({num_clients}), got {num_groups}"
            )
    if scheme == "rotation":
        if num_groups > MAX_ROTATION_GROUPS:
            raise ValueError(
                f"num_groups={num_groups} is too many for scheme 'rotation': only 4 rotations exist "
                "(0/90/180/270 degrees); use num_groups <= 4 or scheme 'label-permutation'"
            )
        shape = ds.input_shape
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(
                f"scheme 'rotation' needs square images (C, H, W); dataset {ds.name!r} has inputs {shape}. "
                "Use an image dataset or scheme 'label-permutation'"
            )
    if scheme == "natural":
        if ds.natural_train is None or ds.natural_test is None:
            raise ValueError(
                f"scheme 'natural' needs a dataset that is federated by nature (one whose loader fills "
                f"Dataset.natural_train and natural_test: 'synthetic', or 'parquet' with a client-id column); "
                f"{ds.name!r} has no natural clients. Pick another scheme or such a dataset"
            )
        if len(ds.natural_train) != num_clients:
            raise ValueError(
                f"dataset {ds.name!r} has {len(ds.natural_train)} natural clients but num_clients={num_clients}; "
                f"load it with num_clients={num_clients} or set num_clients={len(ds.natural_train)}"
            )
        if public_fraction > 0:
            raise ValueError(
                "public_fraction > 0 is not supported with scheme 'natural' (every example belongs to a "
                "natural client); set public_fraction to 0"
            )
    pool = len(ds.y_train) - int(round(public_fraction * len(ds.y_train)))
    if scheme == "sampled":
        if not min_size <= examples_per_client <= pool:
            raise ValueError(
                f"examples_per_client must be between {min_size} and the {pool} examples {ds.name!r} "
                f"leaves after the public split, got {examples_per_client}"
            )
    elif scheme != "natural" and num_clients * min_size > pool:
        raise ValueError(
            f"num_clients={num_clients} needs at least {num_clients * min_size} training examples "
            f"({min_size} per client) but {ds.name!r} leaves {pool} after the public split; "
            f"use at most {pool // min_size} clients, or partition 'sampled' (clients draw "
            "overlapping samples: any number of clients, for runtime measurements)"
        )


def _group_dirichlet(
    y: np.ndarray, groups: np.ndarray, num_groups: int, alpha: float, rng: np.random.Generator, min_size: int
) -> list[np.ndarray]:
    """Split positions among groups (sizes proportional to group membership), then Dirichlet within."""
    counts = np.bincount(groups, minlength=num_groups)
    sizes = P.apportion(len(y), counts)
    pieces = np.split(rng.permutation(len(y)).astype(np.int64), np.cumsum(sizes)[:-1])
    out: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(groups)
    for g in range(num_groups):
        members = np.flatnonzero(groups == g)
        local = P.dirichlet(y[pieces[g]], len(members), alpha, rng, min_size)
        for k, part in zip(members, local, strict=True):
            out[k] = pieces[g][part]
    return out


def _split_val(
    shard: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    n = len(shard)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = 0
    order = rng.permutation(n)
    return shard[order[n_val:]], np.sort(shard[order[:n_val]])


def _sample_test(
    train_labels: np.ndarray,
    size: int,
    test_by_class: list[np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """``size`` test positions with the label proportions of ``train_labels``.

    Within a class, sampling is without replacement unless the class has too few test examples.
    Classes absent from the test set are dropped from the proportions.
    """
    hist = np.bincount(train_labels, minlength=len(test_by_class))[None, :]
    want = _test_counts(hist, np.array([size]), test_by_class)[0]
    return _draw_test(want, test_by_class, rng)


def _test_counts(hists: np.ndarray, sizes: np.ndarray, test_by_class: list[np.ndarray]) -> np.ndarray:
    """``(K, C)`` test examples per class for K clients at once: each row is
    ``partition.apportion(sizes[k], hists[k])`` with the classes absent from the test set dropped
    (and, for a client none of whose classes is in the test set, every present class weighted 1).
    Vectorised; the same numbers as apportioning client by client (the weights are integer counts,
    so their sums are exact in any order)."""
    present = np.array([len(t) > 0 for t in test_by_class])
    w = hists.astype(np.float64) * present
    empty = w.sum(axis=1) == 0
    w[empty] = present.astype(np.float64)  # none of its classes is in the test set: all classes
    exact = sizes.astype(np.int64)[:, None] * w / w.sum(axis=1)[:, None]
    counts = np.floor(exact).astype(np.int64)
    short = sizes.astype(np.int64) - counts.sum(axis=1)
    order = np.argsort(-(exact - counts), axis=1, kind="stable")
    bump = np.arange(w.shape[1])[None, :] < short[:, None]  # the first `short` of each row's order
    np.put_along_axis(counts, order, np.take_along_axis(counts, order, axis=1) + bump, axis=1)
    return counts


def _draw_test(want: np.ndarray, test_by_class: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    out = []
    for c, m in enumerate(want.tolist()):
        if m > 0:
            cand = test_by_class[c]
            out.append(rng.choice(cand, size=int(m), replace=bool(m > len(cand))))
    return np.sort(np.concatenate(out)).astype(np.int64)


def _draw_tests_at_once(
    want: np.ndarray, test_by_class: list[np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Every client's test positions (``want``: (K, C) per class) in one draw per class, *with*
    replacement within a client (partition ``sampled`` only: its clients overlap anyway, and one
    ``Generator.choice`` per client and class cost 16 s at 100,000 clients). Flat, sorted within
    each client, with the clients' offsets."""
    off = np.zeros(len(want) + 1, dtype=np.int64)
    np.cumsum(want.sum(axis=1), out=off[1:])
    # one int64 key per pick, (owner, position): a plain sort of the keys is a lexsort, 10x faster;
    # built class by class (not all owners, then all picks: 10^7 of each at 10^6 clients)
    span = max(int(max(len(c) and c.max() for c in test_by_class)) + 1, 1)
    keys = []
    for c, cand in enumerate(test_by_class):
        m = want[:, c]
        total = int(m.sum())
        if total:
            k = np.repeat(np.arange(len(want), dtype=np.int64), m)
            k *= span
            k += cand[rng.integers(0, len(cand), size=total)]
            keys.append(k)
    if not keys:
        return np.empty(0, dtype=np.int64), off
    key = np.concatenate(keys)
    del keys
    key.sort()
    np.remainder(key, span, out=key)
    return key, off


def _split_val_rows(
    draws: np.ndarray, pool: np.ndarray | None, val_fraction: float, dtype: Any
) -> tuple[np.ndarray, np.ndarray]:
    """``_split_val`` for K clients of equal size at once (row ``k`` of ``draws``, positions into
    the pool, ``pool`` None when it is the whole training set): ``(train, val)`` as ``(K, n - v)``
    and ``(K, v)`` arrays of dataset positions, val sorted; the same validation size rule as
    ``_split_val``. No shuffle is needed: a row of ``sampled_draws`` is already in random order
    (independent uniform draws, or a ``Generator.choice`` without replacement), so its first ``v``
    draws are a uniformly random subset and the rest a random order of the others."""
    k, n = draws.shape
    n_val = int(round(val_fraction * n))
    n_val = min(max(n_val, 1), n - 1) if val_fraction > 0 and n >= 2 else 0
    train = np.empty((k, n - n_val), dtype=dtype)
    val = np.empty((k, n_val), dtype=dtype)
    for lo in range(0, k, P.SAMPLED_CHUNK):
        block = draws[lo : lo + P.SAMPLED_CHUNK]
        if pool is not None:
            block = pool[block]
        train[lo : lo + len(block)] = block[:, n_val:]
        val[lo : lo + len(block)] = np.sort(block[:, :n_val], axis=1)
    return train, val


def _flat_hists(y: np.ndarray, idx: np.ndarray, off: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, num_classes)`` label counts of ``y`` over each client's segment of a flat index array
    (``off``: K + 1 offsets), in bincounts over chunks of clients (bounded temporaries)."""
    k = len(off) - 1
    out = np.zeros((k, num_classes), dtype=np.int64)
    for lo in range(0, k, P.SAMPLED_CHUNK):
        hi = min(lo + P.SAMPLED_CHUNK, k)
        lens = np.diff(off[lo : hi + 1])
        owner = np.repeat(np.arange(hi - lo, dtype=np.int64), lens)
        labels = y[idx[off[lo] : off[hi]]].astype(np.int64)
        out[lo:hi] = np.bincount(owner * num_classes + labels, minlength=(hi - lo) * num_classes).reshape(
            hi - lo, num_classes
        )
    return out


def _label_hists(y: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """``(K, num_classes)`` label counts of ``y[parts[k]]`` for every k, in one bincount."""
    lens = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    if lens.sum() == 0:
        return np.zeros((len(parts), num_classes), dtype=np.int64)
    owner = np.repeat(np.arange(len(parts), dtype=np.int64), lens)
    labels = y[np.concatenate(parts)].astype(np.int64)
    return np.bincount(owner * num_classes + labels, minlength=len(parts) * num_classes).reshape(
        len(parts), num_classes
    )


def build_federation(
    ds: Dataset,
    *,
    scheme: str,
    num_clients: int,
    seed: int,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    sigma: float = 1.0,
    num_groups: int = 4,
    val_fraction: float = 0.1,
    test_per_client: int | None = None,
    public_fraction: float = 0.0,
    min_size: int = P.DEFAULT_MIN_SIZE,
    examples_per_client: int = 50,
    partition_params: Mapping[str, Any] | BaseModel | None = None,
) -> Federation:
    """Partition ``ds`` into ``num_clients`` clients with scheme ``scheme``: one of :data:`SCHEMES`,
    or a partition plug-in (entry point or import path, ``raysim.plugins``) called on the pool's
    labels with ``partition_params`` validated by its ``params_model``; every other step is the same.

    Steps, each with its own random stream derived from ``seed`` (changing one step's knobs does not
    reshuffle the others):

    1. ``public_idx``: a stratified ``public_fraction`` of the training set, removed from the pool;
    2. the pool is partitioned (``min_size`` examples per client at least; see
       :mod:`raysim.data.partition`). ``rotation`` / ``label-permutation``: balanced groups
       (:func:`~raysim.data.partition.assign_groups`), the pool split among groups, Dirichlet(alpha)
       within each group; group ``g`` rotates by ``g`` quarter turns or permutes labels by row ``g`` of
       :func:`~raysim.data.partition.label_permutations` (group 0 unchanged). ``natural`` uses the
       dataset's own clients; ``sampled``: each client draws ``examples_per_client`` examples of the
       pool independently (clients overlap: any N fits);
    3. ``val_fraction`` of each shard is held out as validation (at least 1 when the shard has >= 2);
    4. test: ``test_per_client`` test examples per client (default proportional to its train size,
       at least 10) with the client's train label proportions; ``natural`` uses its own test split;
       ``sampled`` draws every client's at once, with replacement within a client.
    """
    _validate(
        ds, scheme, num_clients, alpha, classes_per_client, sigma, num_groups, val_fraction,
        test_per_client, public_fraction, min_size, examples_per_client,
    )  # fmt: skip
    n_pool = len(ds.y_train) - int(round(public_fraction * len(ds.y_train)))
    if scheme == "sampled":
        train_each = float(examples_per_client)
    else:
        train_each = (len(ds.y_train) if scheme == "natural" else n_pool) / num_clients
    test_each = float(
        len(ds.y_test) / num_clients
        if scheme == "natural"
        else test_per_client or max(10.0, len(ds.y_test) * train_each / max(n_pool, 1))
    )
    check_federation_fits(num_clients, train_each, test_each)  # before anything is allocated
    rng_public, rng_part, rng_val, rng_test = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    y = ds.y_train
    n = len(y)
    dt = _index_dtype(max(n, len(ds.y_test)))

    if public_fraction > 0:
        public_idx, pool = P.stratified_split(y, public_fraction, rng_public)
        public_idx.sort()
        pool.sort()
    else:
        public_idx, pool = np.empty(0, dtype=np.int64), np.arange(n, dtype=np.int64)
    y_pool = y[pool]

    groups = np.full(num_clients, -1, dtype=np.int64)
    rotations = np.zeros(num_clients, dtype=np.int64)
    perms: np.ndarray | None = None
    fed_groups = 0
    test_by_class = [np.flatnonzero(ds.y_test == c) for c in range(ds.num_classes)]
    pool_size = max(len(pool), 1)
    if scheme == "sampled":
        # flat arrays all the way (10^6 clients: no Python object per client); every client's
        # validation split at once, its first draws (docs/data.md, "Partition 'sampled'")
        draws = P.sampled_draws(len(y_pool), num_clients, examples_per_client, rng_part)
        train2d, val2d = _split_val_rows(draws, None if public_fraction == 0 else pool, val_fraction, dt)
        del draws
        n_tr, n_va = train2d.shape[1], val2d.shape[1]
        train_idx, val_idx = train2d.reshape(-1), val2d.reshape(-1)
        train_off = np.arange(num_clients + 1, dtype=np.int64) * n_tr
        val_off = np.arange(num_clients + 1, dtype=np.int64) * n_va
        if len(ds.y_test) > 0:
            size = test_per_client or max(10, int(round(len(ds.y_test) * n_tr / pool_size)))
            # row by row, so in chunks of clients: (N, C) float64 temporaries of _test_counts for all
            # 10^6 clients at once were the set-up's peak (+380 MB); the same counts
            want = np.empty((num_clients, ds.num_classes), dtype=np.int64)
            for lo in range(0, num_clients, P.SAMPLED_CHUNK):
                hi = min(lo + P.SAMPLED_CHUNK, num_clients)
                off = train_off[lo : hi + 1]
                hists = _flat_hists(y, train_idx[off[0] : off[-1]], off - off[0], ds.num_classes)
                want[lo:hi] = _test_counts(hists, np.full(hi - lo, size, dtype=np.int64), test_by_class)
            test_idx, test_off = _draw_tests_at_once(want, test_by_class, rng_test)
            test_idx = test_idx.astype(dt)
        else:
            test_idx, test_off = np.zeros(0, dt), np.zeros(num_clients + 1, dtype=np.int64)
    else:
        if scheme == "natural":
            assert ds.natural_train is not None
            shards = [np.asarray(p, dtype=np.int64) for p in ds.natural_train]
        elif scheme in GROUP_SCHEMES:
            groups = P.assign_groups(num_clients, num_groups, rng_part)
            local = _group_dirichlet(y_pool, groups, num_groups, alpha, rng_part, min_size)
            shards = [pool[p] for p in local]
            fed_groups = num_groups
            if scheme == "rotation":
                rotations = groups.copy()
            else:
                perms = P.label_permutations(num_groups, ds.num_classes, rng_part)
        elif scheme in SCHEMES:
            knobs = SchemeKnobs(
                alpha=alpha,
                classes_per_client=classes_per_client,
                sigma=sigma,
                examples_per_client=examples_per_client,
                min_size=min_size,
            )
            shards = [pool[p] for p in partition_pool(scheme, y_pool, num_clients, rng_part, knobs)]
        else:
            shards = [
                pool[p] for p in plugin_partition(scheme, y_pool, num_clients, rng_part, partition_params)
            ]

        # the validation split of every client first (its own random stream), then the test draws:
        # the label histograms and per-class test counts of all clients at once, the draws client
        # by client (N is at most the dataset's size here)
        splits = [_split_val(shard, val_fraction, rng_val) for shard in shards]
        del shards
        train_idx, train_off = _flat([t for t, _ in splits], dt)
        val_idx, val_off = _flat([v for _, v in splits], dt)
        del splits
        tests: list[np.ndarray]
        if scheme == "natural":
            assert ds.natural_test is not None
            tests = [np.sort(np.asarray(t, dtype=np.int64)) for t in ds.natural_test]
        elif len(ds.y_test) == 0:
            tests = [np.empty(0, dtype=np.int64)] * num_clients
        else:
            n_train = np.diff(train_off)
            sizes = (
                np.full(num_clients, test_per_client, dtype=np.int64)
                if test_per_client
                else np.maximum(10, np.round(len(ds.y_test) * n_train / pool_size).astype(np.int64))
            )
            want = _test_counts(_flat_hists(y, train_idx, train_off, ds.num_classes), sizes, test_by_class)
            tests = [_draw_test(w, test_by_class, rng_test) for w in want]
        test_idx, test_off = _flat(tests, dt)
    table = ShardTable.from_arrays(
        client_ids=np.arange(num_clients, dtype=np.int64),
        train_idx=train_idx,
        train_off=train_off,
        val_idx=val_idx,
        val_off=val_off,
        test_idx=test_idx,
        test_off=test_off,
        group=groups,
        rotation=rotations,
        perm_id=groups.copy() if perms is not None else np.full(num_clients, -1, dtype=np.int64),
        perms=perms if perms is not None else np.zeros((0, 0), dtype=np.int64),
    )
    return Federation(table=table, public_idx=public_idx, scheme=scheme, num_groups=fed_groups)


# ------------------------------------------------------------------------------------------ summary


def summary_table(fed: Federation, ds: Dataset, rows: slice | None = None) -> pa.Table:
    """One row per client: client_id, group, rotation, n_train, n_val, n_test, label_hist.

    ``label_hist`` counts the client's train labels in the dataset's original label space (length
    ``num_classes``). The table's schema metadata records the scheme, dataset and group count.
    ``rows``: only the clients of these table rows (``write_summary`` writes the table in parts).
    """
    import pyarrow as pa

    t = fed.table
    lo, hi, _ = (rows or slice(None)).indices(len(t))
    hi = max(lo, hi)
    off = t.train_off[lo : hi + 1]
    hists = _flat_hists(ds.y_train, t.train_idx[off[0] : off[-1]], off - off[0], ds.num_classes)
    # columns straight from the table's arrays (10^6 clients: no Python object per client)
    label_hist = pa.ListArray.from_arrays(
        pa.array(np.arange(hi - lo + 1, dtype=np.int32) * ds.num_classes), pa.array(hists.reshape(-1))
    )
    cols = [
        pa.array(t.client_ids[lo:hi]),
        pa.array(t.group[lo:hi]),
        pa.array(t.rotation[lo:hi]),
        pa.array(np.diff(t.train_off[lo : hi + 1])),
        pa.array(np.diff(t.val_off[lo : hi + 1])),
        pa.array(np.diff(t.test_off[lo : hi + 1])),
        label_hist,
    ]
    return pa.Table.from_arrays(cols, schema=summary_schema(fed, ds))


def summary_schema(fed: Federation, ds: Dataset) -> pa.Schema:
    """``partition.parquet``'s schema, with the scheme, dataset, group count and public size."""
    import pyarrow as pa

    return pa.schema(
        [
            ("client_id", pa.int64()),
            ("group", pa.int64()),
            ("rotation", pa.int64()),
            ("n_train", pa.int64()),
            ("n_val", pa.int64()),
            ("n_test", pa.int64()),
            ("label_hist", pa.list_(pa.int64())),
        ],
        metadata={
            "scheme": fed.scheme,
            "dataset": ds.name,
            "num_groups": str(fed.num_groups),
            "n_public": str(len(fed.public_idx)),
        },
    )


SUMMARY_ROWS = 1 << 15  # clients per part of partition.parquet (10^6 clients: +66 MB at most, 2^18: +180)


def write_summary(fed: Federation, ds: Dataset, path: str | Path) -> Path:
    """Write :func:`summary_table` as Parquet to ``path`` (its directory must exist), in parts of
    ``SUMMARY_ROWS`` clients; returns the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    with pq.ParquetWriter(path, summary_schema(fed, ds)) as writer:
        for lo in range(0, max(len(fed.table), 1), SUMMARY_ROWS):
            writer.write_table(summary_table(fed, ds, slice(lo, lo + SUMMARY_ROWS)))
            # pyarrow's allocator keeps what a part freed for the next one, and more each part
            # (+180 MB at 10^6 clients in parts of 2^18, the driver's peak): hand it back
            pa.default_memory_pool().release_unused()
    return path
