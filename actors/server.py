"""ServerActor: a thin Ray shell over ``raysim.runtime.server.Server``."""

from __future__ import annotations

from typing import Any

import ray

from raysim.runtime.server import Server
from raysim.runtime.trainer import pick_device


class ServerActorImpl(Server):
    """The server on the GPU Ray assigned to it (``resources.server_gpus``), else the CPU."""

    def __init__(self, **server_kwargs: Any) -> None:
        # An exception of the constructor (the algorithm's init ...) is kept and raised by ``ping``,
        # the first call, as itself: Ray would turn it into an ActorDiedError, serial raises it.
        self.init_error: Exception | None = None
        try:
            gpu_ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
            super().__init__(device=str(pick_device(gpu_ids)), **server_kwargs)
        except Exception as exc:
            self.init_error = exc

    def attach_pool(self, pool: Any) -> None:
        """The client actors' pool, for a server started before them (``RayBackend.start``)."""
        self.pool = pool

    def node_id(self) -> str:
        """The Ray node this server runs on (a run's summary.json records it)."""
        return str(ray.get_runtime_context().get_node_id())

    def ping(self) -> bool:
        """Up: its constructor ran (else its exception is raised here)."""
        if self.init_error is not None:
            raise self.init_error
        return True


ServerActor = ray.remote(ServerActorImpl)


# The custom resource a KubeRay head advertises (rayStartParams resources: {"raysim_head": 1}, see
# raysim/k8s.py): the server actor asks for a sliver of it, so it lands on the head, the node that
# lives as long as the job (and is sized for it), not on a client pod that may be small or preempted.
HEAD_RESOURCE = "raysim_head"
HEAD_SHARE = 0.001  # any number of servers (runs, trials) fit on one head


def server_placement(num_cpus: float = 0.0, num_gpus: float = 0.0) -> dict[str, float]:
    """The custom resources the server actor requests: ``{HEAD_RESOURCE: HEAD_SHARE}`` when a live
    node advertises ``HEAD_RESOURCE`` and has the CPUs and GPUs the server asks for (a head started
    with ``--num-cpus=0`` cannot host a server with ``resources.server_cpus`` > 0: the rendered
    RayJob gives that one a worker group of its own); else none (Ray places it)."""
    for node in ray.nodes():
        res = node.get("Resources", {}) if node.get("Alive") else {}
        if res.get(HEAD_RESOURCE, 0) > 0 and res.get("CPU", 0) >= num_cpus and res.get("GPU", 0) >= num_gpus:
            return {HEAD_RESOURCE: HEAD_SHARE}
    return {}


def start_server(
    num_cpus: float = 0.0,
    num_gpus: float = 0.0,
    runtime_env: dict[str, Any] | None = None,
    **server_kwargs: Any,
) -> Any:
    """By default the server actor asks for no CPU so that client actors get every core (it is
    idle while they train); ``resources.server_cpus``/``server_gpus`` give it its own share
    (a hypernetwork trains there). On a cluster whose head advertises ``HEAD_RESOURCE`` it is
    placed on the head (``server_placement``). ``runtime_env``: as the client actors'
    (reproducible mode). ``pool=None`` starts it before the client actors exist; ``attach_pool``
    hands it theirs."""
    from actors.backend import actor_runtime_env

    return ServerActor.options(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources=server_placement(num_cpus, num_gpus),
        max_restarts=0,
        runtime_env=runtime_env if runtime_env is not None else actor_runtime_env(False),
    ).remote(**server_kwargs)
