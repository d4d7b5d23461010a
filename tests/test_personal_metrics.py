"""Personalised-FL metrics by hand: worst-10% client accuracy and RTA/MRTA (paper 003, eq. 24)."""

from __future__ import annotations

import numpy as np
import pytest

from raysim.metrics import mean_relative_test_accuracy, relative_test_accuracy, worst_fraction_mean


def test_worst_ten_percent_is_the_mean_of_the_lowest_clients():
    accs = np.array([0.9, 0.1, 0.8, 0.3, 0.7, 0.6, 0.5, 0.95, 0.85, 0.75, 0.65, 0.2])
    # 12 clients: ceil(1.2) = 2 worst -> (0.1 + 0.2) / 2
    assert worst_fraction_mean(accs, 0.1) == pytest.approx(0.15)
    assert worst_fraction_mean(accs[:10], 0.1) == pytest.approx(0.1)  # 10 clients: the single worst
    assert worst_fraction_mean([0.4, np.nan, 0.6], 0.5) == pytest.approx(0.4)  # NaN ignored, 1 of 2
    assert worst_fraction_mean(accs, 1.0) == pytest.approx(accs.mean())
    assert np.isnan(worst_fraction_mean([], 0.1))
    with pytest.raises(ValueError, match="fraction"):
        worst_fraction_mean(accs, 0.0)


def test_rta_and_mrta_by_hand():
    # eq. 24: 0.8987 / 0.8435 (the paper's CIFAR-10 pathological 50-client pair, Tables 1-2)
    assert float(relative_test_accuracy(0.8987, 0.8435)) == pytest.approx(1.06544, abs=1e-5)
    np.testing.assert_allclose(relative_test_accuracy([0.6, 0.9], [0.5, 0.9]), [1.2, 1.0])
    # MRTA: mean over paired experiments (1.2 + 1.0 + 0.5) / 3
    assert mean_relative_test_accuracy(np.array([0.6, 0.9, 0.4]), np.array([0.5, 0.9, 0.8])) == pytest.approx(
        0.9
    )
    with pytest.raises(ValueError, match="> 0"):
        relative_test_accuracy(0.5, 0.0)
    with pytest.raises(ValueError, match="paired"):
        mean_relative_test_accuracy(np.array([0.5]), np.array([0.5, 0.6]))
