"""FedRoD: the head's location, the label prior, the generic model trained under balanced softmax
and the personal head trained on the heads' summed logits (both checked against hand-written torch
loops on the real trainer), the personalised model, a run on digits and save/restore."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raysim.algorithms import ALGORITHMS, build_algorithm
from raysim.algorithms.base import GLOBAL, ClientResult, LinearSum
from raysim.algorithms.fedrod import HEAD, FedRoD, head_slices, log_prior
from raysim.models import FlatModel, ParamLayout, build_model, init_params
from raysim.runtime.trainer import Trainer
from tests.conftest import tiny_config
from tests.helpers import aggregate, configure, run, setup_ctx

# mlp on 4 inputs with hidden 200 would be large; a hand-sized head on 3 features instead
LAYOUT = ParamLayout(
    names=("body.weight", "fc.weight", "fc.bias"), shapes=((2,), (2, 3), (2,)), offsets=(0, 2, 8), size=10
)


def ctx(layout=LAYOUT, clients=2, classes=2):
    return setup_ctx(layout, clients=clients, num_classes=classes, num_rounds=3)


def test_registered_linear_with_client_state():
    assert ALGORITHMS["fedrod"] is FedRoD
    algo = build_algorithm("fedrod")
    assert algo.p.generic_loss == "balanced" and algo.traits.linear and algo.traits.client_state
    with pytest.raises(ValueError, match="generic_loss"):
        build_algorithm("fedrod", {"generic_loss": "focal"})


def test_head_slices():
    np.testing.assert_array_equal(head_slices(LAYOUT), [2, 10, 8, 10])
    layout = ParamLayout.of(build_model("cnn-small", (1, 8, 8), 10))
    np.testing.assert_array_equal(head_slices(layout), [4800, 6090, 6080, 6090])  # 128 x 10 + 10
    no_bias = ParamLayout(names=("a.weight", "fc.weight"), shapes=((2,), (3,)), offsets=(0, 2), size=5)
    with pytest.raises(ValueError, match="Linear head with a bias"):
        head_slices(no_bias)


def test_log_prior_floors_absent_classes():
    got = log_prior(np.array([0, 0, 1, 3]), 4)
    np.testing.assert_allclose(got, np.log([0.5, 0.25, 1e-8, 0.25]).astype(np.float32), rtol=1e-6)


class TrainerClient:
    """A ClientContext over the real Trainer and a fixed (x, y): full-batch steps, so a
    hand-written loop sees the same gradients."""

    def __init__(self, trainer, x, y):
        self.trainer, self.x, self.y = trainer, x, y
        self.client_id, self.num_examples, self.state, self.broadcast = 0, len(y), {}, {}

    def fit(self, params, *, hparams, grad_hook=None, buffers=None):
        return self.trainer.fit(params, self.x, self.y, hparams, seed=0, grad_hook=grad_hook)

    def evaluate(self, params, split="val", buffers=None):
        assert split == "train"
        return self.trainer.evaluate(params, self.x, self.y)


def reference(p0, x, y, *, classes, epochs, lr, wd, personal_epochs, personal_lr):
    """FedRoD's client step written out: (1) body + generic head by GD on CE(logits + log p),
    decay on the parameters themselves; (2) the personal head alone by GD on
    CE(generic logits + personal logits) with the new body and generic head frozen."""
    module = build_model("mlp", (4,), classes)
    fm = FlatModel(module)
    fm.load(p0)
    shift = torch.tensor(log_prior(y, classes))
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    for _ in range(epochs):
        fm.zero_grad()
        F.cross_entropy(module(xt) + shift, yt).backward()
        with torch.no_grad():
            fm.flat.sub_(lr * (fm.grad + wd * fm.flat))
    generic = fm.read()
    body, head = module[:-1], module[-1]
    with torch.no_grad():
        feats = body(xt)
        g_logits = head(feats)
    wp = torch.zeros(classes, feats.shape[1], requires_grad=True)
    bp = torch.zeros(classes, requires_grad=True)
    for _ in range(personal_epochs):
        loss = F.cross_entropy(g_logits + feats @ wp.T + bp, yt)
        gw, gb = torch.autograd.grad(loss, [wp, bp])
        with torch.no_grad():
            wp -= personal_lr * (gw + wd * wp)
            bp -= personal_lr * (gb + wd * bp)
    return generic, np.concatenate([wp.detach().numpy().ravel(), bp.detach().numpy()])


def test_client_step_matches_a_hand_written_fedrod_step():
    classes = 3
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 4)).astype(np.float32)
    y = np.array([0] * 8 + [1] * 4)  # class 2 absent: its logit is pushed ~18 down in BSM
    p0 = init_params("mlp", (4,), classes, seed=0)
    layout = ParamLayout.of(build_model("mlp", (4,), classes))
    algo = build_algorithm("fedrod", {"personal_epochs": 3, "personal_lr": 0.2})
    state = algo.init(p0, ctx(layout, classes=classes))
    hp = {"lr": 0.1, "epochs": 2, "batch_size": 12, "weight_decay": 0.05}
    (task,) = configure(algo, state, 1, [0], hparams=hp)
    client = TrainerClient(Trainer(model="mlp", input_shape=(4,), num_classes=classes), x, y)
    client.broadcast = algo.eval_broadcast(state)
    r = algo.client_update(task, p0, client)

    generic, personal = reference(
        p0, x, y, classes=classes, epochs=2, lr=0.1, wd=0.05, personal_epochs=3, personal_lr=0.2
    )
    np.testing.assert_allclose(p0 + r.delta, generic, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(client.state["personal_head"], personal, rtol=1e-4, atol=1e-6)
    assert np.abs(personal).max() > 1e-3  # the personal head did train
    # without BSM the generic step differs (so the test above can tell them apart)
    plain = build_algorithm("fedrod", {"generic_loss": "cross_entropy"})
    client2 = TrainerClient(client.trainer, x, y)
    client2.broadcast = client.broadcast
    r2 = plain.client_update(task, p0, client2)
    assert np.abs(r2.delta - r.delta).max() > 1e-3
    assert "log_prior" not in client2.state


def test_balanced_needs_the_cross_entropy_loss():
    algo = build_algorithm("fedrod")
    state = algo.init(np.zeros(10, np.float32), ctx())
    (task,) = configure(algo, state, 1, [0], hparams={"lr": 0.1, "loss": "squared_error"})
    client = TrainerClient(None, None, np.zeros(2, np.int64))
    client.broadcast = algo.eval_broadcast(state)
    with pytest.raises(ValueError, match="local.loss"):
        algo.client_update(task, state.params, client)


def test_personal_model_adds_the_personal_head_to_the_generic_one():
    algo = build_algorithm("fedrod")
    state = algo.init(np.arange(10, dtype=np.float32), ctx())
    bc = algo.eval_broadcast(state)
    client = TrainerClient(None, None, np.zeros(0, np.int64))
    np.testing.assert_array_equal(algo.personal_params(bc, client), np.arange(10))
    client.state["personal_head"] = np.full(8, 0.5, np.float32)
    np.testing.assert_array_equal(algo.personal_params(bc, client), [0, 1] + [v + 0.5 for v in range(2, 10)])
    np.testing.assert_array_equal(bc[GLOBAL], np.arange(10))  # the broadcast is not edited


def test_server_averages_body_and_generic_head():
    algo = build_algorithm("fedrod")
    state = algo.init(np.zeros(10, np.float32), ctx())
    total = LinearSum.of(
        [
            ClientResult(client_id=0, num_examples=10, delta=np.ones(10, np.float32)),
            ClientResult(client_id=1, num_examples=30, delta=np.full(10, 3.0, np.float32)),
        ]
    )
    new, _ = aggregate(algo, state, 1, [total])
    np.testing.assert_allclose(new.params, np.full(10, 2.5))  # (10 + 90) / 40
    np.testing.assert_array_equal(new.head, state.head)
    assert HEAD in algo.eval_broadcast(new)


def test_end_to_end_on_digits(tmp_path):
    cfg = tiny_config(tmp_path, algorithm__name="fedrod", rounds__num_rounds=4, rounds__clients_per_round=6)
    rounds = run(cfg).rounds
    assert np.isfinite(rounds[["personal_accuracy", "test_accuracy", "train_loss"]]).all().all()
    assert rounds["personal_accuracy"].iloc[-1] > 0.4  # 10 classes: chance is 0.1
    assert (rounds["bytes_up"] == 6 * 4 * 6090).all()  # body + generic head of cnn-small
