"""FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", Algorithm 1), FedProx (Li et al. 2020, eq. 2: local objective
F_k(w) + mu/2 ||w - w^t||^2) and the Centralised reference point.

Server update: x <- x + eta_g * sum_k n_k (w_k - x) / sum_k n_k (eta_g = central_lr = 1 is
plain FedAvg). The update is linear in the client deltas, so client actors pre-sum them.
"""

from __future__ import annotations

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
from raysim.models.flat import Params


class FedAvgParams(AlgoParams):
    central_lr: Annotated[float, Field(gt=0)] = 1.0


class FedProxParams(FedAvgParams):
    mu: Annotated[float, Field(ge=0)] = 0.01


@dataclass(frozen=True, kw_only=True)
class GlobalState:
    params: np.ndarray


class FedAvg(Algorithm):
    name: ClassVar[str] = "fedavg"
    params_model: ClassVar[type[AlgoParams]] = FedAvgParams
    # no client state: a client may train on any actor (the pool balances each cohort)
    traits = Traits(linear=True)

    def init(self, params: Params, ctx: SetupContext) -> GlobalState:
        return GlobalState(params=params.astype(np.float32))

    def configure_round(self, state: GlobalState, rnd: RoundContext) -> tuple[GlobalState, RoundPlan]:
        cohort = sample_cohort(rnd.available, rnd.cohort_size, rnd.rng)
        tasks = [ClientTask(client_id=c, model_key=GLOBAL, hparams=rnd.hparams) for c in cohort]
        return state, RoundPlan(tasks=tasks, broadcast={GLOBAL: state.params})

    def local_hook(self, task: ClientTask, params: Params, client: ClientContext) -> Any:
        return None

    def client_update(self, task: ClientTask, params: Params, client: ClientContext) -> ClientResult:
        fit = client.fit(params, grad_hook=self.local_hook(task, params, client), **task.hparams)
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
        return replace(state, params=new), {"aggregated_clients": float(total.num_clients if total else 0)}

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
    traits = Traits(linear=True, pooled=True)
