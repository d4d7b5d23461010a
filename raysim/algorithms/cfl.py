"""CFL (Sattler et al. 2020, "Clustered Federated Learning: Model-Agnostic Distributed Multitask
Optimization under Privacy Constraints", Algorithm 1).

Training starts with one cluster holding every client. Each round the sampled clients of each
cluster c train from theta_c and upload their updates delta_i (the server needs them one by one,
so the algorithm is NOT linear). Per cluster the server computes

* mean_norm = || sum_{i in c} n_i delta_i / sum_{i in c} n_i ||  (the norm of the averaged update:
  small when the cluster's joint objective is near a stationary point),
* max_norm = max_{i in c} ||delta_i||  (large when some clients are still far from their own
  optimum),

and, once the cluster is at least ``min_rounds_before_split`` rounds old, splits it when
mean_norm < eps1 and max_norm > eps2. The split is the paper's optimal bipartition
argmin_{c1 u c2 = c} max_{i in c1, j in c2} alpha_ij of the cosine similarities alpha_ij of the
members' updates, computed here by agglomerative clustering with complete linkage into two groups
on the distance 1 - alpha (complete linkage merges by the largest cross distance, i.e. the
smallest cross similarity, which is the paper's construction).

Separation criterion. The paper accepts a bipartition when gamma_max < sqrt((1 - alpha_cross_max)/2),
alpha_cross_max the largest cosine similarity across the two parts and gamma_i the relative
deviation of client i's gradient from the true gradient of its own data distribution. The true
gradients are unknown; this implementation estimates them by the example-weighted mean update of
each candidate part, gamma_i ~= ||delta_i - mean_part(i)|| / ||mean_part(i)||. This approximation
is exact when each part holds clients of one distribution with noiseless updates and becomes
conservative (larger gamma) with noisy updates. ``separation_check=False`` keeps every split.

Bookkeeping. Assignments live in server state (``assign``, one cluster id per client). Only the
clients that trained this round are partitioned; a member that did not train keeps the parent's id,
which the first child inherits (the second child gets a fresh id). Each cluster (after any split)
is updated with the example-weighted mean of its own members' updates: theta_c <- theta_c + mean.

There is no single global model: ``server_model`` returns the model of the largest cluster (most
assigned clients, ties to the lowest id) so the server's test metrics stay defined; personalised
evaluation scores each client with its own cluster's model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, ClassVar

import numpy as np
from pydantic import Field

from raysim.algorithms.aggregate import weighted_mean
from raysim.algorithms.base import (
    AlgoParams,
    Algorithm,
    ClientBatch,
    ClientContext,
    ClientResult,
    ClientTask,
    Family,
    LinearSum,
    Metrics,
    PersonalKeys,
    RoundContext,
    RoundPlan,
    ServerContext,
    SetupContext,
    Traits,
    sample_cohort,
)
from raysim.clustering import cosine_similarity_matrix
from raysim.models.flat import Params

ASSIGN = "assign"  # eval broadcast: each client's cluster id


def cluster_key(cid: int) -> str:
    return f"cluster/{cid}"


def cluster_id(key: str) -> int:
    prefix, _, idx = key.partition("/")
    if prefix != "cluster" or not idx.isdigit():
        raise ValueError(f"not a cluster model key: {key!r}")
    return int(idx)


# ----------------------------------------------------------------------------------- pure split rule


def bipartition(deltas: np.ndarray) -> np.ndarray:
    """Two groups of the rows of ``deltas`` (m >= 2) by complete-linkage agglomerative clustering on
    1 - cosine similarity. Labels (m,) int64 in {0, 1}, canonical: row 0 is in group 0."""
    from sklearn.cluster import AgglomerativeClustering

    D = np.asarray(deltas, dtype=np.float64)
    if D.ndim != 2 or D.shape[0] < 2:
        raise ValueError(f"bipartition needs at least two update rows, got shape {D.shape}")
    dist = np.clip(1.0 - cosine_similarity_matrix(D), 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    labels = AgglomerativeClustering(n_clusters=2, metric="precomputed", linkage="complete").fit_predict(dist)
    labels = np.asarray(labels, dtype=np.int64)
    return labels if labels[0] == 0 else 1 - labels


@dataclass(frozen=True, kw_only=True)
class SplitDecision:
    mean_norm: float
    max_norm: float
    triggered: bool  # mean_norm < eps1 and max_norm > eps2 (and old enough, >= 2 updates)
    labels: np.ndarray | None = None  # the candidate bipartition, when triggered
    alpha_cross_max: float = float("nan")
    gamma_max: float = float("nan")
    accepted: bool = False


def update_norms(deltas: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """(|| weighted mean update ||, max_i ||delta_i||)."""
    D = np.asarray(deltas, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    mean = (w[:, None] * D).sum(axis=0) / w.sum()
    return float(np.linalg.norm(mean)), float(np.linalg.norm(D, axis=1).max())


def separation(deltas: np.ndarray, weights: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(alpha_cross_max, gamma_max) of a bipartition; gamma estimated from each part's mean update."""
    D = np.asarray(deltas, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    S = cosine_similarity_matrix(D)
    a, b = labels == 0, labels == 1
    alpha_cross = float(S[np.ix_(a, b)].max())
    gamma = 0.0
    for part in (a, b):
        mean = (w[part, None] * D[part]).sum(axis=0) / max(w[part].sum(), 1e-300)
        m = float(np.linalg.norm(mean))
        dev = np.linalg.norm(D[part] - mean, axis=1)
        gamma = max(gamma, float(dev.max()) / m if m > 0 else float("inf"))
    return alpha_cross, gamma


def split_rule(
    deltas: np.ndarray,
    weights: np.ndarray,
    *,
    eps1: float,
    eps2: float,
    old_enough: bool = True,
    separation_check: bool = True,
) -> SplitDecision:
    """Sattler et al.'s split test on one cluster's updates (rows of ``deltas``, example weights)."""
    mean_norm, max_norm = update_norms(deltas, weights)
    triggered = old_enough and len(deltas) >= 2 and mean_norm < eps1 and max_norm > eps2
    if not triggered:
        return SplitDecision(mean_norm=mean_norm, max_norm=max_norm, triggered=False)
    labels = bipartition(deltas)
    alpha_cross, gamma = separation(deltas, weights, labels)
    ok = (not separation_check) or gamma < np.sqrt(max(1.0 - alpha_cross, 0.0) / 2.0)
    return SplitDecision(
        mean_norm=mean_norm,
        max_norm=max_norm,
        triggered=True,
        labels=labels,
        alpha_cross_max=alpha_cross,
        gamma_max=gamma,
        accepted=bool(ok),
    )


# ----------------------------------------------------------------------------------- the algorithm


class CFLParams(AlgoParams):
    eps1: Annotated[float, Field(gt=0)] = 0.4  # split only when the mean update norm is below this
    eps2: Annotated[float, Field(ge=0)] = 1.6  # ... and the largest client update norm is above this
    min_rounds_before_split: Annotated[int, Field(ge=0)] = 20  # a cluster's age (rounds) before it may split
    separation_check: bool = True  # keep a split only if gamma_max < sqrt((1 - alpha_cross_max) / 2)


@dataclass(frozen=True, kw_only=True)
class CFLState:
    models: Mapping[int, np.ndarray]  # cluster id -> theta_c (float32)
    age: Mapping[int, int]  # cluster id -> rounds since the cluster was created
    assign: np.ndarray  # (num_clients,) int64 cluster id per client
    next_id: int
    truth: np.ndarray | None


class CFL(Algorithm):
    name: ClassVar[str] = "cfl"
    family: ClassVar[Family] = "clustered"
    params_model: ClassVar[type[AlgoParams]] = CFLParams
    traits = Traits(linear=False)  # the split needs every client's individual update

    def init(self, params: Params, ctx: SetupContext) -> CFLState:
        truth = None if ctx.client_groups is None else np.asarray(ctx.client_groups, dtype=np.int64)
        return CFLState(
            models={0: params.astype(np.float32)},
            age={0: 0},
            assign=np.zeros(ctx.num_clients, dtype=np.int64),
            next_id=1,
            truth=truth,
        )

    def configure_round(self, state: CFLState, rnd: RoundContext) -> tuple[CFLState, RoundPlan]:
        cohort = sample_cohort(rnd.available, rnd.cohort_size, rnd.rng)
        tasks = [
            ClientTask(client_id=c, model_key=cluster_key(int(state.assign[c])), hparams=rnd.hparams)
            for c in cohort
        ]
        used = sorted({int(state.assign[c]) for c in cohort})
        return state, RoundPlan(tasks=tasks, broadcast={cluster_key(k): state.models[k] for k in used})

    def aggregate(
        self, state: CFLState, results: Sequence[ClientResult | LinearSum], server: ServerContext
    ) -> tuple[CFLState, Metrics]:
        groups: dict[int, list[ClientResult]] = {}
        for r in results:
            if not isinstance(r, ClientResult):
                raise TypeError("CFL is not linear: it needs individual client results")
            if r.delta is None:
                continue
            groups.setdefault(cluster_id(r.model_key), []).append(r)

        models = dict(state.models)
        age = {k: v + 1 for k, v in state.age.items()}
        assign = state.assign.copy()
        next_id = state.next_id
        mean_norms, max_norms = [], []
        splits = 0
        for cid in sorted(groups):
            members = groups[cid]
            deltas = np.stack([np.asarray(r.delta, dtype=np.float64) for r in members])
            weights = np.array([float(r.num_examples) for r in members])
            if weights.sum() <= 0:
                continue
            d = split_rule(
                deltas,
                weights,
                eps1=self.p.eps1,
                eps2=self.p.eps2,
                old_enough=state.age[cid] >= self.p.min_rounds_before_split,
                separation_check=self.p.separation_check,
            )
            mean_norms.append(d.mean_norm)
            max_norms.append(d.max_norm)
            parent = state.models[cid]
            if d.accepted and d.labels is not None:
                splits += 1
                new = next_id
                next_id += 1
                for r, lab in zip(members, d.labels, strict=True):
                    if lab == 1:
                        assign[r.client_id] = new
                parts = [(cid, d.labels == 0), (new, d.labels == 1)]
                age[cid] = 0
                age[new] = 0
            else:
                parts = [(cid, np.ones(len(members), dtype=bool))]
            for k, mask in parts:
                idx = np.flatnonzero(mask)
                mean = weighted_mean([deltas[i] for i in idx], [float(weights[i]) for i in idx])
                models[k] = (parent.astype(np.float64) + mean).astype(np.float32)

        metrics: Metrics = {
            "num_clusters": float(len(models)),
            "splits": float(splits),
            "aggregated_clients": float(sum(len(g) for g in groups.values())),
        }
        if mean_norms:
            metrics["mean_update_norm"] = float(max(mean_norms))
            metrics["max_update_norm"] = float(max(max_norms))
        new_state = replace(state, models=models, age=age, assign=assign, next_id=next_id)
        return new_state, metrics

    def largest_cluster(self, state: CFLState) -> int:
        """The cluster with the most assigned clients (ties: lowest id)."""
        ids = sorted(state.models)
        counts = [int((state.assign == k).sum()) for k in ids]
        return ids[int(np.argmax(counts))]

    def server_model(self, state: CFLState) -> Params:
        """The largest cluster's model (CFL has no single global model)."""
        return state.models[self.largest_cluster(state)]

    def eval_broadcast(self, state: CFLState) -> Mapping[str, np.ndarray]:
        out: dict[str, np.ndarray] = {cluster_key(k): v for k, v in state.models.items()}
        out[ASSIGN] = state.assign
        return out

    def client_annotations(self, state: CFLState) -> Mapping[int, Mapping[str, float]]:
        return {c: {"cluster": float(k)} for c, k in enumerate(state.assign)}

    # -- client ----------------------------------------------------------------------------
    def client_update(self, task: ClientTask, params: Params, client: ClientContext) -> ClientResult:
        start = client.broadcast[task.model_key]
        fit = client.fit(start, grad_hook=None, hparams=task.hparams)
        return ClientResult(
            client_id=task.client_id,
            num_examples=fit.num_examples,
            delta=fit.params - start,
            model_key=task.model_key,
            metrics={"train_loss": fit.loss},
        )

    def personal_params(self, broadcast: Mapping[str, np.ndarray], client: ClientContext) -> Params:
        assign = broadcast[ASSIGN]
        return broadcast[cluster_key(int(assign[client.client_id]))]

    def personal_model_keys(self, broadcast: Mapping[str, np.ndarray], clients: ClientBatch) -> PersonalKeys:
        """Every client's cluster model (``personal_params`` for all of them at once)."""
        return PersonalKeys.by_label(np.asarray(broadcast[ASSIGN])[clients.client_ids], cluster_key)
