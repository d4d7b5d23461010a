"""Sweep outputs on the storage path, spelled out: where a trial writes (Tune's trial_fs_path, not
the node-local trial dir), a trial without its record listed as such (never Tune's table in its
place), Tune's FailureConfig from the spec, the Optuna study exported whole from the driver,
best.yaml's backend, --set over fixed:, and --resume-if-present's four cases. No Ray cluster here."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pandas as pd
import pyarrow.fs
import pytest
import yaml
from typer.testing import CliRunner

from raysim.cli import app
from raysim.config import ConfigError, load_config
from tests.conftest import tiny_config
from tuning.optuna_store import OptunaExport
from tuning.outputs import write_outputs
from tuning.present import check_same_sweep, sweep_state
from tuning.spec import resolved_spec_yaml, spec_from_dict
from tuning.sweep import SPEC_FILE, sweep_dir
from tuning.trainable import REPORTED, trial_storage_dir


def _raw(tmp_path: Path, **over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "st",
        "base": tiny_config(tmp_path, resources__backend="ray", rounds__num_rounds=2).to_dict(),
        "fixed": {"resources.backend": "serial"},
        "mode": "grid",
        "storage_path": str(tmp_path / "sweeps"),
        "space": {"local.lr": {"grid": [0.05, 0.1]}},
    }
    raw.update(over)
    return raw


def _loaded(tmp_path: Path, overrides: list[str] | None = None, **over: Any):
    return spec_from_dict(_raw(tmp_path, **over), "(test)", tmp_path, overrides, probe=False)


# -- where a trial writes ---------------------------------------------------------------------


def test_a_trial_writes_to_its_directory_on_the_storage_path_not_the_node_local_one(tmp_path):
    trial_fs = tmp_path / "sweeps" / "st" / "trial_a"
    storage = SimpleNamespace(
        storage_filesystem=pyarrow.fs.LocalFileSystem(),
        storage_path=str(tmp_path / "sweeps"),
        trial_fs_path=str(trial_fs),
    )
    assert trial_storage_dir(storage) == trial_fs and trial_fs.is_dir()

    remote = SimpleNamespace(
        **{
            **vars(storage),
            "storage_filesystem": pyarrow.fs.SubTreeFileSystem(str(tmp_path), pyarrow.fs.LocalFileSystem()),
        }
    )
    with pytest.raises(ConfigError, match="not a mounted folder"):
        trial_storage_dir(remote)


# -- a trial without its record ---------------------------------------------------------------


def _result(directory: Path, trial: str, lr: float, rounds: list[dict[str, Any]] | None, tune_rows: int):
    path = directory / f"trial_{trial}"
    path.mkdir(parents=True)
    if rounds is not None:
        (path / REPORTED).write_text("".join(json.dumps({**r, "trial_id": trial}) + "\n" for r in rounds))
    tune_df = pd.DataFrame({"round": list(range(1, tune_rows + 1)), "test_accuracy": [0.99] * tune_rows})
    return SimpleNamespace(
        path=str(path),
        error=None,
        config={"local.lr": lr, "seed": 0},
        metrics_dataframe=tune_df if tune_rows else None,
    )


def test_a_trial_that_reported_to_tune_but_left_no_record_is_listed_not_filled_from_tunes_table(tmp_path):
    loaded = _loaded(tmp_path)
    directory = sweep_dir(loaded)
    rounds = [{"round": 1, "test_accuracy": 0.4}, {"round": 2, "test_accuracy": 0.5}]
    results = [
        _result(directory, "a", 0.05, rounds, 2),
        _result(directory, "b", 0.1, None, 2),  # Tune has its rounds (0.99!), storage has nothing
    ]
    lines: list[str] = []
    out = write_outputs(loaded, results, directory, lines.append)
    assert out.no_record == ["b"]
    info = json.loads((directory / "sweep.json").read_text())
    assert info["no_record"] == ["b"] and info["failed"] == []
    assert info["best"]["trial_id"] == "a" and info["best"]["test_accuracy"] == 0.5  # never b's 0.99
    table = pd.read_parquet(directory / "trials.parquet")
    b = table[table["trial_id"] == "b"]
    assert len(b) == 1 and b["status"].tolist() == ["no_record"] and b["test_accuracy"].isna().all()
    assert any("no reported.jsonl" in line and "b" in line for line in lines)


def test_the_cli_exits_1_when_a_trial_left_no_record(tmp_path, monkeypatch):
    from raysim import api
    from tuning.outputs import SweepOutcome

    def fake(*a: Any, **k: Any) -> SweepOutcome:
        return SweepOutcome(directory=tmp_path, trials=2, errors=[], best=None, no_record=["b"])

    monkeypatch.setattr(api, "sweep", fake)
    spec = tmp_path / "spec.yaml"
    spec.write_text("{}")
    res = CliRunner().invoke(app, ["tune", str(spec)])
    assert res.exit_code == 1, res.output
    assert "no record" in res.output


# -- best.yaml's backend and --set over fixed: -------------------------------------------------


def test_best_yaml_carries_the_base_backend_not_the_one_fixed_for_the_trials(tmp_path):
    loaded = _loaded(tmp_path)
    assert loaded.base["resources"]["backend"] == "serial"  # what the trials run on
    assert loaded.spec.best_resources == {"backend": "ray", "address": None}
    directory = sweep_dir(loaded)
    results = [_result(directory, "a", 0.05, [{"round": 1, "test_accuracy": 0.4}], 1)]
    write_outputs(loaded, results, directory, lambda s: None)
    assert load_config(directory / "best.yaml").resources.backend == "ray"
    # and it survives the round trip through the saved sweep.yaml (what --resume reads)
    saved = yaml.safe_load(resolved_spec_yaml(loaded))
    again = spec_from_dict(saved, "(saved)", tmp_path, probe=False)
    assert again.spec.best_resources == {"backend": "ray", "address": None}
    assert again.base["resources"]["backend"] == "serial"


def test_set_overrides_fixed_and_the_base(tmp_path):
    loaded = _loaded(tmp_path, ["resources.backend=ray", "rounds.num_rounds=3"])
    assert loaded.base["resources"]["backend"] == "ray"  # --set beats fixed:
    assert loaded.base["rounds"]["num_rounds"] == 3
    assert loaded.spec.best_resources["backend"] == "ray"


# -- FailureConfig ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-2, 1.5, "x"])
def test_max_failures_must_be_an_int_of_at_least_minus_one(tmp_path, value):
    with pytest.raises(ConfigError, match="max_failures"):
        _loaded(tmp_path, max_failures=value)


def test_the_tuner_retries_failed_trials_max_failures_times(tmp_path):
    from tuning.sweep import _tuner

    assert _loaded(tmp_path).spec.max_failures == 2  # the default
    loaded = _loaded(tmp_path, max_failures=5)
    tuner = _tuner(loaded, sweep_dir(loaded), 4.0, 0.0, 0)
    assert tuner._local_tuner.get_run_config().failure_config.max_failures == 5


# -- the Optuna study ----------------------------------------------------------------------------


def test_the_in_memory_study_is_exported_whole_to_optuna_db(tmp_path):
    study = optuna.create_study(study_name="inner", direction="maximize")
    for x in (0.1, 0.2, 0.3):
        trial = study.ask({"local.lr": optuna.distributions.FloatDistribution(0.01, 1.0)})
        study.tell(trial, x)
    searcher = SimpleNamespace(_ot_study=study)
    dest = tmp_path / "optuna.db"
    dest.write_text("an older export")
    OptunaExport(searcher, str(dest), "mysweep").on_experiment_end(trials=[])
    loaded = optuna.load_study(study_name="mysweep", storage=f"sqlite:///{dest}")
    assert [t.value for t in loaded.trials] == [0.1, 0.2, 0.3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optuna.db"]  # no part file left
    OptunaExport(SimpleNamespace(_ot_study=None), str(tmp_path / "none.db"), "x").export()
    assert not (tmp_path / "none.db").exists()  # nothing to export before the searcher is set up


# -- --resume-if-present ------------------------------------------------------------------------


def test_sweep_state_tells_absent_unstarted_interrupted_and_finished_apart(tmp_path):
    loaded = _loaded(tmp_path)
    d = sweep_dir(loaded)
    assert sweep_state(d) == "absent"
    d.mkdir(parents=True)
    with pytest.raises(ConfigError, match="no sweep.yaml"):
        sweep_state(d)
    (d / SPEC_FILE).write_text(resolved_spec_yaml(loaded))
    (d / "tuner.pkl").write_bytes(b"")
    assert sweep_state(d) == "unstarted"  # Tune wrote no experiment state yet
    (d / "experiment_state-2026.json").write_text("{}")
    assert sweep_state(d) == "interrupted"
    (d / "sweep.json").write_text("{}")
    (d / "trials.parquet").write_bytes(b"")
    assert sweep_state(d) == "finished"


def test_another_spec_under_the_same_name_is_refused_naming_what_differs(tmp_path):
    loaded = _loaded(tmp_path)
    d = sweep_dir(loaded)
    d.mkdir(parents=True)
    (d / SPEC_FILE).write_text(resolved_spec_yaml(loaded))
    check_same_sweep(_loaded(tmp_path), d)  # the same sweep
    with pytest.raises(ConfigError, match="differ in space"):
        check_same_sweep(_loaded(tmp_path, space={"local.lr": {"grid": [0.2]}}), d)


def _finished(loaded, failed: list[str], best: dict[str, Any]) -> Path:
    """A finished sweep's directory as write_outputs leaves it (its sweep.json; an empty table)."""
    d = sweep_dir(loaded)
    d.mkdir(parents=True, exist_ok=True)
    (d / SPEC_FILE).write_text(resolved_spec_yaml(loaded))
    (d / "trials.parquet").write_bytes(b"")
    info = {
        "name": "st",
        "trials": 2,
        "failed": failed,
        "no_record": [],
        "objectives": [{"metric": "test_accuracy", "goal": "max"}],
        "best": best,
    }
    (d / "sweep.json").write_text(json.dumps(info))
    return d


