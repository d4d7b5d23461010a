"""The `raysim` command line: run, validate, report (and k8s render when available).

Every user error (bad config, missing data, impossible resources) prints one message on
stderr and exits with status 2 without leaving a half-written run directory behind.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from raysim import reproducible
from raysim.config import ConfigError, check_data_available, describe_personal_eval, dump_config, load_config

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="raysim: federated-learning experiments on Ray (client actors, clustering servers, sweeps).",
)

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value: --set rounds.num_rounds=5 (repeatable)."),
]


def fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


@app.command()
def run(
    config: Annotated[Path | None, typer.Argument(help="Experiment YAML (see configs/).")] = None,
    set_: SetOpt = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: start Ray locally).")
    ] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue RUN_DIR from its newest checkpoint.")] = None,
    resume_if_present: Annotated[
        bool,
        typer.Option(
            "--resume-if-present",
            help="Run in output.dir/<output.name> exactly: continue the run there from its newest "
            "checkpoint, print its summary if it finished, start it there if absent (a retried job).",
        ),
    ] = False,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Progress bar (default: output.progress).")
    ] = None,
    report_: Annotated[
        bool, typer.Option("--report", help="Also write RUN_DIR/plots (as `raysim report`).")
    ] = False,
    reproducible_: Annotated[
        bool | None,
        typer.Option(
            "--reproducible/--no-reproducible",
            help="The same bits on any x86-64 machine with AVX2, at some speed (default: "
            "resources.reproducible). See raysim/reproducible.py.",
        ),
    ] = None,
) -> None:
    """Run one experiment and write runs/<name>/ (Parquet metrics, summary.json, config.yaml)."""
    from raysim import api  # the Python API's own path: one runner
    from raysim.runtime.server import ClientCodeError

    try:
        if resume is not None and resume_if_present:
            fail(
                "--resume RUN_DIR and --resume-if-present exclude each other: --resume continues a "
                "given directory, --resume-if-present the one CONFIG names (output.dir/output.name)"
            )
        if resume is not None:
            if config is not None or set_ or reproducible_ is not None:
                fail(
                    "--resume continues a run with its saved config.yaml; drop CONFIG, --set and "
                    "--reproducible/--no-reproducible"
                )
            _reexec_if_reproducible(_saved_reproducible(resume))
            exp = api.resume(resume, address=address, progress=progress)
        else:
            if config is None:
                fail("give a CONFIG (e.g. configs/quickstart.yaml) or --resume RUN_DIR")
                return
            extra = [] if reproducible_ is None else [f"resources.reproducible={str(reproducible_).lower()}"]
            cfg = api.load_config(config, [*(set_ or []), *extra])
            _reexec_if_reproducible(cfg.resources.reproducible)
            if resume_if_present:
                got = api.resume_if_present(cfg, address=address, progress=progress)
                if isinstance(got, api.Results):
                    typer.echo(f"raysim: {got.run_dir} finished already; its summary:", err=True)
                    _print_summary(got.summary, report_)
                    return
                exp = got
            else:
                exp = api.experiment(cfg, address=address, progress=progress)
        try:
            summary = api.run_experiment(exp).summary
        except KeyboardInterrupt:  # Ctrl-C: the run directory keeps its newest checkpoint
            _exit_interrupted_run(exp.run_dir, exp.cfg.rounds.checkpoint_every)
    except ConfigError as err:
        fail(str(err))
        return
    except ClientCodeError as err:  # a bug in client code: its traceback, exit 1 (not a user error)
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    _print_summary(summary, report_)


def _exit_interrupted_run(run_dir: Path | None, every: int) -> NoReturn:
    """``raysim run`` stopped by Ctrl-C: what is kept and how to continue, exit 130."""
    from tuning.interrupt import Interrupted, exit_interrupted

    if every:
        exit_interrupted(
            Interrupted(
                f"{run_dir} keeps its rounds up to its newest checkpoint (one every {every} round(s))"
            ),
            f"continue it with `raysim run --resume {run_dir}`",
        )
    exit_interrupted(
        Interrupted(f"{run_dir} has no checkpoint to continue from (rounds.checkpoint_every: 0)"),
        "it cannot be continued; run it again (with --set rounds.checkpoint_every=N to make it continuable)",
    )


def _print_summary(summary: dict[str, object], report_: bool) -> None:
    """A run's summary on stdout (the keys `raysim run` prints), and its plots with --report."""
    if report_:
        from raysim.report import write_report

        typer.echo(f"plots and table: {write_report([Path(str(summary['run_dir']))])}", err=True)
    typer.echo(
        json.dumps(
            {
                k: summary.get(k)  # a summary.json from before a field existed: null
                for k in (
                    "family",
                    "headline",
                    "final_test_accuracy",
                    "best_test_accuracy",
                    "final_personal_accuracy",
                    "rounds",
                    "total_seconds",
                    "peak_rss_mb",
                    "dropouts",
                    "run_dir",
                )
            },
            indent=2,
        )
    )


