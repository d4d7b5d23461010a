"""A conformance kit for algorithm authors: the contract checks raysim's own algorithms pass.

An algorithm (a built-in name, an import path ``pkg.mod:Name``, an entry-point name, or the class
itself) runs on a tiny digits federation (6 clients, 3 rounds, serial backend: seconds) and each
check compares what the runs leave behind (``rounds.parquet``, ``clients.parquet``,
``clusters.parquet`` and the final checkpoint's state) exactly, to the bit:

* ``check_packing``: the same results whatever the packing of clients onto hosts (one client a host,
  four a host, three hosts the cohort roams over);
* ``check_save_restore``: save after round k, restore into a fresh experiment and continue = the
  uninterrupted run; restored under a changed learning rate = a run that switched to it then
  (hyperparameters are not state);
* ``check_serial_equals_ray``: two Ray actors give the serial backend's bits (``resources.backend:
  ray`` through the normal runtime path; needs Ray installed, starts a local Ray if none runs);
* ``check_loud_failures``: an exception raised inside ``client_update`` (from ``client.fit``) by every
  client stops the run with ``ClientCodeError``, one client's is a counted dropout the aggregate
  copes with, and an exception inside ``aggregate`` stops the run as itself;
* ``check_traits``: what ``Traits`` declares holds: no client state kept unless ``client_state``,
  a ``linear`` aggregate gives the same bits from pre-summed results as from every client's own,
  the server's public split untouched unless ``public_split``; ``params_model`` refuses unknown keys.

Each raises ``AssertionError`` saying what broke and what the contract asks. In pytest::

    from raysim.testing import contract_tests

    test_my_algo = contract_tests("my_pkg.algo:MyAlgo", params={"k": 2})   # one test per check

or call the checks yourself (``check_all(algo, params, workdir=tmp_path)``). Every check takes the
algorithm and its ``params`` (the ``algorithm:`` section's other keys), ``overrides`` of the config in
the CLI's dotted form (``{"model.name": "cnn-bn"}``), ``config`` (an ExperimentConfig or a raw dict
in place of the tiny one; its algorithm section is replaced) and ``workdir`` (default: a temporary
folder). A class that is no built-in runs under its import path ``module:QualName``, so it must be
importable where the runs happen (on Ray: on the workers). Bit-for-bit comparisons
across processes (Ray actors) need reproducible mode in the test process: export its variables
before pytest starts (``eval $(python -m raysim.reproducible)``; raysim's own ``tests/conftest.py``
sets them itself). This module does not import Ray.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raysim import reproducible
from raysim.algorithms.base import Algorithm, ClientResult, LinearSum, ServerContext, SetupContext
from raysim.api import BACKENDS
from raysim.config import ExperimentConfig, config_from_dict
from raysim.runtime import rundir
from raysim.runtime.experiment import Experiment
from raysim.runtime.server import ClientCodeError

__all__ = [
    "CHECKS",
    "RAY_CHECKS",
    "InjectedFault",
    "assert_same_runs",
    "assert_same_state",
    "check_all",
    "check_loud_failures",
    "check_packing",
    "check_save_restore",
    "check_serial_equals_ray",
    "check_traits",
    "contract_tests",
    "resolve_algorithm",
    "tiny_config",
    "tiny_raw",
]

AlgorithmSpec = str | type[Algorithm]


# -- the configs ------------------------------------------------------------------------------------
def tiny_raw(out_dir: Path | str) -> dict[str, Any]:
    """The kit's default experiment as a raw config: digits (8x8), 6 clients, 3 a round, 3 rounds,
    cnn-small, serial backend; a run takes well under a second on one core."""
    return {
        "name": "tiny",
        "seed": 3,
        "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 0.5, "num_clients": 6},
        "model": {"name": "cnn-small"},
        "algorithm": {"name": "fedavg"},
        "local": {"epochs": 1, "batch_size": 16, "lr": 0.05},
        "rounds": {"num_rounds": 3, "clients_per_round": 3, "eval_every": 1},
        "resources": {"backend": "serial", "num_cpus": 0.25},
        "output": {"dir": str(Path(out_dir) / "runs"), "progress": False},
    }


def _set(raw: dict[str, Any], parts: Sequence[str], value: Any) -> None:
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def tiny_config(out_dir: Path | str, **over: Any) -> ExperimentConfig:
    """``tiny_raw`` with overrides as keywords, sections split by ``__``
    (``tiny_config(tmp, rounds__num_rounds=4, algorithm__name="scaffold")``)."""
    raw = tiny_raw(out_dir)
    for dotted, value in over.items():
        _set(raw, dotted.split("__"), value)
    return config_from_dict(raw)


# -- the algorithm under test -------------------------------------------------------------------
def _lookup(name: str) -> Any:
    """The one place a name becomes an algorithm class: ``raysim.plugins.resolve`` (built-in names,
    entry points, import paths) where it exists, else the built-in registry and import paths."""
    if importlib.util.find_spec("raysim.plugins") is not None:
        from raysim.plugins import resolve  # type: ignore[import-not-found,unused-ignore]

        return resolve("algorithms", name)
    if ":" in name:
        module, _, attr = name.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    from raysim.algorithms import ALGORITHMS

    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; valid names: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]


def resolve_algorithm(algorithm: AlgorithmSpec) -> type[Algorithm]:
    """The class of ``algorithm`` (a class, a built-in or entry-point name, or ``pkg.mod:Name``)."""
    cls = _lookup(algorithm) if isinstance(algorithm, str) else algorithm
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise TypeError(
            f"{algorithm!r} is not an algorithm class (a subclass of raysim.algorithms.Algorithm)"
        )
    return cls


def _config_name(algorithm: AlgorithmSpec, cls: type[Algorithm]) -> str:
    """What the config's ``algorithm.name`` says: the name given, the built-in name of a built-in
    class, else the class's import path (which the plug-in resolution imports, also on Ray actors)."""
    if isinstance(algorithm, str):
        return algorithm
    from raysim.algorithms import ALGORITHMS

    if ALGORITHMS.get(cls.name) is cls:
        return cls.name
    return f"{cls.__module__}:{cls.__qualname__}"


