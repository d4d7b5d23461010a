"""raysim against its peers on workload W1: Flower's simulation engine and pfl-research's simulated
backend, side by side, same data, same partition, same cohorts, same initial weights.

W1 (benchmarks/fedavg_w1.py): FedAvg on Fashion-MNIST, Dirichlet(0.5) over 1,000 clients, 100 a
round, 1 local epoch, batch 32, SGD lr 0.05, cnn-small (conv16-conv32-fc10); here also at 10,000
clients (still 100 a round). One invocation:

  1. creates or reuses one virtual environment per peer under benchmarks/peers/.venvs/<peer>
     (pinned versions, CPU torch 2.13.0 from this machine's wheel cache);
  2. writes, per client count, the shared .npz with raysim's own partition
     (``build_federation(load_dataset("fashion-mnist"), scheme="dirichlet", num_clients=N, seed=0,
     alpha=0.5)``: every client's train indices), raysim's cohort of every round (what its FedAvg
     server draws: ``sample_cohort(range(N), 100, round_rng(0, t, SALT_CONFIGURE))``), raysim's
     initial ``cnn-small`` parameters (``init_params``) and the normalisation;
  3. runs raysim (``raysim_w1.py``, this venv) and each peer configuration (``pfl_w1.py``,
     ``flower_w1.py``, in the peer's venv), each in its own process(es), one after the other;
  4. prints each system's median seconds per round (round 1 is warm-up, not counted; evaluation is
     never inside a timed round), the final test accuracy, raysim's speed-up over each peer
     (peer median / raysim median), and whether the issue's targets are met: raysim >= 1.5x
     pfl-research and >= 25x Flower on W1. Also writes benchmarks/peers/results.json.

Each system is given its best configuration on this 2-core machine, one torch thread per worker:
  * raysim: Ray backend, client actors packed automatically (one per core), as fedavg_w1.py;
  * pfl-research: SimulatedBackend, tried as one process and as one worker process per core
    (pfl's native torch.distributed multi-worker mode); the faster counts;
  * Flower: run_simulation (Ray backend) with the Message API (ServerApp + FedAvg strategy,
    ClientApp), tried with client_resources num_cpus=1 (two ClientApps at a time) and num_cpus=2
    (one at a time); the faster counts.

    .venv/bin/python benchmarks/peers/run.py [--rounds 6] [--clients 1000,10000]
                                             [--peers pfl,flower] [--skip-install]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VENVS = HERE / ".venvs"
OUT = HERE / "out"
DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
PER_ROUND, EPOCHS, BATCH, LR, ALPHA, SEED = 100, 1, 32, 0.05, 0.5, 0

# torch 2.13.0 is the CPU build in this machine's wheel cache (pip takes it without a download);
# the 2.14.1 there is a 5.5 GB CUDA build. Versions pinned so a rerun measures the same code.
TORCH_PIN = "torch==2.13.0"
PEERS = {
    "pfl": {
        "label": "pfl-research",
        "requirements": ["pfl[pytorch]==0.6.0", TORCH_PIN],
        "check": ["pfl", "torch"],
        "script": "pfl_w1.py",
        # (variant id, argv extras, worker processes)
        "variants": [("1proc", 1), ("2proc", 2)],
    },
    "flower": {
        "label": "Flower",
        # flwr 1.42.0 needs certifi>=2026.10.19, which the package index here does not have yet:
        # 1.41.0 is the newest that installs. flwr[simulation] pins ray (2.55.1 here).
        "requirements": ["flwr[simulation]==1.41.0", TORCH_PIN],
        "check": ["flwr", "ray", "torch"],
        "script": "flower_w1.py",
        "variants": [("cpus1", 1), ("cpus2", 2)],
    },
}
TARGETS = {"pfl": 1.5, "flower": 25.0}


def log(msg: str = "") -> None:
    print(msg, flush=True)


def loadavg(when: str) -> str:
    a, b, c = os.getloadavg()
    line = f"load average {when}: {a:.2f} {b:.2f} {c:.2f} (1/5/15 min; {os.cpu_count()} cores)"
    log(line)
    return line


# ------------------------------------------------------------------------------------ venvs


def base_python() -> str:
    """A plain CPython 3.11 to build the peer venvs from (not this venv's interpreter)."""
    for cand in ("/root/.pyenv/versions/3.11.7/bin/python3", shutil.which("python3.11") or ""):
        if cand and Path(cand).exists():
            return cand
    return getattr(sys, "_base_executable", sys.executable)


def venv_python(peer: str) -> Path:
    return VENVS / peer / "bin" / "python"


def installed_versions(peer: str) -> dict[str, str] | None:
    py = venv_python(peer)
    if not py.exists():
        return None
    code = (
        "import json, importlib.metadata as m; "
        f"print(json.dumps({{n: m.version(n) for n in {PEERS[peer]['check']!r}}}))"
    )
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else None


def venv_valid(peer: str) -> bool:
    got = installed_versions(peer)
    if not got:
        return False
    for req in PEERS[peer]["requirements"]:
        name, want = req.split("==")
        name = name.split("[")[0]
        if name in got and not got[name].startswith(want):  # torch reports 2.13.0+cpu
            return False
    return True


def ensure_venv(peer: str, skip_install: bool) -> None:
    if venv_valid(peer):
        log(f"  {peer}: reusing {VENVS / peer}")
        return
    if skip_install:
        raise SystemExit(f"--skip-install, but {VENVS / peer} is missing or invalid")
    t0 = time.perf_counter()
    if (VENVS / peer).exists():
        shutil.rmtree(VENVS / peer)
    VENVS.mkdir(parents=True, exist_ok=True)
    subprocess.run([base_python(), "-m", "venv", str(VENVS / peer)], check=True)
    pip = [str(venv_python(peer)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    log(f"  {peer}: pip install {' '.join(PEERS[peer]['requirements'])}")
    r = subprocess.run([*pip, *PEERS[peer]["requirements"]], capture_output=True, text=True)
    if r.returncode != 0 or not venv_valid(peer):
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])
        raise SystemExit(f"installing {peer} failed")
    log(f"  {peer}: installed in {time.perf_counter() - t0:.0f} s")


# ------------------------------------------------------------------------------- shared data


def raysim_cohort(t: int, n: int) -> list[int]:
    """The cohort raysim's FedAvg server draws in round ``t`` (raysim/runtime/server.py)."""
    from raysim.algorithms.base import sample_cohort
    from raysim.runtime import server

    if len(inspect.signature(server.round_rng).parameters) >= 3:
        rng = server.round_rng(SEED, t, server.SALT_CONFIGURE)
    else:  # older raysim: one stream per round
        rng = server.round_rng(SEED, t)
    return sample_cohort(range(n), PER_ROUND, rng)


def write_shared(n: int, rounds: int) -> Path:
    """The .npz every system reads: raysim's partition, cohorts and initial weights."""
    import numpy as np

    from raysim.data import build_federation, load_dataset
    from raysim.models.flat import init_params

    path = OUT / f"shared_N{n}_R{rounds}.npz"  # rewritten every time: raysim's code decides it
    ds = load_dataset("fashion-mnist")
    fed = build_federation(ds, scheme="dirichlet", num_clients=n, seed=SEED, alpha=ALPHA)
    idx = [np.asarray(c.train_idx, dtype=np.int64) for c in fed.clients]
    offsets = np.concatenate([[0], np.cumsum([len(i) for i in idx])]).astype(np.int64)
    cohorts = np.array([raysim_cohort(t, n) for t in range(1, rounds + 1)], dtype=np.int64)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        num_clients=n,
        train_idx=np.concatenate(idx),
        train_offsets=offsets,
        cohorts=cohorts,
        init_params=init_params("cnn-small", tuple(ds.input_shape), ds.num_classes, SEED),
        mean=ds.mean[0],
        std=ds.std[0],
        epochs=EPOCHS,
        batch_size=BATCH,
        lr=LR,
        data_dir=str(DATA_DIR),
    )
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------ runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_procs(cmds: list[tuple[list[str], dict[str, str]]], logfile: Path, timeout: float) -> dict:
    """Start the processes (one, or one per worker), wait, return the first W1RESULT line."""
    from benchmarks.peers.common import RESULT_TAG

    logfile.parent.mkdir(parents=True, exist_ok=True)
    procs, files = [], []
    for i, (cmd, extra_env) in enumerate(cmds):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        # Ray: always a fresh local instance, never a cluster another job on this machine started
        env["RAY_ADDRESS"] = "local"
        env.pop("VIRTUAL_ENV", None)
        env.update(extra_env)
        f = open(logfile.with_suffix(f".{i}.log") if len(cmds) > 1 else logfile, "w")
        files.append(f)
        procs.append(
            subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT), start_new_session=True
            )
        )
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    q.kill()
            codes.append("timeout")
    for p in procs:  # whatever the run left behind in its own process group (pfl's sampler, Ray)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for f in files:
        f.close()
    for f in files:
        for line in Path(f.name).read_text(errors="replace").splitlines():
            if line.startswith(RESULT_TAG):
                return json.loads(line[len(RESULT_TAG) :])
    tail = Path(files[0].name).read_text(errors="replace")[-3000:]
    return {"error": f"exit {codes}; no result line; log {files[0].name}; tail:\n{tail}"}


