"""Ray glue: the pool of client actors the server actor talks to, and the backend that
starts them. The only module of raysim/runtime that imports ray."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import ray

from raysim.algorithms.base import ClientTask
from raysim.config import ConfigError
from raysim.runtime.serial import ReplyCollector, assign_tasks
from raysim.runtime.server import PoolReply


class RayPool:
    """Client actors seen from the server: one ``ray.put`` per model per round, one call per
    actor, ``ray.wait`` with the round deadline; a failed or late actor's clients are dropouts."""

    def __init__(
        self,
        handles: Sequence[Any],
        owner: Mapping[int, int],
        ping_timeout_s: float = 60.0,
        roam_sizes: Mapping[int, int] | None = None,
    ) -> None:
        self.handles = list(handles)
        self.owner = dict(owner)
        self.roam_sizes = dict(roam_sizes) if roam_sizes is not None else None
        self.dead: set[int] = set()
        self.ping_timeout_s = ping_timeout_s

    def available(self) -> list[int]:
        if self.roam_sizes is not None:  # clients without state train on any live actor
            return sorted(self.owner) if len(self.dead) < len(self.handles) else []
        return sorted(c for c, h in self.owner.items() if h not in self.dead)

    def _check_alive(self, h: int) -> bool:
        try:
            ray.get(self.handles[h].ping.remote(), timeout=self.ping_timeout_s)
            return True
        except ray.exceptions.RayError:
            self.dead.add(h)
            return False

    def run(
        self,
        round_idx: int,
        tasks: Sequence[ClientTask],
        models: Mapping[str, np.ndarray],
        deadline_s: float | None,
    ) -> PoolReply:
        t0 = time.perf_counter()
        refs = {k: ray.put(v) for k, v in models.items()}
        t1 = time.perf_counter()
        live = [h for h in range(len(self.handles)) if h not in self.dead]
        grouped = assign_tasks(tasks, self.owner, self.roam_sizes, live)
        calls = {self.handles[h].run.remote(round_idx, ht, refs): h for h, ht in grouped.items() if h >= 0}
        ready, pending = ray.wait(list(calls), num_returns=len(calls), timeout=deadline_s)
        out = ReplyCollector()
        out.drop(grouped.get(-1, []), "unknown client")
        for ref in sorted(ready, key=lambda r: calls[r]):  # host order, not completion order
            h = calls[ref]
            try:
                out.add(ray.get(ref))
            except ray.exceptions.RayError as exc:
                out.drop(grouped[h], f"actor {h} failed: {type(exc).__name__}")
                if not self._check_alive(h) and self.roam_sizes is None:  # roaming clients live on
                    out.lost += [c for c, o in self.owner.items() if o == h]
        for ref in pending:
            out.drop(grouped[calls[ref]], f"missed the {deadline_s}s round deadline")
        return out.reply(broadcast_s=t1 - t0, train_s=time.perf_counter() - t1)

    def _live_calls(self, method: str, *args: Any) -> list[Any]:
        calls = [
            (h, getattr(self.handles[h], method).remote(*args))
            for h in range(len(self.handles))
            if h not in self.dead
        ]
        out = []
        for h, ref in calls:
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayError:
                self._check_alive(h)
        return out

    def evaluate(self, models: Mapping[str, np.ndarray]) -> list[dict[str, float]]:
        refs = {k: ray.put(v) for k, v in models.items()}
        return [row for rows in self._live_calls("evaluate", refs) for row in rows]

    def get_state(self) -> dict[int, dict[str, Any]]:
        return {cid: st for part in self._live_calls("get_state") for cid, st in part.items()}

    def set_state(self, states: Mapping[int, dict[str, Any]]) -> None:
        self._live_calls("set_state", dict(states))

    def stats(self) -> list[dict[str, Any]]:
        return self._live_calls("stats")


def ensure_ray(address: str | None, **init_kwargs: Any) -> None:
    """Connect to ``address`` (or RAY_ADDRESS) or start a local Ray in-process."""
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    kwargs.update(init_kwargs)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(**kwargs)


def check_resources(num_actors: int, num_cpus: float, num_gpus: float) -> None:
    """Refuse (ConfigError) placements the cluster can never satisfy, before anything starts."""
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    if num_gpus > 0 and num_actors * num_gpus > gpus + 1e-9:
        raise ConfigError(
            f"resources.num_gpus={num_gpus} x {num_actors} client actors needs {num_actors * num_gpus:g} GPUs, "
            f"the Ray cluster has {gpus:g}: lower num_gpus, raise clients_per_actor, or add GPU nodes"
        )
    if num_cpus > 0 and num_actors * num_cpus > cpus + 1e-9:
        raise ConfigError(
            f"resources.num_cpus={num_cpus} x {num_actors} client actors needs {num_actors * num_cpus:g} CPUs, "
            f"the Ray cluster has {cpus:g}: use clients_per_actor: auto, a smaller num_cpus (e.g. 0.25), "
            "or a bigger cluster"
        )


def cluster_totals() -> tuple[float, float]:
    res = ray.cluster_resources()
    return float(res.get("CPU", 0)), float(res.get("GPU", 0))


class RayBackend:
    """Starts the client actors and the server actor; the driver only calls ``run_round``."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        self.server: Any = None
        self.clients: list[Any] = []

    def cluster(self) -> tuple[float, float]:
        ensure_ray(self.address)
        return cluster_totals()

    def start(
        self,
        *,
        algorithm: Any,
        dataset: Any,
        host_shards: Sequence[Sequence[Any]],
        spec: Any,
        num_cpus: float,
        num_gpus: float,
        max_restarts: int,
        server_kwargs: dict[str, Any],
        roam: bool = False,
    ) -> None:
        from actors.client import ClientActor
        from actors.server import start_server

        ensure_ray(self.address)
        check_resources(len(host_shards), num_cpus, num_gpus)
        self.ds_ref = ds_ref = ray.put(dataset)  # once; actors on a node share zero-copy arrays. Kept
        # referenced for as long as the backend lives, so that a restarted actor can read it again.
        # without client state, every actor can train every client (index arrays only), and the
        # server balances each round's cohort over the actors
        visitors = ray.put([s for shards in host_shards for s in shards]) if roam else ()
        self.clients = [
            ClientActor.options(
                num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=0
            ).remote(h, algorithm, ds_ref, shards, spec, visitors)
            for h, shards in enumerate(host_shards)
        ]
        owner = {s.client_id: h for h, shards in enumerate(host_shards) for s in shards}
        ray.get([c.ping.remote() for c in self.clients])
        sizes = {s.client_id: len(s.train_idx) for shards in host_shards for s in shards} if roam else None
        self.server = start_server(pool=RayPool(self.clients, owner, roam_sizes=sizes), **server_kwargs)
        ray.get(self.server.models.remote())

    def run_round(self, t: int) -> Any:
        return ray.get(self.server.run_round.remote(t))

    def checkpoint(self) -> dict[str, Any]:
        return ray.get(self.server.checkpoint.remote())

    def restore(self, ckpt: Mapping[str, Any]) -> None:
        ray.get(self.server.restore.remote(ckpt))

    def system_stats(self) -> list[dict[str, Any]]:
        return ray.get(self.server.system_stats.remote())

    def models(self) -> dict[str, np.ndarray]:
        return ray.get(self.server.models.remote())

    def shutdown(self) -> None:
        for a in [*self.clients, self.server]:
            if a is not None:
                ray.kill(a)
        self.clients, self.server = [], None
