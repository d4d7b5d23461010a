"""Gradient hooks that algorithms hand to ``ClientContext.fit``.

A hook is called after every backward pass with the flat parameter and flat gradient
tensors (one contiguous buffer each) and edits the gradient in place: one tensor op per
step, whatever the model's depth.
"""

from __future__ import annotations

import numpy as np
import torch

from raysim.algorithms.base import GradHook


class _Lazy:
    """Moves a numpy vector to the training device once, on first use.

    On Ray the vector is often a read-only view of the object store (the broadcast model a
    FedProx or DSAC client is pulled toward). ``torch.as_tensor`` would share that memory and
    warn, from every actor, that writing to it is undefined behaviour; a hook never writes to
    it, but the warning cannot be told from a real problem, so a read-only vector is copied,
    once per hook (per client update), never per step.
    """

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.tensor: torch.Tensor | None = None

    def on(self, like: torch.Tensor) -> torch.Tensor:
        if self.tensor is None or self.tensor.device != like.device:
            a = np.ascontiguousarray(self.array)
            if not a.flags.writeable:
                a = a.copy()
            self.tensor = torch.as_tensor(a, dtype=like.dtype).to(like.device)
        return self.tensor


def proximal(center: np.ndarray, mu: float) -> GradHook:
    """grad += mu * (w - w_center): the gradient of (mu/2)||w - w_center||^2 (FedProx eq. 2)."""
    c = _Lazy(center)

    def hook(w: torch.Tensor, g: torch.Tensor) -> None:
        g.add_(w - c.on(w), alpha=mu)

    return hook


def correction(offset: np.ndarray) -> GradHook:
    """grad += offset (SCAFFOLD's c - c_i drift correction)."""
    o = _Lazy(offset)

    def hook(w: torch.Tensor, g: torch.Tensor) -> None:
        g.add_(o.on(w))

    return hook


def chain(*hooks: GradHook | None) -> GradHook | None:
    live = [h for h in hooks if h is not None]
    if not live:
        return None
    if len(live) == 1:
        return live[0]

    def hook(w: torch.Tensor, g: torch.Tensor) -> None:
        for h in live:
            h(w, g)

    return hook


def masked(mask: np.ndarray) -> GradHook:
    """grad *= mask: only the coordinates where ``mask`` is true are trained (DSAC's sub-model
    training, eq. 1: a client updates only the sub-models it was assigned). Chain it last, so
    it also zeroes what earlier hooks (e.g. the proximal term) added outside the mask."""
    m = _Lazy(np.asarray(mask, dtype=np.float32))

    def hook(w: torch.Tensor, g: torch.Tensor) -> None:
        g.mul_(m.on(w))

    return hook
