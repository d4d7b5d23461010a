"""What every `raysim reproduce` command shares: the command group, the cached runner, the
statistics, the Markdown tables and the plots. A paper's module (``dsac``, ``clustered``,
``pfedht``) keeps only its scales, its configs and its experiments.

Runs are ordinary raysim runs under ``<out>/runs/<key>``, keyed by a hash of the config
(:func:`run_key`): a finished run (its ``summary.json`` says so) is reused, so an interrupted
reproduction resumes where it stopped and experiments that share a configuration share its runs. A
long run (``RESUMABLE_ROUNDS`` rounds or more) writes a checkpoint about every eighth of its rounds
(:func:`with_checkpoints`), and a run cut off part-way continues from its newest one when the command
runs again, to the numbers of an uninterrupted run. Numbers are
means with a 95% t-interval over seeds (``raysim.metrics.mean_ci95``); comparisons are paired
t-tests (``scipy.stats.ttest_rel``) on the same seeds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

Echo = Callable[[str], None]

reproduce_app = typer.Typer(
    help="Regenerate a paper's tables and plots (results folder with Markdown tables and PNGs).",
    no_args_is_help=True,
)


# the --jobs option of every `raysim reproduce` command
JobsOption = Annotated[
    int,
    typer.Option(
        min=1, help="runs at a time; > 1 runs them as Ray Tune trials, each in its own worker process"
    ),
]


@reproduce_app.callback()
def _group() -> None:
    """Regenerate a paper's tables and plots (one sub-command per paper)."""


# --------------------------------------------------------------------------------------------- runner


def run_key(raw: dict[str, Any]) -> str:
    body = {k: v for k, v in raw.items() if k != "output"}
    return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


# a run of this many rounds or more writes periodic checkpoints, so that a reproduction cut off
# part-way (a session's end, Ctrl-C) continues it from the newest one instead of from round 1
RESUMABLE_ROUNDS = 24


