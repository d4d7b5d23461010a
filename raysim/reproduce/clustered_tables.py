"""What the clustered reproduction's tables say about a method's runs (``raysim reproduce
clustered``; its scales, configs and experiments are in ``raysim.reproduce.clustered``): the
per-method statistics, the table rows and headers, and the cluster-membership plots.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysim.reproduce.harness import Run, ci, ci_or, paired_p

FEDAVG = "FedAvg"  # every table's reference: p-values are against it on the same seeds
ASCFL = "AS-CFL"
CLUSTERED = ("CFL", "IFCA", ASCFL, "Genetic CFL")  # the methods with a cluster-membership plot


# -------------------------------------------------------------------------------------------- metrics


def rounds_to_frac_of_peak(run: Run, col: str = "personal_accuracy", frac: float = 0.9) -> float:
    """The first round at which ``col`` reaches ``frac`` of its own maximum over the run."""
    if col not in run.rounds:
        return math.nan
    r = run.rounds[["round", col]].dropna()
    if not len(r):
        return math.nan
    hit = r[r[col] >= frac * float(r[col].max())]
    return float(hit["round"].iloc[0])


def ari_last(run: Run, n: int = 5) -> float:
    """``ari_last5``: the ARI against the ground-truth groups averaged over the last ``n`` rounds that
    report one. A method that re-clusters from scratch every round (AS-CFL) swings from round to
    round, so its final-round ARI alone is noisy."""
    if "cluster_ari" not in run.rounds:
        return math.nan
    v = run.rounds["cluster_ari"].dropna()
    return float(v.iloc[-n:].mean()) if len(v) else math.nan


def uplink_mb(run: Run, col: str = "bytes_up") -> float:
    """Mean bytes uploaded per round, in MB (10^6 bytes)."""
    return run.mean(col) / 1e6


@dataclass
class MethodStats:
    acc: list[float]  # final personal accuracy per seed
    r90: list[float]
    ari: list[float]
    ari5: list[float]  # ari_last5
    nmi: list[float]
    stability: list[float]
    clusters: list[float]
    up: list[float]  # MB / round as transported (dense)
    up_full: list[float]  # AS-CFL's own accounting: every update dense ...
    up_low: list[float]  # ... and with the output-layer weight as low-rank factors

    @classmethod
    def of(cls, runs: Sequence[Run]) -> MethodStats:
        return cls(
            acc=[r.final("personal_accuracy") for r in runs],
            r90=[rounds_to_frac_of_peak(r) for r in runs],
            ari=[r.final("cluster_ari") for r in runs],
            ari5=[ari_last(r) for r in runs],
            nmi=[r.final("cluster_nmi") for r in runs],
            stability=[r.mean("cluster_stability") for r in runs],
            clusters=[r.final("num_clusters") for r in runs],
            up=[uplink_mb(r) for r in runs],
            up_full=[uplink_mb(r, "uplink_bytes_full") for r in runs],
            up_low=[uplink_mb(r, "uplink_bytes_lowrank") for r in runs],
        )


MAIN_HEADER = [
    "setting",
    "method",
    "personal acc (%)",
    "p vs FedAvg",
    "rounds to 90% of peak",
    "p vs FedAvg",
    "ARI",
    "NMI",
    "clusters",
    "stability",
    "uplink MB / round",
    "ARI, last 5 rounds",
]


def main_rows(setting: str, by: dict[str, list[Run]]) -> list[list[Any]]:
    stats = {m: MethodStats.of(runs) for m, runs in by.items()}
    ref = stats[FEDAVG]
    rows = []
    for m, s in stats.items():
        fed = m == FEDAVG
        rows.append(
            [
                setting,
                m,
                ci(s.acc, 2, 100),
                "/" if fed else paired_p(s.acc, ref.acc),
                ci(s.r90, 1),
                "/" if fed else paired_p(s.r90, ref.r90),
                ci_or(s.ari, 3, why="n/a (one model)"),
                ci_or(s.nmi, 3, why="n/a (one model)"),
                ci_or(s.clusters, 1, why="1"),
                ci_or(s.stability, 3, why="n/a"),
                ci(s.up, 3),
                ci_or(s.ari5, 3, why="n/a (one model)"),
            ]
        )
    return rows


def ascfl_rows(setting: str, by: dict[str, list[Run]]) -> list[list[Any]]:
    """The paper's claims about AS-CFL on one setting: rounds to 90% vs CFL, uplink full vs low-rank."""
    a, c = MethodStats.of(by[ASCFL]), MethodStats.of(by["CFL"])
    ratio = [x / y if y > 0 else math.nan for x, y in zip(a.r90, c.r90, strict=True)]
    saved = [1 - lo / f if f > 0 else math.nan for lo, f in zip(a.up_low, a.up_full, strict=True)]
    return [
        [
            setting,
            ci(a.r90, 1),
            ci(c.r90, 1),
            ci_or(ratio, 2),
            paired_p(a.r90, c.r90),
            ci(a.up_full, 3),
            ci(a.up_low, 3),
            ci_or(saved, 2, 100),
        ]
    ]


