"""SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning", Algorithm 1 with option II control update).

Client i keeps its control variate c_i as client state on the hosting actor. Local steps use
g + c - c_i; afterwards c_i+ = c_i - c + (x - y_i) / (K * eta_l), K the number of local steps.
Server: x <- x + eta_g * mean_i(y_i - x) (weighted by examples here), c <- c + (1/N) sum_i (c_i+ - c_i).
Both updates are sums, so the algorithm is linear and actors pre-sum.
``init_from: pretrained`` starts from DSAC's pre-trained base model (see ``fedavg.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from raysim.algorithms import hooks
from raysim.algorithms.aggregate import fedavg_step, scaffold_control_step
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
from raysim.algorithms.fedavg import FedAvgParams, initial_params, with_public_split
from raysim.algorithms.pretrain import base_metrics
from raysim.models.flat import Params

CONTROL = "control"  # broadcast key of the server control variate c


@dataclass(frozen=True, kw_only=True)
class ScaffoldState:
    params: np.ndarray
    control: np.ndarray
    num_clients: int
    base_accuracy: float = math.nan  # the pre-trained start's test accuracy (NaN: random start)
    base_loss: float = math.nan


class Scaffold(Algorithm):
    name: ClassVar[str] = "scaffold"
    params_model: ClassVar[type[AlgoParams]] = FedAvgParams
    traits = Traits(linear=True, client_state=True)  # c_i lives on the client's home actor

    def __init__(self, params: AlgoParams | None = None) -> None:
        super().__init__(params)
        self.traits = with_public_split(self)

    def init(self, params: Params, ctx: SetupContext) -> ScaffoldState:
        start, acc, loss = initial_params(self, params, ctx)
        return ScaffoldState(
            params=start,
            control=np.zeros_like(params, dtype=np.float32),
            num_clients=ctx.num_clients,
            base_accuracy=acc,
            base_loss=loss,
        )

    def configure_round(self, state: ScaffoldState, rnd: RoundContext) -> tuple[ScaffoldState, RoundPlan]:
        cohort = sample_cohort(rnd.available, rnd.cohort_size, rnd.rng)
        tasks = [
            ClientTask(client_id=c, model_key=GLOBAL, hparams=rnd.hparams, broadcast_keys=(CONTROL,))
            for c in cohort
        ]
        return state, RoundPlan(tasks=tasks, broadcast={GLOBAL: state.params, CONTROL: state.control})

    def client_update(self, task: ClientTask, params: Params, client: ClientContext) -> ClientResult:
        c = client.broadcast[CONTROL]
        ci = client.state.get("control")
        if ci is None:
            ci = np.zeros_like(c)
        fit = client.fit(params, grad_hook=hooks.correction(c - ci), hparams=task.hparams)
        lr = task.hparams.lr
        ci_new = (ci - c + (params - fit.params) / (max(fit.steps, 1) * lr)).astype(np.float32)
        client.state["control"] = ci_new  # committed by the host only if this update is accepted
        return ClientResult(
            client_id=task.client_id,
            num_examples=fit.num_examples,
            delta=fit.params - params,
            metrics={"train_loss": fit.loss},
            extras={"delta_control": ci_new - ci},
        )

    def aggregate(
        self, state: ScaffoldState, results: Sequence[ClientResult | LinearSum], server: ServerContext
    ) -> tuple[ScaffoldState, Metrics]:
        total = LinearSum.of(results)
        base = base_metrics(state.base_accuracy, state.base_loss)
        if total is None:
            return state, {"aggregated_clients": 0.0, **base}
        params = fedavg_step(state.params, total, self.p.central_lr)
        control = scaffold_control_step(state.control, total.extras["delta_control"], state.num_clients)
        return replace(state, params=params, control=control), {
            "aggregated_clients": float(total.num_clients),
            **base,
        }

    def server_model(self, state: ScaffoldState) -> Params:
        return state.params

    def eval_broadcast(self, state: ScaffoldState) -> Mapping[str, Params]:
        return {GLOBAL: state.params}
