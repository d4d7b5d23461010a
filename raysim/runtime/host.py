"""ClientHost: the plain class inside every client actor (and the serial backend).

A host keeps n clients as flat index arrays into the shared dataset (a ``ShardTable``; another
for the clients it may train as visitors), their persistent state (control variates, personal
weights, ...) and ONE reusable torch model for all of them. A client's object (its indices, its
labels in its own label space: permuted groups, noisy labels) is built for the call that trains or
evaluates it, so nothing else is kept per client (issue 13). It runs the
algorithm's ``client_update`` for the tasks it is given, turns failures and non-finite
updates into counted dropouts, and pre-sums results when the algorithm is linear.
"""

from __future__ import annotations

import cProfile
import os
import resource
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil
import torch

from raysim import reproducible
from raysim.algorithms.base import (
    PER_CLIENT,
    Algorithm,
    BatchEval,
    ClientResult,
    ClientTask,
    GradHook,
    LinearSum,
    LocalHParams,
    UpdateTooLarge,
    subset_positions,
    sum_by_key,
)
from raysim.data.federation import ShardTable, TableView
from raysim.models.flat import Params
from raysim.runtime.pool import ClientError, HostReply, PersonalColumns
from raysim.runtime.trainer import EvalResult, FitResult, Trainer, pick_device

EVAL_BLOCK = 1000  # dataset indices per block of the batched personal evaluation (its fixed chunking)
SALT_NOISY_LABELS = 7  # RNG purpose of a noisy client's random labels

# Set to a folder, every host (client actor, serial backend, a benchmark's plain process) profiles
# its training calls (``ClientHost.run``) with cProfile and keeps the sum of them there, rewritten
# after each call, as ``host-<id>-<pid>.prof`` (read with ``python -m pstats``). Off when unset: the
# round loop then pays nothing for it. A Ray actor inherits it from the driver that starts Ray.
PROFILE_ENV = "RAYSIM_PROFILE_DIR"


def client_seed(seed: int, round_idx: int, client_id: int, purpose: int = 0) -> int:
    """The RNG seed of one client in one round: a function of (seed, round, client) only, so
    results never depend on which actor hosts the client."""
    return int(np.random.SeedSequence([seed, round_idx, client_id, purpose]).generate_state(1)[0])


@dataclass(frozen=True, kw_only=True)
class HostSpec:
    model: str  # a name raysim.plugins resolves (built-in, entry point, import path) on the actor
    model_params: Mapping[str, Any] = field(default_factory=dict)  # the config's model: keys but name
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int
    torch_threads: int = 1
    presum: bool = True  # pre-sum linear algorithms' results on the host
    noisy_clients: frozenset[int] = frozenset()  # clients whose training labels are random


@dataclass
class HostedClient:
    client_id: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    y_train: np.ndarray  # labels of train_idx in the client's label space
    y_val: np.ndarray
    y_test: np.ndarray
    rotation: int
    group: int
    state: dict[str, Any] = field(default_factory=dict)


def update_norm(delta: np.ndarray | None) -> float:
    """L2 norm of a client's update (NaN without one), in float64."""
    if delta is None:
        return float("nan")
    return float(np.linalg.norm(np.asarray(delta, dtype=np.float64)))


