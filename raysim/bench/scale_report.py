"""What a finished ``raysim bench scale`` says: each run's rows read from its run directory and
its process probe, the goals, the Markdown and Parquet tables, the plots, the per-actor costs and
``README.md``. ``raysim.bench.scale`` runs the sizes and calls these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raysim.bench.probe import CLIENT, DRIVER, SERVER

if TYPE_CHECKING:
    from raysim.bench.scale import RunResult

# the goals of issue 13 (checked at GOAL_N against GOAL_BASE_N)
GOAL_N, GOAL_BASE_N = 10_000, 100
GOAL_RATIO = 1.3
GOAL_FIRST_ROUND_S = 20.0
# the goals of issue 21 at 10^6 clients (a round with evaluation: with the bench's --personal-eval,
# the default auto what the issue means)
GOAL_MILLION = 1_000_000
GOAL_MILLION_SETUP_S, GOAL_MILLION_DRIVER_MB, GOAL_MILLION_TOTAL_MB = 15.0, 1500.0, 4000.0
GOAL_MILLION_EVAL_ROUND_S = 5.0


# ---------------------------------------------------------------------------------- reading results


def _median(xs: Sequence[float]) -> float:
    v = sorted(x for x in xs if x == x)
    if not v:
        return math.nan
    m = len(v) // 2
    return v[m] if len(v) % 2 else 0.5 * (v[m - 1] + v[m])


def mean_n_test(run_dir: Path) -> float:
    """The mean local test examples of a run's clients (``partition.parquet``'s ``n_test``): what a
    scored client evaluates; NaN without the table."""
    import pyarrow.parquet as pq

    path = run_dir / "partition.parquet"
    if not path.is_file():
        return math.nan
    col = pq.read_table(path, columns=["n_test"]).column("n_test").to_numpy()
    return float(col.mean()) if len(col) else math.nan


def round_rows(res: RunResult) -> list[dict[str, Any]]:
    """One row per round of a finished run: its times, the examples its cohort trained and, in an
    evaluated round, the clients personal evaluation scored (``test_per_client`` test examples
    each, the federation's mean: a sample's expected figure)."""
    import pandas as pd

    if res.run_dir is None:
        return []
    test_pc = mean_n_test(res.run_dir)
    rounds = pd.read_parquet(res.run_dir / "rounds.parquet")
    clients = pd.read_parquet(res.run_dir / "clients.parquet")
    trained = clients[clients["participated"] & ~clients["dropped"]]
    examples = trained.groupby("round")["num_examples"].sum()
    actors = int(res.summary.get("client_actors", 0))
    out = []
    for r in rounds.to_dict("records"):
        t = int(r["round"])
        # an evaluated round has the server model's test figures (or personal ones)
        scored = float(r.get("personal_eval_clients", math.nan))
        scored = scored if math.isfinite(scored) else 0.0
        if "test_loss" in r:
            was_evaluated = math.isfinite(float(r["test_loss"])) or scored > 0
        else:  # an algorithm without a server model and personal evaluation off: its time says
            was_evaluated = scored > 0 or float(r.get("evaluate_s", 0.0)) > 1e-3
        out.append(
            {
                "kind": res.spec.kind,
                "n_clients": res.spec.n_clients,
                "actors": actors,
                "round": t,
                "cohort": float(r.get("cohort", math.nan)),
                "examples": float(examples.get(t, 0)),
                "round_s": float(r["round_s"]),
                "evaluate_s": float(r.get("evaluate_s", 0.0)),
                "busy_s": float(r.get("actor_busy_max_s", math.nan)),
                "train_s": float(r.get("train_s", math.nan)),
                "evaluated": was_evaluated,
                "personal_eval_clients": scored,
                "personal_eval_shared": float(r.get("personal_eval_shared", math.nan)),
                "test_per_client": test_pc,
            }
        )
    return out


def _role_sum(rows: list[dict[str, Any]], roles: Sequence[str], col: str) -> float:
    vals = [r[col] for r in rows if r["role"] in roles and r[col] == r[col]]
    return float(sum(vals)) if vals else math.nan


def summarize(res: RunResult, epochs: int = 1) -> dict[str, Any]:
    """The run's row of ``scale.parquet`` / ``actors.parquet``."""
    procs = res.probe.rows()
    row: dict[str, Any] = {
        "kind": res.spec.kind,
        "n_clients": res.spec.n_clients,
        "status": res.status,
        "reason": res.reason,
        "wall_s": res.wall_s,
        "processes": len(procs),
        "object_store_mb": res.probe.store_peak_bytes / 2**20 if res.probe.store_samples else math.nan,
        "peak_simultaneous_rss_mb": res.probe.peak_total_rss_mb,
        "load_start": res.load[0],  # other jobs share the machine: its 1-minute load average
        "load_end": res.load[1],
    }
    clients = [p for p in procs if p["role"] == CLIENT]
    row["driver_rss_mb"] = _role_sum(procs, (DRIVER,), "peak_rss_mb")
    row["server_rss_mb"] = _role_sum(procs, (SERVER,), "peak_rss_mb")
    row["client_rss_mb_max"] = max((p["peak_rss_mb"] for p in clients), default=math.nan)
    row["client_rss_mb_mean"] = sum(p["peak_rss_mb"] for p in clients) / len(clients) if clients else math.nan
    row["client_rss_mb_sum"] = _role_sum(procs, (CLIENT,), "peak_rss_mb")
    row["client_uss_mb_mean"] = (
        _role_sum(procs, (CLIENT,), "peak_uss_mb") / len(clients) if clients else math.nan
    )
    others = [p["role"] for p in procs if p["role"] not in (DRIVER, SERVER, CLIENT)]
    row["ray_system_rss_mb"] = _role_sum(procs, tuple(set(others)), "peak_rss_mb") if others else 0.0
    row["driver_uss_mb"] = _role_sum(procs, (DRIVER,), "peak_uss_mb")
    row["server_uss_mb"] = _role_sum(procs, (SERVER,), "peak_uss_mb")
    row["total_uss_mb"] = _role_sum(procs, tuple({p["role"] for p in procs}), "peak_uss_mb")
    # every page once (tables of benches before PSS was sampled have no peak_pss_mb: NaN)
    row["total_pss_mb"] = sum(float(p.get("peak_pss_mb", math.nan)) for p in procs) if procs else math.nan
    row["actors"] = (
        int(res.summary.get("client_actors", len(clients))) if res.status == "ok" else len(clients)
    )
    row["actor_processes"] = len(clients) + int(any(p["role"] == SERVER for p in procs))
    if res.status == "ok" and res.run_dir is not None:
        import pandas as pd

        system = pd.read_parquet(res.run_dir / "system.parquet")
        # the driver's own peak (ru_maxrss) is exact; the probe's is sampled
        drv = system[system["actor"] == -1]["peak_rss_mb"]
        if len(drv):
            row["driver_rss_mb"] = max(row["driver_rss_mb"], float(drv.max()))
        own = system[system["actor"] >= 0].groupby("pid")["peak_rss_mb"].max().to_dict()
        for p in clients:  # an actor's own peak (its last stats call) may be above the sampled one
            p["peak_rss_mb"] = max(p["peak_rss_mb"], float(own.get(p["pid"], 0.0)))
        if clients:
            row["client_rss_mb_max"] = max(p["peak_rss_mb"] for p in clients)
            row["client_rss_mb_mean"] = sum(p["peak_rss_mb"] for p in clients) / len(clients)
            row["client_rss_mb_sum"] = sum(p["peak_rss_mb"] for p in clients)
        rr = round_rows(res)
        later = [r for r in rr if r["round"] >= 2] or rr
        first = rr[0]
        ev = [r for r in later if r["evaluated"]] or [r for r in rr if r["evaluated"]]
        # set-up ends the moment the run directory's files are written (partition.parquet last)
        marker = next(
            p
            for p in (res.run_dir / "partition.parquet", res.run_dir / "config.yaml", res.run_dir)
            if p.exists()
        )
        ready = marker.stat().st_mtime - res.launch
        s = res.summary
        row.update(
            {
                "rounds": len(rr),
                "cohort": first["cohort"],
                "import_s": ready - float(s["setup_seconds"]),
                "setup_s": float(s["setup_seconds"]),
                "first_round_s": first["round_s"] - first["evaluate_s"],
                "time_to_first_round_s": ready + first["round_s"] - first["evaluate_s"],
                "median_round_s": _median([r["round_s"] - r["evaluate_s"] for r in later]),
                "median_busy_s": _median([r["busy_s"] for r in later]),
                "median_overhead_s": _median([r["round_s"] - r["evaluate_s"] - r["busy_s"] for r in later]),
                "examples_per_round": _median([r["examples"] for r in later]),
                # an evaluated round's evaluation (server model + personal), rounds 2.. where any
                "median_evaluate_s": _median([r["evaluate_s"] for r in ev]),
                "evaluated_rounds": len(ev),
                "personal_eval_clients": _median([r["personal_eval_clients"] for r in ev]),
                "test_per_client": rr[0]["test_per_client"],
                "epochs": epochs,
                "summary_total_peak_rss_mb": float(s.get("total_peak_rss_mb", math.nan)),
            }
        )
    row["total_rss_mb"] = sum(
        v
        for v in (
            row["driver_rss_mb"],
            row["server_rss_mb"],
            row["client_rss_mb_sum"],
            row["ray_system_rss_mb"],
        )
        if v == v
    )
    return row


