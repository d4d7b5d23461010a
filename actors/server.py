"""ServerActor: a thin Ray shell over ``raysim.runtime.server.Server``."""

from __future__ import annotations

from typing import Any

import ray

from raysim.runtime.server import Server

ServerActor = ray.remote(Server)


def start_server(num_cpus: float = 0, **server_kwargs: Any) -> Any:
    """The server actor holds state and aggregates; it asks for no CPU so that client actors
    get every core (it is idle while they train)."""
    return ServerActor.options(num_cpus=num_cpus, max_restarts=0).remote(**server_kwargs)
