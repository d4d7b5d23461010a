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
    assert "cluster_ari" not in got and "cluster_nmi" not in got and "cluster_clients" not in got


def test_tracking_against_truth() -> None:
    truth = np.array([0, 0, 1, 1, -1])
    # found relabels truth exactly (client 4 has no true group and is ignored): ARI = NMI = 1
    perfect = cluster_tracking(members(1, 1, 0, 0, 0), members(0, 0, 0, 1, 1), truth)
    assert perfect["cluster_ari"] == pytest.approx(1.0) and perfect["cluster_nmi"] == pytest.approx(1.0)
    # prev {0,1,2}{3,4} -> now {0,1}{2,3,4}: i=0,1 2/3; i=2 1/5; i=3,4 2/3
    assert perfect["cluster_stability"] == pytest.approx((4 * 2 / 3 + 1 / 5) / 5)
    assert perfect["num_clusters"] == 2.0
    assert perfect["cluster_clients"] == 4  # client 4 has no true group
    # crossing truth: {0,2}{1,3} against {0,1}{2,3}. Contingency all ones: sum C(n_ij,2) = 0,
    # rows and columns 2 x C(2,2) = 2, expected 2*2/C(4,2) = 2/3, max 2 -> ARI = -2/3 / (4/3) = -0.5;
    # the two partitions are independent -> NMI = 0
    cross = cluster_tracking(members(0, 1, 0, 1), None, truth)
    assert cross["cluster_ari"] == pytest.approx(-0.5) and cross["cluster_nmi"] == pytest.approx(0.0)
    # fewer than two clients with both a truth and a cluster: NaN, not a missing column
    few = cluster_tracking(members(0, -1, -1, -1, 1), None, truth)
    assert math.isnan(few["cluster_ari"]) and math.isnan(few["cluster_nmi"])
    assert few["cluster_clients"] == 1


# -- classification_metrics, clustering_agreement, mean_ci95 on hand-computed values -------------


def test_classification_metrics_by_hand() -> None:
    from raysim.metrics import classification_metrics

    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    got = classification_metrics(labels, preds, loss=0.5)
    # class 0: TP 1, FP 1 (the last example), FN 1 -> P 1/2, R 1/2, F1 1/2
    # class 1: TP 2, FP 1 (the second example), FN 0 -> P 2/3, R 1, F1 4/5
    # class 2: TP 1, FP 0, FN 1 -> P 1, R 1/2, F1 2/3
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert got["loss"] == 0.5
    assert got["macro_precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert got["macro_recall"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert got["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)


