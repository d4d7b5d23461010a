"""The Ray backend on a real local Ray: placement, packing invariance, a killed actor."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from raysim.runtime.experiment import Experiment
from tests.conftest import tiny_config
from tests.runtime.test_serial_runs import METRIC_COLS

pytestmark = pytest.mark.ray


def run(cfg):
    exp = Experiment(cfg, progress=False)
    try:
        exp.run()
    finally:
        exp.close()
    return pd.read_parquet(exp.run_dir / "rounds.parquet")[METRIC_COLS]


def test_ray_matches_serial_for_any_packing(ray_cluster, tmp_path):
    serial = run(tiny_config(tmp_path, algorithm__name="scaffold"))
    for cpa in (1, 5, "auto"):
        got = run(
            tiny_config(
                tmp_path,
                algorithm__name="scaffold",
                resources__backend="ray",
                resources__clients_per_actor=cpa,
            )
        )
        pd.testing.assert_frame_equal(serial, got)


def test_fractional_gpus_place_eight_actors_on_two_gpus(ray_cluster, tmp_path):
    cfg = tiny_config(
        tmp_path,
        data__num_clients=8,
        resources__backend="ray",
        resources__clients_per_actor=1,
        resources__num_gpus=0.25,
        resources__num_cpus=0.25,
        rounds__num_rounds=1,
    )
    exp = Experiment(cfg, progress=False)
    try:
        exp.prepare()
        stats = exp.backend.system_stats()
    finally:
        exp.close()
    assert len(stats) == 8
    gpu_ids = [s["gpu_ids"] for s in stats]
    assert all(g != "" for g in gpu_ids), gpu_ids
    # 4 actors x 0.25 per GPU: both GPUs used, each by exactly four actors
    assert sorted(pd.Series(gpu_ids).value_counts().tolist()) == [4, 4]


def test_impossible_gpu_request_is_refused_before_the_run_dir(ray_cluster, tmp_path):
    from raysim.config import ConfigError

    cfg = tiny_config(
        tmp_path,
        data__num_clients=6,
        resources__backend="ray",
        resources__clients_per_actor=1,
        resources__num_gpus=1.0,
        resources__num_cpus=0.25,
    )
    exp = Experiment(cfg, progress=False)
    with pytest.raises(ConfigError, match="needs 6 GPUs"):
        exp.prepare()
    exp.close()
    assert not (tmp_path / "runs").exists()


def test_killed_client_actor_is_counted_and_the_run_completes(ray_cluster, tmp_path):
    cfg = tiny_config(
        tmp_path,
        data__num_clients=6,
        resources__backend="ray",
        resources__clients_per_actor=2,
        resources__max_restarts=0,
        rounds__clients_per_round=6,
        rounds__num_rounds=4,
    )
    exp = Experiment(cfg, progress=False)
    try:
        exp.prepare()
        exp.run_round(1)
        victim = exp.backend.clients[1]
        hosted = set(ray_cluster.get(victim.client_ids.remote()))
        assert len(hosted) == 2
        ray_cluster.kill(victim)
        time.sleep(0.5)
        # a checkpoint must not silently omit the clients of an actor that died unnoticed
        with pytest.raises(RuntimeError, match="client actor 1 failed during get_state"):
            exp.save(tmp_path / "ckpt")
        summary = exp.run()
    finally:
        exp.close()
    rounds = pd.read_parquet(exp.run_dir / "rounds.parquet")
    assert len(rounds) == 4
    assert rounds["dropouts"].iloc[0] == 0
    assert rounds["dropouts"].iloc[1] == 2  # the round that found the actor dead
    assert list(rounds["lost_clients"].iloc[1:]) == [2, 2, 2]
    assert list(rounds["completed"].iloc[2:]) == [4, 4]  # later cohorts skip the lost clients
    assert summary["final_test_accuracy"] is not None
    clients = pd.read_parquet(exp.run_dir / "clients.parquet")
    dropped = clients[clients.dropped]
    assert set(dropped.client_id) == hosted
    assert dropped.reason.str.contains("actor 1 failed").all()


def test_a_client_past_the_deadline_is_a_dropout(ray_cluster, tmp_path):
    import cloudpickle

    from tests.runtime import slow_algo

    cloudpickle.register_pickle_by_value(slow_algo)  # actors cannot import the tests package
    cfg = tiny_config(
        tmp_path,
        data__num_clients=4,
        resources__backend="ray",
        resources__clients_per_actor=2,
        rounds__clients_per_round=4,
        rounds__num_rounds=1,
        rounds__deadline_s=3.0,
    )
    exp = Experiment(cfg, progress=False)
    exp.algorithm = slow_algo.SleepsForClient0()
    try:
        exp.prepare()
        report = exp.run_round(1)
    finally:
        exp.close()
    assert report.metrics["completed"] == 2  # the actor hosting client 0 (and one more) is late
    missed = [r for r in report.clients if r["dropped"]]
    assert len(missed) == 2 and all("deadline" in r["reason"] for r in missed)
    assert 0 in {r["client_id"] for r in missed}
