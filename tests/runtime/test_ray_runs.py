"""The Ray backend on a real local Ray: placement, packing invariance, dead and restarted actors."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from tests.conftest import tiny_config
from tests.helpers import experiment, run
from tests.runtime.exact import assert_same_learning, client_actors

pytestmark = pytest.mark.ray


# Three distinct layouts of the 6 tiny clients on the session's 4-CPU Ray: one actor each, 5 a
# actor (2 actors) and `auto` at one CPU an actor (4 actors). At the same num_cpus, `auto` would
# give one actor per client whenever `1` fits, i.e. the same layout as `1`.
RAY_LAYOUTS = {
    "1": ({"resources__clients_per_actor": 1}, 6),
    "5": ({"resources__clients_per_actor": 5}, 2),
    "auto": ({"resources__clients_per_actor": "auto", "resources__num_cpus": 1.0}, 4),
}


@pytest.mark.slow  # 12 client actors + 3 server actors: minutes on 2 shared cores
@pytest.mark.parametrize("algo", ["fedavg", "scaffold"])
def test_packing_gives_bit_identical_rounds_on_ray(ray_cluster, tmp_path, algo):
    """FedAvg's clients roam under `auto` (each cohort balanced over the actors) and are pinned
    otherwise; SCAFFOLD's are always pinned (control variates). Every learning column equal to the
    last bit across the three layouts and with the serial backend."""
    from raysim.runtime.packing import roams

    traits = tiny_config(tmp_path, algorithm__name=algo).algorithm.traits
    _, serial, _ = run(tiny_config(tmp_path, algorithm__name=algo, rounds__num_rounds=4)).unpack(
        "summary", "rounds", "exp"
    )
    for name, (over, actors) in RAY_LAYOUTS.items():
        cfg = tiny_config(
            tmp_path, algorithm__name=algo, rounds__num_rounds=4, resources__backend="ray", **over
        )
        summary, got, exp = run(cfg).unpack("summary", "rounds", "exp")
        assert summary["client_actors"] == actors == client_actors(exp.run_dir), name
        assert roams(traits.client_state, actors, cfg.resources.clients_per_actor) is (
            algo == "fedavg" and name == "auto"
        )
        assert_same_learning(serial, got, f"{algo}: serial vs ray clients_per_actor={name}")


def test_num_actors_and_torch_threads_take_effect_in_the_actors(ray_cluster, tmp_path):
    import cloudpickle

    from tests.runtime import probe_algos

    cloudpickle.register_pickle_by_value(probe_algos)  # actors cannot import the tests package
    cfg = tiny_config(
        tmp_path,
        resources__backend="ray",
        resources__num_actors=2,  # `auto` alone would start one actor per client (6)
        resources__torch_threads=2,
        rounds__num_rounds=1,
        rounds__clients_per_round=6,
    )
    summary, rounds, exp = run(cfg, probe_algos.ReportsTorchThreads()).unpack("summary", "rounds", "exp")
    assert summary["client_actors"] == 2 == client_actors(exp.run_dir)
    # a Ray worker starts with one torch thread (OMP_NUM_THREADS=1); the setting raised it
    assert rounds["client_torch_threads_min"].iloc[0] == rounds["client_torch_threads_max"].iloc[0] == 2
    assert rounds["server_torch_threads"].iloc[0] == 2
    # every actor process starts with raysim's allocator settings (actors.backend.ACTOR_ENV)
    assert rounds["client_malloc_env_min"].iloc[0] == 1 and rounds["server_malloc_env"].iloc[0] == 1
    system = pd.read_parquet(exp.run_dir / "system.parquet")
    assert (system.loc[system.actor >= 0, "minor_faults"] > 0).all()  # reported per actor


def test_the_driver_keeps_the_object_stores_copy_of_the_table_not_its_own(ray_cluster, tmp_path):
    """Issue 21: the driver drops the table it built once Ray holds it (10^6 clients: ~280 MB
    otherwise counted twice in its RSS); its federation reads the store's read-only pages."""
    from raysim.data import build_federation, summary_table

    cfg = tiny_config(tmp_path, resources__backend="ray", resources__num_actors=2, rounds__num_rounds=1)
    summary, exp = run(cfg).unpack("summary", "exp")
    assert summary["client_actors"] == 2
    t = exp.table
    assert exp.federation.table is t
    for name in ("train_idx", "val_idx", "test_idx", "train_off", "client_ids"):
        a = getattr(t, name)
        assert not a.flags.writeable and not a.flags.owndata, name  # a view of the store's buffer
    d = cfg.data
    again = build_federation(exp.dataset, scheme=d.partition, num_clients=6, seed=cfg.seed, alpha=d.alpha)
    assert summary_table(exp.federation, exp.dataset).equals(summary_table(again, exp.dataset))
    for a, b in zip(exp.federation.clients, again.clients, strict=True):
        np.testing.assert_array_equal(a.train_idx, b.train_idx)
        np.testing.assert_array_equal(a.test_idx, b.test_idx)


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
    exp = experiment(cfg)
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
    # each actor knows its share; no CUDA on this machine, so no memory cap and no GPU peak
    assert all(s["gpu_share"] == 0.25 for s in stats), [s["gpu_share"] for s in stats]
    assert all(np.isnan(s["gpu_memory_cap"]) and np.isnan(s["peak_gpu_mb"]) for s in stats)


