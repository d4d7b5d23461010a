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

import pytest  # noqa: E402

from raysim import testing  # noqa: E402

reproducible.apply_in_process()  # this process computes too (the serial backend, direct trainer tests)


# The kit's tiny experiment (digits, 6 clients, 3 a round, 3 rounds, serial) is the tests' too: one
# definition. ``tiny_config(tmp_path, rounds__num_rounds=4, ...)``: overrides split by ``__``.
tiny_config = testing.tiny_config


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
