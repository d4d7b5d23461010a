"""Server: owns the algorithm state and runs one round (docs/architecture.md, section 2, steps 1-6).

The same plain class runs in-process (serial backend) and inside the Ray ``ServerActor``;
only the ``pool`` it talks to differs (in-process hosts or client actors).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from raysim import reproducible
from raysim.algorithms.base import (
    Algorithm,
    ClientColumns,
    ClientResult,
    ClientTask,
    LinearSum,
    LocalHParams,
    RoundContext,
    RoundPlan,
    ServerContext,
    SetupContext,
)
from raysim.config import personal_eval_count
from raysim.metrics import Membership, classification_metrics, cluster_tracking, worst_fraction_mean
from raysim.models.flat import Params
from raysim.runtime.pool import Pool, PoolReply
from raysim.runtime.trainer import EvalResult, FitResult, Trainer

# RNG purposes of the server's per-round streams (round_rng's last argument)
SALT_CONFIGURE = 0
SALT_AGGREGATE = 1
SALT_PERSONAL_EVAL = 2  # the sample of clients a sampled personal evaluation scores
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def round_rng(seed: int, round_idx: int, purpose: int) -> np.random.Generator:
    """Server randomness of one round: a function of (seed, round, purpose) only, so a resumed
    run draws exactly what the uninterrupted run drew."""
    return np.random.default_rng([seed, round_idx, 1_000_003, purpose])


def personal_intervals(correct: np.ndarray, n: np.ndarray, fpc: float) -> dict[str, float]:
    """95% intervals of the personal accuracies from the clients scored (a simple random sample
    without replacement of the federation's clients; ``fpc`` = 1 - sample/population, 0 when
    every client was scored, and the intervals then have width 0: the figures are exact).

    The sampled unit is the client, not the example, so a binomial (Wilson) interval over the
    examples would be too narrow (examples of one client are correlated); a bootstrap costs
    resamples and randomness. With samples of hundreds to thousands of clients the normal
    approximation is sound, so both are normal intervals with the finite-population correction:

    * ``personal_accuracy`` (correct / examples over the scored clients) is a ratio estimator:
      standard error sqrt(fpc * s_d^2 / m) / mean(n), s_d^2 the sample variance of
      d_i = correct_i - R * n_i (Cochran, Sampling Techniques, 6.2);
    * ``personal_accuracy_mean`` (the mean over clients of their accuracies): standard error
      sqrt(fpc * s^2 / m), s^2 the sample variance of the accuracies.

    Clipped to [0, 1]; NaN with a single sampled client (no variance to estimate) unless fpc is 0."""
    m = len(n)
    nf = n.astype(np.float64)
    ratio = float(correct.sum()) / float(nf.sum())
    accs = correct / nf
    fpc = max(0.0, fpc)
    if fpc == 0.0:
        se_ratio = se_mean = 0.0
    elif m < 2:
        se_ratio = se_mean = float("nan")
    else:
        d = correct - ratio * nf
        se_ratio = math.sqrt(fpc * float(np.var(d, ddof=1)) / m) / float(nf.mean())
        se_mean = math.sqrt(fpc * float(np.var(accs, ddof=1)) / m)
    mean = float(accs.mean())

    def lo(x: float, se: float) -> float:
        return max(0.0, x - Z95 * se) if math.isfinite(se) else float("nan")

    def hi(x: float, se: float) -> float:
        return min(1.0, x + Z95 * se) if math.isfinite(se) else float("nan")

    return {
        "personal_accuracy_ci95_low": lo(ratio, se_ratio),
        "personal_accuracy_ci95_high": hi(ratio, se_ratio),
        "personal_accuracy_mean_ci95_low": lo(mean, se_mean),
        "personal_accuracy_mean_ci95_high": hi(mean, se_mean),
    }


class ClientCodeError(RuntimeError):
    """Every client of a round failed with the same exception: a bug in client code, not a dropout."""


@dataclass(frozen=True, kw_only=True)
class EvalSpec:
    every: int
    num_rounds: int
    personal: bool | str | int | float  # rounds.personal_eval: all/true, auto, a count, a fraction, false
    test_x: Any
    test_y: np.ndarray
    public_x: Any = None  # the public split (pre-training data no client holds), or None
    public_y: np.ndarray | None = None
    trainer_kwargs: Mapping[str, Any]
    torch_threads: int = 1


@dataclass(frozen=True, eq=False)
class PersonalEval:
    """One round's personal evaluation, column-wise: every evaluated client's personalised model
    on its local test split, sorted by client id. These are clients.parquet's rows with
    ``participated`` False (``row``), kept as three arrays all the way to the file: one dict a
    client and round cost the driver 384 bytes a row (issue 13), these 24."""

    round: int
    client_id: np.ndarray  # int64
    personal_accuracy: np.ndarray  # float64
    personal_loss: np.ndarray  # float64, the mean loss over the client's test examples

    def __len__(self) -> int:
        return len(self.client_id)

    def row(self, i: int) -> dict[str, Any]:
        """Client ``i``'s row of clients.parquet, as one dict (the layout the columns stand for)."""
        return {
            "round": self.round,
            "client_id": int(self.client_id[i]),
            "participated": False,
            "dropped": False,
            "reason": "",
            "num_examples": 0,
            "train_loss": float("nan"),
            "model_key": "",
            "personal_accuracy": float(self.personal_accuracy[i]),
            "personal_loss": float(self.personal_loss[i]),
        }

    def rows(self) -> list[dict[str, Any]]:
        """Every row as one dict (O(clients) Python objects: for tests and small federations)."""
        return [self.row(i) for i in range(len(self))]


