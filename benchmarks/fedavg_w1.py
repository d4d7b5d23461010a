"""Workload W1: FedAvg on Fashion-MNIST, 1000 clients Dirichlet(0.5), 100 a round, 1 local
epoch, batch 32, SGD lr 0.05, cnn-small.

Measures, in one run on this machine:
  * raysim: median seconds per round on the Ray backend (client actors packed automatically,
    one per CPU, one torch thread each; evaluation switched off so only the round is timed), and
    each actor's minor page faults per round;
  * plain processes: raysim's own trainer (ClientHost) in as many plain Python processes as raysim
    has actors (multiprocessing, each loading Fashion-MNIST itself, no Ray), each given exactly the
    clients raysim's server gives that actor this round, from the same global model: what the
    actors would cost without Ray. Target: raysim <= 1.1 x this (issue 13);
  * reference: a plain PyTorch loop (torch.optim.SGD, float tensors prepared in advance, one
    thread) over exactly the same cohorts, training the clients one after the other.
    Target: raysim round <= 1.25 x (reference / number of cores).

    python benchmarks/fedavg_w1.py [--rounds 8] [--profile DIR]

``--profile DIR``: every host profiles its training calls (``raysim.runtime.host.PROFILE_ENV``):
the client actors' profiles go to DIR/actors, the plain processes' to DIR/plain and DIR/tuned; each
file is one process's sum over the rounds (``python -m pstats FILE``; the first round included).

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
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from raysim.algorithms.base import sample_cohort
from raysim.api import BACKENDS
from raysim.config import config_from_dict
from raysim.data import ShardTable, build_federation, load_dataset
from raysim.models import build_model
from raysim.models.flat import init_params
from raysim.runtime.experiment import Experiment
from raysim.runtime.pool import balance_tasks
from raysim.runtime.server import SALT_CONFIGURE, round_rng

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
        if not hasattr(self, "host"):
            self.host = w1_host(0, load_dataset("fashion-mnist"), home=list(self.fed.clients))
        threads = torch.get_num_threads()
        params = self.params.numpy().astype(np.float32)
        seconds = trained(self.host.run(t, w1_tasks(t), {"global": params}), "in-process trainer").seconds
        torch.set_num_threads(threads)
        return seconds

    def round(self, t: int) -> float:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        cohort = sample_cohort(
            range(1000), 100, round_rng(0, t, SALT_CONFIGURE)
        )  # raysim's cohort of round t
        t0 = time.perf_counter()
        acc, total = torch.zeros_like(self.params), 0
        for cid in cohort:
            idx = torch.from_numpy(np.array(self.fed.clients[cid].train_idx))
            # a copy: vector_to_parameters makes the parameters views of its vector, and every
            # client must start from the round's global model, not from the previous client
            torch.nn.utils.vector_to_parameters(self.params.clone(), self.model.parameters())
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


def w1_host(host_id: int, ds: Any, home: Sequence[Any] = (), visitors: Sequence[Any] = ()) -> Any:
    """raysim's ClientHost as W1's client actors have it: FedAvg, cnn-small, one torch thread."""
    from raysim.algorithms import build_algorithm
    from raysim.runtime.host import ClientHost, HostSpec

    spec = HostSpec(
        model="cnn-small",
        input_shape=ds.input_shape,
        num_classes=10,
        mean=ds.mean,
        std=ds.std,
        seed=0,
        torch_threads=1,
    )
    return ClientHost(
        host_id,
        build_algorithm("fedavg"),
        ds,
        list(home),
        spec,
        visitors=ShardTable(list(visitors)) if visitors else None,
    )


def w1_tasks(t: int) -> list[Any]:
    """Round t's tasks: raysim's cohort of round t (its FedAvg server's draw) with W1's settings."""
    from raysim.algorithms.base import ClientTask, LocalHParams

    cohort = sample_cohort(range(1000), 100, round_rng(0, t, SALT_CONFIGURE))
    hp = LocalHParams.of(**W1["local"])  # a task's hyperparameters are the typed record, not a dict
    return [ClientTask(client_id=c, model_key="global", hparams=hp) for c in cohort]


def trained(reply: Any, where: str) -> Any:
    """``reply`` (a HostReply) when every client it was given trained; else an error naming the first
    failure. A host turns a failing client into a counted dropout, so without this check a broken
    task (a dict for hparams did, once) makes the plain processes look fast while training nothing."""
    if reply.dropouts:
        cid, why = reply.dropouts[0]
        raise RuntimeError(f"{where}: {len(reply.dropouts)} clients dropped out, e.g. client {cid}: {why}")
    return reply


def _plain_worker(conn: Any, host_id: int) -> None:
    """One plain process: raysim's ClientHost over every W1 client (as a roaming actor has them),
    trains the tasks it is sent and answers with its busy seconds."""
    torch.set_num_threads(1)
    ds = load_dataset("fashion-mnist")
    fed = build_federation(ds, scheme="dirichlet", num_clients=1000, seed=0, alpha=0.5)
    host = w1_host(host_id, ds, visitors=list(fed.clients))
    conn.send("ready")
    while (msg := conn.recv()) is not None:
        t, tasks, params = msg
        try:
            conn.send(trained(host.run(t, tasks, {"global": params}), f"plain process {host_id}").seconds)
        except Exception as exc:  # to the parent, which raises it (it would wait forever otherwise)
            conn.send(exc)
            raise


class PlainProcesses:
    """As many plain processes as raysim has client actors, each running raysim's trainer on the
    clients raysim's server assigns that actor (``balance_tasks``, the roaming rule)."""

    def __init__(self, n: int, env: dict[str, str] | None = None) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.n = n
        self.pipes, self.procs = [], []
        saved = dict(os.environ)
        # a spawned child starts with this environment (glibc and OpenMP read it then). One OpenMP
        # thread, as Ray gives its workers: with the default (one per core) each process keeps an
        # idle OpenMP thread spinning on the other core, and two processes slow each other down.
        os.environ.update({"OMP_NUM_THREADS": "1", **(env or {})})
        try:
            for h in range(n):
                a, b = ctx.Pipe()
                proc = ctx.Process(target=_plain_worker, args=(b, h), daemon=True)
                proc.start()
                self.pipes.append(a)
                self.procs.append(proc)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        for a in self.pipes:
            assert a.recv() == "ready"
        fed = build_federation(
            load_dataset("fashion-mnist"), scheme="dirichlet", num_clients=1000, seed=0, alpha=0.5
        )
        self.sizes = {c.client_id: len(c.train_idx) for c in fed.clients}

    def round(self, t: int, params: np.ndarray) -> float:
        groups = balance_tasks(w1_tasks(t), self.sizes, range(self.n))
        t0 = time.perf_counter()
        for h, ts in groups.items():
            self.pipes[h].send((t, ts, params))
        for h in groups:
            if isinstance(answer := self.pipes[h].recv(), BaseException):
                raise answer
        return time.perf_counter() - t0

    def close(self) -> None:
        for a in self.pipes:
            a.send(None)
        for proc in self.procs:
            proc.join(timeout=30)


def _faults(exp: Experiment) -> dict[int, int]:
    return {s["actor"]: int(s["minor_faults"]) for s in exp.backend.system_stats() if s["actor"] >= 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--rounds", type=int, default=8, help="rounds of each (the first is warm-up, not counted)"
    )
    ap.add_argument("--profile", metavar="DIR", default=None, help="profile every host's rounds into DIR")
    args = ap.parse_args()
    prof: dict[str, dict[str, str]] = {"actors": {}, "plain": {}, "tuned": {}}
    if args.profile:
        from raysim.runtime.host import PROFILE_ENV

        for k in prof:
            os.makedirs(os.path.join(args.profile, k), exist_ok=True)
            prof[k] = {PROFILE_ENV: os.path.join(args.profile, k)}
        os.environ.update(prof["actors"])  # the local Ray started by exp.prepare() passes it on
    cores = os.cpu_count() or 1
    load0 = tuple(round(x, 2) for x in os.getloadavg())
    ref = ReferenceLoop()
    with tempfile.TemporaryDirectory() as d:
        cfg = config_from_dict(
            {
                **W1,
                "rounds": {**W1["rounds"], "num_rounds": args.rounds + 1},
                "output": {"dir": d, "progress": False},
            }
        )
        exp = Experiment(cfg, progress=False, backends=BACKENDS)
        plain = tuned = None
        try:
            exp.prepare()
            from actors.backend import ACTOR_ENV

            plain = PlainProcesses(exp.num_hosts, env=prof["plain"])
            tuned = PlainProcesses(exp.num_hosts, env={**ACTOR_ENV, **prof["tuned"]})
            ours, theirs, busy, inproc, procs, tprocs, faults = [], [], [], [], [], [], []
            # interleaved, round by round: every side sees the same machine at the same time
            for t in range(1, args.rounds + 1):
                params = exp.backend.eval_broadcast()["global"]  # raysim's global model before round t
                f0 = _faults(exp)
                m = exp.run_round(t).metrics
                if m.get("dropouts", 0):
                    raise RuntimeError(f"raysim's round {t}: {m['dropouts']:g} clients dropped out")
                f1 = _faults(exp)
                p = plain.round(t, params)
                q = tuned.round(t, params)
                r = ref.round(t)
                solo = ref.raysim_trainer_round(t)
                if t > 1:
                    inproc.append(solo)
                    ours.append(m["round_s"] - m["evaluate_s"])
                    theirs.append(r)
                    procs.append(p)
                    tprocs.append(q)
                    busy.append((m["actor_busy_max_s"], m["actor_busy_mean_s"]))
                    faults.append([f1[a] - f0[a] for a in sorted(f1)])
        finally:
            for pp in (plain, tuned):
                if pp is not None:
                    pp.close()
            exp.close()
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    ours_med, ref_med, ratio_med = (
        statistics.median(ours),
        statistics.median(theirs),
        statistics.median(ratios),
    )
    target = 1.25 / cores
    print(
        f"machine: {cores} cores, torch {torch.__version__}; raysim: {exp.num_hosts} client actors, 1 thread each; "
        f"load average before/after {load0} / {tuple(round(x, 2) for x in os.getloadavg())}"
    )
    print(f"raysim s/round:             median {ours_med:.3f}  {[round(x, 3) for x in ours]}")
    print(f"  busiest / mean actor busy: {[f'{a:.2f}/{b:.2f}' for a, b in busy]}")
    print(f"pure PyTorch loop s/round:  median {ref_med:.3f}  {[round(x, 3) for x in theirs]}")
    print(
        f"raysim trainer, 1 process:  median {statistics.median(inproc):.3f}  {[round(x, 3) for x in inproc]}"
        f"  (same cohorts through ClientHost without Ray: the trainer's speed on one core)"
    )
    print(f"  minor page faults per actor per round: {faults}")
    vs_procs = [a / b for a, b in zip(ours, procs, strict=True)]
    print(
        f"{exp.num_hosts} plain processes s/round:  median {statistics.median(procs):.3f}  "
        f"{[round(x, 3) for x in procs]}  (raysim's trainer, same clients per process, no Ray)"
    )
    print(
        f"raysim / plain processes (median of per-round ratios): {statistics.median(vs_procs):.3f}  "
        f"{[round(x, 3) for x in vs_procs]} -> target <= 1.1: "
        f"{'MET' if statistics.median(vs_procs) <= 1.1 else 'MISSED'}"
    )
    vs_tuned = [a / b for a, b in zip(ours, tprocs, strict=True)]
    print(
        f"{exp.num_hosts} plain processes with raysim's allocator settings (ACTOR_ENV) s/round: median "
        f"{statistics.median(tprocs):.3f}  {[round(x, 3) for x in tprocs]}; raysim / these: "
        f"{statistics.median(vs_tuned):.3f} -> {'MET' if statistics.median(vs_tuned) <= 1.1 else 'MISSED'}"
    )
    print(f"per-round ratios:           {[round(x, 3) for x in ratios]}")
    print(
        f"target: ratio <= 1.25 / {cores} cores = {target:.3f} -> {'MET' if ratio_med <= target else 'MISSED'}"
    )
    print(f"ratio raysim/pure_loop (median of per-round ratios): {ratio_med:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
