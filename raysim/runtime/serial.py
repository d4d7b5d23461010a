"""In-process pool of client hosts: the serial backend most tests use."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raysim.algorithms.base import ClientTask
from raysim.runtime.host import ClientHost
from raysim.runtime.server import PoolReply


def group_tasks(tasks: Sequence[ClientTask], owner: Mapping[int, int]) -> dict[int, list[ClientTask]]:
    """Tasks by the host that owns each client (unknown clients go to host -1)."""
    out: dict[int, list[ClientTask]] = {}
    for t in tasks:
        out.setdefault(owner.get(t.client_id, -1), []).append(t)
    return out


class SerialPool:
    def __init__(self, hosts: Sequence[ClientHost]) -> None:
        self.hosts = list(hosts)
        self.owner = {cid: h for h, host in enumerate(self.hosts) for cid in host.client_ids()}

    def available(self) -> list[int]:
        return sorted(self.owner)

    def run(
        self,
        round_idx: int,
        tasks: Sequence[ClientTask],
        models: Mapping[str, np.ndarray],
        deadline_s: float | None,
    ) -> PoolReply:
        t0 = time.perf_counter()
        results, partials, dropouts, nbytes, busy = [], [], [], 0, []
        for h, host_tasks in group_tasks(tasks, self.owner).items():
            if h < 0:
                dropouts += [(t.client_id, "unknown client") for t in host_tasks]
                continue
            reply = self.hosts[h].run(round_idx, host_tasks, models)
            results += reply.results
            dropouts += reply.dropouts
            nbytes += reply.transfer_bytes
            busy.append(reply.seconds)
            if reply.partial is not None:
                partials.append(reply.partial)
        return PoolReply(
            results=results,
            partials=partials,
            dropouts=dropouts,
            broadcast_s=0.0,
            train_s=time.perf_counter() - t0,
            transfer_bytes_up=nbytes,
            host_seconds=busy,
        )

    def evaluate(self, models: Mapping[str, np.ndarray]) -> list[dict[str, float]]:
        return [row for host in self.hosts for row in host.evaluate(models)]

    def get_state(self) -> dict[int, dict[str, Any]]:
        return {cid: st for host in self.hosts for cid, st in host.get_state().items()}

    def set_state(self, states: Mapping[int, dict[str, Any]]) -> None:
        for host in self.hosts:
            host.set_state(states)

    def stats(self) -> list[dict[str, Any]]:
        return [host.stats() for host in self.hosts]
