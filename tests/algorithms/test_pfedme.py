"""pFedMe: the knobs, the Moreau inner/outer steps by hand, the beta-weighted server step, the
personalised model, a run on digits and save/restore through the runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from raysim.algorithms import ALGORITHMS, build_algorithm
from raysim.algorithms.base import GLOBAL, ClientResult, LinearSum
from raysim.algorithms.pfedme import MoreauSteps, PFedMe
from raysim.models import ParamLayout
from raysim.runtime.trainer import FitResult
from tests.conftest import tiny_config
from tests.helpers import aggregate, configure, local_knobs, run, setup_ctx

LAYOUT = ParamLayout(names=("w",), shapes=((1,),), offsets=(0,), size=1)


def ctx(clients=2):
    return setup_ctx(LAYOUT, clients=clients, num_rounds=3, local=local_knobs(lr=0.5, epochs=1, batch_size=4))


class QuadraticClient:
    """fit() runs ``steps`` SGD steps on f(theta) = 1/2 (theta - target)^2, calling the hook on
    every gradient as the trainer does."""

    def __init__(self, cid, target, steps, n=10):
        self.client_id, self.num_examples, self.state, self.broadcast = cid, n, {}, {}
        self.target, self.steps, self.lrs = target, steps, []

    def fit(self, params, *, hparams, grad_hook=None):
        self.lrs.append(hparams.lr)
        theta = torch.tensor(np.array(params, dtype=np.float32))
        for _ in range(self.steps):
            g = theta - self.target
            grad_hook(theta, g)
            theta = theta - hparams.lr * g
        return FitResult(params=theta.numpy(), loss=0.0, steps=self.steps, num_examples=self.num_examples)


def test_registered_with_the_papers_defaults_and_strict_knobs():
    assert ALGORITHMS["pfedme"] is PFedMe
    algo = build_algorithm("pfedme")
    assert (algo.p.lambda_, algo.p.inner_steps, algo.p.beta) == (15.0, 5, 1.0)
    assert algo.traits.linear and algo.traits.client_state
    with pytest.raises(ValidationError, match="personal_lr"):
        build_algorithm("pfedme", {"personal_lr": 0.2, "lambda_": 10})  # 0.2 * 10 >= 2
    with pytest.raises(ValidationError, match="lamda"):
        build_algorithm("pfedme", {"lamda": 15})
    with pytest.raises(ValidationError, match="inner_steps"):
        build_algorithm("pfedme", {"inner_steps": 0})


def test_inner_steps_and_local_update_by_hand():
    """K=2, lambda=1, eta=0.5, personal lr 0.5, f = 1/2 (theta - 4)^2, w = theta = 0, 3 steps:
    step 1: g = -4 + (0 - 0) = -4          theta = 2
    step 2: g = -2 + (2 - 0) =  0          theta = 2
    step 3: w <- 0 - 0.5 (0 - 2) = 1; g = -2 + (2 - 1) = -1, theta = 2.5
    finish: w <- 1 - 0.5 (1 - 2.5) = 1.75 (two local rounds)."""
    algo = build_algorithm("pfedme", {"lambda_": 1.0, "inner_steps": 2, "personal_lr": 0.5})
    state = algo.init(np.zeros(1, np.float32), ctx())
    (task,) = configure(algo, state, 1, [0], hparams={"lr": 0.5, "epochs": 1, "batch_size": 4})
    client = QuadraticClient(0, target=4.0, steps=3)
    r = algo.client_update(task, state.params, client)
    assert client.lrs == [0.5]  # the inner steps run at the personal lr
    np.testing.assert_allclose(r.delta, [1.75])
    np.testing.assert_allclose(client.state["theta"], [2.5])
    assert r.metrics["local_rounds"] == 2
    assert state.params[0] == 0.0  # the broadcast vector is not moved in place


def test_hook_keeps_a_private_centre():
    start = np.zeros(2, np.float32)
    hook = MoreauSteps(start, lam=1.0, eta=0.5, inner_steps=1)
    theta = torch.ones(2)
    hook(theta, torch.zeros(2))
    hook(theta, torch.zeros(2))  # the second step moves the centre: w = 0 - 0.5 (0 - 1)
    np.testing.assert_array_equal(start, [0, 0])
    np.testing.assert_allclose(hook.finish(np.ones(2, np.float32)), [0.75, 0.75])


def test_local_lr_times_lambda_must_stay_below_two():
    algo = build_algorithm("pfedme")  # lambda 15
    state = algo.init(np.zeros(1, np.float32), ctx())
    (task,) = configure(algo, state, 1, [0], hparams={"lr": 0.2})
    with pytest.raises(ValueError, match="local.lr"):
        algo.client_update(task, state.params, QuadraticClient(0, 1.0, 1))


def test_server_moves_beta_of_the_way_to_the_weighted_mean():
    algo = build_algorithm("pfedme", {"beta": 0.5})
    state = algo.init(np.array([1.0], np.float32), ctx())
    total = LinearSum.of(
        [
            ClientResult(client_id=0, num_examples=10, delta=np.array([1.0], np.float32)),
            ClientResult(client_id=1, num_examples=30, delta=np.array([-2.0], np.float32)),
        ]
    )
    new, m = aggregate(algo, state, 1, [total])
    # mean delta (10 * 1 + 30 * -2) / 40 = -1.25; w = 1 + 0.5 * -1.25
    np.testing.assert_allclose(new.params, [0.375])
    assert m["aggregated_clients"] == 2
    np.testing.assert_array_equal(algo.server_model(new), new.params)


def test_personal_model_is_theta_once_trained():
    algo = build_algorithm("pfedme")
    bc = {GLOBAL: np.array([3.0], np.float32)}
    client = QuadraticClient(0, 0.0, 1)
    np.testing.assert_array_equal(algo.personal_params(bc, client), [3.0])
    client.state["theta"] = np.array([7.0], np.float32)
    np.testing.assert_array_equal(algo.personal_params(bc, client), [7.0])


def test_end_to_end_on_digits(tmp_path):
    cfg = tiny_config(tmp_path, algorithm__name="pfedme", rounds__num_rounds=4, rounds__clients_per_round=6)
    rounds = run(cfg).rounds
    assert np.isfinite(rounds[["personal_accuracy", "test_accuracy", "train_loss"]]).all().all()
    assert rounds["personal_accuracy"].iloc[-1] > 0.2  # 10 classes: chance is 0.1
