"""The core stays Ray-free: importing it must not load ray (docs/architecture.md, section 1)."""

import ast
import subprocess
import sys
from pathlib import Path

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
        "raysim.config_text",
        "raysim.config_checks",
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
        "raysim",
        "raysim.api",
        "raysim.runtime.trackers",
        "raysim.testing",
    ],
)
def test_core_module_does_not_import_ray(module):
    code = f"import sys, {module}; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"{module} pulls in ray"


# the entry point that hands the runtime its Ray backend (raysim.api.BACKENDS); the CLI and the Tune
# trainable take it from there
HANDS_IN_THE_BACKEND = {"raysim/api.py"}


def test_only_the_api_imports_the_ray_backend():
    """The runtime is handed its Ray backend (Experiment(backends=...)): no module of raysim/ but
    the API's imports actors/, not even lazily inside a function, and the runtime never looks it up
    by name: an Experiment for Ray with nothing handed in is refused (tests/test_api.py)."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in sorted((root / "raysim").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if (
                any(n == "actors" or n.startswith("actors.") for n in names)
                and rel not in HANDS_IN_THE_BACKEND
            ):
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []
