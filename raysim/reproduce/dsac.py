"""`raysim reproduce dsac`: the DSAC paper's experiments (Tables 2-3, 5-7, Figures 6-11), scaled down.

    raysim reproduce dsac --seeds 3 --out results/dsac            # all 7 experiments, small scale
    raysim reproduce dsac --only 1,3 --seeds 3                     # a subset
    raysim reproduce dsac --scale micro --seeds 1                  # digits, 2 rounds: a smoke test

Every run is an ordinary raysim run under ``<out>/runs/<key>`` (config.yaml, rounds.parquet, ...); a
run whose summary.json exists is reused, so an interrupted reproduction resumes where it stopped and
experiments that share a configuration (e.g. complete DSAC in experiments 3, 4 and 6) share its runs.
Each experiment writes ``<out>/<experiment>/table.md`` and PNG plots; ``<out>/README.md`` indexes them
with the scale used and the measured wall time. Numbers are means with a 95% t-interval over seeds
(``raysim.metrics.mean_ci95``); p-values are Welch's t-test (unequal variances).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
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
    gammas: tuple[float, ...]  # experiment 1
    noise: tuple[float, ...]  # experiment 2
    target: float  # experiment 5: rounds to this test accuracy


SCALES: dict[str, Scale] = {
    "micro": Scale(
        name="micro",
        dataset="digits",
        model="mlp",
        num_clients=6,
        cohort=3,
        rounds=2,
        epochs=1,
        lr=0.05,
        batch=16,
        public_fraction=0.1,
        client_counts=(4, 6),
        complexity_rounds=1,
        ks=(1, 3),
        epochs_list=(1, 2),
        gammas=(0.05, 0.2),
        noise=(0.2,),
        target=0.3,
    ),
    "small": Scale(
        name="small",
        dataset="fashion-mnist",
        model="mlp",
        num_clients=20,
        cohort=10,
        rounds=10,
        epochs=1,
        lr=0.05,
        batch=32,
        public_fraction=0.05,
        client_counts=(20, 50, 100),
        complexity_rounds=3,
        ks=(1, 2, 3, 4, 5, 6),
        epochs_list=(1, 2, 3, 4, 5),
        gammas=(0.01, 0.03, 0.05, 0.10, 0.15, 0.20),
        noise=(0.1, 0.2, 0.3, 0.4),
        target=0.6,
    ),
}
# the same experiments with the small CNN and three times the rounds (hours on 2 cores)
SCALES["full"] = replace(
    SCALES["small"], name="full", model="cnn-small", rounds=30, complexity_rounds=5, target=0.7
)

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
BASELINES: dict[str, dict[str, Any]] = {
    "FedAvg": {"name": "fedavg"},
    "FedProx": {"name": "fedprox", "mu": 0.01},
    "SCAFFOLD": {"name": "scaffold"},
}
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
    included), so every client holds the same shard whatever the algorithm."""
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
            "eval_every": 1,
            "personal_eval": False,
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
    from scipy.stats import ttest_ind

    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(x) < 2 or len(y) < 2:
        return "n/a (1 seed)"
    if np.allclose(x, y):
        return "1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(x, y, equal_var=False).pvalue)
    return "-" if not math.isfinite(p) else (f"{p:.2g}" if p >= 1e-4 else "<1e-4")


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

    def folder(self, name: str) -> Path:
        d = self.out / name
        d.mkdir(parents=True, exist_ok=True)
        return d


def finals(runs: Sequence[Run], col: str) -> list[float]:
    return [r.final(col) for r in runs]


# ----------------------------------------------------------------------------------------- experiments

PAPER_T2 = {  # decay -> (MNIST acc %, CIFAR-10 acc %, dropout %, fairness)
    0.01: (98.45, 89.12, 3.2, 0.92),
    0.03: (98.61, 89.87, 4.2, 0.90),
    0.05: (98.69, 90.26, 5.1, 0.89),
    0.10: (98.12, 88.95, 12.7, 0.78),
    0.15: (97.68, 87.23, 19.3, 0.70),
    0.20: (97.33, 86.41, 28.4, 0.61),
}