def process_rows(res: RunResult) -> list[dict[str, Any]]:
    return [
        {
            "kind": res.spec.kind,
            "n_clients": res.spec.n_clients,
            **p,
            "since_launch_s": p["role_since"] - res.launch,
        }
        for p in res.probe.rows()
    ]


# ------------------------------------------------------------------------------------------ goals


def goals(scale: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(goal, measured, verdict) for the issue's three goals; 'not measured' when a size is missing."""
    by_n = {int(r["n_clients"]): r for r in scale if r.get("status") == "ok"}
    base, big = by_n.get(GOAL_BASE_N), by_n.get(GOAL_N)
    out: list[tuple[str, str, str]] = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    for col, what in (("median_round_s", "round time"), ("total_rss_mb", "total RSS")):
        goal = f"{what} at N={GOAL_N:,} <= {GOAL_RATIO}x N={GOAL_BASE_N}"
        if base is None or big is None:
            out.append((goal, "not measured", "not measured"))
            continue
        ratio = big[col] / base[col]
        out.append((goal, f"{big[col]:.3g} / {base[col]:.3g} = {ratio:.2f}x", verdict(ratio <= GOAL_RATIO)))
    goal = f"time to first round at N={GOAL_N:,} <= {GOAL_FIRST_ROUND_S:g} s"
    if big is None:
        out.append((goal, "not measured", "not measured"))
    else:
        v = big["time_to_first_round_s"]
        out.append((goal, f"{v:.1f} s", verdict(v <= GOAL_FIRST_ROUND_S)))
    million = by_n.get(GOAL_MILLION)
    if million is not None:  # issue 21's, only where the bench ran 10^6 clients
        for col, what, most, unit in (
            ("setup_s", "set-up", GOAL_MILLION_SETUP_S, "s"),
            ("driver_rss_mb", "driver peak RSS", GOAL_MILLION_DRIVER_MB, "MB"),
            (
                "total_rss_mb",
                "all processes' peak RSS (shared pages in every process)",
                GOAL_MILLION_TOTAL_MB,
                "MB",
            ),
            ("total_pss_mb", "all processes' peak PSS (every page once)", GOAL_MILLION_TOTAL_MB, "MB"),
        ):
            v = float(million.get(col, float("nan")))
            if not math.isfinite(v):
                continue  # a table from before the bench sampled it
            out.append(
                (f"{what} at N={GOAL_MILLION:,} <= {most:g} {unit}", f"{v:,.1f} {unit}", verdict(v <= most))
            )
        rnd = float(million.get("median_round_s", math.nan)) + float(
            million.get("median_evaluate_s", math.nan)
        )
        scored = float(million.get("personal_eval_clients", math.nan))
        goal = f"a round with evaluation at N={GOAL_MILLION:,} <= {GOAL_MILLION_EVAL_ROUND_S:g} s"
        if math.isfinite(rnd):
            what = (
                f"personal evaluation of {scored:,.0f} clients" if scored > 0 else "personal evaluation off"
            )
            out.append((goal, f"{rnd:.2f} s ({what})", verdict(rnd <= GOAL_MILLION_EVAL_ROUND_S)))
        else:
            out.append((goal, "not measured", "not measured"))
    return out


# ------------------------------------------------------------------------------------------ tables


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


SCALE_COLUMNS = (
    ("n_clients", "N"),
    ("status", "status"),
    ("time_to_first_round_s", "first round s"),
    ("setup_s", "setup s"),
    ("median_round_s", "round s"),
    ("median_overhead_s", "overhead s"),
    ("median_evaluate_s", "evaluate s"),
    ("personal_eval_clients", "scored clients"),
    ("examples_per_round", "examples/round"),
    ("driver_rss_mb", "driver MB"),
    ("server_rss_mb", "server MB"),
    ("client_rss_mb_max", "client MB (max)"),
    ("ray_system_rss_mb", "Ray MB"),
    ("total_rss_mb", "total MB"),
    ("object_store_mb", "store MB"),
    ("actors", "client actors"),
)
ACTOR_COLUMNS = (
    ("n_clients", "actors"),
    ("status", "status"),
    ("setup_s", "setup s"),
    ("client_rss_mb_mean", "RSS/actor MB"),
    ("client_uss_mb_mean", "USS/actor MB"),
    ("total_rss_mb", "total MB"),
    ("median_round_s", "round s"),
)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = [
        "| "
        + " | ".join(
            _fmt(r.get(c, math.nan)) if r.get("status") == "ok" or i < 2 else "-"
            for i, (c, _) in enumerate(columns)
        )
        + " |"
        for r in rows
    ]
    notes = [f"- N={r['n_clients']:,}: stops because {r['reason']}" for r in rows if r.get("status") != "ok"]
    return "\n".join([head, sep, *body, *([""] + notes if notes else [])])


def write_table(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import pandas as pd

    from raysim.runtime.logger import write_parquet

    write_parquet(pd.DataFrame(list(rows)), path)


# ------------------------------------------------------------------------------------------ plots


def plot_scale(
    rows: Sequence[dict[str, Any]], path: Path, model_curves: dict[str, Any] | None = None
) -> Path:
    """One figure, small panels, each figure of merit against N (log x); the goal lines drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = sorted((r for r in rows if r.get("status") == "ok"), key=lambda r: r["n_clients"])
    bad = [r for r in rows if r.get("status") != "ok"]
    ns = [r["n_clients"] for r in ok]
    base = next((r for r in ok if r["n_clients"] == GOAL_BASE_N), None)
    panels: list[tuple[str, str, list[tuple[str, str]], float | None, str]] = [
        ("Time to first round", "s", [("time_to_first_round_s", "measured"), ("setup_s", "of which set-up")],
         GOAL_FIRST_ROUND_S, f"goal <= {GOAL_FIRST_ROUND_S:g} s at N={GOAL_N:,}"),
        ("Median round time", "s (log scale)", [("median_round_s", "round"), ("median_busy_s", "busiest actor"),
                                    ("median_overhead_s", "overhead (round - busiest)"),
                                    ("median_evaluate_s", "evaluation (an evaluated round adds)")],
         base["median_round_s"] * GOAL_RATIO if base else None, f"goal: {GOAL_RATIO}x N={GOAL_BASE_N}"),
        ("Peak RSS by process", "MB", [("driver_rss_mb", "driver"), ("server_rss_mb", "server actor"),
                                       ("client_rss_mb_max", "client actor (largest)"),
                                       ("ray_system_rss_mb", "Ray's own processes")], None, ""),
        ("Total peak RSS (sum of every process)", "MB", [("total_rss_mb", "sum of peaks"),
                                                          ("peak_simultaneous_rss_mb", "largest simultaneous sum")],
         base["total_rss_mb"] * GOAL_RATIO if base else None, f"goal: {GOAL_RATIO}x N={GOAL_BASE_N}"),
        ("Object store in use (peak)", "MB", [("object_store_mb", "Ray object store")], None, ""),
        ("Actors", "count", [("actors", "client actors"), ("processes", "processes in the run's tree")],
         None, ""),
    ]  # fmt: skip
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5), constrained_layout=True)
    for ax, (title, unit, series, goal, goal_label) in zip(axes.flat, panels, strict=True):
        for col, label in series:
            ys = [r.get(col, math.nan) for r in ok]
            if any(y == y for y in ys):
                ax.plot(ns, ys, marker="o", label=label)
        if model_curves and title in model_curves:
            xs, ys = model_curves[title]
            ax.plot(xs, ys, ls=":", color="grey", label="cost model")
        if goal is not None:
            ax.axhline(goal, color="red", ls="--", lw=1, label=goal_label)
        for r in bad:
            ax.axvline(r["n_clients"], color="grey", ls=":", lw=1)
            ax.annotate(
                f"N={r['n_clients']:,}: {r['status']}", (r["n_clients"], 0.5), xycoords=("data", "axes fraction"),
                rotation=90, ha="right", va="center", fontsize=7, color="grey",
            )  # fmt: skip
        ax.set_xscale("log")
        ticks = sorted({*ns, *(r["n_clients"] for r in bad)})
        ax.set_xticks(ticks, [f"{t:,}" for t in ticks], fontsize=8)
        ax.minorticks_off()
        ax.set_title(title)
        ax.set_xlabel("clients N (log scale)")
        ax.set_ylabel(unit)
        ax.grid(True, which="both", alpha=0.3)
        if "log" in unit:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle(
        "raysim bench scale: FedAvg, cnn-small, a fixed cohort a round, clients_per_actor: auto; evaluation "
        "every 2nd round and the last"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_actors(rows: Sequence[dict[str, Any]], path: Path, fit: dict[str, float] | None = None) -> Path:
    """Per-actor memory and set-up time against the number of actors (clients_per_actor: 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = sorted((r for r in rows if r.get("status") == "ok"), key=lambda r: r["n_clients"])
    a = [r["n_clients"] for r in ok]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True)
    ax = axes[0]
    ax.plot(a, [r["client_rss_mb_mean"] for r in ok], marker="o", label="RSS (mean over actors)")
    ax.plot(a, [r["client_uss_mb_mean"] for r in ok], marker="s", label="USS (mean over actors)")
    ax.set_title("Memory of one client actor")
    ax.set_ylabel("MB")
    ax = axes[1]
    ax.plot(a, [r["total_rss_mb"] for r in ok], marker="o", label="sum of peak RSS, every process")
    ax.plot(a, [r["total_uss_mb"] for r in ok], marker="s", label="sum of USS, every process")
    ax.set_title("Memory of the whole run")
    ax.set_ylabel("MB")
    ax = axes[2]
    ax.plot(a, [r["setup_s"] for r in ok], marker="o", label="set-up (data, Ray, actors)")
    if fit:
        xs = [min(a or [1]), max(a or [1])]
        ax.plot(xs, [fit["intercept"] + fit["slope"] * x for x in xs], ls=":", color="grey",
                label=f"fit: {fit['intercept']:.1f} s + {fit['slope']:.2f} s x actors")  # fmt: skip
    ax.set_title("Set-up time")
    ax.set_ylabel("s")
    for ax in axes:
        ax.set_xlabel("client actors (clients_per_actor: 1)")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle("raysim bench scale: the literal actor-per-client mode")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def actor_costs(actors: Sequence[dict[str, Any]], available_mb: float) -> dict[str, Any]:
    """Per-actor figures of the actor-per-client runs (clients_per_actor: 1, N = A):

    - ``rss_mb``, ``uss_mb``: a client actor's peak RSS and USS (median over the runs' means);
    - ``start_s``: what one more actor adds to the set-up (slope of set-up seconds against A;
      ``start_intercept_s`` the rest);
    - ``uss_per_actor_mb``, ``fixed_uss_mb``: a line through the runs' total USS (memory only each
      process holds) against A, and ``max_actors``: that line solved for the memory this machine
      had available when the bench started."""
    from raysim.bench.model import FitError, _line

    ok = [r for r in actors if r.get("status") == "ok"]
    out: dict[str, Any] = {"available_mb": available_mb, "runs": [int(r["n_clients"]) for r in ok]}
    if not ok:
        return out
    out["rss_mb"] = float(sorted(r["client_rss_mb_mean"] for r in ok)[len(ok) // 2])
    out["uss_mb"] = float(sorted(r["client_uss_mb_mean"] for r in ok)[len(ok) // 2])
    try:
        out["start_intercept_s"], out["start_s"] = _line(
            [r["n_clients"] for r in ok], [r["setup_s"] for r in ok]
        )
        fixed, per_actor = _line([r["n_clients"] for r in ok], [r["total_uss_mb"] for r in ok])
    except FitError:
        return out
    out.update(fixed_uss_mb=fixed, uss_per_actor_mb=per_actor)
    if per_actor > 0 and len(ok) > 1:
        out["max_actors"] = int((available_mb - fixed) // per_actor)
    return out


def render_report(
    scale: Sequence[dict[str, Any]],
    actors: Sequence[dict[str, Any]],
    fit: dict[str, Any],
    *,
    quick: bool,
    costs: dict[str, Any] | None = None,
) -> str:
    from raysim.bench import model as M

    parts = [
        "## raysim bench scale" + (" --quick (digits)" if quick else ""),
        "",
        markdown_table(scale, SCALE_COLUMNS),
    ]
    parts += ["", "Goals (issues 13 and 21):", ""]
    parts += [f"- {g}: {m} -> {v}" for g, m, v in goals(scale)]
    if actors:
        parts += ["", "### clients_per_actor: 1 (one actor per client, N = actors)", "",
                  markdown_table(actors, ACTOR_COLUMNS)]  # fmt: skip
        a = costs or {}
        if "start_s" in a:
            parts += [
                "",
                f"- one client actor (runs with {', '.join(map(str, a['runs']))} actors): {a['rss_mb']:.0f} MB RSS, "
                f"{a['uss_mb']:.0f} MB USS; each actor adds {a['start_s']:.1f} s to the set-up "
                f"({a['start_intercept_s']:.1f} s + {a['start_s']:.1f} s x actors)",
            ]
        if "max_actors" in a:
            parts += [
                f"- this machine had {a['available_mb'] / 1024:.1f} GB available when the bench started: "
                f"{a['fixed_uss_mb']:.0f} MB + {a['uss_per_actor_mb']:.0f} MB USS per actor -> about "
                f"{a['max_actors']} actors fit"
            ]
    if fit:
        c, v = fit["coefficients"], fit["validation"]
        parts += ["", "### Cost model (raysim.bench.model; fitted on this machine)", ""]
        parts += [
            f"- cost model, client actor: {c['actor_mb']:.0f} MB RSS + {c['actor_per_hosted_mb'] * 1000:.2f} MB "
            f"per 1000 clients it holds; set-up {c['setup_s']:.1f} s + {c['setup_per_client_s'] * 1000:.2f} s per "
            f"1000 clients + {c['actor_start_s']:.1f} s "
            f"per actor per core"
        ]
        parts += [
            f"- memory per client of the federation (fitted on every size that ran): driver "
            f"{c['driver_mb']:.0f} MB + {c['driver_per_client_mb'] * 1e6:.0f} MB per 10^6 clients, object store "
            f"{c['store_mb']:.0f} MB + {c['store_per_client_mb'] * 1e6:.0f} MB per 10^6 clients, server "
            f"{c['server_mb']:.0f} MB + {c['server_per_client_mb'] * 1e6:.0f} MB per 10^6 clients"
        ]
        if all(
            math.isfinite(float(c.get(k, math.nan))) for k in ("eval_s", "eval_overhead_s", "eval_example_s")
        ):
            parts += [
                f"- evaluation, an evaluated round: {c['eval_s']:.3f} s (the server model on the test set) + "
                f"{c['eval_overhead_s']:.3f} s where personal evaluation is on + "
                f"{c['eval_example_s'] * 1e6:.2f} s per 10^6 test examples scored / P (actors evaluating at once)"
            ]
        else:
            parts += ["- evaluation: no evaluated round to fit (the forward-pass rule stands in)"]
        if v.get("held_out") is not None:
            parts += [
                f"- validation: fitted without N={v['held_out']:,}, predicted it: "
                + ", ".join(f"{k} {e['predicted']:.3g} vs {e['measured']:.3g} ({e['error']:+.0%})" for k, e in v["figures"].items())
            ]  # fmt: skip
        else:
            parts += [f"- validation: {v.get('note', 'none')}"]
        loo = fit.get("leave_one_out", [])
        if loo:
            parts += [
                "",
                "Leave-one-out (fitted without N, predicting it; error = predicted / measured - 1):",
                "",
            ]
            parts += ["| held out N | " + " | ".join(M.VALIDATED) + " |", "|---|" + "---|" * len(M.VALIDATED)]
            for x in loo:
                f = x["figures"]
                parts += [
                    f"| {x['held_out']:,} | "
                    + " | ".join(
                        f"{f[k]['predicted']:.3g} vs {f[k]['measured']:.3g} ({f[k]['error']:+.0%})"
                        if k in f
                        else "-"
                        for k in M.VALIDATED
                    )
                    + " |"
                ]
    return "\n".join(parts) + "\n"
