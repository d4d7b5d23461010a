"""pFedMe (Dinh, Tran & Nguyen 2020, "Personalized Federated Learning with Moreau Envelopes",
NeurIPS; Algorithm 1), a baseline of pFedHT's comparison (paper 003, Tables 1 and 2).

Each client i keeps a local copy w_i of the global model and a personalised model theta_i, the
Moreau-envelope solution (eq. 3)

    theta_i(w_i) = argmin_theta  f_i(theta) + lambda/2 ||theta - w_i||^2,

solved approximately by K gradient steps at the personal learning rate (``personal_lr``).
After every K inner steps the local copy moves toward it (Algorithm 1, line 8):

    w_i <- w_i - eta * lambda * (w_i - theta_i)            eta = local.lr

The server averages the local copies with the parameter beta (line 12):

    w <- (1 - beta) w + beta * sum_i n_i w_i / sum_i n_i   (= FedAvg's step with central_lr = beta)

How this maps onto ``ClientContext.fit`` (one call per round, honest about what it runs):
``theta`` is the trained vector; a stateful gradient hook adds lambda (theta - w_i) to every
minibatch gradient (the proximal term, FedProx's hook with a moving centre) and, before every
(K+1)-th step, moves its centre w_i toward the current theta by the update above; after the fit the
last (possibly partial) group of inner steps gets its w_i update too. So one epoch of B minibatches
runs ceil(B / K) local rounds (pFedMe's R) of K inner steps.

Simplifications, stated:
* pFedMe's K inner steps all use ONE minibatch D (they minimise f~_i(theta; D) + prox); here each
  inner step takes the next minibatch of the epoch's shuffle (the trainer cannot repeat a batch), so
  the inner problem is solved by stochastic steps on f_i itself; the number of local rounds follows
  from local.epochs and local.batch_size instead of being a knob of its own.
* theta restarts from the broadcast w at the start of every round (as the authors' code does when
  it sets the model to the global one) and is warm-started across the round's local rounds.
* the server average is weighted by examples (the authors' code; the paper's eq. writes a uniform
  mean over the sampled clients), which keeps the update linear (pre-summed on the actors).
* momentum, weight decay and the optimizer come from ``local.*`` and act on the inner steps.

The personalised model a client is scored with is its theta_i from the last round it trained
(the global model before it first trains); the server's test metrics score the global w.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Annotated, ClassVar

import numpy as np
import torch
from pydantic import Field, model_validator

from raysim.algorithms.aggregate import fedavg_step
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


class PFedMeParams(AlgoParams):
    # lambda: the strength of the Moreau envelope's proximal term (15: the paper's MNIST setting)
    lambda_: Annotated[float, Field(gt=0)] = 15.0
    inner_steps: Annotated[int, Field(ge=1)] = 5  # K: inner steps on theta per update of w_i
    beta: Annotated[float, Field(gt=0, le=2)] = 1.0  # the server's step toward the clients' mean
    personal_lr: Annotated[float, Field(gt=0)] = 0.05  # the inner steps' learning rate

    @model_validator(mode="after")
    def _stable_inner_steps(self) -> PFedMeParams:
        if self.personal_lr * self.lambda_ >= 2:
            raise ValueError(
                f"pfedme: personal_lr * lambda_ = {self.personal_lr * self.lambda_:g} >= 2 makes the "
                "proximal inner steps diverge; lower algorithm.personal_lr or algorithm.lambda_"
            )
        return self


class MoreauSteps:
    """The gradient hook of one client's round: grad += lambda (theta - w), and w <- w - eta lambda
    (w - theta) once every K steps (before the step that starts the next group of K)."""

    def __init__(self, start: np.ndarray, *, lam: float, eta: float, inner_steps: int) -> None:
        self.start = np.array(start, dtype=np.float32)  # a private copy: w moves in place
        self.lam, self.eta, self.k = lam, eta, inner_steps
        self.w: torch.Tensor | None = None
        self.pending = 0  # inner steps since w last moved
        self.updates = 0  # how many times w moved (pFedMe's local rounds)

    def __call__(self, theta: torch.Tensor, g: torch.Tensor) -> None:
        if self.w is None or self.w.device != theta.device:
            self.w = torch.as_tensor(self.start, dtype=theta.dtype).to(theta.device).clone()
        if self.pending == self.k:
            self.w.add_(self.w - theta, alpha=-self.eta * self.lam)
            self.pending = 0
            self.updates += 1
        g.add_(theta - self.w, alpha=self.lam)
        self.pending += 1

    def finish(self, theta: np.ndarray) -> np.ndarray:
        """w after the fit: the last group of inner steps (full or not) moves it once more."""
        w = self.start if self.w is None else self.w.detach().to("cpu").numpy().astype(np.float32)
        if self.pending:
            w = (w - self.eta * self.lam * (w - theta)).astype(np.float32)
            self.pending = 0
            self.updates += 1
        return w


class PFedMe(FedAvg):
    name: ClassVar[str] = "pfedme"
    family: ClassVar[Family] = "personalised"
    test_accuracy_means: ClassVar[str] = (
        "the global model w on the global test set; the personalised models theta_i are scored in "
        "personal_accuracy_mean"
    )
    params_model: ClassVar[type[AlgoParams]] = PFedMeParams
    # the local copies' deltas are pre-summed; theta_i lives on the client's home actor
    traits = Traits(linear=True, client_state=True)

    def client_update(self, task: ClientTask, params: Params, client: ClientContext) -> ClientResult:
        eta = task.hparams.lr
        if eta * self.p.lambda_ >= 2:
            raise ValueError(
                f"pfedme: local.lr (eta) * lambda_ = {eta * self.p.lambda_:g} >= 2 overshoots theta in "
                "the local update w <- w - eta lambda (w - theta); lower local.lr or algorithm.lambda_"
            )
        hook = MoreauSteps(params, lam=self.p.lambda_, eta=eta, inner_steps=self.p.inner_steps)
        fit = client.fit(params, grad_hook=hook, hparams=replace(task.hparams, lr=self.p.personal_lr))
        w = hook.finish(fit.params)
        client.state["theta"] = fit.params  # committed only if this update is accepted
        return ClientResult(
            client_id=task.client_id,
            num_examples=fit.num_examples,
            delta=w - params,
            metrics={"train_loss": fit.loss, "local_rounds": float(hook.updates)},
        )

    def aggregate(
        self, state: GlobalState, results: Sequence[ClientResult | LinearSum], server: ServerContext
    ) -> tuple[GlobalState, Metrics]:
        total = LinearSum.of(results)
        new = fedavg_step(state.params, total, self.p.beta)
        return replace(state, params=new), {"aggregated_clients": float(total.num_clients if total else 0)}

    def personal_params(self, broadcast: Mapping[str, np.ndarray], client: ClientContext) -> Params:
        """theta_i from the client's last round; the global model before it first trains."""
        theta = client.state.get("theta")
        return broadcast[GLOBAL] if theta is None else theta

    def personal_model_keys(self, broadcast: Mapping[str, np.ndarray], clients: ClientBatch) -> PersonalKeys:
        """The global model for the clients that never trained (no state); the others their own."""
        return PersonalKeys.shared(GLOBAL, clients.stateless)
