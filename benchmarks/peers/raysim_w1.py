"""raysim on W1, for benchmarks/peers/run.py (run in the raysim venv, in its own process).

Configuration: exactly ``benchmarks/fedavg_w1.py``'s W1 config through raysim's Experiment API:
the Ray backend, client actors packed automatically (one per CPU), one torch thread each.
Evaluation runs only after the last round; its time (``evaluate_s``) is subtracted from that
round, so every timed round is training + aggregation only. The cohort raysim draws each round is
checked against the one in the shared .npz (the cohorts the peers are given).

    python benchmarks/peers/raysim_w1.py --shared SHARED.npz --rounds 6
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from benchmarks.fedavg_w1 import W1  # noqa: E402
from benchmarks.peers.common import emit, versions  # noqa: E402
from raysim.api import BACKENDS  # noqa: E402
from raysim.config import config_from_dict  # noqa: E402
from raysim.runtime.experiment import Experiment  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", required=True)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    z = np.load(args.shared)
    n_clients, cohorts = int(z["num_clients"]), z["cohorts"]
    with tempfile.TemporaryDirectory() as d:
        cfg = config_from_dict(
            {
                **W1,
                "data": {**W1["data"], "num_clients": n_clients},
                "rounds": {**W1["rounds"], "num_rounds": args.rounds},
                "output": {"dir": d, "progress": False},
            }
        )
        exp = Experiment(cfg, progress=False, backends=BACKENDS)
        times, acc, mismatched = [], float("nan"), []
        try:
            exp.prepare()
            for t in range(1, args.rounds + 1):
                rep = exp.run_round(t)
                m = rep.metrics
                times.append(m["round_s"] - m.get("evaluate_s", 0.0))
                trained = sorted(int(r["client_id"]) for r in rep.clients)
                if trained != sorted(int(c) for c in cohorts[t - 1]):
                    mismatched.append(t)
                if "test_accuracy" in m:
                    acc = float(m["test_accuracy"])
            hosts = exp.num_hosts
        finally:
            exp.close()
    emit(
        {
            "system": "raysim",
            "variant": f"ray backend, {hosts} client actors x 1 torch thread",
            "config": {
                "backend": "ray",
                "clients_per_actor": W1["resources"]["clients_per_actor"],
                "client_actors": hosts,
                "torch_threads": 1,
                "evaluation": "after the last round only, its time subtracted",
            },
            "round_seconds": times,
            "test_accuracy": acc,
            "cohort_mismatch_rounds": mismatched,
            "versions": versions("raysim", "ray", "torch", "numpy"),
            "pid": os.getpid(),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
