"""Partitioners: disjointness, coverage, min size, determinism, and the skew each one promises."""

from __future__ import annotations

import numpy as np
import pytest

from raysim.data import partition as P

# 10 balanced classes, 100 examples each, in class order (the worst case for a naive splitter)
LABELS = np.repeat(np.arange(10), 100)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


PARTITIONERS = {
    "iid": lambda y, k, rng: P.iid(y, k, rng),
    "dirichlet": lambda y, k, rng: P.dirichlet(y, k, 0.5, rng),
    "pathological": lambda y, k, rng: P.pathological(y, k, 2, rng),
    "quantity": lambda y, k, rng: P.quantity_skew(y, k, rng, sigma=1.0),
    "dirichlet_quantity": lambda y, k, rng: P.dirichlet_quantity(y, k, 0.5, rng, sigma=1.0),
    "contiguous": lambda y, k, rng: P.contiguous(len(y), k, rng),
}


def _label_shares(parts: list[np.ndarray], y: np.ndarray, num_classes: int = 10) -> np.ndarray:
    h = np.stack([np.bincount(y[p], minlength=num_classes) for p in parts]).astype(float)
    return h / h.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_disjoint_full_coverage_min_size_and_dtype(name: str) -> None:
    parts = PARTITIONERS[name](LABELS, 20, _rng(1))

    assert len(parts) == 20
    assert all(p.dtype == np.int64 and p.ndim == 1 for p in parts)
    assert min(len(p) for p in parts) >= 2
    every = np.concatenate(parts)
    assert len(every) == len(np.unique(every)), "an index was given to two clients"
    # with 20 clients x 2 classes = 40 shards >= 10 classes, pathological also covers everything
    assert np.array_equal(np.sort(every), np.arange(len(LABELS)))


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_same_seed_same_arrays_other_seed_differs(name: str) -> None:
    a = PARTITIONERS[name](LABELS, 10, _rng(7))
    b = PARTITIONERS[name](LABELS, 10, _rng(7))
    c = PARTITIONERS[name](LABELS, 10, _rng(8))

    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("name", ["iid", "dirichlet", "pathological", "quantity", "dirichlet_quantity"])
def test_client_indices_are_not_in_class_order(name: str) -> None:
    # docs/architecture.md, section 2: batches in class order stop learning; partitioners shuffle within a client
    parts = PARTITIONERS[name](LABELS, 5, _rng(3))

    for p in parts:
        y = LABELS[p]
        if len(np.unique(y)) > 1:
            assert np.any(np.diff(y) < 0), "client indices came back sorted by class"


def test_too_many_clients_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"cannot give 600 clients at least 2 examples.*at most 500 clients"):
        P.iid(LABELS, 600, _rng())


def test_iid_sizes_differ_by_at_most_one() -> None:
    parts = P.iid(LABELS, 7, _rng())

    sizes = [len(p) for p in parts]
    assert sum(sizes) == 1000
    assert max(sizes) - min(sizes) == 1  # 1000 = 6 * 143 + 142


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    def mean_top_share(alpha: float) -> float:
        parts = P.dirichlet(LABELS, 10, alpha, _rng(0))
        return float(_label_shares(parts, LABELS).max(axis=1).mean())

    top = {a: mean_top_share(a) for a in (0.1, 1.0, 100.0)}

    # iid would give 0.1 per class; alpha=100 stays close, alpha=0.1 is dominated by one class
    assert top[100.0] < 0.2
    assert top[0.1] > 0.5
    assert top[0.1] > top[1.0] > top[100.0]


def test_dirichlet_tops_up_when_no_draw_reaches_min_size() -> None:
    y = np.repeat([0, 1], 10)  # two classes, 20 examples; alpha=0.001 sends each class to ~1 client

    parts = P.dirichlet(y, 10, 0.001, _rng(), max_tries=5)

    # 20 examples over 10 clients with min_size 2 leaves exactly one way: 2 each
    assert [len(p) for p in parts] == [2] * 10
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(20))


def test_dirichlet_many_clients_small_alpha_keeps_min_size_and_skew() -> None:
    y = np.repeat(np.arange(10), 1000)

    parts = P.dirichlet(y, 1000, 0.1, _rng(1))
    milder = P.dirichlet(y, 1000, 1.0, _rng(1))

    assert min(len(p) for p in parts) >= 2
    every = np.concatenate(parts)
    assert np.array_equal(np.sort(every), np.arange(len(y)))
    # the top-up keeps the skew: alpha=1 clients of ~10 examples average a top share near 0.3
    top, top_milder = (_label_shares(p, y).max(axis=1).mean() for p in (parts, milder))
    assert top > 0.6 and top > 2 * top_milder


