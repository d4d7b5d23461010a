"""Exact comparison of what two runs learned (rounds.parquet), and how many actors a run used."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from raysim.testing import assert_same_tables, learning_columns

__all__ = ["assert_same_learning", "client_actors", "learning_columns"]


def assert_same_learning(expected: pd.DataFrame, got: pd.DataFrame, what: str = "") -> None:
    """Every learning column of rounds.parquet equal to the last bit (NaN where NaN): the kit's own
    comparison (``raysim.testing``), machine columns (seconds, memory, transfer bytes) left out."""
    assert_same_tables(expected, got, what)


def client_actors(run_dir: Path) -> int:
    """Distinct client actors in system.parquet (the driver is actor -1)."""
    system = pd.read_parquet(Path(run_dir) / "system.parquet")
    return int(system.loc[system["actor"] >= 0, "actor"].nunique())
