"""`raysim bench ...`: performance benchmarks that write tables and plots (not tests)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: how raysim's cost grows (docs/scaling.md).")


@bench_app.callback()
def _bench() -> None:
    """Performance benchmarks (tables, plots, a fitted cost model)."""


def _ints(text: str, flag: str) -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    try:
        vals = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        typer.echo(
            f"error: {flag} {text!r}: give whole numbers separated by commas (e.g. 100,1000)", err=True
        )
        raise typer.Exit(2) from None
    if any(v < 1 for v in vals):
        typer.echo(f"error: {flag} {text!r}: every value must be at least 1", err=True)
        raise typer.Exit(2)
    return vals


@bench_app.command()
def scale(
    clients: Annotated[
        str | None, typer.Option(help="Federation sizes N, comma-separated (default 100,1000,10000,100000).")
    ] = None,
    rounds: Annotated[int, typer.Option(min=2, help="Rounds per run (round 1 warms up).")] = 5,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("results/bench-scale"),
    quick: Annotated[
        bool, typer.Option("--quick", help="Digits, N = 20,100,400, 2 and 4 actors: a minute or three.")
    ] = False,
    actor_counts: Annotated[
        str | None,
        typer.Option(help="clients_per_actor: 1 runs with this many actors (default 4,8,16; 'none' skips)."),
    ] = None,
    timeout_min: Annotated[float, typer.Option(min=0.1, help="Stop a run after this many minutes.")] = 30.0,
    max_memory_gb: Annotated[
        float | None,
        typer.Option(
            min=0.1, help="Stop a run whose processes hold more RSS together (default 80% of free memory)."
        ),
    ] = None,
    write_coefficients: Annotated[
        bool,
        typer.Option(
            "--write-coefficients",
            help="Make this run's fit the default of the estimate (raysim k8s render).",
        ),
    ] = False,
    examples_per_client: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="Partition 'sampled': every client draws this many examples (clients overlap), so a "
            "round's work is the same at every N and N may exceed the dataset (100,000 clients). "
            "Default: Dirichlet(0.5) over the dataset, clients hold fewer examples as N grows.",
        ),
    ] = None,
    personal_eval: Annotated[
        str,
        typer.Option(
            help="rounds.personal_eval of the runs: auto (the default users get: every client up to "
            "10,000, a seeded sample of 10,000 above), all, false, a count or a fraction. Rounds 2, 4, ... "
            "and the last evaluate.",
        ),
    ] = "auto",
) -> None:
    """FedAvg on Fashion-MNIST at growing N (cohort fixed at 100): time to the first round, round time,
    evaluation (server model + personal), peak RSS of every process, object store, actors; then the
    actor-per-client mode; then a fitted
    cost model. Each run is a fresh `raysim run` subprocess; progress goes to stderr."""
    from raysim.bench import scale as S

    n_list = (
        _ints(clients, "--clients")
        if clients is not None
        else list(S.QUICK_CLIENTS if quick else S.DEFAULT_CLIENTS)
    )
    a_list = (
        _ints(actor_counts, "--actor-counts")
        if actor_counts is not None
        else list(S.QUICK_ACTOR_COUNTS if quick else S.DEFAULT_ACTOR_COUNTS)
    )
    if not n_list:
        typer.echo("error: --clients: give at least one size", err=True)
        raise typer.Exit(2)
    try:
        pe = S.parse_personal_eval(personal_eval)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    t0 = time.perf_counter()
    result = S.run_bench(
        out,
        clients=n_list,
        actor_counts=a_list,
        rounds=rounds,
        quick=quick,
        timeout_s=timeout_min * 60,
        max_memory_gb=max_memory_gb,
        examples_per_client=examples_per_client,
        personal_eval=pe,
    )
    typer.echo(result["report"], nl=False)
    names = ("scale.parquet", "actors.parquet", "processes.parquet", "rounds.parquet", "model.json",
             "scale.png", "actors.png", "README.md")  # fmt: skip
    typer.echo(
        f"\nwrote {out}/: {', '.join(n for n in names if (out / n).is_file())} in {time.perf_counter() - t0:.0f} s "
        f"(load average {', '.join(f'{x:.2f}' for x in os.getloadavg())})"
    )
    if write_coefficients:
        if not result["fit"]:
            typer.echo("error: --write-coefficients: this run gave no fit", err=True)
            raise typer.Exit(1)
        from raysim.bench.coefficients import write_module

        cmd = "raysim bench " + " ".join(
            sys.argv[sys.argv.index("scale") :] if "scale" in sys.argv else ["scale"]
        )
        path = write_module(result["fit"], cmd)
        typer.echo(f"updated the default coefficients: {path}", err=True)


@bench_app.command("fit")
def fit_cmd(
    out: Annotated[Path, typer.Argument(help="A finished bench's folder.")] = Path("results/bench-scale"),
    write_coefficients: Annotated[
        bool,
        typer.Option(
            "--write-coefficients", help="Make this fit the default of the estimate (raysim k8s render)."
        ),
    ] = False,
    also: Annotated[
        list[Path] | None,
        typer.Option(
            "--also",
            help="Another finished bench folder whose rows join the fit (repeatable; the same dataset and "
            "model): one model over several workloads, e.g. the Dirichlet bench and the sampled one to 10^6.",
        ),
    ] = None,
) -> None:
    """Fit the cost model again from a bench's tables (scale.parquet, actors.parquet, rounds.parquet)
    without new runs; rewrites OUT's model.json, plots and README.md (with ``--also``, from every
    folder's rows together). Tables measured before roaming
    actors stopped holding every client (commit 487d6f5) need a ``hosted`` column of N on their
    scale rows (raysim.bench.model._hosted), or the per-client actor memory comes out A times too
    steep."""
    from raysim.bench import scale as S

    others = list(also or [])
    for d in [out, *others]:
        if not (d / "scale.parquet").is_file() or not (d / "config.yaml").is_file():
            typer.echo(f"error: {d} holds no bench results (scale.parquet, config.yaml)", err=True)
            raise typer.Exit(2)
        _check_bench_dir(d)
    try:
        result = S.refit(out, also=others)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(result["report"], nl=False)
    if write_coefficients:
        if not result["fit"]:
            typer.echo("error: --write-coefficients: no fit", err=True)
            raise typer.Exit(1)
        from raysim.bench.coefficients import write_module

        path = write_module(result["fit"], "raysim bench " + " ".join(sys.argv[sys.argv.index("fit") :]))
        typer.echo(f"updated the default coefficients: {path}", err=True)


def _check_bench_dir(out: Path) -> None:
    """The files ``fit`` reads back, each readable and a bench's (exit 2 naming the first that is not)."""
    from raysim.config import ConfigError, load_yaml_file
    from raysim.runtime.rundir import check_table, read_json

    try:
        cfg = load_yaml_file(out / "config.yaml", "bench config")
        if not isinstance(cfg.get("data"), dict) or "dataset" not in cfg["data"]:
            raise ConfigError(f"{out / 'config.yaml'}: not a bench's config (no data.dataset)")
        for name in ("scale.parquet", "actors.parquet", "rounds.parquet"):
            if (out / name).is_file():
                check_table(out / name, ())
        if (out / "model.json").is_file() and not isinstance(read_json(out / "model.json"), dict):
            raise ConfigError(f"{out / 'model.json'}: not a bench's model (not a JSON object)")
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