class _Context:
    """``ClientContext`` for one hosted client in one round."""

    def __init__(
        self, host: ClientHost, client: HostedClient, round_idx: int, broadcast: Mapping[str, np.ndarray]
    ):
        self._host, self._c, self._round = host, client, round_idx
        self.client_id = client.client_id
        self.num_examples = len(client.train_idx)
        # a working copy: the host commits it only when the client's update is accepted
        self.state = dict(client.state)
        self.broadcast = broadcast
        self.group = client.group

    def seed(self, purpose: int = 0) -> int:
        # evaluation contexts have round -1 (a personalised fine-tuning step may still train)
        return client_seed(self._host.spec.seed, self._round % 2**32, self.client_id, purpose)

    def fit(
        self,
        params: Params,
        *,
        hparams: LocalHParams,
        grad_hook: GradHook | None = None,
        adapter: Any = None,
        buffers: Mapping[str, np.ndarray] | None = None,
    ) -> FitResult:
        c = self._c
        return self._host.trainer.fit(
            params,
            self._host.x_train,
            c.y_train,
            hparams,
            idx=c.train_idx,
            seed=self.seed(),
            grad_hook=grad_hook,
            rotation=c.rotation,
            adapter=adapter,
            buffers=buffers,
        )

    def evaluate(
        self,
        params: Params,
        split: str = "val",
        adapter: Any = None,
        *,
        buffers: Mapping[str, np.ndarray] | None = None,
        limit: int | None = None,
    ) -> EvalResult:
        c, h = self._c, self._host
        if split == "val":
            x, idx, y = h.x_train, c.val_idx, c.y_val
        elif split == "test":
            x, idx, y = h.x_test, c.test_idx, c.y_test
        elif split == "train":
            x, idx, y = h.x_train, c.train_idx, c.y_train
        else:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        if limit is not None and len(idx) > limit:
            pos = subset_positions(len(idx), limit)
            idx, y = idx[pos], y[pos]
        return h.trainer.evaluate(
            params, x, y, idx=idx, rotation=c.rotation, adapter=adapter, buffers=buffers
        )

    def embed(self, params: Params, adapter: Any = None) -> np.ndarray:
        c = self._c
        return self._host.trainer.embed(
            params, self._host.x_train, idx=c.train_idx, rotation=c.rotation, adapter=adapter
        )


