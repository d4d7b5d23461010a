"""The conformance kit (``raysim.testing``) can fail: each check on an algorithm that breaks exactly
the contract it checks raises AssertionError saying so, and passes FedAvg. Plus the documented
pytest pattern and the name resolution."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import pytest

from raysim import testing
from raysim._testing_runs import _config_name
from raysim.algorithms import ALGORITHMS
from raysim.algorithms.base import ClientResult, LinearSum, RoundPlan
from raysim.algorithms.fedavg import FedAvg, GlobalState

_CALLS = [0]  # a process-wide counter: what a contract-breaking algorithm might keep


class OrderDependent(FedAvg):
    """Each update nudged by how many updates this process computed before it: depends on the order
    the hosts train their clients in, so on the packing."""

    name = "kit-order-dependent"

    def client_update(self, task, params, client):
        _CALLS[0] += 1
        r = super().client_update(task, params, client)
        return replace(r, delta=r.delta + np.float32(1e-3 * _CALLS[0]))


class ForgetfulServer(FedAvg):
    """Server step size shrinks with the rounds it has seen, counted on the object (not in state)."""

    name = "kit-forgetful"

    def aggregate(self, state, results, server):
        self.seen = getattr(self, "seen", 0) + 1
        new, m = super().aggregate(state, results, server)
        return replace(new, params=state.params + (new.params - state.params) / self.seen), m


def _with_lr(hparams, lr):
    return {**hparams, "lr": lr} if isinstance(hparams, Mapping) else dataclasses.replace(hparams, lr=lr)


class LrInState(FedAvg):
    """Copies local.lr at init and trains with it: a changed lr takes effect only where init runs again."""

    name = "kit-lr-at-init"

    def init(self, params, ctx):
        self.lr = ctx.local.lr
        return super().init(params, ctx)

    def configure_round(self, state, rnd):
        state, plan = super().configure_round(state, rnd)
        tasks = [replace(t, hparams=_with_lr(t.hparams, self.lr)) for t in plan.tasks]
        return state, RoundPlan(tasks=tasks, broadcast=plan.broadcast)


class Swallower(FedAvg):
    """Turns any exception of its training into an empty update."""

    name = "kit-swallower"

    def client_update(self, task, params, client):
        try:
            return super().client_update(task, params, client)
        except Exception:
            return ClientResult(client_id=task.client_id, num_examples=1, delta=np.zeros_like(params))


class NoDropouts(FedAvg):
    """Its aggregate insists on one result per task it planned (kept on the object)."""

    name = "kit-no-dropouts"

    def configure_round(self, state, rnd):
        state, plan = super().configure_round(state, rnd)
        self.planned = len(plan.tasks)
        return state, plan

    def aggregate(self, state, results, server):
        got = sum(1 for r in results if isinstance(r, ClientResult))
        if got != self.planned:
            raise RuntimeError(f"expected {self.planned} results, got {got}")
        return super().aggregate(state, results, server)


class UndeclaredState(FedAvg):
    name = "kit-undeclared-state"

    def client_update(self, task, params, client):
        client.state["seen"] = client.state.get("seen", 0) + 1
        return super().client_update(task, params, client)


class NotLinear(FedAvg):
    """Declares linear but averages the entries it is given equally: host sums, or clients."""

    name = "kit-not-linear"

    def aggregate(self, state, results, server):
        parts = [r for r in results if isinstance(r, LinearSum) or r.delta is not None]
        mean = np.mean(
            [LinearSum.of([p]).weighted_delta / LinearSum.of([p]).num_examples for p in parts], axis=0
        )
        return replace(state, params=(state.params + mean).astype(np.float32)), {}


class UndeclaredPublic(FedAvg):
    name = "kit-undeclared-public"

    def aggregate(self, state, results, server):
        new, m = super().aggregate(state, results, server)
        if "public" in server.data.splits():
            m["public_accuracy"] = float(server.evaluate(new.params, "public").accuracy)
        return new, m


class Untidy(FedAvg):
    name = "kit-untidy"
    params_model = type("LooseParams", (FedAvg.params_model,), {"model_config": {"extra": "allow"}})


def test_fedavg_passes_every_serial_check(tmp_path):
    testing.check_all("fedavg", workdir=tmp_path, ray=False)


@pytest.mark.parametrize(
    "algo,check,says",
    [
        (OrderDependent, "packing", "packing changed the results"),
        (ForgetfulServer, "save_restore", "restored and continued != the uninterrupted run"),
        (LrInState, "save_restore", "restored under lr=0.1 != a run that switched"),
        (Swallower, "loud_failures", "caught the exception client.fit raised"),
        (NoDropouts, "loud_failures", "aggregate must cope with fewer results than tasks"),
        (UndeclaredState, "traits", "writes client.state .* but declares Traits.client_state=False"),
        (NotLinear, "traits", "the aggregate of pre-summed results != the aggregate of every client's own"),
        (UndeclaredPublic, "traits", "does not declare Traits.public_split=True"),
        (Untidy, "traits", "params_model accepts an unknown key"),
    ],
)
def test_each_check_fails_on_the_algorithm_that_breaks_its_contract(tmp_path, algo, check, says):
    with pytest.raises(AssertionError, match=says):
        testing.CHECKS[check](algo, workdir=tmp_path)


def test_the_algorithm_is_named_by_class_name_or_import_path():
    assert testing.resolve_algorithm("scaffold") is ALGORITHMS["scaffold"]
    assert testing.resolve_algorithm("raysim.algorithms.fedavg:FedAvg") is FedAvg
    assert testing.resolve_algorithm(FedAvg) is FedAvg
    with pytest.raises(ValueError, match="fedavg"):
        testing.resolve_algorithm("no-such-algorithm")
    with pytest.raises((TypeError, ValueError), match="not a(n algorithm class| raysim algorithm)"):
        testing.resolve_algorithm("raysim.algorithms.base:Traits")
    assert _config_name(FedAvg, FedAvg) == "fedavg"
    path = f"{OrderDependent.__module__}:OrderDependent"  # imported by plug-in resolution
    assert _config_name(OrderDependent, OrderDependent) == path


def test_states_compare_to_the_bit_and_say_where_they_differ():
    a = {"state": GlobalState(params=np.zeros(3, np.float32)), "client_states": {1: {"c": np.ones(2)}}}
    testing.assert_same_state(a, a, "same")
    b = {"state": GlobalState(params=np.array([0, -0.0, 0], np.float32)), "client_states": a["client_states"]}
    with pytest.raises(
        AssertionError, match=r"state\['state'\].params: 1 of 3 values differ, first at flat index 1"
    ):
        testing.assert_same_state(a, b, "signed zero")
    c = {**a, "client_states": {1: {"c": np.array([1.0, np.nan])}}}
    testing.assert_same_state(c, c, "NaN equals NaN")
    with pytest.raises(AssertionError, match=r"keys differ"):
        testing.assert_same_state(a, {**a, "client_states": {2: {}}}, "clients")


# the documented pytest pattern: one test per check (the Ray one left out here; the built-ins'
# suite runs it), for a class given as itself
test_fedprox_by_the_documented_pattern = testing.contract_tests(
    ALGORITHMS["fedprox"], params={"mu": 0.1}, ray=False
)


def test_the_pattern_makes_one_test_per_check_and_marks_the_ray_one():
    fn = testing.contract_tests("fedavg", ray_marks=[pytest.mark.slow])
    (mark,) = [m for m in fn.pytestmark if m.name == "parametrize"]
    params = {p.values[0]: p.marks for p in mark.args[1]}
    assert sorted(params) == sorted([*testing.CHECKS, *testing.RAY_CHECKS])
    assert [m.name for m in params["serial_equals_ray"]] == ["slow"]
    assert all(not params[c] for c in testing.CHECKS)


def test_a_base_config_of_ones_own_is_used_and_gets_the_public_split_an_algorithm_declares(tmp_path):
    """``config=``: the checks start from it (here 5 clients: the packing layouts give 5, 2 and 3
    hosts); DSAC declares the public split, which the base leaves at 0."""
    base = testing.tiny_config(tmp_path / "base", data__num_clients=5)
    assert base.data.public_fraction == 0
    testing.check_packing("dsac", {"cluster_every": 2}, config=base, workdir=tmp_path)
    cfg = next((tmp_path / "packing-1" / "runs").iterdir()) / "config.yaml"
    text = cfg.read_text()
    assert "num_clients: 5" in text and "public_fraction: 0.1" in text and "name: dsac" in text


# A plug-in named by import path (tests/plugin_fixtures.py, with its own model), as an author outside
# raysim would check theirs: the serial checks in the default tier, serial = Ray in the slow one.
test_a_plugin_by_import_path = testing.contract_tests(
    "tests.plugin_fixtures:DampedAvg",
    params={"damping": 0.6},
    overrides={"model.name": "tests.plugin_fixtures:tiny_mlp", "model.width": 9},
    ray_marks=[pytest.mark.ray, pytest.mark.slow],
    ray_fixture="ray_cluster",
)
