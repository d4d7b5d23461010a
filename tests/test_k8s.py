"""The Kubernetes path, checked without a cluster: k8s/ manifests and `raysim k8s render` output
validate against KubeRay's CRD schemas and the core Kubernetes schemas, run as non-root, carry
entrypoints our own CLI accepts, and size the worker groups to the experiment."""

from __future__ import annotations

import importlib
import math
import os
import re
import shlex
import tomllib
from pathlib import Path
from subprocess import list2cmdline
from typing import Any, NoReturn

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from raysim import k8s, k8s_manifest
from raysim.cli import app
from raysim.config import ConfigError, ExperimentConfig, load_config
from raysim.data.datasets import FASHION_MNIST_DEFAULT_DIR
from tests.k8s_helpers import EntrypointError, parse_entrypoint
from tuning.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "inline-config.yaml")
RAY_PIN = re.search(r'"ray\[tune\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)  # type: ignore[union-attr]
K8S_VERSIONS = ("1.29", "latest")  # oldest Kubernetes we claim, and the newest kubernetes-validate knows
runner = CliRunner()


# ------------------------------------------------------------------------------------ helpers


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(tmp_path: Path, *args: str) -> tuple[dict[str, Any], Path]:
    out = tmp_path / "job.yaml"
    r = runner.invoke(app, ["k8s", "render", str(QUICKSTART), *args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    return yaml.safe_load(out.read_text()), out


RENDERED = {  # the jobs the issue asks about, and a federation of 10^6 clients
    "gpu10": ("--clients", "10", "--gpus-per-client", "0.25"),
    "gpu10-server": ("--clients", "10", "--gpus-per-client", "0.25", "--set", "resources.server_gpus=1"),
    "cpu1000": ("--clients", "1000", "--set", "rounds.clients_per_round=100"),
    "cpu1m": ("--clients", "1000000", "--set", "rounds.clients_per_round=100"),
    "default": (),
}


def sets_of(args: tuple[str, ...]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "--set"]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """The jobs of RENDERED, rendered once for the module."""
    tmp = tmp_path_factory.mktemp("render")
    jobs = {}
    for key, args in RENDERED.items():
        (tmp / key).mkdir()
        jobs[key], _ = render(tmp / key, *args)
    return jobs


def all_objects(rendered: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    objs = [(p.name, d) for p in MANIFESTS for d in load_docs(p)]
    return objs + [(f"rendered:{k}", v) for k, v in rendered.items()]


def cluster_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "RayCluster":
        return [doc["spec"]]
    if doc["kind"] == "RayJob":
        return [doc["spec"]["rayClusterSpec"]]
    return []


def pod_specs(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod the object makes."""
    out = []
    for spec in cluster_specs(doc):
        out.append(("head", spec["headGroupSpec"]["template"]["spec"]))
        out += [(f"group {g['groupName']}", g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        out.append(("submitter", doc["spec"]["submitterPodTemplate"]["spec"]))
    if doc["kind"] == "Pod":
        out.append(("pod", doc["spec"]))
    return out


def containers(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, container, its pod spec) of every container, the autoscaler sidecar included."""
    out = []
    for where, pod in pod_specs(doc):
        for c in pod.get("initContainers", []) + pod["containers"]:
            out.append((f"{where}/{c['name']}", c, pod))
    for spec in cluster_specs(doc):
        if spec.get("enableInTreeAutoscaling"):
            out.append(
                ("autoscaler", spec.get("autoscalerOptions", {}), spec["headGroupSpec"]["template"]["spec"])
            )
    return out


_UNITS = {
    "": 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}


def to_bytes(q: str | int) -> int:
    num, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q)).groups()  # type: ignore[union-attr]
    return int(float(num) * _UNITS[unit])


def to_cpus(q: str | int) -> float:
    s = str(q)
    return int(s[:-1]) / 1000 if s.endswith("m") else float(s)


def worker_totals(job: dict[str, Any]) -> tuple[float, int]:
    """(CPUs, GPUs) Ray sees once every worker pod is up (KubeRay advertises the limits)."""
    cpus, gpus = 0.0, 0
    for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpus += g["replicas"] * to_cpus(limits["cpu"])
        gpus += g["replicas"] * int(limits.get("nvidia.com/gpu", 0))
    return cpus, gpus


def actor_capacity(job: dict[str, Any], c: float, g: float) -> int:
    """How many actors of (c CPUs, g GPUs) Ray can place on the worker pods (one node each)."""
    total = 0
    for grp in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        limits = grp["template"]["spec"]["containers"][0]["resources"]["limits"]
        node_cpus, node_gpus = to_cpus(limits["cpu"]), int(limits.get("nvidia.com/gpu", 0))
        fits = [int(node_cpus / c + 1e-9)] if c else []
        fits += [int(node_gpus / g + 1e-9)] if g else []
        total += grp["replicas"] * (min(fits) if fits else 10**9)
    return total


def group(job: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == name)


def entrypoint_sets(job: dict[str, Any]) -> dict[str, str]:
    argv = shlex.split(job["spec"]["entrypoint"])
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--set")


# ------------------------------------------------------------------------------ schema checks


def _schemas_dir() -> Path:
    env = os.environ.get("RAYSIM_K8S_SCHEMAS")
    return Path(env) if env else ROOT / ".." / "shared" / "k8s-schemas"


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD's openAPIV3Schema as JSON Schema that, like `kubectl apply` (strict field
    validation), rejects unknown fields instead of pruning them."""
    s = dict(schema)
    if "properties" in s:
        s["properties"] = {k: _strict(v) for k, v in s["properties"].items()}
        if "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = _strict(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        s["items"] = _strict(s["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in s:
            s[key] = [_strict(x) for x in s[key]]
    if s.get("nullable") and isinstance(s.get("type"), str):
        s["type"] = [s["type"], "null"]
    return s


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def missing(reason: str) -> NoReturn:
    """Skip a check whose inputs this machine lacks; on CI (CI=true) that is a failure instead."""
    if on_ci():
        pytest.fail(f"{reason} [CI=true: the schema checks must run on CI, not skip]")
    pytest.skip(reason)


def need(module: str, reason: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(f"{module} is not installed: {reason}")


def crd_validators(folder: Path) -> dict[str, Any]:
    """kind -> a jsonschema validator for KubeRay's v1 CRD in ``folder``."""
    files = {"RayCluster": folder / "ray.io_rayclusters.yaml", "RayJob": folder / "ray.io_rayjobs.yaml"}
    absent = [str(p) for p in files.values() if not p.is_file()]
    if absent:
        missing(
            f"KubeRay CRD schemas not found ({', '.join(absent)}): put ray.io_rayclusters.yaml and "
            "ray.io_rayjobs.yaml there or point RAYSIM_K8S_SCHEMAS at a folder that has them"
        )
    jsonschema = need("jsonschema", "the dev extra validates the CRDs with it")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out = {}
    for kind, path in files.items():
        crd_doc = yaml.load(path.read_text(), Loader=loader)
        assert crd_doc["spec"]["names"]["kind"] == kind
        v1 = next(v for v in crd_doc["spec"]["versions"] if v["name"] == "v1")
        out[kind] = jsonschema.Draft202012Validator(_strict(v1["schema"]["openAPIV3Schema"]))
    return out


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    """KubeRay's CRDs from ../shared/k8s-schemas or $RAYSIM_K8S_SCHEMAS (skip without them, fail on CI)."""
    return crd_validators(_schemas_dir())


@pytest.fixture(scope="module")
def core():
    """Validate a core object (or a pod template) offline against the Kubernetes schemas."""
    kv = need("kubernetes_validate", "pip install kubernetes-validate (dev extra) for the core schemas")

    def validate(obj: dict[str, Any]) -> None:
        for version in K8S_VERSIONS:
            kv.validate(obj, kv.latest_version() if version == "latest" else version, strict=True)

    return validate


def test_missing_schemas_skip_on_a_laptop_and_fail_on_ci(tmp_path, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="KubeRay CRD schemas not found"):
        crd_validators(tmp_path)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="KubeRay CRD schemas not found.*CI=true"):
        crd_validators(tmp_path)
    with pytest.raises(pytest.fail.Exception, match="no_such_module_xyz is not installed"):
        need("no_such_module_xyz", "test")


def crd_errors(validator, doc: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def kuberay_admission(doc: dict[str, Any]) -> None:
    """The checks KubeRay's operator makes beyond the schema (ValidateRayJobSpec & co.)."""
    name = doc["metadata"]["name"]
    limit = k8s.MAX_JOB_NAME if doc["kind"] == "RayJob" else 53
    assert len(name) <= limit and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    for spec in cluster_specs(doc):
        assert spec["headGroupSpec"]["template"]["spec"]["containers"]
        for g in spec["workerGroupSpecs"]:
            assert g["template"]["spec"]["containers"]
            assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        assert all(isinstance(v, str) for v in spec["headGroupSpec"]["rayStartParams"].values())


def test_every_manifest_and_rendered_job_validates_against_the_kuberay_crds(crd, rendered):
    ray_objects = [(w, d) for w, d in all_objects(rendered) if d["apiVersion"] == "ray.io/v1"]
    assert {d["kind"] for _, d in ray_objects} == {"RayCluster", "RayJob"}
    for where, doc in ray_objects:
        assert crd_errors(crd[doc["kind"]], doc) == [], where
        kuberay_admission(doc)


def test_the_crd_check_is_strict_about_unknown_and_mistyped_fields(crd):
    job = load_docs(K8S / "ray-job.run.yaml")[0]
    typo = yaml.safe_load(yaml.safe_dump(job))
    typo["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplica"] = 1
    assert any("minReplica" in e for e in crd_errors(crd["RayJob"], typo))
    wrong = yaml.safe_load(yaml.safe_dump(job))
    wrong["spec"]["backoffLimit"] = "one"
    assert crd_errors(crd["RayJob"], wrong)


def test_core_objects_and_every_pod_template_validate_against_kubernetes_schemas(core, rendered):
    kinds = set()
    for _, doc in all_objects(rendered):
        if doc["apiVersion"] != "ray.io/v1":
            core(doc)  # PersistentVolumeClaim, Pod
            kinds.add(doc["kind"])
        for _, pod in pod_specs(doc):
            template = {"metadata": {"labels": {"app.kubernetes.io/name": "raysim"}}, "spec": pod}
            core({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template})
        for cwhere, c, _ in containers(doc):
            if cwhere == "autoscaler":  # autoscalerOptions is not a Container; check its two k8s parts
                res, sec = c["resources"], c["securityContext"]
                probe = {"name": "autoscaler", "image": "x", "resources": res, "securityContext": sec}
                pod = {"containers": [probe]}
                core(
                    {
                        "apiVersion": "v1",
                        "kind": "PodTemplate",
                        "metadata": {"name": "t"},
                        "template": {"spec": pod},
                    }
                )
    assert kinds == {"PersistentVolumeClaim", "Pod"}


def test_the_core_check_is_strict(core):
    kv = need("kubernetes_validate", "the core schema check")
    pvc = load_docs(K8S / "pvc.yaml")[0]
    pvc["spec"]["accesModes"] = pvc["spec"].pop("accessModes")
    with pytest.raises(kv.ValidationError):
        core(pvc)


def test_every_yaml_in_k8s_is_a_manifest_or_the_inline_base_config():
    assert {p.name for p in MANIFESTS} >= {
        "ray-cluster.yaml",
        "ray-job.run.yaml",
        "ray-job.tune.yaml",
        "pvc.yaml",
    }
    for p in MANIFESTS:
        for d in load_docs(p):
            assert {"apiVersion", "kind", "metadata"} <= d.keys(), p.name
    assert yaml.safe_load((K8S / "inline-config.yaml").read_text()) == {}  # every default, on purpose
    assert load_config(K8S / "inline-config.yaml") == ExperimentConfig()  # loads, and adds nothing


# ----------------------------------------------------------------------------- cluster shape


def test_static_cluster_is_what_render_builds_and_both_jobs_inline_it():
    cluster = load_docs(K8S / "ray-cluster.yaml")[0]
    assert cluster["spec"] == k8s.cluster_spec(), (
        "k8s/ray-cluster.yaml and raysim.k8s.cluster_spec() disagree: change both together"
    )
    for name in ("ray-job.run.yaml", "ray-job.tune.yaml"):
        job = load_docs(K8S / name)[0]
        assert job["spec"]["rayClusterSpec"] == cluster["spec"], (
            f"{name}: rayClusterSpec != k8s/ray-cluster.yaml"
        )
        assert job["spec"]["submitterPodTemplate"] == k8s_manifest.submitter_template(k8s.DEFAULT_IMAGE)


def test_cluster_shape_head_cpu_only_gpu_group_scales_from_zero():
    spec = load_docs(K8S / "ray-cluster.yaml")[0]["spec"]
    assert spec["rayVersion"] == RAY_PIN == k8s_manifest.RAY_VERSION
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no client actor on the head
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["template"]["spec"][
        "tolerations"
    ]
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert groups["cpu"]["maxReplicas"] > groups["cpu"]["minReplicas"]


def test_every_ray_pod_has_sized_shm_named_ports_and_the_results_volume(rendered):
    claim = load_docs(K8S / "pvc.yaml")[0]
    assert (
        claim["metadata"]["name"] == k8s_manifest.RESULTS_CLAIM
        and "ReadWriteMany" in claim["spec"]["accessModes"]
    )
    head_ports = {
        p["name"]
        for p in load_docs(K8S / "ray-cluster.yaml")[0]["spec"]["headGroupSpec"]["template"]["spec"][
            "containers"
        ][0]["ports"]
    }
    assert {"gcs-server", "dashboard", "client"} <= head_ports
    for where, doc in all_objects(rendered):
        for spec in cluster_specs(doc):
            groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
            for grp in groups:
                pod = grp["template"]["spec"]
                ray = pod["containers"][0]
                vols = {v["name"]: v for v in pod["volumes"]}
                mounts = {m["mountPath"]: m["name"] for m in ray["volumeMounts"]}
                shm = vols[mounts["/dev/shm"]]["emptyDir"]
                assert shm["medium"] == "Memory", where
                shm_bytes = to_bytes(shm["sizeLimit"])
                assert int(grp["rayStartParams"]["object-store-memory"]) <= shm_bytes, where
                assert shm_bytes < to_bytes(ray["resources"]["limits"]["memory"]), where
                assert (
                    vols[mounts[k8s_manifest.RESULTS_MOUNT]]["persistentVolumeClaim"]["claimName"]
                    == k8s_manifest.RESULTS_CLAIM
                )
                assert ray["ports"] and all(p.get("name") for p in ray["ports"]), where


def test_every_container_has_cpu_and_memory_requests_and_limits(rendered):
    seen = 0
    for where, doc in all_objects(rendered):
        for cwhere, c, _ in containers(doc):
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= c["resources"][kind].keys(), f"{where} {cwhere} {kind}"
            assert to_cpus(c["resources"]["requests"]["cpu"]) <= to_cpus(c["resources"]["limits"]["cpu"])
            seen += 1
    assert seen >= 20


def test_security_non_root_no_escalation_no_hostpath_no_public_dashboard(rendered):
    for where, doc in all_objects(rendered):
        for pwhere, pod in pod_specs(doc):
            assert not any("hostPath" in v for v in pod.get("volumes", [])), f"{where} {pwhere}"
            assert not (pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC")), (
                f"{where} {pwhere}"
            )
        for cwhere, c, pod in containers(doc):
            ctx, pod_ctx = c.get("securityContext", {}), pod.get("securityContext", {})
            assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, f"{where} {cwhere}"
            assert ctx.get("runAsUser", pod_ctx.get("runAsUser")) == k8s_manifest.RAY_UID != 0, (
                f"{where} {cwhere}"
            )
            assert ctx.get("allowPrivilegeEscalation") is False, f"{where} {cwhere}"
            assert not ctx.get("privileged") and ctx["capabilities"]["drop"] == ["ALL"], f"{where} {cwhere}"
        for spec in cluster_specs(doc):
            head = spec["headGroupSpec"]
            assert head.get("serviceType", "ClusterIP") == "ClusterIP", where
            assert not head.get("enableIngress"), where
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") not in ("LoadBalancer", "NodePort"), where


def test_rayjobs_clean_up_after_themselves(rendered):
    jobs = [(w, d) for w, d in all_objects(rendered) if d["kind"] == "RayJob"]
    assert len(jobs) == 2 + len(rendered)
    for where, job in jobs:
        spec = job["spec"]
        assert spec["shutdownAfterJobFinishes"] is True, where
        assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
        assert isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] > 0, where
        assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 0, where
        assert spec["submissionMode"] == "K8sJobMode", where


# -------------------------------------------------------------------------------- Dockerfile


def _dockerfile() -> str:
    return (K8S / "Dockerfile").read_text()


def test_dockerfile_base_image_matches_the_ray_pin():
    text = _dockerfile()
    tags = re.findall(r"rayproject/ray:([\w.-]+)", text)
    assert tags, "the Dockerfile must build on a rayproject/ray image"
    for tag in tags:
        assert tag.startswith(f"{RAY_PIN}-py311"), f"rayproject/ray:{tag} does not match ray[tune]=={RAY_PIN}"
    default = re.search(r"^ARG RAY_IMAGE=rayproject/ray:(\S+)$", text, re.M)
    assert default and default.group(1) == f"{RAY_PIN}-py311"
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms[-1] == "${RAY_IMAGE}"  # the final stage is the Ray image
    assert f"assert v == '{RAY_PIN}'" in text  # the build fails if pip swapped Ray


def test_dockerfile_runs_as_non_root_and_keeps_secrets_out():
    text = _dockerfile()
    final = text[text.rindex("\nFROM ") :]
    users = re.findall(r"^USER (\S+)$", final, re.M)
    assert users, "the final stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) == k8s_manifest.RAY_UID != 0 and gid == str(k8s_manifest.RAY_GID)
    assert not re.search(r"^(ARG|ENV)\s+\S*(TOKEN|SECRET|PASSW|KEY|CREDENTIAL)", text, re.M | re.I)
    assert not re.search(r"^ADD ", text, re.M) and not re.search(r"^COPY (--\S+ )*\. ", text, re.M)
    ignore = [ln for ln in (K8S / "Dockerfile.dockerignore").read_text().splitlines() if ln and ln[0] != "#"]
    assert ignore[0] == "*" and not any(".env" in ln or ".git" in ln for ln in ignore)  # an allow-list
    assert not (K8S / ".env").exists()


def test_image_has_the_data_the_configs_and_the_inline_base_config():
    text = _dockerfile()
    assert "dataset-fashion-mnist" in text
    assert f"COPY --from=fashion-mnist {FASHION_MNIST_DEFAULT_DIR} {FASHION_MNIST_DEFAULT_DIR}" in text
    assert f"WORKDIR {k8s_manifest.IMAGE_WORKDIR}" in text
    assert "COPY --chown=1000:100 configs ./configs" in text
    assert k8s.INLINE_CONFIG == f"{k8s_manifest.IMAGE_WORKDIR}/k8s/inline-config.yaml"
    assert "k8s/inline-config.yaml ./k8s/inline-config.yaml" in text


# ------------------------------------------------------------------------------- entrypoints


def _in_repo(image_path: str) -> Path:
    """Where a path inside the image comes from in this repository."""
    assert image_path.startswith(k8s_manifest.IMAGE_WORKDIR + "/"), image_path
    return ROOT / image_path.removeprefix(k8s_manifest.IMAGE_WORKDIR + "/")


def _has_command(name: str) -> bool:
    return name in typer.main.get_command(app).commands  # type: ignore[attr-defined]


def test_run_job_entrypoint_parses_with_our_cli_and_names_a_baked_config():
    job = load_docs(K8S / "ray-job.run.yaml")[0]
    command, params = parse_entrypoint(job["spec"]["entrypoint"])
    assert command == "run"
    cfg = load_config(_in_repo(str(params["config"])), params["set_"])
    assert cfg.output.dir == k8s.RUNS_DIR and cfg.resources.backend == "ray"


def test_tune_job_entrypoint_parses_with_our_cli():
    assert _has_command("tune")
    job = load_docs(K8S / "ray-job.tune.yaml")[0]
    command, params = parse_entrypoint(job["spec"]["entrypoint"])
    assert command == "tune"
    loaded = load_spec(_in_repo(str(params["spec"])), params["set_"] or [])
    assert loaded.spec.mode == "optuna" and str(params["storage_path"]).startswith("/mnt/results")


@pytest.mark.parametrize(
    "entrypoint, why",
    [
        ("raysim run configs/quickstart.yaml --sett rounds.num_rounds=2", "No such option"),
        ("raysim runn configs/quickstart.yaml", "No such command"),
        ("python -m raysim run configs/quickstart.yaml", "must start with 'raysim'"),
        ("raysim run configs/quickstart.yaml --help", "--help"),
        ("raysim report", "Missing argument"),
    ],
)
def test_parse_entrypoint_refuses_what_the_cli_would_refuse(entrypoint, why):
    with pytest.raises(EntrypointError, match=re.escape(why)):
        parse_entrypoint(entrypoint)


def test_parse_entrypoint_follows_nested_commands():
    command, params = parse_entrypoint("raysim k8s render configs/quickstart.yaml --clients 10")
    assert command == "k8s render" and params["clients"] == 10


def test_rendered_entrypoint_reruns_exactly_the_sized_experiment(rendered):
    for key, job in rendered.items():
        command, params = parse_entrypoint(job["spec"]["entrypoint"])
        assert command == "run" and str(params["config"]) == k8s.INLINE_CONFIG
        cfg = load_config(_in_repo(str(params["config"])), params["set_"])
        actors = int(job["metadata"]["annotations"]["raysim.io/actors"])
        # the actor count is pinned: the same whatever the cluster turns out to hold
        assert cfg.num_client_actors() == cfg.num_client_actors(10_000, 1_000) == actors, key
        assert (
            cfg.output.dir == k8s.RUNS_DIR
            and cfg.resources.backend == "ray"
            and cfg.resources.address is None
        )
        # the quick start with the job's own --set (and its client count: the cohort must fit)
        sets = [*sets_of(RENDERED[key]), f"data.num_clients={cfg.data.num_clients}"]
        expected = load_config(QUICKSTART, sets).to_dict()
        got = cfg.to_dict()
        for section in ("data", "resources", "output"):  # what render may change
            expected.pop(section), got.pop(section)
        assert got == expected, key


def test_rendered_entrypoint_survives_kuberays_two_shells(rendered):
    # the submitter runs `sh -c "... ray job submit -- <entrypoint>"`; Ray re-joins the argv with
    # list2cmdline and runs it with shell=True: every token must come out as it went in
    for job in rendered.values():
        argv = shlex.split(job["spec"]["entrypoint"])
        assert all(shlex.quote(t) == t for t in argv)
        assert shlex.split(list2cmdline(argv)) == argv


# ------------------------------------------------------------------------------------ sizing


def test_render_10_clients_a_quarter_gpu_each(rendered):
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
    sets = entrypoint_sets(job)
    assert sets["data.num_clients"] == "10" and sets["resources.clients_per_actor"] == "1"
    assert sets["resources.num_gpus"] == "0.25" and sets["resources.num_actors"] == "null"
    assert job["metadata"]["annotations"]["raysim.io/actors"] == "10"


def test_render_1000_clients_on_cpu(rendered):
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
    sets = entrypoint_sets(job)
    assert sets["data.num_clients"] == "1000" and sets["resources.num_actors"] == "20"
    assert sets["resources.clients_per_actor"] == "auto" and sets["resources.num_gpus"] == "0.0"


def test_render_a_million_clients_asks_for_one_actor_per_client_of_a_round(rendered):
    job = rendered["cpu1m"]
    # auto, 100 a round -> min(ceil(10^6 / 50), 100) = min(20,000, 100) = 100 actors of 1 CPU, not
    # 20,000 mostly idle ones; 8-CPU pods hold 8 -> ceil(100 / 8) = 13 pods, each sized for
    # ceil(100 / 13) = 8 actors: 8 CPUs, 16 GiB
    assert min(math.ceil(1_000_000 / k8s.K8S_CLIENTS_PER_ACTOR), 100) == 100
    cpu = group(job, "cpu")
    assert (cpu["replicas"], cpu["minReplicas"], cpu["maxReplicas"]) == (13, 13, 13)
    assert cpu["template"]["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "8", "memory": "16Gi"}
    assert worker_totals(job) == (104, 0) and actor_capacity(job, 1.0, 0.0) >= 100
    sets = entrypoint_sets(job)
    assert sets["data.num_clients"] == "1000000" and sets["resources.num_actors"] == "100"
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


MILLION = ("--clients", "1000000", "--set", "rounds.clients_per_round=100")


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
        (("--clients", "10", "--gpus-per-client", "0.25"), 10,
         "A = ceil(10 / 1) = 10 (--gpus-per-client: one client per actor: resources.clients_per_actor = 1)"),
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
    assert actor_capacity(job, 1.0, 0.25 if "--gpus-per-client" in args else 0.0) >= actors
    assert crd_errors(crd["RayJob"], job) == []
    kuberay_admission(job)


def test_render_default_quickstart_is_one_small_pod(rendered):
    job = rendered["default"]
    # 20 clients, auto, 5 a round -> min(ceil(20 / 50), 5) = 1 actor of 1 CPU -> one 1-CPU pod
    assert worker_totals(job) == (1, 0)
    assert job["metadata"]["name"] == "raysim-quickstart"


def test_a_server_that_asks_for_a_gpu_gets_a_pod_and_the_job_one_more_gpu(rendered):
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
    assert entrypoint_sets(job)["resources.server_gpus"] == "1.0"
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
        (["--gpus-per-client", "0"], "--gpus-per-client"),
        (["--gpus-per-client", "1.5"], "num_gpus"),
        (["--gpus-per-client", "0.5", "--actors", "2"], "exclude each other"),
        (["--set", "name=my run"], "cannot travel safely"),
        (["--set", 'name="on"'], "cannot travel safely"),  # YAML would read it back as True
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
    job = yaml.safe_load(r.stdout)
    images = {c["image"] for _, c, _ in containers(job) if "image" in c}
    assert images == {"ghcr.io/me/raysim:1"}
    assert list(tmp_path.iterdir()) == []
    assert r.stdout.startswith("# RayJob for experiment 'quickstart'")


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
    _, sizing, cfg = k8s.render_rayjob(QUICKSTART, cohort[1:], clients=1000)
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
    monkeypatch.setattr(coefficients, "DEFAULT", {})
    assert k8s.cost_estimate(sizing, cfg)[0].startswith("Estimate: none (no fitted coefficients")


# ------------------------------------------------------------------------------------- docs


def test_docs_commands_parse_and_name_real_files():
    doc = (ROOT / "docs" / "kubernetes.md").read_text()
    blocks = re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", doc, re.S)
    lines = [ln.strip() for b in blocks for ln in b.replace("\\\n", " ").splitlines()]
    commands = [" ".join(shlex.split(ln, comments=True)) for ln in lines if ln.startswith("raysim ")]
    assert len(commands) >= 5
    for cmd in commands:
        if cmd.startswith("raysim tune") and not _has_command("tune"):
            continue
        parse_entrypoint(cmd)
    for path in set(re.findall(r"\bk8s/[\w.-]+", doc)):
        assert (ROOT / path).exists(), path
    for heading in ("Running on Kubernetes", "raysim k8s render"):
        assert heading in doc
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] in k8s.DEFAULT_IMAGE
