"""Test helpers for the Kubernetes path (tests/test_k8s.py, tests/test_k8s_render.py): parse a job's
entrypoint with raysim's own CLI, render jobs, read manifests, validate against KubeRay's CRDs.

Only the tests need this (it checks that what a manifest or ``raysim k8s render`` hands to
``ray job submit`` is a command line our CLI accepts), so it lives here, not in ``raysim.k8s``.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
from pathlib import Path
from typing import Any, NoReturn

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from raysim import k8s, k8s_manifest
from raysim.cli import app
from raysim.config import ExperimentConfig, apply_overrides, config_from_dict


class EntrypointError(ValueError):
    """An entrypoint that our own CLI would refuse (renamed flag, unknown command, ...)."""


def parse_entrypoint(entrypoint: str) -> tuple[str, dict[str, Any]]:
    """Parse ``raysim ...`` with the real CLI (its click parser; nothing is executed).

    Returns the subcommand path (e.g. ``"run"`` or ``"k8s render"``) and its parsed parameters;
    raises :class:`EntrypointError` when the CLI would refuse the command line (unknown command
    or flag, missing argument, bad value).
    """

    argv = shlex.split(entrypoint)
    if not argv or argv[0] != "raysim":
        raise EntrypointError(f"entrypoint must start with 'raysim', got {entrypoint[:40]!r}")
    if "--help" in argv[1:]:
        raise EntrypointError("entrypoint asks for --help: it would print help instead of running")
    cmd: Any = typer.main.get_command(app)  # click's (or typer's vendored click) command tree
    args, parent = argv[1:], None
    path: list[str] = []
    try:
        while hasattr(cmd, "resolve_command"):  # a group: parse its options, then find the subcommand
            ctx = cmd.make_context(path[-1] if path else "raysim", list(args), parent=parent)
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            if not rest:
                raise EntrypointError(f"'raysim {' '.join(path)}' needs a subcommand")
            name, sub, args = cmd.resolve_command(ctx, rest)
            if sub is None or name is None:
                raise EntrypointError(f"unknown command {rest[0]!r}")
            cmd, parent = sub, ctx
            path.append(name)
        sub_ctx = cmd.make_context(path[-1], list(args), parent=parent)
    except EntrypointError:
        raise
    except Exception as err:  # click's UsageError family, from click or from typer's vendored copy
        if type(err).__name__ == "Exit":
            raise EntrypointError("the command line would exit without running") from err
        message = getattr(err, "format_message", None)
        if not callable(message):
            raise
        raise EntrypointError(f"'{' '.join(argv[:3])} ...': {message()}") from err
    return " ".join(path), dict(sub_ctx.params)


ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SWEEP = ROOT / "configs" / "tune" / "fedavg_lr_optuna.yaml"
# the manifests live in k8s/base/ (a kustomize base); k8s/<name>.yaml are links to them (old paths)
MANIFESTS = sorted(p for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml")
LINKED = ("pvc.yaml", "ray-cluster.yaml", "ray-job.run.yaml", "ray-job.tune.yaml", "results-pod.yaml")
RAY_PIN = re.search(r'"ray\[tune\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)  # type: ignore[union-attr]
K8S_VERSIONS = ("1.29", "latest")  # oldest Kubernetes we claim, and the newest kubernetes-validate knows
runner = CliRunner()


# ------------------------------------------------------------------------------------ helpers


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render_docs(tmp_path: Path, *args: str, config: Path = QUICKSTART) -> tuple[list[dict[str, Any]], Path]:
    """``raysim k8s render CONFIG ARGS --out FILE``: the objects written (ConfigMap, RayJob) and FILE."""
    out = tmp_path / "job.yaml"
    r = runner.invoke(app, ["k8s", "render", str(config), *args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    docs = load_docs(out)
    assert [d["kind"] for d in docs] == ["ConfigMap", "RayJob"], [d["kind"] for d in docs]
    return docs, out


def render(tmp_path: Path, *args: str, config: Path = QUICKSTART) -> tuple[dict[str, Any], Path]:
    """The RayJob ``render`` writes (its ConfigMap: :func:`job_config`)."""
    docs, out = render_docs(tmp_path, *args, config=config)
    return docs[1], out


def job_files(doc: dict[str, Any], config_map: dict[str, Any]) -> dict[str, str]:
    """The files the job sees under /config: its ConfigMap's data, checked to be what it mounts."""
    name = config_map["metadata"]["name"]
    for _, pod in pod_specs(doc):
        if pod is doc["spec"].get("submitterPodTemplate", {}).get("spec"):
            continue
        vols = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
        mount = mounts[k8s_manifest.CONFIG_MOUNT]
        assert mount.get("readOnly") is True and vols[mount["name"]]["configMap"]["name"] == name
    return dict(config_map["data"])


def job_config(doc: dict[str, Any], config_map: dict[str, Any]) -> ExperimentConfig:
    """The experiment a rendered RayJob runs: its entrypoint parsed by our CLI, the config file read
    from the ConfigMap it mounts, the entrypoint's --set applied."""
    command, params = parse_entrypoint(doc["spec"]["entrypoint"])
    assert command == "run", command
    path = str(params["config"])
    assert path.startswith(k8s_manifest.CONFIG_MOUNT + "/"), path
    text = job_files(doc, config_map)[path.removeprefix(k8s_manifest.CONFIG_MOUNT + "/")]
    return config_from_dict(apply_overrides(yaml.safe_load(text), params["set_"] or []), path)


ONE_PER_ACTOR = ("--gpus-per-actor", "0.25", "--clients-per-actor", "1")
RENDERED = {  # the jobs the issues ask about, and a federation of 10^6 clients
    "gpu10": ("--clients", "10", *ONE_PER_ACTOR),
    "gpu10-server": ("--clients", "10", *ONE_PER_ACTOR, "--set", "resources.server_gpus=1"),
    "gpu1e5": (
        "--clients",
        "100000",
        "--gpus-per-actor",
        "0.25",
        "--set",
        "data.partition=sampled",
        "--set",
        "rounds.clients_per_round=100",
    ),
    "cpu1000": ("--clients", "1000", "--set", "rounds.clients_per_round=100"),
    "cpu1m": (
        "--clients",
        "1000000",
        "--set",
        "rounds.clients_per_round=100",
        "--set",
        "data.partition=sampled",
    ),
    "default": (),
}


def sets_of(args: tuple[str, ...]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "--set"]


@pytest.fixture(scope="session")
def rendered_docs(tmp_path_factory) -> dict[str, list[dict[str, Any]]]:
    """The objects (ConfigMap, RayJob) of RENDERED and of the quick-start sweep, rendered once for the
    test session (test_k8s and test_k8s_render read them; none may change them)."""
    tmp = tmp_path_factory.mktemp("render")
    out = {}
    for key, args in RENDERED.items():
        (tmp / key).mkdir()
        out[key], _ = render_docs(tmp / key, *args)
    (tmp / "sweep").mkdir()
    out["sweep"], _ = render_docs(tmp / "sweep", config=SWEEP)
    return out


@pytest.fixture(scope="session")
def rendered(rendered_docs) -> dict[str, dict[str, Any]]:
    """The RayJobs of :func:`rendered_docs` (the sweep's too)."""
    return {k: docs[1] for k, docs in rendered_docs.items()}


def all_objects(rendered_docs: dict[str, list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    objs = [(p.name, d) for p in MANIFESTS for d in load_docs(p)]
    return objs + [(f"rendered:{k}", d) for k, docs in rendered_docs.items() for d in docs]


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
    if doc["kind"] == "Job":
        out.append(("job", doc["spec"]["template"]["spec"]))
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
