"""Client and server halves of FedAvg, FedProx, SCAFFOLD and local-only, with a fake client."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysim.algorithms import build_algorithm, hooks
from raysim.algorithms.base import ClientTask, LinearSum
from raysim.models import build_model
from raysim.runtime.trainer import FitResult
from tests.helpers import aggregate, client_hparams, configure, run, setup_ctx


class FakeClient:
    """fit() moves every parameter by -0.1 per step for 4 steps, and records the hook."""

    def __init__(self, cid=0, n=10, broadcast=None):
        self.client_id, self.num_examples, self.state = cid, n, {}
        self.broadcast = broadcast or {}
        self.hooks = []

    def fit(self, params, *, grad_hook=None, **hp):
        self.hooks.append(grad_hook)
        return FitResult(
            params=(params - 0.4).astype(np.float32), loss=1.0, steps=4, num_examples=self.num_examples
        )


def ctx(n_params=3, clients=4, cohort=2):
    return setup_ctx(n_params, clients=clients, cohort=cohort)


def test_fedavg_samples_the_cohort_and_averages():
    algo = build_algorithm("fedavg")
    state = algo.init(np.zeros(3, np.float32), ctx())
    tasks = configure(algo, state, 1, [0, 1, 2, 3], cohort=2)
    assert len(tasks) == 2 and len({t.client_id for t in tasks}) == 2
    r = algo.client_update(tasks[0], np.zeros(3, np.float32), FakeClient())
    np.testing.assert_allclose(r.delta, -0.4)
    state, m = aggregate(algo, state, 1, [r])
    np.testing.assert_allclose(state.params, -0.4, rtol=1e-6)
    assert m["aggregated_clients"] == 1


def test_fedprox_hook_adds_mu_times_distance_to_the_global_model():
    center = np.array([1.0, 2.0], np.float32)
    hook = hooks.proximal(center, mu=0.5)
    w, g = torch.tensor([3.0, 2.0]), torch.zeros(2)
    hook(w, g)
    torch.testing.assert_close(g, torch.tensor([1.0, 0.0]))  # 0.5 * ([3, 2] - [1, 2])
    algo = build_algorithm("fedprox", {"mu": 0.0})
    c = FakeClient()
    algo.client_update(ClientTask(client_id=0, model_key="global", hparams=client_hparams(lr=0.1)), center, c)
    assert c.hooks == [None]  # mu = 0 is exactly FedAvg


def test_scaffold_option_ii_control_update_by_hand():
    algo = build_algorithm("scaffold")
    state = algo.init(np.zeros(3, np.float32), ctx())
    c_global = np.array([0.2, 0.0, -0.2], np.float32)
    client = FakeClient(broadcast={"control": c_global})
    task = ClientTask(
        client_id=0, model_key="global", hparams=client_hparams(lr=0.1), broadcast_keys=("control",)
    )
    r = algo.client_update(task, np.zeros(3, np.float32), client)
    # c_i+ = c_i - c + (x - y) / (K lr) = 0 - c + 0.4 / (4 * 0.1) = 1 - c
    np.testing.assert_allclose(client.state["control"], 1.0 - c_global, rtol=1e-6)
    np.testing.assert_allclose(r.extras["delta_control"], 1.0 - c_global, rtol=1e-6)
    # the drift correction c - c_i is what the hook adds to every gradient
    g = torch.zeros(3)
    client.hooks[0](torch.zeros(3), g)
    torch.testing.assert_close(g, torch.from_numpy(c_global))
    # server: c <- c + sum(delta c) / N with N = 4 clients
    state2, _ = aggregate(algo, state, 1, [LinearSum.of([r])])
    np.testing.assert_allclose(state2.control, (1.0 - c_global) / 4, rtol=1e-6)


def test_local_only_keeps_each_clients_model_to_itself():
    algo = build_algorithm("local")
    state = algo.init(np.zeros(2, np.float32), ctx(n_params=2))
    client = FakeClient()
    task = ClientTask(client_id=0, model_key="global", hparams=client_hparams(lr=0.1))
    algo.client_update(task, np.zeros(2, np.float32), client)
    algo.client_update(task, np.zeros(2, np.float32), client)
    np.testing.assert_allclose(client.state["params"], -0.8)  # trained twice from its own model
    new_state, _ = aggregate(algo, state, 1, [])
    np.testing.assert_array_equal(new_state.params, state.params)
    assert algo.personal_params({"global": np.zeros(2)}, client) is client.state["params"]


def test_unknown_algorithm_lists_the_valid_names():
    with pytest.raises(ValueError, match="fedavg"):
        build_algorithm("fedsgd")


def test_flat_sgd_matches_torch_sgd():
    """The trainer's one-op SGD step equals torch.optim.SGD with momentum and weight decay."""
    from raysim.models.flat import FlatModel, init_params
    from raysim.runtime.trainer import Trainer

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(64, 1, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 10, size=64)
    p0 = init_params("cnn-small", (1, 8, 8), 10, 0)
    tr = Trainer(model="cnn-small", input_shape=(1, 8, 8), num_classes=10, mean=(0.5,), std=(0.25,))
    out = tr.fit(
        p0, x, y, client_hparams(epochs=2, batch_size=16, lr=0.1, momentum=0.9, weight_decay=1e-3), seed=5
    )
    assert out.steps == 8 and out.num_examples == 64

    ref = FlatModel(build_model("cnn-small", (1, 8, 8), 10))
    ref.load(p0)
    params = list(ref.module.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
    order_rng = np.random.default_rng(5)
    xt = (torch.from_numpy(x).float() / 255.0 - 0.5) / 0.25
    for _ in range(2):
        order = order_rng.permutation(64)
        for s in range(0, 64, 16):
            b = order[s : s + 16]
            opt.zero_grad(set_to_none=False)
            torch.nn.functional.cross_entropy(ref.module(xt[b]), torch.from_numpy(y[b])).backward()
            opt.step()
    np.testing.assert_allclose(out.params, ref.read(), rtol=1e-4, atol=1e-5)


# -------------------------------------------- the baselines' pre-trained start (DSAC's M_base, eq. 9)


class FakeServerData:
    """fit() adds 1 per epoch (and records its arguments); evaluate() reports a fixed score."""

    def __init__(self, splits=("public", "test")):
        self._splits, self.fits = tuple(splits), []

    def splits(self):
        return self._splits

    def fit(self, params, split="public", *, hparams):
        self.fits.append((split, hparams))
        return FitResult(params=params + hparams.epochs, loss=0.5, steps=1, num_examples=10)

    def evaluate(self, params, split="public"):
        class Ev:
            accuracy, loss = 0.75, 0.8

        return Ev()


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "scaffold"])
def test_pretrained_start_is_dsacs_base_model(name):
    from dataclasses import replace

    data = FakeServerData()
    setup = replace(ctx(), data=data)
    algo = build_algorithm(name, {"init_from": "pretrained", "pretrain_epochs": 3, "pretrain_lr": 0.02})
    assert algo.traits.public_split and algo.traits.linear
    state = algo.init(np.zeros(3, np.float32), setup)
    np.testing.assert_array_equal(state.params, 3.0)
    dsac = build_algorithm("dsac", {"pretrain_epochs": 3, "pretrain_lr": 0.02, "num_submodels": 1})
    dstate = dsac.init(np.zeros(3, np.float32), setup)
    np.testing.assert_array_equal(state.params, dstate.params)  # the same M_base, by the same helper
    assert data.fits[0] == data.fits[1] == ("public", client_hparams(epochs=3, batch_size=4, lr=0.02))
    _, m = aggregate(algo, state, 1, [])
    assert m["base_test_accuracy"] == 0.75 and m["base_test_loss"] == 0.8  # round 0, every round
    random = build_algorithm(name)
    assert not random.traits.public_split
    rstate = random.init(np.zeros(3, np.float32), setup)
    np.testing.assert_array_equal(rstate.params, 0.0)
    assert "base_test_accuracy" not in aggregate(random, rstate, 1, [])[1]


