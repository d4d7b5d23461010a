"""``raysim k8s render``: sizing, flags, refusals (exit 2, nothing written), the defaults of a rendered
job, its ConfigMap and entrypoint, sweeps, and the cost estimate. The manifests' schemas and
security: tests/test_k8s.py."""

from __future__ import annotations

import math
import shlex
from subprocess import list2cmdline

import pytest
import yaml

from raysim import k8s, k8s_manifest
from raysim.cli import app
from raysim.config import ConfigError, ExperimentConfig, ResourcesConfig, load_config, resolved_dict
from tests import k8s_helpers
from tests.k8s_helpers import (
    QUICKSTART,
    RENDERED,
    ROOT,
    SWEEP,
    actor_capacity,
    containers,
    crd_errors,
    group,
    job_config,
    kuberay_admission,
    parse_entrypoint,
    render,
    render_docs,
    runner,
    sets_of,
    worker_totals,
)
from tuning.spec import load_spec

# the shared fixtures (tests/k8s_helpers.py)
crd, rendered, rendered_docs = k8s_helpers.crd, k8s_helpers.rendered, k8s_helpers.rendered_docs

RUNS = [k for k in RENDERED]  # the rendered experiments (rendered_docs also holds "sweep")


def values(rendered_docs, key: str) -> ExperimentConfig:
    cm, job = rendered_docs[key]
    return job_config(job, cm)


def test_rendered_job_runs_the_sized_experiment_from_its_config_map(rendered_docs):
    for key in RUNS:
        cm, job = rendered_docs[key]
        name = job["metadata"]["name"]
        assert cm["metadata"]["name"] == f"{name}-config" and list(cm["data"]) == [k8s.EXPERIMENT_FILE]
        argv = shlex.split(job["spec"]["entrypoint"])
        # the contract: raysim run /config/experiment.yaml [--resume-if-present] --address auto --set output.name=JOB
        assert argv[:3] == ["raysim", "run", f"{k8s_manifest.CONFIG_MOUNT}/{k8s.EXPERIMENT_FILE}"]
        assert argv[argv.index("--address") + 1] == "auto" and argv[-2:] == ["--set", f"output.name={name}"]
        assert "--resume-if-present" in argv
        cfg = job_config(job, cm)
        actors = int(job["metadata"]["annotations"]["raysim.io/actors"])
        # the actor count is pinned: the same whatever the cluster turns out to hold
        assert cfg.num_client_actors() == cfg.num_client_actors(10_000, 1_000) == actors, key
        assert cfg.output.dir == k8s.RUNS_DIR and cfg.output.name == name
        assert cfg.resources.backend == "ray" and cfg.resources.address is None
        # the quick start with the job's own --set (and its client count: the cohort must fit)
        sets = [*sets_of(RENDERED[key]), f"data.num_clients={cfg.data.num_clients}"]
        expected = resolved_dict(load_config(QUICKSTART, sets))
        got = resolved_dict(cfg)
        for section in ("data", "resources", "output", "rounds"):  # what render may change
            expected.pop(section), got.pop(section)
        assert got == expected, key
        # a ConfigMap's value is the experiment raysim validate prints: every value spelled out
        assert yaml.safe_load(cm["data"][k8s.EXPERIMENT_FILE]) == resolved_dict(cfg) | {
            "output": {**resolved_dict(cfg)["output"]}
        }


def test_rendered_jobs_checkpoint_and_restart_actors_by_default(rendered_docs, tmp_path):
    for key in RUNS:
        cfg = values(rendered_docs, key)
        assert cfg.rounds.checkpoint_every == math.ceil(cfg.rounds.num_rounds / 10) >= 1, key
        assert cfg.resources.max_restarts == k8s.DEFAULT_MAX_RESTARTS == 3, key
    # a value the experiment sets wins, 0 included (checkpoints off on purpose)
    cm, job = render_docs(
        tmp_path, "--set", "rounds.num_rounds=45", "--set", "rounds.checkpoint_every=0",
        "--set", "resources.max_restarts=1",
    )[0]  # fmt: skip
    cfg = job_config(job, cm)
    assert (cfg.rounds.checkpoint_every, cfg.resources.max_restarts) == (0, 1)
    (tmp_path / "b").mkdir()
    (cm, job), out = render_docs(tmp_path / "b", "--set", "rounds.num_rounds=45")
    assert job_config(job, cm).rounds.checkpoint_every == 5  # ceil(45 / 10)
    header = out.read_text()
    assert "rounds.checkpoint_every=5 (ceil(45 rounds / 10)), resources.max_restarts=3" in header


