"""A sweep's plots: metric vs round per trial, each knob vs the final metric, the Pareto front of
a multi-objective sweep, and parameter importance (Optuna's fANOVA evaluator)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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


def write_plots(loaded: LoadedSpec, table: pd.DataFrame, out: Path, info: dict[str, Any]) -> list[Path]:
    spec = loaded.spec
    objs = spec.objective_list
    metric = objs[0].metric
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    written: list[Path] = []
    if table.empty or metric not in table:
        return written
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
        ax.set_title(
            f"{spec.name}: {metric}, mean over {table['config/seed'].nunique()} seeds (band: min-max)"
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
        ax.set_title(f"{spec.name}: {metric} per trial ({spec.mode}, {table['trial_id'].nunique()} trials)")
        if best is not None:
            ax.legend(fontsize=8)
    ax.set_xlabel("round")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(out / "curves.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    if done.empty or not knobs:
        return written
    # 2. each knob against the final metric
    fig, axes = plt.subplots(1, len(knobs), figsize=(3.6 * len(knobs), 3.4), squeeze=False)
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
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"final {metric}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{spec.name}: each knob vs final {metric}")
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

    # 4. parameter importance (needs >= 2 varied knobs and a few finished trials)
    varied = [k for k in knobs if done[f"config/{k}"].nunique() > 1]
    if spec.mode != "pbt" and len(varied) >= 2 and len(done) >= 4:
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
    return written


def _final_of(df: pd.DataFrame, metric: str) -> float:
    s = df[metric].dropna() if metric in df else pd.Series([], dtype=float)
    return float(s.iloc[-1]) if len(s) else math.nan