def test_pretrained_start_without_a_public_split_is_a_clear_error(tmp_path):
    from dataclasses import replace

    from raysim.config import ConfigError
    from tests.conftest import tiny_config

    # the config error names the option that asked for the public split, for every algorithm that can
    for name, over, off in [
        ("fedavg", {"algorithm__init_from": "pretrained"}, "algorithm.init_from: random"),
        ("scaffold", {"algorithm__init_from": "pretrained"}, "algorithm.init_from: random"),
        ("dsac", {}, "algorithm.pretraining: false"),
        ("ascfl", {}, "algorithm.positive_incentive: false"),
    ]:
        with pytest.raises(ConfigError, match=rf"data.public_fraction > 0 \(e.g. 0.05\), or set {off}"):
            tiny_config(tmp_path, algorithm__name=name, **over)
    algo = build_algorithm("scaffold", {"init_from": "pretrained"})
    with pytest.raises(ValueError, match=r"public_fraction.*init_from: random"):
        algo.init(np.zeros(3, np.float32), replace(ctx(), data=FakeServerData(("test",))))
    with pytest.raises(ValueError, match="init_from"):
        build_algorithm("fedavg", {"init_from": "imagenet"})


def test_pretrained_fedavg_and_dsac_start_from_the_same_model_end_to_end(tmp_path):
    from tests.conftest import tiny_config

    scores = {}
    for name in ("fedavg", "scaffold", "dsac"):
        over = {"algorithm__init_from": "pretrained"} if name != "dsac" else {"algorithm__num_submodels": 3}
        cfg = tiny_config(
            tmp_path, algorithm__name=name, data__public_fraction=0.1, rounds__num_rounds=1, **over
        )
        r = run(cfg).rounds
        scores[name] = (float(r["base_test_accuracy"].iloc[0]), float(r["base_test_loss"].iloc[0]))
    assert scores["fedavg"] == scores["scaffold"] == scores["dsac"]
    assert 0.0 < scores["dsac"][0] <= 1.0