def test_top_up_takes_the_short_clients_favoured_class_from_the_richest_holder() -> None:
    counts = np.array([[5, 3], [0, 1], [4, 0]])  # client 1 holds 1 < min_size 2
    weights = np.array([[0.5, 0.1, 0.4], [0.5, 0.9, 0.0]])  # (C, K): client 1 favours class 1

    fixed = P._top_up(counts, weights, 2)

    # one class-1 example moves from client 0 (the only holder with some to spare)
    assert fixed.tolist() == [[5, 2], [0, 2], [4, 0]]


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_dirichlet_rejects_non_positive_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha must be a positive"):
        P.dirichlet(LABELS, 10, alpha, _rng())


def test_pathological_balanced_shards_hand_computed() -> None:
    # 20 clients x 2 classes = 40 shards; 4 shards per class of 100 -> 25 each; every client 50
    parts = P.pathological(LABELS, 20, 2, _rng(5))

    assert [len(p) for p in parts] == [50] * 20
    for p in parts:
        labels, counts = np.unique(LABELS[p], return_counts=True)
        assert len(labels) <= 2
        assert set(counts.tolist()) <= {25, 50}


@pytest.mark.parametrize("c", [1, 2, 3])
def test_pathological_at_most_c_labels_with_uneven_classes(c: int) -> None:
    y = np.concatenate([np.full(n, k) for k, n in enumerate([37, 120, 5, 61, 90, 14, 200, 33, 8, 52])])

    parts = P.pathological(y, 12, c, _rng(2))

    assert all(len(np.unique(y[p])) <= c for p in parts)
    every = np.concatenate(parts)
    assert len(every) == len(np.unique(every))


def test_pathological_rejects_more_classes_than_exist() -> None:
    with pytest.raises(ValueError, match=r"classes_per_client must be between 1 and .*\(10\), got 11"):
        P.pathological(LABELS, 5, 11, _rng())


def test_quantity_skew_sigma_controls_size_spread() -> None:
    def size_cv(sigma: float) -> float:
        sizes = np.array([len(p) for p in P.quantity_skew(LABELS, 20, _rng(4), sigma=sigma)])
        return float(sizes.std() / sizes.mean())

    equal = [len(p) for p in P.quantity_skew(LABELS, 20, _rng(4), sigma=0.0)]

    assert equal == [50] * 20
    assert size_cv(2.0) > size_cv(0.5) > 0.1


def test_dirichlet_quantity_has_both_skews() -> None:
    def stats(alpha: float, sigma: float) -> tuple[float, float]:
        parts = P.dirichlet_quantity(LABELS, 10, alpha, _rng(6), sigma=sigma)
        sizes = np.array([len(p) for p in parts])
        return float(sizes.std() / sizes.mean()), float(_label_shares(parts, LABELS).max(axis=1).mean())

    cv_flat, top_flat = stats(1000.0, 0.0)
    cv_size, _ = stats(1000.0, 1.5)
    _, top_skew = stats(0.1, 0.0)

    assert cv_flat < 0.1 and top_flat < 0.2  # huge alpha, sigma 0: close to iid
    assert cv_size > 0.5  # sizes follow the log-normal weights
    assert top_skew > 0.5  # small alpha: label skew


def test_contiguous_is_slices_of_one_shuffled_order() -> None:
    parts = P.contiguous(1000, 8, _rng(9), min_size=5)

    order = np.random.default_rng(9).permutation(1000)  # the same first draw
    assert np.array_equal(np.concatenate(parts), order)
    sizes = [len(p) for p in parts]
    assert min(sizes) >= 5 and sum(sizes) == 1000
    assert len(set(sizes)) > 1


def test_contiguous_min_size_exactly_fills() -> None:
    parts = P.contiguous(10, 5, _rng(), min_size=2)

    assert [len(p) for p in parts] == [2] * 5


def test_assign_groups_balanced_and_seeded() -> None:
    g = P.assign_groups(10, 4, _rng(1))

    assert g.dtype == np.int64
    assert sorted(np.bincount(g).tolist()) == [2, 2, 3, 3]
    assert np.array_equal(g, P.assign_groups(10, 4, _rng(1)))
    with pytest.raises(ValueError, match=r"num_groups must be between 1 and num_clients \(3\), got 4"):
        P.assign_groups(3, 4, _rng())


