"""What each process of a run holds: RSS, USS and PSS of the driver, the server actor, every client
actor and Ray's own processes, for the quick start (or any config), against a bare
``python -c "import torch"`` measured in the same run, and optionally against the same run from
another git ref (``--baseline main``: the before/after in one run, on the same machine and load).

    python benchmarks/memory_per_process.py                       # configs/quickstart.yaml
    python benchmarks/memory_per_process.py --baseline main       # and main's code, same config
    python benchmarks/memory_per_process.py --set data.num_clients=100

The three figures (Linux, ``/proc/PID/smaps_rollup``, every process of the run's tree sampled every
``--interval`` seconds; each figure is that process's peak over the run):

- RSS: every resident page the process maps, the pages it shares with others included (libtorch's
  code, the Ray object store's shared memory, ...): summed over processes it counts a shared page
  once per process that maps it, so the sum overstates the machine's memory;
- USS: the pages only that process maps (what ending it would free): the cost of one more actor;
- PSS: each page divided by the number of processes that map it: summed over the run, every page
  counted once, i.e. what the run costs the machine (shared pages of processes outside the run,
  e.g. another Python that has libtorch loaded, lower it a little).

The run's "total" of each figure is the sum of the per-process peaks (``raysim bench scale``'s
"total RSS" is this sum of peak RSS); "at once" is the largest simultaneous sum.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from raysim.bench.probe import classify

MB = 1024  # smaps_rollup is in kB
ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("rss", "uss", "pss")
ROLE_ORDER = ("driver", "server", "client", "raylet", "gcs", "idle-worker", "ray-other")


def rollup(pid: int) -> dict[str, float] | None:
    """RSS, USS (private clean + dirty) and PSS of a process in MB, from /proc/PID/smaps_rollup."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    kb: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            kb[key] = int(parts[0])
    if "Rss" not in kb:
        return None
    return {
        "rss": kb["Rss"] / MB,
        "uss": (kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)) / MB,
        "pss": kb.get("Pss", 0) / MB,
    }


@dataclass
class Proc:
    pid: int
    role: str
    name: str
    peak: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FIGURES, 0.0))


