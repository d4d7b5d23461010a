"""Genetic clustered FL: the notebook "Final Project Simulation" (paper 001, docs/papers.md).

Every client carries its own local learning rate and batch size. The clients are grouped once by
DBSCAN (eps 0.15, min_samples 2) on their normalised hyperparameters, and every round each group
runs one generation of a genetic search: its members are ranked by their last validation loss,
the best ``keep_top_k`` (2) keep their (lr, batch) and every other member gets the learning rate
of a random member mutated by +-10% (or kept) and the batch size of another random member. The
clients then train the global model locally (Adam, 2 epochs) with their own hyperparameters and
the server averages ALL clients' models into one global model (FedAvg). Clustering only steers
the hyperparameter search: there is one shared model.

The notebook's pieces and where they are here
---------------------------------------------
* Initial hyperparameters (In [12]): ``batch = round(2^(4 + 3U))`` (16..128) and
  ``lr = 10^(-3 - 4U)`` (1e-7..1e-3), U uniform on [0, 1), batches drawn first, both from a
  generator seeded by the run seed (``notebook_init``); ``init: "random"``.
* Features (In [13]): ``((log10 lr + 3) / -4, (log2 batch - 4) / 3)``, which maps the initial
  ranges onto [0, 1]^2 (``features``). The notebook prints that array but fits DBSCAN on
  ``(log10 lr - 3) / 4``: a constant shift and a sign flip of the first coordinate, so the
  pairwise distances and hence the clusters are the same.
* ``mutate`` (In [21]): ``lr + (lr / 10) * d``, d uniform on {-1, 0, +1}; here
  ``lr * (1 + mutation_scale * d)``.
* ``crossover`` (In [22]) on a list sorted best first: the first two entries are kept, every later
  entry i gets ``mutate(lrs[a])`` and ``batches[b]`` with a, b independent uniform indices over
  the WHOLE sorted list (the parents may be any member, the entry itself included).
* ``evolve`` (In [23]): sort by loss, then ``crossover``.
* Local training (In [24]): Adam at the client's lr, 2 epochs at the client's batch size, the
  validation loss after the last epoch recorded for the next ranking.
* Aggregation (In [29]): the average of every client's model.

Where this implementation departs from the notebook, and why
-------------------------------------------------------------
* Validation, not test: the notebook ranks clients by ``val_loss`` computed on the global TEST set
  (``validation_data=(X_test, y_test)``), so the hyperparameter search selects on the test set and
  its reported test accuracy is optimistic. Here each client ranks on its own validation split
  (``client.evaluate(params, "val")`` of its locally trained model; the training split when the
  validation split is empty, ``data.val_fraction: 0``). The server's test set is never consulted.
* Which model trains: the notebook's ``train_client`` clones the server model with a fresh
  ``Adam(lr)`` and then calls ``model.fit`` on the SERVER model, not the clone. So the per-client
  learning rate is never used (the server model's single Adam at Keras' default 1e-3, whose state
  persists across clients and rounds, does the training), the clients train one after another on
  the same model, and the "client models" averaged are pre-training snapshots. Here each client
  trains a copy of the global model with a FRESH ``torch.optim.Adam(lr=its lr)`` (default betas,
  eps 1e-8 where Keras uses 1e-7), as ``model_cloner`` intends; the cross-entropy loss replaces the
  clones' ``binary_crossentropy`` on one-hot labels. The same bug hits the notebook's FL baseline
  (In [34]): its "fixed lr 1e-4" is passed to the clone, while the server model trains with Adam at
  1e-3; so the notebook's two arms differ only in their batch sizes, and its result (the round-10
  cell: 0.7642 vs 0.7567, +0.75 points; 0.770 is genetic CFL's round-7 peak) is no evidence about
  learning rates. ``configs/fedavg_genetic_baseline_fmnist.yaml`` runs the
  baseline as intended (Adam at 1e-4, batch 32, via ``local.optimizer: adam``).
* Who keeps what: the notebook hands the sorted, evolved list back to the cluster's members in
  client-index order (``lr_id``), so the best pair moves to the lowest-index member rather than
  staying with the client that earned it. Here the ``keep_top_k`` best clients keep their own
  (lr, batch) unchanged and only the others are re-drawn (``evolve`` returns results in the input
  order).
* Noise points: the notebook indexes its clusters by ``yhat + flag``, so every DBSCAN noise point
  (label -1) lands in ONE extra group. Here each noise point is its own group by default (a
  singleton group never changes: its one member is its own elite); ``noise: "group"`` restores the
  notebook's single noise group.
* Sampling: the notebook has 30 clients (``NUM_CLIENTS = int(100 * 0.3)``) and trains all of them
  every round. Here ``rounds.clients_per_round`` clients are sampled per round (uniformly, by
  ``sample_cohort``; a FedAvg baseline with the same seed samples the same cohorts). The ranking
  uses each member's LAST validation loss, however old; a client never measured (never sampled,
  or only dropped out) keeps its current hyperparameters and is neither ranked nor a parent.
  Ranking mixes losses measured against different global models (older losses are usually
  higher), which the notebook, where everyone reports every round, never had to face.
  Note: with 100 clients the notebook's eps 0.15 on [0, 1]^2 percolates into one or two large
  clusters (about 7 neighbours per point): on seeds 0-9 the largest group holds 87 to 100 of the
  100 clients (1 to 3 groups), so at that size this is one FedAvg population with a genetic lr
  search, not clustered FL. The notebook's 30 clients gave 5 clusters and 3 noise points in its
  printed run (with ``noise: "group"`` 6 groups; seeds 0-9 here: 5 to 11 groups, the largest 5 to
  14 clients). ``configs/genetic_cfl_notebook.yaml`` is the notebook's own setting. The metric
  ``groups`` (rounds.parquet) is each run's count.
* Clustering happens once, as in the notebook (on the initial hyperparameters; with
  ``init: "grid"`` after the search round), and the groups stay fixed while the
  hyperparameters evolve.
* Aggregation is weighted by examples (``fedavg_step``); the notebook's plain mean is the same
  for equal shard sizes.
* Learning rates stay in [lr_min, lr_max] (1e-8, 1.0 by default; initial draws, grid points and
  offspring are clipped); ``mutation_scale < 1`` keeps every mutation positive. Batch sizes are
  only ever copied from members, so they stay within the initial range.
* Divergence: a client whose training yields non-finite parameters or validation loss sends no
  update (``delta`` None, metric ``diverged``) and is recorded with validation loss +inf, so it
  ranks last and is replaced at the next generation (a dropped update would leave it unranked).

Initialisation from a grid (``init: "grid"``), the notebook's In [8]/[10]
-----------------------------------------------------------------------
Each client draws ``grid_pick_lrs`` (3) distinct learning rates from ``grid_lrs``
(0.1 .. 1e-6) and ``grid_pick_batches`` (2) distinct batch sizes from ``grid_batch_sizes``
(16, 32, 64, 128) at set-up (seeded). The FIRST round is a search round over EVERY available
client (the cohort size is ignored, as every client of the notebook ran its initial training):
each client trains a copy of the global model for ``grid_epochs`` (1) epoch(s) at each of its
3 x 2 grid points (batch-major order, the same shuffling seed for each), keeps the point with the
lowest validation loss (ties: first), and sends that point's model as its update; the server
averages those into the global model (as the notebook averages the best initial models), records
each client's chosen (lr, batch) and loss, and only then clusters. A client whose search failed
keeps a notebook draw (``notebook_init``). This round costs 6 x ``grid_epochs`` local epochs per
client. (The notebook then overwrote the grid's choices with the random draws of In [12] while
keeping the grid's losses, and its ``train_client_initial`` trained ``models[i]`` by the
learning-rate index, so half its candidates were never trained; neither is reproduced.)

Knobs and the config's ``local.*``
----------------------------------
The per-client lr and batch size always override ``local.lr`` and ``local.batch_size`` (which
this algorithm ignores, as does a sweep over them); ``epochs`` (2) overrides ``local.epochs``
unless set to null; ``optimizer`` (adam) overrides ``local.optimizer``. ``local.momentum``
(SGD only: it must be 0 with Adam) and ``local.weight_decay`` pass through. Each task's
``hparams`` carry the client's lr, batch size, epochs and optimizer; ``ignored_config_keys`` names
the ``local.*`` keys it replaces, so ``raysim tune`` refuses them as knobs (a PBT ``lr_key:
local.lr`` would label identical trials apart), and a sweep's ``hparams/lr_cohort_mean`` (min,
max) records the per-client learning rates the cohort trained with (except in the ``init: "grid"``
search round, where each client trains its whole grid from the task's extras: that round's
summary is of the tasks' initial draws).

State and outputs
-----------------
The state (``GeneticCFLState``) is numpy arrays: checkpoints save and restore it exactly, and a
generation draws from the round's generator (after the cohort), so a restored run continues
identically. ``client_annotations`` put each participant's lr, batch size, group, last validation
loss and role (elite / re-drawn at this round's generation) into clients.parquet: the values it
TRAINED with that round (a generation runs at the start of the next round).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from numpy.typing import ArrayLike
from pydantic import Field, model_validator

from raysim.algorithms.aggregate import fedavg_step
from raysim.algorithms.base import (
    GLOBAL,
    AlgoParams,
    Algorithm,
    ClientColumns,
    ClientContext,
    ClientResult,
    ClientTask,
    Family,
    LinearSum,
    Metrics,
    RoundContext,
    RoundPlan,
    ServerContext,
    SetupContext,
    Traits,
    sample_cohort,
)
from raysim.clustering import dbscan
from raysim.models.flat import Params

SALT_INIT = 0x6E7C  # RNG purpose of the initial hyperparameters
GRID_LRS, GRID_BATCHES = "grid_lrs", "grid_batches"  # task extras of the search round
# role of a client at the latest generation
UNRANKED, ELITE, REDRAWN = 0, 1, 2


# -- pure functions (tested on a fixed generator) ---------------------------------------------
def notebook_init(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The notebook's In [12]: batch = round(2^(4 + 3U)), then lr = 10^(-3 - 4U), U ~ U[0, 1)."""
    batch = np.rint(2.0 ** (rng.random(n) * 3.0 + 4.0)).astype(np.int64)
    lr = 10.0 ** (rng.random(n) * -4.0 - 3.0)
    return lr, batch


