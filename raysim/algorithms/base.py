"""The algorithm contract (docs/architecture.md, section 3) and the records that cross the wire.

An algorithm is one object whose class declares everything the runtime relies on:

* ``traits`` (a :class:`Traits` record): linear (pre-summable per model key), client state,
  pooled data, a public split on the server. The runtime reads these and nothing else: it never
  probes an algorithm with ``getattr`` and never special-cases one by name.
* server side: ``init`` (the first state), ``configure_round`` (a :class:`RoundPlan`: the tasks
  and exactly the arrays to broadcast this round, which may depend on the cohort),
  ``aggregate`` (with a :class:`ServerContext`: the round's rng and hyperparameters, evaluation
  and fitting on server-held splits, the round's wall-clock), ``server_model`` (what the server
  scores on its test set), ``eval_broadcast`` (what clients need to be scored), ``converged``
  and ``client_annotations``;
* client side (on whichever actor hosts the client): ``client_update``, ``personal_params`` and
  ``personal_adapter``.

State is an explicit, picklable value returned by ``init``/``configure_round``/``aggregate``.
Randomness always arrives as an argument. Client hyperparameters are NOT state: they reach
``configure_round`` every round (``RoundContext.hparams``, a :class:`LocalHParams` record built
from the config's ``local:`` section and any override: a schedule, a Tune/PBT perturbation) and
travel to clients inside each task, so a run restored under a changed learning rate trains with
the new one. An algorithm changes them for a client with ``dataclasses.replace`` (a decayed lr,
a client's own batch size) and hands the record whole to ``ClientContext.fit``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from raysim.models.flat import ParamLayout, Params

if TYPE_CHECKING:
    from raysim.config import LocalConfig

Metrics = dict[str, float]
GradHook = Callable[[Any, Any], None]  # (flat params tensor, flat grad tensor) -> None, edits grad in place
GLOBAL = "global"  # the model key of the one shared model


Family = Literal["global", "clustered", "personalised"]
FAMILIES: tuple[Family, ...] = ("global", "clustered", "personalised")

# the metrics a person reads first, per family (rounds.parquet columns; summary.json's "headline")
FAMILY_HEADLINE: dict[str, tuple[str, ...]] = {
    "global": ("test_accuracy",),
    "clustered": ("personal_accuracy", "cluster_ari", "cluster_nmi", "cluster_clients", "num_clusters"),
    "personalised": ("personal_accuracy_mean", "personal_accuracy_worst10"),
}

# what ``test_accuracy`` measures, per family (summary.md, summary.json, docs/outputs.md); an
# algorithm whose ``server_model`` is something else says so in its own ``test_accuracy_means``
FAMILY_TEST_ACCURACY: dict[str, str] = {
    "global": "the one global model on the global test set (the dataset's test split, which no client holds)",
    "clustered": "the largest cluster's model (the cluster most clients are in) on the global test set, "
    "which is untransformed (e.g. unrotated images, original labels) and so matches few clients' groups: "
    "it can sit near or below chance while the clustering is right. Read personal_accuracy (each "
    "client's own cluster model on its own test split) and cluster_ari instead",
    "personalised": "a shared model on the global test set; NaN when the algorithm has no single model. "
    "Read personal_accuracy_mean (each client's personalised model on its own test split, averaged "
    "over clients) and personal_accuracy_worst10 instead",
}


class AlgoParams(BaseModel):
    """Base for each algorithm's own config keys (unknown keys and non-finite numbers are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


OPTIMIZERS = ("sgd", "adam")
LOSSES = ("cross_entropy", "squared_error")
Optimizer = Literal["sgd", "adam"]
Loss = Literal["cross_entropy", "squared_error"]


