"""The KubeRay contract without Kubernetes (issue 23, item 6): a local Ray cluster shaped like the
rendered RayJob's (a head with ``--num-cpus=0`` advertising ``raysim_head``, a worker with a
rendered pod's CPUs and memory) runs the rendered job's exact entrypoint the way KubeRay's submitter
does (``bash -c`` with RAY_ADDRESS pointing at the head), with the results volume (/mnt/results) a
temporary directory. It must exit 0, write its outputs under the results path, put the server actor
on the head, and, killed after a checkpoint and started again (a RayJob retry resubmits the same
entrypoint), continue from the checkpoint to the numbers of an uninterrupted run.

The cluster lives in a subprocess (``ray.cluster_utils.Cluster``), so it never meets the test
session's Ray; it is shut down by closing that subprocess's stdin."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from raysim.cli import app
from raysim.k8s_manifest import CONFIG_MOUNT, IMAGE_WORKDIR, RESULTS_MOUNT
from tests.runtime.exact import assert_same_learning

REPO = Path(__file__).resolve().parents[2]
HEAD_RESOURCE = "raysim_head"  # contract.md: the head group advertises it, the server requests it
OBJECT_STORE_CAP = 200 * 2**20  # the rendered pods' object stores (GiBs of /dev/shm) would not fit here

CLUSTER = """
import json, sys
from ray.cluster_utils import Cluster

