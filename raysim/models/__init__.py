"""Models: registry and flat-parameter layout (no Ray here)."""

from raysim.models.flat import FlatModel, ParamLayout, Params, init_params
from raysim.models.registry import MODELS, build_model, count_flops, count_params

__all__ = [
    "MODELS",
    "FlatModel",
    "ParamLayout",
    "Params",
    "build_model",
    "count_flops",
    "count_params",
    "init_params",
]
