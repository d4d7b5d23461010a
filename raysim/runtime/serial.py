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


def balance_tasks(
    tasks: Sequence[ClientTask], sizes: Mapping[int, int], hosts: Sequence[int]
) -> dict[int, list[ClientTask]]:
    """This round's tasks spread over ``hosts`` by work (longest first onto the least-loaded
    host; ties by id), for algorithms without client state whose clients may train anywhere.
    Unknown clients go to host -1."""
    out: dict[int, list[ClientTask]] = {}
    load = {h: 0 for h in hosts}
    for t in sorted(tasks, key=lambda t: (-sizes.get(t.client_id, 0), t.client_id)):
        if t.client_id not in sizes or not load:
            out.setdefault(-1, []).append(t)
            continue
        h = min(load, key=lambda i: (load[i], i))
        load[h] += sizes[t.client_id]
        out.setdefault(h, []).append(t)
    return out


class SerialPool:
    def __init__(self, hosts: Sequence[ClientHost], roam_sizes: Mapping[int, int] | None = None) -> None:
        self.hosts = list(hosts)
        self.owner = {cid: h for h, host in enumerate(self.hosts) for cid in host.client_ids()}
        self.roam_sizes = dict(roam_sizes) if roam_sizes is not None else None

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
        if self.roam_sizes is not None:
            assigned = balance_tasks(tasks, self.roam_sizes, range(len(self.hosts)))
        else:
            assigned = group_tasks(tasks, self.owner)
        for h, host_tasks in sorted(assigned.items()):
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
