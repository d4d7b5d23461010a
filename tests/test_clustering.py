"""raysim.clustering on tiny literal arrays with hand-computed answers (DSAC eq. 4, 6, 11, 12)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raysim import clustering as cl

SQRT_HALF = 1.0 / math.sqrt(2.0)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------- kmeans

# Two blobs, interleaved so the labels are not trivially sorted.
BLOBS = np.array(
    [[0.0, 0.0], [10.0, 10.0], [0.2, 0.1], [10.1, 9.9], [-0.1, 0.2], [9.8, 10.2]],
)


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_recovers_two_separated_blobs_exactly(seed: int) -> None:
    res = cl.kmeans(BLOBS, 2, rng(seed))

    # Canonical labels: point 0's blob is cluster 0.
    np.testing.assert_array_equal(res.labels, [0, 1, 0, 1, 0, 1])
    # Centroids by hand: blob A x = (0 + 0.2 - 0.1)/3 = 0.0333.., y = (0 + 0.1 + 0.2)/3 = 0.1;
    # blob B x = (10 + 10.1 + 9.8)/3 = 9.9666.., y = (10 + 9.9 + 10.2)/3 = 10.0333..
    np.testing.assert_allclose(res.centroids, [[0.1 / 3, 0.1], [29.9 / 3, 30.1 / 3]], atol=1e-12)
    # Inertia: A: (1/30)^2+0.1^2 + (1/6)^2+0 + (2/15)^2+0.1^2 = 0.0111+0.0278+0.0278 = 1/15;
    # B: offsets (1/30,-1/30), (2/15,-2/15), (-1/6,1/6) -> 2/900 + 32/900 + 50/900 = 84/900.
    assert res.inertia == pytest.approx(1 / 15 + 84 / 900, abs=1e-12)
    np.testing.assert_array_equal(res.sizes, [3, 3])


def test_kmeans_is_deterministic_under_a_seed() -> None:
    X = np.random.default_rng(7).normal(size=(30, 4))
    a = cl.kmeans(X, 3, rng(1))
    b = cl.kmeans(X, 3, rng(1))
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_kmeans_k_one_is_the_mean() -> None:
    X = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0]])
    res = cl.kmeans(X, 1, rng())
    np.testing.assert_array_equal(res.labels, [0, 0, 0])
    # mean (1, 1); squared distances 1+1, 1+1, 0+4 -> 8
    np.testing.assert_allclose(res.centroids, [[1.0, 1.0]])
    assert res.inertia == pytest.approx(8.0)


def test_kmeans_more_clusters_than_distinct_points_gives_empty_clusters() -> None:
    X = np.array([[1.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    res = cl.kmeans(X, 3, rng())
    # 2 distinct points -> 2 non-empty clusters, the third empty (size 0), no NaN anywhere.
    np.testing.assert_array_equal(res.labels, [0, 0, 1])
    np.testing.assert_array_equal(res.sizes, [2, 1, 0])
    assert res.inertia == 0.0
    assert np.all(np.isfinite(res.centroids))
    np.testing.assert_array_equal(res.centroids[2], res.centroids[0])  # documented filler


def test_kmeans_all_identical_points() -> None:
    res = cl.kmeans(np.ones((4, 3)), 3, rng())
    np.testing.assert_array_equal(res.sizes, [4, 0, 0])
    np.testing.assert_allclose(res.centroids, np.ones((3, 3)))


def test_kmeans_no_points_and_bad_input() -> None:
    res = cl.kmeans(np.zeros((0, 2)), 2, rng())
    assert res.labels.shape == (0,) and res.centroids.shape == (2, 2) and res.inertia == 0.0
    with pytest.raises(ValueError, match="NaN"):
        cl.kmeans(np.array([[0.0], [np.nan]]), 1, rng())
    with pytest.raises(ValueError, match="2-D"):
        cl.kmeans(np.zeros(3), 1, rng())
    with pytest.raises(ValueError, match="positive integer"):
        cl.kmeans(np.zeros((3, 1)), 0, rng())


def test_kmeans_empty_cluster_rule_and_canonical_labels_on_random_duplicates() -> None:
    # Documented rule: with m distinct rows, exactly max(0, k - m) clusters are empty; labels appear
    # in first-appearance order; each point sits at (one of) its nearest centroid(s).
    g = np.random.default_rng(11)
    for trial in range(150):
        X = g.integers(0, 3, size=(int(g.integers(1, 9)), 2)).astype(float)
        m = np.unique(X, axis=0).shape[0]
        k = int(g.integers(1, m + 3))
        res = cl.kmeans(X, k, rng(trial))
        assert int((res.sizes == 0).sum()) == max(0, k - m), (X, k)
        first_seen = list(dict.fromkeys(res.labels.tolist()))
        assert first_seen == list(range(len(first_seen)))
        d2 = ((X[:, None, :] - res.centroids[None, :, :]) ** 2).sum(axis=2)
        np.testing.assert_allclose(d2[np.arange(len(X)), res.labels], d2.min(axis=1), atol=1e-9)
        assert np.all(np.isfinite(res.centroids))


def test_fill_empty_reseeds_with_farthest_point_of_a_multi_member_cluster() -> None:
    # cluster 2 is empty; cluster 1 is a singleton (never a donor even though its distance 9 is largest),
    # so the farthest member of cluster 0 (index 1, distance 5) moves to cluster 2.
    labels = np.array([0, 0, 0, 1])
    own = np.array([0.1, 5.0, 0.2, 9.0])
    np.testing.assert_array_equal(cl._fill_empty(labels, own, 3), [0, 2, 0, 1])
    np.testing.assert_array_equal(labels, [0, 0, 0, 1])  # input untouched


# ------------------------------------------------------------------------------------ spherical kmeans


def test_spherical_kmeans_groups_by_direction_not_magnitude() -> None:
    # Euclidean k-means would pair the two small points; direction pairs (1,0)~(3,0), (0,2)~(0,5).
    X = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 5.0]])
    res = cl.spherical_kmeans(X, 2, rng())
    np.testing.assert_array_equal(res.labels, [0, 1, 0, 1])
    np.testing.assert_allclose(res.centroids, [[1.0, 0.0], [0.0, 1.0]], atol=1e-12)
    assert res.inertia == pytest.approx(0.0, abs=1e-12)


def test_spherical_kmeans_separates_big_and_small_points_of_two_directions() -> None:
    X = np.array([[1.0, 0.0], [0.0, 1.0], [100.0, 1.0], [1.0, 100.0]])
    res = cl.spherical_kmeans(X, 2, rng(3))
    np.testing.assert_array_equal(res.labels, [0, 1, 0, 1])
    np.testing.assert_allclose(np.linalg.norm(res.centroids, axis=1), [1.0, 1.0])
    # Euclidean k-means groups by magnitude instead, which is the point of the spherical variant.
    assert not np.array_equal(cl.kmeans(X, 2, rng(3)).labels, [0, 1, 0, 1])


def test_spherical_kmeans_zero_row_and_empty_cluster() -> None:
    X = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    res = cl.spherical_kmeans(X, 2, rng())
    # one direction -> one cluster and one empty; the zero row joins cluster 0 and costs 1 - 0 = 1.
    np.testing.assert_array_equal(res.labels, [0, 0, 0])
    np.testing.assert_array_equal(res.sizes, [3, 0])
    assert res.inertia == pytest.approx(1.0)
    assert np.all(np.isfinite(res.centroids))


# ------------------------------------------------------------------------------ eq. (11) and eq. (12)


def test_cosine_similarity_matrix_by_hand_with_a_zero_row() -> None:
    X = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [0.0, 0.0]])
    S = cl.cosine_similarity_matrix(X)
    # (1,0)·(1,1) / (1·√2) = 1/√2; (1,0)·(0,2) = 0; (1,1)·(0,2)/(√2·2) = 1/√2; zero row -> 0 everywhere.
    expected = np.array(
        [
            [1.0, SQRT_HALF, 0.0, 0.0],
            [SQRT_HALF, 1.0, SQRT_HALF, 0.0],
            [0.0, SQRT_HALF, 1.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    np.testing.assert_allclose(S, expected, atol=1e-15)
    assert np.array_equal(S, S.T)


def test_cosine_kmedoids_medoid_of_three_vectors_eq12() -> None:
    # a=(1,0), b=(1,1), c=(0,1). Summed similarity to the others: a: 1/√2 + 0 = 0.707,
    # b: 1/√2 + 1/√2 = 1.414, c: 0.707. Eq. (12) cost Σ(1-S_uh): b 0.586 < a = c 1.293 -> medoid b.
    X = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    labels, medoids = cl.cosine_kmedoids(X, 1, rng())
    np.testing.assert_array_equal(labels, [0, 0, 0])
    np.testing.assert_array_equal(medoids, [1])


def test_cosine_kmedoids_two_groups() -> None:
    # Angles: 0°, 5.7° | 90°, 84.3°, 87.1°. In group 2, (0.05,1) sits between the others -> medoid 4.
    # Group 1 has two members with equal sums -> lowest index 0.
    X = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [0.05, 1.0]])
    for seed in range(4):
        labels, medoids = cl.cosine_kmedoids(X, 2, rng(seed))
        np.testing.assert_array_equal(labels, [0, 0, 1, 1, 1])
        np.testing.assert_array_equal(medoids, [0, 4])


def test_cosine_kmedoids_empty_group_and_zero_rows() -> None:
    X = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    labels, medoids = cl.cosine_kmedoids(X, 2, rng())
    # one direction: group 0 with medoid 1 (never the zero row), group 1 empty (-1).
    np.testing.assert_array_equal(labels, [0, 0, 0])
    np.testing.assert_array_equal(medoids, [1, -1])
    labels, medoids = cl.cosine_kmedoids(np.zeros((3, 2)), 2, rng())
    np.testing.assert_array_equal(labels, [0, 0, 0])
    np.testing.assert_array_equal(medoids, [0, -1])


# ------------------------------------------------------------------------------------- hierarchical


def test_hierarchical_heights_and_gap_by_hand() -> None:
    # a=(1,0), b=(2,0.1), c=(0,1). Cosine distances: d_ab = 1 - 2/√4.01 = 0.0012484,
    # d_ac = 1, d_bc = 1 - 0.1/√4.01 = 0.9500625. Average linkage merges a,b at 0.0012484, then
    # {a,b} with c at (1 + 0.9500625)/2 = 0.9750312. Gaps: k=3: 0.00125 - 0; k=2: 0.9738 -> k = 2.
    X = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0]])
    k, Z = cl.hierarchical_num_groups(X, max_groups=3)
    d_ab = 1 - 2 / math.sqrt(4.01)
    d_bc = 1 - 0.1 / math.sqrt(4.01)
    np.testing.assert_allclose(Z[:, 2], [d_ab, (1 + d_bc) / 2], atol=1e-12)
    assert k == 2


def test_hierarchical_suggests_three_for_three_direction_clusters() -> None:
    X = np.array(
        [
            [1.0, 0.01, 0.0],
            [0.0, 3.0, 0.02],
            [2.0, 0.0, 0.02],
            [0.01, 0.0, 1.0],
            [0.0, 1.0, 0.0],
            [5.0, 0.03, 0.01],
            [0.0, 0.02, 4.0],
            [0.03, 2.0, 0.0],
            [0.02, 0.01, 2.0],
        ]
    )
    k, Z = cl.hierarchical_num_groups(X, max_groups=5)
    assert k == 3
    assert Z.shape == (8, 4)
    assert cl.hierarchical_num_groups(X, max_groups=2)[0] == 2  # clamped
    assert cl.hierarchical_num_groups(X, max_groups=5, threshold=0.5)[0] == 3
    assert cl.hierarchical_num_groups(X, max_groups=5, threshold=1.5)[0] == 1


def test_hierarchical_one_and_two_points() -> None:
    k, Z = cl.hierarchical_num_groups(np.array([[1.0, 2.0]]), max_groups=4)
    assert k == 1 and Z.shape == (0, 4)
    assert cl.hierarchical_num_groups(np.array([[1.0, 0.0], [0.0, 1.0]]), max_groups=4)[0] == 2
    assert cl.hierarchical_num_groups(np.array([[1.0, 1.0], [2.0, 2.0]]), max_groups=4)[0] == 1
    assert cl.hierarchical_num_groups(np.array([[1.0, 0.0], [0.0, 1.0]]), max_groups=1)[0] == 1
    with pytest.raises(ValueError, match="max_groups"):
        cl.hierarchical_num_groups(np.eye(2), max_groups=0)


# ------------------------------------------------------------------------------------ cluster stats


def test_cluster_sizes_and_variances_eq6() -> None:
    X = np.array([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0], [1.0, 1.0]])
    labels = np.array([0, 0, 1, 2])
    sizes, var = cl.cluster_sizes_and_variances(X, labels, 4)
    # cluster 0: centroid (1,0), squared distances 1 and 1 -> mean 1; singletons 0; cluster 3 empty.
    np.testing.assert_array_equal(sizes, [2, 1, 1, 0])
    np.testing.assert_allclose(var, [1.0, 0.0, 0.0, 0.0])
    _, var_pc = cl.cluster_sizes_and_variances(X, labels, 4, per_coordinate=True)
    np.testing.assert_allclose(var_pc, [0.5, 0.0, 0.0, 0.0])  # divided by d = 2
    with pytest.raises(ValueError, match="labels"):
        cl.cluster_sizes_and_variances(X, np.array([0, 0, 1, 4]), 4)


def test_silhouette_by_hand_and_degenerate_cases() -> None:
    X = np.array([[0.0], [1.0], [10.0], [11.0]])
    # s = 1 - a/b: point 0: a=1, b=(10+11)/2 -> 1-1/10.5; point 1: b=(9+10)/2 -> 1-1/9.5; symmetric.
    expected = ((1 - 1 / 10.5) + (1 - 1 / 9.5)) / 2
    assert cl.silhouette(X, np.array([0, 0, 1, 1])) == pytest.approx(expected)
    assert cl.silhouette(X, np.array([0, 0, 0, 0])) == 0.0
    assert cl.silhouette(X, np.array([0, 1, 2, 3])) == 0.0
    same = cl.silhouette(np.zeros((4, 2)), np.array([0, 0, 1, 1]))
    assert math.isfinite(same)


def test_intra_cluster_distance() -> None:
    X = np.array([[0.0, 0.0], [6.0, 8.0], [100.0, 100.0]])
    labels = np.array([0, 0, 1])
    # centroid (3,4): both members at distance 5
    assert cl.intra_cluster_distance(X, labels, 0) == pytest.approx(5.0)
    assert cl.intra_cluster_distance(X, labels, 1) == 0.0
    assert cl.intra_cluster_distance(X, labels, 7) == 0.0


def test_dbscan_labels() -> None:
    X = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [20.0]])
    np.testing.assert_array_equal(cl.dbscan(X, eps=0.15, min_samples=2), [0, 0, 0, 1, 1, -1])
    assert cl.dbscan(np.zeros((0, 1)), eps=0.1, min_samples=2).shape == (0,)