def summarise(res: dict) -> dict:
    times = res.get("round_seconds") or []
    counted = times[1:]
    res["median_s"] = statistics.median(counted) if counted else None
    return res


def run_raysim(shared: Path, rounds: int, n: int, timeout: float) -> dict:
    cmd = [sys.executable, str(HERE / "raysim_w1.py"), "--shared", str(shared), "--rounds", str(rounds)]
    return summarise(run_procs([(cmd, {})], OUT / "logs" / f"raysim_N{n}.log", timeout))


def run_peer(
    peer: str, variant: str, workers: int, shared: Path, rounds: int, n: int, timeout: float
) -> dict:
    py = str(venv_python(peer))
    script = str(HERE / PEERS[peer]["script"])
    base = [py, script, "--shared", str(shared), "--rounds", str(rounds)]
    logf = OUT / "logs" / f"{peer}_{variant}_N{n}.log"
    if peer == "pfl" and workers > 1:
        addrs = ",".join(f"localhost:{free_port()}" for _ in range(workers))
        cmds = [(base, {"PFL_WORKER_ADDRESSES": addrs, "PFL_WORKER_RANK": str(r)}) for r in range(workers)]
    elif peer == "flower":
        cmds = [([*base, "--client-cpus", str(workers)], {})]
    else:
        cmds = [(base, {})]
    return summarise(run_procs(cmds, logf, timeout))


