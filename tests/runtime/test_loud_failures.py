"""Loud failures and survived faults (issue 19, items 4 and 5).

An exception from code, ours or an algorithm's, is an error with its traceback on every backend,
never a counted dropout: each call site gets the same injected bug on the serial backend and on
Ray, and both must raise the same exception (type and message) with the traceback of where it
was raised. Only actor or node death is a fault: a server that dies every time stops after
``resources.max_server_restarts``; waits for actors have deadlines; placements are checked per
node; an unreachable cluster address is refused within seconds."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actors import backend as ray_backend
from actors.backend import check_reachable
from actors.placement import check_nodes, place_on_nodes
from raysim.algorithms import ALGORITHMS
from raysim.config import ConfigError
from raysim.runtime.backend import NodeShare, ServerLost, Share
from raysim.runtime.experiment import Experiment
from raysim.runtime.host import ClientHost
from raysim.runtime.server import ClientCodeError
from tests.conftest import tiny_config
from tests.helpers import experiment
from tests.runtime import toy_algos

REPO = Path(__file__).resolve().parents[2]


def _train(exp: Experiment, tmp: Path) -> None:
    exp.prepare()
    exp.step()


def _checkpoint(exp: Experiment, tmp: Path) -> None:
    _train(exp, tmp)
    exp.save(tmp / "ckpt")


def _restore(exp: Experiment, tmp: Path) -> None:
    _checkpoint(exp, tmp)
    exp.restore(tmp / "ckpt")


# call site: (the algorithm with the bug, the host method sabotaged or None, what triggers it,
# the exception type, a file its traceback must show)
SITES: dict[str, tuple[Callable[[], Any], str | None, Callable[[Experiment, Path], None], type, str]] = {
    # client_update breaks the contract for every client (returns None): raised, not 4 dropouts
    "train": (toy_algos.ReturnsNone, None, _train, TypeError, "host.py"),
    # the same exception from every client's update: ClientCodeError, with a client's traceback
    "train-every-client": (toy_algos.TypeErrorEverywhere, None, _train, ClientCodeError, "toy_algos.py"),
    "evaluate": (toy_algos.BrokenPersonal, None, _train, ValueError, "toy_algos.py"),  # personal_params
    "aggregate": (toy_algos.BrokenAggregate, None, _train, ZeroDivisionError, "toy_algos.py"),
    "server-init": (toy_algos.BrokenInit, None, lambda exp, tmp: exp.prepare(), KeyError, "toy_algos.py"),
    "host-init": (
        lambda: toy_algos.Sabotaged("__init__"),
        "__init__",
        lambda exp, tmp: exp.prepare(),
        RuntimeError,
        "toy_algos.py",
    ),
    "withdraw": (lambda: toy_algos.Sabotaged("withdraw"), "withdraw", _train, RuntimeError, "toy_algos.py"),
    "commit": (lambda: toy_algos.Sabotaged("commit"), "commit", _train, RuntimeError, "toy_algos.py"),
    "checkpoint": (
        lambda: toy_algos.Sabotaged("get_state"),
        "get_state",
        _checkpoint,
        RuntimeError,
        "toy_algos.py",
    ),
    "restore": (
        lambda: toy_algos.Sabotaged("set_state"),
        "set_state",
        _restore,
        RuntimeError,
        "toy_algos.py",
    ),
}


def _cfg(tmp_path: Path, backend: str, **over: Any):
    """4 clients on 2 actors, every client every round (client 0 is the one a Sabotaged run
    quarantines, so its withdraw runs)."""
    base = {
        "data__num_clients": 4,
        "rounds__clients_per_round": 4,
        "rounds__num_rounds": 2,
        "resources__backend": backend,
        "resources__clients_per_actor": 2,
    }
    return tiny_config(tmp_path, **{**base, **over})


def _raised(site: str, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BaseException:
    make, method, action, _, _ = SITES[site]
    tmp = tmp_path / backend
    with monkeypatch.context() as patch:
        if backend == "serial" and method is not None:  # Ray's actors patch themselves (Sabotaged)
            patch.setattr(ClientHost, method, toy_algos.broken_method(method))
        exp = experiment(_cfg(tmp, backend))
        exp.algorithm = make()
        try:
            with pytest.raises(Exception) as info:
                action(exp, tmp)
        finally:
            exp.close()
    return info.value


def _text(err: BaseException) -> str:
    return "".join(traceback.format_exception(err))


@pytest.mark.ray
@pytest.mark.parametrize("site", sorted(SITES))
def test_the_same_bug_raises_the_same_exception_on_serial_and_on_ray(
    ray_cluster, tmp_path, monkeypatch, site
):
    import cloudpickle

    cloudpickle.register_pickle_by_value(toy_algos)  # actors cannot import the tests package
    _, _, _, kind, where = SITES[site]
    serial = _raised(site, "serial", tmp_path, monkeypatch)
    on_ray = _raised(site, "ray", tmp_path, monkeypatch)
    assert type(serial) is kind, _text(serial)
    assert type(on_ray) is kind, _text(on_ray)  # itself, not a RayTaskError nor a dropout
    assert not isinstance(on_ray, ray_cluster.exceptions.RayError)
    assert str(on_ray) == str(serial)
    assert where in _text(serial)
    assert where in _text(on_ray), _text(on_ray)  # the actor's traceback travels with it
    if where == "toy_algos.py":
        assert "broken" in _text(on_ray)  # the frame of the bug itself


@pytest.mark.ray
def test_one_client_s_exception_is_the_same_counted_dropout_on_both_backends(ray_cluster, tmp_path):
    """The other side of the rule (docs/architecture.md, section 3): ONE client failing (its data, say) is a
    dropout with its reason, not a bug, and Ray counts it exactly as serial does."""
    import cloudpickle
    import pandas as pd

    cloudpickle.register_pickle_by_value(toy_algos)
    out = {}
    for backend in ("serial", "ray"):
        exp = experiment(_cfg(tmp_path / backend, backend))
        exp.algorithm = toy_algos.Diverging(victim=1, mode="raise", stateful=True)
        try:
            exp.run()
        finally:
            exp.close()
        out[backend] = [pd.read_parquet(exp.run_dir / f) for f in ("rounds.parquet", "clients.parquet")]
    cols = ["round", "completed", "dropouts", "test_accuracy", "train_loss"]
    pd.testing.assert_frame_equal(out["serial"][0][cols], out["ray"][0][cols], check_exact=True)
    assert list(out["ray"][0]["dropouts"]) == [1, 1]
    serial, on_ray = (
        c[c.dropped][["round", "client_id", "reason"]] for c in (out["serial"][1], out["ray"][1])
    )
    pd.testing.assert_frame_equal(serial.reset_index(drop=True), on_ray.reset_index(drop=True))
    assert list(on_ray["reason"]) == ["error: RuntimeError: this client diverged"] * 2


@pytest.mark.parametrize("backend", ["serial", pytest.param("ray", marks=pytest.mark.ray)])
def test_cli_exits_1_with_the_same_error_on_both_backends(request, tmp_path, monkeypatch, backend):
    """`raysim run` with a client_update that returns None: exit 1 with the error and its
    traceback, on both backends, where Ray used to count four dropouts and exit 0."""
    import yaml
    from typer.testing import CliRunner

    from raysim.cli import app

    if backend == "ray":
        request.getfixturevalue("ray_cluster")
        import cloudpickle

        cloudpickle.register_pickle_by_value(toy_algos)
    monkeypatch.setitem(ALGORITHMS, "returns-none", toy_algos.ReturnsNone)
    raw = _cfg(tmp_path, backend).to_dict()
    raw["algorithm"] = {"name": "returns-none"}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 1, res.output
    assert type(res.exception) is TypeError
    assert str(res.exception) == (
        "ReturnsNone.client_update returned NoneType, not a ClientResult (round 1): a bug in the algorithm"
    )
    assert "raysim/runtime/host.py" in _text(res.exception)
    assert not list((tmp_path / "runs").glob("*/summary.json"))  # no "successful" run left behind


# -- the server: restarts capped ------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_server_that_dies_every_time_stops_after_max_server_restarts(ray_cluster, tmp_path):
    """The server's process exits in every aggregate from round 2 on (as one killed for memory
    would): it is replaced from the round-1 checkpoint twice, then the run stops naming the knob."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(toy_algos)
    cfg = _cfg(
        tmp_path,
        "ray",
        rounds__num_rounds=3,
        rounds__checkpoint_every=1,
        rounds__personal_eval=False,
        resources__max_server_restarts=2,
    )
    exp = experiment(cfg)
    exp.algorithm = toy_algos.ExitInAggregate(from_round=2)
    try:
        exp.prepare()
        exp.run_round(1)
        with pytest.warns(RuntimeWarning, match="restarted it from the checkpoint of round 1"):
            with pytest.raises(ServerLost, match=r"lost 3 times .* resources.max_server_restarts=2"):
                exp.run_round(2)
        assert exp.server_restarts == 2 and exp.next_round == 2
    finally:
        exp.close()


