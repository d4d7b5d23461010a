"""DLG / iDLG on a tiny MLP and 8x8 digits: the attacks work on a plain gradient and DP hurts them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysim.data import load_dataset
from raysim.models.registry import mlp
from raysim.privacy.attack import AttackConfig, dlg, idlg, idlg_labels
from raysim.privacy.gradients import dp_gradient, gradient_of
from raysim.privacy.quality import image_quality


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    torch.set_num_threads(1)
    ds = load_dataset("digits", seed=0)
    return torch.from_numpy(ds.x_train[:200].astype(np.float32) / 255.0), torch.from_numpy(
        ds.y_train[:200].copy()
    )


def tiny(seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return mlp((1, 8, 8), 10, hidden=32)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_idlg_recovers_the_true_label_from_a_plain_gradient(digits, seed):
    x, y = digits
    k = 17 * seed + 3
    model = tiny(seed)
    g = gradient_of(model, x[k : k + 1], y[k : k + 1])
    assert idlg_labels(model, g, 1).tolist() == [int(y[k])]
    res = idlg(model, g, (1, 1, 8, 8), 10, config=AttackConfig(iterations=5), seed=seed)
    assert res.labels.tolist() == [int(y[k])]


def test_dp_gradient_without_noise_and_with_a_loose_clip_is_the_plain_gradient(digits):
    x, y = digits
    model = tiny(0)
    plain = gradient_of(model, x[:4], y[:4])
    dp = dp_gradient(model, x[:4], y[:4], clip=1e6, sigma=0.0, generator=torch.Generator().manual_seed(0))
    for a, b in zip(plain, dp, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_dlg_reconstructs_from_a_plain_gradient_far_better_than_from_a_heavily_noised_one(digits):
    x, y = digits
    model = tiny(0)
    cfg = AttackConfig(iterations=100)
    psnr_plain, psnr_dp = [], []
    for k in (0, 1):
        xb, yb = x[k : k + 1], y[k : k + 1]
        plain = gradient_of(model, xb, yb)
        noisy = dp_gradient(model, xb, yb, clip=1.0, sigma=1.0, generator=torch.Generator().manual_seed(k))
        r_plain = dlg(model, plain, (1, 1, 8, 8), 10, config=cfg, seed=k)
        r_dp = dlg(model, noisy, (1, 1, 8, 8), 10, config=cfg, seed=k)
        psnr_plain.append(image_quality(xb[0].numpy(), r_plain.x[0].numpy())[0])
        psnr_dp.append(image_quality(xb[0].numpy(), r_dp.x[0].numpy())[0])
    # measured: plain > 30 dB, sigma=1 below 10 dB
    assert min(psnr_plain) > 25.0
    assert min(psnr_plain) > max(psnr_dp) + 15.0


def test_attacks_are_deterministic_given_a_seed(digits):
    x, y = digits
    model = tiny(1)
    g = gradient_of(model, x[:1], y[:1])
    a = dlg(model, g, (1, 1, 8, 8), 10, config=AttackConfig(iterations=10), seed=3)
    b = dlg(model, g, (1, 1, 8, 8), 10, config=AttackConfig(iterations=10), seed=3)
    assert torch.equal(a.x, b.x) and a.loss == b.loss
