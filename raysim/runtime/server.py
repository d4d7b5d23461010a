"""Server: owns the algorithm state and runs one round (DESIGN section 3, steps 1-6).

The same plain class runs in-process (serial backend) and inside the Ray ``ServerActor``;
only the ``pool`` it talks to differs (in-process hosts or client actors).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch

from raysim.algorithms.base import Algorithm, ClientResult, ClientTask, LinearSum, SetupContext
from raysim.metrics import classification_metrics
from raysim.models.flat import Params
from raysim.runtime.trainer import Trainer


def round_rng(seed: int, round_idx: int, purpose: int = 0) -> np.random.Generator:
    """Server randomness of one round: a function of (seed, round) only, so a resumed run
    draws exactly what the uninterrupted run drew."""
    return np.random.default_rng([seed, round_idx, 1_000_003, purpose])


@dataclass(frozen=True, kw_only=True)
class PoolReply:
    results: list[ClientResult]
    partials: list[LinearSum]
    dropouts: list[tuple[int, str]]
    broadcast_s: float
    train_s: float
    transfer_bytes_up: int
    lost_clients: list[int] = field(default_factory=list)  # clients whose actor died for good
    host_seconds: list[float] = field(default_factory=list)  # busy time of each actor that replied


class Pool(Protocol):
    def available(self) -> list[int]: ...
    def run(
        self,
        round_idx: int,
        tasks: Sequence[ClientTask],
        models: Mapping[str, np.ndarray],
        deadline_s: float | None,
    ) -> PoolReply: ...
    def evaluate(self, models: Mapping[str, np.ndarray]) -> list[dict[str, float]]: ...
    def get_state(self) -> dict[int, dict[str, Any]]: ...
    def set_state(self, states: Mapping[int, dict[str, Any]]) -> None: ...
    def stats(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True, kw_only=True)
class EvalSpec:
    every: int
    num_rounds: int
    personal: bool
    test_x: Any
    test_y: np.ndarray
    public_x: Any = None  # the public split (pre-training data no client holds), or None
    public_y: np.ndarray | None = None
    trainer_kwargs: Mapping[str, Any]
    torch_threads: int = 1


@dataclass(frozen=True, kw_only=True)
class RoundReport:
    round: int
    metrics: dict[str, float]
    clients: list[dict[str, Any]]  # one row per client touched this round


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
    ) -> None:
        torch.set_num_threads(eval_spec.torch_threads)
        self.algorithm = algorithm
        self.pool = pool
        self.seed = seed
        self.deadline_s = deadline_s
        self.eval = eval_spec
        self.trainer = Trainer(**eval_spec.trainer_kwargs)
        if eval_spec.public_x is not None and len(eval_spec.public_x):
            ctx = replace(ctx, public_fit=self._public_fit)
        self.state = algorithm.init(init_params, ctx)
        self.last_models: Mapping[str, np.ndarray] = dict(algorithm.models(self.state))
        self.lost: set[int] = set()

    def _public_fit(self, params: Params, **hp: Any) -> Any:
        hp.setdefault("seed", self.seed)
        assert self.eval.public_y is not None
        return self.trainer.fit(params, self.eval.public_x, self.eval.public_y, **hp)

    # -- one round -------------------------------------------------------------------------
    def run_round(self, t: int) -> RoundReport:
        algo = self.algorithm
        m: dict[str, float] = {"round": float(t)}
        t0 = time.perf_counter()
        available = [c for c in self.pool.available() if c not in self.lost]
        tasks = algo.configure_round(self.state, t, available, round_rng(self.seed, t))
        models = algo.models(self.state)
        needed = sorted({k for task in tasks for k in (task.model_key, *task.broadcast_keys)})
        sent = {k: models[k] for k in needed}
        m["configure_s"] = time.perf_counter() - t0

        reply = self.pool.run(t, tasks, sent, self.deadline_s)
        self.lost.update(reply.lost_clients)
        m["broadcast_s"], m["train_s"] = reply.broadcast_s, reply.train_s
        if reply.host_seconds:  # train_s minus the slowest actor's busy time is the runtime's overhead
            m["actor_busy_max_s"] = max(reply.host_seconds)
            m["actor_busy_mean_s"] = float(np.mean(reply.host_seconds))

        t1 = time.perf_counter()
        payload: list[ClientResult | LinearSum]
        if algo.linear:  # pre-summed partials plus any result that still carries its update
            payload = [*reply.partials, *(r for r in reply.results if r.delta is not None)]
        else:
            payload = list(reply.results)
        self.state, agg_metrics = algo.aggregate(self.state, t, payload, round_rng(self.seed, t, 1))
        m["aggregate_s"] = time.perf_counter() - t1
        m.update({k: float(v) for k, v in agg_metrics.items()})
        self.last_models = dict(algo.models(self.state))

        by_task = {task.client_id: task for task in tasks}
        m["cohort"] = float(len(tasks))
        m["completed"] = float(len(reply.results))
        m["dropouts"] = float(len(reply.dropouts))
        m["lost_clients"] = float(len(self.lost))
        m["bytes_down"] = float(
            sum(sum(sent[k].nbytes for k in (task.model_key, *task.broadcast_keys)) for task in tasks)
        )
        m["bytes_up"] = float(sum(r.metrics.get("upload_bytes", 0.0) for r in reply.results))
        m["transfer_bytes_up"] = float(reply.transfer_bytes_up)
        losses = [r.metrics["train_loss"] for r in reply.results if "train_loss" in r.metrics]
        m["train_loss"] = float(np.mean(losses)) if losses else float("nan")

        rows: list[dict[str, Any]] = [
            {
                "round": t,
                "client_id": r.client_id,
                "participated": True,
                "dropped": False,
                "reason": "",
                "num_examples": r.num_examples,
                "train_loss": float(r.metrics.get("train_loss", np.nan)),
                "model_key": by_task[r.client_id].model_key if r.client_id in by_task else "",
            }
            for r in reply.results
        ]
        rows += [
            {
                "round": t,
                "client_id": cid,
                "participated": True,
                "dropped": True,
                "reason": reason,
                "num_examples": 0,
                "train_loss": float("nan"),
                "model_key": by_task[cid].model_key if cid in by_task else "",
            }
            for cid, reason in reply.dropouts
        ]

        annotate = getattr(algo, "client_annotations", None)
        if annotate is not None:  # e.g. cluster id and aggregation weight of every client this round
            notes = annotate(self.state)
            for row in rows:
                row.update(notes.get(row["client_id"], {}))

        t2 = time.perf_counter()
        if t % self.eval.every == 0 or t == self.eval.num_rounds:
            m.update(self.evaluate(rows, t))
        m["evaluate_s"] = time.perf_counter() - t2
        m["round_s"] = time.perf_counter() - t0
        return RoundReport(round=t, metrics=m, clients=rows)

    def evaluate(self, rows: list[dict[str, Any]], t: int) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.algorithm.global_model:  # type: ignore[attr-defined]
            ev = self.trainer.evaluate(self.last_models["global"], self.eval.test_x, self.eval.test_y)
            out.update(
                {f"test_{k}": v for k, v in classification_metrics(ev.labels, ev.preds, ev.loss).items()}
            )
        else:
            out.update(
                {"test_accuracy": float("nan"), "test_loss": float("nan"), "test_macro_f1": float("nan")}
            )
        if self.eval.personal:
            per = self.pool.evaluate(self.last_models)
            n = sum(p["n"] for p in per)
            if n:
                out["personal_accuracy"] = sum(p["correct"] for p in per) / n
                out["personal_loss"] = sum(p["loss"] * p["n"] for p in per) / n
                accs = np.array([p["correct"] / p["n"] for p in per])
                out["personal_accuracy_mean"] = float(accs.mean())
                out["personal_accuracy_p10"] = float(np.percentile(accs, 10))
            for p in per:
                rows.append(
                    {
                        "round": t,
                        "client_id": int(p["client_id"]),
                        "participated": False,
                        "dropped": False,
                        "reason": "",
                        "num_examples": 0,
                        "train_loss": float("nan"),
                        "model_key": "",
                        "personal_accuracy": p["correct"] / p["n"],
                        "personal_loss": p["loss"],
                    }
                )
        return out

    # -- checkpoint ------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        return {"state": self.state, "client_states": self.pool.get_state(), "lost": sorted(self.lost)}

    def restore(self, ckpt: Mapping[str, Any]) -> None:
        self.state = ckpt["state"]
        self.pool.set_state(ckpt["client_states"])
        self.lost = set(ckpt.get("lost", []))
        self.last_models = dict(self.algorithm.models(self.state))

    def models(self) -> dict[str, np.ndarray]:
        return dict(self.last_models)

    def system_stats(self) -> list[dict[str, Any]]:
        return self.pool.stats()
