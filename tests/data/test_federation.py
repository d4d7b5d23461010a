"""build_federation: shards, public split, val/test sampling, groups, summary, transforms."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysim.data import (
    SCHEMES,
    Dataset,
    Federation,
    build_federation,
    load_dataset,
    map_labels,
    summary_table,
    transform_images,
    write_summary,
)

NON_NATURAL = [s for s in SCHEMES if s != "natural"]


def fake_images(n_train: int = 1000, n_test: int = 500, classes: int = 10, name: str = "fake") -> Dataset:
    """Balanced labels in class order, random 1x4x4 uint8 images."""
    rng = np.random.default_rng(0)
    return Dataset(
        name=name,
        x_train=rng.integers(0, 256, size=(n_train, 1, 4, 4), dtype=np.uint8),
        y_train=(np.arange(n_train) * classes // n_train).astype(np.int64),
        x_test=rng.integers(0, 256, size=(n_test, 1, 4, 4), dtype=np.uint8),
        y_test=(np.arange(n_test) * classes // n_test).astype(np.int64),
        num_classes=classes,
        input_shape=(1, 4, 4),
        mean=(0.5,),
        std=(0.25,),
    )


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return fake_images()


def _build(ds: Dataset, scheme: str, **kw: Any) -> Federation:
    args = {"num_clients": 10, "seed": 0, **kw}
    return build_federation(ds, scheme=scheme, **args)


@pytest.mark.parametrize("scheme", NON_NATURAL)
def test_shards_disjoint_and_public_held_out(ds: Dataset, scheme: str) -> None:
    fed = _build(ds, scheme, public_fraction=0.1, num_groups=3)

    assert len(fed.clients) == 10 and [c.client_id for c in fed.clients] == list(range(10))
    held = np.concatenate([np.concatenate([c.train_idx, c.val_idx]) for c in fed.clients])
    if scheme == "sampled":  # clients draw independently (overlap by design), never twice within one
        assert all(len(np.unique(np.concatenate([c.train_idx, c.val_idx]))) == 50 for c in fed.clients)
    else:
        assert len(held) == len(np.unique(held)), (
            "a training example belongs to two clients (or train and val)"
        )
    assert len(np.intersect1d(held, fed.public_idx)) == 0
    # stratified public split: 10% of each balanced class = 10 per class
    assert np.bincount(ds.y_train[fed.public_idx], minlength=10).tolist() == [10] * 10
    assert all(len(c.train_idx) >= 1 and len(c.val_idx) >= 1 for c in fed.clients)
    assert all(c.test_idx.max() < len(ds.y_test) for c in fed.clients)
    if scheme not in ("pathological", "sampled"):  # the others use the whole pool here
        assert len(held) + len(fed.public_idx) == len(ds.y_train)


@pytest.mark.parametrize("scheme", NON_NATURAL)
def test_deterministic_per_seed(ds: Dataset, scheme: str) -> None:
    a, b, c = (_build(ds, scheme, seed=s, num_groups=2) for s in (3, 3, 4))

    def arrays(f: Federation) -> list[np.ndarray]:
        return [x for cl in f.clients for x in (cl.train_idx, cl.val_idx, cl.test_idx)]

    assert all(np.array_equal(x, y) for x, y in zip(arrays(a), arrays(b), strict=True))
    assert [cl.group for cl in a.clients] == [cl.group for cl in b.clients]
    assert not all(np.array_equal(x, y) for x, y in zip(arrays(a), arrays(c), strict=True))


def test_iid_sizes_hand_computed(ds: Dataset) -> None:
    fed = _build(ds, "iid", val_fraction=0.1)

    # 1000 / 10 = 100 per shard; 10 val; 90 train; test = round(500 * 90 / 1000) = 45
    for c in fed.clients:
        assert (len(c.train_idx), len(c.val_idx), len(c.test_idx)) == (90, 10, 45)
        assert c.group == -1 and c.rotation == 0 and c.label_perm is None
    assert fed.num_groups == 0 and len(fed.public_idx) == 0


def test_val_fraction_zero_and_tiny_shards(ds: Dataset) -> None:
    no_val = _build(ds, "iid", val_fraction=0.0)
    tiny = build_federation(ds, scheme="iid", num_clients=500, seed=0, val_fraction=0.1)

    assert all(len(c.val_idx) == 0 and len(c.train_idx) == 100 for c in no_val.clients)
    # shards of 2: round(0.2) = 0 is raised to the 1-example minimum, leaving 1 to train on
    assert all((len(c.train_idx), len(c.val_idx)) == (1, 1) for c in tiny.clients)


def test_test_labels_follow_train_proportions(ds: Dataset) -> None:
    m = 200
    fed = _build(ds, "dirichlet", alpha=0.3, test_per_client=m)

    for c in fed.clients:
        train = np.bincount(ds.y_train[c.train_idx], minlength=10) / len(c.train_idx)
        test = np.bincount(ds.y_test[c.test_idx], minlength=10) / len(c.test_idx)
        assert len(c.test_idx) == m
        # largest-remainder rounding: each class within one example of its exact share
        assert np.all(np.abs(test - train) * m <= 1.0 + 1e-9)


def test_test_sampling_without_replacement_when_possible(ds: Dataset) -> None:
    fed = _build(ds, "pathological", classes_per_client=1, test_per_client=40)

    for c in fed.clients:  # one class each, 50 test examples per class >= 40 wanted
        assert len(np.unique(c.test_idx)) == 40
        assert len(np.unique(ds.y_test[c.test_idx])) == 1


def test_pathological_label_counts(ds: Dataset) -> None:
    fed = _build(ds, "pathological", classes_per_client=2, val_fraction=0.0)

    assert all(len(np.unique(ds.y_train[c.train_idx])) <= 2 for c in fed.clients)


def test_rotation_groups(ds: Dataset) -> None:
    fed = _build(ds, "rotation", num_groups=4, alpha=0.5)

    groups = np.array([c.group for c in fed.clients])
    assert fed.num_groups == 4 and sorted(np.bincount(groups).tolist()) == [2, 2, 3, 3]
    assert all(c.rotation == c.group and c.label_perm is None for c in fed.clients)


def test_label_permutation_groups(ds: Dataset) -> None:
    fed = _build(ds, "label-permutation", num_groups=3)

    assert all(c.label_perm is not None for c in fed.clients)
    perms = {c.group: np.asarray(c.label_perm) for c in fed.clients}
    assert sorted(perms) == [0, 1, 2]
    assert np.array_equal(perms[0], np.arange(10))
    assert len({tuple(p) for p in perms.values()}) == 3
    assert all(c.rotation == 0 for c in fed.clients)
    # clients of the same group share the map
    for c in fed.clients:
        assert np.array_equal(np.asarray(c.label_perm), perms[c.group])


def test_natural_uses_the_datasets_own_clients() -> None:
    syn = load_dataset("synthetic", seed=0, num_clients=12)
    assert syn.natural_train is not None and syn.natural_test is not None

    fed = build_federation(syn, scheme="natural", num_clients=12, seed=0, val_fraction=0.2)

    for c, tr, te in zip(fed.clients, syn.natural_train, syn.natural_test, strict=True):
        assert np.array_equal(np.sort(np.concatenate([c.train_idx, c.val_idx])), tr)
        assert len(c.val_idx) == round(0.2 * len(tr))
        assert np.array_equal(c.test_idx, te)
    with pytest.raises(
        ValueError, match="12 natural clients but num_clients=30; load it with num_clients=30"
    ):
        build_federation(syn, scheme="natural", num_clients=30, seed=0)
    with pytest.raises(ValueError, match="public_fraction > 0 is not supported with scheme 'natural'"):
        build_federation(syn, scheme="natural", num_clients=12, seed=0, public_fraction=0.1)


def test_streams_are_independent_per_step(ds: Dataset) -> None:
    # changing the test size must not change who holds which training example
    a = _build(ds, "dirichlet", test_per_client=20)
    b = _build(ds, "dirichlet", test_per_client=50)

    assert all(np.array_equal(x.train_idx, y.train_idx) for x, y in zip(a.clients, b.clients, strict=True))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {"scheme": "shards"},
            r"unknown partition 'shards'; valid names: iid, dirichlet, pathological",
        ),
        (
            {"scheme": "iid", "num_clients": 501},
            r"needs at least 1002 training examples .* use at most 500 clients",
        ),
        ({"scheme": "rotation", "num_groups": 5}, r"num_groups=5 is too many for scheme 'rotation'.*<= 4"),
        (
            {"scheme": "pathological", "classes_per_client": 11},
            r"classes_per_client must be between 1 and 10",
        ),
        ({"scheme": "dirichlet", "alpha": 0.0}, r"alpha must be > 0"),
        ({"scheme": "dirichlet", "alpha": -0.5}, r"alpha must be > 0"),
        (
            {"scheme": "label-permutation", "num_groups": 11},
            r"num_groups must be between 1 and num_clients \(10\)",
        ),
        ({"scheme": "iid", "val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ({"scheme": "iid", "test_per_client": 0}, r"test_per_client must be >= 1"),
        ({"scheme": "natural"}, r"scheme 'natural' needs a dataset that is federated by nature"),
    ],
)
def test_impossible_requests_are_clear_errors(ds: Dataset, kw: dict[str, Any], message: str) -> None:
    args = {"num_clients": 10, "seed": 0, **kw}

    with pytest.raises(ValueError, match=message):
        build_federation(ds, **args)


def test_rotation_needs_square_images() -> None:
    syn = load_dataset("synthetic", seed=0, num_clients=5)

    with pytest.raises(ValueError, match=r"'rotation' needs square images .* inputs \(60,\)"):
        build_federation(syn, scheme="rotation", num_clients=5, seed=0, num_groups=2)


def test_summary_parquet_round_trip(ds: Dataset, tmp_path: Path) -> None:
    fed = _build(ds, "rotation", num_groups=2, public_fraction=0.05)

    path = write_summary(fed, ds, tmp_path / "clients.parquet")
    table = pq.read_table(path)

    assert table.column_names == [
        "client_id",
        "group",
        "rotation",
        "n_train",
        "n_val",
        "n_test",
        "label_hist",
    ]
    assert table.num_rows == 10
    rows = table.to_pylist()
    for row, c in zip(rows, fed.clients, strict=True):
        assert row["client_id"] == c.client_id and row["group"] == c.group and row["rotation"] == c.rotation
        assert (row["n_train"], row["n_val"], row["n_test"]) == (
            len(c.train_idx),
            len(c.val_idx),
            len(c.test_idx),
        )
        assert row["label_hist"] == np.bincount(ds.y_train[c.train_idx], minlength=10).tolist()
    meta = table.schema.metadata
    assert meta[b"scheme"] == b"rotation" and meta[b"num_groups"] == b"2" and meta[b"n_public"] == b"50"
    hist_type = table.schema.field("label_hist").type
    assert pa.types.is_list(hist_type) and hist_type.value_type == pa.int64()
    assert summary_table(fed, ds).to_pylist() == rows


def test_transform_images_hand_computed() -> None:
    x = np.array([[[[1, 2], [3, 4]]]], dtype=np.uint8)  # (B=1, C=1, 2, 2)

    quarter = transform_images(x, 1)
    half = transform_images(x, 2)

    assert quarter[0, 0].tolist() == [[2, 4], [1, 3]]  # counter-clockwise
    assert half[0, 0].tolist() == [[4, 3], [2, 1]]
    assert np.array_equal(transform_images(x, 3), transform_images(quarter, 2))
    assert quarter.flags.c_contiguous and quarter.dtype == np.uint8
    assert transform_images(x, 0) is x
    with pytest.raises(ValueError, match="quarter turns in 0..3, got 4"):
        transform_images(x, 4)
    with pytest.raises(ValueError, match="square images, got 2x3"):
        transform_images(np.zeros((1, 1, 2, 3), dtype=np.uint8), 1)


def test_map_labels() -> None:
    y = np.array([0, 1, 2, 0])

    assert map_labels(y, np.array([2, 0, 1])).tolist() == [2, 0, 1, 2]
    assert map_labels(y, None) is y
    with pytest.raises(ValueError, match="permutation of 0..num_classes-1"):
        map_labels(y, np.array([0, 0, 1]))


def test_shards_are_read_only(ds: Dataset) -> None:
    fed = _build(ds, "iid")

    with pytest.raises(ValueError, match="read-only"):
        fed.clients[0].train_idx[0] = 5


def test_federation_and_dataset_survive_pickling(ds: Dataset) -> None:
    # Ray ships both to actors by pickling them
    fed = _build(ds, "label-permutation", num_groups=2, public_fraction=0.1)

    fed2, ds2 = pickle.loads(pickle.dumps((fed, ds)))

    assert fed2.scheme == "label-permutation" and fed2.num_groups == 2
    assert np.array_equal(fed2.public_idx, fed.public_idx)
    for a, b in zip(fed.clients, fed2.clients, strict=True):
        assert np.array_equal(a.train_idx, b.train_idx) and np.array_equal(a.test_idx, b.test_idx)
        assert a.label_perm is not None and b.label_perm is not None
        assert np.array_equal(a.label_perm, b.label_perm)
    assert np.array_equal(ds2.x_train, ds.x_train) and ds2.input_shape == ds.input_shape


@pytest.mark.parametrize("scheme", ["dirichlet", "rotation", "label-permutation"])
def test_shard_table_gives_back_every_shard_exactly(ds: Dataset, scheme: str) -> None:
    """What a roaming actor trains from: each client rebuilt from the flat arrays equals its shard."""
    from raysim.data import ShardTable

    kw: dict[str, Any] = {"alpha": 0.5} if scheme == "dirichlet" else {"num_groups": 3}
    fed = build_federation(ds, scheme=scheme, num_clients=20, seed=3, **kw)
    shuffled = [fed.clients[i] for i in np.random.default_rng(0).permutation(20)]
    table = pickle.loads(pickle.dumps(ShardTable(shuffled)))  # as the actors receive it
    assert len(table) == 20
    assert table.sizes() == {s.client_id: len(s.train_idx) for s in fed.clients}
    for s in fed.clients:
        got = table.shard(s.client_id)
        for name in ("train_idx", "val_idx", "test_idx"):
            np.testing.assert_array_equal(getattr(got, name), getattr(s, name))
            assert not getattr(got, name).flags.writeable
        assert (got.group, got.rotation) == (s.group, s.rotation)
        if s.label_perm is None:
            assert got.label_perm is None
        else:
            np.testing.assert_array_equal(got.label_perm, s.label_perm)
    if scheme == "label-permutation":
        assert table.perms.shape == (3, ds.num_classes)  # one label map per group, not per client
    assert 5 in table and 20 not in table and "5" not in table
    with pytest.raises(KeyError, match="client 20"):
        table.shard(20)
    with pytest.raises(ValueError, match="same client id"):
        ShardTable([fed.clients[0], fed.clients[0]])


def test_sampled_partition_holds_more_clients_than_the_dataset_and_says_so_when_others_cannot(
    ds: Dataset,
) -> None:
    """1,000 examples: 'dirichlet' refuses 2,000 clients (and names the way out), 'sampled' builds them."""
    with pytest.raises(ValueError, match="partition 'sampled'"):
        build_federation(ds, scheme="dirichlet", num_clients=2000, seed=0)
    fed = build_federation(ds, scheme="sampled", num_clients=2000, seed=0, examples_per_client=10)
    assert len(fed.clients) == 2000
    for c in fed.clients[:50]:
        assert len(c.train_idx) + len(c.val_idx) == 10 and len(c.val_idx) == 1
        assert not set(c.train_idx.tolist()) & set(c.val_idx.tolist())
        assert len(c.test_idx) >= 10
    # test splits follow each client's train label proportions, drawn for all clients at once
    from raysim.data.federation import _label_hists, _test_counts

    test_by_class = [np.flatnonzero(ds.y_test == c) for c in range(ds.num_classes)]
    some = fed.clients[:50]
    hists = _label_hists(ds.y_train, [c.train_idx for c in some], ds.num_classes)
    want = _test_counts(hists, np.array([len(c.test_idx) for c in some]), test_by_class)
    for c, w in zip(some, want, strict=True):
        assert np.array_equal(np.bincount(ds.y_test[c.test_idx], minlength=ds.num_classes), w)
        assert np.all(np.diff(c.test_idx) >= 0)
    with pytest.raises(ValueError, match="examples_per_client must be between 2 and the 1000"):
        build_federation(ds, scheme="sampled", num_clients=10, seed=0, examples_per_client=1001)


def test_table_views_slices_and_joins_give_back_the_same_clients(ds: Dataset) -> None:
    """A host's TableView, a table's take/concat and partition.parquet written in parts all show
    the federation's clients unchanged (issue 21: the runtime ships one table and ids)."""
    from raysim.data import ShardTable, TableView

    fed = build_federation(ds, scheme="label-permutation", num_clients=12, seed=2, num_groups=3)
    table = fed.table
    assert table.train_idx.dtype == np.int32  # positions below 2^31: half the memory
    view = TableView(table, np.array([7, 2, 9]))
    assert view.client_ids.tolist() == [2, 7, 9] and len(view) == 3
    assert 7 in view and 3 not in view and "7" not in view
    assert view.n_train().tolist() == [len(fed.clients[c].train_idx) for c in (2, 7, 9)]
    with pytest.raises(KeyError, match="client 3"):
        view.shard(3)
    with pytest.raises(KeyError, match=r"\[40\]"):
        TableView(table, np.array([1, 40]))
    parts = [table.take(np.array([0, 3, 5, 11])), table.take(np.array([1, 2, 4, 6, 7, 8, 9, 10]))]
    for joined in (ShardTable.concat(parts[::-1]), ShardTable(list(fed.clients))):
        assert joined.client_ids.tolist() == list(range(12))
        for c in range(12):
            a, b = joined.shard(c), fed.clients[c]
            for name in ("train_idx", "val_idx", "test_idx", "label_perm"):
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
            assert a.train_idx.dtype == np.int64 and (a.group, a.rotation) == (b.group, b.rotation)
    np.testing.assert_array_equal(view.shard(9).test_idx, fed.clients[9].test_idx)
    assert fed.clients[-1].client_id == 11 and [c.client_id for c in fed.clients[2:4]] == [2, 3]


