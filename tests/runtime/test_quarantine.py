"""A client whose update norm is >= rounds.quarantine_factor x the round's median is left out of
that round exactly (the aggregate equals one that never saw it), its state is not committed, and it
is counted and reported."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raysim.algorithms.base import ClientResult, LinearSum
from tests.conftest import tiny_config
from tests.helpers import experiment, run
from tests.runtime import toy_algos

COLS = ["round", "test_accuracy", "test_loss", "train_loss", "completed", "dropouts"]
VICTIM = 2


def config(tmp_path, **over):
    # every client every round, so the victim trains in every round
    base = {"rounds__clients_per_round": 6, "rounds__num_rounds": 3}
    return tiny_config(tmp_path, **{**base, **over})


def test_linear_sum_minus_is_exact():
    rs = [
        ClientResult(
            client_id=i, num_examples=n, delta=np.random.default_rng(i).normal(size=5).astype(np.float32)
        )
        for i, n in enumerate((3, 5, 7))
    ]
    total = LinearSum.of(rs)
    assert total is not None
    without = total.minus(LinearSum.single(rs[1]))
    want = LinearSum.of([rs[0], rs[2]])
    assert want is not None
    np.testing.assert_array_equal(without.fixed_delta, want.fixed_delta)
    assert (without.num_clients, without.num_examples) == (2, 10)


@pytest.mark.parametrize("cpa", [1, 3])
def test_a_diverged_client_is_quarantined_exactly_like_a_dropped_one(tmp_path, cpa):
    cfg = config(tmp_path, resources__clients_per_actor=cpa)
    q_rounds, q_clients, _ = run(cfg, toy_algos.Diverging(VICTIM, "scale")).unpack(
        "rounds", "clients", "client_states"
    )
    d_rounds, _, _ = run(cfg, toy_algos.Diverging(VICTIM, "raise")).unpack(
        "rounds", "clients", "client_states"
    )
    # the pre-summed partial minus the victim's fixed-point update == the sum without it, bit for bit
    pd.testing.assert_frame_equal(q_rounds[COLS], d_rounds[COLS], check_exact=True)
    assert (q_rounds["quarantined"] == 1).all() and (d_rounds["quarantined"] == 0).all()
    reasons = q_clients.loc[q_clients["client_id"] == VICTIM, "reason"].dropna()
    reasons = reasons[reasons != ""]  # its evaluation rows carry no reason
    assert len(reasons) == 3 and reasons.str.startswith("quarantined: update norm").all()
    assert reasons.str.contains("x the round's median").all()


def test_switched_off_the_diverged_update_reaches_the_model(tmp_path):
    on, _, _ = run(config(tmp_path), toy_algos.Diverging(VICTIM, "scale")).unpack(
        "rounds", "clients", "client_states"
    )
    off, _, _ = run(
        config(tmp_path, rounds__quarantine_factor=0), toy_algos.Diverging(VICTIM, "scale")
    ).unpack("rounds", "clients", "client_states")
    assert (off["quarantined"] == 0).all() and off["dropouts"].iloc[0] == 0
    # the 1e5x update enters the model in round 1; from round 2 on every client's update is NaN
    assert (off["dropouts"].iloc[1:] == 6).all() and (on["dropouts"] == 1).all()
    assert not np.allclose(on["test_loss"], off["test_loss"], equal_nan=True)


def test_a_quarantined_clients_state_is_not_committed(tmp_path):
    _, _, states = run(
        config(tmp_path), toy_algos.Diverging(VICTIM, "scale", stateful=True), client_states=True
    ).unpack("rounds", "clients", "client_states")
    assert states is not None
    assert states.get(VICTIM, {}).get("trained", 0) == 0  # three rounds trained, none accepted
    assert all(states[c]["trained"] == 3 for c in states if c != VICTIM)


def test_an_ordinary_spread_of_norms_quarantines_nobody(tmp_path):
    rounds, _, _ = run(config(tmp_path), toy_algos.Diverging(VICTIM, "scale", factor=3.0)).unpack(
        "rounds", "clients", "client_states"
    )
    assert (rounds["quarantined"] == 0).all()


@pytest.mark.ray
def test_quarantine_on_ray_matches_serial_for_pinned_and_roaming_clients(ray_cluster, tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(toy_algos)  # actors cannot import the tests package
    serial, _, _ = run(config(tmp_path), toy_algos.Diverging(VICTIM, "scale")).unpack(
        "rounds", "clients", "client_states"
    )
    # roaming clients (any actor may train the victim) on 2 actors, pinned clients on 6
    for stateful, cpa in ((False, 3), (True, 1)):
        got, _, _ = run(
            config(tmp_path, resources__backend="ray", resources__clients_per_actor=cpa),
            toy_algos.Diverging(VICTIM, "scale", stateful=stateful),
        ).unpack("rounds", "clients", "client_states")
        pd.testing.assert_frame_equal(serial[COLS], got[COLS], check_exact=True)
        assert (got["quarantined"] == 1).all()


def test_without_presumming_the_quarantined_update_is_dropped_whole(tmp_path):
    # hosts that do not pre-sum send every update itself; the server removes the quarantined
    # client's result and must not look for a partial to subtract it from
    from dataclasses import replace

    cfg = config(tmp_path)
    rounds = []
    for algo_mode in ("scale", "raise"):
        exp = experiment(cfg)
        exp.algorithm = toy_algos.Diverging(VICTIM, algo_mode)
        exp.prepare()
        try:
            for host in exp.backend.hosts:
                host.spec = replace(host.spec, presum=False)
            rounds.append(pd.DataFrame([exp.step().metrics for _ in range(3)]))
        finally:
            exp.close()
    pd.testing.assert_frame_equal(rounds[0][COLS], rounds[1][COLS], check_exact=True)
    assert (rounds[0]["quarantined"] == 1).all()
