"""Small algorithms that exercise the contract (picklable by value for Ray actors)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from raysim.algorithms.aggregate import fedavg_step
from raysim.algorithms.base import (
    Algorithm,
    ClientResult,
    ClientTask,
    LinearSum,
    RoundContext,
    RoundPlan,
    ServerContext,
    SetupContext,
    Traits,
    sample_cohort,
    sum_by_key,
)
from raysim.algorithms.fedavg import FedAvg, GlobalState

KEYS = ("cluster/0", "cluster/1")


@dataclass(frozen=True, kw_only=True)
class TwoState:
    models: Mapping[str, np.ndarray]


class TwoModels(Algorithm):
    """IFCA in miniature: two cluster models; every client scores both on its validation split,
    trains the better one and returns an update for THAT key. Linear: actors pre-sum per key."""

    name: ClassVar[str] = "two-models"
    traits = Traits(linear=True)

    def init(self, params: np.ndarray, ctx: SetupContext) -> TwoState:
        rng = np.random.default_rng(ctx.seed)
        other = params + rng.normal(0, 0.05, params.shape).astype(np.float32)
        return TwoState(models={KEYS[0]: params.astype(np.float32), KEYS[1]: other})

    def configure_round(self, state: TwoState, rnd: RoundContext) -> tuple[TwoState, RoundPlan]:
        cohort = sample_cohort(rnd.available, rnd.cohort_size, rnd.rng)
        tasks = [
            ClientTask(client_id=c, model_key=KEYS[0], hparams=rnd.hparams, broadcast_keys=(KEYS[1],))
            for c in cohort
        ]
        return state, RoundPlan(tasks=tasks, broadcast=dict(state.models))

    @staticmethod
    def pick(broadcast: Mapping[str, np.ndarray], client) -> str:
        losses = [client.evaluate(broadcast[k], "val").loss for k in KEYS]
        return KEYS[int(np.argmin(losses))]

    def client_update(self, task: ClientTask, params: np.ndarray, client) -> ClientResult:
        key = self.pick(client.broadcast, client)
        start = client.broadcast[key]
        fit = client.fit(start, hparams=task.hparams)
        return ClientResult(
            client_id=task.client_id,
            num_examples=fit.num_examples,
            delta=fit.params - start,
            model_key=key,
            metrics={"train_loss": fit.loss},
        )

    def aggregate(
        self, state: TwoState, results: Sequence[ClientResult | LinearSum], server: ServerContext
    ) -> tuple[TwoState, dict[str, float]]:
        sums = sum_by_key(results)
        models = {k: fedavg_step(v, sums.get(k)) for k, v in state.models.items()}
        return replace(state, models=models), {f"clients_{k}": float(s.num_clients) for k, s in sums.items()}

    def server_model(self, state: TwoState) -> np.ndarray:
        return state.models[KEYS[0]]

    def eval_broadcast(self, state: TwoState) -> Mapping[str, np.ndarray]:
        return dict(state.models)

    def personal_params(self, broadcast: Mapping[str, np.ndarray], client) -> np.ndarray:
        return broadcast[self.pick(broadcast, client)]


class ProxyChecked(FedAvg):
    """FedAvg that evaluates its candidate model on the server's public split inside aggregate
    (AS-CFL's positive-incentive test in miniature) and keeps it only if the proxy loss drops."""

    name: ClassVar[str] = "proxy-checked"

    def aggregate(
        self, state: GlobalState, results: Sequence[ClientResult | LinearSum], server: ServerContext
    ) -> tuple[GlobalState, dict[str, float]]:
        candidate = self.candidate(state, results, server)
        now, cand = server.evaluate(state.params, "public"), server.evaluate(candidate, "public")
        keep = cand.loss <= now.loss
        return replace(state, params=candidate if keep else state.params), {
            "proxy_loss_before": now.loss,
            "proxy_loss_candidate": cand.loss,
            "proxy_accepted": float(keep),
            "proxy_n": float(cand.n),
        }

    def candidate(
        self, state: GlobalState, results: Sequence[ClientResult | LinearSum], server: ServerContext
    ) -> np.ndarray:
        return fedavg_step(state.params, LinearSum.of(results))


class ProxySpoiled(ProxyChecked):
    """ProxyChecked whose candidate in ``rounds`` is the round's update blown up 1000-fold: a model
    far worse on the public split, which the proxy check must refuse."""

    def __init__(self, rounds: Sequence[int]) -> None:
        super().__init__()
        self.rounds = frozenset(rounds)

    def candidate(
        self, state: GlobalState, results: Sequence[ClientResult | LinearSum], server: ServerContext
    ) -> np.ndarray:
        good = super().candidate(state, results, server)
        if server.round_idx not in self.rounds:
            return good
        return state.params + 1000.0 * (good - state.params)


class TypeErrorEverywhere(FedAvg):
    name: ClassVar[str] = "type-error"

    def client_update(self, task, params, client):
        return len(3)  # the same TypeError for every client


class NaNForClient0(Algorithm):
    """SCAFFOLD-like state writer whose client 0 returns a NaN update: its state must not change."""

    name: ClassVar[str] = "nan-state"
    traits = Traits(linear=True, client_state=True)

    def init(self, params, ctx):
        return GlobalState(params=params.astype(np.float32))

    def configure_round(self, state, rnd):
        tasks = [
            ClientTask(client_id=c, model_key="global", hparams=rnd.hparams) for c in rnd.available.tolist()
        ]
        return state, RoundPlan(tasks=tasks, broadcast={"global": state.params})

    def client_update(self, task, params, client):
        client.state["rounds"] = client.state.get("rounds", 0) + 1
        delta = np.zeros_like(params)
        if task.client_id == 0:
            delta[0] = np.nan
        return ClientResult(client_id=task.client_id, num_examples=1, delta=delta)

    def aggregate(self, state, results, server):
        return state, {}

    def server_model(self, state):
        return state.params


class Diverging(FedAvg):
    """FedAvg whose client ``victim`` misbehaves: ``mode`` "scale" multiplies its update by
    ``factor`` (a diverged client the quarantine must catch), "raise" makes it fail (a dropout the
    runtime already handles): both must leave the same aggregate."""

    name: ClassVar[str] = "diverging"

    def __init__(self, victim: int, mode: str, factor: float = 1e5, stateful: bool = False) -> None:
        super().__init__()
        self.victim, self.mode, self.factor = victim, mode, factor
        if stateful:  # client state committed only for accepted updates
            self.traits = replace(self.traits, client_state=True)

    def client_update(self, task: ClientTask, params: np.ndarray, client: Any) -> ClientResult:
        r = super().client_update(task, params, client)
        if self.traits.client_state:
            client.state["trained"] = client.state.get("trained", 0) + 1
        if task.client_id != self.victim:
            return r
        if self.mode == "raise":
            raise RuntimeError("this client diverged")
        assert r.delta is not None
        return replace(r, delta=(r.delta * self.factor).astype(np.float32))


# -- bugs at each call site (tests/runtime/test_loud_failures.py) --------------------------------


class ReturnsNone(FedAvg):
    """``client_update`` that forgets to return: the contract broken for every client, a bug."""

    name: ClassVar[str] = "returns-none"

    def client_update(self, task: ClientTask, params: np.ndarray, client: Any) -> ClientResult:
        super().client_update(task, params, client)
        return None  # type: ignore[return-value]


class BrokenPersonal(FedAvg):
    """A bug in ``personal_params``: the personalised evaluation on the client actors raises."""

    name: ClassVar[str] = "broken-personal"

    def personal_params(self, broadcast: Mapping[str, np.ndarray], client: Any) -> np.ndarray:
        raise ValueError("personal_params is broken")


class BrokenAggregate(FedAvg):
    """A bug in ``aggregate``: the server raises."""

    name: ClassVar[str] = "broken-aggregate"

    def aggregate(self, state, results, server):
        raise ZeroDivisionError("aggregate is broken")


class BrokenInit(FedAvg):
    """A bug in ``init``: the server's constructor raises."""

    name: ClassVar[str] = "broken-init"

    def init(self, params, ctx):
        raise KeyError("init is broken")


def broken_method(site: str) -> Any:
    """A method that raises: a bug in our own host code at ``site``."""

    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"injected bug in ClientHost.{site}")

    return broken