@dataclass
class Sampler:
    """Samples ``root``'s process tree every ``interval`` s on a thread until ``stop()``."""

    root: int
    interval: float = 0.25
    procs: dict[int, Proc] = field(default_factory=dict)
    at_once: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FIGURES, 0.0))
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        try:
            root = psutil.Process(self.root)
            tree = [root, *root.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return
        sums = dict.fromkeys(FIGURES, 0.0)
        for p in tree:
            try:
                role = "driver" if p.pid == self.root else classify(p.cmdline())
                name = p.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            mem = rollup(p.pid)
            if mem is None:
                continue
            st = self.procs.setdefault(p.pid, Proc(p.pid, role, name))
            if role in ("client", "server"):  # an idle worker that became an actor keeps that role
                st.role = role
            for k in FIGURES:
                st.peak[k] = max(st.peak[k], mem[k])
                sums[k] += mem[k]
        for k in FIGURES:
            self.at_once[k] = max(self.at_once[k], sums[k])


@dataclass
class RunMemory:
    label: str
    procs: list[Proc]
    at_once: dict[str, float]
    wall_s: float

    def total(self, fig: str) -> float:
        return sum(p.peak[fig] for p in self.procs)

    def role_rows(self) -> list[tuple[str, int, dict[str, float], dict[str, float]]]:
        """(role, count, the largest process's peaks, the role's summed peaks) in a fixed order."""
        rows = []
        for role in ROLE_ORDER:
            ps = [p for p in self.procs if p.role == role]
            if not ps:
                continue
            biggest = {k: max(p.peak[k] for p in ps) for k in FIGURES}
            summed = {k: sum(p.peak[k] for p in ps) for k in FIGURES}
            rows.append((role, len(ps), biggest, summed))
        return rows


def measure_run(label: str, tree: Path, config: Path, overrides: list[str], interval: float) -> RunMemory:
    """One ``raysim run`` of ``config`` with the code of ``tree`` (first on PYTHONPATH), in a fresh
    local Ray, its process tree sampled until it exits; its run directory is deleted afterwards."""
    out = Path(tempfile.mkdtemp(prefix="raysim-mem-"))
    cmd = [
        sys.executable,
        "-m",
        "raysim.cli",
        "run",
        str(config),
        "--set",
        f"output.dir={out}",
        "--no-progress",
    ]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    sampler = Sampler(proc.pid, interval).start()
    try:
        stdout, stderr = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate()
        raise
    finally:
        sampler.stop()
        shutil.rmtree(out, ignore_errors=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(stderr.decode(errors="replace")[-4000:])
        raise RuntimeError(f"{label}: raysim run exited with status {proc.returncode}")
    return RunMemory(label, list(sampler.procs.values()), sampler.at_once, wall)


def bare_torch() -> dict[str, float]:
    """RSS/USS/PSS of a bare ``python -c "import torch"`` once the import is done."""
    code = "import sys, torch; print('ready', flush=True); sys.stdin.read()"
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and p.stdin is not None
    if p.stdout.readline().strip() != "ready":
        raise RuntimeError("the bare torch import did not start")
    mem = rollup(p.pid)
    p.stdin.close()
    p.wait(timeout=30)
    if mem is None:
        raise RuntimeError("could not read the bare torch process's memory")
    return mem


def tree_of(ref: str, into: Path) -> Path:
    """A copy of the repository's files at git ref ``ref`` (``git archive``), for the baseline run."""
    dest = into / "baseline"
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def print_run(run: RunMemory, torch_ref: dict[str, float]) -> None:
    print(f"\n{run.label}: {run.wall_s:.1f} s wall, {len(run.procs)} processes")
    print(
        f"{'role':<12} {'n':>3} | {'RSS max':>8} {'USS max':>8} {'PSS max':>8} | {'RSS sum':>8} {'USS sum':>8} {'PSS sum':>8}"
    )
    for role, n, big, tot in run.role_rows():
        print(
            f"{role:<12} {n:>3} | {big['rss']:8.0f} {big['uss']:8.0f} {big['pss']:8.0f} | "
            f"{tot['rss']:8.0f} {tot['uss']:8.0f} {tot['pss']:8.0f}"
        )
    t = {k: run.total(k) for k in FIGURES}
    print(
        f"{'total':<12} {len(run.procs):>3} | {'':8} {'':8} {'':8} | {t['rss']:8.0f} {t['uss']:8.0f} {t['pss']:8.0f}"
    )
    a = run.at_once
    print(f"{'at once':<12} {'':>3} | {'':8} {'':8} {'':8} | {a['rss']:8.0f} {a['uss']:8.0f} {a['pss']:8.0f}")
    clients = [p for p in run.procs if p.role == "client"]
    if clients:
        c = {k: sum(p.peak[k] for p in clients) / len(clients) for k in FIGURES}
        print(
            f"per client actor (mean): RSS {c['rss']:.0f} MB, USS {c['uss']:.0f} MB, PSS {c['pss']:.0f} MB; "
            f"bare import torch: RSS {torch_ref['rss']:.0f}, USS {torch_ref['uss']:.0f}, PSS {torch_ref['pss']:.0f} "
            f"(actor/torch USS {c['uss'] / torch_ref['uss']:.2f}x)"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--baseline", metavar="GIT_REF", help="also run the same config with this ref's code")
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between samples")
    args = ap.parse_args(argv)
    config = args.config.resolve()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
    torch_ref = bare_torch()
    print(
        f"bare `python -c 'import torch'`: RSS {torch_ref['rss']:.0f} MB, USS {torch_ref['uss']:.0f} MB, "
        f"PSS {torch_ref['pss']:.0f} MB"
    )
    runs = []
    with tempfile.TemporaryDirectory(prefix="raysim-mem-ref-") as tmp:
        if args.baseline:
            base = tree_of(args.baseline, Path(tmp))
            runs.append(
                measure_run(f"baseline ({args.baseline})", base, config, args.overrides, args.interval)
            )
            print_run(runs[-1], torch_ref)
        runs.append(measure_run("this tree", ROOT, config, args.overrides, args.interval))
        print_run(runs[-1], torch_ref)
    if len(runs) == 2:
        b, n = runs
        print("\nthis tree / baseline (sums of per-process peaks):")
        for k in FIGURES:
            print(f"  {k.upper()}: {n.total(k):.0f} / {b.total(k):.0f} MB = {n.total(k) / b.total(k):.2f}x")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