# ---------------------------------------------------------------------------------- report


def fmt(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6, help="rounds per run; the first is warm-up (default 6)")
    ap.add_argument("--clients", default="1000,10000", help="client counts, comma-separated")
    ap.add_argument("--peers", default="pfl,flower", help="subset of: pfl, flower (raysim always runs)")
    ap.add_argument("--skip-install", action="store_true", help="use the peer venvs as they are")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per system run")
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error("--rounds must be >= 2 (the first round is warm-up)")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        ap.error(f"unknown peers {unknown}; known: {sorted(PEERS)}")
    clients = [int(c) for c in args.clients.split(",")]
    sys.path.insert(0, str(ROOT))

    t_start = time.perf_counter()
    load_before = loadavg("before")
    log("peer environments:")
    t0 = time.perf_counter()
    for p in peers:
        ensure_venv(p, args.skip_install)
    install_s = time.perf_counter() - t0
    vers = {p: installed_versions(p) for p in peers}
    for p in peers:
        log(f"  {PEERS[p]['label']}: {vers[p]}")

    results: dict[str, dict] = {}
    for n in clients:
        shared = write_shared(n, args.rounds)
        log(f"\n=== N = {n} clients, {PER_ROUND} a round, {args.rounds} rounds (round 1 warm-up) ===")
        runs = {"raysim": run_raysim(shared, args.rounds, n, args.timeout)}
        log(f"  raysim done: median {fmt(runs['raysim'].get('median_s'))} s/round")
        for p in peers:
            for variant, workers in PEERS[p]["variants"]:
                r = run_peer(p, variant, workers, shared, args.rounds, n, args.timeout)
                runs[f"{p}:{variant}"] = r
                log(f"  {PEERS[p]['label']} [{variant}] done: median {fmt(r.get('median_s'))} s/round")
        results[str(n)] = {"runs": runs}

    load_after = loadavg("after")
    report(results, peers, vers, args, load_before, load_after, install_s, time.perf_counter() - t_start)
    return 0


