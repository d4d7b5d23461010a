"""A sweep's plots: metric vs round per trial, each knob vs the final metric, the Pareto front of
a multi-objective sweep, and parameter importance (Optuna's fANOVA evaluator).

``write_plots`` returns what it drew and, for every promised plot it could not draw, why (the
sweep's summary.md lists them)."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuning.outputs import changes_within_trial
from tuning.spec import LoadedSpec


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def finals(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per finished trial: its knobs and the last reported value of ``metric``."""
    rows = []
    for trial_id, df in table.groupby("trial_id", sort=False):
        if metric not in df or df[metric].dropna().empty or (df["status"] == "error").any():
            continue
        row = {c: df[c].iloc[-1] for c in df.columns if c.startswith("config/")}
        row.update(
            trial_id=trial_id, value=float(df[metric].dropna().iloc[-1]), rounds=int(df["round"].max())
        )
        row["by_round"] = dict(zip(df["round"].astype(int), df[metric], strict=True))
        rows.append(row)
    return pd.DataFrame(rows)


def at_common_round(done: pd.DataFrame) -> tuple[int, pd.Series]:
    """The last round every finished trial reached (ASHA stops some early) and each trial's metric
    there: trials compared at the same round, not a stopped trial's round 2 against round 10."""
    common = int(done["rounds"].min())
    return common, done["by_round"].map(lambda d: float(d.get(common, math.nan)))


def importance(loaded: LoadedSpec, done: pd.DataFrame) -> dict[str, float]:
    """fANOVA importance of each varied knob for the final metric, from an Optuna study built
    from the finished trials (any mode; PBT's knobs change during a trial, so not for PBT)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    spec = loaded.spec
    dists: dict[str, Any] = {}
    for key, dim in spec.space.items():
        a = dim.args
        if dim.kind in ("loguniform", "uniform"):
            dists[key] = FloatDistribution(float(a[0]), float(a[1]), log=dim.kind == "loguniform")
        elif dim.kind == "int":
            dists[key] = IntDistribution(int(a[0]), int(a[1]))
        else:
            dists[key] = CategoricalDistribution([_plain(v) for v in a])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    goal = spec.objective_list[0].goal
    study = optuna.create_study(direction="maximize" if goal == "max" else "minimize")
    for _, row in done.iterrows():
        params = {k: _plain(row[f"config/{k}"]) for k in dists}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=row["value"]))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return {
        k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()
    }


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


MIN_IMPORTANCE_TRIALS = 4  # fANOVA on fewer finished trials says nothing


@dataclass
class Plots:
    """What ``write_plots`` drew, and each promised plot it did not draw with the reason."""

    written: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> why

    def notes(self) -> list[str]:
        return [f"`plots/{name}`: {why}" for name, why in self.skipped.items()]


def importance_skipped(spec: Any, varied: list[str], finished: int) -> str:
    """Why plots/importance.png is not drawn ("" when it is)."""
    if spec.mode == "pbt":
        return "PBT changes the knobs during a trial, so a trial has no one value per knob to rank"
    if len(varied) < 2:
        which = f" ({', '.join(varied)})" if varied else ""
        return (
            f"parameter importance ranks two or more knobs; this sweep varied {len(varied)}{which}: "
            "the knob's own effect is plots/knobs.png"
        )
    if finished < MIN_IMPORTANCE_TRIALS:
        return f"fANOVA needs at least {MIN_IMPORTANCE_TRIALS} finished trials; {finished} finished"
    return ""


def _title(fig: Any, text: str, width_in: float) -> None:
    """A figure title wrapped to the figure's width (about 11 characters an inch at 10 pt)."""
    fig.suptitle("\n".join(textwrap.wrap(text, max(20, int(width_in * 11)))), fontsize=10)


def _axes_title(ax: Any, text: str, width_in: float) -> None:
    ax.set_title("\n".join(textwrap.wrap(text, max(20, int(width_in * 11)))), fontsize=10)


