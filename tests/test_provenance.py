"""Provenance (raysim/provenance.py): environment.json in run and sweep directories, and what
`raysim report` makes of it."""

from __future__ import annotations

import json
import os
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

import raysim
from raysim import provenance, reproducible
from raysim.report import write_report
from tests.conftest import tiny_config
from tests.helpers import experiment, resume

NODES = [
    {"node_id": "a", "address": "10.0.0.1", "resources": {"CPU": 4.0, "GPU": 1.0, "node:10.0.0.1": 1.0}},
    {"node_id": "b", "address": "10.0.0.2", "resources": {"CPU": 2.0, "memory": 8.0}},
]


def test_collect_says_what_produced_a_run():
    env = provenance.collect(backend="ray", nodes=NODES, argv=["raysim", "run", "x.yaml"])
    assert env["raysim"]["version"] == raysim.__version__
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["packages"]["torch"] == metadata.version("torch")
    assert env["packages"]["numpy"] == metadata.version("numpy")
    assert set(env["packages"]) == set(provenance.PACKAGES)
    assert env["cpu"]["model"] == reproducible.cpu_flags()[0]
    assert env["cpu"]["torch_capability"] == "AVX2"  # this test process is in reproducible mode
    assert "avx2" in env["cpu"]["isa"] and "fpu" not in env["cpu"]["isa"]  # ISA flags only
    assert env["cluster"] == {
        "backend": "ray",
        "nodes": 2,
        "resources": {"CPU": 6.0, "GPU": 1.0, "memory": 8.0},
        "per_node": NODES,
    }
    assert env["command"] == ["raysim", "run", "x.yaml"]
    assert env["reproducible"]["on"] and env["reproducible"]["env"] == reproducible.environment()
    json.dumps(env)  # all of it serialisable as it is


def test_git_state_of_this_checkout_and_where_there_is_none(tmp_path, monkeypatch):
    here = provenance.git_state()
    if here["commit"] != "unknown":  # a checkout with git (the usual case)
        assert re.fullmatch(r"[0-9a-f]{40}", here["commit"]) and isinstance(here["dirty"], bool)
    assert provenance.git_state(tmp_path) == {
        "commit": "unknown",
        "dirty": None,
        "why": f"{tmp_path} is not a git checkout",
    }
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on the path
    assert provenance.git_state()["why"] == "git is not installed"


def test_git_state_sees_an_uncommitted_change(tmp_path):
    import subprocess

    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    try:
        subprocess.run([*git, "init", "-q"], check=True)
    except FileNotFoundError:
        pytest.skip("git is not installed")
    (tmp_path / "f").write_text("a")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    clean = provenance.git_state(tmp_path)
    (tmp_path / "f").write_text("b")
    assert clean["dirty"] is False and provenance.git_state(tmp_path) == {**clean, "dirty": True}


def test_a_run_directory_gets_environment_json_and_a_resume_appends_to_it(tmp_path):
    cfg = tiny_config(tmp_path, rounds__num_rounds=2, rounds__checkpoint_every=1)
    exp = experiment(cfg)
    try:
        exp.run()
    finally:
        exp.close()
    env = provenance.read(exp.run_dir)
    assert env is not None and env["cluster"] == {"backend": "serial", "nodes": None}
    assert env["reproducible"]["requested"] is False and env["reproducible"]["on"]  # the tests' process
    assert env["command"] == sys.argv
    again = resume(exp.run_dir)
    again.close()
    env2 = provenance.read(exp.run_dir)
    assert {k: v for k, v in env2.items() if k != "resumed"} == env  # the first record is kept
    assert len(env2["resumed"]) == 1 and env2["resumed"][0]["packages"] == env["packages"]


@pytest.mark.ray
def test_a_ray_run_records_the_cluster_nodes(ray_cluster, tmp_path):
    cfg = tiny_config(tmp_path, rounds__num_rounds=1, resources__backend="ray", resources__reproducible=True)
    exp = experiment(cfg)
    try:
        exp.prepare()
    finally:
        exp.close()
    env = provenance.read(exp.run_dir)
    assert env["cluster"]["backend"] == "ray" and env["cluster"]["nodes"] == 1
    assert env["cluster"]["resources"]["CPU"] == 4.0 and env["cluster"]["resources"]["GPU"] == 2.0
    assert env["reproducible"]["requested"] is True and env["reproducible"]["problems"] == []


