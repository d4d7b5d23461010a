"""The algorithm protocol (DESIGN section 4) and the records that cross the wire.

An algorithm is a small object with five methods. ``configure_round`` and ``aggregate`` run
on the server (actor or in-process), ``client_update`` runs wherever the client is hosted.
State is an explicit, picklable value returned by ``init``/``aggregate``; randomness always
arrives as an argument.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from raysim.models.flat import ParamLayout, Params

Metrics = dict[str, float]
GradHook = Callable[[Any, Any], None]  # (flat params tensor, flat grad tensor) -> None, edits grad in place


class AlgoParams(BaseModel):
    """Base for each algorithm's own config keys (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, kw_only=True)
class ClientTask:
    """What the server asks of one client this round."""

    client_id: int
    model_key: str  # "global", "cluster/3", "client/17", ...
    hparams: Mapping[str, float] = field(default_factory=dict)
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    broadcast_keys: tuple[str, ...] = ()  # further broadcast arrays this client reads (e.g. "control")


@dataclass(frozen=True, kw_only=True)
class ClientResult:
    client_id: int
    num_examples: int
    delta: Params | None  # local update (new - start)
    metrics: Mapping[str, float] = field(default_factory=dict)
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)

    def upload_bytes(self) -> int:
        n = 0 if self.delta is None else int(self.delta.nbytes)
        return n + sum(int(v.nbytes) for v in self.extras.values())

    def is_finite(self) -> bool:
        arrays = ([] if self.delta is None else [self.delta]) + list(self.extras.values())
        return all(bool(np.isfinite(a).all()) for a in arrays) and all(
            np.isfinite(v) for v in self.metrics.values()
        )

    def without_payload(self) -> ClientResult:
        return ClientResult(
            client_id=self.client_id, num_examples=self.num_examples, delta=None, metrics=self.metrics
        )


FIXED_SCALE = 2.0**32  # fixed-point grid of pre-summed updates: 2^-32 ~ 2.3e-10
CLIENT_LIMIT = 2.0**24  # a client's largest |n * value|; above it the update is refused as divergent
TOTAL_LIMIT = 2.0**30  # largest |sum|: 2^30 * 2^32 = 2^62 keeps int64 sums from overflowing


class UpdateTooLarge(ValueError):
    """A client update whose weighted values leave the fixed-point range (a divergent client)."""


@dataclass(frozen=True, kw_only=True)
class LinearSum:
    """A pre-summed group of results for linear algorithms (one transfer per actor).

    Each client contributes n_i * delta_i (and its extras, unweighted) rounded ONCE to a
    fixed-point grid of 2^-32 and stored as int64. Integer addition is exact and associative,
    so summing on the actors and then on the server gives bit-identical aggregates whatever
    the packing of clients onto actors (float sums would differ in the last bit, and SGD
    amplifies that over rounds). The rounding error, <= 1.2e-10 per client and value, is far
    below float32 resolution of the model.
    """

    num_clients: int
    num_examples: int
    fixed_delta: np.ndarray  # int64, sum_i round(n_i * delta_i * 2^32)
    fixed_extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    bound: float = 0.0  # upper bound on |any summed value|, to refuse overflow

    @property
    def weighted_delta(self) -> np.ndarray:
        """sum_i n_i * delta_i as float64."""
        return self.fixed_delta / FIXED_SCALE

    @property
    def extras(self) -> dict[str, np.ndarray]:
        """Plain sums of the clients' extras as float64."""
        return {k: v / FIXED_SCALE for k, v in self.fixed_extras.items()}

    @staticmethod
    def of(results: Sequence[ClientResult | LinearSum]) -> LinearSum | None:
        total: LinearSum | None = None
        for r in results:
            part = r if isinstance(r, LinearSum) else LinearSum.single(r)
            total = part if total is None else total._add(part)
        return total

    @staticmethod
    def single(r: ClientResult) -> LinearSum:
        if r.delta is None:
            raise ValueError(f"client {r.client_id} returned no update to sum")
        scaled = {"": r.delta.astype(np.float64) * r.num_examples}
        scaled.update({k: v.astype(np.float64) for k, v in r.extras.items()})
        peak = max((float(np.abs(v).max()) if v.size else 0.0) for v in scaled.values())
        if not peak < CLIENT_LIMIT:
            raise UpdateTooLarge(
                f"client {r.client_id}: |examples x update| reaches {peak:.3g} >= {CLIENT_LIMIT:.3g} (diverged?)"
            )
        fixed = {k: np.rint(v * FIXED_SCALE).astype(np.int64) for k, v in scaled.items()}
        delta = fixed.pop("")
        return LinearSum(
            num_clients=1, num_examples=r.num_examples, fixed_delta=delta, fixed_extras=fixed, bound=peak
        )

    def _add(self, other: LinearSum) -> LinearSum:
        bound = self.bound + other.bound
        if bound >= TOTAL_LIMIT:
            raise OverflowError(
                f"pre-summed updates reach {bound:.3g} >= {TOTAL_LIMIT:.3g}: the cohort's updates diverged"
            )
        if set(self.fixed_extras) != set(other.fixed_extras):
            raise ValueError(
                f"cannot sum results with extras {sorted(self.fixed_extras)} and {sorted(other.fixed_extras)}"
            )
        return LinearSum(
            num_clients=self.num_clients + other.num_clients,
            num_examples=self.num_examples + other.num_examples,
            fixed_delta=self.fixed_delta + other.fixed_delta,
            fixed_extras={k: v + other.fixed_extras[k] for k, v in self.fixed_extras.items()},
            bound=bound,
        )

    def upload_bytes(self) -> int:
        return int(self.fixed_delta.nbytes) + sum(int(v.nbytes) for v in self.fixed_extras.values())


