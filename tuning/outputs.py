"""A finished sweep's outputs: ``trials.parquet`` (one row per trial and round), ``best.yaml``,
``sweep.json``, ``summary.md`` and ``plots/``, made from Ray Tune's results and each trial's own
record of its reports (``tuning.trainable.REPORTED``). ``tuning.sweep`` runs the sweep and calls
``write_outputs``; nothing here starts Ray or Tune.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from raysim.atomic import atomic_write_text
from raysim.config import dump_config
from raysim.runtime.logger import write_parquet
from tuning.spec import LoadedSpec, SweepSpec

REPORTED = "reported.jsonl"  # tuning.trainable.REPORTED (not imported: that module loads the runtime)

Echo = Callable[[str], None]


def tuning_seeds(loaded: LoadedSpec) -> list[int]:
    """The seeds trials run on (the seeds used to tune: never the ones to report)."""
    spec = loaded.spec
    if "seed" in spec.space:
        return [int(s) for s in spec.space["seed"].probes()]
    return list(spec.seeds) if spec.seeds else [int(loaded.base["seed"])]


@dataclass
class SweepOutcome:
    directory: Path
    trials: int
    errors: list[str]
    best: dict[str, Any] | None
    no_record: list[str] = field(default_factory=list)  # trials whose record is not on the storage path


def final_value(df: pd.DataFrame | None, metric: str) -> float:
    if df is None or metric not in df or df[metric].dropna().empty:
        return float("nan")
    return float(df[metric].dropna().iloc[-1])


def reported_rounds(trial_dir: Path) -> pd.DataFrame | None:
    """Every round a trial reported, from the trainable's own record (``reported.jsonl``). A round
    reported twice (run again after resuming from an earlier checkpoint) keeps its last report."""
    path = trial_dir / REPORTED
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    df = pd.DataFrame(rows).drop(columns=["trial_id"], errors="ignore")
    return df.drop_duplicates(subset="round", keep="last").sort_values("round").reset_index(drop=True)


def trial_id_of(result: Any) -> str:
    """A Tune result's trial id, from its directory (``trial_<id>``)."""
    return Path(result.path).name.removeprefix("trial_")


def tune_reported(result: Any) -> bool:
    """Whether Tune holds any round the trial reported (its own table, kept by the driver)."""
    df = result.metrics_dataframe
    return df is not None and not df.empty and "round" in df


def trial_record(result: Any) -> tuple[pd.DataFrame | None, str]:
    """A Tune result's rounds from the trainable's own record (``reported.jsonl`` in the trial's
    directory on the storage path), and the trial's status: ``done``, ``error`` (Tune recorded an
    error; its rounds, if any, are kept), or ``no_record``: the trial reported rounds to Tune but
    its record is not on the storage path (written somewhere no other node sees). Tune's own table
    is never used in its place: the sweep's outputs come from one source, and a trial whose record
    is missing is listed as such (``sweep.json``'s ``no_record``), not silently filled in."""
    df = reported_rounds(Path(result.path))
    if df is None and tune_reported(result):
        return None, "no_record"
    return df, "error" if result.error is not None else "done"


def trials_table(loaded: LoadedSpec, results: Any) -> pd.DataFrame:
    frames = []
    for r in results:
        df, status = trial_record(r)
        trial_id = trial_id_of(r)
        if df is None or df.empty:
            # one row without metrics, so the trial is in the table with its knobs and status
            df = pd.DataFrame({"round": pd.Series([pd.NA], dtype="Int64")})
        df = df.copy()
        df["trial_id"] = trial_id
        df["status"] = status
        for key in [*loaded.spec.space, "seed"]:
            # each round's own knobs (the trainable records them: PBT changes them within a
            # trial); Tune's final config only where no record says (a trial with no rounds)
            col = f"config/{key}"
            final = r.config.get(key)
            df[col] = df[col].where(df[col].notna(), final) if col in df else final
        frames.append(df)
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    keep = [c for c in table.columns if not c.startswith("config/") or c.count("/") == 1]
    return table[keep]


STARTUP = "random start-up (Optuna)"  # a TPE trial drawn at random before TPE models anything


