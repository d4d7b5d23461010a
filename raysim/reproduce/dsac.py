"""`raysim reproduce dsac`: the DSAC paper's experiments (Tables 2-3, 5-7, Figures 6-11), scaled down.

    raysim reproduce dsac --seeds 5 --scale small --jobs 2 --out results/dsac   # the tables in docs/dsac.md
    raysim reproduce dsac --only 1,3 --seeds 5                                     # a subset
    raysim reproduce dsac --scale micro --seeds 2                                  # digits, 3 rounds: a smoke test

Every run is an ordinary raysim run under ``<out>/runs/<key>`` (config.yaml, rounds.parquet, ...); a
run whose summary.json exists is reused, so an interrupted reproduction resumes where it stopped and
experiments that share a configuration (e.g. complete DSAC in experiments 3, 4 and 6) share its runs.
Each experiment writes ``<out>/<experiment>/table.md`` and PNG plots; ``<out>/README.md`` indexes them
with the scale used, the measured wall time and the machine's load.

Evaluation hygiene: the defaults were tuned on seed 0, so evaluation uses seeds 1..``--seeds`` (never
0). Every method of a comparison shares shards, cohorts and initial weights per seed, so comparisons
are paired: the tables give the mean paired difference with its 95% t-interval and the paired t-test
(``scipy.stats.ttest_rel``). Numbers are means with a 95% t-interval over seeds
(``raysim.metrics.mean_ci95``). Every table reports the base model M_base (pre-trained on the public
split, the start of DSAC and of every "(pre-trained start)" baseline) at round 0.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

reproduce_app = typer.Typer(
    help="Regenerate a paper's tables and plots (results folder with Markdown tables and PNGs).",
    no_args_is_help=True,
)


@reproduce_app.callback()
def _group() -> None:
    """Regenerate a paper's tables and plots (one sub-command per paper)."""


# --------------------------------------------------------------------------------------------- scales


@dataclass(frozen=True, kw_only=True)
class Scale:
    """How far the paper's setup (400 rounds, MNIST/CIFAR-10) is scaled down."""

    name: str
    dataset: str
    model: str
    num_clients: int
    cohort: int
    rounds: int
    epochs: int
    lr: float
    batch: int
    public_fraction: float
    client_counts: tuple[int, ...]  # experiment 7
    complexity_rounds: int
    ks: tuple[int, ...]  # experiment 4
    epochs_list: tuple[int, ...]
    gammas: tuple[float, ...]  # experiment 1 (0: no decay, the reference)
    noise: tuple[float, ...]  # experiment 2
    target: float  # experiment 5: rounds to this test accuracy
    eval_every: int = 1  # global and personalised evaluation every this many rounds (and the last)
    complexity_seeds: int = 0  # experiment 7's seeds (timing only); 0: all of --seeds
    # FedProx and SCAFFOLD from the pre-trained start too (experiment 3); FedAvg's always runs
    pretrained_all: bool = True


SCALES: dict[str, Scale] = {
    "micro": Scale(
        name="micro",
        dataset="digits",
        model="mlp",
        num_clients=6,
        cohort=3,
        rounds=3,
        epochs=1,
        lr=0.05,
        batch=16,
        public_fraction=0.1,
        client_counts=(4, 6),
        complexity_rounds=1,
        ks=(1, 3),
        epochs_list=(1, 2),
        gammas=(0.0, 0.2),
        noise=(0.2,),
        target=0.3,
        eval_every=3,
        complexity_seeds=1,
        pretrained_all=False,
    ),
    # 50 clients, 10 a round (20%: a client misses ~4 rounds between turns, so the decay and the
    # weight floor act), 20 rounds; 186 runs, 86 min measured with --jobs 2 on a shared 2-core machine
    "small": Scale(
        name="small",
        dataset="fashion-mnist",
        model="mlp",
        num_clients=50,
        cohort=10,
        rounds=20,
        epochs=1,
        lr=0.05,
        batch=32,
        public_fraction=0.05,
        client_counts=(20, 100),
        complexity_rounds=3,
        ks=(1, 2, 3),
        epochs_list=(1, 2),
        gammas=(0.0, 0.05, 0.1, 0.2),
        noise=(0.2, 0.4),
        target=0.7,
        eval_every=5,
        complexity_seeds=2,
        pretrained_all=True,
    ),
}
# the paper's full sweeps with the small CNN and 60 rounds (many hours on 2 cores; not run here)
SCALES["full"] = replace(
    SCALES["small"],
    name="full",
    model="cnn-small",
    rounds=60,
    client_counts=(20, 50, 100),
    complexity_rounds=5,
    ks=(1, 2, 3, 4, 5, 6),
    epochs_list=(1, 2, 3, 4, 5),
    gammas=(0.0, 0.01, 0.03, 0.05, 0.10, 0.15, 0.20),
    noise=(0.1, 0.2, 0.3, 0.4),
    target=0.75,
    complexity_seeds=0,
)
TUNING_SEED = 0  # the seed the defaults were chosen on: never an evaluation seed

# DSAC as in configs/dsac_fmnist.yaml (K = 3: both models used here have 3 layer blocks)
DSAC_DEFAULT: dict[str, Any] = {
    "name": "dsac",
    "num_submodels": 3,
    "submodels_per_client": 2,
    "num_clusters": 3,
    "beta": 1.0,
    "decay": 0.05,
    "weight_floor": 0.6,
    "cluster_every": 5,
    "max_groups": 4,
    "lambda_pretrain": 0.05,
    "pretrain_epochs": 5,
    "finetune_eps": 0.01,
}
PRE = " (pre-trained start)"
BASELINES: dict[str, dict[str, Any]] = {
    "FedAvg": {"name": "fedavg"},
    "FedProx": {"name": "fedprox", "mu": 0.01},
    "SCAFFOLD": {"name": "scaffold"},
}


def pretrained(algo: dict[str, Any]) -> dict[str, Any]:
    """A baseline started from DSAC's base model: same public split, epochs and learning rate."""
    return {**algo, "init_from": "pretrained", "pretrain_epochs": DSAC_DEFAULT["pretrain_epochs"]}