@dataclass(frozen=True, kw_only=True)
class RoundReport:
    round: int
    metrics: dict[str, float]
    clients: list[dict[str, Any]]  # one row per client of this round's cohort
    stop: bool = False  # the algorithm has converged: no further rounds
    # clustered algorithms: one row per client annotated with a "cluster" (``cluster_rows``;
    # None: no client is)
    clusters: ClusterRows | None = None
    # clients whose actor restarted (state back to initial): the driver restores them from a checkpoint
    restarted: list[int] = field(default_factory=list)
    # an evaluated round with rounds.personal_eval: every client's personal figures (None: none)
    personal: PersonalEval | None = None
    # the client hyperparameters the cohort's tasks carried (``cohort_hparams``): what clients
    # trained with, which an algorithm may set per client over the config's local.*
    hparams: dict[str, Any] = field(default_factory=dict)


def cohort_hparams(tasks: Sequence[ClientTask]) -> dict[str, Any]:
    """What a round's tasks asked the clients to train with: each ``LocalHParams`` field under its
    own name when every task carries the same value; a field that differs between clients (e.g. a
    learning rate per client) as ``<name>_cohort_mean``, ``_cohort_min`` and ``_cohort_max`` when
    numeric, else the sorted distinct values joined by commas under ``<name>_cohort``. No tasks: {}."""
    out: dict[str, Any] = {}
    if not tasks:
        return out
    for name in LocalHParams.names():
        values = [getattr(t.hparams, name) for t in tasks]
        if all(v == values[0] for v in values):
            out[name] = values[0]
        elif all(isinstance(v, int | float) for v in values):
            arr = np.asarray(values, dtype=np.float64)
            out[f"{name}_cohort_mean"] = float(arr.mean())
            out[f"{name}_cohort_min"] = float(arr.min())
            out[f"{name}_cohort_max"] = float(arr.max())
        else:
            out[f"{name}_cohort"] = ",".join(sorted({str(v) for v in values}))
    return out


CLUSTER = "cluster"  # the client annotation that makes the runtime track clusters
CLUSTER_MODEL_KEY = "cluster_model_key"  # optional annotation: the cluster's model key (a str)


