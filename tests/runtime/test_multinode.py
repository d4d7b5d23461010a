"""Results are bit-identical on 1, 2 and 3 worker nodes and for any packing (issue 13's "faults"
section): a real multi-node Ray cluster (``ray.cluster_utils.Cluster``, a head with no CPUs) in a
subprocess, so that it never meets the test session's Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]

RUN_ON_NODES = """
import json, sys
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
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
exp = Experiment(config_from_dict(raw, "multinode test"), progress=False)
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
def test_results_are_identical_on_one_two_and_three_nodes(tmp_path, algorithm):
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
    for nodes, cpa in ((1, "3"), (2, "1"), (3, "auto")):
        subprocess.run(
            [sys.executable, "-c", RUN_ON_NODES, str(nodes), cpa, str(cfg_path), str(tmp_path)],
            cwd=REPO,
            check=True,
            timeout=400,
        )
        info = json.loads((tmp_path / f"n{nodes}-{cpa}.json").read_text())
        frames[nodes] = pd.read_parquet(Path(info["run_dir"]) / "rounds.parquet")[COLS]
        spans[nodes] = info["nodes_used"]
    assert spans[1] == 1 and spans[2] == 2 and spans[3] >= 2, spans  # the actors really spread out
    for nodes in (2, 3):
        pd.testing.assert_frame_equal(frames[1], frames[nodes], check_exact=True)
