"""`raysim reproduce dsac` (raysim.reproduce.dsac) at the micro scale: digits, 1 seed, 2 rounds."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from raysim.reproduce import reproduce_app
from raysim.reproduce.dsac import EXPERIMENTS, SCALES, ci, parse_only, raw_config, run_key, welch


def test_micro_reproduction_writes_every_table_and_reuses_runs(tmp_path):
    out = tmp_path / "results"
    args = ["dsac", "--scale", "micro", "--seeds", "1", "--out", str(out)]
    res = CliRunner().invoke(reproduce_app, args)
    assert res.exit_code == 0, res.output
    for name, _ in EXPERIMENTS.values():
        md = (out / name / "table.md").read_text()
        assert md.startswith("## ") and "|---|" in md
        assert list((out / name).glob("*.png")), name
    index = (out / "README.md").read_text()
    assert "Scale `micro`" in index and "Wall time" in index
    assert "1_decay/table.md" in index
    n_runs = len(list((out / "runs").iterdir()))
    # a second invocation reuses every run
    res = CliRunner().invoke(reproduce_app, [*args, "--only", "6"])
    assert res.exit_code == 0, res.output
    assert "0 new runs" in res.output
    assert len(list((out / "runs").iterdir())) == n_runs


def test_options_are_validated(tmp_path):
    res = CliRunner().invoke(reproduce_app, ["dsac", "--scale", "huge", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "--scale" in res.output
    assert parse_only("") == sorted(EXPERIMENTS)
    assert parse_only("3, 1") == [1, 3]
    with pytest.raises(Exception, match="no experiment"):
        parse_only("9")


def test_helpers() -> None:
    assert ci([0.5, 0.5, 0.5]) == "0.5000 ± 0.0000"
    assert ci([]) == "-"
    assert welch([1.0], [2.0]).startswith("n/a")
    assert welch([1.0, 1.1, 0.9], [5.0, 5.1, 4.9]) == "<1e-4"
    a = raw_config(SCALES["micro"], 0, {"name": "fedavg"}, "pathological")
    b = raw_config(SCALES["micro"], 0, {"name": "dsac"}, "pathological")
    assert a["data"] == b["data"]  # every method sees the same shards
    assert run_key(a) != run_key(b) and run_key(a) == run_key(dict(a))
