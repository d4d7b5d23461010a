"""Call an algorithm's server half the way the runtime does, from unit tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raysim.algorithms.base import Algorithm, ClientTask, RoundContext, ServerContext

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
        hparams=dict(hparams or HPARAMS),
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
        round_idx=t, rng=rng if rng is not None else np.random.default_rng(0), hparams=dict(HPARAMS)
    )
    return algo.aggregate(state, results, server)
