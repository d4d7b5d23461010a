"""Pure clustering used by the clustered-FL algorithms (numpy / scipy / scikit-learn; no Ray, no torch).

Equation numbers refer to the DSAC paper, "Dynamic Sub-Model Aggregation and Clustering for
Intelligence Data via Hierarchical Federated Learning with Pre-Training"
(paper 000, docs/papers.md): K-means on client updates (eq. 4, 6), cosine client
similarity (eq. 11), a hierarchical dendrogram plus spherical K-means / central-client grouping
(eq. 12).

Conventions shared by every function here
-----------------------------------------
* Points are the rows of a 2-D array ``X`` (n_points, n_features); NaN or inf is rejected with a
  ``ValueError`` (a diverged client must be filtered by the caller, not silently averaged).
* Randomness comes only from the ``rng: np.random.Generator`` argument.
* Labels are *canonical*: cluster 0 is the cluster of point 0, cluster 1 the cluster of the first
  point not in cluster 0, and so on; empty clusters get the highest indices. Two runs that find the
  same partition therefore return identical labels.
* An empty cluster is a normal outcome, never a crash or a NaN: it is reported with size 0. It
  happens exactly when ``k`` exceeds the number of distinct points (distinct directions for the
  cosine methods), because Lloyd iterations re-seed a cluster that empties out (see ``kmeans``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "KMeansResult",
    "cluster_sizes_and_variances",
    "cosine_kmedoids",
    "cosine_similarity_matrix",
    "dbscan",
    "group_medoids",
    "hierarchical_num_groups",
    "intra_cluster_distance",
    "kmeans",
    "silhouette",
    "spherical_kmeans",
]

# Directions equal to this many decimals (after normalising rows) count as the same direction.
_DIRECTION_DECIMALS = 12
# Norms at or below this are "zero rows" (no direction) for the cosine methods.
_ZERO_NORM = 1e-300


@dataclass(frozen=True, kw_only=True)
class KMeansResult:
    """Explicit clustering state: one label per point, one centroid per cluster, the objective.

    ``labels``: (n,) int64 in [0, k). ``centroids``: (k, d) float64; an empty cluster's centroid is a
    copy of centroid 0 (finite, never NaN, and never closer to any point than centroid 0, so
    re-assigning with argmin and lowest-index tie-break reproduces ``labels``). ``inertia``: the
    objective at the returned state (sum of squared distances for ``kmeans``, sum of cosine
    distances 1 - cos for ``spherical_kmeans``).
    """

    labels: np.ndarray
    centroids: np.ndarray
    inertia: float

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def sizes(self) -> np.ndarray:
        """Members per cluster, (k,) int64; 0 marks an empty cluster."""
        return np.bincount(self.labels, minlength=self.k).astype(np.int64)


# --------------------------------------------------------------------------------------------- helpers


def _as_points(X: np.ndarray) -> np.ndarray:
    A = np.asarray(X, dtype=np.float64)
    if A.ndim != 2:
        raise ValueError(f"X must be 2-D (n_points, n_features), got shape {A.shape}")
    if not np.all(np.isfinite(A)):
        raise ValueError("X contains NaN or inf; drop or repair those rows before clustering")
    return A


def _check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _normalise_rows(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm rows and a mask of the rows that have a direction (zero rows stay zero)."""
    norms = np.linalg.norm(A, axis=1)
    nonzero = norms > _ZERO_NORM
    out = np.zeros_like(A)
    out[nonzero] = A[nonzero] / norms[nonzero, None]
    return out, nonzero


def _count_distinct(rows: np.ndarray, decimals: int | None = None) -> int:
    if rows.shape[0] == 0:
        return 0
    r = rows if decimals is None else np.round(rows, decimals) + 0.0  # + 0.0 folds -0.0 into 0.0
    # hashing each row's bytes is exact (like np.unique(axis=0)) and far faster for long rows
    r = np.ascontiguousarray(r, dtype=np.float64) + 0.0
    return len({row.tobytes() for row in r})


