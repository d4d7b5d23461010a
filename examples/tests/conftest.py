"""The example's test session: reproducible mode, one local Ray, the Parquet file written once.

Reproducible mode (``raysim.reproducible``) pins what the bits of a run depend on (kernel ISA,
threads, deterministic algorithms); its variables act only when set before torch and numpy load,
so they are set here, first, and the Ray workers inherit them. That is what lets a test compare a
Ray run with a serial one to the last bit.
"""

from __future__ import annotations

from raysim import reproducible

reproducible.apply_env()
if reproducible.loaded_before_env():  # pragma: no cover - a pytest plugin imported them first
    raise RuntimeError(
        f"{reproducible.loaded_before_env()} loaded before examples/tests/conftest.py set reproducible "
        "mode's variables: run pytest with them exported, eval $(python -m raysim.reproducible)"
    )

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

reproducible.apply_in_process()  # the serial backend computes in this process


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the session (4 logical CPUs: two client actors and a server fit twice)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def rotated(tmp_path_factory) -> Path:
    """examples/make_data.py's default file (8 clients, rotation groups 0 and 180 degrees)."""
    from examples.make_data import main

    return main(["--out", str(tmp_path_factory.mktemp("data") / "rotated_fmnist.parquet")])
