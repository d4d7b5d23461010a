"""DSAC (raysim.algorithms.dsac): server aggregation on literal results, edge cases, switches and
end-to-end runs on the tiny digits federation."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from raysim.algorithms import ALGORITHMS, build_algorithm, hooks
from raysim.algorithms.base import ClientResult, LocalHParams, SetupContext, plain_sgd
from raysim.algorithms.dsac import DSAC, DSACParams, DSACState
from raysim.config import ConfigError
from raysim.models import ParamLayout, build_model
from tests.conftest import tiny_config
from tests.helpers import (
    aggregate,
    client_hparams,
    configure,
    experiment,
    local_knobs,
    round_ctx,
    run,
    setup_ctx,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def setup(n: int = 4, groups: list[int] | None = None) -> SetupContext:
    layout = ParamLayout.of(build_model("mlp", (4,), 3))  # blocks of 1000, 40200, 603 values
    return setup_ctx(
        layout, clients=n, num_classes=3, local=local_knobs(epochs=1, batch_size=8, lr=0.1), groups=groups
    )


def make(**kw) -> tuple[DSAC, DSACState]:
    p = DSACParams(pretraining=False, num_submodels=3, **kw)
    algo = DSAC(p)
    ctx = setup()
    state = algo.init(np.zeros(ctx.layout.size, np.float32), ctx)
    return algo, state


def result(state: DSACState, cid: int, subs: dict[int, float], feature=(1.0, 0.0), loss=1.0) -> ClientResult:
    part = state.partition
    extras = {f"sub/{j}": np.full(part.sizes[j], v, np.float32) for j, v in subs.items()}
    extras["feature"] = np.asarray(feature, np.float32)
    return ClientResult(
        client_id=cid, num_examples=10, delta=None, metrics={"train_loss": loss}, extras=extras
    )


def test_registered_and_validated() -> None:
    assert ALGORITHMS["dsac"] is DSAC
    assert isinstance(build_algorithm("dsac", {"decay": 0.1}), DSAC)
    with pytest.raises(ValueError):
        DSACParams(decay=-1)
    with pytest.raises(ValueError):
        DSACParams(weight_floor=1.5)
    with pytest.raises(ValueError):
        DSACParams(not_a_knob=1)


def test_k_is_clamped_to_layer_blocks_with_warning() -> None:
    algo = DSAC(DSACParams(pretraining=False, num_submodels=5))
    with pytest.warns(UserWarning, match="3 layer blocks"):
        state = algo.init(np.zeros(setup().layout.size, np.float32), setup())
    assert state.partition.k == 3
    off = DSAC(DSACParams(pretraining=False, decomposition=False)).init(
        np.zeros(setup().layout.size, np.float32), setup()
    )
    assert off.partition.k == 1


def test_configure_round_trains_every_submodel() -> None:
    algo, state = make()
    tasks = configure(algo, state, 1, [0, 1, 2, 3], rng())
    assert all(int(t.extras["want_feature"]) == 1 for t in tasks)  # nobody has uploaded D_u yet
    seen = replace(state, grouped_round=1, has_feature=np.array([True, True, False, False]))
    want = [int(t.extras["want_feature"]) for t in configure(algo, seen, 2, [0, 1, 2, 3], rng())]
    assert want == [0, 0, 1, 1]
    assert all(int(t.extras["want_feature"]) for t in configure(algo, seen, 5, [0, 1, 2, 3], rng()))
    covered = sorted({int(s) for t in tasks for s in t.extras["submodels"]})
    assert covered == [0, 1, 2]
    assert all(t.model_key == "global" and t.broadcast_keys == () for t in tasks)
    # two clients, three sub-models: each trains ceil(3/2) = 2 of them
    tasks = configure(algo, state, 1, [0, 1], rng())
    assert [len(t.extras["submodels"]) for t in tasks] == [2, 2]


def test_identical_updates_are_merged_exactly() -> None:
    algo, state = make(decay=0.0)
    res = [result(state, c, {0: 0.5, 1: -1.0, 2: 2.0}) for c in range(3)]
    new, m = aggregate(algo, state, 1, res, rng())
    part = state.partition
    np.testing.assert_allclose(new.params[part.slice(0)], 0.5, rtol=1e-6)
    np.testing.assert_allclose(new.params[part.slice(1)], -1.0, rtol=1e-6)
    np.testing.assert_allclose(new.params[part.slice(2)], 2.0, rtol=1e-6)
    assert m["aggregated_clients"] == 3 and m["dropped_by_floor"] == 0
    # three identical updates, three update clusters: two clusters stay empty (weight 0), no NaN
    assert np.isfinite(new.params).all()


def test_submodel_whose_clients_all_dropped_keeps_its_values() -> None:
    algo, state = make(decay=0.1)
    start = np.arange(state.params.size, dtype=np.float32) / 1e4
    state = replace(state, params=start)
    # nobody uploads sub-model 1; and client 3 (the only one with sub-model 2) is below the floor
    state = replace(state, last_round=np.array([9, 9, 9, 0]))  # client 3 last contributed at round 0
    res = [result(state, 0, {0: 1.0}), result(state, 1, {0: 1.0}), result(state, 3, {2: 5.0})]
    new, m = aggregate(algo, state, 10, res, rng())
    part = state.partition
    np.testing.assert_array_equal(new.params[part.slice(1)], start[part.slice(1)])
    np.testing.assert_array_equal(new.params[part.slice(2)], start[part.slice(2)])
    np.testing.assert_allclose(new.params[part.slice(0)], start[part.slice(0)] + 1.0, rtol=1e-6)
    assert m["submodels_untouched"] == 2
    # client 3 missed 9 rounds: decay factor exp(-0.1 * 9) = 0.41 < floor 0.6
    assert m["dropped_by_floor"] == 1


def test_client_below_weight_floor_is_dropped_and_restarts_its_clock() -> None:
    algo, state = make(decay=0.1, weight_floor=0.5)
    state = replace(state, last_round=np.array([9, 9, 0, 9]))
    res = [result(state, 0, {0: 1.0}), result(state, 2, {0: -7.0})]
    new, m = aggregate(algo, state, 10, res, rng())
    # client 2 missed 9 rounds: exp(-0.9) = 0.41 < 0.5 -> dropped, its update ignored
    assert m["dropped_by_floor"] == 1 and m["dropout_rate"] == 0.5
    np.testing.assert_allclose(new.params[state.partition.slice(0)], 1.0, rtol=1e-6)
    assert new.weight_now[2] == 0.0 and new.weight_now[0] == pytest.approx(1.0)
    assert new.last_round[2] == 10  # re-synchronised: next round it is fresh again
    assert new.cum_weight[0] == pytest.approx(1.0) and new.cum_weight[2] == 0.0


def test_decayed_weights_enter_the_merge() -> None:
    # one update cluster (num_clusters=1): the centre is the decayed-weight mean of eq. (14)
    algo, state = make(decay=0.5, weight_floor=0.0, num_clusters=1, beta=0.0)
    state = replace(state, last_round=np.array([4, 2, 0, 0]))  # at round 5: missed 0 and 2 rounds
    res = [result(state, 0, {0: 1.0}), result(state, 1, {0: 3.0})]
    new, _ = aggregate(algo, state, 5, res, rng())
    w0, w1 = 1.0, math.exp(-0.5 * 2)
    expected = (w0 * 1.0 + w1 * 3.0) / (w0 + w1)
    np.testing.assert_allclose(new.params[state.partition.slice(0)], expected, rtol=1e-5)
    # dynamic weights off: plain mean
    algo_off, state_off = make(dynamic_weights=False, num_clusters=1, beta=0.0)
    state_off = replace(state_off, last_round=np.array([4, 2, 0, 0]))
    new_off, _ = aggregate(algo_off, state_off, 5, res, rng())
    np.testing.assert_allclose(new_off.params[state.partition.slice(0)], 2.0, rtol=1e-5)


def test_every_client_dropped_leaves_the_model_unchanged() -> None:
    algo, state = make()
    state = replace(state, params=np.ones(state.params.size, np.float32))
    new, m = aggregate(algo, state, 3, [], rng())
    np.testing.assert_array_equal(new.params, state.params)
    assert m["aggregated_clients"] == 0 and m["dropout_rate"] == 0.0
    assert math.isnan(m["global_loss"])
    # all cohort members below the floor
    state = replace(state, last_round=np.zeros(4, np.int64))
    new, m = aggregate(algo, state, 50, [result(state, 0, {0: 1.0}), result(state, 1, {1: 1.0})], rng())
    np.testing.assert_array_equal(new.params, state.params)
    assert m["dropped_by_floor"] == 2 and m["aggregated_clients"] == 0


def test_grouping_with_a_one_client_group_and_an_empty_cluster() -> None:
    algo, state = make(max_groups=3, num_clusters=3, decay=0.0)
    # clients 0, 1 share a direction, client 2 points elsewhere: two groups, one of them a singleton;
    # the three identical updates of sub-model 0 leave two of the three update clusters empty
    res = [
        result(state, 0, {0: 1.0, 1: 1.0}, feature=(1.0, 0.0)),
        result(state, 1, {0: 1.0, 2: 1.0}, feature=(2.0, 0.0)),
        result(state, 2, {0: 1.0, 2: 3.0}, feature=(0.0, 1.0)),
    ]
    new, m = aggregate(algo, state, 1, res, rng())
    assert list(new.assign) == [0, 0, 1, -1]  # client 3 never uploaded D_u: ungrouped
    assert m["num_groups"] == 2
    part = state.partition
    # eq. (13): the singleton group's model carries its own update where it trained, the global elsewhere
    g1 = new.group_models[1]
    np.testing.assert_allclose(g1[part.slice(2)], 3.0, rtol=1e-6)
    np.testing.assert_allclose(g1[part.slice(1)], new.params[part.slice(1)], rtol=1e-6)
    g0 = new.group_models[0]
    np.testing.assert_allclose(g0[part.slice(2)], 1.0, rtol=1e-6)
    assert new.medoids.tolist()[1] == 2  # eq. (12): a one-member group is its own centre
    models = algo.eval_broadcast(new)
    assert {"global", "assign", "group/0", "group/1"} <= set(models)
    notes = algo.client_annotations(new)
    assert notes[2]["group"] == 1.0 and notes[3]["group"] == -1.0


def test_flat_grouping_and_nmi() -> None:
    p = DSACParams(pretraining=False, num_submodels=3, hierarchical_clustering=False, max_groups=2)
    algo = DSAC(p)
    ctx = setup(groups=[0, 0, 1, 1])
    state = algo.init(np.zeros(ctx.layout.size, np.float32), ctx)
    feats = [(1.0, 0.0), (1.1, 0.0), (0.0, 1.0), (0.0, 1.2)]
    res = [result(state, c, {c % 3: 1.0}, feature=f) for c, f in enumerate(feats)]
    new, m = aggregate(algo, state, 1, res, rng())
    assert "nmi" not in m  # the runtime scores the groups: one column, cluster_nmi
    assert scored(algo, new, [0, 0, 1, 1])["cluster_nmi"] == pytest.approx(1.0)
    assert len(set(new.assign.tolist())) == 2


def test_convergence_stop_archives_the_model() -> None:
    algo, state = make(converge_tol=10.0, converge_patience=2)
    for t in (1, 2, 3):
        state, m = aggregate(algo, state, t, [result(state, 0, {0: 0.0, 1: 0.0, 2: 0.0})], rng())
    assert state.converged_round == 3 and m["converged"] == 1.0
    assert [r for r, _ in state.archive] == [3]
    assert configure(algo, state, 4, [0, 1, 2, 3], rng()) == []


def test_masked_hook_zeroes_gradient_outside_the_mask() -> None:
    w = torch.zeros(4)
    g = torch.ones(4)
    chain = hooks.chain(
        hooks.proximal(np.ones(4, np.float32), 1.0), hooks.masked(np.array([1, 0, 1, 0], bool))
    )
    assert chain is not None
    chain(w, g)
    assert g.tolist() == [0.0, 0.0, 0.0, 0.0]  # 1 + (0 - 1) inside, zeroed outside
    g = torch.full((4,), 2.0)
    hooks.masked(np.array([1, 0, 1, 0], bool))(w, g)
    assert g.tolist() == [2.0, 0.0, 2.0, 0.0]


# ----------------------------------------------------------------------------- end to end (digits)

COLS = ["round", "test_accuracy", "test_loss", "global_loss", "bytes_up", "jain", "num_groups"]


def dsac_config(tmp_path, **over):
    base = {"algorithm__name": "dsac", "data__public_fraction": 0.1, "rounds__num_rounds": 2}
    return tiny_config(tmp_path, **{**base, **over})


def test_run_logs_dsac_metrics_and_is_deterministic(tmp_path):
    s1, r1, c1 = run(dsac_config(tmp_path)).unpack("summary", "rounds", "clients")
    _, r2, _ = run(dsac_config(tmp_path)).unpack("summary", "rounds", "clients")
    pd.testing.assert_frame_equal(r1[COLS], r2[COLS], check_exact=True)
    assert np.isfinite(r1["global_loss"]).all() and (r1["num_groups"] >= 1).all()
    assert {"group", "weight"} <= set(c1.columns)
    assert s1["final_test_accuracy"] is not None


def test_decomposition_switch_changes_upload_bytes(tmp_path):
    n_params = (1 * 16 * 9 + 16) + (16 * 32 * 9 + 32) + (32 * 2 * 2 * 10 + 10)  # cnn-small on digits
    feature = 32 * 2 * 2  # D_u: the penultimate activation
    _, off, _ = run(dsac_config(tmp_path, algorithm__decomposition=False, algorithm__cluster_every=1)).unpack(
        "summary", "rounds", "clients"
    )
    assert (off["bytes_up"] == 3 * 4 * (n_params + feature)).all()
    _, on, _ = run(dsac_config(tmp_path, algorithm__cluster_every=1)).unpack("summary", "rounds", "clients")
    # three clients, three sub-models, two each: every sub-model is uploaded twice
    assert (on["bytes_up"] == 4 * (2 * n_params + 3 * feature)).all()
    _, one, _ = run(
        dsac_config(tmp_path, algorithm__submodels_per_client=1, algorithm__cluster_every=1)
    ).unpack("summary", "rounds", "clients")
    assert (one["bytes_up"] == 4 * (n_params + 3 * feature)).all()


def test_pretraining_without_public_split_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="public_fraction"):  # at config time, on every backend
        tiny_config(tmp_path, algorithm__name="dsac")


def test_switches_run_end_to_end(tmp_path):
    _, r, c = run(
        dsac_config(
            tmp_path,
            algorithm__feature_mapping=True,
            algorithm__hierarchical_clustering=False,
            algorithm__dynamic_weights=False,
            algorithm__pretraining=False,
            data__public_fraction=0.0,
            data__partition="rotation",
            data__num_groups=2,
        )
    ).unpack("summary", "rounds", "clients")
    assert np.isfinite(r["test_accuracy"]).all() and np.isfinite(r["personal_accuracy"]).all()
    assert "cluster_nmi" in r.columns and "nmi" not in r.columns and (r["dropped_by_floor"] == 0).all()


def test_pretraining_broadcasts_the_base_model_and_feature_mapping_keeps_an_adapter(tmp_path):
    n_params = (1 * 16 * 9 + 16) + (16 * 32 * 9 + 32) + (32 * 2 * 2 * 10 + 10)
    _, on, _ = run(dsac_config(tmp_path, rounds__num_rounds=1)).unpack("summary", "rounds", "clients")
    _, off, _ = run(dsac_config(tmp_path, rounds__num_rounds=1, algorithm__pretraining=False)).unpack(
        "summary", "rounds", "clients"
    )
    assert on["bytes_down"].iloc[0] == 3 * 2 * 4 * n_params  # global + base (eq. 9)
    assert off["bytes_down"].iloc[0] == 3 * 4 * n_params
    assert on["test_loss"].iloc[0] != off["test_loss"].iloc[0]

    exp = experiment(dsac_config(tmp_path, rounds__num_rounds=1, algorithm__feature_mapping=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        exp.run()
    states = [st for h in exp.backend.hosts for _, st in sorted(h.state.items()) if st]
    exp.close()
    assert len(states) == 3  # the round's cohort
    scale, shift = states[0]["adapter"]
    assert scale.shape == shift.shape == (1, 8, 8)  # one scale and shift per input value (eq. 10)
    assert not np.allclose(scale, 1.0)  # trained


class FakeClient:
    def __init__(self, cid: int, n: int) -> None:
        self.client_id, self.num_examples, self.state, self.calls = cid, n, {}, []

    def fit(self, params, *, hparams, grad_hook=None, adapter=None):
        self.calls.append(hparams)

        class R:
            pass

        r = R()
        r.params = params + 1.0
        return r


def test_personal_params_use_the_group_model_and_the_eps_step() -> None:
    models = {
        "global": np.zeros(3, np.float32),
        "group/1": np.full(3, 5.0, np.float32),
        "assign": np.array([1, -1], np.float32),
    }
    algo = DSAC(DSACParams(finetune_eps=0.02))
    c0, c1 = FakeClient(0, 40), FakeClient(1, 40)
    np.testing.assert_array_equal(algo.personal_params(models, c0), np.full(3, 6.0))  # M_g, then the step
    np.testing.assert_array_equal(algo.personal_params(models, c1), np.ones(3))  # ungrouped: global
    assert c0.calls == [plain_sgd(lr=0.02, epochs=1, batch_size=40)]  # one full-batch step
    capped = DSAC(DSACParams(finetune_eps=0.02, finetune_batch=16))
    capped.personal_params(models, c0)
    assert c0.calls[-1].batch_size == 16
    off = DSAC(DSACParams(finetune_eps=0.0))
    np.testing.assert_array_equal(off.personal_params(models, c0), np.full(3, 5.0))


@pytest.mark.parametrize("feature_mapping", [False, True])
def test_feature_mapping_is_what_makes_clients_keep_state(feature_mapping):
    """(Packing invariance of both, clients pinned with feature mapping: tests/algorithms/test_conformance.py.)"""
    assert DSAC(DSACParams(feature_mapping=feature_mapping)).traits.client_state is feature_mapping


# ------------------------------------------------------------- the switches change what they should


def two_group_results(state: DSACState) -> list[ClientResult]:
    """Clients 0, 1 (data direction (1, 0)) push every sub-model up by +1 and +3; clients 2, 3
    (direction (0, 1)) push it down by -1 each: two groups with opposite updates."""
    ups = {0: 1.0, 1: 3.0, 2: -1.0, 3: -1.0}
    feats = {0: (1.0, 0.0), 1: (1.1, 0.0), 2: (0.0, 1.0), 3: (0.0, 1.2)}
    return [result(state, c, {0: u, 1: u, 2: u}, feature=feats[c]) for c, u in ups.items()]


def test_groups_with_opposite_updates_change_the_global_model() -> None:
    """Algorithm 1, lines 13-20: with the hierarchy on, update clustering and combination run within
    each client group and the groups are then combined by their weight; off, over the whole cohort."""
    kw = {"num_clusters": 2, "beta": 1.0, "max_groups": 2, "decay": 0.0}
    hier, hstate = make(**kw)
    flat, fstate = make(hierarchical_clustering=False, **kw)
    h, hm = aggregate(hier, hstate, 1, two_group_results(hstate), rng())
    f, fm = aggregate(flat, fstate, 1, two_group_results(fstate), rng())
    assert list(h.assign) == list(f.assign) == [0, 0, 1, 1]  # the same two groups either way
    sl = hstate.partition.slice(0)
    # hierarchical: group 0 = two singleton clusters -> mean +2; group 1 -> -1; equal weights -> 0.5
    np.testing.assert_allclose(h.params[sl], 0.5, rtol=1e-5)
    np.testing.assert_allclose(h.group_models[0][sl], 2.0, rtol=1e-5)  # M_g of eq. (13)
    np.testing.assert_allclose(h.group_models[1][sl], -1.0, rtol=1e-5)
    # flat: K-means over all four puts {+1, +3} (spread) against {-1, -1} (tight): eq. (6)'s variance
    # penalty moves weight to the tight cluster, so the global model moves less (here: negative)
    assert not np.allclose(f.params[sl], h.params[sl])
    assert float(f.params[sl][0]) < 0.5
    np.testing.assert_array_equal(f.group_models[0], h.group_models[0])  # personal models agree


def test_stale_clients_train_from_the_model_they_last_received() -> None:
    """staleness: last_model. Client 0 trained in round 9 and then received version 10; at round 30
    it trains from version 10, 20 versions behind: its weight before normalisation is e^{-20γ} of a
    fresh client's (client 1 trained in round 29 and holds version 30, the current model)."""
    gamma = 0.03
    algo, state = make(staleness="last_model", decay=gamma, weight_floor=0.0)
    v10 = np.full(state.params.size, 7.0, np.float32)
    state = replace(state, last_round=np.array([9, 29, 29, 29]), versions={10: v10})
    plan_tasks = configure(algo, state, 30, [0, 1], rng())
    assert [t.model_key for t in plan_tasks] == ["version/10", "global"]
    _, plan = algo.configure_round(state, _round(30, [0, 1]))
    np.testing.assert_array_equal(plan.broadcast["version/10"], v10)
    w, dt = algo.decayed_weights(state, 30, [0, 1])
    assert list(dt) == [20, 0]
    assert w[0] / w[1] == pytest.approx(math.exp(-20 * gamma), rel=1e-12)
    # through the round: the weights recorded, then both hold the new model (version 31)
    new, m = aggregate(algo, state, 30, [result(state, 0, {0: 1.0}), result(state, 1, {0: 1.0})], rng())
    assert new.weight_now[0] / new.weight_now[1] == pytest.approx(math.exp(-20 * gamma))
    assert m["rounds_missed_mean"] == 10.0
    assert list(new.last_round[:2]) == [30, 30]
    # version 10 is no longer held by anyone; version 30 (this round's start) is, by clients 2 and 3
    assert set(new.versions) == {30} and np.array_equal(new.versions[30], state.params)
    # synchronous mode: everybody trains from the current model, the same weights
    sync, sstate = make(decay=gamma, weight_floor=0.0)
    sstate = replace(sstate, last_round=np.array([9, 29, 29, 29]))
    assert [t.model_key for t in configure(sync, sstate, 30, [0, 1], rng())] == ["global", "global"]
    np.testing.assert_allclose(sync.decayed_weights(sstate, 30, [0, 1])[0], w)


