"""Run directories and checkpoints on disk.

A checkpoint is a directory holding the whole FL state of one round (the algorithm's state, every
client's state, the lost clients) and the config it ran under (``config.yaml``, for people). Any
directory will do (a Tune trial passes its own); a run keeps its periodic ones in
``RUN_DIR/checkpoints/round_NNNNN/``, the newest two.

Reading a checkpoint never runs code from it (format 3; formats 1-2 were pickles, which run
whatever a crafted file asks the moment they are loaded, so a checkpoint on a shared results volume
could run anything in whoever resumes from it). The state is two files:

* ``arrays.bin``: the raw bytes of every array in the state (numpy arrays and scalars, torch
  tensors), one after the other;
* ``state.json``: the state's tree (dicts, lists, tuples, sets, str, int, float incl. nan/inf,
  bool, None, bytes, numpy Generators and RandomStates, ``random.Random``, dataclasses of
  raysim's own modules) with a placeholder ``{"$array": i}`` where array ``i`` goes, the dtype and
  shape of every array, the size and SHA-256 of ``arrays.bin``, and the client hyperparameters
  set over the config (``hparams``: ``Experiment.set_hparams`` overrides by name; absent in
  checkpoints written before, read as none). It is written last, so a checkpoint without it is
  incomplete.

Loading builds only those types (``raysim.runtime.statecodec``, the codec); a dataclass is looked
up by name, must be a dataclass defined in a ``raysim.`` module and is filled field by field
without calling its code. Anything else in a
state is refused when the checkpoint is written (a TypeError naming where it is), so every
algorithm's checkpoint round-trips exactly (tests/runtime/test_rundir.py runs them all).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from raysim.atomic import atomic_write_bytes, atomic_write_text, atomic_writer
from raysim.config import ConfigError, LocalConfig, path_component_problem
from raysim.runtime.statecodec import decode_state, encode_state

STATE_FILE = "state.json"
ARRAYS_FILE = "arrays.bin"
LEGACY_STATE_FILE = "state.pkl"  # formats 1-2: pickles, refused
FORMAT = 3  # bumped when the checkpoint layout changes
KIND = "raysim-checkpoint"
KEEP = 2  # periodic checkpoints kept per run
_CHUNK = 1 << 24


def unique_run_dir(base: Path, name: str) -> Path:
    """``base/name``, or ``base/name-2``, ``-3``, ... when it exists: nothing is overwritten.

    ``name`` must be one path component (the config validates it; this is the second line of
    defence): the directory is always a child of ``base``."""
    problem = path_component_problem(name)
    if problem is not None:
        raise ConfigError(f"run name {name!r}: {problem}; set output.name to a plain name")
    path = base / name
    i = 2
    while path.exists():
        path = base / f"{name}-{i}"
        i += 1
    if path.resolve().parent != Path(base).resolve():
        raise ConfigError(f"run name {name!r}: {path} is not inside output.dir {str(base)!r}")
    return path


def stable_run_dir(base: Path, name: str) -> Path:
    """``base/name`` exactly, existing or not (``--resume-if-present``: a retried job finds its run
    again by name); ``name`` is checked as in :func:`unique_run_dir`."""
    problem = path_component_problem(name)
    if problem is not None:
        raise ConfigError(f"run name {name!r}: {problem}; set output.name to a plain name")
    path = Path(base) / name
    if path.resolve().parent != Path(base).resolve():
        raise ConfigError(f"run name {name!r}: {path} is not inside output.dir {str(base)!r}")
    return path


# Config keys that may differ between a run directory's config.yaml and the config a
# ``--resume-if-present`` is given, because they do not change what the run computes: where it is
# shown or found (progress, trackers, the directory itself, the cluster's address) and how hard
# the runtime tries to survive faults. The autoscaler's keys (another cluster size on a retry)
# are here by name whether or not this raysim has them. Any other difference is another
# experiment under the same name, which is refused.
HARMLESS_KEYS = frozenset(
    {
        "output.dir",
        "output.name",
        "output.progress",
        "output.trackers",
        "output.mlflow_uri",
        "output.mlflow_experiment",
        "resources.address",
        "resources.max_restarts",
        "resources.max_server_restarts",
        "resources.scale_wait_s",
        "resources.cluster_max_cpus",
        "resources.cluster_max_gpus",
        "resources.cluster_max_memory_gb",
    }
)

RunState = Literal["new", "restart", "resume", "finished"]


def _leaves(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, Mapping) and (value or not prefix):  # an empty mapping is a value of its own
        for k, v in value.items():
            _leaves(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = list(value) if isinstance(value, tuple) else value
    return out


def config_differences(
    saved: Mapping[str, Any], given: Mapping[str, Any], ignore: frozenset[str] = HARMLESS_KEYS
) -> list[str]:
    """``key: A there, B here`` for every value (dotted keys of two nested dicts: a run directory's
    config and ``given``'s ``to_dict()``, or a sweep's saved and given spec) that differs, except the
    keys in ``ignore`` (for a run: ``HARMLESS_KEYS``)."""
    a, b = _leaves("", saved, {}), _leaves("", given, {})
    out = []
    for key in sorted(set(a) | set(b)):
        if key in ignore or a.get(key, _MISSING) == b.get(key, _MISSING):
            continue
        there, here = (repr(d[key]) if key in d else "(absent)" for d in (a, b))
        out.append(f"{key}: {there} there, {here} here")
    return out


_MISSING = object()


def saved_config_differences(run_dir: Path, cfg: Any, ignore: frozenset[str] = HARMLESS_KEYS) -> list[str]:
    """``config_differences`` between the config.yaml saved in ``run_dir`` and ``cfg`` (an
    ExperimentConfig), both as config.yaml has them (``dump_config``: the algorithm's parameters
    resolved). ConfigError when the saved one does not load."""
    import yaml

    from raysim.config import dump_config, load_config

    saved, given = (yaml.safe_load(dump_config(c)) for c in (load_config(Path(run_dir) / "config.yaml"), cfg))
    return config_differences(saved, given, ignore)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """A run directory's summary.json as a dict, or None when there is none (ConfigError: damaged)."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return None
    got = read_json(path)
    if type(got) is not dict:
        raise ConfigError(f"{path}: not a summary (a JSON object); not raysim's")
    return got


