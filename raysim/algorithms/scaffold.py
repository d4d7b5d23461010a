"""SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning", Algorithm 1 with option II control update).

Client i keeps its control variate c_i as client state on the hosting actor. Local steps use
g + c - c_i; afterwards c_i+ = c_i - c + (x - y_i) / (K * eta_l), K the number of local steps.
Server: x <- x + eta_g * mean_i(y_i - x) (weighted by examples here), c <- c + (1/N) sum_i (c_i+ - c_i).
Both updates are sums, so the algorithm is linear and actors pre-sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from raysim.algorithms import hooks
from raysim.algorithms.aggregate import fedavg_step, scaffold_control_step
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
from raysim.algorithms.fedavg import FedAvgParams
from raysim.models.flat import Params


@dataclass(frozen=True, kw_only=True)
class ScaffoldState:
    params: np.ndarray
    control: np.ndarray
    cohort: int
    num_clients: int
    local: Mapping[str, float]


class Scaffold:
    name: ClassVar[str] = "scaffold"
    linear: ClassVar[bool] = True
    pooled: ClassVar[bool] = False
    global_model: ClassVar[bool] = True
    client_state: ClassVar[bool] = True  # c_i lives on the client's home actor
    params_model: ClassVar[type[AlgoParams]] = FedAvgParams

    def __init__(self, params: AlgoParams | None = None) -> None:
        self.p = params if params is not None else self.params_model()

    def init(self, params: Params, ctx: SetupContext) -> ScaffoldState:
        return ScaffoldState(
            params=params.astype(np.float32),
            control=np.zeros_like(params, dtype=np.float32),
            cohort=ctx.clients_per_round,
            num_clients=ctx.num_clients,
            local=dict(ctx.local),
        )

    def configure_round(
        self, state: ScaffoldState, round_idx: int, available: Sequence[int], rng: np.random.Generator
    ) -> list[ClientTask]:
        cohort = sample_cohort(available, state.cohort, rng)
        return [
            ClientTask(client_id=c, model_key="global", hparams=state.local, broadcast_keys=("control",))
            for c in cohort
        ]

    def client_update(self, task: ClientTask, params: Params, client: ClientContext) -> ClientResult:
        c = client.broadcast["control"]
        ci = client.state.get("control")
        if ci is None:
            ci = np.zeros_like(c)
        fit = client.fit(params, grad_hook=hooks.correction(c - ci), **task.hparams)
        lr = float(task.hparams["lr"])
        ci_new = (ci - c + (params - fit.params) / (max(fit.steps, 1) * lr)).astype(np.float32)
        client.state["control"] = ci_new
        return ClientResult(
            client_id=task.client_id,
            num_examples=fit.num_examples,
            delta=fit.params - params,
            metrics={"train_loss": fit.loss},
            extras={"delta_control": ci_new - ci},
        )

    def aggregate(
        self,
        state: ScaffoldState,
        round_idx: int,
        results: Sequence[ClientResult | LinearSum],
        rng: np.random.Generator,
    ) -> tuple[ScaffoldState, Metrics]:
        total = LinearSum.of(results)
        if total is None:
            return state, {"aggregated_clients": 0.0}
        params = fedavg_step(state.params, total, self.p.central_lr)  # type: ignore[attr-defined]
        control = scaffold_control_step(state.control, total.extras["delta_control"], state.num_clients)
        return replace(state, params=params, control=control), {
            "aggregated_clients": float(total.num_clients)
        }

    def models(self, state: ScaffoldState) -> Mapping[str, Params]:
        return {"global": state.params, "control": state.control}

    def personal_params(self, models: Mapping[str, Params], client: ClientContext) -> Params:
        return models["global"]
