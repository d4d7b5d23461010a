"""Plug-ins on Ray actors: an algorithm and a model named by import path run on two client actors
bit-identically to the serial backend; a local module (not installed) reaches the actors; a plug-in
the nodes cannot import is one clear ConfigError before any actor starts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from raysim import plugins
from raysim.config import ConfigError
from tests.conftest import tiny_config
from tests.helpers import experiment, run
from tests.runtime.exact import assert_same_learning, client_actors

pytestmark = pytest.mark.ray

FX = "tests.plugin_fixtures"

LOCAL_MODULE = """
from typing import ClassVar

from torch import nn

from raysim.algorithms.fedavg import FedAvg


class {cls}(FedAvg):
    name: ClassVar[str] = "{algo}"


def net(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, num_classes))
"""


def test_a_plugin_algorithm_and_model_on_two_ray_actors_equal_serial(ray_cluster, tmp_path):
    over = {
        "algorithm__name": f"{FX}:DampedAvg",
        "algorithm__damping": 0.6,
        "model__name": f"{FX}:tiny_mlp",
        "model__width": 9,  # not the default: each actor and the server build it with this width
        "rounds__num_rounds": 2,
    }
    _, serial, _ = run(tiny_config(tmp_path, **over)).unpack("summary", "rounds", "exp")
    summary, got, exp = run(
        tiny_config(tmp_path, resources__backend="ray", resources__num_actors=2, **over)
    ).unpack("summary", "rounds", "exp")
    assert summary["client_actors"] == 2 == client_actors(exp.run_dir)
    assert_same_learning(serial, got, "plug-in DampedAvg + tiny_mlp: serial vs ray (2 actors)")


@pytest.fixture
def local_module(tmp_path, monkeypatch):
    """Write a module into a folder that is on no path, stand in that folder (as a user running
    ``raysim run`` next to their file), and forget it all afterwards."""

    def make(module: str, cls: str, algo: str) -> Path:
        folder = tmp_path / "src"
        folder.mkdir(exist_ok=True)
        path = folder / f"{module}.py"
        path.write_text(LOCAL_MODULE.format(cls=cls, algo=algo))
        monkeypatch.chdir(folder)
        made.append(module)
        return path

    made: list[str] = []
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path / "src"))])
    monkeypatch.setattr(plugins, "_LOCAL_ROOTS", {})
    yield make
    for module in made:
        sys.modules.pop(module, None)


@pytest.mark.slow  # the actors start with the module's folder on PYTHONPATH: fresh workers
def test_a_local_module_named_by_import_path_reaches_the_ray_actors(ray_cluster, tmp_path, local_module):
    local_module("my_local_plugins", "LocalAvg", "local-avg")
    cfg = tiny_config(
        tmp_path,
        algorithm__name="my_local_plugins:LocalAvg",
        model__name="my_local_plugins:net",
        rounds__num_rounds=1,
        resources__backend="ray",
        resources__num_actors=2,
    )
    summary, rounds, _ = run(cfg).unpack("summary", "rounds", "exp")
    assert summary["client_actors"] == 2 and len(rounds) == 1
    assert plugins.worker_env()["PYTHONPATH"].startswith(str((tmp_path / "src").resolve()))


@pytest.mark.slow  # as above
def test_a_plugin_the_nodes_cannot_import_is_one_clear_error(ray_cluster, tmp_path, local_module):
    path = local_module("my_vanishing_plugins", "Vanishing", "vanishing")
    cfg = tiny_config(
        tmp_path,
        algorithm__name="my_vanishing_plugins:Vanishing",
        rounds__num_rounds=1,
        resources__backend="ray",
        resources__num_actors=2,
    )  # the driver imported it; the nodes will not find it (as on a node without the file)
    path.unlink()
    exp = experiment(cfg)
    with pytest.raises(ConfigError) as err:
        try:
            exp.run()
        finally:
            exp.close()
    msg = str(err.value)
    assert "plug-in algorithm 'vanishing' cannot be imported on Ray node" in msg
    assert "No module named 'my_vanishing_plugins'" in msg
    assert "Install the package that provides it on every node" in msg
    assert f"same path on every node ({(tmp_path / 'src').resolve()} here)" in msg
