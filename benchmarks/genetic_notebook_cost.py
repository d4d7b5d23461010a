"""What configs/genetic_cfl_notebook.yaml (and its FedAvg twin) costs on this machine's CPU: the
notebook's CNN (cnn-cifar) on Fashion-MNIST-shaped input, timed as CPU seconds of one torch thread
(load-independent, unlike wall time), against cnn-small measured in the same run as the reference.

    PYTHONPATH=$PWD python benchmarks/genetic_notebook_cost.py [--steps 20]

Prints CPU ms a training example (Adam, batch 32) and an evaluated example for each model, the
ratio cnn-cifar / cnn-small, and the CPU seconds of one round and of the 10-round run: 30 clients
x 2 epochs x ~1,800 training examples, each client's ~200 validation examples and the 10,000 test
examples (the config's federation on seed 0).
"""

from __future__ import annotations

import argparse
import time

import torch

from raysim.models.registry import MODELS

CLIENTS, EPOCHS, TRAIN, VAL, TEST, ROUNDS = 30, 2, 1800, 200, 10_000, 10


def cpu_ms(name: str, steps: int) -> tuple[float, float]:
    """(training, evaluation) CPU ms per example of model ``name`` on 1x28x28 input, batch 32."""
    model = MODELS[name]((1, 28, 28), 10)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    loss = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()

    for _ in range(2):  # warm-up
        step()
    t0 = time.process_time()
    for _ in range(steps):
        step()
    train = (time.process_time() - t0) / (steps * 32) * 1e3
    with torch.no_grad():
        xe = torch.randn(500, 1, 28, 28)
        t0 = time.process_time()
        model(xe)
        ev = (time.process_time() - t0) / 500 * 1e3
    return train, ev


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per model")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ref = cpu_ms("cnn-small", args.steps)
    nb = cpu_ms("cnn-cifar", args.steps)
    for name, (tr, ev) in (("cnn-small (reference)", ref), ("cnn-cifar", nb)):
        print(f"{name}: train {tr:.3f} CPU ms/example, evaluate {ev:.3f} CPU ms/example")
    print(f"ratio cnn-cifar / cnn-small: train {nb[0] / ref[0]:.2f}x, evaluate {nb[1] / ref[1]:.2f}x")
    round_s = (CLIENTS * EPOCHS * TRAIN * nb[0] + (CLIENTS * VAL + TEST) * nb[1]) / 1e3
    print(
        f"one round of configs/genetic_cfl_notebook.yaml: {round_s:.0f} CPU s; "
        f"{ROUNDS} rounds: {ROUNDS * round_s / 60:.0f} CPU min per config (one thread)"
    )


if __name__ == "__main__":
    main()
