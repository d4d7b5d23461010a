from types import SimpleNamespace

import numpy as np
import pytest

from raysim.runtime.packing import pack_clients
from tests.helpers import client_hparams


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
    tasks = [
        ClientTask(client_id=c, model_key="global", hparams=client_hparams()) for c in (4, 3, 2, 1, 0, 99)
    ]
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


def _digits_host(home, visitors, algorithm=None):
    from raysim.algorithms import build_algorithm
    from raysim.data import load_dataset
    from raysim.runtime.host import ClientHost, HostSpec

    ds = load_dataset("digits")
    spec = HostSpec(
        model="mlp", input_shape=ds.input_shape, num_classes=ds.num_classes, mean=ds.mean, std=ds.std, seed=0
    )
    return ClientHost(0, algorithm or build_algorithm("fedavg"), ds, home, spec, visitors=visitors)


def test_a_roaming_host_builds_visitors_per_call_and_trains_them_as_their_owner_would():
    """Visitors arrive as one ShardTable and the host's own clients are one too: it keeps no client
    object between calls (O(N) objects per actor before: issue 13), only its own clients' state, and
    a visitor trains to the same bits as on the host that owns it."""
    from raysim.algorithms.base import ClientTask
    from raysim.data import ShardTable, build_federation, load_dataset
    from raysim.models.flat import init_params
    from raysim.runtime.host import HostedClient

    ds = load_dataset("digits")
    fed = build_federation(ds, scheme="dirichlet", num_clients=12, seed=0, alpha=0.5)
    table = ShardTable(list(fed.clients))
    roaming = _digits_host(list(fed.clients[:3]), table)
    owner = _digits_host([fed.clients[7]], None)
    assert roaming.client_ids() == [0, 1, 2] and len(roaming.own) == 3
    assert not any(isinstance(v, HostedClient) for v in vars(roaming).values())
    params = init_params("mlp", ds.input_shape, ds.num_classes, 0)
    task = [ClientTask(client_id=7, model_key="global", hparams=client_hparams(lr=0.1, batch_size=16))]
    a = roaming.run(1, task, {"global": params})
    b = owner.run(1, task, {"global": params})
    assert not a.dropouts and [r.client_id for r in a.results] == [7]
    np.testing.assert_array_equal(a.partials[0].fixed_delta, b.partials[0].fixed_delta)
    assert roaming.commit(1) == 1 and roaming.state == {}  # FedAvg keeps no state; nothing kept
    # a client outside the table is still a counted dropout, not an error
    c = roaming.run(
        2, [ClientTask(client_id=99, model_key="global", hparams=client_hparams(lr=0.1))], {"global": params}
    )
    assert c.dropouts == [(99, "not hosted on actor 0")]


def test_an_algorithm_that_keeps_state_it_did_not_declare_fails_loudly_on_a_visitor():
    from raysim.algorithms.base import ClientTask
    from raysim.algorithms.fedavg import FedAvg
    from raysim.data import ShardTable, build_federation, load_dataset
    from raysim.models.flat import init_params

    class Sneaky(FedAvg):
        def client_update(self, task, params, client):
            client.state["seen"] = np.ones(1)
            return super().client_update(task, params, client)

    ds = load_dataset("digits")
    fed = build_federation(ds, scheme="iid", num_clients=4, seed=0)
    host = _digits_host([fed.clients[0]], ShardTable(list(fed.clients)), Sneaky())
    params = init_params("mlp", ds.input_shape, ds.num_classes, 0)
    host.run(
        1, [ClientTask(client_id=3, model_key="global", hparams=client_hparams(lr=0.1))], {"global": params}
    )
    with pytest.raises(RuntimeError, match="client_state=True"):
        host.commit(1)


def test_equal_sizes_pack_round_robin_as_the_greedy_rule_does():
    from raysim.bench.profile import old_pack
    from raysim.runtime.packing import pack_hosts

    for n, a in ((10, 3), (7, 7), (100, 8), (5, 9)):
        shards = [shard(i, 4) for i in range(n)]
        got = pack_clients(shards, a)  # the round-robin path
        assert [[s.client_id for s in h] for h in got] == [
            [s.client_id for s in h] for h in old_pack(shards, a)
        ]
    host = pack_hosts(np.array([5, 1, 3]), np.array([2, 2, 9]), 2)
    assert host.tolist() == [1, 1, 0]  # 9 first onto actor 0, then id 1, then id 5


def test_client_map_is_a_mapping_over_two_arrays():
    from raysim.runtime.pool import ClientIndex, ClientMap, owner_map

    m = ClientMap(np.array([9, 2, 5]), np.array([1, 0, 1]))
    assert dict(m) == {2: 0, 5: 1, 9: 1} and len(m) == 3
    assert m[5] == 1 and m.get(4, -1) == -1 and 9 in m and "9" not in m and True not in m
    assert m.keys_with(1) == [5, 9]
    with pytest.raises(KeyError):
        m[4]
    with pytest.raises(ValueError, match="twice"):
        ClientMap(np.array([1, 1]), np.array([0, 1]))
    assert ClientMap.of({3: 1, 1: 0}).ids.tolist() == [1, 3]
    owner = owner_map(
        [SimpleNamespace(client_ids=np.array([0, 4])), SimpleNamespace(client_ids=np.array([2]))]
    )
    assert dict(owner) == {0: 0, 2: 1, 4: 0}
    assert ClientIndex(owner).on_hosts_except({0}).tolist() == [2]
