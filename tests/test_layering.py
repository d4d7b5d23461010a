"""The core stays Ray-free: importing it must not load ray (docs/architecture.md, section 1)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "raysim.algorithms",
        "raysim.data",
        "raysim.models",
        "raysim.clustering",
        "raysim.metrics",
        "raysim.config",
        "raysim.runtime.experiment",
        "raysim.runtime.server",
        "raysim.runtime.host",
        "raysim.runtime.backend",
        "raysim.runtime.pool",
        "raysim.runtime.serial",
        "raysim.runtime.packing",
        "raysim.runtime.rundir",
        "raysim.runtime.progress",
        "raysim.runtime.logger",
        "raysim.cli",
        "raysim.testing",
    ],
)
def test_core_module_does_not_import_ray(module):
    code = f"import sys, {module}; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"{module} pulls in ray"
