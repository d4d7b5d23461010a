"""Autoscaling clusters (issue 23): a run is checked and sized against what the Ray cluster can
grow to (``resources.cluster_max_*``), asks the autoscaler for its actors and waits for them.

The fast tests replace the two calls that reach Ray (``actors.autoscale.request`` and
``cluster_resources``) and hand in the cluster's resources as they change; the slow one starts
Ray's fake autoscaling cluster (its ``FakeMultiNodeProvider``) with a GPU worker type at 0 nodes
and runs a GPU experiment on it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import autoscale
from actors.autoscale import Limits, RunAsk, cluster_target, ensure_room, request_and_wait
from raysim.config import ConfigError, ResourcesConfig, config_from_dict
from raysim.runtime.backend import NodeShare, Share, StartSpec
from raysim.runtime.packing import plan_actors
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]

HEAD = NodeShare(name="head", cpus=8, gpus=0, memory_mb=16 * 1024)
GPU_NODE = NodeShare(name="gpu-worker", cpus=4, gpus=1, memory_mb=8 * 1024)
NOW = Share(cpus=8, gpus=0, memory_mb=16 * 1024, nodes=(HEAD,))  # the GPU group at minReplicas 0
GROWN = Share(cpus=12, gpus=1, memory_mb=24 * 1024, nodes=(HEAD, GPU_NODE))


class FakeAutoscaler:
    """Records the requests; once asked, the cluster grows to ``grown`` after ``delay`` reads
    (None: never)."""

    def __init__(self, grown: Share | None = GROWN, delay: int = 2) -> None:
        self.requests: list[list[dict[str, float]]] = []
        self.grown, self.delay, self.reads = grown, delay, 0

    def request(self, bundles: Any) -> None:
        self.requests.append([dict(b) for b in bundles])

    def share(self) -> Share:
        if any(self.requests) and self.grown is not None:  # (a node stays a while once withdrawn)
            self.reads += 1
            if self.reads > self.delay:
                return self.grown
        return NOW

    def cluster_resources(self) -> dict[str, float]:
        s = self.share()
        return {"CPU": s.cpus, "GPU": s.gpus, "memory": (s.memory_mb or 0) * 2**20}


@pytest.fixture
def fake(monkeypatch) -> FakeAutoscaler:
    f = FakeAutoscaler()
    monkeypatch.setattr(autoscale, "request", f.request)
    monkeypatch.setattr(autoscale, "cluster_resources", f.cluster_resources)
    monkeypatch.setattr(autoscale, "POLL_S", 0.001)
    return f


# a GPU run: 4 client actors of (1 CPU, 0.25 GPU) beside a server that asks for nothing
GPU_RUN = RunAsk(
    num_actors=4, num_cpus=1.0, num_gpus=0.25, server_cpus=0.0, server_gpus=0.0, actor_memory_mb=0
)


def test_a_gpu_run_on_a_cluster_at_zero_gpus_asks_the_autoscaler_and_waits(fake):
    lines: list[str] = []
    asked = ensure_room(fake.share, GPU_RUN, Limits(gpus=1, wait_s=30), echo=lines.append)
    assert asked
    assert fake.requests == [[{"CPU": 1.0, "GPU": 0.25}] * 4]  # one bundle per actor
    assert fake.reads > fake.delay  # it waited for the node, not just asked
    assert "asked the Ray autoscaler" in lines[0] and "4 x {CPU: 1, GPU: 0.25} (4 CPUs, 1 GPUs)" in lines[0]
    assert "the cluster holds" in lines[-1]
    # the backend withdraws the request once its actors are placed
    autoscale.release()
    assert fake.requests[-1] == []


def test_without_cluster_max_a_gpu_run_is_refused_as_before_and_nothing_is_asked(fake):
    with pytest.raises(ConfigError, match=r"needs 1 GPUs, the Ray cluster has 0: lower num_gpus") as err:
        ensure_room(fake.share, GPU_RUN, Limits(), echo=lambda s: None)
    assert "can grow" not in str(err.value)
    assert fake.requests == []


def test_a_run_that_fits_now_asks_for_nothing(fake):
    cpu_run = RunAsk(num_actors=6, num_cpus=1.0, num_gpus=0, server_cpus=1.0, server_gpus=0)
    assert not ensure_room(fake.share, cpu_run, Limits(cpus=64, gpus=4), echo=lambda s: None)
    assert fake.requests == []


def test_a_run_larger_than_cluster_max_is_refused_with_the_arithmetic_before_asking(fake):
    big = RunAsk(num_actors=8, num_cpus=1.0, num_gpus=0.25, server_cpus=0.0, server_gpus=0.5)
    with pytest.raises(ConfigError) as err:
        ensure_room(fake.share, big, Limits(gpus=2), echo=lambda s: None)
    msg = str(err.value)
    assert (
        "resources.num_gpus=0.25 x 8 client actors + resources.server_gpus=0.5 needs 2.5 GPUs, the Ray "
        "cluster can grow to 2 (resources.cluster_max_gpus; it has 0 now)"
    ) in msg, msg
    assert fake.requests == []
    cpus = RunAsk(num_actors=20, num_cpus=1.0, num_gpus=0.25, server_cpus=0.0, server_gpus=0.0)
    with pytest.raises(ConfigError, match=r"needs 20 CPUs, the Ray cluster can grow to 16 \(resources"):
        ensure_room(fake.share, cpus, Limits(cpus=16, gpus=8), echo=lambda s: None)


def test_memory_is_checked_against_cluster_max_memory_and_asked_for_with_it(fake):
    heavy = RunAsk(
        num_actors=4, num_cpus=1.0, num_gpus=0.25, server_cpus=0, server_gpus=0, actor_memory_mb=5120
    )
    # no cluster_max_memory_gb: the GPU node brings memory of its own, checked once it is there
    # (24 GB for the 25 GB asked: the wait ends at the deadline, naming the memory)
    with pytest.raises(ConfigError) as err:
        ensure_room(fake.share, heavy, Limits(gpus=1, wait_s=0.2), echo=lambda s: None)
    msg = str(err.value)
    assert "did not provide" in msg and "as it is now: 4 client actors + the server x" in msg, msg
    assert "Ray offers 24.0 GB of memory for actors: at most 3 client actors fit" in msg, msg
    assert fake.requests[-2] == [{"CPU": 1.0, "GPU": 0.25}] * 4  # asked without memory
    fake.requests, fake.reads = [], 0  # the cluster back at its minimum
    with pytest.raises(
        ConfigError, match=r"can grow to 20.0 GB of memory for actors \(resources.cluster_max_"
    ):
        ensure_room(fake.share, heavy, Limits(gpus=1, memory_mb=20 * 1024), echo=lambda s: None)
    big_node = NodeShare(name="gpu-worker", cpus=4, gpus=1, memory_mb=24 * 1024)  # 4 x 5 GB fit on it
    fake.grown = Share(cpus=12, gpus=1, memory_mb=40 * 1024, nodes=(HEAD, big_node))
    assert ensure_room(fake.share, heavy, Limits(gpus=1, memory_mb=40 * 1024, wait_s=30), echo=lambda s: None)
    mem = 5120.0 * 2**20  # the server, a torch worker too, costs as much as a client actor
    assert fake.requests[-1] == [{"memory": mem}] + [{"CPU": 1.0, "GPU": 0.25, "memory": mem}] * 4


def test_past_scale_wait_s_the_run_stops_naming_what_was_asked_what_arrived_and_the_knobs(fake):
    fake.grown = None  # the autoscaler never delivers (maxReplicas 0, pods unschedulable ...)
    with pytest.raises(ConfigError) as err:
        ensure_room(fake.share, GPU_RUN, Limits(gpus=1, wait_s=0.2), echo=lambda s: None)
    msg = str(err.value)
    assert "did not provide the server and 4 client actors within resources.scale_wait_s=0.2 s" in msg, msg
    assert "asked for 4 x {CPU: 1, GPU: 0.25} (4 CPUs, 1 GPUs)" in msg, msg
    assert "the cluster has 8 CPUs, 0 GPUs" in msg, msg
    assert "Raise resources.scale_wait_s" in msg and "maxReplicas" in msg and "cluster_max_gpus" in msg
    assert (
        "as it is now: resources.num_gpus=0.25 x 4 client actors needs 1 GPUs, the Ray cluster has 0" in msg
    )
    assert fake.requests == [[{"CPU": 1.0, "GPU": 0.25}] * 4, []]  # asked, then withdrawn


def test_progress_lines_while_waiting(fake):
    t = [0.0]
    lines: list[str] = []
    arrivals = iter([False] * 40 + [True])
    waited = request_and_wait(
        [{"GPU": 1.0}],
        600,
        lambda: next(arrivals),
        what="x",
        echo=lines.append,
        clock=lambda: t[0],
        sleep=lambda s: t.__setitem__(0, t[0] + 1.0),
    )
    assert waited == 40
    progress = [line for line in lines if "waiting for the autoscaler" in line]
    assert len(progress) == 2 and "(15 s of 600 s)" in progress[0] and "x needs 0 CPUs, 1 GPUs" in progress[0]


def test_the_target_grows_each_resource_to_its_limit_and_forgets_the_nodes():
    t = cluster_target(NOW, Limits(gpus=2))
    assert (t.cpus, t.gpus, t.memory_mb, t.nodes) == (8, 2, None, ())  # new nodes: memory unknown
    t = cluster_target(NOW, Limits(gpus=2, memory_mb=8 * 1024))
    assert (t.cpus, t.gpus, t.memory_mb, t.nodes) == (8, 2, 16 * 1024, ())
    assert cluster_target(NOW, Limits(cpus=4)) == NOW  # never below what it has: nothing grows
    assert cluster_target(NOW, Limits(memory_mb=64 * 1024)).memory_mb == 64 * 1024


def test_limits_come_from_the_config_and_the_start_spec_carries_them():
    res = config_from_dict(
        {
            "resources": {
                "cluster_max_cpus": 64,
                "cluster_max_gpus": 4,
                "cluster_max_memory_gb": 200,
                "scale_wait_s": 90,
            }
        },
        "t",
    ).resources
    assert Limits.of(res) == Limits(cpus=64, gpus=4, memory_mb=200 * 1024, wait_s=90)
    assert not Limits.of(ResourcesConfig()).any
    names = set(StartSpec.__dataclass_fields__)
    assert {"cluster_max_cpus", "cluster_max_gpus", "cluster_max_memory_gb", "scale_wait_s"} <= names
    experiment_py = (REPO / "raysim" / "runtime" / "experiment.py").read_text()
    assert "scale_wait_s=res.scale_wait_s" in experiment_py  # the run hands them to the backend


@pytest.mark.parametrize(
    ("resources", "problem"),
    [
        ({"cluster_max_cpus": 0}, "resources.cluster_max_cpus: must be > 0, got 0: the CPUs the Ray cluster"),
        ({"cluster_max_gpus": -1}, "resources.cluster_max_gpus: must be >= 0, got -1: the GPUs"),
        ({"cluster_max_memory_gb": -2}, "resources.cluster_max_memory_gb: must be > 0, got -2: the GB"),
        ({"scale_wait_s": 0}, "resources.scale_wait_s: must be > 0, got 0: the seconds a run waits"),
    ],
)
def test_bad_limits_are_refused_naming_the_key(resources, problem):
    with pytest.raises(ConfigError, match="invalid config") as err:
        config_from_dict({"resources": resources}, "t")
    assert problem in str(err.value), str(err.value)


def test_auto_packing_sizes_to_what_the_cluster_can_grow_to():
    gpu = {"num_gpus": 0.25, "num_cpus": 1.0}
    # 8 CPUs and no GPU now: one actor (at least one); grown to 2 GPUs: min(8 / 1, 2 / 0.25) = 8
    assert plan_actors(ResourcesConfig(**gpu), 100, cpus=8, gpus=0).actors == 1
    assert plan_actors(ResourcesConfig(**gpu, cluster_max_gpus=2), 100, cpus=8, gpus=0).actors == 8
    # and to 64 CPUs: min(64 / 1, 4 / 0.25) = 16
    grown = ResourcesConfig(**gpu, cluster_max_gpus=4, cluster_max_cpus=64)
    assert plan_actors(grown, 100, cpus=8, gpus=0).actors == 16
    # the serial backend has no actors to grow; nothing known (k8s render) stays unknown
    assert plan_actors(ResourcesConfig(backend="serial", cluster_max_cpus=64), 100, cpus=2).actors == 2
    assert plan_actors(grown, 100).rule == "unsized"


# -- the real thing: Ray's fake autoscaling cluster ---------------------------------------------

# Ray's FakeMultiNodeProvider starts worker nodes as local raylets. Not via
# ray.cluster_utils.AutoscalingCluster: its start() and shutdown() run `ray stop --force`, which
# stops every Ray on the machine (other test sessions' too); this test starts its head in a
# process group of its own and stops that group only.
FAKE_CLUSTER = {
    "cluster_name": "raysim-autoscale-test",
    "max_workers": 2,
    "provider": {
        "type": "fake_multinode",
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
    },
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
        # the GPU group at minReplicas 0, as in k8s/ray-cluster.yaml
        "gpu-group": {
            "resources": {"CPU": 2, "GPU": 1},
            "node_config": {},
            "min_workers": 0,
            "max_workers": 1,
        },
    },
    "head_node_type": "ray.head.default",
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": 1.0,
    "auth": {},
    "docker": {},
    "file_mounts": {},
    "initialization_commands": [],
    "setup_commands": [],
    "head_setup_commands": [],
    "worker_setup_commands": [],
    "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
    "cluster_synced_files": [],
    "file_mounts_sync_continuously": False,
    "rsync_exclude": [],
    "rsync_filter": [],
}

RUN_ON_FAKE_CLUSTER = """
import json, sys
from pathlib import Path
import ray
from raysim.api import BACKENDS
from raysim.config import config_from_dict
from raysim.runtime.experiment import Experiment

