"""Flower's simulation engine on W1, for benchmarks/peers/run.py (run in Flower's own venv).

Written against Flower's documented Message API (``flwr.simulation.run_simulation``, ServerApp,
``flwr.serverapp.strategy.FedAvg``, ClientApp), not copied from it.

Configuration:
  * ``run_simulation`` with the Ray backend, N SuperNodes (one per client; SuperNode partition-id
    k holds raysim's client k), ``client_resources = {"num_cpus": C, "num_gpus": 0}``: C = 1 runs
    two ClientApps at a time on the 2 cores (one Ray actor per core), C = 2 (Flower's default) one;
  * the ServerApp runs Flower's FedAvg strategy (``strategy.start``) with federated evaluation off
    (``fraction_evaluate=0``) and no central evaluation; only its node selection is replaced, to
    send each round's training messages to the SuperNodes of raysim's cohort, each message naming
    its client, whose examples the ClientApp trains (SuperNode k, the k-th Flower registers, has
    partition-id k; every reply says whether it was the named client's own SuperNode);
    aggregation is Flower's own (mean of the returned weights, weighted by ``num-examples``);
  * the ClientApp (flower_client.py) trains with ``torch.optim.SGD``, one torch thread per actor,
    on a float tensor normalised in advance and cached in each actor process.
A round is timed from the strategy's ``configure_train`` to the end of its ``aggregate_train``.
The final model is evaluated once on the test set after the last round.

    python flower_w1.py --shared SHARED.npz --rounds 6 --client-cpus 1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import W1Data, cnn_small, emit, load_flat, now, one_thread, test_accuracy, versions  # noqa: E402

one_thread()

import flower_client  # noqa: E402  (imported, so Ray pickles the ClientApp by reference)
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402


class CohortFedAvg(FedAvg):
    """Flower's FedAvg, training each round on raysim's cohort instead of a fresh random sample:
    one message per cohort client, to that client's SuperNode, naming the client (``cid``)."""

    def __init__(self, cohorts: np.ndarray, node_of: list[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.cohorts, self.node_of = cohorts, node_of
        self.started: dict[int, float] = {}
        self.ended: dict[int, float] = {}
        self.trained: dict[int, list[int]] = {}
        self.own_partition = 0

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self.started[server_round] = now()
        messages = []
        for c in self.cohorts[server_round - 1]:
            cfg = ConfigRecord({**dict(config), "server-round": server_round, "cid": int(c)})
            record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg})
            messages.append(
                Message(content=record, message_type=MessageType.TRAIN, dst_node_id=self.node_of[int(c)])
            )
        return messages

    def aggregate_train(self, server_round: int, replies):
        replies = list(replies)
        out = super().aggregate_train(server_round, replies)
        self.ended[server_round] = now()
        ok = [m.content["metrics"] for m in replies if not m.has_error()]
        self.trained[server_round] = sorted(int(m["cid"]) for m in ok)
        self.own_partition += sum(int(m["own-partition"]) for m in ok)
        return out


RESULT: dict = {}


def make_server_app(data: W1Data, rounds: int) -> ServerApp:
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        # every SuperNode up; SuperNode k (partition-id k) is the k-th one Flower registered
        while len(list(grid.get_node_ids())) < data.num_clients:
            time.sleep(0.2)
        nodes = sorted(grid.get_nodes(), key=lambda info: info.registered_at)
        node_of = [info.node_id for info in nodes]

        model = cnn_small()
        load_flat(model, data.init_params)
        strategy = CohortFedAvg(
            data.cohorts,
            node_of,
            fraction_train=data.cohorts.shape[1] / data.num_clients,
            fraction_evaluate=0.0,
            min_available_nodes=data.num_clients,
        )
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=rounds,
            train_config=ConfigRecord({"lr": data.lr, "batch-size": data.batch_size, "epochs": data.epochs}),
        )
        RESULT["times"] = [strategy.ended[t] - strategy.started[t] for t in range(1, rounds + 1)]
        RESULT["trained"] = strategy.trained
        RESULT["own_partition"] = strategy.own_partition
        RESULT["state_dict"] = result.arrays.to_torch_state_dict()

    return server


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", required=True)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--client-cpus", type=float, default=1.0)
    args = ap.parse_args()
    os.environ["W1_SHARED"] = str(Path(args.shared).resolve())  # inherited by the Ray actors
    data = W1Data(args.shared)
    data.cohorts = data.cohorts[: args.rounds]
    cpus = int(args.client_cpus) if float(args.client_cpus).is_integer() else args.client_cpus
    backend_config = {"client_resources": {"num_cpus": cpus, "num_gpus": 0.0}}
    t0 = now()
    run_simulation(
        server_app=make_server_app(data, args.rounds),
        client_app=flower_client.app,
        num_supernodes=data.num_clients,
        backend_name="ray",
        backend_config=backend_config,
    )
    total = now() - t0
    if "state_dict" not in RESULT:
        print("Flower's ServerApp did not finish; see the log above", file=sys.stderr)
        return 1
    model = cnn_small()
    model.load_state_dict(RESULT["state_dict"])
    acc = test_accuracy(model, data.x_test, data.y_test)
    mismatch = [
        t for t, got in RESULT["trained"].items() if got != sorted(int(c) for c in data.cohorts[t - 1])
    ]
    actors = int(2 // cpus) if cpus else 0
    emit(
        {
            "system": "Flower",
            "variant": f"run_simulation (Ray), num_cpus={cpus}/client: {actors} ClientApp{'s' if actors > 1 else ''} at a time",
            "config": {
                "api": "flwr.simulation.run_simulation + ServerApp/FedAvg strategy + ClientApp (Message API)",
                "backend": "ray",
                "backend_config": backend_config,
                "concurrent_clientapps": actors,
                "num_supernodes": data.num_clients,
                "federated_evaluation": "off (fraction_evaluate=0)",
                "node_selection": "raysim's cohort, one message per client to its SuperNode",
                "torch_threads": 1,
            },
            "round_seconds": RESULT["times"],
            "test_accuracy": acc,
            "messages_on_own_supernode": f"{RESULT['own_partition']} of {args.rounds * data.cohorts.shape[1]}",
            "simulation_total_s": total,
            "cohort_mismatch_rounds": mismatch,
            "versions": versions("flwr", "ray", "torch", "numpy"),
        }
    )
    logging.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
