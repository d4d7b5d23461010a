"""`raysim reproduce dsac` (raysim.reproduce.dsac) at the micro scale: digits, 2 seeds, 3 rounds.

Beyond the tables' shape: the evaluation seeds exclude the tuning seed, every table reports the base
model's round-0 accuracy, the baselines' pre-trained start is the same M_base as DSAC's, the p-values
are paired t-tests, and every number in a table can be recomputed from the runs it came from."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from raysim.reproduce import reproduce_app
from raysim.reproduce.dsac import (
    DSAC_DEFAULT,
    PRE,
    SCALES,
    TUNING_SEED,
    eval_seeds,
    methods,
    parse_only,
    pretrained,
    raw_config,
)
from raysim.reproduce.dsac_experiments import EXPERIMENTS
from raysim.reproduce.harness import ci, paired_diff, paired_p, run_key, welch


def rows(md: str) -> list[list[str]]:
    """The body rows of the (last) Markdown table in ``md``."""
    out = []
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            out.append([c.strip() for c in line.strip().strip("|").split("|")])
    return out[1:] if out else out


def table_rows(md: str, header_start: str) -> list[list[str]]:
    """Body rows of the table whose header row starts with ``header_start``."""
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| " + header_start):
            body = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                body.append([c.strip() for c in row.strip().strip("|").split("|")])
            return body
    raise AssertionError(f"no table starting with {header_start!r}")


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro") / "results"
    args = ["dsac", "--scale", "micro", "--seeds", "2", "--out", str(out)]
    res = CliRunner().invoke(reproduce_app, args)
    assert res.exit_code == 0, res.output
    return out, args


def runs_of(out, algorithm: dict, split: str, **kw) -> list[pd.DataFrame]:
    sc = SCALES["micro"]
    return [
        pd.read_parquet(out / "runs" / run_key(raw_config(sc, s, algorithm, split, **kw)) / "rounds.parquet")
        for s in eval_seeds(2)
    ]


def final(frames: list[pd.DataFrame], col: str) -> list[float]:
    return [float(f[col].dropna().iloc[-1]) for f in frames]


def test_micro_reproduction_writes_every_table_and_reuses_runs(micro):
    out, args = micro
    for name, _ in EXPERIMENTS.values():
        md = (out / name / "table.md").read_text()
        assert md.startswith("## ") and "|---|" in md
        assert list((out / name).glob("*.png")), name
        assert "Base model" in md or "base model" in md, name  # round 0 reported in every table
    index = (out / "README.md").read_text()
    assert "Scale `micro`" in index and "Wall time" in index and "load average" in index
    assert "evaluation seeds 1..2" in index and "seed 0 tuned the defaults" in index
    assert "1_decay/table.md" in index
    n_runs = len([p for p in (out / "runs").iterdir() if not p.name.startswith(".")])
    res = CliRunner().invoke(reproduce_app, [*args, "--only", "6"])  # a second invocation reuses every run
    assert res.exit_code == 0, res.output
    assert "0 new runs" in res.output
    assert len([p for p in (out / "runs").iterdir() if not p.name.startswith(".")]) == n_runs


def test_evaluation_seeds_never_include_the_tuning_seed(micro):
    out, _ = micro
    seeds = {
        yaml.safe_load((d / "config.yaml").read_text())["seed"]
        for d in (out / "runs").iterdir()
        if (d / "config.yaml").is_file()
    }
    assert seeds == {1, 2} and TUNING_SEED not in seeds
    assert eval_seeds(5) == [1, 2, 3, 4, 5]


def test_baseline_table_content(micro):
    out, _ = micro
    md = (out / "3_baselines" / "table.md").read_text()
    body = table_rows(md, "split")
    by = {(r[0], r[1]): r for r in body}
    assert set(methods(SCALES["micro"])) == {m for _, m in by}
    assert ("pathological", "FedAvg" + PRE) in by
    dsac = runs_of(out, DSAC_DEFAULT, "pathological")
    fed = runs_of(out, {"name": "fedavg"}, "pathological")
    pre = runs_of(out, pretrained({"name": "fedavg"}), "pathological")
    base = final(dsac, "base_test_accuracy")
    # the pre-trained baseline starts from exactly DSAC's base model; the plain one from random weights
    assert final(pre, "base_test_accuracy") == base
    assert "base_test_accuracy" not in fed[0]
    assert by[("pathological", "FedAvg" + PRE)][2] == f"M_base ({ci(base, 2, 100)})"
    assert by[("pathological", "FedAvg")][2] == "random"
    assert f"**{ci(base, 2, 100)} %**" in md
    # every number recomputes from the runs: accuracy, and the paired comparison with DSAC
    acc_d, acc_f = final(dsac, "test_accuracy"), final(fed, "test_accuracy")
    row = by[("pathological", "FedAvg")]
    assert row[3] == ci(acc_f, 2, 100)
    assert row[6] == paired_diff(acc_d, acc_f, 2, 100)
    assert row[7] == paired_p(acc_d, acc_f)
    assert by[("pathological", "DSAC")][6] == "/"
    assert "paired" in md and "Welch" not in md


def test_decay_noise_and_ablation_tables_say_what_acts(micro):
    out, _ = micro
    decay = table_rows((out / "1_decay" / "table.md").read_text(), "mode")
    assert [(r[0], float(r[1])) for r in decay] == [("last_model", 0.0), ("last_model", 0.2), ("sync", 0.05)]
    stale = runs_of(out, {**DSAC_DEFAULT, "decay": 0.2, "staleness": "last_model"}, "pathological")
    assert all("versions_held" in f for f in stale)  # the stale-client mode really ran
    noise = table_rows((out / "2_noise" / "table.md").read_text(), "noise")
    assert [r[1] for r in noise] == ["FedAvg" + PRE, "K-means, eq. 6", "K-means, variance prior (n0 = 1)"]
    ablation = table_rows((out / "6_ablation" / "table.md").read_text(), "configuration")
    named = {r[0]: r for r in ablation}
    assert {"Complete method", "No decomposition", "Non-hierarchical clustering", "FedAvg" + PRE} <= set(
        named
    )
    for row in ("No decomposition", "No pre-training", "Non-hierarchical clustering", "No dynamic weights"):
        assert named[row][9], row  # the "acts?" column explains every switch
    assert named["No pre-training"][1] == "random" and named["Complete method"][1].startswith("M_base")


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
    # paired: differences [1.0, 1.1, 0.9] -> mean 1, sd 0.1, t = 1 / (0.1 / sqrt 3) = 17.32, 2 dof
    from scipy import stats

    a, b = [2.0, 3.1, 4.9], [1.0, 2.0, 4.0]
    t = 1.0 / (0.1 / math.sqrt(3))
    assert paired_p(a, b) == f"{2 * stats.t.sf(t, 2):.2g}"
    assert welch(a, b) != paired_p(a, b)  # the unpaired test ignores the shared seeds
    assert paired_p([1.0], [2.0]).startswith("n/a")
    assert paired_p([1.0, 2.0], [1.0, 2.0]) == "1"
    assert paired_p([1.0, np.nan, 3.0], [0.0, 1.0, 2.5]) == paired_p([1.0, 3.0], [0.0, 2.5])
    assert paired_diff(a, b, 2) == "+" + ci([1.0, 1.1, 0.9], 2)
    assert re.fullmatch(r"-1\.00 ± \d\.\d\d", paired_diff(b, a, 2))
    a_cfg = raw_config(SCALES["micro"], 1, {"name": "fedavg"}, "pathological")
    b_cfg = raw_config(SCALES["micro"], 1, {"name": "dsac"}, "pathological")
    assert a_cfg["data"] == b_cfg["data"]  # every method sees the same shards
    assert a_cfg["rounds"]["personal_eval"] is True
    assert run_key(a_cfg) != run_key(b_cfg)
    # the cache key ignores where a run is written and the order of keys, and nothing else
    moved = {**{k: a_cfg[k] for k in reversed(list(a_cfg))}, "output": {"dir": "/elsewhere"}}
    assert run_key(moved) == run_key(a_cfg)
    nested = {**a_cfg, "local": {**a_cfg["local"], "lr": a_cfg["local"]["lr"] * 2}}
    assert run_key(nested) != run_key(a_cfg)
    assert pretrained({"name": "scaffold"})["init_from"] == "pretrained"
    assert pretrained({"name": "fedavg"})["pretrain_epochs"] == DSAC_DEFAULT["pretrain_epochs"]
