"""Reproducible mode: the same bits on every x86-64 machine with AVX2 (docs/architecture.md, section 6).

A float32 result depends on more than the seed: each numerical library picks its kernels by the CPU
it finds, and kernels built for wider vectors or other cache sizes add in another order. Measured
on an AVX-512/AMX machine against numbers pinned on an AVX2 machine (``tests/runtime/pins_digits.json``),
every loss differed at ~1e-7 relative, and capping oneDNN's, ATen's and MKL's ISA at AVX2 did not
close the gap: oneDNN sizes its convolution blocking by the per-core L1/L2 cache
(``platform::get_per_core_cache_size`` in its brgemm convolution set-up), so the order in which a
convolution sums can differ between CPU models even at one ISA, and NNPACK (which ATen takes for
batches of 16 or more when oneDNN is off) blocks by cache size too. DSAC is the one pinned
algorithm that runs oneDNN's convolutions on large batches (eq. 13's full-batch fine-tuning step
on a client's whole shard, 118-339 images, forward, backward-data and backward-weights): the likely
reason it was the one pin left differing where the three caps fixed the other five (one machine
cannot show a cache-size effect; without oneDNN and NNPACK, DSAC is identical here under every ISA
setting tried).

Reproducible mode therefore pins, per process:

* ATen's vectorised kernels to AVX2 (``ATEN_CPU_CAPABILITY``); the same machine code runs on any
  AVX2 machine;
* convolutions and matrix products onto MKL with conditional numerical reproducibility on its
  COMPATIBLE branch (``MKL_CBWR=COMPATIBLE``: Intel's documented promise of the same bits on Intel
  and non-Intel x86-64 CPUs alike, at a fixed thread count). Its AVX2 branch (``MKL_CBWR=AVX2``, what
  this mode first pinned) is honoured on Intel CPUs only: on an AMD EPYC, MKL ignored it and ran its
  AUTO branch (2: no reproducibility at all), and every pinned loss differed from the Intel
  machine's at ~1e-7 relative, so only the branch every vendor runs gives one set of bits. oneDNN and NNPACK are
  switched off in-process, and ``ONEDNN_MAX_CPU_ISA`` caps anything that still reaches oneDNN;
* numpy's own SIMD dispatch (``NPY_ENABLE_CPU_FEATURES``: float32 ``log``/``exp`` differ between
  dispatch levels) and the OpenBLAS kernels numpy and scipy call (``OPENBLAS_CORETYPE=Haswell``);
* the thread pools (OpenMP, MKL, OpenBLAS: one thread; torch's own count is the config's
  ``resources.torch_threads``, the same on every machine);
* deterministic algorithms (``torch.use_deterministic_algorithms``, warn-only) and, on CUDA, the
  cuBLAS workspace, cuDNN without benchmarking and without TF32. On a GPU this gives the same
  bits run after run on one GPU model, not across GPU models.

Most of these variables are read once, when torch, numpy or MKL load, so they must be in a
process's environment before it imports them: the CLI re-executes itself with them, Ray actors get
them through their ``runtime_env``, tests through ``tests/conftest.py``; a Python session exports
them first (``python -m raysim.reproducible`` prints the lines). A process is in reproducible mode
when it was started with this environment (``MARKER`` among it); ``check()`` says what does not
hold. The mode costs speed: ATen's im2col convolutions take ~4x oneDNN's time, a quickstart round
(cnn-small on Fashion-MNIST, serial) 7.4 s of CPU instead of 3.4 s, so ``resources.reproducible`` is
off by default and on in the tests.

This module imports neither torch nor numpy at import time (the CLI imports it first).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping, MutableMapping
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "LEVEL",
    "MARKER",
    "apply_env",
    "apply_in_process",
    "check",
    "cpu_flags",
    "enter",
    "loaded_before_env",
    "environment",
    "pinned",
    "state",
]

LEVEL = "avx2"  # x86-64-v3: every x86-64 server and laptop of the last decade
MARKER = "RAYSIM_REPRODUCIBLE"  # set with the rest: "this process was started in reproducible mode"
NEEDED_FLAGS = ("avx2", "fma")  # what the pinned kernels execute
MKL_CBWR_COMPATIBLE = 3  # MKL_CBWR_COMPATIBLE in mkl_cbwr.h, what mkl_cbwr_get(MKL_CBWR_BRANCH) returns


def _numpy_features() -> str:
    """numpy's name for "dispatch up to AVX2" (numpy 2.4 groups its features as x86-64 levels)."""
    try:
        major, minor = (int(p) for p in metadata.version("numpy").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return "X86_V3"
    if (major, minor) >= (2, 4):
        return "X86_V3"
    return "SSE SSE2 SSE3 SSSE3 SSE41 POPCNT SSE42 AVX F16C FMA3 AVX2"


def environment() -> dict[str, str]:
    """The variables that pin a process's kernels; they must be set before torch/numpy load."""
    return {
        MARKER: LEVEL,
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_CBWR": "COMPATIBLE",
        "MKL_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "OPENBLAS_CORETYPE": "Haswell",
        "NPY_ENABLE_CPU_FEATURES": _numpy_features(),
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    }


def pinned(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``environ`` (default: this process's) holds reproducible mode's variables."""
    env = os.environ if environ is None else environ
    return all(env.get(k) == v for k, v in environment().items())


_LATE: list[str] = []  # modules that had loaded before apply_env changed the environment


def apply_env(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Put reproducible mode's variables into ``environ`` (default ``os.environ``), overriding what was
    there (a thread count a user exported must not change the bits). Returns the names it changed.
    For this process that only works before torch and numpy load; ``check()`` reports it if not."""
    env = os.environ if environ is None else environ
    changed = [k for k, v in environment().items() if env.get(k) != v]
    for k in changed:
        env[k] = environment()[k]
    if environ is None and changed:
        _LATE.extend(m for m in ("torch", "numpy") if m in sys.modules and m not in _LATE)
    return changed


def loaded_before_env() -> list[str]:
    """torch/numpy, if they had loaded before ``apply_env`` set this process's variables (too late)."""
    return list(_LATE)


def apply_in_process() -> bool:
    """In a process started in reproducible mode (its environment pinned), the settings that live in
    the process: oneDNN and NNPACK off (their blocking depends on the CPU's caches), deterministic
    algorithms, cuDNN without benchmarking or TF32. Does nothing in a process not started in the
    mode. Called where a process starts computing (the hosts, the server, ``Experiment.prepare``);
    idempotent and cheap. Returns whether the mode is on."""
    if not pinned():
        return False
    import torch

    torch.backends.mkldnn.set_flags(False)
    torch.backends.nnpack.set_flags(False)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # that switch also fills every new tensor with NaN, a debugging aid that made up 22 % of a
    # quickstart round's CPU time here; code that reads memory it never wrote is a bug the pinned
    # tests catch, not something to pay for in every run
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return True


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """The CPU's model name and its ISA flags (empty where /proc/cpuinfo is missing)."""
    model, flags = "unknown", set[str]()
    try:
        text = cpuinfo.read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def _mkl_branch() -> int | None:
    """MKL's code branch in this process (3 = COMPATIBLE, 10 = AVX2, 2 = AUTO: no reproducible branch), through the MKL that torch links; None where
    that MKL does not export it."""
    try:
        import ctypes

        import torch

        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        return int(lib.mkl_serv_cbwr_get(1))
    except (OSError, AttributeError):
        return None


def _openblas_cores() -> list[str]:
    """The kernel family of every OpenBLAS loaded in this process (numpy's, scipy's)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [str(i.get("architecture")) for i in threadpool_info() if i.get("internal_api") == "openblas"]


def check() -> list[str]:
    """What keeps this process from reproducible mode's bits (empty: nothing found). Looks at what
    the libraries actually chose where they say, not only at the variables."""
    off = [f"{k}={os.environ.get(k, '(unset)')}" for k, v in environment().items() if os.environ.get(k) != v]
    problems = [f"not started with reproducible mode's environment ({', '.join(off)})"] if off else []
    if _LATE:
        problems.append(
            f"{' and '.join(_LATE)} had loaded before reproducible mode set the environment: "
            "their kernels were chosen without it"
        )
    _, flags = cpu_flags()
    missing = [f for f in NEEDED_FLAGS if flags and f not in flags]
    if missing:
        problems.append(f"this CPU lacks {', '.join(missing)}: it cannot run the pinned AVX2 kernels")
    if "torch" in sys.modules:
        import torch

        cap = torch.backends.cpu.get_cpu_capability()
        if cap != "AVX2":
            problems.append(f"torch dispatches to {cap} kernels, not AVX2")
        if torch.backends.mkldnn.enabled or torch._C._get_nnpack_enabled():
            problems.append("oneDNN/NNPACK convolutions are on (apply_in_process() was not called)")
        branch = _mkl_branch()
        if branch is not None and branch != MKL_CBWR_COMPATIBLE:
            problems.append(f"MKL runs code branch {branch}, not COMPATIBLE ({MKL_CBWR_COMPATIBLE})")
    if "numpy" in sys.modules:
        cores = [c for c in _openblas_cores() if c.lower() != "haswell"]
        if cores:
            problems.append(f"OpenBLAS runs {', '.join(cores)} kernels, not Haswell")
        try:
            from numpy._core._multiarray_umath import __cpu_features__ as npf
        except ImportError:
            npf = {}
        wide = "X86_V4" if _numpy_features() == "X86_V3" else "AVX512F"  # its first AVX-512 target
        if npf.get(wide):
            problems.append("numpy dispatches to AVX-512 loops")
    return problems


def state(requested: bool | None = None) -> dict[str, Any]:
    """Reproducible mode as this process has it, for ``environment.json``: asked for, on (started with
    the environment), what the libraries chose, and what does not hold."""
    on = pinned()
    out: dict[str, Any] = {
        "requested": requested,
        "on": on,
        "level": LEVEL if on else None,
        "env": {k: os.environ.get(k) for k in environment()},
        "problems": check() if on or requested else [],
    }
    if "torch" in sys.modules:
        import torch

        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        out["onednn_enabled"] = bool(torch.backends.mkldnn.enabled)
        out["mkl_cbwr_branch"] = _mkl_branch()
        out["deterministic_algorithms"] = bool(torch.are_deterministic_algorithms_enabled())
        out["torch_threads"] = torch.get_num_threads()
    if "numpy" in sys.modules:
        out["openblas_cores"] = _openblas_cores()
    return out


def enter(requested: bool) -> dict[str, Any]:
    """Called by ``Experiment.prepare`` in the driver: turns on the in-process settings when the
    process was started in the mode, warns when the mode was asked for but this process cannot give
    it (started without the environment: a Python session that imported torch first), and returns
    ``state``. The warning names the fix; the run goes on and its environment.json says so."""
    apply_in_process()
    st = state(requested)
    if requested and (not st["on"] or st["problems"]):
        warnings.warn(
            "resources.reproducible is on, but this process was not started in reproducible mode ("
            + "; ".join(st["problems"])
            + "): the driver's numbers (the initial model; on the serial backend, every round) may differ "
            "from other machines' in the last bits. Start it with the environment set: `raysim run` does "
            "that itself; in a shell or a notebook kernel, first `eval $(python -m raysim.reproducible)`",
            RuntimeWarning,
            stacklevel=3,
        )
    return st


def reexec_command(argv: list[str]) -> tuple[str, list[str], dict[str, str]]:
    """How the CLI starts itself again in reproducible mode: this Python, ``-m raysim.cli`` with the
    same arguments, and the environment with the mode's variables."""
    env = dict(os.environ)
    apply_env(env)
    return sys.executable, [sys.executable, "-m", "raysim.cli", *argv], env


def main() -> None:
    """``python -m raysim.reproducible``: the shell lines that start a shell in reproducible mode."""
    import shlex

    for k, v in environment().items():
        print(f"export {k}={shlex.quote(v)}")


if __name__ == "__main__":
    main()
