"""Regenerate the numbers docs/results.md quotes from full Fashion-MNIST runs, on this machine.

    python benchmarks/readme_numbers.py quickstart   # configs/quickstart.yaml on Ray and on the serial backend
    python benchmarks/readme_numbers.py fedavg       # configs/fedavg_fmnist.yaml (50 rounds)

Each run is exactly what a user types, ``raysim run CONFIG --no-progress`` (plus
``--set output.dir=<a temporary folder>`` and, for the serial run, ``--set resources.backend=serial``),
timed from outside the process, so Ray start-up and data loading are included. Prints one Markdown
row per run: final test accuracy, accuracy at the rounds docs/results.md names, the test loss of the first
evaluated round (how many significant digits two backends share), the run's own ``total_seconds`` and the wall clock.
Accuracies are deterministic for a given backend and seed; times depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RUNS: dict[str, list[tuple[str, str, list[str], list[int]]]] = {
    # what: (label, config, extra --set overrides, rounds whose accuracy README quotes)
    "quickstart": [
        ("quickstart, Ray", "configs/quickstart.yaml", [], [10]),
        ("quickstart, serial", "configs/quickstart.yaml", ["resources.backend=serial"], [10]),
    ],
    "fedavg": [("fedavg_fmnist, Ray", "configs/fedavg_fmnist.yaml", [], [10, 15, 50])],
}


def run(config: str, sets: list[str], out: Path) -> tuple[dict[str, Any], float]:
    cmd = [sys.executable, "-m", "raysim.cli", "run", config, "--no-progress", "--set", f"output.dir={out}"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout[proc.stdout.index("{") :]), wall


def shared_digits(a: float, b: float) -> float:
    """Significant digits two numbers share (inf when equal)."""
    return math.inf if a == b else -math.log10(abs(a - b) / abs(a))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=sorted(RUNS))
    args = ap.parse_args()
    print(
        "| run | final test accuracy | accuracy at round | first evaluated test loss | total_seconds | wall clock |"
    )
    print("|---|---|---|---|---|---|")
    losses = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, config, sets, at) in enumerate(RUNS[args.what]):
            summary, wall = run(config, sets, Path(tmp) / str(i))
            rounds = pd.read_parquet(Path(summary["run_dir"]) / "rounds.parquet").set_index("round")
            acc = ", ".join(f"{t}: {rounds.loc[t, 'test_accuracy']:.4f}" for t in at)
            evaluated = rounds["test_loss"].dropna()
            first, loss1 = int(evaluated.index[0]), float(evaluated.iloc[0])
            losses.append(loss1)
            print(
                f"| {label} | {summary['final_test_accuracy']:.4f} | {acc} | {loss1!r} (round {first}) | "
                f"{summary['total_seconds']:.1f} s | {wall:.1f} s |",
                flush=True,
            )
    if len(losses) == 2:
        print(
            f"\nfirst evaluated test loss, Ray vs serial: {shared_digits(*losses):.1f} significant digits in common"
        )


if __name__ == "__main__":
    main()
