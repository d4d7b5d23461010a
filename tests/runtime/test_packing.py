from types import SimpleNamespace

import numpy as np

from raysim.runtime.packing import pack_clients


def shard(cid, n):
    return SimpleNamespace(client_id=cid, train_idx=np.zeros(n, dtype=np.int64))


def test_packing_balances_examples_and_respects_the_per_actor_cap():
    sizes = [100, 10, 10, 10, 60, 50]
    hosts = pack_clients([shard(i, n) for i, n in enumerate(sizes)], 2)
    # biggest first onto the lightest actor, cap 3: 100->h0, 60->h1, 50->h1, 10->h0, 10->h0 (tie, lower id), 10->h1
    assert [[s.client_id for s in h] for h in hosts] == [[0, 1, 2], [3, 4, 5]]
    assert [sum(len(s.train_idx) for s in h) for h in hosts] == [120, 120]


def test_packing_covers_every_client_once_and_keeps_ids_sorted():
    shards = [shard(i, (i * 37) % 23 + 1) for i in range(101)]
    for a in (1, 2, 7, 101, 500):
        hosts = pack_clients(shards, a)
        assert len(hosts) == min(a, 101)
        ids = [s.client_id for h in hosts for s in h]
        assert sorted(ids) == list(range(101))
        assert all([s.client_id for s in h] == sorted(s.client_id for s in h) for h in hosts)
        assert max(len(h) for h in hosts) <= -(-101 // min(a, 101))


def test_balance_tasks_spreads_one_rounds_work_longest_first():
    from raysim.algorithms.base import ClientTask
    from raysim.runtime.pool import balance_tasks

    sizes = {0: 50, 1: 40, 2: 30, 3: 20, 4: 10}
    tasks = [ClientTask(client_id=c, model_key="global") for c in (4, 3, 2, 1, 0, 99)]
    out = balance_tasks(tasks, sizes, [0, 1])
    # 50->h0, 40->h1, 30->h1 (40<50), 20->h0 (50<70), 10->h0 (70=70, lower id); 99 is unknown
    assert {h: [t.client_id for t in ts] for h, ts in out.items()} == {0: [0, 3, 4], 1: [1, 2], -1: [99]}


def test_only_stateless_algorithms_roam_and_only_with_auto_packing():
    from raysim.algorithms import build_algorithm
    from raysim.runtime.packing import roams

    fedavg, scaffold = (build_algorithm(n).traits.client_state for n in ("fedavg", "scaffold"))
    assert roams(fedavg, 2, "auto")
    assert not roams(fedavg, 1, "auto")
    assert not roams(scaffold, 2, "auto")
    assert not roams(fedavg, 2, 3)