spec = json.loads(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args=spec["head"])
cluster.add_node(**spec["worker"])
cluster.wait_for_nodes()
print(json.dumps({"address": cluster.address, "head": cluster.head_node.node_id}), flush=True)
sys.stdin.read()  # until the test closes it
cluster.shutdown()
"""


def _node(cpus: float, gpus: float = 0.0, head: bool = False, alive: bool = True) -> dict[str, Any]:
    res = {"CPU": cpus, "GPU": gpus, **({HEAD_RESOURCE: 1.0} if head else {})}
    return {"Alive": alive, "Resources": {k: v for k, v in res.items() if v}}


@pytest.mark.parametrize(
    ("nodes", "server", "wanted"),
    [
        ([_node(0, head=True), _node(8)], (0, 0), {HEAD_RESOURCE: 0.001}),  # the rendered cluster
        ([_node(4), _node(8)], (0, 0), {}),  # no head resource: Ray places it
        ([_node(0, head=True, alive=False), _node(8)], (0, 0), {}),
        # a server that asks for CPUs cannot sit on a --num-cpus=0 head: its own group instead
        ([_node(0, head=True), _node(8)], (1, 0), {}),
        ([_node(2, head=True), _node(8)], (1, 0), {HEAD_RESOURCE: 0.001}),
        ([_node(2, head=True), _node(8, 1)], (0, 0.5), {}),
    ],
)
def test_the_server_requests_the_head_resource_when_the_head_can_host_it(monkeypatch, nodes, server, wanted):
    server_mod = pytest.importorskip("actors.server")
    monkeypatch.setattr(server_mod.ray, "nodes", lambda: nodes)
    assert server_mod.HEAD_RESOURCE == HEAD_RESOURCE
    assert server_mod.server_placement(*server) == wanted


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def _start_params(group: dict[str, Any]) -> dict[str, Any]:
    """The `ray start` parameters of a rendered group, as Cluster.add_node takes them."""
    params = group.get("rayStartParams", {})
    pod = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    out: dict[str, Any] = {
        "num_cpus": int(params.get("num-cpus", pod.get("cpu", 0))),
        "num_gpus": int(pod.get("nvidia.com/gpu", 0)),
        # Ray's `memory` resource on a pod: KubeRay 1.7 starts it with --memory=<the pod's limit>
        "memory": int(_bytes(pod["memory"])),
        "object_store_memory": min(
            int(params.get("object-store-memory", OBJECT_STORE_CAP)), OBJECT_STORE_CAP
        ),
        "include_dashboard": False,
    }
    if "resources" in params:  # KubeRay's form: a JSON object in a string, maybe quoted once more
        text = params["resources"].strip()
        if text[:1] in ("'", '"'):
            text = text[1:-1].replace('\\"', '"')
        out["resources"] = json.loads(text)
    return out


def render(tmp_path: Path) -> dict[str, Any]:
    cfg = {
        "name": "contract",
        "seed": 3,
        "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 0.5, "num_clients": 6},
        "algorithm": {"name": "scaffold"},  # client state on the actors: a resume must restore it
        "local": {"epochs": 1, "batch_size": 16, "lr": 0.05},
        "rounds": {"num_rounds": 6, "clients_per_round": 3, "checkpoint_every": 2},
        "resources": {"num_actors": 2, "num_cpus": 1, "clients_per_actor": "auto"},
    }
    path = tmp_path / "contract.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "job.yaml"
    r = CliRunner().invoke(app, ["k8s", "render", str(path), "--cpus-per-pod", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    docs = {d["kind"]: d for d in yaml.safe_load_all(out.read_text())}
    job = docs["RayJob"]
    job["_config"] = docs["ConfigMap"]["data"]  # what the job mounts at /config
    return job


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict[str, Any]:
    return render(tmp_path_factory.mktemp("render"))


@pytest.fixture(scope="module")
def cluster(job) -> Iterator[dict[str, Any]]:
    spec = job["spec"]["rayClusterSpec"]
    head = _start_params(spec["headGroupSpec"])
    assert head["num_cpus"] == 0  # the rendered head takes no client actor
    # contract.md: the head advertises raysim_head (rendered by k8srender; the contract's value if not yet)
    head.setdefault("resources", {HEAD_RESOURCE: 1})
    assert head["resources"].get(HEAD_RESOURCE) == 1, head
    groups = [g for g in spec["workerGroupSpecs"] if g.get("replicas", 0) > 0]
    assert len(groups) == 1 and groups[0]["replicas"] == 1, groups  # one CPU pod for 2 actors
    proc = subprocess.Popen(
        [sys.executable, "-c", CLUSTER, json.dumps({"head": head, "worker": _start_params(groups[0])})],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, "the local cluster did not start"
        yield json.loads(line)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()  # its Ray processes go with their reaper


def entrypoint(job: dict[str, Any], results: Path) -> str:
    """The rendered entrypoint with the image's paths mapped to this checkout and a results dir, its
    ConfigMap written to a folder beside ``results`` (where the config names the volume, it too)."""
    cmd = job["spec"]["entrypoint"]
    argv = shlex.split(cmd)
    assert argv[:2] == ["raysim", "run"], cmd
    assert "--resume-if-present" in argv, cmd  # a retried job continues its run
    assert argv[2].startswith(CONFIG_MOUNT + "/"), cmd  # the experiment comes from the ConfigMap
    config_dir = results.parent / f"{results.name}-config"
    config_dir.mkdir(exist_ok=True)
    for name, text in job["_config"].items():
        (config_dir / name).write_text(text.replace(RESULTS_MOUNT, str(results)))
    return (
        cmd.replace(RESULTS_MOUNT, str(results))
        .replace(IMAGE_WORKDIR, str(REPO))
        .replace(CONFIG_MOUNT + "/", f"{config_dir}/")
    )


def submit(cmd: str, address: str, **kw: Any) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "RAY_ADDRESS": address,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
    }
    return subprocess.Popen(["bash", "-c", cmd], cwd=REPO, env=env, text=True, start_new_session=True, **kw)


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    return out, err


def one_run_dir(results: Path) -> Path:
    runs = [p for p in (results / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs  # one stable directory, never a -2
    return runs[0]


@pytest.mark.slow  # four runs of 6 rounds on a 2-node local cluster: 4-5 minutes on 2 shared cores
@pytest.mark.timeout(900)
def test_the_rendered_entrypoint_runs_places_the_server_on_the_head_and_resumes(job, cluster, tmp_path):
    # an uninterrupted run
    ref = tmp_path / "ref"
    finish(submit(entrypoint(job, ref), cluster["address"], stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    ref_dir = one_run_dir(ref)
    summary = json.loads((ref_dir / "summary.json").read_text())
    assert summary["finished"] is True and summary["rounds"] == 6
    assert summary["server_node_id"] == cluster["head"]  # the server actor sat on the head
    for name in ("config.yaml", "rounds.parquet", "clients.parquet", "environment.json"):
        assert (ref_dir / name).is_file(), name
    actors = pd.read_parquet(ref_dir / "system.parquet").query("actor >= 0")
    assert cluster["head"] not in set(actors["node_id"])  # and no client actor did

    # the same entrypoint, killed once its round-2 checkpoint exists (a preempted driver) ...
    results = tmp_path / "results"
    proc = submit(
        entrypoint(job, results), cluster["address"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    t_end = time.monotonic() + 600
    while not list(results.glob("runs/*/checkpoints/round_00002/state.json")):
        assert proc.poll() is None, proc.stderr.read()[-4000:] if proc.stderr else ""
        assert time.monotonic() < t_end, "no round-2 checkpoint within 600 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    run_dir = one_run_dir(results)
    summary_path = run_dir / "summary.json"
    assert not summary_path.exists() or not json.loads(summary_path.read_text())["finished"]
    before = pd.read_parquet(run_dir / "rounds.parquet").query("round <= 2")

    # ... and submitted again, as a RayJob retry does: it continues from the checkpoint
    out, _ = finish(
        submit(entrypoint(job, results), cluster["address"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    )
    assert one_run_dir(results) == run_dir
    resumed = json.loads(out[out.index("{") :])
    assert resumed["rounds"] == 6 and resumed["final_test_accuracy"] == summary["final_test_accuracy"]
    after = pd.read_parquet(run_dir / "rounds.parquet")
    assert_same_learning(
        pd.read_parquet(ref_dir / "rounds.parquet"), after, "uninterrupted vs killed and resubmitted"
    )
    # rounds 1-2 were not run again: their rows (timings included) are the killed run's
    pd.testing.assert_frame_equal(before, after.query("round <= 2"), check_exact=True)
    assert json.loads(summary_path.read_text())["server_node_id"] == cluster["head"]

    # a third submission (the job retried after it finished) prints the summary and exits 0
    _, err = finish(
        submit(entrypoint(job, results), cluster["address"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    )
    assert "finished already" in err
    assert one_run_dir(results) == run_dir
