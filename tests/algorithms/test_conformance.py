"""Every built-in algorithm against the public conformance kit (``raysim.testing``): the checks a
plug-in author runs on their own algorithm, one parametrized suite for all of raysim's.

The serial checks (packing, save/restore, loud failures, declared traits) are in the default tier;
serial = Ray (two actors, and a Ray run restored from a Ray checkpoint) is ``ray`` and, but for
FedAvg and SCAFFOLD (one algorithm that roams, one that keeps client state), ``slow``."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from raysim import testing
from raysim.algorithms import ALGORITHMS

# What a built-in needs besides the kit's tiny digits config (a model it can serve), and knobs that
# make its interesting paths run within the tiny run's rounds. A case is named by its algorithm, or
# by the algorithm and what the variant turns on ("dsac-feature-mapping").
CASES: dict[str, dict[str, Any]] = {
    # the DP code path with noise small enough to keep learning, on two rotated groups
    "ascfl": {
        "params": {"local_epochs_rule": "config", "dp": True, "epsilon": 1000.0},
        "overrides": {"data.partition": "rotation", "data.num_groups": 2, "rounds.clients_per_round": 6},
    },
    "centralised": {},
    "cfl": {},
    "dsac": {"params": {"cluster_every": 2}},  # clusters at round 2, before the save/restore point
    "dsac-feature-mapping": {"params": {"cluster_every": 2, "feature_mapping": True}},  # client state
    "fedavg": {},
    "fedbn": {"overrides": {"model.name": "cnn-bn"}},
    "fedper": {},
    "fedprox": {},
    "fedrod": {},
    # one group of all 6 clients: 2 elites kept and 4 re-drawn every round
    "genetic-cfl": {
        "params": {"dbscan_eps": 2.0},
        "overrides": {"rounds.clients_per_round": 6, "rounds.personal_eval": False},
    },
    "ifca": {"overrides": {"data.partition": "rotation", "data.num_groups": 2}},
    "local": {},
    "pfedhn": {},
    "pfedht": {"overrides": {"model.name": "vit-tiny"}},
    "pfedme": {},
    "scaffold": {},
}


def _algorithm(case: str) -> str:
    return case if case in ALGORITHMS else case.rsplit("-", 2)[0]


# scaffold keeps client and server state, so its serial-equals-Ray check covers fedavg's (which the
# slow tier's multi-node, packing and Fashion-MNIST Ray runs also compare to serial, bit for bit)
RAY_DEFAULT_TIER = ("scaffold",)


def test_every_built_in_algorithm_is_in_the_suite():
    assert {_algorithm(c) for c in CASES} == set(ALGORITHMS)


def _check(check: str, name: str, tmp_path) -> None:
    case = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. DSAC's K clamped to cnn-small's 3 blocks
        {**testing.CHECKS, **testing.RAY_CHECKS}[check](
            _algorithm(name), case.get("params"), overrides=case.get("overrides"), workdir=tmp_path
        )


@pytest.mark.parametrize("check", sorted(testing.CHECKS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_conformance(tmp_path, name, check):
    _check(check, name, tmp_path)


@pytest.mark.ray
@pytest.mark.parametrize(
    "name", [n if n in RAY_DEFAULT_TIER else pytest.param(n, marks=pytest.mark.slow) for n in sorted(CASES)]
)
def test_conformance_on_ray(ray_cluster, tmp_path, name):
    _check("serial_equals_ray", name, tmp_path)
