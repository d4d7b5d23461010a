"""RunLogger: the files a run leaves behind (DESIGN section 5), written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


class RunLogger:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.rounds: list[dict[str, Any]] = []
        self.clients: list[dict[str, Any]] = []
        self.system: list[dict[str, Any]] = []

    def log_round(self, metrics: dict[str, float], client_rows: list[dict[str, Any]]) -> None:
        self.rounds.append(dict(metrics))
        self.clients.extend(client_rows)

    def log_system(self, round_idx: int, rows: list[dict[str, Any]]) -> None:
        self.system.extend({"round": round_idx, **r} for r in rows)

    def flush(self) -> None:
        if self.rounds:
            write_parquet(pd.DataFrame(self.rounds), self.run_dir / "rounds.parquet")
        if self.clients:
            write_parquet(pd.DataFrame(self.clients), self.run_dir / "clients.parquet")
        if self.system:
            write_parquet(pd.DataFrame(self.system), self.run_dir / "system.parquet")

    def state(self) -> dict[str, list[dict[str, Any]]]:
        return {"rounds": list(self.rounds), "clients": list(self.clients), "system": list(self.system)}

    def restore(self, state: dict[str, list[dict[str, Any]]]) -> None:
        self.rounds = list(state["rounds"])
        self.clients = list(state["clients"])
        self.system = list(state["system"])

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_bytes(self.run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