def sabotage(site: str) -> None:
    """Make ``ClientHost.<site>`` raise in this process."""
    from raysim.runtime.host import ClientHost

    setattr(ClientHost, site, broken_method(site))


class Sabotaged(Diverging):
    """Client state (so rounds commit it), client 0 diverging (so the quarantine withdraws it), and
    a bug in ``ClientHost.<site>`` of every OTHER process that unpickles it: each Ray actor. On the
    serial backend the test patches the site itself (``sabotage`` under monkeypatch)."""

    name: ClassVar[str] = "sabotaged"

    def __init__(self, site: str) -> None:
        super().__init__(victim=0, mode="scale", stateful=True)
        self.site, self.creator = site, os.getpid()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if os.getpid() != self.creator:  # never in the test's own process
            sabotage(self.site)


class ExitInAggregate(FedAvg):
    """A server that dies in every aggregate from round ``from_round`` on, as one killed for lack
    of memory would: its process exits (only inside a Ray actor, never the test's process)."""

    name: ClassVar[str] = "exit-in-aggregate"

    def __init__(self, from_round: int) -> None:
        super().__init__()
        self.from_round, self.creator = from_round, os.getpid()

    def aggregate(self, state, results, server):
        if server.round_idx >= self.from_round and os.getpid() != self.creator:
            os._exit(1)
        return super().aggregate(state, results, server)
