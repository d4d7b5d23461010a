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

    def ping(self) -> bool:
        """Up: its constructor ran (else its exception is raised here)."""
        if self.init_error is not None:
            raise self.init_error
        return True


ServerActor = ray.remote(ServerActorImpl)


def start_server(
    num_cpus: float = 0.0,
    num_gpus: float = 0.0,
    runtime_env: dict[str, Any] | None = None,
    **server_kwargs: Any,
) -> Any:
    """By default the server actor asks for no CPU so that client actors get every core (it is
    idle while they train); ``resources.server_cpus``/``server_gpus`` give it its own share
    (a hypernetwork trains there). ``runtime_env``: as the client actors' (reproducible mode)."""
    from actors.backend import actor_runtime_env

    return ServerActor.options(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        max_restarts=0,
        runtime_env=runtime_env if runtime_env is not None else actor_runtime_env(False),
    ).remote(**server_kwargs)
