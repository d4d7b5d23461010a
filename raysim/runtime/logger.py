"""RunLogger: the files a run leaves behind (DESIGN section 5), written atomically.

The metric log lives in the run directory's Parquet files, never in checkpoints (they would grow
with every round): a resumed run reads the files back and drops rows after the checkpoint.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from raysim.atomic import atomic_write_bytes

FILES = {
    "rounds": "rounds.parquet",
    "clients": "clients.parquet",
    "system": "system.parquet",
    "clusters": "clusters.parquet",  # clustered algorithms only (no rows: no file)
}


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


class RunLogger:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.rounds: list[dict[str, Any]] = []
        self.clients: list[dict[str, Any]] = []
        self.system: list[dict[str, Any]] = []
        self.clusters: list[dict[str, Any]] = []

    def log_round(
        self,
        metrics: dict[str, float],
        client_rows: list[dict[str, Any]],
        cluster_rows: Sequence[dict[str, Any]] = (),
    ) -> None:
        self.rounds.append(dict(metrics))
        self.clients.extend(client_rows)
        self.clusters.extend(cluster_rows)

    def log_system(self, round_idx: int, rows: list[dict[str, Any]]) -> None:
        self.system.extend({"round": round_idx, **r} for r in rows)

    def flush(self) -> None:
        for attr, name in FILES.items():
            rows = getattr(self, attr)
            if rows:
                write_parquet(pd.DataFrame(rows), self.run_dir / name)

    def reload(self, upto_round: int) -> None:
        """Continue the log of an interrupted run: its rows up to ``upto_round`` (the checkpoint's)."""
        for attr, name in FILES.items():
            path = self.run_dir / name
            rows: list[dict[str, Any]] = []
            if path.is_file():
                df = pd.read_parquet(path)
                df = df[df["round"] <= upto_round]
                rows = [{k: v for k, v in r.items() if not _missing(v)} for r in df.to_dict("records")]
            setattr(self, attr, rows)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_bytes(self.run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())


def _missing(v: Any) -> bool:
    """A cell Parquet filled because the row never had that column (NaN/None of a sparse column)."""
    return v is None or (isinstance(v, float) and v != v)