def test_label_permutations_identity_first_and_distinct() -> None:
    perms = P.label_permutations(4, 10, _rng(2))

    assert perms.shape == (4, 10)
    assert np.array_equal(perms[0], np.arange(10))
    assert all(np.array_equal(np.sort(p), np.arange(10)) for p in perms)
    assert len({tuple(p) for p in perms}) == 4
    # 3 labels have 3! = 6 permutations: 6 groups possible, 7 not
    assert len({tuple(p) for p in P.label_permutations(6, 3, _rng())}) == 6
    with pytest.raises(ValueError, match="only 6 distinct permutations of 3 labels"):
        P.label_permutations(7, 3, _rng())


def test_apportion_hand_computed() -> None:
    assert P.apportion(10, np.array([1, 1, 1])).tolist() == [4, 3, 3]
    # exact 3.5, 1.75, 1.75 -> floors 3, 1, 1; the two leftovers go to the largest remainders
    assert P.apportion(7, np.array([0.5, 0.25, 0.25])).tolist() == [3, 2, 2]
    assert P.apportion(0, np.array([2.0, 1.0])).tolist() == [0, 0]
    with pytest.raises(ValueError, match="positive sum"):
        P.apportion(3, np.array([0.0, 0.0]))


def test_stratified_split_keeps_proportions() -> None:
    y = np.array([0] * 100 + [1] * 50)

    taken, rest = P.stratified_split(y, 0.2, _rng(3))

    assert np.bincount(y[taken]).tolist() == [20, 10]
    assert np.array_equal(np.sort(np.concatenate([taken, rest])), np.arange(150))
    assert len(P.stratified_split(y, 0.0, _rng())[0]) == 0


def test_labels_must_be_1d_integers() -> None:
    with pytest.raises(ValueError, match="1-d"):
        P.iid(np.zeros((4, 2), dtype=np.int64), 2, _rng())
    with pytest.raises(ValueError, match="integers"):
        P.dirichlet(np.zeros(10, dtype=np.float32), 2, 1.0, _rng())


def test_sampled_fits_more_clients_than_examples_each_without_repeats() -> None:
    rng = np.random.default_rng(0)
    parts = P.sampled(100, 500, 30, rng)  # 15,000 draws from 100 positions
    assert len(parts) == 500
    for p in parts:
        assert p.dtype == np.int64 and len(p) == 30 and len(np.unique(p)) == 30
        assert p.min() >= 0 and p.max() < 100
    # clients overlap, and every position is drawn about equally often (uniform): 150 expected each
    counts = np.bincount(np.concatenate(parts), minlength=100)
    assert 100 < counts.min() and counts.max() < 200
    again = P.sampled(100, 500, 30, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def _sampled_draws_int64(n: int, k: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """The draw as it was before issue 21's memory work: int64, all rows at once."""
    draws = rng.integers(0, n, size=(k, m), dtype=np.int64)
    s = np.sort(draws, axis=1)
    for i in np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1)):
        draws[i] = rng.choice(n, size=m, replace=False)
    return draws


@pytest.mark.parametrize(
    "n,k,m,seed",
    [(60_000, 3_000, 50, 0), (100, 500, 30, 1), (7, 40, 7, 2), (1, 3, 1, 3), (5_000, 70_001, 3, 4)],
)
def test_sampled_draws_in_int32_are_the_int64_draws(
    n: int, k: int, m: int, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The draws are int32 (half the memory at 10^6 clients) and the same numbers as the int64
    draw, repeats redrawn in the same order, and the generator left in the same state; also when
    the repeat check runs over several chunks of rows."""
    monkeypatch.setattr(P, "SAMPLED_CHUNK", 1 << 10)
    a, b = np.random.default_rng(seed), np.random.default_rng(seed)
    got = P.sampled_draws(n, k, m, a)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, _sampled_draws_int64(n, k, m, b))
    assert a.bit_generator.state == b.bit_generator.state


def test_sampled_rejects_impossible_sizes() -> None:
    with pytest.raises(ValueError, match="between 1 and the 10 examples"):
        P.sampled(10, 5, 11, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_clients must be >= 1"):
        P.sampled(10, 0, 2, np.random.default_rng(0))
