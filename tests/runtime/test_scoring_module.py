"""``trainer.scoring_module``: evaluation's forward with each ReLU -> MaxPool2d pair run pool-first,
which must give bit-identical logits (ReLU commutes exactly with max), so every score, and every
IFCA cluster choice made from them, is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysim.models.flat import init_params
from raysim.runtime.trainer import Trainer, scoring_module

IMAGE_MODELS = [
    ("cnn-small", (1, 28, 28)),
    ("cnn-bn", (1, 28, 28)),
    ("cnn-mcmahan", (1, 28, 28)),
    ("cnn-cifar", (3, 32, 32)),
]


@pytest.mark.parametrize(("name", "shape"), IMAGE_MODELS)
def test_pool_first_logits_are_bit_identical(name, shape):
    tr = Trainer(
        model=name, input_shape=shape, num_classes=10, mean=(0.5,) * shape[0], std=(0.25,) * shape[0]
    )
    assert tr.scorer is not tr.fm.module  # every built-in CNN has a ReLU -> MaxPool2d pair
    assert [type(m).__name__ for m in tr.scorer].count("MaxPool2d") >= 2
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, *shape), dtype=np.uint8)
    for seed in range(3):
        tr.fm.load(init_params(name, shape, 10, seed))
        tr.fm.module.eval()
        # a large spread makes negative pre-activations and whole pooled windows of them common
        tr.fm.flat.mul_(3.0)
        with torch.no_grad():
            xb = tr._inputs(x, 0)
            want, got = tr.fm.module(xb), tr.scorer(xb)
        assert torch.equal(want, got)


def test_evaluate_matches_the_plain_module_and_shares_its_parameters():
    shape = (1, 28, 28)
    tr = Trainer(model="cnn-small", input_shape=shape, num_classes=10, mean=(0.5,), std=(0.25,))
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(120, *shape), dtype=np.uint8)
    y = rng.integers(0, 10, size=120)
    for seed in range(3):
        p = init_params("cnn-small", shape, 10, seed)
        ev = tr.evaluate(p, x, y, batch_size=50)  # loads p: the scorer must see it
        with torch.no_grad():
            logits = torch.cat([tr.fm.module(tr._inputs(x[s : s + 50], 0)) for s in range(0, 120, 50)])
        loss = sum(
            float(
                torch.nn.functional.cross_entropy(
                    logits[s : s + 50], torch.tensor(y[s : s + 50]), reduction="sum"
                )
            )
            for s in range(0, 120, 50)
        )
        assert ev.loss == loss / 120
        assert np.array_equal(ev.preds, logits.argmax(1).numpy())


def test_modules_without_the_pair_are_left_alone():
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2), torch.nn.ReLU())
    assert scoring_module(plain) is plain
    indexed = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(2, return_indices=True))
    assert scoring_module(indexed) is indexed
    other = torch.nn.Conv2d(1, 1, 3)
    assert scoring_module(other) is other
