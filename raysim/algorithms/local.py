"""Local-only reference point: every client trains its own model from the shared
initialisation and never shares it. Its personalised accuracy is the bar that federation
has to beat on strongly non-IID splits; it has no global model (global metrics are NaN)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from raysim.algorithms.base import (
    GLOBAL,
    AlgoParams,
    ClientBatch,
    ClientContext,
    ClientResult,
    ClientTask,
    Family,
    LinearSum,
    Metrics,
    PersonalKeys,
    ServerContext,
    Traits,
)
from raysim.algorithms.fedavg import FedAvg, GlobalState
from raysim.models.flat import Params


class LocalOnly(FedAvg):
    name: ClassVar[str] = "local"
    family: ClassVar[Family] = "personalised"
    test_accuracy_means: ClassVar[str] = (
        "NaN: local training has no shared model (read personal_accuracy_mean)"
    )
    params_model: ClassVar[type[AlgoParams]] = AlgoParams
    traits = Traits(client_state=True)  # each client's model lives on its home actor

    def client_update(self, task: ClientTask, params: Params, client: ClientContext) -> ClientResult:
        start = client.state.get("params", params)
        fit = client.fit(start, grad_hook=None, hparams=task.hparams)
        client.state["params"] = fit.params
        return ClientResult(
            client_id=task.client_id,
            num_examples=fit.num_examples,
            delta=None,
            metrics={"train_loss": fit.loss},
        )

    def aggregate(
        self, state: GlobalState, results: Sequence[ClientResult | LinearSum], server: ServerContext
    ) -> tuple[GlobalState, Metrics]:
        return state, {"aggregated_clients": float(len(results))}

    def server_model(self, state: GlobalState) -> None:
        return None  # no global model: the server's test metrics are NaN

    def eval_broadcast(self, state: GlobalState) -> Mapping[str, Params]:
        return {GLOBAL: state.params}  # the shared start, for clients that never trained

    def personal_params(self, broadcast: Mapping[str, np.ndarray], client: ClientContext) -> Params:
        return client.state.get("params", broadcast[GLOBAL])

    def personal_model_keys(self, broadcast: Mapping[str, np.ndarray], clients: ClientBatch) -> PersonalKeys:
        """The global model for the clients that never trained (no state); the others their own."""
        return PersonalKeys.shared(GLOBAL, clients.stateless)
