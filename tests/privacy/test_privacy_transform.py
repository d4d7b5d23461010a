"""pFedHT's transformation (eq. 8): its constraints hold numerically, and it is deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysim.data import load_dataset
from raysim.models.registry import mlp
from raysim.privacy.gradients import grad_distance, grad_norm, gradient_of
from raysim.privacy.transform import TransformConfig, transform


@pytest.fixture(scope="module")
def batch() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.set_num_threads(1)
    ds = load_dataset("digits", seed=0)
    x = torch.from_numpy(ds.x_train[:8].astype(np.float32) / 255.0)
    y = torch.from_numpy(ds.y_train[:8].copy())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = mlp((1, 8, 8), 10, hidden=32)
    return model, x, y


CFG = TransformConfig(h=2.0, epsilon=0.5, relative=True, steps=400, lr=0.05)


def test_transform_meets_the_gradient_distance_and_data_and_label_constraints(batch):
    model, x, y = batch
    r = transform(model, x, y, 10, config=CFG, seed=0)
    assert r.satisfied, (r.stop_reason, r.grad_distance, r.data_distance, r.label_gap)
    # recompute every constraint independently of the result's own fields
    g = gradient_of(model, x, y)
    g_virtual = gradient_of(model, r.x, r.soft_labels)
    rel = float(grad_distance(g_virtual, g) / grad_norm(g))
    assert rel <= CFG.epsilon
    assert rel == pytest.approx(r.grad_distance, rel=1e-5)
    assert ((r.x - x).reshape(8, -1).norm(dim=1) >= CFG.h).all()
    # eq. (2): the true class is the least likely entry of the virtual label
    assert (r.soft_labels.gather(1, y.view(-1, 1)).squeeze(1) <= r.soft_labels.min(dim=1).values + 1e-7).all()
    assert float(r.x.min()) >= 0.0 and float(r.x.max()) <= 1.0


def test_absolute_epsilon_is_the_relative_one_times_the_gradient_norm(batch):
    model, x, y = batch
    eps_abs = 0.5 * float(grad_norm(gradient_of(model, x, y)))
    r = transform(
        model, x, y, 10, config=TransformConfig(h=2.0, epsilon=eps_abs, relative=False, steps=400), seed=0
    )
    assert r.grad_ok
    assert float(grad_distance(gradient_of(model, r.x, r.soft_labels), gradient_of(model, x, y))) <= eps_abs


def test_transform_is_deterministic_and_leaves_the_model_alone(batch):
    model, x, y = batch
    before = [p.detach().clone() for p in model.parameters()]
    a = transform(model, x, y, 10, config=CFG, seed=5)
    b = transform(model, x, y, 10, config=CFG, seed=5)
    c = transform(model, x, y, 10, config=CFG, seed=6)
    assert torch.equal(a.x, b.x) and torch.equal(a.label_logits, b.label_logits)
    assert not torch.equal(a.x, c.x)
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)


def test_a_constraint_that_cannot_hold_is_reported_as_unmet(batch):
    # one sample: the true class must be the least likely, so the last-layer bias gradient differs
    # by at least 1 - softmax_i - 1/C from the real one; eps = 0.05 relative is infeasible
    model, x, y = batch
    r = transform(model, x[:1], y[:1], 10, config=TransformConfig(h=2.0, epsilon=0.05, steps=50), seed=0)
    assert not r.satisfied and not r.grad_ok and r.stop_reason == "steps"