def cluster_key(cid: int) -> str:
    """The model key of cluster ``cid`` by convention (``cluster/{id}``, IFCA's and CFL's)."""
    return f"cluster/{cid}"


def cluster_membership(notes: Mapping[int, Mapping[str, Any]]) -> Membership:
    """Client id -> cluster id of every client annotated with a ``"cluster"`` (-1: unassigned,
    also for a non-finite annotation), sorted by client id: column-wise, O(N) in arrays."""
    cols = ClientColumns.from_mapping(notes)
    if CLUSTER not in cols.columns:
        return Membership(client_id=np.zeros(0, np.int64), cluster=np.zeros(0, np.int64))
    has = cols.has(CLUSTER)
    v = np.asarray(cols.columns[CLUSTER][has], dtype=np.float64)
    ok = np.isfinite(v) & (v >= 0)
    k = np.where(ok, np.where(ok, v, 0.0).astype(np.int64), -1)
    return Membership(client_id=cols.client_id[has], cluster=k)


@dataclass(frozen=True, eq=False)
class ClusterRows:
    """clusters.parquet's rows of one round, column-wise (like ``PersonalEval``): one entry per
    client annotated with a cluster, sorted by client id. ``model_key`` travels as codes into a
    few distinct names (``model_keys``), so the round's report crosses to the driver as three or
    four int arrays; ``true_group`` is None without a truth."""

    round: int
    client_id: np.ndarray  # int64
    cluster: np.ndarray  # int64, -1: unassigned
    model_key_code: np.ndarray  # int64 index into model_keys
    model_keys: tuple[str, ...]
    true_group: np.ndarray | None = None  # int64, -1: none

    def __len__(self) -> int:
        return len(self.client_id)

    @property
    def model_key(self) -> np.ndarray:
        """Each row's model key (an object array whose entries share the few str objects)."""
        names = np.empty(len(self.model_keys), dtype=object)
        names[:] = list(self.model_keys)
        return names[self.model_key_code]

    def columns(self) -> dict[str, np.ndarray]:
        """The file's columns, in its order."""
        out = {
            "round": np.full(len(self), self.round, dtype=np.int64),
            "client_id": self.client_id,
            "cluster": self.cluster,
            "model_key": self.model_key,
        }
        if self.true_group is not None:
            out["true_group"] = self.true_group
        return out

    def rows(self) -> list[dict[str, Any]]:
        """Every row as one dict (O(clients) Python objects: for tests and small federations)."""
        cols = {k: v.tolist() for k, v in self.columns().items()}
        return [{k: v[i] for k, v in cols.items()} for i in range(len(self))]


def _codes(keys: np.ndarray, name: Any) -> tuple[np.ndarray, list[str]]:
    """(index of each of ``keys`` into the names, ``name(key)`` of each distinct key): one call a
    distinct key. Small non-negative ints (cluster ids + 1) are their own codes: no sort."""
    if keys.dtype.kind in "iu" and len(keys) and 0 <= int(keys.min()) and int(keys.max()) < 1 << 16:
        return keys.astype(np.int64), [name(k) for k in range(int(keys.max()) + 1)]
    uniq, inv = np.unique(keys, return_inverse=True)
    return inv.reshape(-1).astype(np.int64), [name(u) for u in uniq.tolist()]