@dataclasses.dataclass(frozen=True)
class _Case:
    """One algorithm with its params on one base config: the configs and instances the checks run."""

    algorithm: AlgorithmSpec
    params: Mapping[str, Any]
    base: Mapping[str, Any] | ExperimentConfig | None
    overrides: Mapping[str, Any]
    workdir: Path

    @property
    def cls(self) -> type[Algorithm]:
        return resolve_algorithm(self.algorithm)

    def build(self) -> Algorithm:
        cls = self.cls
        return cls(cls.params_model.model_validate(dict(self.params)))

    def raw(self, label: str, **over: Any) -> dict[str, Any]:
        out = self.workdir / label
        if self.base is None:
            raw = tiny_raw(out)
        elif isinstance(self.base, ExperimentConfig):
            raw = self.base.to_dict()
        else:
            raw = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in self.base.items()}
        raw.setdefault("output", {})["dir"] = str(out / "runs")
        raw["output"]["progress"] = False
        raw["algorithm"] = {"name": _config_name(self.algorithm, self.cls), **self.params}
        data = raw.setdefault("data", {})
        if self.build().traits.public_split and not data.get("public_fraction"):  # it needs one
            data["public_fraction"] = 0.1
        for dotted, value in {**self.overrides, **over}.items():
            _set(raw, dotted.replace("__", ".").split("."), value)
        return raw

    def config(self, label: str, **over: Any) -> ExperimentConfig:
        return config_from_dict(self.raw(label, **over), source=f"raysim.testing ({label})")


@contextmanager
def _case(
    algorithm: AlgorithmSpec,
    params: Mapping[str, Any] | None,
    config: Mapping[str, Any] | ExperimentConfig | None,
    overrides: Mapping[str, Any] | None,
    workdir: Path | str | None,
) -> Iterator[_Case]:
    if workdir is not None:
        yield _Case(algorithm, dict(params or {}), config, dict(overrides or {}), Path(workdir))
        return
    with tempfile.TemporaryDirectory(prefix="raysim-testing-") as d:
        yield _Case(algorithm, dict(params or {}), config, dict(overrides or {}), Path(d))


# -- running and reading back ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RunResult:
    """What one run left behind: its directory, the number of client hosts and the final state."""

    run_dir: Path
    hosts: int
    state: dict[str, Any]  # the decoded checkpoint after the last round: state, client_states, ...

    def table(self, name: str) -> pd.DataFrame | None:
        path = self.run_dir / f"{name}.parquet"
        return pd.read_parquet(path) if path.is_file() else None


