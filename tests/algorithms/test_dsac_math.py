"""DSAC pure math (raysim.algorithms.dsac_math) on literal arrays with hand-computed answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from raysim.algorithms import dsac_math as dm
from raysim.models import ParamLayout, build_model


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------ eq. (5)-(6) weights


def test_cluster_weights_by_hand() -> None:
    # raw α = |S_c|/Σ|S| · exp(-β Var): [3/4 · e^0, 1/4 · e^(-0.5·2)] = [0.75, 0.25/e] = [0.75, 0.0919699]
    raw = dm.cluster_weights([3, 1], [0.0, 2.0], beta=0.5, renormalise=False)
    np.testing.assert_allclose(raw, [0.75, 0.25 * math.exp(-1.0)], rtol=1e-12)
    # renormalised: divide by 0.75 + 0.0919699 = 0.8419699 -> [0.8907682, 0.1092318]
    w = dm.cluster_weights([3, 1], [0.0, 2.0], beta=0.5)
    np.testing.assert_allclose(w, [0.8907682, 0.1092318], atol=1e-7)
    assert w.sum() == pytest.approx(1.0)


def test_cluster_weights_beta_zero_is_size_proportional() -> None:
    np.testing.assert_allclose(dm.cluster_weights([3, 1], [7.0, 0.0], beta=0.0), [0.75, 0.25])


def test_cluster_weights_empty_clusters_get_zero() -> None:
    # the empty middle cluster's (irrelevant) variance must not matter; the others tie -> 1/2 each
    np.testing.assert_allclose(dm.cluster_weights([2, 0, 2], [1.0, 5.0, 1.0], beta=1.0), [0.5, 0.0, 0.5])
    np.testing.assert_array_equal(dm.cluster_weights([0, 0], [0.0, 0.0], beta=1.0), [0.0, 0.0])


def test_cluster_weights_do_not_underflow_for_model_sized_variances() -> None:
    # exp(-1e4) underflows to 0, but the normalised weights are softmax([-1e4, -1e4-1])
    # = [1/(1+e^-1), e^-1/(1+e^-1)] = [0.7310586, 0.2689414]
    w = dm.cluster_weights([1, 1], [1e4, 1e4 + 1], beta=1.0)
    np.testing.assert_allclose(w, [1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))], rtol=1e-12)
    np.testing.assert_array_equal(dm.cluster_weights([1, 1], [1e4, 1e4], beta=1.0, renormalise=False), [0, 0])


def test_cluster_weights_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="beta"):
        dm.cluster_weights([1], [0.0], beta=-1.0)
    with pytest.raises(ValueError, match="variances"):
        dm.cluster_weights([1], [-1.0], beta=1.0)
    with pytest.raises(ValueError, match="equal length"):
        dm.cluster_weights([1, 2], [0.0], beta=1.0)


# ---------------------------------------------------------------------------- eq. (3)-(6) merge


def test_clustered_merge_by_hand() -> None:
    # Clients: (0,0) w=1, (0,2) w=3 | (10,10) w=1. K-means, k=2 -> clusters {0,1}, {2}.
    # sizes [2,1]; Var: centroid (0,1), squared distances 1,1 -> 1; singleton 0.
    # β = ln 2: raw α = [2/3 · 1/2, 1/3 · 1] = [1/3, 1/3] -> normalised [1/2, 1/2].
    # Shares s_i = α_c / |S_c| = [1/4, 1/4, 1/2] (eq. 5 with plain eq. 4 centres); then the client
    # weights (line 19: decay after combining): c ∝ [1/4, 3/4, 1/2] -> [1/6, 1/2, 1/3].
    # merged = 1/6·(0,0) + 1/2·(0,2) + 1/3·(10,10) = (10/3, 1 + 10/3) = (3.3333333, 4.3333333).
    U = np.array([[0.0, 0.0], [0.0, 2.0], [10.0, 10.0]], dtype=np.float32)
    merged, info = dm.clustered_merge(U, [1.0, 3.0, 1.0], k=2, beta=math.log(2.0), rng=rng())
    assert merged is not None
    np.testing.assert_allclose(merged, [10 / 3, 13 / 3], rtol=1e-6)
    assert merged.dtype == np.float32
    np.testing.assert_array_equal(info.labels, [0, 0, 1])
    np.testing.assert_array_equal(info.sizes, [2, 1])
    np.testing.assert_allclose(info.variances, [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(info.alphas, [0.5, 0.5])
    np.testing.assert_allclose(info.coef, [1 / 6, 1 / 2, 1 / 3])
    assert info.k == 2
    # uniform weights: eq. (5) exactly, 1/2·(0,1) + 1/2·(10,10) = (5, 5.5)
    plain, _ = dm.clustered_merge(U, None, k=2, beta=math.log(2.0), rng=rng())
    np.testing.assert_allclose(plain, [5.0, 5.5], rtol=1e-6)


def test_clustered_merge_decay_discounts_a_client_alone_in_its_cluster() -> None:
    # k=5 with 2 clients -> k=2, each a singleton: sizes [1,1], Var 0 -> α [1/2, 1/2], shares 1/2 each.
    # The weights act after the combination (Algorithm 1 line 19), so a stale client (weight e^-1)
    # is discounted although it is alone in its cluster: merged = ((1,2) + e^-1 (3,6)) / (1 + e^-1).
    U = np.array([[1.0, 2.0], [3.0, 6.0]])
    w = [1.0, math.exp(-1.0)]
    merged, info = dm.clustered_merge(U, w, k=5, beta=0.5, rng=rng())
    expected = (U[0] + math.exp(-1.0) * U[1]) / (1 + math.exp(-1.0))
    np.testing.assert_allclose(merged, expected)
    assert info.k == 2


def test_clustered_merge_one_client_returns_its_update() -> None:
    u = np.array([[0.5, -1.5, 2.0]], dtype=np.float32)
    merged, info = dm.clustered_merge(u, [4.0], k=3, beta=1.0, rng=rng())
    np.testing.assert_array_equal(merged, u[0])
    np.testing.assert_array_equal(info.alphas, [1.0])


def test_clustered_merge_zero_clients_returns_none() -> None:
    merged, info = dm.clustered_merge(np.zeros((0, 4), np.float32), [], k=3, beta=1.0, rng=rng())
    assert merged is None and info.k == 0 and info.labels.shape == (0,)
    assert dm.clustered_merge([], None, k=3, beta=1.0, rng=rng())[0] is None


def test_clustered_merge_identical_updates_leave_an_empty_cluster() -> None:
    # one distinct update -> cluster 1 is empty (size 0, α 0); merged is that update, no NaN.
    U = np.tile(np.array([1.0, -2.0]), (3, 1))
    merged, info = dm.clustered_merge(U, None, k=2, beta=1.0, rng=rng())
    np.testing.assert_allclose(merged, [1.0, -2.0])
    np.testing.assert_array_equal(info.sizes, [3, 0])
    np.testing.assert_array_equal(info.alphas, [1.0, 0.0])


def test_clustered_merge_zero_weight_client_is_ignored() -> None:
    # (0,0) alone with weight 0 -> its coefficient is 0; the rest: ((10,10)+(10,12))/2 = (10, 11).
    U = np.array([[0.0, 0.0], [10.0, 10.0], [10.0, 12.0]])
    merged, info = dm.clustered_merge(U, [0.0, 1.0, 1.0], k=2, beta=0.1, rng=rng())
    np.testing.assert_allclose(merged, [10.0, 11.0])
    np.testing.assert_allclose(info.coef, [0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="sum to > 0"):
        dm.clustered_merge(U, [0.0, 0.0, 0.0], k=2, beta=0.1, rng=rng())


def test_span_coordinates_keep_every_distance() -> None:
    X = rng(3).normal(size=(6, 500))
    P = dm.span_coordinates(X)
    assert P.shape == (6, 6)

    def dists(A: np.ndarray) -> np.ndarray:
        return np.linalg.norm(A[:, None, :] - A[None, :, :], axis=2)

    np.testing.assert_allclose(dists(P), dists(X), atol=1e-9)
    small = rng(4).normal(size=(5, 3))  # d <= n: just centred
    np.testing.assert_allclose(dm.span_coordinates(small), small - small.mean(axis=0))


# ------------------------------------------------------------------ variance prior (our eq. 6 variant)


def test_shrunk_variances_by_hand() -> None:
    # n0 = 1, V0 = 2: singleton (1·0 + 2)/2 = 1; a tight pair (2·0.1 + 2)/3 = 0.7333; empty stays 0
    v = dm.shrunk_variances([1, 2, 0], [0.0, 0.1, 0.0], prior_variance=2.0, strength=1.0)
    np.testing.assert_allclose(v, [1.0, 2.2 / 3, 0.0])
    np.testing.assert_array_equal(dm.shrunk_variances([1, 2], [0.0, 0.1], 2.0, 0.0), [0.0, 0.1])
    with pytest.raises(ValueError, match="strength"):
        dm.shrunk_variances([1], [0.0], 1.0, -1.0)


def test_variance_prior_stops_rewarding_a_one_member_cluster() -> None:
    # four agreeing updates (spread 0.1 around (1, 0)) and one outlier at (-3, 0); k = 2.
    U = np.array([[1.1, 0.0], [0.9, 0.0], [1.0, 0.1], [1.0, -0.1], [-3.0, 0.0]])
    shares, info = dm.cluster_shares(U, 2, beta=1.0, rng=rng())
    out = info.labels[4]
    assert info.sizes[out] == 1 and info.variances[out] == 0.0
    # eq. (6) as written: the outlier has variance 0, so its per-client share is the largest
    assert shares[4] > shares[:4].max()
    prior, pinfo = dm.cluster_shares(U, 2, beta=1.0, rng=rng(), variance_prior=1.0)
    # with the prior (V0 = spread of all five = 2.564): the singleton's variance is V0/2 = 1.28 and
    # the tight cluster's (4·0.01 + 2.564)/5 = 0.52, so the agreeing clients now get more each
    v0 = float(np.sum((U - U.mean(axis=0)) ** 2)) / 5
    np.testing.assert_allclose(pinfo.variances[out], v0 / 2, rtol=1e-9)
    assert prior[4] < prior[:4].min()


def test_two_level_merge_combines_within_groups_then_across() -> None:
    # group 0: updates +1 and +3 (they disagree); group 1: two identical updates -1. k = 2, β = 1.
    U = np.array([[1.0], [3.0], [-1.0], [-1.0]])
    w = np.ones(4)
    total, deltas, _ = dm.two_level_merge(U, w, [0, 0, 1, 1], 2, 1.0, rng())
    # within group 0: two singletons (Var 0) -> plain mean 2; group 1 -> -1; equal group weights
    np.testing.assert_allclose(deltas[0], [2.0])
    np.testing.assert_allclose(deltas[1], [-1.0])
    np.testing.assert_allclose(total, [0.5])
    # one level over all four: K-means puts {1, 3} together (Var 1) against {-1, -1} (Var 0), and the
    # variance penalty moves weight from the +group to the -group: a different global update
    flat, _ = dm.clustered_merge(U, w, 2, 1.0, rng())
    e = math.exp(-1.0)
    np.testing.assert_allclose(flat, [(e * 4 - 2) / (2 * e + 2)])
    assert not np.allclose(flat, total)
    # a group's share is its decayed weight: halving group 1's weights moves the total toward group 0
    total2, _, _ = dm.two_level_merge(U, [1.0, 1.0, 0.5, 0.5], [0, 0, 1, 1], 2, 1.0, rng())
    np.testing.assert_allclose(total2, [(2 * 2 - 1) / 3])


# ---------------------------------------------------------------------------- eq. (14), (15), fairness


def test_temporal_decay_eq14() -> None:
    # γ = 0.05: 1·e^0 = 1; 2·e^(-0.5) = 1.2130613; 0.5·e^(-1) = 0.1839397
    out = dm.temporal_decay([1.0, 2.0, 0.5], [0, 10, 20], gamma=0.05)
    np.testing.assert_allclose(out, [1.0, 1.2130613, 0.1839397], atol=1e-7)
    np.testing.assert_allclose(dm.temporal_decay(3.0, [0, 1], gamma=0.0), [3.0, 3.0])
    with pytest.raises(ValueError, match="gamma"):
        dm.temporal_decay([1.0], [1], gamma=-0.1)
    with pytest.raises(ValueError, match="rounds_since_last"):
        dm.temporal_decay([1.0], [-1], gamma=0.1)


def test_submodel_data_weights_eq15() -> None:
    np.testing.assert_allclose(dm.submodel_data_weights([10, 30, 0, 60]), [0.1, 0.3, 0.0, 0.6])
    np.testing.assert_allclose(dm.submodel_data_weights([0, 0, 0, 0]), [0.25] * 4)
    with pytest.raises(ValueError):
        dm.submodel_data_weights([1, -1])


def test_jain_fairness() -> None:
    assert dm.jain_fairness([2.0, 2.0, 2.0, 2.0]) == pytest.approx(1.0)
    assert dm.jain_fairness([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)  # 1 / (4 · 1)
    assert dm.jain_fairness([1.0, 2.0, 3.0]) == pytest.approx(36 / 42)  # 6² / (3 · 14)
    assert dm.jain_fairness([0.0, 0.0]) == 1.0
    assert math.isnan(dm.jain_fairness([]))  # no clients: undefined
    from raysim.metrics import jain_index

    assert dm.jain_fairness is jain_index  # one implementation


# ------------------------------------------------------------------- eq. (1), (7) decomposition


@pytest.fixture(scope="module")
def cnn_layout() -> ParamLayout:
    return ParamLayout.of(build_model("cnn-small", (1, 28, 28), 10))


def _fake_layout(block_sizes: list[int]) -> ParamLayout:
    offsets = np.concatenate([[0], np.cumsum(block_sizes)[:-1]]).tolist()
    return ParamLayout(
        names=tuple(f"l{i}.weight" for i in range(len(block_sizes))),
        shapes=tuple((s,) for s in block_sizes),
        offsets=tuple(int(o) for o in offsets),
        size=int(sum(block_sizes)),
    )


def test_partition_of_cnn_small_by_hand(cnn_layout: ParamLayout) -> None:
    # Layer blocks: conv1 16·1·9+16 = 160, conv2 32·16·9+32 = 4640, fc 32·7·7·10+10 = 15690.
    p3 = dm.SubModelPartition.from_layout(cnn_layout, 3)
    assert p3.sizes == (160, 4640, 15690)
    assert p3.bounds == (0, 160, 4800, 20490)
    # K=2: [160 | 20330] has max 20330, [4800 | 15690] max 15690 -> the latter.
    p2 = dm.SubModelPartition.from_layout(cnn_layout, 2)
    assert p2.sizes == (4800, 15690)
    assert p2.block_names == (("0", "3"), ("7",))
    assert dm.SubModelPartition.from_layout(cnn_layout, 1).sizes == (20490,)


def test_partition_clamps_k_with_a_clear_warning(cnn_layout: ParamLayout) -> None:
    with pytest.warns(UserWarning, match="only 3 layer blocks"):
        p = dm.SubModelPartition.from_layout(cnn_layout, 5)
    assert p.k == 3
    with pytest.raises(ValueError, match="positive integer"):
        dm.SubModelPartition.from_layout(cnn_layout, 0)


def test_split_recombine_identity_on_a_real_layout(cnn_layout: ParamLayout) -> None:
    params = np.random.default_rng(0).normal(size=cnn_layout.size).astype(np.float32)
    for k in (1, 2, 3):
        part = dm.SubModelPartition.from_layout(cnn_layout, k)
        pieces = part.split(params)
        assert [q.size for q in pieces] == list(part.sizes)
        back = part.recombine(pieces)
        assert back.dtype == np.float32
        np.testing.assert_array_equal(back, params)
        masks = part.masks()
        np.testing.assert_array_equal(np.sum(masks, axis=0), np.ones(cnn_layout.size))  # tile exactly
        for m, q in zip(masks, pieces, strict=True):
            np.testing.assert_array_equal(params[m], q)


def test_recombine_keeps_base_for_untrained_submodels(cnn_layout: ParamLayout) -> None:
    part = dm.SubModelPartition.from_layout(cnn_layout, 3)
    base = np.zeros(cnn_layout.size, np.float32)
    new1 = np.full(4640, 7.0, np.float32)
    out = part.recombine([None, new1, None], base=base)
    assert np.all(out[160:4800] == 7.0) and np.all(out[:160] == 0.0) and np.all(out[4800:] == 0.0)
    assert np.all(base == 0.0)  # base untouched
    with pytest.raises(ValueError, match="no base"):
        part.recombine([None, new1, None])
    with pytest.raises(ValueError, match="shape"):
        part.recombine([None, new1[:3], None], base=base)


def _brute_force_min_max(sizes: list[int], k: int) -> int:
    best = None
    for cuts in itertools.combinations(range(1, len(sizes)), k - 1):
        edges = (0, *cuts, len(sizes))
        worst = max(sum(sizes[a:b]) for a, b in itertools.pairwise(edges))
        best = worst if best is None else min(best, worst)
    assert best is not None
    return best


@pytest.mark.parametrize(
    ("sizes", "k", "expected"),
    [
        ([5, 1, 1, 1, 5], 3, (5, 3, 5)),  # hand: the middle three form one sub-model
        ([1, 2, 3, 4, 5, 6, 7, 8, 9], 3, None),  # classic linear-partition instance, optimum 17
        ([10, 1, 1, 1, 1, 1, 1], 2, (10, 6)),
    ],
)
def test_partition_is_balanced_and_contiguous(
    sizes: list[int], k: int, expected: tuple[int, ...] | None
) -> None:
    part = dm.SubModelPartition.from_layout(_fake_layout(sizes), k)
    assert sum(part.sizes) == sum(sizes) and part.k == k
    assert max(part.sizes) == _brute_force_min_max(sizes, k)
    if expected is not None:
        assert part.sizes == expected
    else:
        assert max(part.sizes) == 17


# --------------------------------------------------------------------------------- assignment rule


def test_assign_submodels_by_hand() -> None:
    # n=2, K=5: p = ceil(5/2) = 3; starts (r + floor(j·5/2)) mod 5 = r, r+2.
    assert dm.assign_submodels([7, 3], 5, 0) == {3: (0, 1, 2), 7: (2, 3, 4)}
    assert dm.assign_submodels([7, 3], 5, 1) == {3: (1, 2, 3), 7: (0, 3, 4)}
    # n=3, K=2: p = 1; starts floor(0), floor(2/3)=0, floor(4/3)=1
    assert dm.assign_submodels([1, 2, 3], 2, 0) == {1: (0,), 2: (0,), 3: (1,)}
    assert dm.assign_submodels([], 4, 0) == {}


def test_assign_submodels_covers_every_submodel_every_round() -> None:
    for n in range(1, 13):
        for k in range(1, 10):
            for r in range(0, 11):
                for per_client in (None, 1, 2):
                    a = dm.assign_submodels(list(range(100, 100 + n)), k, r, per_client=per_client)
                    assert len(a) == n
                    covered = set().union(*a.values())
                    assert covered == set(range(k)), (n, k, r, per_client)
                    want = min(k, max(per_client or 1, math.ceil(k / n)))
                    assert all(len(v) == want for v in a.values())


def test_assign_submodels_rotates_and_rejects_duplicates() -> None:
    seen = {dm.assign_submodels([5], 4, r)[5] for r in range(4)}
    assert len(seen) == 1  # one client always gets all 4 sub-models
    starts = [dm.assign_submodels([1, 2, 3, 4], 4, r)[1] for r in range(4)]
    assert starts == [(0,), (1,), (2,), (3,)]
    with pytest.raises(ValueError, match="duplicates"):
        dm.assign_submodels([1, 1], 3, 0)