@dataclass(frozen=True, kw_only=True)
class LocalHParams:
    """One client's local-training hyperparameters for one fit: the config's ``local:`` knobs as a
    typed record (what the trainer takes whole).

    It has no defaults of its own: ``LocalHParams.of`` builds it from ``config.LocalConfig``, whose
    defaults are the only ones. Change it with ``dataclasses.replace`` (a decayed lr, a mutated
    gene, a Tune/PBT override): every construction, ``replace`` included, coerces the numbers to
    their types and checks the rules no single field can (a known optimizer and loss; momentum is
    an SGD knob), so an impossible combination fails where it is made, not in the trainer. Seven
    plain fields: it pickles in a few hundred bytes and checkpoints field by field (rundir).
    """

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    # "adam": torch.optim.Adam at lr, fresh per fit (momentum must be 0); "sgd": the flat SGD step
    optimizer: Optimizer
    # the training loss; evaluation losses stay cross-entropy (``trainer.training_loss``)
    loss: Loss

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("lr", "momentum", "weight_decay"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; valid names: {', '.join(LOSSES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid names: {', '.join(OPTIMIZERS)}")
        # the one place this rule lives (LocalConfig checks it by building a record)
        if self.optimizer == "adam" and self.momentum > 0:
            raise ValueError(
                f"momentum {self.momentum:g} is an SGD knob and Adam has its own: set local.momentum "
                "to 0 with optimizer 'adam'"
            )

    @classmethod
    def of(cls, local: LocalConfig | None = None, **changes: Any) -> LocalHParams:
        """The record of ``local`` (None: ``LocalConfig()``, whose defaults are the only ones) with
        ``changes`` applied, all validated by ``LocalConfig`` (unknown names, ranges): the one way
        from the config to the record."""
        from raysim.config import LocalConfig

        cfg = local if local is not None else LocalConfig()
        if changes:
            cfg = LocalConfig.model_validate({**cfg.model_dump(), **changes})
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})

    @staticmethod
    def names() -> tuple[str, ...]:
        return tuple(f.name for f in fields(LocalHParams))

    def as_dict(self) -> dict[str, Any]:
        """The plain fields by name (logs, Tune metrics, checkpoints)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def plain_sgd(*, lr: float, epochs: int, batch_size: int) -> LocalHParams:
    """A plain SGD fit (no momentum, no weight decay, cross-entropy) whatever the config says:
    DSAC's eq. (13) fine-tuning step. Spelled out, not defaulted: the step's definition, which a
    changed ``local:`` default must not move."""
    return LocalHParams(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=0.0,
        weight_decay=0.0,
        optimizer="sgd",
        loss="cross_entropy",
    )


@dataclass(frozen=True, kw_only=True)
class Traits:
    """Everything the runtime needs to know about an algorithm, declared in one place."""

    # results may be pre-summed on the client actor, one exact sum per model key (LinearSum)
    linear: bool = False
    # client.state persists across rounds: a client trains on its home actor only, and its state
    # is committed only when its update is accepted (checkpointed with the run)
    client_state: bool = False
    # the runtime pools every shard into one client (the centralised reference point)
    pooled: bool = False
    # the algorithm fits or evaluates on the server's public split: data.public_fraction must be > 0
    public_split: bool = False
    # the option that makes it need the public split, for the config error (e.g. "algorithm.init_from: random")
    public_split_off: str = ""
    # the algorithm keeps each client's module buffers (BatchNorm running statistics) and loads
    # them for every fit and score (``personal_buffers``); a model with buffers needs it, or the
    # statistics would be shared by whichever clients an actor hosts
    client_buffers: bool = False
    # the algorithm reads the federation's ground-truth client groups (an oracle variant): the
    # partition must make at least two (data.partition in GROUP_SCHEMES, data.num_groups >= 2)
    truth_groups: bool = False
    # the option that makes it read them, for the config error (e.g. "algorithm.beta_calibration: fixed")
    truth_groups_off: str = ""


@dataclass(frozen=True, kw_only=True)
class ClientTask:
    """What the server asks of one client this round."""

    client_id: int
    model_key: str  # the broadcast array the client starts from: "global", "cluster/3", "client/17", ...
    hparams: LocalHParams  # this client's lr, batch_size, epochs, ... this round
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    broadcast_keys: tuple[str, ...] = ()  # further broadcast arrays this client reads (e.g. "control")


@dataclass(frozen=True, kw_only=True)
class RoundPlan:
    """One round as the server plans it: the tasks, and exactly the arrays sent this round (every
    task's ``model_key`` and ``broadcast_keys`` must be among them; nothing else is sent)."""

    tasks: Sequence[ClientTask]
    broadcast: Mapping[str, np.ndarray]

    def check(self) -> None:
        """An algorithm bug (a task naming an array that is not broadcast) fails loudly here."""
        for task in self.tasks:
            missing = [k for k in (task.model_key, *task.broadcast_keys) if k not in self.broadcast]
            if missing:
                raise KeyError(
                    f"client {task.client_id}'s task reads {missing}, which the round plan does not "
                    f"broadcast (it broadcasts {sorted(self.broadcast)})"
                )

    def bytes_down(self) -> int:
        """What the cohort downloads: each task's model and further arrays, once per client."""
        return sum(
            sum(int(self.broadcast[k].nbytes) for k in (t.model_key, *t.broadcast_keys)) for t in self.tasks
        )


@dataclass(frozen=True, kw_only=True)
class ClientResult:
    client_id: int
    num_examples: int
    delta: Params | None  # local update (new - start) of the model named by model_key
    model_key: str = GLOBAL  # which model the delta updates (IFCA: the cluster model the client chose)
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
            client_id=self.client_id,
            num_examples=self.num_examples,
            delta=None,
            model_key=self.model_key,
            metrics=self.metrics,
        )


FIXED_SCALE = 2.0**32  # fixed-point grid of pre-summed updates: 2^-32 ~ 2.3e-10
CLIENT_LIMIT = 2.0**24  # a client's largest |n * value|; above it the update is refused as divergent
TOTAL_LIMIT = 2.0**30  # largest |sum|: 2^30 * 2^32 = 2^62 keeps int64 sums from overflowing


class UpdateTooLarge(ValueError):
    """A client update whose weighted values leave the fixed-point range (a divergent client)."""


@dataclass(frozen=True, kw_only=True)
class LinearSum:
    """A pre-summed group of results for one model key (one transfer per actor and key).

    Each client contributes n_i * delta_i (and its extras, unweighted) rounded ONCE to a
    fixed-point grid of 2^-32 and stored as int64. Integer addition is exact and associative,
    so summing on the actors and then on the server gives bit-identical aggregates whatever
    the packing of clients onto actors (float sums would differ in the last bit, and SGD
    amplifies that over rounds). The rounding error, <= 1.2e-10 per client and value, is far
    below float32 resolution of the model. Sums never mix model keys (``sum_by_key``).
    """

    num_clients: int
    num_examples: int
    fixed_delta: np.ndarray  # int64, sum_i round(n_i * delta_i * 2^32)
    model_key: str = GLOBAL
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
    def of(results: Iterable[ClientResult | LinearSum]) -> LinearSum | None:
        """The exact sum of results that all update the same model (None for no results); results
        whose update was already pre-summed (``delta`` None) are skipped."""
        total: LinearSum | None = None
        for r in results:
            if isinstance(r, ClientResult) and r.delta is None:
                continue
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
            num_clients=1,
            num_examples=r.num_examples,
            fixed_delta=delta,
            model_key=r.model_key,
            fixed_extras=fixed,
            bound=peak,
        )

    def _add(self, other: LinearSum) -> LinearSum:
        if other.model_key != self.model_key:
            raise ValueError(
                f"cannot sum updates of model {self.model_key!r} with updates of {other.model_key!r} "
                "(use sum_by_key)"
            )
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
            model_key=self.model_key,
            fixed_extras={k: v + other.fixed_extras[k] for k, v in self.fixed_extras.items()},
            bound=bound,
        )

    def minus(self, part: LinearSum) -> LinearSum:
        """This sum without ``part`` (one of the results summed into it): exact, because the sums
        are integers, so the result equals a sum that never included ``part`` (a quarantined
        client's update is withdrawn this way after its host pre-summed it)."""
        if part.model_key != self.model_key or set(part.fixed_extras) != set(self.fixed_extras):
            raise ValueError(
                f"cannot withdraw an update of {part.model_key!r} from a sum of {self.model_key!r}"
            )
        if part.num_clients > self.num_clients:
            raise ValueError(f"cannot withdraw {part.num_clients} clients from a sum of {self.num_clients}")
        return LinearSum(
            num_clients=self.num_clients - part.num_clients,
            num_examples=self.num_examples - part.num_examples,
            fixed_delta=self.fixed_delta - part.fixed_delta,
            model_key=self.model_key,
            fixed_extras={k: v - part.fixed_extras[k] for k, v in self.fixed_extras.items()},
            bound=self.bound,
        )

    def upload_bytes(self) -> int:
        return int(self.fixed_delta.nbytes) + sum(int(v.nbytes) for v in self.fixed_extras.values())


