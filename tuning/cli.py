"""``raysim tune``: the sweeps command (mounted on the main CLI by ``raysim.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raysim.config import ConfigError
from tuning.interrupt import Interrupted, exit_interrupted


def tune(
    spec: Annotated[
        Path | None, typer.Argument(help="Sweep spec YAML (see configs/tune/): base:, mode:, space:.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", "-s", help="Override a value of the base experiment: --set rounds.num_rounds=5."
        ),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address, e.g. auto (default: start Ray locally).")
    ] = None,
    num_samples: Annotated[
        int | None,
        typer.Option(min=1, help="Override the spec's num_samples (optuna trials, PBT population)."),
    ] = None,
    storage_path: Annotated[
        Path | None, typer.Option(help="Where the sweep directory goes (default: the spec's storage_path).")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the stopped sweep in SWEEP_DIR (its sweep.yaml).")
    ] = None,
    validate_best: Annotated[
        Path | None,
        typer.Option(help="Rerun SWEEP_DIR/best.yaml on fresh seeds and compare with the sweep's number."),
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="How many fresh seeds --validate-best runs.")] = 3,
    resume_if_present: Annotated[
        bool,
        typer.Option(
            "--resume-if-present",
            help="With SPEC: if its sweep directory exists, continue it (interrupted) or print its "
            "result (finished) instead of refusing; otherwise start it. For jobs that may be resubmitted.",
        ),
    ] = False,
    trust_sweep_state: Annotated[
        bool,
        typer.Option(
            "--trust-sweep-state",
            help="With --resume or --resume-if-present: let Ray Tune load SWEEP_DIR's pickled state unchecked (only for a sweep "
            "you wrote yourself with another raysim or Ray version; loading a pickle runs code from it).",
        ),
    ] = False,
) -> None:
    """Sweep an experiment's knobs with Ray Tune: Optuna TPE (+ASHA), PBT with genetic lr
    mutation, or a grid over seeds. Writes SWEEP_DIR/{trials.parquet,best.yaml,summary.md,plots/}."""
    from raysim import api
    from raysim.cli import fail
    from tuning.sweep import validate_best as validate

    modes = [spec is not None, resume is not None, validate_best is not None]
    if sum(modes) != 1:
        fail("give exactly one of SPEC, --resume SWEEP_DIR or --validate-best SWEEP_DIR")
    if resume_if_present and spec is None:
        fail("--resume-if-present goes with SPEC (the sweep directory is its storage_path/name)")
    echo = typer.echo
    try:
        if validate_best is not None:
            validate(validate_best, seeds=seeds, address=address, echo=echo)
            return
        if resume is not None:
            if set_ or num_samples is not None or storage_path is not None:
                fail(
                    "--resume continues a sweep with its saved sweep.yaml; drop --set/--num-samples/--storage-path"
                )
            outcome = api.resume_sweep(resume, address=address, echo=echo, trust_state=trust_sweep_state)
        else:
            assert spec is not None
            outcome = api.sweep(  # the Python API's own path
                spec,
                set_ or [],
                address=address,
                num_samples=num_samples,
                storage_path=storage_path,
                echo=echo,
                resume_if_present=resume_if_present,
                trust_state=trust_sweep_state,
            )
    except ConfigError as err:
        fail(str(err))
        return
    except Interrupted as err:
        if resume_if_present or validate_best is not None:
            exit_interrupted(err, "run the same command again to continue it")
        exit_interrupted(err, f"continue it with `raysim tune --resume {err.where}`")
    if outcome.no_record:
        typer.echo(
            f"error: {len(outcome.no_record)} trial(s) left no record on the storage path "
            "(sweep.json: no_record); is the storage path a folder every Ray node mounts?",
            err=True,
        )
        raise typer.Exit(1)
    if outcome.errors:
        for e in outcome.errors:
            typer.echo(f"trial failed: {e}", err=True)
        if len(outcome.errors) == outcome.trials:
            typer.echo("error: every trial failed (tracebacks in each trial's error.txt)", err=True)
            raise typer.Exit(1)
