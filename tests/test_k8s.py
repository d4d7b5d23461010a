"""Kubernetes manifests: k8s/ (a kustomize base and overlay) and what ``raysim k8s render`` writes,
checked without a cluster: KubeRay's CRD schemas, the Kubernetes core schemas, the shape and
security of every pod, the image, the entrypoints (parsed with raysim's own CLI), the docs'
commands, and ``kubectl kustomize`` of the overlay where kubectl is installed. The render's sizing,
refusals and defaults: tests/test_k8s_render.py."""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from raysim import k8s, k8s_manifest
from raysim.cli import app
from raysim.config import ExperimentConfig, load_config
from raysim.data.datasets import FASHION_MNIST_DEFAULT_DIR
from tests import k8s_helpers
from tests.k8s_helpers import (
    K8S,
    LINKED,
    MANIFESTS,
    RAY_PIN,
    ROOT,
    EntrypointError,
    all_objects,
    cluster_specs,
    containers,
    crd_errors,
    crd_validators,
    kuberay_admission,
    load_docs,
    need,
    parse_entrypoint,
    pod_specs,
    render_docs,
    to_bytes,
    to_cpus,
)
from tuning.spec import load_spec

# the shared fixtures (tests/k8s_helpers.py)
core, crd, rendered, rendered_docs = (
    k8s_helpers.core,
    k8s_helpers.crd,
    k8s_helpers.rendered,
    k8s_helpers.rendered_docs,
)


def test_missing_schemas_skip_on_a_laptop_and_fail_on_ci(tmp_path, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="KubeRay CRD schemas not found"):
        crd_validators(tmp_path)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="KubeRay CRD schemas not found.*CI=true"):
        crd_validators(tmp_path)
    with pytest.raises(pytest.fail.Exception, match="no_such_module_xyz is not installed"):
        need("no_such_module_xyz", "test")


def test_every_manifest_and_rendered_job_validates_against_the_kuberay_crds(crd, rendered_docs):
    ray_objects = [(w, d) for w, d in all_objects(rendered_docs) if d["apiVersion"] == "ray.io/v1"]
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


def test_core_objects_and_every_pod_template_validate_against_kubernetes_schemas(core, rendered_docs):
    kinds = set()
    for _, doc in all_objects(rendered_docs):
        if doc["apiVersion"] != "ray.io/v1":
            core(doc)  # PersistentVolumeClaim, Pod, Job, ConfigMap
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
    assert kinds == {"PersistentVolumeClaim", "Pod", "Job", "ConfigMap"}


def test_the_core_check_is_strict(core):
    kv = need("kubernetes_validate", "the core schema check")
    pvc = load_docs(K8S / "pvc.yaml")[0]
    pvc["spec"]["accesModes"] = pvc["spec"].pop("accessModes")
    with pytest.raises(kv.ValidationError):
        core(pvc)


def test_every_yaml_in_k8s_is_a_manifest_or_the_inline_base_config():
    assert {p.name for p in MANIFESTS} >= {*LINKED, "results-owner.yaml"}
    for p in MANIFESTS:
        for d in load_docs(p):
            assert {"apiVersion", "kind", "metadata"} <= d.keys(), p.name
    # the old paths (README, docs, other tools) still work: k8s/<name>.yaml links to k8s/base/<name>.yaml
    for name in LINKED:
        assert (K8S / name).is_symlink() and (K8S / name).resolve() == (K8S / "base" / name).resolve(), name
    top = {p.name for p in K8S.glob("*.yaml")}
    assert top == {*LINKED, "inline-config.yaml"}, top
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


def test_every_ray_pod_has_sized_shm_named_ports_and_the_results_volume(rendered_docs):
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
    for where, doc in all_objects(rendered_docs):
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


def test_every_container_has_cpu_and_memory_requests_and_limits(rendered_docs):
    seen = 0
    for where, doc in all_objects(rendered_docs):
        for cwhere, c, _ in containers(doc):
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= c["resources"][kind].keys(), f"{where} {cwhere} {kind}"
            assert to_cpus(c["resources"]["requests"]["cpu"]) <= to_cpus(c["resources"]["limits"]["cpu"])
            seen += 1
    assert seen >= 20


def test_security_non_root_no_escalation_no_hostpath_no_public_dashboard(rendered_docs):
    for where, doc in all_objects(rendered_docs):
        if doc["kind"] == "Job":  # the volume-ownership fix: root, but only to chown (test below)
            continue
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


