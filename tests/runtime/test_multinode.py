"""Results are bit-identical on 1, 2 and 3 worker nodes and for any packing (issue 13's "faults"
section): a real multi-node Ray cluster (``ray.cluster_utils.Cluster``, a head with no CPUs) in a
subprocess, so that it never meets the test session's Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raysim.runtime import rundir
from tests.conftest import tiny_config
from tests.helpers import experiment

REPO = Path(__file__).resolve().parents[2]

RUN_ON_NODES = """
import json, sys
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from raysim.api import BACKENDS
from raysim.config import config_from_dict
from raysim.runtime.experiment import Experiment

nodes, cpa, raw_path, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
raw = json.loads(Path(raw_path).read_text())
raw["resources"]["clients_per_actor"] = cpa if cpa == "auto" else int(cpa)
raw["output"] = {"dir": out, "name": f"n{nodes}-{cpa}", "progress": False}
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
for _ in range(nodes):
    cluster.add_node(num_cpus=2)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
exp = Experiment(config_from_dict(raw, "multinode test"), progress=False, backends=BACKENDS)
try:
    exp.run()
    used = sorted({s["node_id"] for s in exp.backend.system_stats() if s.get("actor", -1) >= 0})
finally:
    exp.close()
json.dump({"run_dir": str(exp.run_dir), "nodes_used": len(used)}, open(Path(out) / f"n{nodes}-{cpa}.json", "w"))
ray.shutdown()
cluster.shutdown()
"""

COLS = ["round", "test_accuracy", "test_loss", "train_loss", "personal_accuracy", "completed", "bytes_up"]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("algorithm", ["fedavg", "scaffold"])  # roaming clients, pinned clients
def test_results_are_identical_on_one_and_three_nodes(tmp_path, algorithm):
    raw = tiny_config(
        tmp_path,
        algorithm__name=algorithm,
        data__num_clients=9,
        rounds__clients_per_round=6,
        rounds__num_rounds=3,
        resources__backend="ray",
        resources__num_cpus=0.25,
    ).to_dict()
    cfg_path = tmp_path / "raw.json"
    cfg_path.write_text(json.dumps(raw))
    frames, spans = {}, {}
    # one node, 3 clients an actor, against 3 nodes, automatic packing. A third layout (2 nodes, 1
    # client an actor) cost CI ~30 s a parameter; packings are compared bit for bit on one node by
    # test_ray_runs.py's packing test
    for nodes, cpa in ((1, "3"), (3, "auto")):
        subprocess.run(
            [sys.executable, "-c", RUN_ON_NODES, str(nodes), cpa, str(cfg_path), str(tmp_path)],
            cwd=REPO,
            check=True,
            timeout=400,
        )
        info = json.loads((tmp_path / f"n{nodes}-{cpa}.json").read_text())
        frames[nodes] = pd.read_parquet(Path(info["run_dir"]) / "rounds.parquet")[COLS]
        spans[nodes] = info["nodes_used"]
    assert spans[1] == 1 and spans[3] >= 2, spans  # the actors really spread out
    pd.testing.assert_frame_equal(frames[1], frames[3], check_exact=True)


NODE_LOSS = """
import json, sys, warnings
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from raysim.api import BACKENDS
from raysim.config import config_from_dict
from raysim.runtime.experiment import Experiment

raw, out = json.loads(Path(sys.argv[1]).read_text()), sys.argv[2]
raw["output"] = {"dir": out, "name": "node-loss", "progress": False}
# the head's one CPU fits the server (1 CPU) but no client actor (2 CPUs): both go to `doomed`,
# which they fill, so the server can only be on the head
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
doomed = cluster.add_node(num_cpus=4)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)

def client_nodes(exp):
    return sorted({s["node_id"] for s in exp.backend.system_stats() if s.get("actor", -1) >= 0})

