"""Call an algorithm's server half the way the runtime does, from unit tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raysim.algorithms.base import Algorithm, ClientTask, LocalHParams, RoundContext, ServerContext
from raysim.config import ExperimentConfig
from raysim.runtime.experiment import Experiment

HPARAMS = {"lr": 0.1, "epochs": 1, "batch_size": 4}


def configure(
    algo: Algorithm,
    state: Any,
    t: int,
    available: Sequence[int],
    rng: np.random.Generator | None = None,
    *,
    cohort: int | None = None,
    hparams: Mapping[str, float] | None = None,
) -> list[ClientTask]:
    """The tasks of round ``t`` (the state must come back unchanged for these algorithms)."""
    rnd = RoundContext(
        round_idx=t,
        available=list(available),
        cohort_size=cohort if cohort is not None else len(available),
        hparams=LocalHParams.of(**(hparams or HPARAMS)),
        rng=rng if rng is not None else np.random.default_rng(0),
    )
    new_state, plan = algo.configure_round(state, rnd)
    assert new_state is state
    plan.check()
    return list(plan.tasks)


def aggregate(
    algo: Algorithm, state: Any, t: int, results: Sequence[Any], rng: np.random.Generator | None = None
) -> tuple[Any, dict[str, float]]:
    server = ServerContext(
        round_idx=t,
        rng=rng if rng is not None else np.random.default_rng(0),
        hparams=LocalHParams.of(**HPARAMS),
    )
    return algo.aggregate(state, results, server)


def steps_with_checkpoint(
    cfg: ExperimentConfig, *, at: int = 2, save_to: Path | None = None, restore_from: Path | None = None
) -> pd.DataFrame:
    """Run ``cfg`` round by round through the runtime's step API: saving the whole FL state after
    round ``at`` into ``save_to``, or starting from that checkpoint (``restore_from``), so a test can
    compare the rounds after ``at`` of both runs."""
    exp = Experiment(cfg, progress=False)
    exp.prepare()
    try:
        if restore_from is not None:
            assert exp.restore(restore_from) == at
        out = []
        while not exp.should_stop():
            out.append(exp.step().metrics)
            if save_to is not None and exp.next_round - 1 == at:
                exp.save(save_to)
    finally:
        exp.close()
    return pd.DataFrame(out)
