"""`raysim report`: plots and a Markdown table from one or more run directories.

The table is followed by what produced each run (its ``environment.json``, ``raysim.provenance``),
and compared runs that differ in what decides their numbers (commit, package versions, the ISA
torch ran, reproducible mode) get a warning, on stderr and in summary.md: their numbers need not
agree to the last bit even with the same config and seed.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raysim import provenance
from raysim.config import ConfigError

CURVES = (
    ("test_accuracy", "test accuracy"),
    ("test_loss", "test loss"),
    ("personal_accuracy", "personalised accuracy"),
    ("train_loss", "train loss"),
    ("cluster_ari", "cluster ARI vs ground truth"),
    ("cluster_nmi", "cluster NMI vs ground truth"),
    ("cluster_stability", "cluster stability (Jaccard)"),
)
# the cluster-quality curves drawn under the membership heat-map, in [0, 1] (ARI may dip below 0)
CLUSTER_CURVES = (("cluster_ari", "ARI"), ("cluster_nmi", "NMI"), ("cluster_stability", "stability"))
MAX_TICK_LABELS = 40  # more clients (or cluster ids) than this: fewer, evenly spaced tick labels


def load_run(run_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A run's rounds and summary; a missing, truncated or foreign file is a ConfigError naming it."""
    from raysim.runtime.rundir import read_json, read_table

    rounds = run_dir / "rounds.parquet"
    if not rounds.is_file():
        raise ConfigError(f"{run_dir}: no rounds.parquet here; pass directories written by `raysim run`")
    summary_path = run_dir / "summary.json"
    summary = read_json(summary_path) if summary_path.is_file() else {}
    if not isinstance(summary, dict):
        raise ConfigError(f"{summary_path}: not a summary written by `raysim run` (not a JSON object)")
    return read_table(rounds), summary


def load_clusters(run_dir: Path) -> pd.DataFrame | None:
    """The run's clusters.parquet (clustered algorithms only), or None."""
    from raysim.runtime.rundir import read_table

    path = Path(run_dir) / "clusters.parquet"
    return read_table(path, ("round", "client_id", "cluster")) if path.is_file() else None


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(runs: list[tuple[str, pd.DataFrame, dict[str, Any]]]) -> str:
    head = (
        "| run | algorithm | rounds | final test acc | best test acc | final personal acc | "
        "median s/round | total s | peak RSS MB | dropouts |"
    )
    lines = [head, "|" + "---|" * 10]
    for name, _df, s in runs:
        lines.append(
            f"| {name} | {s.get('algorithm', '-')} | {s.get('rounds', '-')} | {_fmt(s.get('final_test_accuracy'))} | "
            f"{_fmt(s.get('best_test_accuracy'))} | {_fmt(s.get('final_personal_accuracy'))} | "
            f"{_fmt(s.get('median_round_seconds'), 3)} | {_fmt(s.get('total_seconds'), 1)} | "
            f"{_fmt(s.get('peak_rss_mb'), 0)} | {s.get('dropouts', '-')} |"
        )
    return "\n".join(lines) + "\n"


def provenance_table(envs: Mapping[str, Mapping[str, Any] | None]) -> str:
    """What produced each run: commit, the ISA torch dispatched to, CPU, reproducible mode, the Ray
    nodes, and the versions of the packages that compute (``-``: no environment.json)."""
    head = "| run | commit | torch ISA | CPU | reproducible | nodes | python | torch | numpy | ray |"
    lines = ["### Environment", "", head, "|" + "---|" * 10]
    for name, env in envs.items():
        if env is None:
            lines.append(f"| {name} | " + " | ".join(["-"] * 9) + " |")
            continue
        k = provenance.key_fields(env)
        nodes = env.get("cluster", {}).get("nodes")
        lines.append(
            f"| {name} | {k['commit']} | {_fmt(k['isa'])} | {_fmt(k['cpu'])} | {k['reproducible']} | "
            f"{_fmt(nodes) if nodes is not None else env.get('cluster', {}).get('backend', '-')} | "
            f"{_fmt(env.get('python'))} | {_fmt(k.get('torch'))} | {_fmt(k.get('numpy'))} | {_fmt(k.get('ray'))} |"
        )
    return "\n".join(lines) + "\n"


