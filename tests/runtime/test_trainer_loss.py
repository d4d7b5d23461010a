"""`local.loss`: cross-entropy (default) or DSAC's eq. 2 squared error, from the config down to
the trainer's gradient step."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from raysim.algorithms.base import LocalHParams
from raysim.config import ConfigError, config_from_dict
from raysim.models.flat import FlatModel, init_params
from raysim.models.registry import build_model
from raysim.runtime.trainer import Trainer, training_loss
from tests.conftest import tiny_config
from tests.helpers import steps


def digits_batch(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:n] * 16).clip(0, 255).astype(np.uint8)[:, None], d.target[:n]


def test_squared_error_on_hand_computed_values():
    logits = torch.tensor([[0.0, 0.0], [np.log(3.0), 0.0]])
    y = torch.tensor([0, 1])
    # softmax rows (0.5, 0.5) and (0.75, 0.25); one-hot (1, 0) and (0, 1):
    # 0.25 + 0.25 = 0.5 and 0.5625 + 0.5625 = 1.125, mean 0.8125
    assert float(training_loss(logits, y, "squared_error")) == pytest.approx(0.8125)
    assert float(training_loss(logits, y, "cross_entropy")) == pytest.approx((np.log(2.0) + np.log(4.0)) / 2)


def test_one_sgd_step_on_squared_error_matches_torch_and_differs_from_cross_entropy():
    x, y = digits_batch()
    p0 = init_params("cnn-small", (1, 8, 8), 10, 0)
    tr = Trainer(model="cnn-small", input_shape=(1, 8, 8), num_classes=10, mean=(0.3,), std=(0.3,))
    out = tr.fit(p0, x, y, LocalHParams.of(epochs=1, batch_size=64, lr=0.5, loss="squared_error"), seed=1)
    assert out.steps == 1

    ref = FlatModel(build_model("cnn-small", (1, 8, 8), 10))
    ref.load(p0)
    xt = (torch.from_numpy(x).float() / 255.0 - 0.3) / 0.3
    probs = ref.module(xt).softmax(dim=1)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(y), 10).float()
    mse = ((probs - onehot) ** 2).sum(dim=1).mean()
    mse.backward()
    with torch.no_grad():
        for p in ref.module.parameters():
            p.sub_(0.5 * p.grad)
    np.testing.assert_allclose(out.params, ref.read(), rtol=1e-5, atol=1e-6)
    assert out.loss == pytest.approx(float(mse.detach()), rel=1e-5)  # the loss reported is the loss trained

    ce = tr.fit(p0, x, y, LocalHParams.of(epochs=1, batch_size=64, lr=0.5), seed=1)
    assert not np.allclose(ce.params, out.params, atol=1e-6)
    with pytest.raises(ValueError, match="unknown loss 'l1'; valid names: cross_entropy, squared_error"):
        tr.fit(p0, x, y, replace(LocalHParams.of(epochs=1, batch_size=64, lr=0.5), loss="l1"), seed=1)


def test_the_config_reaches_every_client_and_evaluation_stays_cross_entropy(tmp_path):
    def run(loss: str) -> pd.DataFrame:
        return steps(tiny_config(tmp_path, name=loss, local__loss=loss, rounds__num_rounds=2))[0]

    ce, se = run("cross_entropy"), run("squared_error")
    # a squared error of two probability vectors is at most 2; the untrained 10-class CE is ~2.3
    assert (se["train_loss"] < 1.0).all() and (ce["train_loss"] > 1.5).all()
    assert not np.allclose(se["test_loss"], ce["test_loss"])  # a different model was trained
    # test_loss is cross-entropy in both runs: the same scale (an untrained 10-class model: ~2.3)
    assert ((se["test_loss"] > 1.5) & (se["test_loss"] < 3.0)).all()


def test_an_unknown_loss_is_a_config_error_naming_the_key(tmp_path):
    raw = tiny_config(tmp_path).to_dict()
    raw["local"]["loss"] = "hinge"
    with pytest.raises(ConfigError, match=r"local\.loss"):
        config_from_dict(raw)


def test_the_same_images_train_to_the_same_bits_whatever_strides_their_array_has():
    """An array numpy built itself and the same array after pickling (what Ray's object store
    hands an actor) differ only in the stride of their size-1 channel axis; before every batch was
    made channels-last, that stride chose the convolution kernels and the results differed."""
    import pickle

    x, y = digits_batch(96)
    own = np.lib.stride_tricks.as_strided(
        x, x.shape, (x.strides[0], 0, *x.strides[2:])
    )  # like numpy's loaders
    shipped = pickle.loads(pickle.dumps(np.ascontiguousarray(x), protocol=5))
    assert own.strides != shipped.strides and np.array_equal(own, shipped)
    p0 = init_params("cnn-small", (1, 8, 8), 10, 0)
    tr = Trainer(model="cnn-small", input_shape=(1, 8, 8), num_classes=10, mean=(0.3,), std=(0.3,))
    a = tr.fit(p0, own, y, LocalHParams.of(epochs=2, batch_size=16, lr=0.1), seed=1)
    b = tr.fit(p0, shipped, y, LocalHParams.of(epochs=2, batch_size=16, lr=0.1), seed=1)
    np.testing.assert_array_equal(a.params, b.params)
    ea, eb = tr.evaluate(a.params, own, y), tr.evaluate(a.params, shipped, y)
    assert ea.loss == eb.loss and ea.correct == eb.correct
