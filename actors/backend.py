"""The Ray backend: starts the client actors and the server actor, and the pool of client
actors the server talks to. The only place, with the actor shells, that imports ray."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import ray

from actors import autoscale
from raysim.algorithms.base import ClientTask, LinearSum, LocalHParams
from raysim.config import ConfigError
from raysim.data.federation import ShardTable, TableView
from raysim.reproducible import environment as reproducible_env
from raysim.runtime.backend import NodeShare, ServerLost, Share, StartSpec
from raysim.runtime.pool import (
    ClientIndex,
    ClientMap,
    PersonalColumns,
    PoolReply,
    ReplyCollector,
    assign_tasks,
    owner_map,
)
from raysim.runtime.server import RoundReport

# The environment of every raysim actor process. glibc hands freed blocks above its (dynamic) mmap
# threshold straight back to the OS and trims the heap top beyond 128 KiB, so a trainer that frees
# and re-allocates its batch buffers pays the page faults for them again every batch (measured on
# W1: 6,000 to 127,000 minor faults a round per actor, depending on what the process allocated
# before). Fixed thresholds keep those blocks in the heap; the cost is that an actor's RSS stays at
# its high-water mark. benchmarks/fedavg_w1.py prints the faults per round.
ACTOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**30)}

# How long the driver waits for the actors of a run to answer their first ping (Ray must place
# them, and each imports torch: ~1.5 s on a 2-core machine, far more under load) and for the
# server's calls other than a round (checkpoint, restore, statistics ...). Past them a run stops
# with a message instead of hanging: an actor Ray cannot place waits forever otherwise.
START_TIMEOUT_S = 300.0
CALL_TIMEOUT_S = 900.0
CONNECT_TIMEOUT_S = 5.0  # reaching a cluster's address (Ray's own retries take minutes)

# Errors that Ray raises inside an actor's call for a fault of the cluster (an object lost with its
# node, a dead actor called from the actor): a fault there too, not an exception from code.
_FAULT_CAUSES = (
    ray.exceptions.RayActorError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.OutOfMemoryError,
    ray.exceptions.LocalRayletDiedError,
    ray.exceptions.RaySystemError,
)


def is_fault(exc: BaseException) -> bool:
    """Whether a Ray error means that an actor or its node went away (or did not answer in time):
    a fault the runtime survives. An exception raised by code inside an actor's call (ours or an
    algorithm's: a ``RayTaskError``) is not: it is raised again, as itself, as on serial."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        return isinstance(exc.cause, _FAULT_CAUSES)
    if isinstance(exc, ray.exceptions.RayActorError) and exc.actor_init_failed:
        return False  # its constructor raised (the actor shells catch that: not expected)
    return isinstance(exc, ray.exceptions.RayError)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def code_error(err: ray.exceptions.RayError) -> BaseException:
    """The exception that code raised inside an actor, to raise again where the call was made: the
    same type and message as the serial backend raises, with the actor's traceback as a note (the
    note travels with the exception through the server actor to the driver)."""
    text = _ANSI.sub("", str(err))
    cause = getattr(err, "cause", None)
    if not isinstance(cause, Exception) or isinstance(cause, ray.exceptions.RayError):
        return RuntimeError(text)  # no usable original (it could not be pickled): Ray's text of it
    for note in getattr(cause, "__notes__", []):  # an inner actor's traceback is a note already
        text = text.split(note, 1)[0]
    cause.add_note(f"(raised in a Ray actor; its traceback there)\n{text.rstrip()}")
    return cause


def get(refs: Any, timeout: float | None = None) -> Any:
    """``ray.get`` for calls to our actors: an exception from code in the actor is raised as itself
    (``code_error``), as on the serial backend; a fault (the actor or its node died, no answer in
    time) is raised as Ray's error, for the caller to survive."""
    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.RayError as err:
        if is_fault(err):
            raise
        raise code_error(err) from None


def actor_runtime_env(reproducible: bool) -> dict[str, Any]:
    """Every actor's environment: raysim's allocator settings, in reproducible mode the variables
    that pin its kernels (read when its torch and numpy load, so they must be there at its start),
    and the folders of local plug-in modules on its PYTHONPATH (``raysim.plugins.worker_env``)."""
    from raysim.plugins import worker_env

    return {"env_vars": {**ACTOR_ENV, **(reproducible_env() if reproducible else {}), **worker_env()}}


