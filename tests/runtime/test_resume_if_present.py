"""`raysim run CONFIG --resume-if-present`: the run directory is output.dir/output.name exactly, and
a run started again (a KubeRay retry resubmits the same entrypoint) continues from its newest
checkpoint, prints the summary of a finished run, or starts there; another experiment under the
same name is refused (exit 2, nothing written). Serial backend here; the Ray path, killed mid-run,
is tests/runtime/test_kuberay_contract.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from raysim import api
from raysim.cli import app
from raysim.config import ConfigError, dump_config
from raysim.runtime import rundir
from tests.conftest import tiny_config
from tests.helpers import experiment
from tests.runtime.exact import assert_same_learning

runner = CliRunner()


def _cfg(tmp_path: Path, **over: Any):
    over = {"rounds__num_rounds": 4, "rounds__checkpoint_every": 2, **over}
    return tiny_config(tmp_path, **over)


def _yaml(tmp_path: Path, cfg) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(dump_config(cfg))
    return path


def _run(*args: str) -> Any:
    return runner.invoke(app, ["run", *args, "--no-progress"])


def _summary(r: Any) -> dict[str, Any]:
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout[r.stdout.index("{") :])


def _tree(d: Path) -> dict[str, float]:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in sorted(d.rglob("*"))}


def test_starts_in_the_stable_directory_then_prints_the_finished_summary(tmp_path):
    cfg = _cfg(tmp_path)
    path = _yaml(tmp_path, cfg)
    first = _summary(_run(str(path), "--resume-if-present", "--set", "output.name=job-a"))
    run_dir = Path(cfg.output.dir) / "job-a"
    assert first["run_dir"] == str(run_dir) and first["rounds"] == 4
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["finished"] is True and saved["server_node_id"] is None  # serial: no Ray node
    before = _tree(run_dir)

    again = _run(str(path), "--resume-if-present", "--set", "output.name=job-a")
    assert _summary(again) == first  # the same summary, read back
    assert "finished already" in again.stderr
    assert _tree(run_dir) == before  # nothing ran or was written again
    assert sorted(p.name for p in Path(cfg.output.dir).iterdir()) == ["job-a"]  # no job-a-2

    # a difference that does not change the numbers is accepted
    harmless = _run(
        str(path), "--resume-if-present", "--set", "output.name=job-a", "--set", "output.progress=false"
    )
    assert _summary(harmless) == first


def test_another_experiment_under_the_same_name_exits_2_and_writes_nothing(tmp_path):
    cfg = _cfg(tmp_path, rounds__num_rounds=2)
    path = _yaml(tmp_path, cfg)
    _summary(_run(str(path), "--resume-if-present"))
    run_dir = Path(cfg.output.dir) / cfg.name
    before = _tree(run_dir)
    r = _run(str(path), "--resume-if-present", "--set", "rounds.num_rounds=3", "--set", "local.lr=0.2")
    assert r.exit_code == 2, r.output
    assert r.output.count("error:") == 1 and "Traceback" not in r.output
    for needle in ("another experiment", "rounds.num_rounds: 2 there, 3 here", "local.lr", "output.name"):
        assert needle in r.output, r.output
    assert _tree(run_dir) == before
    assert sorted(p.name for p in Path(cfg.output.dir).iterdir()) == [cfg.name]


def test_a_directory_that_is_not_a_run_is_refused(tmp_path):
    cfg = _cfg(tmp_path)
    run_dir = Path(cfg.output.dir) / cfg.name
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine")
    r = _run(str(_yaml(tmp_path, cfg)), "--resume-if-present")
    assert r.exit_code == 2 and "not a raysim run directory" in r.output, r.output
    assert [p.name for p in run_dir.iterdir()] == ["notes.txt"]


def test_resume_and_resume_if_present_exclude_each_other(tmp_path):
    r = _run(str(_yaml(tmp_path, _cfg(tmp_path))), "--resume-if-present", "--resume", str(tmp_path))
    assert r.exit_code == 2 and "exclude each other" in r.output, r.output


def test_a_stopped_run_continues_from_its_checkpoint_with_the_uninterrupted_numbers(tmp_path):
    """A run that stopped after round 3 (checkpoint at 2; the stop writes summary.json with
    finished: false) continues from round 3 in the same directory and ends as an uninterrupted one."""
    full_cfg = _cfg(tmp_path, output__name="whole", algorithm__name="scaffold")
    full = _summary(_run(str(_yaml(tmp_path, full_cfg))))

    cfg = _cfg(tmp_path, output__name="stopped", algorithm__name="scaffold")
    exp = experiment(cfg, run_dir=rundir.stable_run_dir(Path(cfg.output.dir), "stopped"))
    try:
        exp.run(until=3)
    finally:
        exp.close()
    run_dir = Path(cfg.output.dir) / "stopped"
    stopped = json.loads((run_dir / "summary.json").read_text())
    assert stopped["finished"] is False and stopped["rounds"] == 3
    assert rundir.run_state(run_dir) == "resume"

    got = api.resume_if_present(_yaml(tmp_path, cfg), progress=False)
    assert not isinstance(got, api.Results) and got.next_round == 3  # restored from round 2
    res = api.run_experiment(got)
    assert res.run_dir == run_dir and res.summary["finished"] is True and res.summary["rounds"] == 4
    assert_same_learning(
        pd.read_parquet(Path(full["run_dir"]) / "rounds.parquet"), res.rounds, "uninterrupted vs continued"
    )
    assert res.summary["final_test_accuracy"] == full["final_test_accuracy"]
    # and once more: finished, nothing runs
    assert isinstance(api.run_or_resume(_yaml(tmp_path, cfg)), api.Results)


def test_a_run_killed_before_its_first_checkpoint_starts_again_in_its_directory(tmp_path):
    cfg = _cfg(tmp_path, rounds__checkpoint_every=0, rounds__num_rounds=3)
    whole = api.run(cfg, {"output.name": "whole"}, progress=False)
    crashed = Path(cfg.output.dir) / cfg.name
    shutil.copytree(whole.run_dir, crashed)  # as if it died in round 3, after writing rounds 1-2
    (crashed / "summary.json").unlink()
    rows = pd.read_parquet(crashed / "rounds.parquet")
    rows[rows["round"] <= 2].to_parquet(crashed / "rounds.parquet")
    assert rundir.run_state(crashed) == "restart"

    res = api.run_or_resume(cfg, progress=False)
    assert res.run_dir == crashed and res.summary["finished"] is True
    assert_same_learning(whole.rounds, res.rounds, "uninterrupted vs started again")


def test_empty_or_absent_directory_is_new_and_the_name_stays_one_component(tmp_path):
    assert rundir.run_state(tmp_path / "absent") == "new"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".config.yaml.abc.tmp").write_text("")  # an interrupted atomic write
    assert rundir.run_state(tmp_path / "empty") == "new"
    with pytest.raises(ConfigError, match="output.name"):
        rundir.stable_run_dir(tmp_path, "../elsewhere")


def test_config_differences_names_each_key_and_skips_harmless_ones():
    saved = {"seed": 1, "output": {"dir": "/a", "progress": True}, "resources": {"address": None}}
    given = {"seed": 2, "output": {"dir": "/b", "progress": False}, "resources": {"address": "auto"}, "x": 1}
    assert rundir.config_differences(saved, given) == ["seed: 1 there, 2 here", "x: (absent) there, 1 here"]
