"""What many test files need, in one place: client hyperparameters, the contexts an algorithm's
server half gets (``SetupContext``, ``RoundContext``, ``ServerContext``), the server half called the
way the runtime calls it, and experiments and their runs.

``experiment`` and ``resume`` are the only places a test constructs an ``Experiment``: they hand in the
Ray backend as the entry points do (``raysim.api.BACKENDS``), so a test of ``resources.backend: ray``
runs what ``raysim run`` runs.

``client_hparams`` and ``local_knobs`` are the only places a test builds client hyperparameters or the
config's ``local.*`` knobs: when their type changes, these two functions change."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raysim.algorithms.base import (
    Algorithm,
    ClientTask,
    LocalHParams,
    RoundContext,
    ServerContext,
    SetupContext,
)
from raysim.api import BACKENDS
from raysim.config import ExperimentConfig
from raysim.models import ParamLayout
from raysim.runtime.experiment import Experiment


# -- hyperparameters ------------------------------------------------------------------------------
def client_hparams(**values: Any) -> LocalHParams:
    """A task's / a round's client hyperparameters (``ClientTask.hparams``, ``RoundContext.hparams``):
    the typed record, the config's defaults for what ``values`` leaves out."""
    return LocalHParams.of(**values)


def as_hparams(hparams: LocalHParams | Mapping[str, Any] | None) -> LocalHParams:
    """``hparams`` as the record (a mapping of its fields is accepted); None: ``HPARAMS``."""
    if hparams is None:
        return HPARAMS
    return hparams if isinstance(hparams, LocalHParams) else client_hparams(**hparams)


HPARAMS = client_hparams(lr=0.1, epochs=1, batch_size=4)


def local_knobs(**values: Any) -> LocalHParams:
    """The config's ``local.*`` knobs as ``SetupContext.local`` carries them (default: ``HPARAMS``)."""
    return LocalHParams.of(**values) if values else HPARAMS


# -- contexts -------------------------------------------------------------------------------------
def flat_layout(n_params: int, name: str = "w") -> ParamLayout:
    """A model of one flat parameter vector."""
    return ParamLayout(names=(name,), shapes=((n_params,),), offsets=(0,), size=n_params)


def setup_ctx(
    layout: ParamLayout | int = 3,
    *,
    clients: int = 4,
    sizes: Sequence[int] | np.ndarray | None = None,
    num_classes: int = 2,
    seed: int = 0,
    local: LocalHParams | Mapping[str, Any] | None = None,
    num_rounds: int = 5,
    cohort: int | None = None,
    groups: Sequence[int] | np.ndarray | None = None,
    data: Any = None,
    init_params: Any = None,
) -> SetupContext:
    """What ``init`` gets: ``clients`` clients of 10 examples each (or ``sizes``), every one in the
    cohort unless ``cohort`` says fewer; ``layout`` a ParamLayout or a flat vector's length."""
    return SetupContext(
        num_clients=clients,
        client_sizes=np.asarray(sizes if sizes is not None else np.full(clients, 10)),
        layout=layout if isinstance(layout, ParamLayout) else flat_layout(layout),
        num_classes=num_classes,
        seed=seed,
        local=local_knobs(**local) if isinstance(local, Mapping) else (local or local_knobs()),
        num_rounds=num_rounds,
        clients_per_round=cohort if cohort is not None else clients,
        client_groups=None if groups is None else np.asarray(groups),
        data=data,
        init_params=init_params,
    )


def round_ctx(
    t: int,
    available: Sequence[int] | np.ndarray,
    *,
    cohort: int | None = None,
    hparams: LocalHParams | Mapping[str, Any] | None = None,
    rng: np.random.Generator | None = None,
) -> RoundContext:
    """What ``configure_round`` gets in round ``t``: everyone available in the cohort by default."""
    return RoundContext(
        round_idx=t,
        available=list(available),
        cohort_size=cohort if cohort is not None else len(available),
        hparams=as_hparams(hparams),
        rng=rng if rng is not None else np.random.default_rng(0),
    )


def server_ctx(
    t: int,
    *,
    rng: np.random.Generator | None = None,
    hparams: LocalHParams | Mapping[str, Any] | None = None,
    data: Any = None,
) -> ServerContext:
    """What ``aggregate`` gets in round ``t``."""
    return ServerContext(
        round_idx=t,
        rng=rng if rng is not None else np.random.default_rng(0),
        hparams=as_hparams(hparams),
        data=data,
    )


