"""The driver: one experiment, step by step, on any backend.

The CLI, the benchmarks and the Tune trainable all drive a run through the same steps::

    exp = Experiment(cfg, backends=raysim.api.BACKENDS)  # nothing happens yet
    exp.prepare()                   # everything that can fail on user input, then the run directory
    while not exp.should_stop():    # the last round, algorithm convergence, or a user callback
        report = exp.step()         # one round (optionally with hyperparameter overrides)
    exp.save(directory)             # the whole FL state, into any directory
    exp.restore(directory)          # ... and back, in a fresh experiment (fresh actors)
    exp.close()

``run()`` is that loop with periodic checkpoints, a progress view and the summary. The Ray backend
is handed in (``backends``; ``raysim.api.experiment`` does it): the core has only the serial one.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from raysim import provenance, reproducible
from raysim.algorithms import build_algorithm
from raysim.algorithms.base import LocalHParams, SetupContext
from raysim.atomic import atomic_write_bytes
from raysim.config import (
    ConfigError,
    ExperimentConfig,
    check_data_available,
    check_output_dir,
    dump_config,
    load_config,
)
from raysim.metrics import headline_values
from raysim.models.flat import init_params
from raysim.runtime import rundir
from raysim.runtime.backend import (
    Backend,
    BackendFactory,
    ServerLost,
    Share,
    StartSpec,
    backend_factory,
    make_backend,
)
from raysim.runtime.host import HostSpec
from raysim.runtime.logger import RunLogger
from raysim.runtime.packing import pack_hosts, pick_noisy, pooled_table, roams
from raysim.runtime.progress import ProgressView
from raysim.runtime.server import EvalSpec, RoundReport
from raysim.runtime.trackers import check_trackers, open_trackers

StopRule = Callable[[RoundReport], bool]


class Experiment:
    def __init__(
        self,
        cfg: ExperimentConfig,
        *,
        address: str | None = None,
        progress: bool | None = None,
        run_dir: Path | None = None,
        share: Share | None = None,
        stop_when: StopRule | None = None,
        backends: Mapping[str, BackendFactory] | None = None,
    ) -> None:
        """``share``: the resources this run may use (default: the whole cluster; a Tune trial
        passes its placement group's). ``stop_when(report)``: a user rule that ends the run early.
        ``backends``: the backend factories by name, for ``resources.backend`` (the entry points hand
        in ``raysim.api.BACKENDS``, the Ray backend; the core itself has only the serial one). A
        ``resources.backend`` with no backend handed in is refused here (ValueError), before anything
        is written."""
        backend_factory(cfg.resources.backend, backends)
        self.cfg = cfg
        self.address = address
        self.progress = cfg.output.progress if progress is None else progress
        self.run_dir = run_dir
        self.share = share
        self.stop_when = stop_when
        self.backends = backends
        self.backend: Backend | None = None
        self.logger: RunLogger | None = None
        self.algorithm = build_algorithm(cfg.algorithm.name, cfg.algorithm.params)
        self.next_round = 1
        self.num_hosts = 0
        self.t_setup = 0.0
        # seconds in the rounds so far, over every rounds() call; a resumed run starts it at the
        # restored rounds' round_s (the attempt that ran them is gone), see ``resume``
        self.loop_seconds = 0.0
        self.resumed_from_round: int | None = None
        # client hyperparameters set with ``set_hparams`` (a schedule, a mutation): plain fields by
        # name over the config's local.*, saved with every checkpoint and restored with it
        self.overrides: dict[str, Any] = {}
        self.server_restarts = 0  # server actors lost and replaced from a checkpoint
        self.last: RoundReport | None = None
        self.last_summary: dict[str, Any] = {}  # what the last run()/rounds() wrote to summary.json

    # -- set-up: everything that can fail on user input happens here ----------------------
    def prepare(self) -> None:
        from raysim.data import TableView, build_federation, load_dataset, write_summary
        from raysim.data.budget import check_dataset_fits

        cfg, d = self.cfg, self.cfg.data
        t0 = time.perf_counter()
        check_data_available(cfg)
        check_trackers(cfg.output.trackers)
        if self.run_dir is None:
            check_output_dir(cfg)
        repro = reproducible.enter(cfg.resources.reproducible)  # before this process computes anything
        try:
            check_dataset_fits(d.dataset, d.num_clients)  # before generating one (ValueError: refused)
            ds = load_dataset(
                d.dataset,
                data_dir=d.data_dir,
                seed=cfg.seed,
                num_clients=d.num_clients,
                synthetic_alpha=d.synthetic_alpha,
                synthetic_beta=d.synthetic_beta,
                params=d.dataset_params,
            )
            fed = build_federation(
                ds,
                scheme=d.partition,
                num_clients=d.num_clients,
                seed=cfg.seed,
                alpha=d.alpha,
                classes_per_client=d.classes_per_client,
                sigma=d.sigma,
                num_groups=d.num_groups,
                val_fraction=d.val_fraction,
                test_per_client=d.test_per_client,
                public_fraction=d.public_fraction,
                examples_per_client=d.examples_per_client,
                partition_params=d.partition_params,
            )
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"data: {exc}") from None
        # the clients as flat arrays from here to the actors (issue 21: no Python object per client)
        table = pooled_table(fed.table) if self.algorithm.traits.pooled else fed.table
        self.dataset, self.federation, self.table = ds, fed, table

        backend = make_backend(
            cfg.resources.backend, self.address or cfg.resources.address, self.share, self.backends
        )
        share = backend.share()
        # a backend that keeps the table in shared memory (Ray's object store) stores it now and
        # hands back its copy: the driver keeps that one and frees its own before anything else
        # starts (10^6 clients: ~280 MB less in the driver's RSS, and its peak)
        store = getattr(backend, "store_clients", None)
        if callable(store):
            stored = store(table)
            if fed.table is table:
                fed = dataclasses.replace(fed, table=stored)
            table = stored
            self.federation, self.table = fed, table
        n_hosts = max(1, min(len(table), cfg.num_client_actors(share.cpus, share.gpus)))
        host_of = pack_hosts(table.client_ids, table.n_train(), n_hosts)
        # each host's clients as a view of the one table (its client ids): the backends ship the
        # table once (Ray: once per node, zero-copy) and each actor its ids
        host_tables = [TableView(table, table.client_ids[host_of == h]) for h in range(n_hosts)]
        self.num_hosts = len(host_tables)
        host_spec = HostSpec(
            model=cfg.model.name,
            model_params=cfg.model.params,
            input_shape=tuple(ds.input_shape),
            num_classes=ds.num_classes,
            mean=tuple(ds.mean),
            std=tuple(ds.std),
            seed=cfg.seed,
            torch_threads=cfg.resources.torch_threads,
            noisy_clients=pick_noisy(len(table), d.label_noise, cfg.seed),
        )
        params0 = init_params(
            cfg.model.name, tuple(ds.input_shape), ds.num_classes, cfg.seed, cfg.model.params
        )
        from raysim.models import ParamLayout, build_model

        layout = ParamLayout.of(
            build_model(cfg.model.name, tuple(ds.input_shape), ds.num_classes, cfg.model.params)
        )
        ctx = SetupContext(
            num_clients=len(table),
            client_sizes=table.n_train(),
            layout=layout,
            num_classes=ds.num_classes,
            seed=cfg.seed,
            local=LocalHParams.of(cfg.local),
            num_rounds=cfg.rounds.num_rounds,
            clients_per_round=min(cfg.rounds.clients_per_round, len(table)),
            client_groups=table.group.copy(),
            init_params=functools.partial(
                init_params, cfg.model.name, tuple(ds.input_shape), ds.num_classes, params=cfg.model.params
            ),
        )
        pub = np.asarray(fed.public_idx, dtype=np.int64)
        eval_spec = EvalSpec(
            every=cfg.rounds.eval_every,
            num_rounds=cfg.rounds.num_rounds,
            personal=cfg.rounds.personal_eval,
            test_x=ds.x_test,
            test_y=ds.y_test,
            public_x=ds.x_train[pub] if len(pub) else None,
            public_y=ds.y_train[pub] if len(pub) else None,
            trainer_kwargs={
                "model": cfg.model.name,
                "model_params": cfg.model.params,
                "input_shape": tuple(ds.input_shape),
                "num_classes": ds.num_classes,
                "mean": tuple(ds.mean),
                "std": tuple(ds.std),
            },
            torch_threads=cfg.resources.torch_threads,
        )
        res = cfg.resources
        self.backend = backend
        backend.start(
            StartSpec(
                algorithm=self.algorithm,
                dataset=ds,
                host_shards=host_tables,
                clients=table,
                host_spec=host_spec,
                num_cpus=res.num_cpus,
                num_gpus=res.num_gpus,
                server_cpus=res.server_cpus,
                server_gpus=res.server_gpus,
                max_restarts=res.max_restarts,
                actor_memory_mb=res.actor_memory_mb,
                cluster_max_cpus=res.cluster_max_cpus,
                cluster_max_gpus=res.cluster_max_gpus,
                cluster_max_memory_gb=res.cluster_max_memory_gb,
                scale_wait_s=res.scale_wait_s,
                server_kwargs={
                    "algorithm": self.algorithm,
                    "init_params": params0,
                    "ctx": ctx,
                    "seed": cfg.seed,
                    "eval_spec": eval_spec,
                    "deadline_s": cfg.rounds.deadline_s,
                    "quarantine_factor": cfg.rounds.quarantine_factor,
                },
                roam=roams(self.algorithm.traits.client_state, len(host_tables), res.clients_per_actor),
                reproducible=res.reproducible,
            )
        )
        cluster = getattr(backend, "nodes", None)  # a distributed backend's nodes (the serial one has none)
        nodes = cluster() if callable(cluster) else None

        # Only now, with nothing left to refuse, does the run directory appear.
        if self.run_dir is None:
            self.run_dir = rundir.unique_run_dir(Path(cfg.output.dir), cfg.output.name or cfg.name)
        if not (self.run_dir / "config.yaml").is_file():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.run_dir / "config.yaml", dump_config(cfg).encode())
            write_summary(fed, ds, self.run_dir / "partition.parquet")
        provenance.write(
            self.run_dir, provenance.collect(backend=res.backend, nodes=nodes, reproducible_state=repro)
        )
        self.logger = RunLogger(self.run_dir, open_trackers(cfg, self.run_dir))
        self.t_setup = time.perf_counter() - t0

    def _backend(self) -> Backend:
        if self.backend is None:
            raise RuntimeError("call prepare() first")
        return self.backend

    def _logger(self) -> RunLogger:
        if self.logger is None:
            raise RuntimeError("call prepare() first")
        return self.logger

    # -- hyperparameters -------------------------------------------------------------------
    def hparams(self, **changes: Any) -> LocalHParams:
        """The client hyperparameters of the next round: the config's local.* with any override
        (and ``changes``, for one round)."""
        return LocalHParams.of(self.cfg.local, **{**self.overrides, **changes})

    def round_hparams(self, t: int, **changes: Any) -> LocalHParams:
        """The client hyperparameters round ``t`` trains with: ``hparams`` with the config's
        per-round decay applied (lr * local.lr_decay ** (t - 1); the record is unchanged at 1.0)."""
        hp = self.hparams(**changes)
        decay = self.cfg.local.lr_decay
        return hp if decay == 1.0 else dataclasses.replace(hp, lr=hp.lr * decay ** (t - 1))

    def set_hparams(self, **overrides: Any) -> None:
        """Override client hyperparameters from the next round on (a schedule, a mutation);
        checked like the config's local.* (names, ranges, the optimizer's rules) right here."""
        unknown = sorted(set(overrides) - set(LocalHParams.names()))
        if unknown:
            raise ValueError(
                f"unknown client hyperparameters {unknown}; known: {sorted(LocalHParams.names())}"
            )
        self.hparams(**overrides)
        self.overrides.update(overrides)

    # -- steps -----------------------------------------------------------------------------
    def step(self, hparams: Mapping[str, float] | None = None) -> RoundReport:
        """Run round ``next_round`` (with ``hparams`` overriding this round only) and log it.

        A server lost meanwhile (``ServerLost``: its actor or its node died) is replaced from the
        newest checkpoint, the rounds after it are replayed, and the round runs again: at most
        ``resources.max_server_restarts`` times in a run (``_recover_server``)."""
        logger = self._logger()
        target = self.next_round
        while True:
            t = self.next_round
            try:
                report, stats = self._round(t, hparams if t == target else None)
            except ServerLost as lost:
                self._recover_server(target, lost)  # next_round: the checkpoint's round + 1
                continue
            logger.log_round(report.metrics, report.clients, report.clusters, personal=report.personal)
            if stats is not None:
                logger.log_system(t, stats)
            self.next_round = t + 1
            self.last = report
            if t == target:
                return report

    def _round(
        self, t: int, hparams: Mapping[str, float] | None
    ) -> tuple[RoundReport, list[dict[str, Any]] | None]:
        """Every call to the server that round ``t`` makes, before anything is logged: a lost
        server anywhere in them means the round runs again."""
        backend = self._backend()
        hp = self.round_hparams(t, **(hparams or {}))
        report = backend.run_round(t, hp)
        if self.cfg.local.lr_decay != 1.0:  # the decayed lr, in rounds.parquet (absent without decay)
            report.metrics["lr"] = hp.lr
        if report.restarted:
            self._restore_restarted(t, report.restarted)
        stats = None
        if "test_accuracy" in report.metrics or "personal_accuracy" in report.metrics:
            stats = [*backend.system_stats(), driver_stats()]
        return report, stats

    def _restore_restarted(self, t: int, clients: list[int]) -> None:
        """Client actors restarted in round ``t`` (a lost node, a stuck call): their clients' state
        went back to the initial one. Give them their state from the newest periodic checkpoint
        (their results of round ``t`` were dropped); without one they keep the initial state."""
        ckpts = rundir.periodic_checkpoints(self.run_dir) if self.run_dir is not None else []
        if not ckpts:
            warnings.warn(
                f"round {t}: the actors of {len(clients)} clients restarted and there is no checkpoint "
                "to restore their state from: they start again from their initial state "
                "(set rounds.checkpoint_every to keep the loss to a few rounds)",
                RuntimeWarning,
                stacklevel=4,
            )
            return
        blob = rundir.read_checkpoint(ckpts[-1])
        saved = blob["server"]["client_states"]
        self._backend().restore_clients({c: saved.get(c, {}) for c in clients})
        warnings.warn(
            f"round {t}: the actors of {len(clients)} clients restarted; their state is restored "
            f"from the checkpoint of round {blob['round']}",
            RuntimeWarning,
            stacklevel=4,
        )

    def _recover_server(self, t: int, lost: ServerLost) -> None:
        """The server actor was lost in round ``t`` (or saving after it): start a fresh one and
        restore the newest periodic checkpoint (model, server state and every client's state); the
        caller replays the rounds after it (``next_round`` is the checkpoint's round + 1), so round
        ``t`` runs as in an uninterrupted run (the rounds are deterministic given the state).
        Without a checkpoint the run cannot continue; past ``resources.max_server_restarts``
        replacements in this run (a server that dies every time, say out of memory in aggregate)
        it stops with the error."""
        ckpts = rundir.periodic_checkpoints(self.run_dir) if self.run_dir is not None else []
        if not ckpts:
            raise ServerLost(
                f"{lost}; no checkpoint to restart it from: set rounds.checkpoint_every "
                "(e.g. 5) so a lost server costs at most that many rounds"
            ) from lost
        cap = self.cfg.resources.max_server_restarts
        while True:
            if self.server_restarts >= cap:
                raise ServerLost(
                    f"{lost}\nThe server actor was lost {self.server_restarts + 1} times in this run and "
                    f"resources.max_server_restarts={cap}: it dies every time (out of memory in the "
                    "algorithm's aggregate? its node keeps going away?). Give it more room "
                    "(resources.server_cpus / server_gpus, a bigger node) or, if its losses are chance, "
                    "raise resources.max_server_restarts"
                ) from lost
            self.server_restarts += 1
            try:
                self._backend().restart_server()
                done = self.restore(ckpts[-1])
                break
            except ServerLost as again:  # the new one was lost as well
                lost = again
        self._logger().reload(upto_round=done)
        warnings.warn(
            f"the server actor was lost before the end of round {t} ({str(lost).splitlines()[0]}); "
            "restarted it from "
            f"the checkpoint of round {done} (restart {self.server_restarts} of at most {cap}), "
            f"replaying rounds {done + 1}..{t - 1}",
            RuntimeWarning,
            stacklevel=4,
        )

    def run_round(self, t: int) -> RoundReport:
        """Round ``t`` (must be the next one), with the periodic checkpoint ``run()`` writes (a
        server lost while it saves is replaced, and the rounds since its checkpoint replayed)."""
        if t != self.next_round:
            raise ValueError(f"round {t} requested, the next round is {self.next_round}")
        report = self.step()
        every = self.cfg.rounds.checkpoint_every
        if every and t % every == 0:
            assert self.run_dir is not None
            while True:
                self._logger().flush()
                try:
                    self.save(rundir.periodic_dir(self.run_dir, t))
                    break
                except ServerLost as lost:
                    self._recover_server(t + 1, lost)
                    while self.next_round <= t:
                        report = self.step()
            rundir.prune_checkpoints(self.run_dir)
        return report

    def should_stop(self) -> bool:
        """The last round ran, the algorithm converged, or the user's ``stop_when`` said so."""
        if self.next_round > self.cfg.rounds.num_rounds:
            return True
        if self.last is None:
            return False
        return self.last.stop or (self.stop_when is not None and bool(self.stop_when(self.last)))

    def save(self, directory: Path | str) -> Path:
        """Write the whole FL state after the last finished round into ``directory``."""
        return rundir.write_checkpoint(
            Path(directory),
            self.next_round - 1,
            self._backend().checkpoint(),
            dump_config(self.cfg),
            hparams=self.overrides,
        )

    def restore(self, directory: Path | str) -> int:
        """Continue from a checkpoint directory (under this experiment's config: a changed lr
        trains with the new lr). The ``set_hparams`` overrides saved with it come back (this
        experiment's own win over them). Returns the checkpoint's round."""
        try:
            blob = rundir.read_checkpoint(Path(directory))
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        self._backend().restore(blob["server"])
        self.overrides = {**blob["hparams"], **self.overrides}
        self.next_round = int(blob["round"]) + 1
        self.last = None
        return int(blob["round"])

    def rounds(self, until: int | None = None) -> Iterator[RoundReport]:
        """Round by round (as ``run()``: periodic checkpoints, the stop rules), each round's report as
        it finishes. Stopping the iteration (``break``, or closing it) stops the run there; either
        way the tables and ``summary.json`` are written when the iteration ends, and a later
        ``rounds()`` goes on from the next round."""
        if self.backend is None:
            self.prepare()
        logger = self._logger()
        last = self.cfg.rounds.num_rounds if until is None else until
        t_start = time.perf_counter()

        def finish() -> None:
            logger.flush()
            self.loop_seconds += time.perf_counter() - t_start
            self.last_summary = self.summary(self.loop_seconds)
            logger.write_summary(self.last_summary)

        try:
            while self.next_round <= last and not self.should_stop():
                yield self.run_round(self.next_round)
        except GeneratorExit:  # the caller stopped early: what ran is the run so far
            finish()
            raise
        finish()  # (a round that raised leaves no summary behind)

    def run(self, until: int | None = None) -> dict[str, Any]:
        """Every round (up to ``until``) with a progress view; the run's summary."""
        if self.backend is None:
            self.prepare()
        with ProgressView(
            self.cfg.rounds.num_rounds,
            self.next_round,
            enabled=self.progress,
            headline=self.algorithm.headline_metrics(),
            num_clients=self.cfg.data.num_clients,
        ) as view:
            for report in self.rounds(until):
                view.update(report.round, report.metrics)
            if self.last is not None and self.last.stop and self.next_round <= self.cfg.rounds.num_rounds:
                view.note(f"the algorithm converged: stopped after round {self.last.round}")
        return self.last_summary

    def summary(self, loop_seconds: float) -> dict[str, Any]:
        logger = self._logger()
        rounds = logger.rounds
        acc = [r.get("test_accuracy", float("nan")) for r in rounds]
        acc = [a for a in acc if a == a]
        pacc = [r["personal_accuracy"] for r in rounds if "personal_accuracy" in r]
        peak = [r.get("peak_rss_mb", 0.0) for r in logger.system]
        algo = self.algorithm
        return {
            "name": self.cfg.name,
            "algorithm": self.cfg.algorithm.name,
            # what to read first (docs/outputs.md): the family's headline metrics, last values
            "family": algo.family,
            "headline": headline_values(rounds, algo.headline_metrics()),
            "test_accuracy_means": algo.test_accuracy_meaning(),
            "num_clients": self.cfg.data.num_clients,
            "rounds": len(rounds),
            "final_test_accuracy": acc[-1] if acc else None,
            "best_test_accuracy": max(acc) if acc else None,
            "final_personal_accuracy": pacc[-1] if pacc else None,
            "total_seconds": self.t_setup + loop_seconds,
            "setup_seconds": self.t_setup,
            "loop_seconds": loop_seconds,
            # the round its newest resume continued after (None: it ran in one go); its times count
            # the lost attempts' rounds by their round_s
            "resumed_from_round": self.resumed_from_round,
            "median_round_seconds": float(np.median([r["round_s"] for r in rounds])) if rounds else None,
            "peak_rss_mb": max(peak) if peak else driver_stats()["peak_rss_mb"],
            "total_peak_rss_mb": sum(
                max((r["peak_rss_mb"] for r in logger.system if r["actor"] == a), default=0.0)
                for a in {r["actor"] for r in logger.system}
            ),
            "dropouts": int(sum(r.get("dropouts", 0) for r in rounds)),
            "server_restarts": self.server_restarts,
            "lost_clients": int(rounds[-1].get("lost_clients", 0)) if rounds else 0,
            "bytes_up": float(sum(r.get("bytes_up", 0) for r in rounds)),
            "bytes_down": float(sum(r.get("bytes_down", 0) for r in rounds)),
            "client_actors": self.num_hosts,
            # the Ray node the server actor ran on (None on serial): on a KubeRay cluster, the head's
            "server_node_id": self._server_node(),
            # the run reached its end (its last round, convergence, a stop rule), not a break:
            # ``--resume-if-present`` prints a finished run's summary instead of running it again
            "finished": self.should_stop(),
            "run_dir": str(self.run_dir),
        }

    def _server_node(self) -> str | None:
        node = getattr(self.backend, "server_node_id", None)
        return node() if callable(node) else None

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
        if self.backend is not None:
            self.backend.shutdown()
            self.backend = None

    @classmethod
    def resume(
        cls,
        run_dir: Path,
        *,
        address: str | None = None,
        progress: bool | None = None,
        backends: Mapping[str, BackendFactory] | None = None,
        share: Share | None = None,
    ) -> Experiment:
        """An interrupted run, restored from its newest periodic checkpoint (``share``: as for a new
        run, the resources it may use; a Tune trial passes its placement group's)."""
        run_dir = Path(run_dir)
        rundir.check_run_dir(run_dir)  # config, tables, newest checkpoint: refused before Ray starts
        ckpts = rundir.periodic_checkpoints(run_dir)
        if not ckpts:
            raise ConfigError(
                f"--resume {run_dir}: no checkpoint in {run_dir / 'checkpoints'} "
                "(set rounds.checkpoint_every > 0 to write them)"
            )
        cfg = load_config(run_dir / "config.yaml")
        exp = cls(cfg, address=address, progress=progress, run_dir=run_dir, share=share, backends=backends)
        exp.prepare()
        t = exp.restore(ckpts[-1])
        exp._logger().reload(upto_round=t)
        exp.resumed_from_round = t
        exp.loop_seconds = float(sum(r.get("round_s", 0.0) for r in exp._logger().rounds))
        return exp

    @classmethod
    def resume_if_present(
        cls,
        cfg: ExperimentConfig,
        *,
        address: str | None = None,
        progress: bool | None = None,
        backends: Mapping[str, BackendFactory] | None = None,
        share: Share | None = None,
    ) -> Experiment | None:
        """``raysim run --resume-if-present``: the run of ``cfg`` in ``output.dir/<output.name or
        name>`` exactly (no ``-2``), so that a job started again (a KubeRay retry) finds it: continued
        from its newest periodic checkpoint (as ``resume``), started there from round 1 when the
        directory is absent or holds no checkpoint yet, or None when the run there finished (its
        summary.json says so). A directory holding another experiment (its config.yaml differs from
        ``cfg`` outside ``rundir.HARMLESS_KEYS``) is refused with a ConfigError, before Ray starts."""
        check_output_dir(cfg)
        run_dir = rundir.stable_run_dir(Path(cfg.output.dir), cfg.output.name or cfg.name)
        state = rundir.run_state(run_dir)
        if state != "new":
            diffs = rundir.saved_config_differences(run_dir, cfg)
            if diffs:
                raise ConfigError(
                    f"--resume-if-present: {run_dir} holds another experiment under the same name; its "
                    f"config.yaml differs from this config in {len(diffs)} value(s): "
                    + "; ".join(diffs[:8])
                    + (" ..." if len(diffs) > 8 else "")
                    + ". Give this run another name (--set output.name=NAME), or continue that one with "
                    f"--resume {run_dir}"
                )
        if state == "finished":
            return None
        if state == "resume":  # under its saved config; where to find Ray and the view: this one's
            return cls.resume(
                run_dir,
                address=address or cfg.resources.address,
                progress=cfg.output.progress if progress is None else progress,
                backends=backends,
                share=share,
            )
        if state == "restart":  # stopped before its first checkpoint: round 1 again, same directory
            rundir.clear_run_files(run_dir)
        return cls(cfg, address=address, progress=progress, run_dir=run_dir, share=share, backends=backends)


def driver_stats() -> dict[str, Any]:
    p = psutil.Process()
    rss = p.memory_info().rss / 2**20
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:  # pragma: no cover - non-POSIX
        peak = rss
    return {
        "actor": -1,
        "pid": os.getpid(),
        "num_clients": 0,
        "rss_mb": rss,
        "peak_rss_mb": max(peak, rss),
        "cpu_percent": p.cpu_percent(None),
        "device": "driver",
        "gpu_ids": "",
    }