exp = Experiment(config_from_dict(raw, "node-loss test"), progress=False, backends=BACKENDS)
try:
    exp.prepare()
    for t in (1, 2, 3):
        exp.run_round(t)
    nodes_before = client_nodes(exp)
    survivor = cluster.add_node(num_cpus=4)  # room for the actors of the node about to go
    cluster.wait_for_nodes()
    cluster.remove_node(doomed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = exp.run()
    nodes_after = client_nodes(exp)
finally:
    exp.close()
json.dump(
    {
        "run_dir": str(exp.run_dir),
        "doomed": doomed.node_id,
        "survivor": survivor.node_id,
        "before": nodes_before,
        "after": nodes_after,
        "warnings": [str(w.message) for w in caught],
        "summary": summary,
    },
    open(Path(out) / "node-loss.json", "w"),
)
ray.shutdown()
cluster.shutdown()
"""


OVER_NODE_LOSS = {
    "algorithm__name": "scaffold",
    "data__num_clients": 6,
    "rounds__clients_per_round": 6,
    "rounds__num_rounds": 5,
    "rounds__checkpoint_every": 2,
    "resources__backend": "ray",
    "resources__clients_per_actor": 3,
    "resources__num_cpus": 2.0,
    "resources__server_cpus": 1.0,
    "resources__max_restarts": 2,
}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_lost_worker_node_s_actors_restart_on_the_survivor_with_their_clients_state(tmp_path):
    """SCAFFOLD (control variates on the client actors), both actors on one worker node, a
    checkpoint every 2 rounds. After round 3 a second node joins and the first is removed: Ray
    restarts the actors on the survivor, round 4 counts the six clients as dropouts (their state
    went with the node), their state comes back from the round-2 checkpoint, and round 5 trains
    all six again. The server (on the head, which cannot hold a client actor) is not lost.

    The state, not only the counts: the round-4 checkpoint (written after the restore; round 4
    accepted no update) holds exactly the round-2 control variates of all six clients, and round 5
    has the numbers a fresh serial run restored from that checkpoint computes."""
    raw = tiny_config(tmp_path, **OVER_NODE_LOSS).to_dict()
    cfg_path = tmp_path / "raw.json"
    cfg_path.write_text(json.dumps(raw))
    subprocess.run(
        [sys.executable, "-c", NODE_LOSS, str(cfg_path), str(tmp_path)], cwd=REPO, check=True, timeout=500
    )
    info = json.loads((tmp_path / "node-loss.json").read_text())
    assert info["before"] == [info["doomed"]] and info["after"] == [info["survivor"]]
    assert info["summary"]["rounds"] == 5 and info["summary"]["server_restarts"] == 0
    assert info["summary"]["lost_clients"] == 0
    assert any("restored from the checkpoint of round 2" in w for w in info["warnings"]), info["warnings"]
    rounds = pd.read_parquet(Path(info["run_dir"]) / "rounds.parquet")
    assert list(rounds["completed"]) == [6, 6, 6, 0, 6]
    assert list(rounds["restarted_clients"]) == [0, 0, 0, 6, 0] and rounds["dropouts"].iloc[3] == 6

    run_dir = Path(info["run_dir"])
    saved = rundir.read_checkpoint(rundir.periodic_dir(run_dir, 2))["server"]["client_states"]
    restored = rundir.read_checkpoint(rundir.periodic_dir(run_dir, 4))["server"]["client_states"]
    assert sorted(saved) == sorted(restored) == list(range(6))  # every client had a control variate
    for c in range(6):
        assert sorted(saved[c]) == sorted(restored[c]) and saved[c]
        for k in saved[c]:
            np.testing.assert_array_equal(restored[c][k], saved[c][k])
    serial_cfg = tiny_config(tmp_path / "serial", **{**OVER_NODE_LOSS, "resources__backend": "serial"})
    fresh = experiment(serial_cfg)
    try:
        fresh.prepare()
        assert fresh.restore(rundir.periodic_dir(run_dir, 4)) == 4
        fresh.run()  # round 5
    finally:
        fresh.close()
    again = pd.read_parquet(fresh.run_dir / "rounds.parquet")
    pd.testing.assert_frame_equal(
        rounds[COLS].iloc[4:].reset_index(drop=True), again[COLS].reset_index(drop=True), check_exact=True
    )


SERVER_NODE_LOSS = """
import json, sys, warnings
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
import actors.server
from raysim.api import BACKENDS
from raysim.config import ConfigError, config_from_dict
from raysim.runtime.experiment import Experiment

raw, out = json.loads(Path(sys.argv[1]).read_text()), sys.argv[2]
# The head runs the driver only (no CPUs). A first server actor can go only to node A (resource
# "server_a"), the client actors only to node B (the only CPUs); a replacement server only to the
# head ("server_b"). Both workers have one GPU each.
cluster = Cluster(
    initialize_head=True,
    head_node_args={"num_cpus": 0, "resources": {"server_b": 1}, "include_dashboard": False},
)
node_a = cluster.add_node(num_cpus=0, num_gpus=1, resources={"server_a": 1})
node_b = cluster.add_node(num_cpus=2, num_gpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)

where = []  # the resource each server actor was started with
ServerActor = actors.server.ServerActor


class Pinned:
    @staticmethod
    def options(**kw):
        where.append("server_a" if not where else "server_b")
        # start_server passes its own placement (none here: no node advertises raysim_head)
        return ServerActor.options(**{**kw, "resources": {**kw.get("resources", {}), where[-1]: 1}})


actors.server.ServerActor = Pinned  # start_server reads it at each start


def experiment(name, **over):
    cfg = dict(raw, output={"dir": out, "name": name, "progress": False})
    cfg["resources"] = {**raw["resources"], **over}
    return Experiment(config_from_dict(cfg, name), progress=False, backends=BACKENDS)


# 3 client actors x 0.6 GPU: 1.8 of the cluster's 2 GPUs, but one such actor a GPU: refused at once
probe = experiment("gpus", num_cpus=0.0, num_gpus=0.6, clients_per_actor=2)
try:
    probe.prepare()
    refused = ""
except ConfigError as err:
    refused = str(err)
finally:
    probe.close()

ref = experiment("uninterrupted")
try:
    ref.run()
    first = list(where)
finally:
    ref.close()

where.clear()
exp = experiment("server-node-lost")
try:
    exp.prepare()
    for t in (1, 2, 3):
        exp.run_round(t)
    clients_on = sorted({s["node_id"] for s in exp.backend.system_stats() if s.get("actor", -1) >= 0})
    cluster.remove_node(node_a, allow_graceful=False)  # the server's node vanishes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = exp.run()
finally:
    exp.close()
json.dump(
    {
        "ref_dir": str(ref.run_dir),
        "run_dir": str(exp.run_dir),
        "refused": refused,
        "first": first,
        "where": where,
        "clients_on": clients_on,
        "node_b": node_b.node_id,
        "warnings": [str(w.message) for w in caught],
        "summary": summary,
    },
    open(Path(out) / "server-node-loss.json", "w"),
)
ray.shutdown()
cluster.shutdown()
"""

LEARNING = ["round", "test_accuracy", "test_loss", "train_loss", "personal_accuracy", "completed", "dropouts"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_losing_the_server_s_node_replays_from_the_checkpoint_to_the_same_numbers(tmp_path):
    """A 3-node cluster (head with no CPUs): the server actor on worker A, SCAFFOLD's two client
    actors on worker B. After round 3, node A vanishes (killed, not drained): the driver sees the
    server unavailable or dead, starts a new one (on the head), restores the round-2 checkpoint,
    replays round 3 and finishes with exactly the rounds.parquet and clients.parquet of an
    uninterrupted run. On the same cluster, 3 client actors x 0.6 GPU on the two 1-GPU nodes fit
    the totals but no placement: refused at once, with the arithmetic."""
    raw = tiny_config(
        tmp_path,
        algorithm__name="scaffold",
        data__num_clients=6,
        rounds__clients_per_round=6,
        rounds__num_rounds=4,
        rounds__checkpoint_every=2,
        resources__backend="ray",
        resources__clients_per_actor=3,
        resources__num_cpus=1.0,
    ).to_dict()
    cfg_path = tmp_path / "raw.json"
    cfg_path.write_text(json.dumps(raw))
    subprocess.run(
        [sys.executable, "-c", SERVER_NODE_LOSS, str(cfg_path), str(tmp_path)],
        cwd=REPO,
        check=True,
        timeout=500,
    )
    info = json.loads((tmp_path / "server-node-loss.json").read_text())
    assert "GPU 1 x floor(1 / 0.6) = 1" in info["refused"], info["refused"]
    assert "at most 2 client actors fit, 3 asked" in info["refused"]
    assert info["first"] == ["server_a"]  # the uninterrupted run's server stayed on A
    assert info["where"] == ["server_a", "server_b"]  # one replacement, on the head
    assert info["clients_on"] == [info["node_b"]]  # the client actors were not on the lost node
    assert info["summary"]["server_restarts"] == 1 and info["summary"]["rounds"] == 4
    assert any("restarted it from the checkpoint of round 2" in w for w in info["warnings"]), info["warnings"]
    for name in ("rounds.parquet", "clients.parquet"):
        a = pd.read_parquet(Path(info["ref_dir"]) / name)
        b = pd.read_parquet(Path(info["run_dir"]) / name)
        cols = [c for c in LEARNING + ["client_id", "num_examples", "reason"] if c in a]
        pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=True)
    assert len(pd.read_parquet(Path(info["run_dir"]) / "rounds.parquet")) == 4