def _canonical_order(labels: np.ndarray, k: int) -> np.ndarray:
    """Permutation ``order`` so that new label j is old label order[j] (first appearance, empties last)."""
    _, first = np.unique(labels, return_index=True)
    seen = labels[np.sort(first)]
    rest = np.setdiff1d(np.arange(k), seen, assume_unique=True)
    return np.concatenate([seen, rest]).astype(np.int64)


def _relabel(labels: np.ndarray, order: np.ndarray) -> np.ndarray:
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return inverse[labels]


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    return (labels[None, :] == np.arange(k)[:, None]).astype(np.float64)


def _plusplus_init(
    dist: Callable[[np.ndarray], np.ndarray], points: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """k-means++ seeding: indices of k points, the first uniform, each next drawn with probability
    ∝ distance to the nearest seed so far (``dist`` gives squared Euclidean, or 1 - cos, to one point)."""
    seeds = [int(rng.integers(points.shape[0]))]
    nearest = dist(points[seeds[0]])
    for _ in range(1, k):
        total = nearest.sum()
        if total <= 0.0:  # cannot happen while k <= distinct points; guard anyway
            break
        i = int(rng.choice(points.shape[0], p=nearest / total))
        seeds.append(i)
        nearest = np.minimum(nearest, dist(points[i]))
    return np.asarray(seeds, dtype=np.int64)


def _fill_empty(labels: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Re-seed each empty cluster with the point farthest from its own centroid, taken from a
    cluster of at least 2 members (so no cluster empties in turn). ``own[i]`` is point i's distance
    to its current centroid."""
    labels = labels.copy()
    own = own.copy()
    counts = np.bincount(labels, minlength=k)
    for c in np.flatnonzero(counts == 0):
        donors = counts[labels] >= 2
        if not donors.any():
            break
        i = int(np.argmax(np.where(donors, own, -np.inf)))
        counts[labels[i]] -= 1
        labels[i] = c
        counts[c] = 1
        own[i] = 0.0
    return labels


def _lloyd(
    points: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    n_init: int,
    max_iter: int,
    dist_to: Callable[[np.ndarray, np.ndarray], np.ndarray],
    update: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, float]:
    """Best of ``n_init`` Lloyd runs with k-means++ seeding; ``k`` <= number of distinct points."""
    n = points.shape[0]
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(max(1, n_init)):
        seeds = _plusplus_init(lambda c: dist_to(points, c[None, :])[:, 0], points, k, rng)
        centroids = points[seeds].copy()
        if seeds.size < k:  # unreachable given the caller's k; keep shapes right regardless
            centroids = np.vstack([centroids, np.repeat(centroids[:1], k - seeds.size, axis=0)])
        previous: np.ndarray | None = None
        for _ in range(max(1, max_iter)):
            D = dist_to(points, centroids)
            labels = np.argmin(D, axis=1)
            labels = _fill_empty(labels, D[np.arange(n), labels], k)
            centroids = update(points, labels, centroids)
            if previous is not None and np.array_equal(labels, previous):
                break
            previous = labels
        cost = float(dist_to(points, centroids)[np.arange(n), labels].sum())
        if best is None or cost < best[2]:
            best = (labels, centroids, cost)
    assert best is not None
    return best


def _finish(labels: np.ndarray, centroids: np.ndarray, cost: float, k: int) -> KMeansResult:
    """Canonical labels, then pad to ``k`` clusters with empty ones (centroid = copy of centroid 0)."""
    k_used = centroids.shape[0]
    order = _canonical_order(labels, k_used)
    labels = _relabel(labels, order).astype(np.int64)
    centroids = centroids[order]
    if k > k_used:
        centroids = np.vstack([centroids, np.repeat(centroids[:1], k - k_used, axis=0)])
    return KMeansResult(labels=labels, centroids=centroids, inertia=max(cost, 0.0))


# ------------------------------------------------------------------------------------------- k-means


def kmeans(
    X: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 3, max_iter: int = 50
) -> KMeansResult:
    """K-means on the rows of ``X``: the clustering of local updates in DSAC eq. (4), whose centres
    Δm_k^c = (1/|S_c|) Σ_{i∈S_c} Δm_k^i are the cluster means returned as ``centroids``.

    k-means++ seeding, Lloyd iterations until the labels stop changing (at most ``max_iter``), best
    inertia (sum of squared Euclidean distances) of ``n_init`` seedings; ties keep the first.

    Empty-cluster rule: with m distinct rows, min(k, m) clusters are fitted. If a Lloyd step empties
    one of them, it is re-seeded with the point farthest from its centroid among clusters of >= 2
    members (one always exists while k <= m), so the fitted clusters are never empty. When k > m the
    remaining k - m clusters are returned empty: size 0, centroid a copy of centroid 0. Zero points
    give empty labels, zero centroids and inertia 0.
    """
    k = _check_k(k)
    A = _as_points(X)
    n, d = A.shape
    if n == 0:
        return KMeansResult(labels=np.zeros(0, np.int64), centroids=np.zeros((k, d)), inertia=0.0)
    shift = A.mean(axis=0)  # distances are translation-invariant; centring limits round-off
    P = A - shift
    k_used = min(k, _count_distinct(P))

    def sqdist(points: np.ndarray, C: np.ndarray) -> np.ndarray:
        out = np.empty((points.shape[0], C.shape[0]))
        for j in range(C.shape[0]):
            diff = points - C[j]
            out[:, j] = np.einsum("ij,ij->i", diff, diff)
        return out

    def mean_update(points: np.ndarray, labels: np.ndarray, prev: np.ndarray) -> np.ndarray:
        onehot = _one_hot(labels, prev.shape[0])
        counts = onehot.sum(axis=1)
        sums = onehot @ points
        out = prev.copy()
        filled = counts > 0
        out[filled] = sums[filled] / counts[filled, None]
        return out

    labels, centroids, cost = _lloyd(
        P,
        k_used,
        rng,
        n_init=n_init,
        max_iter=max_iter,
        dist_to=sqdist,
        update=mean_update,
    )
    res = _finish(labels, centroids, cost, k)
    return KMeansResult(labels=res.labels, centroids=res.centroids + shift, inertia=res.inertia)


def spherical_kmeans(
    X: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 3, max_iter: int = 50
) -> KMeansResult:
    """Spherical K-means, DSAC's final client-grouping driver (eq. 12 objective Σ_u (1 - S_uh), with
    S the cosine similarity of eq. 11): rows are normalised to unit length, each is assigned to the
    centroid of highest cosine similarity, and each centroid is the renormalised sum of its members.

    ``inertia`` is Σ_i (1 - cos(x_i, centroid)). k-means++ seeding on cosine distance; the
    empty-cluster rule of ``kmeans`` applies with "distinct" meaning distinct direction (rows equal to
    12 decimals after normalising). Zero rows have no direction: they never seed or re-seed a cluster,
    do not move centroids, and land in cluster 0's group by the lowest-index tie-break (their cosine
    to every centroid is 0). A cluster whose member sum is the zero vector keeps its previous centroid.
    Returned centroids are unit vectors (all-zero input: one zero centroid, every label 0).
    """
    k = _check_k(k)
    A = _as_points(X)
    n, d = A.shape
    if n == 0:
        return KMeansResult(labels=np.zeros(0, np.int64), centroids=np.zeros((k, d)), inertia=0.0)
    P, nonzero = _normalise_rows(A)
    Q = P[nonzero]
    m = _count_distinct(Q, _DIRECTION_DECIMALS)
    if m == 0:
        return KMeansResult(labels=np.zeros(n, np.int64), centroids=np.zeros((k, d)), inertia=float(n))

    def cosdist(points: np.ndarray, C: np.ndarray) -> np.ndarray:
        return np.clip(1.0 - points @ C.T, 0.0, 2.0)

    def direction_update(points: np.ndarray, labels: np.ndarray, prev: np.ndarray) -> np.ndarray:
        sums = _one_hot(labels, prev.shape[0]) @ points
        norms = np.linalg.norm(sums, axis=1)
        out = prev.copy()
        ok = norms > _ZERO_NORM
        out[ok] = sums[ok] / norms[ok, None]
        return out

    # Only rows with a direction are clustered; zero rows join cluster 0 afterwards (cosine 0 to
    # every centroid, so they cost 1 each wherever they go and move no centroid).
    labels_nz, centroids, cost = _lloyd(
        Q, min(k, m), rng, n_init=n_init, max_iter=max_iter, dist_to=cosdist, update=direction_update
    )
    res = _finish(labels_nz, centroids, cost, k)
    labels = np.zeros(n, np.int64)
    labels[nonzero] = res.labels
    return KMeansResult(labels=labels, centroids=res.centroids, inertia=res.inertia + float(n - Q.shape[0]))


# ------------------------------------------------------------------------------------ cosine methods


def cosine_similarity_matrix(X: np.ndarray) -> np.ndarray:
    """DSAC eq. (11): S_uv = D_u·D_v / (‖D_u‖ ‖D_v‖) for every pair of rows, (n, n) float64.

    Values are clipped to [-1, 1] and the matrix is exactly symmetric. A zero row has no direction:
    its similarity to every row, itself included, is 0 (never NaN). Non-zero rows have S_uu = 1.
    """
    A = _as_points(X)
    P, nonzero = _normalise_rows(A)
    S = np.clip(P @ P.T, -1.0, 1.0)
    S = 0.5 * (S + S.T)
    np.fill_diagonal(S, np.where(nonzero, 1.0, 0.0))
    return S


def cosine_kmedoids(
    X: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 3, max_iter: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Group rows around central clients, DSAC eq. (12): C_o = argmin_h Σ_{u∈group} (1 - S_uh), i.e. the
    medoid is the member whose summed cosine similarity (eq. 11) to the *other* members is largest
    (ties: lowest index). Points join the medoid of highest similarity (ties: lowest cluster).

    Returns ``(labels, medoid_indices)``: labels (n,) int64 in canonical order; medoid_indices (k,)
    int64 row indices, -1 for an empty group. Seeds: k-means++ on cosine distance; alternate assign /
    medoid update until the medoids stop changing; best total cost Σ_u (1 - S_u,medoid) of ``n_init``.
    With m distinct directions, min(k, m) groups are non-empty (each holds its medoid) and the rest
    are empty. Zero rows are never medoids and fall in group 0 (their similarity is 0 to every medoid);
    all-zero input gives every label 0 and medoid 0.
    """
    k = _check_k(k)
    A = _as_points(X)
    n = A.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.full(k, -1, np.int64)
    P, nonzero = _normalise_rows(A)
    m = _count_distinct(P[nonzero], _DIRECTION_DECIMALS)
    if m == 0:
        medoids = np.full(k, -1, np.int64)
        medoids[0] = 0
        return np.zeros(n, np.int64), medoids
    # Medoids are searched among rows with a direction only; zero rows join group 0 afterwards.
    idx = np.flatnonzero(nonzero)
    Q = P[idx]
    S = np.clip(Q @ Q.T, -1.0, 1.0)
    S = 0.5 * (S + S.T)
    np.fill_diagonal(S, 1.0)
    D = 1.0 - S
    k_used = min(k, m)
    rows = np.arange(Q.shape[0])

    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(max(1, n_init)):
        medoids = _plusplus_init(lambda p: np.clip(1.0 - Q @ p, 0.0, 2.0), Q, k_used, rng)
        labels = np.zeros(Q.shape[0], np.int64)
        for _ in range(max(1, max_iter)):
            labels = np.argmin(D[:, medoids], axis=1)
            labels[medoids] = np.arange(medoids.size)
            new = medoids.copy()
            for c in range(medoids.size):
                members = np.flatnonzero(labels == c)
                sub = S[np.ix_(members, members)]
                score = sub.sum(axis=1) - np.diag(sub)  # eq. (12): Σ_{u≠h} S_uh, maximised
                new[c] = members[int(np.argmax(score))]
            if np.array_equal(new, medoids):
                break
            medoids = new
        labels = np.argmin(D[:, medoids], axis=1)
        labels[medoids] = np.arange(medoids.size)
        cost = float(D[rows, medoids[labels]].sum())
        if best is None or cost < best[2]:
            best = (labels, medoids, cost)
    assert best is not None
    labels_nz, medoids, _ = best
    order = _canonical_order(labels_nz, medoids.size)
    out = np.full(k, -1, np.int64)
    out[: medoids.size] = idx[medoids[order]]
    labels = np.zeros(n, np.int64)
    labels[idx] = _relabel(labels_nz, order)
    return labels, out