@bench_app.command()
def estimate(
    clients: Annotated[str, typer.Option(help="Client counts N, comma-separated.")] = "10000,100000,1000000",
    cohort: Annotated[int, typer.Option(min=1, help="Clients a round (C).")] = 100,
    epochs: Annotated[int, typer.Option(min=1, help="Local epochs (E).")] = 1,
    examples_per_client: Annotated[
        float, typer.Option(min=0.0, help="Training examples a client holds (mean).")
    ] = 50.0,
    actors: Annotated[str, typer.Option(help="Client actors A, one per N or one for all.")] = "20",
    nodes: Annotated[str, typer.Option(help="Worker nodes (pods) K, one per N or one for all.")] = "3",
    cpus_per_node: Annotated[
        float, typer.Option(min=0.1, help="CPUs of a worker node for client actors.")
    ] = 7.0,
    fit: Annotated[
        Path | None, typer.Option(help="A bench's model.json (default: raysim.bench.coefficients).")
    ] = None,
    personal_eval: Annotated[
        str,
        typer.Option(
            help="rounds.personal_eval: auto (default: every client up to 10,000, a sample of 10,000 "
            "above), all, false, a count or a fraction; the 'eval s' column is what an evaluated round adds."
        ),
    ] = "auto",
    test_per_client: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Local test examples of a scored client (default: Fashion-MNIST's 1 test example per 6 "
            "training ones, of --examples-per-client).",
        ),
    ] = None,
) -> None:
    """The cost model's figures for N clients, cohort C, A actors on K nodes (docs/scaling.md).

    Clients that roam (no client state, clients_per_actor: auto) and clients pinned to an actor
    get the same figures: either way an actor holds its own ceil(N / A) clients."""

    from raysim.bench import model as M
    from raysim.bench.scale import parse_personal_eval
    from raysim.config import personal_eval_count

    try:
        pe = parse_personal_eval(personal_eval)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    test_pc = (
        test_per_client
        if test_per_client is not None
        else examples_per_client * M.TEST_EXAMPLES["fashion-mnist"] / M.TRAIN_EXAMPLES["fashion-mnist"]
    )
    if fit is not None:
        from raysim.config import ConfigError
        from raysim.runtime.rundir import read_json

        try:
            saved = read_json(fit)
            coef = M.Coefficients.from_dict(saved["coefficients"])
        except (ConfigError, KeyError, TypeError, ValueError) as err:
            why = err if isinstance(err, ConfigError) else f"{fit}: not a bench's model.json ({err!r})"
            typer.echo(f"error: {why}", err=True)
            raise typer.Exit(2) from None
    else:
        from raysim.bench.coefficients import DEFAULT

        if not DEFAULT:
            typer.echo("error: no fitted coefficients: give --fit results/bench-scale/model.json", err=True)
            raise typer.Exit(2)
        coef = M.Coefficients.from_dict(DEFAULT)
    ns = _ints(clients, "--clients")
    a_list, k_list = _ints(actors, "--actors"), _ints(nodes, "--nodes")
    if len(a_list) not in (1, len(ns)) or len(k_list) not in (1, len(ns)):
        typer.echo("error: --actors and --nodes take one value, or one per --clients value", err=True)
        raise typer.Exit(2)
    head = (
        "| N | C | A | K | round s | eval s | scored | busy s | runtime s | first round s | MB/actor | "
        "GB/worker pod | GB head | GB in all |"
    )
    rows = [head, "|" + "---|" * 14]
    for i, n in enumerate(ns):
        a = a_list[i] if len(a_list) > 1 else a_list[0]
        k = k_list[i] if len(k_list) > 1 else k_list[0]
        w = M.Workload(
            n_clients=n,
            cohort=min(cohort, n),
            epochs=epochs,
            examples_per_client=examples_per_client,
            actors=a,
            eval_clients=personal_eval_count(pe, n),
            test_per_client=test_pc,
        )
        e = M.predict(coef, w, M.Cluster(nodes=k, cpus_per_node=cpus_per_node))
        rows.append(
            f"| {n:,} | {w.cohort:,} | {a:,} | {k:,} | {e.round_s:.2f} | {e.evaluate_s:.2f} | {w.eval_clients:,} | "
            f"{e.busy_s:.2f} | {e.overhead_s:.3f} | "
            f"{e.first_round_s:.0f} | {e.actor_mb:,.0f} | {e.worker_mb / 1024:.2f} | {e.head_mb / 1024:.2f} | "
            f"{e.total_mb / 1024:,.1f} |"
        )
    typer.echo("\n".join(rows))
    typer.echo(
        f"(coefficients fitted on {coef.cores} cores, {coef.model}/{coef.dataset}; network and GPU speed not "
        "modelled; RSS sums: an upper bound; eval s: what an evaluated round adds, "
        + M.eval_rule(coef)
        + f", {test_pc:.3g} test examples a scored client)"
    )