def test_cluster_max_keys_are_the_worker_groups_maxima(rendered_docs):
    for key in [*RUNS, "sweep"]:
        cm, job = rendered_docs[key]
        spec = job["spec"]["rayClusterSpec"]
        cpus, gpus, mem = k8s_manifest.group_maxima(spec)
        if key != "sweep":
            assert (cpus, gpus) == worker_totals(job), key  # rendered runs do not autoscale: maxima = size
        text = cm["data"][k8s.SWEEP_FILE if key == "sweep" else k8s.EXPERIMENT_FILE]
        raw = yaml.safe_load(text)
        res = (raw["base"] if key == "sweep" else raw)["resources"]
        if "cluster_max_cpus" in ResourcesConfig.model_fields:
            assert res["cluster_max_cpus"] == cpus and res["cluster_max_gpus"] == gpus
            assert res["cluster_max_memory_gb"] == pytest.approx(mem, abs=1e-3)
        else:  # the autoscale branch has not landed: the keys are left out (they would not load)
            assert not any(k.startswith("cluster_max") for k in res)
    # the static sweep cluster: cpu 10 x 8 CPUs, gpu 4 x (8 CPUs, 1 GPU); Ray's memory: the pods' limits
    # (KubeRay passes them as ray start --memory)
    cpus, gpus, mem = k8s_manifest.group_maxima(k8s.cluster_spec())
    assert (cpus, gpus) == (10 * 8 + 4 * 8, 4)
    assert mem == pytest.approx((10 * 16 + 4 * 32) * 2**30 / 1e9)
    spec = k8s.cluster_spec()
    spec["workerGroupSpecs"][0]["rayStartParams"]["memory"] = str(10**9)  # set: used as is
    assert k8s_manifest.group_maxima(spec)[2] == pytest.approx(10 * 1 + 4 * 32 * 2**30 / 1e9)


def test_rendered_entrypoint_survives_kuberays_two_shells(rendered):
    # the submitter runs `sh -c "... ray job submit -- <entrypoint>"`; Ray re-joins the argv with
    # list2cmdline and runs it with shell=True: every token must come out as it went in
    for job in rendered.values():
        argv = shlex.split(job["spec"]["entrypoint"])
        assert all(shlex.quote(t) == t for t in argv)
        assert shlex.split(list2cmdline(argv)) == argv


# ------------------------------------------------------------------------------------ sizing


def test_render_10_clients_a_quarter_gpu_each(rendered, rendered_docs):
    job = rendered["gpu10"]
    # 10 clients, one per actor, 1 CPU (quickstart) + 0.25 GPU each: 4 actors share a GPU, so
    # 1-GPU pods hold 4 actors -> ceil(10 / 4) = 3 pods of 1 GPU and 4 CPUs (2*4 + 16 = 24 GiB)
    gpu, cpu = group(job, "gpu"), group(job, "cpu")
    assert (gpu["replicas"], gpu["minReplicas"], gpu["maxReplicas"]) == (3, 3, 3)
    assert cpu["replicas"] == cpu["maxReplicas"] == 0
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "4", "memory": "24Gi", "nvidia.com/gpu": "1"}
    assert worker_totals(job) == (12, 3)  # the actors ask for 10 CPUs and 2.5 GPUs
    assert actor_capacity(job, 1.0, 0.25) >= 10
    assert job["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"] is False
    res = values(rendered_docs, "gpu10").resources
    assert values(rendered_docs, "gpu10").data.num_clients == 10 and res.clients_per_actor == 1
    assert res.num_gpus == 0.25 and res.num_actors is None
    assert job["metadata"]["annotations"]["raysim.io/actors"] == "10"