def run_state(run_dir: Path) -> RunState:
    """What ``--resume-if-present`` finds in ``run_dir``: ``new`` (absent, or empty but for the
    temporary files of an interrupted atomic write), ``finished`` (its summary.json says so),
    ``resume`` (a periodic checkpoint to continue from), ``restart`` (a run that stopped before its
    first checkpoint: it starts again from round 1). Anything else is refused (ConfigError)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return "new"
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a run directory; set output.name to another name")
    if not (run_dir / "config.yaml").is_file():
        if all(p.name.startswith(".") and p.name.endswith(".tmp") for p in run_dir.iterdir()):
            return "new"
        raise ConfigError(
            f"{run_dir} exists and is not a raysim run directory (no config.yaml); "
            "--resume-if-present writes only into its own runs: set output.name to another name"
        )
    summary = read_summary(run_dir)
    if summary is not None and summary.get("finished") is True:
        return "finished"
    return "resume" if periodic_checkpoints(run_dir) else "restart"


def clear_run_files(run_dir: Path) -> None:
    """Remove what an earlier attempt of a run wrote before its first checkpoint (its config,
    tables, summary and partition), so that it starts again from round 1 in the same directory."""
    for name in ("config.yaml", "summary.json", "partition.parquet", *RUN_TABLES):
        (Path(run_dir) / name).unlink(missing_ok=True)


# --------------------------------------------------------------------------------- checkpoints


def _write_arrays(path: Path, arrays: list[np.ndarray]) -> tuple[int, str]:
    """Every array's bytes into ``path`` (atomically); returns the size and SHA-256."""
    digest, size = hashlib.sha256(), 0
    with atomic_writer(path) as fh:
        for a in arrays:
            if a.nbytes == 0:
                continue
            buf = memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))  # type: ignore[arg-type]
            for lo in range(0, len(buf), _CHUNK):
                part = buf[lo : lo + _CHUNK]
                fh.write(part)
                digest.update(part)
            size += len(buf)
    return size, digest.hexdigest()


