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


def test_resume_if_present_on_a_finished_sweep_prints_its_result_and_exits_0(tmp_path):
    raw = _raw(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    loaded = spec_from_dict(raw, "(test)", tmp_path, probe=False)
    d = sweep_dir(loaded)
    d.mkdir(parents=True)
    (d / SPEC_FILE).write_text(resolved_spec_yaml(loaded))
    (d / "trials.parquet").write_bytes(b"")
    info = {
        "name": "st",
        "trials": 2,
        "failed": [],
        "no_record": [],
        "objectives": [{"metric": "test_accuracy", "goal": "max"}],
        "best": {"trial_id": "a", "test_accuracy": 0.8125, "config": {"local.lr": 0.1}},
    }
    (d / "sweep.json").write_text(json.dumps(info))
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
