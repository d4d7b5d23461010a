"""A model plug-in: a callable ``(input_shape, num_classes, **params) -> torch.nn.Module``.

``params`` are the ``model:`` section's other keys, validated by the builder's optional
``params_model`` (a pydantic model; unknown keys are errors). raysim builds the module once per
actor with torch's default initialisation under the run's seed, and moves its parameters as one flat
float32 vector: any module of parameters and buffers will do.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class TinyCNNParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(8, ge=1)  # channels of the first convolution (the second has twice as many)


def tiny_cnn(input_shape: tuple[int, ...], num_classes: int, width: int = 8) -> nn.Module:
    """conv(width) - ReLU - pool - conv(2 width) - ReLU - pool - linear: 9,000 parameters on 28x28."""
    if len(input_shape) != 3:  # a ValueError: raysim then tries the model on vector input
        raise ValueError(f"tiny-cnn needs image input (C, H, W), got input_shape={tuple(input_shape)}")
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * (h // 4) * (w // 4), num_classes),
    )


tiny_cnn.params_model = TinyCNNParams  # type: ignore[attr-defined]
