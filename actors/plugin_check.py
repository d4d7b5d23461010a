"""Before a run's actors start: can every Ray node import the run's plug-ins?

Actors rebuild the model by name (``raysim.plugins.resolve`` on the worker) and unpickle the
algorithm object (which imports its class's module). When that module is missing on a node, Ray
would report a deserialisation failure or an actor death with the worker's traceback deep inside;
this check imports the same things in one cheap task per node, in the actors' own environment
(``runtime_env``), and refuses the run with one message naming the plug-in, the node and what to
install there.

What must be where: the package that provides a plug-in (an entry point, or an import path into an
installed package) must be installed on every node, in the version the driver has. A local module
given by import path is put on the actors' ``PYTHONPATH`` (``raysim.plugins.worker_env``), which
works on a local cluster; on a multi-node cluster its folder must exist at the same path on every
node (a shared file system), or be installed there as a package. Datasets and partitions run on the
driver only and need nothing on the nodes. Nodes that join after the check are not checked.
"""

from __future__ import annotations

import importlib
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raysim.config import ConfigError
from raysim.plugins import PluginError, local_roots, resolve

PROBE_TIMEOUT_S = 300.0  # a fresh worker with a new runtime_env imports torch: slow under load


def needed(algorithm: Any, model: str) -> list[tuple[str, str, str]]:
    """What the actors import, as (what, how, name): the algorithm's class by module and
    qualified name, the model by the name the config gave. raysim's own code is left out (it is
    there wherever the actors run), and so is a class defined in ``__main__`` (pickled by value)."""
    out: list[tuple[str, str, str]] = []
    cls = type(algorithm)
    if not cls.__module__.startswith("raysim.") and cls.__module__ != "__main__":
        out.append((f"algorithm {algorithm.name!r}", "class", f"{cls.__module__}:{cls.__qualname__}"))
    if ":" in model or model not in _builtin_models():
        out.append((f"model {model!r}", "model", model))
    return out


def _builtin_models() -> set[str]:
    from raysim.models.registry import MODELS

    return set(MODELS)


def probe(items: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """Import each item here; (what, why it failed) for those that did not (run on each node)."""
    problems = []
    for what, how, name in items:
        try:
            if how == "class":
                module, _, qual = name.partition(":")
                obj: Any = importlib.import_module(module)
                for piece in qual.split("."):
                    obj = getattr(obj, piece)
            else:
                resolve("models", name)
        except (ImportError, AttributeError, PluginError) as err:
            problems.append((what, f"{type(err).__name__}: {err}"))
    return problems


@ray.remote(num_cpus=0, max_retries=0)
def _probe_task(items: list[tuple[str, str, str]]) -> tuple[str, list[tuple[str, str]]]:
    return ray.util.get_node_ip_address(), probe(items)


def check_nodes(algorithm: Any, model: str, runtime_env: dict[str, Any]) -> None:
    """ConfigError when a live node cannot import what the actors will (nothing to do when the
    run uses raysim's own algorithm and model only)."""
    items = needed(algorithm, model)
    if not items:
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [
        _probe_task.options(
            runtime_env=runtime_env,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False),
        ).remote(items)
        for n in nodes
    ]
    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    if pending:
        raise ConfigError(
            f"checking that the Ray nodes can import the run's plug-ins took over {PROBE_TIMEOUT_S:g} s "
            f"on {len(pending)} of {len(refs)} nodes: the cluster is too busy or a node is unreachable"
        )
    for node, answer in zip(nodes, ray.get(refs), strict=True):
        ip, problems = answer
        if problems:
            raise ConfigError(message(problems, f"{ip} ({str(node['NodeID'])[:8]})"))


def message(problems: list[tuple[str, str]], node: str) -> str:
    what, why = problems[0]
    more = f" (and {', '.join(w for w, _ in problems[1:])})" if len(problems) > 1 else ""
    roots = local_roots()
    local = (
        f"; a local module must be at the same path on every node ({', '.join(roots)} here), or "
        "installed there as a package"
        if roots
        else ""
    )
    return (
        f"plug-in {what}{more} cannot be imported on Ray node {node}, where the actors build it by "
        f"name: {why}. Install the package that provides it on every node of the cluster (the same "
        f"version as on the driver){local}"
    )
