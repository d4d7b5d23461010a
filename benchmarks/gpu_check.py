"""GPU check (issue 21, item 6): raysim's fractional-GPU path on a machine with a CUDA GPU.

One local Ray is started with every CPU and GPU of the machine, then two short W1 runs
(benchmarks/fedavg_w1.py's workload: FedAvg, Fashion-MNIST, 1000 Dirichlet(0.5) clients, 100 a round,
cnn-small), each ``--rounds`` rounds (default 6; the first is warm-up, not timed):

  gpu: 4 client actors at ``resources.num_gpus: 0.25`` each (four on one GPU), the server on the CPU.
       Checked: each actor trains on ``cuda``, knows its 0.25 share, capped its CUDA memory at that
       fraction (``gpu_memory_cap`` in system.parquet), and reports a finite ``peak_gpu_mb`` > 0 there;
       then the cap itself: in actor 0, allocating half its cap succeeds and 1.1 times its cap raises
       CUDA's out-of-memory error.
  cpu: the client actors on the CPUs (one per core, one torch thread each), the server on the GPU
       (``resources.server_gpus: 1``). Checked: the server's trainer is on ``cuda`` and allocated
       GPU memory (it evaluated the global model there).

Both runs' final test accuracies must agree within 0.05 (same seed, same cohorts: only the
arithmetic differs). W1's round time (median over the timed rounds of round_s - evaluate_s) on the
GPU against the CPU is printed, not checked: a small CNN at batch 32 need not be faster on a GPU.

Prints one table (check, expected, seen, ok) and exits 0 when every check passed, 1 naming what
failed, 2 with "no CUDA device" where torch sees none (so it can run anywhere: it refuses fast).

    python benchmarks/gpu_check.py [--rounds 6] [--data-dir DIR] [--out DIR]

On the lent GPU machine (Python 3.12 with torch, no Ray, no network; the working tree travels, at
most 64 MiB with what is carried). Here, in the repository root, once:

    echo /.gpucheck/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .gpucheck \\
        ray==2.58.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \\
        typing-inspection==0.4.5 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \\
        referencing==0.37.0 rpds-py==2026.9.1
    python benchmarks/gpu_check.py --pack .gpucheck

(the versions are requirements.lock's; the machine has the rest). ``--pack`` rewrites Ray's wheel
without ``ray/jars/`` (Java workers, 30.6 MB of the 78 MB wheel: raysim never starts one), RLlib and
Ray LLM, with LZMA compression (jars alone dropped: 78 MB -> 33.3 MiB), and packs Fashion-MNIST (from ``--data-dir`` or Debian's
/usr/share/datasets/fashion-mnist) into ``.gpucheck/fashion-mnist.zip``; it prints the folder's
size, which must stay under 64 MiB with the tree. Then, with the device tool's ``run``, carry
``[".gpucheck"]`` and run:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \\
        .gpucheck/*.whl && python3 -m zipfile -e .gpucheck/fashion-mnist.zip /tmp/fmnist && \\
    PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --data-dir /tmp/fmnist

(timeout_s 600; a run takes a few minutes, most of it Ray's and the actors' start).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GPU_SHARE = 0.25
GPU_ACTORS = 4
ACCURACY_TOLERANCE = 0.05
NO_CUDA_EXIT = 2
FASHION_MNIST_DEFAULT = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class Check:
    name: str
    expected: str
    seen: str
    ok: bool


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.4g}"
    return str(x)


def system_checks(rows: Sequence[Mapping[str, Any]], actors: int, share: float) -> list[Check]:
    """What system.parquet's client-actor rows (actor >= 0) of the GPU run must show: ``actors``
    actors, each on a CUDA device with a GPU id, its ``share`` of a GPU, its CUDA memory capped at
    that share (``actors.client.gpu_memory_cap``), and a finite peak of GPU memory above zero."""
    last: dict[int, Mapping[str, Any]] = {}
    for r in rows:
        if int(r["actor"]) >= 0 and (
            int(r["actor"]) not in last or r["round"] >= last[int(r["actor"])]["round"]
        ):
            last[int(r["actor"])] = r
    checks = [Check("client actors in system.parquet", str(actors), str(len(last)), len(last) == actors)]
    for a, r in sorted(last.items()):
        device, gpu_ids = str(r.get("device", "")), str(r.get("gpu_ids", ""))
        cap = float(r.get("gpu_memory_cap", math.nan))
        peak = float(r.get("peak_gpu_mb", math.nan))
        gshare = float(r.get("gpu_share", math.nan))
        checks += [
            Check(
                f"actor {a}: device, gpu_ids",
                "cuda:*, a GPU id",
                f"{device}, {gpu_ids!r}",
                device.startswith("cuda") and gpu_ids != "",
            ),
            Check(f"actor {a}: gpu_share", _fmt(share), _fmt(gshare), gshare == share),
            Check(f"actor {a}: gpu_memory_cap", _fmt(share), _fmt(cap), cap == share),
            Check(f"actor {a}: peak_gpu_mb", "finite, > 0", _fmt(peak), math.isfinite(peak) and peak > 0),
        ]
    ids = {str(r.get("gpu_ids", "")) for r in last.values()}
    checks.append(Check("GPUs the actors share", "1", str(len(ids)), len(ids) == 1))
    return checks


def accuracy_check(gpu: float, cpu: float, tolerance: float = ACCURACY_TOLERANCE) -> Check:
    """The two runs (same seed and cohorts) end at about the same test accuracy."""
    ok = math.isfinite(gpu) and math.isfinite(cpu) and abs(gpu - cpu) <= tolerance
    return Check("final test accuracy gpu vs cpu", f"within {tolerance}", f"{gpu:.4f} vs {cpu:.4f}", ok)


def render(checks: Sequence[Check]) -> str:
    """The checks as a fixed-width table."""
    head = ("check", "expected", "seen", "ok")
    rows = [head] + [(c.name, c.expected, c.seen, "ok" if c.ok else "FAILED") for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def exit_code(checks: Sequence[Check]) -> int:
    return 0 if checks and all(c.ok for c in checks) else 1


def round_seconds(rounds: Sequence[Mapping[str, Any]]) -> list[float]:
    """Each timed round's seconds without evaluation (round_s - evaluate_s), the first one left out
    (warm-up: kernels loaded, allocator filled)."""
    ordered = sorted(rounds, key=lambda r: r["round"])
    return [float(r["round_s"]) - float(r.get("evaluate_s", 0.0) or 0.0) for r in ordered[1:]]


# -- carrying Ray to a machine without it ---------------------------------------------------------
# Never loaded by a Python-only Ray: its Java workers (30.6 MB of the 78 MB wheel), RLlib, Ray LLM.
RAY_UNUSED = ("ray/jars/", "ray/rllib/", "ray/llm/")


def strip_wheel(src: Path, dst: Path, drop: Sequence[str] = RAY_UNUSED) -> int:
    """Write ``src`` (a wheel) to ``dst`` without the members under ``drop`` and with LZMA
    compression (pip reads any compression Python's zipfile does); their lines leave its RECORD
    too. Returns how many members were dropped."""
    dropped = 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_LZMA) as zout:
        for info in zin.infolist():
            if info.filename.startswith(tuple(drop)):
                dropped += 1
                continue
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(ln for ln in lines if not ln.startswith(tuple(drop))).encode()
            out = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            out.external_attr = info.external_attr  # executables (Ray's raylet, gcs_server) stay so
            out.compress_type = zipfile.ZIP_LZMA
            zout.writestr(out, data)
    return dropped


def pack(folder: Path, data_dir: Path) -> int:
    """Prepare ``folder`` for the device machine: Ray's wheel stripped (``strip_wheel``), the
    Fashion-MNIST files in one LZMA zip. Prints the folder's size; 1 when over the 64 MiB limit."""
    wheels = sorted(folder.glob("ray-*.whl"))
    if not wheels:
        print(f"gpu_check --pack: no ray-*.whl in {folder}: download it first (see this script's docstring)")
        return 2
    for whl in wheels:
        tmp = whl.with_suffix(".tmp")
        n = strip_wheel(whl, tmp)
        tmp.replace(whl)
        print(
            f"{whl.name}: {n} members under {', '.join(RAY_UNUSED)} dropped, {whl.stat().st_size / 2**20:.1f} MiB"
        )
    files = sorted(p for p in data_dir.glob("*-ubyte*") if p.is_file())
    if not files:
        print(f"gpu_check --pack: no Fashion-MNIST idx files in {data_dir}")
        return 2
    import gzip

    with zipfile.ZipFile(folder / "fashion-mnist.zip", "w", zipfile.ZIP_LZMA) as z:
        for p in files:  # stored uncompressed inside: LZMA packs the raw bytes tighter than gzip did
            raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
            z.writestr(p.name.removesuffix(".gz"), raw)
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 2**20
    print(f"{folder}: {total:.1f} MiB; the tree (~3 MiB) travels with it, at most 64 MiB in all")
    return 0 if total < 61 else 1


# -- the runs -------------------------------------------------------------------------------------
def _w1() -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("fedavg_w1", Path(__file__).with_name("fedavg_w1.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return dict(mod.W1)


def _server_device(server: Any) -> tuple[str, float]:
    """Run inside the server actor (``__ray_call__``): its trainer's device, its peak GPU MB."""
    import torch

    dev = server.trainer.device
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else math.nan
    return str(dev), float(peak)


def _try_alloc(actor: Any, times_cap: float) -> str:
    """Run inside a client actor: allocate ``times_cap`` times its CUDA memory cap; 'ok' or 'OOM'."""
    import torch

    dev = actor.host.device
    total = torch.cuda.get_device_properties(dev).total_memory
    n = int(times_cap * actor.gpu_cap * total)
    try:
        t = torch.empty(n, dtype=torch.uint8, device=dev)
        del t
        return "ok"
    except torch.OutOfMemoryError:
        return "OOM"
    finally:
        torch.cuda.empty_cache()


def run_w1(name: str, rounds: int, resources: Mapping[str, Any], data_dir: str | None, out: str) -> Any:
    """One W1 run on the Ray started by ``main``; the experiment, prepared and run, not closed."""
    from raysim.api import BACKENDS
    from raysim.config import config_from_dict
    from raysim.runtime.experiment import Experiment

    w1 = _w1()
    cfg = config_from_dict(
        {
            **w1,
            "name": f"gpu-check-{name}",
            "data": {**w1["data"], **({"data_dir": data_dir} if data_dir else {})},
            "rounds": {**w1["rounds"], "num_rounds": rounds},
            "resources": {**w1["resources"], **resources},
            "output": {"dir": out, "progress": False},
        }
    )
    exp = Experiment(cfg, progress=False, backends=BACKENDS)
    exp.prepare()
    exp.run()
    return exp


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6, help="rounds of each run (the first is not timed)")
    ap.add_argument("--data-dir", default=None, help="Fashion-MNIST's folder (default: Debian's)")
    ap.add_argument("--out", default=None, help="where the two runs' directories go (default: a temp dir)")
    ap.add_argument("--pack", metavar="DIR", default=None, help="prepare DIR to carry (see above), then exit")
    args = ap.parse_args(argv)
    if args.pack:
        return pack(Path(args.pack), Path(args.data_dir) if args.data_dir else FASHION_MNIST_DEFAULT)
    if args.rounds < 2:
        print("gpu_check: --rounds must be at least 2 (the first is warm-up)")
        return 2
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False): nothing to check here")
        return NO_CUDA_EXIT
    import pandas as pd
    import ray

    gpus = torch.cuda.device_count()
    props = torch.cuda.get_device_properties(0)
    print(
        f"gpu_check: {gpus} x {props.name} ({props.total_memory / 2**30:.0f} GiB), {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, ray {ray.__version__}, python {sys.version.split()[0]}",
        flush=True,
    )
    ray.init(num_cpus=os.cpu_count(), num_gpus=gpus, include_dashboard=False, configure_logging=False)
    checks: list[Check] = []
    times: dict[str, list[float]] = {}
    acc: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        runs = {
            "gpu": {"num_actors": GPU_ACTORS, "num_gpus": GPU_SHARE, "num_cpus": 1},
            "cpu": {"server_gpus": 1},
        }
        for name, res in runs.items():
            print(f"gpu_check: run {name!r}: resources {res} ...", flush=True)
            exp = None
            try:
                exp = run_w1(name, args.rounds, res, args.data_dir, out)
                rd = exp.run_dir
                rounds = pd.read_parquet(rd / "rounds.parquet").to_dict("records")
                times[name] = round_seconds(rounds)
                accs = [r["test_accuracy"] for r in rounds if math.isfinite(r.get("test_accuracy", math.nan))]
                acc[name] = float(accs[-1]) if accs else math.nan
                if name == "gpu":
                    system = pd.read_parquet(rd / "system.parquet").to_dict("records")
                    checks += system_checks(system, GPU_ACTORS, GPU_SHARE)
                    actor = exp.backend.clients[0]
                    for times_cap, want in ((0.5, "ok"), (1.1, "OOM")):
                        seen = ray.get(actor.__ray_call__.remote(_try_alloc, times_cap))
                        checks.append(
                            Check(f"actor 0 allocates {times_cap} x its cap", want, seen, seen == want)
                        )
                else:
                    dev, peak = ray.get(exp.backend.server.__ray_call__.remote(_server_device))
                    checks.append(Check("server trainer device", "cuda:*", dev, dev.startswith("cuda")))
                    checks.append(
                        Check(
                            "server peak GPU MB", "finite, > 0", _fmt(peak), math.isfinite(peak) and peak > 0
                        )
                    )
            except Exception as exc:  # the check goes on to say what else it saw; the traceback is printed
                import traceback

                traceback.print_exc()
                checks.append(
                    Check(f"run {name!r}", "completes", f"{type(exc).__name__}: {exc}"[:120], False)
                )
            finally:
                if exp is not None:
                    exp.close()
    ray.shutdown()
    if "gpu" in acc and "cpu" in acc:
        checks.append(accuracy_check(acc["gpu"], acc["cpu"]))
    print()
    print(render(checks))
    print()
    for name, ts in times.items():
        print(
            f"W1 s/round, clients on {name}: median {statistics.median(ts):.3f}  {[round(t, 3) for t in ts]}"
        )
    if "gpu" in times and "cpu" in times:
        ratio = statistics.median(times["gpu"]) / statistics.median(times["cpu"])
        print(f"W1 round gpu / cpu: {ratio:.2f} (4 actors x 0.25 GPU against one actor per CPU core)")
    failed = [c.name for c in checks if not c.ok]
    if failed:
        print(f"gpu_check: FAILED: {'; '.join(failed)}")
    else:
        print("gpu_check: every check passed")
    return exit_code(checks)


if __name__ == "__main__":
    sys.exit(main())
