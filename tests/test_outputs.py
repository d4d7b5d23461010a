"""docs/outputs.md is generated from raysim/outputs.py and covers every file and column real runs
write (issue 24: a reference page that cannot drift from the code)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from raysim import outputs
from raysim.cli import app
from tests.conftest import tiny_config
from tests.helpers import run

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("partition", "clients", "system", "clusters")


def test_the_committed_page_is_the_generated_one():
    page = (ROOT / "docs" / "outputs.md").read_text()
    assert page == outputs.render(), "docs/outputs.md is stale: python -m raysim.outputs > docs/outputs.md"


def test_undocumented_matches_placeholders():
    cols = outputs._cols(("clients_cluster/<j>", "x"), ("round", "y"))
    assert outputs.undocumented(["round", "clients_cluster/12", "clients_cluster/", "ari"], cols) == [
        "clients_cluster/",
        "ari",
    ]


def test_a_sweeps_metric_columns_are_checked_against_rounds_parquets():
    cols = outputs.TRIAL_COLUMNS + outputs.rounds_columns()
    names = ["trial_id", "config/local.lr", "hparams/lr", "test_accuracy", "clients_cluster/3", "made_up"]
    assert outputs.undocumented(names, cols) == ["made_up"]
    assert outputs.undocumented(["test_accuracy"], outputs.TRIAL_COLUMNS) == ["test_accuracy"]


def file_documented(rel: str) -> bool:
    """A path under the run directory is one of RUN_FILES (a directory entry covers what it holds)."""
    pats = [
        outputs._pattern(f.path + "<rest>" if f.path.endswith("/") else f.path) for f in outputs.RUN_FILES
    ]
    return any(p.match(rel) for p in pats)


def missing_docs(run_dir: Path, algorithm: str) -> dict[str, list[str]]:
    """Every file, column and key of a run directory that docs/outputs.md does not describe."""
    gaps: dict[str, list[str]] = {}
    files = [p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()]
    gaps["files"] = [f for f in files if not file_documented(f)]
    rounds = pd.read_parquet(run_dir / "rounds.parquet").columns
    gaps["rounds.parquet"] = outputs.undocumented(rounds, outputs.rounds_columns(algorithm))
    for name in TABLES:
        path = run_dir / f"{name}.parquet"
        if path.is_file():
            cols = outputs.run_file(f"{name}.parquet").columns
            gaps[path.name] = outputs.undocumented(pd.read_parquet(path).columns, cols)
    for name in ("summary.json", "environment.json"):
        keys = json.loads((run_dir / name).read_text())
        gaps[name] = outputs.undocumented(keys, outputs.run_file(name).columns)
    return {k: v for k, v in gaps.items() if v}


def test_a_tiny_runs_files_and_columns_are_all_documented(tmp_path):
    cfg = tiny_config(
        tmp_path,
        algorithm__name="ifca",
        data__partition="rotation",
        data__num_groups=2,
        rounds__num_rounds=2,
        rounds__checkpoint_every=1,
    )
    d = run(cfg).run_dir
    assert CliRunner().invoke(app, ["report", str(d)]).exit_code == 0
    assert (d / "clusters.parquet").is_file() and (d / "plots" / "clusters.png").is_file()
    assert missing_docs(d, "ifca") == {}
    # and the reverse: what the page promises every run has, this run has
    rounds = set(pd.read_parquet(d / "rounds.parquet").columns)
    always = {c.name for c in outputs.ROUND_COLUMNS if not c.when}
    assert always <= rounds, always - rounds
    assert {c.name for c in outputs.ALGORITHM_COLUMNS["ifca"] if "<" not in c.name} <= rounds


def test_a_missing_column_is_caught(tmp_path):
    """The check above can fail: a column the registry does not name is reported."""
    d = tmp_path / "run"
    d.mkdir()
    pd.DataFrame({"round": [1], "ari": [1.0]}).to_parquet(d / "rounds.parquet")
    assert outputs.undocumented(
        pd.read_parquet(d / "rounds.parquet").columns, outputs.rounds_columns("ifca")
    ) == ["ari"]


@pytest.mark.slow
def test_every_builtin_algorithms_columns_are_documented(tmp_path):
    from tests.algorithms.test_conformance import CASES, _algorithm

    for case, spec in sorted(CASES.items()):
        algo = _algorithm(case)
        over = {"algorithm__name": algo, "rounds__num_rounds": 2}
        over.update({f"algorithm__{k}": v for k, v in (spec.get("params") or {}).items()})
        over.update({k.replace(".", "__"): v for k, v in (spec.get("overrides") or {}).items()})
        if algo in ("ascfl", "dsac"):
            over["data__public_fraction"] = 0.1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            d = run(tiny_config(tmp_path / case, **over)).run_dir
        assert missing_docs(d, algo) == {}, case
        rounds = set(pd.read_parquet(d / "rounds.parquet").columns)
        promised = {
            c.name for c in outputs.ALGORITHM_COLUMNS.get(algo, ()) if not c.when and "<" not in c.name
        }
        assert promised <= rounds, (case, promised - rounds)
