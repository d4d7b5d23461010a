"""What both backends' pools share: the pool protocol, the task-assignment rule and the reply
collector. A pool is the set of client hosts the server talks to (in-process or Ray actors)."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from raysim.algorithms.base import ClientResult, ClientTask, LinearSum


@dataclass(frozen=True, kw_only=True)
class ClientError:
    """A client whose code raised: enough to tell one bug from many different faults."""

    client_id: int
    signature: str  # exception type and the innermost frame (file:line): the same bug, the same signature
    traceback: str


@dataclass(frozen=True, kw_only=True)
class HostReply:
    """What one host sends back for one round."""

    results: list[ClientResult]  # per client; the update dropped when pre-summed
    partials: list[LinearSum]  # pre-summed updates, one per model key (linear algorithms)
    dropouts: list[tuple[int, str]]
    errors: list[ClientError]
    seconds: float
    transfer_bytes: int  # what this reply carries back to the server
    # which process of the host answered (a Ray actor restarted by Ray or by the pool answers with
    # a new one and has lost its clients' state); empty for in-process hosts
    incarnation: str = ""
    # the host process's CPU seconds over the round (``time.process_time``): its work, which a busy
    # machine stretches far less than ``seconds`` (waiting for a core is not counted; contention
    # for caches still is)
    cpu_seconds: float = float("nan")


@dataclass(frozen=True, eq=False)
class PersonalColumns:
    """Personal evaluation figures of many clients, column-wise (never a dict a client): each
    client's personalised model on its local test split. ``shared``: how many of them were scored
    in a batched pass over a shared model (the rest one by one)."""

    client_id: np.ndarray  # int64
    n: np.ndarray  # int64, test examples
    correct: np.ndarray  # int64
    loss: np.ndarray  # float64, the mean cross-entropy over the client's test examples
    shared: int = 0

    def __len__(self) -> int:
        return len(self.client_id)

    def row(self, i: int) -> dict[str, float]:
        """Client ``i``'s figures as one dict (for tests and small federations)."""
        return {
            "client_id": int(self.client_id[i]),
            "n": int(self.n[i]),
            "correct": int(self.correct[i]),
            "loss": float(self.loss[i]),
        }

    @staticmethod
    def concat(parts: Sequence[PersonalColumns]) -> PersonalColumns:
        if not parts:
            z = np.zeros(0, dtype=np.int64)
            return PersonalColumns(client_id=z, n=z, correct=z, loss=np.zeros(0, dtype=np.float64))
        return PersonalColumns(
            client_id=np.concatenate([p.client_id for p in parts]).astype(np.int64),
            n=np.concatenate([p.n for p in parts]).astype(np.int64),
            correct=np.concatenate([p.correct for p in parts]).astype(np.int64),
            loss=np.concatenate([p.loss for p in parts]).astype(np.float64),
            shared=sum(p.shared for p in parts),
        )


@dataclass(frozen=True, kw_only=True)
class PoolReply:
    results: list[ClientResult]
    partials: list[LinearSum]
    dropouts: list[tuple[int, str]]
    errors: list[ClientError]
    broadcast_s: float
    train_s: float
    transfer_bytes_up: int
    lost_clients: list[int] = field(default_factory=list)  # clients whose actor died for good
    host_seconds: list[float] = field(default_factory=list)  # busy time of each actor that replied
    host_cpu_seconds: list[float] = field(default_factory=list)  # and its CPU seconds (HostReply.cpu_seconds)
    partial_hosts: list[int] = field(default_factory=list)  # the host of each entry of ``partials``
    host_clients: dict[int, list[int]] = field(default_factory=dict)  # accepted clients by host


class Pool(Protocol):
    def available(self) -> np.ndarray: ...
    def run(
        self,
        round_idx: int,
        tasks: Sequence[ClientTask],
        broadcast: Mapping[str, np.ndarray],
        deadline_s: float | None,
    ) -> PoolReply: ...
    def commit(self, round_idx: int) -> list[int]:
        """Make the client state of this round's accepted updates permanent (hosts that replied in
        time); returns clients lost because their host died meanwhile."""
        ...

    def withdraw(
        self, round_idx: int, client_ids: Sequence[int]
    ) -> tuple[dict[int, list[LinearSum]], list[int]]:
        """Take back quarantined clients of this round from the hosts that replied: their state is
        never committed; returns each host's fixed-point updates of them (to subtract from its
        partials) and the hosts that could not answer (died since they replied)."""
        ...

    def take_restarted(self) -> list[int]:
        """Clients (sorted) whose host restarted (a new process: its clients' state is back to the
        initial one) since the last call; their results of the round in which it was found were dropped.
        The driver restores their state from the newest checkpoint (``restore_clients``)."""
        ...

    def restore_clients(self, states: Mapping[int, dict[str, Any]]) -> None:
        """Set the state of these clients (all clients of the hosts that own them) only."""
        ...

    def evaluate(
        self, broadcast: Mapping[str, np.ndarray], client_ids: np.ndarray | None = None
    ) -> PersonalColumns:
        """Personal evaluation of every live hosted client (``client_ids`` None) or of those of
        ``client_ids`` (sorted) that live hosts own."""
        ...

    def get_state(self) -> dict[int, dict[str, Any]]: ...
    def set_state(self, states: Mapping[int, dict[str, Any]]) -> None: ...
    def stats(self) -> list[dict[str, Any]]: ...


