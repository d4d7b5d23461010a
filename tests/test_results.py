"""What a person reads first (issue 24): each algorithm's family and headline metrics, the one-line
form the progress view and summary.md use, and a personalised run's summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raysim.algorithms import ALGORITHMS
from raysim.algorithms.base import FAMILIES, FAMILY_HEADLINE, Algorithm
from raysim.metrics import format_headline, headline_values
from raysim.runtime.progress import ProgressView
from tests.conftest import tiny_config
from tests.helpers import run

CLUSTERED = {"ifca", "cfl", "ascfl", "dsac"}
PERSONALISED = {"local", "fedper", "fedbn", "fedrod", "pfedme", "pfedht", "pfedhn"}


def test_every_builtin_declares_a_family_headline_and_test_accuracy_meaning():
    for name, cls in ALGORITHMS.items():
        assert cls.family in FAMILIES, name
        want = "clustered" if name in CLUSTERED else "personalised" if name in PERSONALISED else "global"
        assert cls.family == want, name
        assert cls.headline_metrics() and all(isinstance(m, str) for m in cls.headline_metrics()), name
        assert len(cls.test_accuracy_meaning()) > 20, name
    # a plug-in that declares only its family gets the family's headline and meaning
    assert Algorithm.family == "global" and Algorithm.headline_metrics() == FAMILY_HEADLINE["global"]
    assert "cluster_ari" in FAMILY_HEADLINE["clustered"] and "cluster_clients" in FAMILY_HEADLINE["clustered"]
    assert FAMILY_HEADLINE["personalised"] == ("personal_accuracy_mean", "personal_accuracy_worst10")
    assert ALGORITHMS["local"].test_accuracy_meaning().startswith("NaN")


def test_headline_values_take_each_metrics_last_finite_value():
    rows = [
        {"round": 1, "cluster_ari": 0.1, "personal_accuracy": 0.5},
        {"round": 2, "cluster_ari": float("nan")},
        {"round": 3, "cluster_ari": 0.7},
    ]
    got = headline_values(rows, ["personal_accuracy", "cluster_ari", "num_clusters"])
    assert got == {"personal_accuracy": 0.5, "cluster_ari": 0.7, "num_clusters": None}


def test_format_headline_says_whom_ari_covers():
    values = {
        "personal_accuracy": 0.83125,
        "cluster_ari": 0.912,
        "cluster_nmi": float("nan"),
        "cluster_clients": 80.0,
        "num_clusters": 4.0,
    }
    assert format_headline(values, 200) == "pers acc 0.8313 ARI 0.9120 (over 80 of 200 clients) clusters 4"
    assert format_headline({"cluster_clients": 3.0}) == "(over 3 clients)"
    assert format_headline({"test_accuracy": None}) == ""


def test_the_progress_line_shows_the_headline(capsys):
    with ProgressView(5, 1, enabled=True, headline=("cluster_ari", "cluster_clients"), num_clients=9) as v:
        v.update(1, {"cluster_ari": 0.5, "cluster_clients": 4.0, "test_accuracy": 0.1, "dropouts": 1.0})
    line = capsys.readouterr().err.strip()
    assert line.startswith("round 1/5 ARI 0.5000 (over 4 of 9 clients) drop 1 eta")
    assert "acc" not in line  # test_accuracy is not this algorithm's headline


@pytest.mark.slow
def test_a_personalised_run_reports_mean_and_worst_clients(tmp_path):
    r = run(tiny_config(tmp_path, algorithm__name="local", rounds__num_rounds=2))
    summary = json.loads((r.run_dir / "summary.json").read_text())
    assert summary["family"] == "personalised"
    head = summary["headline"]
    assert list(head) == ["personal_accuracy_mean", "personal_accuracy_worst10"]
    assert 0 <= head["personal_accuracy_worst10"] <= head["personal_accuracy_mean"] <= 1
    assert summary["test_accuracy_means"].startswith("NaN")


def test_raysim_run_prints_the_family_and_headline(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from raysim.cli import app

    cfg = tmp_path / "ifca.yaml"
    raw = tiny_config(
        tmp_path, algorithm__name="ifca", data__partition="rotation", data__num_groups=2, rounds__num_rounds=2
    ).to_dict()
    cfg.write_text(yaml.safe_dump(raw))
    r = CliRunner().invoke(app, ["run", str(cfg), "--no-progress"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{") :])
    assert out["family"] == "clustered"
    assert set(out["headline"]) == {
        "personal_accuracy",
        "cluster_ari",
        "cluster_nmi",
        "cluster_clients",
        "num_clusters",
    }
    summary = json.loads((Path(out["run_dir"]) / "summary.json").read_text())
    assert out["headline"] == summary["headline"] and out["headline"]["cluster_clients"] >= 2


def test_a_misdeclared_family_or_headline_fails_where_the_class_is_defined():
    with pytest.raises(TypeError, match="family is 'clusterd'; use one of global, clustered, personalised"):

        class Typo(Algorithm):  # noqa: F841 - defining it is the test
            family = "clusterd"  # type: ignore[assignment]

    with pytest.raises(TypeError, match="headline must be a tuple"):

        class Bare(Algorithm):  # noqa: F841
            headline = "test_accuracy"  # type: ignore[assignment]