def cluster_nodes() -> list[dict[str, Any]]:
    """The live nodes of the Ray cluster and their resources, for a run's environment.json."""
    return [
        {"node_id": n["NodeID"], "address": n.get("NodeManagerAddress"), "resources": n.get("Resources", {})}
        for n in ray.nodes()
        if n.get("Alive")
    ]


class RayPool:
    """Client actors seen from the server: one ``ray.put`` per broadcast array per round, one call
    per actor, ``ray.wait`` with the round deadline; a failed or late actor's clients are dropouts
    and calls still running at the deadline are cancelled.

    Only the death of an actor or its node (or no answer in time) is a fault here; an exception
    from code in an actor (ours, or an algorithm's outside a client's update) is raised as itself,
    with the actor's traceback, as on the serial backend (``get``).

    Actors come back: Ray restarts one whose process or node died (``resources.max_restarts``),
    and the pool restarts one still stuck in a call that missed an earlier deadline. Each reply
    names the incarnation (process) that computed it; for algorithms with client state, a new
    incarnation has lost its clients' state, so its results of that round are dropped and its
    clients are reported (``take_restarted``) for the driver to restore from a checkpoint."""

    def __init__(
        self,
        handles: Sequence[Any],
        owner: Mapping[int, int],
        ping_timeout_s: float = 60.0,
        roam_sizes: Mapping[int, int] | None = None,
        client_state: bool = False,
        can_restart: bool = False,
    ) -> None:
        self.handles = list(handles)
        self.owner = ClientMap.of(owner)  # arrays, not a dict of N entries
        self.index = ClientIndex(self.owner)
        # which process answers for each actor; None until it first answers. A fresh pool's first
        # answer is never a restart: at a run's start the clients have no state yet, and after a
        # lost server the restore sets every actor's state and records who answered
        self.incarnation: list[str | None] = [None] * len(self.handles)
        self.roam_sizes = ClientMap.of(roam_sizes) if roam_sizes is not None else None
        self.client_state = client_state
        self.can_restart = can_restart
        self.dead: set[int] = set()
        self.ping_timeout_s = ping_timeout_s
        self.replied: list[int] = []  # hosts whose reply of the last round arrived in time
        self.restarted: set[int] = set()  # clients whose state went back to initial, not yet restored
        self.late: set[int] = set()  # hosts whose call was cancelled at a deadline (it may still run)

    def available(self) -> np.ndarray:
        if self.roam_sizes is not None:  # clients without state train on any live actor
            return self.index.ids if len(self.dead) < len(self.handles) else self.index.ids[:0]
        return self.index.on_hosts_except(self.dead)

    def _live_hosts(self) -> list[int]:
        """Hosts that can take a call now: not dead, not stuck in a call cancelled at a deadline."""
        return [h for h in range(len(self.handles)) if h not in self.dead and h not in self.late]

    def _hosted_by(self, h: int) -> list[int]:
        return self.owner.keys_with(h)

    def _answered_by(self, h: int, incarnation: str) -> bool:
        """Record which process answers for host ``h``; True when it is a new one whose clients
        lost their state (Ray restarted it)."""
        old, self.incarnation[h] = self.incarnation[h], incarnation
        lost_state = self.client_state and old is not None and old != incarnation
        if lost_state:
            self.restarted.update(self._hosted_by(h))
        return lost_state

    def _check_alive(self, h: int) -> bool:
        """Whether actor ``h`` answers within the ping timeout; an actor that is unavailable for
        now (Ray is restarting it: its process or its node went away) is waited for."""
        t_end = time.monotonic() + self.ping_timeout_s
        while True:
            try:
                incarnation = get(self.handles[h].ping.remote(), timeout=max(t_end - time.monotonic(), 0.1))
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() < t_end:
                    time.sleep(0.2)
                    continue
                self.dead.add(h)
                return False
            except ray.exceptions.RayError:  # died for good (no restarts left), or no answer in time
                self.dead.add(h)
                return False
            self._answered_by(h, incarnation)
            return True

    def _restart(self, h: int) -> bool:
        """Kill actor ``h`` and let Ray start it again (it is stuck in a call that missed a
        deadline: calls queue behind a running one). True when a new incarnation answers."""
        old = self.incarnation[h]
        ray.kill(self.handles[h], no_restart=False)
        t_end = time.monotonic() + self.ping_timeout_s
        while time.monotonic() < t_end:
            try:  # calls right after the kill may still reach the old process or fail once
                incarnation = get(self.handles[h].ping.remote(), timeout=self.ping_timeout_s)
            except ray.exceptions.RayError:  # a fault (an error from code is raised by ``get``)
                incarnation = old
            if incarnation != old:
                self._answered_by(h, incarnation)
                return True
            time.sleep(0.05)
        self.dead.add(h)
        return False

    def _settle_late(self, grace_s: float) -> set[int]:
        """Hosts whose call was cancelled at a deadline: free again once they answer a ping within
        ``grace_s`` (a call stops at its next client); otherwise stuck (a client hangs inside its
        update, and every later call would queue behind it): restarted when Ray may restart
        them, else returned (left out until they answer)."""
        for h in sorted(self.late):
            if h in self.dead:
                self.late.discard(h)
                continue
            try:
                incarnation = get(self.handles[h].ping.remote(), timeout=grace_s)
            except ray.exceptions.GetTimeoutError:
                if self.can_restart:
                    self.late.discard(h)
                    self._restart(h)
                continue
            except ray.exceptions.RayError:
                self.late.discard(h)
                self._check_alive(h)
                continue
            self.late.discard(h)
            self._answered_by(h, incarnation)
        return set(self.late)

    def run(
        self,
        round_idx: int,
        tasks: Sequence[ClientTask],
        broadcast: Mapping[str, np.ndarray],
        deadline_s: float | None,
    ) -> PoolReply:
        t0 = time.perf_counter()
        out = ReplyCollector()
        stuck = self._settle_late(grace_s=0.1)  # they had their grace at the end of their round
        if self.restarted:  # found restarted between rounds: their state is restored after this one
            out.drop([t for t in tasks if t.client_id in self.restarted], RESTARTED)
            tasks = [t for t in tasks if t.client_id not in self.restarted]
        refs = {k: ray.put(v) for k, v in broadcast.items()}
        t1 = time.perf_counter()
        grouped = assign_tasks(tasks, self.owner, self.roam_sizes, self._live_hosts())
        for h in sorted(set(grouped) & stuck):
            out.drop(grouped.pop(h), f"actor {h} is still stuck in a call that missed an earlier deadline")
        calls = {
            self.handles[h].run.remote(round_idx, ht, {k: refs[k] for k in _keys(ht)}): h
            for h, ht in grouped.items()
            if h >= 0
        }
        ready, pending = ray.wait(list(calls), num_returns=len(calls), timeout=deadline_s)
        out.drop(grouped.get(-1, []), "unknown client")
        self.replied = []
        for ref in sorted(ready, key=lambda r: calls[r]):  # host order, not completion order
            h = calls[ref]
            try:  # an error of our code in the actor is raised (a client's own is in the reply)
                reply = get(ref)
            except ray.exceptions.RayError as exc:  # the actor or its node died
                out.drop(grouped[h], f"actor {h} failed: {type(exc).__name__}")
                if not self._check_alive(h) and self.roam_sizes is None:  # roaming clients live on
                    out.lost += self._hosted_by(h)
                continue
            if self._answered_by(h, reply.incarnation):  # trained from lost (initial) client state
                out.drop(grouped[h], RESTARTED)
                continue
            out.add(reply, host=h)
            self.replied.append(h)
        for ref in pending:
            ray.cancel(ref)  # the actor stops at its next client (it checks between clients)
            self.late.add(calls[ref])
            out.drop(grouped[calls[ref]], f"missed the {deadline_s}s round deadline")
        train_s = time.perf_counter() - t1
        if pending:  # one more deadline to stop; a call still running after that is stuck
            self._settle_late(grace_s=deadline_s or self.ping_timeout_s)
        return out.reply(broadcast_s=t1 - t0, train_s=train_s)

    def commit(self, round_idx: int) -> list[int]:
        calls = {self.handles[h].commit.remote(round_idx): h for h in self.replied}
        lost: list[int] = []
        for ref, h in calls.items():
            try:
                get(ref)  # our code failed in the actor: raised, a bug, not a lost actor
            except ray.exceptions.RayError:  # died since it replied: its clients are lost from now on
                if not self._check_alive(h) and self.roam_sizes is None:  # (or restarted: restored)
                    lost += self._hosted_by(h)
        return lost

    def take_restarted(self) -> list[int]:
        out, self.restarted = sorted(self.restarted), set()
        return out

    def restore_clients(self, states: Mapping[int, dict[str, Any]]) -> None:
        hosts = sorted({self.owner[c] for c in states} - self.dead)
        calls = {h: self.handles[h].set_state.remote(dict(states)) for h in hosts}
        for h, ref in calls.items():
            try:
                self.incarnation[h] = get(ref)
            except ray.exceptions.RayError as exc:  # died again (an error from code is raised as itself)
                raise RuntimeError(
                    f"client actor {h} failed while its clients' state was restored: {type(exc).__name__}: {exc}"
                ) from exc

    def withdraw(
        self, round_idx: int, client_ids: Sequence[int]
    ) -> tuple[dict[int, list[LinearSum]], list[int]]:
        calls = {self.handles[h].withdraw.remote(round_idx, list(client_ids)): h for h in self.replied}
        got: dict[int, list[LinearSum]] = {}
        failed: list[int] = []
        for ref, h in calls.items():
            try:
                got[h] = get(ref)
            except ray.exceptions.RayError:  # died since it replied: the server drops its partials
                failed.append(h)
                self._check_alive(h)
        return got, failed

    def _all_live(self, method: str, *args: Any, strict: bool) -> list[tuple[int, Any]]:
        """Call every live actor; (host, reply) pairs. An exception from code in an actor is raised as
        itself, as on serial. ``strict``: an actor that died is an error too (client state would be
        lost silently otherwise; actors already known dead lost their clients, which is counted);
        else its reply is skipped and it is found dead by its next round."""
        if strict and self.late:  # every client's state is needed: give stuck actors time
            stuck = self._settle_late(grace_s=self.ping_timeout_s)
            if stuck:
                raise RuntimeError(
                    f"client actors {sorted(stuck)} are stuck in calls that missed the round deadline "
                    f"(a client hangs inside its update) and cannot {method}: set "
                    "resources.max_restarts >= 1 so that raysim restarts stuck actors"
                )
        # (stuck hosts are left out: a call to one would block the caller)
        calls = [(h, getattr(self.handles[h], method).remote(*args)) for h in self._live_hosts()]
        out = []
        for h, ref in calls:
            try:
                out.append((h, get(ref)))  # an error from code in the actor is raised, as on serial
            except ray.exceptions.RayError as exc:  # the actor or its node died
                if strict:
                    raise RuntimeError(
                        f"client actor {h} failed during {method}: {type(exc).__name__}: {exc}"
                    ) from exc
                self._check_alive(h)
        return out

    def evaluate(
        self, broadcast: Mapping[str, np.ndarray], client_ids: np.ndarray | None = None
    ) -> PersonalColumns:
        refs = {k: ray.put(v) for k, v in broadcast.items()}
        ids = None if client_ids is None else ray.put(np.asarray(client_ids, dtype=np.int64))
        return PersonalColumns.concat(
            [cols for _, cols in self._all_live("evaluate", refs, ids, strict=False)]
        )

    def get_state(self) -> dict[int, dict[str, Any]]:
        parts = self._all_live("get_state", strict=True)
        return {cid: st for _, part in parts for cid, st in part.items()}

    def set_state(self, states: Mapping[int, dict[str, Any]]) -> None:
        for h, incarnation in self._all_live("set_state", dict(states), strict=True):
            self.incarnation[h] = incarnation  # every client's state is the checkpoint's now
        self.restarted = set()

    def stats(self) -> list[dict[str, Any]]:
        return [row for _, row in self._all_live("stats", strict=False)]


