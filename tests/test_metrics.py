"""raysim.metrics cluster tracking on literal memberships with hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raysim.metrics import cluster_stability, cluster_tracking


def members(*clusters: int) -> dict[int, int]:
    """Client i -> clusters[i]."""
    return dict(enumerate(clusters))


def test_identical_partitions_are_perfectly_stable() -> None:
    assert cluster_stability(members(0, 0, 1, 1, 2), members(0, 0, 1, 1, 2)) == 1.0


def test_relabelled_partitions_are_perfectly_stable() -> None:
    # the same grouping under other cluster ids: nobody changed company
    assert cluster_stability(members(0, 0, 1, 1, 2), members(7, 7, 3, 3, 0)) == 1.0


def test_one_cluster_split_in_two_halves_everyone_s_overlap() -> None:
    # every client: C_prev = {0,1,2,3}, C_now = its pair -> |pair| / 4 = 0.5
    assert cluster_stability(members(0, 0, 0, 0), members(0, 0, 1, 1)) == pytest.approx(0.5)


def test_uneven_move_by_hand() -> None:
    # prev {0,1,2}{3}, now {0,1}{2,3}:
    # i=0,1: {0,1} vs {0,1,2} -> 2/3; i=2: {2,3} vs {0,1,2} -> 1/4; i=3: {2,3} vs {3} -> 1/2
    got = cluster_stability(members(0, 0, 0, 1), members(5, 5, 6, 6))
    assert got == pytest.approx((2 / 3 + 2 / 3 + 1 / 4 + 1 / 2) / 4)  # 25/48


def test_only_clients_assigned_in_both_rounds_count() -> None:
    # client 2 was unassigned, client 3 is now: S = {0, 1}, grouped the same way -> 1
    assert cluster_stability(members(0, 0, -1, 1), members(1, 1, 0, -1)) == 1.0
    # no client assigned in both rounds: undefined
    assert math.isnan(cluster_stability(members(-1, 0), members(0, -1)))
    assert math.isnan(cluster_stability({}, members(0, 1)))


def test_tracking_without_truth_or_previous_round() -> None:
    got = cluster_tracking(members(0, 2, 2, -1), None, None)
    assert got["num_clusters"] == 2.0  # ids 0 and 2; -1 is no cluster
    assert math.isnan(got["cluster_stability"])
    assert "cluster_ari" not in got and "cluster_nmi" not in got


def test_tracking_against_truth() -> None:
    truth = np.array([0, 0, 1, 1, -1])
    # found relabels truth exactly (client 4 has no true group and is ignored): ARI = NMI = 1
    perfect = cluster_tracking(members(1, 1, 0, 0, 0), members(0, 0, 0, 1, 1), truth)
    assert perfect["cluster_ari"] == pytest.approx(1.0) and perfect["cluster_nmi"] == pytest.approx(1.0)
    # prev {0,1,2}{3,4} -> now {0,1}{2,3,4}: i=0,1 2/3; i=2 1/5; i=3,4 2/3
    assert perfect["cluster_stability"] == pytest.approx((4 * 2 / 3 + 1 / 5) / 5)
    assert perfect["num_clusters"] == 2.0
    # crossing truth: {0,2}{1,3} against {0,1}{2,3}. Contingency all ones: sum C(n_ij,2) = 0,
    # rows and columns 2 x C(2,2) = 2, expected 2*2/C(4,2) = 2/3, max 2 -> ARI = -2/3 / (4/3) = -0.5;
    # the two partitions are independent -> NMI = 0
    cross = cluster_tracking(members(0, 1, 0, 1), None, truth)
    assert cross["cluster_ari"] == pytest.approx(-0.5) and cross["cluster_nmi"] == pytest.approx(0.0)
    # fewer than two clients with both a truth and a cluster: NaN, not a missing column
    few = cluster_tracking(members(0, -1, -1, -1, 1), None, truth)
    assert math.isnan(few["cluster_ari"]) and math.isnan(few["cluster_nmi"])