def group_medoids(X: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """The central client of each given group, DSAC eq. (12): C_o = argmin_h Σ_{u∈o} (1 - S_uh), i.e.
    the member with the largest summed cosine similarity (eq. 11) to the other members (ties: lowest
    index). Returns (k,) int64 row indices; -1 for an empty group; a one-member group is its own
    medoid. Used after ``spherical_kmeans`` to name each group's centre client."""
    k = _check_k(k)
    A = _as_points(X)
    lab = _check_labels(labels, A.shape[0], k)
    S = cosine_similarity_matrix(A)
    out = np.full(k, -1, np.int64)
    for c in range(k):
        members = np.flatnonzero(lab == c)
        if members.size == 0:
            continue
        sub = S[np.ix_(members, members)]
        score = sub.sum(axis=1) - np.diag(sub)
        out[c] = members[int(np.argmax(score))]
    return out


def hierarchical_num_groups(
    X: np.ndarray, max_groups: int, threshold: float | None = None
) -> tuple[int, np.ndarray]:
    """Suggest the number of client groups from an average-linkage dendrogram on cosine distance
    1 - S_uv (S of DSAC eq. 11), the "initial phase" of the eq. (12) grouping.

    Returns ``(suggested_k, linkage_matrix)``; the linkage matrix is scipy's (n-1, 4) format
    ((0, 4) for fewer than 2 points). Rule for ``suggested_k``:

    * ``threshold`` given: the number of groups left when the dendrogram is cut at that distance.
    * otherwise the largest gap in merge heights: with heights h_1 <= ... <= h_{n-1} and h_0 = 0,
      cutting into k groups leaves the gap h_{n-k+1} - h_{n-k}; the k in [2, min(max_groups, n)] with
      the largest gap wins (ties: the smaller k). The gap rule cannot express "one group" except when
      every merge height is <= 1e-9 (all rows point the same way), which gives 1; pass a
      ``threshold`` when a single group must be possible.

    The result is clamped to [1, max_groups]; 0 or 1 point gives 1; 2 points give 2 unless they share
    a direction.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    if int(max_groups) != max_groups or max_groups < 1:
        raise ValueError(f"max_groups must be a positive integer, got {max_groups!r}")
    max_groups = int(max_groups)
    A = _as_points(X)
    n = A.shape[0]
    if n < 2:
        return 1, np.zeros((0, 4))
    D = np.clip(1.0 - cosine_similarity_matrix(A), 0.0, 2.0)
    np.fill_diagonal(D, 0.0)
    Z = linkage(squareform(D, checks=False), method="average")
    if threshold is not None:
        k = int(fcluster(Z, t=float(threshold), criterion="distance").max())
    elif Z[-1, 2] <= 1e-9:
        k = 1
    else:
        H = np.concatenate([[0.0], Z[:, 2]])  # H[j] = height of the j-th merge
        ks = np.arange(2, min(max_groups, n) + 1)
        if ks.size == 0:
            k = 1
        else:
            gaps = H[n - ks + 1] - H[n - ks]
            k = int(ks[int(np.argmax(gaps))])
    return int(min(max(k, 1), max_groups)), Z


# ------------------------------------------------------------------------------- cluster statistics


def _check_labels(labels: np.ndarray, n: int, k: int) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {lab.shape}")
    lab = lab.astype(np.int64)
    if n and (lab.min() < 0 or lab.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}), got range [{lab.min()}, {lab.max()}]")
    return lab


def cluster_sizes_and_variances(
    X: np.ndarray, labels: np.ndarray, k: int, *, per_coordinate: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """|S_c| and Var(S_c) of DSAC eq. (6) for clusters 0..k-1.

    Var(S_c) = (1/|S_c|) Σ_{i∈S_c} ‖x_i - μ_c‖², the mean squared Euclidean distance of the members to
    their (unweighted) centroid μ_c of eq. (4); with ``per_coordinate=True`` it is further divided by
    the number of features (the mean per-coordinate variance, independent of model size). A singleton
    has variance 0, an empty cluster size 0 and variance 0. Returns (sizes int64 (k,), variances (k,)).
    """
    k = _check_k(k)
    A = _as_points(X)
    n, d = A.shape
    lab = _check_labels(labels, n, k)
    sizes = np.bincount(lab, minlength=k).astype(np.int64)
    variances = np.zeros(k)
    for c in np.flatnonzero(sizes):
        members = A[lab == c]
        diff = members - members.mean(axis=0)
        variances[c] = float(np.einsum("ij,ij->", diff, diff)) / members.shape[0]
    if per_coordinate and d > 0:
        variances /= d
    return sizes, variances


def silhouette(X: np.ndarray, labels: np.ndarray, metric: str = "euclidean") -> float:
    """Mean silhouette coefficient (the clustering-quality score of DSAC Table 3) via scikit-learn.

    Never NaN: 0.0 when there are fewer than 2 non-empty clusters or every point is its own cluster
    (scikit-learn's convention for singletons). Every label value, -1 included, counts as a cluster;
    drop DBSCAN noise first if it should not.
    """
    from sklearn.metrics import silhouette_score

    A = _as_points(X)
    lab = np.asarray(labels)
    if lab.shape != (A.shape[0],):
        raise ValueError(f"labels must have shape ({A.shape[0]},), got {lab.shape}")
    n_clusters = np.unique(lab).size
    if n_clusters < 2 or n_clusters >= A.shape[0]:
        return 0.0
    value = float(silhouette_score(A, lab, metric=metric))
    return value if np.isfinite(value) else 0.0


def intra_cluster_distance(X: np.ndarray, labels: np.ndarray, cluster: int) -> float:
    """Mean Euclidean distance of the members of ``cluster`` to their centroid (the "intra-cluster
    distance" of DSAC Table 3, taken there for the majority cluster; the eq. (4) centre). 0.0 for an
    empty cluster or a singleton."""
    A = _as_points(X)
    lab = np.asarray(labels)
    if lab.shape != (A.shape[0],):
        raise ValueError(f"labels must have shape ({A.shape[0]},), got {lab.shape}")
    members = A[lab == cluster]
    if members.shape[0] == 0:
        return 0.0
    return float(np.linalg.norm(members - members.mean(axis=0), axis=1).mean())


def dbscan(X: np.ndarray, eps: float, min_samples: int, metric: str = "euclidean") -> np.ndarray:
    """DBSCAN labels (int64, -1 = noise) via scikit-learn; the grouping of the genetic-CFL notebook
    (paper 001, docs/papers.md: eps 0.15, min_samples 2). Not a DSAC equation. No points: empty labels."""
    from sklearn.cluster import DBSCAN

    A = _as_points(X)
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if A.shape[0] == 0:
        return np.zeros(0, np.int64)
    return DBSCAN(eps=float(eps), min_samples=int(min_samples), metric=metric).fit(A).labels_.astype(np.int64)