def test_rayjobs_clean_up_after_themselves_and_retry_with_deadlines(rendered_docs):
    jobs = [(w, d) for w, d in all_objects(rendered_docs) if d["kind"] == "RayJob"]
    assert len(jobs) == 2 + len(rendered_docs)
    for where, job in jobs:
        spec = job["spec"]
        assert spec["shutdownAfterJobFinishes"] is True, where
        assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
        assert isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] > 0, where
        assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 0, where
        assert spec["submissionMode"] == "K8sJobMode", where
        # retried on a fresh cluster (it resumes: --resume-if-present); a job whose cluster never
        # starts running it fails after 30 min, and is retried too (KubeRay 1.7's field)
        assert spec["backoffLimit"] == k8s.BACKOFF_LIMIT == 2, where
        assert spec["preRunningDeadlineSeconds"] == k8s.PRE_RUNNING_DEADLINE_S == 1800, where


def test_the_head_advertises_raysim_head_for_the_server_actor(rendered_docs):
    # KubeRay 1.7 puts rayStartParams.resources into the pod's `ray start --resources=VALUE` shell
    # command as is, and parses VALUE as JSON after trimming quotes: JSON in single quotes passes both
    param = k8s_manifest.HEAD_RESOURCES_PARAM
    assert param == "'{\"raysim_head\": 1}'"
    assert json.loads(param.strip("'\"` ")) == {k8s_manifest.HEAD_RESOURCE: 1}  # getResourcesMap's trim
    argv = shlex.split(f"ray start --head --resources={param}")  # what the container's shell passes
    assert json.loads(argv[-1].removeprefix("--resources=")) == {"raysim_head": 1}
    specs = [s for _, d in all_objects(rendered_docs) for s in cluster_specs(d)]
    assert len(specs) >= 3 + len(rendered_docs)
    for spec in specs:
        assert spec["headGroupSpec"]["rayStartParams"]["resources"] == param
        for g in spec["workerGroupSpecs"]:
            assert "resources" not in g["rayStartParams"], g["groupName"]


def test_results_owner_job_chowns_the_volume_as_root_with_only_chown(core):
    job = load_docs(K8S / "base" / "results-owner.yaml")[0]
    core(job)
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    ctx = c["securityContext"]
    assert ctx["runAsUser"] == 0 and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    assert not ctx.get("privileged") and pod["automountServiceAccountToken"] is False
    cmd = " ".join(c["command"])
    assert f"chown {k8s_manifest.RAY_UID}:{k8s_manifest.RAY_GID} {k8s_manifest.RESULTS_MOUNT}" in cmd
    assert f"chmod 2775 {k8s_manifest.RESULTS_MOUNT}" in cmd  # setgid: new directories keep group 100
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["results"]["persistentVolumeClaim"]["claimName"] == k8s_manifest.RESULTS_CLAIM


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
    assert k8s_manifest.INLINE_CONFIG == f"{k8s_manifest.IMAGE_WORKDIR}/k8s/inline-config.yaml"
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
    # a stable run directory named after the job, checkpoints and actor restarts: a retry resumes
    assert cfg.output.name == job["metadata"]["name"]
    assert cfg.rounds.checkpoint_every == math.ceil(cfg.rounds.num_rounds / 10)
    assert cfg.resources.max_restarts == 3
    argv = shlex.split(job["spec"]["entrypoint"])
    assert "--resume-if-present" in argv and argv[argv.index("--address") + 1] == "auto"


def test_tune_job_entrypoint_parses_with_our_cli():
    assert _has_command("tune")
    job = load_docs(K8S / "ray-job.tune.yaml")[0]
    command, params = parse_entrypoint(job["spec"]["entrypoint"])
    assert command == "tune"
    loaded = load_spec(_in_repo(str(params["spec"])), params["set_"] or [])
    assert loaded.spec.mode == "optuna" and str(params["storage_path"]) == k8s.TUNE_DIR
    argv = shlex.split(job["spec"]["entrypoint"])
    assert "--resume-if-present" in argv and argv[argv.index("--address") + 1] == "auto"


def test_an_unknown_flag_in_an_entrypoint_is_refused():
    with pytest.raises(EntrypointError, match="No such option"):
        parse_entrypoint("raysim run x.yaml --resume-if-absent")


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


# -------------------------------------------------------------------------------- kustomize


OVERLAY = K8S / "overlays" / "example"


