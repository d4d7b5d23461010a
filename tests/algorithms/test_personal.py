"""FedPer and the personal-part helpers: ranges, the head never uploaded, the base averaged by
hand, runs on digits (head personal with cnn-small, Q/K/V personal with vit-tiny), and the
transformer through FedAvg/FedProx."""

from __future__ import annotations

import numpy as np
import pytest

from raysim.algorithms import ALGORITHMS, build_algorithm
from raysim.algorithms.base import GLOBAL, ClientResult, LinearSum
from raysim.algorithms.personal import (
    PERSONAL_RANGES,
    FedPer,
    head_mask,
    mask_to_ranges,
    ranges_to_mask,
)
from raysim.models import ParamLayout, build_model
from raysim.runtime.trainer import FitResult
from tests.conftest import tiny_config
from tests.helpers import aggregate, configure, run, setup_ctx

# three tensors: "a" (3 values), "b" (2), "head" (2): the last module is the head
LAYOUT = ParamLayout(
    names=("a.weight", "b.weight", "head.weight"), shapes=((3,), (2,), (2,)), offsets=(0, 3, 5), size=7
)


def ctx(layout=LAYOUT, clients=4):
    return setup_ctx(layout, clients=clients, num_rounds=3)


class AddClient:
    """fit() adds ``step`` to every parameter."""

    def __init__(self, cid, broadcast, step, n=10):
        self.client_id, self.num_examples, self.state, self.broadcast = cid, n, {}, broadcast
        self.step, self.fitted = step, []

    def fit(self, params, *, grad_hook=None, **hp):
        self.fitted.append(params.copy())
        return FitResult(
            params=(params + self.step).astype(np.float32), loss=1.0, steps=1, num_examples=self.num_examples
        )


def test_ranges_round_trip():
    mask = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1, 1], dtype=bool)
    ranges = mask_to_ranges(mask)
    np.testing.assert_array_equal(ranges, [[1, 3], [5, 6], [7, 10]])
    np.testing.assert_array_equal(ranges_to_mask(ranges, 10), mask)
    assert mask_to_ranges(np.zeros(4, bool)).shape == (0, 2)
    with pytest.raises(ValueError, match="outside"):
        ranges_to_mask(np.array([[2, 9]]), 5)


def test_head_mask_is_the_last_module():
    np.testing.assert_array_equal(head_mask(LAYOUT), [0, 0, 0, 0, 0, 1, 1])
    layout = ParamLayout.of(build_model("cnn-small", (1, 28, 28), 10))
    assert head_mask(layout).sum() == 32 * 7 * 7 * 10 + 10


def test_registered_linear_with_client_state():
    assert ALGORITHMS["fedper"] is FedPer
    algo = build_algorithm("fedper")
    assert algo.p.personal == "head" and algo.traits.linear and algo.traits.client_state


def test_client_keeps_its_head_and_uploads_only_the_base():
    algo = build_algorithm("fedper")
    state = algo.init(np.zeros(7, np.float32), ctx())
    (task,) = configure(algo, state, 1, [2])
    assert task.broadcast_keys == (PERSONAL_RANGES,)
    bc = algo.eval_broadcast(state)
    client = AddClient(2, bc, step=1.0)
    r = algo.client_update(task, bc[GLOBAL], client)
    np.testing.assert_array_equal(r.delta, np.ones(5))  # the base's 5 values: the head never leaves
    np.testing.assert_array_equal(client.state["personal"], [1.0, 1.0])
    # round 2: the client starts from the new base and ITS head
    base = np.full(7, 0.5, np.float32)
    bc2 = {GLOBAL: base, PERSONAL_RANGES: bc[PERSONAL_RANGES]}
    client.broadcast = bc2
    r = algo.client_update(task, base, client)
    np.testing.assert_array_equal(client.fitted[-1], [0.5] * 5 + [1.0, 1.0])
    np.testing.assert_array_equal(client.state["personal"], [2.0, 2.0])
    np.testing.assert_array_equal(algo.personal_params(bc2, client), [0.5] * 5 + [2.0, 2.0])
    # a client that never trained is scored with the shared initial head
    np.testing.assert_array_equal(algo.personal_params(bc2, AddClient(3, bc2, 0.0)), base)


def test_base_is_averaged_by_examples_and_the_global_head_never_moves():
    algo = build_algorithm("fedper")
    state = algo.init(np.arange(7, dtype=np.float32), ctx())
    pre = LinearSum.of(
        [
            ClientResult(client_id=0, num_examples=10, delta=np.array([1, 0, 0, 0, 4], np.float32)),
            ClientResult(client_id=1, num_examples=30, delta=np.array([0, 0, 2, 0, 0], np.float32)),
        ]
    )
    new, m = aggregate(algo, state, 1, [pre])
    # (10 [1,0,0,0,4] + 30 [0,0,2,0,0]) / 40 = [0.25, 0, 1.5, 0, 1]
    np.testing.assert_allclose(new.params, [0.25, 1, 3.5, 3, 5, 5, 6], rtol=1e-6)
    assert m["aggregated_clients"] == 2
    assert algo.server_model(new) is None  # no single global model


def test_end_to_end_on_digits_heads_stay_on_the_actors(tmp_path):
    cfg = tiny_config(tmp_path, algorithm__name="fedper", rounds__num_rounds=3, rounds__clients_per_round=6)
    rounds, exp = run(cfg).unpack("rounds", "exp")
    assert np.isfinite(rounds["personal_accuracy"]).all() and rounds["test_accuracy"].isna().all()
    assert np.isfinite(rounds["personal_accuracy_worst10"]).all()
    # every client's upload is the base only: n_params - head, 4 bytes each
    layout = ParamLayout.of(build_model("cnn-small", (1, 8, 8), 10))
    base_bytes = 4 * int((~head_mask(layout)).sum())
    assert (rounds["bytes_up"] == 6 * base_bytes).all()


def test_qkv_personal_with_vit_tiny_runs(tmp_path):
    """pFedHT without its hypernetwork (Table 4's "ours*"): Q/K/V stay on the client."""
    cfg = tiny_config(
        tmp_path,
        algorithm__name="fedper",
        algorithm__personal="qkv",
        model__name="vit-tiny",
        rounds__num_rounds=2,
    )
    rounds, _ = run(cfg).unpack("rounds", "exp")
    assert np.isfinite(rounds["personal_accuracy"]).all()
    assert (rounds["bytes_up"] == 3 * 4 * (18218 - 6336)).all()  # vit-tiny on 8x8 minus its Q/K/V


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_fedavg_and_fedprox_train_the_transformer(tmp_path, name):
    rounds, _ = run(
        tiny_config(tmp_path, algorithm__name=name, model__name="vit-tiny", rounds__num_rounds=2)
    ).unpack("rounds", "exp")
    assert np.isfinite(rounds[["test_accuracy", "personal_accuracy", "train_loss"]]).all().all()
