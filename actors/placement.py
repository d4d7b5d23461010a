"""Placement arithmetic: does every actor of a run fit on some node of the share it runs in?

Separate from ``actors.backend`` because it is pure arithmetic over resource numbers (no Ray call,
no actor): ``RayBackend.start`` calls ``check_resources`` (through ``actors.autoscale``, which on an
autoscaling cluster checks what it can grow to first) before it starts anything, so a placement
Ray could never satisfy is refused with the numbers of each node instead of an actor that waits
forever, and the tests check the arithmetic without a cluster.
"""

from __future__ import annotations

from collections.abc import Sequence

from raysim.config import ConfigError
from raysim.runtime.backend import NodeShare, Share

UNBOUNDED = 10**9  # actors that ask for nothing a node could run out of
EPS = 1e-9


def _gb(mb: float) -> str:
    return f"{mb / 1024:.1f} GB"


def gpu_devices(total: float) -> list[float]:
    """A node's GPUs one by one: Ray hands out a fraction of ONE device (two 0.6 never share two)."""
    whole = int(total + EPS)
    rest = total - whole
    return [1.0] * whole + ([rest] if rest > EPS else [])


def actors_per_node(
    cpus: float, devices: Sequence[float], memory_mb: float | None, ask: tuple[float, float, float]
) -> tuple[int, list[str]]:
    """How many actors asking for ``ask`` = (CPUs, GPUs, MB) fit on a node with that much free, and
    the arithmetic of each limit."""
    c, g, m = ask
    fits, why = [], []
    if c > 0:
        fits.append(int(cpus / c + EPS))
        why.append(f"CPU {cpus:g} / {c:g} = {fits[-1]}")
    if 0 < g < 1:
        fits.append(sum(int(d / g + EPS) for d in devices))
        why.append(f"GPU {len(devices)} x floor(1 / {g:g}) = {fits[-1]}")
    elif g >= 1:
        fits.append(int(sum(1 for d in devices if d > 1 - EPS) / g + EPS))
        why.append(f"GPU {len(devices)} / {g:g} = {fits[-1]}")
    if m > 0 and memory_mb is not None:
        fits.append(int(memory_mb / m + EPS))
        why.append(f"memory {_gb(memory_mb)} / {m:g} MB = {fits[-1]}")
    return (min(fits) if fits else UNBOUNDED), why


def _take(
    cpus: float, devices: list[float], memory_mb: float | None, ask: tuple[float, float, float]
) -> tuple[float, list[float], float | None] | None:
    """The node's free resources once one actor asking for ``ask`` is on it (None: it does not fit).
    A GPU fraction goes to the fullest device it fits on."""
    c, g, m = ask
    if cpus + EPS < c or (memory_mb is not None and m > 0 and memory_mb + EPS < m):
        return None
    devs = sorted(devices)
    if 0 < g < 1:
        i = next((i for i, d in enumerate(devs) if d + EPS >= g), None)
        if i is None:
            return None
        devs[i] -= g
    elif g >= 1:
        full = [i for i, d in enumerate(devs) if d > 1 - EPS]
        if len(full) + EPS < g:
            return None
        for i in full[: int(g)]:
            devs[i] = 0.0
    return cpus - c, devs, None if memory_mb is None else memory_mb - m


def place_on_nodes(
    nodes: Sequence[NodeShare], client: tuple[float, float, float], server: tuple[float, float, float]
) -> tuple[int, int | None, list[tuple[int, list[str]]]]:
    """The most client actors that fit beside the server, each actor on one node: (how many, the
    server's node or None when it fits on none, each node's count and arithmetic). Client actors
    are alike, so a node's count does not depend on the others': trying the server on each node
    gives the best placement exactly."""
    best: tuple[int, int | None, list[tuple[int, list[str]]]] = (0, None, [])
    for s, node in enumerate(nodes):
        left = _take(node.cpus, gpu_devices(node.gpus), node.memory_mb, server)
        if left is None:
            continue
        counts = [
            actors_per_node(*left, client)
            if i == s
            else actors_per_node(n.cpus, gpu_devices(n.gpus), n.memory_mb, client)
            for i, n in enumerate(nodes)
        ]
        total = min(sum(k for k, _ in counts), UNBOUNDED)
        if best[1] is None or total > best[0]:
            best = (total, s, counts)
    return best


