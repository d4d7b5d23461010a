"""Where an IFCA client's time goes, in CPU seconds on one thread (issue 21: IFCA at 10^5 clients
within 1.5x of FedAvg's round).

An IFCA client scores each of the k cluster models on its training split before it trains the one
with the lowest loss: k forward passes besides FedAvg's one local epoch. This prints, for a cohort
of clients like ``benchmarks/clustered_scale.py``'s (Fashion-MNIST, 45 training examples each,
cnn-small, batch 32, one epoch), the CPU seconds of

- ``fit``: every client's local epoch (what a FedAvg client does);
- ``choice``: every client scoring the k models one ``Trainer.evaluate`` each, as ``IFCA.select``
  does, with the evaluation forward (``scoring_module``: ReLU after max-pool, bit-identical) and
  with the plain module (before it);
- two ways of batching the same choice: each model loaded once and every client scored against it
  (``model-outer``), and each model in one pass over the whole cohort's examples (``cohort-pass``,
  1000 at a time): the per-call overhead they remove is what they can save;
- the parameter load alone (``load``);
- with ``--select-examples N ...``: the choice on IFCA's ``select_examples: N`` subset (an option,
  off by default: the models scored on N evenly spaced training examples, ``subset_positions``).

    python benchmarks/ifca_choice_cost.py [--clients 100] [--clusters 4] [--reps 3] [--select-examples 10 15]

Every figure is the median over ``--reps`` repetitions in this process (CPU seconds, which a busy
machine stretches less than wall-clock). The ratio (fit + choice) / fit is what the actors' part of
an IFCA round costs against FedAvg's.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from collections.abc import Callable

import numpy as np
import torch

from raysim.algorithms.base import LocalHParams, subset_positions
from raysim.data import load_dataset
from raysim.models.flat import init_params
from raysim.runtime.trainer import Trainer


def cpu(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--clusters", type=int, default=4)
    ap.add_argument("--examples", type=int, default=45, help="training examples a client")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--select-examples", type=int, nargs="*", default=[], help="subset sizes to time too")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"uptime before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    ds = load_dataset("fashion-mnist")
    tr = Trainer(
        model="cnn-small", input_shape=ds.input_shape, num_classes=ds.num_classes, mean=ds.mean, std=ds.std
    )
    rng = np.random.default_rng(0)
    idx = [rng.choice(len(ds.y_train), args.examples, replace=False) for _ in range(args.clients)]
    models = [init_params("cnn-small", ds.input_shape, ds.num_classes, j) for j in range(args.clusters)]
    hp = LocalHParams.of(None, epochs=1, batch_size=32, lr=0.05)
    x, y = ds.x_train, ds.y_train

    def fit() -> None:
        for i in idx:
            tr.fit(models[0], x, y[i], hp, seed=1, idx=i)

    def choice() -> None:
        for i in idx:
            for p in models:
                tr.evaluate(p, x, y[i], idx=i)

    def model_outer() -> None:
        for p in models:
            for i in idx:
                tr.evaluate(p, x, y[i], idx=i)

    everyone = np.concatenate(idx)

    def cohort_pass() -> None:
        for p in models:
            tr.predict_examples(p, x, everyone, batch_size=1000)

    def load() -> None:
        for _ in idx:
            for p in models:
                tr.fm.load(p)

    scorer = tr.scorer
    r = {"fit": cpu(fit, args.reps), "choice": cpu(choice, args.reps)}
    tr.scorer = tr.fm.module  # the plain module: evaluation's forward before scoring_module
    r["choice, plain module"] = cpu(choice, args.reps)
    tr.scorer = scorer
    r["model-outer"] = cpu(model_outer, args.reps)
    r["cohort-pass"] = cpu(cohort_pass, args.reps)
    r["load"] = cpu(load, args.reps)
    for n in args.select_examples:
        pos = subset_positions(args.examples, n)

        def subset(pos: np.ndarray = pos) -> None:
            for i in idx:
                for p in models:
                    tr.evaluate(p, x, y[i[pos]], idx=i[pos])

        r[f"choice, select_examples {n}"] = cpu(subset, args.reps)
    print(f"uptime after:  {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(
        f"{args.clients} clients x {args.examples} training examples, k = {args.clusters}, cnn-small, "
        f"1 thread; CPU seconds, median of {args.reps}"
    )
    for name, s in r.items():
        print(f"{name:>22} {s:8.3f} s  ({s / r['fit']:.2f}x fit)")
    for name in [k for k in r if k.startswith("choice")]:
        print(f"(fit + {name}) / fit: {(r['fit'] + r[name]) / r['fit']:.2f}x  (the IFCA/FedAvg actor ratio)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