SPLITS: dict[str, dict[str, Any]] = {
    "pathological": {"partition": "pathological", "classes_per_client": 2},
    # "real-world" heterogeneity: Dirichlet label skew plus log-normal quantity skew
    "real-world": {"partition": "dirichlet-quantity", "alpha": 0.5, "sigma": 1.0},
    # feature skew with ground-truth groups (Figure 9's NMI): 4 rotations, Dirichlet within groups
    "rotation": {"partition": "rotation", "num_groups": 4, "alpha": 0.5},
}


def dsac(**over: Any) -> dict[str, Any]:
    return {**DSAC_DEFAULT, **over}


def raw_config(
    scale: Scale,
    seed: int,
    algorithm: dict[str, Any],
    split: str,
    *,
    backend: str = "serial",
    data: dict[str, Any] | None = None,
    local: dict[str, Any] | None = None,
    rounds: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One run's config. Every method of a comparison gets the same data section (public split
    included), so every client holds the same shard whatever the algorithm; personalised evaluation
    is on (DSAC's group models, eq. 13; the baselines' global model on each client's test split)."""
    return {
        "name": "reproduce",
        "seed": seed,
        "data": {
            "dataset": scale.dataset,
            "num_clients": scale.num_clients,
            "public_fraction": scale.public_fraction,
            **SPLITS[split],
            **(data or {}),
        },
        "model": {"name": scale.model},
        "algorithm": dict(algorithm),
        "local": {"epochs": scale.epochs, "batch_size": scale.batch, "lr": scale.lr, **(local or {})},
        "rounds": {
            "num_rounds": scale.rounds,
            "clients_per_round": scale.cohort,
            "eval_every": scale.eval_every,
            "personal_eval": True,
            **(rounds or {}),
        },
        "resources": {"backend": backend, "torch_threads": 1},
        "output": {"progress": False},
    }


# --------------------------------------------------------------------------------------------- runner


def run_key(raw: dict[str, Any]) -> str:
    body = {k: v for k, v in raw.items() if k != "output"}
    return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def _execute(raw: dict[str, Any], runs_dir: str, key: str) -> str:
    """Run one experiment into runs_dir/key in this process."""
    from raysim.config import config_from_dict
    from raysim.runtime.experiment import Experiment

    raw = {**raw, "output": {"dir": runs_dir, "name": key, "progress": False}}
    cfg = config_from_dict(raw, f"reproduce run {key}")
    exp = Experiment(cfg, progress=False)
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
    def __init__(self, out: Path, jobs: int, echo: Callable[[str], None]) -> None:
        self.runs_dir = out / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.jobs = jobs
        self.echo = echo
        self.executed = 0
        self.used: dict[str, float] = {}  # run key -> its total_seconds (setup + rounds)

    def _load(self, key: str, raw: dict[str, Any]) -> Run | None:
        d = self.runs_dir / key
        if not (d / "summary.json").is_file():
            return None
        return Run(
            raw=raw,
            rounds=pd.read_parquet(d / "rounds.parquet"),
            summary=json.loads((d / "summary.json").read_text()),
            path=d,
        )

    def run(self, raws: Sequence[dict[str, Any]], label: str, fresh_process: bool = False) -> list[Run]:
        """Run (or reuse) every config: with ``--jobs`` > 1 as Ray Tune trials (``tuning.batch``,
        the runner ``raysim tune`` uses), else one after another in this process. ``fresh_process``
        makes each run a Tune trial in its own worker process, so its peak memory is its own."""
        keys = [run_key(r) for r in raws]
        todo: list[tuple[str, dict[str, Any]]] = []
        for k, r in zip(keys, raws, strict=True):
            if self._load(k, r) is None and k not in {t[0] for t in todo}:
                if (self.runs_dir / k).exists():  # a half-written run from an interrupted reproduction
                    shutil.rmtree(self.runs_dir / k)
                todo.append((k, r))
        if todo:
            self.echo(f"[{label}] {len(todo)} run(s) to do, {len(raws) - len(todo)} reused")
            if self.jobs > 1 or fresh_process:
                from tuning.batch import run_experiments

                # Ray Tune trials, as `raysim tune` runs them: each in a fresh worker process (its
                # peak memory is its own), each with a placement group sized from its config
                run_experiments(todo, self.runs_dir, jobs=self.jobs, label=label, echo=self.echo)
            else:  # one at a time in this process: no per-trial start-up (~2-3 s) for tiny runs
                t0 = time.perf_counter()
                for i, (k, r) in enumerate(todo, 1):
                    _execute(r, str(self.runs_dir), k)
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


# -------------------------------------------------------------------------------------------- helpers


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
    return _fmt_p(p)


def _fmt_p(p: float) -> str:
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
    return _fmt_p(p)


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


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(path: Path, panels: dict[str, dict[str, list[Run]]], col: str, ylabel: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, by_method) in zip(axes[0], panels.items(), strict=True):
        for method, runs in by_method.items():
            x, m, h = curves(runs, col)
            ax.plot(x, m, label=method)
            ax.fill_between(x, m - h, m + h, alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_points(
    path: Path, series: dict[str, tuple[Sequence[float], list[list[float]]]], xlabel: str, ylabel: str
) -> None:
    """Mean ± 95% CI of several series against an x axis."""
    from raysim.metrics import mean_ci95

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (xs, values) in series.items():
        stats = [mean_ci95(np.asarray(v)) for v in values]
        ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(path: Path, names: list[str], values: list[list[float]], ylabel: str) -> None:
    from raysim.metrics import mean_ci95

    plt = _plt()
    stats = [mean_ci95(np.asarray(v)) for v in values]
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 4))
    ax.bar(names, [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=4)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class Ctx:
    scale: Scale
    seeds: list[int]
    out: Path
    runner: Runner
    backend: str

    def cfg(self, seed: int, algorithm: dict[str, Any], split: str, **kw: Any) -> dict[str, Any]:
        return raw_config(self.scale, seed, algorithm, split, backend=self.backend, **kw)

    def over_seeds(self, algorithm: dict[str, Any], split: str, label: str, **kw: Any) -> list[Run]:
        return self.runner.run([self.cfg(s, algorithm, split, **kw) for s in self.seeds], label)

    def prefetch(
        self,
        label: str,
        specs: Sequence[tuple[dict[str, Any], str, dict[str, Any]]],
        seeds: Sequence[int] | None = None,
        fresh_process: bool = False,
    ) -> None:
        """Run every (algorithm, split, raw_config kwargs) x seed of an experiment as one batch (with
        ``--jobs`` > 1: one Ray session, ``jobs`` runs at a time); later calls reuse the runs."""
        raws = [self.cfg(s, a, split, **kw) for a, split, kw in specs for s in (seeds or self.seeds)]
        self.runner.run(raws, label, fresh_process=fresh_process)

    def folder(self, name: str) -> Path:
        d = self.out / name
        d.mkdir(parents=True, exist_ok=True)
        return d


def finals(runs: Sequence[Run], col: str) -> list[float]:
    return [r.final(col) for r in runs]


def means(runs: Sequence[Run], col: str) -> list[float]:
    return [r.mean(col) for r in runs]


def start_of(runs: Sequence[Run]) -> str:
    """Where a method's round 1 started: M_base with its round-0 test accuracy, or random weights."""
    base = finals(runs, "base_test_accuracy")
    if not base or not all(math.isfinite(b) for b in base):
        return "random"
    return f"M_base ({ci(base, 2, 100)})"


def base_note(by: dict[str, list[Run]]) -> str:
    """One sentence on the base model of a table: its round-0 test accuracy over seeds, and a check
    that every method that starts from it got the same one (same seed, same public split)."""
    vals: list[float] | None = None
    same = True
    for runs in by.values():
        b = finals(runs, "base_test_accuracy")
        if not b or not all(math.isfinite(x) for x in b):
            continue
        if vals is None:
            vals = b
        elif not np.allclose(b, vals):
            same = False
    if vals is None:
        return "No method in this table starts from a pre-trained model (all start from the same random weights)."
    check = (
        "identical for every method that starts from it (same seed, same public split)"
        if same
        else "**differs between methods of the same seed: check the pre-training settings**"
    )
    return (
        f"Base model M_base (pre-trained {DSAC_DEFAULT['pretrain_epochs']} epochs on the public split no "
        f"client holds), test accuracy at round 0: **{ci(vals, 2, 100)} %**, {check}. Column *start*: "
        "which model round 1 started from."
    )


# ----------------------------------------------------------------------------------------- experiments

PAPER_T2 = {  # decay -> (MNIST acc %, CIFAR-10 acc %, dropout %, fairness)
    0.01: (98.45, 89.12, 3.2, 0.92),
    0.03: (98.61, 89.87, 4.2, 0.90),
    0.05: (98.69, 90.26, 5.1, 0.89),
    0.10: (98.12, 88.95, 12.7, 0.78),
    0.15: (97.68, 87.23, 19.3, 0.70),
    0.20: (97.33, 86.41, 28.4, 0.61),
}


def dropout_rate(run: Run) -> float:
    r = run.rounds
    if "dropped_by_floor" not in r:
        return math.nan
    return float(r["dropped_by_floor"].sum() / max(r["completed"].sum(), 1))


def exp1_decay(c: Ctx) -> str:
    d = c.folder("1_decay")
    stale = {g: dsac(decay=g, staleness="last_model") for g in c.scale.gammas}
    c.prefetch("1 decay", [(a, "pathological", {}) for a in [*stale.values(), DSAC_DEFAULT]])
    by = {g: c.over_seeds(a, "pathological", f"1 decay {g}") for g, a in stale.items()}
    sync = c.over_seeds(DSAC_DEFAULT, "pathological", "1 sync")
    ref_g = 0.0 if 0.0 in by else min(by)
    ref = finals(by[ref_g], "test_accuracy")
    rows, accs, drops, fair = [], [], [], []
    for g, runs in by.items():
        acc = finals(runs, "test_accuracy")
        drop = [dropout_rate(r) for r in runs]
        accs.append(acc)
        drops.append(drop)
        fair.append(finals(runs, "jain"))
        paper = PAPER_T2.get(round(g, 2))
        rows.append(
            [
                "last_model",
                g,
                ci(acc, 2, 100),
                "/" if g == ref_g else paired_diff(acc, ref, 2, 100),
                "/" if g == ref_g else paired_p(acc, ref),
                ci(drop, 1, 100),
                ci(fair[-1], 3),
                ci(means(runs, "rounds_missed_mean"), 2),
                "-" if paper is None else f"{paper[0]} / {paper[2]} / {paper[3]}",
            ]
        )
    sacc = finals(sync, "test_accuracy")
    rows.append(
        [
            "sync",
            DSAC_DEFAULT["decay"],
            ci(sacc, 2, 100),
            paired_diff(sacc, ref, 2, 100),
            paired_p(sacc, ref),
            ci([dropout_rate(r) for r in sync], 1, 100),
            ci(finals(sync, "jain"), 3),
            "0 (fresh model)",
            "",
        ]
    )
    xs = list(c.scale.gammas)
    plot_points(d / "accuracy.png", {"DSAC, stale clients": (xs, accs)}, "decay γ", "test accuracy")
    plot_points(
        d / "dropout_fairness.png", {"dropout rate": (xs, drops), "Jain fairness": (xs, fair)}, "decay γ", ""
    )
    q = c.scale.cohort / c.scale.num_clients
    floor = DSAC_DEFAULT["weight_floor"]
    md = (
        "## 1. Decay coefficient γ (Table 2 analogue)\n\n"
        "DSAC on the pathological split in the **stale-client mode** (`staleness: last_model`): a selected "
        "client trains from the model it received at the end of its last round, so its update is Δt "
        "versions stale (Δt = rounds it missed) and eq. (14)'s factor exp(−γΔt) discounts real staleness; "
        "γ = 0 is the reference without decay (and without drops). The last row is the synchronous default "
        "(every client trains from the current model; there the decay is only a participation-recency "
        "weight). Δ: paired difference against γ = 0 (percentage points, 95% CI), p: paired t-test. "
        f"Dropout rate: share of delivered updates whose factor fell below `weight_floor` ({floor}); with "
        f"{c.scale.cohort} of {c.scale.num_clients} clients a round a client misses m or more rounds with "
        f"probability ≈ {1 - q:.1f}^m, so this column follows from the threshold ln(1/{floor})/γ by "
        "construction, not from learning. Fairness: Jain's index over the clients' cumulative share of "
        "aggregation weight after the last round. Staleness: mean Δt of the delivered updates.\n\n"
        + base_note({"g": by[ref_g]})
        + "\n\n"
        + table(
            [
                "mode",
                "γ",
                "accuracy (%)",
                "Δ vs γ = 0 (pp)",
                "p (paired)",
                "dropout rate (%)",
                "fairness (Jain)",
                "staleness (rounds)",
                "paper MNIST acc / dropout / fairness",
            ],
            rows,
        )
    )
    (d / "table.md").write_text(md + "\n\n![accuracy](accuracy.png) ![dropout](dropout_fairness.png)\n")
    return md


PAPER_T3 = {
    0.1: (97.85, 98.41, 0.72, 0.15),
    0.2: (95.12, 97.56, 0.68, 0.18),
    0.3: (90.33, 95.88, 0.61, 0.23),
    0.4: (83.47, 92.15, 0.55, 0.29),
}
# DSAC's update aggregation alone (eq. 3-6 over the whole cohort, data-size client weights) on the
# pre-trained start without the λ pull: compared with FedAvg from the same start, only the
# aggregation rule differs
KMEANS_ONLY = dsac(
    lambda_pretrain=0.0,
    decomposition=False,
    dynamic_weights=False,
    hierarchical_clustering=False,
    finetune_eps=0.0,
)
KMEANS_PRIOR = {**KMEANS_ONLY, "variance_prior": 1.0}


def exp2_noise(c: Ctx) -> str:
    d = c.folder("2_noise")
    fedavg = pretrained(BASELINES["FedAvg"])
    aggs = {
        "FedAvg" + PRE: fedavg,
        "K-means, eq. 6": KMEANS_ONLY,
        "K-means, variance prior (n0 = 1)": KMEANS_PRIOR,
    }
    c.prefetch(
        "2 noise",
        [(a, "real-world", {"data": {"label_noise": nz}}) for nz in c.scale.noise for a in aggs.values()],
    )
    rows = []
    series: dict[str, list[list[float]]] = {m: [] for m in aggs}
    everything: dict[str, list[Run]] = {}
    for nz in c.scale.noise:
        by = {
            m: c.over_seeds(a, "real-world", f"2 noise {nz} {m}", data={"label_noise": nz})
            for m, a in aggs.items()
        }
        everything.update({f"{m} {nz}": r for m, r in by.items()})
        ref = finals(by["FedAvg" + PRE], "test_accuracy")
        paper = PAPER_T3.get(round(nz, 1))
        for i, (m, runs) in enumerate(by.items()):
            acc = finals(runs, "test_accuracy")
            series[m].append(acc)
            km = m != "FedAvg" + PRE
            rows.append(
                [
                    f"{nz:.0%}" if i == 0 else "",
                    m,
                    ci(acc, 2, 100),
                    paired_diff(acc, ref, 2, 100) if km else "/",
                    paired_p(acc, ref) if km else "/",
                    ci(means(runs, "silhouette"), 3) if km else "n/a",
                    ci(means(runs, "intra_cluster"), 3) if km else "n/a",
                    ("-" if paper is None else f"{paper[0]} / {paper[1]} / {paper[2]} / {paper[3]}")
                    if i == 0
                    else "",
                ]
            )
    xs = [100 * n for n in c.scale.noise]
    plot_points(
        d / "accuracy.png", {m: (xs, v) for m, v in series.items()}, "noisy clients (%)", "test accuracy"
    )
    md = (
        "## 2. Noisy clients (Table 3 analogue)\n\n"
        "Real-world split; a share of clients has uniformly random training labels (`data.label_noise`); the "
        'test set is clean. Every method starts from the same pre-trained base model. "K-means" is FedAvg\'s '
        "round with DSAC's update aggregation only (eq. 3-6 over the whole cohort: K-means into 3 clusters, "
        "α_c ∝ |S_c|·exp(−β Var), β = 1; data-size client weights; decomposition, dynamic weights, grouping "
        "and the λ pull off), with eq. (6) as the paper writes it or with the variance prior for small "
        "clusters (`variance_prior: 1`: each cluster's variance shrunk toward the spread of all updates as "
        "if it had one more member, so a one-member cluster no longer gets the largest trust). Δ: paired "
        "difference against FedAvg from the same start (pp), p: paired t-test. Silhouette and intra-cluster "
        "distance (majority cluster) are averaged over rounds, on updates scaled to unit RMS norm.\n\n"
        + base_note(everything)
        + "\n\n"
        + table(
            [
                "noise",
                "aggregation",
                "accuracy (%)",
                "Δ vs FedAvg (pp)",
                "p (paired)",
                "silhouette",
                "intra-cluster dist.",
                "paper FedAvg / K-means acc, silhouette, intra",
            ],
            rows,
        )
    )
    (d / "table.md").write_text(md + "\n\n![accuracy](accuracy.png)\n")
    return md


def methods(scale: Scale | None = None) -> dict[str, dict[str, Any]]:
    """DSAC and the baselines, each baseline also from DSAC's pre-trained start (FedAvg always;
    FedProx and SCAFFOLD where the scale says so)."""
    out: dict[str, dict[str, Any]] = {"DSAC": DSAC_DEFAULT}
    for m, a in BASELINES.items():
        out[m] = a
        if m == "FedAvg" or scale is None or scale.pretrained_all:
            out[m + PRE] = pretrained(a)
    return out


def exp3_baselines(c: Ctx) -> str:
    d = c.folder("3_baselines")
    ms = methods(c.scale)
    splits = ("pathological", "real-world")
    c.prefetch("3 baselines", [(a, split, {}) for split in splits for a in ms.values()])
    panels_acc: dict[str, dict[str, list[Run]]] = {}
    rows, notes = [], []
    for split in splits:
        by = {m: c.over_seeds(a, split, f"3 {split} {m}") for m, a in ms.items()}
        panels_acc[split] = by
        notes.append(f"*{split}*: " + base_note(by))
        ref_acc, ref_loss = finals(by["DSAC"], "test_accuracy"), finals(by["DSAC"], "test_loss")
        for m, runs in by.items():
            acc, loss = finals(runs, "test_accuracy"), finals(runs, "test_loss")
            rows.append(
                [
                    split,
                    m,
                    start_of(runs),
                    ci(acc, 2, 100),
                    ci(loss, 3),
                    ci(finals(runs, "personal_accuracy"), 2, 100),
                    "/" if m == "DSAC" else paired_diff(ref_acc, acc, 2, 100),
                    "/" if m == "DSAC" else paired_p(ref_acc, acc),
                    "/" if m == "DSAC" else paired_p(ref_loss, loss),
                ]
            )
    plot_curves(d / "accuracy.png", panels_acc, "test_accuracy", "test accuracy")
    plot_curves(d / "loss.png", panels_acc, "test_loss", "test loss")
    md = (
        "## 3. DSAC vs FedAvg, FedProx, SCAFFOLD (Figures 6-7, Table 5 analogue)\n\n"
        "Final-round test accuracy and loss of the global model; personal: each client's model on its own "
        "test split, averaged over clients (DSAC: its group model after the ε-step of eq. 13; the "
        "baselines: the global model, no fine-tuning). Δ: DSAC minus the method, paired by seed "
        "(percentage points, 95% CI); p: paired t-tests of DSAC against the method. "
        "Curves: mean ± 95% CI over seeds.\n\n"
        + "\n\n".join(notes)
        + "\n\n"
        + table(
            [
                "split",
                "method",
                "start",
                "accuracy (%)",
                "loss",
                "personal acc. (%)",
                "Δ acc DSAC − method (pp)",
                "p (acc)",
                "p (loss)",
            ],
            rows,
        )
    )
    (d / "table.md").write_text(md + "\n\n![accuracy](accuracy.png)\n![loss](loss.png)\n")
    return md


def exp4_submodels_epochs(c: Ctx) -> str:
    from raysim.algorithms.dsac_math import SubModelPartition
    from raysim.data import load_dataset
    from raysim.models import ParamLayout, build_model

    d = c.folder("4_submodels_epochs")
    ds = load_dataset(c.scale.dataset, seed=0, num_clients=c.scale.num_clients)
    layout = ParamLayout.of(build_model(c.scale.model, tuple(ds.input_shape), ds.num_classes))
    blocks = len(layout.module_blocks())

    def algo_k(k: int) -> dict[str, Any]:
        # the same effective K is the same run: K > blocks is clamped (with a warning) to the blocks
        eff = min(k, blocks)
        return dsac(decomposition=False) if eff == 1 else dsac(num_submodels=eff)  # K=1: "no decomposition"

    specs: list[tuple[dict[str, Any], str, dict[str, Any]]]
    specs = [(algo_k(k), "pathological", {}) for k in c.scale.ks]
    specs += [(DSAC_DEFAULT, "pathological", {"local": {"epochs": e}}) for e in c.scale.epochs_list]
    c.prefetch("4 K/epochs", specs)
    ref = finals(c.over_seeds(algo_k(3), "pathological", "4 ref"), "test_accuracy")
    rows_k, ks, accs_k = [], [], []
    for k in c.scale.ks:
        eff = min(k, blocks)
        acc = finals(c.over_seeds(algo_k(k), "pathological", f"4 K={k}"), "test_accuracy")
        ks.append(k)
        accs_k.append(acc)
        sizes = SubModelPartition.from_layout(layout, eff).sizes
        rows_k.append(
            [
                k,
                eff,
                "/".join(str(s) for s in sizes),
                ci(acc, 2, 100),
                "/" if eff == min(3, blocks) else paired_diff(acc, ref, 2, 100),
                "/" if eff == min(3, blocks) else paired_p(acc, ref),
            ]
        )
    rows_e, es, accs_e = [], [], []
    ref_e = finals(
        c.over_seeds(DSAC_DEFAULT, "pathological", "4 epochs ref", local={"epochs": c.scale.epochs}),
        "test_accuracy",
    )
    for e in c.scale.epochs_list:
        acc = finals(
            c.over_seeds(DSAC_DEFAULT, "pathological", f"4 epochs={e}", local={"epochs": e}), "test_accuracy"
        )
        es.append(e)
        accs_e.append(acc)
        same = e == c.scale.epochs
        rows_e.append(
            [
                e,
                ci(acc, 2, 100),
                "/" if same else paired_diff(acc, ref_e, 2, 100),
                "/" if same else paired_p(acc, ref_e),
            ]
        )
    plot_points(d / "submodels.png", {"DSAC": (ks, accs_k)}, "sub-models K (requested)", "test accuracy")
    plot_points(d / "epochs.png", {"DSAC": (es, accs_e)}, "local epochs", "test accuracy")
    md = (
        "## 4. Number of sub-models and local epochs (Figure 8 analogue)\n\n"
        f"Pathological split. The model ({c.scale.model}) has {blocks} layer blocks, so K is clamped to "
        f"{blocks} (a sub-model is a run of whole layers, eq. 1); requested K above that repeat the K = "
        f"{blocks} runs. Each client trains min(2, K) sub-models a round (`submodels_per_client: 2`). "
        "Δ: paired difference against the default (K = 3, 1 local epoch), pp; p: paired t-test.\n\n"
        + base_note({"K": c.over_seeds(algo_k(3), "pathological", "4 ref")})
        + "\n\n"
        + table(
            [
                "K requested",
                "K used",
                "parameters per sub-model",
                "accuracy (%)",
                "Δ vs K = 3 (pp)",
                "p (paired)",
            ],
            rows_k,
        )
        + "\n\n"
        + table(
            ["local epochs", "accuracy (%)", f"Δ vs {c.scale.epochs} epoch(s) (pp)", "p (paired)"], rows_e
        )
    )
    (d / "table.md").write_text(md + "\n\n![K](submodels.png) ![epochs](epochs.png)\n")
    return md


def rounds_to(run: Run, target: float) -> float:
    r = run.rounds[["round", "test_accuracy"]].dropna()
    hit = r[r["test_accuracy"] >= target]
    return float(hit["round"].iloc[0]) if len(hit) else math.nan


def exp5_groups(c: Ctx) -> str:
    d = c.folder("5_groups")
    variants = {
        "DSAC (hierarchical)": DSAC_DEFAULT,
        "DSAC (flat k-means)": dsac(hierarchical_clustering=False),
        "FedAvg": BASELINES["FedAvg"],
        "FedAvg" + PRE: pretrained(BASELINES["FedAvg"]),
    }
    c.prefetch("5 groups", [(a, "rotation", {}) for a in variants.values()])
    by = {m: c.over_seeds(a, "rotation", f"5 {m}") for m, a in variants.items()}
    hier_nmi = finals(by["DSAC (hierarchical)"], "nmi")
    rows, names, nmis, rtt = [], [], [], []
    for m, runs in by.items():
        nmi = finals(runs, "nmi") if m.startswith("DSAC") else []
        reach = [rounds_to(r, c.scale.target) for r in runs]
        reached = [x for x in reach if math.isfinite(x)]
        names.append(m)
        nmis.append(nmi)
        rtt.append(reached)
        rows.append(
            [
                m,
                start_of(runs),
                ci(nmi, 3) if nmi else "n/a (no grouping)",
                "/" if m == "DSAC (hierarchical)" or not nmi else paired_p(hier_nmi, nmi),
                f"{ci(reached, 1) if reached else '-'} ({len(reached)}/{len(runs)} reached)",
                ci(finals(runs, "test_accuracy"), 2, 100),
                ci(finals(runs, "personal_accuracy"), 2, 100),
            ]
        )
    plot_bars(d / "nmi.png", names[:2], nmis[:2], "NMI vs ground-truth rotation groups")
    plot_bars(
        d / "rounds_to_target.png",
        names,
        [v if v else [math.nan] for v in rtt],
        f"rounds to {c.scale.target:.0%}",
    )
    md = (
        "## 5. Client grouping and rounds to a target (Figure 9 analogue)\n\n"
        "Feature-skew split: 4 ground-truth groups rotated by 0/90/180/270° (Dirichlet(0.5) labels within "
        "groups). NMI of DSAC's final client groups (eq. 11-12 on D_u = mean penultimate activation) against "
        "the rotation groups (p: paired t-test of hierarchical against flat); the baselines form no groups. "
        f"Rounds to reach {c.scale.target:.0%} test accuracy (evaluated every {c.scale.eval_every} rounds, "
        "so this is a multiple of that; mean over the seeds that reached it).\n\n"
        + base_note(by)
        + "\n\n"
        + table(
            [
                "method",
                "start",
                "NMI",
                "p (NMI vs hierarchical)",
                "rounds to target",
                "final accuracy (%)",
                "personal acc. (%)",
            ],
            rows,
        )
    )
    (d / "table.md").write_text(md + "\n\n![nmi](nmi.png) ![rounds](rounds_to_target.png)\n")
    return md


PAPER_T6 = {
    "Complete method": (0.931, 0.918, 0.924),
    "No decomposition": (0.879, 0.863, 0.871),
    "No pre-training": (0.900, 0.886, 0.893),
    "Non-hierarchical clustering": (0.893, 0.879, 0.886),
    "No dynamic weights": (0.908, 0.894, 0.901),
    "FedAvg": (0.806, 0.845, 0.852),
}


def _acts(row: str, full: list[Run], this: list[Run], c: Ctx) -> str:
    """Why an ablation row differs from the complete method by construction, with the evidence
    measured in these runs (or why it cannot)."""
    if row == "No decomposition":
        up_full, up = np.mean(means(full, "bytes_up")), np.mean(means(this, "bytes_up"))
        return f"yes: K = 1, every client trains and uploads the whole model ({up / 1e6:.2f} vs {up_full / 1e6:.2f} MB up a round)"
    if row == "No pre-training":
        return "yes: random start instead of M_base, no λ pull"
    if row == "Non-hierarchical clustering":
        g = np.mean(means(full, "num_groups"))
        return (
            f"yes when a round's updates span ≥ 2 groups (complete method: {g:.1f} groups on average): flat "
            "k-means groups and one combination over the cohort instead of within groups, then across"
        )
    if row == "No dynamic weights":
        dt = np.mean(means(full, "rounds_missed_mean"))
        drop = np.mean([dropout_rate(r) for r in full])
        return (
            f"yes when clients missed different numbers of rounds (complete method: mean Δt {dt:.1f}, "
            f"{100 * drop:.1f}% of updates dropped by the floor); synchronous mode, so a recency weight"
        )
    return ""


def exp6_ablation(c: Ctx) -> str:
    d = c.folder("6_ablation")
    variants = {
        "Complete method": DSAC_DEFAULT,
        "No decomposition": dsac(decomposition=False),
        "No pre-training": dsac(pretraining=False),
        "Non-hierarchical clustering": dsac(hierarchical_clustering=False),
        "No dynamic weights": dsac(dynamic_weights=False),
        "FedAvg": BASELINES["FedAvg"],
        "FedAvg" + PRE: pretrained(BASELINES["FedAvg"]),
    }
    c.prefetch("6 ablation", [(a, "pathological", {}) for a in variants.values()])
    by = {m: c.over_seeds(a, "pathological", f"6 {m}") for m, a in variants.items()}
    full = by["Complete method"]
    ref_full, ref_fed = finals(full, "test_macro_f1"), finals(by["FedAvg"], "test_macro_f1")
    rows = []
    for m, runs in by.items():
        p = PAPER_T6.get(m)
        f1 = finals(runs, "test_macro_f1")
        rows.append(
            [
                m,
                start_of(runs),
                ci(finals(runs, "test_macro_precision"), 3),
                ci(finals(runs, "test_macro_recall"), 3),
                ci(f1, 3),
                ci(finals(runs, "personal_accuracy"), 2, 100),
                "/" if m == "Complete method" else paired_diff(f1, ref_full, 3),
                "/" if m == "Complete method" else paired_p(f1, ref_full),
                "/" if m == "FedAvg" else paired_p(f1, ref_fed),
                _acts(m, full, runs, c),
                "-" if p is None else f"{p[0]} / {p[1]} / {p[2]}",
            ]
        )
    plot_bars(d / "f1.png", list(by), [finals(r, "test_macro_f1") for r in by.values()], "macro F1")
    md = (
        "## 6. Ablation (Table 6 analogue)\n\n"
        "Pathological split; macro precision / recall / F1 of the global model on the test set after the "
        "last round, and the personalised accuracy. ΔF1: the row minus the complete method, paired by seed "
        "(95% CI); p: paired t-tests of the F1 against the complete method and against FedAvg (the paper's "
        "column). *Acts?*: whether the switch changes the computation in this setting, by construction, "
        "with the evidence from these runs.\n\n"
        + base_note(by)
        + "\n\n"
        + table(
            [
                "configuration",
                "start",
                "precision",
                "recall",
                "macro F1",
                "personal acc. (%)",
                "ΔF1 vs complete",
                "p (vs complete)",
                "p (vs FedAvg)",
                "acts?",
                "paper MNIST P / R / F1",
            ],
            rows,
        )
    )
    (d / "table.md").write_text(md + "\n\n![f1](f1.png)\n")
    return md


def exp7_complexity(c: Ctx) -> str:
    from raysim.data import load_dataset
    from raysim.models import build_model
    from raysim.models.registry import count_flops, count_params

    d = c.folder("7_complexity")
    ds = load_dataset(c.scale.dataset, seed=0, num_clients=c.scale.num_clients)
    shape = tuple(ds.input_shape)
    net = build_model(c.scale.model, shape, ds.num_classes)
    n_params, flops = count_params(net), count_flops(net, shape)
    adapter = 2 * int(np.prod(shape))
    static = [
        ["FedAvg", n_params, flops, 0, f"{n_params} (global)"],
        ["FedProx", n_params, flops, 0, f"{n_params} (global)"],
        ["SCAFFOLD", n_params, flops, n_params, f"{2 * n_params} (global + control)"],
        [
            "DSAC",
            n_params,
            flops,
            f"0 ({adapter} with feature_mapping)",
            f"{n_params} × (2 + groups) (global, base, ≤ {DSAC_DEFAULT['max_groups']} group models; "
            "stale mode: + one per model version clients hold, ≤ min(N, rounds))",
        ],
    ]
    seeds = c.seeds[: c.scale.complexity_seeds] if c.scale.complexity_seeds else c.seeds
    ms = {"DSAC": DSAC_DEFAULT, **BASELINES}

    def kw(n: int) -> dict[str, Any]:
        return {
            "data": {"num_clients": n},
            "rounds": {
                "num_rounds": c.scale.complexity_rounds,
                "clients_per_round": max(1, n // 2),
                "eval_every": c.scale.complexity_rounds,
                "personal_eval": False,
            },
        }

    fresh = c.scale.name != "micro"
    jobs, c.runner.jobs = c.runner.jobs, 1  # timing runs one at a time, whatever --jobs says
    c.prefetch(
        "7 complexity",
        [(a, "real-world", kw(n)) for a in ms.values() for n in c.scale.client_counts],
        seeds,
        fresh,
    )
    rows: list[list[Any]] = []
    dsac_runs: list[list[Run]] = []
    rt: dict[str, list[list[float]]] = {}
    mem: dict[str, list[list[float]]] = {}
    for m, a in ms.items():
        rt[m], mem[m] = [], []
        for n in c.scale.client_counts:
            runs = c.runner.run(
                [c.cfg(s, a, "real-world", **kw(n)) for s in seeds], f"7 {m} N={n}", fresh_process=fresh
            )
            secs = [float(r.summary["loop_seconds"]) / max(int(r.summary["rounds"]), 1) for r in runs]
            peak = [r.training_peak_rss_mb() for r in runs]
            if m == "DSAC":
                dsac_runs.append(runs)
            rt[m].append(secs)
            mem[m].append(peak)
            rows.append([m, n, ci(secs, 2), ci(peak, 0)])
    c.runner.jobs = jobs
    xs = list(c.scale.client_counts)
    plot_points(d / "runtime.png", {m: (xs, v) for m, v in rt.items()}, "clients", "seconds per round")
    plot_points(d / "memory.png", {m: (xs, v) for m, v in mem.items()}, "clients", "peak RSS (MB)")
    md = (
        "## 7. Complexity, runtime and memory (Table 7, Figures 10-11 analogue)\n\n"
        f"Model {c.scale.model} on {c.scale.dataset}; FLOPs of one forward example by torch's FlopCounterMode. "
        "DSAC trains the same network as the baselines (its sub-models are slices of it), so parameter count "
        "and FLOPs are identical; what it adds is server-side state and, optionally, a per-client input map.\n\n"
        + table(
            ["method", "parameters", "FLOPs / example", "extra per-client state", "server-held parameters"],
            static,
        )
        + "\n\n"
        + base_note({"DSAC": dsac_runs[0] if dsac_runs else []})
        + " DSAC pre-trains during set-up, outside the per-round seconds below.\n\n"
        f"Runtime per round and peak RSS (serial backend: one process holds server and clients; each run in "
        f"a fresh process, except at the micro scale) with N clients, N/2 a round, {c.scale.complexity_rounds} "
        f"rounds, real-world split, {len(seeds)} seed(s) (timing only; the machine was shared, so treat "
        "differences under ~30% as noise).\n\n"
        + "Peak RSS is the peak the client host saw during the rounds; the process-wide peak (summary.json) is "
        "set by decompressing the dataset and is the same for every method.\n\n"
        + table(["method", "clients", "seconds / round", "peak RSS during rounds (MB)"], rows)
    )
    (d / "table.md").write_text(md + "\n\n![runtime](runtime.png) ![memory](memory.png)\n")
    return md


EXPERIMENTS: dict[int, tuple[str, Callable[[Ctx], str]]] = {
    1: ("1_decay", exp1_decay),
    2: ("2_noise", exp2_noise),
    3: ("3_baselines", exp3_baselines),
    4: ("4_submodels_epochs", exp4_submodels_epochs),
    5: ("5_groups", exp5_groups),
    6: ("6_ablation", exp6_ablation),
    7: ("7_complexity", exp7_complexity),
}


def parse_experiments(only: str, experiments: Mapping[int, Any]) -> list[int]:
    """``--only`` of every `raysim reproduce` command: comma-separated experiment numbers (empty: all)."""
    if not only.strip():
        return sorted(experiments)
    try:
        picked = sorted({int(x) for x in only.replace(" ", "").split(",") if x})
    except ValueError:
        raise typer.BadParameter(f"--only takes experiment numbers like 1,3, got {only!r}") from None
    bad = [x for x in picked if x not in experiments]
    if bad:
        raise typer.BadParameter(f"--only: no experiment {bad}; valid: {', '.join(map(str, experiments))}")
    return picked


def parse_only(only: str) -> list[int]:
    return parse_experiments(only, EXPERIMENTS)


def run_picked(
    picked: Sequence[int],
    experiments: Mapping[int, tuple[str, Callable[[Any], str]]],
    ctx: Any,
    echo: Callable[[str], None],
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


DEFAULT_OUT = Path("results/dsac")


@reproduce_app.command("dsac")
def reproduce_dsac(
    seeds: Annotated[
        int,
        typer.Option(
            min=1,
            help=f"evaluation seeds per configuration: seeds 1..N (seed {TUNING_SEED} tuned the defaults "
            "and is never evaluated); >= 5 for the paired tests",
        ),
    ] = 5,
    out: Annotated[Path, typer.Option(help="results folder (runs are reused from <out>/runs)")] = DEFAULT_OUT,
    scale: Annotated[
        str,
        typer.Option(
            help="micro (digits smoke test, ~1 min) | small (the tables in docs/dsac.md; 86 min with "
            "--jobs 2 on a shared 2-core machine) | full (hours)"
        ),
    ] = "small",
    only: Annotated[
        str, typer.Option(help="comma-separated experiment numbers, e.g. 1,3,5 (default: all 7)")
    ] = "",
    backend: Annotated[str, typer.Option(help="serial (fastest at this scale on 2 cores) | ray")] = "serial",
    jobs: Annotated[
        int,
        typer.Option(
            min=1, help="runs at a time; > 1 runs them as Ray Tune trials, each in its own worker process"
        ),
    ] = 1,
) -> None:
    """Regenerate the DSAC paper's experiments (Tables 2-3, 5-7, Figures 6-11) into OUT."""
    if scale not in SCALES:
        raise typer.BadParameter(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if backend not in ("serial", "ray"):
        raise typer.BadParameter(f"--backend must be serial or ray, got {backend!r}")
    picked = parse_only(only)
    sc = SCALES[scale]
    out.mkdir(parents=True, exist_ok=True)

    def echo(msg: str) -> None:
        typer.echo(msg, err=True)

    runner = Runner(out, jobs, echo)
    ctx = Ctx(scale=sc, seeds=eval_seeds(seeds), out=out, runner=runner, backend=backend)
    load_before = _load()
    times, total = run_picked(picked, EXPERIMENTS, ctx, echo)
    write_index(out, sc, seeds, picked, times, total, runner, backend, jobs, load=(load_before, _load()))
    echo(f"wrote {out / 'README.md'} ({total:.0f}s, {runner.executed} new runs)")


def eval_seeds(n: int) -> list[int]:
    """The evaluation seeds 1..n: disjoint from the tuning seed 0."""
    seeds = list(range(TUNING_SEED + 1, TUNING_SEED + 1 + n))
    assert TUNING_SEED not in seeds
    return seeds


def load_note(out: Path, executed: int, total: float, load: tuple[float, float]) -> str:
    """How long an invocation took, and on how busy a machine (a shared one inflates wall times)."""
    return (
        f"Wall time of this invocation: {total:.0f} s ({executed} runs executed; runs already under "
        f"{out}/runs were reused) on {os.cpu_count()} CPU(s), 1-minute load average {load[0]:.1f} at the "
        f"start and {load[1]:.1f} at the end (a shared machine inflates the wall time)."
    )


def _load() -> float:
    try:
        return float(os.getloadavg()[0])
    except OSError:  # not on every platform
        return math.nan


def write_index(
    out: Path,
    sc: Scale,
    seeds: int,
    picked: list[int],
    times: dict[int, float],
    total: float,
    runner: Runner,
    backend: str,
    jobs: int,
    load: tuple[float, float] = (math.nan, math.nan),
) -> None:
    ev = eval_seeds(seeds)
    lines = [
        "# DSAC reproduction (scaled down)",
        "",
        f"Command: `raysim reproduce dsac --seeds {seeds} --scale {sc.name} --backend {backend} --jobs {jobs} "
        f"--out {out}`"
        + (f" `--only {','.join(map(str, picked))}`" if len(picked) < len(EXPERIMENTS) else ""),
        "",
        f"Scale `{sc.name}`: {sc.dataset}, model {sc.model}, {sc.num_clients} clients, {sc.cohort} a round, "
        f"{sc.rounds} rounds (evaluated every {sc.eval_every}), {sc.epochs} local epoch(s), lr {sc.lr}, "
        f"batch {sc.batch}, public split {sc.public_fraction:.0%} (pre-training data no client holds; the "
        f"same shards for every method), evaluation seeds {ev[0]}..{ev[-1]} ({seeds} per configuration; "
        f"seed {TUNING_SEED} tuned the defaults and is not among them). The paper: MNIST / CIFAR-10, 400 "
        "rounds, 20 clients, lr 0.01.",
        "",
        f"The {len(runner.used)} distinct runs behind these tables took {sum(runner.used.values()):.0f} s "
        "in total (sum of each run's setup + rounds, as its summary.json records; no plotting). "
        + load_note(out, runner.executed, total, load)
        + f" Python {sys.version.split()[0]}.",
        "",
    ]
    lines += index_sections(out, picked, EXPERIMENTS, times)
    (out / "README.md").write_text("\n".join(lines) + "\n")
