"""`raysim privacy-eval`: gradient inversion (DLG, iDLG) against plain, DP and pFedHT-transformed
gradients, with the accuracy each defence costs. Heavy imports happen inside the command."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer


def privacy_eval(
    dataset: Annotated[str, typer.Option(help="digits or fashion-mnist.")] = "digits",
    samples: Annotated[
        int | None, typer.Option(min=1, help="Images attacked per seed (default 4; 2 with --quick).")
    ] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="Seeds (default 3; 1 with --quick).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=4, help="Images per shared gradient (1-4).")] = 1,
    out: Annotated[Path, typer.Option(help="Output folder for table.md and reconstructions.png.")] = Path(
        "results/privacy-eval"
    ),
    quick: Annotated[
        bool, typer.Option("--quick", help="Few iterations and epochs: a smoke run well under a minute.")
    ] = False,
    data_dir: Annotated[str | None, typer.Option(help="Where fashion-mnist's idx files are.")] = None,
) -> None:
    """Reconstruct training images from shared gradients with DLG and iDLG; write DIR/table.md
    (PSNR, SSIM, label recovery, test accuracy per defence) and DIR/reconstructions.png."""
    from raysim.data import dataset_available
    from raysim.privacy.evaluate import SUPPORTED_DATASETS, EvalConfig, quick_config, run_eval, write_outputs

    def fail(msg: str) -> None:
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2)

    if dataset not in SUPPORTED_DATASETS:
        fail(f"unknown dataset {dataset!r}; privacy-eval supports {', '.join(SUPPORTED_DATASETS)}")
    over: dict[str, object] = {"dataset": dataset, "batch_size": batch_size, "data_dir": data_dir}
    if samples is not None:
        over["samples"] = samples
    if seeds is not None:
        over["seeds"] = seeds
    try:
        cfg = quick_config(**over) if quick else EvalConfig(**over)  # type: ignore[arg-type]
    except ValueError as err:
        fail(str(err))
        return
    missing = dataset_available(dataset, data_dir)
    if missing is not None:
        fail(missing)
    t0 = time.perf_counter()
    results = run_eval(cfg, log=lambda line: typer.echo(line, err=True))
    write_outputs(results, out)
    typer.echo(f"wrote {out}/table.md and {out}/reconstructions.png ({time.perf_counter() - t0:.1f}s)")
