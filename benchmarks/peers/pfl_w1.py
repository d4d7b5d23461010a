"""pfl-research (Apple's ``pfl``) on W1, for benchmarks/peers/run.py (run in pfl's own venv).

Written against pfl's documented API (PyTorchModel, FederatedDataset, SimulatedBackend,
FederatedAveraging, NNAlgorithmParams, NNTrainHyperParams, WeightByDatapoints), not copied from it.

Configuration (the same for both modes):
  * ``SimulatedBackend`` over a ``FederatedDataset`` whose user sampler yields exactly raysim's
    cohorts (the shared .npz), ``WeightByDatapoints`` so the average is weighted by examples like
    raysim's FedAvg; ``FederatedAveraging`` with a central SGD(lr=1.0) on the averaged update
    (x <- x + mean delta), local ``torch.optim.SGD(lr=0.05)``, 1 epoch, batch 32;
  * each user's examples are a slice of one float tensor normalised in advance, shuffled once per
    visit (pfl's Dataset does not shuffle); local evaluation is off in every round (pfl would
    otherwise evaluate every user before and after training in iteration 0);
  * one torch thread per process.
Modes: ``--world 1`` (one process) or ``--world 2`` (one worker process per core: pfl's native
torch.distributed multi-worker simulation, PFL_WORKER_ADDRESSES / PFL_WORKER_RANK set by run.py,
cohort split by pfl with its ``user_id_to_weight`` load balancing = client sizes, statistics summed
with a gloo all-reduce). Rank 0 times the rounds and evaluates the final model once on the test set.

    PFL_WORKER_ADDRESSES=localhost:P,localhost:P+1 PFL_WORKER_RANK=r python pfl_w1.py --shared F --rounds 6
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

os.environ.setdefault("PFL_PYTORCH_DEVICE", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import W1Data, cnn_small_layers, emit, load_flat, now, one_thread, test_accuracy, versions  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

one_thread()

from pfl.aggregate.simulate import SimulatedBackend  # noqa: E402
from pfl.aggregate.weighting import WeightByDatapoints  # noqa: E402
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams  # noqa: E402
from pfl.callback.base import TrainingProcessCallback  # noqa: E402
from pfl.data.dataset import Dataset  # noqa: E402
from pfl.data.federated_dataset import FederatedDataset  # noqa: E402
from pfl.hyperparam import NNTrainHyperParams  # noqa: E402
from pfl.internal.ops.selector import get_default_framework_module  # noqa: E402
from pfl.metrics import Metrics, Weighted  # noqa: E402
from pfl.model.pytorch import PyTorchModel  # noqa: E402


class CnnSmall(nn.Sequential):
    """cnn-small with the two methods pfl's PyTorchModel requires (same parameter order)."""

    def __init__(self) -> None:
        super().__init__(*cnn_small_layers())

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.train()
        return F.cross_entropy(self(x), y)

    @torch.no_grad()
    def metrics(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        self.eval()
        out = self(x)
        n = len(y)
        return {
            "loss": Weighted(float(F.cross_entropy(out, y)) * n, n),
            "accuracy": Weighted(float((out.argmax(1) == y).sum()), n),
        }


class NoLocalEvalFedAvg(FederatedAveraging):
    """FederatedAveraging whose rounds never evaluate users locally (raysim's W1 does not either)."""

    def get_next_central_contexts(self, *args, **kwargs):
        contexts, model, metrics = super().get_next_central_contexts(*args, **kwargs)
        if contexts is not None:
            contexts = tuple(dataclasses.replace(c, do_evaluation=False) for c in contexts)
        return contexts, model, metrics


class RoundTimer(TrainingProcessCallback):
    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_begin(self, *, model) -> Metrics:
        self.marks = [now()]
        return Metrics()

    def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
        self.marks.append(now())
        return False, Metrics()


def cohort_sampler(cohorts: np.ndarray):
    """pfl's user sampler protocol: a callable returning the next user id. Yields raysim's cohorts
    in order, round after round; past the last round it repeats them (pfl's load-balancing
    sampler pre-fetches thousands of ids ahead; those are never trained)."""
    flat = [int(c) for c in cohorts.reshape(-1)]
    state = {"i": 0}

    def sample() -> int:
        uid = flat[state["i"] % len(flat)]
        state["i"] += 1
        return uid

    return sample


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", required=True)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--shuffle-seed", type=int, default=1000, help="seed of the local shuffles")
    args = ap.parse_args()
    data = W1Data(args.shared)
    dist = get_default_framework_module().distributed
    world, rank = dist.world_size, dist.global_rank
    cohorts = data.cohorts[: args.rounds]
    per_round = cohorts.shape[1]
    rng = np.random.default_rng(args.shuffle_seed + rank)

    def make_user(uid: int) -> Dataset:
        idx = torch.from_numpy(data.client_idx(uid)[rng.permutation(data.client_size(uid))])
        return Dataset(raw_data=[data.x_train[idx], data.y_train[idx]], user_id=uid)

    weights = {k: data.client_size(k) for k in range(data.num_clients)} if world > 1 else None
    train = FederatedDataset(make_user, cohort_sampler(cohorts), user_id_to_weight=weights)

    module = CnnSmall()
    load_flat(module, data.init_params)
    model = PyTorchModel(
        model=module,
        local_optimizer_create=torch.optim.SGD,
        central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0),
    )
    backend = SimulatedBackend(training_data=train, val_data=train, postprocessors=[WeightByDatapoints()])
    algo_params = NNAlgorithmParams(
        central_num_iterations=args.rounds,
        evaluation_frequency=args.rounds + 1,
        train_cohort_size=per_round,
        val_cohort_size=0,
    )
    train_params = NNTrainHyperParams(
        local_num_epochs=data.epochs, local_learning_rate=data.lr, local_batch_size=data.batch_size
    )
    timer = RoundTimer()
    NoLocalEvalFedAvg().run(
        algorithm_params=algo_params,
        backend=backend,
        model=model,
        model_train_params=train_params,
        callbacks=[timer],
        send_metrics_to_platform=False,
    )
    times = [b - a for a, b in zip(timer.marks, timer.marks[1:], strict=False)]
    if rank == 0:
        acc = test_accuracy(model.pytorch_model, data.x_test, data.y_test)
        emit(
            {
                "system": "pfl-research",
                "variant": f"SimulatedBackend, {world} process{'es' if world > 1 else ''} x 1 torch thread",
                "config": {
                    "backend": "pfl.aggregate.simulate.SimulatedBackend",
                    "worker_processes": world,
                    "distributed": "torch.distributed (gloo) via PFL_WORKER_ADDRESSES"
                    if world > 1
                    else "none",
                    "user_id_to_weight": "client sizes" if world > 1 else "none",
                    "weighting": "WeightByDatapoints",
                    "local_optimizer": "torch.optim.SGD",
                    "central_optimizer": "torch.optim.SGD(lr=1.0)",
                    "local_evaluation": "off",
                    "torch_threads": torch.get_num_threads(),
                },
                "round_seconds": times,
                "test_accuracy": acc,
                "versions": versions("pfl", "torch", "numpy"),
            }
        )
    sys.stdout.flush()
    sampler_proc = getattr(train._sample_fn, "_sample_process", None)  # pfl's load balancer
    if sampler_proc is not None:
        sampler_proc.terminate()
        sampler_proc.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
