"""The `raysim` command line: run, validate, report (and k8s render when available).

Every user error (bad config, missing data, impossible resources) prints one message on
stderr and exits with status 2 without leaving a half-written run directory behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from raysim.config import ConfigError, check_data_available, dump_config, load_config

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
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Progress bar (default: output.progress).")
    ] = None,
    report_: Annotated[
        bool, typer.Option("--report", help="Also write RUN_DIR/plots (as `raysim report`).")
    ] = False,
) -> None:
    """Run one experiment and write runs/<name>/ (Parquet metrics, summary.json, config.yaml)."""
    from raysim.runtime.experiment import Experiment
    from raysim.runtime.server import ClientCodeError

    exp = None
    try:
        if resume is not None:
            if config is not None or set_:
                fail("--resume continues a run with its saved config.yaml; drop CONFIG and --set")
            exp = Experiment.resume(resume, address=address, progress=progress)
        else:
            if config is None:
                fail("give a CONFIG (e.g. configs/quickstart.yaml) or --resume RUN_DIR")
                return
            cfg = load_config(config, set_ or [])
            exp = Experiment(cfg, address=address, progress=progress)
            exp.prepare()
        summary = exp.run()
    except ConfigError as err:
        fail(str(err))
        return
    except ClientCodeError as err:  # a bug in client code: its traceback, exit 1 (not a user error)
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    finally:
        if exp is not None:
            exp.close()
    if report_:
        from raysim.report import write_report

        typer.echo(f"plots and table: {write_report([Path(summary['run_dir'])])}", err=True)
    typer.echo(
        json.dumps(
            {
                k: summary[k]
                for k in (
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
    """Check a config (keys, types, values, data files) and print it fully resolved."""
    try:
        cfg = load_config(config, set_ or [])
        check_data_available(cfg)
    except ConfigError as err:
        fail(str(err))
        return
    typer.echo(dump_config(cfg), nl=False)


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


def main() -> None:
    app(prog_name="raysim")


if __name__ == "__main__":
    main()
