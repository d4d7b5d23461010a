"""Partitioners: pure, seeded functions from labels to per-client index arrays.

Every partitioner returns ``list[np.ndarray]`` (one int64 array per client) of positions into the
label array it was given. Guarantees, checked by the tests:

- each position is used at most once (clients are disjoint);
- every client holds at least ``min_size`` examples (default 2); a ``ValueError`` says so when
  ``num_clients * min_size`` exceeds the examples (or, for ``pathological``, the shards are too small);
- the result depends only on the inputs and the generator's state (same seed, same arrays);
- each client's indices come in random order. Trainers must still shuffle every epoch (docs/architecture.md,
  section 2): a client's data is often dominated by a few classes.

The exception is ``sampled`` (scale runs beyond the dataset's size): its clients draw their
examples independently, so they overlap and the number of clients is not bounded by the data.

``iid``, ``dirichlet``, ``quantity_skew``, ``dirichlet_quantity`` and ``contiguous`` use every
position; ``pathological`` uses every position whenever it gives each class at least one shard
(``num_clients * classes_per_client >= number of classes``).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import numpy as np

DEFAULT_MIN_SIZE = 2
DEFAULT_MAX_TRIES = 10


def _as_labels(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-d array, got shape {y.shape}")
    if len(y) and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    return y.astype(np.int64, copy=False)


def _check_sizes(n: int, num_clients: int, min_size: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    if n < num_clients * min_size:
        raise ValueError(
            f"cannot give {num_clients} clients at least {min_size} examples each from {n} examples; "
            f"use at most {n // min_size} clients or more data"
        )


def _shuffled(parts: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.permutation(p).astype(np.int64, copy=False) for p in parts]


def apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Split the integer ``total`` into ``len(weights)`` integers proportional to ``weights``.

    Largest-remainder rounding: the result sums exactly to ``total`` and each entry is within one of
    its exact share. Ties go to the lower index (deterministic).
    """
    w = np.asarray(weights, dtype=np.float64)
    if total < 0 or len(w) == 0 or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"apportion needs total >= 0 and non-negative weights with a positive sum, got {w}")
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    if short > 0:
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:short]] += 1
    return counts