def _round(t: int, available: list[int]):

    return round_ctx(t, available, hparams=client_hparams(), rng=rng())


class StepClient:
    """fit() takes one SGD step exactly as the trainer does: grad = 1, the hook, then
    ``weight_decay`` * w added, then w -= lr * grad (raysim.runtime.trainer.Trainer.fit)."""

    def __init__(self) -> None:
        self.client_id, self.num_examples, self.state, self.broadcast = 0, 10, {}, {}
        self.hparams: LocalHParams | None = None
        self.trained = np.zeros(0, np.float32)

    def embed(self, params):
        return np.ones(2, np.float32)

    def fit(self, params, *, hparams, grad_hook=None):
        from raysim.runtime.trainer import FitResult

        self.hparams = hp = hparams
        w = torch.tensor(params)
        g = torch.ones_like(w)
        if grad_hook is not None:
            grad_hook(w, g)
        g.add_(w, alpha=hp.weight_decay)
        self.trained = (w - hp.lr * g).numpy()
        return FitResult(params=self.trained, loss=1.0, steps=1, num_examples=10)


def test_weight_decay_never_moves_a_layer_the_client_was_not_assigned() -> None:
    """local.weight_decay > 0: the decay is applied in the gradient hook before the sub-model mask
    (the trainer would add it after the hook, moving every layer)."""
    from raysim.algorithms.base import ClientTask

    algo, state = make()
    part = state.partition
    params = np.ones(state.params.size, np.float32)
    task = ClientTask(
        client_id=0,
        model_key="global",
        hparams=client_hparams(lr=0.1, weight_decay=0.5),
        extras={"submodels": np.array([1]), "bounds": np.asarray(part.bounds), "want_feature": np.asarray(0)},
    )
    client = StepClient()
    res = algo.client_update(task, params, client)
    assert client.hparams.weight_decay == 0.0  # moved into the hook
    # assigned sub-model 1: w - lr (1 + wd w) = 1 - 0.1 * 1.5 -> delta -0.15
    np.testing.assert_allclose(res.extras["sub/1"], -0.15, rtol=1e-6)
    # sub-models 0 and 2 did not move during local training (the forward pass used them unchanged)
    for j in (0, 2):
        np.testing.assert_array_equal(client.trained[part.slice(j)], params[part.slice(j)])
    # the old order (decay after the mask) would have moved them by -lr * wd * w = -0.05
    old = StepClient()
    old.fit(params, grad_hook=hooks.masked(part.masks()[1]), hparams=task.hparams)
    np.testing.assert_allclose(old.trained[part.slice(0)], 0.95, rtol=1e-6)


