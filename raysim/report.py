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
# the cluster-quality curves drawn under the membership heat-map, in [0, 1] (ARI may dip below 0),
# in black, grey and purple line styles: never one of the cluster colours above them
CLUSTER_CURVES = (("cluster_ari", "ARI"), ("cluster_nmi", "NMI"), ("cluster_stability", "stability"))
CURVE_STYLES = {
    "cluster_ari": ("black", "-"),
    "cluster_nmi": ("0.45", "--"),
    "cluster_stability": ("#7b3294", ":"),
}
NO_CLUSTER = "white"  # a client in no cluster (IFCA: not sampled yet); true groups are greys
MAX_ROUND_TICKS = 25  # more rounds than this: about this many integer round ticks
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


def run_headline(df: pd.DataFrame, summary: Mapping[str, Any]) -> tuple[str, dict[str, float | None], str]:
    """A run's family, its headline metrics' last values (from rounds.parquet) and what its
    test_accuracy means: as its summary.json declares them, else (a run written before they
    existed) as its algorithm's class declares them ("", {}, "": an algorithm raysim cannot load)."""
    from raysim.metrics import headline_values

    family, names, means = summary.get("family"), summary.get("headline"), summary.get("test_accuracy_means")
    if not (family and isinstance(names, Mapping) and means):
        try:
            from raysim.algorithms import algorithm_class

            cls = algorithm_class(str(summary.get("algorithm", "")))
        except (ValueError, ImportError):
            return "", {}, ""
        family, names, means = cls.family, cls.headline_metrics(), cls.test_accuracy_meaning()
    return str(family), headline_values(df.to_dict("records"), list(names)), str(means)


def headline_section(runs: list[tuple[str, pd.DataFrame, dict[str, Any]]]) -> str:
    """summary.md's first lines: each run's headline metrics (what to read first for its family)
    and what its test_accuracy means."""
    from raysim.metrics import format_headline

    lines = [
        "### What to read first",
        "",
        "| run | algorithm | family | headline metrics (last value) |",
        "|---|---|---|---|",
    ]
    meanings: dict[str, str] = {}
    for name, df, s in runs:
        family, values, means = run_headline(df, s)
        shown = format_headline(values, s.get("num_clients")) or "-"
        lines.append(f"| {name} | {s.get('algorithm', '-')} | {family or '-'} | {shown} |")
        if means:
            meanings.setdefault(str(s.get("algorithm", "-")), means)
    lines.append("")
    for algo, means in meanings.items():
        lines.append(f"**test_accuracy** ({algo}): {means}.")
        lines.append("")
    lines.append(
        "ARI/NMI (cluster_ari, cluster_nmi) compare the clusters with the ground-truth groups over the "
        "clients that are in a cluster and have a group (cluster_clients of them: e.g. IFCA's clients "
        "sampled so far). Every file and column: docs/outputs.md."
    )
    return "\n".join(lines) + "\n"


def _config_of(run_dir: Path) -> dict[str, Any]:
    """The run's config.yaml as plain data ({}: none or unreadable; only read for the notes)."""
    import yaml

    try:
        raw = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


def why_not_plotted(
    plot: str, run_dir: Path, df: pd.DataFrame, summary: Mapping[str, Any], clusters: pd.DataFrame | None
) -> str:
    """Why ``plot`` (a CURVES column, or "clusters") has nothing to draw for this run ("" when it has)."""
    algo = summary.get("algorithm", "the algorithm")
    if plot == "clusters" or plot.startswith("cluster_"):
        if clusters is None or not len(clusters):
            return f"{algo} puts no client in a cluster (only clustered algorithms do)"
        if plot == "clusters":
            return ""
    if plot in df and df[plot].notna().any():
        return ""
    personal_eval = _config_of(run_dir).get("rounds", {}).get("personal_eval", True)
    if plot.startswith("personal_") and personal_eval is False:
        return "rounds.personal_eval is false (set it true to score every client's own model)"
    if plot.startswith("test_") and plot in df:
        _, _, means = run_headline(df, summary)
        return f"NaN in every round: test_accuracy is {means}" if means else "NaN in every round"
    if plot in ("cluster_ari", "cluster_nmi"):
        if clusters is not None and not ("true_group" in clusters and (clusters["true_group"] >= 0).any()):
            return "the federation has no ground-truth groups (a data.partition with groups: rotation, ...)"
        return "fewer than two clients had both a cluster and a ground-truth group"
    if plot == "cluster_stability":
        return "clusters in fewer than two rounds (stability compares consecutive rounds)"
    if plot == "train_loss":
        return "no client finished training in any round"
    return f"no round logged {plot}"


