"""IFCA (Ghosh et al. 2020, "An Efficient Framework for Clustered Federated Learning",
Algorithm 1 with model averaging, i.e. the "IFCA with model averaging" variant of Algorithm 2).

The server keeps k cluster models theta_0..theta_{k-1} (broadcast keys ``cluster/0`` ..
``cluster/{k-1}``) and sends all of them to every sampled client. Client i estimates its cluster
identity as argmin_j F_i(theta_j) (its empirical loss on its own training split, or on its
validation split with ``select_on: val``), runs local SGD from theta_{j_i} and returns the
update for THAT model key. The server averages the updates per cluster, weighted by examples:
theta_j <- theta_j + eta_g * sum_{i: j_i = j} n_i delta_i / sum_{i: j_i = j} n_i. A cluster no
client picked keeps its model.

Initialisation (``init``). ``independent`` (the default, as the paper and its reference code):
cluster 0 is the runtime's initial model and cluster j >= 1 a fresh initialisation of the same
model by the model registry (``SetupContext.init_params``) under its own seed, derived from (run
seed, j) (``model_seed``), so k = 1 is exactly FedAvg and every model is a well-scaled network.
``perturbed``: cluster j >= 1 is the initial model plus independent Gaussian noise of std
``init_noise`` (seeded from the run seed); the k models then start almost equal, so the first
choices are decided by the noise.

Cluster choice (``select_on``): ``train`` (the default, as the paper: the empirical loss the client
trains on) or ``val`` (its validation split, an option; cheaper: one pass over a smaller split).

Cost of the choice (``select_examples``). Scoring k models is k forward passes over the client's
``select_on`` split; with the training split and one local epoch that is about k/3 of the training's
own arithmetic (a training step is a forward and a backward pass), so at k = 4 a client costs about
twice what FedAvg's does (docs/scaling.md, "IFCA"). ``select_examples: N`` scores every model on a
fixed, evenly spaced subset of at most N of the split's examples (``subset_positions``; the same
subset for every model and every round) instead: an option, not the paper's rule (the choice is made
on a smaller sample and can differ from the full split's), off by default.

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
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from raysim.algorithms.aggregate import fedavg_step
from raysim.algorithms.base import (
    AlgoParams,
    Algorithm,
    ClientBatch,
    ClientColumns,
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


MODEL_SALT = 0x1FCA  # RNG purpose of the cluster models' initialisations


def model_seed(seed: int, j: int) -> int:
    """The seed of cluster j's independent initialisation in run ``seed`` (j >= 1; cluster 0 is the
    runtime's initial model, drawn under the run seed itself)."""
    return int(np.random.SeedSequence([int(seed), MODEL_SALT, int(j)]).generate_state(1)[0])


class IFCAParams(AlgoParams):
    num_clusters: Annotated[int, Field(ge=1)] = 2
    # clusters 1..k-1: fresh initialisations ("independent", the paper) or the initial model + noise
    init: Literal["independent", "perturbed"] = "independent"
    init_noise: Annotated[float, Field(ge=0)] = 0.01  # "perturbed": std of the noise
    select_on: Literal["train", "val"] = "train"  # the split each client scores the k models on
    # score the k models on at most this many of the split's examples (a fixed evenly spaced
    # subset); None: all of them (the paper)
    select_examples: Annotated[int, Field(ge=1)] | None = None
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
        models = [base]
        if self.p.init == "independent" and self.p.num_clusters > 1:
            if ctx.init_params is None:
                raise RuntimeError(
                    "IFCA's independent initialisations need SetupContext.init_params (the runtime "
                    "gives it); in a hand-made context pass one, or set algorithm.init: perturbed"
                )
            for j in range(1, self.p.num_clusters):
                fresh = np.asarray(ctx.init_params(model_seed(ctx.seed, j)), dtype=np.float32)
                if fresh.shape != base.shape:
                    raise ValueError(f"init_params gave {fresh.shape} parameters, the model has {base.shape}")
                models.append(fresh)
        else:
            rng = np.random.default_rng([ctx.seed, MODEL_SALT])
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

    def client_annotations(self, state: IFCAState) -> ClientColumns:
        """Each client's latest chosen cluster (-1: never sampled), column-wise."""
        return ClientColumns.of({"cluster": state.choice.astype(np.float64)})

    # -- client ----------------------------------------------------------------------------
    def select(self, broadcast: Mapping[str, np.ndarray], client: ClientContext) -> str:
        """The cluster key whose model has the lowest loss on the client's ``select_on`` split.
        With ``select_on="val"`` and an empty validation split, the training split decides."""
        keys = [k for k in self.keys() if k in broadcast]
        limit = self.p.select_examples

        def score(key: str, split: str) -> Any:
            if limit is None:  # only an explicit subset passes the keyword (a hand-made context may lack it)
                return client.evaluate(broadcast[key], split)
            return client.evaluate(broadcast[key], split, limit=limit)

        evals = [score(k, self.p.select_on) for k in keys]
        if self.p.select_on == "val" and evals and evals[0].n == 0:
            evals = [score(k, "train") for k in keys]
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
        limit = self.p.select_examples
        evals = [clients.evaluate(broadcast[k], split, limit=limit) for k in keys]
        losses = np.stack([e.loss for e in evals])
        empty = evals[0].n == 0
        if split == "val" and empty.any():
            on_train = np.stack([clients.evaluate(broadcast[k], "train", limit=limit).loss for k in keys])
            losses[:, empty] = on_train[:, empty]
        pick = np.argmin(np.where(np.isnan(losses), np.inf, losses), axis=0)  # ties: lowest, as pick_cluster
        return PersonalKeys(keys=tuple(keys), which=pick.astype(np.int64))