def write_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not run_dirs:
        raise ConfigError("report: give at least one run directory")
    runs, clustered = [], []
    for d in run_dirs:  # every file is read (and refused) before anything is written
        df, s = load_run(Path(d))
        runs.append((Path(d).name, df, s))
        clustered.append(load_clusters(Path(d)))
    out = (
        Path(out)
        if out is not None
        else (Path(run_dirs[0]) / "plots" if len(run_dirs) == 1 else Path("report"))
    )
    out.mkdir(parents=True, exist_ok=True)
    for col, label in CURVES:
        if not any(col in df and df[col].notna().any() for _, df, _ in runs):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, df, _ in runs:
            if col in df:
                sel = df[["round", col]].dropna()
                ax.plot(sel["round"], sel[col], marker="." if len(sel) < 60 else None, label=name)
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{col}.png", dpi=120)
        plt.close(fig)
    for clusters, (name, df, _) in zip(clustered, runs, strict=True):
        if clusters is not None and len(clusters):
            fname = "clusters.png" if len(runs) == 1 else f"clusters_{name}.png"
            plot_clusters(clusters, df, name, out / fname)
    envs = {name: provenance.read(Path(d)) for d, (name, _, _) in zip(run_dirs, runs, strict=True)}
    differ = provenance.differences(envs) if len(runs) > 1 else []
    text = markdown_table(runs) + "\n" + provenance_table(envs)
    if differ:
        head = "the compared runs differ in what decides their numbers (same config and seed need not agree)"
        sys.stderr.write(f"warning: {head}:\n" + "".join(f"  {line}\n" for line in differ))
        text += f"\n> **Warning**: {head}:\n" + "".join(f">\n> - {line}\n" for line in differ)
    (out / "summary.md").write_text(text)
    return out


def _palette(n: int, names: tuple[str, ...] | None = None) -> list[Any]:
    """``n`` qualitative colours from the colormaps ``names`` (cycled when there are more); the
    default: tab10, tab20, then tab20+tab20b+tab20c."""
    import matplotlib

    if names is None:
        names = ("tab10",) if n <= 10 else ("tab20",) if n <= 20 else ("tab20", "tab20b", "tab20c")
    maps = [matplotlib.colormaps[nm] for nm in names]
    colours = [cm(i) for cm in maps for i in range(cm.N)]
    return [colours[i % len(colours)] for i in range(max(n, 1))]


def _sparse_ticks(ax_set: Any, labels: list[Any]) -> None:
    """Tick every label, or about MAX_TICK_LABELS evenly spaced ones."""
    step = max(1, int(np.ceil(len(labels) / MAX_TICK_LABELS)))
    pos = list(range(0, len(labels), step))
    ax_set(pos, labels=[str(labels[i]) for i in pos])