RESTARTED = "its actor restarted: the client's state goes back to the newest checkpoint"


def _keys(tasks: Sequence[ClientTask]) -> list[str]:
    """The broadcast arrays these tasks read (an actor fetches only those)."""
    return sorted({k for t in tasks for k in (t.model_key, *t.broadcast_keys)})


NEW_LOCAL_RAY = "local"  # Ray's address for "start a new local instance" (not the algorithm)

# Ray's system settings for a local Ray that raysim starts. By default the raylet starts one idle
# Python worker per CPU when the first driver connects, for tasks; raysim runs actors whose
# runtime_env (ACTOR_ENV) differs from those workers', so Ray starts fresh workers for them and the
# prestarted ones sit idle for the whole run: ~40 MB USS, ~100 MB RSS each
# (benchmarks/memory_per_process.py, docs/scaling.md).
LOCAL_RAY_SYSTEM_CONFIG = {"prestart_worker_first_driver": False, "enable_worker_prestart": False}


def check_reachable(address: str, timeout_s: float | None = None) -> None:
    """Refuse (ConfigError) a cluster address that nothing answers at, within seconds: Ray's own
    connection retries take minutes, with no message. ``local`` and ``auto`` are Ray's words, not
    addresses; ``host:port`` (the GCS) and ``ray://host:port`` (Ray Client) get a TCP connect."""
    if address in (NEW_LOCAL_RAY, "auto"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    port = port.split("/", 1)[0]
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"Ray address {address!r} is not host:port, ray://host:port, auto or local "
            "(--address, resources.address or RAY_ADDRESS)"
        )
    wait = CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=wait):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address!r} (--address, resources.address or RAY_ADDRESS): "
            f"{exc or type(exc).__name__} within {wait:g} s. Start it (ray start --head), fix the "
            "address, or leave it out to start a local Ray"
        ) from None


