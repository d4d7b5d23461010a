"""The command line as a user meets it: exit codes, messages, files left behind."""

import json

import pandas as pd
import pytest
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


def test_validate_prints_every_default_of_the_algorithm(tmp_path):
    """Issue 24: `validate` promised the config "fully resolved" but left out init_noise, select_on."""
    from raysim.algorithms import ALGORITHMS

    cfg = write_cfg(tmp_path, algorithm={"name": "ifca", "num_clusters": 3})
    r = runner.invoke(app, ["validate", str(cfg)])
    assert r.exit_code == 0, r.output
    algo = yaml.safe_load(r.stdout)["algorithm"]
    assert algo == {"name": "ifca", **ALGORITHMS["ifca"].params_model(num_clusters=3).model_dump(mode="json")}
    assert {"init_noise", "select_on", "central_lr"} <= set(algo)


def test_validate_switches_algorithm_from_a_config_written_for_another(tmp_path):
    """The issue's command: an AS-CFL config with --set algorithm.name=ifca validates as IFCA with its
    defaults, saying on stderr which keys it dropped; stdout stays the YAML."""
    from raysim.algorithms import ALGORITHMS

    ascfl = {"name": "ascfl", "theta": 0.9, "em_iters": 5, "dp": False}  # write_cfg sorts the keys
    cfg = write_cfg(
        tmp_path, data={"dataset": "digits", "num_clients": 4, "public_fraction": 0.1}, algorithm=ascfl
    )
    r = runner.invoke(
        app, ["validate", str(cfg), "--set", "algorithm.name=ifca", "--set", "algorithm.select_on=val"]
    )
    assert r.exit_code == 0, r.output
    algo = yaml.safe_load(r.stdout)["algorithm"]
    assert algo == {
        "name": "ifca",
        **ALGORITHMS["ifca"].params_model(select_on="val").model_dump(mode="json"),
    }
    assert "dropped ascfl's keys: dp, em_iters, theta" in r.stderr and "unknown key" not in r.output
    # without the switch the same file is still AS-CFL's, every default printed
    r = runner.invoke(app, ["validate", str(cfg)])
    assert r.exit_code == 0 and r.stderr == ""
    assert set(yaml.safe_load(r.stdout)["algorithm"]) == {
        "name",
        *ALGORITHMS["ascfl"].params_model.model_fields,
    }


def assert_one_error(r, *needles):
    """Exit status 2, exactly one `error:` message naming the problem, no traceback."""
    assert r.exit_code == 2, r.output
    assert r.output.count("error:") == 1 and "Traceback" not in r.output, r.output
    for needle in needles:
        assert needle in r.output, r.output


def test_non_finite_numbers_exit_2(tmp_path):
    cfg = write_cfg(tmp_path)
    assert_one_error(
        runner.invoke(app, ["validate", str(cfg), "--set", "local.lr=.inf"]),
        "local.lr: must be a finite number",
    )
    assert_one_error(runner.invoke(app, ["run", str(cfg), "--set", "local.lr=.nan"]), "local.lr")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rounds.num_rounds", "--set 'rounds.num_rounds': expected KEY=VALUE"),
        (
            "rounds.bogus=1",
            "rounds.bogus: unknown key (check the spelling); valid keys of rounds: checkpoint_every,",
        ),
        ("seed.x=1", "'seed' is a value, not a section"),
        ("local.lr=fast", "local.lr: Input should be a valid number"),
        ("rounds.num_rounds=0", "rounds.num_rounds: Input should be greater than or equal to 1"),
    ],
)
def test_a_bad_set_exits_2_with_one_message_and_no_run_dir(tmp_path, override, message):
    r = runner.invoke(app, ["run", str(write_cfg(tmp_path, seed=1)), "--set", override, "--no-progress"])
    assert_one_error(r, message)
    assert not (tmp_path / "runs").exists()


def test_a_data_dir_that_does_not_exist_exits_2(tmp_path):
    cfg = write_cfg(
        tmp_path, data={"dataset": "digits", "num_clients": 4, "data_dir": str(tmp_path / "nope")}
    )
    for cmd in ("validate", "run"):
        assert_one_error(runner.invoke(app, [cmd, str(cfg)]), "data.data_dir=", "no such directory")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "nope").exists()


