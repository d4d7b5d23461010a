"""Aggregation math on literal arrays, answers worked out by hand."""

import numpy as np
import pytest

from raysim.algorithms.aggregate import fedavg_step, scaffold_control_step, weighted_mean
from raysim.algorithms.base import ClientResult, LinearSum, UpdateTooLarge


def res(cid, n, delta, **extras):
    return ClientResult(
        client_id=cid,
        num_examples=n,
        delta=np.array(delta, dtype=np.float32),
        extras={k: np.array(v, dtype=np.float32) for k, v in extras.items()},
    )


def test_weighted_mean_by_hand():
    # (1*[1,2] + 3*[5,6]) / 4 = [16/4, 20/4] = [4, 5]
    out = weighted_mean([np.array([1.0, 2.0]), np.array([5.0, 6.0])], [1, 3])
    np.testing.assert_array_equal(out, np.array([4.0, 5.0], dtype=np.float32))
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="positive"):
        weighted_mean([np.ones(2)], [0])


def test_fedavg_step_is_the_example_weighted_mean_update():
    params = np.array([1.0, 1.0], dtype=np.float32)
    # clients with 10 and 30 examples: mean delta = (10*[1,0] + 30*[0,-2]) / 40 = [0.25, -1.5]
    total = LinearSum.of([res(0, 10, [1, 0]), res(1, 30, [0, -2])])
    np.testing.assert_allclose(fedavg_step(params, total), [1.25, -0.5])
    np.testing.assert_allclose(fedavg_step(params, total, central_lr=2.0), [1.5, -2.0])
    assert fedavg_step(params, None) is params


def test_presumming_in_any_grouping_gives_bit_identical_sums():
    rng = np.random.default_rng(0)
    results = [res(i, int(rng.integers(1, 500)), rng.normal(0, 1e-3, 1000)) for i in range(12)]
    flat = LinearSum.of(results)
    for groups in (
        [results[:5], results[5:]],
        [results[i::3] for i in range(3)],
        [[r] for r in results[::-1]],
    ):
        nested = LinearSum.of([LinearSum.of(g) for g in groups])
        np.testing.assert_array_equal(nested.fixed_delta, flat.fixed_delta)
        assert nested.num_examples == flat.num_examples and nested.num_clients == 12
    exact = sum(r.num_examples * r.delta.astype(np.float64) for r in results)
    np.testing.assert_allclose(flat.weighted_delta, exact, rtol=0, atol=12 * 2.0**-33)


def test_linear_sum_keeps_extras_as_plain_sums():
    total = LinearSum.of([res(0, 2, [1.0], c=[0.5]), res(1, 4, [1.0], c=[-1.5])])
    np.testing.assert_allclose(total.extras["c"], [-1.0])
    np.testing.assert_allclose(total.weighted_delta, [6.0])
    with pytest.raises(ValueError, match="extras"):
        LinearSum.of([res(0, 1, [1.0], c=[1.0]), res(1, 1, [1.0])])


def test_divergent_update_is_refused():
    with pytest.raises(UpdateTooLarge, match="diverged"):
        LinearSum.single(res(0, 1000, [1e5]))


def test_scaffold_control_step_by_hand():
    # c + (1/N) * sum(delta c_i) = [1, 1] + [2, -4] / 4 = [1.5, 0]
    out = scaffold_control_step(np.array([1.0, 1.0], np.float32), np.array([2.0, -4.0]), 4)
    np.testing.assert_allclose(out, [1.5, 0.0])
