"""The kit's runs (``raysim.testing``): the tiny config, the algorithm under test as a config names
it, and one run through the runtime's public steps, read back as ``RunResult``.

A module of its own so that ``raysim.testing`` keeps the checks and what they assert, and this the
plumbing every check shares; ``raysim.testing`` re-exports its public names (``tiny_raw``,
``tiny_config``, ``resolve_algorithm``, ``RunResult``).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from raysim.algorithms.base import Algorithm
from raysim.api import BACKENDS
from raysim.config import ExperimentConfig, config_from_dict
from raysim.runtime import rundir
from raysim.runtime.experiment import Experiment

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
def resolve_algorithm(algorithm: AlgorithmSpec) -> type[Algorithm]:
    """The class of ``algorithm`` (a class, a built-in or entry-point name, or ``pkg.mod:Name``)."""
    from raysim.algorithms import algorithm_class  # the one resolver: built-ins, entry points, import paths

    cls = algorithm_class(algorithm) if isinstance(algorithm, str) else algorithm
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
