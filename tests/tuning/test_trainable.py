"""The Tune layer's first floor: trial placement groups, the per-trial loop and a real Tuner."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from raysim.config import ConfigError
from raysim.runtime.backend import Share
from tests.conftest import tiny_config
from tests.helpers import experiment
from tuning.resources import check_fits, client_bundle_count, trial_resources, trial_share
from tuning.trainable import merge_dotted, run_trial, trial_config, tune_metrics

# -- placement groups (pure: no Ray started) --------------------------------------------------


def test_serial_trial_is_one_driver_bundle(tmp_path):
    cfg = tiny_config(tmp_path, resources__torch_threads=2)
    pgf = trial_resources(cfg, cluster_cpus=4, cluster_gpus=2)
    assert pgf.bundles == [{"CPU": 2.0}]
    assert pgf.strategy == "PACK"
    assert not pgf.head_bundle_is_empty
    assert trial_share(pgf, "serial") == Share(cpus=2.0, gpus=0.0)
    assert client_bundle_count(cfg, pgf) == 0
    check_fits(cfg, pgf, 4, 0)


def test_ray_trial_has_server_and_client_bundles(tmp_path):
    cfg = tiny_config(
        tmp_path,
        resources__backend="ray",
        resources__num_cpus=0.5,
        resources__num_gpus=0.25,
        resources__num_actors=3,
        resources__server_cpus=1.0,
    )
    pgf = trial_resources(cfg, cluster_cpus=4, cluster_gpus=2)
    assert pgf.head_bundle_is_empty  # the driver only relays calls: it reserves nothing
    assert pgf.bundles == [{"CPU": 1.0}] + [{"CPU": 0.5, "GPU": 0.25}] * 3
    assert pgf.required_resources == {"CPU": 2.5, "GPU": 0.75}
    assert trial_share(pgf, "ray") == Share(cpus=2.5, gpus=0.75)
    assert client_bundle_count(cfg, pgf) == 3
    check_fits(cfg, pgf, 4, 2)


def test_ray_trial_with_auto_actors_fills_the_cluster_beside_the_server(tmp_path):
    cfg = tiny_config(tmp_path, resources__backend="ray", resources__num_cpus=1.0, resources__server_cpus=1.0)
    pgf = trial_resources(cfg, cluster_cpus=4, cluster_gpus=0)
    assert pgf.bundles == [{"CPU": 1.0}] + [{"CPU": 1.0}] * 3  # server + (4 - 1) client actors
    assert client_bundle_count(cfg, pgf) == 3
    # a server asking for nothing gets no bundle; actors never outnumber the 6 clients
    cfg = tiny_config(tmp_path, resources__backend="ray", resources__num_cpus=0.25)
    pgf = trial_resources(cfg, cluster_cpus=16, cluster_gpus=0)
    assert pgf.bundles == [{"CPU": 0.25}] * 6
    assert client_bundle_count(cfg, pgf) == 6


def test_check_fits_refuses_a_trial_the_cluster_can_never_hold_with_the_arithmetic(tmp_path):
    cfg = tiny_config(
        tmp_path, resources__backend="ray", resources__num_cpus=2.0, resources__clients_per_actor=1
    )
    pgf = trial_resources(cfg, cluster_cpus=4, cluster_gpus=0)
    with pytest.raises(ConfigError) as err:
        check_fits(cfg, pgf, 4, 0)
    msg = str(err.value)
    assert "needs 12 CPUs" in msg and "6 client actors x 2" in msg and "has 4" in msg, msg

    cfg = tiny_config(
        tmp_path,
        resources__backend="ray",
        resources__num_gpus=1.0,
        resources__num_actors=3,
        resources__server_gpus=1.0,
    )
    pgf = trial_resources(cfg, cluster_cpus=8, cluster_gpus=2)
    with pytest.raises(ConfigError) as err:
        check_fits(cfg, pgf, 8, 2)
    msg = str(err.value)
    assert "needs 4 GPUs" in msg and "server 1 + 3 client actors x 1" in msg and "has 2" in msg, msg


# -- the per-trial loop, without Tune ---------------------------------------------------------

TIMING = ("_s", "_mb")  # wall-clock and memory readings differ between any two runs


def _learning(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in metrics.items()
        if not k.endswith(TIMING) and not k.startswith("hparams/") and k != "done"
    }


def test_trial_config_merges_dotted_keys_and_refuses_bad_ones(tmp_path):
    base = tiny_config(tmp_path).to_dict()
    cfg = trial_config(base, {"local.lr": 1e-05, "algorithm": {"name": "fedprox"}}, output_dir=tmp_path / "t")
    assert cfg.local.lr == 1e-05 and cfg.algorithm.name == "fedprox"  # a number, not the text '1e-05'
    assert cfg.output.dir == str(tmp_path / "t") and cfg.output.progress is False
    assert base["local"]["lr"] == 0.05  # the base is left alone
    with pytest.raises(ConfigError, match=r"local\.lr"):
        trial_config(base, {"local.lr": -1.0})
    with pytest.raises(ConfigError, match=r"local\.nope"):
        trial_config(base, {"local.nope": 1})
    with pytest.raises(ConfigError, match="'seed' is a value"):
        merge_dotted(base, {"seed.x": 1})
    assert tune_metrics({"a": float("nan"), "b": None, "c": 1.5, "d": True, "e": "x"}) == {"c": 1.5, "d": 1}


def test_run_trial_reports_every_round_and_checkpoints_every_k_and_at_the_end(tmp_path):
    base = tiny_config(tmp_path).to_dict()
    calls: list[tuple[dict[str, Any], list[str] | None]] = []

    def report(metrics, directory):
        calls.append((metrics, sorted(os.listdir(directory)) if directory else None))

    last = run_trial({"local.lr": 0.1}, base, None, report, checkpoint_every=2, output_dir=tmp_path / "trial")
    assert last == 3
    assert [m["round"] for m, _ in calls] == [1, 2, 3]
    assert [d is not None for _, d in calls] == [False, True, True]  # round 2 (k=2) and the last
    assert all(d for _, d in calls if d is not None)  # the FL state is in the directory
    for m, _ in calls:
        assert {
            "test_accuracy",
            "test_loss",
            "personal_accuracy",
            "train_loss",
            "round_s",
            "bytes_up",
        } <= set(m)
        assert m["hparams/lr"] == 0.1
    assert (tmp_path / "trial" / "run" / "rounds.parquet").is_file()


def test_restored_trial_continues_at_round_3_with_the_trials_current_lr(tmp_path):
    """PBT's exploit + explore: the donor's round-2 FL state, trained on with the mutated lr."""
    cfg = tiny_config(tmp_path)  # fedavg, 3 rounds, lr 0.05
    ckpt = tmp_path / "round2"
    exp = experiment(cfg)
    exp.prepare()
    try:
        exp.step()
        exp.step()
        exp.save(ckpt)
        same_lr = exp.step().metrics  # round 3 at lr 0.05
        assert exp.restore(ckpt) == 2
        exp.set_hparams(lr=0.2)
        expected = exp.step().metrics  # round 3 at lr 0.2
    finally:
        exp.close()

    calls: list[dict[str, Any]] = []
    last = run_trial(
        {"local.lr": 0.2},
        cfg.to_dict(),
        str(ckpt),
        lambda m, d: calls.append(m),
        output_dir=tmp_path / "trial",
    )
    assert last == 3
    assert [m["round"] for m in calls] == [3]  # continues, does not start again at round 1
    assert calls[0]["hparams/lr"] == 0.2
    assert _learning(calls[0]) == _learning(tune_metrics(expected))  # exactly equal
    assert calls[0]["test_loss"] != same_lr["test_loss"]  # the new lr did train round 3


# -- a real Tuner ------------------------------------------------------------------------------


@pytest.mark.ray
def test_tuner_grid_over_lr_runs_both_trials_to_the_end(ray_cluster, tmp_path):
    from ray import tune

    from tuning.trainable import make_trainable

    cfg = tiny_config(tmp_path)
    base = cfg.to_dict()
    trainable = tune.with_resources(make_trainable(base), trial_resources(cfg, 4, 2))
    tuner = tune.Tuner(
        trainable,
        param_space={"local.lr": tune.grid_search([0.05, 0.1])},
        tune_config=tune.TuneConfig(metric="test_accuracy", mode="max"),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "sweeps"), name="t", verbose=0),
    )
    results = tuner.fit()
    assert results.num_errors == 0, [r.error for r in results]
    assert len(results) == 2
    finals = {}
    for r in results:
        hist = r.metrics_dataframe
        assert list(hist["round"]) == [1, 2, 3]
        assert r.metrics["hparams/lr"] == r.config["local.lr"]
        assert r.checkpoint is not None  # the last round's FL state
        assert (Path(r.path) / "run" / "rounds.parquet").is_file()  # the run lives in the trial dir
        finals[r.config["local.lr"]] = r.metrics["test_loss"]
    assert set(finals) == {0.05, 0.1} and finals[0.05] != finals[0.1]


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_ray_backend_trial_creates_its_actors_inside_its_placement_group(ray_cluster, tmp_path):
    """The trial's group reserves all 4 CPUs of the session cluster for its 2 client actors: an
    actor created outside the group could never be scheduled, and the trial would hang."""
    from ray import tune

    from tuning.trainable import make_trainable

    cfg = tiny_config(tmp_path, resources__backend="ray", resources__num_cpus=2.0, rounds__num_rounds=2)
    pgf = trial_resources(cfg, 4, 2)
    assert pgf.required_resources == {"CPU": 4.0}
    check_fits(cfg, pgf, 4, 2)
    tuner = tune.Tuner(
        tune.with_resources(make_trainable(cfg.to_dict(), checkpoint_every=0), pgf),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "sweeps"), name="r", verbose=0),
    )
    [result] = tuner.fit()
    assert result.error is None, result.error
    assert list(result.metrics_dataframe["round"]) == [1, 2]
    system = pd.read_parquet(Path(result.path) / "run" / "system.parquet")
    assert sorted(set(system["actor"]) - {-1}) == [0, 1]  # two client actors, sized to the group


def test_only_the_last_report_is_marked_done(tmp_path):
    """Tune ends a trial at a result marked done without handing it to the scheduler: PBT cannot
    exploit after the last round (the trial's final config is the one its last round trained with)."""
    calls: list[dict[str, Any]] = []
    run_trial({"local.lr": 0.1}, tiny_config(tmp_path).to_dict(), None, lambda m, d: calls.append(m))
    assert [m.get("done") for m in calls] == [None, None, True]


def test_cohort_hparams_name_a_value_shared_by_every_task_or_summarise_one_that_differs():
    from dataclasses import replace

    from raysim.algorithms.base import ClientTask
    from raysim.runtime.server import cohort_hparams
    from tests.helpers import client_hparams

    hp = client_hparams(lr=0.1, epochs=2, batch_size=16, momentum=0.0, weight_decay=0.0, optimizer="sgd")

    tasks = [
        ClientTask(client_id=i, model_key="global", hparams=replace(hp, lr=lr))
        for i, lr in enumerate((0.1, 0.3))
    ]
    out = cohort_hparams(tasks)
    assert "lr" not in out
    assert (out["lr_cohort_mean"], out["lr_cohort_min"], out["lr_cohort_max"]) == pytest.approx(
        (0.2, 0.1, 0.3)
    )
    assert out["epochs"] == 2 and out["batch_size"] == 16 and out["optimizer"] == "sgd"
    assert cohort_hparams(tasks[:1])["lr"] == 0.1
    assert cohort_hparams([]) == {}


def test_hparams_record_what_clients_trained_with_not_the_configs_local_lr(tmp_path):
    """Genetic CFL trains every client at its own lr: the trial reports the cohort's mean (named
    so), equal to clients.parquet's, and no hparams/lr (the config's local.lr, which nothing used)."""
    base = tiny_config(tmp_path, algorithm={"name": "genetic-cfl"}, local__lr=0.05).to_dict()
    calls: list[dict[str, Any]] = []
    run_trial({}, base, None, lambda m, d: calls.append(m), output_dir=tmp_path / "trial")
    clients = pd.read_parquet(tmp_path / "trial" / "run" / "clients.parquet")
    for m in calls:
        assert "hparams/lr" not in m and "hparams/batch_size" not in m
        lrs = clients.loc[clients["round"] == m["round"], "lr"]
        assert m["hparams/lr_cohort_mean"] == pytest.approx(lrs.mean())
        assert m["hparams/lr_cohort_min"] == pytest.approx(lrs.min())
        assert m["hparams/lr_cohort_max"] == pytest.approx(lrs.max())
        assert m["hparams/epochs"] == 2  # the algorithm's epochs, not local.epochs
