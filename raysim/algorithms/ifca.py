"""IFCA (Ghosh et al. 2020, "An Efficient Framework for Clustered Federated Learning",
Algorithm 1 with model averaging, i.e. the "IFCA with model averaging" variant of Algorithm 2).

The server keeps k cluster models theta_0..theta_{k-1} (broadcast keys ``cluster/0`` ..
``cluster/{k-1}``) and sends all of them to every sampled client. Client i estimates its cluster
identity as argmin_j F_i(theta_j) (its empirical loss on its own training split, or on its
validation split with ``select_on="val"``), runs local SGD from theta_{j_i} and returns the
update for THAT model key. The server averages the updates per cluster, weighted by examples:
theta_j <- theta_j + eta_g * sum_{i: j_i = j} n_i delta_i / sum_{i: j_i = j} n_i. A cluster no
client picked keeps its model.

Initialisation: the paper draws the k models at random (independent random initialisations).
Here cluster 0 is the runtime's initial model and cluster j >= 1 is that model plus small
independent Gaussian noise (``init_noise``, seeded from the run seed), so that k = 1 is exactly
FedAvg and every cluster model starts from a well-scaled network.

Linearity: the server update is a per-key sum, so client actors pre-sum per model key
(``sum_by_key``), bit-identically for any packing. Which cluster each client chose (for the
clustering metrics and the ``cluster`` column) comes from the per-client results that reach
``aggregate`` alongside the sums (their ``model_key``; the update itself travels pre-summed).

There is no single global model. ``server_model`` returns the model of the largest cluster (the
one most clients chose last, ties to the lowest index; cluster 0 before any choice), so the
server's test metrics score that model rather than being NaN. Personalised evaluation scores each
client with the cluster model it would pick by the same selection rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import Field

from raysim.algorithms.aggregate import fedavg_step
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
    sum_by_key,
)
from raysim.models.flat import Params


def cluster_key(j: int) -> str:
    return f"cluster/{j}"


def cluster_index(key: str) -> int:
    """``"cluster/3"`` -> 3."""
    prefix, _, idx = key.partition("/")
    if prefix != "cluster" or not idx.isdigit():
        raise ValueError(f"not a cluster model key: {key!r}")
    return int(idx)


def pick_cluster(losses: Sequence[float]) -> int:
    """argmin of the losses; NaN counts as +inf and ties go to the lowest index."""
    arr = np.asarray(losses, dtype=np.float64)
    arr = np.where(np.isnan(arr), np.inf, arr)
    return int(np.argmin(arr))


class IFCAParams(AlgoParams):
    num_clusters: Annotated[int, Field(ge=1)] = 2
    init_noise: Annotated[float, Field(ge=0)] = 0.01  # std of the perturbation of clusters 1..k-1
    select_on: Literal["train", "val"] = "train"  # the split each client scores the k models on
    central_lr: Annotated[float, Field(gt=0)] = 1.0


@dataclass(frozen=True, kw_only=True)
class IFCAState:
    models: tuple[np.ndarray, ...]  # theta_j, float32
    choice: np.ndarray  # (num_clients,) int64: each client's latest chosen cluster, -1 = never chosen
    # ground-truth groups (-1: none); unused since the runtime scores the clusters (cluster_ari),
    # kept so saved checkpoints still load
    truth: np.ndarray | None


class IFCA(Algorithm):
    name: ClassVar[str] = "ifca"
    family: ClassVar[Family] = "clustered"
    params_model: ClassVar[type[AlgoParams]] = IFCAParams
    traits = Traits(linear=True)  # per-key sums; no client state (a client may train anywhere)

    # -- server ----------------------------------------------------------------------------
    def init(self, params: Params, ctx: SetupContext) -> IFCAState:
        base = params.astype(np.float32)
        rng = np.random.default_rng([ctx.seed, 0x1FCA])
        models = [base]
        for _ in range(1, self.p.num_clusters):
            noise = rng.normal(0.0, self.p.init_noise, size=base.shape)
            models.append((base.astype(np.float64) + noise).astype(np.float32))
        truth = None if ctx.client_groups is None else np.asarray(ctx.client_groups, dtype=np.int64)
        return IFCAState(
            models=tuple(models), choice=np.full(ctx.num_clients, -1, dtype=np.int64), truth=truth
        )

    def keys(self) -> tuple[str, ...]:
        return tuple(cluster_key(j) for j in range(self.p.num_clusters))

    def configure_round(self, state: IFCAState, rnd: RoundContext) -> tuple[IFCAState, RoundPlan]:
        cohort = sample_cohort(rnd.available, rnd.cohort_size, rnd.rng)
        keys = self.keys()
        tasks = [
            ClientTask(client_id=c, model_key=keys[0], hparams=rnd.hparams, broadcast_keys=keys[1:])
            for c in cohort
        ]
        return state, RoundPlan(tasks=tasks, broadcast=dict(zip(keys, state.models, strict=True)))

    def aggregate(
        self, state: IFCAState, results: Sequence[ClientResult | LinearSum], server: ServerContext
    ) -> tuple[IFCAState, Metrics]:
        sums = sum_by_key(results)
        models = list(state.models)
        choice = state.choice.copy()
        counts = np.zeros(len(models), dtype=np.int64)
        for key, total in sums.items():
            j = cluster_index(key)
            models[j] = fedavg_step(models[j], total, self.p.central_lr)
            counts[j] = total.num_clients
        for r in results:  # every accepted client's result, its update pre-summed or not
            if isinstance(r, ClientResult):
                choice[r.client_id] = cluster_index(r.model_key)
        metrics: Metrics = {f"clients_{cluster_key(j)}": float(c) for j, c in enumerate(counts)}
        metrics["nonempty_clusters"] = float((counts > 0).sum())
        metrics["aggregated_clients"] = float(counts.sum())
        return replace(state, models=tuple(models), choice=choice), metrics

    def largest_cluster(self, state: IFCAState) -> int:
        """The cluster most clients chose last (ties: lowest index; 0 before any choice)."""
        chosen = state.choice[state.choice >= 0]
        if len(chosen) == 0:
            return 0
        return int(np.argmax(np.bincount(chosen, minlength=len(state.models))))

    def server_model(self, state: IFCAState) -> Params:
        """The largest cluster's model (IFCA has no single global model)."""
        return state.models[self.largest_cluster(state)]

    def eval_broadcast(self, state: IFCAState) -> Mapping[str, np.ndarray]:
        return dict(zip(self.keys(), state.models, strict=True))

    def client_annotations(self, state: IFCAState) -> Mapping[int, Mapping[str, float]]:
        return {c: {"cluster": float(j)} for c, j in enumerate(state.choice)}

    # -- client ----------------------------------------------------------------------------
    def select(self, broadcast: Mapping[str, np.ndarray], client: ClientContext) -> str:
        """The cluster key whose model has the lowest loss on the client's ``select_on`` split.
        With ``select_on="val"`` and an empty validation split, the training split decides."""
        keys = [k for k in self.keys() if k in broadcast]
        split = self.p.select_on
        evals = [client.evaluate(broadcast[k], split) for k in keys]
        if split == "val" and evals and evals[0].n == 0:
            evals = [client.evaluate(broadcast[k], "train") for k in keys]
        return keys[pick_cluster([e.loss for e in evals])]

    def client_update(self, task: ClientTask, params: Params, client: ClientContext) -> ClientResult:
        key = self.select(client.broadcast, client)
        start = client.broadcast[key]
        fit = client.fit(start, grad_hook=None, hparams=task.hparams)
        return ClientResult(
            client_id=task.client_id,
            num_examples=fit.num_examples,
            delta=fit.params - start,
            model_key=key,
            metrics={"train_loss": fit.loss},
        )

    def personal_params(self, broadcast: Mapping[str, np.ndarray], client: ClientContext) -> Params:
        return broadcast[self.select(broadcast, client)]

    def personal_model_keys(self, broadcast: Mapping[str, np.ndarray], clients: ClientBatch) -> PersonalKeys:
        """``select`` for many clients at once: each cluster model scored on every client's
        ``select_on`` split in one batched pass (the training split for a client with no validation
        examples), the lowest mean loss wins. The losses are the batched pass's, so a client whose
        two best models tie to the last bits may pick differently from ``select`` alone."""
        keys = [k for k in self.keys() if k in broadcast]
        if not keys:
            return PersonalKeys.per_client(len(clients.client_ids))
        split = self.p.select_on
        evals = [clients.evaluate(broadcast[k], split) for k in keys]
        losses = np.stack([e.loss for e in evals])
        empty = evals[0].n == 0
        if split == "val" and empty.any():
            on_train = np.stack([clients.evaluate(broadcast[k], "train").loss for k in keys])
            losses[:, empty] = on_train[:, empty]
        pick = np.argmin(np.where(np.isnan(losses), np.inf, losses), axis=0)  # ties: lowest, as pick_cluster
        return PersonalKeys(keys=tuple(keys), which=pick.astype(np.int64))