def stratified_split(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``round(fraction * N)`` positions with the label proportions of the whole array.

    Returns ``(taken, rest)``, both int64 in random order, disjoint, together covering every position.
    Per-class counts are apportioned by largest remainder, so each class is represented within one
    example of its exact share.
    """
    y = _as_labels(labels)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    n = len(y)
    k = int(round(fraction * n))
    if k == 0:
        return np.empty(0, dtype=np.int64), rng.permutation(n).astype(np.int64)
    classes, counts = np.unique(y, return_counts=True)
    want = apportion(k, counts)
    taken, rest = [], []
    for c, m in zip(classes, want, strict=True):
        idx = rng.permutation(np.flatnonzero(y == c))
        taken.append(idx[:m])
        rest.append(idx[m:])
    return rng.permutation(np.concatenate(taken)), rng.permutation(np.concatenate(rest))


def iid(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, *, min_size: int = DEFAULT_MIN_SIZE
) -> list[np.ndarray]:
    """Shuffle and deal: client sizes differ by at most one, labels follow the global distribution."""
    n = len(_as_labels(labels))
    _check_sizes(n, num_clients, min_size)
    return list(np.array_split(rng.permutation(n).astype(np.int64), num_clients))


def _class_counts(weights: np.ndarray, class_sizes: np.ndarray) -> np.ndarray:
    """``(K, C)`` counts: class ``c``'s examples cut at ``floor(cumsum(w[c] / sum w[c]) * n_c)``."""
    num_classes, num_clients = weights.shape
    counts = np.zeros((num_clients, num_classes), dtype=np.int64)
    for c in range(num_classes):
        props = weights[c] / weights[c].sum()
        cuts = np.floor(np.cumsum(props) * class_sizes[c]).astype(np.int64)
        cuts[-1] = class_sizes[c]
        counts[:, c] = np.diff(np.concatenate([[0], np.clip(cuts, 0, class_sizes[c])]))
    return counts


def _top_up(counts: np.ndarray, weights: np.ndarray, min_size: int) -> np.ndarray:
    """Move the fewest examples needed so every client holds ``min_size``.

    A short client takes examples of its own most-weighted class first (so it stays dominated by
    the class its draw favoured), each time from the client with the most of that class to spare
    (a donor never drops below ``min_size``; ties go to the lowest client id). Always succeeds when
    ``total >= K * min_size``.

    The donor is found in a per-class max-heap of spare examples rather than by scanning all K
    clients for every move (K short clients made that quadratic). A client's spare only ever
    shrinks (donors lose examples; a short client never has any to spare), so stale heap entries
    are corrected lazily when they reach the top.
    """
    counts = counts.copy()
    sizes = counts.sum(axis=1)
    heaps: dict[int, list[tuple[int, int]]] = {}

    def spare(i: int, c: int) -> int:
        return min(int(counts[i, c]), int(sizes[i]) - min_size)

    def heap(c: int) -> list[tuple[int, int]]:
        h = heaps.get(c)
        if h is None:
            s = np.minimum(counts[:, c], sizes - min_size)
            idx = np.flatnonzero(s > 0)
            h = heaps[c] = list(zip((-s[idx]).tolist(), idx.tolist(), strict=True))
            heapq.heapify(h)
        return h

    for k in np.flatnonzero(sizes < min_size).tolist():
        for c in np.argsort(-weights[:, k], kind="stable").tolist():
            h = heap(c)
            while sizes[k] < min_size:
                while h:  # the top entry, once it is up to date, is the donor
                    neg, j = h[0]
                    cur = spare(j, c)
                    if cur == -neg:
                        break
                    if cur > 0:
                        heapq.heapreplace(h, (-cur, j))
                    else:
                        heapq.heappop(h)
                if not h:
                    break
                j = h[0][1]
                move = min(-h[0][0], int(min_size - sizes[k]))
                counts[j, c] -= move
                counts[k, c] += move
                sizes[j] -= move
                sizes[k] += move
            if sizes[k] >= min_size:
                break
    assert sizes.min() >= min_size, "top-up cannot fail when there are K * min_size examples"
    return counts


def _label_weighted(
    y: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    draw_weights: Callable[[], np.ndarray],
    min_size: int,
    max_tries: int,
) -> list[np.ndarray]:
    """Per class, split the class's positions across clients in proportion to a weight draw.

    ``draw_weights()`` returns one non-negative weight per client for one class. The whole
    ``(C, K)`` draw is repeated up to ``max_tries`` times until every client holds ``min_size``
    examples; if none does, the draw with the smallest shortfall is topped up (:func:`_top_up`).
    """
    classes, class_sizes = np.unique(y, return_counts=True)
    best: tuple[int, np.ndarray, np.ndarray] | None = None
    for _ in range(max(1, max_tries)):
        weights = np.stack([draw_weights() for _ in classes])
        for c in range(len(classes)):  # underflow at tiny alpha: the Dirichlet limit is one client
            if not np.isfinite(weights[c]).all() or weights[c].sum() <= 0:
                weights[c] = np.eye(num_clients)[rng.integers(num_clients)]
        counts = _class_counts(weights, class_sizes)
        shortfall = int(np.maximum(min_size - counts.sum(axis=1), 0).sum())
        if best is None or shortfall < best[0]:
            best = (shortfall, counts, weights)
        if shortfall == 0:
            break
    assert best is not None
    shortfall, counts, weights = best
    if shortfall:
        counts = _top_up(counts, weights, min_size)
    return _shuffled(_deal(y, classes, counts, rng), rng)


def _deal(
    y: np.ndarray, classes: np.ndarray, counts: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Client ``k`` gets ``counts[k, c]`` positions of class ``classes[c]``: each class's positions
    are shuffled once and cut in client order; a client's pieces follow each other in class order.
    Done with one stable sort by client instead of a Python loop over (class, client) pairs."""
    num_clients = counts.shape[0]
    perms = [rng.permutation(np.flatnonzero(y == label)) for label in classes]
    owner = np.concatenate([np.repeat(np.arange(num_clients), counts[:, c]) for c in range(len(classes))])
    dealt = np.concatenate(perms)[np.argsort(owner, kind="stable")]
    return list(np.split(dealt, np.cumsum(counts.sum(axis=1))[:-1]))


def _check_alpha(alpha: float) -> None:
    if not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a positive finite number (Dirichlet concentration), got {alpha}")


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = DEFAULT_MIN_SIZE,
    *,
    max_tries: int = DEFAULT_MAX_TRIES,
) -> list[np.ndarray]:
    """Label skew: each class is spread over the clients with proportions ``p_c ~ Dir(alpha * 1)``.

    Small ``alpha`` (0.1) gives clients dominated by one or two classes; large ``alpha`` (100)
    approaches iid. A draw that leaves a client below ``min_size`` is redrawn, up to ``max_tries``
    draws in all; if every draw falls short (many clients, small alpha: 1000 clients at alpha=0.1
    on Fashion-MNIST almost always do), the draw with the smallest shortfall is topped up: each short
    client takes examples of its own most-favoured class from the client with the most of it to
    spare. At most ``K * min_size`` examples move; the skew is kept.
    """
    y = _as_labels(labels)
    _check_alpha(alpha)
    _check_sizes(len(y), num_clients, min_size)
    conc = np.full(num_clients, float(alpha))
    return _label_weighted(y, num_clients, rng, lambda: rng.dirichlet(conc), min_size, max_tries)


def _lognormal_weights(num_clients: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    if not sigma >= 0 or not math.isfinite(sigma):
        raise ValueError(
            f"sigma must be a finite number >= 0 (log-normal spread of client sizes), got {sigma}"
        )
    return rng.lognormal(mean=0.0, sigma=sigma, size=num_clients)


def quantity_skew(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    sigma: float = 1.0,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
) -> list[np.ndarray]:
    """Quantity skew: client sizes proportional to ``LogNormal(0, sigma)`` draws, labels iid.

    Each client first gets ``min_size`` examples; the rest are apportioned by the log-normal weights.
    ``sigma=0`` gives equal sizes.
    """
    y = _as_labels(labels)
    _check_sizes(len(y), num_clients, min_size)
    w = _lognormal_weights(num_clients, sigma, rng)
    sizes = min_size + apportion(len(y) - num_clients * min_size, w)
    order = rng.permutation(len(y)).astype(np.int64)
    return list(np.split(order, np.cumsum(sizes)[:-1]))


def dirichlet_quantity(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    sigma: float = 1.0,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    max_tries: int = DEFAULT_MAX_TRIES,
) -> list[np.ndarray]:
    """ "Real-world" heterogeneity: label skew AND quantity skew.

    Client ``k`` has a size weight ``s_k ~ LogNormal(0, sigma)`` (drawn once); each class ``c`` is
    spread over the clients in proportion to ``s_k * p_ck`` with ``p_c ~ Dir(alpha * 1)``. With
    ``sigma=0`` this is :func:`dirichlet`; with a huge ``alpha`` it is :func:`quantity_skew`. Clients
    below ``min_size`` are handled like in :func:`dirichlet` (redraws, then a top-up).
    """
    y = _as_labels(labels)
    _check_alpha(alpha)
    _check_sizes(len(y), num_clients, min_size)
    s = _lognormal_weights(num_clients, sigma, rng)
    conc = np.full(num_clients, float(alpha))
    return _label_weighted(y, num_clients, rng, lambda: s * rng.dirichlet(conc), min_size, max_tries)


def pathological(
    labels: np.ndarray,
    num_clients: int,
    classes_per_client: int,
    rng: np.random.Generator,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
) -> list[np.ndarray]:
    """McMahan et al. (2017) shards: each client gets ``classes_per_client`` single-class shards.

    The data is sorted by label and cut into ``num_clients * classes_per_client`` shards. Unlike
    equal-size cutting, shards never straddle two classes: each class gets a number of shards
    proportional to its size (largest remainder), so a client sees at most ``classes_per_client``
    distinct labels (fewer when two of its shards share a class). Shards are dealt at random.
    """
    y = _as_labels(labels)
    n = len(y)
    _check_sizes(n, num_clients, min_size)
    classes, counts = np.unique(y, return_counts=True)
    if not 1 <= classes_per_client <= len(classes):
        raise ValueError(
            f"classes_per_client must be between 1 and the number of classes present ({len(classes)}), "
            f"got {classes_per_client}"
        )
    num_shards = num_clients * classes_per_client
    shards_per_class = apportion(num_shards, counts)
    if np.any(shards_per_class > counts):
        c = int(classes[np.argmax(shards_per_class - counts)])
        raise ValueError(
            f"pathological: {num_shards} shards need more shards of class {c} than it has examples; "
            "use fewer clients or fewer classes_per_client"
        )
    shards: list[np.ndarray] = []
    for c, m in zip(classes, shards_per_class, strict=True):
        if m > 0:
            shards.extend(np.array_split(rng.permutation(np.flatnonzero(y == c)), m))
    deal = rng.permutation(num_shards).reshape(num_clients, classes_per_client)
    parts = [np.concatenate([shards[s] for s in row]) for row in deal]
    smallest = min(len(p) for p in parts)
    if smallest < min_size:
        raise ValueError(
            f"pathological: a client got only {smallest} examples (< min_size={min_size}) from "
            f"{num_shards} shards over {n} examples; use fewer clients or fewer classes_per_client"
        )
    return _shuffled(parts, rng)


def contiguous(
    n: int, num_clients: int, rng: np.random.Generator, *, min_size: int = DEFAULT_MIN_SIZE
) -> list[np.ndarray]:
    """The genetic-CFL notebook's scheme, made disjoint: random slices of one shuffled order.

    The positions ``0..n-1`` are shuffled once; ``num_clients - 1`` random cut points (uniform over
    all ways to cut with every slice at least ``min_size`` long) split that order into contiguous
    slices, one per client. Sizes vary widely; labels are iid.
    """
    _check_sizes(n, num_clients, min_size)
    order = rng.permutation(n).astype(np.int64)
    free = n - num_clients * min_size
    # stars and bars: choosing num_clients - 1 bar positions among free + num_clients - 1 slots
    bars = np.sort(rng.choice(free + num_clients - 1, size=num_clients - 1, replace=False))
    extra = np.diff(np.concatenate([[-1], bars, [free + num_clients - 1]])) - 1
    sizes = min_size + extra
    return list(np.split(order, np.cumsum(sizes)[:-1]))


def sampled(n: int, num_clients: int, examples_per_client: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Every client draws ``examples_per_client`` distinct positions of ``0..n-1`` uniformly, independently
    of the other clients: clients overlap (the one scheme that breaks disjointness), labels are iid,
    and any number of clients fits. For runtime and memory measurements at N beyond the dataset
    (``raysim bench scale`` at 100,000 clients of Fashion-MNIST), not for accuracy claims.
    ``sampled_draws`` is the same draw as one ``(num_clients, examples_per_client)`` array."""
    return list(sampled_draws(n, num_clients, examples_per_client, rng).astype(np.int64, copy=False))


SAMPLED_CHUNK = 1 << 16  # rows checked for repeats at a time (a sorted copy of all 10^6 rows: 400 MB)


def sampled_draws(n: int, num_clients: int, examples_per_client: int, rng: np.random.Generator) -> np.ndarray:
    """:func:`sampled`'s draws as one array, row ``k`` client ``k``'s positions: int32 below 2^31
    positions (half the memory: 200 MB instead of 400 at 10^6 clients of 50), int64 above. The
    same numbers either way: ``Generator.integers`` draws a range below 2^32 from the same 32-bit
    stream for both dtypes (``tests/data/test_partition.py`` compares them with the int64 draw)."""
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not 1 <= examples_per_client <= n:
        raise ValueError(
            f"examples_per_client must be between 1 and the {n} examples, got {examples_per_client}"
        )
    dtype = np.int32 if n <= np.iinfo(np.int32).max else np.int64
    draws = rng.integers(0, n, size=(num_clients, examples_per_client), dtype=dtype)
    for lo in range(0, num_clients, SAMPLED_CHUNK):  # a repeat within a client: draw it again, in row order
        s = np.sort(draws[lo : lo + SAMPLED_CHUNK], axis=1)
        for i in lo + np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1)):
            draws[i] = rng.choice(n, size=examples_per_client, replace=False)
    return draws


