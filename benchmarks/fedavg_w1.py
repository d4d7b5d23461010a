"""Workload W1: FedAvg on Fashion-MNIST, 1000 clients Dirichlet(0.5), 100 a round, 1 local
epoch, batch 32, SGD lr 0.05, cnn-small.

Measures, in one run on this machine:
  * raysim: median seconds per round on the Ray backend (client actors packed automatically,
    one per CPU, one torch thread each; evaluation switched off so only the round is timed);
  * reference: a plain PyTorch loop (torch.optim.SGD, float tensors prepared in advance, one
    thread) over exactly the same cohorts, training the clients one after the other.

Target: raysim round <= 1.25 x (reference / number of cores), i.e. the ratio on the last line
<= 0.625 on 2 cores.

    python benchmarks/fedavg_w1.py [--rounds 6] [--ref-rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

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


def raysim_rounds(rounds: int, out_dir: str) -> list[float]:
    cfg = config_from_dict(
        {
            **W1,
            "rounds": {**W1["rounds"], "num_rounds": rounds},
            "output": {"dir": out_dir, "progress": False},
        }
    )
    exp = Experiment(cfg, progress=False)
    try:
        exp.run()
        # the last round evaluates (final round); time the training part only
        rows = exp.logger.rounds
        print(
            "raysim per round: train_s / slowest actor busy / mean actor busy: "
            + ", ".join(
                f"{r['train_s']:.2f}/{r['actor_busy_max_s']:.2f}/{r['actor_busy_mean_s']:.2f}" for r in rows
            )
        )
        return [r["round_s"] - r["evaluate_s"] for r in rows]
    finally:
        exp.close()


def reference_rounds(rounds: int) -> list[float]:
    torch.set_num_threads(1)
    ds = load_dataset("fashion-mnist")
    fed = build_federation(ds, scheme="dirichlet", num_clients=1000, seed=0, alpha=0.5)
    mean, std = ds.mean[0], ds.std[0]
    x_all = (torch.from_numpy(ds.x_train).float() / 255.0 - mean) / std
    y_all = torch.from_numpy(ds.y_train)
    model = build_model("cnn-small", ds.input_shape, ds.num_classes)
    global_vec = torch.from_numpy(init_params("cnn-small", ds.input_shape, ds.num_classes, 0))
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for t in range(1, rounds + 1):
        cohort = sample_cohort(range(1000), 100, round_rng(0, t))
        t0 = time.perf_counter()
        acc = torch.zeros_like(global_vec)
        total = 0
        for cid in cohort:
            idx = torch.from_numpy(fed.clients[cid].train_idx)
            torch.nn.utils.vector_to_parameters(global_vec, model.parameters())
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            order = idx[torch.randperm(len(idx))]
            for s in range(0, len(order), 32):
                b = order[s : s + 32]
                opt.zero_grad()
                loss_fn(model(x_all[b]), y_all[b]).backward()
                opt.step()
            acc += len(idx) * torch.nn.utils.parameters_to_vector(model.parameters()).detach()
            total += len(idx)
        global_vec = acc / total
        times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6, help="raysim rounds (median over them)")
    ap.add_argument("--ref-rounds", type=int, default=3, help="reference-loop rounds")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as d:
        ours = raysim_rounds(args.rounds, d)
    ref = reference_rounds(args.ref_rounds)
    ours_med, ref_med = statistics.median(ours), statistics.median(ref)
    target = 1.25 * ref_med / cores
    print(f"cores: {cores}  torch {torch.__version__}")
    print(f"raysim  s/round: median {ours_med:.3f}  all {[round(x, 3) for x in ours]}")
    print(f"pure PyTorch 1-thread loop s/round: median {ref_med:.3f}  all {[round(x, 3) for x in ref]}")
    print(
        f"target: raysim <= 1.25 x reference / {cores} cores = {target:.3f} s -> "
        f"{'MET' if ours_med <= target else 'MISSED'}"
    )
    print(f"ratio raysim/pure_loop: {ours_med / ref_med:.3f} (target <= {1.25 / cores:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