def cluster_rows(
    t: int,
    membership: Mapping[int, int],
    notes: Mapping[int, Mapping[str, Any]],
    truth: np.ndarray | None,
) -> ClusterRows:
    """clusters.parquet rows of round ``t``: round, client_id, cluster (int, -1: unassigned),
    model_key (the ``"cluster_model_key"`` annotation when the algorithm gives one, else
    ``cluster/{id}``; "" when unassigned) and, when the federation has ground-truth groups,
    true_group (-1: none). Column-wise: O(N) in arrays."""
    members = Membership.of(membership)
    cols = ClientColumns.from_mapping(notes)
    ids, ks = members.client_id, members.cluster
    code, names = _codes(np.maximum(ks, -1) + 1, lambda k: cluster_key(k - 1) if k > 0 else "")
    if CLUSTER_MODEL_KEY in cols.columns and len(ids):
        pos, hit = cols.positions(ids)
        given = cols.columns[CLUSTER_MODEL_KEY][pos]
        ok = hit & cols.has(CLUSTER_MODEL_KEY)[pos]
        if given.dtype == object:
            ok &= np.fromiter((g is not None for g in given), bool, len(given))
        if ok.any():
            sub, more = _codes(given[ok].astype(str), str)
            code[ok] = sub + len(names)
            names += more
    true_group = None
    if truth is not None:
        true_group = np.full(len(ids), -1, dtype=np.int64)
        inside = (ids >= 0) & (ids < len(truth))
        true_group[inside] = np.asarray(truth, dtype=np.int64)[ids[inside]]
    return ClusterRows(
        round=t,
        client_id=ids,
        cluster=ks,
        model_key_code=code,
        model_keys=tuple(names),
        true_group=true_group,
    )


class ServerSplits:
    """``ServerData`` for algorithms: fit and evaluate on the server's public and test splits."""

    def __init__(self, spec: EvalSpec, trainer: Trainer, seed: int) -> None:
        self._splits: dict[str, tuple[Any, np.ndarray]] = {"test": (spec.test_x, spec.test_y)}
        if spec.public_x is not None and spec.public_y is not None and len(spec.public_y):
            self._splits["public"] = (spec.public_x, spec.public_y)
        self.trainer, self.seed = trainer, seed

    def splits(self) -> tuple[str, ...]:
        return tuple(sorted(self._splits))

    def _get(self, split: str) -> tuple[Any, np.ndarray]:
        if split not in self._splits:
            raise KeyError(f"the server holds no {split!r} split (it has {list(self.splits())})")
        return self._splits[split]

    def evaluate(self, params: Params, split: str = "public") -> EvalResult:
        x, y = self._get(split)
        return self.trainer.evaluate(params, x, y)

    def fit(
        self, params: Params, split: str = "public", *, hparams: LocalHParams, seed: int | None = None
    ) -> FitResult:
        """Train on a server-held split (seeded with the run's seed unless ``seed`` says otherwise)."""
        x, y = self._get(split)
        return self.trainer.fit(params, x, y, hparams, seed=self.seed if seed is None else seed)


