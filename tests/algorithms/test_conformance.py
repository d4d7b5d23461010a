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

# What a built-in needs besides the kit's tiny digits config: a model it can serve, and knobs that
# make its interesting path run within the tiny run's rounds.
CASES: dict[str, dict[str, Any]] = {
    "ascfl": {},
    "centralised": {},
    "cfl": {},
    "dsac": {"params": {"cluster_every": 2}},  # clusters at round 2, before the save/restore point
    "fedavg": {},
    "fedbn": {"overrides": {"model.name": "cnn-bn"}},
    "fedper": {},
    "fedprox": {},
    "fedrod": {},
    "genetic-cfl": {},
    "ifca": {},
    "local": {},
    "pfedhn": {},
    "pfedht": {"overrides": {"model.name": "vit-tiny"}},
    "pfedme": {},
    "scaffold": {},
}
RAY_DEFAULT_TIER = ("fedavg", "scaffold")


def test_every_built_in_algorithm_is_in_the_suite():
    assert sorted(CASES) == sorted(ALGORITHMS)


def _check(check: str, name: str, tmp_path) -> None:
    case = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. DSAC's K clamped to cnn-small's 3 blocks
        {**testing.CHECKS, **testing.RAY_CHECKS}[check](
            name, case.get("params"), overrides=case.get("overrides"), workdir=tmp_path
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