def test_a_gpu_fraction_caps_the_actors_cuda_memory_only_when_it_is_a_fraction():
    from actors.client import gpu_memory_cap

    assert gpu_memory_cap(0.25, cuda_available=True) == 0.25
    assert gpu_memory_cap(1.0, cuda_available=True) is None  # a whole device: nothing to share
    assert gpu_memory_cap(0.0, cuda_available=True) is None  # no GPU asked for
    assert gpu_memory_cap(0.25, cuda_available=False) is None  # Ray's logical GPUs on a CPU machine


@pytest.mark.parametrize("share,capped", [(0.25, True), (1.0, False)])
def test_a_client_actor_on_a_gpu_fraction_sets_its_cuda_memory_cap(monkeypatch, share, capped):
    """The actor itself calls torch's cap with its share and its device (no GPU here: torch.cuda,
    Ray's runtime context and the host are stand-ins; the actor's constructor is the real one)."""
    import types

    import torch

    import actors.client as client

    calls = []
    ctx = types.SimpleNamespace(
        get_accelerator_ids=lambda: {"GPU": ["1"]}, get_assigned_resources=lambda: {"GPU": share}
    )
    monkeypatch.setattr(client.ray, "get_runtime_context", lambda: ctx)
    monkeypatch.setattr(
        client, "ClientHost", lambda *a, **kw: types.SimpleNamespace(device=torch.device("cuda", 0))
    )
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: calls.append((f, d)))
    actor = client.ClientActorImpl(0, None, None, [], None)
    assert calls == ([(0.25, torch.device("cuda", 0))] if capped else [])
    assert actor.gpu_cap == (0.25 if capped else None)


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
    exp = experiment(cfg)
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
    exp = experiment(cfg)
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


