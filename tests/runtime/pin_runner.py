"""Runs pinned digits configs (``pins_digits.json``) in this process and prints their metrics as JSON.

    python -m tests.runtime.pin_runner NAME [NAME ...]        # {"state": ..., "runs": {name: {col: [...]}}}
    python -m tests.runtime.pin_runner --record NAME [...]    # rewrite those pins from this process

A separate process because reproducible mode's variables must be set before torch and numpy load:
the test that shows the pins hold when the machine's ISA changes starts this under several
environments (``test_contract.py``). Importing ``tests.conftest`` puts this process in reproducible
mode unless ``RAYSIM_TEST_ENV=as-is``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

# isort: off
from tests.conftest import tiny_config  # first: sets reproducible mode's variables before torch loads

import pandas as pd

from raysim import reproducible
from tests.helpers import experiment

# isort: on

PINS_PATH = Path(__file__).with_name("pins_digits.json")


def run_pin(name: str, pin: dict) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as d:
        over = {"algorithm__name": name, "rounds__num_rounds": 3, **pin["overrides"]}
        exp = experiment(tiny_config(Path(d), **over))
        try:
            exp.run()
        finally:
            exp.close()
        rounds = pd.read_parquet(exp.run_dir / "rounds.parquet")
    return {col: [float(v) for v in rounds[col]] for col in pin["metrics"]}


def main(argv: list[str]) -> None:
    record = "--record" in argv
    names = [a for a in argv if a != "--record"]
    pins = json.loads(PINS_PATH.read_text())
    runs = {name: run_pin(name, pins[name]) for name in names}
    if record:
        for name, metrics in runs.items():
            pins[name]["metrics"] = metrics
        PINS_PATH.write_text(json.dumps(pins, indent=1) + "\n")
    # float.hex: exact, and NaN survives (json's NaN is not standard)
    hexed = {n: {c: [v.hex() for v in vs] for c, vs in m.items()} for n, m in runs.items()}
    print(json.dumps({"state": reproducible.state(), "runs": hexed}))


if __name__ == "__main__":
    main(sys.argv[1:])
