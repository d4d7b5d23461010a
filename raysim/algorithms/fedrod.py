"""FedRoD (Chen & Chao 2022, "On Bridging Generic and Personalized Federated Learning for Image
Classification", ICLR), a baseline of pFedHT's comparison (paper 003, Tables 1 and 2).

The model is a feature extractor (body) and two heads on its features: a generic head, shared
and averaged with the body by FedAvg, and a personal head that never leaves the client. The
generic model (body + generic head) is trained with the balanced-softmax loss (the paper's BSM,
Sec. 4 / eq. 5: cross-entropy on logits + log p_i(y), p_i the client's label distribution), so
each client optimises a class-balanced risk and the average stays generic. The personalised
prediction is the SUM of both heads' logits, and the personal head is trained with plain
cross-entropy on that sum, the body and the generic head frozen (the paper's ERM on the
personal branch, with the features detached).

How it runs through the existing trainer (no new training code):
* the generic head is the model's own last Linear layer (``head_mask``: every registry model
  ends in one). Balanced softmax is CE(W f + b + log p, y): training the vector whose head bias
  is b + log p IS training b under BSM, so the client trains from that shifted start and uploads
  the plain delta (the shift cancels). A gradient hook removes weight decay's pull on the shift.
* two linear heads on the same features sum to ONE linear head: logits_G + logits_P =
  (W_G + W_P) f + (b_G + b_P). So the personalised model is the shared vector with W_P added to
  its head entries, scored by the ordinary evaluator, and the personal head is trained by fitting
  that vector with every gradient outside the head zeroed (W_G is constant, so the head's
  gradient is W_P's); W_P = trained head - W_G. Weight decay acts on W_P only.

Choices and simplifications, stated:
* the generic model and the personal head are trained one after the other each round (the generic
  fit, then ``personal_epochs`` on the updated body) rather than interleaved batch by batch; the
  personal fit still runs the body's backward pass (its gradient is then zeroed): wasted compute,
  not a different result.
* the personal head starts at zero, so a client's personalised model is the generic one until it
  first trains (the paper initialises it randomly).
* p_i counts the client's training labels; a class it lacks gets p = 1e-8 (log p ~ -18.4) rather
  than -inf, which leaves its logit out of the softmax to float precision.
* ``generic_loss: cross_entropy`` turns BSM off (FedRoD's ablation with the ERM generic loss).
The server's test metrics score the generic model; personalised evaluation adds each client's head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from raysim.algorithms.aggregate import fedavg_step
from raysim.algorithms.base import (
    GLOBAL,
    AlgoParams,
    Algorithm,
    ClientBatch,
    ClientContext,
    ClientResult,
    ClientTask,
    Family,
    GradHook,
    LinearSum,
    Metrics,
    PersonalKeys,
    RoundContext,
    RoundPlan,
    ServerContext,
    SetupContext,
    Traits,
    sample_cohort,
)
from raysim.algorithms.personal import head_mask
from raysim.models.flat import ParamLayout, Params

HEAD = "fedrod_head"  # broadcast key: int64 [head_start, head_stop, bias_start, bias_stop]
PRIOR_FLOOR = 1e-8  # p_i(y) of a class the client does not hold


class FedRoDParams(AlgoParams):
    # the generic model's loss: "balanced" softmax (the paper's BSM) or plain "cross_entropy"
    generic_loss: Literal["balanced", "cross_entropy"] = "balanced"
    personal_epochs: Annotated[int, Field(ge=1)] = 1  # passes over the data training the personal head
    personal_lr: Annotated[float, Field(gt=0)] | None = None  # None: local.lr
    central_lr: Annotated[float, Field(gt=0)] = 1.0


def head_slices(layout: ParamLayout) -> np.ndarray:
    """[head_start, head_stop, bias_start, bias_stop] of the model's last module, which must be a
    layer with a weight and a bias (the classification head)."""
    mask = head_mask(layout)
    where = np.flatnonzero(mask)
    owner = layout.module_blocks()[-1][0]
    bias = [i for i, n in enumerate(layout.names) if n == f"{owner}.bias"]
    weight = [i for i, n in enumerate(layout.names) if n == f"{owner}.weight"]
    if not bias or not weight:
        raise ValueError(
            f"fedrod needs a model whose last layer is a Linear head with a bias; its last module "
            f"{owner!r} has parameters {[n for n in layout.names if n.startswith(owner + '.')]}"
        )
    b = layout.slice(bias[0])
    return np.array([where[0], where[-1] + 1, b.start, b.stop], dtype=np.int64)


def log_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """log p_i(y): the client's label frequencies, absent classes floored at ``PRIOR_FLOOR``."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]
    p = counts / max(int(counts.sum()), 1)
    return np.log(np.maximum(p, PRIOR_FLOOR)).astype(np.float32)


def shift_decay(bias: slice, shift: np.ndarray, weight_decay: float) -> GradHook:
    """grad[bias] -= wd * shift: with the trainer's decay (grad += wd * w) the bias trained as
    b + shift decays as b alone."""
    s = torch.as_tensor(shift * weight_decay, dtype=torch.float32)

    def hook(w: torch.Tensor, g: torch.Tensor) -> None:
        g[bias].sub_(s.to(g.device))

    return hook