def test_roaming_clients_of_a_killed_actor_train_elsewhere_and_are_not_lost(ray_cluster, tmp_path):
    """FedAvg under `auto` with two actors: clients roam, so a dead actor loses nobody."""
    cfg = tiny_config(
        tmp_path,
        data__num_clients=4,
        resources__backend="ray",
        resources__num_actors=2,
        rounds__clients_per_round=4,
        rounds__num_rounds=4,
    )
    exp = experiment(cfg)
    try:
        exp.prepare()
        exp.run_round(1)
        ray_cluster.kill(exp.backend.clients[1])
        time.sleep(0.5)
        summary = exp.run()
    finally:
        exp.close()
    rounds = pd.read_parquet(exp.run_dir / "rounds.parquet")
    assert list(rounds["lost_clients"]) == [0, 0, 0, 0]
    assert rounds["dropouts"].iloc[1] == 2  # the tasks sent to the dead actor in round 2
    assert list(rounds["completed"]) == [4, 2, 4, 4]  # then every client trains on actor 0
    assert summary["lost_clients"] == 0
    clients = pd.read_parquet(exp.run_dir / "clients.parquet")
    dropped = clients[clients.dropped]
    assert set(dropped["round"]) == {2} and dropped.reason.str.contains("actor 1 failed").all()


def wait_restarted(ray, actor, old_pid: int, timeout_s: float = 120.0) -> None:
    """Until ``actor`` answers from a process other than ``old_pid`` (ray.kill is asynchronous;
    calls meanwhile may fail with "the actor was restarted")."""
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        try:
            if ray.get(actor.stats.remote(), timeout=30)["pid"] != old_pid:
                return
        except ray.exceptions.RayError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the actor was not restarted within {timeout_s} s")


def scaffold_two_actors(tmp_path, **over):
    """SCAFFOLD's 4 clients pinned 2 to an actor, every client every round, actors restartable once."""
    return tiny_config(
        tmp_path,
        algorithm__name="scaffold",
        data__num_clients=4,
        resources__backend="ray",
        resources__clients_per_actor=2,
        resources__max_restarts=1,
        rounds__clients_per_round=4,
        **over,
    )


def test_with_max_restarts_a_killed_actor_comes_back_and_its_clients_restart_empty(ray_cluster, tmp_path):
    """SCAFFOLD (pinned clients with control variates), max_restarts 1: nobody is lost; the
    restarted actor's clients start again without their state."""
    cfg = scaffold_two_actors(tmp_path, rounds__num_rounds=4)
    exp = experiment(cfg)
    try:
        exp.prepare()
        exp.run_round(1)
        survivor, victim = exp.backend.clients
        assert set(ray_cluster.get(victim.get_state.remote())) == set(
            ray_cluster.get(victim.client_ids.remote())
        )
        old_pid = ray_cluster.get(victim.stats.remote())["pid"]
        ray_cluster.kill(victim, no_restart=False)
        wait_restarted(ray_cluster, victim, old_pid)  # a fresh process, a fresh ClientHost
        assert ray_cluster.get(victim.get_state.remote()) == {}  # its clients' control variates are gone
        assert len(ray_cluster.get(survivor.get_state.remote())) == 2  # the other actor's are kept
        with pytest.warns(RuntimeWarning, match="no checkpoint to restore their state from"):
            summary = exp.run()
    finally:
        exp.close()
    rounds = pd.read_parquet(exp.run_dir / "rounds.parquet")
    assert list(rounds["lost_clients"]) == [0, 0, 0, 0] and summary["lost_clients"] == 0
    # round 2 reaches the restarted actor (or fails once, "the actor was restarted"): either way its
    # results would come from lost state, so its clients are dropouts and reported as restarted
    assert list(rounds["completed"]) == [4, 2, 4, 4]
    assert list(rounds["restarted_clients"]) == [0, 2, 0, 0]
    clients = pd.read_parquet(exp.run_dir / "clients.parquet")
    reasons = clients[clients.dropped].reason
    assert reasons.str.contains("actor 1 failed|its actor restarted").all() and len(reasons) == 2


