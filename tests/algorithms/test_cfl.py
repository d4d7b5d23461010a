"""CFL: the split rule on literal update vectors, per-cluster aggregation by hand, end-to-end."""

from __future__ import annotations

import numpy as np
import pytest

from raysim.algorithms import ALGORITHMS, build_algorithm
from raysim.algorithms.base import ClientResult
from raysim.algorithms.cfl import CFL, bipartition, separation, split_rule, update_norms
from tests.conftest import tiny_config
from tests.helpers import aggregate, configure, run, setup_ctx

# two groups pulling in opposite directions: the mean update cancels, every update is long
OPPOSITE = np.array([[3.0, 0.1], [3.0, -0.1], [-3.0, 0.1], [-3.0, -0.1]])


def ctx(clients=5, groups=None):
    return setup_ctx(2, clients=clients, groups=groups)


def res(cid, delta, n=10, key="cluster/0"):
    return ClientResult(client_id=cid, num_examples=n, delta=np.asarray(delta, np.float32), model_key=key)


def test_registered_not_linear():
    assert ALGORITHMS["cfl"] is CFL
    algo = build_algorithm("cfl")
    assert not algo.traits.linear
    assert (algo.p.eps1, algo.p.eps2, algo.p.min_rounds_before_split) == (0.4, 1.6, 20)


def test_norms_by_hand():
    mean_norm, max_norm = update_norms(np.array([[3.0, 4.0], [-3.0, 0.0]]), np.array([1.0, 3.0]))
    # mean = ([3, 4] + 3 [-3, 0]) / 4 = [-1.5, 1]
    assert mean_norm == pytest.approx(np.hypot(1.5, 1.0)) and max_norm == pytest.approx(5.0)


def test_opposite_groups_split_into_the_right_two():
    np.testing.assert_array_equal(bipartition(OPPOSITE[[2, 0, 3, 1]]), [0, 1, 0, 1])
    d = split_rule(OPPOSITE, np.ones(4), eps1=0.4, eps2=1.6)
    assert d.triggered and d.accepted
    np.testing.assert_array_equal(d.labels, [0, 0, 1, 1])
    assert d.mean_norm == pytest.approx(0.0, abs=1e-12) and d.max_norm == pytest.approx(np.hypot(3, 0.1))
    # cross similarity: cos([3, 0.1], [-3, 0.1]) = (-9 + 0.01) / 9.01
    alpha, gamma = separation(OPPOSITE, np.ones(4), d.labels)
    assert alpha == pytest.approx(-8.99 / 9.01) and d.alpha_cross_max == pytest.approx(alpha)
    # each part's mean is [+-3, 0]: gamma = 0.1 / 3
    assert gamma == pytest.approx(0.1 / 3.0)


def test_no_split_for_tiny_norms_large_mean_or_too_young():
    assert not split_rule(OPPOSITE * 0.01, np.ones(4), eps1=0.4, eps2=1.6).triggered  # max_norm < eps2
    same = np.array([[3.0, 0.0], [3.0, 0.1]])
    assert not split_rule(same, np.ones(2), eps1=0.4, eps2=1.6).triggered  # mean_norm > eps1
    assert not split_rule(OPPOSITE, np.ones(4), eps1=0.4, eps2=1.6, old_enough=False).triggered
    assert not split_rule(OPPOSITE[:1], np.ones(1), eps1=0.4, eps2=1.6).triggered  # one update


def test_separation_criterion_rejects_an_unseparated_split():
    # a cloud of near-orthogonal noisy updates: any bipartition has a large gamma
    noisy = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, -1.0, -1.0]]) * 2.0
    d = split_rule(noisy, np.ones(4), eps1=1.0, eps2=1.6)
    assert d.triggered and not d.accepted
    assert d.gamma_max >= np.sqrt((1 - d.alpha_cross_max) / 2)
    assert split_rule(noisy, np.ones(4), eps1=1.0, eps2=1.6, separation_check=False).accepted