KUSTOMIZE_MIN = (4, 5)  # replacements with `*` in field paths (the overlay's); kubectl >= 1.24 bundles it


def kustomize_version() -> tuple[int, ...] | None:
    """The kustomize bundled with kubectl, or None when kubectl is absent or does not say (Debian
    bookworm's kubernetes-client is kubectl 1.20 with kustomize 2.0, which says nothing)."""
    if shutil.which("kubectl") is None:
        return None
    r = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True, timeout=60)
    m = re.search(r"Kustomize Version: v(\d+)\.(\d+)", r.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _kustomize(folder: Path) -> list[dict[str, Any]]:
    version = kustomize_version()
    if version is None or version < KUSTOMIZE_MIN:  # a skip, also on CI: kubectl is optional there
        pytest.skip(
            f"`kubectl kustomize` of the overlay needs kubectl with kustomize >= "
            f"{'.'.join(map(str, KUSTOMIZE_MIN))} (found: {version or 'none'})"
        )
    r = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def _values() -> dict[str, Any]:
    return load_docs(OVERLAY / "values.yaml")[0]


def test_the_base_lists_every_object_it_needs():
    kust = load_docs(K8S / "base" / "kustomization.yaml")[0]
    assert kust["resources"] == ["pvc.yaml", "results-owner.yaml", "ray-cluster.yaml"]
    assert all((K8S / "base" / r).is_file() for r in kust["resources"])


def _check_overlaid(docs: list[dict[str, Any]], values: dict[str, Any]) -> set[str]:
    """Every pod of ``docs`` runs the overlay's image, with its priority class; heads and submitters
    on on-demand nodes, workers on spot; the claim has its storage class. Returns the kinds seen."""
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        assert doc["kind"] != "Values", "the values are local config: kustomize must not output them"
        if doc["kind"] == "PersistentVolumeClaim":
            assert doc["spec"]["storageClassName"] == values["storageClassName"]
        for _, c, _ in containers(doc):
            if "image" in c:
                assert c["image"] == values["image"], doc["metadata"]["name"]
        for spec in cluster_specs(doc):
            head = spec["headGroupSpec"]["template"]["spec"]
            assert (
                head["nodeSelector"] == values["onDemand"]
                and head["priorityClassName"] == values["priorityClassName"]
            )
            for g in spec["workerGroupSpecs"]:
                pod = g["template"]["spec"]
                assert pod["nodeSelector"] == values["spot"], g["groupName"]
                assert pod["priorityClassName"] == values["priorityClassName"], g["groupName"]
        if doc["kind"] == "RayJob":
            sub = doc["spec"]["submitterPodTemplate"]["spec"]
            assert (
                sub["nodeSelector"] == values["onDemand"]
                and sub["priorityClassName"] == values["priorityClassName"]
            )
    return kinds


def test_kubectl_kustomize_renders_the_overlay_with_its_four_values():
    values = _values()
    assert {"image", "storageClassName", "onDemand", "spot", "priorityClassName"} <= values.keys()
    docs = _kustomize(OVERLAY)
    assert _check_overlaid(docs, values) == {"PersistentVolumeClaim", "Job", "RayCluster"}


def test_the_overlay_gives_a_rendered_job_the_same_values(tmp_path, crd):
    # what docs/kubernetes.md tells a platform engineer to do: the rendered file in the overlay
    shutil.copytree(K8S / "base", tmp_path / "k8s" / "base")
    shutil.copytree(OVERLAY, tmp_path / "k8s" / "overlays" / "example")
    docs, out = render_docs(tmp_path, "--clients", "10", "--gpus-per-actor", "0.25",
                            "--set", "resources.server_gpus=1")  # fmt: skip
    overlay = tmp_path / "k8s" / "overlays" / "example"
    shutil.copy(out, overlay / "job.yaml")
    kust = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    kust["resources"].append("job.yaml")
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kust))
    got = _kustomize(overlay)
    assert _check_overlaid(got, _values()) == {
        "PersistentVolumeClaim",
        "Job",
        "RayCluster",
        "RayJob",
        "ConfigMap",
    }
    job = next(d for d in got if d["kind"] == "RayJob")
    assert [g["groupName"] for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]] == [
        "cpu",
        "gpu",
        "server",
    ]
    assert crd_errors(crd["RayJob"], job) == []
    (cm,) = [d for d in got if d["kind"] == "ConfigMap"]
    assert cm == docs[0]  # the experiment is untouched