class Server:
    def __init__(
        self,
        algorithm: Algorithm,
        init_params: Params,
        ctx: SetupContext,
        pool: Pool,
        seed: int,
        eval_spec: EvalSpec,
        deadline_s: float | None = None,
        quarantine_factor: float = 0.0,
        device: str = "cpu",
    ) -> None:
        torch.set_num_threads(eval_spec.torch_threads)
        reproducible.apply_in_process()  # a process started in reproducible mode: oneDNN off, ...
        self.algorithm = algorithm
        self.pool = pool
        self.seed = seed
        self.deadline_s = deadline_s
        self.quarantine_factor = quarantine_factor
        self.eval = eval_spec
        self.cohort_size = ctx.clients_per_round
        self.trainer = Trainer(**eval_spec.trainer_kwargs, device=device)
        self.data = ServerSplits(eval_spec, self.trainer, seed)
        self.state = algorithm.init(init_params, replace(ctx, data=self.data))
        self.lost: set[int] = set()
        groups = None if ctx.client_groups is None else np.asarray(ctx.client_groups, dtype=np.int64)
        # ground-truth groups (rotation, label-permutation partitions); None when the federation has none
        self.truth = groups if groups is not None and (groups >= 0).any() else None
        # cluster membership after the last finished round (None: none yet); checkpointed
        self.clusters: Membership | None = None

    # -- one round -------------------------------------------------------------------------
    def run_round(self, t: int, hparams: LocalHParams) -> RoundReport:
        """Round ``t`` with this round's client hyperparameters (local.* and any override)."""
        algo = self.algorithm
        m: dict[str, float] = {"round": float(t)}
        t0 = time.perf_counter()
        available = self.pool.available()  # sorted ids, one vectorised pass (no per-client Python)
        if self.lost:
            available = available[~np.isin(available, np.fromiter(self.lost, np.int64, len(self.lost)))]
        rnd = RoundContext(
            round_idx=t,
            available=available,
            cohort_size=self.cohort_size,
            hparams=hparams,
            rng=round_rng(self.seed, t, SALT_CONFIGURE),
        )
        self.state, plan = algo.configure_round(self.state, rnd)
        plan.check()
        m["configure_s"] = time.perf_counter() - t0

        reply = self.pool.run(t, plan.tasks, plan.broadcast, self.deadline_s)
        self._refuse_broken_client_code(t, plan, reply)
        self.lost.update(reply.lost_clients)
        reply, m["quarantined"] = self._quarantine(t, reply)
        if algo.traits.client_state:
            self.lost.update(self.pool.commit(t))
        m["broadcast_s"], m["train_s"] = reply.broadcast_s, reply.train_s
        if reply.host_seconds:  # train_s minus the slowest actor's busy time is the runtime's overhead
            m["actor_busy_max_s"] = max(reply.host_seconds)
            m["actor_busy_mean_s"] = float(np.mean(reply.host_seconds))
        cpu = [c for c in reply.host_cpu_seconds if np.isfinite(c)]
        if cpu:  # the same work in CPU seconds, which a loaded machine stretches far less
            m["actor_cpu_max_s"] = max(cpu)
            m["actor_cpu_mean_s"] = float(np.mean(cpu))

        t1 = time.perf_counter()
        # every accepted client's result (its update may be inside a pre-summed partial)
        payload: list[ClientResult | LinearSum] = [*reply.partials, *reply.results]
        server = ServerContext(
            round_idx=t,
            rng=round_rng(self.seed, t, SALT_AGGREGATE),
            hparams=rnd.hparams,
            data=self.data,
            round_started=t0,
        )
        self.state, agg_metrics = algo.aggregate(self.state, payload, server)
        m["aggregate_s"] = time.perf_counter() - t1
        m.update({k: float(v) for k, v in agg_metrics.items()})

        m["cohort"] = float(len(plan.tasks))
        m["completed"] = float(len(reply.results))
        m["dropouts"] = float(len(reply.dropouts))
        m["lost_clients"] = float(len(self.lost))
        m["bytes_down"] = float(plan.bytes_down())
        m["bytes_up"] = float(sum(r.metrics.get("upload_bytes", 0.0) for r in reply.results))
        m["transfer_bytes_up"] = float(reply.transfer_bytes_up)
        losses = [r.metrics["train_loss"] for r in reply.results if "train_loss" in r.metrics]
        m["train_loss"] = float(np.mean(losses)) if losses else float("nan")
        # e.g. cluster id and weight this round, column-wise (arrays, no per-client dict)
        notes = ClientColumns.from_mapping(algo.client_annotations(self.state))
        rows = self._client_rows(t, plan, reply, notes)
        clusters = self._track_clusters(t, notes, m)

        t2 = time.perf_counter()
        personal = None
        if t % self.eval.every == 0 or t == self.eval.num_rounds:
            evaluated, personal = self.evaluate(t)
            m.update(evaluated)
        m["evaluate_s"] = time.perf_counter() - t2
        restarted = self.pool.take_restarted()
        m["restarted_clients"] = float(len(restarted))
        m["round_s"] = time.perf_counter() - t0
        return RoundReport(
            round=t,
            metrics=m,
            clients=rows,
            stop=algo.converged(self.state),
            clusters=clusters,
            restarted=restarted,
            personal=personal,
            hparams=cohort_hparams(plan.tasks),
        )

    def _quarantine(self, t: int, reply: PoolReply) -> tuple[PoolReply, float]:
        """Leave out of round ``t`` every client whose update norm is >= ``quarantine_factor``
        times the round's median: exactly, since a pre-summed client's fixed-point update is taken
        back from its host and subtracted from the host's integer partial (the aggregate equals one
        that never saw it). A host that died before it could give the update back loses its whole
        partial, and its clients become dropouts too."""
        f = self.quarantine_factor
        norms = {r.client_id: float(r.metrics.get("update_norm", math.nan)) for r in reply.results}
        finite = [n for n in norms.values() if math.isfinite(n)]
        if f <= 0 or len(finite) < 2:
            return reply, 0.0
        med = float(np.median(finite))
        bad = sorted(c for c, n in norms.items() if med > 0 and math.isfinite(n) and n >= f * med)
        if not bad:
            return reply, 0.0
        withdrawn, failed = self.pool.withdraw(t, bad)
        pairs = list(zip(reply.partials, reply.partial_hosts, strict=True))
        dropouts = [
            (c, f"quarantined: update norm {norms[c]:.3g} >= {f:g} x the round's median {med:.3g}")
            for c in bad
        ]
        gone = set(bad)
        for h in failed:
            pairs = [(p, ph) for p, ph in pairs if ph != h]
            lost = [c for c in reply.host_clients.get(h, []) if c not in gone]
            dropouts += [(c, f"actor {h} died before the round's quarantine") for c in lost]
            gone.update(lost)
        for h, singles in withdrawn.items():
            for single in singles:
                i = next(i for i, (p, ph) in enumerate(pairs) if ph == h and p.model_key == single.model_key)
                pairs[i] = (pairs[i][0].minus(single), h)
        pairs = [(p, h) for p, h in pairs if p.num_clients > 0]
        return (
            replace(
                reply,
                results=[r for r in reply.results if r.client_id not in gone],
                partials=[p for p, _ in pairs],
                partial_hosts=[h for _, h in pairs],
                dropouts=sorted(reply.dropouts + dropouts),
            ),
            float(len(bad)),
        )

    def _track_clusters(self, t: int, notes: ClientColumns, m: dict[str, float]) -> ClusterRows | None:
        """clusters.parquet rows of this round (None: no client in a cluster), and the uniform
        columns of ``cluster_tracking`` into ``m`` (an algorithm's own metric of the same name,
        e.g. CFL's num_clusters, is kept)."""
        membership = cluster_membership(notes)
        if not len(membership):
            return None
        for k, v in cluster_tracking(membership, self.clusters, self.truth).items():
            m.setdefault(k, v)
        self.clusters = membership
        return cluster_rows(t, membership, notes, self.truth)

    def _refuse_broken_client_code(self, t: int, plan: RoundPlan, reply: PoolReply) -> None:
        """The same exception from every client of the cohort is a bug, not a dropout: stop with it."""
        errs = reply.errors
        if not plan.tasks or reply.results or len(errs) != len(plan.tasks):
            return
        if len({e.signature for e in errs}) == 1:
            raise ClientCodeError(
                f"every client of round {t} ({len(errs)}) failed with the same exception "
                f"({errs[0].signature}); this is a bug in client code, not a dropout. "
                f"Client {errs[0].client_id}'s traceback:\n{errs[0].traceback}"
            )

    def _client_rows(
        self, t: int, plan: RoundPlan, reply: PoolReply, notes: ClientColumns
    ) -> list[dict[str, Any]]:
        by_task = {task.client_id: task for task in plan.tasks}

        def row(cid: int, dropped: bool, reason: str, n: int, loss: float, key: str) -> dict[str, Any]:
            return {
                "round": t,
                "client_id": cid,
                "participated": True,
                "dropped": dropped,
                "reason": reason,
                "num_examples": n,
                "train_loss": loss,
                "model_key": key,
            }

        rows = [
            row(
                r.client_id,
                False,
                "",
                r.num_examples,
                float(r.metrics.get("train_loss", np.nan)),
                r.model_key,
            )
            for r in reply.results
        ]
        rows += [
            row(cid, True, reason, 0, float("nan"), by_task[cid].model_key if cid in by_task else "")
            for cid, reason in reply.dropouts
        ]
        if len(notes):  # the cohort's annotations: O(cohort), looked up in the columns
            for r, extra in zip(rows, notes.rows_for([r["client_id"] for r in rows]), strict=True):
                r.update(extra)
        return rows

    def evaluate(self, t: int) -> tuple[dict[str, float], PersonalEval | None]:
        """Round ``t``'s metrics of the server model on the test set and, with ``personal``, of
        every client's personalised model, whose figures come back column-wise (None: none)."""
        out: dict[str, float] = {}
        model = self.algorithm.server_model(self.state)
        if model is not None:
            ev = self.trainer.evaluate(model, self.eval.test_x, self.eval.test_y)
            out.update(
                {f"test_{k}": v for k, v in classification_metrics(ev.labels, ev.preds, ev.loss).items()}
            )
        else:
            out.update(
                {"test_accuracy": float("nan"), "test_loss": float("nan"), "test_macro_f1": float("nan")}
            )
        available = self.pool.available()
        population = len(available)
        count = personal_eval_count(self.eval.personal, population)
        if count == 0:
            return out, None
        sample = None
        if count < population:  # a seeded sample: a function of (seed, round) only, never of the packing
            rng = round_rng(self.seed, t, SALT_PERSONAL_EVAL)
            sample = np.sort(available[rng.choice(population, size=count, replace=False)])
        cols = self.pool.evaluate(self.algorithm.eval_broadcast(self.state), sample)
        if not len(cols):
            return out, None
        # client order, not actor order: the float sums below must not depend on the packing
        order = np.argsort(cols.client_id, kind="stable")
        cid, n = cols.client_id[order], cols.n[order]
        correct, loss = cols.correct[order], cols.loss[order]
        accs = correct / n
        total = int(n.sum())
        out["personal_eval_clients"] = float(len(cid))
        out["personal_eval_shared"] = float(cols.shared)
        if total:
            out["personal_accuracy"] = int(correct.sum()) / total
            # left to right like the sum() over the clients it replaced: the same float, bit for bit
            out["personal_loss"] = float(np.add.accumulate(loss * n)[-1]) / total
            out["personal_accuracy_mean"] = float(accs.mean())
            out["personal_accuracy_p10"] = float(np.percentile(accs, 10))
            out["personal_accuracy_worst10"] = worst_fraction_mean(accs, 0.1)  # mean of the worst 10%
            out.update(personal_intervals(correct, n, 1.0 - count / population))
        return out, PersonalEval(round=t, client_id=cid, personal_accuracy=accs, personal_loss=loss)

    # -- checkpoint ------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """The whole FL state: the algorithm's, every client's (read from its host: an error if a
        live host fails), the clients lost so far and the last round's cluster membership."""
        return {
            "state": self.state,
            "client_states": self.pool.get_state(),
            "lost": sorted(self.lost),
            "clusters": self.clusters,  # the next round's cluster_stability compares with it
        }

    def restore(self, ckpt: Mapping[str, Any]) -> None:
        self.state = ckpt["state"]
        self.pool.set_state(ckpt["client_states"])
        self.lost = set(ckpt.get("lost", []))
        prev = ckpt.get("clusters")  # a dict in checkpoints written before it was column-wise
        self.clusters = None if prev is None else Membership.of(prev)

    def restore_clients(self, states: Mapping[int, dict[str, Any]]) -> None:
        """The state of the clients of restarted hosts, from a checkpoint (the rest is untouched)."""
        self.pool.restore_clients(states)

    def eval_broadcast(self) -> dict[str, np.ndarray]:
        return dict(self.algorithm.eval_broadcast(self.state))

    def converged(self) -> bool:
        return self.algorithm.converged(self.state)

    def system_stats(self) -> list[dict[str, Any]]:
        return self.pool.stats()