ASCFL_HEADER = [
    "setting",
    "AS-CFL rounds to 90%",
    "CFL rounds to 90%",
    "ratio AS-CFL / CFL",
    "p (paired)",
    "AS-CFL uplink full (MB / round)",
    "AS-CFL uplink low-rank (MB / round)",
    "saved (%)",
]


def dp_row(name: str, runs: Sequence[Run]) -> list[Any]:
    return [
        name,
        ci([r.final("personal_accuracy") for r in runs], 2, 100),
        ci_or([r.final("epsilon_spent") for r in runs], 2, why="0 (no noise)"),
        ci_or([r.final("dp_sigma") for r in runs], 3, why="-"),
        ci_or([r.final("cluster_ari") for r in runs], 3),
        ci([float(r.rounds["dropouts"].sum()) if "dropouts" in r.rounds else 0.0 for r in runs], 1),
    ]


def plot_memberships(d: Path, by: dict[str, list[Run]], tag: str) -> list[str]:
    """One cluster-membership heat-map per clustered method (its first seed), via raysim.report."""
    from raysim.report import load_clusters, plot_clusters

    names = []
    for m in CLUSTERED:
        if m not in by or not by[m]:
            continue
        run = by[m][0]
        clusters = load_clusters(run.path)
        if clusters is None or not len(clusters):
            continue
        fname = f"clusters_{tag}_{m.lower().replace(' ', '_').replace('-', '')}.png"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            plot_clusters(clusters, run.rounds, f"{m} (seed {run.raw['seed']})", d / fname)
        names.append(fname)
    return names


# ----------------------------------------------------------------------------- AS-CFL ablation (issue 22)

PAPER_ROW = "AS-CFL (the paper's switches)"