def test_split_assigns_children_and_aggregates_each_cluster():
    algo = build_algorithm("cfl", {"min_rounds_before_split": 0})
    state = algo.init(np.zeros(2, np.float32), ctx(groups=np.array([0, 0, 1, 1, 0])))
    tasks = configure(algo, state, 1, [0, 1, 2, 3])  # client 4 sits this round out
    assert {t.model_key for t in tasks} == {"cluster/0"}
    cohort = [t.client_id for t in tasks]
    assert cohort == [0, 1, 2, 3]
    ns = [10, 30, 20, 20]
    results = [res(c, OPPOSITE[i], n) for i, (c, n) in enumerate(zip(cohort, ns, strict=True))]
    state, m = aggregate(algo, state, 1, results)
    np.testing.assert_array_equal(state.assign, [0, 0, 1, 1, 0])  # client 4 stays with the first child
    # child 0: (10 [3, .1] + 30 [3, -.1]) / 40 = [3, -0.05]; child 1: [-3, 0]
    np.testing.assert_allclose(state.models[0], [3.0, -0.05], rtol=1e-6)
    np.testing.assert_allclose(state.models[1], [-3.0, 0.0], atol=1e-6)
    assert m["num_clusters"] == 2 and m["splits"] == 1
    assert "nmi" not in m and "ari" not in m  # the runtime scores the clusters
    got = scored(algo, state, [0, 0, 1, 1, 0])
    assert got["cluster_nmi"] == pytest.approx(1.0) and got["cluster_ari"] == pytest.approx(1.0)
    assert got["cluster_clients"] == 5
    assert algo.client_annotations(state)[2] == {"cluster": 1.0}
    assert algo.server_model(state) is state.models[0]  # 3 of 5 clients
    tasks = configure(algo, state, 2, [0, 2], cohort=2)
    assert [t.model_key for t in tasks] == ["cluster/0", "cluster/1"]


def test_no_split_is_plain_weighted_fedavg_and_young_clusters_wait():
    algo = build_algorithm("cfl")  # min_rounds_before_split = 20
    state = algo.init(np.zeros(2, np.float32), ctx())
    state, m = aggregate(algo, state, 1, [res(0, OPPOSITE[0], 10), res(2, OPPOSITE[2], 30)])
    # (10 [3, .1] + 30 [-3, .1]) / 40 = [-1.5, 0.1]
    np.testing.assert_allclose(state.models[0], [-1.5, 0.1], rtol=1e-6)
    assert m["num_clusters"] == 1 and m["splits"] == 0 and (state.assign == 0).all()
    assert m["mean_update_norm"] == pytest.approx(np.hypot(1.5, 0.1), rel=1e-6)


@pytest.mark.parametrize("forced", [False, True])
def test_end_to_end_on_label_permuted_digits(tmp_path, forced):
    over = {
        "algorithm__name": "cfl",
        "data__partition": "label-permutation",
        "data__num_groups": 2,
        "rounds__num_rounds": 3,
        "rounds__clients_per_round": 6,
    }
    if forced:  # trigger the split test every round and keep whatever bipartition comes out
        over |= {
            "algorithm__eps1": 1e6,
            "algorithm__eps2": 0.0,
            "algorithm__min_rounds_before_split": 0,
            "algorithm__separation_check": False,
        }
    rounds, clients = run(tiny_config(tmp_path, **over)).unpack("rounds", "clients")
    for col in (
        "test_loss",
        "train_loss",
        "personal_accuracy",
        "num_clusters",
        "mean_update_norm",
        "max_update_norm",
        "cluster_nmi",
    ):
        assert np.isfinite(rounds[col]).all(), col
    assert "cluster" in clients.columns
    if forced:
        assert rounds["num_clusters"].iloc[-1] >= 2 and rounds["splits"].iloc[0] == 1
    else:
        assert (rounds["num_clusters"] == 1).all()


def scored(algo, state, truth):
    """The runtime's cluster columns (cluster_ari/nmi/clients) of the algorithm's annotations."""
    from raysim.metrics import cluster_tracking
    from raysim.runtime.server import cluster_membership

    return cluster_tracking(cluster_membership(algo.client_annotations(state)), None, np.asarray(truth))