def proposed_by(loaded: LoadedSpec, directory: Path, trials: pd.DataFrame) -> dict[str, str]:
    """Who chose each trial's knobs in an Optuna sweep ({} in other modes or without the study):
    TPE draws a trial at random while fewer than ``n_startup_trials`` trials have finished (Optuna's
    start-up trials), then proposes from its model ("TPE"); other samplers are named as they are.

    ``trials``: one row per Tune trial (``trial_id`` and its ``config/<knob>``), in the order Tune
    created them (the results' order), which is the order Optuna numbered them; each pair must have
    the same knobs, else nothing is labelled. A trial's start-up status comes from the study: how
    many trials had finished when it was drawn."""
    spec = loaded.spec
    db = directory / "optuna.db"
    if spec.mode != "optuna" or not db.is_file() or trials.empty:
        return {}
    import optuna

    opts = spec.optuna
    sampler = opts.sampler if opts is not None else "tpe"
    if sampler != "tpe":
        return {str(t): {"nsga2": "NSGA-II", "random": "random"}[sampler] for t in trials["trial_id"]}
    startup = opts.n_startup_trials if opts is not None and opts.n_startup_trials is not None else 10
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{db}")
    except KeyError:  # no study of that name: nothing to say
        return {}
    studied = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    if len(studied) != len(trials):
        return {}
    finished = [t.datetime_complete for t in studied if t.state.is_finished() and t.datetime_complete]
    out = {}
    for (_, row), t in zip(trials.iterrows(), studied, strict=True):
        if any(not _same(row.get(f"config/{k}"), v) for k, v in t.params.items()):
            return {}  # not the trial we took it for: say nothing rather than something wrong
        before = sum(1 for c in finished if t.datetime_start is not None and c <= t.datetime_start)
        out[str(row["trial_id"])] = STARTUP if before < startup else "TPE"
    return out


def _same(a: Any, b: Any) -> bool:
    a, b = _py(a), _py(b)
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return bool(a == b)


