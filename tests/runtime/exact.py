"""Exact comparison of what two runs learned (rounds.parquet), and how many actors a run used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

# Columns that measure the machine, not the learning: wall-clock seconds (*_s) and the bytes
# actors send back, which depend on the packing by design (one pre-summed vector per actor).
NOT_LEARNING = ("transfer_bytes_up",)


def learning_columns(rounds: pd.DataFrame) -> list[str]:
    return [c for c in rounds.columns if not c.endswith("_s") and c not in NOT_LEARNING]


def assert_same_learning(expected: pd.DataFrame, got: pd.DataFrame, what: str = "") -> None:
    """Every learning column of rounds.parquet equal to the last bit (NaN where NaN)."""
    cols = sorted(learning_columns(expected))
    assert cols == sorted(learning_columns(got)), (what, cols, sorted(learning_columns(got)))
    assert len(expected) == len(got), what
    for c in cols:
        np.testing.assert_array_equal(
            expected[c].to_numpy(), got[c].to_numpy(), err_msg=f"{what}: column {c!r} differs"
        )


def client_actors(run_dir: Path) -> int:
    """Distinct client actors in system.parquet (the driver is actor -1)."""
    system = pd.read_parquet(Path(run_dir) / "system.parquet")
    return int(system.loc[system["actor"] >= 0, "actor"].nunique())
