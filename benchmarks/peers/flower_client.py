"""Flower's ClientApp for W1 (imported by flower_w1.py and, by reference, inside Flower's Ray
actors). Written against Flower's Message API (``flwr.clientapp.ClientApp``), not copied from it.

The training message names the raysim client to train (config ``cid``); the server sends it to
the SuperNode registered as partition ``cid`` and the reply says whether the SuperNode's own
``partition-id`` was that client (it is, unless Flower's registration order could not be read).
Each actor process loads the shared data once (module-level cache) and reuses one model module.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import W1Data, cnn_small  # noqa: E402
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from torch.nn import functional as F  # noqa: E402

_CACHE: dict = {}


def _state() -> dict:
    if not _CACHE:
        torch.set_num_threads(1)
        _CACHE["data"] = W1Data(os.environ["W1_SHARED"])
        _CACHE["model"] = cnn_small()
        _CACHE["rng"] = np.random.default_rng(os.getpid())
    return _CACHE


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    st = _state()
    data, model, rng = st["data"], st["model"], st["rng"]
    torch.set_num_threads(1)
    cfg = msg.content["config"]
    cid = int(cfg["cid"])
    lr, bs, epochs = float(cfg["lr"]), int(cfg["batch-size"]), int(cfg["epochs"])
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    own = data.client_idx(cid)
    n = len(own)
    loss_sum = 0.0
    for _ in range(epochs):
        idx = torch.from_numpy(own[rng.permutation(n)])
        for s in range(0, n, bs):
            b = idx[s : s + bs]
            opt.zero_grad()
            loss = F.cross_entropy(model(data.x_train[b]), data.y_train[b])
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(b)
    reply = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord(
                {
                    "num-examples": n,
                    "cid": cid,
                    "own-partition": int(int(context.node_config["partition-id"]) == cid),
                    "train-loss": loss_sum / max(1, n * epochs),
                }
            ),
        }
    )
    return Message(reply, reply_to=msg)
