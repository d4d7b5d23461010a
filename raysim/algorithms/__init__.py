"""Algorithms: one module per paper, a small explicit registry (no Ray here).

``ALGORITHMS`` is the built-in table of ``raysim.plugins`` (kind ``algorithms``): a config's
``algorithm.name`` may also be an entry point of group ``raysim.algorithms`` or an import path
``package.module:Class`` (see ``raysim.plugins``); ``build_algorithm`` takes all three."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from raysim.algorithms.ascfl import ASCFL
from raysim.algorithms.base import (
    AlgoParams,
    Algorithm,
    ClientResult,
    ClientTask,
    LinearSum,
    RoundContext,
    RoundPlan,
    ServerContext,
    SetupContext,
    Traits,
)
from raysim.algorithms.cfl import CFL
from raysim.algorithms.dsac import DSAC
from raysim.algorithms.fedavg import Centralised, FedAvg, FedProx
from raysim.algorithms.fedbn import FedBN
from raysim.algorithms.fedrod import FedRoD
from raysim.algorithms.genetic_cfl import GeneticCFL
from raysim.algorithms.ifca import IFCA
from raysim.algorithms.local import LocalOnly
from raysim.algorithms.personal import FedPer
from raysim.algorithms.pfedht import PFedHN, PFedHT
from raysim.algorithms.pfedme import PFedMe
from raysim.algorithms.scaffold import Scaffold

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedProx,
        Scaffold,
        LocalOnly,
        Centralised,
        DSAC,
        IFCA,
        CFL,
        GeneticCFL,
        ASCFL,
        PFedHT,
        PFedHN,
        FedPer,
        PFedMe,
        FedRoD,
        FedBN,
    )
}

DEFAULT_ALGORITHM = FedAvg.name


def algorithm_class(name: str) -> type[Algorithm]:
    """The class ``name`` stands for: built-in, entry point or import path (``raysim.plugins``;
    ``PluginError``, a ValueError, naming the valid names otherwise)."""
    from raysim.plugins import resolve

    return resolve("algorithms", name)  # type: ignore[no-any-return]


def build_algorithm(name: str, params: dict[str, Any] | BaseModel | None = None) -> Algorithm:
    cls = algorithm_class(name)
    p = params if isinstance(params, BaseModel) else cls.params_model.model_validate(params or {})
    return cls(p)  # type: ignore[arg-type]


__all__ = [
    "ALGORITHMS",
    "ASCFL",
    "CFL",
    "IFCA",
    "DEFAULT_ALGORITHM",
    "GeneticCFL",
    "FedBN",
    "FedPer",
    "FedRoD",
    "PFedMe",
    "PFedHN",
    "PFedHT",
    "AlgoParams",
    "Algorithm",
    "ClientResult",
    "ClientTask",
    "LinearSum",
    "RoundContext",
    "RoundPlan",
    "ServerContext",
    "SetupContext",
    "Traits",
    "algorithm_class",
    "build_algorithm",
]
