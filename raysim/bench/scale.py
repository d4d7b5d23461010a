"""``raysim bench scale``: how raysim's cost grows with the number of clients N.

    raysim bench scale                                   # N = 100, 1,000, 10,000, 100,000 on Fashion-MNIST
    raysim bench scale --clients 100,1000,3000,10000     # other sizes
    raysim bench scale --quick                           # digits, tiny sizes: the test suite's end-to-end check
    raysim bench scale --examples-per-client 60          # the same work a round at every N, up to 100,000

The workload: FedAvg, cnn-small, Dirichlet(0.5) label skew (or, with ``--examples-per-client``, partition
``sampled``: every client draws that many examples, clients overlap), a fixed cohort (100 clients a round),
1 local epoch of batch 32 at lr 0.05, one torch thread per actor, ``clients_per_actor: auto`` (one
client actor per CPU), no personalised evaluation and no evaluation before the last round (the
runtime always evaluates the last round; ``system.parquet`` is written then). Each N runs as a fresh
``raysim run`` subprocess that starts its own local Ray, watched from outside by
:class:`raysim.bench.probe.TreeProbe`.

Per N (``scale.parquet``, one row each):

- ``time_to_first_round_s``: from the subprocess's start to the end of round 1, i.e. the run
  directory's ``partition.parquet`` (written the moment set-up ends) minus the launch time, plus
  round 1's ``round_s``; split into ``import_s`` (interpreter, imports, config), ``setup_s`` (data,
  partition, Ray, actors: ``summary.json``'s ``setup_seconds``) and ``first_round_s``;
- ``median_round_s``: median of ``round_s - evaluate_s`` over rounds 2.. (round 1 warms up, the
  last one evaluates); ``median_busy_s`` (the busiest actor's time) and ``median_overhead_s``
  (round minus busiest actor: the runtime's own cost); ``examples_per_round`` (median);
- peak RSS of every process of the run's tree, summed by role: driver, server actor, client actors
  (each, and their sum), Ray's own processes (GCS, raylet, agents, idle workers); ``total_rss_mb``
  is the sum of every process's peak; USS likewise where sampled (``processes.parquet`` has every
  process);
- ``object_store_mb``: the peak of Ray's object store in use (total minus available
  ``object_store_memory`` of the nodes, from the GCS);
- ``actors``: client actors (``summary.json``), plus one server actor.

A size that cannot run is a row too, with ``status`` (``refused``: raysim said no, with its message;
``failed``; ``timeout``; ``memory``: the bench stopped it above ``--max-memory-gb``) and ``reason``.

Then the literal actor-per-client mode (``clients_per_actor: 1``) with N = A clients for each A of
``--actor-counts`` (``actors.parquet``): per-actor RSS and USS, and the set-up time against A (its
slope is the start cost of one more actor).

``model.json`` holds the cost model fitted to both tables (:mod:`raysim.bench.model`) and its
validation (fitted without the largest N that ran, predicting it); ``scale.png`` and
``actors.png`` the figures; ``README.md`` the printed table.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raysim.bench.probe import CLIENT, DRIVER, RAYLET, SERVER, TreeProbe

DEFAULT_CLIENTS = (100, 1_000, 10_000, 100_000)
DEFAULT_ACTOR_COUNTS = (4, 8, 16)
QUICK_CLIENTS = (20, 100, 400)
QUICK_ACTOR_COUNTS = (2, 4)
COHORT = 100
QUICK_COHORT = 10

# the goals of issue 13 (checked at GOAL_N against GOAL_BASE_N)
GOAL_N, GOAL_BASE_N = 10_000, 100
GOAL_RATIO = 1.3
GOAL_FIRST_ROUND_S = 20.0

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ configs


def base_config(
    *, quick: bool, rounds: int, cohort: int | None = None, examples_per_client: int | None = None
) -> dict[str, Any]:
    """The bench's experiment (sizes and packing are set per run with --set). ``examples_per_client``:
    partition ``sampled`` (every client draws that many examples, clients overlap), so the work of a
    round stays the same at every N and N may exceed the dataset; None: Dirichlet(0.5) over the
    dataset (clients hold fewer examples as N grows)."""
    data: dict[str, Any] = {"dataset": "digits" if quick else "fashion-mnist", "num_clients": 100}
    if examples_per_client is None:
        data.update(partition="dirichlet", alpha=0.5)
    else:
        data.update(partition="sampled", examples_per_client=examples_per_client)
    return {
        "name": "bench-scale",
        "seed": 0,
        "data": data,
        "model": {"name": "cnn-small"},
        "algorithm": {"name": "fedavg"},
        "local": {"epochs": 1, "batch_size": 32, "lr": 0.05},
        "rounds": {
            "num_rounds": rounds,
            "clients_per_round": cohort or (QUICK_COHORT if quick else COHORT),
            "eval_every": 1_000_000,  # only the last round evaluates (the runtime always does)
            "personal_eval": False,
        },
        "resources": {"backend": "ray", "clients_per_actor": "auto", "torch_threads": 1},
        "output": {"dir": "runs", "progress": False},
    }


@dataclass(frozen=True)
class RunSpec:
    """One ``raysim run`` of the bench."""

    key: str  # run directory name under OUT/runs
    kind: str  # "scale" or "actors"
    n_clients: int
    overrides: tuple[str, ...]
    actors_requested: int | None = None


def scale_specs(clients: Sequence[int], cohort: int) -> list[RunSpec]:
    return [
        RunSpec(
            key=f"scale-{n}",
            kind="scale",
            n_clients=n,
            overrides=(f"data.num_clients={n}", f"rounds.clients_per_round={min(cohort, n)}"),
        )
        for n in clients
    ]


def actor_specs(counts: Sequence[int], cpus: float) -> list[RunSpec]:
    """Literal actor-per-client runs: A clients on A actors, everyone trains every round. Each
    actor asks for ``cpus / max(counts)`` CPUs (rounded down to 0.01) so that the largest count
    still fits this machine's CPUs."""
    if not counts:
        return []
    per = max(0.01, math.floor(100 * min(1.0, cpus / max(counts))) / 100)
    return [
        RunSpec(
            key=f"actors-{a}",
            kind="actors",
            n_clients=a,
            overrides=(
                f"data.num_clients={a}",
                f"rounds.clients_per_round={a}",
                "resources.clients_per_actor=1",
                f"resources.num_cpus={per}",
                "rounds.num_rounds=2",  # set-up and memory are the point: one round after the warm-up
            ),
            actors_requested=a,
        )
        for a in counts
    ]