def test_max_server_restarts_is_a_config_knob(tmp_path):
    assert tiny_config(tmp_path).resources.max_server_restarts == 3
    assert tiny_config(tmp_path, resources__max_server_restarts=0).resources.max_server_restarts == 0
    with pytest.raises(ConfigError, match="max_server_restarts"):
        tiny_config(tmp_path, resources__max_server_restarts=-1)


# -- placement, per node --------------------------------------------------------------------------

GPU_NODES = (NodeShare(name="a", cpus=4, gpus=1), NodeShare(name="b", cpus=4, gpus=1))


def test_three_actors_at_0_6_gpu_fit_the_totals_of_two_gpus_but_no_placement():
    with pytest.raises(ConfigError) as info:
        check_nodes(GPU_NODES, num_actors=3, num_cpus=1, num_gpus=0.6, server_cpus=0, server_gpus=0)
    msg = str(info.value)
    assert "GPU 1 x floor(1 / 0.6) = 1" in msg and "CPU 4 / 1 = 4" in msg
    assert "at most 2 client actors fit, 3 asked" in msg and "num_gpus=1/k" in msg
    check_nodes(GPU_NODES, num_actors=4, num_cpus=1, num_gpus=0.5, server_cpus=0, server_gpus=0)  # fits


def test_per_node_cpus_memory_and_the_server_s_share_are_counted():
    nodes = (NodeShare(name="a", cpus=3, memory_mb=4096), NodeShare(name="b", cpus=3, memory_mb=4096))
    # 6 CPUs in all, but a 2-CPU actor leaves 1 CPU of each node idle
    with pytest.raises(ConfigError, match=r"(?s)CPU 3 / 2 = 1.*at most 2 client actors fit, 3 asked"):
        check_nodes(nodes, num_actors=3, num_cpus=2, num_gpus=0, server_cpus=0, server_gpus=0)
    # memory: 4 GB / 1500 MB = 2 actors a node, less the server's 1500 MB on one of them
    with pytest.raises(ConfigError, match=r"(?s)memory 2.5 GB / 1500 MB = 1.*at most 3 client actors fit, 4"):
        check_nodes(nodes, 4, 0.5, 0, 0, 0, actor_memory_mb=1500)
    with pytest.raises(ConfigError, match="no node can hold the server"):
        check_nodes(nodes, 1, 0.5, 0, server_cpus=4, server_gpus=0)
    fit, at, _ = place_on_nodes(nodes, (1, 0, 0), (2, 0, 0))
    assert (fit, at) == (4, 0)  # the server on a node leaves it one actor: 1 + 3
    check_nodes(nodes, 4, 1, 0, server_cpus=2, server_gpus=0)