def _per_round(runs: Sequence[Run], col: str) -> float:
    """The mean over seeds of a run's per-round mean of ``col`` (NaN when no run reports it)."""
    vals = [r.mean(col) for r in runs]
    finite = [v for v in vals if math.isfinite(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


def ablation_acts(row: str, paper: Sequence[Run], this: Sequence[Run]) -> str:
    """Whether the switch of ``row`` can change the computation in this setting, by construction,
    with the evidence of the paper row's runs: a switch whose mechanism never fired there cannot
    make the row differ, and is labelled so."""
    if row == PAPER_ROW:
        return "/"
    if row.startswith("w/o positive incentive"):
        rej = _per_round(paper, "incentive_rejections")
        if rej == 0:
            return "no: the paper row's test never rejected a candidate, so the partitions are the same by construction"
        return f"yes: the paper row's test rejected {rej:.1f} candidates a round (each one ends its seed's search)"
    if row.startswith("w/o dynamic adjustment"):
        s, m = _per_round(paper, "splits"), _per_round(paper, "merges")
        k0, k = _per_round(paper, "clusters_initial"), _per_round(paper, "num_clusters")
        return (
            f"yes: in the paper row EM, split and merge took {k0:.1f} greedy clusters a round to {k:.1f} "
            f"({s:.1f} splits, {m:.1f} merges a round)"
        )
    if row.startswith("β calibrated"):
        g, b = _per_round(this, "g_truth_max"), _per_round(this, "beta_used")
        g0 = _per_round(paper, "g_truth_max")
        return (
            f"yes when a cluster's G falls between 0.8 and β_t: true partition's largest G {g:.2f} a round "
            f"(paper row: {g0:.2f}), β used {b:.2f} on average; an oracle (reads the ground truth)"
        )
    if row.startswith("w/o low-rank"):
        r = _per_round(paper, "similarity_rank")
        n = _per_round(paper, "aggregated_clients")
        return (
            f"yes: exact cosine of the output layer instead of its rank-{r:.1f} embedding (of at most {n:.0f}), "
            "and dense output-layer uploads"
        )
    if row.startswith("similarity:"):
        return "yes: another block of the update is compared (and clustered by Stage 2)"
    return "yes: several switches at once (not an ablation of one)"


ABLATION_HEADER = [
    "variant",
    "personal acc (%)",
    "Δ vs paper row (points)",
    "p (paired)",
    "ARI, last round",
    "ARI, last 5 rounds",
    "clusters",
    "incentive rejections / round",
    "G of the true partition (max, mean over rounds)",
    "β used",
    "splits / round",
    "acts?",
]


def ablation_rows(by: dict[str, list[Run]]) -> list[list[Any]]:
    paper = by[PAPER_ROW]
    base = [r.final("personal_accuracy") for r in paper]
    rows = []
    for m, runs in by.items():
        acc = [r.final("personal_accuracy") for r in runs]
        first = m == PAPER_ROW
        rows.append(
            [
                m,
                ci(acc, 2, 100),
                "/" if first else ci([a - b for a, b in zip(acc, base, strict=True)], 2, 100),
                "/" if first else paired_p(acc, base),
                ci_or([r.final("cluster_ari") for r in runs], 3),
                ci_or([ari_last(r) for r in runs], 3),
                ci_or([r.final("num_clusters") for r in runs], 1),
                ci_or([r.mean("incentive_rejections") for r in runs], 1),
                ci_or([r.mean("g_truth_max") for r in runs], 2),
                ci_or([r.mean("beta_used") for r in runs], 2, why="- (no adjustment)"),
                ci_or([r.mean("splits") for r in runs], 1, why="- (no adjustment)"),
                ablation_acts(m, paper, runs),
            ]
        )
    return rows


IFCA_HEADER = [
    "variant",
    "personal acc (%)",
    "Δ vs reference (points)",
    "p (paired)",
    "ARI, last round",
    "ARI, last 5 rounds",
    "clusters used",
    "seeds with ARI 1.0 (last round)",
]


def ifca_rows(by: dict[str, list[Run]]) -> list[list[Any]]:
    ref = next(iter(by.values()))
    base = [r.final("personal_accuracy") for r in ref]
    rows = []
    for i, (m, runs) in enumerate(by.items()):
        acc = [r.final("personal_accuracy") for r in runs]
        aris = [r.final("cluster_ari") for r in runs]
        rows.append(
            [
                m,
                ci(acc, 2, 100),
                "/" if i == 0 else ci([a - b for a, b in zip(acc, base, strict=True)], 2, 100),
                "/" if i == 0 else paired_p(acc, base),
                ci_or(aris, 3),
                ci_or([ari_last(r) for r in runs], 3),
                ci_or([r.final("nonempty_clusters") for r in runs], 1),
                f"{sum(a >= 1.0 - 1e-9 for a in aris)} of {len(aris)}",
            ]
        )
    return rows