address, raw_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
raw = json.loads(Path(raw_path).read_text())
ray.init(address=address, log_to_driver=False)
before = ray.cluster_resources().get("GPU", 0.0)
exp = Experiment(config_from_dict(raw, "autoscale test"), progress=False, backends=BACKENDS)
try:
    exp.run()
    stats = exp.backend.system_stats()
finally:
    exp.close()
from ray.autoscaler.v2.utils import is_autoscaler_v2
v2 = not address.startswith("ray://") and is_autoscaler_v2(fetch_from_server=True)
if v2:  # the request is a resource constraint in the GCS
    from ray._raylet import GcsClient
    from ray.autoscaler.v2.sdk import get_cluster_resource_state
    state = get_cluster_resource_state(GcsClient(address))
    left = [dict(r.request.resources_bundle) for c in state.cluster_resource_constraints for r in c.resource_requests]
else:  # v1: a JSON list in the internal KV store
    from ray.autoscaler._private.commands import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get
    kv = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    left = None if kv is None else json.loads(kv)
json.dump(
    {
        "gpus_before": before,
        "gpus_after": ray.cluster_resources().get("GPU", 0.0),
        "actors": exp.num_hosts,
        "gpu_shares": sorted(s.get("gpu_share", 0.0) for s in stats if s.get("actor", -1) >= 0),
        "run_dir": str(exp.run_dir),
        "request_left": left,
        "v2": v2,
    },
    open(out, "w"),
)
ray.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def fake_autoscaling_cluster(
    tmp_path: Path, version: str = "v1", client: bool = False
) -> Iterator[tuple[str, dict[str, str]]]:
    """Ray's fake autoscaling cluster (``FAKE_CLUSTER``) with autoscaler ``version``: yields the
    address for drivers (its Ray Client server's with ``client``) and their environment; stops
    its own process group at the end."""
    from ray._private.services import get_node_ip_address
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    port, client_port = _free_port(), _free_port()
    cluster = json.loads(json.dumps(FAKE_CLUSTER))
    head_env: dict[str, str] = {}
    if version == "v2":  # what the fake provider needs for Ray's autoscaler v2 (as cluster_utils sets)
        # v2 reads the provider type's default config, which Ray 2.58's wheel lacks for
        # fake_multinode (example.yaml): the same provider as an "external" one has a built-in default
        cluster["provider"].update(
            type="external",
            module="ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider",
            launch_multiple=True,
            head_node_id=FAKE_HEAD_NODE_ID,
        )
        head_env = {
            "RAY_enable_autoscaler_v2": "1",
            "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
            "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID,
        }
    ip = get_node_ip_address()  # where the fake provider's worker raylets look for the head
    cluster["provider"]["gcs_address"] = f"{ip}:{port}"  # not Ray's default 6379
    cfg_file = tmp_path / "fake-cluster.json"
    cfg_file.write_text(json.dumps(cluster))
    temp = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / f"fake-{port}"
    env = {
        **os.environ,
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [
            ray_cli,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--node-ip-address={ip}",
            "--num-cpus=2",
            "--num-gpus=0",
            f"--autoscaling-config={cfg_file}",
            f"--temp-dir={temp}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--ray-client-server-port={client_port}",
        ],  # fmt: skip
        env={**env, **head_env},
        start_new_session=True,  # its own process group: stopped below without touching any other Ray
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "head.log").open("w"),
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # the head's GCS answers
            try:
                socket.create_connection((ip, port), timeout=1).close()
                break
            except OSError:
                log = (tmp_path / "head.log").read_text()
                assert head.poll() is None and time.monotonic() < deadline, log
                time.sleep(1)
        if client:
            while True:  # its Ray Client server answers too
                try:
                    socket.create_connection((ip, client_port), timeout=1).close()
                    break
                except OSError:
                    assert head.poll() is None and time.monotonic() < deadline, "no Ray Client server"
                    time.sleep(1)
        yield (f"ray://{ip}:{client_port}" if client else f"{ip}:{port}"), env
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the group this test started (head, GCS, raylets, monitor)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)


