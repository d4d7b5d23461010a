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