def assign_groups(num_clients: int, num_groups: int, rng: np.random.Generator) -> np.ndarray:
    """Balanced random group ids ``0..num_groups-1`` for ``num_clients`` clients (sizes differ by <= 1)."""
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not 1 <= num_groups <= num_clients:
        raise ValueError(f"num_groups must be between 1 and num_clients ({num_clients}), got {num_groups}")
    return rng.permutation(np.arange(num_clients, dtype=np.int64) % num_groups)


def label_permutations(num_groups: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``(num_groups, num_classes)`` int64 label maps; row 0 is the identity, all rows distinct.

    Row ``g`` maps an original label to group ``g``'s label: ``client_label = perms[g][label]``.
    """
    if num_groups < 1 or num_classes < 1:
        raise ValueError(f"num_groups and num_classes must be >= 1, got {num_groups} and {num_classes}")
    if num_groups > math.factorial(num_classes):
        raise ValueError(
            f"only {math.factorial(num_classes)} distinct permutations of {num_classes} labels exist; "
            f"num_groups={num_groups} is too many"
        )
    rows = [np.arange(num_classes, dtype=np.int64)]
    seen = {tuple(rows[0])}
    while len(rows) < num_groups:
        p = rng.permutation(num_classes).astype(np.int64)
        if tuple(p) not in seen:
            seen.add(tuple(p))
            rows.append(p)
    return np.stack(rows)
