"""A sweep's summary and plots without Ray (issue 24): the random start-up trials of TPE are labelled
as such, a plot that cannot be drawn is named with the reason, knobs.png is readable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from tests.conftest import tiny_config
from tuning.outputs import STARTUP, proposed_by, summary_markdown
from tuning.plots import write_plots
from tuning.spec import spec_from_dict


def _loaded(tmp_path: Path, **over: Any):
    raw: dict[str, Any] = {
        "name": "s",
        "base": tiny_config(tmp_path, rounds__num_rounds=3).to_dict(),
        "storage_path": str(tmp_path / "sweeps"),
        "space": {"local.lr": {"loguniform": [0.01, 0.2]}},
        "mode": "optuna",
        "num_samples": 4,
        "optuna": {"seed": 0, "n_startup_trials": 2},
    }
    raw.update(over)
    return spec_from_dict(raw, "(test spec)", tmp_path)


def _table(lrs: list[float], rounds: int = 3) -> pd.DataFrame:
    rows = []
    for i, lr in enumerate(lrs):
        for t in range(1, rounds + 1):
            rows.append(
                {
                    "round": t,
                    "test_accuracy": 0.5 + 0.1 * np.log10(lr) / 2 + 0.01 * t,
                    "trial_id": f"t{i}",
                    "status": "done",
                    "config/local.lr": lr,
                    "config/seed": 3,
                }
            )
    return pd.DataFrame(rows)


def _study(directory: Path, n: int, startup: int) -> list[float]:
    """A TPE study like the sweep's, its trials drawn and finished one after the other."""
    directory.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name="s",
        storage=f"sqlite:///{directory / 'optuna.db'}",
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=startup),
        direction="maximize",
    )
    dist = {"local.lr": optuna.distributions.FloatDistribution(0.01, 0.2, log=True)}
    lrs = []
    for _ in range(n):
        t = study.ask(fixed_distributions=dist)
        lrs.append(t.params["local.lr"])
        study.tell(t, t.params["local.lr"])
    return lrs


def test_tpe_start_up_trials_are_labelled_as_optunas_random_ones(tmp_path):
    loaded = _loaded(tmp_path)
    d = tmp_path / "sweep"
    lrs = _study(d, 4, startup=2)
    table = _table(lrs)
    who = proposed_by(loaded, d, table.drop_duplicates("trial_id"))
    assert who == {"t0": STARTUP, "t1": STARTUP, "t2": "TPE", "t3": "TPE"}
    # a table whose knobs do not match the study's trials gets no labels rather than wrong ones
    assert proposed_by(loaded, d, _table([0.5, 0.5, 0.5, 0.5]).drop_duplicates("trial_id")) == {}

    table["proposed_by"] = table["trial_id"].map(who)
    info = {"trials": 4, "errors": 0, "tuning_seeds": [3]}
    md = summary_markdown(loaded, table, info, ["`plots/importance.png`: because"])
    assert "proposed by |" in md and f"| {STARTUP} |" in md and "| TPE |" in md
    assert "2 of the trials are Optuna's random start-up trials" in md
    assert "## Plots not drawn\n\n- `plots/importance.png`: because" in md


