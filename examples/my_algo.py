"""KMeansCFL: clustered FL by k-means on the clients' updates, written outside raysim.

Warm-up (rounds 1..warmup_rounds): FedAvg on one shared model. The round after it, the server runs
spherical k-means (cosine, k-means++ seeding, best of ``restarts``) on the cohort's updates from the
shared model less their mean (the part every client agrees on), and keeps one model per cluster: the
example-weighted mean of its members' local models. From then on a placed client trains its
cluster's model and every round is one Lloyd step on the cohort: each local model goes to the nearest
cluster model (E-step), and each cluster model becomes its members' weighted mean (M-step, FedAvg
within the cluster); a cluster nobody joined keeps its model. A client not yet placed trains the
shared model and is placed by the same rule. Not linear: the server needs every update.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import Field

from raysim.algorithms.base import (
    AlgoParams,
    Algorithm,
    ClientResult,
    ClientTask,
    RoundPlan,
    Traits,
    sample_cohort,
)
from raysim.clustering import spherical_kmeans

SHARED, ASSIGN = "global", "assign"  # broadcast keys besides "cluster/<j>"


def weighted_mean(rows: np.ndarray, n: np.ndarray) -> np.ndarray:
    """sum_i n_i row_i / sum_i n_i, summed row by row in order (no BLAS: the same bits on any backend)."""
    return ((n[:, None] * rows).sum(axis=0) / n.sum()).astype(np.float32)


class KMeansCFLParams(AlgoParams):  # unknown keys and out-of-range values are config errors
    num_clusters: Annotated[int, Field(ge=1)] = 2  # k
    warmup_rounds: Annotated[int, Field(ge=0)] = 2  # FedAvg rounds before the first clustering
    restarts: Annotated[int, Field(ge=1)] = 3  # k-means++ seedings of the first clustering


class KMeansCFL(Algorithm):
    name: ClassVar[str] = "kmeans-cfl"
    params_model: ClassVar[type[AlgoParams]] = KMeansCFLParams
    traits = Traits()  # not linear (the server clusters single updates), no client state
    family = "clustered"  # summary.json/summary.md lead with ARI/NMI and personalised accuracy

    # State: a plain dict of arrays (what a checkpoint stores without running code to load it).
    def init(self, params, ctx) -> dict[str, Any]:
        assign = np.full(ctx.num_clients, -1, dtype=np.int64)  # -1: not placed yet
        return {"shared": params.astype(np.float32), "models": (), "assign": assign}

    def key(self, state: dict[str, Any], c: int) -> str:
        j = int(state["assign"][c])
        return SHARED if j < 0 else f"cluster/{j}"

    def start(self, state: dict[str, Any], key: str) -> np.ndarray:
        return state["shared"] if key == SHARED else state["models"][int(key.split("/")[1])]

    def configure_round(self, state, rnd):
        tasks = [
            ClientTask(client_id=c, model_key=self.key(state, c), hparams=rnd.hparams)
            for c in sample_cohort(rnd.available, rnd.cohort_size, rnd.rng)
        ]
        keys = {t.model_key for t in tasks}
        return state, RoundPlan(tasks=tasks, broadcast={k: self.start(state, k) for k in sorted(keys)})

    def aggregate(self, state, results: Sequence[ClientResult], server):
        done = [r for r in results if r.delta is not None]
        if not done:
            return state, {"aggregated_clients": 0.0}
        local = np.stack([self.start(state, r.model_key) + r.delta.astype(np.float64) for r in done])
        n = np.array([float(r.num_examples) for r in done])
        ids = np.array([r.client_id for r in done])
        if server.round_idx <= self.p.warmup_rounds:  # FedAvg on the shared model
            return {**state, "shared": weighted_mean(local, n)}, {"aggregated_clients": float(len(done))}
        if state["models"]:  # E-step: the nearest cluster model
            models = np.stack(state["models"]).astype(np.float64)
            labels = np.stack([((local - m) ** 2).sum(axis=1) for m in models], axis=1).argmin(axis=1)
        else:  # the first clustering: the directions of the updates from the shared model, less their mean
            centred = local - local.mean(axis=0)  # = delta_i - mean(delta)
            labels = spherical_kmeans(centred, self.p.num_clusters, server.rng, n_init=self.p.restarts).labels
            models = np.repeat(state["shared"][None].astype(np.float64), self.p.num_clusters, axis=0)
        assign = state["assign"].copy()
        moved = int((assign[ids] != labels).sum())
        assign[ids] = labels
        new = [m.astype(np.float32) for m in models]
        for j in np.unique(labels):  # M-step: each cluster model is its members' weighted mean
            new[j] = weighted_mean(local[labels == j], n[labels == j])
        metrics = {
            "aggregated_clients": float(len(done)),
            "moved_clients": float(moved),
            "nonempty_clusters": float(len(np.unique(assign[assign >= 0]))),
        }
        return {**state, "models": tuple(new), "assign": assign}, metrics

    def server_model(self, state):  # the largest cluster's model (shared before clustering)
        placed = state["assign"][state["assign"] >= 0]
        return state["models"][np.bincount(placed).argmax()] if state["models"] else state["shared"]

    def eval_broadcast(self, state) -> Mapping[str, np.ndarray]:
        models = {f"cluster/{j}": m for j, m in enumerate(state["models"])}
        return {SHARED: state["shared"], ASSIGN: state["assign"], **models}

    def client_annotations(self, state):  # clients.parquet's `cluster` (and rounds.parquet's cluster_ari)
        return {c: {"cluster": float(j)} for c, j in enumerate(state["assign"])}

    # -- on the client actor that hosts the client -------------------------------------------
    def client_update(self, task, params, client) -> ClientResult:
        fit = client.fit(params, hparams=task.hparams)  # the task's typed hyperparameter record, whole
        return ClientResult(
            client_id=task.client_id,
            num_examples=fit.num_examples,
            model_key=task.model_key,
            delta=fit.params - params,
            metrics={"train_loss": fit.loss},
        )

    def personal_params(self, broadcast, client):  # scored with its cluster's model
        j = int(broadcast[ASSIGN][client.client_id])
        return broadcast[SHARED] if j < 0 else broadcast[f"cluster/{j}"]
