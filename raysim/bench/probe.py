"""Watch a process tree from outside: the memory of every process, by role, and Ray's object store.

``TreeProbe(pid)`` samples the process ``pid`` and all its descendants (a ``raysim run`` driver
starts Ray locally: GCS, raylet and every worker are its descendants) on a background thread:

- RSS of every process every ``interval`` seconds (``psutil.memory_info``) and USS every
  ``uss_every`` seconds (``psutil.memory_full_info``: the pages only that process maps, read from
  ``/proc/PID/smaps``, which is slower);
- its role, from the command line Ray sets (``ray::ClientActorImpl...``, ``ray::ServerActorImpl...``,
  ``ray::IDLE``, ``raylet``, ``gcs_server``, ...); the root is the driver;
- the bytes the Ray object store holds, every ``store_every`` seconds (:class:`StoreGauge`), from
  the GCS whose address the raylet's command line gives.

Sampled peaks miss spikes shorter than the interval; the runs' own ``system.parquet`` (the driver's
``ru_maxrss``) complements them.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

MB = 2**20

# role names (processes.parquet's `role` column)
DRIVER, SERVER, CLIENT, IDLE, RAYLET, GCS, RAY_OTHER = (
    "driver",
    "server",
    "client",
    "idle-worker",
    "raylet",
    "gcs",
    "ray-other",
)
ACTOR_ROLES = (SERVER, CLIENT)
_PRECEDENCE = {CLIENT: 3, SERVER: 3, IDLE: 1, RAYLET: 2, GCS: 2, RAY_OTHER: 0, DRIVER: 4}


def classify(cmdline: list[str] | tuple[str, ...]) -> str:
    """The role of a (non-root) process of a Ray run, from its command line."""
    text = " ".join(cmdline)
    head = cmdline[0] if cmdline else ""
    if head.startswith("ray::ClientActor"):
        return CLIENT
    if head.startswith("ray::ServerActor"):
        return SERVER
    if head.startswith("ray::IDLE"):
        return IDLE
    if "raylet/raylet" in text or head.endswith("raylet"):
        return RAYLET
    if "gcs_server" in text:
        return GCS
    return RAY_OTHER


def _peak(old: float, new: float) -> float:
    """The larger of a peak so far (NaN: none yet) and a new sample."""
    return new if math.isnan(old) else max(old, new)


@dataclass
class ProcStats:
    pid: int
    role: str
    name: str
    create_time: float
    first_seen: float
    peak_rss_mb: float = 0.0
    last_rss_mb: float = 0.0
    peak_uss_mb: float = float("nan")
    # PSS: shared pages split between the processes that map them, so a sum counts each page once
    peak_pss_mb: float = float("nan")
    role_since: float = float("nan")  # when it was first seen in its final role (an actor's start)

    def row(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "role": self.role,
            "name": self.name,
            "create_time": self.create_time,
            "first_seen": self.first_seen,
            "role_since": self.role_since,
            "peak_rss_mb": self.peak_rss_mb,
            "last_rss_mb": self.last_rss_mb,
            "peak_uss_mb": self.peak_uss_mb,
            "peak_pss_mb": self.peak_pss_mb,
        }


def gcs_address(procs: list[psutil.Process]) -> str | None:
    """The GCS address (ip:port) of the Ray cluster these processes belong to, from the raylet's
    ``--gcs-address=`` argument; None when no raylet is among them (yet)."""
    for p in procs:
        try:
            cmd = p.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if classify(cmd) != RAYLET:
            continue
        for arg in cmd:
            if arg.startswith("--gcs-address="):
                return arg.split("=", 1)[1]
    return None


class StoreGauge:
    """Bytes the Ray object store holds on every node of the cluster at ``address``: its
    ``object_store_memory`` resource, total minus available, as the raylets report it to the GCS
    (``ray._private.state.GlobalState``, reached with ``ray._private.internal_api.get_state_from_address``;
    ``ray memory --stats-only`` would need ``grpcio``, which Ray's wheel does not install). Imports Ray."""

    def __init__(self, address: str) -> None:
        from ray._private.internal_api import get_state_from_address

        self.address = address
        self.state = get_state_from_address(address)

    def used_bytes(self) -> int:
        total = self.state.total_resources_per_node()
        avail = self.state.available_resources_per_node()
        used = 0.0
        for node, res in total.items():
            cap = float(res.get("object_store_memory", 0.0))
            used += cap - float(avail.get(node, {}).get("object_store_memory", cap))
        return int(round(used))

    def close(self) -> None:
        self.state.disconnect()


@dataclass
class TreeProbe:
    """Samples ``root_pid``'s process tree on a thread between ``start()`` and ``stop()``."""

    root_pid: int
    interval: float = 0.25
    uss_every: float = 2.0
    store_every: float = 1.0
    object_store: bool = True
    procs: dict[int, ProcStats] = field(default_factory=dict)
    peak_total_rss_mb: float = 0.0  # the largest simultaneous sum over the tree
    store_peak_bytes: int = 0
    store_samples: int = 0
    store_error: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _watcher: subprocess.Popen[str] | None = None
    _reader: threading.Thread | None = None

    def start(self) -> TreeProbe:
        self._thread = threading.Thread(target=self._loop, name="raysim-bench-probe", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._watcher is not None:
            self._watcher.terminate()
            try:
                self._watcher.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._watcher.kill()
                self._watcher.wait()
            if self._reader is not None:
                self._reader.join(timeout=5)
            self._watcher = None

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.root_pid)
            return [root, *root.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return []

    def sample(self, with_uss: bool = False) -> list[psutil.Process]:
        """One sample of the tree (RSS; USS too when ``with_uss``); returns the processes seen."""
        now = time.time()
        tree = self._tree()
        total = 0.0
        for p in tree:
            try:
                with p.oneshot():
                    rss = p.memory_info().rss / MB
                    if p.pid == self.root_pid:
                        role = DRIVER
                    else:
                        role = classify(p.cmdline())
                    st = self.procs.get(p.pid)
                    if st is None:
                        st = self.procs[p.pid] = ProcStats(
                            pid=p.pid, role=role, name=p.name(), create_time=p.create_time(), first_seen=now
                        )
                        st.role_since = now
                    if _PRECEDENCE[role] > _PRECEDENCE[st.role]:
                        st.role, st.role_since = role, now  # an idle worker that became an actor
                full = p.memory_full_info() if with_uss else None
                uss = full.uss / MB if full is not None else None
                pss = getattr(full, "pss", math.nan) / MB if full is not None else math.nan
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            st.peak_rss_mb = max(st.peak_rss_mb, rss)
            st.last_rss_mb = rss
            if uss is not None:
                st.peak_uss_mb = _peak(st.peak_uss_mb, uss)
            if math.isfinite(pss):
                st.peak_pss_mb = _peak(st.peak_pss_mb, pss)
            total += rss
        self.peak_total_rss_mb = max(self.peak_total_rss_mb, total)
        return tree

    def _store(self, tree: list[psutil.Process]) -> None:
        """Start the object-store watcher once the run's raylet is up. It is a subprocess: Ray's
        GCS client ends the process it lives in when its cluster stays unreachable for a minute,
        which every run's cluster does once the run is over."""
        if self._watcher is not None:
            return
        addr = gcs_address(tree)
        if addr is None:
            return
        self._watcher = subprocess.Popen(
            [sys.executable, "-m", "raysim.bench.probe", addr, str(self.store_every)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read_watcher, args=(self._watcher,), daemon=True)
        self._reader.start()

    def _read_watcher(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            if line.startswith("error "):
                self.store_error = line[6:206]
                continue
            try:
                used = int(line)
            except ValueError:
                continue
            self.store_samples += 1
            self.store_peak_bytes = max(self.store_peak_bytes, used)

    def _loop(self) -> None:
        last_uss = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            with_uss = now - last_uss >= self.uss_every
            tree = self.sample(with_uss=with_uss)
            if with_uss:
                last_uss = now
            if self.object_store and tree:
                self._store(tree)
            self._stop.wait(self.interval)

    def rows(self) -> list[dict[str, Any]]:
        return [s.row() for s in sorted(self.procs.values(), key=lambda s: s.pid)]


def watch_store(address: str, every: float) -> None:
    """Print the object store's bytes in use every ``every`` seconds until the parent goes away
    (``python -m raysim.bench.probe ADDRESS EVERY``; the probe reads the lines)."""
    parent = os.getppid()
    gauge = None
    while os.getppid() == parent:
        try:
            if gauge is None:
                gauge = StoreGauge(address)
            print(gauge.used_bytes(), flush=True)
        except Exception as exc:  # starting or going away
            print(f"error {type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
        time.sleep(every)


if __name__ == "__main__":
    watch_store(sys.argv[1], float(sys.argv[2]))