# ------------------------------------------------------------------------------------------ one run


@dataclass
class RunResult:
    spec: RunSpec
    status: str  # ok | refused | failed | timeout | memory
    reason: str
    wall_s: float
    launch: float  # time.time() at launch
    run_dir: Path | None
    probe: TreeProbe
    stderr_tail: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    load: tuple[float, float] = (math.nan, math.nan)  # 1-minute load average at launch and at exit


def raysim_command() -> list[str]:
    """``raysim`` beside this interpreter (the venv's console script), else ``python -m raysim.cli``."""
    script = Path(sys.executable).with_name("raysim")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "raysim.cli"]


def _kill_tree(proc: subprocess.Popen[bytes], probe: TreeProbe) -> None:
    """Stop a run this bench started: SIGTERM to its process group (the driver and what Ray
    started beside it), then SIGKILL to every process of its tree the probe saw still alive."""
    import psutil

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    for pid in list(probe.procs):
        try:
            p = psutil.Process(pid)
            if p.create_time() == probe.procs[pid].create_time:  # the same process, not a reused pid
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_one(
    spec: RunSpec,
    config_path: Path,
    runs_dir: Path,
    *,
    timeout_s: float,
    max_memory_mb: float,
    log: Log = _stderr,
) -> RunResult:
    """One fresh ``raysim run`` subprocess, watched by a :class:`TreeProbe` until it exits."""
    target = runs_dir / spec.key
    if (target / "config.yaml").is_file():  # a previous bench's run: this bench owns OUT/runs
        shutil.rmtree(target)
    cmd = [
        *raysim_command(),
        "run",
        str(config_path),
        *(a for o in spec.overrides for a in ("--set", o)),
        "--set",
        f"output.dir={runs_dir}",
        "--set",
        f"output.name={spec.key}",
        "--no-progress",
    ]
    # A fresh local Ray every time: without an address ray.init() joins any cluster it finds on the
    # machine (/tmp/ray/ray_current_cluster, a running GCS), other people's included; "local" forces
    # a new one.
    env = {**os.environ, "RAY_ADDRESS": "local"}
    env.setdefault("RAY_DEDUP_LOGS", "0")
    log_path = runs_dir / f"{spec.key}.log"
    runs_dir.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    launch = time.time()
    t0 = time.perf_counter()
    with open(log_path, "wb") as err_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, env=env, start_new_session=True)
        probe = TreeProbe(proc.pid).start()
        status, reason = "ok", ""
        try:
            while proc.poll() is None:
                if time.perf_counter() - t0 > timeout_s:
                    status, reason = "timeout", f"still running after {timeout_s:.0f} s"
                    break
                if probe.peak_total_rss_mb > max_memory_mb:
                    status = "memory"
                    reason = (
                        f"its processes held {probe.peak_total_rss_mb / 1024:.1f} GB RSS together, above "
                        f"--max-memory-gb {max_memory_mb / 1024:.1f}"
                    )
                    break
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                _kill_tree(proc, probe)
            probe.stop()
        stdout = proc.stdout.read().decode(errors="replace") if proc.stdout is not None else ""
        if proc.stdout is not None:
            proc.stdout.close()
    wall = time.perf_counter() - t0
    tail = log_path.read_text(errors="replace")[-4000:]
    if status == "ok" and proc.returncode == 0 and not any(p.role == RAYLET for p in probe.procs.values()):
        status, reason = "failed", "the run joined a Ray cluster it did not start (no raylet of its own)"
    run_dir: Path | None = None
    summary: dict[str, Any] = {}
    if status == "ok":
        if proc.returncode == 0:
            try:
                summary = json.loads(stdout[stdout.index("{") :])
                run_dir = Path(summary["run_dir"])
                summary = json.loads((run_dir / "summary.json").read_text())
            except (ValueError, KeyError, FileNotFoundError) as exc:
                status, reason = "failed", f"no summary from the run ({exc})"
        else:
            status = "refused" if proc.returncode == 2 else "failed"
            reason = _error_line(tail) or f"exit status {proc.returncode}"
            if proc.returncode in (-9, 137):
                reason = f"killed by SIGKILL (out of memory?): {reason}"
    log(f"{spec.key}: {status} in {wall:.1f} s" + (f" ({reason})" if reason else ""))
    return RunResult(
        spec, status, reason, wall, launch, run_dir, probe, tail, summary, (load0, os.getloadavg()[0])
    )


