"""Shared-gradient helpers: the loss a client differentiates, its gradient, and a DP mechanism.

Everything here is a pure function of torch tensors and a small ``nn.Module``; no parameter of the
module is modified. Targets are either hard labels (int64, shape ``(B,)``) or per-sample class
distributions (float, shape ``(B, C)``), so the same code serves the plain gradient, DLG's soft
dummy labels and pFedHT's "virtual" labels.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

Grads = list[torch.Tensor]  # one tensor per model parameter, in ``model.parameters()`` order


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch-mean cross-entropy against hard labels ``(B,)`` or class distributions ``(B, C)``."""
    logp = torch.log_softmax(logits, dim=-1)
    if target.dtype in (torch.int64, torch.int32):
        return -logp.gather(1, target.long().view(-1, 1)).mean()
    return -(target * logp).sum(dim=-1).mean()


def gradient_of(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, create_graph: bool = False
) -> Grads:
    """The gradient of :func:`soft_cross_entropy` w.r.t. every parameter of ``model`` at ``(x, target)``.

    With ``create_graph=True`` the result stays differentiable w.r.t. ``x`` and ``target`` (used by the
    transformation and by the attacks, which optimise through it).
    """
    params = [p for p in model.parameters()]
    loss = soft_cross_entropy(model(x), target)
    return list(torch.autograd.grad(loss, params, create_graph=create_graph))


def flatten(grads: Grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def grad_norm(grads: Grads) -> torch.Tensor:
    return flatten(grads).norm()


def grad_distance(a: Grads, b: Grads) -> torch.Tensor:
    """L2 distance between two gradients (all parameters concatenated)."""
    return torch.sqrt(sum(((ga - gb) ** 2).sum() for ga, gb in zip(a, b, strict=True)))  # type: ignore[arg-type]


def per_example_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Grads:
    """Per-example gradients, each tensor shaped ``(B, *param.shape)`` (torch.func, one pass)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, ti: torch.Tensor) -> torch.Tensor:
        return soft_cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), ti.unsqueeze(0))

    per = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, target)
    return [per[k] for k in params]


def dp_gradient(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    clip: float,
    sigma: float,
    generator: torch.Generator,
) -> Grads:
    """The Gaussian mechanism of DP-SGD (Abadi et al. 2016) on one batch.

    Every example's gradient is clipped to L2 norm ``clip``; the clipped gradients are summed,
    Gaussian noise of standard deviation ``sigma * clip`` is added to every coordinate, and the sum
    is divided by the batch size. ``sigma`` is the noise multiplier; ``sigma = 0`` is clipping only.
    """
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    per = per_example_gradients(model, x, target)
    b = x.shape[0]
    norms = torch.sqrt(sum((g.reshape(b, -1) ** 2).sum(dim=1) for g in per))  # type: ignore[arg-type]
    scale = torch.clamp(clip / (norms + 1e-12), max=1.0)
    out: Grads = []
    for g in per:
        summed = (g * scale.view(-1, *([1] * (g.dim() - 1)))).sum(dim=0)
        noise = torch.randn(summed.shape, generator=generator, dtype=summed.dtype) * (sigma * clip)
        out.append((summed + noise) / b)
    return out
