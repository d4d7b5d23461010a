"""ClientActor: a thin Ray shell over ``raysim.runtime.host.ClientHost``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ray

from raysim.algorithms.base import ClientTask, LinearSum
from raysim.runtime.host import ClientHost, HostSpec
from raysim.runtime.pool import HostReply


def _cancelled() -> bool:
    """True once the server cancelled this call (the round deadline passed)."""
    return bool(ray.get_runtime_context().is_canceled())


class ClientActorImpl:
    def __init__(
        self,
        host_id: int,
        algorithm: Any,
        dataset: Any,
        shards: Sequence[Any],
        spec: HostSpec,
        visitors: Sequence[Any] = (),
    ) -> None:
        gpu_ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        self.host = ClientHost(host_id, algorithm, dataset, shards, spec, gpu_ids=gpu_ids, visitors=visitors)

    def ping(self) -> int:
        return self.host.host_id

    def client_ids(self) -> list[int]:
        return self.host.client_ids()

    def run(self, round_idx: int, tasks: Sequence[ClientTask], refs: Mapping[str, Any]) -> HostReply:
        keys = list(refs)
        values = ray.get([refs[k] for k in keys])  # zero-copy numpy views from the object store
        return self.host.run(round_idx, tasks, dict(zip(keys, values, strict=True)), cancelled=_cancelled)

    def commit(self, round_idx: int) -> int:
        return self.host.commit(round_idx)

    def withdraw(self, round_idx: int, client_ids: Sequence[int]) -> list[LinearSum]:
        return self.host.withdraw(round_idx, client_ids)

    def evaluate(self, refs: Mapping[str, Any]) -> list[dict[str, float]]:
        keys = list(refs)
        values = ray.get([refs[k] for k in keys])
        return self.host.evaluate(dict(zip(keys, values, strict=True)))

    def get_state(self) -> dict[int, dict[str, Any]]:
        return self.host.get_state()

    def set_state(self, states: Mapping[int, dict[str, Any]]) -> None:
        self.host.set_state(states)

    def stats(self) -> dict[str, Any]:
        out = self.host.stats()
        ctx = ray.get_runtime_context()
        out["node_id"] = ctx.get_node_id()
        out["placement_group_id"] = ctx.get_placement_group_id() or ""  # a Tune trial's group
        return out


ClientActor = ray.remote(ClientActorImpl)