def _error_line(text: str) -> str:
    """raysim's one-line error (``error: ...``), joined with its continuation lines."""
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error: "):
            rest = [ln.strip() for ln in lines[i + 1 : i + 4] if ln.startswith("  ")]
            return " ".join([lines[i].removeprefix("error: ").strip(), *rest])
    return lines[-1].strip() if lines else ""


# ---------------------------------------------------------------------------------- reading results


def _median(xs: Sequence[float]) -> float:
    v = sorted(x for x in xs if x == x)
    if not v:
        return math.nan
    m = len(v) // 2
    return v[m] if len(v) % 2 else 0.5 * (v[m - 1] + v[m])


def round_rows(res: RunResult) -> list[dict[str, Any]]:
    """One row per round of a finished run: its times and the examples its cohort trained."""
    import pandas as pd

    if res.run_dir is None:
        return []
    rounds = pd.read_parquet(res.run_dir / "rounds.parquet")
    clients = pd.read_parquet(res.run_dir / "clients.parquet")
    trained = clients[clients["participated"] & ~clients["dropped"]]
    examples = trained.groupby("round")["num_examples"].sum()
    actors = int(res.summary.get("client_actors", 0))
    out = []
    for r in rounds.to_dict("records"):
        t = int(r["round"])
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
                                    ("median_overhead_s", "overhead (round - busiest)")],
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
        "raysim bench scale: FedAvg, cnn-small, a fixed cohort a round (the examples it trains fall as 1/N), "
        "clients_per_actor: auto"
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


# ------------------------------------------------------------------------------------------ the bench


def cpu_count() -> int:
    import psutil

    return int(psutil.cpu_count(logical=True) or 1)


