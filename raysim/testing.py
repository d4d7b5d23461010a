"""A conformance kit for algorithm authors: the contract checks raysim's own algorithms pass.

An algorithm (a built-in name, an import path ``pkg.mod:Name``, an entry-point name, or the class
itself) runs on a tiny digits federation (6 clients, 3 rounds, serial backend: seconds) and each
check compares what the runs leave behind (``rounds.parquet``, ``clients.parquet``,
``clusters.parquet`` and the final checkpoint's state) exactly, to the bit:

* ``check_packing``: the same results whatever the packing of clients onto hosts (one client a host,
  four a host, three hosts the cohort roams over);
* ``check_save_restore``: save after round k, restore into a fresh experiment and continue = the
  uninterrupted run; restored under a changed learning rate = a run that switched to it then
  (hyperparameters are not state);
* ``check_serial_equals_ray``: two Ray actors give the serial backend's bits (``resources.backend:
  ray`` through the normal runtime path; needs Ray installed, starts a local Ray if none runs);
* ``check_loud_failures``: an exception raised inside ``client_update`` (from ``client.fit``) by every
  client stops the run with ``ClientCodeError``, one client's is a counted dropout the aggregate
  copes with, and an exception inside ``aggregate`` stops the run as itself;
* ``check_traits``: what ``Traits`` declares holds: no client state kept unless ``client_state``,
  a ``linear`` aggregate gives the same bits from pre-summed results as from every client's own,
  the server's public split untouched unless ``public_split``; ``params_model`` refuses unknown keys.

Each raises ``AssertionError`` saying what broke and what the contract asks. In pytest::

    from raysim.testing import contract_tests

    test_my_algo = contract_tests("my_pkg.algo:MyAlgo", params={"k": 2})   # one test per check

or call the checks yourself (``check_all(algo, params, workdir=tmp_path)``). Every check takes the
algorithm and its ``params`` (the ``algorithm:`` section's other keys), ``overrides`` of the config in
the CLI's dotted form (``{"model.name": "cnn-bn"}``), ``config`` (an ExperimentConfig or a raw dict
in place of the tiny one; its algorithm section is replaced) and ``workdir`` (default: a temporary
folder). A class that is no built-in runs under its import path ``module:QualName``, so it must be
importable where the runs happen (on Ray: on the workers). Bit-for-bit comparisons
across processes (Ray actors) need reproducible mode in the test process: export its variables
before pytest starts (``eval $(python -m raysim.reproducible)``; raysim's own ``tests/conftest.py``
sets them itself). This module does not import Ray.

This module holds the checks and what they assert; what they share lives beside it, each part
re-exported here: the tiny config and the runs (``raysim._testing_runs``), the bit-for-bit
comparisons (``raysim._testing_compare``), the injected faults of ``check_loud_failures``
(``raysim._testing_faults``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from raysim import reproducible
from raysim._testing_compare import _expect_same
from raysim._testing_compare import assert_same_runs as assert_same_runs
from raysim._testing_compare import assert_same_state as assert_same_state
from raysim._testing_compare import assert_same_tables as assert_same_tables
from raysim._testing_compare import learning_columns as learning_columns
from raysim._testing_faults import InjectedFault as InjectedFault
from raysim._testing_faults import _ServerDataProbe, _variant
from raysim._testing_faults import check_loud_failures as check_loud_failures
from raysim._testing_runs import AlgorithmSpec as AlgorithmSpec
from raysim._testing_runs import RunResult as RunResult
from raysim._testing_runs import _case, _run
from raysim._testing_runs import resolve_algorithm as resolve_algorithm
from raysim._testing_runs import tiny_config as tiny_config
from raysim._testing_runs import tiny_raw as tiny_raw
from raysim.algorithms.base import ServerContext, SetupContext
from raysim.config import ExperimentConfig

__all__ = [
    "CHECKS",
    "RAY_CHECKS",
    "InjectedFault",
    "assert_same_runs",
    "assert_same_state",
    "check_all",
    "check_loud_failures",
    "check_packing",
    "check_save_restore",
    "check_serial_equals_ray",
    "check_traits",
    "contract_tests",
    "resolve_algorithm",
    "tiny_config",
    "tiny_raw",
]


# -- the checks ------------------------------------------------------------------------------------
# Three layouts of the 6 tiny clients: one a host (6 hosts, pinned), four a host (2 hosts, pinned),
# and 3 hosts with `auto` packing (an algorithm without client state roams: each round's cohort is
# balanced over the hosts).
LAYOUTS: dict[str, dict[str, Any]] = {
    "clients_per_actor=1": {"resources.clients_per_actor": 1},
    "clients_per_actor=4": {"resources.clients_per_actor": 4},
    "auto, num_actors=3": {"resources.clients_per_actor": "auto", "resources.num_actors": 3},
}


def check_packing(
    algorithm: AlgorithmSpec,
    params: Mapping[str, Any] | None = None,
    *,
    config: Mapping[str, Any] | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    workdir: Path | str | None = None,
) -> None:
    """The same bits whatever the packing of clients onto hosts (``LAYOUTS``), on the serial backend."""
    with _case(algorithm, params, config, overrides, workdir) as case:
        runs = {
            label: _run(case.config(f"packing-{i}", **over))
            for i, (label, over) in enumerate(LAYOUTS.items())
        }
        hosts = [r.hosts for r in runs.values()]
        n = case.config("packing-0").data.num_clients
        want = [1, 1, 1] if case.build().traits.pooled else [n, math.ceil(n / 4), min(3, n)]
        if hosts != want:
            raise AssertionError(f"the layouts {list(LAYOUTS)} gave {hosts} client hosts, not {want}")
        (ref_label, ref), *others = runs.items()
        for label, got in others:
            _expect_same(
                ref,
                got,
                f"{case.cls.name}: packing changed the results ({ref_label}: {ref.hosts} hosts vs {label}: "
                f"{got.hosts} hosts)",
                "The contract: a client's results depend on the seed, the round and its id only, never on "
                "which host trains it nor which clients share that host. Draw randomness from the rng the "
                "runtime passes (RoundContext/ServerContext.rng; the trainer seeds each client), keep per-"
                "client data in client.state (with Traits.client_state=True), nothing on the algorithm "
                "object, and sum linear results with LinearSum/sum_by_key (exact whatever the grouping).",
            )


def check_save_restore(
    algorithm: AlgorithmSpec,
    params: Mapping[str, Any] | None = None,
    *,
    config: Mapping[str, Any] | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    workdir: Path | str | None = None,
    at: int = 2,
    rounds: int = 4,
) -> None:
    """Save after round ``at``, restore into a fresh experiment and continue to round ``rounds`` =
    the uninterrupted run; restored under a doubled lr = a run that switched to it after ``at``."""
    with _case(algorithm, params, config, overrides, workdir) as case:
        n = {"rounds.num_rounds": rounds}
        name = case.cls.name
        full = _run(case.config("restore-full", **n))
        ckpt = case.workdir / f"restore-checkpoint-round-{at}"
        _run(case.config("restore-first", **n), until=at, save_to=ckpt)
        after = _run(case.config("restore-after", **n), restore_from=ckpt)
        _expect_same(
            full,
            after,
            f"{name}: saved after round {at}, restored and continued != the uninterrupted run",
            "The contract: everything a later round depends on is in the state init/configure_round/"
            "aggregate return (server side) or in client.state (client side), both of which the "
            "checkpoint holds; nothing kept on the algorithm object, no randomness but the rng passed in.",
            after=at,
        )
        lr = case.config("restore-full", **n).local.lr * 2
        switched = _run(case.config("restore-switched", **n), lr_from=(at + 1, lr))
        after_lr = _run(case.config("restore-after-lr", **n, **{"local.lr": lr}), restore_from=ckpt)
        _expect_same(
            switched,
            after_lr,
            f"{name}: restored under lr={lr} != a run that switched to lr={lr} after round {at}",
            "The contract: client hyperparameters are not state. They reach configure_round every round "
            "(RoundContext.hparams) and travel in each ClientTask; an algorithm that copies local.* into "
            "its state at init trains a restored run with the old values.",
            after=at,
        )


def check_serial_equals_ray(
    algorithm: AlgorithmSpec,
    params: Mapping[str, Any] | None = None,
    *,
    config: Mapping[str, Any] | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    workdir: Path | str | None = None,
    actors: int = 2,
    save_at: int = 2,
) -> None:
    """Two Ray client actors (``resources.backend: ray``, ``auto`` packing: clients without state
    roam) give the serial backend's bits, and a Ray run restored from the Ray checkpoint of round
    ``save_at`` continues to them. Uses the running Ray, or starts a local one."""
    with _case(algorithm, params, config, overrides, workdir) as case:
        over = {
            "resources.clients_per_actor": "auto",
            "resources.num_actors": actors,
            "resources.reproducible": reproducible.pinned(),  # the actors in the mode when this process is
        }
        name = case.cls.name
        serial = _run(case.config("serial", **over, **{"resources.backend": "serial"}))
        rounds = case.config("serial").rounds.num_rounds
        at = min(save_at, rounds - 1)
        ckpt = case.workdir / f"ray-checkpoint-round-{at}"
        ray_cfg = case.config("ray", **over, **{"resources.backend": "ray"})
        _run(ray_cfg, until=at, save_to=ckpt)
        on_ray = _run(case.config("ray-full", **over, **{"resources.backend": "ray"}))
        mode = (
            ""
            if reproducible.pinned()
            else " This process is not in reproducible mode: start pytest with its variables exported "
            "(eval $(python -m raysim.reproducible)), or the actors' kernels may differ from this process's."
        )
        why = (
            "The contract: an algorithm computes the same on any backend; what the server and each client "
            "need travels in the state, the round plan and the results (picklable), never in module "
            "globals or process-local caches." + mode
        )
        if not case.build().traits.pooled and on_ray.hosts != actors:
            raise AssertionError(f"{name}: the Ray run used {on_ray.hosts} client actors, not {actors}")
        _expect_same(serial, on_ray, f"{name}: Ray ({on_ray.hosts} actors) != serial", why)
        restored = _run(
            case.config("ray-restored", **over, **{"resources.backend": "ray"}), restore_from=ckpt
        )
        _expect_same(
            serial,
            restored,
            f"{name}: on Ray, restored from round {at} and continued != serial",
            why,
            after=at,
        )


def check_traits(
    algorithm: AlgorithmSpec,
    params: Mapping[str, Any] | None = None,
    *,
    config: Mapping[str, Any] | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    workdir: Path | str | None = None,
) -> None:
    """What the class declares holds: a name; a ``params_model`` that refuses unknown keys; nothing
    written to ``client.state`` without ``Traits.client_state``; a ``linear`` aggregate that gives the same bits from
    pre-summed results as from every client's own; the server's public split untouched (in ``init``
    and ``aggregate``) without ``Traits.public_split``. (``pooled`` and ``client_buffers`` change what
    the runtime does, checked by raysim's own tests.)"""
    from pydantic import ValidationError

    from raysim.algorithms.base import Traits

    with _case(algorithm, params, config, overrides, workdir) as case:
        cls, base = case.cls, case.build()
        parent: Any = type(base)  # the spy below overrides methods and calls the originals
        if not (isinstance(cls.name, str) and cls.name):
            raise AssertionError(f"{cls.__qualname__}.name must be a non-empty string, it is {cls.name!r}")
        if not isinstance(base.traits, Traits):
            raise AssertionError(
                f"{cls.name}.traits must be a raysim.algorithms.Traits, it is {base.traits!r}"
            )
        try:
            cls.params_model.model_validate({**case.params, "raysim_testing_unknown_key": 1})
        except ValidationError:
            pass
        else:
            raise AssertionError(
                f"{cls.name}.params_model accepts an unknown key: a typo in a config would be ignored. "
                "Derive it from raysim.algorithms.AlgoParams (extra='forbid')."
            )
        traits = base.traits

        # one run with the server's public split offered (and recorded), pinned clients, several a host
        used: list[str] = []

        def record(method: str, split: str) -> None:
            used.append(split)

        def init(self: Any, params: Any, ctx: SetupContext) -> Any:
            if ctx.data is not None:
                ctx = dataclasses.replace(ctx, data=_ServerDataProbe(ctx.data, record))
            return parent.init(self, params, ctx)

        def aggregate(self: Any, state: Any, results: Any, server: ServerContext) -> Any:
            if server.data is not None:
                server = dataclasses.replace(server, data=_ServerDataProbe(server.data, record))
            return parent.aggregate(self, state, results, server)

        wrote: dict[int, list[str]] = {}

        def client_update(self: Any, task: Any, params: Any, client: Any) -> Any:
            out = parent.client_update(self, task, params, client)
            if client.state:
                wrote.setdefault(task.client_id, sorted(map(str, client.state)))
            return out

        over = {"data.public_fraction": 0.1, "resources.clients_per_actor": 4}
        spied = _run(
            case.config("traits", **over),
            _variant(base, init=init, aggregate=aggregate, client_update=client_update),
        )
        if not traits.public_split and "public" in used:
            raise AssertionError(
                f"{cls.name} fits or evaluates on the server's public split but does not declare "
                "Traits.public_split=True: a config without data.public_fraction would fail in round 1 "
                "instead of being refused when it is validated."
            )
        if not traits.client_state and wrote:
            raise AssertionError(
                f"{cls.name} writes client.state (client: keys {wrote}) but declares "
                "Traits.client_state=False: the runtime keeps no client state for it (what a client "
                "writes is dropped after its round, and a client training on another host fails). "
                "Declare client_state=True, or keep nothing in client.state."
            )
        if traits.linear:
            unreduced = dataclasses.replace(traits, linear=False)
            plain = _variant(base)
            plain.traits = unreduced
            every = _run(case.config("traits-unreduced", **over), plain)
            _expect_same(
                spied,
                every,
                f"{cls.name}: the aggregate of pre-summed results != the aggregate of every client's own",
                "The contract of Traits.linear=True: aggregate reads the updates only through "
                "sum_by_key/LinearSum.of over its results (a client's own result has delta=None when its "
                "update is inside a host's sum), so that the sums are the same whichever host summed them.",
            )


CHECKS: dict[str, Callable[..., None]] = {
    "packing": check_packing,
    "save_restore": check_save_restore,
    "loud_failures": check_loud_failures,
    "traits": check_traits,
}
RAY_CHECKS: dict[str, Callable[..., None]] = {"serial_equals_ray": check_serial_equals_ray}


def check_all(
    algorithm: AlgorithmSpec,
    params: Mapping[str, Any] | None = None,
    *,
    config: Mapping[str, Any] | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    workdir: Path | str | None = None,
    ray: bool = True,
) -> None:
    """Every check (``ray=False``: the serial ones only), each in a folder of ``workdir`` (default: a
    temporary folder); the first that fails raises its AssertionError."""
    checks = {**CHECKS, **(RAY_CHECKS if ray else {})}
    with _case(algorithm, params, config, overrides, workdir) as case:
        for label, check in checks.items():
            check(algorithm, params, config=config, overrides=overrides, workdir=case.workdir / label)


def contract_tests(
    algorithm: AlgorithmSpec,
    params: Mapping[str, Any] | None = None,
    *,
    config: Mapping[str, Any] | ExperimentConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    ray: bool = True,
    ray_marks: Sequence[Any] = (),
    ray_fixture: str | None = None,
) -> Callable[..., None]:
    """A pytest test, parametrized over the checks, for a module-level name::

        test_my_algo = contract_tests("my_pkg.algo:MyAlgo", params={"k": 2})

    ``ray_marks``: marks for the Ray check (e.g. ``[pytest.mark.slow]``); ``ray_fixture``: the name
    of a fixture that starts Ray, requested before the Ray check (else the check starts a local Ray)."""
    import pytest

    names = [*CHECKS, *(RAY_CHECKS if ray else {})]
    cases = [pytest.param(n, id=n, marks=list(ray_marks) if n in RAY_CHECKS else []) for n in names]

    @pytest.mark.parametrize("check", cases)
    def test_contract(check: str, tmp_path: Path, request: Any) -> None:
        if check in RAY_CHECKS and ray_fixture is not None:
            request.getfixturevalue(ray_fixture)
        {**CHECKS, **RAY_CHECKS}[check](
            algorithm, params, config=config, overrides=overrides, workdir=tmp_path
        )

    return test_contract