@app.command()
def validate(config: Path, set_: SetOpt = None) -> None:
    """Check a config (keys, types, values, data files) and print it fully resolved: every value the
    run uses, the algorithm's and model's defaults included. --set algorithm.name=X starts from X's
    defaults (the other algorithm's keys are dropped, named on stderr)."""
    try:
        cfg = load_config(config, set_ or [])
        check_data_available(cfg)
        from raysim.runtime.trackers import check_trackers

        check_trackers(cfg.output.trackers)
    except ConfigError as err:
        fail(str(err))
        return
    typer.echo(dump_config(cfg), nl=False)
    # a YAML comment: stdout stays the config
    typer.echo(f"# {describe_personal_eval(cfg.rounds.personal_eval, cfg.data.num_clients)}")


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories.")],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default RUN_DIR/plots or ./report).")
    ] = None,
) -> None:
    """Plot accuracy/loss vs round (runs overlaid) and write a Markdown summary table."""
    from raysim.report import write_report

    try:
        where = write_report(list(run_dirs), out)
    except ConfigError as err:
        fail(str(err))
        return
    typer.echo(f"wrote {where}/summary.md and plots")


def _mount_subcommands() -> None:
    from raysim.bench.cli import bench_app
    from raysim.k8s import k8s_app
    from raysim.privacy.cli import privacy_eval
    from raysim.reproduce import reproduce_app
    from tuning.cli import tune

    app.add_typer(k8s_app, name="k8s")
    app.add_typer(bench_app, name="bench")
    app.add_typer(reproduce_app, name="reproduce")
    app.command("tune")(tune)
    app.command("privacy-eval")(privacy_eval)


_mount_subcommands()


_ENTRY_POINT = False  # main() runs this process: it may start itself again (tests call `app` instead)


def _saved_reproducible(run_dir: Path) -> bool:
    """A run directory's resources.reproducible (False where it cannot tell: resume says why)."""
    import yaml

    try:
        raw = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        return bool(raw.get("resources", {}).get("reproducible", False))
    except (OSError, yaml.YAMLError, AttributeError):
        return False


def _reexec_if_reproducible(wanted: bool) -> None:
    """Reproducible mode's variables are read when torch and numpy load, and this module loaded them
    before main() ran (the subcommands import them): a run that asks for the mode from a process
    started without them starts this command again with them, before anything is computed or written."""
    if not wanted or reproducible.pinned() or not _ENTRY_POINT:
        return
    exe, argv, env = reproducible.reexec_command(sys.argv[1:])
    typer.echo("raysim: restarting in reproducible mode (its settings must precede torch's start)", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(exe, argv, env)


def main() -> None:
    global _ENTRY_POINT
    _ENTRY_POINT = True
    app(prog_name="raysim")


if __name__ == "__main__":
    main()
