"""The reproductions' figures: accuracy curves per setting (one line per method, its 95% band, the
round each curve flattened, a zoomed panel when a panel is crowded), points with error bars against
a swept value, and bars. Read off ``harness.Run`` records; written as PNGs beside each table.md."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from raysim.reproduce.harness import Flat, Run, curves


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    path: Path,
    panels: dict[str, dict[str, list[Run]]],
    col: str,
    ylabel: str,
    flats: Mapping[str, Mapping[str, Flat]] | None = None,
) -> None:
    """``curve_figure`` saved to ``path`` (legend included)."""
    fig = curve_figure(panels, col, ylabel, flats)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)


def curve_figure(
    panels: dict[str, dict[str, list[Run]]],
    col: str,
    ylabel: str,
    flats: Mapping[str, Mapping[str, Flat]] | None = None,
) -> Any:
    """One panel per setting, one line per method (mean over seeds) with its 95% band (clipped to
    the metric's range, ``metric_bounds``); with
    ``flats`` (panel -> method -> ``Flat``) each curve that flattened gets a marker at that round.
    One legend for the figure, right of the panels: with ten methods a legend inside a panel
    covered the curves' ends, which are what the figure is read for. A method keeps its colour in
    every panel. A panel of ``ZOOM_FROM`` methods or more gets a second one below it: its last
    half of rounds, the y axis fitted to the top half of its methods by final value (Table 1 at 96
    rounds: ten curves within 0.9-1.0 could not be told apart at full scale)."""
    plt = pyplot()
    zoom = any(len(by_method) >= ZOOM_FROM for by_method in panels.values())
    rows = 2 if zoom else 1
    fig, axes = plt.subplots(rows, len(panels), figsize=(5.5 * len(panels), 4 * rows), squeeze=False)
    methods = list(dict.fromkeys(m for by_method in panels.values() for m in by_method))
    colour = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    handles: dict[str, Any] = {}
    marked = False
    bounds = metric_bounds(col)
    for i, (title, by_method) in enumerate(panels.items()):
        ax = axes[0][i]
        drawn = {}
        for method, runs in by_method.items():
            x, m, h = curves(runs, col)
            drawn[method] = (x, m)
            (line,) = ax.plot(x, m, label=method, color=colour[method])
            handles.setdefault(method, line)
            lo, hi = m - h, m + h
            if bounds is not None:  # a t-interval over 3 seeds can reach past them: drawn up to them
                lo, hi = np.clip(lo, *bounds), np.clip(hi, *bounds)
            ax.fill_between(x, lo, hi, alpha=0.2, color=line.get_color())
            marked |= _mark_flat(ax, (flats or {}).get(title, {}).get(method), x, m, line.get_color())
        _axis(ax, title, ylabel)
        if zoom:
            _zoomed(axes[1][i], title, ylabel, drawn, colour, (flats or {}).get(title, {}), "loss" in col)
    if flats and marked:
        (handles["flattened by (criterion)"],) = axes[0][0].plot(
            [], [], "v", color="grey", markeredgecolor="k"
        )
    elif flats:  # say so, rather than a marker that appears nowhere
        (handles["no curve flattened (criterion)"],) = axes[0][0].plot([], [], " ")
    fig.tight_layout()
    fig.legend(
        list(handles.values()), list(handles), loc="upper left", bbox_to_anchor=(1.0, 0.95), frameon=False
    )
    return fig


def metric_bounds(col: str) -> tuple[float, float] | None:
    """The range a metric's values cannot leave: [0, 1] for an accuracy, [-1, 1] for an adjusted
    Rand index (``cluster_ari``; 1 is a perfect match); None for others (a loss)."""
    if "accuracy" in col:
        return (0.0, 1.0)
    if "ari" in col.split("_"):
        return (-1.0, 1.0)
    return None


ZOOM_FROM = 5  # methods in a panel from which curve_figure adds a zoomed panel below it


def _axis(ax: Any, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _mark_flat(ax: Any, f: Flat | None, x: np.ndarray, m: np.ndarray, color: str) -> bool:
    """The flattening marker of one curve at its round (if it flattened within ``x``)."""
    if f is None or f.round is None or f.round not in set(x.tolist()):
        return False
    y = float(m[list(x).index(f.round)])
    ax.plot([f.round], [y], marker="v", markersize=9, color=color, markeredgecolor="k")
    return True


def _zoomed(
    ax: Any,
    title: str,
    ylabel: str,
    drawn: Mapping[str, tuple[np.ndarray, np.ndarray]],
    colour: Mapping[str, str],
    flats: Mapping[str, Flat],
    lower_is_better: bool,
) -> None:
    """The last half of a panel's rounds, its y axis fitted to the top half of its methods by
    final mean (the lowest-final ones for a loss); the others run below (above) it. No bands:
    the panel above has them."""
    ends = {k: (x, m) for k, (x, m) in drawn.items() if len(x)}
    if not ends:
        _axis(ax, f"{title}: (no rounds)", ylabel)
        return
    start = max(float(x[-1]) for x, _ in ends.values()) / 2
    order = sorted(ends, key=lambda k: float(ends[k][1][-1]), reverse=not lower_is_better)
    top = order[: max(2, math.ceil(len(order) / 2))]
    shown = np.concatenate([m[x >= start] for k, (x, m) in ends.items() if k in top])
    for method, (x, m) in ends.items():
        keep = x >= start
        ax.plot(x[keep], m[keep], color=colour[method])
        _mark_flat(ax, flats.get(method), x[keep], m[keep], colour[method])
    if shown.size:
        lo, hi = float(np.nanmin(shown)), float(np.nanmax(shown))
        pad = max(0.1 * (hi - lo), 0.002)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlim(left=start)
    _axis(ax, f"{title}: last half, the top {len(top)} of {len(order)} (zoomed)", ylabel)


def plot_points(
    path: Path, series: dict[str, tuple[Sequence[float], list[list[float]]]], xlabel: str, ylabel: str
) -> None:
    """Mean ± 95% CI of several series against an x axis."""
    from raysim.metrics import mean_ci95

    plt = pyplot()
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

    plt = pyplot()
    stats = [mean_ci95(np.asarray(v)) for v in values]
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 4))
    ax.bar(names, [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=4)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