SWITCH_RUN = {
    "data__num_clients": 8,
    "rounds__clients_per_round": 5,
    "rounds__num_rounds": 4,
    "algorithm__num_submodels": 3,
    "algorithm__cluster_every": 2,
    "algorithm__decay": 0.3,
}


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory):
    return run(dsac_config(tmp_path_factory.mktemp("complete"), **SWITCH_RUN)).unpack(
        "summary", "rounds", "clients"
    )[1]


@pytest.mark.parametrize(
    "switch,value",
    [
        ("decomposition", False),
        ("pretraining", False),
        ("hierarchical_clustering", False),
        ("dynamic_weights", False),
        ("variance_prior", 1.0),
        ("staleness", "last_model"),
    ],
)
def test_each_switch_changes_the_run(tmp_path, complete_run, switch, value):
    """Digits, 8 clients, 5 a round, 4 rounds: every switch changes the trajectory, through the
    mechanism it names."""
    full = complete_run
    _, alt, clients = run(dsac_config(tmp_path, **SWITCH_RUN, **{f"algorithm__{switch}": value})).unpack(
        "summary", "rounds", "clients"
    )
    assert not np.allclose(full["test_loss"], alt["test_loss"]), switch
    if switch == "decomposition":
        assert (alt["num_submodels"] == 1).all() and (full["num_submodels"] == 3).all()
    elif switch == "pretraining":
        assert "base_test_accuracy" not in alt and full["base_test_accuracy"].notna().all()
    elif switch == "dynamic_weights":
        assert (full["rounds_missed_mean"] > 0).any()  # somebody missed rounds: weights differ
    elif switch == "staleness":
        assert (alt["versions_held"] > 1).any()
        assert clients["model_key"].str.startswith("version/").any()


def scored(algo, state, truth):
    """The runtime's cluster columns (cluster_ari/nmi/clients) of the algorithm's annotations."""
    from raysim.metrics import cluster_tracking
    from raysim.runtime.server import cluster_membership

    return cluster_tracking(cluster_membership(algo.client_annotations(state)), None, np.asarray(truth))