def _log_axis(ax: Any) -> None:
    """A readable log x axis: ticks at 1, 2 and 5 of each decade, plainly labelled and slanted,
    and no minor tick labels (which overlap over a narrow range)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)


def write_plots(loaded: LoadedSpec, table: pd.DataFrame, out: Path, info: dict[str, Any]) -> Plots:
    spec = loaded.spec
    objs = spec.objective_list
    metric = objs[0].metric
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    plots = Plots()
    written = plots.written
    multi = spec.objectives is not None and len(objs) >= 2  # a Pareto front is promised
    if table.empty or metric not in table:
        why = f"no trial reported {metric}"
        plots.skipped = {"curves.png": why, "knobs.png": why, "importance.png": why}
        return plots
    done = finals(table, metric)
    front = info.get("pareto_front")
    best = (info.get("best") or {}).get("trial_id")
    knobs = [k for k in spec.space if k != "seed" and f"config/{k}" in table]

    # 1. the metric round by round: per trial, or per grid point (mean over seeds, min-max band)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_point = spec.mode == "grid" and table["config/seed"].nunique() > 1 and knobs
    if by_point:
        for i, (point, df) in enumerate(table.groupby([f"config/{k}" for k in knobs], sort=True)):
            curve = df.groupby("round")[metric].agg(["mean", "min", "max"]).dropna()
            label = ", ".join(
                f"{k}={v}"
                for k, v in zip(knobs, point if isinstance(point, tuple) else (point,), strict=True)
            )
            ax.plot(curve.index, curve["mean"], marker=".", color=f"C{i % 10}", label=label)
            ax.fill_between(curve.index, curve["min"], curve["max"], color=f"C{i % 10}", alpha=0.12)
        _axes_title(
            ax, f"{spec.name}: {metric}, mean over {table['config/seed'].nunique()} seeds (band: min-max)", 7
        )
        ax.legend(fontsize=8)
    else:
        for trial_id, df in table.groupby("trial_id", sort=False):
            sel = df[["round", metric]].dropna()
            bold = trial_id == best
            ax.plot(
                sel["round"],
                sel[metric],
                lw=2.5 if bold else 1.0,
                alpha=1.0 if bold else 0.6,
                label=f"{trial_id} (best)" if bold else None,
                marker="." if len(sel) < 40 else None,
            )
        _axes_title(
            ax, f"{spec.name}: {metric} per trial ({spec.mode}, {table['trial_id'].nunique()} trials)", 7
        )
        if best is not None:
            ax.legend(fontsize=8)
    ax.set_xlabel("round")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(out / "curves.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    # 1b. each knob round by round per trial, where it changes during a trial (PBT)
    changing = [k for k in knobs if changes_within_trial(table, k)]
    if changing:
        written.append(schedule_plot(plt, spec, table, changing, out / "schedule.png", best))
    elif spec.mode == "pbt":
        plots.skipped["schedule.png"] = "no trial's knobs changed during the sweep (no exploit happened)"

    if done.empty or not knobs:
        why = (
            f"no trial finished with a finite {metric}"
            if done.empty
            else "the sweep varies no knob besides the seed"
        )
        plots.skipped.update({"knobs.png": why, "importance.png": why})
        return plots
    # 2. each knob against the final metric
    width = max(5.5, 3.8 * len(knobs))
    fig, axes = plt.subplots(1, len(knobs), figsize=(width, 3.8), squeeze=False)
    full = done["rounds"] == done["rounds"].max()
    for ax, key in zip(axes[0], knobs, strict=True):
        x = done[f"config/{key}"]
        x = x if pd.api.types.is_numeric_dtype(x) else x.astype(str)
        ax.scatter(x[full], done["value"][full], s=24, alpha=0.85, label="ran every round")
        if (~full).any():
            ax.scatter(
                x[~full],
                done["value"][~full],
                s=24,
                facecolors="none",
                edgecolors="C1",
                label="stopped early (its last round)",
            )
        if spec.space[key].kind == "loguniform":
            _log_axis(ax)
        # a PBT trial's knob is a schedule: the value its last round trained with (schedule.png)
        ax.set_xlabel(f"{key} (its last round's)" if spec.mode == "pbt" else key)
        ax.set_ylabel(f"final {metric}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    _title(fig, f"{spec.name}: each knob vs final {metric}", width)
    fig.tight_layout()
    written.append(out / "knobs.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    # 3. the Pareto front of a multi-objective sweep
    if front is not None and len(objs) >= 2:
        m0, m1 = objs[0].metric, objs[1].metric
        pts = [(trial_id, _final_of(df, m0), _final_of(df, m1)) for trial_id, df in table.groupby("trial_id")]
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ax.scatter([p[2] for p in pts], [p[1] for p in pts], s=20, c="0.6", label="trials")
        fr = sorted(front, key=lambda f: f[m1])
        ax.plot([f[m1] for f in fr], [f[m0] for f in fr], "o-", c="C3", label="Pareto front")
        ax.set_xlabel(f"{m1} ({objs[1].goal})")
        ax.set_ylabel(f"{m0} ({objs[0].goal})")
        ax.set_title(f"{spec.name}: Pareto front")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(out / "pareto.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    elif multi:
        plots.skipped["pareto.png"] = "no trial finished every objective"

    # 4. parameter importance (needs >= 2 varied knobs and a few finished trials)
    varied = [k for k in knobs if done[f"config/{k}"].nunique() > 1]
    why = importance_skipped(spec, varied, len(done))
    if why:
        plots.skipped["importance.png"] = why
    else:
        common, values = at_common_round(done)
        imp = importance(loaded, done.assign(value=values))
        fig, ax = plt.subplots(figsize=(6, 0.9 + 0.5 * len(imp)))
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names])
        ax.set_xlabel(f"fANOVA importance for {metric} at round {common} (reached by every trial)")
        ax.set_title(f"{spec.name}: parameter importance ({len(done)} trials)")
        fig.tight_layout()
        written.append(out / "importance.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return plots


def schedule_plot(plt: Any, spec: Any, table: pd.DataFrame, keys: list[str], path: Path, best: Any) -> Path:
    """Each knob round by round per trial (the value each round trained with), exploits marked."""
    width = max(6.0, 4.5 * len(keys))
    fig, axes = plt.subplots(1, len(keys), figsize=(width, 4.0), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        col = f"config/{key}"
        for i, (trial_id, df) in enumerate(table.groupby("trial_id", sort=False)):
            sel = df[["round", col, *[c for c in ("exploited",) if c in df]]].dropna(subset=["round", col])
            sel = sel.sort_values("round")
            if sel.empty or not pd.api.types.is_numeric_dtype(sel[col]):
                continue
            bold = trial_id == best
            ax.plot(
                sel["round"],
                sel[col],
                drawstyle="steps-mid",
                marker=".",
                lw=2.5 if bold else 1.2,
                color=f"C{i % 10}",
                label=f"{trial_id}{' (best)' if bold else ''}",
            )
            if "exploited" in sel:
                hit = sel[sel["exploited"] == 1]
                ax.scatter(hit["round"], hit[col], marker="x", s=60, color=f"C{i % 10}", zorder=3)
        if spec.space[key].kind == "loguniform":
            ax.set_yscale("log")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    _title(fig, f"{spec.name}: each trial's knobs as its rounds trained with them (x: an exploit)", width)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _final_of(df: pd.DataFrame, metric: str) -> float:
    s = df[metric].dropna() if metric in df else pd.Series([], dtype=float)
    return float(s.iloc[-1]) if len(s) else math.nan
