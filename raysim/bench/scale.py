"""``raysim bench scale``: how raysim's cost grows with the number of clients N.

    raysim bench scale                                   # N = 100, 1,000, 10,000, 100,000 on Fashion-MNIST
    raysim bench scale --clients 100,1000,3000,10000     # other sizes
    raysim bench scale --quick                           # digits, tiny sizes: the test suite's end-to-end check
    raysim bench scale --examples-per-client 60          # the same work a round at every N, up to 100,000

The workload: FedAvg, cnn-small, Dirichlet(0.5) label skew (or, with ``--examples-per-client``, partition
``sampled``: every client draws that many examples, clients overlap), a fixed cohort (100 clients a round),
1 local epoch of batch 32 at lr 0.05, one torch thread per actor, ``clients_per_actor: auto`` (one
client actor per CPU), evaluation every ``EVAL_EVERY`` = 2 rounds and in the last (rounds 2, 4 and 5
of five) with ``rounds.personal_eval`` as ``--personal-eval`` says (default ``auto``, what users get:
every client up to 10,000, a seeded sample of 10,000 above; ``false``: the server model only). Each N runs as a fresh
``raysim run`` subprocess that starts its own local Ray, watched from outside by
:class:`raysim.bench.probe.TreeProbe`.

Per N (``scale.parquet``, one row each):

- ``time_to_first_round_s``: from the subprocess's start to the end of round 1, i.e. the run
  directory's ``partition.parquet`` (written the moment set-up ends) minus the launch time, plus
  round 1's ``round_s``; split into ``import_s`` (interpreter, imports, config), ``setup_s`` (data,
  partition, Ray, actors: ``summary.json``'s ``setup_seconds``) and ``first_round_s``;
- ``median_round_s``: median of ``round_s - evaluate_s`` over rounds 2.. (round 1 warms up);
  ``median_evaluate_s``: median ``evaluate_s`` of the evaluated rounds from 2 (the server model on
  the test set + personal evaluation), ``personal_eval_clients`` the clients scored, and
  ``test_per_client`` their mean local test examples (``partition.parquet``); ``median_busy_s`` (the busiest actor's time) and ``median_overhead_s``
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

from raysim.bench.probe import RAYLET, TreeProbe
from raysim.bench.scale_report import (
    actor_costs,
    plot_actors,
    plot_scale,
    process_rows,
    render_report,
    round_rows,
    summarize,
    write_table,
)

DEFAULT_CLIENTS = (100, 1_000, 10_000, 100_000)
DEFAULT_ACTOR_COUNTS = (4, 8, 16)
QUICK_CLIENTS = (20, 100, 400)
QUICK_ACTOR_COUNTS = (2, 4)
COHORT = 100
QUICK_COHORT = 10
EVAL_EVERY = 2  # evaluated rounds: 2, 4, ... and the last (round 1 warms up, never evaluated)

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ configs


def base_config(
    *,
    quick: bool,
    rounds: int,
    cohort: int | None = None,
    examples_per_client: int | None = None,
    personal_eval: bool | str | int | float = "auto",
) -> dict[str, Any]:
    """The bench's experiment (sizes and packing are set per run with --set). ``examples_per_client``:
    partition ``sampled`` (every client draws that many examples, clients overlap), so the work of a
    round stays the same at every N and N may exceed the dataset; None: Dirichlet(0.5) over the
    dataset (clients hold fewer examples as N grows). ``personal_eval``: ``rounds.personal_eval``."""
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
            "eval_every": EVAL_EVERY,
            "personal_eval": personal_eval,
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


# ------------------------------------------------------------------------------------------ the bench


def parse_personal_eval(text: str) -> bool | str | int | float:
    """``--personal-eval``: all, auto, false (off), a count (an int >= 1) or a fraction in (0, 1],
    as ``rounds.personal_eval`` takes them; ValueError with the fix otherwise."""
    t = text.strip().lower()
    if t in ("all", "true"):
        return "all"
    if t == "auto":
        return "auto"
    if t in ("false", "off", "none", "no"):
        return False
    try:
        count = int(t.replace("_", ""))
    except ValueError:
        pass
    else:
        if count >= 1:
            return count
    try:
        frac = float(t)
    except ValueError:
        frac = math.nan
    if 0.0 < frac <= 1.0 and not frac.is_integer():
        return frac
    raise ValueError(
        f"--personal-eval {text!r}: give all, auto, false, a count (an int >= 1) or a fraction in (0, 1) "
        "such as 0.01"
    )


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
    personal_eval: bool | str | int | float = "auto",
    log: Log = _stderr,
) -> dict[str, Any]:
    """Run every size and actor count, write the tables, the fit and the plots into ``out``
    (``examples_per_client``, ``personal_eval``: see :func:`base_config`)."""
    import psutil

    out.mkdir(parents=True, exist_ok=True)
    runs_dir = out / "runs"
    runs_dir.mkdir(exist_ok=True)
    cfg = base_config(
        quick=quick, rounds=rounds, examples_per_client=examples_per_client, personal_eval=personal_eval
    )
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
                f"median round {row['median_round_s']:.2f} s + evaluation {row['median_evaluate_s']:.2f} s "
                f"({row['personal_eval_clients']:,.0f} clients scored), total peak RSS {row['total_rss_mb'] / 1024:.2f} GB, "
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
    source: str | None = None,
) -> dict[str, Any]:
    """Fit the cost model to the tables, validate it, and write model.json, the plots and README.md
    (``source``: where the rows came from, for ``fitted_on``; default ``out``)."""
    from raysim.bench import model as M

    costs = actor_costs(actor_rows, available_mb)
    fit_info: dict[str, Any] = {}
    try:
        data = M.BenchData(
            scale=scale_rows, actors=actor_rows, rounds=rounds_rows, cores=cpu_count(),
            dataset=cfg["data"]["dataset"], model=cfg["model"]["name"],
            fitted_on=f"{source or out}: N = {', '.join(str(r['n_clients']) for r in scale_rows if r.get('status') == 'ok')}; "
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


def refit(out: Path, *, also: Sequence[Path] = (), log: Log = _stderr) -> dict[str, Any]:
    """Fit again from a finished bench's tables (``raysim bench fit OUT``), with the rows of the
    benches in ``also`` added (``--also DIR``: one fit over several workloads, e.g. the Dirichlet
    bench to 30,000 and the sampled one to 10^6; the same dataset and model, else ValueError)."""
    import pandas as pd

    def rows(d: Path, name: str) -> list[dict[str, Any]]:
        path = d / name
        return pd.read_parquet(path).to_dict("records") if path.is_file() else []

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    quick = cfg["data"]["dataset"] == "digits"
    scale, actors, rounds = (
        rows(out, "scale.parquet"),
        rows(out, "actors.parquet"),
        rows(out, "rounds.parquet"),
    )
    for other in also:
        ocfg = yaml.safe_load((other / "config.yaml").read_text())
        for key in ("data", "model"):
            name = "dataset" if key == "data" else "name"
            if ocfg[key][name] != cfg[key][name]:
                raise ValueError(
                    f"--also {other}: its bench ran {key}.{name}={ocfg[key][name]!r}, {out}'s "
                    f"{cfg[key][name]!r}; a fit is for one dataset and model"
                )
        scale += rows(other, "scale.parquet")
        actors += rows(other, "actors.parquet")
        rounds += rows(other, "rounds.parquet")
    available = float(next((r["available_mb"] for r in scale if r.get("available_mb")), math.nan))
    if not math.isfinite(available) and (out / "model.json").is_file():  # an older bench's
        available = float(
            json.loads((out / "model.json").read_text()).get("actor_costs", {}).get("available_mb", math.nan)
        )
    source = " + ".join(str(d) for d in (out, *also))
    return finish(out, scale, actors, rounds, cfg, available, quick=quick, log=log, source=source)
