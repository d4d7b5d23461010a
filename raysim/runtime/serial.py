"""The serial backend: client hosts and the server as plain objects in this process (most tests)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raysim.algorithms.base import ClientTask, LinearSum, LocalHParams
from raysim.runtime.backend import Share, StartSpec
from raysim.runtime.host import ClientHost
from raysim.runtime.pool import (
    ClientIndex,
    ClientMap,
    PersonalColumns,
    PoolReply,
    ReplyCollector,
    assign_tasks,
    owner_map,
)
from raysim.runtime.server import RoundReport, Server


class SerialPool:
    def __init__(self, hosts: Sequence[ClientHost], roam_sizes: Mapping[int, int] | None = None) -> None:
        self.hosts = list(hosts)
        self.owner = owner_map([host.own for host in self.hosts])  # arrays, not a dict of N entries
        self.roam_sizes = ClientMap.of(roam_sizes) if roam_sizes is not None else None
        self.index = ClientIndex(self.owner)

    def available(self) -> np.ndarray:
        return self.index.ids

    def run(
        self,
        round_idx: int,
        tasks: Sequence[ClientTask],
        broadcast: Mapping[str, np.ndarray],
        deadline_s: float | None,
    ) -> PoolReply:
        t0 = time.perf_counter()
        out = ReplyCollector()
        assigned = assign_tasks(tasks, self.owner, self.roam_sizes, range(len(self.hosts)))
        for h, host_tasks in sorted(assigned.items()):
            if h < 0:
                out.drop(host_tasks, "unknown client")
            else:
                out.add(self.hosts[h].run(round_idx, host_tasks, broadcast), host=h)
        return out.reply(broadcast_s=0.0, train_s=time.perf_counter() - t0)

    def commit(self, round_idx: int) -> list[int]:
        for host in self.hosts:
            host.commit(round_idx)
        return []

    def withdraw(
        self, round_idx: int, client_ids: Sequence[int]
    ) -> tuple[dict[int, list[LinearSum]], list[int]]:
        return {h: host.withdraw(round_idx, client_ids) for h, host in enumerate(self.hosts)}, []

    def take_restarted(self) -> list[int]:
        return []  # hosts in this process never restart

    def restore_clients(self, states: Mapping[int, dict[str, Any]]) -> None:
        for h in sorted({self.owner[c] for c in states}):
            self.hosts[h].set_state(states)

    def evaluate(
        self, broadcast: Mapping[str, np.ndarray], client_ids: np.ndarray | None = None
    ) -> PersonalColumns:
        return PersonalColumns.concat([host.evaluate(broadcast, client_ids) for host in self.hosts])

    def get_state(self) -> dict[int, dict[str, Any]]:
        return {cid: st for host in self.hosts for cid, st in host.get_state().items()}

    def set_state(self, states: Mapping[int, dict[str, Any]]) -> None:
        for host in self.hosts:
            host.set_state(states)

    def stats(self) -> list[dict[str, Any]]:
        return [host.stats() for host in self.hosts]


class SerialBackend:
    """Everything in this process: hosts and server are plain objects."""

    def __init__(self, share: Share | None = None) -> None:
        self._share = share
        self.server: Server | None = None
        self.hosts: list[ClientHost] = []

    def share(self) -> Share:
        return self._share or Share(cpus=float(os.cpu_count() or 1))

    def start(self, spec: StartSpec) -> None:
        tables = spec.host_tables()
        everyone = spec.everyone(tables) if spec.roam else None
        self.hosts = [
            ClientHost(h, spec.algorithm, spec.dataset, table, spec.host_spec, visitors=everyone)
            for h, table in enumerate(tables)
        ]
        sizes = ClientMap(everyone.client_ids, everyone.n_train()) if everyone is not None else None
        self.server = Server(pool=SerialPool(self.hosts, roam_sizes=sizes), **spec.server_kwargs)

    def _srv(self) -> Server:
        if self.server is None:
            raise RuntimeError("backend not started")
        return self.server

    def restart_server(self) -> None:
        raise RuntimeError("the serial backend's server lives in this process: it cannot be lost")

    def run_round(self, t: int, hparams: LocalHParams) -> RoundReport:
        return self._srv().run_round(t, hparams)

    def checkpoint(self) -> dict[str, Any]:
        return self._srv().checkpoint()

    def restore(self, ckpt: Mapping[str, Any]) -> None:
        self._srv().restore(ckpt)

    def restore_clients(self, states: Mapping[int, dict[str, Any]]) -> None:
        self._srv().restore_clients(states)

    def converged(self) -> bool:
        return self._srv().converged()

    def system_stats(self) -> list[dict[str, Any]]:
        return self._srv().system_stats()

    def eval_broadcast(self) -> dict[str, np.ndarray]:
        return self._srv().eval_broadcast()

    def shutdown(self) -> None:
        self.server, self.hosts = None, []