def test_a_restarted_actors_clients_get_their_state_back_from_the_newest_checkpoint(ray_cluster, tmp_path):
    """SCAFFOLD, max_restarts 1, a checkpoint every 2 rounds: an actor killed after round 3 comes
    back empty; round 4 drops its clients (their updates would start from lost control variates)
    and then gives them exactly their state of the round-2 checkpoint; the other actor's clients
    train on and keep theirs."""
    from raysim.runtime import rundir

    cfg = scaffold_two_actors(tmp_path, rounds__num_rounds=5, rounds__checkpoint_every=2)
    exp = experiment(cfg)
    try:
        exp.prepare()
        for t in (1, 2, 3):
            exp.run_round(t)
        saved = rundir.read_checkpoint(rundir.periodic_dir(exp.run_dir, 2))["server"]["client_states"]
        survivor, victim = exp.backend.clients
        mine = sorted(ray_cluster.get(victim.client_ids.remote()))
        before = ray_cluster.get(survivor.get_state.remote())
        old_pid = ray_cluster.get(victim.stats.remote())["pid"]
        ray_cluster.kill(victim, no_restart=False)
        wait_restarted(ray_cluster, victim, old_pid)
        with pytest.warns(RuntimeWarning, match="restored from the checkpoint of round 2"):
            report = exp.run_round(4)
        assert report.restarted == mine and report.metrics["completed"] == 2
        assert {r["client_id"] for r in report.clients if r["dropped"]} == set(mine)
        back = ray_cluster.get(victim.get_state.remote())
        assert sorted(back) == mine
        for c in mine:
            assert sorted(back[c]) == sorted(saved[c])
            for k in saved[c]:
                np.testing.assert_array_equal(back[c][k], saved[c][k])
        after = ray_cluster.get(survivor.get_state.remote())
        assert sorted(after) == sorted(before)  # trained in round 4: state moved on, not reset
        assert any(not np.array_equal(after[c][k], before[c][k]) for c in after for k in after[c])
        exp.run()  # round 5: the run goes on with all four (and writes its log)
    finally:
        exp.close()
    rounds = pd.read_parquet(exp.run_dir / "rounds.parquet")
    assert list(rounds["completed"]) == [4, 4, 4, 2, 4] and rounds["lost_clients"].max() == 0


@pytest.mark.parametrize("max_restarts", [1, 0])
def test_a_client_stuck_past_the_deadline_does_not_stall_the_next_round(ray_cluster, tmp_path, max_restarts):
    """Client 0 hangs for 60 s inside its update in round 1 (deadline 3 s). Its actor never sees
    the cancellation, so a call of round 2 would queue behind the hang. With restarts allowed the
    pool restarts that actor and round 2 trains all four clients; without, it leaves the actor out
    (its two clients are dropouts). Either way neither round 1's evaluation nor round 2 waits for
    the hang."""
    import cloudpickle

    from tests.runtime import slow_algo

    cloudpickle.register_pickle_by_value(slow_algo)  # actors cannot import the tests package
    flag = tmp_path / "hang-now"
    flag.touch()
    cfg = tiny_config(
        tmp_path,
        data__num_clients=4,
        resources__backend="ray",
        resources__clients_per_actor=2,
        resources__max_restarts=max_restarts,
        rounds__clients_per_round=4,
        rounds__num_rounds=2,
        rounds__deadline_s=3.0,
    )
    exp = experiment(cfg)
    exp.algorithm = slow_algo.HangsOnce(str(flag), hang_s=60.0)
    try:
        exp.prepare()
        t0 = time.monotonic()
        first = exp.run_round(1)  # evaluates too (tiny_config: every round), on every free actor
        t1 = time.monotonic()
        second = exp.run_round(2)
        took = (t1 - t0, time.monotonic() - t1)
    finally:
        exp.close()
    assert not flag.exists() and first.metrics["completed"] == 2  # client 0's actor hung
    assert max(took) < 30, f"rounds took {took} s: a call queued behind the hung one"
    if max_restarts:
        assert second.metrics["completed"] == 4
    else:
        assert second.metrics["completed"] == 2
        stuck = [r for r in second.clients if r["dropped"]]
        assert len(stuck) == 2 and all("still stuck" in r["reason"] for r in stuck)


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
    exp = experiment(cfg)
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