def test_resume_if_present_on_a_finished_sweep_prints_its_result_and_exits_0(tmp_path):
    raw = _raw(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    loaded = spec_from_dict(raw, "(test)", tmp_path, probe=False)
    d = _finished(loaded, [], {"trial_id": "a", "test_accuracy": 0.8125, "config": {"local.lr": 0.1}})
    before = sorted(p.name for p in d.iterdir())
    res = CliRunner().invoke(app, ["tune", str(spec), "--resume-if-present"])
    assert res.exit_code == 0, res.output
    assert "already finished" in res.output and "0.8125" in res.output
    assert sorted(p.name for p in d.iterdir()) == before  # nothing ran, nothing written
    # without the flag the same command refuses the existing directory (exit 2)
    res = CliRunner().invoke(app, ["tune", str(spec)])
    assert res.exit_code == 2 and "--resume-if-present" in res.output


def test_resume_if_present_needs_a_spec(tmp_path):
    res = CliRunner().invoke(app, ["tune", "--resume", str(tmp_path), "--resume-if-present"])
    assert res.exit_code == 2 and "goes with SPEC" in res.output


# -- on a real 2-node cluster, and a sweep killed midway ------------------------------------------

REPO = Path(__file__).resolve().parents[2]

WORKER_NODE = """
import json, sys
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from tuning.spec import spec_from_dict
from tuning.sweep import run_sweep

out, worker_tmp = Path(sys.argv[1]), sys.argv[2]
base = json.loads(Path(sys.argv[3]).read_text())
# the head has no CPUs, so every trial runs on the worker, whose Ray folders (its trial staging
# dirs, /tmp/ray/session_*/.../driver_artifacts) are its own, as on another machine
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
worker = cluster.add_node(num_cpus=2, temp_dir=worker_tmp)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
spec = {"name": "wn", "base": base, "mode": "grid", "storage_path": str(out / "sweeps"),
        "space": {"local.lr": {"grid": [0.05, 0.1]}}}
outcome = run_sweep(spec_from_dict(spec, "(worker node)", out), echo=print, verbose=0)
json.dump({"worker": worker.node_id, "errors": outcome.errors, "no_record": outcome.no_record,
           "dir": str(outcome.directory)}, open(out / "cluster.json", "w"))
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(420)
def test_trials_on_a_worker_node_leave_their_run_and_record_under_the_storage_path(tmp_path):
    import subprocess
    import sys
    import tempfile

    base = tiny_config(
        tmp_path,
        resources__backend="ray",
        resources__num_cpus=1.0,
        resources__num_actors=1,
        rounds__num_rounds=2,
    ).to_dict()
    (tmp_path / "base.json").write_text(json.dumps(base))
    worker_tmp = tempfile.mkdtemp(prefix="rsw-", dir="/tmp")  # short: Ray's socket paths live there
    proc = subprocess.run(
        [sys.executable, "-c", WORKER_NODE, str(tmp_path), worker_tmp, str(tmp_path / "base.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = json.loads((tmp_path / "cluster.json").read_text())
    assert info["errors"] == [] and info["no_record"] == []
    d = Path(info["dir"])
    table = pd.read_parquet(d / "trials.parquet")
    assert table["trial_id"].nunique() == 2 and (table["status"] == "done").all()
    for trial_id, rows in table.groupby("trial_id"):
        trial = d / f"trial_{trial_id}"
        assert (trial / REPORTED).is_file()
        assert [json.loads(x)["round"] for x in (trial / REPORTED).read_text().splitlines()] == [1, 2]
        assert (trial / "run" / "rounds.parquet").is_file() and (trial / "run" / "config.yaml").is_file()
        system = pd.read_parquet(trial / "run" / "system.parquet")
        actors = system[system["actor"] >= 0]
        assert set(actors["node_id"]) == {info["worker"]}  # the trial's client actor ran on the worker
        assert rows["round"].tolist() == [1, 2]
    # and nothing of the trials' own stayed behind in the worker's node-local trial folders
    left = [p for p in Path(worker_tmp).rglob(REPORTED)] + [
        p for p in Path(worker_tmp).rglob("run") if p.is_dir() and p.parent.name.startswith("trial_")
    ]
    assert left == []


def _kill_family(pid: int) -> None:
    import signal

    import psutil

    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in family:  # the driver and the local Ray it started, all started by this test
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


# Tune saves its experiment state every 10 s or more ("auto"); every 2 s here, so that the test
# meets a saved state with a trial midway before the sweep ends
SAVE_OFTEN = {"TUNE_GLOBAL_CHECKPOINT_S": "2"}


# a tiny round takes well under a second and a trial's start-up many: enough rounds that a trial
# is midway for several of Tune's saves
KILL_ROUNDS = 20


def stoppable_sweep(tmp_path: Path, name: str) -> tuple[dict[str, Any], Path, Path]:
    """A spec written to ``tmp_path/spec.yaml`` whose sweep a test stops midway: 3 Optuna trials
    one at a time, KILL_ROUNDS tiny rounds each, a checkpoint every round; the spec, its path and
    its sweep directory."""
    spec = {
        "name": name,
        "base": tiny_config(tmp_path, rounds__num_rounds=KILL_ROUNDS).to_dict(),
        "mode": "optuna",
        "num_samples": 3,
        "optuna": {"sampler": "random", "seed": 0},
        "storage_path": str(tmp_path / "sweeps"),
        "checkpoint_every": 1,
        "max_concurrent_trials": 1,
        "space": {"local.lr": {"loguniform": [0.02, 0.2]}},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return spec, path, tmp_path / "sweeps" / name


def resume_cli(sweep: Path, env: dict[str, str]) -> None:
    """``raysim tune --resume SWEEP`` as a user runs it after a stop; it must exit 0."""
    import subprocess
    import sys

    raysim = str(Path(sys.executable).parent / "raysim")
    repo = Path(__file__).resolve().parents[2]
    cmd = [raysim, "tune", "--resume", str(sweep)]
    res = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def _mid_trial_state_saved(sweep: Path, rounds: int = KILL_ROUNDS) -> bool:
    """A trial is midway (some but not all rounds reported) and Tune's experiment state was saved
    after one of its checkpoints: a resume can continue it from a checkpoint. (Not necessarily the
    newest: a trial checkpointing every round always has one newer than Tune's last save.)"""
    states = list(sweep.glob("experiment_state-*.json"))
    if not states or not (sweep / "tuner.pkl").is_file():
        return False
    saved = max(p.stat().st_mtime for p in states)
    for trial in sweep.glob("trial_*"):
        record = trial / REPORTED
        n = len(record.read_text().splitlines()) if record.is_file() else 0
        ckpts = list(trial.glob("checkpoint_*"))
        # Tune keeps the newest two (and saves its state at least every two checkpoints): a save
        # after the older of them was written knows a checkpoint of this trial
        if 1 <= n < rounds and len(ckpts) >= 2 and saved > min(c.stat().st_mtime for c in ckpts):
            return True
    return False


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_sweep_run_again_with_resume_if_present_finishes_and_accounts_for_every_trial(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    raysim = str(Path(sys.executable).parent / "raysim")
    spec, path, sweep = stoppable_sweep(tmp_path, "again")
    env = {**os.environ, "RAY_ADDRESS": "", **SAVE_OFTEN}  # a local Ray of its own
    cmd = [raysim, "tune", str(path), "--resume-if-present"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    try:
        while not _mid_trial_state_saved(sweep):
            assert proc.poll() is None, "the sweep ended before it could be killed"
            if time.time() > deadline:
                pytest.fail("no saved experiment state with a trial midway within 300 s")
            time.sleep(0.3)
    finally:
        _kill_family(proc.pid)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (sweep / "trials.parquet").exists()  # it really stopped midway

    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "continuing the interrupted sweep" in res.stdout
    table = pd.read_parquet(sweep / "trials.parquet")
    assert table["trial_id"].nunique() == 3  # num_samples, none lost, none added
    assert (table.groupby("trial_id")["round"].max() == KILL_ROUNDS).all()  # every trial ran to the end
    assert (table["status"] == "done").all()
    for _, rounds in table.groupby("trial_id")["round"]:
        assert rounds.tolist() == list(range(1, KILL_ROUNDS + 1))
    # the trial that was midway continued from its own FL checkpoint, not from round 1
    assert "restored_from_round" in table, "no trial continued from a checkpoint"
    resumed = table[table["restored_from_round"].notna()]
    assert len(resumed) >= 1 and (resumed["exploited"] == 0).all()
    assert (resumed["round"] == resumed["restored_from_round"] + 1).all()
    assert (resumed["restored_from_round"] >= 1).all()
    info = json.loads((sweep / "sweep.json").read_text())
    assert info["trials"] == 3 and info["no_record"] == [] and info["failed"] == []
    # the study came back with the searcher and was exported whole: every trial, each complete
    study = optuna.load_study(study_name="again", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3

    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=200)
    assert res.returncode == 0 and "already finished" in res.stdout, res.stdout + res.stderr

    # and the numbers are the uninterrupted sweep's, bit for bit: the same spec (the same seeded
    # sampler, so the same lrs) run once without a kill, each trial matched by its lr, every round
    path.write_text(yaml.safe_dump({**spec, "name": "straight"}))
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    straight = pd.read_parquet(tmp_path / "sweeps" / "straight" / "trials.parquet")
    cols = ["config/local.lr", "round", "test_accuracy", "test_loss"]
    a, b = (t[cols].sort_values(cols[:2]).reset_index(drop=True) for t in (table, straight))
    assert sorted(set(a["config/local.lr"])) == sorted(set(b["config/local.lr"]))
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_the_in_memory_study_and_its_exporter_pass_the_resume_state_check(tmp_path):
    """A resume reads the searcher's state (its in-memory study, one trial complete and one
    running) and tuner.pkl (which holds OptunaExport) through tuning.tune_state before Tune loads
    them: both must pass."""
    import ray.cloudpickle as cloudpickle
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from tuning.tune_state import check_pickle

    searcher = OptunaSearch(
        space={"local.lr": tune.loguniform(0.01, 0.1)},
        metric="test_accuracy",
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=0),
        study_name="s",
    )
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"test_accuracy": 0.5, "training_iteration": 1})
    searcher.suggest("t2")  # still running when the sweep stops
    searcher.save(str(tmp_path / "searcher.pkl"))
    check_pickle((tmp_path / "searcher.pkl").read_bytes(), "searcher state")
    check_pickle(cloudpickle.dumps(OptunaExport(searcher, str(tmp_path / "optuna.db"), "s")), "tuner.pkl")


def test_retry_failed_continues_a_finished_sweep_with_failed_trials_and_only_then(tmp_path, monkeypatch):
    """The reproductions' fair tuning reruns a sweep whose trials failed (an actor lost, say) by
    continuing it, as an interrupted one; without retry_failed, or with no failed trial, a finished
    sweep is reported and nothing runs."""
    import tuning.sweep
    from tuning.present import run_or_resume

    loaded = _loaded(tmp_path)
    d = _finished(
        loaded, ["x_00001"], {"trial_id": "x_00000", "test_accuracy": 0.5, "config": {"local.lr": 0.05}}
    )
    resumed: list[Path] = []
    monkeypatch.setattr(
        tuning.sweep, "resume_sweep", lambda directory, **kw: resumed.append(directory) or "resumed"
    )
    said: list[str] = []
    report = run_or_resume(loaded, echo=said.append)
    assert report.errors == ["trial_x_00001: failed"] and not resumed  # reported as it is
    assert run_or_resume(loaded, echo=said.append, retry_failed=True) == "resumed" and resumed == [d]
    assert "retrying the failed trials x_00001" in said[-1]
    _finished(loaded, [], {"trial_id": "x_00000", "test_accuracy": 0.5, "config": {"local.lr": 0.05}})
    assert run_or_resume(loaded, echo=said.append, retry_failed=True).errors == [] and resumed == [d]