def _run(
    cfg: ExperimentConfig,
    algorithm: Algorithm | None = None,
    *,
    until: int | None = None,
    save_to: Path | None = None,
    restore_from: Path | None = None,
    lr_from: tuple[int, float] | None = None,
) -> RunResult:
    """Run ``cfg`` through the runtime's public steps (optionally with ``algorithm`` in place of the
    configured one): restored from ``restore_from`` first, switching lr before round ``lr_from[0]``,
    stopping after round ``until``; the state after the last round is saved and read back."""
    exp = Experiment(cfg, progress=False, backends=BACKENDS)  # the Ray backend handed in, as raysim run does
    if algorithm is not None:
        exp.algorithm = algorithm
    try:
        exp.prepare()
        if restore_from is not None:
            exp.restore(restore_from)
        if lr_from is not None:
            exp.run(until=lr_from[0] - 1)
            exp.set_hparams(lr=lr_from[1])
        exp.run(until=until)
        assert exp.run_dir is not None
        final = exp.save(save_to if save_to is not None else exp.run_dir / "kit-final-state")
        state = rundir.read_checkpoint(final)["server"]
        return RunResult(run_dir=exp.run_dir, hosts=exp.num_hosts, state=state)
    finally:
        exp.close()


# Columns that measure the machine, not the learning: wall-clock seconds (*_s, in tables and in
# states alike), a process's memory (*rss_mb) and the bytes actors send back, which depend on the
# packing by design (one pre-summed vector per actor and key).
NOT_LEARNING = ("transfer_bytes_up",)


def _machine(name: str) -> bool:
    return name.endswith("_s") or name.endswith("rss_mb") or name in NOT_LEARNING


TABLES = ("rounds", "clients", "clusters")
KEYS = {
    "rounds": ["round"],
    "clients": ["round", "participated", "client_id"],
    "clusters": ["round", "client_id"],
}


def learning_columns(rounds: pd.DataFrame) -> list[str]:
    return [c for c in rounds.columns if not _machine(str(c))]


def _canonical(name: str, df: pd.DataFrame, after: int) -> pd.DataFrame:
    df = df[df["round"] > after]
    keys = [k for k in KEYS[name] if k in df.columns]
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


def assert_same_tables(expected: pd.DataFrame, got: pd.DataFrame, what: str) -> None:
    """Every learning column equal to the last bit (NaN where NaN), the same columns and rows."""
    cols, got_cols = sorted(learning_columns(expected)), sorted(learning_columns(got))
    if cols != got_cols:
        raise AssertionError(
            f"{what}: the columns differ: only in the first {sorted(set(cols) - set(got_cols))}, "
            f"only in the second {sorted(set(got_cols) - set(cols))}"
        )
    if len(expected) != len(got):
        raise AssertionError(f"{what}: {len(expected)} rows vs {len(got)}")
    for c in cols:
        a, b = expected[c].to_numpy(), got[c].to_numpy()
        same = pd.isna(a) == pd.isna(b)
        both = ~pd.isna(a) & ~pd.isna(b)
        same[both] = a[both] == b[both]
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            where = {k: expected[k].iloc[i] for k in ("round", "client_id") if k in expected}
            raise AssertionError(
                f"{what}: column {c!r} differs in {int((~same).sum())} of {len(a)} rows, first at "
                f"{where or i}: {a[i]!r} vs {b[i]!r}"
            )


def assert_same_runs(expected: RunResult, got: RunResult, what: str, *, after: int = 0) -> None:
    """Two runs' rounds/clients/clusters tables (rounds after ``after``) and final states, exactly."""
    for name in TABLES:
        a, b = expected.table(name), got.table(name)
        if a is None and b is None:
            continue
        if a is None or b is None:
            raise AssertionError(f"{what}: {name}.parquet exists in one run only")
        assert_same_tables(_canonical(name, a, after), _canonical(name, b, after), f"{what}, {name}.parquet")
    assert_same_state(expected.state, got.state, what)


