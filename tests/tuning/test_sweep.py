"""Whole sweeps through ``tuning.sweep`` on the session's local Ray: grid + outputs + validation
on fresh seeds, Optuna TPE after its start-up trials with ASHA stopping trials, its SQLite study, PBT exploits with the genetic lr."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from raysim.config import ConfigError, config_from_dict, load_config
from tests.conftest import tiny_config
from tuning.spec import spec_from_dict
from tuning.sweep import run_sweep, validate_best

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def _loaded(tmp_path: Path, **over: Any):
    raw: dict[str, Any] = {
        "name": "s",
        "base": tiny_config(tmp_path, rounds__num_rounds=3).to_dict(),
        "storage_path": str(tmp_path / "sweeps"),
        "space": {"local.lr": {"loguniform": [0.01, 0.2]}},
    }
    raw.update(over)
    return spec_from_dict(raw, "(test spec)", tmp_path)


def test_grid_sweep_writes_table_best_config_and_plots_then_validates_on_fresh_seeds(ray_cluster, tmp_path):
    loaded = _loaded(
        tmp_path, name="grid", mode="grid", seeds=[3, 4], space={"local.lr": {"grid": [0.02, 0.1]}}
    )
    out = run_sweep(loaded, echo=lambda s: None, verbose=0)
    d = out.directory
    assert out.trials == 4 and not out.errors
    table = pd.read_parquet(d / "trials.parquet")
    assert table.groupby("trial_id")["round"].apply(list).tolist() == [[1, 2, 3]] * 4
    assert sorted(set(zip(table["config/local.lr"], table["config/seed"], strict=True))) == [
        (0.02, 3),
        (0.02, 4),
        (0.1, 3),
        (0.1, 4),
    ]
    assert (table["hparams/lr"] == table["config/local.lr"]).all()  # each round trained with its knob

    info = json.loads((d / "sweep.json").read_text())
    assert info["tuning_seeds"] == [3, 4]
    finals = table.sort_values("round").groupby(["config/local.lr", "config/seed"])["test_accuracy"].last()
    means = finals.groupby(level=0).mean()
    best_lr = float(means.idxmax())
    assert info["best"]["config"]["local.lr"] == best_lr
    assert info["best"]["test_accuracy"] == pytest.approx(means.max())  # mean over the point's seeds
    assert {p["n"] for p in info["points"]} == {2}
    cfg = load_config(d / "best.yaml")  # a config `raysim run` accepts
    assert cfg.local.lr == best_lr and cfg.seed == 3
    assert "mean ± 95% CI" in (d / "summary.md").read_text()
    for png in ("curves.png", "knobs.png"):
        assert (d / "plots" / png).stat().st_size > 10_000
    with pytest.raises(ConfigError, match="exists"):  # a second run never overwrites the first
        run_sweep(loaded, echo=lambda s: None, verbose=0)

    res = validate_best(d, seeds=2, echo=lambda s: None, verbose=0)
    assert res["fresh_seeds"] == [5, 6] and not set(res["fresh_seeds"]) & {3, 4}
    assert len(res["fresh_values"]) == 2 and all(0 <= v <= 1 for v in res["fresh_values"])
    assert res["mean"] == pytest.approx(np.mean(res["fresh_values"]))
    assert json.loads((d / "validation.json").read_text()) == res
    # again: the finished validation is read back, not run again; on other seeds: refused, kept
    said: list[str] = []
    assert validate_best(d, seeds=2, echo=said.append, verbose=0) == res
    assert any("already finished" in m for m in said)
    with pytest.raises(
        ConfigError, match=r"holds a validation of another best.yaml or other seeds.*\[5, 6, 7\]"
    ):
        validate_best(d, seeds=3, echo=lambda s: None, verbose=0)
    assert json.loads((d / "validation.json").read_text()) == res


TPE_CALLS: list[tuple[str, Any]] = []


class SpyTPE(optuna.samplers.TPESampler):
    """Optuna's TPE, recording the start-up count it was built with and the trials its own model
    proposed for (the start-up trials are drawn at random and never reach ``_sample``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        TPE_CALLS.append(("init", kwargs.get("n_startup_trials")))
        super().__init__(*args, **kwargs)

    def _sample(self, study: Any, trial: Any, search_space: Any) -> Any:
        TPE_CALLS.append(("tpe", trial.number))
        return super()._sample(study, trial, search_space)


def test_optuna_tpe_proposes_after_its_start_up_trials_asha_stops_weak_ones_and_sqlite_keeps_the_study(
    ray_cluster, tmp_path, monkeypatch
):
    monkeypatch.setattr(optuna.samplers, "TPESampler", SpyTPE)
    TPE_CALLS.clear()
    good, bad = 0.2, 1e-5  # lr 1e-5 learns nothing in 4 rounds: the weak trial ASHA should stop
    loaded = _loaded(
        tmp_path,
        name="opt",
        mode="optuna",
        num_samples=5,
        max_concurrent_trials=1,  # each trial sees every earlier one finished: TPE and ASHA decide alike
        base=tiny_config(tmp_path, rounds__num_rounds=4).to_dict(),
        space={"local.lr": {"choice": [good, bad]}},
        # seed 2: TPE (Optuna 4.x-5.1) proposes good, good, then tries the bad lr at trial 3
        optuna={"seed": 2, "n_startup_trials": 2, "asha": {"grace_period": 1, "reduction_factor": 2}},
    )
    out = run_sweep(loaded, echo=lambda s: None, verbose=0)
    assert out.trials == 5 and not out.errors
    # TPE: two random start-up trials (numbers 0 and 1), then every trial proposed by TPE's model
    assert [v for k, v in TPE_CALLS if k == "init"][0] == 2  # the sweep's (load_study builds more)
    assert sorted({v for k, v in TPE_CALLS if k == "tpe"}) == [2, 3, 4]

    table = pd.read_parquet(out.directory / "trials.parquet")
    assert table["trial_id"].nunique() == 5
    assert set(table["config/local.lr"]) <= {good, bad}
    # ASHA (rungs at rounds 1 and 2 of 4): some trial stopped early, at a rung
    ran = table.groupby("trial_id")["round"].max()
    assert ran.max() == 4 and (ran < 4).any(), ran.to_dict()
    assert set(ran[ran < 4]) <= {1, 2}, ran.to_dict()

    study = optuna.load_study(study_name="opt", storage=f"sqlite:///{out.directory / 'optuna.db'}")
    trials = sorted((t for t in study.trials if t.state.is_finished()), key=lambda t: t.number)
    assert len(trials) == 5  # every Tune trial told back to the study (optuna-dashboard reads it)
    order = [t.params["local.lr"] for t in trials]
    assert sorted(order) == sorted(table.groupby("trial_id")["config/local.lr"].first())
    assert good in order and bad in order[order.index(good) + 1 :], (
        f"no bad lr after a good one, nothing for ASHA to stop: pick another seed ({order})"
    )
    # the bad trials stopped at the first rung, behind a good one; the good ones ran to the end
    rounds_by_lr = table.groupby("trial_id").agg(lr=("config/local.lr", "first"), ran=("round", "max"))
    assert set(rounds_by_lr.loc[rounds_by_lr["lr"] == good, "ran"]) == {4}, rounds_by_lr
    assert set(rounds_by_lr.loc[rounds_by_lr["lr"] == bad, "ran"]) == {1}, rounds_by_lr

    # the two start-up trials are labelled as Optuna's random ones, the rest as TPE's (issue 24)
    from raysim import outputs as reference
    from tuning.outputs import STARTUP

    first = table.drop_duplicates("trial_id")
    assert first["proposed_by"].tolist() == [STARTUP, STARTUP, "TPE", "TPE", "TPE"], first
    assert "2 of the trials are Optuna's random start-up trials" in (out.directory / "summary.md").read_text()
    assert reference.undocumented(table.columns, reference.TRIAL_COLUMNS + reference.rounds_columns()) == []


def test_pbt_exploits_from_fl_checkpoints_and_trains_with_the_mutated_lr(ray_cluster, tmp_path):
    loaded = _loaded(
        tmp_path,
        name="pbt",
        mode="pbt",
        num_samples=2,
        # one trial at a time: the order in which CI's 2 cores ran the trials used to decide
        # whether any exploit happened (asynchronous PBT); synchronous PBT must exploit anyway
        max_concurrent_trials=1,
        checkpoint_every=1,
        base=tiny_config(tmp_path, rounds__num_rounds=4).to_dict(),
        space={"local.lr": {"choice": [0.002, 0.2]}},
        pbt={"perturbation_interval": 1, "quantile_fraction": 0.5, "lr_scale": 0.1, "seed": 0},
        metric="train_loss",
        goal="min",
    )
    out = run_sweep(loaded, echo=lambda s: None, verbose=0)
    assert not out.errors
    table = pd.read_parquet(out.directory / "trials.parquet")
    assert "exploited" in table, "no trial was ever restored from a checkpoint"
    exploits = table[table["exploited"] == 1]
    assert len(exploits) >= 1
    for _, row in exploits.iterrows():
        donor = table[
            (table["trial_id"] == row["restored_from_trial"]) & (table["round"] == row["restored_from_round"])
        ]
        assert len(donor) == 1
        # the restored round continues the donor's FL state ...
        assert row["round"] == row["restored_from_round"] + 1
        # ... with the donor's learning rate times one of the genetic factors (never x 1: that
        # would re-run the donor exactly)
        ratio = row["hparams/lr"] / float(donor["hparams/lr"].iloc[0])
        assert min(abs(ratio - f) for f in (0.9, 1.1)) < 1e-9, ratio
    # each round's knob is what it trained with
    assert (table["hparams/lr"] == table["config/local.lr"]).all()
    # no exploit after the last round: every trial ran round 4 with the lr it ends with, and the
    # restores all continue a round before the last
    assert set(table.groupby("trial_id")["round"].max()) == {4}
    assert (exploits["restored_from_round"] < 4).all()
    assert "done" not in table
    best = yaml.safe_load((out.directory / "best.yaml").read_text())
    info = json.loads((out.directory / "sweep.json").read_text())
    last = table[(table["trial_id"] == info["best"]["trial_id"]) & (table["round"] == 4)]
    assert best["local"]["lr"] == float(last["hparams/lr"].iloc[0])
    summary = (out.directory / "summary.md").read_text()
    assert "## Schedules" in summary and ", from " in summary
    assert (out.directory / "plots" / "schedule.png").is_file()
    from raysim import outputs as reference

    assert reference.undocumented(table.columns, reference.TRIAL_COLUMNS + reference.rounds_columns()) == []
    policy = list(out.directory.glob("pbt_policy_*.txt")) + list(out.directory.glob("pbt_global.txt"))
    assert policy, "Tune's PBT log of exploits is missing"


def test_batch_runner_runs_fixed_configs_as_trials_and_names_a_failed_one(ray_cluster, tmp_path, capsys):
    import os

    from tuning.batch import run_experiments

    good = {k: tiny_config(tmp_path, seed=s, rounds__num_rounds=2).to_dict() for k, s in (("a", 1), ("b", 2))}
    said: list[str] = []
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    run_experiments(list(good.items()), tmp_path / "runs", jobs=2, label="t", echo=said.append)
    # its own progress lines only: none of Tune's tables and paths (a reproduction's log is read)
    assert [line.split(" (")[0] for line in said] == ["[t] 1/2 done", "[t] 2/2 done"]
    printed = capsys.readouterr().out
    assert "Configuration for experiment" not in printed and "View detailed results" not in printed
    assert os.environ.get("RAY_AIR_NEW_OUTPUT") == before  # changed for the fit only
    for k in good:
        summary = json.loads((tmp_path / "runs" / k / "summary.json").read_text())
        assert summary["rounds"] == 2
    a = pd.read_parquet(tmp_path / "runs" / "a" / "rounds.parquet")
    b = pd.read_parquet(tmp_path / "runs" / "b" / "rounds.parquet")
    assert not a["test_loss"].equals(b["test_loss"])  # two seeds, two runs

    bad = tiny_config(tmp_path).to_dict()
    bad["data"] = {**bad["data"], "dataset": "fashion-mnist", "data_dir": str(tmp_path / "nowhere")}
    with pytest.raises(RuntimeError, match=r"\[t\] 1 run\(s\) failed:\nc: "):
        run_experiments([("c", bad)], tmp_path / "runs", label="t", echo=lambda s: None)


def test_a_batch_trial_continues_a_run_an_earlier_attempt_left_from_its_checkpoint(ray_cluster, tmp_path):
    from raysim.runtime.experiment import Experiment
    from tests.runtime.exact import assert_same_learning
    from tuning.batch import run_experiments

    raw = tiny_config(tmp_path, rounds__num_rounds=4, rounds__checkpoint_every=1).to_dict()
    runs = tmp_path / "runs"
    cut = Experiment(
        config_from_dict({**raw, "output": {"dir": str(runs), "name": "cut", "progress": False}}),
        progress=False,
    )
    try:
        cut.run(until=2)  # killed after round 2: its checkpoint of round 2 is there
    finally:
        cut.close()
    run_experiments([("cut", raw), ("whole", raw)], runs, jobs=2, label="t", echo=lambda s: None)
    summary = json.loads((runs / "cut" / "summary.json").read_text())
    assert summary["finished"] is True and summary["resumed_from_round"] == 2
    assert json.loads((runs / "whole" / "summary.json").read_text())["resumed_from_round"] is None
    assert_same_learning(
        pd.read_parquet(runs / "whole" / "rounds.parquet"), pd.read_parquet(runs / "cut" / "rounds.parquet")
    )


def test_multi_objective_sweep_writes_its_pareto_front(ray_cluster, tmp_path):
    loaded = _loaded(
        tmp_path,
        name="mo",
        mode="optuna",
        num_samples=3,
        base=tiny_config(tmp_path, rounds__num_rounds=2).to_dict(),
        space={"local.lr": {"loguniform": [0.01, 0.2]}, "local.epochs": {"int": [1, 3]}},
        objectives=[{"metric": "test_accuracy", "goal": "max"}, {"metric": "train_s", "goal": "min"}],
        optuna={"sampler": "nsga2", "seed": 0},
    )
    out = run_sweep(loaded, echo=lambda s: None, verbose=0)
    assert out.trials == 3 and not out.errors
    info = json.loads((out.directory / "sweep.json").read_text())
    front = info["pareto_front"]
    assert 1 <= len(front) <= 3
    table = pd.read_parquet(out.directory / "trials.parquet")
    last = table.sort_values("round").groupby("trial_id")[["test_accuracy", "train_s"]].last()
    for p in front:  # nobody beats a front member on both objectives
        mine = last.loc[p["trial_id"]]
        assert not (
            (last["test_accuracy"] > mine["test_accuracy"]) & (last["train_s"] < mine["train_s"])
        ).any()
    assert (out.directory / "plots" / "pareto.png").stat().st_size > 10_000


def test_cli_refuses_a_sweep_that_can_never_fit_with_the_arithmetic(ray_cluster, tmp_path):
    from typer.testing import CliRunner

    from raysim.cli import app

    base = tiny_config(
        tmp_path, resources__backend="ray", resources__num_cpus=2.0, resources__clients_per_actor=1
    ).to_dict()
    raw = {
        "name": "big",
        "base": base,
        "mode": "optuna",
        "storage_path": str(tmp_path / "sweeps"),
        "space": {"local.lr": {"loguniform": [0.01, 0.1]}},
    }
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["tune", str(tmp_path / "big.yaml")])
    assert res.exit_code == 2, res.output
    assert "needs 12 CPUs" in res.output and "6 client actors x 2" in res.output
    assert not (tmp_path / "sweeps").exists()  # nothing half-written