# -- an algorithm's server half, called as the runtime calls it -------------------------------------
def configure(
    algo: Algorithm,
    state: Any,
    t: int,
    available: Sequence[int],
    rng: np.random.Generator | None = None,
    *,
    cohort: int | None = None,
    hparams: LocalHParams | Mapping[str, Any] | None = None,
) -> list[ClientTask]:
    """The tasks of round ``t`` (the state must come back unchanged for these algorithms)."""
    new_state, plan = algo.configure_round(
        state, round_ctx(t, available, cohort=cohort, hparams=hparams, rng=rng)
    )
    assert new_state is state
    plan.check()
    return list(plan.tasks)


def aggregate(
    algo: Algorithm, state: Any, t: int, results: Sequence[Any], rng: np.random.Generator | None = None
) -> tuple[Any, dict[str, float]]:
    return algo.aggregate(state, results, server_ctx(t, rng=rng))


# -- experiments ----------------------------------------------------------------------------------
def experiment(cfg: ExperimentConfig, **kw: Any) -> Experiment:
    """An experiment of ``cfg`` as the entry points build it: the Ray backend handed in
    (``raysim.api.BACKENDS``), no progress view unless ``progress=True``; ``kw``: the constructor's
    other arguments (``share``, ``stop_when``, ``address``, ``run_dir``)."""
    kw.setdefault("progress", False)
    kw.setdefault("backends", BACKENDS)
    return Experiment(cfg, **kw)


def resume(run_dir: Path, **kw: Any) -> Experiment:
    """A stopped run continued from its newest checkpoint, the backend handed in as ``experiment``'s."""
    kw.setdefault("progress", False)
    kw.setdefault("backends", BACKENDS)
    return Experiment.resume(run_dir, **kw)


# -- runs -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ran:
    """A finished run: its summary, its experiment (closed), its tables and (when asked for) every
    client's state at the end."""

    summary: dict[str, Any]
    exp: Experiment
    client_states: dict[int, dict[str, Any]] | None = None

    @property
    def run_dir(self) -> Path:
        assert self.exp.run_dir is not None
        return self.exp.run_dir

    def table(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.run_dir / f"{name}.parquet")

    @property
    def rounds(self) -> pd.DataFrame:
        return self.table("rounds")

    @property
    def clients(self) -> pd.DataFrame:
        return self.table("clients")

    def unpack(self, *names: str) -> tuple[Any, ...]:
        """Fields or tables by name: ``summary, rounds, exp = run(cfg).unpack("summary", "rounds", "exp")``."""
        return tuple(
            getattr(self, n) if hasattr(type(self), n) or n in vars(self) else self.table(n) for n in names
        )


def run(
    cfg: ExperimentConfig, algorithm: Algorithm | None = None, *, client_states: bool = False, **kw: Any
) -> Ran:
    """Run ``cfg`` to the end (with ``algorithm`` in place of the configured one), closing it;
    ``client_states``: keep every client's state at the end (``Ran.client_states``)."""
    exp = experiment(cfg, **kw)
    if algorithm is not None:
        exp.algorithm = algorithm
    try:
        summary = exp.run()
        states = exp._backend().checkpoint()["client_states"] if client_states else None
    finally:
        exp.close()
    return Ran(summary=summary, exp=exp, client_states=states)


def steps(
    cfg: ExperimentConfig,
    *,
    at: int = 2,
    save_to: Path | None = None,
    restore_from: Path | None = None,
    upto: int | None = None,
    lr_from: tuple[int, float] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run ``cfg`` round by round through the step API: saving the whole FL state after round ``at``
    into ``save_to``, or starting from that checkpoint (``restore_from``); switching lr before round
    ``lr_from[0]``; stopping after ``upto``. Returns the rounds' metrics and the cohort rows."""
    exp = experiment(cfg)
    exp.prepare()
    out, rows = [], []
    try:
        if restore_from is not None:
            assert exp.restore(restore_from) == at
        while not exp.should_stop() and (upto is None or exp.next_round <= upto):
            if lr_from is not None and exp.next_round == lr_from[0]:
                exp.set_hparams(lr=lr_from[1])
            report = exp.step()
            out.append(report.metrics)
            rows += [r for r in report.clients if r["participated"]]
            if save_to is not None and exp.next_round - 1 == at:
                exp.save(save_to)
    finally:
        exp.close()
    return pd.DataFrame(out), pd.DataFrame(rows)


def steps_with_checkpoint(
    cfg: ExperimentConfig, *, at: int = 2, save_to: Path | None = None, restore_from: Path | None = None
) -> pd.DataFrame:
    """``steps``' metrics only."""
    return steps(cfg, at=at, save_to=save_to, restore_from=restore_from)[0]
