"""Partition schemes by name: the built-in table of ``raysim.plugins`` (kind ``partitions``) and
the call of a partition plug-in.

``build_federation`` (``raysim.data.federation``) runs every step around the partition; this module
is the step itself. The built-in label schemes (``partition_pool``) take their knobs from the
config's ``data:`` fields (:class:`SchemeKnobs`); ``rotation``, ``label-permutation`` and
``natural`` need more than labels (groups, the dataset's own clients), so ``build_federation``
implements them and their entries here refuse to run alone. ``data.partition`` may also be an
entry point of group ``raysim.partitions`` or an import path ``package.module:function``, called as
``function(labels, num_clients, rng, params)`` (:func:`plugin_partition`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from raysim.data import partition as P

SCHEMES: tuple[str, ...] = (
    "iid",
    "dirichlet",
    "pathological",
    "quantity",
    "dirichlet-quantity",
    "rotation",
    "label-permutation",
    "contiguous",
    "natural",
    "sampled",
)
GROUP_SCHEMES = ("rotation", "label-permutation")


class SchemeKnobs(BaseModel):
    """The knobs of the built-in label schemes (in a config: ``data.alpha``, ``data.sigma``, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    alpha: Annotated[float, Field(gt=0)] = 0.5
    classes_per_client: Annotated[int, Field(ge=1)] = 2
    sigma: Annotated[float, Field(ge=0)] = 1.0
    examples_per_client: Annotated[int, Field(ge=1)] = 50
    min_size: Annotated[int, Field(ge=1)] = P.DEFAULT_MIN_SIZE


def partition_pool(
    scheme: str, y: np.ndarray, num_clients: int, rng: np.random.Generator, k: SchemeKnobs
) -> list[np.ndarray]:
    """Built-in label scheme ``scheme``: each client's positions into ``y``."""
    if scheme == "iid":
        return P.iid(y, num_clients, rng, min_size=k.min_size)
    if scheme == "dirichlet":
        return P.dirichlet(y, num_clients, k.alpha, rng, k.min_size)
    if scheme == "pathological":
        return P.pathological(y, num_clients, k.classes_per_client, rng, min_size=k.min_size)
    if scheme == "quantity":
        return P.quantity_skew(y, num_clients, rng, k.sigma, min_size=k.min_size)
    if scheme == "dirichlet-quantity":
        return P.dirichlet_quantity(y, num_clients, k.alpha, rng, k.sigma, min_size=k.min_size)
    if scheme == "sampled":
        return P.sampled(len(y), num_clients, k.examples_per_client, rng)
    if scheme == "contiguous":
        return P.contiguous(len(y), num_clients, rng, min_size=k.min_size)
    raise ValueError(
        f"partition {scheme!r} is not a labels -> clients function: build_federation implements it "
        "(it needs the dataset: groups or the dataset's own clients)"
    )


def _builtin_partition(scheme: str) -> Callable[..., list[np.ndarray]]:
    """A built-in scheme in the shape of a partition plug-in (``raysim.plugins``)."""

    def partition(
        labels: np.ndarray, num_clients: int, rng: np.random.Generator, params: SchemeKnobs | None = None
    ) -> list[np.ndarray]:
        return partition_pool(scheme, np.asarray(labels), num_clients, rng, params or SchemeKnobs())

    partition.__name__ = partition.__qualname__ = f"partition_{scheme.replace('-', '_')}"
    partition.params_model = SchemeKnobs  # type: ignore[attr-defined]
    return partition


# the built-in table of raysim.plugins (kind ``partitions``); data.partition may also be an entry
# point of group ``raysim.partitions`` or an import path ``package.module:function``
PARTITIONS: dict[str, Callable[..., list[np.ndarray]]] = {s: _builtin_partition(s) for s in SCHEMES}


def plugin_partition(
    name: str,
    y: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    params: Mapping[str, Any] | BaseModel | None,
) -> list[np.ndarray]:
    """A partition plug-in's clients, checked: one int array per client of distinct positions into
    ``y`` (what the built-ins guarantee, so the rest of the federation is built the same way)."""
    from raysim.plugins import resolve, validate_params

    fn = resolve("partitions", name)
    labels = y.copy()
    labels.setflags(write=False)  # the pool's labels are the plug-in's to read, not to edit
    parts = fn(labels, num_clients, rng, validate_params("partitions", name, fn, params))
    if not isinstance(parts, Sequence) or len(parts) != num_clients:
        got = len(parts) if isinstance(parts, Sequence) else type(parts).__name__
        raise ValueError(f"partition {name!r} must return a list of {num_clients} index arrays, got {got}")
    out = []
    for k, part in enumerate(parts):
        a = np.asarray(part)
        if a.ndim != 1 or (len(a) and not np.issubdtype(a.dtype, np.integer)):
            raise ValueError(
                f"partition {name!r}: client {k}'s positions must be a 1-d integer array, got {a.dtype} {a.shape}"
            )
        if len(a) and (a.min() < 0 or a.max() >= len(y)):
            raise ValueError(
                f"partition {name!r}: client {k} has positions outside 0..{len(y) - 1} "
                f"(the labels it was given), min {a.min()}, max {a.max()}"
            )
        if len(np.unique(a)) != len(a):
            raise ValueError(f"partition {name!r}: client {k} holds a position more than once")
        out.append(a.astype(np.int64, copy=False))
    return out
