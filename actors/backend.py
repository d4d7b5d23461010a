"""The Ray backend: starts the client actors and the server actor, and the pool of client
actors the server talks to. The only place, with the actor shells, that imports ray."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import ray

from raysim.algorithms.base import ClientTask, LinearSum
from raysim.config import ConfigError
from raysim.runtime.backend import ServerLost, Share, StartSpec
from raysim.runtime.pool import PoolReply, ReplyCollector, assign_tasks
from raysim.runtime.server import RoundReport


class RayPool:
    """Client actors seen from the server: one ``ray.put`` per broadcast array per round, one call
    per actor, ``ray.wait`` with the round deadline; a failed or late actor's clients are dropouts
    and calls still running at the deadline are cancelled."""

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
        self.replied: list[int] = []  # hosts whose reply of the last round arrived in time

    def available(self) -> list[int]:
        if self.roam_sizes is not None:  # clients without state train on any live actor
            return sorted(self.owner) if len(self.dead) < len(self.handles) else []
        return sorted(c for c, h in self.owner.items() if h not in self.dead)

    def _hosted_by(self, h: int) -> list[int]:
        return [c for c, o in self.owner.items() if o == h]

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
        broadcast: Mapping[str, np.ndarray],
        deadline_s: float | None,
    ) -> PoolReply:
        t0 = time.perf_counter()
        refs = {k: ray.put(v) for k, v in broadcast.items()}
        t1 = time.perf_counter()
        live = [h for h in range(len(self.handles)) if h not in self.dead]
        grouped = assign_tasks(tasks, self.owner, self.roam_sizes, live)
        calls = {
            self.handles[h].run.remote(round_idx, ht, {k: refs[k] for k in _keys(ht)}): h
            for h, ht in grouped.items()
            if h >= 0
        }
        ready, pending = ray.wait(list(calls), num_returns=len(calls), timeout=deadline_s)
        out = ReplyCollector()
        out.drop(grouped.get(-1, []), "unknown client")
        self.replied = []
        for ref in sorted(ready, key=lambda r: calls[r]):  # host order, not completion order
            h = calls[ref]
            try:
                out.add(ray.get(ref), host=h)
                self.replied.append(h)
            except ray.exceptions.RayError as exc:
                out.drop(grouped[h], f"actor {h} failed: {type(exc).__name__}")
                if not self._check_alive(h) and self.roam_sizes is None:  # roaming clients live on
                    out.lost += self._hosted_by(h)
        for ref in pending:
            ray.cancel(ref)  # the actor stops between clients and is free for the next round
            out.drop(grouped[calls[ref]], f"missed the {deadline_s}s round deadline")
        return out.reply(broadcast_s=t1 - t0, train_s=time.perf_counter() - t1)

    def commit(self, round_idx: int) -> list[int]:
        calls = {self.handles[h].commit.remote(round_idx): h for h in self.replied}
        lost: list[int] = []
        for ref, h in calls.items():
            try:
                ray.get(ref)
            except ray.exceptions.RayError:  # died since it replied: its clients are lost from now on
                self.dead.add(h)
                if self.roam_sizes is None:
                    lost += self._hosted_by(h)
        return lost

    def withdraw(
        self, round_idx: int, client_ids: Sequence[int]
    ) -> tuple[dict[int, list[LinearSum]], list[int]]:
        calls = {self.handles[h].withdraw.remote(round_idx, list(client_ids)): h for h in self.replied}
        got: dict[int, list[LinearSum]] = {}
        failed: list[int] = []
        for ref, h in calls.items():
            try:
                got[h] = ray.get(ref)
            except ray.exceptions.RayError:  # died since it replied: the server drops its partials
                failed.append(h)
                self._check_alive(h)
        return got, failed

    def _all_live(self, method: str, *args: Any, strict: bool) -> list[Any]:
        """Call every live actor. ``strict``: one that fails is an error (client state would be
        lost silently otherwise; actors already known dead lost their clients, which is counted);
        else its reply is skipped and it is found dead by its next round."""
        calls = [
            (h, getattr(self.handles[h], method).remote(*args))
            for h in range(len(self.handles))
            if h not in self.dead
        ]
        out = []
        for h, ref in calls:
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayError as exc:
                if strict:
                    raise RuntimeError(
                        f"client actor {h} failed during {method}: {type(exc).__name__}: {exc}"
                    ) from exc
                self._check_alive(h)
        return out

    def evaluate(self, broadcast: Mapping[str, np.ndarray]) -> list[dict[str, float]]:
        refs = {k: ray.put(v) for k, v in broadcast.items()}
        return [row for rows in self._all_live("evaluate", refs, strict=False) for row in rows]

    def get_state(self) -> dict[int, dict[str, Any]]:
        return {cid: st for part in self._all_live("get_state", strict=True) for cid, st in part.items()}

    def set_state(self, states: Mapping[int, dict[str, Any]]) -> None:
        self._all_live("set_state", dict(states), strict=True)

    def stats(self) -> list[dict[str, Any]]:
        return self._all_live("stats", strict=False)


def _keys(tasks: Sequence[ClientTask]) -> list[str]:
    """The broadcast arrays these tasks read (an actor fetches only those)."""
    return sorted({k for t in tasks for k in (t.model_key, *t.broadcast_keys)})


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


def check_resources(
    share: Share, num_actors: int, num_cpus: float, num_gpus: float, server_cpus: float, server_gpus: float
) -> None:
    """Refuse (ConfigError) placements the share can never satisfy, before anything starts."""
    need_gpus = num_actors * num_gpus + server_gpus
    need_cpus = num_actors * num_cpus + server_cpus
    if need_gpus > share.gpus + 1e-9:
        raise ConfigError(
            f"resources.num_gpus={num_gpus} x {num_actors} client actors"
            + (f" + resources.server_gpus={server_gpus}" if server_gpus else "")
            + f" needs {need_gpus:g} GPUs, the Ray cluster has {share.gpus:g}: lower num_gpus, raise "
            "clients_per_actor, or add GPU nodes"
        )
    if need_cpus > share.cpus + 1e-9:
        raise ConfigError(
            f"resources.num_cpus={num_cpus} x {num_actors} client actors"
            + (f" + resources.server_cpus={server_cpus}" if server_cpus else "")
            + f" needs {need_cpus:g} CPUs, the Ray cluster has {share.cpus:g}: use clients_per_actor: auto, "
            "a smaller num_cpus (e.g. 0.25), or a bigger cluster"
        )


class RayBackend:
    """Starts the client actors and the server actor; the driver only calls the server."""

    def __init__(self, address: str | None = None, share: Share | None = None) -> None:
        self.address = address
        self._share = share
        self.server: Any = None
        self.clients: list[Any] = []

    def share(self) -> Share:
        if self._share is not None:
            return self._share
        ensure_ray(self.address)
        res = ray.cluster_resources()
        return Share(cpus=float(res.get("CPU", 0)), gpus=float(res.get("GPU", 0)))

    def start(self, spec: StartSpec) -> None:
        from actors.client import ClientActor

        ensure_ray(self.address)
        check_resources(
            self.share(),
            len(spec.host_shards),
            spec.num_cpus,
            spec.num_gpus,
            spec.server_cpus,
            spec.server_gpus,
        )
        self.ds_ref = ds_ref = ray.put(spec.dataset)  # once; actors on a node share zero-copy arrays.
        # Kept referenced for as long as the backend lives, so that a restarted actor can read it again.
        # Without client state every actor can train every client (index arrays only), and the
        # server balances each round's cohort over the actors.
        visitors = ray.put([s for shards in spec.host_shards for s in shards]) if spec.roam else ()
        self.clients = [
            ClientActor.options(
                num_cpus=spec.num_cpus,
                num_gpus=spec.num_gpus,
                max_restarts=spec.max_restarts,
                max_task_retries=0,
            ).remote(h, spec.algorithm, ds_ref, shards, spec.host_spec, visitors)
            for h, shards in enumerate(spec.host_shards)
        ]
        owner = {s.client_id: h for h, shards in enumerate(spec.host_shards) for s in shards}
        ray.get([c.ping.remote() for c in self.clients])
        sizes = (
            {s.client_id: len(s.train_idx) for shards in spec.host_shards for s in shards}
            if spec.roam
            else None
        )
        self._server_args = {
            "num_cpus": spec.server_cpus,
            "num_gpus": spec.server_gpus,
            "pool": RayPool(self.clients, owner, roam_sizes=sizes),
            **spec.server_kwargs,
        }
        self.restart_server()

    def restart_server(self) -> None:
        """A fresh server actor over the same client actors (its initial state: the caller
        restores a checkpoint next). Also how ``start`` makes the first one."""
        from actors.server import start_server

        if self.server is not None:
            ray.kill(self.server)
        self.server = start_server(**self._server_args)
        ray.get(self.server.eval_broadcast.remote())  # the server is up (its init ran)

    def run_round(self, t: int, hparams: Mapping[str, float]) -> RoundReport:
        try:
            return ray.get(self.server.run_round.remote(t, dict(hparams)))
        except ray.exceptions.ActorDiedError as err:
            raise ServerLost(f"the server actor died during round {t}: {err}") from err

    def checkpoint(self) -> dict[str, Any]:
        return ray.get(self.server.checkpoint.remote())

    def restore(self, ckpt: Mapping[str, Any]) -> None:
        ray.get(self.server.restore.remote(ckpt))

    def converged(self) -> bool:
        return bool(ray.get(self.server.converged.remote()))

    def system_stats(self) -> list[dict[str, Any]]:
        return ray.get(self.server.system_stats.remote())

    def eval_broadcast(self) -> dict[str, np.ndarray]:
        return ray.get(self.server.eval_broadcast.remote())

    def shutdown(self) -> None:
        for a in [*self.clients, self.server]:
            if a is not None:
                ray.kill(a)
        self.clients, self.server = [], None
