"""From a dataset to a federation: per-client train/val/test index arrays plus ground-truth groups.

A client is index arrays into the shared dataset (never a copy). Indices are always in the dataset's
original label space; a client's view applies ``transform_images(x, shard.rotation)`` to its images
and ``map_labels(y, shard.label_perm)`` to its labels (train, val and test alike).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


class ShardTable:
    """Many clients' shards as a few flat arrays: what a roaming actor needs to train any client.

    Every client's ``train_idx`` (and ``val_idx``, ``test_idx``) concatenated, with offsets; group,
    rotation and the index of its label map per client. Pickled, it is a handful of numpy arrays
    (zero-copy in every actor of a node under Ray) instead of N ``ClientShard`` objects that each
    actor would unpickle into N x 7 Python objects (issue 13: 744-934 bytes per client per actor,
    4.6 GB a roaming actor at 10^6 clients in the cost model). ``shard(cid)`` builds one client's
    ``ClientShard`` (views, no copies) when a round asks for it.
    """

    def __init__(self, shards: Sequence[ClientShard]) -> None:
        order = sorted(shards, key=lambda s: s.client_id)
        self.client_ids = np.fromiter((s.client_id for s in order), dtype=np.int64, count=len(order))
        if len(np.unique(self.client_ids)) != len(order):
            raise ValueError("ShardTable: two shards with the same client id")

        def flat(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            off = np.zeros(len(arrays) + 1, dtype=np.int64)
            np.cumsum([len(a) for a in arrays], out=off[1:])
            cat = np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(0, np.int64)
            return cat, off

        self.train_idx, self.train_off = flat([s.train_idx for s in order])
        self.val_idx, self.val_off = flat([s.val_idx for s in order])
        self.test_idx, self.test_off = flat([s.test_idx for s in order])
        self.group = np.fromiter((s.group for s in order), dtype=np.int64, count=len(order))
        self.rotation = np.fromiter((s.rotation for s in order), dtype=np.int64, count=len(order))
        # label maps: few distinct ones (one per group), stored once each
        perms: list[np.ndarray] = []
        seen: dict[bytes, int] = {}
        self.perm_id = np.full(len(order), -1, dtype=np.int64)
        for i, s in enumerate(order):
            if s.label_perm is not None:
                key = np.asarray(s.label_perm, dtype=np.int64).tobytes()
                if key not in seen:
                    seen[key] = len(perms)
                    perms.append(np.asarray(s.label_perm, dtype=np.int64))
                self.perm_id[i] = seen[key]
        self.perms = np.stack(perms) if perms else np.zeros((0, 0), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.client_ids)

    def _row(self, client_id: int) -> int | None:
        i = int(np.searchsorted(self.client_ids, client_id))
        return i if i < len(self.client_ids) and self.client_ids[i] == client_id else None

    def __contains__(self, client_id: object) -> bool:
        return isinstance(client_id, (int, np.integer)) and self._row(int(client_id)) is not None

    def sizes(self) -> dict[int, int]:
        """Training examples per client."""
        return dict(zip(self.client_ids.tolist(), np.diff(self.train_off).tolist(), strict=True))

    def shard(self, client_id: int) -> ClientShard:
        i = self._row(client_id)
        if i is None:
            raise KeyError(f"client {client_id} is not in this ShardTable")
        p = int(self.perm_id[i])
        return ClientShard(
            client_id=int(client_id),
            train_idx=self.train_idx[self.train_off[i] : self.train_off[i + 1]],
            val_idx=self.val_idx[self.val_off[i] : self.val_off[i + 1]],
            test_idx=self.test_idx[self.test_off[i] : self.test_off[i + 1]],
            group=int(self.group[i]),
            rotation=int(self.rotation[i]),
            label_perm=self.perms[p] if p >= 0 else None,
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class Federation:
    """All clients of an experiment. ``public_idx`` (into ``x_train``) is held by no client.

    ``num_groups`` is the number of ground-truth groups (0 when the scheme has none).
    """

    clients: tuple[ClientShard, ...]
    public_idx: np.ndarray
    scheme: str
    num_groups: int

    def __post_init__(self) -> None:
        self.public_idx.setflags(write=False)


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
) -> list[np.ndarray]:
    """Every client's test positions (``want``: (K, C) per class) in one draw per class, *with*
    replacement within a client (partition ``sampled`` only: its clients overlap anyway, and one
    ``Generator.choice`` per client and class cost 16 s at 100,000 clients). Sorted per client."""
    owners, picks = [], []
    for c, cand in enumerate(test_by_class):
        m = want[:, c]
        total = int(m.sum())
        if total:
            owners.append(np.repeat(np.arange(len(want), dtype=np.int64), m))
            picks.append(cand[rng.integers(0, len(cand), size=total)])
    if not picks:
        return [np.empty(0, dtype=np.int64) for _ in range(len(want))]
    owner, pos = np.concatenate(owners), np.concatenate(picks).astype(np.int64)
    order = np.lexsort((pos, owner))
    return np.split(pos[order], np.cumsum(want.sum(axis=1))[:-1])


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
        shards = [pool[p] for p in plugin_partition(scheme, y_pool, num_clients, rng_part, partition_params)]

    test_by_class = [np.flatnonzero(ds.y_test == c) for c in range(ds.num_classes)]
    pool_size = max(len(pool), 1)
    # the validation split of every client first (its own random stream), then the test draws: the
    # label histograms and per-class test counts of all clients at once, the draws client by client
    splits = [_split_val(shard, val_fraction, rng_val) for shard in shards]
    want = None
    if scheme != "natural" and len(ds.y_test) > 0:
        sizes = np.array(
            [
                test_per_client or max(10, int(round(len(ds.y_test) * len(train_idx) / pool_size)))
                for train_idx, _ in splits
            ],
            dtype=np.int64,
        )
        hists = _label_hists(y, [train_idx for train_idx, _ in splits], ds.num_classes)
        want = _test_counts(hists, sizes, test_by_class)
    drawn = (
        _draw_tests_at_once(want, test_by_class, rng_test)
        if scheme == "sampled" and want is not None
        else None
    )
    clients = []
    for k, (train_idx, val_idx) in enumerate(splits):
        if drawn is not None:
            test_idx = drawn[k]
        elif scheme == "natural":
            assert ds.natural_test is not None
            test_idx = np.sort(np.asarray(ds.natural_test[k], dtype=np.int64))
        elif want is None:
            test_idx = np.empty(0, dtype=np.int64)
        else:
            test_idx = _draw_test(want[k], test_by_class, rng_test)
        clients.append(
            ClientShard(
                client_id=k,
                train_idx=train_idx,
                val_idx=val_idx,
                test_idx=test_idx,
                group=int(groups[k]),
                rotation=int(rotations[k]),
                label_perm=None if perms is None else perms[groups[k]].copy(),
            )
        )
    return Federation(clients=tuple(clients), public_idx=public_idx, scheme=scheme, num_groups=fed_groups)


# ------------------------------------------------------------------------------------------ summary


def summary_table(fed: Federation, ds: Dataset) -> pa.Table:
    """One row per client: client_id, group, rotation, n_train, n_val, n_test, label_hist.

    ``label_hist`` counts the client's train labels in the dataset's original label space (length
    ``num_classes``). The table's schema metadata records the scheme, dataset and group count.
    """
    import pyarrow as pa

    hists = _label_hists(ds.y_train, [c.train_idx for c in fed.clients], ds.num_classes).tolist()
    schema = pa.schema(
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
    cols = {
        "client_id": [c.client_id for c in fed.clients],
        "group": [c.group for c in fed.clients],
        "rotation": [c.rotation for c in fed.clients],
        "n_train": [len(c.train_idx) for c in fed.clients],
        "n_val": [len(c.val_idx) for c in fed.clients],
        "n_test": [len(c.test_idx) for c in fed.clients],
        "label_hist": hists,
    }
    return pa.Table.from_pydict(cols, schema=schema)


def write_summary(fed: Federation, ds: Dataset, path: str | Path) -> Path:
    """Write :func:`summary_table` as Parquet to ``path`` (its directory must exist); returns the path."""
    import pyarrow.parquet as pq

    path = Path(path)
    pq.write_table(summary_table(fed, ds), path)
    return path