def test_one_knob_skips_importance_with_the_reason_and_draws_a_readable_knobs_plot(tmp_path):
    loaded = _loaded(tmp_path, name="a-sweep-with-a-rather-long-name-for-its-title")
    table = _table([0.011, 0.02, 0.035, 0.06, 0.11, 0.19])
    plots = write_plots(loaded, table, tmp_path / "plots", {"best": {"trial_id": "t0"}})
    assert [p.name for p in plots.written] == ["curves.png", "knobs.png"]
    assert set(plots.skipped) == {"importance.png"}
    assert "varied 1 (local.lr)" in plots.skipped["importance.png"]
    assert plots.notes() == [f"`plots/importance.png`: {plots.skipped['importance.png']}"]

    import matplotlib.pyplot as plt

    img = plt.imread(tmp_path / "plots" / "knobs.png")
    # the wrapped title fits: no ink in the outermost columns of the top rows (a cut title touches them)
    top = img[: img.shape[0] // 8, :, :3]
    assert (top[:, :3] > 0.95).all() and (top[:, -3:] > 0.95).all()


def test_two_knobs_with_too_few_trials_say_so(tmp_path):
    loaded = _loaded(
        tmp_path,
        space={"local.lr": {"loguniform": [0.01, 0.2]}, "local.batch_size": {"choice": [8, 16]}},
    )
    table = _table([0.02, 0.1, 0.05])
    table["config/local.batch_size"] = table["trial_id"].map({"t0": 8, "t1": 16, "t2": 8})
    plots = write_plots(loaded, table, tmp_path / "plots", {})
    assert plots.skipped == {"importance.png": "fANOVA needs at least 4 finished trials; 3 finished"}


def _pbt_table() -> pd.DataFrame:
    """Two PBT trials of 4 rounds: t1 exploits t0's round-2 checkpoint and trains rounds 3-4 at
    t0's lr x 1.1 (the record's config/local.lr is what each round trained with)."""
    rows = []
    for trial, lrs in (("t0", [0.1, 0.1, 0.1, 0.1]), ("t1", [0.01, 0.01, 0.11, 0.11])):
        for t, lr in enumerate(lrs, start=1):
            row = {
                "round": t,
                "test_accuracy": 0.5 + 0.01 * t + (0.05 if lr >= 0.1 else 0.0),
                "trial_id": trial,
                "status": "done",
                "config/local.lr": lr,
                "config/seed": 0,
                "hparams/lr": lr,
            }
            if trial == "t1" and t == 3:
                row.update(exploited=1, restored_from_trial="t0", restored_from_round=2)
            rows.append(row)
    return pd.DataFrame(rows)


def _pbt_loaded(tmp_path: Path):
    return _loaded(
        tmp_path,
        mode="pbt",
        num_samples=2,
        checkpoint_every=1,
        optuna=None,
        pbt={"perturbation_interval": 2},
    )


def test_pbt_summary_shows_each_trials_schedule_and_its_last_rounds_values(tmp_path):
    from tuning.outputs import schedule, schedule_text

    table = _pbt_table()
    t1 = table[table["trial_id"] == "t1"]
    assert schedule(t1, "local.lr") == [
        {"first": 1, "last": 2, "value": 0.01, "from": ""},
        {"first": 3, "last": 4, "value": 0.11, "from": "t0 round 2"},
    ]
    assert schedule_text(schedule(t1, "local.lr")) == "0.01 (rounds 1-2) → 0.11 (rounds 3-4, from t0 round 2)"
    info = {"trials": 2, "errors": 0, "tuning_seeds": [0]}
    md = summary_markdown(_pbt_loaded(tmp_path), table, info)
    assert "## Schedules" in md
    assert "| t1 | 0.01 (rounds 1-2) → 0.11 (rounds 3-4, from t0 round 2) |" in md
    assert "| t0 | 0.1 (rounds 1-4) |" in md
    # the trials table shows the value the last round trained with (t1: 0.11, not its start 0.01)
    assert "| t1 | 0.11 | 0 | 4 |" in md


def test_pbt_plots_draw_the_schedules_and_the_knobs_each_last_round_trained_with(tmp_path):
    from tuning.plots import finals

    loaded = _pbt_loaded(tmp_path)
    table = _pbt_table()
    plots = write_plots(loaded, table, tmp_path / "plots", {"best": {"trial_id": "t1"}})
    assert [p.name for p in plots.written] == ["curves.png", "schedule.png", "knobs.png"]
    assert (tmp_path / "plots" / "schedule.png").stat().st_size > 10_000
    assert finals(table, "test_accuracy").set_index("trial_id")["config/local.lr"].to_dict() == {
        "t0": 0.1,
        "t1": 0.11,
    }
    # no knob changed (no exploit): the promised schedule is named as not drawn, with the reason
    flat = table.assign(**{"config/local.lr": table["trial_id"].map({"t0": 0.1, "t1": 0.01})})
    plots = write_plots(loaded, flat, tmp_path / "plots2", {})
    assert "no exploit happened" in plots.skipped["schedule.png"]


class _Result:
    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        self.path, self.config, self.error = str(path), config, None
        self.metrics_dataframe = None


def test_trials_table_takes_each_rounds_knobs_from_the_trials_record(tmp_path):
    """The record's config/<knob> (what each round ran with) wins over Tune's final config, which
    is only used where the record has none (an older record)."""
    import json

    from tuning.outputs import REPORTED, trials_table

    loaded = _pbt_loaded(tmp_path)
    rows = [
        {"round": 1, "test_accuracy": 0.5, "config/local.lr": 0.01, "config/seed": 0},
        {"round": 2, "test_accuracy": 0.6, "config/local.lr": 0.011, "config/seed": 0},
    ]
    (tmp_path / "trial_a").mkdir()
    (tmp_path / "trial_a" / REPORTED).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "trial_b").mkdir()
    (tmp_path / "trial_b" / REPORTED).write_text(json.dumps({"round": 1, "test_accuracy": 0.4}) + "\n")
    results = [
        _Result(tmp_path / "trial_a", {"local.lr": 0.5, "seed": 0}),
        _Result(tmp_path / "trial_b", {"local.lr": 0.02, "seed": 0}),
    ]
    table = trials_table(loaded, results)
    assert table["config/local.lr"].tolist() == [0.01, 0.011, 0.02]
