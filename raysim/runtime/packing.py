"""Which clients live on which host: how many client actors (``plan_actors``, the one actor-count
rule), packing by examples, the pooled client, noisy clients."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from raysim.data.federation import ShardTable

if TYPE_CHECKING:
    from raysim.config import ResourcesConfig

SALT_NOISY_CLIENTS = 424242  # RNG purpose of the draw of label-noise clients


def pack_hosts(client_ids: np.ndarray, sizes: np.ndarray, num_hosts: int) -> np.ndarray:
    """The host of each client (``client_ids[k]`` with ``sizes[k]`` training examples) when
    ``num_hosts`` actors share them so that each holds about the same number of training examples
    (greedy: biggest client first onto the lightest actor that has fewer than ceil(C / A) clients;
    ties by id).

    A round waits for its slowest actor, so balancing work matters more than contiguous ids.
    Which actor hosts a client never changes its results (its RNG depends on the client only).
    Clients of equal size (partition ``sampled``) are dealt round-robin in id order, which is
    what the greedy rule does then, without a Python step per client.
    """
    ids, sizes = np.asarray(client_ids, dtype=np.int64), np.asarray(sizes, dtype=np.int64)
    num_hosts = max(1, min(num_hosts, len(ids)))
    cap = math.ceil(len(ids) / num_hosts)
    order = np.lexsort((ids, -sizes))
    host = np.empty(len(ids), dtype=np.int64)
    if len(ids) == 0:
        return host
    if sizes.min() == sizes.max():  # every actor equally loaded after each pass: round-robin
        host[order] = np.arange(len(ids), dtype=np.int64) % num_hosts
        return host
    # the actors that still have room, lightest first: (load, clients, index); an actor leaves for
    # good once full, so the heap's top is always the (load, count, index)-smallest actor with room.
    # O(C log A) instead of scanning every actor for every client.
    room = [(0, 0, i) for i in range(num_hosts)]
    out = host.tolist()
    size_of = sizes.tolist()
    for k in order.tolist():
        load, count, h = room[0]
        out[k] = h
        if count + 1 < cap:
            heapq.heapreplace(room, (load + size_of[k], count + 1, h))
        else:
            heapq.heappop(room)
    return np.asarray(out, dtype=np.int64)


def pack_clients(shards: list[Any], num_hosts: int) -> list[list[Any]]:
    """``pack_hosts`` for a list of ``ClientShard``: each host's shards, sorted by id."""
    if not shards:
        return [[]]
    ids = np.fromiter((s.client_id for s in shards), dtype=np.int64, count=len(shards))
    sizes = np.fromiter((len(s.train_idx) for s in shards), dtype=np.int64, count=len(shards))
    host = pack_hosts(ids, sizes, num_hosts)
    return [
        [shards[k] for k in sorted(np.flatnonzero(host == h).tolist(), key=lambda k: shards[k].client_id)]
        for h in range(max(1, min(num_hosts, len(shards))))
    ]


def pack_table(table: ShardTable, num_hosts: int) -> list[ShardTable]:
    """``pack_hosts`` for a ``ShardTable``: each host's clients as a table of their own."""
    host = pack_hosts(table.client_ids, table.n_train(), num_hosts)
    return [table.take(np.flatnonzero(host == h)) for h in range(max(1, min(num_hosts, len(table))))]


def pick_noisy(num_clients: int, fraction: float, seed: int) -> frozenset[int]:
    """The clients whose training labels are replaced by uniform random labels (data.label_noise)."""
    k = int(round(fraction * num_clients))
    rng = np.random.default_rng([seed, SALT_NOISY_CLIENTS])
    return frozenset(int(c) for c in rng.choice(num_clients, size=k, replace=False)) if k else frozenset()


def pooled_table(table: ShardTable) -> ShardTable:
    """All clients as one (an algorithm with ``Traits.pooled``: the centralised reference), in
    client order."""
    one = np.array([0, len(table.train_idx)], dtype=np.int64)
    return ShardTable.from_arrays(
        client_ids=np.zeros(1, dtype=np.int64),
        train_idx=table.train_idx,
        train_off=one,
        val_idx=table.val_idx,
        val_off=np.array([0, len(table.val_idx)], dtype=np.int64),
        test_idx=table.test_idx,
        test_off=np.array([0, len(table.test_idx)], dtype=np.int64),
        group=np.full(1, -1, dtype=np.int64),
        rotation=np.zeros(1, dtype=np.int64),
    )