def run_bench(
    out: Path,
    *,
    clients: Sequence[int],
    actor_counts: Sequence[int],
    rounds: int,
    quick: bool,
    timeout_s: float = 1800.0,
    max_memory_gb: float | None = None,
    examples_per_client: int | None = None,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Run every size and actor count, write the tables, the fit and the plots into ``out``
    (``examples_per_client``: see :func:`base_config`)."""
    import psutil

    out.mkdir(parents=True, exist_ok=True)
    runs_dir = out / "runs"
    runs_dir.mkdir(exist_ok=True)
    cfg = base_config(quick=quick, rounds=rounds, examples_per_client=examples_per_client)
    config_path = out / "config.yaml"
    config_path.write_text(
        "# the bench's experiment; sizes are set per run with --set (see scale.parquet)\n"
        + yaml.safe_dump(cfg, sort_keys=False)
    )
    if max_memory_gb is None:  # leave room for the rest of this shared machine
        max_memory_mb = 0.8 * psutil.virtual_memory().available / 2**20
    else:
        max_memory_mb = max_memory_gb * 1024
    available_mb = psutil.virtual_memory().available / 2**20
    cohort = cfg["rounds"]["clients_per_round"]
    specs = scale_specs(clients, cohort) + actor_specs(actor_counts, cpu_count())
    scale_rows: list[dict[str, Any]] = []
    actor_rows: list[dict[str, Any]] = []
    rounds_rows: list[dict[str, Any]] = []
    proc_rows: list[dict[str, Any]] = []
    for i, spec in enumerate(specs, 1):
        log(f"[{i}/{len(specs)}] {spec.kind} N={spec.n_clients:,}: starting raysim run")
        res = run_one(spec, config_path, runs_dir, timeout_s=timeout_s, max_memory_mb=max_memory_mb, log=log)
        row = summarize(res, epochs=cfg["local"]["epochs"])
        row["available_mb"] = available_mb  # free memory when the bench started
        (scale_rows if spec.kind == "scale" else actor_rows).append(row)
        rounds_rows += round_rows(res) if res.status == "ok" else []
        proc_rows += process_rows(res)
        if res.status == "ok":
            log(
                f"    first round after {row['time_to_first_round_s']:.1f} s (set-up {row['setup_s']:.1f} s), "
                f"median round {row['median_round_s']:.2f} s, total peak RSS {row['total_rss_mb'] / 1024:.2f} GB, "
                f"object store {row['object_store_mb']:.0f} MB, {row['actors']} client actor(s)"
            )
    write_table(scale_rows, out / "scale.parquet")
    if actor_rows:
        write_table(actor_rows, out / "actors.parquet")
    if rounds_rows:
        write_table(rounds_rows, out / "rounds.parquet")
    write_table(proc_rows, out / "processes.parquet")
    return finish(out, scale_rows, actor_rows, rounds_rows, cfg, available_mb, quick=quick, log=log)


def finish(
    out: Path,
    scale_rows: list[dict[str, Any]],
    actor_rows: list[dict[str, Any]],
    rounds_rows: list[dict[str, Any]],
    cfg: dict[str, Any],
    available_mb: float,
    *,
    quick: bool,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Fit the cost model to the tables, validate it, and write model.json, the plots and README.md."""
    from raysim.bench import model as M

    costs = actor_costs(actor_rows, available_mb)
    fit_info: dict[str, Any] = {}
    try:
        data = M.BenchData(
            scale=scale_rows, actors=actor_rows, rounds=rounds_rows, cores=cpu_count(),
            dataset=cfg["data"]["dataset"], model=cfg["model"]["name"],
            fitted_on=f"{out}: N = {', '.join(str(r['n_clients']) for r in scale_rows if r.get('status') == 'ok')}; "
            f"actor runs {', '.join(str(r['n_clients']) for r in actor_rows if r.get('status') == 'ok') or 'none'}; "
            f"{cpu_count()} CPUs",
        )  # fmt: skip
        coef = M.fit(data)
        fit_info = {
            "coefficients": coef.to_dict(),
            "validation": M.validate(data),
            "leave_one_out": M.validate_each(data),
            "actor_costs": costs,
            "workload": M.workload_of(cfg),
        }
        (out / "model.json").write_text(json.dumps(fit_info, indent=2) + "\n")
    except M.FitError as exc:
        log(f"no cost model: {exc}")
    curves = (
        M.scale_curves(M.Coefficients.from_dict(fit_info["coefficients"]), scale_rows) if fit_info else None
    )
    plot_scale(scale_rows, out / "scale.png", curves)
    if actor_rows:
        line = (
            {"intercept": costs["start_intercept_s"], "slope": costs["start_s"]}
            if "start_s" in costs
            else None
        )
        plot_actors(actor_rows, out / "actors.png", line)
    report = render_report(scale_rows, actor_rows, fit_info, quick=quick, costs=costs)
    (out / "README.md").write_text(report)
    return {"scale": scale_rows, "actors": actor_rows, "fit": fit_info, "costs": costs, "report": report}


def refit(out: Path, *, log: Log = _stderr) -> dict[str, Any]:
    """Fit again from a finished bench's tables (``raysim bench fit OUT``)."""
    import pandas as pd

    def rows(name: str) -> list[dict[str, Any]]:
        path = out / name
        return pd.read_parquet(path).to_dict("records") if path.is_file() else []

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    quick = cfg["data"]["dataset"] == "digits"
    scale = rows("scale.parquet")
    available = float(next((r["available_mb"] for r in scale if r.get("available_mb")), math.nan))
    if not math.isfinite(available) and (out / "model.json").is_file():  # an older bench's
        available = float(
            json.loads((out / "model.json").read_text()).get("actor_costs", {}).get("available_mb", math.nan)
        )
    return finish(
        out, scale, rows("actors.parquet"), rows("rounds.parquet"), cfg, available, quick=quick, log=log
    )


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
    parts += ["", "Goals (issue 13):", ""]
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
                        for k in M.VALIDATED
                    )
                    + " |"
                ]
    return "\n".join(parts) + "\n"
