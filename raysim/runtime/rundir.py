"""Run directories and checkpoints on disk.

A checkpoint is a directory holding the whole FL state of one round (``state.pkl``: the
algorithm's state, every client's state, the lost clients) and the config it ran under
(``config.yaml``, for people). Any directory will do (a Tune trial passes its own); a run keeps
its periodic ones in ``RUN_DIR/checkpoints/round_NNNNN/``, the newest two.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any

from raysim.atomic import atomic_write_bytes

STATE_FILE = "state.pkl"
FORMAT = 2  # bumped when the checkpoint layout changes
KEEP = 2  # periodic checkpoints kept per run


def unique_run_dir(base: Path, name: str) -> Path:
    """``base/name``, or ``base/name-2``, ``-3``, ... when it exists: nothing is overwritten."""
    path = base / name
    i = 2
    while path.exists():
        path = base / f"{name}-{i}"
        i += 1
    return path


def write_checkpoint(directory: Path, round_idx: int, server: dict[str, Any], config_yaml: str) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blob = {"format": FORMAT, "round": round_idx, "server": server}
    atomic_write_bytes(directory / STATE_FILE, pickle.dumps(blob, protocol=pickle.HIGHEST_PROTOCOL))
    atomic_write_bytes(directory / "config.yaml", config_yaml.encode())
    return directory


def read_checkpoint(directory: Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a raysim checkpoint (no {STATE_FILE})")
    blob = pickle.loads(path.read_bytes())
    if blob.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {blob.get('format')}, this raysim reads {FORMAT}")
    return blob


def periodic_dir(run_dir: Path, round_idx: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"round_{round_idx:05d}"


def periodic_checkpoints(run_dir: Path) -> list[Path]:
    """A run's complete periodic checkpoints, oldest first."""
    base = Path(run_dir) / "checkpoints"
    if not base.is_dir():
        return []
    return sorted(p for p in base.glob("round_*") if (p / STATE_FILE).is_file())


def prune_checkpoints(run_dir: Path, keep: int = KEEP) -> None:
    for old in periodic_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
