"""IFCA: cluster selection with a fake client, per-key aggregation by hand, end-to-end on digits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from raysim.algorithms import ALGORITHMS, build_algorithm
from raysim.algorithms.base import ClientResult, LinearSum
from raysim.algorithms.ifca import IFCA, model_seed, pick_cluster
from raysim.runtime.trainer import FitResult
from tests.conftest import tiny_config
from tests.helpers import aggregate, configure, run, setup_ctx


@dataclass
class Ev:
    loss: float
    n: int = 5


class LossClient:
    """evaluate() returns a fixed loss per model (keyed by the model's first value); fit() moves
    every parameter by -0.4."""

    def __init__(self, losses, cid=0, n=10, broadcast=None, val_n=5):
        self.losses, self.client_id, self.num_examples, self.state = losses, cid, n, {}
        self.broadcast = broadcast or {}
        self.val_n = val_n
        self.splits = []
        self.fitted = []

    def evaluate(self, params, split="val"):
        self.splits.append(split)
        n = self.val_n if split == "val" else 20
        return Ev(loss=self.losses[float(params[0])], n=n)

    def fit(self, params, *, grad_hook=None, **hp):
        self.fitted.append(params.copy())
        return FitResult(
            params=(params - 0.4).astype(np.float32), loss=1.0, steps=4, num_examples=self.num_examples
        )


def fresh_init(n_params):
    """A stand-in for the model registry's init: seed -> a vector drawn under that seed."""

    def init(seed):
        return np.random.default_rng(seed).normal(size=n_params).astype(np.float32)

    return init


def ctx(n_params=3, clients=4, groups=None, seed=0):
    return setup_ctx(n_params, clients=clients, groups=groups, seed=seed, init_params=fresh_init(n_params))


def two_models():
    return {"cluster/0": np.zeros(3, np.float32), "cluster/1": np.ones(3, np.float32)}


def result(cid, key, n, delta, clients=4):
    return ClientResult(client_id=cid, num_examples=n, delta=np.asarray(delta, np.float32), model_key=key)


def test_registered_with_defaults():
    assert ALGORITHMS["ifca"] is IFCA
    algo = build_algorithm("ifca")
    assert algo.p.num_clusters == 2 and algo.p.init_noise == 0.01 and algo.p.select_on == "train"
    assert algo.p.init == "independent"  # the paper's (and its reference code's) initialisation
    assert algo.traits.linear and not algo.traits.client_state


def test_pick_cluster_argmin_nan_is_inf_ties_lowest():
    assert pick_cluster([0.5, 0.2, 0.9]) == 1
    assert pick_cluster([np.nan, 0.3]) == 1
    assert pick_cluster([0.3, 0.3]) == 0


def test_init_independent_by_default_each_model_from_its_own_derived_seed():
    algo = build_algorithm("ifca", {"num_clusters": 3})
    assert algo.p.init == "independent"
    p0 = np.full(1000, 7.0, np.float32)
    state = algo.init(p0, ctx(1000, seed=5))
    np.testing.assert_array_equal(state.models[0], p0)  # cluster 0: the runtime's initial model
    for j in (1, 2):  # the others: the registry's init under (run seed, j)'s own seed
        np.testing.assert_array_equal(state.models[j], fresh_init(1000)(model_seed(5, j)))
    assert len({model_seed(5, 1), model_seed(5, 2), model_seed(6, 1)}) == 3
    # unrelated to the initial model (not a perturbation of it) and reproducible from the run seed
    assert abs(np.corrcoef(state.models[1], state.models[2])[0, 1]) < 0.1
    np.testing.assert_array_equal(algo.init(p0, ctx(1000, seed=5)).models[2], state.models[2])
    assert not np.array_equal(algo.init(p0, ctx(1000, seed=6)).models[1], state.models[1])
    # k = 1 is FedAvg and needs no further initialisation
    one = build_algorithm("ifca", {"num_clusters": 1}).init(p0, setup_ctx(1000))
    assert len(one.models) == 1
    with pytest.raises(RuntimeError, match="algorithm.init: perturbed"):
        algo.init(p0, setup_ctx(1000))  # a hand-made context without the registry's init


def test_independent_init_uses_the_model_registrys_init():
    from functools import partial

    from raysim.models.flat import init_params

    make = partial(init_params, "mlp", (1, 8, 8), 10, params=None)
    base = make(0)
    algo = build_algorithm("ifca", {"num_clusters": 2})
    state = algo.init(base, setup_ctx(base.size, init_params=make))
    np.testing.assert_array_equal(state.models[1], make(model_seed(0, 1)))
    assert not np.array_equal(state.models[1], base)
    # each layer at the registry's scale, not the initial model plus 0.01 noise
    assert 0.5 < state.models[1].std() / base.std() < 2.0
    assert np.abs(state.models[1] - base).std() > 0.5 * base.std()


def test_init_perturbed_all_but_cluster_zero_seeded():
    algo = build_algorithm("ifca", {"num_clusters": 3, "init_noise": 0.01, "init": "perturbed"})
    p0 = np.zeros(1000, np.float32)
    s1, s2 = algo.init(p0, ctx(1000)), algo.init(p0, ctx(1000))
    assert len(s1.models) == 3
    np.testing.assert_array_equal(s1.models[0], p0)
    assert 0.008 < s1.models[1].std() < 0.012 and not np.array_equal(s1.models[1], s1.models[2])
    for a, b in zip(s1.models, s2.models, strict=True):
        np.testing.assert_array_equal(a, b)  # same seed, same models
    assert (s1.choice == -1).all() and s1.choice.dtype == np.int64


def test_configure_broadcasts_every_cluster_model():
    algo = build_algorithm("ifca", {"num_clusters": 3})
    state = algo.init(np.zeros(3, np.float32), ctx())
    tasks = configure(algo, state, 1, [0, 1, 2, 3], cohort=2)
    assert len(tasks) == 2
    for t in tasks:
        assert t.model_key == "cluster/0" and t.broadcast_keys == ("cluster/1", "cluster/2")


@pytest.mark.parametrize(
    ("losses", "chosen"), [({0.0: 2.0, 1.0: 0.5}, "cluster/1"), ({0.0: 0.1, 1.0: 0.5}, "cluster/0")]
)
def test_client_trains_the_model_with_the_lower_loss(losses, chosen):
    algo = build_algorithm("ifca")
    bc = two_models()
    client = LossClient(losses, cid=2, broadcast=bc)
    task = configure(algo, algo.init(np.zeros(3, np.float32), ctx()), 1, [2])[0]
    r = algo.client_update(task, bc["cluster/0"], client)
    assert r.model_key == chosen
    np.testing.assert_array_equal(client.fitted[0], bc[chosen])  # trained from the chosen model
    np.testing.assert_allclose(r.delta, -0.4, rtol=1e-6)
    assert set(client.splits) == {"train"}
    assert algo.personal_params(bc, client) is bc[chosen]


def test_select_on_val_falls_back_to_train_when_val_is_empty():
    algo = build_algorithm("ifca", {"select_on": "val"})
    c = LossClient({0.0: 2.0, 1.0: 0.5}, broadcast=two_models())
    assert algo.select(c.broadcast, c) == "cluster/1" and c.splits == ["val", "val"]
    c = LossClient({0.0: 2.0, 1.0: 0.5}, broadcast=two_models(), val_n=0)
    assert algo.select(c.broadcast, c) == "cluster/1" and c.splits == ["val", "val", "train", "train"]


def test_per_key_aggregation_by_hand_with_presummed_results():
    algo = build_algorithm("ifca", {"num_clusters": 3, "init": "perturbed", "init_noise": 0.0})
    state = algo.init(np.zeros(2, np.float32), ctx(2, groups=np.array([0, 1, 0, 1])))
    # cluster 0: clients 0 (n=10, delta [1, 0]) and 2 (n=30, delta [0, 2]) pre-summed on an actor
    # -> mean (10 [1, 0] + 30 [0, 2]) / 40 = [0.25, 1.5]; cluster 1: client 1 alone, [-1, 1]
    pre = LinearSum.of([result(0, "cluster/0", 10, [1, 0]), result(2, "cluster/0", 30, [0, 2])])
    assert pre is not None
    # as the runtime sends it: the sum, then every accepted client's result (pre-summed: no delta)
    stubs = [
        ClientResult(client_id=c, num_examples=n, delta=None, model_key="cluster/0")
        for c, n in ((0, 10), (2, 30))
    ]
    state, m = aggregate(algo, state, 1, [pre, *stubs, result(1, "cluster/1", 5, [-1, 1])])
    np.testing.assert_allclose(state.models[0], [0.25, 1.5], rtol=1e-6)
    np.testing.assert_allclose(state.models[1], [-1.0, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(state.models[2], [0.0, 0.0])  # nobody picked it: unchanged
    np.testing.assert_array_equal(state.choice, [0, 1, 0, -1])
    assert m["clients_cluster/0"] == 2 and m["clients_cluster/1"] == 1 and m["clients_cluster/2"] == 0
    assert m["nonempty_clusters"] == 2
    # clients 0, 1, 2 (3 never chose) with truth [0, 1, 0] and choice [0, 1, 0]: perfect agreement
    assert "nmi" not in m and "ari" not in m  # the runtime scores the clusters
    got = scored(algo, state, [0, 1, 0, 1])
    assert got["cluster_nmi"] == pytest.approx(1.0) and got["cluster_ari"] == pytest.approx(1.0)
    assert got["cluster_clients"] == 3  # client 3 never chose: ARI covers the sampled clients
    assert algo.client_annotations(state) == {
        0: {"cluster": 0.0},
        1: {"cluster": 1.0},
        2: {"cluster": 0.0},
        3: {"cluster": -1.0},
    }
    # the largest cluster (2 of 3 clients chose cluster 0) is what the server scores
    assert algo.server_model(state) is state.models[0]
    assert set(algo.eval_broadcast(state)) == {"cluster/0", "cluster/1", "cluster/2"}


def test_central_lr_scales_the_cluster_step():
    algo = build_algorithm("ifca", {"init": "perturbed", "init_noise": 0.0, "central_lr": 0.5})
    state = algo.init(np.zeros(2, np.float32), ctx(2))
    state, _ = aggregate(algo, state, 1, [result(3, "cluster/1", 4, [2, -2])])
    np.testing.assert_allclose(state.models[1], [1.0, -1.0])
    np.testing.assert_array_equal(state.models[0], [0.0, 0.0])
    assert algo.server_model(state) is state.models[1]


def ifca_config(tmp_path, **over):
    base = {
        "algorithm__name": "ifca",
        "data__partition": "rotation",
        "data__num_groups": 2,
        "rounds__num_rounds": 3,
    }
    return tiny_config(tmp_path, **{**base, **over})


def test_end_to_end_on_rotated_digits(tmp_path):
    rounds, clients = run(ifca_config(tmp_path)).unpack("rounds", "clients")
    assert len(rounds) == 3
    for col in (
        "test_loss",
        "test_accuracy",
        "train_loss",
        "personal_accuracy",
        "nonempty_clusters",
        "cluster_nmi",
        "cluster_ari",
    ):
        assert np.isfinite(rounds[col]).all(), col
    assert (rounds["clients_cluster/0"] + rounds["clients_cluster/1"] == 3).all()
    assert "cluster" in clients.columns
    part = clients[clients["participated"] & ~clients["dropped"]]
    assert part["cluster"].isin([0.0, 1.0]).all()
    assert (part["model_key"] == part["cluster"].map(lambda j: f"cluster/{int(j)}")).all()


def scored(algo, state, truth):
    """The runtime's cluster columns (cluster_ari/nmi/clients) of the algorithm's annotations."""
    from raysim.metrics import cluster_tracking
    from raysim.runtime.server import cluster_membership

    return cluster_tracking(cluster_membership(algo.client_annotations(state)), None, np.asarray(truth))