def sum_by_key(results: Iterable[ClientResult | LinearSum]) -> dict[str, LinearSum]:
    """One exact sum per model key, keys sorted (results without an update are skipped)."""
    groups: dict[str, list[ClientResult | LinearSum]] = {}
    for r in results:
        if isinstance(r, ClientResult) and r.delta is None:
            continue
        groups.setdefault(r.model_key, []).append(r)
    out = {}
    for key in sorted(groups):
        total = LinearSum.of(groups[key])
        assert total is not None
        out[key] = total
    return out


class ServerData(Protocol):
    """Server-held data an algorithm may use in ``init`` and ``aggregate``.

    ``"public"`` is the split no client holds (``data.public_fraction`` > 0): pre-training, proxy
    evaluation (AS-CFL's positive-incentive test). ``"test"`` is the global test set, there for
    reporting: deciding anything on it leaks the test set into training.
    """

    def splits(self) -> tuple[str, ...]: ...
    def evaluate(self, params: Params, split: str = "public") -> Any: ...
    def fit(self, params: Params, split: str = "public", *, hparams: LocalHParams) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class SetupContext:
    """What an algorithm learns about the federation when it starts."""

    num_clients: int
    client_sizes: np.ndarray  # training examples per client
    layout: ParamLayout
    num_classes: int
    seed: int
    local: LocalHParams  # the config's local.* knobs, for set-up work only (e.g. pre-training)
    num_rounds: int
    clients_per_round: int
    # ground-truth group per client (-1: none), for clustering metrics
    client_groups: np.ndarray | None = None
    # fit/evaluate on server-held splits; None when the runtime gives none (unit tests)
    data: ServerData | None = None
    # a fresh initialisation of the run's model under the given seed (the model registry's init,
    # as for the run's initial model), for an algorithm that starts further models independently
    # (IFCA); None when the runtime gives none (unit tests)
    init_params: Callable[[int], Params] | None = None