def pooled_shard(shards: list[Any]) -> Any:
    """All shards as one client (an algorithm with ``Traits.pooled``: the centralised reference)."""
    from raysim.data import ClientShard

    cat = np.concatenate
    return ClientShard(
        client_id=0,
        train_idx=cat([s.train_idx for s in shards]),
        val_idx=cat([s.val_idx for s in shards]),
        test_idx=cat([s.test_idx for s in shards]),
        group=-1,
        rotation=0,
        label_perm=None,
    )


def roams(client_state: bool, num_hosts: int, clients_per_actor: int | str) -> bool:
    """Clients train on whichever actor has least work this round when the algorithm keeps no
    per-client state and the packing is ``auto`` (``clients_per_actor: N`` pins them)."""
    return num_hosts > 1 and not client_state and clients_per_actor == "auto"


# ---------------------------------------------------------------------------------------------
# How many client actors, how many clients each, what each costs: the one rule (docs/architecture.md,
# "Actors and resources"). The runtime, `raysim k8s render`, Tune's placement groups and the bench's
# cost model all ask `plan_actors`; none restates it.

EPS = 1e-9  # 2 / 0.25 must be 8 actors, not 7.999...

ActorRule = Literal["pooled", "clients_per_actor", "num_actors", "resources", "per_actor_default", "unsized"]


@dataclass(frozen=True)
class ActorPlan:
    """The client actors one run starts and what they ask of Ray (see :func:`plan_actors`).

    ``clients_per_actor`` is the most clients one actor holds, ``ceil(clients / actors)`` (1 when
    the algorithm pools: one client holds every shard). ``server_cpus``/``server_gpus`` are what the
    server actor holds back (0 on the serial backend, whose server is no actor). ``memory_mb`` is one
    actor's private memory (``resources.actor_memory_mb``); the server, a torch worker too, costs as
    much. ``rule`` says which setting picked ``actors``; :meth:`explain` says it with the arithmetic.
    """

    actors: int
    clients_per_actor: int
    cpus: float  # per client actor (resources.num_cpus)
    gpus: float  # per client actor (resources.num_gpus); fractions share a GPU
    server_cpus: float
    server_gpus: float
    memory_mb: float
    rule: ActorRule
    clients: int  # the clients to host (data.num_clients)
    asked: int | None = None  # clients_per_actor N, num_actors, or the per-actor default that applied
    cohort: int | None = None  # the cap of the per-actor default (rounds.clients_per_round)

    @property
    def total_cpus(self) -> float:
        return self.actors * self.cpus + self.server_cpus

    @property
    def total_gpus(self) -> float:
        return self.actors * self.gpus + self.server_gpus

    @property
    def total_memory_mb(self) -> float:
        return (self.actors + 1) * self.memory_mb  # the server actor is a torch worker too

    def explain(self, source: str = "set by the experiment", algorithm: str = "the algorithm") -> str:
        """Why ``A`` is what it is, with the arithmetic (the header of a rendered RayJob says it);
        ``source`` says where a fixed ``resources`` value came from (a flag, or the experiment)."""
        n, a, k = self.clients, self.actors, self.asked
        if self.rule == "pooled":
            return f"A = 1: {algorithm} pools every client's data into one client"
        if self.rule == "clients_per_actor":
            return f"A = ceil({n} / {k}) = {a} ({source}: resources.clients_per_actor = {k})"
        if self.rule == "num_actors":
            capped = f", at most the {n} clients" if k is not None and k > n else ""
            return f"A = {a} ({source}: resources.num_actors = {k}{capped})"
        if self.rule == "per_actor_default":
            per = math.ceil(n / k) if k else a
            if per <= a:
                return (
                    f"A = ceil({n} / {k}) = {per} (clients_per_actor: auto without num_actors: one actor "
                    f"per {k} clients, no more than the {max(1, min(self.cohort or n, n))} a round trains)"
                )
            return (
                f"A = {a}, the clients a round trains (rounds.clients_per_round), not ceil({n} / {k}) = "
                f"{per} (clients_per_actor: auto without num_actors): more actors than the cohort would "
                f"idle every round; each holds its own ~{math.ceil(n / a)} clients"
            )
        if self.rule == "resources":
            return (
                f"A = {a}: as many actors of ({self.cpus:g} CPU, {self.gpus:g} GPU) as the resources hold "
                f"beside the server's ({self.server_cpus:g} CPU, {self.server_gpus:g} GPU), at most the "
                f"{n} clients and at least one (clients_per_actor: auto without num_actors)"
            )
        return (
            f"A = {a}: min({n} clients, 2), no resources known (clients_per_actor: auto without num_actors)"
        )


