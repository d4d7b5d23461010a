"""The kit's broken runs (``raysim.testing.check_loud_failures``): faults injected into an
algorithm's client and server code, and the check that each comes out loud.

A module of its own because the fault injection (wrapped clients and server data, subclasses with
one method replaced) is machinery of its own, apart from the comparisons the other checks make;
``raysim.testing`` re-exports ``InjectedFault`` and ``check_loud_failures``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from raysim._testing_runs import AlgorithmSpec, _case, _run
from raysim.algorithms.base import Algorithm, ClientResult, LinearSum
from raysim.config import ExperimentConfig
from raysim.runtime.server import ClientCodeError


class InjectedFault(Exception):
    """The exception ``check_loud_failures`` raises inside the algorithm's code."""


class _FaultyClient:
    """A client whose training, scoring and embedding raise ``InjectedFault`` (everything else is
    the real client's): the fault arrives from inside ``client_update``, as a bug in it would."""

    def __init__(self, client: Any, fired: list[str]) -> None:
        object.__setattr__(self, "_client", client)
        object.__setattr__(self, "_fired", fired)

    def _fault(self, what: str) -> Callable[..., Any]:
        def raise_(*args: Any, **kwargs: Any) -> Any:
            self._fired.append(what)
            raise InjectedFault(f"injected by raysim.testing into client.{what}")

        return raise_

    def __getattr__(self, name: str) -> Any:
        if name in ("fit", "evaluate", "embed"):
            return self._fault(name)
        return getattr(self._client, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._client, name, value)


class _ServerDataProbe:
    """Server data whose ``fit`` and ``evaluate`` first call ``hook(method, split)`` (which records,
    or raises to inject a fault), then the real data's: the kit watches what an algorithm does with
    the server's splits through this one wrapper."""

    def __init__(self, data: Any, hook: Callable[[str, str], None]) -> None:
        self._data, self._hook = data, hook

    def splits(self) -> tuple[str, ...]:
        return tuple(self._data.splits())

    def evaluate(self, params: Any, split: str = "public") -> Any:
        self._hook("evaluate", split)
        return self._data.evaluate(params, split)

    def fit(self, params: Any, split: str = "public", **hparams: Any) -> Any:
        self._hook("fit", split)
        return self._data.fit(params, split, **hparams)


def _faulty_data(data: Any, fired: list[str]) -> _ServerDataProbe:
    """Server data whose fit and evaluate raise ``InjectedFault`` (recorded in ``fired``)."""

    def fault(method: str, split: str) -> None:
        fired.append(method)
        raise InjectedFault(f"injected by raysim.testing into server.{method}")

    return _ServerDataProbe(data, fault)


def _variant(base: Algorithm, **methods: Any) -> Algorithm:
    """An instance of a subclass of ``base``'s class with ``methods`` replaced, built with its params
    (its traits as ``base`` has them)."""
    cls = type(base)
    sub = type(f"{cls.__name__}UnderTest", (cls,), {"__module__": __name__, **methods})
    out: Algorithm = sub(base.p)
    out.traits = base.traits
    return out


def _raised(cfg: ExperimentConfig, algorithm: Algorithm) -> BaseException | None:
    try:
        _run(cfg, algorithm)
    except Exception as exc:  # the check inspects what came out
        return exc
    return None


def check_loud_failures(
    algorithm: AlgorithmSpec,
    params: Mapping[str, Any] | None = None,
    *,
    config: Mapping[str, Any] | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    workdir: Path | str | None = None,
) -> None:
    """A bug is an error with its traceback, one client's fault a counted dropout: ``InjectedFault``
    raised from ``client.fit`` in every client stops the run with ``ClientCodeError``; raised for one
    client only, the run completes with that client's updates counted as dropouts; raised inside
    ``aggregate`` (from ``server.evaluate``/``fit``, or after it), it stops the run as itself."""
    with _case(algorithm, params, config, overrides, workdir) as case:
        base = case.build()
        parent: Any = type(base)  # the variants below override one method and call the original
        name = case.cls.name
        lock = threading.Lock()

        # 1. every client
        fired: list[str] = []
        swallowed: list[int] = []

        def every_client(self: Any, task: Any, params: Any, client: Any) -> Any:
            before = len(fired)
            parent.client_update(self, task, params, _FaultyClient(client, fired))
            if len(fired) > before:
                swallowed.append(task.client_id)
            raise InjectedFault("injected by raysim.testing after client_update returned")

        err = _raised(case.config("loud-every-client"), _variant(base, client_update=every_client))
        if swallowed:
            raise AssertionError(
                f"{name}.client_update caught the exception client.{fired[0]} raised and returned a result "
                f"(clients {sorted(set(swallowed))}): a bug in training would be hidden. Let exceptions "
                "propagate; the runtime counts one client's as a dropout and stops on a cohort-wide one."
            )
        if not isinstance(err, ClientCodeError) or not all(
            w in str(err) for w in ("InjectedFault", "Traceback")
        ):
            raise AssertionError(
                f"{name}: every client's client_update raised InjectedFault; the run should stop with "
                "ClientCodeError naming it, with a client's traceback; it "
                + ("completed" if err is None else f"raised {err!r}")
            )

        # 2. one client (the first to train): a counted dropout, and the aggregate copes
        if not base.traits.pooled and case.config("loud-one-client").rounds.clients_per_round > 1:
            victim: list[int] = []

            def one_client(self: Any, task: Any, params: Any, client: Any) -> Any:
                with lock:
                    if not victim:
                        victim.append(task.client_id)
                if task.client_id == victim[0]:
                    raise InjectedFault(f"injected by raysim.testing for client {victim[0]}")
                return parent.client_update(self, task, params, client)

            try:
                one = _run(case.config("loud-one-client"), _variant(base, client_update=one_client))
            except Exception as exc:
                raise AssertionError(
                    f"{name}: one client's client_update raised InjectedFault (client {victim[:1]}); that is a "
                    f"counted dropout and the run goes on, but it stopped with {type(exc).__name__}: {exc}. "
                    "aggregate must cope with fewer results than tasks."
                ) from exc
            clients = one.table("clients")
            assert clients is not None
            rows = clients[(clients["client_id"] == victim[0]) & clients["participated"]]
            bad = rows[~rows["dropped"] | ~rows["reason"].astype(str).str.contains("InjectedFault")]
            if rows.empty or not bad.empty:
                raise AssertionError(
                    f"{name}: client {victim[0]} raised InjectedFault in every round it trained; clients.parquet "
                    f"should count each as a dropout with the reason, it has:\n{rows.to_string()}"
                )

        # 3. aggregate
        fired_server: list[str] = []
        swallowed_server: list[int] = []

        def aggregate(self: Any, state: Any, results: Sequence[ClientResult | LinearSum], server: Any) -> Any:
            if server.data is not None:
                server = dataclasses.replace(server, data=_faulty_data(server.data, fired_server))
            before = len(fired_server)
            parent.aggregate(self, state, results, server)
            if len(fired_server) > before:
                swallowed_server.append(server.round_idx)
            raise InjectedFault("injected by raysim.testing after aggregate returned")

        err = _raised(case.config("loud-aggregate"), _variant(base, aggregate=aggregate))
        if swallowed_server:
            raise AssertionError(
                f"{name}.aggregate caught the exception server.{fired_server[0]} raised and went on (round "
                f"{swallowed_server[0]}): let exceptions propagate."
            )
        if not isinstance(err, InjectedFault):
            raise AssertionError(
                f"{name}: aggregate raised InjectedFault; the run should stop with it, as itself, it "
                f"{'completed' if err is None else f'raised {err!r}'}"
            )