def check_resources(
    share: Share,
    num_actors: int,
    num_cpus: float,
    num_gpus: float,
    server_cpus: float,
    server_gpus: float,
    actor_memory_mb: float = 0.0,
    *,
    grown_from: Share | None = None,
) -> None:
    """Refuse (ConfigError) placements the share can never satisfy, before anything starts: the
    totals first, then, where the nodes are known, each actor on one node (Ray never splits an
    actor, nor a GPU fraction, over two), with the arithmetic in the message. ``grown_from``: the
    share is what an autoscaling cluster that has ``grown_from`` now can grow to
    (``actors.autoscale.cluster_target``), and the messages say so."""

    def has(total: float, now: float | None, key: str, unit: str = "") -> str:
        if grown_from is None or now is None or total <= now + 1e-9:
            return f"the Ray cluster has {total:g}{unit}"
        return f"the Ray cluster can grow to {total:g}{unit} (resources.{key}; it has {now:g}{unit} now)"

    grow_hint = " (and the autoscaler's maxima)" if grown_from is not None else ""
    need_gpus = num_actors * num_gpus + server_gpus
    need_cpus = num_actors * num_cpus + server_cpus
    if need_gpus > share.gpus + 1e-9:
        now = grown_from.gpus if grown_from is not None else None
        raise ConfigError(
            f"resources.num_gpus={num_gpus} x {num_actors} client actors"
            + (f" + resources.server_gpus={server_gpus}" if server_gpus else "")
            + f" needs {need_gpus:g} GPUs, {has(share.gpus, now, 'cluster_max_gpus')}: lower num_gpus, "
            f"raise clients_per_actor, or add GPU nodes (resources.cluster_max_gpus{grow_hint} on an "
            "autoscaling cluster)"
        )
    if need_cpus > share.cpus + 1e-9:
        now = grown_from.cpus if grown_from is not None else None
        raise ConfigError(
            f"resources.num_cpus={num_cpus} x {num_actors} client actors"
            + (f" + resources.server_cpus={server_cpus}" if server_cpus else "")
            + f" needs {need_cpus:g} CPUs, {has(share.cpus, now, 'cluster_max_cpus')}: use "
            "clients_per_actor: auto, a smaller num_cpus (e.g. 0.25), or a bigger cluster "
            f"(resources.cluster_max_cpus{grow_hint} on an autoscaling cluster)"
        )
    need_mb = (num_actors + 1) * actor_memory_mb  # the server actor is a torch worker too
    if actor_memory_mb > 0 and share.memory_mb is not None and need_mb > share.memory_mb:
        fits = max(int(share.memory_mb // actor_memory_mb) - 1, 0)
        now_mb = grown_from.memory_mb if grown_from is not None else None
        offers = f"Ray offers {share.memory_mb / 1024:.1f} GB of memory for actors"
        if now_mb is not None and share.memory_mb > now_mb + 1e-9:
            offers = (
                f"the Ray cluster can grow to {share.memory_mb / 1024:.1f} GB of memory for actors "
                f"(resources.cluster_max_memory_gb; it has {now_mb / 1024:.1f} GB now)"
            )
        raise ConfigError(
            f"{num_actors} client actors + the server x resources.actor_memory_mb={actor_memory_mb:g} MB "
            f"= {need_mb / 1024:.1f} GB, but {offers}: at most {fits} client actors fit. Raise "
            "resources.clients_per_actor (or use clients_per_actor: auto, or fewer num_actors), add nodes "
            "(resources.cluster_max_memory_gb on an autoscaling cluster), or, if you measured a smaller "
            "per-actor cost on your machines, lower resources.actor_memory_mb (0 skips this check)"
        )
    if share.nodes:
        check_nodes(share.nodes, num_actors, num_cpus, num_gpus, server_cpus, server_gpus, actor_memory_mb)


def check_nodes(
    nodes: Sequence[NodeShare],
    num_actors: int,
    num_cpus: float,
    num_gpus: float,
    server_cpus: float,
    server_gpus: float,
    actor_memory_mb: float = 0.0,
) -> None:
    """Refuse (ConfigError) a placement that fits the cluster's totals but not its nodes: ``prepare``
    would otherwise wait for an actor Ray can never place."""
    client = (num_cpus, num_gpus, actor_memory_mb)
    server = (server_cpus, server_gpus, actor_memory_mb)
    fit, at, counts = place_on_nodes(nodes, client, server)
    if at is not None and fit >= num_actors:
        return
    asks = (
        f"{num_actors} client actors of resources.num_cpus={num_cpus:g}, num_gpus={num_gpus:g}"
        + (f", actor_memory_mb={actor_memory_mb:g}" if actor_memory_mb > 0 else "")
        + f" and the server (server_cpus={server_cpus:g}, server_gpus={server_gpus:g})"
    )

    def node_line(i: int, n: NodeShare) -> str:
        mem = "" if n.memory_mb is None else f", {_gb(n.memory_mb)}"
        head = f"  node {n.name}: {n.cpus:g} CPUs, {n.gpus:g} GPUs{mem}"
        if not counts:
            return head
        k, why = counts[i]
        where = " (less the server's share)" if i == at else ""
        holds = "any number" if k >= UNBOUNDED else str(k)
        return f"{head}{where}: {', '.join(why) or 'nothing asked'} -> {holds}"

    lines = "\n".join(node_line(i, n) for i, n in enumerate(nodes))
    if at is None:
        raise ConfigError(
            f"resources: {asks} fit the Ray cluster's totals, but no node can hold the server "
            f"(each actor runs on one node, a GPU fraction on one GPU):\n{lines}\n"
            "lower resources.server_cpus / server_gpus, or add a node that holds them"
        )
    hint = ""
    if 0 < num_gpus < 1:
        hint = f" (a GPU fraction never spans two GPUs: num_gpus=1/k puts k actors on a GPU, {num_gpus:g} puts {int(1 / num_gpus + EPS)})"
    raise ConfigError(
        f"resources: {asks} fit the Ray cluster's totals but not its nodes (each actor runs on one "
        f"node){hint}:\n{lines}\n"
        f"at most {fit} client actors fit, {num_actors} asked: lower resources.num_cpus / num_gpus"
        + (" / actor_memory_mb" if actor_memory_mb > 0 else "")
        + ", raise resources.clients_per_actor (fewer actors), or add nodes"
    )