def with_checkpoints(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` as the runner executes it: a run of ``RESUMABLE_ROUNDS`` rounds or more checkpoints
    every d rounds, d the largest divisor of its own ``checkpoint_every`` (else of its rounds) that is
    at most an eighth of its rounds, so every round the config checkpoints still is (pfedht's
    fine-tuning reads the last round's). Checkpoints do not change what a run learns (a resumed run
    gives the uninterrupted run's numbers), so :func:`run_key` is taken from ``raw`` as given."""
    rounds = dict(raw.get("rounds") or {})
    n = int(rounds.get("num_rounds", 0))
    if n < RESUMABLE_ROUNDS:
        return raw
    base = int(rounds.get("checkpoint_every") or 0) or n
    every = max(d for d in range(1, max(1, n // 8) + 1) if base % d == 0)
    return {**raw, "rounds": {**rounds, "checkpoint_every": every}}


def execute_run(raw: dict[str, Any], runs_dir: str, key: str) -> str:
    """Run one experiment into runs_dir/key in this process: continued from its newest checkpoint
    when an earlier attempt left one there (``Experiment.resume_if_present``)."""
    from raysim.api import BACKENDS
    from raysim.config import config_from_dict
    from raysim.runtime.experiment import Experiment

    raw = {**raw, "output": {"dir": runs_dir, "name": key, "progress": False}}
    cfg = config_from_dict(raw, f"reproduce run {key}")
    exp = Experiment.resume_if_present(cfg, progress=False, backends=BACKENDS)
    if exp is None:  # finished meanwhile (the runner skips finished runs)
        return str(Path(runs_dir) / key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. K clamped to the model's layer blocks
        try:
            exp.run()
        finally:
            exp.close()
    return str(exp.run_dir)


@dataclass
class Run:
    raw: dict[str, Any]
    rounds: pd.DataFrame
    summary: dict[str, Any]
    path: Path

    def training_peak_rss_mb(self) -> float:
        """Peak RSS the client hosts saw during the rounds (system.parquet, actors >= 0). The
        process-wide peak in summary.json is set by loading the dataset, the same for every method."""
        f = self.path / "system.parquet"
        if not f.is_file():
            return math.nan
        sy = pd.read_parquet(f)
        sy = sy[sy["actor"] >= 0]
        return float(sy["peak_rss_mb"].max()) if len(sy) else math.nan

    def final(self, col: str) -> float:
        if col not in self.rounds:
            return math.nan
        v = self.rounds[col].dropna()
        return float(v.iloc[-1]) if len(v) else math.nan

    def mean(self, col: str) -> float:
        if col not in self.rounds:
            return math.nan
        v = self.rounds[col].dropna()
        return float(v.mean()) if len(v) else math.nan


class Runner:
    def __init__(self, out: Path, jobs: int, echo: Echo) -> None:
        self.runs_dir = out / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.jobs = jobs
        self.echo = echo
        self.executed = 0
        self.used: dict[str, float] = {}  # run key -> its total_seconds (setup + rounds)

    def _load(self, key: str, raw: dict[str, Any]) -> Run | None:
        """The finished run under ``key``, or None (absent, or cut off: its summary.json, written
        when an interrupted run's loop unwinds, says ``finished: false``)."""
        d = self.runs_dir / key
        if not (d / "summary.json").is_file():
            return None
        summary = json.loads((d / "summary.json").read_text())
        if summary.get("finished") is False:
            return None
        return Run(
            raw=raw,
            rounds=pd.read_parquet(d / "rounds.parquet"),
            summary=summary,
            path=d,
        )

    def _continuable(self, key: str, raw: dict[str, Any]) -> int | None:
        """The newest checkpoint's round of an unfinished run under ``key`` that the executor will
        continue (its saved config is this one's), or None: then the directory is removed and the
        run starts again (no checkpoint yet, damaged, or written by a raysim whose defaults differ)."""
        from raysim.config import ConfigError, config_from_dict
        from raysim.runtime import rundir

        d = self.runs_dir / key
        # a Tune trial pins num_actors to its placement group: set again by the trial that resumes
        ignore = rundir.HARMLESS_KEYS | {"resources.num_actors"}
        try:
            if rundir.run_state(d) != "resume":
                return None
            newest = rundir.check_run_dir(d)
            given = config_from_dict(
                {**with_checkpoints(raw), "output": {"dir": str(self.runs_dir), "name": key}}, key
            )
            differs = rundir.saved_config_differences(d, given, ignore)
        except ConfigError as exc:
            self.echo(f"  {key}: cannot continue ({exc}); starting it again")
            return None
        if differs:
            self.echo(f"  {key}: its saved config differs from this raysim's; starting it again")
            return None
        return newest

    def run(self, raws: Sequence[dict[str, Any]], label: str, fresh_process: bool = False) -> list[Run]:
        """Run (or reuse) every config: with ``--jobs`` > 1 as Ray Tune trials (``tuning.batch``,
        the runner ``raysim tune`` uses), else one after another in this process. ``fresh_process``
        makes each run a Tune trial in its own worker process, so its peak memory is its own."""
        keys = [run_key(r) for r in raws]
        todo: list[tuple[str, dict[str, Any]]] = []
        for k, r in zip(keys, raws, strict=True):
            if self._load(k, r) is None and k not in {t[0] for t in todo}:
                if (self.runs_dir / k).exists():  # a run an interrupted reproduction left unfinished
                    t = self._continuable(k, r)
                    if t is None:
                        shutil.rmtree(self.runs_dir / k)
                    else:
                        self.echo(f"  {k}: continuing from its checkpoint of round {t}")
                todo.append((k, with_checkpoints(r)))
        if todo:
            self.echo(f"[{label}] {len(todo)} run(s) to do, {len(raws) - len(todo)} reused")
            if self.jobs > 1 or fresh_process:
                from tuning.batch import run_experiments

                # Ray Tune trials, as `raysim tune` runs them: each in a fresh worker process (its
                # peak memory is its own), each with a placement group sized from its config
                run_experiments(todo, self.runs_dir, jobs=self.jobs, label=label, echo=self.echo)
            else:  # one at a time in this process: no per-trial start-up (~2-3 s) for tiny runs
                t0 = time.perf_counter()
                from tuning.interrupt import runs_kept

                for i, (k, r) in enumerate(todo, 1):
                    try:
                        execute_run(r, str(self.runs_dir), k)
                    except KeyboardInterrupt:  # the cut run keeps its newest checkpoint
                        raise runs_kept(self.runs_dir) from None
                    a = r["algorithm"]["name"]
                    self.echo(
                        f"[{label}] {i}/{len(todo)} {a} seed {r['seed']} ({time.perf_counter() - t0:.0f}s)"
                    )
        self.executed += len(todo)
        out = []
        for k, r in zip(keys, raws, strict=True):
            run = self._load(k, r)
            if run is None:
                raise RuntimeError(f"run {k} left no summary.json")
            self.used[k] = float(run.summary.get("total_seconds") or 0.0)
            out.append(run)
        return out


# ------------------------------------------------------------------------------------- statistics


def ci(values: Sequence[float], digits: int = 4, scale: float = 1.0) -> str:
    from raysim.metrics import mean_ci95

    m, h = mean_ci95(np.asarray(values, dtype=np.float64) * scale)
    if not math.isfinite(m):
        return "-"
    return f"{m:.{digits}f} ± {h:.{digits}f}"


def welch(a: Sequence[float], b: Sequence[float]) -> str:
    """Welch's t-test p-value (unpaired, unequal variances), formatted; kept for unpaired data."""
    from scipy.stats import ttest_ind

    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(x) < 2 or len(y) < 2:
        return "n/a (1 seed)"
    if np.allclose(x, y):
        return "1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(x, y, equal_var=False).pvalue)
    return format_p(p)


def format_p(p: float) -> str:
    return "-" if not math.isfinite(p) else (f"{p:.2g}" if p >= 1e-4 else "<1e-4")


def paired_p(a: Sequence[float], b: Sequence[float]) -> str:
    """Paired t-test (``scipy.stats.ttest_rel``) of a against b, seed by seed, formatted. Pairs with
    a NaN on either side are dropped; identical samples give "1"."""
    from scipy.stats import ttest_rel

    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have equal length, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2:
        return "n/a (< 2 seeds)"
    if np.allclose(x, y):
        return "1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_rel(x, y).pvalue)
    return format_p(p)


def paired_diff(a: Sequence[float], b: Sequence[float], digits: int = 2, scale: float = 1.0) -> str:
    """Mean of the paired differences a - b with its 95% t-interval (``ci`` of the differences)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have equal length, got {x.shape} and {y.shape}")
    d = x - y
    text = ci(d[np.isfinite(d)].tolist(), digits, scale)
    return text if text == "-" else ("+" if not text.startswith("-") else "") + text


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def curves(runs: Sequence[Run], col: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-round mean and 95% half-width of ``col`` over seeds (evaluated rounds only)."""
    from raysim.metrics import mean_ci95

    frames = [r.rounds[["round", col]].dropna() for r in runs if col in r.rounds]
    if not frames:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    df = pd.concat(frames)
    xs, ms, hs = [], [], []
    for rnd, g in df.groupby("round"):
        m, h = mean_ci95(g[col].to_numpy())
        xs.append(rnd)
        ms.append(m)
        hs.append(h)
    return np.asarray(xs), np.asarray(ms), np.asarray(hs)


# ------------------------------------------------------------------------------ convergence horizon

# The convergence criterion every reproduction states in its tables (``flattening``): a method's mean
# curve over seeds has flattened by evaluated round r when, at r and at every evaluated round after
# it, the mean of the last W evaluated points differs from the mean of the W points before them by
# less than delta. W is counted in evaluated rounds (each reproduction picks it for its eval_every);
# delta is in the curve's own units (accuracy as a fraction: 0.005 = 0.5 points).
FLAT_WINDOW = 3
FLAT_DELTA = 0.005
LEADERS = 3  # a horizon is adequate when the top LEADERS methods by final mean have all flattened


@dataclass(frozen=True)
class Flat:
    """Where a mean curve flattened: ``round`` the first evaluated round from which the criterion holds
    to the end (None: it does not hold at the last evaluated round, or too few points); ``last_change``
    the difference of the last two windows' means (NaN with too few points)."""

    round: int | None
    last_change: float
    points: int  # evaluated rounds on the curve
    window: int

    @property
    def too_few(self) -> bool:
        return self.points < 2 * self.window

    def cell(self) -> str:
        """The table's "flattened by round" cell."""
        if self.too_few:
            return f"too few points ({self.points} evaluated rounds < 2 × {self.window})"
        if self.round is None:
            return f"not flat (last change {self.last_change * 100:+.2f} points)"
        return str(self.round)


def flattening(
    rounds: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray, window: int, delta: float
) -> Flat:
    """The criterion on one mean curve (``rounds`` ascending, the evaluated rounds; ``values`` their
    means): at evaluated index i >= 2W - 1, flat(i) = |mean(v[i-W+1..i]) - mean(v[i-2W+1..i-W])| < delta.
    The curve has flattened by the round of the first index from which flat holds through the last."""
    if window < 1 or delta <= 0:
        raise ValueError(f"flattening needs window >= 1 and delta > 0, got {window}, {delta}")
    x = np.asarray(rounds, np.float64)
    v = np.asarray(values, np.float64)
    if x.shape != v.shape:
        raise ValueError(f"rounds and values differ in length: {x.shape} vs {v.shape}")
    n = len(v)
    if n < 2 * window:
        return Flat(None, math.nan, n, window)
    change = np.full(n, np.nan)
    for i in range(2 * window - 1, n):
        change[i] = v[i - window + 1 : i + 1].mean() - v[i - 2 * window + 1 : i - window + 1].mean()
    first: int | None = None
    for i in range(n - 1, 2 * window - 2, -1):  # walk back while the curve stays flat
        if not (abs(change[i]) < delta):
            break
        first = i
    return Flat(None if first is None else int(x[first]), float(change[-1]), n, window)


def method_flattening(
    by_method: Mapping[str, Sequence[Run]], col: str, window: int = FLAT_WINDOW, delta: float = FLAT_DELTA
) -> dict[str, Flat]:
    """``flattening`` of every method's mean curve over its seeds."""
    out = {}
    for method, runs in by_method.items():
        x, m, _ = curves(runs, col)
        out[method] = flattening(x, m, window, delta)
    return out


def criterion_text(window: int, delta: float = FLAT_DELTA, leaders: int = LEADERS) -> str:
    """The convergence criterion as a table states it."""
    return (
        f"Convergence criterion: a method's mean curve over seeds has flattened by evaluated round r when, "
        f"at r and at every evaluated round after it, the mean of its last {window} evaluated points "
        f"differs from the mean of the {window} before them by less than {delta * 100:g} points (r is "
        f"where the second window ends, so the plateau began up to {2 * window - 1} evaluations earlier). "
        f"A horizon is adequate when the top {leaders} methods by final mean all flattened before it."
    )


def horizon_verdict(
    by_method: Mapping[str, Sequence[Run]], flats: Mapping[str, Flat], col: str, leaders: int = LEADERS
) -> str:
    """One line for a table: the leaders (top ``leaders`` by final mean) and whether they all flattened
    before the last round (``criterion_text``); says plainly when they have not."""
    final = {m: float(np.nanmean(finals(runs, col))) for m, runs in by_method.items() if runs}
    top = sorted((m for m in final if math.isfinite(final[m])), key=lambda m: -final[m])[:leaders]
    last = max((int(r.rounds["round"].max()) for runs in by_method.values() for r in runs), default=0)

    def said(m: str) -> str:
        f = flats[m]
        return f"{m}: from round {f.round}" if f.round is not None else f"{m}: {f.cell()}"

    ok = [m for m in top if (flats[m].round or last) < last]
    named = "; ".join(said(m) for m in top)
    if top and len(ok) == len(top):
        return f"horizon {last} is adequate: the leaders all flattened before it ({named})."
    missing = ", ".join(m for m in top if m not in ok)
    return (
        f"horizon {last} is NOT adequate: {missing} of the leaders had not flattened before it ({named}); "
        "its final-round numbers rank methods mid-training, not at convergence."
    )


def evaluated_round_at_most(runs: Sequence[Run], col: str, rnd: int) -> int | None:
    """The last round <= ``rnd`` at which every run evaluated ``col`` (None: there is none)."""
    common: set[int] | None = None
    for r in runs:
        if col not in r.rounds:
            return None
        got = {int(x) for x in r.rounds.loc[r.rounds[col].notna(), "round"]}
        common = got if common is None else common & got
    picked = [x for x in (common or set()) if x <= rnd]
    return max(picked) if picked else None


def at_round(runs: Sequence[Run], col: str, rnd: int) -> list[float]:
    """Each run's ``col`` at round ``rnd`` (NaN where it was not evaluated then)."""
    out = []
    for r in runs:
        v = r.rounds.loc[r.rounds["round"] == rnd, col].dropna() if col in r.rounds else pd.Series([])
        out.append(float(v.iloc[0]) if len(v) else math.nan)
    return out


EARLY_ROUND = 12  # the old horizons' round: the "early rounds" column of a longer horizon


def horizon_header(rounds: int) -> list[str]:
    """The columns ``horizon_cells`` adds to a table at a horizon of ``rounds``."""
    early = [f"early: round {EARLY_ROUND} (%)"] if rounds > EARLY_ROUND else []
    return [*early, "flattened by round"]


def horizon_cells(
    rounds: int, by: Mapping[str, Sequence[Run]], flats: Mapping[str, Flat], col: str = "personal_accuracy"
) -> dict[str, list[str]]:
    """Per method: ``col`` at round ``EARLY_ROUND`` read off the same runs when the horizon is longer
    (the last evaluated round before it, named, when that round was not evaluated) and where its mean
    curve flattened (``Flat.cell``)."""
    out = {}
    for name, runs in by.items():
        cells = []
        if rounds > EARLY_ROUND:
            r = evaluated_round_at_most(runs, col, EARLY_ROUND)
            vals = at_round(runs, col, r) if r is not None else []
            cells.append(ci(vals, 2, 100) + ("" if r == EARLY_ROUND else f" (round {r})") if vals else "-")
        cells.append(flats[name].cell())
        out[name] = cells
    return out


def finals(runs: Sequence[Run], col: str) -> list[float]:
    return [r.final(col) for r in runs]


def means(runs: Sequence[Run], col: str) -> list[float]:
    return [r.mean(col) for r in runs]


def ci_or(values: Sequence[float], digits: int, scale: float = 1.0, why: str = "n/a") -> str:
    """``ci`` of the values, or ``why`` when none is finite (a metric the method does not have)."""
    return ci(values, digits, scale) if any(math.isfinite(v) for v in values) else why


def images_md(names: Sequence[str]) -> str:
    """Markdown image links to the PNGs ``names`` beside a table.md."""
    return " ".join(f"![{Path(n).stem}]({n})" for n in names)


# ----------------------------------------------------------------------------------------- commands


@dataclass
class Context:
    """What an experiment of any paper gets: the scale, the seeds, the results folder, the runner."""

    scale: Any
    seeds: list[int]
    out: Path
    runner: Runner
    tuner: Any = field(
        default=None, kw_only=True
    )  # raysim.reproduce.fair.FairTuner with --tune: each method's lrs tuned first

    def folder(self, name: str) -> Path:
        d = self.out / name
        d.mkdir(parents=True, exist_ok=True)
        return d


def parse_experiments(
    only: str,
    experiments: Mapping[int, Any],
    flag: str = "--only",
    what: str = "experiment",
    default: Sequence[int] | None = None,
) -> list[int]:
    """``--only`` of every `raysim reproduce` command: comma-separated experiment numbers (empty:
    ``default``, else all). ``flag``/``what`` name another such list of numbered choices in the
    messages."""
    if not only.strip():
        return sorted(experiments if default is None else default)
    try:
        picked = sorted({int(x) for x in only.replace(" ", "").split(",") if x})
    except ValueError:
        raise typer.BadParameter(f"{flag} takes {what} numbers like 1,3, got {only!r}") from None
    bad = [x for x in picked if x not in experiments]
    if bad:
        raise typer.BadParameter(f"{flag}: no {what} {bad}; valid: {', '.join(map(str, experiments))}")
    return picked


def run_picked(
    picked: Sequence[int],
    experiments: Mapping[int, tuple[str, Callable[[Any], str]]],
    ctx: Any,
    echo: Echo,
) -> tuple[dict[int, float], float]:
    """Run the picked experiments in order, echoing progress; their wall times and the total."""
    times: dict[int, float] = {}
    t_all = time.perf_counter()
    for i in picked:
        name, fn = experiments[i]
        echo(f"== experiment {i}: {name}")
        t0 = time.perf_counter()
        fn(ctx)
        times[i] = time.perf_counter() - t0
        echo(f"== experiment {i} done in {times[i]:.0f}s")
    return times, time.perf_counter() - t_all


def index_sections(
    out: Path, picked: Sequence[int], experiments: Mapping[int, tuple[str, Any]], times: Mapping[int, float]
) -> list[str]:
    """The tail of a reproduction's README.md: the experiment index with wall times, then every
    experiment's table.md with its image links made relative to ``out``."""
    lines = ["| experiment | table | wall time (s) |", "|---|---|---|"]
    for i in picked:
        name = experiments[i][0]
        lines.append(f"| {i} | [{name}/table.md]({name}/table.md) | {times[i]:.0f} |")
    lines.append("")
    for i in picked:
        name = experiments[i][0]
        lines += [(out / name / "table.md").read_text().rstrip().replace("](", f"]({name}/"), ""]
    return lines


def echo_err(msg: str) -> None:
    """Progress of a reproduction, on stderr (stdout stays free for the result)."""
    typer.echo(msg, err=True)


def pick_scale(scale: str, quick: bool, scales: Mapping[str, Any]) -> str:
    """The scale named by ``--scale`` (``--quick`` is ``--scale quick``); a bad name or a clash is a
    usage error (exit 2) naming the option and the valid names."""
    if scale not in scales:
        raise typer.BadParameter(f"no scale {scale!r}; valid: {', '.join(scales)}", param_hint="--scale")
    if quick and scale not in ("quick", "full"):
        raise typer.BadParameter(
            f"--quick is --scale quick; it clashes with --scale {scale}", param_hint="--scale"
        )
    return "quick" if quick else scale


def scale_flag(name: str) -> str:
    """The scale's flag for a README's command line (nothing for the default, full)."""
    return {"full": "", "quick": " --quick"}.get(name, f" --scale {name}")


def only_flag(
    picked: Sequence[int], experiments: Mapping[int, Any], default: Sequence[int] | None = None
) -> str:
    """`` --only 1,3`` for a README's command line unless exactly the default experiments (``default``,
    else all) ran."""
    every = sorted(experiments if default is None else default)
    return "" if sorted(picked) == every else f" --only {','.join(map(str, picked))}"


@dataclass(frozen=True)
class Finished:
    """What a reproduction's README.md says about the invocation that made it."""

    times: dict[int, float]  # experiment -> wall seconds
    total: float
    load: tuple[float, float]  # 1-minute load average at the start and at the end


def run_reproduction(
    picked: Sequence[int], experiments: Mapping[int, tuple[str, Callable[[Any], str]]], ctx: Any
) -> Finished:
    """Run the picked experiments on ``ctx`` (its runner echoes progress), timing them and the load."""
    from tuning.interrupt import Interrupted, exit_interrupted

    load_before = machine_load()
    try:
        times, total = run_picked(picked, experiments, ctx, ctx.runner.echo)
    except Interrupted as err:  # Ctrl-C: what is kept, how to continue, exit 130
        exit_interrupted(
            err,
            "run the same command again to continue from there (finished runs and tuning sweeps are reused)",
        )
    return Finished(times, total, (load_before, machine_load()))


def load_note(out: Path, executed: int, total: float, load: tuple[float, float]) -> str:
    """How long an invocation took, and on how busy a machine (a shared one inflates wall times)."""
    return (
        f"Wall time of this invocation: {total:.0f} s ({executed} runs executed; runs already under "
        f"{out}/runs were reused) on {os.cpu_count()} CPU(s), 1-minute load average {load[0]:.1f} at the "
        f"start and {load[1]:.1f} at the end (a shared machine inflates the wall time)."
    )


def machine_load() -> float:
    """The 1-minute load average (NaN where the platform has none)."""
    try:
        return float(os.getloadavg()[0])
    except OSError:  # not on every platform
        return math.nan