def gpu_config(tmp_path: Path) -> dict[str, Any]:
    """2 actors x (0.5 CPU, 0.5 GPU): the fake cluster's head (2 CPUs, no GPU) cannot hold them."""
    return tiny_config(
        tmp_path,
        rounds__num_rounds=1,
        resources__backend="ray",
        resources__num_actors=2,
        resources__num_cpus=0.5,
        resources__num_gpus=0.5,
        resources__actor_memory_mb=0,
        resources__cluster_max_gpus=1,
        resources__cluster_max_cpus=4,
        resources__scale_wait_s=240,
    ).to_dict()


@pytest.mark.slow
@pytest.mark.timeout(900)
# KubeRay's autoscalerOptions.version; v2 and Ray Client are `extended`: CI's time budget runs v1
@pytest.mark.parametrize(
    "version",
    [
        "v1",
        pytest.param("v2", marks=pytest.mark.extended),
        pytest.param("v1-client", marks=pytest.mark.extended),
    ],
)
def test_a_gpu_run_scales_a_gpu_group_up_from_zero_on_rays_fake_autoscaler(tmp_path, version):
    """Head: 2 CPUs, no GPU; a worker type of (2 CPUs, 1 GPU) at 0 nodes, at most 1. A run of 2
    actors x (0.5 CPU, 0.5 GPU) with cluster_max_gpus=1 is not refused: it asks the autoscaler,
    a GPU node starts, the actors land on its GPU, and the request is withdrawn afterwards.
    ``v1-client``: the driver connects through Ray Client (``ray://``), as from a laptop."""
    client = version.endswith("-client")
    with fake_autoscaling_cluster(tmp_path, version.removesuffix("-client"), client=client) as (address, env):
        raw_path = tmp_path / "raw.json"
        raw_path.write_text(json.dumps(gpu_config(tmp_path)))
        out = tmp_path / "out.json"
        run = subprocess.run(
            [sys.executable, "-c", RUN_ON_FAKE_CLUSTER, address, str(raw_path), str(out)],
            cwd=REPO,
            env=env,
            timeout=600,
            capture_output=True,
            text=True,
        )
    assert run.returncode == 0, run.stderr[-4000:]
    info = json.loads(out.read_text())
    assert info["gpus_before"] == 0 and info["gpus_after"] == 1, info
    assert info["actors"] == 2 and info["gpu_shares"] == [0.5, 0.5], info
    assert "asked the Ray autoscaler for the server and 2 client actors" in run.stderr
    held = [line for line in run.stderr.splitlines() if "the cluster holds the server and 2 client" in line]
    assert held, run.stderr[-4000:]
    print(f"autoscaler {version}: {held[0]}")  # how long the fake GPU node took (pytest -s)
    assert info["v2"] == (version == "v2") and address.startswith("ray://") == client, info
    assert info["request_left"] in (None, []), info  # withdrawn once the actors were placed
    assert (Path(info["run_dir"]) / "rounds.parquet").is_file()


