"""Pre-training on the server's public split: one helper for DSAC (eq. 9) and the baselines.

DSAC (paper 000 in docs/papers.md, eq. 9 and Algorithm 1 line 1) starts federated
training from a base model M_base "pre-trained on a publicly available dataset ... that contains no
overlapping samples". In raysim that dataset is the public split (``data.public_fraction`` > 0): a
slice of the training set that no client holds. So that a comparison with FedAvg, FedProx or SCAFFOLD
measures the federated algorithm and not the extra data, those baselines can start from the same base
model (``algorithm.init_from: pretrained``): the same initial weights (the run's seed), the same
public split, the same epochs, learning rate, batch size and momentum, hence bit-identical M_base.

The base model's accuracy on the global test set is measured once, here, so every table can report
where round 1 started from (the runtime evaluates only after rounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from raysim.algorithms.base import AlgoParams, SetupContext
from raysim.models.flat import Params


class PretrainParams(AlgoParams):
    """The baselines' start (``algorithm:`` keys of fedavg, fedprox, scaffold, centralised)."""

    # "random": the run's seeded initial weights; "pretrained": those weights after
    # ``pretrain_epochs`` on the public split (needs data.public_fraction > 0), as DSAC's M_base
    init_from: Literal["random", "pretrained"] = "random"
    # the same defaults as DSAC's pre-training, so both start from the same base model
    pretrain_epochs: Annotated[int, Field(ge=1)] = 5
    pretrain_lr: Annotated[float, Field(gt=0)] | None = None  # None: local.lr


@dataclass(frozen=True, kw_only=True)
class Pretrained:
    params: np.ndarray  # M_base (float32)
    test_accuracy: float  # M_base on the global test set (NaN when the server holds none)
    test_loss: float


def public_split_error(who: str, switch: str) -> str:
    return (
        f"{who} needs a public split to pre-train on (DSAC eq. 9): set data.public_fraction > 0 "
        f"(e.g. 0.05), or {switch}"
    )


def pretrain(
    params: Params, ctx: SetupContext, *, epochs: int, lr: float | None, who: str, switch: str
) -> Pretrained:
    """Fit ``params`` for ``epochs`` on the public split with the config's local batch size and
    momentum, at ``lr`` (None: local.lr); return M_base and its test accuracy.

    Deterministic: the server seeds the fit with the run's seed, so two algorithms of the same seed
    get bit-identical base models. ``who``/``switch`` name the option in the error raised without a
    public split (the config check normally catches that first, through ``Traits.public_split``).
    """
    if ctx.data is None or "public" not in ctx.data.splits():
        raise ValueError(public_split_error(who, switch))
    # plain SGD (no weight decay, cross-entropy) whatever local.optimizer/loss say, so every
    # algorithm of a seed gets the same M_base
    hp = replace(
        ctx.local,
        epochs=epochs,
        lr=lr or ctx.local.lr,
        weight_decay=0.0,
        optimizer="sgd",
        loss="cross_entropy",
    )
    fit = ctx.data.fit(params.astype(np.float32), "public", hparams=hp)
    base = np.asarray(fit.params, dtype=np.float32)
    acc = loss = math.nan
    if "test" in ctx.data.splits():  # reporting only: nothing is decided on the test set
        ev = ctx.data.evaluate(base, "test")
        acc, loss = float(ev.accuracy), float(ev.loss)
    return Pretrained(params=base, test_accuracy=acc, test_loss=loss)


def base_metrics(accuracy: float, loss: float) -> dict[str, float]:
    """The base model's round-0 scores as round metrics (empty when there is no base model)."""
    if not math.isfinite(accuracy):
        return {}
    return {"base_test_accuracy": float(accuracy), "base_test_loss": float(loss)}