def grid_points(spec: SweepSpec, finals: list[tuple[Any, list[float]]]) -> list[dict[str, Any]]:
    """Finished trials grouped by their knobs without the seed: a grid point's seeds are one point
    (its mean and 95% CI over seeds); outside grid mode every trial is its own point."""
    from raysim.metrics import mean_ci95

    groups: dict[str, list[tuple[Any, list[float]]]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for r, v in finals:
        knobs = {k: _py(r.config.get(k)) for k in spec.space if k != "seed"}
        key = json.dumps(knobs, sort_keys=True, default=str) if spec.mode == "grid" else Path(r.path).name
        groups.setdefault(key, []).append((r, v))
        configs[key] = knobs
    out = []
    for key, trials in groups.items():
        trials.sort(key=lambda rv: str(rv[0].config.get("seed")))
        mean, half = mean_ci95(np.array([v[0] for _, v in trials]))
        out.append({"config": configs[key], "trials": trials, "mean": mean, "half": half})
    return out


def pareto_mask(values: np.ndarray, goals: list[str]) -> np.ndarray:
    """Non-dominated rows of ``values`` (trials x objectives) under the goals (max/min)."""
    signed = np.where(np.array(goals) == "max", values, -values)  # every objective maximised
    n = len(signed)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        dominated = np.all(signed >= signed[i], axis=1) & np.any(signed > signed[i], axis=1)
        mask[i] = not dominated.any()
    return mask


def write_outputs(loaded: LoadedSpec, results: Any, directory: Path, echo: Echo) -> SweepOutcome:
    from tuning.plots import write_plots
    from tuning.trainable import trial_config

    spec = loaded.spec
    table = trials_table(loaded, results)
    if "trial_id" in table:
        who = proposed_by(loaded, directory, table.drop_duplicates("trial_id"))
        if who:
            table["proposed_by"] = table["trial_id"].map(who).fillna("")
    write_parquet(table, directory / "trials.parquet")
    errors = [f"{Path(r.path).name}: {r.error}" for r in results if r.error is not None]
    statuses = {trial_id_of(r): trial_record(r)[1] for r in results}
    no_record = sorted(t for t, s in statuses.items() if s == "no_record")
    failed = sorted(t for t, s in statuses.items() if s == "error")
    objs = spec.objective_list
    by_trial = dict(iter(table.groupby("trial_id"))) if "trial_id" in table else {}
    finals = []
    for r in results:
        if r.error is None and statuses[trial_id_of(r)] == "done":
            rows = by_trial.get(trial_id_of(r))
            finals.append((r, [final_value(rows, o.metric) for o in objs]))
    finals = [(r, v) for r, v in finals if all(math.isfinite(x) for x in v)]
    best: dict[str, Any] | None = None
    points = grid_points(spec, finals)
    if points:
        sign = 1.0 if objs[0].goal == "max" else -1.0
        top = max(points, key=lambda p: sign * p["mean"])
        r, values = top["trials"][0]
        knobs = final_knobs(by_trial.get(trial_id_of(r)), r.config, [*spec.space, "seed"])
        best = {
            "trial_id": trial_id_of(r),
            "config": {k: _py(v) for k, v in knobs.items()},
            objs[0].metric: top["mean"],  # over the point's seeds (one seed outside grid mode)
            **{o.metric: v for o, v in zip(objs[1:], values[1:], strict=True)},
            "seeds": [_py(t.config.get("seed")) for t, _ in top["trials"]],
            "values": [v[0] for _, v in top["trials"]],
            "rounds": int(by_trial[trial_id_of(r)]["round"].max()),
        }
        cfg = trial_config(loaded.base, {**knobs, "name": f"{spec.name}-best"})
        over = f"mean over seeds {best['seeds']}" if len(best["seeds"]) > 1 else f"seed {knobs.get('seed')}"
        head = (
            f"# best of sweep {spec.name} ({spec.mode}): {objs[0].metric} = {top['mean']:.4f} after round "
            f"{best['rounds']} ({over}; trial {best['trial_id']})\n"
            f"#   raysim run best.yaml                      # rerun it\n"
            f"#   raysim tune --validate-best {directory}   # on fresh seeds\n"
        )
        if spec.mode == "pbt":
            head += (
                "# PBT: the knobs were a schedule (summary.md, plots/schedule.png); these are the values "
                "its last round trained with\n"
            )
        raw = yaml.safe_load(dump_config(cfg))
        raw["output"] = dict(loaded.base["output"])
        # the base's own backend/address, not the one the spec's fixed: set for its trials
        own = spec.best_resources or {}
        raw.setdefault("resources", {}).update({k: own[k] for k in ("backend", "address") if k in own})
        atomic_write_text(directory / "best.yaml", head + yaml.safe_dump(raw, sort_keys=False))
    front = None
    if spec.objectives is not None and finals:
        vals = np.array([v for _, v in finals])
        mask = pareto_mask(vals, [o.goal for o in objs])
        front = [
            {
                "trial_id": trial_id_of(r),
                **dict(zip([o.metric for o in objs], v, strict=True)),
            }
            for (r, v), m in zip(finals, mask, strict=True)
            if m
        ]
    info = {
        "name": spec.name,
        "mode": spec.mode,
        "objectives": [o.model_dump() for o in objs],
        "trials": len(results),
        "errors": len(errors),
        "failed": failed,  # trials Tune recorded an error for (their rounds, if any, are in the table)
        "no_record": no_record,  # trials that reported to Tune but left no reported.jsonl on storage
        "tuning_seeds": tuning_seeds(loaded),
        "best": best,
        "points": [
            {"config": p["config"], "mean": p["mean"], "ci95_half_width": p["half"], "n": len(p["trials"])}
            for p in points
        ],
        "pareto_front": front,
    }
    atomic_write_text(directory / "sweep.json", json.dumps(info, indent=2, default=_py) + "\n")
    plots = write_plots(loaded, table, directory / "plots", info)
    atomic_write_text(directory / "summary.md", summary_markdown(loaded, table, info, plots.notes()))
    if best is not None:
        over = f"mean over seeds {best['seeds']}" if len(best["seeds"]) > 1 else f"trial {best['trial_id']}"
        knobs_shown = {k: v for k, v in best["config"].items() if k != "seed" or len(best["seeds"]) == 1}
        echo(f"best: {objs[0].metric}={best[objs[0].metric]:.4f} ({over}) {knobs_shown}")
    if no_record:
        echo(
            f"error: {len(no_record)} trial(s) reported rounds to Tune but left no {REPORTED} under "
            f"{directory} ({', '.join(no_record)}): their outputs were written where the storage path "
            "is not; listed as no_record in sweep.json and left out of the best trial"
        )
    echo(f"wrote {directory}/trials.parquet, best.yaml, summary.md, plots/")
    return SweepOutcome(
        directory=directory, trials=len(results), errors=errors, best=best, no_record=no_record
    )


def final_knobs(df: pd.DataFrame | None, config: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The knobs a trial's last reported round ran with (its record's ``config/<key>``), falling
    back to Tune's final config for a key the record lacks."""
    out = {}
    for k in keys:
        col = f"config/{k}"
        if df is not None and col in df and df[col].notna().any():
            out[k] = _py(df[col].dropna().iloc[-1])
        elif k in config:
            out[k] = config[k]
    return out


def schedule(df: pd.DataFrame, key: str) -> list[dict[str, Any]]:
    """One trial's ``key`` round by round as runs of equal values: ``{"first", "last", "value",
    "from"}`` where ``from`` names the checkpoint a PBT exploit started the run from (``trial
    round``), "" otherwise."""
    col = f"config/{key}"
    if col not in df or "round" not in df:
        return []
    runs: list[dict[str, Any]] = []
    for _, row in df.dropna(subset=["round"]).sort_values("round").iterrows():
        value, rnd = _py(row[col]), int(row["round"])
        exploited = bool(row.get("exploited", 0) == 1)
        source = f"{row['restored_from_trial']} round {int(row['restored_from_round'])}" if exploited else ""
        if runs and not exploited and _same(runs[-1]["value"], value) and runs[-1]["last"] == rnd - 1:
            runs[-1]["last"] = rnd
        else:
            runs.append({"first": rnd, "last": rnd, "value": value, "from": source})
    return runs


def schedule_text(runs: list[dict[str, Any]]) -> str:
    """``0.002 (rounds 1-2) -> 0.0022 (rounds 3-4, from abc round 2)``."""
    parts = []
    for r in runs:
        span = f"round {r['first']}" if r["first"] == r["last"] else f"rounds {r['first']}-{r['last']}"
        parts.append(f"{_fmt(r['value'])} ({span}{', from ' + r['from'] if r['from'] else ''})")
    return " → ".join(parts)


def _py(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def summary_markdown(
    loaded: LoadedSpec, table: pd.DataFrame, info: dict[str, Any], plot_notes: list[str] | None = None
) -> str:
    """``plot_notes``: one line per promised plot that was not drawn, saying why."""
    spec = loaded.spec
    metric = spec.objective_list[0].metric
    knobs = [*spec.space, "seed"]
    who = "proposed_by" in table
    lines = [
        f"# Sweep {spec.name} ({spec.mode})",
        "",
        f"{info['trials']} trials, {info['errors']} failed; tuned on seeds {info['tuning_seeds']}.",
        "",
        "| trial | "
        + " | ".join(knobs)
        + f" | rounds | final {metric} | status |"
        + (" proposed by |" if who else ""),
        "|" + "---|" * (len(knobs) + 4 + int(who)),
    ]
    points = info.get("points") or []
    if spec.mode == "grid" and any(p["n"] > 1 for p in points):
        names = [k for k in spec.space if k != "seed"]
        sign = -1.0 if spec.objective_list[0].goal == "max" else 1.0
        lines[4:4] = [
            f"Each grid point over its seeds: final {metric}, mean ± 95% CI (t-interval).",
            "",
            "| " + " | ".join(names) + f" | seeds | final {metric} |",
            "|" + "---|" * (len(names) + 2),
            *[
                "| "
                + " | ".join(_fmt(p["config"].get(k)) for k in names)
                + f" | {p['n']} | {p['mean']:.4f} ± {p['ci95_half_width']:.4f} |"
                for p in sorted(points, key=lambda p: sign * p["mean"])
            ],
            "",
            "Every trial:",
            "",
        ]
    rows = []
    for trial_id, df in table.groupby("trial_id", sort=False) if not table.empty else []:
        last = df.iloc[-1]
        final = final_value(df, metric)
        cells = [f"{_fmt(last.get(f'config/{k}'))}" for k in knobs]
        rounds = int(df["round"].max()) if df["round"].notna().any() else 0
        by = f" {last['proposed_by'] or '-'} |" if who else ""
        rows.append(
            (
                final,
                f"| {trial_id} | "
                + " | ".join(cells)
                + f" | {rounds} | {_fmt(final)} | {last['status']} |"
                + by,
            )
        )
    sign = -1.0 if spec.objective_list[0].goal == "max" else 1.0
    rows.sort(key=lambda fr: (math.isnan(fr[0]), sign * fr[0] if not math.isnan(fr[0]) else 0.0))
    lines += [row for _, row in rows]
    if who and (table["proposed_by"] == STARTUP).any():
        n = int((table.groupby("trial_id")["proposed_by"].last() == STARTUP).sum())
        lines += [
            "",
            f"{n} of the trials are Optuna's random start-up trials: TPE draws its knobs at random until "
            "optuna.n_startup_trials trials have finished (Optuna's default is 10), and only the trials "
            "after them are proposed by TPE's model. A sweep of only start-up trials is random search.",
        ]
    changing = [k for k in spec.space if k != "seed" and changes_within_trial(table, k)]
    if spec.mode == "pbt" or changing:
        lines += [
            "",
            "## Schedules",
            "",
            "Each trial's knobs round by round, as its rounds trained with them (PBT exploits a donor's "
            "checkpoint and explores new values during a trial; `from` names the donor's checkpoint). "
            "The table above shows the values of the last round. plots/schedule.png draws them.",
            "",
            "| trial | " + " | ".join(k for k in spec.space if k != "seed") + " |",
            "|" + "---|" * (1 + len([k for k in spec.space if k != "seed"])),
        ]
        for trial_id, df in table.groupby("trial_id", sort=False) if not table.empty else []:
            cells = [schedule_text(schedule(df, k)) or "-" for k in spec.space if k != "seed"]
            lines.append(f"| {trial_id} | " + " | ".join(cells) + " |")
    if plot_notes:
        lines += ["", "## Plots not drawn", "", *[f"- {note}" for note in plot_notes]]
    return "\n".join(lines) + "\n"


def changes_within_trial(table: pd.DataFrame, key: str) -> bool:
    """Whether some trial's ``key`` differs between its rounds."""
    col = f"config/{key}"
    if table.empty or col not in table:
        return False
    return bool((table.groupby("trial_id")[col].nunique(dropna=True) > 1).any())


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
