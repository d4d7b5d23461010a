"""Which clients live on which host: packing by examples, the pooled client, noisy clients."""

from __future__ import annotations

import heapq
import math
from typing import Any

import numpy as np

SALT_NOISY_CLIENTS = 424242  # RNG purpose of the draw of label-noise clients


def pack_clients(shards: list[Any], num_hosts: int) -> list[list[Any]]:
    """Spread clients over ``num_hosts`` actors so that each holds about the same number of
    training examples (greedy: biggest client first onto the lightest actor that has fewer
    than ceil(C / A) clients; ties by id).

    A round waits for its slowest actor, so balancing work matters more than contiguous ids.
    Which actor hosts a client never changes its results (its RNG depends on the client only).
    """
    num_hosts = max(1, min(num_hosts, len(shards)))
    cap = math.ceil(len(shards) / num_hosts)
    hosts: list[list[Any]] = [[] for _ in range(num_hosts)]
    # the actors that still have room, lightest first: (load, clients, index); an actor leaves for
    # good once full, so the heap's top is always the (load, count, index)-smallest actor with room.
    # O(C log A) instead of scanning every actor for every client.
    room = [(0, 0, i) for i in range(num_hosts)]
    for s in sorted(shards, key=lambda s: (-len(s.train_idx), s.client_id)):
        load, count, h = room[0]
        hosts[h].append(s)
        if count + 1 < cap:
            heapq.heapreplace(room, (load + len(s.train_idx), count + 1, h))
        else:
            heapq.heappop(room)
    return [sorted(h, key=lambda s: s.client_id) for h in hosts]


def pick_noisy(num_clients: int, fraction: float, seed: int) -> frozenset[int]:
    """The clients whose training labels are replaced by uniform random labels (data.label_noise)."""
    k = int(round(fraction * num_clients))
    rng = np.random.default_rng([seed, SALT_NOISY_CLIENTS])
    return frozenset(int(c) for c in rng.choice(num_clients, size=k, replace=False)) if k else frozenset()


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
