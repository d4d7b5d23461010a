"""The KubeRay manifests of a raysim job: the RayCluster spec (head, CPU/GPU worker groups, an
optional server group), the RayJob around it and the pods' security settings, as plain dicts.
``raysim.k8s`` sizes the groups from an experiment and renders the job; this module only shapes
them (the static ``k8s/*.yaml`` files must equal what it builds: tests/test_k8s.py checks).

This module must import without Ray (the CLI loads it on a laptop with no cluster).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from raysim import __version__

RAY_VERSION = "2.58.0"  # must equal pyproject's ray[tune] pin, the Dockerfile's base tag and rayVersion
DEFAULT_IMAGE = f"raysim:{__version__}"  # what `docker build -f k8s/Dockerfile -t raysim:<version> .` makes
IMAGE_WORKDIR = "/home/ray/raysim"  # WORKDIR of k8s/Dockerfile: configs/ and k8s/inline-config.yaml live here
INLINE_CONFIG = f"{IMAGE_WORKDIR}/k8s/inline-config.yaml"
RESULTS_MOUNT = "/mnt/results"  # the shared PVC (k8s/pvc.yaml) on every Ray pod
RESULTS_CLAIM = "raysim-results"
RUNS_DIR = f"{RESULTS_MOUNT}/runs"
RAY_UID, RAY_GID = 1000, 100  # the `ray` user of rayproject/ray images
MEMORY_MI_PER_CPU = 2048
MEMORY_MI_PER_GPU = 16384
HEAD_CPUS, HEAD_MEMORY_MI = 2, 8192
# the custom Ray resource the head advertises; the server actor asks for a sliver of it, so it is
# placed on the head (docs/kubernetes.md). KubeRay 1.7 writes rayStartParams.resources into the
# container's `ray start --resources=VALUE` shell command as is, and also parses VALUE as JSON
# after trimming quotes (addWellKnownAcceleratorResources, for every pod with resource limits):
# JSON in single quotes, the form KubeRay generates itself, passes both (its samples' double-quoted,
# backslash-escaped form passes the shell but fails that parse, which the operator logs as an error)
HEAD_RESOURCE = "raysim_head"
HEAD_RESOURCES_PARAM = "'" + json.dumps({HEAD_RESOURCE: 1}) + "'"  # '{"raysim_head": 1}'
CONFIG_MOUNT = "/config"  # a rendered job's ConfigMap (experiment.yaml or sweep.yaml), on every Ray pod


@dataclass(frozen=True)
class PodShape:
    """What one Ray worker pod gets; memory, /dev/shm and object store follow from CPUs and GPUs."""

    cpus: int
    gpus: int = 0

    @property
    def memory_mi(self) -> int:
        return MEMORY_MI_PER_CPU * self.cpus + MEMORY_MI_PER_GPU * self.gpus


@dataclass(frozen=True)
class GroupSize:
    name: str  # "cpu" or "gpu"
    shape: PodShape
    replicas: int
    min_replicas: int
    max_replicas: int


STATIC_CPU_GROUP = GroupSize("cpu", PodShape(cpus=8), replicas=1, min_replicas=1, max_replicas=10)
STATIC_GPU_GROUP = GroupSize("gpu", PodShape(cpus=8, gpus=1), replicas=0, min_replicas=0, max_replicas=4)


# ------------------------------------------------------------------------------ manifest pieces


def _quantity_mi(mi: int) -> str:
    return f"{mi // 1024}Gi" if mi % 1024 == 0 else f"{mi}Mi"


def _object_store_bytes(shm_mi: int) -> str:
    return str(shm_mi * 1024 * 1024 * 4 // 5)  # 80 % of /dev/shm: Ray's store must fit in it


def container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "runAsGroup": RAY_GID,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "runAsGroup": RAY_GID,
        "fsGroup": RAY_GID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources(cpu: str, memory: str, gpus: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu, "memory": memory},
    }
    if gpus:
        out["limits"]["nvidia.com/gpu"] = str(gpus)
    return out


def _volumes(shm_mi: int) -> list[dict[str, Any]]:
    return [
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": _quantity_mi(shm_mi)}},
        {"name": "results", "persistentVolumeClaim": {"claimName": RESULTS_CLAIM}},
    ]


def _mounts() -> list[dict[str, Any]]:
    return [{"name": "shm", "mountPath": "/dev/shm"}, {"name": "results", "mountPath": RESULTS_MOUNT}]


def _add_config_map(pod: dict[str, Any], config_map: str) -> None:
    """Mount ConfigMap ``config_map`` read-only at :data:`CONFIG_MOUNT` in ``pod``'s container."""
    pod["volumes"].append({"name": "config", "configMap": {"name": config_map}})
    pod["containers"][0]["volumeMounts"].append(
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}
    )


def _head_group(image: str, autoscaling: bool) -> dict[str, Any]:
    shm = HEAD_MEMORY_MI // 4
    pod: dict[str, Any] = {
        "securityContext": pod_security_context(),
        "containers": [
            {
                "name": "ray-head",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "ports": [
                    {"name": "gcs-server", "containerPort": 6379},
                    {"name": "dashboard", "containerPort": 8265},
                    {"name": "client", "containerPort": 10001},
                    {"name": "metrics", "containerPort": 8080},
                ],
                "resources": _resources(str(HEAD_CPUS), _quantity_mi(HEAD_MEMORY_MI)),
                "securityContext": container_security_context(),
                "volumeMounts": _mounts(),
            }
        ],
        "volumes": _volumes(shm),
    }
    if not autoscaling:  # the in-tree autoscaler (a head sidecar) needs the service-account token
        pod = {"automountServiceAccountToken": False, **pod}
    return {
        "serviceType": "ClusterIP",
        "rayStartParams": {
            "num-cpus": "0",
            "dashboard-host": "0.0.0.0",
            "object-store-memory": _object_store_bytes(shm),
            "resources": HEAD_RESOURCES_PARAM,
        },
        "template": {"metadata": {"labels": {"app.kubernetes.io/name": "raysim"}}, "spec": pod},
    }