@dataclass(frozen=True, kw_only=True)
class RoundContext:
    """What ``configure_round`` gets: who may train and with which hyperparameters."""

    round_idx: int
    available: np.ndarray  # sorted int64 ids of the clients that can train (lost ones excluded)
    cohort_size: int  # rounds.clients_per_round (capped at the federation)
    hparams: LocalHParams  # this round's client hyperparameters (local.* and any override)
    rng: np.random.Generator  # a function of (seed, round) only

    def __post_init__(self) -> None:  # any sequence of ids (tests, hand-made contexts) as an array
        object.__setattr__(self, "available", np.asarray(self.available, dtype=np.int64).reshape(-1))


@dataclass(frozen=True, kw_only=True)
class ServerContext:
    """What ``aggregate`` gets besides the results."""

    round_idx: int
    rng: np.random.Generator  # a function of (seed, round) only
    hparams: LocalHParams
    data: ServerData | None = None
    round_started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        """Seconds since the round started (wall-clock)."""
        return time.perf_counter() - self.round_started

    def evaluate(self, params: Params, split: str = "public") -> Any:
        if self.data is None:
            raise RuntimeError("this server has no data to evaluate on")
        return self.data.evaluate(params, split)

    def fit(self, params: Params, split: str = "public", *, hparams: LocalHParams) -> Any:
        if self.data is None:
            raise RuntimeError("this server has no data to fit on")
        return self.data.fit(params, split, hparams=hparams)