def skipped_notes(
    run_dirs: list[Path],
    runs: list[tuple[str, pd.DataFrame, dict[str, Any]]],
    clustered: list[pd.DataFrame | None],
) -> list[str]:
    """One line per plot `raysim report` draws that has nothing to draw, saying why (runs that
    agree on the reason share it)."""
    notes: dict[str, list[str]] = {}  # reason -> plot files
    plots = [(col, f"{col}.png") for col, _ in CURVES]
    for col, fname in plots:
        reasons = [
            why_not_plotted(col, Path(d), df, s, c)
            for d, (_, df, s), c in zip(run_dirs, runs, clustered, strict=True)
        ]
        if all(reasons):
            key = "; ".join(dict.fromkeys(reasons))
            notes.setdefault(key, []).append(fname)
    for d, (name, df, s), c in zip(run_dirs, runs, clustered, strict=True):
        reason = why_not_plotted("clusters", Path(d), df, s, c)
        if reason:
            fname = "clusters.png" if len(runs) == 1 else f"clusters_{name}.png"
            notes.setdefault(reason, []).append(fname)
    return [", ".join(f"`{f}`" for f in files) + f": {reason}" for reason, files in notes.items()]


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
    text = headline_section(runs) + "\n" + markdown_table(runs)
    skipped = skipped_notes([Path(d) for d in run_dirs], runs, clustered)
    if skipped:
        text += "\n### Plots not drawn\n\n" + "".join(f"- {line}\n" for line in skipped)
    text += "\n" + provenance_table(envs)
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

    Rows are clients sorted by ground-truth group, then final cluster, then id; columns are rounds
    (ticked and labelled); the colour is the cluster id (a qualitative palette, white where a client
    is in no cluster yet). A thin strip on the left shows each client's ground-truth group when the
    federation has one, in greys labelled with the group (so no group shares a cluster's colour).
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
    # white: in no cluster (e.g. IFCA: never sampled yet)
    cmap = ListedColormap(_palette(len(ids))).with_extremes(bad=NO_CLUSTER)
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
    if n_rounds <= MAX_ROUND_TICKS:
        ax.set_xticks(range(r0, r1 + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=MAX_ROUND_TICKS, integer=True))
    key: list[Patch] = []  # what the colours that are not cluster ids mean
    if has_truth:
        ax.tick_params(axis="y", labelleft=False, left=False)
        strip = fig.add_subplot(gs[0, 0], sharey=ax)
        groups = sorted(int(g) for g in truth.unique() if g >= 0)
        shades = [str(v) for v in np.linspace(0.35, 0.8, max(len(groups), 1))]  # greys, dark to light
        gcmap = ListedColormap(shades).with_extremes(bad="white")
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
        bounds = np.flatnonzero(np.r_[True, np.diff(truth.to_numpy()) != 0, True])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):  # each group's number in its block
            if truth.iloc[a] >= 0:
                strip.text(
                    0.5,
                    (a + b - 1) / 2,
                    str(int(truth.iloc[a])),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if gindex[int(truth.iloc[a])] < len(groups) / 2 else "black",
                )
        strip.set_ylabel("client (sorted by true group, final cluster)")
        _sparse_ticks(strip.set_yticks, [int(c) for c in grid.index])
        strip.tick_params(axis="y", labelsize=7 if n_clients > 20 else 9)
        for y in np.flatnonzero(np.diff(truth.to_numpy()) != 0):  # a line between true groups
            ax.axhline(y + 0.5, color="black", linewidth=0.8)
        key += [Patch(color=gcmap(gindex[g]), label=f"true group {g} (strip)") for g in groups]
    else:
        ax.set_ylabel("client (sorted by final cluster)")
    if np.isnan(codes).any():
        key.append(Patch(facecolor=NO_CLUSTER, edgecolor="0.5", label="no cluster yet"))
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
            colour, style = CURVE_STYLES.get(col, ("black", "-"))
            cx.plot(
                sel["round"],
                sel[col],
                color=colour,
                linestyle=style,
                marker="." if len(sel) < 60 else None,
                label=lab,
            )
        cx.set_xlabel("round")
        cx.set_ylabel("score")
        low = float(np.nanmin(rounds[[c for c, _ in curves]].to_numpy()))
        cx.set_ylim(min(-0.05, low - 0.05), 1.05)
        cx.grid(alpha=0.3)
        cx.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        ax.set_xlabel("")  # the rounds stay labelled under the heat-map; "round" names them below
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
