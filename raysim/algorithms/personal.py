"""Personalised-FL baselines that split the model into a personal and a shared part, and the
helpers that tell a client which part is which.

FedPer (Arivazhagan et al. 2019, "Federated Learning with Personalization Layers"): the model is
a shared base and personal layers. The base is averaged by FedAvg (weighted by examples); the
personal layers never leave the client: each client keeps them as client state on its home actor,
trains base + personal layers together every round, and uploads the update of the base only.
pFedHT's comparison (paper 003, Table 1) uses FedPer with the classification head as the personal
layer (``personal: head``). ``personal: qkv`` keeps the self-attention Q/K/V projections of
``vit-tiny`` personal instead: pFedHT *without* its hypernetwork (the paper's "ours*", Table 4 /
Figure 10), where each client's attention projections stay local rather than being generated.

Which entries of the flat vector are personal travels with the broadcast as a tiny array of
``[start, stop)`` ranges (``PERSONAL_RANGES``), because the client side of an algorithm never
sees the model's layout.

The personal part of the *global* vector keeps the shared initialisation: it is what a client
that has never trained starts from and is scored with. FedPer has no single global model (the
server's test metrics are NaN); personalised evaluation scores base + each client's own layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import Field

from raysim.algorithms.aggregate import fedavg_step
from raysim.algorithms.base import (
    GLOBAL,
    AlgoParams,
    Algorithm,
    ClientBatch,
    ClientContext,
    ClientResult,
    ClientTask,
    Family,
    LinearSum,
    Metrics,
    PersonalKeys,
    RoundContext,
    RoundPlan,
    ServerContext,
    SetupContext,
    Traits,
    sample_cohort,
)
from raysim.models.flat import ParamLayout, Params
from raysim.models.vit import personal_mask as qkv_mask

PERSONAL_RANGES = "personal_ranges"  # broadcast key: (r, 2) int64 [start, stop) of the personal entries


def mask_to_ranges(mask: np.ndarray) -> np.ndarray:
    """A boolean mask as its maximal runs of True: an (r, 2) int64 array of [start, stop)."""
    m = np.asarray(mask, dtype=bool).astype(np.int8)
    edges = np.diff(np.concatenate([[0], m, [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return np.stack([starts, stops], axis=1).astype(np.int64)


def ranges_to_mask(ranges: np.ndarray, size: int) -> np.ndarray:
    """The inverse of ``mask_to_ranges`` for a vector of ``size`` entries."""
    return _mask(tuple(map(tuple, np.asarray(ranges, dtype=np.int64).tolist())), int(size)).copy()


@lru_cache(maxsize=8)
def _mask(ranges: tuple[tuple[int, int], ...], size: int) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    for start, stop in ranges:
        if not 0 <= start <= stop <= size:
            raise ValueError(f"personal range [{start}, {stop}) outside a vector of {size} entries")
        mask[start:stop] = True
    mask.setflags(write=False)
    return mask


def head_mask(layout: ParamLayout) -> np.ndarray:
    """True on the parameters of the model's last module (the classification head of every
    registry model: its final Linear layer)."""
    mask = np.zeros(layout.size, dtype=bool)
    _, last = layout.module_blocks()[-1]
    mask[last] = True
    return mask


PARTS = {"head": head_mask, "qkv": qkv_mask}


class FedPerParams(AlgoParams):
    # which parameters stay on the client: the classification head (FedPer as published) or the
    # self-attention Q/K/V projections of vit-tiny (pFedHT without its hypernetwork)
    personal: Literal["head", "qkv"] = "head"
    central_lr: Annotated[float, Field(gt=0)] = 1.0


@dataclass(frozen=True, kw_only=True)
class SplitState:
    params: np.ndarray  # the shared base (personal entries: the shared initialisation)
    ranges: np.ndarray  # PERSONAL_RANGES


class FedPer(Algorithm):
    name: ClassVar[str] = "fedper"
    family: ClassVar[Family] = "personalised"
    test_accuracy_means: ClassVar[str] = (
        "NaN: every client keeps its own head, so there is no single model (read personal_accuracy_mean)"
    )
    params_model: ClassVar[type[AlgoParams]] = FedPerParams
    # the base update is a sum (actors pre-sum it); the personal layers live on the home actor
    traits = Traits(linear=True, client_state=True)

    # -- server ----------------------------------------------------------------------------
    def check_model(self, layout: ParamLayout) -> None:
        self._mask(layout)

    def _mask(self, layout: ParamLayout) -> np.ndarray:
        mask = PARTS[self.p.personal](layout)  # ValueError for qkv on a model without Q/K/V
        if mask.all():
            raise ValueError("fedper: every parameter would be personal; nothing is left to share")
        return mask

    def init(self, params: Params, ctx: SetupContext) -> SplitState:
        mask = self._mask(ctx.layout)
        return SplitState(params=params.astype(np.float32), ranges=mask_to_ranges(mask))

    def configure_round(self, state: SplitState, rnd: RoundContext) -> tuple[SplitState, RoundPlan]:
        cohort = sample_cohort(rnd.available, rnd.cohort_size, rnd.rng)
        tasks = [
            ClientTask(client_id=c, model_key=GLOBAL, hparams=rnd.hparams, broadcast_keys=(PERSONAL_RANGES,))
            for c in cohort
        ]
        return state, RoundPlan(tasks=tasks, broadcast=self.eval_broadcast(state))

    def aggregate(
        self, state: SplitState, results: Sequence[ClientResult | LinearSum], server: ServerContext
    ) -> tuple[SplitState, Metrics]:
        total = LinearSum.of(results)  # sums of the shared entries only
        shared = ~ranges_to_mask(state.ranges, state.params.size)
        params = state.params.copy()
        params[shared] = fedavg_step(state.params[shared], total, self.p.central_lr)
        return replace(state, params=params), {"aggregated_clients": float(total.num_clients if total else 0)}

    def eval_broadcast(self, state: SplitState) -> Mapping[str, np.ndarray]:
        return {GLOBAL: state.params, PERSONAL_RANGES: state.ranges}

    # -- client ----------------------------------------------------------------------------
    def client_update(self, task: ClientTask, params: Params, client: ClientContext) -> ClientResult:
        mask = ranges_to_mask(client.broadcast[PERSONAL_RANGES], params.size)
        start = self.personal_params(client.broadcast, client)
        fit = client.fit(start, grad_hook=None, hparams=task.hparams)
        client.state["personal"] = fit.params[mask]  # committed only if this update is accepted
        return ClientResult(
            client_id=task.client_id,
            num_examples=fit.num_examples,
            delta=(fit.params - start)[~mask],  # the base only: the personal layers never leave
            metrics={"train_loss": fit.loss},
        )

    def personal_params(self, broadcast: Mapping[str, np.ndarray], client: ClientContext) -> Params:
        """The shared base with this client's own personal layers (the initial ones before it
        first trains)."""
        base = np.array(broadcast[GLOBAL], dtype=np.float32)  # a writable copy
        own = client.state.get("personal")
        if own is not None:
            base[ranges_to_mask(broadcast[PERSONAL_RANGES], base.size)] = own
        return base

    def personal_model_keys(self, broadcast: Mapping[str, np.ndarray], clients: ClientBatch) -> PersonalKeys:
        """The shared base for the clients that never trained (no personal layers yet); the others,
        and every client of an algorithm that keeps client buffers (FedBN), their own."""
        if self.traits.client_buffers:
            return PersonalKeys.per_client(len(clients.client_ids))
        return PersonalKeys.shared(GLOBAL, clients.stateless)