def features(lr: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """The notebook's normalised (log10 lr, log2 batch): the initial ranges map onto [0, 1]^2."""
    lr = np.asarray(lr, dtype=np.float64)
    batch = np.asarray(batch, dtype=np.float64)
    return np.column_stack([(np.log10(lr) + 3.0) / -4.0, (np.log2(batch) - 4.0) / 3.0])


def group_clients(
    lr: np.ndarray,
    batch: np.ndarray,
    *,
    eps: float = 0.15,
    min_samples: int = 2,
    noise: Literal["singletons", "group"] = "singletons",
) -> tuple[np.ndarray, np.ndarray]:
    """(group id per client, noise mask): DBSCAN's clusters keep their labels 0..m-1; each noise
    point becomes its own group m, m+1, ... (in client order), or all of them group m."""
    labels = dbscan(features(lr, batch), eps, min_samples)
    is_noise = labels < 0
    groups = labels.copy()
    m = int(labels.max()) + 1 if (~is_noise).any() else 0
    k = int(is_noise.sum())
    groups[is_noise] = m + np.arange(k) if noise == "singletons" else m
    return groups, is_noise


def mutate(lr: float, rng: np.random.Generator, scale: float = 0.1) -> float:
    """The notebook's ``mutate``: lr * (1 + scale * d), d drawn uniformly from {-1, 0, +1}."""
    d = int(rng.integers(-1, 2))
    return float(lr) * (1.0 + scale * d)


def crossover(
    lrs: ArrayLike, batches: ArrayLike, rng: np.random.Generator, *, keep: int = 2, scale: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """The notebook's ``crossover`` on lists sorted best first: entries 0..keep-1 unchanged; every
    later entry i gets ``mutate(lrs[a])`` and ``batches[b]`` with a then d then b drawn in that
    order (a, b uniform over all n entries of the input: any member may be a parent)."""
    old_l = np.asarray(lrs, dtype=np.float64)
    old_b = np.asarray(batches, dtype=np.int64)
    n = len(old_l)
    if len(old_b) != n:
        raise ValueError(f"{n} learning rates but {len(old_b)} batch sizes")
    new_l, new_b = old_l.copy(), old_b.copy()
    for i in range(min(max(keep, 0), n), n):
        new_l[i] = mutate(old_l[int(rng.integers(n))], rng, scale)
        new_b[i] = old_b[int(rng.integers(n))]
    return new_l, new_b


def evolve(
    losses: ArrayLike,
    lrs: ArrayLike,
    batches: ArrayLike,
    rng: np.random.Generator,
    *,
    keep: int = 2,
    scale: float = 0.1,
    lr_range: tuple[float, float] = (1e-8, 1.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One generation of one group: (new lrs, new batches, elite mask), IN THE INPUT ORDER.

    The members are sorted by loss (stable: ties keep the input order; NaN ranks last), the
    ``keep`` best keep their values, the rest come from ``crossover``; re-drawn learning rates
    are clipped to ``lr_range``."""
    loss = np.asarray(losses, dtype=np.float64)
    old_l = np.asarray(lrs, dtype=np.float64)
    old_b = np.asarray(batches, dtype=np.int64)
    n = len(loss)
    if len(old_l) != n or len(old_b) != n:
        raise ValueError(f"{n} losses, {len(old_l)} learning rates and {len(old_b)} batch sizes")
    order = np.argsort(np.where(np.isnan(loss), np.inf, loss), kind="stable")
    sorted_l, sorted_b = crossover(old_l[order], old_b[order], rng, keep=keep, scale=scale)
    kept = min(max(keep, 0), n)
    sorted_l[kept:] = np.clip(sorted_l[kept:], lr_range[0], lr_range[1])
    new_l, new_b = np.empty_like(old_l), np.empty_like(old_b)
    new_l[order], new_b[order] = sorted_l, sorted_b
    elite = np.zeros(n, dtype=bool)
    elite[order[:kept]] = True
    return new_l, new_b, elite


# -- the algorithm -----------------------------------------------------------------------------
PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(ge=1)]


class GeneticCFLParams(AlgoParams):
    mutation_scale: Annotated[float, Field(ge=0, lt=1)] = 0.1  # lr * (1 + scale * {-1, 0, 1})
    keep_top_k: Annotated[int, Field(ge=0)] = 2  # elites per group, kept unchanged
    dbscan_eps: Annotated[float, Field(gt=0)] = 0.15
    dbscan_min_samples: Annotated[int, Field(ge=1)] = 2
    noise: Literal["singletons", "group"] = "singletons"  # DBSCAN noise: own groups, or one (notebook)
    epochs: Annotated[int, Field(ge=1)] | None = 2  # None: local.epochs
    optimizer: Literal["adam", "sgd"] = "adam"
    init: Literal["random", "grid"] = "random"
    lr_min: Annotated[float, Field(gt=0)] = 1e-8
    lr_max: Annotated[float, Field(gt=0, le=10)] = 1.0
    grid_lrs: Annotated[tuple[PositiveFloat, ...], Field(min_length=1)] = (0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6)
    grid_batch_sizes: Annotated[tuple[PositiveInt, ...], Field(min_length=1)] = (16, 32, 64, 128)
    grid_pick_lrs: Annotated[int, Field(ge=1)] = 3
    grid_pick_batches: Annotated[int, Field(ge=1)] = 2
    grid_epochs: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _consistent(self) -> GeneticCFLParams:
        if self.lr_min >= self.lr_max:
            raise ValueError(f"lr_min ({self.lr_min}) must be below lr_max ({self.lr_max})")
        if self.grid_pick_lrs > len(set(self.grid_lrs)):
            raise ValueError(
                f"grid_pick_lrs={self.grid_pick_lrs} exceeds the {len(set(self.grid_lrs))} distinct grid_lrs"
            )
        if self.grid_pick_batches > len(set(self.grid_batch_sizes)):
            raise ValueError(
                f"grid_pick_batches={self.grid_pick_batches} exceeds the "
                f"{len(set(self.grid_batch_sizes))} distinct grid_batch_sizes"
            )
        return self


@dataclass(frozen=True, kw_only=True)
class GeneticCFLState:
    params: np.ndarray  # the global model, float32
    lr: np.ndarray  # (N,) float64: each client's learning rate
    batch: np.ndarray  # (N,) int64: each client's batch size
    group: np.ndarray  # (N,) int64: DBSCAN group (noise points: own groups or one, see ``noise``)
    noise: np.ndarray  # (N,) bool: DBSCAN called the client noise
    val_loss: np.ndarray  # (N,) float64: last validation loss (NaN: never measured, inf: diverged)
    loss_round: np.ndarray  # (N,) int64: round of that measurement, -1: never
    role: np.ndarray  # (N,) int8: UNRANKED / ELITE / REDRAWN at the latest generation
    grid_lrs: np.ndarray  # (N, grid_pick_lrs) float64 candidates (init "grid"; (N, 0) otherwise)
    grid_batches: np.ndarray  # (N, grid_pick_batches) int64
    searched: bool  # the grid search round is done (always True for init "random")


class GeneticCFL(Algorithm):
    name: ClassVar[str] = "genetic-cfl"
    family: ClassVar[Family] = "global"  # one shared model: the groups steer hyperparameters only
    headline: ClassVar[tuple[str, ...]] = ("test_accuracy", "num_clusters")
    params_model: ClassVar[type[AlgoParams]] = GeneticCFLParams
    traits = Traits(linear=True)  # one FedAvg sum; per-client losses arrive with every result

    # -- server ----------------------------------------------------------------------------
    def init(self, params: Params, ctx: SetupContext) -> GeneticCFLState:
        p = self.p
        n = ctx.num_clients
        rng = np.random.default_rng([ctx.seed, SALT_INIT])
        lr, batch = notebook_init(n, rng)
        lr = np.clip(lr, p.lr_min, p.lr_max)
        if p.init == "grid":
            lrs = np.asarray(sorted(set(p.grid_lrs), reverse=True), dtype=np.float64)
            bss = np.asarray(sorted(set(p.grid_batch_sizes)), dtype=np.int64)
            grid_l = np.stack([rng.choice(lrs, p.grid_pick_lrs, replace=False) for _ in range(n)])
            grid_b = np.stack([rng.choice(bss, p.grid_pick_batches, replace=False) for _ in range(n)])
            grid_l = np.clip(grid_l, p.lr_min, p.lr_max)
        else:
            grid_l = np.zeros((n, 0), dtype=np.float64)
            grid_b = np.zeros((n, 0), dtype=np.int64)
        group, noise = self.groups(lr, batch)
        return GeneticCFLState(
            params=params.astype(np.float32),
            lr=lr,
            batch=batch,
            group=group,
            noise=noise,
            val_loss=np.full(n, np.nan),
            loss_round=np.full(n, -1, dtype=np.int64),
            role=np.zeros(n, dtype=np.int8),
            grid_lrs=grid_l,
            grid_batches=grid_b,
            searched=p.init != "grid",
        )

    def ignored_config_keys(self) -> frozenset[str]:
        """The per-client lr and batch size replace local.lr and local.batch_size in every task,
        ``optimizer`` replaces local.optimizer, and ``epochs`` (unless null) local.epochs. The
        per-client lr replaces the round's decayed lr too, so local.lr_decay does not reach it."""
        keys = {"local.lr", "local.lr_decay", "local.batch_size", "local.optimizer"}
        if self.p.epochs is not None:
            keys.add("local.epochs")
        return frozenset(keys)

    def groups(self, lr: np.ndarray, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.p
        return group_clients(lr, batch, eps=p.dbscan_eps, min_samples=p.dbscan_min_samples, noise=p.noise)

    def generation(self, state: GeneticCFLState, rng: np.random.Generator) -> GeneticCFLState:
        """One ``evolve`` per group over its measured members (groups in increasing id order)."""
        p = self.p
        lr, batch = state.lr.copy(), state.batch.copy()
        role = np.full(len(lr), UNRANKED, dtype=np.int8)
        measured = state.loss_round >= 0
        for g in np.unique(state.group):
            members = np.flatnonzero((state.group == g) & measured)
            if len(members) == 0:
                continue
            new_l, new_b, elite = evolve(
                state.val_loss[members],
                lr[members],
                batch[members],
                rng,
                keep=p.keep_top_k,
                scale=p.mutation_scale,
                lr_range=(p.lr_min, p.lr_max),
            )
            lr[members], batch[members] = new_l, new_b
            role[members] = np.where(elite, ELITE, REDRAWN)
        return replace(state, lr=lr, batch=batch, role=role)

    def configure_round(self, state: GeneticCFLState, rnd: RoundContext) -> tuple[GeneticCFLState, RoundPlan]:
        p = self.p
        search = not state.searched
        if search:  # every client evaluates its grid first, as in the notebook's initial training
            cohort = sorted(int(c) for c in rnd.available)
        else:
            cohort = sample_cohort(rnd.available, rnd.cohort_size, rnd.rng)
            state = self.generation(state, rnd.rng)
        # the algorithm's optimizer and epochs over local.* (an Adam with local.momentum > 0 is
        # refused here, by the record, before any client trains)
        base = replace(
            rnd.hparams,
            optimizer=p.optimizer,
            epochs=p.epochs if p.epochs is not None else rnd.hparams.epochs,
        )
        tasks = []
        for c in cohort:  # each client's own genes
            hp = replace(base, lr=float(state.lr[c]), batch_size=int(state.batch[c]))
            extras = {GRID_LRS: state.grid_lrs[c], GRID_BATCHES: state.grid_batches[c]} if search else {}
            tasks.append(ClientTask(client_id=c, model_key=GLOBAL, hparams=hp, extras=extras))
        return state, RoundPlan(tasks=tasks, broadcast={GLOBAL: state.params})

    def aggregate(
        self, state: GeneticCFLState, results: Sequence[ClientResult | LinearSum], server: ServerContext
    ) -> tuple[GeneticCFLState, Metrics]:
        total = LinearSum.of(results)
        params = fedavg_step(state.params, total)
        lr, batch = state.lr.copy(), state.batch.copy()
        val_loss, loss_round = state.val_loss.copy(), state.loss_round.copy()
        fresh: list[float] = []
        diverged = 0
        for r in results:  # every accepted client once, its update pre-summed or not
            if not isinstance(r, ClientResult):
                continue
            c = r.client_id
            if r.metrics.get("diverged", 0.0) > 0:
                val_loss[c] = np.inf
                diverged += 1
            else:
                val_loss[c] = float(r.metrics["val_loss"])
                fresh.append(val_loss[c])
            loss_round[c] = server.round_idx
            if not state.searched and "lr" in r.metrics:  # the grid point the client chose
                lr[c] = float(np.clip(r.metrics["lr"], self.p.lr_min, self.p.lr_max))
                batch[c] = int(r.metrics["batch_size"])
        group, noise = (state.group, state.noise) if state.searched else self.groups(lr, batch)
        new = replace(
            state,
            params=params,
            lr=lr,
            batch=batch,
            group=group,
            noise=noise,
            val_loss=val_loss,
            loss_round=loss_round,
            searched=True,
        )
        log_lr = np.log10(lr)
        metrics: Metrics = {
            "aggregated_clients": float(total.num_clients if total else 0),
            "diverged_clients": float(diverged),
            "val_loss": float(np.mean(fresh)) if fresh else float("nan"),
            "groups": float(len(np.unique(group))),
            "largest_group": float(np.bincount(group).max()),
            "dbscan_clusters": float(len(np.unique(group[~noise]))),
            "noise_clients": float(noise.sum()),
            "elites": float((state.role == ELITE).sum()),
            "redrawn": float((state.role == REDRAWN).sum()),
            "log10_lr_mean": float(log_lr.mean()),
            "log10_lr_min": float(log_lr.min()),
            "log10_lr_max": float(log_lr.max()),
            "batch_size_mean": float(batch.mean()),
        }
        return new, metrics

    def server_model(self, state: GeneticCFLState) -> Params:
        return state.params

    def client_annotations(self, state: GeneticCFLState) -> ClientColumns:
        f64 = np.float64
        return ClientColumns.of(
            {
                "lr": np.asarray(state.lr).astype(f64),
                "batch_size": np.asarray(state.batch).astype(f64),
                "cluster": np.asarray(state.group).astype(f64),
                "val_loss": np.asarray(state.val_loss).astype(f64),
                "elite": (np.asarray(state.role) == ELITE).astype(f64),
                "redrawn": (np.asarray(state.role) == REDRAWN).astype(f64),
            }
        )

    # -- client ----------------------------------------------------------------------------
    @staticmethod
    def val_loss(params: Params, client: ClientContext) -> float:
        """Mean loss on the client's validation split (its training split when that is empty)."""
        ev = client.evaluate(params, "val")
        if ev.n == 0:
            ev = client.evaluate(params, "train")
        return float(ev.loss)

    def client_update(self, task: ClientTask, params: Params, client: ClientContext) -> ClientResult:
        if GRID_LRS in task.extras:
            return self.grid_search(task, params, client)
        fit = client.fit(params, grad_hook=None, hparams=task.hparams)
        if not np.isfinite(fit.params).all():
            return self.diverged(task, fit.num_examples)
        loss = self.val_loss(fit.params, client)
        if not np.isfinite(loss):
            return self.diverged(task, fit.num_examples)
        return ClientResult(
            client_id=task.client_id,
            num_examples=fit.num_examples,
            delta=fit.params - params,
            metrics={"train_loss": fit.loss, "val_loss": loss},
        )

    @staticmethod
    def diverged(task: ClientTask, num_examples: int) -> ClientResult:
        return ClientResult(
            client_id=task.client_id, num_examples=num_examples, delta=None, metrics={"diverged": 1.0}
        )

    def grid_search(self, task: ClientTask, params: Params, client: ClientContext) -> ClientResult:
        """The search round: ``grid_epochs`` of local training at every (batch, lr) candidate from
        the global model; the update is the candidate with the lowest validation loss."""
        best: tuple[float, Any, float, int] | None = None
        for b in task.extras[GRID_BATCHES]:
            for lr in task.extras[GRID_LRS]:
                cand = replace(task.hparams, lr=float(lr), batch_size=int(b), epochs=self.p.grid_epochs)
                fit = client.fit(params, grad_hook=None, hparams=cand)
                if not np.isfinite(fit.params).all():
                    continue
                loss = self.val_loss(fit.params, client)
                if np.isfinite(loss) and (best is None or loss < best[0]):
                    best = (loss, fit, float(lr), int(b))
        if best is None:
            return self.diverged(task, client.num_examples)
        loss, fit, lr, b = best
        return ClientResult(
            client_id=task.client_id,
            num_examples=fit.num_examples,
            delta=fit.params - params,
            metrics={"train_loss": fit.loss, "val_loss": loss, "lr": lr, "batch_size": float(b)},
        )
