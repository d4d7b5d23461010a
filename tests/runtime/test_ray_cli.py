"""`raysim run` on a real local Ray, as a user drives it: resume from a checkpoint, --address."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from raysim.cli import app
from tests.runtime.exact import assert_same_learning

pytestmark = pytest.mark.ray
runner = CliRunner()


def write_cfg(tmp_path: Path, name: str, **sections: Any) -> Path:
    raw: dict[str, Any] = {
        "name": name,
        "seed": 3,
        "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 0.5, "num_clients": 6},
        "local": {"epochs": 1, "batch_size": 16, "lr": 0.05},
        "rounds": {"num_rounds": 4, "clients_per_round": 3, "checkpoint_every": 2},
        "resources": {"backend": "ray", "num_actors": 2, "num_cpus": 0.25},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cli_run(*args: str) -> dict[str, Any]:
    r = runner.invoke(app, ["run", *args, "--no-progress"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output[r.output.index("{") :])


def clients_table(run_dir: Path) -> pd.DataFrame:
    c = pd.read_parquet(run_dir / "clients.parquet")
    return c.sort_values(["round", "participated", "client_id"], ignore_index=True)


@pytest.mark.slow  # two Ray runs of 3 actors each: 40-50 s on 2 shared cores
@pytest.mark.parametrize(
    ("name", "sections"),
    [
        ("fedavg", {}),  # no client state: the clients roam over the two actors
        (
            "dsac",  # client state (feature mapping): pinned; groups formed at round 2 are checkpointed
            {
                "algorithm": {"name": "dsac", "feature_mapping": True, "cluster_every": 2},
                "data": {"public_fraction": 0.1},
            },
        ),
    ],
)
def test_resume_from_an_earlier_checkpoint_gives_the_uninterrupted_numbers(
    ray_cluster, tmp_path, name, sections
):
    out = cli_run(str(write_cfg(tmp_path, name, **sections)))
    full_dir = Path(out["run_dir"])
    assert out["rounds"] == 4
    assert sorted(p.name for p in (full_dir / "checkpoints").iterdir()) == ["round_00002", "round_00004"]

    # The same run as if it had died during round 3: only the round-2 checkpoint is there.
    crashed = tmp_path / "crashed"
    shutil.copytree(full_dir, crashed)
    shutil.rmtree(crashed / "checkpoints" / "round_00004")
    (crashed / "summary.json").unlink()
    resumed = cli_run("--resume", str(crashed))
    assert resumed["rounds"] == 4 and resumed["run_dir"] == str(crashed)

    full, again = (pd.read_parquet(d / "rounds.parquet") for d in (full_dir, crashed))
    assert_same_learning(full, again, f"{name}: uninterrupted vs resumed at round 2")
    pd.testing.assert_frame_equal(clients_table(full_dir), clients_table(crashed), check_exact=True)
    assert resumed["final_test_accuracy"] == out["final_test_accuracy"]
    # rounds 3 and 4 really ran again, in fresh actors
    pids = {
        d: set(pd.read_parquet(d / "system.parquet").query("round == 4 and actor >= 0")["pid"])
        for d in (full_dir, crashed)
    }
    assert pids[full_dir].isdisjoint(pids[crashed])


def test_address_joins_a_running_cluster(ray_cluster, tmp_path):
    """A separate `raysim run --address HOST:PORT` process runs its actors on this session's Ray."""
    ctx = ray_cluster.get_runtime_context()
    cfg = write_cfg(
        tmp_path,
        "joined",
        rounds={"num_rounds": 1, "checkpoint_every": 0},
        resources={"num_actors": 1},
    )
    proc = subprocess.run(
        [sys.executable, "-m", "raysim.cli", "run", str(cfg), "--address", ctx.gcs_address, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    system = pd.read_parquet(tmp_path / "runs" / "joined" / "system.parquet")
    actors = system[system["actor"] >= 0]
    assert len(actors) == 1 and set(actors["node_id"]) == {ctx.get_node_id()}


@pytest.mark.slow  # two runs of 6 rounds and a resume: about a minute on 2 shared cores
@pytest.mark.timeout(600)
def test_a_driver_killed_with_sigkill_resumes_to_the_uninterrupted_numbers(ray_cluster, tmp_path):
    """`raysim run` (SCAFFOLD, client state on the actors) is SIGKILLed as soon as its round-4
    checkpoint exists; `raysim run --resume` in a new process finishes it with the same numbers as
    a run that was never interrupted."""
    import os
    import signal
    import time

    gcs = ray_cluster.get_runtime_context().gcs_address
    repo = Path(__file__).resolve().parents[2]
    sections = {
        "algorithm": {"name": "scaffold"},
        "rounds": {"num_rounds": 8, "clients_per_round": 4, "checkpoint_every": 2},
        "resources": {"num_actors": 2, "clients_per_actor": "auto"},
    }
    full = cli_run(str(write_cfg(tmp_path, "whole", **sections)))
    cfg = write_cfg(tmp_path, "killed", **sections)

    def raysim(*args: str) -> list[str]:
        return [sys.executable, "-m", "raysim.cli", "run", *args, "--address", gcs, "--no-progress"]

    run_dir = tmp_path / "runs" / "killed"
    proc = subprocess.Popen(raysim(str(cfg)), cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t_end = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "round_00004" / "state.json").is_file():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
        assert time.monotonic() < t_end, "no round-4 checkpoint within 300 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()  # it really died mid-run

    done = subprocess.run(
        raysim("--resume", str(run_dir)), cwd=repo, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads(done.stdout[done.stdout.index("{") :])
    assert resumed["rounds"] == 8 and resumed["run_dir"] == str(run_dir)
    a, b = (pd.read_parquet(Path(d) / "rounds.parquet") for d in (full["run_dir"], run_dir))
    assert_same_learning(a, b, "uninterrupted vs SIGKILLed and resumed")
    pd.testing.assert_frame_equal(
        clients_table(Path(full["run_dir"])), clients_table(run_dir), check_exact=True
    )