def test_classification_metrics_undefined_ratios_count_zero_and_no_examples_is_nan() -> None:
    from raysim.metrics import classification_metrics

    # class 1 is predicted but never true: precision 0/1 = 0, recall 0/0 -> 0, F1 0;
    # class 0: P 1, R 1/2, F1 2/3. A class in neither array (2, 3, ...) is not averaged at all.
    got = classification_metrics(np.array([0, 0]), np.array([0, 1]), loss=1.0)
    assert got["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
    assert got["macro_precision"] == pytest.approx((1 + 0) / 2)
    assert got["macro_recall"] == pytest.approx((1 / 2 + 0) / 2)
    empty = classification_metrics(np.array([], dtype=int), np.array([], dtype=int), loss=0.0)
    assert all(math.isnan(empty[k]) for k in ("accuracy", "loss", "macro_f1"))


def test_classification_metrics_match_scikit_learn_bit_for_bit() -> None:
    """The numpy macro scores are scikit-learn's (which the server no longer imports), to the bit,
    on random labels with missing, extra and never-predicted classes."""
    from sklearn.metrics import f1_score, precision_score, recall_score

    from raysim.metrics import classification_metrics

    rng = np.random.default_rng(7)
    for trial in range(300):
        n = int(rng.integers(1, 400))
        k = int(rng.integers(1, 12))
        labels = rng.integers(0, k, size=n)
        preds = np.where(rng.random(n) < rng.random(), labels, rng.integers(0, k + 2, size=n))
        got = classification_metrics(labels, preds, loss=0.0)
        want = {
            "macro_f1": f1_score(labels, preds, average="macro", zero_division=0),
            "macro_precision": precision_score(labels, preds, average="macro", zero_division=0),
            "macro_recall": recall_score(labels, preds, average="macro", zero_division=0),
        }
        for key, value in want.items():
            assert got[key] == float(value), (trial, key, got[key], value)


def test_hot_processes_do_not_import_heavy_libraries() -> None:
    """The hot processes import only what they use (each of these libraries costs every process
    that loads it tens to hundreds of MB; docs/scaling.md): the client and server actors' modules,
    and the server's per-round metrics, load neither scikit-learn, SciPy, pandas, pyarrow,
    matplotlib, optuna nor torchvision; the driver's run path none of them but pandas and pyarrow
    (it writes the run's tables)."""
    import subprocess
    import sys

    heavy = ("sklearn", "scipy", "matplotlib", "optuna", "torchvision")
    code = (
        "import importlib, json, sys\n"
        "import numpy as np\n"
        "for m in sys.argv[1].split(','): importlib.import_module(m)\n"
        "from raysim.metrics import classification_metrics\n"
        "classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), 0.5)\n"
        "print(json.dumps(sorted(b for b in sys.argv[2:] if b in sys.modules)))\n"
    )
    checks = {
        "actors.client,actors.server,raysim.runtime.host,raysim.runtime.server": (
            *heavy,
            "pandas",
            "pyarrow",
        ),
        "raysim.cli,raysim.runtime.experiment": heavy,
    }
    for modules, banned in checks.items():
        out = subprocess.run(
            [sys.executable, "-c", code, modules, *banned], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "[]", f"import {modules} loads {out.stdout.strip()}"


def test_clustering_agreement_by_hand() -> None:
    from raysim.metrics import clustering_agreement

    same = clustering_agreement(np.array([0, 0, 1, 1]), np.array([5, 5, 2, 2]))  # a relabelling
    assert same["ari"] == pytest.approx(1.0) and same["nmi"] == pytest.approx(1.0)
    # truth {0,1,2}{3,4,5}, found {0,1}{2,3,4,5}; contingency [[2, 1], [0, 3]], n = 6
    got = clustering_agreement(np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 1, 1]))
    # ARI: sum C(n_ij, 2) = 1 + 0 + 0 + 3 = 4; rows 2 x C(3,2) = 6; columns C(2,2) + C(4,2) = 7;
    # expected 6 * 7 / C(6,2) = 2.8; max (6 + 7) / 2 = 6.5 -> (4 - 2.8) / (6.5 - 2.8) = 12/37
    assert got["ari"] == pytest.approx(12 / 37)
    # NMI (arithmetic mean of the entropies): MI = 1/3 ln 2 - 1/6 ln 2 + 1/2 ln(3/2),
    # H(truth) = ln 2, H(found) = 1/3 ln 3 + 2/3 ln(3/2)
    mi = math.log(2) / 6 + math.log(1.5) / 2
    h_truth, h_found = math.log(2), math.log(3) / 3 + 2 * math.log(1.5) / 3
    assert got["nmi"] == pytest.approx(mi / ((h_truth + h_found) / 2))


def test_mean_ci95_by_hand() -> None:
    from raysim.metrics import mean_ci95

    # mean 2.5, sample sd sqrt(5/3), t(0.975, 3 dof) = 3.182446305284263 -> half = t * sd / 2
    mean, half = mean_ci95(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5
    assert half == pytest.approx(3.182446305284263 * math.sqrt(5 / 3) / 2)
    # NaN seeds are left out: [1, 3] -> mean 2, sd sqrt(2), t(0.975, 1) = 12.706204736174696
    mean, half = mean_ci95(np.array([1.0, np.nan, 3.0]))
    assert mean == 2.0 and half == pytest.approx(12.706204736174696 * math.sqrt(2) / math.sqrt(2))
    assert mean_ci95(np.array([0.7])) == (0.7, 0.0)  # one seed: no interval
    assert all(math.isnan(v) for v in mean_ci95(np.array([np.nan])))
