"""RunLogger: the files a run leaves behind (docs/architecture.md, section 5), written atomically.

The metric log lives in the run directory's Parquet files, never in checkpoints (they would grow
with every round): a resumed run reads the files back and drops rows after the checkpoint.

clients.parquet has, per round, one row per client of the cohort (trained or dropped) and, in an
evaluated round with ``rounds.personal_eval``, one row per client of the federation. The cohort's
rows are kept as dicts (O(cohort) a round); the personal-evaluation rows as the column-wise
blocks the server made (``PersonalEval``: 24 bytes a row instead of a 384-byte dict, issue 13).
clusters.parquet's rows (one per annotated client per round, O(N) a round) are kept the same way,
as each round's columns (``ClusterRows.columns``), never as dicts.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from raysim.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from raysim.runtime.server import ClusterRows, PersonalEval
    from raysim.runtime.trackers import Tracker

FILES = {
    "rounds": "rounds.parquet",
    "clients": "clients.parquet",
    "system": "system.parquet",
    "clusters": "clusters.parquet",  # clustered algorithms only (no rows: no file)
}
PERSONAL_COLUMNS = ("client_id", "personal_accuracy", "personal_loss")  # a PersonalEval's arrays


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


class RunLogger:
    def __init__(self, run_dir: Path, trackers: Sequence[Tracker] = ()) -> None:
        """``trackers``: also get each round's row (``output.trackers``; see raysim.runtime.trackers)."""
        self.run_dir = Path(run_dir)
        self.trackers = list(trackers)
        self.rounds: list[dict[str, Any]] = []
        self.cohort: list[dict[str, Any]] = []  # clients.parquet's cohort rows, every round's
        self.system: list[dict[str, Any]] = []
        # clusters.parquet's rows: one block of columns per logged round (or per reloaded file)
        self.clusters: list[dict[str, np.ndarray]] = []
        # clients.parquet's rows in log order: per logged round, how many cohort rows (the next
        # ones of self.cohort) and its personal-evaluation block (None: none)
        self._log: list[tuple[int, PersonalEval | None]] = []
        self._dirty: set[str] = set()  # the files whose rows changed since they were written

    @property
    def personal(self) -> list[PersonalEval]:
        """The personal-evaluation blocks, one per evaluated round, in log order."""
        return [p for _, p in self._log if p is not None]

    def log_round(
        self,
        metrics: dict[str, float],
        client_rows: list[dict[str, Any]],
        cluster_rows: ClusterRows | None = None,
        personal: PersonalEval | None = None,
    ) -> None:
        self.rounds.append(dict(metrics))
        if self.trackers:
            from raysim.runtime.trackers import round_values

            values = round_values(metrics)
            for tracker in self.trackers:
                tracker.log_round(int(metrics["round"]), values)
        self.cohort.extend(client_rows)
        block = None
        if personal is not None and len(personal):
            # the driver's own copy: arrays from ray.get are read-only views of the object store,
            # which would keep every evaluated round's reply there for the rest of the run
            block = replace(
                personal,
                client_id=np.array(personal.client_id),
                personal_accuracy=np.array(personal.personal_accuracy),
                personal_loss=np.array(personal.personal_loss),
            )
        self._log.append((len(client_rows), block))
        has_clusters = cluster_rows is not None and len(cluster_rows) > 0
        if cluster_rows is not None and has_clusters:
            # the driver's own copy (read-only object-store views otherwise, as for ``personal``)
            self.clusters.append({k: np.array(v) for k, v in cluster_rows.columns().items()})
        self._dirty.update(["rounds", "clients"] + (["clusters"] if has_clusters else []))

    def log_system(self, round_idx: int, rows: list[dict[str, Any]]) -> None:
        self.system.extend({"round": round_idx, **r} for r in rows)
        self._dirty.add("system")

    def clients_frame(self) -> pd.DataFrame:
        """clients.parquet: each logged round's cohort rows, then its personal-evaluation rows.

        The very frame of one dict per row (``pd.DataFrame(rows)``: columns in order of first
        appearance, the same dtypes and cells), without a dict per personal row. pandas infers a
        column's dtype from the kinds of value in it, a row that lacks the column counting as a
        missing value; every personal row holds the same kinds (``PersonalEval.row``), so the frame
        of the cohort's rows and one personal row, the template, has the dtypes of the frame of all
        rows, whichever rows a round had. The personal rows are the template's, repeated, with
        their own round, client and figures."""
        blocks = self.personal
        if not blocks:
            return pd.DataFrame(self.cohort)
        template = blocks[0].row(0)
        anchor = len(self.cohort)  # the template's row
        columns: dict[str, None] = {}
        pieces: list[np.ndarray] = []
        start = 0
        for n, block in self._log:
            for r in self.cohort[start : start + n]:
                columns.update(dict.fromkeys(r))
            pieces.append(np.arange(start, start + n))
            start += n
            if block is not None:
                columns.update(dict.fromkeys(template))
                pieces.append(np.full(len(block), anchor))
        frame = pd.DataFrame([*self.cohort, template], columns=list(columns))
        take = np.concatenate(pieces)
        out = frame.take(take).reset_index(drop=True)
        personal = take == anchor
        out.loc[personal, "round"] = np.repeat([b.round for b in blocks], [len(b) for b in blocks])
        for c in PERSONAL_COLUMNS:
            out.loc[personal, c] = np.concatenate([getattr(b, c) for b in blocks])
        return out

    def clusters_frame(self) -> pd.DataFrame:
        """clusters.parquet: every block's columns, one after the other (the frame of one dict a
        row: the same columns in the same order, with the same dtypes)."""
        names = list(self.clusters[0])
        if all(list(b) == names for b in self.clusters):
            return pd.DataFrame({c: np.concatenate([b[c] for b in self.clusters]) for c in names})
        return pd.concat([pd.DataFrame(b) for b in self.clusters], ignore_index=True)

    def flush(self) -> None:
        """Write the files with rows logged since they were last written (each file whole)."""
        for attr, name in FILES.items():
            if attr not in self._dirty:
                continue
            if attr == "clients":
                if self._log:
                    df = self.clients_frame()
                    if len(df):
                        write_parquet(df, self.run_dir / name)
            elif attr == "clusters":
                if self.clusters:
                    write_parquet(self.clusters_frame(), self.run_dir / name)
            elif rows := getattr(self, attr):
                write_parquet(pd.DataFrame(rows), self.run_dir / name)
        self._dirty.clear()

    def reload(self, upto_round: int) -> None:
        """Continue the log of an interrupted run: its rows up to ``upto_round`` (the checkpoint's)."""
        for tracker in self.trackers:
            tracker.rewind(upto_round)
        for attr, name in FILES.items():
            path = self.run_dir / name
            df = None
            if path.is_file():
                df = pd.read_parquet(path)
                df = df[df["round"] <= upto_round].reset_index(drop=True)
            if attr == "clients":
                self._reload_clients(df, path)
            elif attr == "clusters":
                self.clusters = [] if df is None or not len(df) else [{c: df[c].to_numpy() for c in df}]
            else:
                rows = [] if df is None else _records(df)
                setattr(self, attr, rows)
        self._dirty = set(FILES)

    def _reload_clients(self, df: pd.DataFrame | None, path: Path) -> None:
        """clients.parquet's rows back into cohort dicts and personal-evaluation blocks."""
        from raysim.runtime.server import PersonalEval  # loaded already: the driver's RoundReport

        self.cohort, self._log = [], []
        if df is None or not len(df):
            return
        personal = ~df["participated"].to_numpy(dtype=bool)
        self.cohort = _records(df[~personal])
        cols = {c: df[c].to_numpy() for c in PERSONAL_COLUMNS if c in df}  # all three: personal rows
        rounds = df["round"].to_numpy()
        starts = np.flatnonzero(np.r_[True, rounds[1:] != rounds[:-1]])
        for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(df)], strict=True):
            k = int(personal[a:b].sum())
            if not personal[b - k : b].all():
                raise ValueError(f"{path}: round {rounds[a]}'s evaluation rows are not after its cohort's")
            block = None
            if k:
                block = PersonalEval(
                    round=int(rounds[a]),
                    client_id=cols["client_id"][b - k : b].astype(np.int64),
                    personal_accuracy=cols["personal_accuracy"][b - k : b].astype(np.float64),
                    personal_loss=cols["personal_loss"][b - k : b].astype(np.float64),
                )
            self._log.append((b - a - k, block))

    def close(self) -> None:
        """End the trackers' runs (the Parquet files are written by ``flush``)."""
        for tracker in self.trackers:
            tracker.close()

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_bytes(self.run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """A file's rows as dicts, without the cells Parquet filled because the row lacked the column."""
    return [{k: v for k, v in r.items() if not _missing(v)} for r in df.to_dict("records")]


def _missing(v: Any) -> bool:
    """A cell Parquet filled because the row never had that column (NaN/None of a sparse column)."""
    return v is None or (isinstance(v, float) and v != v)
