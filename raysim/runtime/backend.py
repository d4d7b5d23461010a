"""The backend protocol both backends implement, and the rule that picks one.

A backend starts the client hosts and the server somewhere (this process, or Ray actors) and
relays the driver's calls to the server. The core knows only the serial backend; the Ray backend
lives beside the actor shells in ``actors/`` (the core never imports Ray) and is handed in by the
entry points (``raysim run``, ``raysim.api``, the Tune trainable) as a factory by name:
``Experiment(cfg, backends={"ray": actors.backend.RayBackend})`` (``raysim.api.BACKENDS``). A run for
Ray with nothing handed in is refused when the experiment is built, naming what to pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from raysim.algorithms.base import Algorithm, LocalHParams
from raysim.data.federation import ShardTable, TableView
from raysim.runtime.host import HostSpec
from raysim.runtime.server import RoundReport


@dataclass(frozen=True, kw_only=True)
class NodeShare:
    """What one node of the cluster offers actors (Ray's totals for it): an actor runs on one node,
    so a placement that fits the cluster's totals may still fit no node."""

    name: str  # for messages: the node's address and the start of its id
    cpus: float
    gpus: float = 0.0
    memory_mb: float | None = None  # Ray's "memory" resource of the node; None: unknown


@dataclass(frozen=True, kw_only=True)
class Share:
    """The resources a run may use: the whole cluster by default, a Tune trial's placement group
    inside a sweep. Client actors are sized to it, never to the cluster beyond it."""

    cpus: float
    gpus: float = 0.0
    memory_mb: float | None = None  # for actors' private memory (Ray's "memory" resource); None: unknown
    # each node's capacities, when known (the whole cluster); empty: only the totals are known (a
    # Tune trial's share), and only they are checked
    nodes: tuple[NodeShare, ...] = ()


@dataclass(frozen=True, kw_only=True)
class StartSpec:
    """Everything a backend needs to start one experiment's hosts and server."""

    algorithm: Algorithm
    dataset: Any
    # each host's clients: a TableView of ``clients`` (what the runtime passes: one table for all
    # hosts, each its client ids), a ShardTable, or ClientShards
    host_shards: Sequence[TableView | ShardTable | Sequence[Any]]
    host_spec: HostSpec
    num_cpus: float  # per client actor
    num_gpus: float
    server_cpus: float
    server_gpus: float
    max_restarts: int
    actor_memory_mb: float  # private memory of one client actor (the server costs as much); 0: unchecked
    server_kwargs: Mapping[str, Any]
    roam: bool  # clients without state train on any host (each cohort balanced over the hosts)
    reproducible: bool = False  # start the hosts and the server in reproducible mode (raysim.reproducible)
    # what an autoscaling Ray cluster can grow to (resources.cluster_max_*; None: what it has) and how
    # long to wait for the autoscaler (actors.autoscale); the serial backend ignores them
    cluster_max_cpus: float | None = None
    cluster_max_gpus: float | None = None
    cluster_max_memory_gb: float | None = None
    scale_wait_s: float = 600.0
    # every client of the run as one table (the federation's), for roaming clients; None: the
    # hosts' tables joined
    clients: ShardTable | None = None

    def host_tables(self) -> list[ShardTable | TableView]:
        """Each host's clients as flat arrays (a ``TableView`` or a ``ShardTable``)."""
        return [s if isinstance(s, ShardTable | TableView) else ShardTable(list(s)) for s in self.host_shards]

    def everyone(self, tables: Sequence[ShardTable | TableView]) -> ShardTable:
        """Every client of the run in one table (the visitors a roaming host may train)."""
        if self.clients is not None:
            return self.clients
        if any(isinstance(t, TableView) for t in tables):
            raise ValueError("StartSpec: hosts given as TableViews need the table they view (clients=)")
        return ShardTable.concat([t for t in tables if isinstance(t, ShardTable)])


class ServerLost(RuntimeError):
    """The server actor died or became unreachable (its node went away, it was killed, it ran out
    of memory): the run can continue only from a checkpoint, with a fresh server
    (``Backend.restart_server``), at most ``resources.max_server_restarts`` times."""


class Backend(Protocol):
    """What the experiment drives. Optional, looked up by name: ``nodes()`` (the cluster's nodes,
    for environment.json) and ``store_clients(table) -> table`` (a backend that keeps the run's
    table in shared memory stores it before ``start`` and returns its copy, which the driver keeps
    instead of its own: ``actors.backend.RayBackend``)."""

    def share(self) -> Share:
        """What this backend can use (the cluster, or the share it was given)."""
        ...

    def start(self, spec: StartSpec) -> None: ...
    def run_round(self, t: int, hparams: LocalHParams) -> RoundReport: ...
    def checkpoint(self) -> dict[str, Any]: ...
    def restore(self, ckpt: Mapping[str, Any]) -> None: ...
    def restore_clients(self, states: Mapping[int, dict[str, Any]]) -> None:
        """Give these clients (those of restarted hosts) their state from a checkpoint."""
        ...

    def converged(self) -> bool: ...
    def system_stats(self) -> list[dict[str, Any]]: ...
    def eval_broadcast(self) -> dict[str, np.ndarray]: ...
    def restart_server(self) -> None:
        """Replace a lost server by a fresh one (its initial state; restore a checkpoint next)."""
        ...

    def shutdown(self) -> None: ...


BACKENDS = ("serial", "ray")

# (address, share) -> a backend: what an entry point hands the runtime for resources.backend
BackendFactory = Callable[[str | None, Share | None], Backend]


def _serial(address: str | None, share: Share | None) -> Backend:
    from raysim.runtime.serial import SerialBackend

    return SerialBackend(share)


def backend_factory(name: str, backends: Mapping[str, BackendFactory] | None = None) -> BackendFactory:
    """The factory for ``resources.backend=name``: the one handed in under that name (``backends``),
    else the core's own serial backend. There is no other: the core never looks for the Ray backend
    itself, so a caller that builds an ``Experiment`` for Ray hands it in, as the entry points do.
    ValueError (the caller's code, not the config, needs fixing) naming what to pass."""
    if backends and name in backends:
        return backends[name]
    if name == "serial":
        return _serial
    handed = ", ".join(sorted(backends)) if backends else "none"
    raise ValueError(
        f"resources.backend={name!r}: no backend of that name was handed in (handed in: {handed}; the core "
        f"has only 'serial'). Pass Experiment(cfg, backends=raysim.api.BACKENDS), or build the experiment "
        f"with raysim.api.experiment(...) as `raysim run` does; valid names: {', '.join(BACKENDS)}"
    )


def make_backend(
    name: str,
    address: str | None = None,
    share: Share | None = None,
    backends: Mapping[str, BackendFactory] | None = None,
) -> Backend:
    """The backend for ``resources.backend=name`` (``backend_factory``'s rule), made for ``address``
    and ``share``."""
    return backend_factory(name, backends)(address, share)
