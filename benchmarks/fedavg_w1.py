"""Workload W1: FedAvg on Fashion-MNIST, 1000 clients Dirichlet(0.5), 100 a round, 1 local
epoch, batch 32, SGD lr 0.05, cnn-small.

Measures, in one run on this machine:
  * raysim: median seconds per round on the Ray backend (client actors packed automatically,
    one per CPU, one torch thread each; evaluation switched off so only the round is timed);
  * reference: a plain PyTorch loop (torch.optim.SGD, float tensors prepared in advance, one
    thread) over exactly the same cohorts, training the clients one after the other.

Target: raysim round <= 1.25 x (reference / number of cores), i.e. the ratio on the last line
<= 0.625 on 2 cores.

    python benchmarks/fedavg_w1.py [--rounds 8]

The two are interleaved round by round (raysim round t, then the loop's round t), because this
machine's speed drifts by +-20% over minutes; the ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from raysim.algorithms.base import sample_cohort
from raysim.config import config_from_dict
from raysim.data import build_federation, load_dataset
from raysim.models import build_model
from raysim.models.flat import init_params
from raysim.runtime.experiment import Experiment
from raysim.runtime.server import round_rng

W1 = {
    "name": "bench-w1",
    "seed": 0,
    "data": {"dataset": "fashion-mnist", "partition": "dirichlet", "alpha": 0.5, "num_clients": 1000},
    "model": {"name": "cnn-small"},
    "algorithm": {"name": "fedavg"},
    "local": {"epochs": 1, "batch_size": 32, "lr": 0.05},
    "rounds": {"clients_per_round": 100, "eval_every": 10_000, "personal_eval": False},
    "resources": {"backend": "ray", "clients_per_actor": "auto", "torch_threads": 1},
}


class ReferenceLoop:
    """Plain PyTorch FedAvg on one thread: torch.optim.SGD, float tensors prepared in advance,
    the cohort's clients trained one after the other."""

    def __init__(self) -> None:
        ds = load_dataset("fashion-mnist")
        self.fed = build_federation(ds, scheme="dirichlet", num_clients=1000, seed=0, alpha=0.5)
        mean, std = ds.mean[0], ds.std[0]
        self.x = (torch.from_numpy(np.array(ds.x_train)).float() / 255.0 - mean) / std
        self.y = torch.from_numpy(np.array(ds.y_train))
        self.model = build_model("cnn-small", ds.input_shape, ds.num_classes)
        self.params = torch.from_numpy(init_params("cnn-small", ds.input_shape, ds.num_classes, 0))
        self.loss = torch.nn.CrossEntropyLoss()

    def raysim_trainer_round(self, t: int) -> float:
        """The same cohort through raysim's ClientHost in this process (no Ray): the trainer's
        own speed, one thread."""
        from raysim.algorithms import build_algorithm
        from raysim.algorithms.base import ClientTask
        from raysim.runtime.host import ClientHost, HostSpec

        if not hasattr(self, "host"):
            ds = load_dataset("fashion-mnist")
            spec = HostSpec(
                model="cnn-small",
                input_shape=ds.input_shape,
                num_classes=10,
                mean=ds.mean,
                std=ds.std,
                seed=0,
                torch_threads=1,
            )
            self.host = ClientHost(0, build_algorithm("fedavg"), ds, list(self.fed.clients), spec)
        threads = torch.get_num_threads()
        cohort = sample_cohort(range(1000), 100, round_rng(0, t))
        hp = {"epochs": 1, "batch_size": 32, "lr": 0.05}
        tasks = [ClientTask(client_id=c, model_key="global", hparams=hp) for c in cohort]
        seconds = self.host.run(t, tasks, {"global": self.params.numpy().astype(np.float32)}).seconds
        torch.set_num_threads(threads)
        return seconds

    def round(self, t: int) -> float:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        cohort = sample_cohort(range(1000), 100, round_rng(0, t))  # raysim's cohort of round t
        t0 = time.perf_counter()
        acc, total = torch.zeros_like(self.params), 0
        for cid in cohort:
            idx = torch.from_numpy(np.array(self.fed.clients[cid].train_idx))
            torch.nn.utils.vector_to_parameters(self.params, self.model.parameters())
            opt = torch.optim.SGD(self.model.parameters(), lr=0.05)
            order = idx[torch.randperm(len(idx))]
            for s in range(0, len(order), 32):
                b = order[s : s + 32]
                opt.zero_grad()
                self.loss(self.model(self.x[b]), self.y[b]).backward()
                opt.step()
            acc += len(idx) * torch.nn.utils.parameters_to_vector(self.model.parameters()).detach()
            total += len(idx)
        self.params = acc / total
        elapsed = time.perf_counter() - t0
        torch.set_num_threads(threads)
        return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--rounds", type=int, default=8, help="rounds of each (the first is warm-up, not counted)"
    )
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    ref = ReferenceLoop()
    with tempfile.TemporaryDirectory() as d:
        cfg = config_from_dict(
            {
                **W1,
                "rounds": {**W1["rounds"], "num_rounds": args.rounds + 1},
                "output": {"dir": d, "progress": False},
            }
        )
        exp = Experiment(cfg, progress=False)
        try:
            exp.prepare()
            ours, theirs, busy, inproc = [], [], [], []
            # interleaved, round by round: both sides see the same machine at the same time
            for t in range(1, args.rounds + 1):
                m = exp.run_round(t).metrics
                r = ref.round(t)
                solo = ref.raysim_trainer_round(t)
                if t > 1:
                    inproc.append(solo)
                    ours.append(m["round_s"] - m["evaluate_s"])
                    theirs.append(r)
                    busy.append((m["actor_busy_max_s"], m["actor_busy_mean_s"]))
        finally:
            exp.close()
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    ours_med, ref_med, ratio_med = (
        statistics.median(ours),
        statistics.median(theirs),
        statistics.median(ratios),
    )
    target = 1.25 / cores
    print(
        f"machine: {cores} cores, torch {torch.__version__}; raysim: {exp.num_hosts} client actors, 1 thread each"
    )
    print(f"raysim s/round:             median {ours_med:.3f}  {[round(x, 3) for x in ours]}")
    print(f"  busiest / mean actor busy: {[f'{a:.2f}/{b:.2f}' for a, b in busy]}")
    print(f"pure PyTorch loop s/round:  median {ref_med:.3f}  {[round(x, 3) for x in theirs]}")
    print(
        f"raysim trainer, 1 process:  median {statistics.median(inproc):.3f}  {[round(x, 3) for x in inproc]}"
        f"  (same cohorts through ClientHost without Ray: the trainer's speed on one core)"
    )
    print(f"per-round ratios:           {[round(x, 3) for x in ratios]}")
    print(
        f"target: ratio <= 1.25 / {cores} cores = {target:.3f} -> {'MET' if ratio_med <= target else 'MISSED'}"
    )
    print(f"ratio raysim/pure_loop (median of per-round ratios): {ratio_med:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
