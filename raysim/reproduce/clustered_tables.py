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


def uplink_mb(run: Run, col: str = "bytes_up") -> float:
    """Mean bytes uploaded per round, in MB (10^6 bytes)."""
    return run.mean(col) / 1e6


@dataclass
class MethodStats:
    acc: list[float]  # final personal accuracy per seed
    r90: list[float]
    ari: list[float]
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