def group_tasks(tasks: Sequence[ClientTask], owner: Mapping[int, int]) -> dict[int, list[ClientTask]]:
    """Tasks by the host that owns each client (unknown clients go to host -1)."""
    out: dict[int, list[ClientTask]] = {}
    for t in tasks:
        out.setdefault(owner.get(t.client_id, -1), []).append(t)
    return out


class ClientMap(Mapping[int, int]):
    """A read-only ``{client id: int}`` held as two arrays (ids sorted): what a pool keeps per
    client (its home host, its training examples) without a Python object per client (issue 21:
    10^6 clients)."""

    def __init__(self, ids: np.ndarray, values: np.ndarray) -> None:
        ids, values = np.asarray(ids, dtype=np.int64), np.asarray(values, dtype=np.int64)
        if ids.shape != values.shape or ids.ndim != 1:
            raise ValueError(
                f"ClientMap: ids and values must be 1-d of one length, got {ids.shape}, {values.shape}"
            )
        order = np.argsort(ids, kind="stable")
        self.ids, self.vals = ids[order], values[order]
        if len(self.ids) > 1 and (np.diff(self.ids) == 0).any():
            raise ValueError("ClientMap: a client id appears twice")
        self.ids.setflags(write=False)
        self.vals.setflags(write=False)

    @classmethod
    def of(cls, mapping: Mapping[int, int]) -> ClientMap:
        if isinstance(mapping, ClientMap):
            return mapping
        ids = np.fromiter(mapping.keys(), dtype=np.int64, count=len(mapping))
        return cls(ids, np.fromiter(mapping.values(), dtype=np.int64, count=len(mapping)))

    def _row(self, key: object) -> int:
        if not isinstance(key, (int, np.integer)) or isinstance(key, bool):
            return -1
        i = int(np.searchsorted(self.ids, int(key)))
        return i if i < len(self.ids) and self.ids[i] == key else -1

    def __getitem__(self, key: int) -> int:
        i = self._row(key)
        if i < 0:
            raise KeyError(key)
        return int(self.vals[i])

    def __contains__(self, key: object) -> bool:
        return self._row(key) >= 0

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids.tolist())

    def __len__(self) -> int:
        return len(self.ids)

    def keys_with(self, value: int) -> list[int]:
        """The ids whose value is ``value`` (a host's clients), sorted."""
        return self.ids[self.vals == value].tolist()


class ClientIndex:
    """Every client id, sorted, with its home host: the pool's per-round ``available()`` as one
    vectorised mask (it was a sort of all N ids a round: 0.7 s at 10^6 clients, issue 13)."""

    def __init__(self, owner: Mapping[int, int]) -> None:
        m = ClientMap.of(owner)
        self.ids, self.hosts = m.ids, m.vals

    def on_hosts_except(self, dead: Collection[int]) -> np.ndarray:
        """The sorted ids of clients whose home host is not in ``dead``."""
        if not dead:
            return self.ids
        return self.ids[~np.isin(self.hosts, np.fromiter(dead, dtype=np.int64, count=len(dead)))]


def owner_map(host_tables: Sequence[Any]) -> ClientMap:
    """Each client's home host, from the hosts' ``ShardTable``s (host ``h`` is ``host_tables[h]``)."""
    if not host_tables:
        return ClientMap(np.zeros(0, np.int64), np.zeros(0, np.int64))
    ids = np.concatenate([t.client_ids for t in host_tables])
    hosts = np.repeat(np.arange(len(host_tables), dtype=np.int64), [len(t.client_ids) for t in host_tables])
    return ClientMap(ids, hosts)


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
        self.errors: list[ClientError] = []
        self.nbytes = 0
        self.busy: list[float] = []
        self.cpu: list[float] = []
        self.lost: list[int] = []
        self.partial_hosts: list[int] = []
        self.host_clients: dict[int, list[int]] = {}

    def add(self, reply: HostReply, host: int = -1) -> None:
        self.partial_hosts += [host] * len(reply.partials)
        self.host_clients[host] = [r.client_id for r in reply.results]
        self.results += reply.results
        self.dropouts += reply.dropouts
        self.errors += reply.errors
        self.nbytes += reply.transfer_bytes
        self.busy.append(reply.seconds)
        self.cpu.append(reply.cpu_seconds)
        self.partials += reply.partials

    def drop(self, tasks: Sequence[ClientTask], reason: str) -> None:
        self.dropouts += [(t.client_id, reason) for t in tasks]

    def reply(self, broadcast_s: float, train_s: float) -> PoolReply:
        # Results and dropouts in client order, whichever actor trained whom: float reductions over
        # them (the mean train loss, a non-linear aggregate) then do not depend on the packing.
        return PoolReply(
            results=sorted(self.results, key=lambda r: r.client_id),
            partials=self.partials,
            dropouts=sorted(self.dropouts),
            errors=self.errors,
            broadcast_s=broadcast_s,
            train_s=train_s,
            transfer_bytes_up=self.nbytes,
            host_seconds=self.busy,
            host_cpu_seconds=self.cpu,
            lost_clients=self.lost,
            partial_hosts=self.partial_hosts,
            host_clients=self.host_clients,
        )
