"""The command line as a user meets it: exit codes, messages, files left behind."""

import json

import pandas as pd
import yaml
from typer.testing import CliRunner

from raysim.cli import app

runner = CliRunner()


def write_cfg(tmp_path, **over):
    raw = {
        "name": "cli",
        "data": {"dataset": "digits", "num_clients": 4},
        "local": {"batch_size": 16},
        "rounds": {"num_rounds": 2, "clients_per_round": 2},
        "resources": {"backend": "serial"},
        "output": {"dir": str(tmp_path / "runs")},
    }
    raw.update(over)
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_bad_config_exits_2_with_one_message_and_no_run_dir(tmp_path):
    cfg = write_cfg(tmp_path, data={"dataset": "digits", "num_clients": 4, "alpha": -1})
    r = runner.invoke(app, ["run", str(cfg)])
    assert r.exit_code == 2
    assert "data.alpha" in r.output and "greater than 0" in r.output
    assert not (tmp_path / "runs").exists()


def test_missing_dataset_exits_2_and_says_how_to_get_it(tmp_path):
    cfg = write_cfg(
        tmp_path,
        data={"dataset": "cifar10", "data_dir": str(tmp_path / "none"), "num_clients": 4},
        model={"name": "cnn-cifar"},
    )
    for cmd in (["run", str(cfg)], ["validate", str(cfg)]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 2, r.output
        assert "cifar-10-batches-py" in r.output
    assert not (tmp_path / "runs").exists()


def test_run_then_report(tmp_path):
    cfg = write_cfg(tmp_path)
    r = runner.invoke(app, ["run", str(cfg), "--set", "rounds.num_rounds=3", "--no-progress"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{") :])
    run_dir = tmp_path / "runs" / "cli"
    assert out["run_dir"] == str(run_dir) and out["rounds"] == 3
    assert len(pd.read_parquet(run_dir / "rounds.parquet")) == 3
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["rounds"]["num_rounds"] == 3
    # a second run never overwrites the first
    r2 = runner.invoke(app, ["run", str(cfg), "--no-progress"])
    assert r2.exit_code == 0 and (tmp_path / "runs" / "cli-2" / "summary.json").is_file()

    rep = runner.invoke(
        app, ["report", str(run_dir), str(tmp_path / "runs" / "cli-2"), "--out", str(tmp_path / "rep")]
    )
    assert rep.exit_code == 0, rep.output
    table = (tmp_path / "rep" / "summary.md").read_text()
    assert "| cli | fedavg | 3 |" in table and "| cli-2 | fedavg | 2 |" in table
    assert (tmp_path / "rep" / "test_accuracy.png").stat().st_size > 1000


def test_report_on_a_non_run_dir_exits_2(tmp_path):
    r = runner.invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2 and "no rounds.parquet" in r.output


def test_resume_needs_a_checkpoint(tmp_path):
    cfg = write_cfg(tmp_path)
    assert runner.invoke(app, ["run", str(cfg), "--no-progress"]).exit_code == 0
    r = runner.invoke(app, ["run", "--resume", str(tmp_path / "runs" / "cli")])
    assert r.exit_code == 2 and "no checkpoint" in r.output


def test_validate_prints_the_resolved_config(tmp_path):
    r = runner.invoke(app, ["validate", str(write_cfg(tmp_path)), "--set", "seed=9"])
    assert r.exit_code == 0
    assert yaml.safe_load(r.output)["seed"] == 9