def test_an_output_dir_that_cannot_be_made_exits_2_and_writes_nothing(tmp_path):
    cfg = write_cfg(tmp_path)
    a_file = tmp_path / "results"
    a_file.write_text("keep me")
    before = sorted(tmp_path.iterdir())
    for target, why in ((a_file, "is a file, not a directory"), (a_file / "runs", "cannot be created")):
        r = runner.invoke(app, ["run", str(cfg), "--set", f"output.dir={target}", "--no-progress"])
        assert_one_error(r, f"output.dir={str(target)!r}", why, "set output.dir to a directory")
    assert sorted(tmp_path.iterdir()) == before and a_file.read_text() == "keep me"


def test_run_with_report_writes_the_plots_into_the_run_dir(tmp_path):
    r = runner.invoke(app, ["run", str(write_cfg(tmp_path)), "--report", "--no-progress"])
    assert r.exit_code == 0, r.output
    plots = tmp_path / "runs" / "cli" / "plots"
    assert f"plots and table: {plots}" in r.output
    assert "| cli | fedavg | 2 |" in (plots / "summary.md").read_text()
    assert (plots / "test_accuracy.png").stat().st_size > 1000
    # without --report, no plots
    r = runner.invoke(app, ["run", str(write_cfg(tmp_path)), "--no-progress"])
    assert r.exit_code == 0 and not (tmp_path / "runs" / "cli-2" / "plots").exists()


@pytest.mark.ray
def test_an_impossible_gpu_request_exits_2_before_the_run_dir(ray_cluster, tmp_path):
    """The session's Ray has 2 (logical) GPUs; 4 actors x 1 GPU cannot be placed."""
    cfg = write_cfg(
        tmp_path, resources={"backend": "ray", "clients_per_actor": 1, "num_gpus": 1, "num_cpus": 0.25}
    )
    r = runner.invoke(app, ["run", str(cfg), "--no-progress"])
    assert_one_error(
        r, "resources.num_gpus=1.0 x 4 client actors needs 4 GPUs, the Ray cluster has 2", "lower num_gpus"
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.ray
def test_a_run_whose_actors_cannot_fit_in_memory_exits_2_before_any_actor_starts(ray_cluster, tmp_path):
    """4 client actors + the server at a (pretended) 100 GB each exceed the memory the session's
    Ray offers: refused with the arithmetic and the fixes, before the run dir exists."""
    import ray

    offered_gb = ray.cluster_resources()["memory"] / 2**30
    cfg = write_cfg(
        tmp_path,
        resources={"backend": "ray", "clients_per_actor": 1, "num_cpus": 0.25, "actor_memory_mb": 102400},
    )
    r = runner.invoke(app, ["run", str(cfg), "--no-progress"])
    assert_one_error(
        r,
        "4 client actors + the server x resources.actor_memory_mb=102400 MB = 500.0 GB",
        f"Ray offers {offered_gb:.1f} GB",
        "at most 0 client actors fit",
        "Raise resources.clients_per_actor",
        "lower resources.actor_memory_mb",
    )
    assert not (tmp_path / "runs").exists()


def test_the_memory_check_counts_the_server_and_says_how_many_actors_fit():
    from actors.placement import check_resources
    from raysim.config import ConfigError
    from raysim.runtime.backend import Share

    share = Share(cpus=64.0, memory_mb=2000.0)
    check_resources(share, 3, 1.0, 0.0, 0.0, 0.0, actor_memory_mb=450.0)  # 4 x 450 = 1800 MB: fits
    with pytest.raises(ConfigError, match=r"4 client actors \+ the server .* at most 3 client actors fit"):
        check_resources(share, 4, 1.0, 0.0, 0.0, 0.0, actor_memory_mb=450.0)  # 2250 MB
    check_resources(share, 400, 0.1, 0.0, 0.0, 0.0, actor_memory_mb=0.0)  # 0: not checked
    check_resources(Share(cpus=64.0), 400, 0.1, 0.0, 0.0, 0.0, actor_memory_mb=450.0)  # memory unknown


def test_python_dash_m_raysim_is_the_raysim_command(tmp_path):
    """``python -m raysim validate`` (the issue texts' spelling) runs the CLI: a bad config exits 2."""
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: {num_rounds: 0}\n")
    ok = subprocess.run([sys.executable, "-m", "raysim", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "validate" in ok.stdout
    res = subprocess.run(
        [sys.executable, "-m", "raysim", "validate", str(bad)], capture_output=True, text=True
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert "num_rounds" in res.stdout + res.stderr
