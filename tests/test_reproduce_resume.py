"""A reproduction cut off part-way continues its long runs from their newest checkpoint when it runs
again, to the numbers of a run that was never interrupted (raysim.reproduce.harness.Runner)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from raysim._testing_runs import tiny_raw
from raysim.config import config_from_dict
from raysim.reproduce import harness
from raysim.reproduce.harness import Runner, run_key, with_checkpoints
from raysim.runtime.experiment import Experiment
from tests.runtime.exact import assert_same_learning


@pytest.mark.parametrize(
    ("rounds", "given", "every"),
    [
        (12, None, None),  # short: left as it is
        (96, 96, 12),  # pfedht's "checkpoint the last round" kept: 12 divides 96
        (48, 48, 6),
        (100, None, 10),  # AS-CFL's paper budget: the largest divisor of 100 up to 12
        (30, None, 3),
        (24, 0, 3),
        (40, 20, 5),  # every round 20 checkpointed before still is
    ],
)
def test_long_runs_checkpoint_about_every_eighth_of_their_rounds(rounds, given, every):
    raw = {"rounds": {"num_rounds": rounds, **({} if given is None else {"checkpoint_every": given})}}
    got = with_checkpoints(raw)
    if every is None:
        assert got is raw
        return
    ce = got["rounds"]["checkpoint_every"]
    assert ce == every
    if given:
        assert given % ce == 0
    assert raw["rounds"].get("checkpoint_every") == given  # the caller's config untouched


def _raw(out):
    raw = tiny_raw(out)
    raw["rounds"] = {**raw["rounds"], "num_rounds": 8}
    return {k: v for k, v in raw.items() if k != "output"}


def _interrupt(runs_dir, raw, until):
    """What a reproduction killed after round ``until`` leaves behind: the run's directory with its
    checkpoints and a summary.json that says ``finished: false``."""
    key = run_key(raw)
    cfg = config_from_dict(
        {**with_checkpoints(raw), "output": {"dir": str(runs_dir), "name": key, "progress": False}}
    )
    exp = Experiment(cfg, progress=False)
    try:
        exp.run(until=until)
    finally:
        exp.close()
    assert json.loads((runs_dir / key / "summary.json").read_text())["finished"] is False
    return key


def test_an_interrupted_run_continues_from_its_checkpoint_to_the_uninterrupted_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESUMABLE_ROUNDS", 8)  # 8 rounds: a checkpoint every round
    raw = _raw(tmp_path)
    said: list[str] = []
    whole = Runner(tmp_path / "whole", jobs=1, echo=said.append).run([raw], "t")[0]

    cut = tmp_path / "cut"
    key = _interrupt(cut / "runs", raw, until=5)
    said.clear()
    runner = Runner(cut, jobs=1, echo=said.append)
    run = runner.run([raw], "t")[0]
    assert any(f"{key}: continuing from its checkpoint of round 5" in s for s in said), said
    assert runner.executed == 1
    assert_same_learning(whole.rounds, run.rounds, "continued from round 5")
    assert run.summary["finished"] is True and run.summary["resumed_from_round"] == 5
    assert whole.summary["resumed_from_round"] is None
    # its time counts the lost attempt's five rounds too (by their round_s)
    restored = float(pd.read_parquet(run.path / "rounds.parquet")["round_s"].iloc[:5].sum())
    assert run.summary["loop_seconds"] >= restored > 0
    # and a third invocation reuses it
    again = Runner(cut, jobs=1, echo=said.append)
    again.run([raw], "t")
    assert again.executed == 0


def test_a_cut_off_run_without_a_checkpoint_or_with_another_config_starts_again(tmp_path, monkeypatch):
    raw = _raw(tmp_path)
    key = _interrupt(tmp_path / "runs", raw, until=2)  # 8 < 24 rounds: no checkpoints
    said: list[str] = []
    runner = Runner(tmp_path, jobs=1, echo=said.append)
    run = runner.run([raw], "t")[0]
    assert runner.executed == 1 and not any("continuing" in s for s in said)
    assert run.summary["resumed_from_round"] is None and len(run.rounds) == 8

    # checkpoints written under a config that differs from this raysim's (as an older default would)
    monkeypatch.setattr(harness, "RESUMABLE_ROUNDS", 8)
    other = tmp_path / "other"
    changed = {**raw, "local": {**raw["local"], "lr": 0.07}}
    _interrupt(other / "runs", changed, until=3)
    (other / "runs" / run_key(changed)).rename(other / "runs" / key)
    said.clear()
    run = Runner(other, jobs=1, echo=said.append).run([raw], "t")[0]
    assert any(f"{key}: its saved config differs" in s and "starting it again" in s for s in said), said
    assert run.summary["resumed_from_round"] is None
    assert_same_learning(Runner(tmp_path / "ref", 1, said.append).run([raw], "t")[0].rounds, run.rounds)
