"""pFedHT's client-side transformation of data and labels (paper 003, Section 3.2, Algorithm 1).

What the paper states
---------------------
A client replaces its batch ``(X, x)`` (data, labels) by "virtual" data and labels ``(X', x')``,
both initialised from ``U(0, 1)`` (Algorithm 1, lines 1-3), by minimising eq. (8)::

    ReLU(h - ||X' - X||_2)                                   (1)  keep X' at least h away from X
  + |x'_min - x'_i|                                          (2)  make the true class i the least
                                                                  likely entry of the virtual label
  + ReLU(||gradient(X', x') - gradient(X, x)||_2 - eps)      (7)  keep the "virtual" gradient within
                                                                  eps of the real one

where ``gradient(X, x) = dF(theta, X, x) / dtheta`` is the gradient of the training loss at the
current model (line 5) and ``gradient(X', x')`` the "virtual" gradient (line 8). A constant ``C``
ends the conversion early when the virtual gradient tends to 0 (text under eq. 3). Eq. (4)-(6)
bound ``||X' - X||`` from below through the first linear layer (``grad w = X grad b``); they are a
guarantee, not part of the objective, and :func:`eq6_lower_bound` evaluates them as a diagnostic.

How the ambiguous parts are read here (each one a knob of :class:`TransformConfig`)
-----------------------------------------------------------------------------------
- **Gradient distance: difference (eq. 8) or ratio (Algorithm 1, line 11).** Line 11 writes
  ``|gradient(X', x') / gradient(X, x) - 1|_2``; an element-wise ratio is undefined wherever the real
  gradient is 0 (most ReLU units), so it cannot be meant literally. Its normalised reading,
  ``||g' - g|| / ||g||``, equals eq. (8) with ``eps_abs = eps * ||g||`` because ``g`` is fixed during
  the optimisation. ``relative=True`` (default) uses that scale-free form, ``relative=False`` the
  absolute eq. (8); either way the constraint checked is the one stated by ``epsilon``.
- **What the virtual label is.** ``x'`` is a real vector per sample (``U(0, 1)`` init); the loss
  ``F(theta, X', x')`` needs a class distribution, so the soft label is ``softmax(x')`` (as DLG does
  with its dummy label). Eq. (3) prints ``|x'_min - x'|`` without the index; eq. (2) and the text
  ("find the true label i ... so that x'_min is as close to x'_i as possible") give ``x'_i``.
- **h.** The text calls ``h`` "the upper limit of the distance", but ``ReLU(h - ||X' - X||)`` is zero
  exactly when the distance is *at least* ``h``: the math makes ``h`` a lower bound, and that is
  what is implemented. The distance is taken per sample (every sample at least ``h`` from its
  original), in the units of the data (pixels in ``[0, 1]`` here).
- **The loop "for i = 1 to N" with N = clients.** Each client runs the conversion on its own data;
  the loop here is the optimiser's ``steps`` (Adam, ``lr``). Unit weights as printed are the
  default; ``grad_weight`` / ``label_weight`` expose the trade-off.
- **C.** Read as: stop when ``||gradient(X', x')|| < vanish_tol`` (the virtual gradient vanished).
  The run also stops as soon as every term of eq. (8) is zero (all three constraints hold).
- **Valid data.** ``X'`` starts in ``U(0, 1)``; with ``clamp`` (default ``(0, 1)``) it is projected
  back to that range after each step, so the transformed data stays a valid image. The paper says
  nothing either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from raysim.privacy.gradients import Grads, grad_distance, grad_norm, gradient_of


@dataclass(frozen=True, kw_only=True)
class TransformConfig:
    h: float = 2.0  # lower bound on the per-sample L2 distance ||X'_k - X_k|| (eq. 1)
    epsilon: float = 0.5  # bound on the gradient distance (eq. 7), relative to ||g|| when `relative`
    relative: bool = True
    steps: int = 300
    lr: float = 0.05
    grad_weight: float = 1.0
    label_weight: float = 1.0
    clamp: tuple[float, float] | None = (0.0, 1.0)
    vanish_tol: float = 1e-8  # the paper's C
    stop_when_satisfied: bool = True

    def __post_init__(self) -> None:
        if self.h < 0 or self.epsilon < 0:
            raise ValueError(f"h and epsilon must be >= 0, got h={self.h}, epsilon={self.epsilon}")
        if self.steps < 0 or self.lr <= 0:
            raise ValueError(f"steps must be >= 0 and lr > 0, got steps={self.steps}, lr={self.lr}")
        if self.grad_weight < 0 or self.label_weight < 0:
            raise ValueError("grad_weight and label_weight must be >= 0")


@dataclass(frozen=True, kw_only=True)
class TransformResult:
    x: torch.Tensor  # X', the transformed data, same shape as X
    label_logits: torch.Tensor  # x', (B, C)
    soft_labels: torch.Tensor  # softmax(x'): the targets the client trains on
    gradient: Grads  # the "virtual" gradient gradient(X', x') (Algorithm 1's "associated gradients")
    data_distance: torch.Tensor  # (B,) ||X'_k - X_k||_2
    grad_distance: float  # ||g' - g|| (divided by ||g|| when config.relative)
    label_gap: torch.Tensor  # (B,) x'_i - x'_min >= 0; 0 when the true class is the least likely
    objective: float  # eq. (8) at the returned point
    steps_run: int
    stop_reason: str  # "satisfied", "vanished" or "steps"
    data_ok: bool
    label_ok: bool
    grad_ok: bool

    @property
    def satisfied(self) -> bool:
        return self.data_ok and self.label_ok and self.grad_ok


def _terms(
    model: nn.Module,
    x_new: torch.Tensor,
    logits_new: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    g: Grads,
    g_norm: torch.Tensor,
    cfg: TransformConfig,
    *,
    create_graph: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Grads]:
    b = x.shape[0]
    dist = (x_new - x).reshape(b, -1).norm(dim=1)
    data_term = torch.relu(cfg.h - dist).sum()
    gap = logits_new.gather(1, y.view(-1, 1)).squeeze(1) - logits_new.min(dim=1).values
    label_term = gap.sum()
    g_new = gradient_of(model, x_new, torch.softmax(logits_new, dim=1), create_graph=create_graph)
    gd = grad_distance(g_new, g)
    if cfg.relative:
        gd = gd / g_norm
    grad_term = torch.relu(gd - cfg.epsilon)
    return data_term, label_term, grad_term, dist, gap, gd, g_new


def transform(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    config: TransformConfig | None = None,
    seed: int = 0,
) -> TransformResult:
    """Transform the batch ``(x, y)`` (hard labels ``(B,)``) against ``model`` by minimising eq. (8).

    Deterministic given ``seed`` (the ``U(0, 1)`` initialisation is drawn from a private generator;
    the global torch RNG is not touched). ``model``'s parameters are not changed.
    """
    cfg = config or TransformConfig()
    if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x):
        raise ValueError("y must be int64 hard labels of shape (B,) matching x")
    gen = torch.Generator().manual_seed(int(seed))
    x = x.detach()
    g = [t.detach() for t in gradient_of(model, x, y)]
    g_norm = grad_norm(g).clamp_min(1e-12)
    x_new = torch.rand(x.shape, generator=gen, dtype=x.dtype)  # Algorithm 1, line 2
    logits_new = torch.rand((x.shape[0], num_classes), generator=gen, dtype=x.dtype)  # line 3
    if cfg.clamp is not None:
        lo, hi = cfg.clamp
        x_new = x_new * (hi - lo) + lo
    x_new.requires_grad_(True)
    logits_new.requires_grad_(True)
    opt = torch.optim.Adam([x_new, logits_new], lr=cfg.lr)
    reason = "steps"
    steps_run = 0
    for _ in range(cfg.steps):
        data_t, label_t, grad_t, _, _, _, g_new = _terms(
            model, x_new, logits_new, x, y, g, g_norm, cfg, create_graph=True
        )
        if (
            cfg.stop_when_satisfied
            and data_t.item() == 0.0
            and label_t.item() == 0.0
            and grad_t.item() == 0.0
        ):
            reason = "satisfied"
            break
        if grad_norm([t.detach() for t in g_new]).item() < cfg.vanish_tol:
            reason = "vanished"
            break
        loss = data_t + cfg.label_weight * label_t + cfg.grad_weight * grad_t
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps_run += 1
        if cfg.clamp is not None:
            with torch.no_grad():
                x_new.clamp_(*cfg.clamp)
    x_out = x_new.detach().clone()
    logits_out = logits_new.detach().clone()
    data_t, label_t, grad_t, dist, gap, gd, g_new = _terms(
        model, x_out, logits_out, x, y, g, g_norm, cfg, create_graph=False
    )
    return TransformResult(
        x=x_out,
        label_logits=logits_out,
        soft_labels=torch.softmax(logits_out, dim=1),
        gradient=[t.detach() for t in g_new],
        data_distance=dist.detach(),
        grad_distance=float(gd),
        label_gap=gap.detach(),
        objective=float(data_t + cfg.label_weight * label_t + cfg.grad_weight * grad_t),
        steps_run=steps_run,
        stop_reason=reason,
        data_ok=bool((dist >= cfg.h).all()),
        label_ok=bool((gap <= 0).all()),
        grad_ok=float(gd) <= cfg.epsilon,
    )


def eq6_lower_bound(model: nn.Module, g: Grads, g_new: Grads) -> float | None:
    """The right-hand side of eq. (6) for the model's first layer, if that layer is ``nn.Linear``.

    ``2 (||dw' - dw|| - ||db' - db||) / (2M + ||db' - db||)`` with ``M = max(||db||, ||db'||)`` (the
    paper: "an upper bound on the norm of the gradient w.r.t. the bias"). Eq. (4)-(5) (``dw = X db``)
    hold exactly for one sample; for a batch they hold per sample, so the bound is indicative only.
    ``None`` when the first parametrised module is not linear (e.g. a convolution).
    """
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
    if not isinstance(first, nn.Linear) or first.bias is None:
        return None
    params = list(model.parameters())
    iw = next(i for i, p in enumerate(params) if p is first.weight)
    ib = next(i for i, p in enumerate(params) if p is first.bias)
    dw = float((g_new[iw] - g[iw]).norm())
    db = float((g_new[ib] - g[ib]).norm())
    m = max(float(g[ib].norm()), float(g_new[ib].norm()))
    denom = 2 * m + db
    return 2 * (dw - db) / denom if denom > 0 else None
