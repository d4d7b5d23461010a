"""DSAC's pure math (numpy only; no Ray, no torch).

Paper: J. Wang, L. Ma, X. Pei, R. Shi, Q. Jing, C. Yang, "Dynamic Sub-Model Aggregation and Clustering
for Intelligence Data via Hierarchical Federated Learning with Pre-Training"
(paper 000, docs/papers.md). Implemented here:

* eq. (1) / (7): a fixed, structured decomposition of the flat parameter vector into K sub-models
  (``SubModelPartition.split`` / ``recombine``) and the rotation that hands them to clients
  (``assign_submodels``);
* eq. (3)-(6): K-means clustering of one sub-model's client updates and the size/variance-weighted
  combination of the cluster centres (``cluster_shares``, ``cluster_weights``), followed by the
  temporal decay in Algorithm 1's order (``clustered_merge``); a variance prior for small clusters
  (``shrunk_variances``, our variant); the hierarchical two-level merge, within client groups then
  across them (``two_level_merge``);
* eq. (14): temporal decay of client weights (``temporal_decay``);
* eq. (15): sub-model weights by data size (``submodel_data_weights``);
* the fairness index of Table 2 (``jain_fairness``, a re-export of ``raysim.metrics.jain_index``;
  Jain's index, not an equation of the paper).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from raysim.clustering import cluster_sizes_and_variances, kmeans
from raysim.metrics import jain_index as jain_fairness  # one implementation: raysim.metrics

__all__ = [
    "MergeInfo",
    "SubModelPartition",
    "assign_submodels",
    "cluster_weights",
    "cluster_shares",
    "clustered_merge",
    "jain_fairness",
    "shrunk_variances",
    "submodel_data_weights",
    "temporal_decay",
    "two_level_merge",
]


# ------------------------------------------------------------------------- eq. (5)-(6): cluster weights


def cluster_weights(
    sizes: Sequence[int] | np.ndarray,
    variances: Sequence[float] | np.ndarray,
    beta: float,
    *,
    renormalise: bool = True,
) -> np.ndarray:
    """Cluster weights α_c of DSAC eq. (6), used in the combination of eq. (5):

        α_c = |S_c| / Σ_c' |S_c'| · exp(-β · Var(S_c)).

    The paper does **not** renormalise: eq. (5) adds Σ_c α_c Δm_k^c to the sub-model as is, so any
    cluster variance shrinks the whole step by Σ_c α_c < 1, and with model-sized variances (a sum over
    all coordinates) every exp(-β Var) underflows and the model stops moving. We renormalise by
    default so the α_c sum to 1 and eq. (5) is a weighted *average* of cluster centres whose step size
    stays under the learning rate's control; the exponent then only sets the *relative* trust between
    clusters. The normalised weights are computed in log space (a softmax of log|S_c| - β Var(S_c)),
    so they never underflow to all-zero. ``renormalise=False`` gives the paper's raw α_c.

    Empty clusters (size 0) get weight 0; if every cluster is empty the result is all zeros.
    ``beta`` >= 0 and variances >= 0 are required.
    """
    n = np.asarray(sizes, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    if n.ndim != 1 or n.shape != v.shape:
        raise ValueError(f"sizes and variances must be 1-D of equal length, got {n.shape} and {v.shape}")
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    if np.any(n < 0) or np.any(~np.isfinite(n)):
        raise ValueError(f"cluster sizes must be finite and >= 0, got {n.tolist()}")
    if np.any(v < 0) or np.any(np.isnan(v)):
        raise ValueError(f"cluster variances must be >= 0, got {v.tolist()}")
    alive = n > 0
    out = np.zeros_like(n)
    if not alive.any():
        return out
    if not renormalise:
        out[alive] = n[alive] / n.sum() * np.exp(-beta * v[alive])
        return out
    logits = np.log(n[alive]) - beta * v[alive]
    if np.all(np.isneginf(logits)):  # every live cluster has infinite variance: no preference left
        out[alive] = n[alive] / n.sum()
        return out
    e = np.exp(logits - logits.max())
    out[alive] = e / e.sum()
    return out


# ------------------------------------------------------------------- eq. (3)-(6): one sub-model's merge


def shrunk_variances(
    sizes: Sequence[int] | np.ndarray,
    variances: Sequence[float] | np.ndarray,
    prior_variance: float,
    strength: float,
) -> np.ndarray:
    """Var(S_c) with a variance prior for small clusters (our variant of DSAC eq. 6, not the paper's):

        Var'(S_c) = (|S_c| · Var(S_c) + n0 · V0) / (|S_c| + n0),

    the posterior mean of a cluster's spread after ``strength`` = n0 pseudo-members at the prior
    ``prior_variance`` = V0 (the caller passes the spread of all the updates being merged). Eq. (6)
    as written gives a one-member cluster Var = 0, hence the largest trust per client, so an
    outlier that K-means isolates is *rewarded*; with the prior a singleton's variance is
    n0·V0/(1 + n0) and a large, tight cluster keeps the smallest. n0 = 0 returns ``variances``
    unchanged (eq. 6 as written); empty clusters keep 0 (they get weight 0 anyway).
    """
    n = np.asarray(sizes, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    if n.shape != v.shape:
        raise ValueError(f"sizes and variances must have equal shapes, got {n.shape} and {v.shape}")
    if not math.isfinite(strength) or strength < 0:
        raise ValueError(f"the prior strength must be a finite number >= 0, got {strength}")
    if not math.isfinite(prior_variance) or prior_variance < 0:
        raise ValueError(f"the prior variance must be a finite number >= 0, got {prior_variance}")
    if strength == 0:
        return v.copy()
    out = (n * v + strength * prior_variance) / (n + strength)
    return np.where(n > 0, out, 0.0)


@dataclass(frozen=True, kw_only=True)
class MergeInfo:
    """What ``clustered_merge`` decided, for logging: the explicit clustering state of one sub-model.

    ``labels``: (n,) cluster of each client (row order of the updates). ``sizes`` |S_c|,
    ``variances`` Var(S_c) (after the prior, when one is used) and ``alphas`` α_c: (k,) each, for the
    k clusters actually used. ``coef``: (n,) each client's final coefficient in the merged update
    (sums to 1).
    """

    k: int
    labels: np.ndarray
    sizes: np.ndarray
    variances: np.ndarray
    alphas: np.ndarray
    coef: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # the updates in an isometric (n, <= n) coordinate system (``span_coordinates``): every distance,
    # variance and clustering score of the updates can be computed on it
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    @classmethod
    def empty(cls) -> MergeInfo:
        z = np.zeros(0)
        return cls(k=0, labels=np.zeros(0, np.int64), sizes=np.zeros(0, np.int64), variances=z, alphas=z)


def span_coordinates(X: np.ndarray) -> np.ndarray:
    """The rows of X (n, d) in orthonormal coordinates of their own affine span: an (n, r) array,
    r <= min(n, d), with exactly the same pairwise distances (up to round-off). K-means centres and
    cluster variances live in that span, so clustering n updates of d >> n values on these
    coordinates gives the same result at a fraction of the cost (one n x n Gram matrix).
    Returns the centred X itself when d <= n."""
    A = np.asarray(X, dtype=np.float64)
    C = A - A.mean(axis=0)
    if A.shape[1] <= A.shape[0]:
        return C
    # Gram matrix G = C C^T = V Λ V^T (n x n, one matrix product), so C = (V Λ^½) Q^T with Q
    # orthonormal: the rows of V Λ^½ have C's inner products, hence its distances
    lam, V = np.linalg.eigh(C @ C.T)
    return np.ascontiguousarray(V * np.sqrt(np.maximum(lam, 0.0)))


def cluster_shares(
    updates: np.ndarray,
    k: int,
    beta: float,
    rng: np.random.Generator,
    *,
    variance_prior: float = 0.0,
    n_init: int = 3,
    max_iter: int = 50,
    per_coordinate_variance: bool = False,
    renormalise: bool = True,
) -> tuple[np.ndarray, MergeInfo]:
    """DSAC eq. (4)-(6) for ONE sub-model's updates (rows of ``updates``, n >= 1): K-means into
    min(k, n) clusters, the plain eq. (4) centres and the eq. (6) weights α_c; returns each client's
    share s_i = α_{c(i)} / |S_{c(i)}|, so that Σ_i s_i Δ_i = Σ_c α_c Δm^c is eq. (5)'s combination.

    ``variance_prior`` = n0 > 0 replaces Var(S_c) by ``shrunk_variances`` with V0 the mean squared
    distance of all the updates to their mean (the spread of the whole set). Var(S_c) is the
    unweighted mean squared distance to the centre (``per_coordinate_variance`` divides it by the
    sub-model size). One client: share 1.
    """
    X = np.asarray(updates, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"updates must be 2-D with at least one row, got shape {X.shape}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    n, d = X.shape
    if n == 1:
        one = np.ones(1)
        info = MergeInfo(
            k=1,
            labels=np.zeros(1, np.int64),
            sizes=np.ones(1, np.int64),
            variances=np.zeros(1),
            alphas=one,
            points=np.zeros((1, 1)),
        )
        return one.copy(), info
    P = span_coordinates(X)  # same distances, n columns instead of d
    k_used = min(int(k), n)
    labels = kmeans(P, k_used, rng, n_init=n_init, max_iter=max_iter).labels
    sizes, variances = cluster_sizes_and_variances(P, labels, k_used)
    if variance_prior > 0:
        v0 = float(np.einsum("ij,ij->", P, P)) / n  # P is centred: the spread of all updates
        variances = shrunk_variances(sizes, variances, v0, variance_prior)
    if per_coordinate_variance and d > 0:
        variances = variances / d
    alphas = cluster_weights(sizes, variances, beta, renormalise=renormalise)
    safe = np.where(sizes > 0, sizes, 1).astype(np.float64)
    shares = alphas[labels] / safe[labels]
    info = MergeInfo(k=k_used, labels=labels, sizes=sizes, variances=variances, alphas=alphas, points=P)
    return shares, info


def clustered_merge(
    updates: np.ndarray | Sequence[np.ndarray],
    weights_per_client: Sequence[float] | np.ndarray | None,
    k: int,
    beta: float,
    rng: np.random.Generator,
    *,
    variance_prior: float = 0.0,
    n_init: int = 3,
    max_iter: int = 50,
    per_coordinate_variance: bool = False,
    renormalise: bool = True,
) -> tuple[np.ndarray | None, MergeInfo]:
    """The server-side merge of ONE sub-model in Algorithm 1's order; returns the update that eq. (5)
    adds to the current sub-model (the caller applies m_k^new = m_k + merged).

    1. line 17, eq. (4): K-means (``raysim.clustering.kmeans``) of the client updates Δm_k^i;
    2. line 18, eq. (5)-(6): the clusters' plain centres combined with α_c ∝ |S_c|·exp(−β Var(S_c)),
       i.e. client i's share s_i = α_{c(i)} / |S_{c(i)}| (``cluster_shares``);
    3. line 19, eq. (14): the temporal decay (and data size) ``weights_per_client`` w_i(t) applied to
       those shares, c_i ∝ s_i · w_i(t), renormalised to sum 1: merged = Σ_i c_i Δ_i.

    Uniform weights (``None``) give eq. (5) exactly. Because the weights act after the combination,
    they discount a stale client even when K-means puts it in a cluster of its own (applied inside
    each cluster's centre, as before, a singleton's weight cancelled). One client → its update
    unchanged; zero clients → ``None`` (the caller keeps the previous sub-model). Weights must be
    >= 0 with a positive sum; a client of weight 0 contributes nothing. The result has the updates'
    floating dtype (float64 accumulation); ``info.coef`` holds the c_i.
    """
    U = np.asarray(updates)
    if U.size == 0 and (U.ndim < 2 or U.shape[0] == 0):
        return None, MergeInfo.empty()
    if U.ndim != 2:
        raise ValueError(f"updates must be 2-D (n_clients, sub_model_size), got shape {U.shape}")
    n = U.shape[0]
    out_dtype = U.dtype if np.issubdtype(U.dtype, np.floating) else np.dtype(np.float64)
    w = np.ones(n) if weights_per_client is None else np.asarray(weights_per_client, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights_per_client must have shape ({n},), got {w.shape}")
    if np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise ValueError(f"client weights must be finite, >= 0 and sum to > 0, got {w.tolist()}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    X = U.astype(np.float64)
    shares, info = cluster_shares(
        X,
        k,
        beta,
        rng,
        variance_prior=variance_prior,
        n_init=n_init,
        max_iter=max_iter,
        per_coordinate_variance=per_coordinate_variance,
        renormalise=renormalise,
    )
    coef = shares * w
    if coef.sum() <= 0:  # every positive-weight client sits in a zero-α cluster: fall back to w alone
        coef = w.copy()
    coef = coef / coef.sum()
    merged = coef @ X
    return merged.astype(out_dtype), replace(info, coef=coef)


def two_level_merge(
    updates: np.ndarray,
    weights_per_client: Sequence[float] | np.ndarray,
    groups: Sequence[int] | np.ndarray,
    k: int,
    beta: float,
    rng: np.random.Generator,
    **kw: Any,
) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, MergeInfo]]:
    """The hierarchical merge of ONE sub-model (our reading of Algorithm 1, lines 13-20, with eq. 13):
    ``clustered_merge`` inside each client group g (eq. 4-6 and the decay, among clients of similar
    data) gives Δ_g, the group model's update (M_g of eq. 13); the global update is
    Σ_g ω_g Δ_g with ω_g = Σ_{i∈g} w_i(t) / Σ_i w_i(t), the group's share of decayed weight.

    So the variance-based trust of eq. (6) only moves weight between clients of the same group: a
    group whose clients disagree with the others (different data, not noise) keeps its data share,
    which a flat merge over all clients would shrink. Returns (global update, {g: Δ_g}, {g: info}).
    ``groups`` holds one group id per row; any integers (the caller gives ungrouped clients ids of
    their own). ``kw`` goes to ``clustered_merge``.
    """
    U = np.asarray(updates, dtype=np.float64)
    w = np.asarray(weights_per_client, dtype=np.float64)
    g = np.asarray(groups, dtype=np.int64)
    if U.ndim != 2 or U.shape[0] == 0 or w.shape != (U.shape[0],) or g.shape != (U.shape[0],):
        raise ValueError(
            f"need n >= 1 updates with one weight and one group each, got {U.shape}, {w.shape}, {g.shape}"
        )
    if np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise ValueError(f"client weights must be finite, >= 0 and sum to > 0, got {w.tolist()}")
    total = np.zeros(U.shape[1])
    deltas: dict[int, np.ndarray] = {}
    infos: dict[int, MergeInfo] = {}
    for gid in np.unique(g):
        rows = np.flatnonzero(g == gid)
        wg = w[rows]
        if wg.sum() <= 0:
            continue
        merged, info = clustered_merge(U[rows], wg, k, beta, rng, **kw)
        assert merged is not None
        deltas[int(gid)], infos[int(gid)] = merged, info
        total += (wg.sum() / w.sum()) * merged
    return total, deltas, infos


# ------------------------------------------------------------------------ eq. (14), (15): client weights


def temporal_decay(
    base_weights: Sequence[float] | np.ndarray | float,
    rounds_since_last: Sequence[float] | np.ndarray | float,
    gamma: float,
) -> np.ndarray:
    """DSAC eq. (14): w_u(t) = w_u · exp(-γ t), elementwise (numpy broadcasting).

    The paper's "time variable" t is read as Δt = the rounds client u missed since it last delivered
    an update (0 when it also delivered the previous round), following its rationale: "gradually
    reduce the influence of clients that have not provided recent updates". In DSAC's stale-client
    mode (``staleness: last_model``) the same Δt is the number of global model versions between the
    model the update was computed from and the current one, so the decay discounts real staleness;
    in the synchronous mode every update is computed from the current model and the decay is a
    participation-recency weight. ``gamma`` (Table 4 default 0.05) and Δt must be >= 0.
    """
    w = np.asarray(base_weights, dtype=np.float64)
    dt = np.asarray(rounds_since_last, dtype=np.float64)
    if not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma}")
    if np.any(dt < 0) or np.any(np.isnan(dt)):
        raise ValueError("rounds_since_last must be >= 0")
    return w * np.exp(-gamma * dt)


def submodel_data_weights(num_examples_per_submodel: Sequence[float] | np.ndarray) -> np.ndarray:
    """DSAC eq. (15): β_k = Σ_{u∈S_k} |D_u| / Σ_v Σ_{u∈S_v} |D_u|, given each sub-model's summed client
    data size Σ_{u∈S_k} |D_u| (the paper's ‖D_u‖ read as the number of examples).

    Sums to 1. If no sub-model saw any data, every β_k = 1/K (no information: eq. 8's uniform mean).
    """
    n = np.asarray(num_examples_per_submodel, dtype=np.float64)
    if n.ndim != 1 or n.size == 0:
        raise ValueError(f"need a non-empty 1-D array of example counts, got shape {n.shape}")
    if np.any(n < 0) or not np.all(np.isfinite(n)):
        raise ValueError(f"example counts must be finite and >= 0, got {n.tolist()}")
    total = n.sum()
    if total <= 0:
        return np.full(n.size, 1.0 / n.size)
    return n / total


# ---------------------------------------------------------------- eq. (1), (7): structured decomposition


def _balanced_contiguous_split(sizes: Sequence[int], k: int) -> list[int]:
    """Cut points (len k+1, 0..B) splitting ``sizes`` into k non-empty contiguous groups minimising the
    largest group sum (linear-partition DP, O(k·B²)); ties go to the earliest cut."""
    B = len(sizes)
    prefix = np.concatenate([[0], np.cumsum(np.asarray(sizes, dtype=np.int64))])
    inf = np.iinfo(np.int64).max
    # cost[j][i]: best max-sum splitting the first i blocks into j groups; cut[j][i]: start of group j.
    cost = np.full((k + 1, B + 1), inf, dtype=np.int64)
    cut = np.zeros((k + 1, B + 1), dtype=np.int64)
    cost[0][0] = 0
    for j in range(1, k + 1):
        for i in range(j, B - (k - j) + 1):
            for t in range(j - 1, i):
                if cost[j - 1][t] == inf:
                    continue
                c = max(int(cost[j - 1][t]), int(prefix[i] - prefix[t]))
                if c < cost[j][i]:
                    cost[j][i] = c
                    cut[j][i] = t
    bounds = [B]
    i = B
    for j in range(k, 0, -1):
        i = int(cut[j][i])
        bounds.append(i)
    return bounds[::-1]


@dataclass(frozen=True, kw_only=True)
class SubModelPartition:
    """The fixed, structured decomposition matrices W_k of DSAC eq. (1) as K contiguous ranges of the
    flat parameter vector, each a run of whole layer blocks (``ParamLayout.module_blocks()``).

    The paper fixes W_k "according to the layer-wise or block-wise architecture", neither learned nor
    random; here W_k selects parameters [bounds[k], bounds[k+1]) so m_k = M·W_k is a slice (``split``)
    and M = Σ_k m_k W_kᵀ is a scatter (``recombine``, eq. 7).
    """

    size: int
    bounds: tuple[int, ...]  # K+1 offsets: sub-model k is [bounds[k], bounds[k+1])
    block_names: tuple[tuple[str, ...], ...]  # the layer blocks inside each sub-model

    @classmethod
    def from_layout(cls, layout: Any, k: int) -> SubModelPartition:
        """Group the layout's layer blocks into ``k`` contiguous sub-models balanced by parameter count
        (DSAC eq. 1): the split minimises the largest sub-model (exact DP over cut points; ties to the
        earliest cut). ``k`` larger than the number of layer blocks B is clamped to B with a
        ``UserWarning`` (a layer is never cut in two)."""
        if int(k) != k or k < 1:
            raise ValueError(f"number of sub-models must be a positive integer, got {k!r}")
        blocks = list(layout.module_blocks())
        if not blocks:
            raise ValueError("the model has no parameters to decompose")
        pos = 0
        for name, s in blocks:
            if s.start != pos:
                raise ValueError(
                    f"layer block {name!r} starts at {s.start}, expected {pos}: layout not contiguous"
                )
            pos = s.stop
        if pos != layout.size:
            raise ValueError(f"layer blocks cover {pos} values but the layout has {layout.size}")
        k = int(k)
        if k > len(blocks):
            warnings.warn(
                f"asked for {k} sub-models but the model has only {len(blocks)} layer blocks "
                f"({', '.join(n for n, _ in blocks)}); using {len(blocks)} sub-models, since a sub-model "
                "is a group of whole layers (DSAC eq. 1). Lower the number of sub-models or use a deeper model.",
                UserWarning,
                stacklevel=2,
            )
            k = len(blocks)
        cuts = _balanced_contiguous_split([s.stop - s.start for _, s in blocks], k)
        bounds = tuple(blocks[c][1].start if c < len(blocks) else layout.size for c in cuts)
        names = tuple(tuple(n for n, _ in blocks[cuts[j] : cuts[j + 1]]) for j in range(k))
        return cls(size=int(layout.size), bounds=bounds, block_names=names)

    @property
    def k(self) -> int:
        return len(self.bounds) - 1

    @property
    def sizes(self) -> tuple[int, ...]:
        """Parameters per sub-model (d_k of eq. 1)."""
        return tuple(self.bounds[j + 1] - self.bounds[j] for j in range(self.k))

    def slice(self, j: int) -> slice:
        """Sub-model j's range in the flat vector (the non-zero rows of W_j, eq. 1)."""
        return slice(self.bounds[j], self.bounds[j + 1])

    def masks(self) -> list[np.ndarray]:
        """One boolean mask of length ``size`` per sub-model (W_j's support, eq. 1); they tile the vector."""
        out = []
        for j in range(self.k):
            m = np.zeros(self.size, dtype=bool)
            m[self.slice(j)] = True
            out.append(m)
        return out

    def _check_full(self, params: np.ndarray) -> np.ndarray:
        p = np.asarray(params)
        if p.shape != (self.size,):
            raise ValueError(f"parameter vector must have shape ({self.size},), got {p.shape}")
        return p

    def split(self, params: np.ndarray) -> list[np.ndarray]:
        """DSAC eq. (1), m_k = M·W_k: copies of each sub-model's parameters, in order."""
        p = self._check_full(params)
        return [p[self.slice(j)].copy() for j in range(self.k)]

    def recombine(self, parts: Sequence[np.ndarray | None], base: np.ndarray | None = None) -> np.ndarray:
        """DSAC eq. (7), M = Σ_k m_k·W_kᵀ: scatter each sub-model back into a flat vector.

        A ``None`` part keeps ``base``'s values for that sub-model (e.g. no client trained it this
        round); ``base`` is required then. ``recombine(split(p)) == p`` exactly. The result has
        ``base``'s dtype, else the first part's; inputs are never modified.
        """
        if len(parts) != self.k:
            raise ValueError(f"expected {self.k} sub-model parts, got {len(parts)}")
        if base is not None:
            out = self._check_full(base).copy()
        else:
            first = next((q for q in parts if q is not None), None)
            if first is None:
                raise ValueError("every part is None and no base was given")
            out = np.empty(self.size, dtype=np.asarray(first).dtype)
        for j, part in enumerate(parts):
            if part is None:
                if base is None:
                    raise ValueError(f"sub-model {j} is None and no base was given to fill it")
                continue
            q = np.asarray(part)
            if q.shape != (self.sizes[j],):
                raise ValueError(f"sub-model {j} must have shape ({self.sizes[j]},), got {q.shape}")
            out[self.slice(j)] = q
        return out


def assign_submodels(
    client_ids: Sequence[int], k: int, round_idx: int, per_client: int | None = None
) -> dict[int, tuple[int, ...]]:
    """Which sub-models each client of a round's cohort trains (Algorithm 1, line 5: "send relevant
    sub-models to a subset of active clients"; the paper gives no rule, this is ours).

    Rule: sort the cohort, c_0 < ... < c_{n-1}; p = min(K, max(per_client or 1, ceil(K / n)));
    client c_j gets the p consecutive sub-models starting at s_j = (round_idx + floor(j·K / n)) mod K,
    i.e. {(s_j + i) mod K : i < p}, returned sorted. Because consecutive starts differ by at most
    ceil(K/n) <= p and the last one reaches K - ceil(K/n) + p >= K, every sub-model goes to at least
    one client every round whenever n >= 1 (a smaller ``per_client`` is raised to keep that true);
    the starts spread evenly over the K sub-models and rotate by one each round.
    Deterministic; no cohort gives {}.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if per_client is not None and per_client < 1:
        raise ValueError(f"per_client must be >= 1, got {per_client}")
    ids = sorted(int(c) for c in client_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("client_ids contains duplicates")
    n = len(ids)
    if n == 0:
        return {}
    k = int(k)
    p = min(k, max(per_client or 1, -(-k // n)))
    out: dict[int, tuple[int, ...]] = {}
    for j, cid in enumerate(ids):
        start = (round_idx + (j * k) // n) % k
        out[cid] = tuple(sorted((start + i) % k for i in range(p)))
    return out