class ClientContext(Protocol):
    """A hosted client as ``client_update`` sees it (built by the client host)."""

    client_id: int
    num_examples: int
    state: dict[str, Any]  # persists across rounds on the home actor (checkpointed); Traits.client_state
    broadcast: Mapping[str, np.ndarray]  # every array broadcast this round, by key

    # ``buffers``: the client's own module buffers (BatchNorm running statistics; {}: the model's
    # initial ones) loaded before training/scoring, and returned on the FitResult; None: the host's
    # reused module keeps whatever buffers it has
    def fit(
        self,
        params: Params,
        *,
        hparams: LocalHParams,
        grad_hook: GradHook | None = None,
        buffers: Mapping[str, np.ndarray] | None = None,
        adapter: Any = None,  # (scale, shift) input map trained with the model (DSAC eq. 10); None: none
    ) -> Any: ...
    # ``limit``: score on at most that many of the split's examples, a fixed evenly spaced subset
    # (``subset_positions``); None: all of them
    def evaluate(
        self,
        params: Params,
        split: str = "val",
        *,
        buffers: Mapping[str, np.ndarray] | None = None,
        limit: int | None = None,
    ) -> Any: ...
    def embed(self, params: Params) -> np.ndarray: ...


@dataclass(frozen=True, eq=False)
class ClientColumns(Mapping[int, Mapping[str, Any]]):
    """Per-client annotations (``Algorithm.client_annotations``), column-wise: one array per
    column, one entry per annotated client, sorted by client id. Every in-tree algorithm returns
    one (a round at 10^5 clients costs arrays, not 10^5 dicts); the runtime reads the columns.

    It is also a read-only ``Mapping`` client id -> {column: value} (``notes[cid]``, ``==`` a dict
    of dicts) whose values are Python scalars (``float`` for a float64 column), so a test or a
    plug-in that reads annotations as dicts still can. A sparse column (a value only for some of
    the annotated clients) carries a ``present`` mask; a client's dict then lacks that key where
    the mask is False."""

    client_id: np.ndarray  # int64, sorted, distinct
    columns: Mapping[str, np.ndarray]  # name -> array of len(client_id)
    present: Mapping[str, np.ndarray] = field(default_factory=dict)  # sparse column -> bool mask

    def __post_init__(self) -> None:
        n = len(self.client_id)
        for name, col in [*self.columns.items(), *self.present.items()]:
            if len(col) != n:
                raise ValueError(f"annotation column {name!r} has {len(col)} values for {n} clients")
        if n > 1 and not bool((self.client_id[1:] > self.client_id[:-1]).all()):
            raise ValueError("ClientColumns.client_id must be sorted and distinct")

    @classmethod
    def of(cls, columns: Mapping[str, Any], client_id: Any = None) -> ClientColumns:
        """Columns of equal length; ``client_id`` None: clients 0..n-1 (a per-client state array)."""
        cols = {k: np.asarray(v) for k, v in columns.items()}
        if client_id is None:
            n = len(next(iter(cols.values()))) if cols else 0
            ids = np.arange(n, dtype=np.int64)
        else:
            ids = np.asarray(client_id, dtype=np.int64)
        return cls(client_id=ids, columns=cols)

    @classmethod
    def from_mapping(cls, notes: Mapping[int, Mapping[str, Any]]) -> ClientColumns:
        """A plug-in's dict of dicts, its values kept as they are (object columns; O(N) Python,
        as the dicts already are). Columns in order of first appearance over sorted client ids."""
        if isinstance(notes, ClientColumns):
            return notes
        ids = sorted(int(c) for c in notes)
        rows = [notes[c] for c in ids]
        names: dict[str, None] = {}
        for r in rows:
            names.update(dict.fromkeys(r))
        columns: dict[str, np.ndarray] = {}
        present: dict[str, np.ndarray] = {}
        for name in names:
            col = np.empty(len(rows), dtype=object)
            col[:] = [r.get(name) for r in rows]
            columns[name] = col
            has = np.fromiter((name in r for r in rows), bool, len(rows))
            if not has.all():
                present[name] = has
        return cls(client_id=np.asarray(ids, dtype=np.int64), columns=columns, present=present)

    def has(self, name: str) -> np.ndarray:
        """Which annotated clients have a value in column ``name`` (bool, per client)."""
        if name not in self.columns:
            return np.zeros(len(self.client_id), dtype=bool)
        mask = self.present.get(name)
        return np.ones(len(self.client_id), dtype=bool) if mask is None else np.asarray(mask, bool)

    def positions(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """Each of ``ids``' row (clipped to a valid one) and whether it is annotated at all."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self.client_id):
            return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
        pos = np.minimum(np.searchsorted(self.client_id, ids), len(self.client_id) - 1)
        return pos, self.client_id[pos] == ids

    def rows_for(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """The annotation dict of each of ``ids`` ({} for one not annotated): O(len(ids))."""
        pos, hit = self.positions(ids)
        values = {k: col[pos].tolist() for k, col in self.columns.items()}
        masks = {k: np.asarray(m, bool)[pos].tolist() for k, m in self.present.items()}
        out: list[dict[str, Any]] = []
        for i, ok in enumerate(hit.tolist()):
            if not ok:
                out.append({})
                continue
            out.append({k: v[i] for k, v in values.items() if k not in masks or masks[k][i]})
        return out

    def __getitem__(self, cid: int) -> dict[str, Any]:
        pos, hit = self.positions([cid])
        if not hit[0]:
            raise KeyError(cid)
        return self.rows_for([cid])[0]

    def __iter__(self) -> Iterator[int]:
        return iter(self.client_id.tolist())

    def __len__(self) -> int:
        return len(self.client_id)


@dataclass(frozen=True, eq=False)
class BatchEval:
    """Per-client figures of one model on many clients' splits (``ClientBatch.evaluate``), one
    entry per client of the batch, in its order: examples, correct predictions and the sum of the
    examples' cross-entropies (float64 sums of float32 per-example losses)."""

    n: np.ndarray  # int64
    correct: np.ndarray  # int64
    loss_sum: np.ndarray  # float64

    @property
    def loss(self) -> np.ndarray:
        """The mean loss of each client (0 where it has no examples, as ``Trainer.evaluate``)."""
        return self.loss_sum / np.maximum(self.n, 1)


class ClientBatch(Protocol):
    """Many hosted clients at once, for deciding which model each is scored with
    (``Algorithm.personal_model_keys``) without building one client object each."""

    client_ids: np.ndarray  # int64, sorted
    stateless: np.ndarray  # bool per client: its persistent state is empty (it never trained, or keeps none)

    def evaluate(self, params: Params, split: str = "val", *, limit: int | None = None) -> BatchEval:
        """``params`` on every client's ``split`` ("train", "val", "test") in one batched pass
        (``limit``: on each client's ``subset_positions`` of it, as ``ClientContext.evaluate``)."""
        ...


def subset_positions(n: int | np.ndarray, limit: int | None) -> np.ndarray:
    """The positions, within a split of ``n`` examples, that a score with ``limit`` reads: all
    of them when ``limit`` is None or >= n, else ``limit`` evenly spaced ones, (i * n) // limit for
    i < limit (a fixed subset, no randomness; spread over the split whatever order it is in).
    ``n`` an array: the positions of every split, concatenated."""
    sizes = np.atleast_1d(np.asarray(n, dtype=np.int64))
    take = sizes if limit is None else np.minimum(sizes, int(limit))
    ends = np.cumsum(take)
    k = np.arange(int(take.sum()), dtype=np.int64) - np.repeat(ends - take, take)
    if limit is None:
        return k
    return (k * np.repeat(sizes, take)) // np.maximum(np.repeat(take, take), 1)


PER_CLIENT = -1  # PersonalKeys.which: the client is scored through ``personal_params``


@dataclass(frozen=True, eq=False)
class PersonalKeys:
    """Which broadcast model each client of a ``ClientBatch`` is scored with, unchanged and with no
    adapter or buffers of its own: ``keys[which[i]]``; ``which[i] == PER_CLIENT`` sends client i
    through the per-client path (``personal_params``, ``personal_adapter``, ``personal_buffers``)."""

    keys: tuple[str, ...]
    which: np.ndarray  # int64, one per client of the batch

    @staticmethod
    def per_client(n: int) -> PersonalKeys:
        return PersonalKeys(keys=(), which=np.full(n, PER_CLIENT, dtype=np.int64))

    @staticmethod
    def by_label(labels: np.ndarray, key_of: Callable[[int], str]) -> PersonalKeys:
        """Client i scored with model ``key_of(labels[i])`` (a cluster id, say), every client shared."""
        uniq, inverse = np.unique(np.asarray(labels, dtype=np.int64), return_inverse=True)
        return PersonalKeys(
            keys=tuple(key_of(int(u)) for u in uniq), which=inverse.astype(np.int64).reshape(-1)
        )

    @staticmethod
    def shared(key: str, mask: np.ndarray) -> PersonalKeys:
        """``key`` for the clients where ``mask`` is true, the per-client path for the others."""
        return PersonalKeys(keys=(key,), which=np.where(mask, 0, PER_CLIENT).astype(np.int64))


class Algorithm(ABC):
    """Base of every algorithm: the declared contract, with defaults for the optional parts.

    Subclasses set ``name``, ``params_model``, ``traits`` and ``family`` (optionally ``headline``
    and ``test_accuracy_means``; see ``FAMILY_HEADLINE``) (an instance may set ``self.traits``
    in ``__init__`` when a trait depends on its parameters) and implement the four abstract
    methods ``init``, ``configure_round``, ``client_update`` and ``aggregate`` (a class missing one
    cannot be instantiated, so the gap shows at start-up, not in round 1).
    """

    name: ClassVar[str] = ""
    params_model: ClassVar[type[AlgoParams]] = AlgoParams
    traits: Traits = Traits()
    # what kind of result the algorithm produces: one global model, cluster models, or a model
    # per client; it picks the headline metrics and what test_accuracy means (``FAMILY_*``)
    family: ClassVar[Family] = "global"
    # the rounds.parquet columns summary.json/summary.md and the progress line lead with;
    # () means the family's (``FAMILY_HEADLINE``)
    headline: ClassVar[tuple[str, ...]] = ()
    # what test_accuracy measures for this algorithm; "" means the family's (``FAMILY_TEST_ACCURACY``)
    test_accuracy_means: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A misspelt family or a headline that is not a tuple of names fails where the class is
        defined (a plug-in: when the config names it), not when the finished run is summarised."""
        super().__init_subclass__(**kwargs)
        if cls.family not in FAMILIES:
            raise TypeError(f"{cls.__qualname__}.family is {cls.family!r}; use one of {', '.join(FAMILIES)}")
        if not isinstance(cls.headline, tuple) or not all(isinstance(m, str) for m in cls.headline):
            raise TypeError(
                f"{cls.__qualname__}.headline must be a tuple of rounds.parquet column names, "
                f"got {cls.headline!r}"
            )

    @classmethod
    def headline_metrics(cls) -> tuple[str, ...]:
        """The metric names a person reads first for this algorithm."""
        return cls.headline or FAMILY_HEADLINE[cls.family]

    @classmethod
    def test_accuracy_meaning(cls) -> str:
        """One sentence: what this algorithm's ``test_accuracy`` measures."""
        return cls.test_accuracy_means or FAMILY_TEST_ACCURACY[cls.family]

    def __init__(self, params: AlgoParams | None = None) -> None:
        self.p: Any = params if params is not None else self.params_model()

    def ignored_config_keys(self) -> frozenset[str]:
        """Dotted config keys (``local.<field>``) that this algorithm, with these parameters,
        never reads: it sets that client hyperparameter itself in every task (e.g. a learning
        rate drawn per client). Varying one changes nothing, so ``raysim tune`` refuses a knob
        named here; what the clients trained with is each round's ``RoundReport.hparams``.
        Default: none (every ``local.*`` key reaches the tasks)."""
        return frozenset()

    # -- server ----------------------------------------------------------------------------
    @abstractmethod
    def init(self, params: Params, ctx: SetupContext) -> Any:
        """Implemented by every algorithm."""

    @abstractmethod
    def configure_round(self, state: Any, rnd: RoundContext) -> tuple[Any, RoundPlan]:
        """Implemented by every algorithm."""

    @abstractmethod
    def aggregate(
        self, state: Any, results: Sequence[ClientResult | LinearSum], server: ServerContext
    ) -> tuple[Any, Metrics]:
        """``results``: one ``ClientResult`` per accepted client (its metrics, model key and
        extras); for linear algorithms also the pre-summed ``LinearSum``s (one per actor and model
        key), and then a client's ``delta`` is None when its update is inside a sum."""

    def server_model(self, state: Any) -> Params | None:
        """The model the server scores on its test set; None when there is no single global model
        (local training, clustered models: the test metrics are then NaN)."""
        return None

    def eval_broadcast(self, state: Any) -> Mapping[str, np.ndarray]:
        """The arrays clients need for their personalised evaluation (default: the server model)."""
        model = self.server_model(state)
        return {} if model is None else {GLOBAL: model}

    def converged(self, state: Any) -> bool:
        """True once the algorithm wants no more rounds (the run stops early)."""
        return False

    def client_annotations(self, state: Any) -> Mapping[int, Mapping[str, Any]]:
        """Per-client columns for clients.parquet this round (e.g. cluster id, weight): a
        :class:`ClientColumns` (arrays, what the runtime reads without a per-client object) or,
        from a plug-in, any mapping client id -> {column: value}. A ``"cluster"`` column puts the
        clients in clusters (clusters.parquet, rounds.parquet's cluster_* columns)."""
        return {}

    # -- client ----------------------------------------------------------------------------
    @abstractmethod
    def client_update(self, task: ClientTask, params: Params, client: ClientContext) -> ClientResult:
        """Implemented by every algorithm."""

    def personal_params(self, broadcast: Mapping[str, np.ndarray], client: ClientContext) -> Params:
        """The model a client is scored with on its local test split (on the hosting actor), from
        ``eval_broadcast`` and the client's own state. Default: the global model."""
        return broadcast[GLOBAL]

    def personal_model_keys(self, broadcast: Mapping[str, np.ndarray], clients: ClientBatch) -> PersonalKeys:
        """Which ``broadcast`` model each client is scored with, for the clients whose
        ``personal_params`` would be exactly that array with no adapter and no buffers of their own:
        those are scored in one batched pass per model (and input rotation) instead of one small
        forward pass each. It must agree with ``personal_params``; a client it leaves to the
        per-client path (``PER_CLIENT``) is scored as before.

        Default: the global model for every client when the class keeps the base
        ``personal_params``, ``personal_adapter`` and ``personal_buffers`` (FedAvg-like
        algorithms); otherwise every client goes the per-client path (always right, only slower).
        """
        cls = type(self)
        plain = (
            cls.personal_params is Algorithm.personal_params
            and cls.personal_adapter is Algorithm.personal_adapter
            and cls.personal_buffers is Algorithm.personal_buffers
            and not self.traits.client_buffers
        )
        n = len(clients.client_ids)
        if plain and GLOBAL in broadcast:
            return PersonalKeys.shared(GLOBAL, np.ones(n, dtype=bool))
        return PersonalKeys.per_client(n)

    def personal_adapter(self, client: ClientContext) -> Any:
        """A per-client input map applied when the client is scored (DSAC eq. 10); None: none."""
        return None

    def check_model(self, layout: ParamLayout) -> None:
        """Raise ValueError (naming what the model lacks and which model to use) when this
        algorithm, as configured, cannot run on a model with ``layout``. Called at config time
        (``raysim validate`` included), before anything starts. Default: any model serves."""
        return None

    def personal_buffers(self, client: ClientContext) -> Mapping[str, np.ndarray] | None:
        """The client's own module buffers (FedBN's local BatchNorm statistics) loaded when it is
        scored; {}: the model's initial buffers; None: the host's module keeps its own."""
        return None


def sample_cohort(available: Sequence[int] | np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """Uniformly sample min(k, |available|) distinct clients, returned sorted (as Python ints)."""
    avail = np.asarray(available, dtype=np.int64)
    if len(avail) > 1 and not bool((avail[1:] > avail[:-1]).all()):  # the runtime's are sorted already
        avail = np.sort(avail)
    if len(avail) == 0:
        return []
    pick = rng.choice(len(avail), size=min(k, len(avail)), replace=False)
    return sorted(int(c) for c in avail[pick])
