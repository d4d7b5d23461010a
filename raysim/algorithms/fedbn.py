"""FedBN (Li, Jiang, Zhang, Kamp & Dou 2021, "FedBN: Federated Learning on Non-IID Features via
Local Batch Normalization", ICLR; Algorithm 1), a baseline of pFedHT's comparison (paper 003,
Tables 1 and 2).

FedAvg in which every BatchNorm layer stays local: each client keeps its BN affine parameters
(gamma, beta) and its BN running statistics (mean, variance) to itself; everything else is
averaged by examples. Use it with a model that has BatchNorm layers (``model.name: cnn-bn``).

* The BN parameters are located by module type (``ParamLayout.kind_mask``); their entries of the
  global vector keep the shared initialisation forever (a client that never trained starts from
  and is scored with them); clients upload the update of the other entries only (FedPer's
  machinery, ``raysim.algorithms.personal``, with the BN parameters as the personal part).
* The running statistics are module buffers, not parameters, and the host reuses ONE torch module
  for all its clients: left alone they would carry one client's statistics into the next
  client's training and scoring. Each client therefore keeps its own buffers in its state and
  hands them to every ``fit`` and to its personalised evaluation (``personal_buffers``); a client
  that never trained uses the model's initial buffers (mean 0, variance 1).

Simplification: none in the algorithm; FedBN's paper averages with uniform weights over a fixed
set of clients, here by examples over the round's cohort (FedAvg's rule). There is no single
global model (BN layers differ per client): the server's test metrics are NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar

import numpy as np
from pydantic import Field
from torch import nn

from raysim.algorithms.base import (
    AlgoParams,
    ClientContext,
    ClientResult,
    ClientTask,
    SetupContext,
    Traits,
)
from raysim.algorithms.personal import PERSONAL_RANGES, FedPer, SplitState, mask_to_ranges, ranges_to_mask
from raysim.models.flat import ParamLayout, Params

BATCHNORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class FedBNParams(AlgoParams):
    central_lr: Annotated[float, Field(gt=0)] = 1.0


def batchnorm_mask(layout: ParamLayout) -> np.ndarray:
    """True on the parameters of every BatchNorm layer."""
    return layout.kind_mask(BATCHNORMS)


class FedBN(FedPer):
    name: ClassVar[str] = "fedbn"
    test_accuracy_means: ClassVar[str] = (
        "NaN: every client keeps its own BatchNorm layers, so there is no single model "
        "(read personal_accuracy_mean)"
    )
    params_model: ClassVar[type[AlgoParams]] = FedBNParams
    traits = Traits(linear=True, client_state=True, client_buffers=True)

    def check_model(self, layout: ParamLayout) -> None:
        self._mask(layout)

    def _mask(self, layout: ParamLayout) -> np.ndarray:
        mask = batchnorm_mask(layout)
        if not mask.any():
            raise ValueError(
                "fedbn: the model has no BatchNorm layers, so FedBN would be FedAvg; "
                "use a model with BatchNorm (model.name: cnn-bn)"
            )
        return mask

    def init(self, params: Params, ctx: SetupContext) -> SplitState:
        return SplitState(params=params.astype(np.float32), ranges=mask_to_ranges(self._mask(ctx.layout)))

    def client_update(self, task: ClientTask, params: Params, client: ClientContext) -> ClientResult:
        mask = ranges_to_mask(client.broadcast[PERSONAL_RANGES], params.size)
        start = self.personal_params(client.broadcast, client)
        fit = client.fit(start, grad_hook=None, buffers=self.personal_buffers(client), hparams=task.hparams)
        client.state["personal"] = fit.params[mask]  # committed only if this update is accepted
        client.state["buffers"] = fit.buffers
        return ClientResult(
            client_id=task.client_id,
            num_examples=fit.num_examples,
            delta=(fit.params - start)[~mask],  # BN layers never leave the client
            metrics={"train_loss": fit.loss},
        )

    def personal_buffers(self, client: ClientContext) -> Mapping[str, np.ndarray]:
        """The client's own running statistics ({}: the model's initial ones, before it trains)."""
        own = client.state.get("buffers")
        return {} if own is None else own
