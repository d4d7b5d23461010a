"""DSAC's aggregation steps: client grouping (eq. 11-12) and the merge of one round's sub-model
updates (eq. 3-8 and 13 of the paper).

Grouping: hierarchical (dendrogram, then spherical k-means and medoids) or flat k-means over the
clients' uploaded D_u, and between regroupings a new client joins the nearest group. Merge, per
sub-model: K-means of the client updates, the variance-penalised cluster weights and the
decayed client weights, within client groups then across them (hierarchical) or over the whole
cohort (flat); then the eq. (7) recombination into the new global model, each group's model M_g
(eq. 13) and the global loss (eq. 8 with eq. 15's weights). Separate from ``dsac`` because it is
the numerical core of ``DSAC.aggregate``: pure functions of the state, the kept results and the
knobs, over the tested ``dsac_math`` primitives, while ``dsac`` keeps the algorithm's contract
(tasks, client updates, weights, bookkeeping).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from raysim import clustering as cl
from raysim.algorithms.base import ClientResult
from raysim.algorithms.dsac_math import MergeInfo, clustered_merge, submodel_data_weights, two_level_merge

if TYPE_CHECKING:
    from raysim.algorithms.dsac import DSACParams, DSACState


def regroup(p: DSACParams, state: DSACState, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Client grouping, eq. (11)-(12), over every client that has uploaded a D_u."""
    n = len(state.assign)
    assign = np.full(n, -1, np.int64)
    idx = np.flatnonzero(state.has_feature)
    if state.features is None or idx.size == 0:
        return assign, np.zeros(0, np.int64)
    X = state.features[idx].astype(np.float64)
    if p.hierarchical_clustering:
        k, _ = cl.hierarchical_num_groups(X, p.max_groups, p.group_threshold)  # dendrogram
        labels = cl.spherical_kmeans(X, k, rng).labels
        medoids = cl.group_medoids(X, labels, k)  # eq. (12)
        medoids = np.where(medoids >= 0, idx[np.maximum(medoids, 0)], -1)
    else:
        k = min(p.max_groups, idx.size)
        labels = cl.kmeans(X, k, rng).labels
        medoids = np.full(k, -1, np.int64)
    assign[idx] = labels
    return assign, medoids


def join_groups(state: DSACState, assign: np.ndarray, res: Sequence[ClientResult]) -> np.ndarray:
    """Between regroupings: a client of this round with a D_u but no group joins the group whose
    mean D_u has the highest cosine similarity with its own (no groups yet: unchanged)."""
    new = [r.client_id for r in res if assign[r.client_id] < 0 and state.has_feature[r.client_id]]
    groups = sorted(int(g) for g in np.unique(assign) if g >= 0)
    if not new or not groups or state.features is None:
        return assign
    F = state.features.astype(np.float64)
    centres = np.stack([F[assign == g].mean(axis=0) for g in groups])
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    out = assign.copy()
    for c in new:
        f = F[c] / max(float(np.linalg.norm(F[c])), 1e-12)
        out[c] = groups[int(np.argmax(centres @ f))]
    return out


@dataclass(kw_only=True)
class Merge:
    """What one round's sub-model merge produced (eq. 3-7), for eq. (8), (13) and the metrics."""

    k: int
    params: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    untouched: int = 0
    silhouettes: list[float] = field(default_factory=list)
    intra: list[float] = field(default_factory=list)
    loss_k: np.ndarray = field(init=False)
    data_k: np.ndarray = field(init=False)
    # group -> sub-model -> the group's combined update Δ_g (unscaled), for M_g of eq. (13)
    group_deltas: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.loss_k = np.full(self.k, np.nan)
        self.data_k = np.zeros(self.k)

    def record(self, info: MergeInfo) -> None:
        """Clustering-quality metrics of Table 3 for one K-means of updates (computed on the updates'
        span coordinates, which keep every distance)."""
        if info.k > 1:
            self.silhouettes.append(cl.silhouette(info.points, info.labels))
            self.intra.append(cl.intra_cluster_distance(info.points, info.labels, int(np.argmax(info.sizes))))


