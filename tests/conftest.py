"""Shared fixtures: tiny configs on scikit-learn digits, one session-scoped Ray.

Every test runs in reproducible mode (``raysim.reproducible``): its variables are set here, before
anything imports torch or numpy (they read them when they load), so that a test comparing bits
holds on any x86-64 machine with AVX2, and Ray actors inherit them from this process.
``RAYSIM_TEST_ENV=as-is`` leaves the environment as it is: the portability test runs its control
that way (what the machine gives without the mode).
"""

from __future__ import annotations

import os

from raysim import reproducible  # imports neither torch nor numpy

AS_IS = os.environ.get("RAYSIM_TEST_ENV") == "as-is"
if not AS_IS:
    reproducible.apply_env()
    if reproducible.loaded_before_env():  # pragma: no cover - a plugin imported them first
        raise RuntimeError(
            f"{reproducible.loaded_before_env()} loaded before tests/conftest.py set reproducible mode's "
            "variables: run pytest with them exported, eval $(python -m raysim.reproducible)"
        )

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from raysim.config import ExperimentConfig, config_from_dict  # noqa: E402

reproducible.apply_in_process()  # this process computes too (the serial backend, direct trainer tests)


def tiny_config(tmp_path: Path, **over: Any) -> ExperimentConfig:
    """A few-second experiment: digits (8x8), 6 clients, 3 a round, serial backend."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "seed": 3,
        "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 0.5, "num_clients": 6},
        "model": {"name": "cnn-small"},
        "algorithm": {"name": "fedavg"},
        "local": {"epochs": 1, "batch_size": 16, "lr": 0.05},
        "rounds": {"num_rounds": 3, "clients_per_round": 3, "eval_every": 1},
        "resources": {"backend": "serial", "num_cpus": 0.25},
        "output": {"dir": str(tmp_path / "runs"), "progress": False},
    }
    for dotted, value in over.items():
        node = raw
        parts = dotted.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return config_from_dict(raw)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session: 4 logical CPUs and 2 logical GPUs (on this CPU-only
    machine Ray still hands out GPU ids, which exercises fractional-GPU placement)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(
            num_cpus=4, num_gpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False
        )
    yield ray
    ray.shutdown()
