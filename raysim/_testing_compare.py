"""The kit's comparisons (``raysim.testing``): two runs' tables and final states, to the bit, and
where they first differ.

A module of its own because the comparison rules (which columns measure the machine rather than
the learning, how tables are ordered, how a state is walked) are one concern, used by every check
and by raysim's own tests; ``raysim.testing`` re-exports ``assert_same_runs``,
``assert_same_state``, ``assert_same_tables`` and ``learning_columns``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from raysim._testing_runs import RunResult

# Columns that measure the machine, not the learning: wall-clock seconds (*_s, in tables and in
# states alike), a process's memory (*rss_mb) and the bytes actors send back, which depend on the
# packing by design (one pre-summed vector per actor and key).
NOT_LEARNING = ("transfer_bytes_up",)


def _machine(name: str) -> bool:
    return name.endswith("_s") or name.endswith("rss_mb") or name in NOT_LEARNING


TABLES = ("rounds", "clients", "clusters")
KEYS = {
    "rounds": ["round"],
    "clients": ["round", "participated", "client_id"],
    "clusters": ["round", "client_id"],
}


def learning_columns(rounds: pd.DataFrame) -> list[str]:
    return [c for c in rounds.columns if not _machine(str(c))]


def _canonical(name: str, df: pd.DataFrame, after: int) -> pd.DataFrame:
    df = df[df["round"] > after]
    keys = [k for k in KEYS[name] if k in df.columns]
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


def assert_same_tables(expected: pd.DataFrame, got: pd.DataFrame, what: str) -> None:
    """Every learning column equal to the last bit (NaN where NaN), the same columns and rows."""
    cols, got_cols = sorted(learning_columns(expected)), sorted(learning_columns(got))
    if cols != got_cols:
        raise AssertionError(
            f"{what}: the columns differ: only in the first {sorted(set(cols) - set(got_cols))}, "
            f"only in the second {sorted(set(got_cols) - set(cols))}"
        )
    if len(expected) != len(got):
        raise AssertionError(f"{what}: {len(expected)} rows vs {len(got)}")
    for c in cols:
        a, b = expected[c].to_numpy(), got[c].to_numpy()
        same = pd.isna(a) == pd.isna(b)
        both = ~pd.isna(a) & ~pd.isna(b)
        same[both] = a[both] == b[both]
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            where = {k: expected[k].iloc[i] for k in ("round", "client_id") if k in expected}
            raise AssertionError(
                f"{what}: column {c!r} differs in {int((~same).sum())} of {len(a)} rows, first at "
                f"{where or i}: {a[i]!r} vs {b[i]!r}"
            )


def assert_same_runs(expected: RunResult, got: RunResult, what: str, *, after: int = 0) -> None:
    """Two runs' rounds/clients/clusters tables (rounds after ``after``) and final states, exactly."""
    for name in TABLES:
        a, b = expected.table(name), got.table(name)
        if a is None and b is None:
            continue
        if a is None or b is None:
            raise AssertionError(f"{what}: {name}.parquet exists in one run only")
        assert_same_tables(_canonical(name, a, after), _canonical(name, b, after), f"{what}, {name}.parquet")
    assert_same_state(expected.state, got.state, what)


def _diff(a: Any, b: Any, path: str) -> str | None:
    """Where ``a`` and ``b`` first differ (None: equal to the bit)."""
    if hasattr(a, "detach") and hasattr(b, "detach"):  # torch tensors
        a, b = a.detach().cpu().numpy(), b.detach().cpu().numpy()
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return f"{path}: {type(a).__name__} vs {type(b).__name__}"
        if (a.dtype, a.shape) != (b.dtype, b.shape):
            return f"{path}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
        if a.dtype == object:
            return _diff(a.tolist(), b.tolist(), path)
        if a.tobytes() != b.tobytes():
            fa, fb = np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1)
            bytes_a, bytes_b = fa.view(np.uint8).reshape(fa.size, -1), fb.view(np.uint8).reshape(fb.size, -1)
            neq = np.flatnonzero((bytes_a != bytes_b).any(axis=1))
            return (
                f"{path}: {len(neq)} of {fa.size} values differ, first at flat index {neq[0]}: "
                f"{fa[neq[0]]!r} vs {fb[neq[0]]!r}"
            )
        return None
    if isinstance(a, np.random.Generator) and isinstance(b, np.random.Generator):
        return _diff(a.bit_generator.state, b.bit_generator.state, f"{path}.bit_generator")
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        if type(a) is not type(b):
            return f"{path}: {type(a).__name__} vs {type(b).__name__}"
        for f in dataclasses.fields(a):
            if _machine(f.name):
                continue
            d = _diff(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
            if d:
                return d
        return None
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            return f"{path}: keys differ: {sorted(map(str, set(a) ^ set(b)))}"
        for k in sorted(a, key=str):
            if isinstance(k, str) and _machine(k):
                continue
            d = _diff(a[k], b[k], f"{path}[{k!r}]")
            if d:
                return d
        return None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if type(a) is not type(b) or len(a) != len(b):
            return f"{path}: {type(a).__name__} of {len(a)} vs {type(b).__name__} of {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = _diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    if isinstance(a, float) and isinstance(b, float):
        same = (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
        return None if same else f"{path}: {a!r} vs {b!r}"
    if type(a) is not type(b) or a != b:
        return f"{path}: {a!r} vs {b!r}"
    return None


def assert_same_state(expected: Any, got: Any, what: str) -> None:
    """Two checkpointed states equal to the bit (arrays by bytes, NaN where NaN), or where they differ."""
    d = _diff(expected, got, "state")
    if d:
        raise AssertionError(f"{what}: the final checkpoint differs at {d}")


def _expect_same(expected: RunResult, got: RunResult, what: str, why: str, *, after: int = 0) -> None:
    try:
        assert_same_runs(expected, got, what, after=after)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{why}") from None