@pytest.mark.ray
def test_the_ray_backend_knows_each_node(ray_cluster):
    share = ray_backend.RayBackend().share()
    assert len(share.nodes) == 1
    assert (share.nodes[0].cpus, share.nodes[0].gpus) == (share.cpus, share.gpus) == (4.0, 2.0)


@pytest.mark.ray
@pytest.mark.parametrize("who", [pytest.param("client", marks=pytest.mark.slow), "server"])  # client: 20 s
def test_actors_that_cannot_start_stop_prepare_with_a_message(ray_cluster, tmp_path, monkeypatch, who):
    """A share that promises more than the cluster has (nodes unknown, as a Tune trial's): the
    actors Ray cannot place would be waited for forever; now prepare stops at START_TIMEOUT_S."""
    monkeypatch.setattr(ray_backend, "START_TIMEOUT_S", 20.0 if who == "client" else 2.0)
    over = {"resources__num_gpus": 3.0} if who == "client" else {"resources__server_cpus": 50.0}
    exp = experiment(_cfg(tmp_path, "ray", **over), share=Share(cpus=100, gpus=100))
    t0 = time.monotonic()
    try:
        with pytest.raises(ConfigError) as info:
            exp.prepare()
    finally:
        exp.close()
    assert time.monotonic() - t0 < 120
    if who == "client":
        assert "client actors [0, 1] (of 2) did not start within 20 s" in str(info.value)
        assert "num_gpus=3" in str(info.value)
    else:
        assert "the server actor did not start within 2 s" in str(info.value)
        assert "server_cpus=50" in str(info.value)
    assert not (tmp_path / "runs").exists()  # nothing half-written


# -- an unreachable cluster -----------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_address_is_refused_within_seconds_naming_it():
    port = _closed_port()
    t0 = time.monotonic()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(ConfigError, match=f"cannot reach the Ray cluster at '{address}'"):
            check_reachable(address)
    with pytest.raises(ConfigError, match="is not host:port"):
        check_reachable("nonsense")
    assert time.monotonic() - t0 < 5
    check_reachable("auto")  # Ray's words, not addresses
    check_reachable("local")


def test_raysim_run_with_an_unreachable_address_exits_2_at_once(tmp_path):
    import yaml

    port = _closed_port()
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_cfg(tmp_path, "ray").to_dict()))
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-c", "from raysim.cli import app; app()", "run", str(path)]
        + ["--address", f"127.0.0.1:{port}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert f"cannot reach the Ray cluster at '127.0.0.1:{port}'" in res.stderr
    assert "Traceback" not in res.stderr
    assert time.monotonic() - t0 < 60  # imports included; Ray's own retries took minutes
    assert not (tmp_path / "runs").exists()
