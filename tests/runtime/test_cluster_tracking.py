"""Cluster tracking in the runtime: clusters.parquet, the uniform rounds.parquet columns, resume,
and the membership heat-map of `raysim report` (serial backend, digits)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from raysim.algorithms.base import ClientColumns
from raysim.cli import app
from raysim.metrics import Membership
from raysim.runtime.logger import RunLogger
from raysim.runtime.server import ClusterRows, cluster_membership, cluster_rows
from tests.conftest import tiny_config
from tests.helpers import experiment, resume, run

NEW_COLS = ["num_clusters", "cluster_stability", "cluster_ari", "cluster_nmi", "cluster_clients"]


def ifca_config(tmp_path, **over):
    base = {
        "algorithm__name": "ifca",
        "data__partition": "rotation",
        "data__num_groups": 2,
        "rounds__num_rounds": 3,
    }
    return tiny_config(tmp_path, **{**base, **over})


def deterministic(df: pd.DataFrame) -> pd.DataFrame:
    """Everything but wall-clock timings, in a fixed column order."""
    return df[sorted(c for c in df.columns if not c.endswith("_s"))]


def test_cluster_rows_from_annotations():
    notes = {
        3: {"cluster": 2.0, "weight": 0.5},
        0: {"cluster": float("nan")},  # no cluster (as -1)
        1: {"weight": 1.0},  # not annotated with a cluster: no row
        2: {"cluster": 4.0, "cluster_model_key": "group/4"},  # the algorithm names the model
    }
    membership = cluster_membership(notes)
    assert membership == {0: -1, 2: 4, 3: 2} and list(membership) == [0, 2, 3]
    block = cluster_rows(5, membership, notes, np.array([1, 0, -1, 0]))
    assert block.rows() == [
        {"round": 5, "client_id": 0, "cluster": -1, "model_key": "", "true_group": 1},
        {"round": 5, "client_id": 2, "cluster": 4, "model_key": "group/4", "true_group": -1},
        {"round": 5, "client_id": 3, "cluster": 2, "model_key": "cluster/2", "true_group": 0},
    ]
    # column-wise: arrays, not a dict per client
    assert block.cluster.dtype == np.int64 and block.model_key.dtype == object and len(block) == 3
    assert "true_group" not in cluster_rows(5, membership, notes, None).rows()[0]


def test_client_columns_read_as_the_dicts_they_stand_for():
    cols = ClientColumns.of({"cluster": np.array([1.0, -1.0, 0.0]), "weight": np.array([0.5, 0.0, 2.0])})
    assert cols == {
        0: {"cluster": 1.0, "weight": 0.5},
        1: {"cluster": -1.0, "weight": 0.0},
        2: {"cluster": 0.0, "weight": 2.0},
    }
    assert type(cols[2]["cluster"]) is float and 7 not in cols and list(cols) == [0, 1, 2]
    # the cohort's lookups: {} for a client that is not annotated
    assert cols.rows_for([2, 7, 0]) == [{"cluster": 0.0, "weight": 2.0}, {}, {"cluster": 1.0, "weight": 0.5}]
    with pytest.raises(ValueError, match="'weight' has 2 values for 3 clients"):
        ClientColumns.of({"cluster": np.zeros(3), "weight": np.zeros(2)})
    with pytest.raises(ValueError, match="sorted and distinct"):
        ClientColumns.of({"cluster": np.zeros(2)}, client_id=[3, 1])


def test_a_plug_ins_dict_annotations_keep_their_values_and_missing_keys():
    notes = {5: {"cluster": 1, "tag": "a"}, 2: {"tag": "b"}, 9: {"cluster": 2.5}}
    cols = ClientColumns.from_mapping(notes)
    assert list(cols.client_id) == [2, 5, 9] and list(cols.columns) == ["tag", "cluster"]
    assert cols == notes and cols.rows_for([9, 2]) == [{"cluster": 2.5}, {"tag": "b"}]
    assert type(cols[5]["cluster"]) is int  # as given, not cast
    assert cluster_membership(notes) == {5: 1, 9: 2}


def test_cluster_stability_at_scale_needs_no_client_by_client_matrix():
    rng = np.random.default_rng(0)
    n = 200_000  # a 200,000 x 200,000 comparison would need 40 GB
    prev = Membership(client_id=np.arange(n), cluster=rng.integers(-1, 4, n))
    cur = Membership(client_id=np.arange(n), cluster=np.where(prev.cluster >= 0, 3 - prev.cluster, 0))
    from raysim.metrics import cluster_stability, cluster_tracking

    assert cluster_stability(prev, cur) == 1.0  # relabelled, same grouping
    got = cluster_tracking(cur, prev, rng.integers(0, 4, n))
    assert got["num_clusters"] == 4.0 and got["cluster_clients"] == float(n)


def test_the_logged_cluster_columns_make_the_frame_of_one_dict_a_row(tmp_path):
    notes = ClientColumns.of(
        {
            "cluster": np.array([0.0, np.nan, 1.0, 3.0]),
            "cluster_model_key": np.array(["g", None, "g", "h"], dtype=object),
        },
        client_id=[1, 4, 6, 8],
    )
    truth = np.array([0, 1, 1, 0, 2, 0, 1])
    blocks = [cluster_rows(t, cluster_membership(notes), notes, truth) for t in (1, 2)]
    assert isinstance(blocks[0], ClusterRows)
    logger = RunLogger(tmp_path)
    for t, b in enumerate(blocks, 1):
        logger.log_round({"round": float(t)}, [], b)
    logger.flush()
    want = pd.DataFrame([r for b in blocks for r in b.rows()])
    got = pd.read_parquet(tmp_path / "clusters.parquet")
    pd.testing.assert_frame_equal(got, pd.read_parquet(_written(want, tmp_path)), check_exact=True)
    assert list(got["model_key"][:4]) == ["g", "", "g", "h"] and list(got["true_group"][:4]) == [1, 2, 1, -1]
    logger.reload(1)  # a resumed run keeps round 1's rows, as columns
    assert len(logger.clusters_frame()) == 4 and set(logger.clusters_frame()["round"]) == {1}


def _written(df: pd.DataFrame, tmp_path) -> object:
    path = tmp_path / "want.parquet"
    df.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def ifca_run(tmp_path_factory):
    return run(ifca_config(tmp_path_factory.mktemp("ifca"))).run_dir


def test_clusters_parquet_has_one_row_per_annotated_client_per_round(ifca_run):
    clusters = pd.read_parquet(ifca_run / "clusters.parquet")
    assert list(clusters.columns) == ["round", "client_id", "cluster", "model_key", "true_group"]
    # IFCA annotates all 6 clients every round (-1 until a client first chooses a cluster)
    assert clusters.groupby("round")["client_id"].apply(sorted).to_dict() == {
        t: list(range(6)) for t in (1, 2, 3)
    }
    assert clusters["cluster"].dtype == np.int64 and clusters["cluster"].isin([-1, 0, 1]).all()
    assert (clusters["cluster"] >= 0).sum() > 0
    assigned = clusters[clusters["cluster"] >= 0]
    assert (assigned["model_key"] == "cluster/" + assigned["cluster"].astype(str)).all()
    assert (clusters[clusters["cluster"] < 0]["model_key"] == "").all()
    # the ground truth is the partition's
    part = pd.read_parquet(ifca_run / "partition.parquet").set_index("client_id")["group"]
    np.testing.assert_array_equal(clusters["true_group"], part.loc[clusters["client_id"]].to_numpy())
    assert set(part) == {0, 1}
    # the same cluster as clients.parquet gives a client that trained that round
    clients = pd.read_parquet(ifca_run / "clients.parquet")
    trained = clients[clients["participated"] & ~clients["dropped"]]
    merged = trained.merge(clusters, on=["round", "client_id"], suffixes=("", "_tracked"))
    assert len(merged) == len(trained) == 9
    np.testing.assert_array_equal(merged["cluster"].astype(np.int64), merged["cluster_tracked"])


def test_rounds_parquet_gets_the_uniform_cluster_columns(ifca_run):
    rounds = pd.read_parquet(ifca_run / "rounds.parquet")
    clusters = pd.read_parquet(ifca_run / "clusters.parquet")
    for col in NEW_COLS:
        assert col in rounds, col
    assert rounds["cluster_ari"].between(-1, 1).all() and rounds["cluster_nmi"].between(0, 1).all()
    # one column per metric: IFCA's own copies (ari, nmi) are gone
    assert "ari" not in rounds and "nmi" not in rounds
    # cluster_clients: the clients ARI covers, those that chose a cluster so far (IFCA: sampled ones)
    covered = clusters[clusters["cluster"] >= 0].groupby("round")["client_id"].nunique()
    np.testing.assert_array_equal(rounds["cluster_clients"], covered.loc[rounds["round"]].to_numpy())
    assert rounds["cluster_clients"].is_monotonic_increasing
    per_round = clusters[clusters["cluster"] >= 0].groupby("round")["cluster"].nunique()
    np.testing.assert_array_equal(rounds["num_clusters"], per_round.loc[rounds["round"]].to_numpy())
    stab = rounds["cluster_stability"]
    assert np.isnan(stab.iloc[0]) and stab.iloc[1:].between(0, 1).all()


def test_fedavg_writes_no_cluster_tracking(tmp_path):
    run_dir = run(
        tiny_config(tmp_path, rounds__num_rounds=1, data__partition="rotation", data__num_groups=2)
    ).run_dir
    assert (run_dir / "rounds.parquet").is_file() and (run_dir / "clients.parquet").is_file()
    assert not (run_dir / "clusters.parquet").exists()
    assert not set(NEW_COLS) & set(pd.read_parquet(run_dir / "rounds.parquet").columns)


def test_resume_gives_the_uninterrupted_runs_files(tmp_path):
    # forced CFL splits: memberships change between rounds, so a resumed run that lost the
    # previous round's membership (or kept the crashed round's rows) differs
    cfg = ifca_config(
        tmp_path,
        algorithm__name="cfl",
        algorithm__eps1=1e6,
        algorithm__eps2=0.0,
        algorithm__min_rounds_before_split=0,
        algorithm__separation_check=False,
        rounds__num_rounds=4,
        rounds__checkpoint_every=2,
        rounds__clients_per_round=6,
    )
    full = run(cfg).run_dir

    first = experiment(cfg)
    first.run(until=3)  # checkpoint at round 2; round 3 is written, then lost with the "crash"
    first.close()
    assert len(pd.read_parquet(first.run_dir / "clusters.parquet").groupby("round")) == 3
    resumed = resume(first.run_dir)
    assert resumed.next_round == 3
    resumed.run()
    resumed.close()

    want = pd.read_parquet(full / "rounds.parquet")
    got = pd.read_parquet(first.run_dir / "rounds.parquet")
    assert want["cluster_stability"].iloc[1:].notna().all()
    assert (want["cluster_stability"].iloc[1:] < 1).any()  # memberships did change
    pd.testing.assert_frame_equal(deterministic(want), deterministic(got), check_exact=True)
    pd.testing.assert_frame_equal(
        pd.read_parquet(full / "clusters.parquet"),
        pd.read_parquet(first.run_dir / "clusters.parquet"),
        check_exact=True,
    )


def test_report_draws_the_membership_heat_map(ifca_run, tmp_path):
    r = CliRunner().invoke(app, ["report", str(ifca_run)])
    assert r.exit_code == 0, r.output
    png = ifca_run / "plots" / "clusters.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    import matplotlib.pyplot as plt

    img = plt.imread(png)
    assert img.shape[0] > 300 and img.shape[1] > 300
    colours = np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 20  # cells, strip, curves and text, not a blank canvas
    for curve in ("cluster_ari", "cluster_nmi", "cluster_stability"):
        assert (ifca_run / "plots" / f"{curve}.png").is_file(), curve

    # a run without clusters gets no heat-map
    plain = run(tiny_config(tmp_path, rounds__num_rounds=1)).run_dir
    assert CliRunner().invoke(app, ["report", str(plain)]).exit_code == 0
    assert (plain / "plots" / "test_accuracy.png").is_file()
    assert not (plain / "plots" / "clusters.png").exists()


def test_dsac_groups_are_tracked_as_clusters_of_one_global_model(tmp_path):
    cfg = tiny_config(
        tmp_path,
        algorithm__name="dsac",
        algorithm__cluster_every=1,
        algorithm__max_groups=2,
        algorithm__pretraining=False,
        data__partition="rotation",
        data__num_groups=2,
        rounds__num_rounds=2,
        rounds__personal_eval=False,
    )
    d = run(cfg).run_dir
    clusters = pd.read_parquet(d / "clusters.parquet")
    assert sorted(set(clusters["round"])) == [1, 2]
    grouped = clusters[clusters["cluster"] >= 0]
    assert len(grouped) > 0 and set(grouped["model_key"]) == {"global"}
    rounds = pd.read_parquet(d / "rounds.parquet")
    assert rounds["cluster_nmi"].between(0, 1).any()


def test_an_ifca_run_leads_with_its_headline(ifca_run):
    """summary.json, summary.md and the report say what to read for a clustered run: ARI/NMI over
    the clients scored so far, the number of clusters, personalised accuracy, and what its
    test_accuracy means (issue 24)."""
    import json

    summary = json.loads((ifca_run / "summary.json").read_text())
    rounds = pd.read_parquet(ifca_run / "rounds.parquet")
    assert summary["family"] == "clustered" and summary["num_clients"] == 6
    head = summary["headline"]
    assert list(head) == [
        "personal_accuracy",
        "cluster_ari",
        "cluster_nmi",
        "cluster_clients",
        "num_clusters",
    ]
    for name, value in head.items():
        assert value == pytest.approx(rounds[name].dropna().iloc[-1]), name
    assert "largest cluster's model" in summary["test_accuracy_means"]

    assert CliRunner().invoke(app, ["report", str(ifca_run)]).exit_code == 0
    md = (ifca_run / "plots" / "summary.md").read_text()
    row = next(line for line in md.splitlines() if "| clustered |" in line)
    assert row.startswith("| tiny | ifca | clustered |")
    assert f"ARI {head['cluster_ari']:.4f}" in row and f"pers acc {head['personal_accuracy']:.4f}" in row
    assert f"(over {int(head['cluster_clients'])} of 6 clients)" in row
    assert "**test_accuracy** (ifca): the largest cluster's model" in md
    assert "Plots not drawn" not in md  # every plot had something to draw


def test_a_global_run_says_which_plots_it_skipped_and_why(tmp_path):
    d = run(tiny_config(tmp_path, rounds__num_rounds=1, rounds__personal_eval=False)).run_dir
    assert CliRunner().invoke(app, ["report", str(d)]).exit_code == 0
    md = (d / "plots" / "summary.md").read_text()
    notes = md[md.index("### Plots not drawn") :].split("###")[1]
    assert "`personal_accuracy.png`: rounds.personal_eval is false" in notes
    assert (
        "`cluster_ari.png`, `cluster_nmi.png`, `cluster_stability.png`, `clusters.png`: fedavg puts no client"
        in notes
    )
    for drawn in ("test_accuracy.png", "train_loss.png"):
        assert (d / "plots" / drawn).is_file() and drawn not in notes
    assert "| fedavg | global | acc " in md and "**test_accuracy** (fedavg): the one global model" in md


@pytest.mark.parametrize("name", ["ifca", "cfl", "ascfl", "dsac", "genetic-cfl"])
def test_the_clustered_algorithms_annotate_column_wise(tmp_path, name):
    """No dict per client: every in-tree algorithm that annotates clients returns arrays, and its
    round's cluster rows reach the driver as arrays (issue 21: 10^5 clients a round)."""
    # the server-side steps that need a public split: on for AS-CFL, off for DSAC
    extra = {"ascfl": {"data__public_fraction": 0.05}, "dsac": {"algorithm__pretraining": False}}.get(
        name, {}
    )
    exp = experiment(ifca_config(tmp_path, algorithm__name=name, rounds__personal_eval=False, **extra))
    try:
        exp.prepare()
        report = exp.step()
        server = exp.backend.server
        notes = server.algorithm.client_annotations(server.state)
    finally:
        exp.close()
    assert isinstance(notes, ClientColumns) and list(notes.client_id) == list(range(6))
    assert all(isinstance(col, np.ndarray) for col in notes.columns.values())
    assert isinstance(report.clusters, ClusterRows) and report.clusters.cluster.dtype == np.int64
    assert list(report.clusters.client_id) == list(range(6))