@pytest.mark.slow
def test_a_sweep_of_a_reproducible_base_runs_its_trials_in_reproducible_mode(tmp_path):
    """``raysim tune`` started without reproducible mode's variables (as a user's shell is) starts its
    own Ray with them in the job's runtime_env, so each trial's run is in the mode (its
    environment.json says so); without that, trial processes would load torch unpinned."""
    import os
    import subprocess
    import sys

    from raysim import reproducible

    base = tiny_config(tmp_path, rounds__num_rounds=1, resources__reproducible=True).to_dict()
    spec = {
        "name": "repro",
        "mode": "grid",
        "metric": "test_accuracy",
        "goal": "max",
        "base": base,
        "storage_path": str(tmp_path / "sweeps"),
        "space": {"local.lr": {"grid": [0.05]}},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if k not in reproducible.environment()}
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = str(root)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "raysim.cli", "tune", str(path)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = list((tmp_path / "sweeps").rglob("environment.json"))
    trial_envs = [json.loads(p.read_text()) for p in found if "run" in p.parts]
    assert trial_envs, f"no trial environment.json among {found}"
    for e in trial_envs:
        assert e["reproducible"]["requested"] is True and e["reproducible"]["on"] is True, e["reproducible"]


def test_tune_console_at_verbose_0_holds_back_optunas_info_lines_for_the_fit_only():
    import optuna

    from tuning.sweep import tune_console

    before = optuna.logging.get_verbosity()
    try:
        optuna.logging.set_verbosity(optuna.logging.INFO)
        with tune_console(0):
            assert optuna.logging.get_verbosity() == optuna.logging.WARNING  # "A new study created ..."
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
        with tune_console(1):
            assert optuna.logging.get_verbosity() == optuna.logging.INFO  # a verbose sweep keeps them
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        with tune_console(0):
            assert optuna.logging.get_verbosity() == optuna.logging.ERROR  # never made louder
    finally:
        optuna.logging.set_verbosity(before)