def _env(**over):
    base = provenance.collect(backend="serial")
    for path, value in over.items():
        node = base
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return base


def test_differences_name_what_decides_the_numbers():
    a = _env()
    assert provenance.differences({"a": a, "b": _env()}) == []
    lines = provenance.differences(
        {
            "a": a,
            "b": _env(raysim__commit="f" * 40, packages__torch="9.9", cpu__torch_capability="AVX512"),
            "c": None,
        }
    )
    text = "\n".join(lines)
    assert "no environment.json (older runs?): c" in text
    assert "commit differs" in text and "torch differs" in text and "isa differs" in text
    assert "reproducible" not in text
    off = _env(reproducible__on=False)
    assert any(line.startswith("reproducible differs") for line in provenance.differences({"a": a, "b": off}))


def test_a_cpu_model_matters_only_outside_reproducible_mode():
    assert provenance.differences({"a": _env(), "b": _env(cpu__model="Other CPU")}) == []
    outside = {"a": _env(reproducible__on=False), "b": _env(reproducible__on=False, cpu__model="Other CPU")}
    assert [line.split(":")[0] for line in provenance.differences(outside)] == ["cpu differs"]


def _fake_run(root: Path, name: str, env: dict | None) -> Path:
    import pandas as pd

    d = root / name
    d.mkdir(parents=True)
    pd.DataFrame({"round": [1, 2], "test_accuracy": [0.5, 0.6]}).to_parquet(d / "rounds.parquet")
    (d / "summary.json").write_text(json.dumps({"algorithm": "fedavg", "rounds": 2}))
    if env is not None:
        provenance.write(d, env)
    return d


def test_report_shows_provenance_and_warns_when_compared_runs_differ(tmp_path, capsys):
    a = _fake_run(tmp_path, "a", _env())
    b = _fake_run(tmp_path, "b", _env(packages__numpy="0.1", reproducible__on=False))
    out = write_report([a, b], tmp_path / "report")
    md = (out / "summary.md").read_text()
    err = capsys.readouterr().err
    assert "### Environment" in md and "| a |" in md.split("### Environment")[1]
    assert "> **Warning**" in md and "numpy differs: a=" in md and "reproducible differs" in md
    assert err.startswith("warning: the compared runs differ") and "numpy differs" in err
    row_a = next(line for line in md.splitlines() if line.startswith("| a |") and "AVX2" in line)
    assert "avx2" in row_a  # reproducible mode's level in the row


def test_report_of_runs_that_agree_has_no_warning(tmp_path, capsys):
    a = _fake_run(tmp_path, "a", _env())
    b = _fake_run(tmp_path, "b", _env(cpu__model="Other CPU", host="elsewhere"))
    out = write_report([a, b], tmp_path / "report")
    assert "Warning" not in (out / "summary.md").read_text() and capsys.readouterr().err == ""


def test_a_sweep_directory_gets_environment_json(tmp_path):
    """Written by run_sweep where it creates the sweep directory (tuning/sweep.py). In a fresh
    process: under pytest, ``tuning`` may resolve to the installed checkout rather than this one
    (tests/tuning/ is a namespace-package candidate); the Ray nodes are stubbed (no cluster needed)."""
    import subprocess

    code = (
        "import sys, actors.backend as b\n"
        f"b.cluster_nodes = lambda: {NODES!r}\n"
        "from types import SimpleNamespace\n"
        "from tuning.sweep import _write_environment\n"
        "_write_environment(__import__('pathlib').Path(sys.argv[1]), "
        "SimpleNamespace(base={'resources': {'reproducible': True}}))\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=True,
        timeout=120,
    )
    env = provenance.read(tmp_path)
    assert env["cluster"]["backend"] == "ray" and env["cluster"]["nodes"] == 2
    assert env["reproducible"]["requested"] is True and env["packages"]["ray"] == metadata.version("ray")
