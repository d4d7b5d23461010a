"""KMeansCFL's server logic on tiny literal arrays, called the way the runtime calls it (no data, no
torch, no Ray): the warm-up is FedAvg, the first clustering splits updates that point in opposite
directions, each later round is one Lloyd step, and the client side trains the task's model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from examples.my_algo import KMeansCFL, KMeansCFLParams
from raysim.algorithms.base import ClientResult, RoundContext, ServerContext, SetupContext

HP = {"lr": 0.1, "epochs": 1, "batch_size": 4}


def setup(clients: int = 4, groups=None, d: int = 3) -> SetupContext:
    return SetupContext(
        num_clients=clients,
        client_sizes=np.full(clients, 10),
        layout=None,  # the algorithm never looks at the layout
        num_classes=2,
        seed=0,
        local=HP,
        num_rounds=5,
        clients_per_round=clients,
        client_groups=None if groups is None else np.asarray(groups),
    )


def plan(algo, state, t, available):
    rnd = RoundContext(
        round_idx=t, available=available, cohort_size=len(available), hparams=HP, rng=np.random.default_rng(t)
    )
    new_state, p = algo.configure_round(state, rnd)
    assert new_state is state
    p.check()  # every task's model is broadcast
    return p


def step(algo, state, t, deltas: dict[int, np.ndarray], n: dict[int, int] | None = None):
    """Round t: the cohort trains (client c returns deltas[c] for the model its task named)."""
    p = plan(algo, state, t, sorted(deltas))
    results = [
        ClientResult(
            client_id=task.client_id,
            num_examples=(n or {}).get(task.client_id, 10),
            delta=np.asarray(deltas[task.client_id], np.float32),
            model_key=task.model_key,
        )
        for task in p.tasks
    ]
    server = ServerContext(round_idx=t, rng=np.random.default_rng(t), hparams=HP)
    new_state, metrics = algo.aggregate(state, results, server)
    return p, new_state, metrics


def algo(**kw) -> KMeansCFL:
    return KMeansCFL(KMeansCFLParams(**kw))


def test_params_are_validated_by_their_own_model():
    with pytest.raises(ValidationError, match="num_clusters"):
        KMeansCFLParams(num_clusters=0)
    with pytest.raises(ValidationError, match="extra"):
        KMeansCFLParams(clusters=2)  # a typo is an error, not a silent default


def test_warmup_rounds_are_fedavg_on_one_shared_model():
    a = algo(num_clusters=2, warmup_rounds=1)
    state = a.init(np.zeros(3, np.float32), setup())
    p, state, m = step(a, state, 1, {0: [1, 0, 0], 1: [3, 0, 0], 2: [0, 2, 0], 3: [0, 0, 4]}, n={0: 30})
    assert {t.model_key for t in p.tasks} == {"global"} and set(p.broadcast) == {"global"}
    # example-weighted: (30*[1,0,0] + 10*([3,0,0] + [0,2,0] + [0,0,4])) / 60
    np.testing.assert_allclose(state["shared"], [1.0, 1 / 3, 2 / 3], rtol=1e-6)
    assert state["models"] == () and (state["assign"] == -1).all() and m["aggregated_clients"] == 4
    np.testing.assert_array_equal(a.server_model(state), state["shared"])


def test_the_first_round_after_warmup_splits_opposite_updates_into_two_cluster_models():
    a = algo(num_clusters=2, warmup_rounds=0)
    state = a.init(np.ones(2, np.float32), setup())
    # every update shares a large first component; the groups differ in the second one only
    deltas = {0: [10, 1], 1: [10, -1], 2: [10, 1.2], 3: [10, -0.8]}
    _, state, m = step(a, state, 1, deltas)
    assign = state["assign"]
    assert assign[0] == assign[2] != assign[1] == assign[3]  # the split follows what differs
    assert m["nonempty_clusters"] == 2 and m["moved_clients"] == 4
    plus, minus = state["models"][assign[0]], state["models"][assign[1]]
    np.testing.assert_allclose(plus, [11, 1 + 1.1], rtol=1e-6)  # the start plus its members' mean update
    np.testing.assert_allclose(minus, [11, 1 - 0.9], rtol=1e-6)

    # next round: each client trains its own cluster's model, and only the models in use travel
    p = plan(a, state, 2, [0, 1])
    assert {t.client_id: t.model_key for t in p.tasks} == {
        0: f"cluster/{assign[0]}",
        1: f"cluster/{assign[1]}",
    }
    p = plan(a, state, 2, [0, 2])
    assert set(p.broadcast) == {f"cluster/{assign[0]}"}


def test_later_rounds_move_a_client_to_the_nearest_cluster_model_and_keep_an_unjoined_model():
    a = algo(num_clusters=2, warmup_rounds=0)
    state = a.init(np.zeros(1, np.float32), setup())
    _, state, _ = step(a, state, 1, {0: [1.0], 1: [1.2], 2: [-1.0], 3: [-1.2]})
    a0, a2 = int(state["assign"][0]), int(state["assign"][2])
    np.testing.assert_allclose(state["models"][a0], [1.1], rtol=1e-6)
    # client 0 trains cluster a0's model (1.1) and ends at -0.9: nearer cluster a2 (-1.1)
    _, state2, m = step(a, state, 2, {0: [-2.0]})
    assert state2["assign"][0] == a2 and m["moved_clients"] == 1
    np.testing.assert_allclose(state2["models"][a2], [-0.9], rtol=1e-6)  # its member's local model
    np.testing.assert_array_equal(state2["models"][a0], state["models"][a0])  # nobody joined: kept
    assert state["assign"][0] == a0  # the old state is untouched (states are values)


def test_more_clusters_than_distinct_updates_leaves_the_extra_ones_empty_not_nan():
    a = algo(num_clusters=3, warmup_rounds=0)
    state = a.init(np.zeros(2, np.float32), setup(clients=2))
    _, state, m = step(a, state, 1, {0: [1, 1], 1: [1, 1]})
    assert m["nonempty_clusters"] == 1 and len(state["models"]) == 3
    assert all(np.isfinite(x).all() for x in state["models"])


def test_the_server_scores_the_largest_clusters_model_and_each_client_its_own():
    a = algo(num_clusters=2, warmup_rounds=0)
    state = a.init(np.zeros(1, np.float32), setup(clients=5))
    _, state, _ = step(a, state, 1, {0: [1.0], 1: [1.0], 2: [1.0], 3: [-1.0]})
    big = int(state["assign"][0])
    np.testing.assert_array_equal(a.server_model(state), state["models"][big])
    b = a.eval_broadcast(state)
    for c in range(4):
        j = int(state["assign"][c])
        got = a.personal_params(b, SimpleNamespace(client_id=c))
        np.testing.assert_array_equal(got, state["models"][j])
    np.testing.assert_array_equal(a.personal_params(b, SimpleNamespace(client_id=4)), state["shared"])
    assert a.client_annotations(state)[4] == {"cluster": -1.0}  # never trained: not placed


def test_client_update_returns_the_change_of_the_tasks_model():
    a = algo()
    seen = []

    def fit(params, *, hparams):
        seen.append(hparams)
        return SimpleNamespace(params=params + 0.5, num_examples=7, loss=0.25)

    client = SimpleNamespace(client_id=3, fit=fit)
    task = plan(a, a.init(np.zeros(2, np.float32), setup()), 1, [3]).tasks[0]
    r = a.client_update(task, np.ones(2, np.float32), client)
    assert seen == [task.hparams] and r.model_key == task.model_key == "global"
    np.testing.assert_array_equal(r.delta, [0.5, 0.5])
    assert (r.num_examples, r.metrics["train_loss"]) == (7, 0.25)