def exp1_decay(c: Ctx) -> str:
    d = c.folder("1_decay")
    rows, accs, drops, fair = [], [], [], []
    for g in c.scale.gammas:
        runs = c.over_seeds(dsac(decay=g), "real-world", f"1 decay {g}")
        drop = [float(r.rounds["dropped_by_floor"].sum() / max(r.rounds["completed"].sum(), 1)) for r in runs]
        accs.append(finals(runs, "test_accuracy"))
        drops.append(drop)
        fair.append(finals(runs, "jain"))
        paper = PAPER_T2.get(round(g, 2))
        rows.append(
            [
                g,
                ci(accs[-1], 2, 100),
                ci(drop, 1, 100),
                ci(fair[-1], 3),
                "-" if paper is None else f"{paper[0]} / {paper[2]} / {paper[3]}",
            ]
        )
    xs = list(c.scale.gammas)
    plot_points(d / "accuracy.png", {"DSAC": (xs, accs)}, "decay γ", "test accuracy")
    plot_points(
        d / "dropout_fairness.png", {"dropout rate": (xs, drops), "Jain fairness": (xs, fair)}, "decay γ", ""
    )
    md = (
        "## 1. Decay coefficient γ (Table 2 analogue)\n\n"
        "DSAC on the real-world split. Dropout rate: share of delivered updates whose decay factor "
        "exp(−γ·missed rounds) fell below `weight_floor` (0.6). Fairness: Jain's index over the clients' "
        "cumulative share of aggregation weight after the last round.\n\n"
        + table(
            [
                "γ",
                "accuracy (%)",
                "dropout rate (%)",
                "fairness (Jain)",
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
KMEANS_ONLY = dsac(pretraining=False, decomposition=False, dynamic_weights=False, finetune_eps=0.0)


def exp2_noise(c: Ctx) -> str:
    d = c.folder("2_noise")
    rows = []
    fa, ka = [], []
    for nz in c.scale.noise:
        fed = c.over_seeds(
            BASELINES["FedAvg"], "real-world", f"2 noise {nz} fedavg", data={"label_noise": nz}
        )
        km = c.over_seeds(KMEANS_ONLY, "real-world", f"2 noise {nz} dsac", data={"label_noise": nz})
        fa.append(finals(fed, "test_accuracy"))
        ka.append(finals(km, "test_accuracy"))
        paper = PAPER_T3.get(round(nz, 1))
        ptxt = "-" if paper is None else f"{paper[0]} / {paper[1]} / {paper[2]} / {paper[3]}"
        rows.append([f"{nz:.0%}", "FedAvg", ci(fa[-1], 2, 100), "n/a", "n/a", welch(ka[-1], fa[-1]), ptxt])
        rows.append(
            [
                "",
                "DSAC K-means",
                ci(ka[-1], 2, 100),
                ci([r.mean("silhouette") for r in km], 3),
                ci([r.mean("intra_cluster") for r in km], 3),
                "",
                "",
            ]
        )
    xs = [100 * n for n in c.scale.noise]
    plot_points(
        d / "accuracy.png",
        {"FedAvg": (xs, fa), "DSAC K-means": (xs, ka)},
        "noisy clients (%)",
        "test accuracy",
    )
    md = (
        "## 2. Noisy clients (Table 3 analogue)\n\n"
        "A share of clients has uniformly random training labels (`data.label_noise`); the test set is clean. "
        "\"DSAC K-means\" is FedAvg's round with DSAC's update aggregation only (eq. 3-6: K-means into 3 "
        "clusters, α_c ∝ |S_c|·exp(−β Var)), i.e. pre-training, decomposition and dynamic weights off. "
        "Silhouette and intra-cluster distance (majority cluster) are averaged over rounds, on updates "
        "scaled to unit RMS norm. p: Welch's t-test of the accuracies.\n\n"
        + table(
            [
                "noise",
                "aggregation",
                "accuracy (%)",
                "silhouette",
                "intra-cluster dist.",
                "p (acc)",
                "paper FedAvg / K-means acc, silhouette, intra",
            ],
            rows,
        )
    )
    (d / "table.md").write_text(md + "\n\n![accuracy](accuracy.png)\n")
    return md


def methods() -> dict[str, dict[str, Any]]:
    return {"DSAC": DSAC_DEFAULT, **BASELINES}


def exp3_baselines(c: Ctx) -> str:
    d = c.folder("3_baselines")
    panels_acc: dict[str, dict[str, list[Run]]] = {}
    rows = []
    for split in ("pathological", "real-world"):
        by = {m: c.over_seeds(a, split, f"3 {split} {m}") for m, a in methods().items()}
        panels_acc[split] = by
        ref_acc, ref_loss = finals(by["DSAC"], "test_accuracy"), finals(by["DSAC"], "test_loss")
        for m, runs in by.items():
            acc, loss = finals(runs, "test_accuracy"), finals(runs, "test_loss")
            rows.append(
                [
                    split,
                    m,
                    ci(acc, 2, 100),
                    ci(loss, 3),
                    "/" if m == "DSAC" else welch(ref_acc, acc),
                    "/" if m == "DSAC" else welch(ref_loss, loss),
                ]
            )
    plot_curves(d / "accuracy.png", panels_acc, "test_accuracy", "test accuracy")
    plot_curves(d / "loss.png", panels_acc, "test_loss", "test loss")
    md = (
        "## 3. DSAC vs FedAvg, FedProx, SCAFFOLD (Figures 6-7, Table 5 analogue)\n\n"
        "Final-round test accuracy and loss; p: Welch's t-test of DSAC against the method. "
        "Curves: mean ± 95% CI over seeds.\n\n"
        + table(["split", "method", "accuracy (%)", "loss", "p (acc vs DSAC)", "p (loss vs DSAC)"], rows)
    )
    (d / "table.md").write_text(md + "\n\n![accuracy](accuracy.png)\n![loss](loss.png)\n")
    return md


def exp4_submodels_epochs(c: Ctx) -> str:
    from raysim.algorithms.dsac_math import SubModelPartition
    from raysim.models import ParamLayout, build_model

    d = c.folder("4_submodels_epochs")
    from raysim.data import load_dataset

    ds = load_dataset(c.scale.dataset, seed=0, num_clients=c.scale.num_clients)
    layout = ParamLayout.of(build_model(c.scale.model, tuple(ds.input_shape), ds.num_classes))
    blocks = len(layout.module_blocks())
    rows_k, ks, accs_k = [], [], []
    for k in c.scale.ks:
        eff = min(k, blocks)
        # the same effective K is the same run: K > blocks is clamped (with a warning) to the blocks
        algo = dsac(decomposition=False) if eff == 1 else dsac(num_submodels=eff)  # K=1 is "no decomposition"
        runs = c.over_seeds(algo, "pathological", f"4 K={k}")
        acc = finals(runs, "test_accuracy")
        ks.append(k)
        accs_k.append(acc)
        sizes = SubModelPartition.from_layout(layout, eff).sizes
        rows_k.append([k, eff, "/".join(str(s) for s in sizes), ci(acc, 2, 100)])
    rows_e, es, accs_e = [], [], []
    for e in c.scale.epochs_list:
        runs = c.over_seeds(DSAC_DEFAULT, "pathological", f"4 epochs={e}", local={"epochs": e})
        acc = finals(runs, "test_accuracy")
        es.append(e)
        accs_e.append(acc)
        rows_e.append([e, ci(acc, 2, 100)])
    plot_points(d / "submodels.png", {"DSAC": (ks, accs_k)}, "sub-models K (requested)", "test accuracy")
    plot_points(d / "epochs.png", {"DSAC": (es, accs_e)}, "local epochs", "test accuracy")
    md = (
        "## 4. Number of sub-models and local epochs (Figure 8 analogue)\n\n"
        f"Pathological split. The model ({c.scale.model}) has {blocks} layer blocks, so K is clamped to "
        f"{blocks} (a sub-model is a run of whole layers, eq. 1); requested K above that repeat the K = "
        f"{blocks} runs. Each client trains min(2, K) sub-models a round (`submodels_per_client: 2`).\n\n"
        + table(["K requested", "K used", "parameters per sub-model", "accuracy (%)"], rows_k)
        + "\n\n"
        + table(["local epochs", "accuracy (%)"], rows_e)
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
        **BASELINES,
    }
    rows, names, nmis, rtt = [], [], [], []
    for m, a in variants.items():
        runs = c.over_seeds(a, "rotation", f"5 {m}")
        nmi = finals(runs, "nmi") if a["name"] == "dsac" else []
        reach = [rounds_to(r, c.scale.target) for r in runs]
        reached = [x for x in reach if math.isfinite(x)]
        names.append(m)
        nmis.append(nmi)
        rtt.append(reached)
        rows.append(
            [
                m,
                ci(nmi, 3) if nmi else "n/a (no grouping)",
                f"{ci(reached, 1) if reached else '-'} ({len(reached)}/{len(runs)} reached)",
                ci(finals(runs, "test_accuracy"), 2, 100),
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
        "the rotation groups; the baselines form no groups. Rounds to reach "
        f"{c.scale.target:.0%} test accuracy (mean over the seeds that reached it).\n\n"
        + table(["method", "NMI", "rounds to target", "final accuracy (%)"], rows)
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


def exp6_ablation(c: Ctx) -> str:
    d = c.folder("6_ablation")
    variants = {
        "Complete method": DSAC_DEFAULT,
        "No decomposition": dsac(decomposition=False),
        "No pre-training": dsac(pretraining=False),
        "Non-hierarchical clustering": dsac(hierarchical_clustering=False),
        "No dynamic weights": dsac(dynamic_weights=False),
        "FedAvg": BASELINES["FedAvg"],
    }
    by = {m: c.over_seeds(a, "pathological", f"6 {m}") for m, a in variants.items()}
    ref = finals(by["FedAvg"], "test_macro_f1")
    rows = []
    for m, runs in by.items():
        p = PAPER_T6[m]
        rows.append(
            [
                m,
                ci(finals(runs, "test_macro_precision"), 3),
                ci(finals(runs, "test_macro_recall"), 3),
                ci(finals(runs, "test_macro_f1"), 3),
                "/" if m == "FedAvg" else welch(finals(runs, "test_macro_f1"), ref),
                f"{p[0]} / {p[1]} / {p[2]}",
            ]
        )
    plot_bars(d / "f1.png", list(by), [finals(r, "test_macro_f1") for r in by.values()], "macro F1")
    md = (
        "## 6. Ablation (Table 6 analogue)\n\n"
        "Pathological split; macro precision / recall / F1 of the global model on the test set after the "
        "last round; p: Welch's t-test of the F1 against FedAvg.\n\n"
        + table(
            [
                "configuration",
                "precision",
                "recall",
                "macro F1",
                "p (F1 vs FedAvg)",
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
            f"{n_params} × (2 + groups) (global, base, ≤ {DSAC_DEFAULT['max_groups']} group models)",
        ],
    ]
    rows: list[list[Any]] = []
    rt: dict[str, list[list[float]]] = {}
    mem: dict[str, list[list[float]]] = {}
    for m, a in methods().items():
        rt[m], mem[m] = [], []
        for n in c.scale.client_counts:
            raws = [
                c.cfg(
                    s,
                    a,
                    "real-world",
                    data={"num_clients": n},
                    rounds={
                        "num_rounds": c.scale.complexity_rounds,
                        "clients_per_round": max(1, n // 2),
                        "eval_every": c.scale.complexity_rounds,
                    },
                )
                for s in c.seeds
            ]
            runs = c.runner.run(raws, f"7 {m} N={n}", fresh_process=c.scale.name != "micro")
            secs = [float(r.summary["loop_seconds"]) / max(int(r.summary["rounds"]), 1) for r in runs]
            peak = [r.training_peak_rss_mb() for r in runs]
            rt[m].append(secs)
            mem[m].append(peak)
            rows.append([m, n, ci(secs, 2), ci(peak, 0)])
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
        f"Runtime per round and peak RSS (serial backend: one process holds server and clients; each run in "
        f"a fresh process, except at the micro scale) with N clients, N/2 a round, {c.scale.complexity_rounds} rounds, real-world split.\n\n"
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


def parse_only(only: str) -> list[int]:
    if not only.strip():
        return sorted(EXPERIMENTS)
    try:
        picked = sorted({int(x) for x in only.replace(" ", "").split(",") if x})
    except ValueError:
        raise typer.BadParameter(f"--only takes experiment numbers like 1,3,5, got {only!r}") from None
    bad = [x for x in picked if x not in EXPERIMENTS]
    if bad:
        raise typer.BadParameter(f"--only: no experiment {bad}; valid: {', '.join(map(str, EXPERIMENTS))}")
    return picked


DEFAULT_OUT = Path("results/dsac")


@reproduce_app.command("dsac")
def reproduce_dsac(
    seeds: Annotated[
        int, typer.Option(min=1, help="seeds per configuration (>= 3 for confidence intervals)")
    ] = 3,
    out: Annotated[Path, typer.Option(help="results folder (runs are reused from <out>/runs)")] = DEFAULT_OUT,
    scale: Annotated[
        str, typer.Option(help="micro (digits smoke test) | small (~30 min, 2 cores) | full")
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
    ctx = Ctx(scale=sc, seeds=list(range(seeds)), out=out, runner=runner, backend=backend)
    times: dict[int, float] = {}
    sections: dict[int, str] = {}
    t_all = time.perf_counter()
    for i in picked:
        name, fn = EXPERIMENTS[i]
        echo(f"== experiment {i}: {name}")
        t0 = time.perf_counter()
        sections[i] = fn(ctx)
        times[i] = time.perf_counter() - t0
        echo(f"== experiment {i} done in {times[i]:.0f}s")
    total = time.perf_counter() - t_all
    write_index(out, sc, seeds, picked, times, total, runner, backend, jobs)
    echo(f"wrote {out / 'README.md'} ({total:.0f}s, {runner.executed} new runs)")


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
) -> None:
    lines = [
        "# DSAC reproduction (scaled down)",
        "",
        f"Command: `raysim reproduce dsac --seeds {seeds} --scale {sc.name} --backend {backend} --jobs {jobs} "
        f"--out {out}`"
        + (f" `--only {','.join(map(str, picked))}`" if len(picked) < len(EXPERIMENTS) else ""),
        "",
        f"Scale `{sc.name}`: {sc.dataset}, model {sc.model}, {sc.num_clients} clients, {sc.cohort} a round, "
        f"{sc.rounds} rounds, {sc.epochs} local epoch(s), lr {sc.lr}, batch {sc.batch}, public split "
        f"{sc.public_fraction:.0%} (pre-training data no client holds; the same shards for every method), "
        f"{seeds} seed(s) per configuration. The paper: MNIST / CIFAR-10, 400 rounds, 20 clients, lr 0.01.",
        "",
        f"The {len(runner.used)} distinct runs behind these tables took {sum(runner.used.values()):.0f} s "
        "in total (sum of each run's setup + rounds, as its summary.json records; one process, "
        "no plotting). "
        f"Wall time of this invocation: {total:.0f} s ({runner.executed} runs executed; runs already under "
        f"{out}/runs were reused). Python {sys.version.split()[0]}.",
        "",
        "| experiment | table | wall time (s) |",
        "|---|---|---|",
    ]
    for i in picked:
        name = EXPERIMENTS[i][0]
        lines.append(f"| {i} | [{name}/table.md]({name}/table.md) | {times[i]:.0f} |")
    lines.append("")
    for i in picked:
        name = EXPERIMENTS[i][0]
        lines += [(out / name / "table.md").read_text().rstrip().replace("](", f"]({name}/"), ""]
    (out / "README.md").write_text("\n".join(lines) + "\n")
