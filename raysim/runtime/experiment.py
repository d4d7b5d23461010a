"""The driver: one round loop for every backend.

``Experiment.prepare()`` does everything that can fail because of the user's input (config,
data files, cluster resources) before the run directory exists; ``run()`` then loops over
rounds, logs, checkpoints every k rounds and shows progress.
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

from raysim.algorithms import build_algorithm
from raysim.algorithms.base import SetupContext
from raysim.config import ConfigError, ExperimentConfig, check_data_available, config_from_dict, dump_config
from raysim.models.flat import init_params
from raysim.runtime.host import ClientHost, HostSpec
from raysim.runtime.logger import RunLogger, atomic_write_bytes
from raysim.runtime.serial import SerialPool
from raysim.runtime.server import EvalSpec, RoundReport, Server


class SerialBackend:
    """Everything in this process: hosts and server are plain objects."""

    def __init__(self) -> None:
        self.server: Server | None = None
        self.hosts: list[ClientHost] = []

    def cluster(self) -> tuple[float, float]:
        return float(os.cpu_count() or 1), 0.0

    def start(
        self,
        *,
        algorithm: Any,
        dataset: Any,
        host_shards: list[list[Any]],
        spec: HostSpec,
        num_cpus: float,
        num_gpus: float,
        max_restarts: int,
        server_kwargs: dict[str, Any],
        roam: bool = False,
    ) -> None:
        everyone = [s for shards in host_shards for s in shards] if roam else []
        self.hosts = [
            ClientHost(h, algorithm, dataset, shards, spec, visitors=everyone)
            for h, shards in enumerate(host_shards)
        ]
        sizes = {s.client_id: len(s.train_idx) for s in everyone} if roam else None
        self.server = Server(pool=SerialPool(self.hosts, roam_sizes=sizes), **server_kwargs)

    def _srv(self) -> Server:
        if self.server is None:
            raise RuntimeError("backend not started")
        return self.server

    def run_round(self, t: int) -> RoundReport:
        return self._srv().run_round(t)

    def checkpoint(self) -> dict[str, Any]:
        return self._srv().checkpoint()

    def restore(self, ckpt: dict[str, Any]) -> None:
        self._srv().restore(ckpt)

    def system_stats(self) -> list[dict[str, Any]]:
        return self._srv().system_stats()

    def models(self) -> dict[str, np.ndarray]:
        return self._srv().models()

    def shutdown(self) -> None:
        self.server, self.hosts = None, []


def make_backend(cfg: ExperimentConfig, address: str | None = None) -> Any:
    if cfg.resources.backend == "serial":
        return SerialBackend()
    from raysim.runtime.ray_backend import RayBackend

    return RayBackend(address or cfg.resources.address)


def pack_clients(shards: list[Any], num_hosts: int) -> list[list[Any]]:
    """Spread clients over ``num_hosts`` actors so that each holds about the same number of
    training examples (greedy: biggest client first onto the lightest actor that has fewer
    than ceil(C / A) clients; ties by id).

    A round waits for its slowest actor, so balancing work matters more than contiguous ids.
    Which actor hosts a client never changes its results (its RNG depends on the client only).
    """
    num_hosts = max(1, min(num_hosts, len(shards)))
    cap = math.ceil(len(shards) / num_hosts)
    loads = [0] * num_hosts
    counts = [0] * num_hosts
    hosts: list[list[Any]] = [[] for _ in range(num_hosts)]
    for s in sorted(shards, key=lambda s: (-len(s.train_idx), s.client_id)):
        h = min((i for i in range(num_hosts) if counts[i] < cap), key=lambda i: (loads[i], counts[i], i))
        hosts[h].append(s)
        loads[h] += len(s.train_idx)
        counts[h] += 1
    return [sorted(h, key=lambda s: s.client_id) for h in hosts]


def pick_noisy(num_clients: int, fraction: float, seed: int) -> frozenset[int]:
    k = int(round(fraction * num_clients))
    rng = np.random.default_rng([seed, 424242])
    return frozenset(int(c) for c in rng.choice(num_clients, size=k, replace=False)) if k else frozenset()


def unique_run_dir(base: Path, name: str) -> Path:
    path = base / name
    i = 2
    while path.exists():
        path = base / f"{name}-{i}"
        i += 1
    return path


@dataclass
class Prepared:
    dataset: Any
    federation: Any
    shards: list[Any]


def pooled_shard(shards: list[Any]) -> Any:
    """All shards as one client (the Centralised reference point)."""
    from raysim.data import ClientShard

    cat = np.concatenate
    return ClientShard(
        client_id=0,
        train_idx=cat([s.train_idx for s in shards]),
        val_idx=cat([s.val_idx for s in shards]),
        test_idx=cat([s.test_idx for s in shards]),
        group=-1,
        rotation=0,
        label_perm=None,
    )


class Experiment:
    def __init__(
        self,
        cfg: ExperimentConfig,
        *,
        address: str | None = None,
        progress: bool | None = None,
        run_dir: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.address = address
        self.progress = cfg.output.progress if progress is None else progress
        self.run_dir = run_dir
        self.backend: Any = None
        self.logger: RunLogger | None = None
        self.algorithm = build_algorithm(cfg.algorithm.name, cfg.algorithm.params)
        self.start_round = 1
        self.num_hosts = 0
        self.t_setup = 0.0

    # -- set-up: everything that can fail on user input happens here ----------------------
    def prepare(self) -> None:
        from raysim.data import build_federation, load_dataset, write_summary

        cfg, d = self.cfg, self.cfg.data
        t0 = time.perf_counter()
        check_data_available(cfg)
        try:
            ds = load_dataset(
                d.dataset,
                data_dir=d.data_dir,
                seed=cfg.seed,
                num_clients=d.num_clients,
                synthetic_alpha=d.synthetic_alpha,
                synthetic_beta=d.synthetic_beta,
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
            )
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"data: {exc}") from None
        shards = list(fed.clients)
        if self.algorithm.pooled:  # type: ignore[attr-defined]
            shards = [pooled_shard(shards)]
        self.dataset, self.federation, self.shards = ds, fed, shards

        backend = make_backend(cfg, self.address)
        cpus, gpus = backend.cluster()
        n_hosts = min(len(shards), cfg.num_client_actors(cpus, gpus))
        host_shards = pack_clients(shards, n_hosts)
        self.num_hosts = len(host_shards)
        spec = HostSpec(
            model=cfg.model.name,
            input_shape=tuple(ds.input_shape),
            num_classes=ds.num_classes,
            mean=tuple(ds.mean),
            std=tuple(ds.std),
            seed=cfg.seed,
            torch_threads=cfg.resources.torch_threads,
            noisy_clients=pick_noisy(len(shards), d.label_noise, cfg.seed),
        )
        params0 = init_params(cfg.model.name, tuple(ds.input_shape), ds.num_classes, cfg.seed)
        from raysim.models import ParamLayout, build_model

        layout = ParamLayout.of(build_model(cfg.model.name, tuple(ds.input_shape), ds.num_classes))
        trainer_kwargs = {
            "model": cfg.model.name,
            "input_shape": tuple(ds.input_shape),
            "num_classes": ds.num_classes,
            "mean": tuple(ds.mean),
            "std": tuple(ds.std),
        }
        ctx = SetupContext(
            num_clients=len(shards),
            client_sizes=np.array([len(s.train_idx) for s in shards]),
            layout=layout,
            num_classes=ds.num_classes,
            seed=cfg.seed,
            local=cfg.local.model_dump(),
            num_rounds=cfg.rounds.num_rounds,
            clients_per_round=min(cfg.rounds.clients_per_round, len(shards)),
            client_groups=np.array([s.group for s in shards]),
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
            trainer_kwargs=trainer_kwargs,
            torch_threads=cfg.resources.torch_threads,
        )
        server_kwargs = {
            "algorithm": self.algorithm,
            "init_params": params0,
            "ctx": ctx,
            "seed": cfg.seed,
            "eval_spec": eval_spec,
            "deadline_s": cfg.rounds.deadline_s,
        }
        backend.start(
            algorithm=self.algorithm,
            dataset=ds,
            host_shards=host_shards,
            spec=spec,
            num_cpus=cfg.resources.num_cpus,
            num_gpus=cfg.resources.num_gpus,
            max_restarts=cfg.resources.max_restarts,
            server_kwargs=server_kwargs,
            roam=self.roams(len(host_shards)),
        )
        self.backend = backend

        # Only now, with nothing left to refuse, does the run directory appear.
        if self.run_dir is None:
            self.run_dir = unique_run_dir(Path(cfg.output.dir), cfg.output.name or cfg.name)
            self.run_dir.mkdir(parents=True)
            atomic_write_bytes(self.run_dir / "config.yaml", dump_config(cfg).encode())
            write_summary(fed, ds, self.run_dir / "partition.parquet")
        self.logger = RunLogger(self.run_dir)
        self.t_setup = time.perf_counter() - t0

    def roams(self, num_hosts: int) -> bool:
        """Clients train on whichever actor has least work this round when the algorithm keeps
        no per-client state and the packing is ``auto`` (``clients_per_actor: N`` pins them)."""
        stateful = getattr(self.algorithm, "client_state", True)
        return num_hosts > 1 and not stateful and self.cfg.resources.clients_per_actor == "auto"

    # -- checkpoints -----------------------------------------------------------------------
    def _ckpt_dir(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "checkpoints"

    def save_checkpoint(self, t: int) -> Path:
        assert self.logger is not None
        d = self._ckpt_dir()
        d.mkdir(exist_ok=True)
        blob = {"round": t, "server": self.backend.checkpoint(), "log": self.logger.state()}
        path = d / f"round_{t:05d}.pkl"
        atomic_write_bytes(path, pickle.dumps(blob, protocol=pickle.HIGHEST_PROTOCOL))
        for old in sorted(d.glob("round_*.pkl"))[:-2]:  # keep the newest two
            old.unlink()
        return path

    def restore_latest(self) -> int:
        assert self.logger is not None
        ckpts = sorted(self._ckpt_dir().glob("round_*.pkl"))
        if not ckpts:
            raise ConfigError(
                f"--resume {self.run_dir}: no checkpoint in {self._ckpt_dir()} "
                "(set rounds.checkpoint_every > 0 to write them)"
            )
        blob = pickle.loads(ckpts[-1].read_bytes())
        self.backend.restore(blob["server"])
        self.logger.restore(blob["log"])
        self.start_round = int(blob["round"]) + 1
        return int(blob["round"])

    # -- the loop --------------------------------------------------------------------------
    def run_round(self, t: int) -> RoundReport:
        assert self.logger is not None
        report = self.backend.run_round(t)
        self.logger.log_round(report.metrics, report.clients)
        if "test_accuracy" in report.metrics or "personal_accuracy" in report.metrics:
            rows = self.backend.system_stats()
            rows.append(driver_stats())
            self.logger.log_system(t, rows)
        every = self.cfg.rounds.checkpoint_every
        if every and t % every == 0:
            self.logger.flush()
            self.save_checkpoint(t)
        return report

    def run(self, until: int | None = None) -> dict[str, Any]:
        if self.backend is None:
            self.prepare()
        assert self.logger is not None
        last = self.cfg.rounds.num_rounds if until is None else until
        t_start = time.perf_counter()
        with ProgressView(self.cfg.rounds.num_rounds, self.start_round, enabled=self.progress) as view:
            for t in range(self.start_round, last + 1):
                report = self.run_round(t)
                view.update(t, report.metrics)
        self.logger.flush()
        summary = self.summary(time.perf_counter() - t_start)
        self.logger.write_summary(summary)
        return summary

    def summary(self, loop_seconds: float) -> dict[str, Any]:
        assert self.logger is not None
        rounds = self.logger.rounds
        acc = [r.get("test_accuracy", float("nan")) for r in rounds]
        acc = [a for a in acc if a == a]
        pacc = [r["personal_accuracy"] for r in rounds if "personal_accuracy" in r]
        peak = [r.get("peak_rss_mb", 0.0) for r in self.logger.system]
        return {
            "name": self.cfg.name,
            "algorithm": self.cfg.algorithm.name,
            "rounds": len(rounds),
            "final_test_accuracy": acc[-1] if acc else None,
            "best_test_accuracy": max(acc) if acc else None,
            "final_personal_accuracy": pacc[-1] if pacc else None,
            "total_seconds": self.t_setup + loop_seconds,
            "setup_seconds": self.t_setup,
            "loop_seconds": loop_seconds,
            "median_round_seconds": float(np.median([r["round_s"] for r in rounds])) if rounds else None,
            "peak_rss_mb": max(peak) if peak else driver_stats()["peak_rss_mb"],
            "total_peak_rss_mb": sum(
                max((r["peak_rss_mb"] for r in self.logger.system if r["actor"] == a), default=0.0)
                for a in {r["actor"] for r in self.logger.system}
            ),
            "dropouts": int(sum(r.get("dropouts", 0) for r in rounds)),
            "lost_clients": int(rounds[-1].get("lost_clients", 0)) if rounds else 0,
            "bytes_up": float(sum(r.get("bytes_up", 0) for r in rounds)),
            "bytes_down": float(sum(r.get("bytes_down", 0) for r in rounds)),
            "client_actors": self.num_hosts,
            "run_dir": str(self.run_dir),
        }

    def close(self) -> None:
        if self.backend is not None:
            self.backend.shutdown()
            self.backend = None

    @classmethod
    def resume(cls, run_dir: Path, *, address: str | None = None, progress: bool | None = None) -> Experiment:
        cfg_path = Path(run_dir) / "config.yaml"
        if not cfg_path.is_file():
            raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
        cfg = config_from_dict(yaml.safe_load(cfg_path.read_text()), str(cfg_path))
        exp = cls(cfg, address=address, progress=progress, run_dir=Path(run_dir))
        exp.prepare()
        exp.restore_latest()
        return exp


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


class ProgressView:
    """A rich progress bar (round, accuracy, ETA) on a terminal; a plain line per evaluation
    otherwise (CI logs, files)."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.total, self.start, self.enabled = total, start, enabled
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.t0 = time.perf_counter()

    def __enter__(self) -> ProgressView:
        if self.enabled and self.tty:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("round {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("rounds", total=self.total, completed=self.start - 1, info="")
        return self

    def update(self, t: int, m: dict[str, float]) -> None:
        if not self.enabled:
            return
        info = []
        if m.get("test_accuracy", float("nan")) == m.get("test_accuracy"):
            info.append(f"acc {m['test_accuracy']:.4f}")
        if "personal_accuracy" in m:
            info.append(f"pers {m['personal_accuracy']:.4f}")
        if m.get("dropouts"):
            info.append(f"drop {int(m['dropouts'])}")
        if self.bar is not None:
            if info:
                self.bar.update(self.task, completed=t, info=" ".join(info))
            else:
                self.bar.update(self.task, completed=t)
        elif info:
            done = t - self.start + 1
            eta = (time.perf_counter() - self.t0) / done * (self.total - t)
            print(f"round {t}/{self.total} {' '.join(info)} eta {eta:.0f}s", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
