"""FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", Algorithm 1), FedProx (Li et al. 2020, eq. 2: local objective
F_k(w) + mu/2 ||w - w^t||^2) and the Centralised reference point.

Server update: x <- x + eta_g * sum_k n_k (w_k - x) / sum_k n_k (eta_g = central_lr = 1 is
plain FedAvg). The update is linear in the client deltas, so client actors pre-sum them.

``init_from: pretrained`` starts from the model pre-trained on the server's public split exactly as
DSAC's M_base (``raysim.algorithms.pretrain``), so a comparison with DSAC measures the federated
algorithm rather than the extra public data; the base model's test accuracy is logged every round
as ``base_test_accuracy``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import Field

from raysim.algorithms import hooks
from raysim.algorithms.aggregate import fedavg_step
from raysim.algorithms.base import (
    GLOBAL,
    AlgoParams,
    Algorithm,
    ClientContext,
    ClientResult,
    ClientTask,
    LinearSum,
    Metrics,
    RoundContext,
    RoundPlan,
    ServerContext,
    SetupContext,
    Traits,
    sample_cohort,
)
from raysim.algorithms.pretrain import PretrainParams, base_metrics, pretrain
from raysim.models.flat import Params


class FedAvgParams(PretrainParams):
    central_lr: Annotated[float, Field(gt=0)] = 1.0


class FedProxParams(FedAvgParams):
    mu: Annotated[float, Field(ge=0)] = 0.01


@dataclass(frozen=True, kw_only=True)
class GlobalState:
    params: np.ndarray
    base_accuracy: float = math.nan  # the pre-trained start's test accuracy (NaN: random start)
    base_loss: float = math.nan


def initial_params(algo: Algorithm, params: Params, ctx: SetupContext) -> tuple[np.ndarray, float, float]:
    """The start of a baseline: the seeded random weights, or those pre-trained on the public split
    (``init_from: pretrained``, the same M_base as DSAC's). Returns (params, base acc, base loss)."""
    p = algo.p
    if not _pretrained(algo):
        return params.astype(np.float32), math.nan, math.nan
    base = pretrain(
        params,
        ctx,
        epochs=p.pretrain_epochs,
        lr=p.pretrain_lr,
        who=f"algorithm.init_from: pretrained ({algo.name})",
        switch="set algorithm.init_from: random",
    )
    return base.params, base.test_accuracy, base.test_loss


def _pretrained(algo: Algorithm) -> bool:
    return isinstance(algo.p, PretrainParams) and algo.p.init_from == "pretrained"


def with_public_split(algo: Algorithm) -> Traits:
    """The class's traits, plus the public split when the algorithm pre-trains on it."""
    return replace(
        type(algo).traits, public_split=_pretrained(algo), public_split_off="algorithm.init_from: random"
    )


class FedAvg(Algorithm):
    name: ClassVar[str] = "fedavg"
    params_model: ClassVar[type[AlgoParams]] = FedAvgParams
    # no client state: a client may train on any actor (the pool balances each cohort)
    traits = Traits(linear=True)

    def __init__(self, params: AlgoParams | None = None) -> None:
        super().__init__(params)
        self.traits = with_public_split(self)

    def init(self, params: Params, ctx: SetupContext) -> GlobalState:
        start, acc, loss = initial_params(self, params, ctx)
        return GlobalState(params=start, base_accuracy=acc, base_loss=loss)

    def configure_round(self, state: GlobalState, rnd: RoundContext) -> tuple[GlobalState, RoundPlan]:
        cohort = sample_cohort(rnd.available, rnd.cohort_size, rnd.rng)
        tasks = [ClientTask(client_id=c, model_key=GLOBAL, hparams=rnd.hparams) for c in cohort]
        return state, RoundPlan(tasks=tasks, broadcast={GLOBAL: state.params})

    def local_hook(self, task: ClientTask, params: Params, client: ClientContext) -> Any:
        return None

    def client_update(self, task: ClientTask, params: Params, client: ClientContext) -> ClientResult:
        fit = client.fit(params, grad_hook=self.local_hook(task, params, client), hparams=task.hparams)
        return ClientResult(
            client_id=task.client_id,
            num_examples=fit.num_examples,
            delta=fit.params - params,
            metrics={"train_loss": fit.loss},
        )

    def aggregate(
        self, state: GlobalState, results: Sequence[ClientResult | LinearSum], server: ServerContext
    ) -> tuple[GlobalState, Metrics]:
        total = LinearSum.of(results)
        new = fedavg_step(state.params, total, self.p.central_lr)
        m = {"aggregated_clients": float(total.num_clients if total else 0)}
        return replace(state, params=new), {**m, **base_metrics(state.base_accuracy, state.base_loss)}

    def server_model(self, state: GlobalState) -> Params | None:
        return state.params


class FedProx(FedAvg):
    name: ClassVar[str] = "fedprox"
    params_model: ClassVar[type[AlgoParams]] = FedProxParams

    def local_hook(self, task: ClientTask, params: Params, client: ClientContext) -> Any:
        mu = self.p.mu
        return hooks.proximal(params, mu) if mu > 0 else None


class Centralised(FedAvg):
    """Reference point: one pooled client holding every shard, trained for local.epochs per
    round; with central_lr = 1 the global model is exactly that client's SGD trajectory."""

    name: ClassVar[str] = "centralised"
    test_accuracy_means: ClassVar[str] = (
        "the one model, trained on every client's data pooled, on the global test set"
    )
    traits = Traits(linear=True, pooled=True)