def ensure_ray(address: str | None, **init_kwargs: Any) -> None:
    """Connect to ``address`` (or RAY_ADDRESS, as a RayJob's entrypoint has it) or start a new local
    Ray in-process: never silently join some other Ray that happens to run on this machine (plain
    ``ray.init()`` would; ``--address auto`` asks for that explicitly). An address nothing answers
    at is refused within seconds (``check_reachable``)."""
    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS") or NEW_LOCAL_RAY
    check_reachable(target)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    if target == NEW_LOCAL_RAY:  # settings of a Ray this process starts (a cluster keeps its own)
        kwargs["_system_config"] = dict(LOCAL_RAY_SYSTEM_CONFIG)
    kwargs.update(init_kwargs)
    try:
        ray.init(address=target, **kwargs)
    except ConnectionError as exc:  # e.g. "auto" with no Ray running on this machine
        raise ConfigError(f"cannot connect to Ray at {target!r}: {exc}") from None


def _free_now() -> str:
    free = ray.available_resources()
    return ", ".join(f"{k} {free[k]:g}" for k in ("CPU", "GPU") if k in free) or "nothing"


class RayBackend:
    """Starts the client actors and the server actor; the driver only calls the server.

    Every wait has a deadline: the actors' start (``START_TIMEOUT_S``), the server's calls other
    than a round (``CALL_TIMEOUT_S``). A server actor that dies or whose node vanishes (Ray says
    ``ActorDiedError``, or ``ActorUnavailableError`` first) is ``ServerLost``: the driver replaces
    it from a checkpoint. An exception from code in the server is raised as itself (``get``)."""

    def __init__(self, address: str | None = None, share: Share | None = None) -> None:
        self.address = address
        self._share = share
        self.server: Any = None
        self._server_node: str | None = None
        self.clients: list[Any] = []
        self._scale_request = False  # this run asked the autoscaler for room (actors.autoscale)
        self.table_ref: Any = None
        self._stored: ShardTable | None = None  # store_clients(): the table as the store holds it

    def share(self) -> Share:
        if self._share is not None:
            return self._share
        ensure_ray(self.address)
        res = ray.cluster_resources()
        memory = res.get("memory")  # bytes Ray offers for tasks and actors (not the object store)
        nodes = []
        for n in ray.nodes():
            if not n.get("Alive"):
                continue
            r = n.get("Resources", {})
            nodes.append(
                NodeShare(
                    name=f"{n.get('NodeManagerAddress', '?')} ({str(n.get('NodeID', ''))[:8]})",
                    cpus=float(r.get("CPU", 0)),
                    gpus=float(r.get("GPU", 0)),
                    memory_mb=float(r["memory"]) / 2**20 if "memory" in r else None,
                )
            )
        return Share(
            cpus=float(res.get("CPU", 0)),
            gpus=float(res.get("GPU", 0)),
            memory_mb=None if memory is None else float(memory) / 2**20,
            nodes=tuple(nodes),
        )

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's live nodes, for the run's environment.json (the serial backend has none)."""
        return cluster_nodes()

    def store_clients(self, table: ShardTable) -> ShardTable:
        """Put the run's table in the object store now, before ``start`` (which ships this
        ``ray.put`` to the actors instead of putting the table again), and return the store's copy:
        zero-copy, read-only arrays in shared memory. The caller keeps that copy and drops its own,
        so the table is not counted twice in the driver's RSS (issue 21: ~280 MB at 10^6 clients,
        the heap's copy and the store's pages the driver wrote)."""
        ensure_ray(self.address)
        self.table_ref = ray.put(table)
        self._stored = ray.get(self.table_ref)
        return self._stored

    def start(self, spec: StartSpec) -> None:
        from actors.client import ClientActor

        ensure_ray(self.address)
        ask = autoscale.RunAsk(
            len(spec.host_shards),
            spec.num_cpus,
            spec.num_gpus,
            spec.server_cpus,
            spec.server_gpus,
            spec.actor_memory_mb,
        )
        if self._share is not None:  # a share given (a Tune trial's group): it holds what it holds
            ask.check(self._share)
        else:  # the cluster: what it can grow to, asking the autoscaler for what is missing
            self._scale_request = autoscale.ensure_room(self.share, ask, autoscale.Limits.of(spec))
        from actors.plugin_check import check_nodes

        check_nodes(  # every node can import the run's plug-ins, or one clear refusal
            spec.algorithm, spec.host_spec.model, actor_runtime_env(spec.reproducible)
        )
        self.ds_ref = ds_ref = ray.put(spec.dataset)  # once; actors on a node share zero-copy arrays.
        # Kept referenced for as long as the backend lives, so that a restarted actor can read it again.
        # Without client state every actor can train every client (index arrays only), and the
        # server balances each round's cohort over the actors.
        # The run's one ShardTable, put once (flat arrays: zero-copy in every actor of a node); each
        # actor gets it and its own clients' ids (a TableView there), visitors or not. Kept
        # referenced, as ds_ref: what a restarted actor's constructor reads again.
        tables = spec.host_tables()
        table = spec.everyone(tables) if spec.roam or spec.clients is not None else None
        if table is not None and table is not self._stored:
            self.table_ref = ray.put(table)
        table_ref = self.table_ref if table is not None else None
        visitors = table_ref if spec.roam else None

        def own(t: Any) -> tuple[Any, Any]:  # (shards, home ids) of one actor's constructor
            if table_ref is not None and isinstance(t, TableView) and t.table is table:
                return table_ref, t.client_ids
            return t, None

        from actors.server import start_server

        # the server first (placed before the clients take the nodes: on the head where the cluster
        # has one, actors.server.server_placement); it gets the clients' pool once they exist
        self._server_args = {
            "num_cpus": spec.server_cpus,
            "num_gpus": spec.server_gpus,
            "runtime_env": actor_runtime_env(spec.reproducible),
            **spec.server_kwargs,
        }
        self.server = start_server(**self._server_args, pool=None)
        self.clients = [
            ClientActor.options(
                num_cpus=spec.num_cpus,
                num_gpus=spec.num_gpus,
                max_restarts=spec.max_restarts,
                max_task_retries=0,
                runtime_env=actor_runtime_env(spec.reproducible),
            ).remote(h, spec.algorithm, ds_ref, own(t)[0], spec.host_spec, visitors, home=own(t)[1])
            for h, t in enumerate(tables)
        ]
        owner = owner_map(tables)  # arrays: the pool travels to the server actor
        sizes = ClientMap(table.client_ids, table.n_train()) if table is not None and spec.roam else None
        self._server_args["pool"] = RayPool(
            self.clients,
            owner,
            roam_sizes=sizes,
            client_state=spec.algorithm.traits.client_state,
            can_restart=spec.max_restarts != 0,
        )
        self.server.attach_pool.remote(self._server_args["pool"])  # before any other call (ordered)
        # the server starts while the client actors do (not after: 4.2 s of the first round at
        # 10,000 clients, raysim bench); both are up before the first round
        t_end = time.monotonic() + START_TIMEOUT_S
        pings = [c.ping.remote() for c in self.clients]
        self._await_server()
        ready, pending = ray.wait(pings, num_returns=len(pings), timeout=max(t_end - time.monotonic(), 0.0))
        get(ready)  # a constructor that raised: its exception, as on serial
        if pending:
            late = sorted(pings.index(p) for p in pending)
            raise ConfigError(
                f"client actors {late} (of {len(pings)}) did not start within {START_TIMEOUT_S:g} s: Ray "
                f"cannot place them or the cluster is too busy. Each asks for resources.num_cpus="
                f"{spec.num_cpus:g}, num_gpus={spec.num_gpus:g}; free now: {_free_now()}. Lower them, "
                "raise resources.clients_per_actor (fewer actors), or add nodes"
            )
        self._release_scale_request()  # the actors hold their resources now

    def _release_scale_request(self) -> None:
        """Withdraw the autoscaler request ``start`` made, if any (it is cluster-wide and persistent:
        left in place it would keep a long-lived cluster at the run's size after the run)."""
        if self._scale_request and ray.is_initialized():
            self._scale_request = False
            autoscale.release()

    def restart_server(self) -> None:
        """A fresh server actor over the same client actors (its initial state: the caller
        restores a checkpoint next). Also how ``start`` makes the first one."""
        from actors.server import start_server

        if self.server is not None:
            ray.kill(self.server)
        self.server = start_server(**self._server_args)
        self._await_server()

    def _await_server(self) -> None:
        """The server actor answers its first ping (placed, constructor ran), or a ConfigError."""
        ref = self.server.ping.remote()
        ready, _ = ray.wait([ref], timeout=START_TIMEOUT_S)
        if not ready:
            raise ConfigError(
                f"the server actor did not start within {START_TIMEOUT_S:g} s: Ray cannot place it or "
                f"the cluster is too busy. It asks for resources.server_cpus={self._server_args['num_cpus']:g}, "
                f"server_gpus={self._server_args['num_gpus']:g}; free now: {_free_now()}"
            )
        self._call("its start", ref)  # its constructor raised (algorithm.init ...): that exception
        self._server_node = str(self._call("its node id", self.server.node_id.remote()))

    def _call(self, what: str, ref: Any, deadline: bool = True) -> Any:
        """The server's answer to one call: an exception from code there raised as itself, its
        death (or its node's) as ``ServerLost``, no answer within ``CALL_TIMEOUT_S`` (with
        ``deadline``) as TimeoutError."""
        wait = CALL_TIMEOUT_S if deadline else None
        try:
            return get(ref, timeout=wait)
        except ray.exceptions.RayTaskError:
            raise  # a fault inside the server's call (an object lost with its node): not the server's death
        except ray.exceptions.RayActorError as err:  # it died, or its node vanished (unavailable first)
            raise ServerLost(f"the server actor was lost during {what}: {type(err).__name__}: {err}") from err
        except ray.exceptions.GetTimeoutError as err:
            raise TimeoutError(
                f"the server actor did not answer {what} within {wait:g} s (actors/backend.py "
                "CALL_TIMEOUT_S): a client actor it waits for may hang"
            ) from err

    def server_node_id(self) -> str | None:
        """The Ray node the server actor runs on (the run's summary.json records it), as it said
        when it started (no call now: a summary is written after a lost server too)."""
        return self._server_node

    def run_round(self, t: int, hparams: LocalHParams) -> RoundReport:
        # no deadline of its own: rounds.deadline_s bounds the clients' work, aggregate takes what it takes
        return self._call(f"round {t}", self.server.run_round.remote(t, hparams), deadline=False)

    def checkpoint(self) -> dict[str, Any]:
        return self._call("a checkpoint", self.server.checkpoint.remote())

    def restore(self, ckpt: Mapping[str, Any]) -> None:
        self._call("a restore", self.server.restore.remote(ckpt))

    def restore_clients(self, states: Mapping[int, dict[str, Any]]) -> None:
        self._call("the restore of restarted clients", self.server.restore_clients.remote(dict(states)))

    def converged(self) -> bool:
        return bool(self._call("converged", self.server.converged.remote()))

    def system_stats(self) -> list[dict[str, Any]]:
        return self._call("system_stats", self.server.system_stats.remote())

    def eval_broadcast(self) -> dict[str, np.ndarray]:
        return self._call("eval_broadcast", self.server.eval_broadcast.remote())

    def shutdown(self) -> None:
        self._release_scale_request()  # a start that failed after asking
        for a in [*self.clients, self.server]:
            if a is not None:
                ray.kill(a)
        self.clients, self.server = [], None