def make_client_labels(
    shard: Any, y_train_all: np.ndarray, y_test_all: np.ndarray, num_classes: int, noisy: bool, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels of a client's train/val/test examples in its own label space.

    A label-permutation group maps labels through ``shard.label_perm``; a noisy client's
    training and validation labels are replaced by uniform random labels (its test labels stay
    clean, so noise hurts what the model learns, not how it is scored).
    """
    perm = shard.label_perm

    def mapped(y: np.ndarray) -> np.ndarray:
        return (perm[y] if perm is not None else y).astype(np.int64)

    ytr, yva, yte = (
        mapped(y_train_all[shard.train_idx]),
        mapped(y_train_all[shard.val_idx]),
        mapped(y_test_all[shard.test_idx]),
    )
    if noisy:
        rng = np.random.default_rng([seed, shard.client_id, SALT_NOISY_LABELS])
        ytr = rng.integers(0, num_classes, size=len(ytr)).astype(np.int64)
        yva = rng.integers(0, num_classes, size=len(yva)).astype(np.int64)
    return ytr, yva, yte


class ClientHost:
    def __init__(
        self,
        host_id: int,
        algorithm: Algorithm,
        dataset: Any,
        shards: Sequence[Any] | ShardTable | TableView,
        spec: HostSpec,
        gpu_ids: list | None = None,
        visitors: ShardTable | None = None,
    ) -> None:
        """``shards`` are this host's own clients (their state, their personalised evaluation);
        ``visitors`` are further clients it may be asked to train when the algorithm keeps no
        client state. Both are kept as flat index arrays (``ShardTable``: the data stays in the
        shared dataset; ``shards`` may be a ``TableView``, its own clients of the run's one table)
        and a client object is built only for the call that trains or evaluates it, so a host
        keeps no Python object per client but its clients' state."""
        torch.set_num_threads(spec.torch_threads)
        reproducible.apply_in_process()  # a process started in reproducible mode: oneDNN off, ...
        self.host_id = host_id
        self.algorithm = algorithm
        self.spec = spec
        self.x_train, self.x_test = dataset.x_train, dataset.x_test
        self.y_train_all, self.y_test_all = dataset.y_train, dataset.y_test
        self.device = pick_device(gpu_ids)
        self.gpu_ids = list(gpu_ids or [])
        self.trainer = Trainer(
            model=spec.model,
            model_params=spec.model_params,
            input_shape=spec.input_shape,
            num_classes=spec.num_classes,
            mean=spec.mean,
            std=spec.std,
            device=self.device,
        )
        self.visitors = visitors
        # its own clients' arrays, copied out of the run's one table when given a view of it (the
        # batched evaluation reads them by row)
        self.own: ShardTable = (
            shards
            if isinstance(shards, ShardTable)
            else shards.copy()
            if isinstance(shards, TableView)
            else ShardTable(list(shards))
        )
        self.home: list[int] = self.own.client_ids.tolist()  # sorted
        self.state: dict[int, dict[str, Any]] = {}  # own clients' persistent state (non-empty only)
        self.staged: dict[int, dict[str, Any]] = {}  # accepted clients' new state, until commit
        self.staged_round = -1
        # each accepted client's own fixed-point update this round (linear algorithms): what
        # ``withdraw`` subtracts from the pre-summed partial when the server quarantines the client
        self.staged_singles: dict[int, LinearSum] = {}
        self._proc = psutil.Process(os.getpid())
        self._peak_rss = self._proc.memory_info().rss
        self._profile_dir = os.environ.get(PROFILE_ENV) or None
        self._profiler: cProfile.Profile | None = cProfile.Profile() if self._profile_dir else None

    def _hosted(self, s: Any, state: dict[str, Any] | None = None) -> HostedClient:
        ytr, yva, yte = make_client_labels(
            s,
            self.y_train_all,
            self.y_test_all,
            self.spec.num_classes,
            s.client_id in self.spec.noisy_clients,
            self.spec.seed,
        )
        return HostedClient(
            client_id=s.client_id,
            train_idx=np.asarray(s.train_idx, dtype=np.int64),
            val_idx=np.asarray(s.val_idx, dtype=np.int64),
            test_idx=np.asarray(s.test_idx, dtype=np.int64),
            y_train=ytr,
            y_val=yva,
            y_test=yte,
            rotation=int(s.rotation),
            group=int(s.group),
            state=state if state is not None else {},
        )

    def client(self, client_id: int) -> HostedClient | None:
        """One of this host's clients with its state, or a visitor (no state: visitors roam only
        when the algorithm keeps none), built for this call; None when this host cannot train it."""
        if client_id in self.own:
            return self._hosted(self.own.shard(client_id), self.state.get(client_id, {}))
        if self.visitors is not None and client_id in self.visitors:
            return self._hosted(self.visitors.shard(client_id))
        return None

    def client_ids(self) -> list[int]:
        """The clients this host owns (visitors excluded)."""
        return list(self.home)

    def run(
        self,
        round_idx: int,
        tasks: Sequence[ClientTask],
        broadcast: Mapping[str, np.ndarray],
        cancelled: Callable[[], bool] | None = None,
    ) -> HostReply:
        """Train the given clients. A client that raises, returns non-finite numbers or a divergent
        update is a dropout with its reason (the server decides whether a cohort-wide failure is a
        bug). Each accepted client's new state is staged until ``commit``; ``cancelled`` (the round
        deadline passed) stops the loop between clients."""
        if self._profiler is None:
            return self._run(round_idx, tasks, broadcast, cancelled)
        self._profiler.enable()
        try:
            return self._run(round_idx, tasks, broadcast, cancelled)
        finally:
            self._profiler.disable()
            assert self._profile_dir is not None
            self._profiler.dump_stats(
                os.path.join(self._profile_dir, f"host-{self.host_id}-{os.getpid()}.prof")
            )

    def _run(
        self,
        round_idx: int,
        tasks: Sequence[ClientTask],
        broadcast: Mapping[str, np.ndarray],
        cancelled: Callable[[], bool] | None,
    ) -> HostReply:
        t0, c0 = time.perf_counter(), time.process_time()
        self.staged = {}
        self.staged_singles = {}
        self.staged_round = round_idx
        linear = self.algorithm.traits.linear
        results: list[ClientResult] = []
        dropouts: list[tuple[int, str]] = []
        errors: list[ClientError] = []
        singles: list[LinearSum] = []  # each kept update on the fixed-point grid (linear algorithms)
        for task in sorted(tasks, key=lambda t: t.client_id):
            if cancelled is not None and cancelled():
                dropouts.append((task.client_id, "cancelled: the round deadline passed"))
                continue
            client = self.client(task.client_id)
            if client is None:
                dropouts.append((task.client_id, f"not hosted on actor {self.host_id}"))
                continue
            ctx = _Context(self, client, round_idx, broadcast)
            try:
                r = self.algorithm.client_update(task, broadcast[task.model_key], ctx)
            except Exception as exc:  # one failing client is a counted dropout; a cohort of them is a bug
                errors.append(client_error(task.client_id, exc))
                dropouts.append((task.client_id, f"error: {type(exc).__name__}: {exc}"))
                print(
                    f"[raysim] client {task.client_id} failed in round {round_idx}:\n{errors[-1].traceback}",
                    flush=True,
                )
                continue
            if not isinstance(
                r, ClientResult
            ):  # the contract broken: a bug whatever the data, on every backend
                raise TypeError(
                    f"{type(self.algorithm).__name__}.client_update returned {type(r).__name__}, not a "
                    f"ClientResult (round {round_idx}): a bug in the algorithm"
                )
            if not r.is_finite():
                dropouts.append((task.client_id, "non-finite update"))
                continue
            if linear and r.delta is not None:
                try:
                    singles.append(LinearSum.single(r))
                except UpdateTooLarge as exc:
                    dropouts.append((task.client_id, str(exc)))
                    continue
                self.staged_singles[task.client_id] = singles[-1]
            self.staged[task.client_id] = ctx.state
            results.append(
                ClientResult(
                    client_id=r.client_id,
                    num_examples=r.num_examples,
                    delta=r.delta,
                    model_key=r.model_key,
                    metrics={
                        **r.metrics,
                        "upload_bytes": float(r.upload_bytes()),
                        # the server's quarantine compares it with the cohort median
                        "update_norm": update_norm(r.delta),
                    },
                    extras=r.extras,
                )
            )
        self._peak_rss = max(self._peak_rss, self._proc.memory_info().rss)
        partials: list[LinearSum] = []
        if self.spec.presum and linear and results:
            partials = list(sum_by_key(singles).values())  # converted once, above
            results = [r.without_payload() if r.delta is not None else r for r in results]
            nbytes = sum(p.upload_bytes() for p in partials) + sum(r.upload_bytes() for r in results)
        else:
            # the updates travel whole: the server drops a quarantined one itself, nothing to hand back
            self.staged_singles = {}
            nbytes = sum(r.upload_bytes() for r in results)
        return HostReply(
            results=results,
            partials=partials,
            dropouts=dropouts,
            errors=errors,
            seconds=time.perf_counter() - t0,
            transfer_bytes=nbytes,
            cpu_seconds=time.process_time() - c0,
        )

    def withdraw(self, round_idx: int, client_ids: Sequence[int]) -> list[LinearSum]:
        """Take back clients of ``round_idx`` the server quarantined: their staged state is never
        committed, and their fixed-point updates (linear algorithms) are returned, for the server
        to subtract from this host's pre-summed partials exactly."""
        if self.staged_round != round_idx:
            return []
        out = []
        for cid in client_ids:
            self.staged.pop(cid, None)
            single = self.staged_singles.pop(cid, None)
            if single is not None:
                out.append(single)
        return out

    def commit(self, round_idx: int) -> int:
        """Make the staged state of ``round_idx``'s accepted clients permanent; returns how many."""
        if self.staged_round != round_idx:
            return 0
        for cid, st in self.staged.items():
            if cid in self.own:
                if st:
                    self.state[cid] = st
                else:
                    self.state.pop(cid, None)
            elif st:  # a visitor: built for one call, its state would be lost (and differ by host)
                raise RuntimeError(
                    f"{type(self.algorithm).__name__} wrote client state for client {cid} but its "
                    "traits say client_state=False: declare client_state=True so its clients stay "
                    "on one actor"
                )
        n = len(self.staged)
        self.staged = {}
        return n

    def evaluate(
        self, broadcast: Mapping[str, np.ndarray], client_ids: np.ndarray | None = None
    ) -> PersonalColumns:
        """Every hosted client's personalised model on its local test split (``client_ids``: only
        those of them, a sorted sample), column-wise; clients without test examples are left out.

        Clients the algorithm scores with a shared broadcast model (``personal_model_keys``) are
        scored together: one pass per (model, input rotation) over the union of their test
        examples (``score_batch``), each client's figures then gathered and summed from the
        per-example results. The last-bit policy: correct counts are exact integers, the same as
        one forward pass per client gives (barring an argmax tie broken differently in the last
        bit); a client's loss is the float64 sum, in its own example order, of its examples'
        float32 cross-entropies from the shared pass, divided by its count, so it may differ
        from the per-client path's (float32 batch sums) in the last bits. Every example is
        computed in a fixed block of the dataset (``EVAL_BLOCK``) whatever else is needed, so the
        figures do not depend on which clients an actor hosts. The other clients are scored one
        by one with ``personal_params`` (and their adapter and buffers)."""
        rows = np.arange(len(self.own), dtype=np.int64)
        if client_ids is not None and len(rows):
            want = np.asarray(client_ids, dtype=np.int64)
            pos = np.minimum(np.searchsorted(self.own.client_ids, want), len(rows) - 1)
            rows = np.unique(pos[self.own.client_ids[pos] == want])
        off = self.own.test_off
        rows = rows[off[rows + 1] > off[rows]]  # no test examples: not scored
        ids = self.own.client_ids[rows]
        keys = self.algorithm.personal_model_keys(broadcast, _Batch(self, rows))
        which = np.asarray(keys.which, dtype=np.int64)
        if which.shape != rows.shape or ((which < PER_CLIENT) | (which >= len(keys.keys))).any():
            raise ValueError(
                f"{type(self.algorithm).__name__}.personal_model_keys returned {which.shape[0]} indices "
                f"for {len(rows)} clients, or one outside -1..{len(keys.keys) - 1}: a bug in the algorithm"
            )
        ev = self.score_batch(rows, "test", [broadcast[k] for k in keys.keys], which)
        n, correct = ev.n.copy(), ev.correct.copy()
        loss = ev.loss_sum / np.maximum(ev.n, 1)
        for i in np.flatnonzero(which == PER_CLIENT).tolist():
            one = self.score_one(int(ids[i]), broadcast)
            n[i], correct[i], loss[i] = one.n, one.correct, one.loss
        self._peak_rss = max(self._peak_rss, self._proc.memory_info().rss)
        return PersonalColumns(
            client_id=ids.copy(), n=n, correct=correct, loss=loss, shared=int((which >= 0).sum())
        )

    def score_one(
        self, client_id: int, broadcast: Mapping[str, np.ndarray], finetune: LocalHParams | None = None
    ) -> EvalResult:
        """One hosted client's personalised model (``personal_params`` with its adapter and
        buffers) on its local test split; with ``finetune``, after that much local training on its
        own training split first (a common fine-tuning step, reproductions' scoring)."""
        c = self.client(client_id)
        assert c is not None  # one of this host's own
        ctx = _Context(self, c, -1, broadcast)
        params = self.algorithm.personal_params(broadcast, ctx)
        adapter = self.algorithm.personal_adapter(ctx)  # e.g. DSAC's eq. (10) input map
        buffers = self.algorithm.personal_buffers(ctx)  # e.g. FedBN's local BatchNorm statistics
        if finetune is not None and len(c.train_idx) > 0:
            fit = ctx.fit(params, hparams=finetune, adapter=adapter, buffers=buffers)
            params = fit.params
            adapter = fit.adapter if adapter is not None else None
            buffers = fit.buffers if buffers is not None else None
        return self.trainer.evaluate(
            params,
            self.x_test,
            c.y_test,
            idx=c.test_idx,
            rotation=c.rotation,
            adapter=adapter,
            buffers=buffers,
        )

    def _split(self, split: str) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
        t = self.own
        if split == "test":
            return self.x_test, self.y_test_all, t.test_idx, t.test_off
        if split == "val":
            return self.x_train, self.y_train_all, t.val_idx, t.val_off
        if split == "train":
            return self.x_train, self.y_train_all, t.train_idx, t.train_off
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")

    def score_batch(
        self,
        rows: np.ndarray,
        split: str,
        params: Sequence[Params],
        model: np.ndarray,
        limit: int | None = None,
    ) -> BatchEval:
        """Own clients ``rows`` (of the ShardTable) on their ``split``, client i with
        ``params[model[i]]`` (``model[i] < 0``: not scored, zeros), in one pass per (model, input
        rotation): the union of the examples needed, in whole fixed blocks of ``EVAL_BLOCK``
        dataset indices (sorted), so that an example's result never depends on what else is
        evaluated; then per-example correctness and float32 loss in each client's label space,
        summed per client (``np.bincount``: in each client's own example order). ``limit``: each
        client's ``subset_positions`` of its split only."""
        x, y_all, flat, off = self._split(split)
        m = len(rows)
        starts = off[rows]
        sizes = np.where(model >= 0, off[rows + 1] - starts, 0)
        lens = sizes if limit is None else np.minimum(sizes, int(limit))
        total = int(lens.sum())
        owner = np.repeat(np.arange(m, dtype=np.int64), lens)
        ends = np.cumsum(lens)
        within = subset_positions(sizes, limit)  # 0..len-1 for each client without a limit
        ex = flat[np.repeat(starts, lens) + within]
        y = np.asarray(y_all[ex], dtype=np.int64)
        pid = self.own.perm_id[rows][owner]
        mapped = pid >= 0
        if mapped.any():
            y[mapped] = self.own.perms[pid[mapped], y[mapped]]
        if split != "test" and self.spec.noisy_clients:  # their train/val labels are their random ones
            cids = self.own.client_ids[rows]
            for i in np.flatnonzero(np.isin(cids, list(self.spec.noisy_clients)) & (lens > 0)).tolist():
                ytr, yva, _ = make_client_labels(
                    self.own.shard(int(cids[i])),
                    self.y_train_all,
                    self.y_test_all,
                    self.spec.num_classes,
                    True,
                    self.spec.seed,
                )
                mine = within[ends[i] - lens[i] : ends[i]]
                y[ends[i] - lens[i] : ends[i]] = (ytr if split == "train" else yva)[mine]
        rot = self.own.rotation[rows][owner]
        group = model[owner] * 4 + rot
        loss = np.zeros(total, dtype=np.float64)
        hit = np.zeros(total, dtype=np.float64)
        order = np.argsort(group, kind="stable")
        for seg in np.split(order, np.flatnonzero(np.diff(group[order])) + 1):
            if not len(seg):
                continue
            k, r = divmod(int(group[seg[0]]), 4)
            e = ex[seg]
            blocks = np.unique(e // EVAL_BLOCK)
            need = (blocks[:, None] * EVAL_BLOCK + np.arange(EVAL_BLOCK)).reshape(-1)
            need = need[need < len(x)]
            preds, logp = self.trainer.predict_examples(params[k], x, need, rotation=r, batch_size=EVAL_BLOCK)
            at, yy = np.searchsorted(need, e), y[seg]
            loss[seg] = -logp[at, yy]
            hit[seg] = preds[at] == yy
        return BatchEval(
            n=np.bincount(owner, minlength=m).astype(np.int64),
            correct=np.bincount(owner, weights=hit, minlength=m).astype(np.int64),
            loss_sum=np.bincount(owner, weights=loss, minlength=m),
        )

    def get_state(self) -> dict[int, dict[str, Any]]:
        return {cid: dict(st) for cid, st in sorted(self.state.items()) if st}

    def set_state(self, states: Mapping[int, dict[str, Any]]) -> None:
        """Every home client's state becomes its entry in ``states`` (a checkpoint's client states),
        and empty when it has none: a client that had no state at the checkpoint must not keep
        what it gained later (a restore into live actors, e.g. after a lost server)."""
        self.state = {cid: dict(st) for cid in self.home if (st := states.get(cid))}
        self.staged, self.staged_round, self.staged_singles = {}, -1, {}

    def stats(self) -> dict[str, Any]:
        rss = self._proc.memory_info().rss
        self._peak_rss = max(self._peak_rss, rss)
        return {
            "actor": self.host_id,
            "pid": os.getpid(),
            "num_clients": len(self.home),
            "rss_mb": rss / 2**20,
            "peak_rss_mb": self._peak_rss / 2**20,
            "cpu_percent": self._proc.cpu_percent(None),
            # page faults served without I/O since the process started: the cost of memory the
            # allocator gave back to the OS and took again (see actors.backend.ACTOR_ENV)
            "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt,
            "device": str(self.device),
            "gpu_ids": ",".join(str(g) for g in self.gpu_ids),
        }


class _Batch:
    """``ClientBatch``: rows of a host's own clients, scored in batched passes."""

    def __init__(self, host: ClientHost, rows: np.ndarray) -> None:
        self._host, self._rows = host, rows
        self.client_ids = host.own.client_ids[rows]
        with_state = np.fromiter(host.state.keys(), dtype=np.int64, count=len(host.state))
        self.stateless = ~np.isin(self.client_ids, with_state)

    def evaluate(self, params: Params, split: str = "val", *, limit: int | None = None) -> BatchEval:
        model = np.zeros(len(self._rows), dtype=np.int64)
        return self._host.score_batch(self._rows, split, [params], model, limit)


def client_error(client_id: int, exc: BaseException) -> ClientError:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return ClientError(
        client_id=client_id,
        signature=f"{type(exc).__name__}{where}",
        traceback="".join(traceback.format_exception(exc)),
    )