def grown(have: float | None, most: float | None) -> float | None:
    """What a cluster that has ``have`` of a resource now can grow to, ``most`` being what the
    config says it can (``resources.cluster_max_*``; None: no growth known). ``have`` None (nothing
    known, e.g. ``raysim k8s render`` sizing the cluster from the job) stays None."""
    if have is None or most is None:
        return have
    return max(float(have), float(most))


def follows_resources(resources: ResourcesConfig) -> bool:
    """The actor count is left to the resources available (``clients_per_actor: auto`` without
    ``num_actors``): whoever fixes a cluster's share first (a Tune trial's placement group, a
    Kubernetes job sized from the experiment) pins ``num_actors`` to keep the count it planned."""
    return resources.clients_per_actor == "auto" and resources.num_actors is None


def plan_actors(
    resources: ResourcesConfig,
    num_clients: int,
    *,
    pooled: bool = False,
    cpus: float | None = None,
    gpus: float | None = None,
    per_actor_default: int | None = None,
    cohort: int | None = None,
) -> ActorPlan:
    """How many client actors a run starts, how many clients each holds and what each asks for.

    In order: an algorithm that pools every shard into one client gets one actor;
    ``clients_per_actor: N`` gives ``ceil(clients / N)``; ``num_actors`` gives ``min(clients,
    num_actors)``. ``auto`` without ``num_actors`` fills ``cpus``/``gpus`` (what the whole run may
    use, the server's share included; the server holds back ``server_cpus``/``server_gpus`` on the
    Ray backend only): as many actors as the GPUs hold (``num_gpus > 0``) and the CPUs hold
    (``num_cpus > 0``), never more than there are clients and at least one (if even one does not
    fit, the backend's resource check says so with the numbers). On the Ray backend, ``cpus``/``gpus``
    given are raised to ``resources.cluster_max_cpus``/``cluster_max_gpus`` (:func:`grown`): an
    autoscaling cluster is sized for what it can grow to (the run asks the autoscaler for it,
    ``actors.autoscale``). With neither known, a caller that
    sizes the cluster from the job (``raysim k8s render``) passes ``per_actor_default`` and gets
    ``min(ceil(clients / per_actor_default), cohort)``; otherwise ``min(clients, 2)``.
    """
    res, n = resources, num_clients
    ray = res.backend == "ray"
    if ray:  # an autoscaling cluster: size to what it can grow to, not what it has now
        cpus, gpus = grown(cpus, res.cluster_max_cpus), grown(gpus, res.cluster_max_gpus)
    server_cpus, server_gpus = (float(res.server_cpus), float(res.server_gpus)) if ray else (0.0, 0.0)
    asked: int | None = None
    rule: ActorRule
    if pooled:
        actors, rule = 1, "pooled"
    elif res.clients_per_actor != "auto":
        asked = int(res.clients_per_actor)
        actors, rule = math.ceil(n / asked), "clients_per_actor"
    elif res.num_actors is not None:
        asked = int(res.num_actors)
        actors, rule = min(n, asked), "num_actors"
    else:
        fits = []
        if res.num_gpus > 0 and gpus is not None:
            fits.append(int(max(0.0, gpus - server_gpus) / res.num_gpus + EPS))
        if res.num_cpus > 0 and cpus is not None:
            fits.append(int(max(0.0, cpus - server_cpus) / res.num_cpus + EPS))
        if fits:
            actors, rule = max(1, min(n, *fits)), "resources"
        elif per_actor_default is not None and cpus is None and gpus is None:
            asked = per_actor_default
            cap = max(1, min(cohort if cohort is not None else n, n))
            actors, rule = min(math.ceil(n / per_actor_default), cap), "per_actor_default"
        else:
            actors, rule = max(1, min(n, 2)), "unsized"
    return ActorPlan(
        actors=actors,
        clients_per_actor=1 if pooled else math.ceil(n / actors),
        cpus=float(res.num_cpus),
        gpus=float(res.num_gpus),
        server_cpus=server_cpus,
        server_gpus=server_gpus,
        memory_mb=float(res.actor_memory_mb),
        rule=rule,
        clients=n,
        asked=asked,
        cohort=cohort if rule == "per_actor_default" else None,
    )