@dataclass(frozen=True, kw_only=True)
class SetupContext:
    """What an algorithm learns about the federation when it starts."""

    num_clients: int
    client_sizes: np.ndarray  # training examples per client
    layout: ParamLayout
    num_classes: int
    seed: int
    local: Mapping[str, float]  # resolved local.* knobs (epochs, batch_size, lr, momentum, weight_decay)
    num_rounds: int
    clients_per_round: int
    # ground-truth group per client (-1: none), for clustering metrics
    client_groups: np.ndarray | None = None
    # (params, epochs=, batch_size=, lr=, ...) -> FitResult on the public split no client holds
    # (data.public_fraction > 0), run on the server; None when there is none
    public_fit: Callable[..., Any] | None = None


class ClientContext(Protocol):
    """A hosted client as ``client_update`` sees it (built by the client host)."""

    client_id: int
    num_examples: int
    state: dict[str, Any]  # persists across rounds on the hosting actor (checkpointed)
    broadcast: Mapping[str, np.ndarray]  # every array broadcast this round, by key

    def fit(self, params: Params, *, grad_hook: GradHook | None = None, **hparams: Any) -> Any: ...
    def evaluate(self, params: Params, split: str = "val") -> Any: ...
    def embed(self, params: Params) -> np.ndarray: ...


class Algorithm(Protocol):
    name: ClassVar[str]
    linear: ClassVar[bool]  # True: results may be pre-summed on the client actor (LinearSum)
    client_state: ClassVar[bool]  # True: client.state persists, so a client trains on its home actor only

    def init(self, params: Params, ctx: SetupContext) -> Any: ...
    def configure_round(
        self, state: Any, round_idx: int, available: Sequence[int], rng: np.random.Generator
    ) -> list[ClientTask]: ...
    def client_update(self, task: ClientTask, params: Params, client: ClientContext) -> ClientResult: ...
    def aggregate(
        self,
        state: Any,
        round_idx: int,
        results: Sequence[ClientResult | LinearSum],
        rng: np.random.Generator,
    ) -> tuple[Any, Metrics]: ...
    def models(self, state: Any) -> Mapping[str, Params]: ...
    def personal_params(self, models: Mapping[str, Params], client: ClientContext) -> Params:
        """The model a client is scored with on its local test split (on the hosting actor):
        the broadcast models of the last round plus the client's own state."""
        ...


def sample_cohort(available: Sequence[int], k: int, rng: np.random.Generator) -> list[int]:
    """Uniformly sample min(k, |available|) distinct clients, returned sorted."""
    avail = np.asarray(sorted(available), dtype=np.int64)
    if len(avail) == 0:
        return []
    pick = rng.choice(len(avail), size=min(k, len(avail)), replace=False)
    return sorted(int(c) for c in avail[pick])