def test_partition_parquet_in_parts_is_the_whole_table(
    ds: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import raysim.data.federation as F

    fed = build_federation(ds, scheme="dirichlet", num_clients=10, seed=1)
    monkeypatch.setattr(F, "SUMMARY_ROWS", 3)
    got = pq.read_table(write_summary(fed, ds, tmp_path / "p.parquet"))
    assert got.equals(summary_table(fed, ds)) and got.num_rows == 10
    assert (
        got.column("label_hist").to_pylist()[4]
        == np.bincount(ds.y_train[fed.clients[4].train_idx], minlength=10).tolist()
    )


def test_sampled_validation_is_each_clients_first_draws(ds: Dataset) -> None:
    """Partition 'sampled' at scale: its validation split is the first draws of each client (its
    draws are in random order already), no per-client shuffle (docs/scaling.md)."""
    from raysim.data import partition as P

    fed = build_federation(ds, scheme="sampled", num_clients=30, seed=4, examples_per_client=20)
    rng_part = np.random.default_rng(np.random.SeedSequence(4).spawn(4)[1])
    draws = P.sampled_draws(len(ds.y_train), 30, 20, rng_part)
    for c in fed.clients:
        np.testing.assert_array_equal(c.val_idx, np.sort(draws[c.client_id, :2]))
        np.testing.assert_array_equal(c.train_idx, draws[c.client_id, 2:])


# sha256 (first 16 hex digits) of every table array (as int64) and public_idx of partition
# 'sampled' federations of fake_images(), recorded before issue 21's memory work (int32 draws,
# test counts in chunks of clients, test keys class by class): these federations must not change
SAMPLED_DIGESTS = {
    (30, 4, 20, 0.0): "1e76b66da73eeafe",
    (257, 0, 50, 0.0): "81c3c0002a051dbc",
    (1000, 7, 5, 0.2): "952717a32f3108a4",
    (64, 2, 900, 0.1): "d6558605593d0b05",  # the whole pool each: every row redrawn
}


@pytest.mark.parametrize("case", list(SAMPLED_DIGESTS))
def test_sampled_federations_are_unchanged(
    case: tuple[int, int, int, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    import raysim.data.partition as P

    monkeypatch.setattr(P, "SAMPLED_CHUNK", 64)  # several chunks of clients in every step
    n, seed, k, pub = case
    fed = build_federation(
        fake_images(), scheme="sampled", num_clients=n, seed=seed, examples_per_client=k, public_fraction=pub
    )
    h = hashlib.sha256()
    for name in ("client_ids", "train_idx", "train_off", "val_idx", "val_off", "test_idx", "test_off"):
        h.update(np.ascontiguousarray(getattr(fed.table, name), dtype=np.int64).tobytes())
    for name in ("group", "rotation", "perm_id"):
        h.update(np.ascontiguousarray(getattr(fed.table, name), dtype=np.int64).tobytes())
    h.update(np.asarray(fed.public_idx, dtype=np.int64).tobytes())
    assert h.hexdigest()[:16] == SAMPLED_DIGESTS[case]
