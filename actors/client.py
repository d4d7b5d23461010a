"""ClientActor: a thin Ray shell over ``raysim.runtime.host.ClientHost``."""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import ray
import torch

from raysim.algorithms.base import ClientTask, LinearSum
from raysim.data.federation import ShardTable, TableView
from raysim.runtime.host import ClientHost, HostSpec
from raysim.runtime.pool import HostReply, PersonalColumns


def gpu_memory_cap(gpu_share: float, cuda_available: bool) -> float | None:
    """The fraction of its GPU's memory a client actor may allocate: its Ray GPU share when that
    is a fraction of one device and CUDA is there (Ray only schedules fractions; it does not stop an
    actor from filling the device), None otherwise (a whole GPU, no GPU, or no CUDA)."""
    if not cuda_available or not 0 < gpu_share < 1:
        return None
    return float(gpu_share)


def _cancelled() -> bool:
    """True once the server cancelled this call (the round deadline passed)."""
    return bool(ray.get_runtime_context().is_canceled())


class ClientActorImpl:
    def __init__(
        self,
        host_id: int,
        algorithm: Any,
        dataset: Any,
        shards: Sequence[Any] | ShardTable,
        spec: HostSpec,
        visitors: ShardTable | None = None,
        home: np.ndarray | None = None,
    ) -> None:
        """``home``: this actor's client ids when ``shards`` is the run's whole table (its own
        clients are then a ``TableView`` of it); None when ``shards`` holds exactly its own."""
        # a new one every time Ray (re)creates this actor: a restarted actor has lost its clients' state
        self.incarnation = uuid.uuid4().hex
        self._host: ClientHost | None = None
        # An exception of the constructor is kept and raised by the first call (``ping``), as itself:
        # Ray would turn it into an ActorDiedError, where the serial backend raises the exception.
        self.init_error: Exception | None = None
        try:
            ctx = ray.get_runtime_context()
            gpu_ids = ctx.get_accelerator_ids().get("GPU", [])
            mine = TableView(shards, home) if home is not None and isinstance(shards, ShardTable) else shards
            self._host = ClientHost(
                host_id, algorithm, dataset, mine, spec, gpu_ids=gpu_ids, visitors=visitors
            )
            self.gpu_share = float(ctx.get_assigned_resources().get("GPU", 0.0))
            self.cuda = self._host.device.type == "cuda"
            self.gpu_cap = gpu_memory_cap(self.gpu_share, self.cuda)
            if self.gpu_cap is not None:  # allocations beyond the share raise CUDA OOM in this actor only
                torch.cuda.set_per_process_memory_fraction(self.gpu_cap, self._host.device)
        except Exception as exc:
            self.init_error = exc

    @property
    def host(self) -> ClientHost:
        """The host; every call of an actor whose constructor failed raises that exception."""
        if self.init_error is not None:
            raise self.init_error
        assert self._host is not None
        return self._host

    def ping(self) -> str:
        """Alive (and constructed): which incarnation of the actor answers."""
        _ = self.host  # raises the constructor's exception, if it had one
        return self.incarnation

    def client_ids(self) -> list[int]:
        return self.host.client_ids()

    def run(self, round_idx: int, tasks: Sequence[ClientTask], refs: Mapping[str, Any]) -> HostReply:
        keys = list(refs)
        values = ray.get([refs[k] for k in keys])  # zero-copy numpy views from the object store
        reply = self.host.run(round_idx, tasks, dict(zip(keys, values, strict=True)), cancelled=_cancelled)
        return dataclasses.replace(reply, incarnation=self.incarnation)

    def commit(self, round_idx: int) -> int:
        return self.host.commit(round_idx)

    def withdraw(self, round_idx: int, client_ids: Sequence[int]) -> list[LinearSum]:
        return self.host.withdraw(round_idx, client_ids)

    def evaluate(self, refs: Mapping[str, Any], client_ids: np.ndarray | None = None) -> PersonalColumns:
        keys = list(refs)
        values = ray.get([refs[k] for k in keys])
        return self.host.evaluate(dict(zip(keys, values, strict=True)), client_ids)

    def get_state(self) -> dict[int, dict[str, Any]]:
        return self.host.get_state()

    def set_state(self, states: Mapping[int, dict[str, Any]]) -> str:
        """Returns the incarnation that now holds the states."""
        self.host.set_state(states)
        return self.incarnation

    def stats(self) -> dict[str, Any]:
        out = self.host.stats()
        ctx = ray.get_runtime_context()
        out["node_id"] = ctx.get_node_id()
        out["placement_group_id"] = ctx.get_placement_group_id() or ""  # a Tune trial's group
        out["gpu_share"] = self.gpu_share
        out["gpu_memory_cap"] = math.nan if self.gpu_cap is None else self.gpu_cap
        out["peak_gpu_mb"] = (
            torch.cuda.max_memory_allocated(self.host.device) / 2**20 if self.cuda else math.nan
        )
        return out


ClientActor = ray.remote(ClientActorImpl)
