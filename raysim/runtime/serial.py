"""In-process pool of client hosts: the serial backend most tests use."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raysim.algorithms.base import ClientResult, ClientTask, LinearSum
from raysim.runtime.host import ClientHost, HostReply
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


def assign_tasks(
    tasks: Sequence[ClientTask],
    owner: Mapping[int, int],
    roam_sizes: Mapping[int, int] | None,
    live_hosts: Sequence[int],
) -> dict[int, list[ClientTask]]:
    """Home actors for clients with state; this round's lightest actor otherwise."""
    if roam_sizes is not None:
        return balance_tasks(tasks, roam_sizes, live_hosts)
    return group_tasks(tasks, owner)


class ReplyCollector:
    """Gathers the host replies of one round, in host order, into a PoolReply."""

    def __init__(self) -> None:
        self.results: list[ClientResult] = []
        self.partials: list[LinearSum] = []
        self.dropouts: list[tuple[int, str]] = []
        self.nbytes = 0
        self.busy: list[float] = []
        self.lost: list[int] = []

    def add(self, reply: HostReply) -> None:
        self.results += reply.results
        self.dropouts += reply.dropouts
        self.nbytes += reply.transfer_bytes
        self.busy.append(reply.seconds)
        if reply.partial is not None:
            self.partials.append(reply.partial)

    def drop(self, tasks: Sequence[ClientTask], reason: str) -> None:
        self.dropouts += [(t.client_id, reason) for t in tasks]

    def reply(self, broadcast_s: float, train_s: float) -> PoolReply:
        return PoolReply(
            results=self.results,
            partials=self.partials,
            dropouts=self.dropouts,
            broadcast_s=broadcast_s,
            train_s=train_s,
            transfer_bytes_up=self.nbytes,
            host_seconds=self.busy,
            lost_clients=self.lost,
        )


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
        out = ReplyCollector()
        assigned = assign_tasks(tasks, self.owner, self.roam_sizes, range(len(self.hosts)))
        for h, host_tasks in sorted(assigned.items()):
            if h < 0:
                out.drop(host_tasks, "unknown client")
            else:
                out.add(self.hosts[h].run(round_idx, host_tasks, models))
        return out.reply(broadcast_s=0.0, train_s=time.perf_counter() - t0)

    def evaluate(self, models: Mapping[str, np.ndarray]) -> list[dict[str, float]]:
        return [row for host in self.hosts for row in host.evaluate(models)]

    def get_state(self) -> dict[int, dict[str, Any]]:
        return {cid: st for host in self.hosts for cid, st in host.get_state().items()}

    def set_state(self, states: Mapping[int, dict[str, Any]]) -> None:
        for host in self.hosts:
            host.set_state(states)

    def stats(self) -> list[dict[str, Any]]:
        return [host.stats() for host in self.hosts]