def test_render_1000_clients_on_cpu(rendered, rendered_docs):
    job = rendered["cpu1000"]
    # clients_per_actor: auto, 100 a round -> min(ceil(1000 / 50), 100) = 20 actors of 1 CPU; 8-CPU
    # pods hold 8 -> ceil(20 / 8) = 3 pods, each sized for ceil(20 / 3) = 7 actors: 7 CPUs, 14 GiB
    cpu, gpu = group(job, "cpu"), group(job, "gpu")
    assert (cpu["replicas"], cpu["minReplicas"], cpu["maxReplicas"]) == (3, 3, 3)
    assert gpu["replicas"] == gpu["maxReplicas"] == 0
    res = cpu["template"]["spec"]["containers"][0]["resources"]
    assert res["limits"] == res["requests"] == {"cpu": "7", "memory": "14Gi"}
    assert worker_totals(job) == (21, 0)  # the actors ask for 20 CPUs
    assert actor_capacity(job, 1.0, 0.0) >= 20
    cfg = values(rendered_docs, "cpu1000")
    assert cfg.data.num_clients == 1000 and cfg.resources.num_actors == 20
    assert cfg.resources.clients_per_actor == "auto" and cfg.resources.num_gpus == 0.0


def test_render_a_million_clients_asks_for_one_actor_per_client_of_a_round(rendered, rendered_docs):
    job = rendered["cpu1m"]
    # auto, 100 a round -> min(ceil(10^6 / 50), 100) = min(20,000, 100) = 100 actors of 1 CPU, not
    # 20,000 mostly idle ones; 8-CPU pods hold 8 -> ceil(100 / 8) = 13 pods, each sized for
    # ceil(100 / 13) = 8 actors: 8 CPUs, 16 GiB
    assert min(math.ceil(1_000_000 / k8s.K8S_CLIENTS_PER_ACTOR), 100) == 100
    cpu = group(job, "cpu")
    assert (cpu["replicas"], cpu["minReplicas"], cpu["maxReplicas"]) == (13, 13, 13)
    assert cpu["template"]["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "8", "memory": "16Gi"}
    assert worker_totals(job) == (104, 0) and actor_capacity(job, 1.0, 0.0) >= 100
    cfg = values(rendered_docs, "cpu1m")
    assert cfg.data.num_clients == 1_000_000 and cfg.resources.num_actors == 100
    assert job["metadata"]["annotations"]["raysim.io/actors"] == "100"


@pytest.mark.parametrize(
    ("clients", "cohort", "actors"),
    [
        (20, 5, 1),  # ceil(20 / 50) = 1
        (120, 5, 3),  # ceil(120 / 50) = 3 <= 5
        (1000, 100, 20),  # ceil(1000 / 50) = 20 <= 100
        (1000, 5, 5),  # ceil(1000 / 50) = 20 > 5: the cohort
        (10_000, 100, 100),  # 200 > 100
        (1_000_000, 100, 100),  # 20,000 > 100
        (1_000_000, 1, 1),
    ],
)
def test_default_actors_one_per_50_clients_never_more_than_the_cohort(clients, cohort, actors):
    got, why = k8s.default_actors(clients, cohort)
    assert got == actors == min(math.ceil(clients / 50), cohort)
    per = math.ceil(clients / 50)
    if per <= cohort:
        assert why.startswith(f"A = ceil({clients} / 50) = {per} ")
    else:
        assert why.startswith(
            f"A = {cohort}, the clients a round trains (rounds.clients_per_round), not ceil("
        )
        assert f"= {per} " in why


MILLION = ("--clients", "1000000", "--set", "rounds.clients_per_round=100", "--set", "data.partition=sampled")


@pytest.mark.parametrize(
    ("args", "actors", "rule"),
    [
        (MILLION, 100, "A = 100, the clients a round trains (rounds.clients_per_round), not ceil(1000000 / 50) = 20000"),
        (("--clients", "120"), 3, "A = ceil(120 / 50) = 3 (clients_per_actor: auto without num_actors"),
        ((*MILLION, "--actors", "250"), 250, "A = 250 (--actors: resources.num_actors = 250)"),
        ((*MILLION, "--set", "resources.num_actors=300"), 300,
         "A = 300 (set by the experiment: resources.num_actors = 300)"),
        ((*MILLION, "--set", "resources.clients_per_actor=2000"), 500,
         "A = ceil(1000000 / 2000) = 500 (set by the experiment: resources.clients_per_actor = 2000)"),
        (("--set", "resources.num_actors=50"), 20, "A = 20 (set by the experiment: resources.num_actors = 50, at most the 20 clients)"),
        (("--clients", "10", "--gpus-per-actor", "0.25", "--clients-per-actor", "1"), 10,
         "A = ceil(10 / 1) = 10 (--clients-per-actor: resources.clients_per_actor = 1)"),
        (("--clients", "10", "--gpus-per-actor", "0.25"), 1,
         "A = ceil(10 / 50) = 1 (clients_per_actor: auto without num_actors"),
        (("--set", "algorithm.name=centralised"), 1, "A = 1: centralised pools every client's data into one client"),
    ],
)  # fmt: skip
def test_render_says_which_rule_picked_the_actors_and_a_value_the_experiment_sets_wins(
    tmp_path, crd, args, actors, rule
):
    job, out = render(tmp_path, *args)
    assert job["metadata"]["annotations"]["raysim.io/actors"] == str(actors)
    header = [ln[2:] for ln in out.read_text().splitlines() if ln.startswith("# ")]
    line = next(ln for ln in header if ln.startswith("Actors: "))
    assert line.startswith(f"Actors: {rule}"), line
    assert actor_capacity(job, 1.0, 0.25 if "--gpus-per-actor" in args else 0.0) >= actors
    assert crd_errors(crd["RayJob"], job) == []
    kuberay_admission(job)


def test_render_default_quickstart_is_one_small_pod(rendered):
    job = rendered["default"]
    # 20 clients, auto, 5 a round -> min(ceil(20 / 50), 5) = 1 actor of 1 CPU -> one 1-CPU pod
    assert worker_totals(job) == (1, 0)
    assert job["metadata"]["name"] == "raysim-quickstart"


def test_a_server_that_asks_for_a_gpu_gets_a_pod_and_the_job_one_more_gpu(rendered, rendered_docs):
    job, plain = rendered["gpu10-server"], rendered["gpu10"]
    # the head has no GPU and the client pods are full: the server gets a pod of its own
    assert worker_totals(job) == (12 + 1, 3 + 1)
    assert group(job, "gpu") == group(plain, "gpu") and group(job, "cpu") == group(plain, "cpu")
    server = group(job, "server")
    assert (server["replicas"], server["minReplicas"], server["maxReplicas"]) == (1, 1, 1)
    pod = server["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {
        "cpu": "1",
        "memory": "18Gi",
        "nvidia.com/gpu": "1",
    }
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert values(rendered_docs, "gpu10-server").resources.server_gpus == 1.0
    assert (
        "+ 1 server pod of 1 CPU, 1 GPU: 13 CPUs and 4 GPUs"
        in job["metadata"]["annotations"]["raysim.io/sizing"]
    )


@pytest.mark.parametrize(
    ("sets", "totals", "server_limits"),
    [
        ([], (1, 0), None),  # the server asks for nothing: it runs on the head, no pod of its own
        (["resources.server_gpus=1"], (1 + 1, 1), {"cpu": "1", "memory": "18Gi", "nvidia.com/gpu": "1"}),
        (["resources.server_gpus=0.5"], (1 + 1, 1), {"cpu": "1", "memory": "18Gi", "nvidia.com/gpu": "1"}),
        (["resources.server_cpus=2.5"], (1 + 3, 0), {"cpu": "3", "memory": "6Gi"}),
    ],
)
def test_render_sizes_the_server_of_a_cpu_experiment(tmp_path, sets, totals, server_limits):
    job, _ = render(tmp_path, *(a for s in sets for a in ("--set", s)))
    assert worker_totals(job) == totals
    names = [g["groupName"] for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
    if server_limits is None:
        assert names == ["cpu", "gpu"]
    else:
        assert names == ["cpu", "gpu", "server"]
        limits = group(job, "server")["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits == server_limits


def test_size_server():
    assert k8s.size_server(0, 0) is None
    small = k8s.size_server(0.25, 0)
    assert small is not None and (small.shape.cpus, small.shape.gpus, small.replicas) == (1, 0, 1)
    big = k8s.size_server(3, 2, cpus_per_pod=8, gpus_per_pod=2)
    assert big is not None and (big.shape.cpus, big.shape.gpus) == (3, 2)
    with pytest.raises(
        ConfigError, match=r"resources\.server_gpus=2 does not fit .* --gpus-per-pod to at least 2"
    ):
        k8s.size_server(0, 2)
    with pytest.raises(
        ConfigError, match=r"resources\.server_cpus=9 does not fit .* --cpus-per-pod to at least 9"
    ):
        k8s.size_server(9, 0)


def test_size_workers_whole_gpus_and_fractional_cpus():
    cpu, gpu, per_pod = k8s.size_workers(3, 2.0, 2.0, cpus_per_pod=8, gpus_per_pod=4)
    # 2 GPUs each on 4-GPU pods: 2 actors a pod -> 2 pods of 4 GPUs and 4 CPUs
    assert per_pod == 2 and (gpu.replicas, gpu.shape.gpus, gpu.shape.cpus) == (2, 4, 4) and cpu.replicas == 0
    cpu, gpu, per_pod = k8s.size_workers(20, 0.25, 0.0, cpus_per_pod=8)
    # 0.25 CPU each: 32 fit an 8-CPU pod -> one pod of ceil(20 * 0.25) = 5 CPUs
    assert per_pod == 32 and (cpu.replicas, cpu.shape.cpus) == (1, 5) and gpu.replicas == 0
    _, gpu, _ = k8s.size_workers(10, 1.0, 0.3)
    # 0.3 GPU: only 3 actors fit a GPU (not 3.33) -> 4 pods of 1 GPU
    assert gpu.replicas == 4 and gpu.shape.gpus == 1


# -------------------------------------------------------------------------- render: the CLI


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "data.alpha=-1"], "data.alpha"),
        (["--gpus-per-client", "0.25"], "--gpus-per-actor F"),  # renamed: says both new flags
        (["--gpus-per-client", "0.25"], "--clients-per-actor N"),
        (["--gpus-per-actor", "0"], "--gpus-per-actor"),
        (["--gpus-per-actor", "1.5"], "num_gpus"),
        (["--clients-per-actor", "2", "--actors", "2"], "exclude each other"),
        (["--clients", "100000"], "Use at most 30,000 clients, or --set data.partition=sampled"),
        (["--clients", "31000"], "31,000 clients x 2 examples each = 62,000 training examples"),
        (["--clients", "200", "--clients-per-actor", "1", "--max-pods", "10"], "more than --max-pods 10"),
        (
            ["--set", "data.partition=sampled", "--set", "data.examples_per_client=70000"],
            "examples_per_client",
        ),
        (["--max-pods", "1"], "--max-pods"),
        (
            [
                "--clients",
                "5000",
                "--set",
                "rounds.clients_per_round=100",
                "--set",
                "resources.num_cpus=0.05",
            ],
            "(100 client actors + the server) x resources.actor_memory_mb=450 MB = 45,450 MB",
        ),
        (["--name", "Not_A_Dns_Name"], "--name"),
        (["--clients", "0"], "--clients"),
        (["--set", "resources.num_cpus=16"], "--cpus-per-pod"),
        (["--gpu-per-client", "0.5"], "No such option"),
        (["--set", "resources.server_gpus=2"], "--gpus-per-pod"),
        (["--set", "resources.server_gpus=1.5"], "for the server actor cannot be placed"),
        (["--set", "resources.server_cpus=9"], "resources.server_cpus=9 does not fit"),
        (["--set", "local.lr=.inf"], "local.lr: must be a finite number"),
    ],
)
def test_render_refuses_bad_input_with_status_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "job.yaml"
    r = runner.invoke(app, ["k8s", "render", str(QUICKSTART), *args, "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_render_missing_config_exits_2(tmp_path):
    r = runner.invoke(app, ["k8s", "render", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "j.yaml")])
    assert r.exit_code == 2 and "does not exist" in r.output
    assert not (tmp_path / "j.yaml").exists()


def test_render_to_stdout_and_custom_image(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["k8s", "render", str(QUICKSTART), "--image", "ghcr.io/me/raysim:1", "-o", "-"])
    assert r.exit_code == 0, r.output
    cm, job = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert (cm["kind"], job["kind"]) == ("ConfigMap", "RayJob")
    images = {c["image"] for _, c, _ in containers(job) if "image" in c}
    assert images == {"ghcr.io/me/raysim:1"}
    assert list(tmp_path.iterdir()) == []
    assert r.stdout.startswith("# ConfigMap + RayJob for experiment 'quickstart'")


def test_render_default_output_file_is_named_after_the_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["k8s", "render", str(QUICKSTART), "--set", "name=my_exp"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "raysim-my-exp.rayjob.yaml").is_file()


def test_render_prints_the_cost_models_estimate(tmp_path, monkeypatch):
    """The header (and stderr) carry raysim.bench.model's estimate for the sized experiment."""
    from raysim.bench import coefficients, model

    coef = model.Coefficients(task_s=0.01, example_s=1e-4, overhead_s=0.05, overhead_per_client_s=1e-6,
                              import_s=4, setup_s=6, setup_per_client_s=1e-4, actor_start_s=2, driver_mb=700,
                              server_mb=650, actor_mb=720, actor_per_hosted_mb=0.001, ray_mb=480, store_mb=60,
                              store_per_client_mb=0.001, cores=2)  # fmt: skip
    monkeypatch.setattr(coefficients, "DEFAULT", coef.to_dict())
    out = tmp_path / "job.yaml"
    cohort = ["--set", "rounds.clients_per_round=100"]
    r = runner.invoke(
        app, ["k8s", "render", str(QUICKSTART), "--clients", "1000", *cohort, "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    header = " ".join(ln[2:] for ln in out.read_text().splitlines() if ln.startswith("# "))
    done = k8s.render_rayjob(QUICKSTART, cohort[1:], clients=1000)
    sizing, cfg = done.sizing, done.cfg
    assert sizing is not None
    assert (sizing.actors, sizing.cpu.replicas, sizing.cpu.shape.cpus) == (20, 3, 7)
    # 7 actors on the fullest pod, each holding its own 1000 / 20 clients (FedAvg's roam: the same),
    # + Ray + the store (its per-client term: the partition)
    worker_mb = 7 * (720 + 0.001 * 50) + 480 + (60 + 0.001 * 1000)
    assert f"memory {worker_mb / 1024:.2f} GB per worker pod (3 pods; 720 MB per client actor)" in header
    assert f"Actors: {sizing.rule}." in header and f"Actors: {sizing.rule}." in r.stderr
    expected = k8s.cost_estimate(sizing, cfg)
    assert expected[0].startswith("Estimate (raysim.bench.model")
    for line in expected:
        assert " ".join(line.splitlines()) in header
        assert line in r.stderr
    # evaluation: 10 evaluated rounds; personal_eval of all 1000 clients, 60,000 / 1000 * 0.9 = 54 training
    # and 54 / 6 = 9 test examples each (Fashion-MNIST's 10,000 : 60,000), on min(20, 21) actors at once,
    # + the global model on 10,000 test examples; a test example is 1/3 of a training step
    fwd = 1e-4 / 3
    each = (0.01 * 1000 + fwd * 1000 * 9) / 20 + fwd * 10_000
    evals, got, _ = k8s.evaluation(sizing, cfg, coef)
    assert evals == 10 and got == pytest.approx(each)
    assert (
        f"10 evaluated rounds (every 1) of about {each:,.1f} s each: personal_eval of all 1,000 clients"
        in header
    )
    assert "Run: about " in header
    off = load_config(QUICKSTART, [*cohort[1:], "data.num_clients=1000", "rounds.personal_eval=false"])
    assert k8s.evaluation(sizing, off, coef)[1] == pytest.approx(fwd * 10_000)  # the global model only
    assert "Caveat: the estimate's" not in header  # 5.4 GB of 14 GiB
    big = model.Coefficients.from_dict({**coef.to_dict(), "actor_mb": 3000.0})
    monkeypatch.setattr(coefficients, "DEFAULT", big.to_dict())
    worst = (7 * (3000 + 0.001 * 50) + 480 + 60 + 1) / 1024
    assert any(
        ln.startswith(f"Caveat: the estimate's {worst:.2f} GB per worker pod is more than the pod's 14 GiB")
        for ln in k8s.cost_estimate(sizing, cfg)
    )
    # fitted evaluation terms (raysim bench scale measured evaluation): they replace the forward-pass rule
    fitted = model.Coefficients.from_dict(
        {**coef.to_dict(), "eval_s": 0.2, "eval_overhead_s": 0.1, "eval_example_s": 3e-5}
    )
    evals, got, what = k8s.evaluation(sizing, cfg, fitted)
    assert evals == 10 and got == pytest.approx(0.2 + 0.1 + 3e-5 * 1000 * 9 / 20)
    assert "personal_eval of all 1,000 clients (9 test examples each, 20 actors at once)" in what
    assert k8s.evaluation(sizing, off, fitted)[1] == pytest.approx(0.2)  # the server model only
    monkeypatch.setattr(coefficients, "DEFAULT", fitted.to_dict())
    lines = k8s.cost_estimate(sizing, cfg)
    assert any(
        ln.startswith(f"Evaluation: 10 evaluated rounds (every 1) of about {got:,.1f} s each") for ln in lines
    )
    assert any("(evaluation terms fitted by raysim bench scale)" in ln for ln in lines)
    monkeypatch.setattr(coefficients, "DEFAULT", {})
    assert k8s.cost_estimate(sizing, cfg)[0].startswith("Estimate: none (no fitted coefficients")


# ------------------------------------------------------------------- issue 24: the 10^5 example


def test_the_renamed_flag_exits_2_naming_the_new_flags_and_writes_nothing(tmp_path):
    out = tmp_path / "job.yaml"
    args = [
        "k8s",
        "render",
        str(QUICKSTART),
        "--clients",
        "100000",
        "--gpus-per-client",
        "0.25",
        "--out",
        str(out),
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "--gpus-per-actor" in r.output and "--clients-per-actor" in r.output
    assert list(tmp_path.iterdir()) == []
    assert "--gpus-per-client" not in runner.invoke(app, ["k8s", "render", "--help"]).output  # hidden


def test_a_quarter_gpu_per_actor_for_1e5_clients_with_one_client_per_actor_is_refused_with_the_arithmetic(
    tmp_path,
):
    out = tmp_path / "job.yaml"
    args = ["k8s", "render", str(QUICKSTART), "--clients", "100000", "--gpus-per-actor", "0.25",
            "--clients-per-actor", "1", "--set", "data.partition=sampled", "--out", str(out)]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    msg = " ".join(r.output.split())
    # 100,000 actors, 4 a 1-GPU pod: 25,000 pods + the head; 99 worker pods hold 396 actors -> 253 clients each
    assert (
        "100,000 clients on 100,000 actors" in msg
        and "ceil(100,000 / 4) = 25,000 gpu pods + 1 head = 25,001 pods" in msg
    )
    assert "--clients-per-actor 253 fits 100 pods" in msg
    assert list(tmp_path.iterdir()) == []
    # the advice works: 253 clients an actor fit
    job, _ = render(tmp_path, *args[3:-2], "--clients-per-actor", "253")
    assert sum(g["replicas"] for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]) + 1 <= 100


def test_the_documented_1e5_client_fractional_gpu_example(rendered_docs, crd):
    # docs/kubernetes.md: render configs/quickstart.yaml --clients 100000 --gpus-per-actor 0.25
    #   --set data.partition=sampled --set rounds.clients_per_round=100
    cm, job = rendered_docs["gpu1e5"]
    cfg = job_config(job, cm)
    # auto: min(ceil(100000 / 50), 100) = 100 actors of (1 CPU, 0.25 GPU) -> 4 a GPU -> 25 pods of 1 GPU, 4 CPUs
    assert cfg.resources.num_actors == 100 and cfg.resources.num_gpus == 0.25
    gpu = group(job, "gpu")
    assert (gpu["replicas"], gpu["maxReplicas"]) == (25, 25)
    assert worker_totals(job) == (100, 25) and actor_capacity(job, 1.0, 0.25) >= 100
    assert crd_errors(crd["RayJob"], job) == []
    doc = (ROOT / "docs" / "kubernetes.md").read_text()
    assert "--clients 100000 --gpus-per-actor 0.25" in " ".join(doc.split())
    assert "25 gpu pod(s) of 4 CPU, 1 GPU" in doc


# ---------------------------------------------------------------------------------- sweeps


def test_render_a_sweep_spec(rendered_docs, crd):
    cm, job = rendered_docs["sweep"]
    spec = load_spec(SWEEP)
    assert (
        job["metadata"]["name"] == "raysim-tune-fedavg-lr-optuna"
        and cm["metadata"]["name"] == "raysim-tune-fedavg-lr-optuna-config"
    )
    command, params = parse_entrypoint(job["spec"]["entrypoint"])
    argv = shlex.split(job["spec"]["entrypoint"])
    assert command == "tune" and argv[2] == f"{k8s_manifest.CONFIG_MOUNT}/{k8s.SWEEP_FILE}"
    assert argv[argv.index("--address") + 1] == "auto" and str(params["storage_path"]) == k8s.TUNE_DIR
    assert "--resume-if-present" in argv
    # the ConfigMap holds the spec with its base inlined (as raysim tune saves it): it loads on its own
    saved = tmp_sweep = yaml.safe_load(cm["data"][k8s.SWEEP_FILE])
    assert isinstance(saved["base"], dict) and saved["space"] == yaml.safe_load(SWEEP.read_text())["space"]
    assert tmp_sweep["name"] == spec.spec.name and tmp_sweep["mode"] == "optuna"
    assert job["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"] is True
    assert job["spec"]["activeDeadlineSeconds"] == 24 * 3600
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "tune"
    assert crd_errors(crd["RayJob"], job) == []
    kuberay_admission(job)


def test_the_sweep_header_names_its_directory(tmp_path):
    _, out = render_docs(tmp_path, config=SWEEP)
    assert f"# Results: {k8s.TUNE_DIR}/fedavg_lr_optuna/ on the volume" in out.read_text()


def test_the_rendered_sweep_loads_as_a_spec(rendered_docs, tmp_path):
    cm, _ = rendered_docs["sweep"]
    path = tmp_path / "sweep.yaml"
    path.write_text(cm["data"][k8s.SWEEP_FILE])
    loaded = load_spec(path)
    assert loaded.spec.name == "fedavg_lr_optuna" and set(loaded.spec.space) == {
        "local.lr", "local.epochs", "algorithm.central_lr"
    }  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["--clients", "100"], "--clients: a sweep's trials are sized by its spec"),
        (["--gpus-per-actor", "0.5"], "--gpus-per-actor"),
        (["--max-pods", "5"], "more than --max-pods 5"),
        (["--set", "local.lr=-1"], "local"),
    ],
)
def test_render_refuses_what_a_sweep_cannot_use(tmp_path, args, message):
    out = tmp_path / "job.yaml"
    r = runner.invoke(app, ["k8s", "render", str(SWEEP), *args, "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert list(tmp_path.iterdir()) == []


def test_entrypoints_resume_what_a_previous_attempt_left():
    assert k8s.run_entrypoint("raysim-x") == (
        "raysim run /config/experiment.yaml --resume-if-present --address auto --set output.name=raysim-x"
    )
    assert k8s.tune_entrypoint() == (
        "raysim tune /config/sweep.yaml --resume-if-present --address auto --storage-path /mnt/results/tune"
    )


def test_a_value_set_in_the_file_or_with_set_is_not_overridden_by_the_job_defaults():
    # configs/fedavg_fmnist.yaml sets rounds.checkpoint_every: 10 itself
    done = k8s.render_rayjob(ROOT / "configs" / "fedavg_fmnist.yaml", ["resources.max_restarts=0"])
    assert done.cfg.rounds.checkpoint_every == 10 and done.cfg.resources.max_restarts == 0
    assert done.defaults == []
    done = k8s.render_rayjob(QUICKSTART)
    assert [d.split("=")[0] for d in done.defaults] == ["rounds.checkpoint_every", "resources.max_restarts"]