def _diff(a: Any, b: Any, path: str) -> str | None:
    """Where ``a`` and ``b`` first differ (None: equal to the bit)."""
    if hasattr(a, "detach") and hasattr(b, "detach"):  # torch tensors
        a, b = a.detach().cpu().numpy(), b.detach().cpu().numpy()
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return f"{path}: {type(a).__name__} vs {type(b).__name__}"
        if (a.dtype, a.shape) != (b.dtype, b.shape):
            return f"{path}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
        if a.dtype == object:
            return _diff(a.tolist(), b.tolist(), path)
        if a.tobytes() != b.tobytes():
            fa, fb = np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1)
            bytes_a, bytes_b = fa.view(np.uint8).reshape(fa.size, -1), fb.view(np.uint8).reshape(fb.size, -1)
            neq = np.flatnonzero((bytes_a != bytes_b).any(axis=1))
            return (
                f"{path}: {len(neq)} of {fa.size} values differ, first at flat index {neq[0]}: "
                f"{fa[neq[0]]!r} vs {fb[neq[0]]!r}"
            )
        return None
    if isinstance(a, np.random.Generator) and isinstance(b, np.random.Generator):
        return _diff(a.bit_generator.state, b.bit_generator.state, f"{path}.bit_generator")
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        if type(a) is not type(b):
            return f"{path}: {type(a).__name__} vs {type(b).__name__}"
        for f in dataclasses.fields(a):
            if _machine(f.name):
                continue
            d = _diff(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
            if d:
                return d
        return None
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            return f"{path}: keys differ: {sorted(map(str, set(a) ^ set(b)))}"
        for k in sorted(a, key=str):
            if isinstance(k, str) and _machine(k):
                continue
            d = _diff(a[k], b[k], f"{path}[{k!r}]")
            if d:
                return d
        return None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if type(a) is not type(b) or len(a) != len(b):
            return f"{path}: {type(a).__name__} of {len(a)} vs {type(b).__name__} of {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = _diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    if isinstance(a, float) and isinstance(b, float):
        same = (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
        return None if same else f"{path}: {a!r} vs {b!r}"
    if type(a) is not type(b) or a != b:
        return f"{path}: {a!r} vs {b!r}"
    return None


def assert_same_state(expected: Any, got: Any, what: str) -> None:
    """Two checkpointed states equal to the bit (arrays by bytes, NaN where NaN), or where they differ."""
    d = _diff(expected, got, "state")
    if d:
        raise AssertionError(f"{what}: the final checkpoint differs at {d}")


def _expect_same(expected: RunResult, got: RunResult, what: str, why: str, *, after: int = 0) -> None:
    try:
        assert_same_runs(expected, got, what, after=after)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{why}") from None


# -- the checks ------------------------------------------------------------------------------------
# Three layouts of the 6 tiny clients: one a host (6 hosts, pinned), four a host (2 hosts, pinned),
# and 3 hosts with `auto` packing (an algorithm without client state roams: each round's cohort is
# balanced over the hosts).
LAYOUTS: dict[str, dict[str, Any]] = {
    "clients_per_actor=1": {"resources.clients_per_actor": 1},
    "clients_per_actor=4": {"resources.clients_per_actor": 4},
    "auto, num_actors=3": {"resources.clients_per_actor": "auto", "resources.num_actors": 3},
}


def check_packing(
    algorithm: AlgorithmSpec,
    params: Mapping[str, Any] | None = None,
    *,
    config: Mapping[str, Any] | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    workdir: Path | str | None = None,
) -> None:
    """The same bits whatever the packing of clients onto hosts (``LAYOUTS``), on the serial backend."""
    with _case(algorithm, params, config, overrides, workdir) as case:
        runs = {
            label: _run(case.config(f"packing-{i}", **over))
            for i, (label, over) in enumerate(LAYOUTS.items())
        }
        hosts = [r.hosts for r in runs.values()]
        n = case.config("packing-0").data.num_clients
        want = [1, 1, 1] if case.build().traits.pooled else [n, math.ceil(n / 4), min(3, n)]
        if hosts != want:
            raise AssertionError(f"the layouts {list(LAYOUTS)} gave {hosts} client hosts, not {want}")
        (ref_label, ref), *others = runs.items()
        for label, got in others:
            _expect_same(
                ref,
                got,
                f"{case.cls.name}: packing changed the results ({ref_label}: {ref.hosts} hosts vs {label}: "
                f"{got.hosts} hosts)",
                "The contract: a client's results depend on the seed, the round and its id only, never on "
                "which host trains it nor which clients share that host. Draw randomness from the rng the "
                "runtime passes (RoundContext/ServerContext.rng; the trainer seeds each client), keep per-"
                "client data in client.state (with Traits.client_state=True), nothing on the algorithm "
                "object, and sum linear results with LinearSum/sum_by_key (exact whatever the grouping).",
            )


def check_save_restore(
    algorithm: AlgorithmSpec,
    params: Mapping[str, Any] | None = None,
    *,
    config: Mapping[str, Any] | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    workdir: Path | str | None = None,
    at: int = 2,
    rounds: int = 4,
) -> None:
    """Save after round ``at``, restore into a fresh experiment and continue to round ``rounds`` =
    the uninterrupted run; restored under a doubled lr = a run that switched to it after ``at``."""
    with _case(algorithm, params, config, overrides, workdir) as case:
        n = {"rounds.num_rounds": rounds}
        name = case.cls.name
        full = _run(case.config("restore-full", **n))
        ckpt = case.workdir / f"restore-checkpoint-round-{at}"
        _run(case.config("restore-first", **n), until=at, save_to=ckpt)
        after = _run(case.config("restore-after", **n), restore_from=ckpt)
        _expect_same(
            full,
            after,
            f"{name}: saved after round {at}, restored and continued != the uninterrupted run",
            "The contract: everything a later round depends on is in the state init/configure_round/"
            "aggregate return (server side) or in client.state (client side), both of which the "
            "checkpoint holds; nothing kept on the algorithm object, no randomness but the rng passed in.",
            after=at,
        )
        lr = case.config("restore-full", **n).local.lr * 2
        switched = _run(case.config("restore-switched", **n), lr_from=(at + 1, lr))
        after_lr = _run(case.config("restore-after-lr", **n, **{"local.lr": lr}), restore_from=ckpt)
        _expect_same(
            switched,
            after_lr,
            f"{name}: restored under lr={lr} != a run that switched to lr={lr} after round {at}",
            "The contract: client hyperparameters are not state. They reach configure_round every round "
            "(RoundContext.hparams) and travel in each ClientTask; an algorithm that copies local.* into "
            "its state at init trains a restored run with the old values.",
            after=at,
        )


def check_serial_equals_ray(
    algorithm: AlgorithmSpec,
    params: Mapping[str, Any] | None = None,
    *,
    config: Mapping[str, Any] | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    workdir: Path | str | None = None,
    actors: int = 2,
    save_at: int = 2,
) -> None:
    """Two Ray client actors (``resources.backend: ray``, ``auto`` packing: clients without state
    roam) give the serial backend's bits, and a Ray run restored from the Ray checkpoint of round
    ``save_at`` continues to them. Uses the running Ray, or starts a local one."""
    with _case(algorithm, params, config, overrides, workdir) as case:
        over = {
            "resources.clients_per_actor": "auto",
            "resources.num_actors": actors,
            "resources.reproducible": reproducible.pinned(),  # the actors in the mode when this process is
        }
        name = case.cls.name
        serial = _run(case.config("serial", **over, **{"resources.backend": "serial"}))
        rounds = case.config("serial").rounds.num_rounds
        at = min(save_at, rounds - 1)
        ckpt = case.workdir / f"ray-checkpoint-round-{at}"
        ray_cfg = case.config("ray", **over, **{"resources.backend": "ray"})
        _run(ray_cfg, until=at, save_to=ckpt)
        on_ray = _run(case.config("ray-full", **over, **{"resources.backend": "ray"}))
        mode = (
            ""
            if reproducible.pinned()
            else " This process is not in reproducible mode: start pytest with its variables exported "
            "(eval $(python -m raysim.reproducible)), or the actors' kernels may differ from this process's."
        )
        why = (
            "The contract: an algorithm computes the same on any backend; what the server and each client "
            "need travels in the state, the round plan and the results (picklable), never in module "
            "globals or process-local caches." + mode
        )
        if not case.build().traits.pooled and on_ray.hosts != actors:
            raise AssertionError(f"{name}: the Ray run used {on_ray.hosts} client actors, not {actors}")
        _expect_same(serial, on_ray, f"{name}: Ray ({on_ray.hosts} actors) != serial", why)
        restored = _run(
            case.config("ray-restored", **over, **{"resources.backend": "ray"}), restore_from=ckpt
        )
        _expect_same(
            serial,
            restored,
            f"{name}: on Ray, restored from round {at} and continued != serial",
            why,
            after=at,
        )


class InjectedFault(Exception):
    """The exception ``check_loud_failures`` raises inside the algorithm's code."""


class _FaultyClient:
    """A client whose training, scoring and embedding raise ``InjectedFault`` (everything else is
    the real client's): the fault arrives from inside ``client_update``, as a bug in it would."""

    def __init__(self, client: Any, fired: list[str]) -> None:
        object.__setattr__(self, "_client", client)
        object.__setattr__(self, "_fired", fired)

    def _fault(self, what: str) -> Callable[..., Any]:
        def raise_(*args: Any, **kwargs: Any) -> Any:
            self._fired.append(what)
            raise InjectedFault(f"injected by raysim.testing into client.{what}")

        return raise_

    def __getattr__(self, name: str) -> Any:
        if name in ("fit", "evaluate", "embed"):
            return self._fault(name)
        return getattr(self._client, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._client, name, value)


class _FaultyData:
    """Server data whose fit and evaluate raise ``InjectedFault``."""

    def __init__(self, data: Any, fired: list[str]) -> None:
        self._data, self._fired = data, fired

    def splits(self) -> tuple[str, ...]:
        return tuple(self._data.splits())

    def evaluate(self, params: Any, split: str = "public") -> Any:
        self._fired.append("evaluate")
        raise InjectedFault("injected by raysim.testing into server.evaluate")

    def fit(self, params: Any, split: str = "public", **hparams: Any) -> Any:
        self._fired.append("fit")
        raise InjectedFault("injected by raysim.testing into server.fit")


def _variant(base: Algorithm, **methods: Any) -> Algorithm:
    """An instance of a subclass of ``base``'s class with ``methods`` replaced, built with its params
    (its traits as ``base`` has them)."""
    cls = type(base)
    sub = type(f"{cls.__name__}UnderTest", (cls,), {"__module__": __name__, **methods})
    out: Algorithm = sub(base.p)
    out.traits = base.traits
    return out


def _raised(cfg: ExperimentConfig, algorithm: Algorithm) -> BaseException | None:
    try:
        _run(cfg, algorithm)
    except Exception as exc:  # the check inspects what came out
        return exc
    return None


def check_loud_failures(
    algorithm: AlgorithmSpec,
    params: Mapping[str, Any] | None = None,
    *,
    config: Mapping[str, Any] | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    workdir: Path | str | None = None,
) -> None:
    """A bug is an error with its traceback, one client's fault a counted dropout: ``InjectedFault``
    raised from ``client.fit`` in every client stops the run with ``ClientCodeError``; raised for one
    client only, the run completes with that client's updates counted as dropouts; raised inside
    ``aggregate`` (from ``server.evaluate``/``fit``, or after it), it stops the run as itself."""
    with _case(algorithm, params, config, overrides, workdir) as case:
        base = case.build()
        parent: Any = type(base)  # the variants below override one method and call the original
        name = case.cls.name
        lock = threading.Lock()

        # 1. every client
        fired: list[str] = []
        swallowed: list[int] = []

        def every_client(self: Any, task: Any, params: Any, client: Any) -> Any:
            before = len(fired)
            parent.client_update(self, task, params, _FaultyClient(client, fired))
            if len(fired) > before:
                swallowed.append(task.client_id)
            raise InjectedFault("injected by raysim.testing after client_update returned")

        err = _raised(case.config("loud-every-client"), _variant(base, client_update=every_client))
        if swallowed:
            raise AssertionError(
                f"{name}.client_update caught the exception client.{fired[0]} raised and returned a result "
                f"(clients {sorted(set(swallowed))}): a bug in training would be hidden. Let exceptions "
                "propagate; the runtime counts one client's as a dropout and stops on a cohort-wide one."
            )
        if not isinstance(err, ClientCodeError) or not all(
            w in str(err) for w in ("InjectedFault", "Traceback")
        ):
            raise AssertionError(
                f"{name}: every client's client_update raised InjectedFault; the run should stop with "
                "ClientCodeError naming it, with a client's traceback; it "
                + ("completed" if err is None else f"raised {err!r}")
            )

        # 2. one client (the first to train): a counted dropout, and the aggregate copes
        if not base.traits.pooled and case.config("loud-one-client").rounds.clients_per_round > 1:
            victim: list[int] = []

            def one_client(self: Any, task: Any, params: Any, client: Any) -> Any:
                with lock:
                    if not victim:
                        victim.append(task.client_id)
                if task.client_id == victim[0]:
                    raise InjectedFault(f"injected by raysim.testing for client {victim[0]}")
                return parent.client_update(self, task, params, client)

            try:
                one = _run(case.config("loud-one-client"), _variant(base, client_update=one_client))
            except Exception as exc:
                raise AssertionError(
                    f"{name}: one client's client_update raised InjectedFault (client {victim[:1]}); that is a "
                    f"counted dropout and the run goes on, but it stopped with {type(exc).__name__}: {exc}. "
                    "aggregate must cope with fewer results than tasks."
                ) from exc
            clients = one.table("clients")
            assert clients is not None
            rows = clients[(clients["client_id"] == victim[0]) & clients["participated"]]
            bad = rows[~rows["dropped"] | ~rows["reason"].astype(str).str.contains("InjectedFault")]
            if rows.empty or not bad.empty:
                raise AssertionError(
                    f"{name}: client {victim[0]} raised InjectedFault in every round it trained; clients.parquet "
                    f"should count each as a dropout with the reason, it has:\n{rows.to_string()}"
                )

        # 3. aggregate
        fired_server: list[str] = []
        swallowed_server: list[int] = []

        def aggregate(self: Any, state: Any, results: Sequence[ClientResult | LinearSum], server: Any) -> Any:
            if server.data is not None:
                server = dataclasses.replace(server, data=_FaultyData(server.data, fired_server))
            before = len(fired_server)
            parent.aggregate(self, state, results, server)
            if len(fired_server) > before:
                swallowed_server.append(server.round_idx)
            raise InjectedFault("injected by raysim.testing after aggregate returned")

        err = _raised(case.config("loud-aggregate"), _variant(base, aggregate=aggregate))
        if swallowed_server:
            raise AssertionError(
                f"{name}.aggregate caught the exception server.{fired_server[0]} raised and went on (round "
                f"{swallowed_server[0]}): let exceptions propagate."
            )
        if not isinstance(err, InjectedFault):
            raise AssertionError(
                f"{name}: aggregate raised InjectedFault; the run should stop with it, as itself, it "
                f"{'completed' if err is None else f'raised {err!r}'}"
            )


class _SplitSpy:
    """Server data that records which splits the algorithm fits or evaluates on."""

    def __init__(self, data: Any, used: list[str]) -> None:
        self._data, self._used = data, used

    def splits(self) -> tuple[str, ...]:
        return tuple(self._data.splits())

    def evaluate(self, params: Any, split: str = "public") -> Any:
        self._used.append(split)
        return self._data.evaluate(params, split)

    def fit(self, params: Any, split: str = "public", **hparams: Any) -> Any:
        self._used.append(split)
        return self._data.fit(params, split, **hparams)


def check_traits(
    algorithm: AlgorithmSpec,
    params: Mapping[str, Any] | None = None,
    *,
    config: Mapping[str, Any] | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    workdir: Path | str | None = None,
) -> None:
    """What the class declares holds: a name; a ``params_model`` that refuses unknown keys; nothing
    written to ``client.state`` without ``Traits.client_state``; a ``linear`` aggregate that gives the same bits from
    pre-summed results as from every client's own; the server's public split untouched (in ``init``
    and ``aggregate``) without ``Traits.public_split``. (``pooled`` and ``client_buffers`` change what
    the runtime does, checked by raysim's own tests.)"""
    from pydantic import ValidationError

    from raysim.algorithms.base import Traits

    with _case(algorithm, params, config, overrides, workdir) as case:
        cls, base = case.cls, case.build()
        parent: Any = type(base)  # the spy below overrides methods and calls the originals
        if not (isinstance(cls.name, str) and cls.name):
            raise AssertionError(f"{cls.__qualname__}.name must be a non-empty string, it is {cls.name!r}")
        if not isinstance(base.traits, Traits):
            raise AssertionError(
                f"{cls.name}.traits must be a raysim.algorithms.Traits, it is {base.traits!r}"
            )
        try:
            cls.params_model.model_validate({**case.params, "raysim_testing_unknown_key": 1})
        except ValidationError:
            pass
        else:
            raise AssertionError(
                f"{cls.name}.params_model accepts an unknown key: a typo in a config would be ignored. "
                "Derive it from raysim.algorithms.AlgoParams (extra='forbid')."
            )
        traits = base.traits

        # one run with the server's public split offered (and recorded), pinned clients, several a host
        used: list[str] = []

        def init(self: Any, params: Any, ctx: SetupContext) -> Any:
            if ctx.data is not None:
                ctx = dataclasses.replace(ctx, data=_SplitSpy(ctx.data, used))
            return parent.init(self, params, ctx)

        def aggregate(self: Any, state: Any, results: Any, server: ServerContext) -> Any:
            if server.data is not None:
                server = dataclasses.replace(server, data=_SplitSpy(server.data, used))
            return parent.aggregate(self, state, results, server)

        wrote: dict[int, list[str]] = {}

        def client_update(self: Any, task: Any, params: Any, client: Any) -> Any:
            out = parent.client_update(self, task, params, client)
            if client.state:
                wrote.setdefault(task.client_id, sorted(map(str, client.state)))
            return out

        over = {"data.public_fraction": 0.1, "resources.clients_per_actor": 4}
        spied = _run(
            case.config("traits", **over),
            _variant(base, init=init, aggregate=aggregate, client_update=client_update),
        )
        if not traits.public_split and "public" in used:
            raise AssertionError(
                f"{cls.name} fits or evaluates on the server's public split but does not declare "
                "Traits.public_split=True: a config without data.public_fraction would fail in round 1 "
                "instead of being refused when it is validated."
            )
        if not traits.client_state and wrote:
            raise AssertionError(
                f"{cls.name} writes client.state (client: keys {wrote}) but declares "
                "Traits.client_state=False: the runtime keeps no client state for it (what a client "
                "writes is dropped after its round, and a client training on another host fails). "
                "Declare client_state=True, or keep nothing in client.state."
            )
        if traits.linear:
            unreduced = dataclasses.replace(traits, linear=False)
            plain = _variant(base)
            plain.traits = unreduced
            every = _run(case.config("traits-unreduced", **over), plain)
            _expect_same(
                spied,
                every,
                f"{cls.name}: the aggregate of pre-summed results != the aggregate of every client's own",
                "The contract of Traits.linear=True: aggregate reads the updates only through "
                "sum_by_key/LinearSum.of over its results (a client's own result has delta=None when its "
                "update is inside a host's sum), so that the sums are the same whichever host summed them.",
            )


CHECKS: dict[str, Callable[..., None]] = {
    "packing": check_packing,
    "save_restore": check_save_restore,
    "loud_failures": check_loud_failures,
    "traits": check_traits,
}
RAY_CHECKS: dict[str, Callable[..., None]] = {"serial_equals_ray": check_serial_equals_ray}


def check_all(
    algorithm: AlgorithmSpec,
    params: Mapping[str, Any] | None = None,
    *,
    config: Mapping[str, Any] | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    workdir: Path | str | None = None,
    ray: bool = True,
) -> None:
    """Every check (``ray=False``: the serial ones only), each in a folder of ``workdir`` (default: a
    temporary folder); the first that fails raises its AssertionError."""
    checks = {**CHECKS, **(RAY_CHECKS if ray else {})}
    with _case(algorithm, params, config, overrides, workdir) as case:
        for label, check in checks.items():
            check(algorithm, params, config=config, overrides=overrides, workdir=case.workdir / label)


def contract_tests(
    algorithm: AlgorithmSpec,
    params: Mapping[str, Any] | None = None,
    *,
    config: Mapping[str, Any] | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    ray: bool = True,
    ray_marks: Sequence[Any] = (),
    ray_fixture: str | None = None,
) -> Callable[..., None]:
    """A pytest test, parametrized over the checks, for a module-level name::

        test_my_algo = contract_tests("my_pkg.algo:MyAlgo", params={"k": 2})

    ``ray_marks``: marks for the Ray check (e.g. ``[pytest.mark.slow]``); ``ray_fixture``: the name
    of a fixture that starts Ray, requested before the Ray check (else the check starts a local Ray)."""
    import pytest

    names = [*CHECKS, *(RAY_CHECKS if ray else {})]
    cases = [pytest.param(n, id=n, marks=list(ray_marks) if n in RAY_CHECKS else []) for n in names]

    @pytest.mark.parametrize("check", cases)
    def test_contract(check: str, tmp_path: Path, request: Any) -> None:
        if check in RAY_CHECKS and ray_fixture is not None:
            request.getfixturevalue(ray_fixture)
        {**CHECKS, **RAY_CHECKS}[check](
            algorithm, params, config=config, overrides=overrides, workdir=tmp_path
        )

    return test_contract