def plot_clusters(clusters: pd.DataFrame, rounds: pd.DataFrame, name: str, path: Path) -> Path:
    """Cluster membership over rounds as a heat-map, with the cluster-quality curves under it.

    Rows are clients sorted by ground-truth group, then final cluster, then id; columns are rounds;
    the colour is the cluster id (a qualitative palette, grey where a client is in no cluster yet).
    A thin strip on the left shows each client's ground-truth group when the federation has one.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    grid = clusters.pivot_table(index="client_id", columns="round", values="cluster", aggfunc="last")
    r0, r1 = int(grid.columns.min()), int(grid.columns.max())
    grid = grid.reindex(columns=range(r0, r1 + 1))  # a round without rows: blank column
    has_truth = "true_group" in clusters and bool((clusters["true_group"] >= 0).any())
    truth = (
        clusters.groupby("client_id")["true_group"].last().reindex(grid.index)
        if has_truth
        else pd.Series(-1, index=grid.index)
    )
    final = grid.ffill(axis=1).iloc[:, -1].fillna(-1)  # the client's last cluster
    unassigned = 1 << 62  # never-assigned clients sort after every real cluster
    order = sorted(
        grid.index,
        key=lambda c: (int(truth[c]), int(final[c]) if final[c] >= 0 else unassigned, int(c)),
    )
    grid, truth = grid.loc[order], truth.loc[order]

    ids = sorted(int(k) for k in pd.unique(grid.to_numpy().ravel()) if k == k and k >= 0)
    index_of = {k: i for i, k in enumerate(ids)}
    codes = np.full(grid.shape, np.nan)
    for (i, j), k in np.ndenumerate(grid.to_numpy()):
        if k == k and k >= 0:
            codes[i, j] = index_of[int(k)]
    # grey: in no cluster (e.g. IFCA: never sampled yet)
    cmap = ListedColormap(_palette(len(ids))).with_extremes(bad="#d9d9d9")
    norm = BoundaryNorm(np.arange(-0.5, max(len(ids), 1) + 0.5), cmap.N)

    curves = [(c, lab) for c, lab in CLUSTER_CURVES if c in rounds and rounds[c].notna().any()]
    n_clients, n_rounds = grid.shape
    height = min(14.0, 2.5 + 0.12 * n_clients) + (2.2 if curves else 0.0)
    fig = plt.figure(figsize=(min(16.0, 5.0 + 0.08 * n_rounds), height))
    gs = fig.add_gridspec(
        2 if curves else 1,
        3,
        width_ratios=[0.35 if has_truth else 0.001, 12, 0.3],
        height_ratios=[min(14.0, 2.5 + 0.12 * n_clients), 2.0] if curves else [1],
        wspace=0.04,
        hspace=0.25,
    )
    ax = fig.add_subplot(gs[0, 1])
    extent = (r0 - 0.5, r1 + 0.5, n_clients - 0.5, -0.5)
    im = ax.imshow(
        np.ma.masked_invalid(codes),
        cmap=cmap,
        norm=norm,
        aspect="auto",
        interpolation="nearest",
        extent=extent,
    )
    ax.set_title(f"{name}: cluster membership over rounds")
    ax.set_xlabel("round")
    _sparse_ticks(ax.set_yticks, [int(c) for c in grid.index])
    ax.tick_params(axis="y", labelsize=7 if n_clients > 20 else 9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    key: list[Patch] = []  # what the colours that are not cluster ids mean
    if has_truth:
        ax.tick_params(axis="y", labelleft=False, left=False)
        strip = fig.add_subplot(gs[0, 0], sharey=ax)
        groups = sorted(int(g) for g in truth.unique() if g >= 0)
        gcmap = ListedColormap(_palette(len(groups), ("Pastel2", "Pastel1"))).with_extremes(bad="white")
        gindex = {g: i for i, g in enumerate(groups)}
        gcodes = np.array([[gindex[int(g)] if g >= 0 else np.nan] for g in truth], dtype=float)
        strip.imshow(
            np.ma.masked_invalid(gcodes),
            cmap=gcmap,
            norm=BoundaryNorm(np.arange(-0.5, max(len(groups), 1) + 0.5), gcmap.N),
            aspect="auto",
            interpolation="nearest",
            extent=(0, 1, n_clients - 0.5, -0.5),
        )
        strip.set_xticks([0.5], labels=["true\ngroup"], fontsize=7)
        strip.set_ylabel("client (sorted by true group, final cluster)")
        _sparse_ticks(strip.set_yticks, [int(c) for c in grid.index])
        strip.tick_params(axis="y", labelsize=7 if n_clients > 20 else 9)
        for y in np.flatnonzero(np.diff(truth.to_numpy()) != 0):  # a line between true groups
            ax.axhline(y + 0.5, color="black", linewidth=0.8)
        key += [Patch(color=gcmap(gindex[g]), label=f"true group {g}") for g in groups]
    else:
        ax.set_ylabel("client (sorted by final cluster)")
    if np.isnan(codes).any():
        key.append(Patch(color="#d9d9d9", label="no cluster"))
    if key:  # right of the colorbar and its label
        ax.legend(handles=key, loc="upper left", bbox_to_anchor=(1.14, 1.0), fontsize=7, frameon=False)
    cax = fig.add_subplot(gs[0, 2])
    cbar = fig.colorbar(im, cax=cax)
    cbar.set_label("cluster id")
    _sparse_ticks(cbar.set_ticks, ids)
    if curves:
        cx = fig.add_subplot(gs[1, 1], sharex=ax)
        for col, lab in curves:
            sel = rounds[["round", col]].dropna()
            cx.plot(sel["round"], sel[col], marker="." if len(sel) < 60 else None, label=lab)
        cx.set_xlabel("round")
        cx.set_ylabel("score")
        low = float(np.nanmin(rounds[[c for c, _ in curves]].to_numpy()))
        cx.set_ylim(min(-0.05, low - 0.05), 1.05)
        cx.grid(alpha=0.3)
        cx.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        ax.set_xlabel("")
        ax.tick_params(axis="x", labelbottom=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