def _index(arrays: list[np.ndarray]) -> dict[str, Any]:
    """The dtype table and one ``[dtype id, shape]`` per array (``fortran``: those stored so)."""
    dtypes: dict[np.dtype, int] = {}
    rows = []
    for a in arrays:
        rows.append([dtypes.setdefault(a.dtype, len(dtypes)), list(a.shape)])
    return {
        "dtypes": [encode_state(np.lib.format.dtype_to_descr(d))[0] for d in dtypes],
        "index": rows,
        "fortran": [
            i
            for i, a in enumerate(arrays)
            if a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous
        ],
    }


def write_checkpoint(
    directory: Path,
    round_idx: int,
    server: dict[str, Any],
    config_yaml: str,
    hparams: Mapping[str, Any] | None = None,
) -> Path:
    """``hparams``: the client hyperparameters set over the config's local.* (``Experiment.overrides``),
    stored as plain fields by name; a checkpoint without them (older ones) restores with none."""
    directory = Path(directory)
    overrides = _hparams(dict(hparams or {}), "hparams")  # refused before anything is written
    tree, arrays = encode_state(server)  # a TypeError here names what cannot be stored
    directory.mkdir(parents=True, exist_ok=True)
    (directory / STATE_FILE).unlink(missing_ok=True)  # incomplete until state.json is back
    size, sha = _write_arrays(directory / ARRAYS_FILE, arrays)
    header = {
        "format": FORMAT,
        "kind": KIND,
        "round": int(round_idx),
        "arrays": {"file": ARRAYS_FILE, "bytes": size, "sha256": sha, **_index(arrays)},
        "server": tree,
        "hparams": overrides,
    }
    atomic_write_bytes(directory / "config.yaml", config_yaml.encode())
    atomic_write_text(directory / STATE_FILE, json.dumps(header, allow_nan=False, separators=(",", ":")))
    return directory


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _header(directory: Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint's state.json, checked for kind and format (ConfigError naming the file)."""
    path = directory / STATE_FILE
    if not path.is_file():
        legacy = directory / LEGACY_STATE_FILE
        if legacy.is_file():
            raise ConfigError(
                f"{legacy}: a checkpoint of an older raysim (a pickle, format 1-2), which this raysim does "
                f"not load because loading a pickle runs code from the file; finish that run with the "
                f"raysim that wrote it, or start it again (this raysim writes format {FORMAT})"
            )
        raise ConfigError(f"{directory} is not a raysim checkpoint (no {STATE_FILE}; an incomplete one?)")
    try:
        header = json.loads(path.read_bytes(), parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: not a raysim checkpoint (not JSON: {exc}); truncated or foreign"
        ) from None
    if type(header) is not dict or header.get("kind") != KIND:
        raise ConfigError(f'{path}: not a raysim checkpoint (no "kind": "{KIND}")')
    if header.get("format") != FORMAT:
        raise ConfigError(
            f"{path}: checkpoint format {header.get('format')!r}, this raysim reads format {FORMAT}; "
            "use the raysim that wrote it"
        )
    return path, header


def check_checkpoint(directory: Path) -> int:
    """The round of the checkpoint in ``directory`` after the cheap checks (its state.json, the
    size of its arrays), so that a resume refuses a damaged one before starting anything; the
    SHA-256 and the state itself are checked when it is read."""
    directory = Path(directory)
    path, header = _header(directory)
    try:
        size, rnd = int(header["arrays"]["bytes"]), header["round"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a raysim checkpoint (missing or malformed {exc})") from None
    arrays = directory / ARRAYS_FILE
    if not arrays.is_file():
        raise ConfigError(f"{arrays}: missing (the arrays of checkpoint {path})")
    if arrays.stat().st_size != size:
        raise ConfigError(
            f"{arrays}: {arrays.stat().st_size} bytes, {path} says {size}: truncated or from another checkpoint"
        )
    return int(rnd)


def _hparams(raw: Any, where: str) -> dict[str, Any]:
    """Client hyperparameter overrides as stored: local.* names with plain values (ValueError)."""
    if type(raw) is not dict:
        raise ValueError(f"{where}: a mapping of local.* names, not {type(raw).__name__}")
    for key, value in raw.items():
        if key not in LocalConfig.model_fields:
            raise ValueError(
                f"{where}: {key!r} is not a local.* knob ({', '.join(LocalConfig.model_fields)})"
            )
        if type(value) not in (int, float, str, bool) or (type(value) is float and not math.isfinite(value)):
            raise ValueError(f"{where}.{key}: {value!r} is not a plain finite number or string")
    return dict(raw)


def read_checkpoint(directory: Path) -> dict[str, Any]:
    """``{"format", "round", "server", "hparams"}`` of the checkpoint in ``directory``
    (``hparams``: the stored overrides, {} in checkpoints written before they were). Anything that
    is not a complete checkpoint of this format is a ConfigError naming the file; nothing in it is
    run."""
    directory = Path(directory)
    path, header = _header(directory)
    try:
        meta = header["arrays"]
        size, sha = int(meta["bytes"]), str(meta["sha256"])
        index, fortran = meta["index"], set(meta["fortran"])
        dtypes = [_dtype(d) for d in meta["dtypes"]]
        round_idx, tree = header["round"], header["server"]
        if type(index) is not list or type(round_idx) is not int:
            raise TypeError("index/round")
        hparams = _hparams(header.get("hparams", {}), '"hparams"')
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a raysim checkpoint (missing or malformed {exc})") from None
    arrays = _read_arrays(directory / ARRAYS_FILE, dtypes, index, fortran, size, sha, str(path))
    try:
        server = decode_state(tree, arrays, str(path))
    except ConfigError:
        raise
    except (KeyError, TypeError, ValueError) as exc:  # a malformed tree
        raise ConfigError(f"{path}: not a raysim checkpoint state ({type(exc).__name__}: {exc})") from None
    return {"format": FORMAT, "round": round_idx, "server": server, "hparams": hparams}


def _dtype(descr: Any) -> np.dtype:
    dtype = np.lib.format.descr_to_dtype(decode_state(descr, [], "dtype"))
    if dtype.hasobject:
        raise ValueError(f"dtype {dtype} holds Python objects")
    return dtype


def _read_arrays(
    path: Path,
    dtypes: list[np.dtype],
    index: list[Any],
    fortran: set[int],
    size: int,
    sha: str,
    source: str,
) -> list[np.ndarray]:
    if not path.is_file():
        raise ConfigError(f"{path}: missing (the arrays of checkpoint {source})")
    if path.stat().st_size != size:
        raise ConfigError(
            f"{path}: {path.stat().st_size} bytes, {source} says {size}: truncated or from another checkpoint"
        )
    total = 0
    for i, row in enumerate(index):  # the sizes add up before anything is allocated
        try:
            kind, shape = row
            if (
                type(kind) is not int
                or not 0 <= kind < len(dtypes)
                or any(type(n) is not int or n < 0 for n in shape)
            ):
                raise ValueError(f"{row!r}")
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: array {i} has no valid dtype/shape ({exc})") from None
        total += math.prod(shape) * dtypes[kind].itemsize
    if total != size:
        raise ConfigError(f"{source}: its arrays add up to {total} bytes, not the {size} of {path}")
    with path.open("rb") as fh:
        if hashlib.file_digest(fh, "sha256").hexdigest() != sha:
            raise ConfigError(
                f"{path}: SHA-256 differs from {source}'s: corrupted or from another checkpoint"
            )
        fh.seek(0)
        out: list[np.ndarray] = []
        for i, row in enumerate(index):
            kind, shape = row
            a = np.empty(shape, dtype=dtypes[kind])
            view = memoryview(a.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
            if a.nbytes and fh.readinto(view) != a.nbytes:
                raise ConfigError(f"{path}: ends inside array {i}: not the arrays {source} describes")
            out.append(np.asfortranarray(a) if i in fortran else a)
        if fh.read(1):
            raise ConfigError(
                f"{path}: longer than its {len(index)} arrays: not the arrays {source} describes"
            )
    return out


# --------------------------------------------------------------------------- run directory files


def _parquet(path: Path, read: Any, required: tuple[str, ...]) -> Any:
    """``read(path)`` of a run's Parquet file, and its column names (``.columns`` of a frame,
    ``.names`` of a schema) checked for ``required``; a ConfigError naming the file when it is
    missing, damaged (truncated, not Parquet) or not raysim's."""
    try:
        got = read(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow's several error types all mean a damaged file
        raise ConfigError(
            f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc}); truncated or not raysim's"
        ) from None
    names = got.columns if hasattr(got, "columns") else got.names
    missing = [c for c in required if c not in names]
    if missing:
        raise ConfigError(f"{path}: no column {', '.join(missing)}: not a table written by raysim")
    return got


def read_table(path: Path, required: tuple[str, ...] = ("round",)) -> Any:
    """A run's Parquet file, or a ConfigError naming it (truncated, not Parquet, not raysim's)."""
    import pandas as pd

    return _parquet(path, pd.read_parquet, required)


RUN_TABLES = ("rounds.parquet", "clients.parquet", "system.parquet", "clusters.parquet")


def check_table(path: Path, required: tuple[str, ...] = ("round",)) -> None:
    """A run's Parquet file is readable and has the columns (its footer only: cheap), or a
    ConfigError naming it."""
    import pyarrow.parquet as pq

    _parquet(path, pq.read_schema, required)


def check_run_dir(run_dir: Path) -> int | None:
    """A run directory ``--resume`` can continue: its config.yaml, its tables and its newest
    checkpoint pass the cheap checks (ConfigError naming the file), before anything starts. Returns
    the newest checkpoint's round (None: no checkpoint)."""
    from raysim.config import load_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {run_dir}: no such directory")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
    load_config(run_dir / "config.yaml")
    for name in RUN_TABLES:
        if (run_dir / name).is_file():
            check_table(run_dir / name)
    ckpts = periodic_checkpoints(run_dir)
    return check_checkpoint(ckpts[-1]) if ckpts else None


def read_json(path: Path) -> Any:
    """A run's JSON file, or a ConfigError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); truncated or not raysim's") from None


def periodic_dir(run_dir: Path, round_idx: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"round_{round_idx:05d}"


def periodic_checkpoints(run_dir: Path) -> list[Path]:
    """A run's complete periodic checkpoints, oldest first (an older raysim's pickled ones too, so
    that resuming says why it refuses them)."""
    base = Path(run_dir) / "checkpoints"
    if not base.is_dir():
        return []
    return sorted(
        p for p in base.glob("round_*") if (p / STATE_FILE).is_file() or (p / LEGACY_STATE_FILE).is_file()
    )


def prune_checkpoints(run_dir: Path, keep: int = KEEP) -> None:
    for old in periodic_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)


__all__ = [
    "FORMAT",
    "STATE_FILE",
    "check_checkpoint",
    "check_run_dir",
    "check_table",
    "clear_run_files",
    "config_differences",
    "saved_config_differences",
    "decode_state",
    "encode_state",
    "periodic_checkpoints",
    "periodic_dir",
    "prune_checkpoints",
    "read_checkpoint",
    "read_json",
    "read_summary",
    "read_table",
    "run_state",
    "stable_run_dir",
    "unique_run_dir",
    "write_checkpoint",
]
