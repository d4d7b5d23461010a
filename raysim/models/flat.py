"""Flat-parameter layout: a model's parameters as one float32 vector.

``FlatModel`` rebinds every parameter (and its gradient) of a module as a view into one
contiguous buffer, so that loading a vector, reading it back, and an SGD step are each a
single tensor operation, never a Python loop over parameters.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

Params = np.ndarray  # flat float32 vector


@dataclass(frozen=True, kw_only=True)
class ParamLayout:
    """Names, shapes and offsets of a module's parameters inside the flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]  # start of each parameter; offsets[i] + numel(shapes[i]) = end
    size: int
    # class name of each parameter's owning module ("Conv2d", "BatchNorm2d", ...); () when the
    # layout was written by hand rather than read from a module
    kinds: tuple[str, ...] = ()

    @classmethod
    def of(cls, module: nn.Module) -> ParamLayout:
        owner = {
            f"{mname}.{pname}" if mname else pname: type(m).__name__
            for mname, m in module.named_modules()
            for pname, _ in m.named_parameters(recurse=False)
        }
        names, shapes, offsets = [], [], []
        off = 0
        for name, p in module.named_parameters():
            names.append(name)
            shapes.append(tuple(p.shape))
            offsets.append(off)
            off += p.numel()
        return cls(
            names=tuple(names),
            shapes=tuple(shapes),
            offsets=tuple(offsets),
            size=off,
            kinds=tuple(owner[n] for n in names),
        )

    def kind_mask(self, kinds: tuple[type[nn.Module], ...]) -> np.ndarray:
        """True on the parameters owned by a module of one of ``kinds`` (e.g. BatchNorm layers).
        A hand-written layout without ``kinds`` cannot answer: that is an error, not "none"."""
        if len(self.kinds) != len(self.names):
            raise ValueError("this layout records no module kinds; build it with ParamLayout.of(module)")
        wanted = {k.__name__ for k in kinds}
        mask = np.zeros(self.size, dtype=bool)
        for i, kind in enumerate(self.kinds):
            if kind in wanted:
                mask[self.slice(i)] = True
        return mask

    def slice(self, i: int) -> builtins.slice:
        n = int(np.prod(self.shapes[i], dtype=np.int64))
        return slice(self.offsets[i], self.offsets[i] + n)

    def module_blocks(self) -> list[tuple[str, builtins.slice]]:
        """Parameters grouped by owning module (e.g. a layer's weight and bias), in order."""
        blocks: list[tuple[str, builtins.slice]] = []
        for i, name in enumerate(self.names):
            owner = name.rsplit(".", 1)[0] if "." in name else name
            s = self.slice(i)
            if blocks and blocks[-1][0] == owner:
                blocks[-1] = (owner, slice(blocks[-1][1].start, s.stop))
            else:
                blocks.append((owner, s))
        return blocks


class FlatModel:
    """A module whose parameters and gradients live in two flat float32 buffers."""

    def __init__(self, module: nn.Module, device: torch.device | str = "cpu") -> None:
        self.module = module.to(device)
        self.device = torch.device(device)
        self.layout = ParamLayout.of(self.module)
        self.flat = torch.zeros(self.layout.size, dtype=torch.float32, device=self.device)
        self.grad = torch.zeros_like(self.flat)
        with torch.no_grad():
            for i, p in enumerate(self.module.parameters()):
                s = self.layout.slice(i)
                self.flat[s].copy_(p.detach().reshape(-1))
                p.data = self.flat[s].view(self.layout.shapes[i])
                p.grad = self.grad[s].view(self.layout.shapes[i])
        # the module's buffers (BatchNorm running statistics) as built: what a client that has
        # never trained starts from. Buffers are NOT in the flat vector and persist in the module
        # across ``load`` calls, so a host that reuses one module for many clients must load each
        # client's buffers explicitly (``load_buffers``) when they matter.
        self.initial_buffers = self.read_buffers()

    def load(self, params: Params | torch.Tensor) -> None:
        src = (
            torch.from_numpy(np.array(params, dtype=np.float32, copy=not params.flags.writeable))
            if isinstance(params, np.ndarray)
            else params
        )
        if src.numel() != self.layout.size:
            raise ValueError(f"parameter vector has {src.numel()} values, model needs {self.layout.size}")
        with torch.no_grad():
            self.flat.copy_(src.reshape(-1), non_blocking=False)

    def read(self) -> Params:
        """A copy of the current parameters as a float32 numpy vector."""
        return self.flat.detach().to("cpu", copy=True).numpy()

    def read_buffers(self) -> dict[str, np.ndarray]:
        """A copy of every buffer of the module (e.g. BatchNorm running mean/var), by name."""
        return {n: b.detach().to("cpu", copy=True).numpy() for n, b in self.module.named_buffers()}

    def load_buffers(self, buffers: Mapping[str, np.ndarray]) -> None:
        """Copy ``buffers`` into the module's buffers: exactly the module's names and shapes
        (a missing one would silently keep another client's statistics)."""
        own = dict(self.module.named_buffers())
        if set(buffers) != set(own):
            raise ValueError(f"buffers {sorted(buffers)} do not match the model's buffers {sorted(own)}")
        with torch.no_grad():
            for name, b in own.items():
                src = np.asarray(buffers[name])
                if tuple(src.shape) != tuple(b.shape):
                    raise ValueError(
                        f"buffer {name!r} has shape {src.shape}, the model needs {tuple(b.shape)}"
                    )
                b.copy_(torch.as_tensor(src, dtype=b.dtype))

    def reset_buffers(self) -> None:
        """Every buffer back to its value when the module was built."""
        self.load_buffers(self.initial_buffers)

    def zero_grad(self) -> None:
        self.grad.zero_()

    def grads_are_views(self) -> bool:
        """True while autograd still accumulates into the flat gradient buffer."""
        ptrs = [p.grad.data_ptr() if p.grad is not None else -1 for p in self.module.parameters()]
        base = self.grad.data_ptr()
        esize = self.grad.element_size()
        return all(ptr == base + off * esize for ptr, off in zip(ptrs, self.layout.offsets, strict=True))


def init_params(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int,
    params: Mapping[str, Any] | None = None,
) -> Params:
    """Deterministic initial parameters for model ``name`` (with its ``model:`` ``params``) under ``seed``."""
    from raysim.models.registry import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build_model(name, input_shape, num_classes, params)
    return FlatModel(module).read()