def personal_head_only(head: slice, generic_head: np.ndarray, weight_decay: float) -> GradHook:
    """Zero every gradient outside the head; add wd * (head - W_G) = wd * W_P inside it."""
    wg = torch.as_tensor(np.array(generic_head, dtype=np.float32))

    def hook(w: torch.Tensor, g: torch.Tensor) -> None:
        g[: head.start].zero_()
        g[head.stop :].zero_()
        if weight_decay:
            g[head].add_(w[head] - wg.to(w.device), alpha=weight_decay)

    return hook


@dataclass(frozen=True, kw_only=True)
class FedRoDState:
    params: np.ndarray  # body + generic head
    head: np.ndarray  # HEAD


class FedRoD(Algorithm):
    name: ClassVar[str] = "fedrod"
    family: ClassVar[Family] = "personalised"
    test_accuracy_means: ClassVar[str] = (
        "the generic model (shared body and generic head) on the global test set; the personalised "
        "heads are scored in personal_accuracy_mean"
    )
    params_model: ClassVar[type[AlgoParams]] = FedRoDParams
    # the generic model's update is a sum (actors pre-sum it); personal heads live on the home actor
    traits = Traits(linear=True, client_state=True)

    # -- server ----------------------------------------------------------------------------
    def init(self, params: Params, ctx: SetupContext) -> FedRoDState:
        return FedRoDState(params=params.astype(np.float32), head=head_slices(ctx.layout))

    def configure_round(self, state: FedRoDState, rnd: RoundContext) -> tuple[FedRoDState, RoundPlan]:
        cohort = sample_cohort(rnd.available, rnd.cohort_size, rnd.rng)
        tasks = [
            ClientTask(client_id=c, model_key=GLOBAL, hparams=rnd.hparams, broadcast_keys=(HEAD,))
            for c in cohort
        ]
        return state, RoundPlan(tasks=tasks, broadcast=self.eval_broadcast(state))

    def aggregate(
        self, state: FedRoDState, results: Sequence[ClientResult | LinearSum], server: ServerContext
    ) -> tuple[FedRoDState, Metrics]:
        total = LinearSum.of(results)
        new = fedavg_step(state.params, total, self.p.central_lr)
        return replace(state, params=new), {"aggregated_clients": float(total.num_clients if total else 0)}

    def server_model(self, state: FedRoDState) -> Params:
        return state.params  # the generic model

    def eval_broadcast(self, state: FedRoDState) -> Mapping[str, np.ndarray]:
        return {GLOBAL: state.params, HEAD: state.head}

    # -- client ----------------------------------------------------------------------------
    def client_update(self, task: ClientTask, params: Params, client: ClientContext) -> ClientResult:
        h0, h1, b0, b1 = (int(v) for v in client.broadcast[HEAD])
        head, bias = slice(h0, h1), slice(b0, b1)
        hp = task.hparams
        wd = hp.weight_decay
        # 1. the generic model (body + generic head) under balanced softmax
        start = np.array(params, dtype=np.float32)
        hook = None
        if self.p.generic_loss == "balanced":
            if hp.loss != "cross_entropy":
                raise ValueError(
                    f"fedrod: generic_loss 'balanced' is a softmax cross-entropy; local.loss is "
                    f"{hp.loss!r} (set local.loss: cross_entropy or algorithm.generic_loss: cross_entropy)"
                )
            shift = self._log_prior(client, params, b1 - b0)
            start[bias] += shift
            hook = shift_decay(bias, shift, wd) if wd else None
        fit = client.fit(start, grad_hook=hook, hparams=hp)
        delta = fit.params - start
        generic = (params + delta).astype(np.float32)
        # 2. the personal head on the updated body's features, body and generic head frozen
        own = client.state.get("personal_head", np.zeros(h1 - h0, dtype=np.float32))
        pstart = generic.copy()
        pstart[head] += own
        phook = personal_head_only(head, generic[head], wd)
        php = replace(
            hp,
            epochs=self.p.personal_epochs,
            weight_decay=0.0,
            lr=hp.lr if self.p.personal_lr is None else self.p.personal_lr,
        )
        pfit = client.fit(pstart, grad_hook=phook, hparams=php)
        client.state["personal_head"] = (pfit.params[head] - generic[head]).astype(np.float32)
        return ClientResult(
            client_id=task.client_id,
            num_examples=fit.num_examples,
            delta=delta,  # body + generic head: the personal head never leaves
            metrics={"train_loss": fit.loss, "personal_train_loss": pfit.loss},
        )

    def _log_prior(self, client: ClientContext, params: Params, num_classes: int) -> np.ndarray:
        """The client's log label distribution, counted once (a forward pass over its training
        split gives the labels) and kept in its state."""
        cached = client.state.get("log_prior")
        if cached is None:
            cached = log_prior(client.evaluate(params, split="train").labels, num_classes)
            client.state["log_prior"] = cached
        return np.asarray(cached, dtype=np.float32)

    def personal_params(self, broadcast: Mapping[str, np.ndarray], client: ClientContext) -> Params:
        """The generic model with the client's personal head added to its head: the logits are
        generic + personal (the generic model itself before the client first trains)."""
        own = client.state.get("personal_head")
        if own is None:
            return broadcast[GLOBAL]
        h0, h1 = (int(v) for v in broadcast[HEAD][:2])
        out = np.array(broadcast[GLOBAL], dtype=np.float32)
        out[h0:h1] += own
        return out

    def personal_model_keys(self, broadcast: Mapping[str, np.ndarray], clients: ClientBatch) -> PersonalKeys:
        """The global model for the clients that never trained (no state); the others their own."""
        return PersonalKeys.shared(GLOBAL, clients.stateless)