SWEEP_ON_FAKE_CLUSTER = """
import json, sys
from pathlib import Path
import ray
from tuning.spec import spec_from_dict
from tuning.sweep import run_sweep

address, spec_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
raw = json.loads(Path(spec_path).read_text())
ray.init(address=address, log_to_driver=False)
before = ray.cluster_resources().get("GPU", 0.0)
res = run_sweep(spec_from_dict(raw, "autoscale sweep", Path(spec_path).parent, probe=False), echo=print, verbose=0)
json.dump({"gpus_before": before, "trials": res.trials, "errors": res.errors, "dir": str(res.directory)}, open(out, "w"))
ray.shutdown()
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_gpu_sweep_scales_the_gpu_group_up_from_zero_on_rays_fake_autoscaler(tmp_path):
    """The same GPU experiment as a one-trial sweep, ``cluster_max_*`` in ``fixed:``: not refused,
    the autoscaler is asked for one trial's placement group, and the trial runs on the GPU node."""
    base = gpu_config(tmp_path)
    del base["resources"]["cluster_max_gpus"], base["resources"]["cluster_max_cpus"]
    spec = {
        "name": "gpu-sweep",
        "mode": "grid",
        "base": base,
        "storage_path": str(tmp_path / "sweeps"),
        "fixed": {"resources.cluster_max_gpus": 1, "resources.cluster_max_cpus": 4},
        "space": {"local.lr": {"grid": [0.05]}},
    }
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    out = tmp_path / "out.json"
    with fake_autoscaling_cluster(tmp_path) as (address, env):
        run = subprocess.run(
            [sys.executable, "-c", SWEEP_ON_FAKE_CLUSTER, address, str(spec_path), str(out)],
            cwd=REPO,
            env=env,
            timeout=700,
            capture_output=True,
            text=True,
        )
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-4000:])
    info = json.loads(out.read_text())
    assert info["gpus_before"] == 0 and info["trials"] == 1 and not info["errors"], info
    assert "asked the Ray autoscaler for one trial's placement group: 2 x {CPU: 0.5, GPU: 0.5}" in run.stderr
    held = [line for line in run.stderr.splitlines() if "the cluster holds one trial's" in line]
    assert held, run.stderr[-4000:]
    print(f"sweep: {held[0]}")
