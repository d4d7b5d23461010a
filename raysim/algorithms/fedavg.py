"""FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", Algorithm 1), FedProx (Li et al. 2020, eq. 2: local objective
F_k(w) + mu/2 ||w - w^t||^2) and the Centralised reference point.

Server update: x <- x + eta_g * sum_k n_k (w_k - x) / sum_k n_k (eta_g = central_lr = 1 is
plain FedAvg). The update is linear in the client deltas, so client actors pre-sum them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import Field

from raysim.algorithms import hooks
from raysim.algorithms.aggregate import fedavg_step
from raysim.algorithms.base import (
    AlgoParams,
    ClientContext,
    ClientResult,
    ClientTask,
    LinearSum,
    Metrics,
    SetupContext,
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
    cohort: int
    local: Mapping[str, float]


class FedAvg:
    name: ClassVar[str] = "fedavg"
    linear: ClassVar[bool] = True
    pooled: ClassVar[bool] = False  # True: the runtime pools every shard into one client
    global_model: ClassVar[bool] = True
    client_state: ClassVar[bool] = False  # False: a client may train on any actor (the pool balances)
    params_model: ClassVar[type[AlgoParams]] = FedAvgParams

    def __init__(self, params: AlgoParams | None = None) -> None:
        self.p = params if params is not None else self.params_model()

    def init(self, params: Params, ctx: SetupContext) -> GlobalState:
        return GlobalState(
            params=params.astype(np.float32), cohort=ctx.clients_per_round, local=dict(ctx.local)
        )

    def configure_round(
        self, state: GlobalState, round_idx: int, available: Sequence[int], rng: np.random.Generator
    ) -> list[ClientTask]:
        cohort = sample_cohort(available, state.cohort, rng)
        return [ClientTask(client_id=c, model_key="global", hparams=state.local) for c in cohort]

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
        self,
        state: GlobalState,
        round_idx: int,
        results: Sequence[ClientResult | LinearSum],
        rng: np.random.Generator,
    ) -> tuple[GlobalState, Metrics]:
        total = LinearSum.of(results)
        new = fedavg_step(state.params, total, self.p.central_lr)  # type: ignore[attr-defined]
        return replace(state, params=new), {"aggregated_clients": float(total.num_clients if total else 0)}

    def models(self, state: GlobalState) -> Mapping[str, Params]:
        return {"global": state.params}

    def personal_params(self, models: Mapping[str, Params], client: ClientContext) -> Params:
        return models["global"]


class FedProx(FedAvg):
    name: ClassVar[str] = "fedprox"
    params_model: ClassVar[type[AlgoParams]] = FedProxParams

    def local_hook(self, task: ClientTask, params: Params, client: ClientContext) -> Any:
        mu = self.p.mu  # type: ignore[attr-defined]
        return hooks.proximal(params, mu) if mu > 0 else None


class Centralised(FedAvg):
    """Reference point: one pooled client holding every shard, trained for local.epochs per
    round; with central_lr = 1 the global model is exactly that client's SGD trajectory."""

    name: ClassVar[str] = "centralised"
    pooled: ClassVar[bool] = True