def _worker_group(image: str, group: GroupSize) -> dict[str, Any]:
    shape = group.shape
    shm = shape.memory_mi // 4
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "containers": [
            {
                "name": "ray-worker",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "metrics", "containerPort": 8080}],
                "resources": _resources(str(shape.cpus), _quantity_mi(shape.memory_mi), shape.gpus),
                "securityContext": container_security_context(),
                "volumeMounts": _mounts(),
            }
        ],
        "volumes": _volumes(shm),
    }
    if shape.gpus:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "groupName": group.name,
        "replicas": group.replicas,
        "minReplicas": group.min_replicas,
        "maxReplicas": group.max_replicas,
        "rayStartParams": {"object-store-memory": _object_store_bytes(shm)},
        "template": {"metadata": {"labels": {"app.kubernetes.io/name": "raysim"}}, "spec": pod},
    }


def cluster_spec(
    image: str = DEFAULT_IMAGE,
    cpu: GroupSize = STATIC_CPU_GROUP,
    gpu: GroupSize = STATIC_GPU_GROUP,
    *,
    autoscaling: bool = True,
    server: GroupSize | None = None,
    config_map: str | None = None,
) -> dict[str, Any]:
    """A RayCluster ``spec``; with the defaults it is exactly ``k8s/ray-cluster.yaml``'s.
    ``config_map``: mount that ConfigMap at :data:`CONFIG_MOUNT` on every Ray pod (rendered jobs)."""
    spec: dict[str, Any] = {"rayVersion": RAY_VERSION, "enableInTreeAutoscaling": autoscaling}
    if autoscaling:
        spec["autoscalerOptions"] = {
            "upscalingMode": "Default",
            "idleTimeoutSeconds": 60,
            "imagePullPolicy": "IfNotPresent",
            "resources": _resources("500m", "512Mi"),
            "securityContext": container_security_context(),
        }
    spec["headGroupSpec"] = _head_group(image, autoscaling)
    groups = [cpu, gpu, *([server] if server is not None else [])]
    spec["workerGroupSpecs"] = [_worker_group(image, g) for g in groups]
    if config_map is not None:
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            _add_config_map(group["template"]["spec"], config_map)
    return spec


def _memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return int(float(quantity[: -len(unit)]) * factor)
    return int(float(quantity))


def group_maxima(spec: dict[str, Any]) -> tuple[float, float, float]:
    """(CPUs, GPUs, memory in GB) Ray can see on the worker groups of RayCluster ``spec`` once every
    group is at ``maxReplicas``: what the autoscaler can grow the cluster to, per group
    ``maxReplicas`` x the pod's ``num-cpus``/``num-gpus`` (else its CPU/GPU limits) and Ray's
    ``memory`` resource: rayStartParams ``memory`` in bytes, else the container's memory limit,
    which KubeRay 1.7 passes as ``ray start --memory`` (generateRayStartCommand; Ray's own default
    without it, about 70 % of the node's free memory, does not apply to KubeRay pods). The head is
    left out: it advertises no CPUs (``num-cpus: "0"``)."""
    cpus = gpus = mem = 0.0
    for group in spec.get("workerGroupSpecs", []):
        n = int(group.get("maxReplicas", group.get("replicas", 0)))
        params = group.get("rayStartParams", {})
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpu = float(params.get("num-cpus", limits.get("cpu", 0)))
        gpu = float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
        if "memory" in params:
            memory = float(params["memory"])
        else:
            memory = float(_memory_bytes(str(limits["memory"])))
        cpus, gpus, mem = cpus + n * cpu, gpus + n * gpu, mem + n * memory
    return cpus, gpus, mem / 1e9


def config_map(name: str, files: dict[str, str], component: str = "run") -> dict[str, Any]:
    """The ConfigMap a rendered job mounts at :data:`CONFIG_MOUNT` (one key per file)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": "raysim", "app.kubernetes.io/component": component},
        },
        "data": dict(files),
    }


def submitter_template(image: str) -> dict[str, Any]:
    """The pod that runs ``ray job submit`` (KubeRay fills in its command)."""
    return {
        "metadata": {"labels": {"app.kubernetes.io/name": "raysim"}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": pod_security_context(),
            "containers": [
                {
                    "name": "ray-job-submitter",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "resources": {
                        "requests": {"cpu": "500m", "memory": "256Mi"},
                        "limits": {"cpu": "1", "memory": "1Gi"},
                    },
                    "securityContext": container_security_context(),
                }
            ],
        },
    }


def rayjob(
    name: str,
    entrypoint: str,
    spec: dict[str, Any],
    *,
    image: str,
    deadline_s: int = 6 * 3600,
    backoff_limit: int = 2,
    pre_running_deadline_s: int | None = 1800,
    ttl_s: int = 600,
    component: str = "run",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {"app.kubernetes.io/name": "raysim", "app.kubernetes.io/component": component},
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": meta,
        "spec": {
            "entrypoint": entrypoint,
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": ttl_s,
            "activeDeadlineSeconds": deadline_s,
            **({"preRunningDeadlineSeconds": pre_running_deadline_s} if pre_running_deadline_s else {}),
            "backoffLimit": backoff_limit,
            "submitterPodTemplate": submitter_template(image),
            "rayClusterSpec": spec,
        },
    }
