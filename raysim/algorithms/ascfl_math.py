"""Pure functions of AS-CFL (numpy / scikit-learn / dp_accounting; no Ray, no torch).

Equation numbers follow paper 002 (docs/papers.md) ("Clustered
Federated Learning with Adaptive Similarity for Non-IID Data"), numbered in order of appearance:
(1) the cluster objective, (2) cosine similarity of updates, (3) the positive-incentive test,
(4) the low-rank factorisation M ~ U Sigma V^T, (5) local epochs T_i = ceil(BS / |D_i|), (6) the
E-step, (7) the M-step, (8) the dispersion-to-separation ratio G_k = d_in / d_out (the paper calls
this one "Equation (8)"), (9) d_in, (10) d_out, (11) intra-cluster aggregation. "Alg. 1" is the
paper's Algorithm 1.

Every function here takes plain arrays and returns plain arrays, so each rule can be checked by
hand on literal inputs (``tests/algorithms/test_ascfl.py``). Randomness only comes in as an
argument (an ``np.random.Generator`` or an integer seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from raysim.clustering import cosine_similarity_matrix, kmeans
from raysim.models.flat import ParamLayout

__all__ = [
    "GreedyResult",
    "IncentiveRule",
    "OutputLayer",
    "adjust_clusters",
    "canonical_labels",
    "carry_over",
    "clip_update",
    "compress_matrix",
    "dispersion_separation",
    "em_refine",
    "epsilon_spent",
    "factor_bytes",
    "gaussian_sigma",
    "local_epochs",
    "lowrank_embedding",
    "merge_models",
    "noise_seed",
    "privatize",
    "representativeness",
    "seed_and_expand",
    "similarity",
    "similarity_block",
    "true_partition_g",
    "truncated_svd",
]

NOISE_SALT = 0xA5CF1  # RNG purpose of the DP noise streams (see ``noise_seed``)
# Renyi orders of the privacy accountant: fractional orders in (1, 2) make dp_accounting's series for
# the sampled Gaussian fail to converge (it logs a warning per order); orders >= 2 cover every
# (noise, rounds, q) this algorithm meets, the optimum for sigma/C ~ 4.8 lying between 3 and 30.
RDP_ORDERS: tuple[float, ...] = tuple(float(x) for x in np.arange(2.0, 10.0, 0.25)) + tuple(
    float(x) for x in range(10, 257)
)


# --------------------------------------------------------------------------------- output layer


@dataclass(frozen=True, kw_only=True)
class OutputLayer:
    """Where the output layer sits in the flat parameter vector.

    ``block``: the last module's parameters (weight and bias), the "weights near the output layer"
    that Stage 1 factorises (Section 3.2.2). ``weight``: the slice of its weight matrix and
    ``shape`` (rows, cols) = (out_features, everything else), or None when the last module has no
    parameter with two or more dimensions (then no per-client factorisation is possible).
    """

    block: slice
    weight: slice | None
    shape: tuple[int, int] | None

    @staticmethod
    def of(layout: ParamLayout) -> OutputLayer:
        _, block = layout.module_blocks()[-1]
        for i in range(len(layout.names)):
            sub = layout.slice(i)
            in_block = block.start <= sub.start and sub.stop <= block.stop
            shape = layout.shapes[i]
            if in_block and len(shape) >= 2:
                rows = int(shape[0])
                cols = int(np.prod(shape[1:], dtype=np.int64))
                return OutputLayer(block=block, weight=sub, shape=(rows, cols))
        return OutputLayer(block=block, weight=None, shape=None)

    def to_array(self) -> np.ndarray:
        """[block start, block stop, weight start, rows, cols] (-1s without a weight matrix): the
        form a client task carries."""
        if self.weight is None or self.shape is None:
            return np.array([self.block.start, self.block.stop, -1, -1, -1], np.int64)
        return np.array([self.block.start, self.block.stop, self.weight.start, *self.shape], np.int64)

    @staticmethod
    def from_array(a: np.ndarray) -> OutputLayer:
        b0, b1, w0, rows, cols = (int(x) for x in np.asarray(a, np.int64))
        if w0 < 0:
            return OutputLayer(block=slice(b0, b1), weight=None, shape=None)
        return OutputLayer(block=slice(b0, b1), weight=slice(w0, w0 + rows * cols), shape=(rows, cols))


# ------------------------------------------------------------------------ Stage 1: similarity


SimilarityLayers = Literal["output", "first", "all"]


def similarity_block(layout: ParamLayout, layers: SimilarityLayers) -> slice:
    """The part of the flat update vector Stage 1 compares (``algorithm.similarity_layers``).

    ``output``: the last module's parameters (weight and bias), the paper's "weights near the
    output layer" (Section 3.2.2; the ``block`` of :class:`OutputLayer`). ``first``: the first
    module's parameters (the layer that sees the input, where a feature skew such as a rotation
    shows first). ``all``: the whole update vector. Independent of the low-rank factorisation, which
    then acts on whichever block this is."""
    blocks = layout.module_blocks()
    if not blocks:
        raise ValueError("the model has no parameters")
    if layers == "output":
        return blocks[-1][1]
    if layers == "first":
        return blocks[0][1]
    if layers == "all":
        return slice(0, int(layout.size))
    raise ValueError(f"similarity_layers must be 'output', 'first' or 'all', got {layers!r}")


def truncated_svd(
    A: np.ndarray, variance_kept: float, random_state: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The smallest-rank truncated SVD A ~ U_r diag(s_r) Vt_r whose singular values keep at least
    ``variance_kept`` of the energy ||A||_F^2 (the "explained-variance ratio" of Section 3.2.2, on
    the uncentred matrix: cosine similarity is about directions from the origin, not from the mean).

    scikit-learn's ``randomized_svd`` computes it: k = 32 components at first, doubled until the k
    components hold the requested energy (or k reaches min(m, n)), then truncated to the smallest r
    that does. An all-zero matrix gives rank 0 (empty factors). Returns (U_r (m, r), s_r (r,),
    Vt_r (r, n)), float64.
    """
    from sklearn.utils.extmath import randomized_svd

    X = np.asarray(A, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {X.shape}")
    if not 0 < variance_kept <= 1:
        raise ValueError(f"variance_kept must be in (0, 1], got {variance_kept}")
    m, n = X.shape
    total = float(np.einsum("ij,ij->", X, X))
    if total == 0.0 or m == 0 or n == 0:
        return np.zeros((m, 0)), np.zeros(0), np.zeros((0, n))
    kmax = min(m, n)
    k = min(kmax, 32)  # one call for a cohort of <= 32 clients
    tol = 1e-9  # variance_kept = 1.0 must accept a full-rank reconstruction despite round-off
    while True:
        U, s, Vt = randomized_svd(X, n_components=k, n_oversamples=10, random_state=random_state)
        cum = np.cumsum(s**2) / total
        if cum[-1] >= variance_kept - tol or k == kmax:
            break
        k = min(2 * k, kmax)
    hit = np.flatnonzero(cum >= variance_kept - tol)
    r = int(hit[0]) + 1 if hit.size else k
    return U[:, :r], s[:r], Vt[:r]


def lowrank_embedding(X: np.ndarray, variance_kept: float, random_state: int = 0) -> np.ndarray:
    """Rows of ``X`` (one client's output-layer update each) in the rank-r basis of eq. (4):
    Z = U_r Sigma_r (m, r). Z Z^T is the rank-r approximation of X X^T, so cosine similarities
    and Euclidean distances of the rows of Z are those of X projected on its top-r right singular
    vectors. r is the smallest rank keeping ``variance_kept`` of the energy (``truncated_svd``)."""
    U, s, _ = truncated_svd(X, variance_kept, random_state)
    return U * s


def similarity(Z: np.ndarray) -> np.ndarray:
    """Eq. (2) on the rows of ``Z``: M_ij = z_i . z_j / (||z_i|| ||z_j||) (zero rows: 0, never NaN)."""
    if Z.shape[1] == 0:
        return np.zeros((Z.shape[0], Z.shape[0]))
    return cosine_similarity_matrix(Z)


def compress_matrix(W: np.ndarray, variance_kept: float, random_state: int = 0) -> tuple[np.ndarray, int]:
    """A client's low-rank upload of its output-layer weight update (Section 3.5: clients "return
    low-rank compressed updates"): the rank-r reconstruction of ``W`` (rows, cols) keeping
    ``variance_kept`` of its energy, and r. Uploading it costs ``factor_bytes(rows, cols, r)``."""
    U, s, Vt = truncated_svd(W, variance_kept, random_state)
    return ((U * s) @ Vt).astype(np.float32), int(s.size)


def factor_bytes(rows: int, cols: int, rank: int, itemsize: int = 4) -> int:
    """Bytes of a rank-``rank`` factorisation of a rows x cols matrix sent as U Sigma (rows, r) and
    V (cols, r), Sigma folded into U."""
    return int(rank) * (int(rows) + int(cols)) * int(itemsize)


def representativeness(M: np.ndarray, sizes: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Section 3.2.2 (i), "data-size weighted centrality": for every client i,
    r_i = sum_{j in pool} |D_j| M_ij / sum_{j in pool} |D_j|, the size-weighted mean similarity to
    the unassigned clients ``pool`` (a boolean mask), i itself included (M_ii = 1), so a client's
    own data counts too. Entries outside the pool are -inf (never a seed)."""
    S = np.asarray(M, dtype=np.float64)
    w = np.where(pool, np.asarray(sizes, dtype=np.float64), 0.0)
    if w.sum() <= 0:
        return np.full(len(w), -np.inf)
    r = S @ w / w.sum()
    return np.where(pool, r, -np.inf)


@dataclass(frozen=True, kw_only=True)
class IncentiveRule:
    """The positive-incentive test of eq. (3) and the pruning paragraph of Section 3.2.1.

    ``absolute``: Accuracy(w_{C u {i}}) > theta, eq. (3) as written (theta = 0.85).
    ``relative``: Accuracy(w_{C u {i}}) - Accuracy(w_C) >= min_gain, the pruning paragraph's "the
    search stops at the first client that fails to improve accuracy by 3%" (min_gain = 0.03,
    read as percentage points).
    """

    mode: Literal["absolute", "relative"]
    theta: float = 0.85
    min_gain: float = 0.03

    @property
    def needs_baseline(self) -> bool:
        return self.mode == "relative"

    def passes(self, acc_with: float, acc_before: float) -> bool:
        if self.mode == "absolute":
            return bool(acc_with > self.theta)
        return bool(acc_with - acc_before >= self.min_gain)


@dataclass(frozen=True, kw_only=True)
class GreedyResult:
    labels: np.ndarray  # (m,) int64, canonical (cluster 0 holds client 0, ...)
    seeds: tuple[int, ...]  # the seed of each cluster in the order they were formed
    evaluations: int  # proxy-set evaluations spent
    rejections: int  # candidates that failed the test (each one ends its seed's search)


def seed_and_expand(
    M: np.ndarray,
    sizes: np.ndarray,
    *,
    candidate_fraction: float,
    accuracy: Callable[[tuple[int, ...]], float] | None,
    rule: IncentiveRule,
) -> GreedyResult:
    """Initial greedy clustering of Section 3.2.2 with the incentive of Section 3.2.1.

    Repeat until every client is assigned: the unassigned client of highest ``representativeness``
    (ties: lowest index) seeds a cluster C; its candidates are the ceil(candidate_fraction * m)
    unassigned clients most similar to the seed (M[seed, j], descending, ties: lowest index; m is
    the number of clients clustered); they are tested in that order and each one that passes
    joins C, and the search stops at the first that fails.

    ``accuracy(members)`` is the proxy-set accuracy of the size-weighted average of the members'
    local models (one weighted average, no retraining); ``None`` switches the incentive off
    (Table 4's "w/o Positive Incentive": every candidate joins on similarity alone).
    """
    S = np.asarray(M, dtype=np.float64)
    m = S.shape[0]
    labels = np.full(m, -1, np.int64)
    n_cand = max(1, math.ceil(candidate_fraction * m - 1e-12))
    seeds: list[int] = []
    evals = rejections = 0
    k = 0
    while (labels < 0).any():
        pool = labels < 0
        scores = representativeness(S, sizes, pool)
        seed = int(np.argmax(scores))  # first maximum: lowest index
        labels[seed] = k
        seeds.append(seed)
        members: tuple[int, ...] = (seed,)
        others = np.flatnonzero(labels < 0)
        order = others[np.argsort(-S[seed, others], kind="stable")][:n_cand]
        before = float("nan")
        if accuracy is not None and rule.needs_baseline and order.size:
            before = accuracy(members)
            evals += 1
        for j in order:
            cand = (*members, int(j))
            if accuracy is not None:
                acc = accuracy(cand)
                evals += 1
                if not rule.passes(acc, before):
                    rejections += 1
                    break
                before = acc
            labels[j] = k
            members = cand
        k += 1
    return GreedyResult(
        labels=canonical_labels(labels), seeds=tuple(seeds), evaluations=evals, rejections=rejections
    )


# ---------------------------------------------------------------- Stage 2: dynamic adjustment


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel to 0..K-1 in order of first appearance (so equal partitions give equal labels)."""
    lab = np.asarray(labels, dtype=np.int64)
    _, first, inverse = np.unique(lab, return_index=True, return_inverse=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.reshape(-1)]


def _centroids(X: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    C = np.zeros((k, X.shape[1]))
    np.add.at(C, labels, X)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return C / np.maximum(counts, 1.0)[:, None]


def em_refine(X: np.ndarray, labels: np.ndarray, max_iter: int) -> np.ndarray:
    """The EM of Section 3.3 from the given clusters, at most ``max_iter`` rounds, stopping once the
    assignments no longer change. M-step, eq. (7): w_k = sum_i z_ik x_i / sum_i z_ik (plain mean of
    the members). E-step, eq. (6): z_i = argmin_k ||x_i - w_k||^2 (ties: lowest k). A cluster the
    E-step leaves empty disappears. Returns canonical labels."""
    A = np.asarray(X, dtype=np.float64)
    lab = canonical_labels(labels)
    for _ in range(int(max_iter)):
        k = int(lab.max()) + 1
        C = _centroids(A, lab, k)
        d2 = (A * A).sum(axis=1)[:, None] - 2.0 * A @ C.T + (C * C).sum(axis=1)[None, :]
        new = canonical_labels(np.argmin(d2, axis=1))
        if np.array_equal(new, lab):
            break
        lab = new
    return lab


def dispersion_separation(X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eq. (8)-(10) for clusters 0..K-1 of canonical ``labels``:

    d_in(k) = (1/|S_k|) sum_{i in S_k} ||x_i - w_k||_2 (eq. 9, w_k the members' mean),
    d_out(k) = min_{j != k} ||w_k - w_j||_2 (eq. 10), G_k = d_in(k) / d_out(k) (eq. 8).

    With a single cluster there is no foreign centroid: d_out = inf and G = 0. Coincident
    centroids (d_out = 0) give G = inf when the cluster is spread, 0 when it is a single point.
    Returns (G (K,), d_in (K,), nearest (K,) int64: the nearest foreign cluster, -1 for K = 1).
    """
    A = np.asarray(X, dtype=np.float64)
    lab = np.asarray(labels, dtype=np.int64)
    k = int(lab.max()) + 1
    C = _centroids(A, lab, k)
    d_in = np.zeros(k)
    np.add.at(d_in, lab, np.linalg.norm(A - C[lab], axis=1))
    d_in /= np.bincount(lab, minlength=k)
    if k == 1:
        return np.zeros(1), d_in, np.full(1, -1, np.int64)
    D = np.linalg.norm(C[:, None, :] - C[None, :, :], axis=2)
    np.fill_diagonal(D, np.inf)
    nearest = np.argmin(D, axis=1).astype(np.int64)
    d_out = D[np.arange(k), nearest]
    with np.errstate(divide="ignore", invalid="ignore"):
        G = np.where(d_out > 0, d_in / np.where(d_out > 0, d_out, 1.0), np.where(d_in > 0, np.inf, 0.0))
    return G, d_in, nearest


def true_partition_g(X: np.ndarray, truth: np.ndarray) -> np.ndarray | None:
    """G_k of eq. (8) for the ground-truth partition of the rows of ``X`` (``truth[i]`` the group
    of row i; -1: none, left out), on the same vectors Stage 2 uses. It says which beta would keep
    the true clusters whole: the split rule G_k > beta cuts true group k whenever beta is below its
    G_k. None with fewer than two groups present (no foreign centroid, G undefined)."""
    t = np.asarray(truth, dtype=np.int64)
    keep = t >= 0
    if np.unique(t[keep]).size < 2:
        return None
    G, _, _ = dispersion_separation(np.asarray(X, dtype=np.float64)[keep], canonical_labels(t[keep]))
    return G


def adjust_clusters(
    X: np.ndarray, labels: np.ndarray, *, alpha: float, beta: float, rng: np.random.Generator
) -> tuple[np.ndarray, int, int]:
    """One pass of Alg. 1 lines 19-23 over the clusters (in label order): G_j of eq. (8) on the
    current partition; G_j > beta splits C_j in two (2-means on its members); otherwise
    G_j < alpha merges C_j into the cluster of the nearest centroid. The partition is updated after
    each operation ("update {C_k}"); a cluster created by this pass (either half of a split, the
    union of a merge) is not revisited. Returns (canonical labels, splits, merges)."""
    A = np.asarray(X, dtype=np.float64)
    lab = canonical_labels(labels).copy()
    done: set[int] = set()
    splits = merges = 0
    next_id = int(lab.max()) + 1
    for j in range(next_id):
        if j in done or not (lab == j).any():
            continue
        ids = np.unique(lab)  # live clusters
        dense = np.searchsorted(ids, lab)
        G, _, nearest = dispersion_separation(A, dense)
        pos = int(np.searchsorted(ids, j))
        g = float(G[pos])
        members = np.flatnonzero(lab == j)
        if g > beta and members.size >= 2:
            halves = kmeans(A[members], 2, rng).labels
            if halves.max() == 1:  # two distinct points at least: a real split
                lab[members[halves == 1]] = next_id
                done.update({j, next_id})
                next_id += 1
                splits += 1
        elif g < alpha and nearest[pos] >= 0:
            target = int(ids[nearest[pos]])
            lab[members] = target
            done.update({j, target})
            merges += 1
    return canonical_labels(lab), splits, merges


# -------------------------------------------------------------- Stage 3: aggregation and privacy


def merge_models(
    starts: Sequence[np.ndarray], deltas: Sequence[np.ndarray], sizes: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Eq. (11) for one cluster: sum_i (|D_i| / |D_k|) (w_start(i) + Delta w_i), float64 sums,
    returned float32. When every member started from the cluster model w_k^t this is exactly
    w_k^t + sum_i (|D_i| / |D_k|) Delta w_i; members that trained from different models (a cluster
    re-formed this round) contribute their own local models."""
    w = np.asarray(sizes, dtype=np.float64)
    if len(deltas) == 0 or w.sum() <= 0:
        raise ValueError("a cluster needs at least one member with examples")
    acc = np.zeros(np.asarray(deltas[0]).shape, np.float64)
    for wi, s, d in zip(w, starts, deltas, strict=True):
        acc += wi * (s.astype(np.float64) + d.astype(np.float64))
    return (acc / w.sum()).astype(np.float32)


def gaussian_sigma(
    epsilon: float, delta: float, clip_norm: float, calibration: Literal["classic", "analytic"] = "classic"
) -> float:
    """Noise std for one (epsilon, delta)-DP release of an update of L2 sensitivity ``clip_norm``.

    ``classic``: sigma = C sqrt(2 ln(1.25 / delta)) / epsilon, the Gaussian mechanism of Dwork &
    Roth 2014 (Theorem A.1; stated there for epsilon < 1, and used at epsilon = 1 by convention).
    ``analytic``: the smallest sigma for which the Gaussian mechanism is (epsilon, delta)-DP
    (Balle & Wang 2018), from ``dp_accounting.get_sigma_gaussian``, times C.
    """
    if calibration == "classic":
        return float(clip_norm * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon)
    if calibration == "analytic":
        import dp_accounting

        return float(clip_norm * dp_accounting.get_sigma_gaussian(epsilon, delta))
    raise ValueError(f"calibration must be 'classic' or 'analytic', got {calibration!r}")


def clip_update(v: np.ndarray, clip_norm: float) -> tuple[np.ndarray, bool]:
    """v * min(1, C / ||v||_2) in float64, and whether it was clipped."""
    x = np.asarray(v, dtype=np.float64)
    norm = float(np.linalg.norm(x))
    if norm > clip_norm:
        return x * (clip_norm / norm), True
    return x, False


def noise_seed(seed: int, round_idx: int, client_id: int) -> int:
    """The seed of client ``client_id``'s DP noise in round ``round_idx`` of run ``seed``: a function
    of these three only (the same on the server and on any client actor, and after a restore)."""
    return int(
        np.random.SeedSequence([int(seed), int(round_idx), int(client_id), NOISE_SALT]).generate_state(1)[0]
    )


def privatize(v: np.ndarray, clip_norm: float, sigma: float, seed: int) -> tuple[np.ndarray, bool]:
    """Alg. 1 line 31 on a clipped update: clip(v, C) + N(0, sigma^2 I), the noise drawn from
    ``np.random.default_rng(seed)``. Returns (float32 vector, clipped?)."""
    x, clipped = clip_update(v, clip_norm)
    noise = np.random.default_rng(seed).normal(0.0, sigma, size=x.shape)
    return (x + noise).astype(np.float32), clipped


def epsilon_spent(noise_multiplier: float, rounds: int, sampling_probability: float, delta: float) -> float:
    """The epsilon at ``delta`` of ``rounds`` compositions of the Gaussian mechanism with noise
    multiplier sigma / C, each round reaching a client with probability q, by dp_accounting's RDP
    accountant (add-or-remove-one-client adjacency; q < 1 is accounted as Poisson sampling, which
    the uniform fixed-size cohort only approximates). 0 for no rounds."""
    import dp_accounting
    from dp_accounting import rdp

    if rounds <= 0:
        return 0.0
    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_probability < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(sampling_probability, event)
    acc = rdp.RdpAccountant(orders=RDP_ORDERS)
    acc.compose(dp_accounting.SelfComposedDpEvent(event, int(rounds)))
    return float(acc.get_epsilon(delta))


# ----------------------------------------------------------------------------- bookkeeping


def local_epochs(
    rule: Literal["paper", "steps", "config"],
    num_examples: int,
    batch_size: int,
    config_epochs: int,
    floor: int = 10,
) -> int:
    """Local epochs of one client (Section 3.2.3 / eq. 5 and Alg. 1 lines 7-8).

    ``paper``: max(ceil(BS / |D_i|), floor) epochs, as written (with BS < |D_i| this is always
    ``floor`` = 10 epochs). ``steps``: Section 3.5's reading, the same count as SGD steps
    (mini-batches), max(ceil(BS / |D_i|), floor), run as the fewest whole epochs holding that many
    steps, ceil(steps * BS / |D_i|) (the trainer runs whole epochs). ``config``: ``local.epochs``.
    """
    n = max(int(num_examples), 1)
    bs = max(int(batch_size), 1)
    t = max(math.ceil(bs / n), int(floor))
    if rule == "paper":
        return t
    if rule == "steps":
        return max(1, math.ceil(t * min(bs, n) / n))
    if rule == "config":
        return max(1, int(config_epochs))
    raise ValueError(f"local_epochs_rule must be 'paper', 'steps' or 'config', got {rule!r}")


def carry_over(
    prev_assign: np.ndarray, participants: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every client's cluster after a round in which only ``participants`` were re-clustered.

    Participant p joins new cluster ``labels[p]`` (0..K-1). A client that sat the round out follows
    the plurality of the participants that shared its previous cluster (ties: lowest new id); when
    none of them took part, its previous cluster survives unchanged and is renumbered K, K+1, ...
    in order of its old id. Unassigned clients (-1) stay unassigned. Returns (assign (n,) int64,
    kept old cluster ids in their new order)."""
    prev = np.asarray(prev_assign, dtype=np.int64)
    part = np.asarray(participants, dtype=np.int64)
    lab = np.asarray(labels, dtype=np.int64)
    out = np.full(prev.shape, -1, np.int64)
    out[part] = lab
    k_new = int(lab.max()) + 1 if lab.size else 0
    idle = np.setdiff1d(np.flatnonzero(prev >= 0), part)
    kept = np.array(sorted(set(prev[idle].tolist()) - set(prev[part].tolist())), np.int64)
    for c in idle:
        old = prev[c]
        mates = part[prev[part] == old]
        if mates.size:
            out[c] = int(np.argmax(np.bincount(lab[np.isin(part, mates)], minlength=k_new)))
        else:
            out[c] = k_new + int(np.searchsorted(kept, old))
    return out, kept
