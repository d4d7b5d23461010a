"""End-to-end runs on the serial backend: determinism, packing invariance, faults, resume."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from raysim.algorithms.fedavg import FedAvg
from raysim.runtime.experiment import Experiment
from tests.conftest import tiny_config

METRIC_COLS = [
    "round",
    "test_accuracy",
    "test_loss",
    "train_loss",
    "personal_accuracy",
    "bytes_up",
    "bytes_down",
    "dropouts",
    "completed",
]


def run(cfg, **kw):
    exp = Experiment(cfg, progress=False, **kw)
    try:
        summary = exp.run()
    finally:
        exp.close()
    return summary, pd.read_parquet(exp.run_dir / "rounds.parquet"), exp


def test_run_writes_every_file_and_learns(tmp_path):
    summary, rounds, exp = run(tiny_config(tmp_path, rounds__num_rounds=4))
    for f in (
        "config.yaml",
        "rounds.parquet",
        "clients.parquet",
        "system.parquet",
        "summary.json",
        "partition.parquet",
    ):
        assert (exp.run_dir / f).is_file(), f
    assert len(rounds) == 4
    assert rounds["test_accuracy"].iloc[-1] > rounds["test_accuracy"].iloc[0]
    assert summary["final_test_accuracy"] == pytest.approx(rounds["test_accuracy"].iloc[-1])
    for phase in ("configure_s", "broadcast_s", "train_s", "aggregate_s", "evaluate_s"):
        assert (rounds[phase] >= 0).all()
    # every cohort member downloads the 20k-float model once and uploads one update
    n_params = (1 * 16 * 9 + 16) + (16 * 32 * 9 + 32) + (32 * 2 * 2 * 10 + 10)  # cnn-small on 8x8 digits
    assert rounds["bytes_down"].iloc[0] == 3 * 4 * n_params
    assert rounds["bytes_up"].iloc[0] == 3 * 4 * n_params
    clients = pd.read_parquet(exp.run_dir / "clients.parquet")
    assert set(clients[clients.participated & ~clients.dropped].groupby("round").size()) == {3}


def test_same_seed_gives_identical_metrics(tmp_path):
    _, a, _ = run(tiny_config(tmp_path))
    _, b, _ = run(tiny_config(tmp_path))
    pd.testing.assert_frame_equal(a[METRIC_COLS], b[METRIC_COLS])
    _, c, _ = run(tiny_config(tmp_path, seed=4))
    assert not np.allclose(a["test_loss"], c["test_loss"])


@pytest.mark.parametrize("algo", ["fedavg", "scaffold", "fedprox"])
def test_packing_does_not_change_results(tmp_path, algo):
    frames = [
        run(tiny_config(tmp_path, algorithm__name=algo, resources__clients_per_actor=cpa))[1][METRIC_COLS]
        for cpa in (1, 4, "auto")
    ]
    for f in frames[1:]:
        pd.testing.assert_frame_equal(frames[0], f)


class NaNForClient0(FedAvg):
    name = "nan-test"

    def client_update(self, task, params, client):
        r = super().client_update(task, params, client)
        if task.client_id == 0:
            return replace(r, delta=np.full_like(r.delta, np.nan))
        return r


def test_non_finite_update_is_a_counted_dropout(tmp_path):
    cfg = tiny_config(tmp_path, rounds__clients_per_round=6, rounds__num_rounds=2)
    exp = Experiment(cfg, progress=False)
    exp.algorithm = NaNForClient0()
    summary = exp.run()
    exp.close()
    rounds = pd.read_parquet(exp.run_dir / "rounds.parquet")
    assert list(rounds["dropouts"]) == [1.0, 1.0]
    assert list(rounds["completed"]) == [5.0, 5.0]
    assert np.isfinite(rounds["test_loss"]).all()
    clients = pd.read_parquet(exp.run_dir / "clients.parquet")
    bad = clients[clients.dropped]
    assert set(bad.client_id) == {0} and set(bad.reason) == {"non-finite update"}
    assert summary["dropouts"] == 2


class FailsForClient1(FedAvg):
    name = "fail-test"

    def client_update(self, task, params, client):
        if task.client_id == 1:
            raise RuntimeError("disk on fire")
        return super().client_update(task, params, client)


def test_client_exception_is_a_counted_dropout(tmp_path):
    cfg = tiny_config(tmp_path, rounds__clients_per_round=6, rounds__num_rounds=1)
    exp = Experiment(cfg, progress=False)
    exp.algorithm = FailsForClient1()
    exp.run()
    exp.close()
    clients = pd.read_parquet(exp.run_dir / "clients.parquet")
    bad = clients[clients.dropped]
    assert list(bad.client_id) == [1]
    assert "disk on fire" in bad.reason.iloc[0]


@pytest.mark.parametrize("algo", ["scaffold", "local"])
def test_resume_matches_uninterrupted_run(tmp_path, algo):
    cfg = tiny_config(tmp_path, algorithm__name=algo, rounds__num_rounds=4, rounds__checkpoint_every=2)
    _, full, _ = run(cfg)

    first = Experiment(cfg, progress=False)
    first.run(until=3)  # checkpoint at round 2, then round 3 is lost with the "crash"
    first.close()
    resumed = Experiment.resume(first.run_dir, progress=False)
    assert resumed.next_round == 3
    resumed.run()
    resumed.close()
    after = pd.read_parquet(first.run_dir / "rounds.parquet")
    pd.testing.assert_frame_equal(full[METRIC_COLS], after[METRIC_COLS])
