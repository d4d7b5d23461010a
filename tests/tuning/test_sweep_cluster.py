"""Sweeps on a real multi-node Ray cluster, and a sweep whose driver is SIGKILLed midway.

Both run in a subprocess: the multi-node cluster (``ray.cluster_utils.Cluster``) and the killed
driver's own local Ray must not meet the test session's Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from tests.conftest import tiny_config
from tests.tuning.test_sweep_storage import KILL_ROUNDS, SAVE_OFTEN, _mid_trial_state_saved, resume_cli

REPO = Path(__file__).resolve().parents[2]
RAYSIM = str(Path(sys.executable).parent / "raysim")

MULTINODE = """
import json, sys
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from tuning.spec import spec_from_dict
from tuning.sweep import run_sweep

out = Path(sys.argv[1])
base = json.loads(Path(sys.argv[2]).read_text())
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
head = ray.get_runtime_context().get_node_id()
spec = {"name": "mn", "base": base, "mode": "grid", "storage_path": str(out / "sweeps"),
        "space": {"local.lr": {"grid": [0.05, 0.1]}}}
outcome = run_sweep(spec_from_dict(spec, "(multinode)", out), echo=print, verbose=0)
json.dump({"head": head, "workers": [w.node_id for w in workers], "errors": outcome.errors,
           "dir": str(outcome.directory)}, open(out / "cluster.json", "w"))
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_trials_actors_span_both_worker_nodes_and_stay_in_their_placement_group(tmp_path):
    """Head with no CPUs, two 2-CPU workers; each trial asks for 3 one-CPU client actors, so its
    PACK group cannot fit on one node: the actors of one trial land on both workers, inside the
    trial's own placement group (Tune runs the two trials one after the other)."""
    base = tiny_config(
        tmp_path,
        resources__backend="ray",
        resources__num_cpus=1.0,
        resources__num_actors=3,
        rounds__num_rounds=2,
    ).to_dict()
    (tmp_path / "base.json").write_text(json.dumps(base))
    proc = subprocess.run(
        [sys.executable, "-c", MULTINODE, str(tmp_path), str(tmp_path / "base.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = json.loads((tmp_path / "cluster.json").read_text())
    assert info["errors"] == []
    trials = pd.read_parquet(Path(info["dir"]) / "trials.parquet")
    assert trials["trial_id"].nunique() == 2
    for trial_id, rows in trials.groupby("trial_id"):
        groups = set(rows["placement_group_id"])
        assert len(groups) == 1 and "" not in groups, groups  # the trial ran in one group
        system = pd.read_parquet(Path(info["dir"]) / f"trial_{trial_id}" / "run" / "system.parquet")
        actors = system[system["actor"] >= 0]
        assert sorted(set(actors["actor"])) == [0, 1, 2]
        assert set(actors["placement_group_id"]) == groups  # every client actor inside it
        assert set(actors["node_id"]) == set(info["workers"])  # on both workers, never the head
        assert info["head"] not in set(actors["node_id"])


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_a_sweep_killed_midway_resumes_and_accounts_for_every_trial(tmp_path):
    base = tiny_config(tmp_path, rounds__num_rounds=KILL_ROUNDS).to_dict()
    spec = {
        "name": "killed",
        "base": base,
        "mode": "grid",
        "storage_path": str(tmp_path / "sweeps"),
        "checkpoint_every": 1,
        "max_concurrent_trials": 1,
        "space": {"local.lr": {"grid": [0.02, 0.05, 0.1]}},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = tmp_path / "sweeps" / "killed"
    env = {**os.environ, "RAY_ADDRESS": "", **SAVE_OFTEN}  # a local Ray of its own
    proc = subprocess.Popen(
        [RAYSIM, "tune", str(path)],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    try:
        # wait until Tune's experiment state records a checkpoint of a trial that is midway: killed
        # before that, a resume has nothing to continue the trial from and starts it at round 1
        while time.time() < deadline:
            if _mid_trial_state_saved(sweep):
                break
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.3)
        else:
            pytest.fail("no saved experiment state with a trial midway within 300 s")
    finally:
        family = [psutil.Process(proc.pid), *_descendants(proc.pid)]  # the driver and its local Ray
        for p in family:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (sweep / "trials.parquet").exists()  # it really stopped midway

    resume_cli(sweep, env)
    table = pd.read_parquet(sweep / "trials.parquet")
    assert sorted(table.groupby("trial_id")["config/local.lr"].first()) == [0.02, 0.05, 0.1]
    assert (table.groupby("trial_id")["round"].max() == KILL_ROUNDS).all()  # every trial ran to the end
    assert (table["status"] == "done").all()
    # the interrupted trial continued from its own FL checkpoint instead of starting again
    assert "restored_from_round" in table, "no trial continued from a checkpoint"
    resumed = table[table["restored_from_round"].notna()]
    assert len(resumed) >= 1
    assert (resumed["exploited"] == 0).all()
    assert (resumed["round"] == resumed["restored_from_round"] + 1).all()
    assert (sweep / "best.yaml").is_file()
