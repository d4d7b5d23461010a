"""Model registry: small, explicit, fails loudly with the valid names.

Every builder takes ``input_shape`` ((C, H, W) for images, (D,) for vectors) and
``num_classes`` (plus the keyword parameters its optional ``params_model`` validates, from the
config's ``model:`` section) and returns a fresh ``torch.nn.Module``. ``MODELS`` is the built-in
table of ``raysim.plugins`` (kind ``models``); ``build_model`` also takes an entry point of group
``raysim.models`` or an import path ``package.module:builder``. Weights are initialised by
torch's defaults under whatever generator state the caller set (see
``raysim.models.flat.init_params`` for the seeded path).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from raysim.models.flat import ParamLayout
from raysim.models.vit import vit_tiny


def _require_image(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(
            f"model {name!r} needs image input (C, H, W), got input_shape={input_shape}; "
            "use model 'mlp' for vector data such as 'synthetic'"
        )
    c, h, w = input_shape
    return c, h, w


class MLPParams(BaseModel):
    """``model:`` keys of ``mlp``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    hidden: Annotated[int, Field(ge=1)] = 200  # units in each of the two hidden layers


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 200) -> nn.Module:
    """Two hidden layers of ``hidden`` units (the FedAvg paper's 2NN when hidden=200)."""
    d = 1
    for s in input_shape:
        d *= s
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(d, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def cnn_small(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """conv16 - conv32 - fc: 3x3 convolutions, each followed by ReLU and 2x2 max-pool."""
    c, h, w = _require_image("cnn-small", input_shape)
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (h // 4) * (w // 4), num_classes),
    )


def cnn_bn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """cnn-small with BatchNorm: conv16 - BN - ReLU - pool - conv32 - BN - ReLU - pool - fc (FedBN,
    Li et al. 2021, puts a BN layer after each convolution). The BN running statistics are module
    buffers, not parameters: only an algorithm that keeps them per client (``fedbn``) scores a
    client with its own statistics; others score with whatever the host's reused module holds."""
    c, h, w = _require_image("cnn-bn", input_shape)
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (h // 4) * (w // 4), num_classes),
    )


def cnn_mcmahan(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The CNN of McMahan et al. 2017: conv5x5(32) - pool - conv5x5(64) - pool - fc512 - fc."""
    c, h, w = _require_image("cnn-mcmahan", input_shape)
    return nn.Sequential(
        nn.Conv2d(c, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), 512),
        nn.ReLU(),
        nn.Linear(512, num_classes),
    )


def cnn_cifar(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The genetic-CFL notebook's CNN: 2x conv32, pool, 2x conv64, pool, 2x conv128, pool,
    dense128, dense. 550,570 parameters for 32x32x3 input and 10 classes."""
    c, h, w = _require_image("cnn-cifar", input_shape)
    layers: list[nn.Module] = []
    prev = c
    for width in (32, 64, 128):
        layers += [
            nn.Conv2d(prev, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        prev = width
    layers += [
        nn.Flatten(),
        nn.Linear(128 * (h // 8) * (w // 8), 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    ]
    return nn.Sequential(*layers)


mlp.params_model = MLPParams  # type: ignore[attr-defined]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn-small": cnn_small,
    "cnn-bn": cnn_bn,  # cnn-small with BatchNorm after each conv (FedBN)
    "cnn-mcmahan": cnn_mcmahan,
    "cnn-cifar": cnn_cifar,
    "vit-tiny": vit_tiny,  # raysim/models/vit.py: explicit Q/K/V projections (pFedHT, paper 003)
}


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    params: Mapping[str, Any] | BaseModel | None = None,
) -> nn.Module:
    """A fresh model ``name`` (built-in, entry point or import path: ``raysim.plugins``) with
    ``params`` (the ``model:`` section's other keys, validated by the builder's ``params_model``)."""
    from raysim.plugins import call_params, resolve, validate_params

    builder = resolve("models", name)
    kwargs = call_params(validate_params("models", name, builder, params))
    module = builder(tuple(input_shape), int(num_classes), **kwargs)
    if not isinstance(module, nn.Module):
        raise TypeError(f"model {name!r} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def model_structure(name: str, params: Mapping[str, Any] | None = None) -> tuple[ParamLayout, bool]:
    """A model's parameter layout (names, shapes, module kinds) and whether it has buffers (e.g.
    BatchNorm running statistics), for config-time checks. Names and module kinds do not depend on
    the input shape: the model is built for the first of :data:`PROBE_SHAPES` it accepts (a
    builder refuses a shape with ValueError)."""
    return _structure(name, json.dumps(dict(params or {}), sort_keys=True, default=str))


# 1x28x28 images, then 3x32x32 (a plug-in model made for colour images), then 60 features
PROBE_SHAPES: tuple[tuple[int, ...], ...] = ((1, 28, 28), (3, 32, 32), (60,))


@functools.cache
def _structure(name: str, params_json: str) -> tuple[ParamLayout, bool]:
    from raysim.plugins import PluginError

    params = json.loads(params_json)
    for shape in PROBE_SHAPES:
        try:
            module = build_model(name, shape, 10, params)
            break
        except PluginError:
            raise
        except ValueError:
            if shape == PROBE_SHAPES[-1]:
                raise
    return ParamLayout.of(module), any(True for _ in module.buffers())


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs for one example, by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, *input_shape))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return int(counter.get_total_flops())