def report(results, peers, vers, args, load_before, load_after, install_s, total_s) -> None:
    out = {"args": vars(args), "versions": vers, "load": [load_before, load_after], "by_clients": {}}
    log("\n" + "=" * 100)
    log(
        "W1: FedAvg, Fashion-MNIST, Dirichlet(0.5), 100 clients a round, 1 epoch, batch 32, SGD 0.05, cnn-small"
    )
    log(f"same partition, cohorts and initial weights for every system; median of rounds 2..{args.rounds}")
    for n, block in results.items():
        runs = block["runs"]
        ray = runs["raysim"]
        log(f"\n--- N = {n} clients ---")
        log(
            f"{'system':<14}{'configuration':<52}{'median s/round':>15}{'test acc':>10}{'raysim speed-up':>17}"
        )
        rows = []
        for key, r in runs.items():
            sysname = "raysim" if key == "raysim" else PEERS[key.split(":")[0]]["label"]
            if "error" in r:
                log(f"{sysname:<14}{key:<52}  FAILED: {r['error'].splitlines()[0]}")
                rows.append({"key": key, "error": r["error"]})
                continue
            speed = None if key == "raysim" or not ray.get("median_s") else r["median_s"] / ray["median_s"]
            log(
                f"{sysname:<14}{r['variant'][:51]:<52}{fmt(r['median_s']):>15}{fmt(r['test_accuracy']):>10}"
                f"{'' if speed is None else f'{speed:.2f}x':>17}"
            )
            rows.append({"key": key, **r, "speedup": speed})
        mism = ray.get("cohort_mismatch_rounds")
        if mism:
            log(f"WARNING: raysim trained other cohorts than the shared file in rounds {mism}")
        verdicts = {}
        for p in peers:
            cands = [(k, r) for k, r in runs.items() if k.startswith(p + ":") and r.get("median_s")]
            if not cands or not ray.get("median_s"):
                log(f"{PEERS[p]['label']}: no result, target not evaluated")
                continue
            best_key, best = min(cands, key=lambda kr: kr[1]["median_s"])
            speed = best["median_s"] / ray["median_s"]
            ok = speed >= TARGETS[p]
            label = "W1 target" if n == "1000" else "same target, for information"
            log(
                f"{label}: raysim >= {TARGETS[p]:g}x {PEERS[p]['label']} (its best: {best_key.split(':')[1]}, "
                f"{best['median_s']:.3f} s) -> {speed:.2f}x  {'MET' if ok else 'MISSED'}"
            )
            verdicts[p] = {"best": best_key, "speedup": speed, "target": TARGETS[p], "met": ok}
        out["by_clients"][n] = {"rows": rows, "targets": verdicts}
    log("\nconfigurations given:")
    first = next(iter(results.values()))["runs"]
    for key, r in first.items():
        if "config" in r:
            log(f"  {key}: {json.dumps(r['config'])}")
    log("versions:")
    for key, r in first.items():
        if "versions" in r:
            log(f"  {key}: {json.dumps(r['versions'])}")
    log(f"\npeer environments ready in {install_s:.0f} s; whole invocation {total_s:.0f} s")
    log(load_before)
    log(load_after)
    out["install_s"], out["total_s"] = install_s, total_s
    (HERE / "results.json").write_text(json.dumps(out, indent=1))
    log(f"results: {HERE / 'results.json'}; logs: {OUT / 'logs'}")


if __name__ == "__main__":
    sys.exit(main())
