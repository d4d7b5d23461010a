"""Gradient-inversion attacks on one shared gradient: DLG and iDLG.

- **DLG** (Zhu, Liu, Han, "Deep Leakage from Gradients", NeurIPS 2019): draw dummy data and dummy
  label logits, and optimise both so that the gradient of the loss at (dummy data,
  ``softmax(dummy logits)``) matches the observed gradient in squared L2 distance.
- **iDLG** (Zhao, Mopuri, Bilen, "iDLG: Improved Deep Leakage from Gradients", 2020): with
  cross-entropy and non-negative inputs to the last linear layer (ReLU features), the gradient row
  of the true class in the last layer's weight is the only one that is non-positive (its factor is
  ``softmax_i - 1 < 0``), so the label is read off the gradient analytically and only the data is
  optimised. For a batch of ``B > 1`` this module takes the ``B`` classes with the most negative row
  sums (a heuristic that assumes distinct labels in the batch; iDLG itself is stated for ``B = 1``).

The attacker knows the model (architecture and parameters) and the batch size, observes the shared
gradient, and does not know whether it was noised or transformed. Both attacks are deterministic
given ``seed`` (private generator for the dummy initialisation; CPU L-BFGS / Adam are deterministic).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from raysim.privacy.gradients import Grads, gradient_of


@dataclass(frozen=True, kw_only=True)
class AttackConfig:
    iterations: int = 300
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    lr: float = 1.0  # L-BFGS step (with strong-Wolfe line search); use ~0.1 for Adam

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.lr <= 0:
            raise ValueError(f"iterations must be >= 1 and lr > 0, got {self.iterations}, {self.lr}")
        if self.optimizer not in ("lbfgs", "adam"):
            raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {self.optimizer!r}")


@dataclass(frozen=True, kw_only=True)
class AttackResult:
    x: torch.Tensor  # reconstructed data, same shape as the victim batch (not clipped)
    labels: torch.Tensor  # (B,) int64 recovered labels
    loss: float  # best gradient-matching loss reached
    evaluations: int  # gradient-matching loss evaluations


def _matching_loss(dummy: Grads, target: Grads) -> torch.Tensor:
    return sum(((d - t) ** 2).sum() for d, t in zip(dummy, target, strict=True))  # type: ignore[return-value]


def _minimise(
    variables: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], cfg: AttackConfig
) -> tuple[list[torch.Tensor], float, int]:
    """Minimise ``loss_fn`` over ``variables``; returns the best iterate seen (NaN-safe)."""
    best = float("inf")
    best_vars = [v.detach().clone() for v in variables]
    count = 0

    def evaluate() -> torch.Tensor:
        nonlocal best, best_vars, count
        loss = loss_fn()
        count += 1
        value = float(loss.detach())
        if value == value and value < best:  # not NaN, and better
            best = value
            best_vars = [v.detach().clone() for v in variables]
        return loss

    if cfg.optimizer == "lbfgs":
        opt: torch.optim.Optimizer = torch.optim.LBFGS(
            variables,
            lr=cfg.lr,
            max_iter=cfg.iterations,
            history_size=100,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-12,
            tolerance_change=1e-16,
        )

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = evaluate()
            loss.backward()
            return loss

        opt.step(closure)  # type: ignore[arg-type]
    else:
        opt = torch.optim.Adam(variables, lr=cfg.lr)
        for _ in range(cfg.iterations):
            opt.zero_grad(set_to_none=True)
            loss = evaluate()
            if not torch.isfinite(loss):
                break
            loss.backward()
            opt.step()
    evaluate()  # the last iterate too
    return best_vars, best, count


def _last_linear_weight_index(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("iDLG needs a model whose last layer is nn.Linear")
    params = list(model.parameters())
    return next(i for i, p in enumerate(params) if p is linears[-1].weight)


def idlg_labels(model: nn.Module, target: Grads, batch_size: int) -> torch.Tensor:
    """iDLG's analytic label recovery from the last linear layer's weight gradient."""
    w = target[_last_linear_weight_index(model)]
    row_sums = w.detach().sum(dim=1)
    if batch_size == 1:
        return row_sums.argmin().view(1)
    return torch.argsort(row_sums)[:batch_size].sort().values


def dlg(
    model: nn.Module,
    target: Grads,
    shape: tuple[int, ...],
    num_classes: int,
    *,
    config: AttackConfig | None = None,
    seed: int = 0,
) -> AttackResult:
    """DLG: jointly optimise dummy data of ``shape`` ``(B, ...)`` and dummy label logits."""
    cfg = config or AttackConfig()
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.rand(shape, generator=gen).requires_grad_(True)
    logits = torch.randn((shape[0], num_classes), generator=gen).requires_grad_(True)
    target = [t.detach() for t in target]

    def loss_fn() -> torch.Tensor:
        g = gradient_of(model, x, torch.softmax(logits, dim=1), create_graph=True)
        return _matching_loss(g, target)

    (bx, bl), best, count = _minimise([x, logits], loss_fn, cfg)
    return AttackResult(x=bx, labels=bl.argmax(dim=1), loss=best, evaluations=count)


def idlg(
    model: nn.Module,
    target: Grads,
    shape: tuple[int, ...],
    num_classes: int,
    *,
    config: AttackConfig | None = None,
    seed: int = 0,
) -> AttackResult:
    """iDLG: labels from :func:`idlg_labels`, then optimise the dummy data only."""
    del num_classes  # the label comes from the gradient
    cfg = config or AttackConfig()
    labels = idlg_labels(model, target, shape[0])
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.rand(shape, generator=gen).requires_grad_(True)
    target = [t.detach() for t in target]

    def loss_fn() -> torch.Tensor:
        return _matching_loss(gradient_of(model, x, labels, create_graph=True), target)

    (bx,), best, count = _minimise([x], loss_fn, cfg)
    return AttackResult(x=bx, labels=labels, loss=best, evaluations=count)
