"""What produced a run: ``RUN_DIR/environment.json`` (docs/architecture.md, section 5).

A number in a run directory is only as good as what we know about the machine and code behind it:
the raysim commit (and whether the checkout had uncommitted changes), the package versions, the
CPU model and the ISA torch dispatched to, the GPUs, the Ray cluster, the command and reproducible
mode (``raysim.reproducible``). ``collect`` gathers it without importing anything heavy that the
process has not loaded already (versions come from the installed metadata); the caller passes in
what only it knows (the Ray nodes: the core never imports Ray). ``raysim report`` shows it per run
and warns when compared runs differ in what changes results (``differences``).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from raysim import reproducible
from raysim.atomic import atomic_write_bytes

__all__ = ["FILENAME", "PACKAGES", "collect", "differences", "git_state", "read", "write"]

FILENAME = "environment.json"
PACKAGES = ("raysim", "torch", "numpy", "ray", "optuna", "scipy", "scikit-learn", "pandas", "pyarrow")
# the /proc/cpuinfo flags that decide which kernels a library may pick
_ISA_PREFIXES = ("sse", "ssse3", "avx", "fma", "f16c", "amx", "bmi")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_state(where: Path | None = None) -> dict[str, Any]:
    """The commit of the checkout raysim runs from and whether its tracked files differ from it.
    ``commit`` is "unknown" (with ``why``) where git is missing or raysim is an installed copy."""
    root = where if where is not None else Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except FileNotFoundError:
        return {"commit": "unknown", "dirty": None, "why": "git is not installed"}
    except subprocess.CalledProcessError:
        return {"commit": "unknown", "dirty": None, "why": f"{root} is not a git checkout"}
    except subprocess.TimeoutExpired:
        return {"commit": "unknown", "dirty": None, "why": "git did not answer within 10 s"}
    return {"commit": commit, "dirty": dirty}


def _cpu() -> dict[str, Any]:
    model, flags = reproducible.cpu_flags()
    out: dict[str, Any] = {
        "model": model,
        "count": os.cpu_count(),
        "isa": sorted(f for f in flags if f.startswith(_ISA_PREFIXES)),
    }
    if "torch" in sys.modules:  # the ISA torch really dispatches to (not just what the CPU has)
        import torch

        out["torch_capability"] = torch.backends.cpu.get_cpu_capability()
    return out


def _gpus() -> list[dict[str, Any]]:
    if "torch" not in sys.modules:
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(
            {
                "name": p.name,
                "memory_gb": round(p.total_memory / 2**30, 1),
                "capability": f"{p.major}.{p.minor}",
            }
        )
    return out


def _cluster(backend: str, nodes: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    if nodes is None:
        return {"backend": backend, "nodes": None}
    totals: dict[str, float] = {}
    for n in nodes:
        for k, v in n.get("resources", {}).items():
            if not k.startswith("node:"):  # Ray's per-node marker resources say nothing here
                totals[k] = totals.get(k, 0.0) + float(v)
    return {
        "backend": backend,
        "nodes": len(nodes),
        "resources": {
            k: totals[k] for k in sorted(totals) if k in ("CPU", "GPU", "memory", "object_store_memory")
        },
        "per_node": [dict(n) for n in nodes],
    }


def collect(
    *,
    backend: str,
    nodes: Sequence[Mapping[str, Any]] | None = None,
    reproducible_state: Mapping[str, Any] | None = None,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """This process's provenance. ``nodes``: the Ray cluster's live nodes with their resources
    (``actors.backend.cluster_nodes``; None on the serial backend); ``reproducible_state``: what
    ``raysim.reproducible.enter`` returned for the run."""
    import raysim

    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "raysim": {"version": raysim.__version__, **git_state()},
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "platform": platform.platform(),
        "host": platform.node(),
        "cpu": _cpu(),
        "gpus": _gpus(),
        "cluster": _cluster(backend, nodes),
        "command": list(sys.argv if argv is None else argv),
        "reproducible": dict(reproducible_state) if reproducible_state is not None else reproducible.state(),
    }


def write(run_dir: Path, record: Mapping[str, Any]) -> Path:
    """``run_dir/environment.json``, atomically. A run directory that has one already (a resumed run)
    keeps the first and gets this process's record appended under ``resumed``: a run continued on
    another machine says so."""
    path = Path(run_dir) / FILENAME
    old = read(path.parent)
    out = dict(record) if old is None else {**old, "resumed": [*old.get("resumed", []), dict(record)]}
    atomic_write_bytes(path, (json.dumps(out, indent=1, sort_keys=False, default=str) + "\n").encode())
    return path


def read(run_dir: Path) -> dict[str, Any] | None:
    """A run directory's provenance; None where it has none (runs from before it was written) or it is
    not readable JSON."""
    path = Path(run_dir) / FILENAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def key_fields(env: Mapping[str, Any] | None) -> dict[str, Any]:
    """What decides a run's numbers, flat: commit (dirty marked), package versions, the ISA torch
    dispatched to, reproducible mode. The fields ``differences`` compares and the report shows."""
    if env is None:
        return {}
    rs = env.get("raysim", {})
    commit = str(rs.get("commit", "unknown"))
    if commit != "unknown":
        commit = commit[:12] + ("+dirty" if rs.get("dirty") else "")
    repro = env.get("reproducible", {})
    out: dict[str, Any] = {
        "commit": commit,
        "cpu": env.get("cpu", {}).get("model"),
        "isa": env.get("cpu", {}).get("torch_capability"),
        "reproducible": repro.get("level") if repro.get("on") else "off",
    }
    for name, v in env.get("packages", {}).items():
        out[name] = v
    return out


def differences(envs: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """For runs named by their keys: one line per key field on which they do not all agree
    (commit, package versions, ISA, reproducible mode), and one naming runs without provenance."""
    lines = []
    missing = [name for name, e in envs.items() if e is None]
    if missing:
        lines.append(f"no {FILENAME} (older runs?): {', '.join(missing)}")
    fields = {name: key_fields(e) for name, e in envs.items() if e is not None}
    if len(fields) < 2:
        return lines
    all_reproducible = all(f.get("reproducible") != "off" for f in fields.values())
    for k in dict.fromkeys(k for f in fields.values() for k in f):
        if k == "cpu" and all_reproducible:
            continue  # in reproducible mode the CPU model changes no bit; outside it, it may (cache blocking)
        values = {name: f.get(k) for name, f in fields.items()}
        if len(set(map(str, values.values()))) > 1:
            lines.append(f"{k} differs: " + ", ".join(f"{name}={v}" for name, v in values.items()))
    return lines