def merge_submodels(
    p: DSACParams,
    state: DSACState,
    kept: Sequence[tuple[ClientResult, float]],
    assign: np.ndarray,
    rng: np.random.Generator,
) -> Merge:
    """Lines 17-20 per sub-model: eq. (3)-(6) and the decay, within groups then across them
    (hierarchical) or over the whole cohort (flat); then eq. (7) recombination. Also each group's
    combined update, for M_g of eq. (13)."""
    part, old = state.partition, state.params
    merge = Merge(k=part.k)
    kw: dict[str, Any] = {"variance_prior": p.variance_prior}
    parts: list[np.ndarray | None] = []
    for j in range(part.k):
        rows = [(r, w) for r, w in kept if f"sub/{j}" in r.extras]
        if not rows:
            parts.append(None)  # every client of this sub-model dropped: keep m_k
            merge.untouched += 1
            continue
        U = np.stack([r.extras[f"sub/{j}"] for r, _ in rows]).astype(np.float64)
        W = np.array([w for _, w in rows])
        scale = math.sqrt(float(np.mean(np.einsum("ij,ij->i", U, U))))
        groups = np.array([int(assign[r.client_id]) for r, _ in rows], np.int64)
        if scale > 0:
            X = U / scale
            # ungrouped clients (no D_u yet) are groups of their own
            gid = np.where(groups >= 0, groups, -1 - np.array([r.client_id for r, _ in rows]))
            merged, deltas, infos = two_level_merge(X, W, gid, p.num_clusters, p.beta, rng, **kw)
            if not p.hierarchical_clustering:  # one level over the whole cohort
                flat, info = clustered_merge(X, W, p.num_clusters, p.beta, rng, **kw)
                assert flat is not None
                merge.record(info)
                merged = flat
            else:
                for info in infos.values():
                    merge.record(info)
            for g, d in deltas.items():
                if g >= 0:
                    merge.group_deltas.setdefault(g, {})[j] = d * scale
            merged = merged * scale
        else:
            merged = np.zeros(U.shape[1])
        parts.append(old[part.slice(j)] + p.central_lr * merged.astype(np.float32))
        n_ex = np.array([r.num_examples for r, _ in rows], np.float64)
        merge.data_k[j] = n_ex.sum()
        if n_ex.sum() > 0:
            merge.loss_k[j] = float(
                np.dot(n_ex, [r.metrics.get("train_loss", np.nan) for r, _ in rows]) / n_ex.sum()
            )
    merge.params = part.recombine(parts, base=old).astype(np.float32)
    return merge


def group_models(
    state: DSACState, merge: Merge, assign: np.ndarray, central_lr: float
) -> dict[int, np.ndarray]:
    """Eq. (13): M_g = the previous global sub-model plus the group's combined update Δ_g (eq. 4-6
    and the decayed weights within the group), and the new global sub-model where the group
    trained none."""
    part, old = state.partition, state.params
    out: dict[int, np.ndarray] = {}
    for g in sorted(int(x) for x in np.unique(assign) if x >= 0):
        mg = merge.params.copy()
        for j, d in merge.group_deltas.get(g, {}).items():
            sl = part.slice(j)
            mg[sl] = old[sl] + central_lr * d.astype(np.float32)
        out[g] = mg
    return out


def global_loss(merge: Merge) -> float:
    """Eq. (8) with eq. (15)'s β_k: the data-weighted mean of the sub-models' training losses."""
    beta_k = submodel_data_weights(merge.data_k)
    live = np.isfinite(merge.loss_k)
    return float(np.dot(beta_k[live], merge.loss_k[live]) / beta_k[live].sum()) if live.any() else math.nan
