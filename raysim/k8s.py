"""Kubernetes (KubeRay) support: ``raysim k8s render`` writes a ConfigMap + RayJob sized for one
experiment (or one sweep spec: :func:`render_sweep`).

The manifests in ``k8s/`` are the hand-readable reference (a RayCluster and two RayJobs); this
module builds the same objects in code, so that ``render`` can size the worker groups from an
experiment and ``tests/test_k8s.py`` can check that ``k8s/ray-cluster.yaml`` and
:func:`cluster_spec` never drift apart.

Sizing rule (``render``; also in docs/kubernetes.md)
----------------------------------------------------
1. The experiment is CONFIG plus ``--set`` overrides plus the flags: ``--clients N`` sets
   ``data.num_clients``; ``--gpus-per-actor F`` sets ``resources.num_gpus`` (per client actor);
   ``--clients-per-actor N`` sets ``resources.clients_per_actor``; ``--actors A`` pins
   ``clients_per_actor: auto`` with ``num_actors: A``. (The old ``--gpus-per-client``, which meant
   both one client per actor and F GPUs each, exits 2 naming the two flags.)
2. The actor count A must not depend on the cluster (the cluster is sized from it), so
   ``clients_per_actor: auto`` without ``num_actors`` is pinned to ``num_actors =
   min(ceil(clients / 50), C)`` (:func:`default_actors`; 50 is :data:`K8S_CLIENTS_PER_ACTOR`;
   C = ``rounds.clients_per_round``), or to 1 for an algorithm that pools every client into one:
   one actor per 50 clients, but never more actors than a round trains clients. A round of C
   clients keeps at most C actors busy and every actor costs ~800 MB RSS for the whole run,
   while an actor holds only its own N / A clients (roaming or not: ``raysim.bench.model``), so
   the cap costs memory per actor only as N / C grows. A value the experiment sets wins:
   ``num_actors`` (or ``--actors``), ``clients_per_actor: k`` (or ``--clients-per-actor``). Then
   A follows the runtime's own rule, ``raysim.runtime.packing.plan_actors`` (:func:`job_plan`):
   ``ceil(clients / clients_per_actor)``, ``min(clients, num_actors)``, or 1 when the algorithm pools. The rendered header's
   ``Actors:`` line says which rule picked A and why (:attr:`Sizing.rule`).
3. Each actor asks Ray for c = ``resources.num_cpus`` CPUs and g = ``resources.num_gpus`` GPUs.
   GPU experiments (g > 0) run on the GPU group only: a pod with P = ``--gpus-per-pod`` GPUs
   holds ``P * floor(1 / g)`` actors (g <= 1; fractions share a GPU) or ``floor(P / g)``
   (whole g). CPU experiments run on the CPU group: a pod with ``--cpus-per-pod`` CPUs holds
   ``floor(cpus_per_pod / c)`` actors.
4. pods = ceil(A / actors_per_pod); every pod gets the resources of k = ceil(A / pods) actors:
   ``max(1, ceil(k * c))`` CPUs and, on GPU pods, ``ceil(k / floor(1 / g))`` (or ``k * g``) GPUs;
   memory is 2 GiB per CPU + 16 GiB per GPU, a quarter of it as ``/dev/shm`` and 80 % of that
   as Ray's object store. The sized group has ``replicas = minReplicas = maxReplicas = pods``;
   the other group has none; autoscaling is off (KubeRay submits the job once every pod is
   ready). More pods than ``--max-pods`` (the head included) is refused (:func:`check_pods`), as
   is a federation the dataset cannot hold (:func:`check_partition`).
   Example: 10 clients x 0.25 GPU (c = 1) -> 10 actors, 4 per 1-GPU pod -> 3 pods of
   1 GPU + 4 CPUs: 3 GPUs for the 2.5 asked. 1000 clients on CPU, 100 a round (auto, c = 1) ->
   min(20, 100) = 20 actors, 8 per 8-CPU pod -> 3 pods of 7 CPUs: 21 CPUs for the 20 asked.
   10^6 clients, 100 a round -> min(20000, 100) = 100 actors -> 13 pods of 8 CPUs.
5. The head schedules no client actors (``num-cpus: "0"``) and advertises ``raysim_head: 1``, which
   the server actor asks for; the driver and a server actor that asks for nothing else (``resources.server_cpus`` = ``server_gpus`` = 0) use its real CPUs. A server
   that asks for resources (a hypernetwork trains there) cannot be placed on the head, so it gets
   a worker group of its own, ``server``: one pod of ``max(1, ceil(server_cpus))`` CPUs and
   ``ceil(server_gpus)`` GPUs (memory as above), on top of the client pods.
6. The rendered file's header (and ``render``'s stderr) also gives the cost model's estimate for
   the sized experiment (:func:`cost_estimate`, ``raysim.bench.model``, docs/scaling.md): round
   time, time to the first round, memory per worker pod and in all, plus what evaluation adds
   (:func:`evaluation`, which the model leaves out) and the whole run; fitted on a 2-core
   machine, it ignores the network between pods and GPU speed.

How the experiment reaches the cluster
--------------------------------------
The rendered file holds a ConfigMap ``<job>-config`` with ``experiment.yaml`` (every resolved
value, as ``raysim validate`` prints it; a sweep: ``sweep.yaml``, the spec with its base inlined)
and the RayJob, which mounts it at ``/config`` on every Ray pod and runs ``raysim run
/config/experiment.yaml --resume-if-present --address auto --set output.name=<job>`` (or
``raysim tune /config/sweep.yaml --resume-if-present --address auto --storage-path
/mnt/results/tune``). The run directory is named after the job, so a KubeRay retry
(``backoffLimit``) continues from the newest checkpoint. ``render`` also forces
``resources.backend=ray``, ``resources.address=null`` and ``output.dir=/mnt/results/runs``, and
sets job defaults unless the config sets them: ``rounds.checkpoint_every = ceil(rounds / 10)``,
``resources.max_restarts = 3`` and ``resources.cluster_max_*`` (the worker groups' maxima).

This module must import without Ray (the CLI loads it on a laptop with no cluster).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from raysim.atomic import atomic_write_text
from raysim.config import (
    ConfigError,
    ExperimentConfig,
    ResourcesConfig,
    config_from_dict,
    dump_config,
    load_config,
    load_yaml_file,
    resolved_dict,
)
from raysim.k8s_manifest import (
    CONFIG_MOUNT,
    DEFAULT_IMAGE,
    RESULTS_MOUNT,
    RUNS_DIR,
    GroupSize,
    PodShape,
    cluster_spec,
    config_map,
    group_maxima,
    rayjob,
)
from raysim.runtime.packing import ActorPlan, follows_resources, plan_actors

K8S_CLIENTS_PER_ACTOR = 50  # clients_per_actor: auto on Kubernetes without num_actors (capped at the cohort)
MAX_JOB_NAME = 47  # KubeRay 1.7 names the job's RayCluster <job>-<5 characters> (limit 53)
DEFAULT_MAX_PODS = 100  # render refuses a job of more pods (head included) unless --max-pods says so
CHECKPOINTS_PER_RUN = 10  # rendered jobs checkpoint every ceil(rounds / 10) rounds unless the config says
DEFAULT_MAX_RESTARTS = 3  # resources.max_restarts of a rendered job unless the config says
BACKOFF_LIMIT = 2  # RayJob retries on a fresh cluster; --resume-if-present continues from the checkpoint
PRE_RUNNING_DEADLINE_S = 1800  # a job whose cluster is not running it after 30 min fails (and is retried)
EXPERIMENT_FILE = "experiment.yaml"  # the ConfigMap's key for a run, mounted at /config
SWEEP_FILE = "sweep.yaml"  # ... and for a sweep
TUNE_DIR = f"{RESULTS_MOUNT}/tune"  # rendered sweeps' --storage-path
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")


# --------------------------------------------------------------------------------------- sizing


@dataclass(frozen=True)
class Sizing:
    """The result of the sizing rule for one experiment (see the module docstring)."""

    clients: int
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    actors_per_pod: int
    cpu: GroupSize
    gpu: GroupSize
    server: GroupSize | None = None  # a pod of its own for a server actor that asks for resources
    server_cpus: float = 0.0
    server_gpus: float = 0.0
    rule: str = ""  # which rule picked the actor count, and why (the header's "Actors:" line)

    @property
    def sized(self) -> GroupSize:
        return self.gpu if self.gpus_per_actor > 0 else self.cpu

    @property
    def groups(self) -> list[GroupSize]:
        return [self.cpu, self.gpu, *([self.server] if self.server is not None else [])]

    @property
    def total_cpus(self) -> int:
        return sum(g.replicas * g.shape.cpus for g in self.groups)

    @property
    def total_gpus(self) -> int:
        return sum(g.replicas * g.shape.gpus for g in self.groups)

    def describe(self) -> str:
        g, s = self.sized, self.server
        gpu = f", {g.shape.gpus} GPU" if g.shape.gpus else ""
        extra = f" + 1 server pod of {s.shape.cpus} CPU, {s.shape.gpus} GPU" if s is not None else ""
        who = "the actors"
        if s is not None:
            who += f" and the server ({self.server_cpus:g} CPU, {self.server_gpus:g} GPU)"
        return (
            f"{self.clients} clients on {self.actors} actors x ({self.cpus_per_actor:g} CPU, "
            f"{self.gpus_per_actor:g} GPU) -> {g.replicas} {g.name} pod(s) of {g.shape.cpus} CPU{gpu}{extra}: "
            f"{self.total_cpus} CPUs and {self.total_gpus} GPUs for the "
            f"{self.actors * self.cpus_per_actor + self.server_cpus:g} CPUs and "
            f"{self.actors * self.gpus_per_actor + self.server_gpus:g} GPUs {who} ask for"
        )


def default_actors(clients: int, cohort: int) -> tuple[int, str]:
    """The actor count ``render`` gives ``clients_per_actor: auto`` without ``num_actors``, and why:
    ``min(ceil(clients / 50), cohort)``. One actor per :data:`K8S_CLIENTS_PER_ACTOR` clients, but no
    more actors than clients a round trains: a round of C clients keeps at most C actors busy, and
    every actor costs its RSS (~800 MB) for the whole run."""
    plan = plan_actors(
        ResourcesConfig(), clients, per_actor_default=K8S_CLIENTS_PER_ACTOR, cohort=max(1, cohort)
    )
    return plan.actors, plan.explain()


def job_plan(cfg: ExperimentConfig) -> ActorPlan:
    """The actors of ``cfg`` on a cluster sized from it: ``plan_actors`` with no resources known,
    so ``clients_per_actor: auto`` without ``num_actors`` takes :func:`default_actors`' rule."""
    return plan_actors(
        cfg.resources,
        cfg.data.num_clients,
        pooled=cfg.algorithm.traits.pooled,
        per_actor_default=K8S_CLIENTS_PER_ACTOR,
        cohort=max(1, cfg.rounds.clients_per_round),
    )


def size_workers(
    actors: int, cpus_per_actor: float, gpus_per_actor: float, *, cpus_per_pod: int = 8, gpus_per_pod: int = 1
) -> tuple[GroupSize, GroupSize, int]:
    """(cpu group, gpu group, actors per pod) for ``actors`` actors of (c CPUs, g GPUs) each."""
    c, g = cpus_per_actor, gpus_per_actor
    if g > 0:
        if g <= 1:
            per_gpu = int(1 / g + 1e-9)
            per_pod = per_gpu * gpus_per_pod
        else:
            if g > gpus_per_pod:
                raise ConfigError(
                    f"resources.num_gpus={g:g} per actor does not fit a pod of --gpus-per-pod {gpus_per_pod}; "
                    f"raise --gpus-per-pod to at least {math.ceil(g)}"
                )
            per_gpu, per_pod = 0, int(gpus_per_pod / g + 1e-9)
        pods = math.ceil(actors / per_pod)
        k = math.ceil(actors / pods)
        gpus = math.ceil(k / per_gpu) if per_gpu else int(round(k * g))
        cpus = max(1, math.ceil(k * c - 1e-9))
        gpu = GroupSize("gpu", PodShape(cpus=cpus, gpus=gpus), pods, pods, pods)
        cpu = GroupSize("cpu", PodShape(cpus=cpus_per_pod), 0, 0, 0)
        return cpu, gpu, per_pod
    if c > cpus_per_pod:
        raise ConfigError(
            f"resources.num_cpus={c:g} per actor does not fit a pod of --cpus-per-pod {cpus_per_pod}; "
            f"raise --cpus-per-pod to at least {math.ceil(c)}"
        )
    per_pod = int(cpus_per_pod / c + 1e-9) if c > 0 else actors
    pods = math.ceil(actors / per_pod)
    k = math.ceil(actors / pods)
    cpu = GroupSize("cpu", PodShape(cpus=max(1, math.ceil(k * c - 1e-9))), pods, pods, pods)
    gpu = GroupSize("gpu", PodShape(cpus=cpus_per_pod, gpus=gpus_per_pod), 0, 0, 0)
    return cpu, gpu, per_pod


def size_server(
    server_cpus: float, server_gpus: float, *, cpus_per_pod: int = 8, gpus_per_pod: int = 1
) -> GroupSize | None:
    """One pod shaped for the server actor, or None when it asks for nothing (it then runs on the head).

    The head advertises no CPUs and has no GPU, and the client pods are sized for the clients
    alone, so a server that asks Ray for resources needs room of its own to be placed at all.
    """
    sc, sg = server_cpus, server_gpus
    if sc <= 0 and sg <= 0:
        return None
    if sc > cpus_per_pod:
        raise ConfigError(
            f"resources.server_cpus={sc:g} does not fit a pod of --cpus-per-pod {cpus_per_pod}; "
            f"raise --cpus-per-pod to at least {math.ceil(sc)}"
        )
    if sg > gpus_per_pod:
        raise ConfigError(
            f"resources.server_gpus={sg:g} does not fit a pod of --gpus-per-pod {gpus_per_pod}; "
            f"raise --gpus-per-pod to at least {math.ceil(sg)}"
        )
    shape = PodShape(cpus=max(1, math.ceil(sc - 1e-9)), gpus=math.ceil(sg - 1e-9))
    return GroupSize("server", shape, 1, 1, 1)


# ------------------------------------------------------------------------------- feasibility


def check_partition(cfg: ExperimentConfig) -> None:
    """Refuse what ``raysim run`` would refuse once the cluster is up because the dataset cannot
    give every client its examples (``raysim.data.federation``'s rule, with the dataset sizes of
    ``raysim.bench.model``; datasets it does not know are left to the run)."""
    from raysim.bench.model import MIN_EXAMPLES, TRAIN_EXAMPLES

    d = cfg.data
    total = TRAIN_EXAMPLES.get(d.dataset)
    if total is None or d.partition == "natural":
        return
    pool = total - int(round(d.public_fraction * total))
    n = d.num_clients
    if d.partition == "sampled":
        if not MIN_EXAMPLES <= d.examples_per_client <= pool:
            raise ConfigError(
                f"data.examples_per_client={d.examples_per_client} must be between {MIN_EXAMPLES} and the "
                f"{pool:,} examples {d.dataset} leaves after the public split"
            )
        return
    if n * MIN_EXAMPLES > pool:
        raise ConfigError(
            f"{n:,} clients x {MIN_EXAMPLES} examples each = {n * MIN_EXAMPLES:,} training examples, but "
            f"{d.dataset} has {pool:,} for the clients (partition {d.partition!r}): `raysim run` would refuse "
            f"the job once the cluster is up. Use at most {pool // MIN_EXAMPLES:,} clients, or "
            "--set data.partition=sampled (each client draws data.examples_per_client examples: any "
            "number of clients)"
        )


def check_pods(sizing: Sizing, max_pods: int, cfg: ExperimentConfig, flags: str) -> None:
    """Refuse a job of more pods (the head included) than ``--max-pods``, with the arithmetic and
    the clients per actor that would fit."""
    pods = 1 + sum(g.max_replicas for g in sizing.groups)
    if pods <= max_pods:
        return
    g = sizing.sized
    room = (
        max_pods - 1 - (sizing.server.max_replicas if sizing.server is not None else 0)
    ) * sizing.actors_per_pod
    fit = math.ceil(sizing.clients / max(1, room))
    per = sizing.clients / max(1, sizing.actors)
    unit = f"{g.shape.gpus} GPU" if g.shape.gpus else f"{g.shape.cpus} CPU"
    raise ConfigError(
        f"{flags}: {sizing.clients:,} clients on {sizing.actors:,} actors ({per:,.0f} client(s) each) at "
        f"{sizing.actors_per_pod} actors a pod of {unit} need ceil({sizing.actors:,} / {sizing.actors_per_pod}) = "
        f"{g.replicas:,} {g.name} pods + 1 head = {pods:,} pods, more than --max-pods {max_pods}. "
        f"Host more clients on each actor (--clients-per-actor {fit:,} fits {max_pods} pods), leave "
        "clients_per_actor: auto (one actor per 50 clients, at most rounds.clients_per_round actors), "
        "or raise --max-pods"
    )


def check_memory(sizing: Sizing, cfg: ExperimentConfig, spec: dict[str, Any]) -> None:
    """Refuse what ``raysim run``'s own memory check (``check_resources``: (actors + 1) x
    ``resources.actor_memory_mb`` against Ray's ``memory`` resource) would refuse on this cluster:
    the worker groups at their maxima plus the head, each offering Ray its memory limit (KubeRay
    passes it as ``ray start --memory``)."""
    from raysim.k8s_manifest import HEAD_MEMORY_MI

    per = cfg.resources.actor_memory_mb
    need = (sizing.actors + 1) * per
    workers_mb = group_maxima(spec)[2] * 1e9 / 2**20
    head_mb = float(HEAD_MEMORY_MI)
    if need > workers_mb + head_mb:
        raise ConfigError(
            f"({sizing.actors:,} client actors + the server) x resources.actor_memory_mb={per:g} MB = {need:,.0f} MB, "
            f"but the pods offer Ray about {workers_mb + head_mb:,.0f} MB (the memory limits of "
            f"{sizing.total_cpus} worker CPUs x 2 GiB + {sizing.total_gpus} GPUs x 16 GiB and of the 8 GiB head): "
            "`raysim run` would refuse the job. Give each actor more CPUs (resources.num_cpus: pods get 2 GiB a "
            "CPU), fewer actors (--clients-per-actor), or a measured, smaller resources.actor_memory_mb"
        )


# -------------------------------------------------------------------------------------- render


def job_name_for(cfg: ExperimentConfig, prefix: str = "raysim") -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", cfg.name.lower()).strip("-")
    return f"{prefix}-{slug}"[:MAX_JOB_NAME].rstrip("-") if slug else f"{prefix}-run"


def _check_name(job_name: str) -> None:
    if len(job_name) > MAX_JOB_NAME or not _DNS1035.match(job_name):
        raise ConfigError(
            f"--name {job_name!r}: a RayJob name is at most {MAX_JOB_NAME} characters of a-z, 0-9 and '-', "
            "starting with a letter (KubeRay names the job's cluster <name>-<5 characters>)"
        )


def _present(raw: dict[str, Any], dotted: str) -> bool:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _given(config: str | Path, overrides: list[str]) -> dict[str, Any]:
    """The keys the YAML file and the overrides set (values beside the point): what the job's
    defaults must not override."""
    raw = load_yaml_file(Path(config), "config")
    given: dict[str, Any] = raw if isinstance(raw, dict) else {}
    for item in overrides:
        node = given
        *parents, leaf = item.split("=", 1)[0].strip().split(".")
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node.get(part), dict | None) else {}
        node[leaf] = True
    return given


def cluster_max(spec: dict[str, Any]) -> dict[str, float]:
    """``resources.cluster_max_*`` for a RayCluster spec: its worker groups' maxima
    (:func:`raysim.k8s_manifest.group_maxima`), what the run may count on the autoscaler for."""
    cpus, gpus, mem_gb = group_maxima(spec)
    return {"cluster_max_cpus": cpus, "cluster_max_gpus": gpus, "cluster_max_memory_gb": round(mem_gb, 3)}


@dataclass
class Rendered:
    """What ``render`` writes: a ConfigMap with the experiment (or sweep) and the RayJob that mounts
    it at /config and runs it; ``defaults`` says which of the job's defaults were applied."""

    job: dict[str, Any]
    config_map: dict[str, Any]
    cfg: ExperimentConfig  # the experiment (a sweep's: its base)
    sizing: Sizing | None = None  # None for a sweep (its cluster autoscales)
    defaults: list[str] = field(default_factory=list)
    kind: str = "run"

    @property
    def name(self) -> str:
        return str(self.job["metadata"]["name"])

    @property
    def objects(self) -> list[dict[str, Any]]:
        return [self.config_map, self.job]


def _job_defaults(given: dict[str, Any], cfg: ExperimentConfig) -> tuple[dict[str, Any], list[str]]:
    """``cfg`` as a dict with checkpoints and actor restarts on where ``given`` (the YAML and its
    overrides) leaves them out: in a cluster job a (spot) node can go away mid-run."""
    raw = cfg.to_dict()
    notes = []
    if not _present(given, "rounds.checkpoint_every"):
        every = math.ceil(cfg.rounds.num_rounds / CHECKPOINTS_PER_RUN)
        raw["rounds"]["checkpoint_every"] = every
        notes.append(
            f"rounds.checkpoint_every={every} (ceil({cfg.rounds.num_rounds} rounds / {CHECKPOINTS_PER_RUN}))"
        )
    if not _present(given, "resources.max_restarts"):
        raw["resources"]["max_restarts"] = DEFAULT_MAX_RESTARTS
        notes.append(f"resources.max_restarts={DEFAULT_MAX_RESTARTS}")
    return raw, notes


def render_rayjob(
    config: str | Path,
    overrides: list[str] | None = None,
    *,
    clients: int | None = None,
    gpus_per_actor: float | None = None,
    clients_per_actor: int | None = None,
    actors: int | None = None,
    image: str = DEFAULT_IMAGE,
    cpus_per_pod: int = 8,
    gpus_per_pod: int = 1,
    max_pods: int = DEFAULT_MAX_PODS,
    name: str | None = None,
    deadline_s: int = 6 * 3600,
) -> Rendered:
    """Build the ConfigMap and RayJob for one experiment (ConfigError for anything a user can fix,
    including a job that cannot run: see :func:`check_partition` and :func:`check_pods`)."""
    flags: list[str] = []
    said: list[str] = []
    if clients is not None:
        if clients < 1:
            raise ConfigError(f"--clients {clients}: need at least 1 client")
        flags.append(f"data.num_clients={clients}")
        said.append(f"--clients {clients}")
    if gpus_per_actor is not None:
        if not gpus_per_actor > 0:
            raise ConfigError(f"--gpus-per-actor {gpus_per_actor:g}: must be > 0 (leave it out for CPU runs)")
        flags.append(f"resources.num_gpus={gpus_per_actor!r}")
        said.append(f"--gpus-per-actor {gpus_per_actor:g}")
    if clients_per_actor is not None and actors is not None:
        raise ConfigError(
            "--actors and --clients-per-actor exclude each other: the actors are ceil(clients / clients per "
            "actor); give one of them"
        )
    if clients_per_actor is not None:
        if clients_per_actor < 1:
            raise ConfigError(f"--clients-per-actor {clients_per_actor}: need at least 1")
        flags += [f"resources.clients_per_actor={clients_per_actor}", "resources.num_actors=null"]
        said.append(f"--clients-per-actor {clients_per_actor}")
    if actors is not None:
        if actors < 1:
            raise ConfigError(f"--actors {actors}: need at least 1 actor")
        flags += ["resources.clients_per_actor=auto", f"resources.num_actors={actors}"]
        said.append(f"--actors {actors}")
    if cpus_per_pod < 1 or gpus_per_pod < 1:
        raise ConfigError("--cpus-per-pod and --gpus-per-pod must be at least 1")
    if max_pods < 2:
        raise ConfigError(f"--max-pods {max_pods}: a job needs a head and at least one worker pod")
    if not _IMAGE.match(image):
        raise ConfigError(f"--image {image!r} is not an image reference (e.g. ghcr.io/me/raysim:0.1.0)")
    if deadline_s < 1:
        raise ConfigError("--deadline-hours must be positive")
    fixed = ["resources.backend=ray", "resources.address=null", f"output.dir={RUNS_DIR}"]
    sets = [*(overrides or []), *flags, *fixed]
    cfg = load_config(config, sets)  # raysim's own loading and validation, as `raysim run` does it
    job_name = name or job_name_for(cfg)
    _check_name(job_name)
    raw, defaults = _job_defaults(_given(config, sets), cfg)
    raw["output"]["name"] = job_name
    cfg = config_from_dict(raw, str(config))
    check_partition(cfg)
    res = cfg.resources
    if clients_per_actor is not None:
        why = "--clients-per-actor"
    elif actors is not None:
        why = "--actors"
    else:
        why = "set by the experiment"
    plan = job_plan(cfg)
    rule = plan.explain(why, cfg.algorithm.name)
    if follows_resources(res):  # pinned here: see the docstring
        raw = cfg.to_dict()
        raw["resources"]["num_actors"] = plan.actors
        cfg = config_from_dict(raw, str(config))
    n_actors = plan.actors
    cpu, gpu, per_pod = size_workers(
        n_actors, res.num_cpus, res.num_gpus, cpus_per_pod=cpus_per_pod, gpus_per_pod=gpus_per_pod
    )
    server = size_server(
        res.server_cpus, res.server_gpus, cpus_per_pod=cpus_per_pod, gpus_per_pod=gpus_per_pod
    )
    sizing = Sizing(
        cfg.data.num_clients,
        n_actors,
        res.num_cpus,
        res.num_gpus,
        per_pod,
        cpu,
        gpu,
        server,
        res.server_cpus,
        res.server_gpus,
        rule,
    )
    check_pods(sizing, max_pods, cfg, " ".join(said) or str(config))
    cm_name = f"{job_name}-config"
    spec = cluster_spec(image, cpu, gpu, autoscaling=False, server=server, config_map=cm_name)
    check_memory(sizing, cfg, spec)
    raw = cfg.to_dict()
    raw["resources"].update(cluster_max(spec))
    cfg = config_from_dict(raw, str(config))
    text = experiment_yaml(cfg)
    entrypoint = run_entrypoint(job_name)
    job = rayjob(
        job_name,
        entrypoint,
        spec,
        image=image,
        deadline_s=deadline_s,
        backoff_limit=BACKOFF_LIMIT,
        pre_running_deadline_s=PRE_RUNNING_DEADLINE_S,
        annotations={
            "raysim.io/experiment": cfg.name,
            "raysim.io/clients": str(sizing.clients),
            "raysim.io/actors": str(sizing.actors),
            "raysim.io/sizing": sizing.describe(),
        },
    )
    cm = config_map(cm_name, {EXPERIMENT_FILE: text})
    return Rendered(job=job, config_map=cm, cfg=cfg, sizing=sizing, defaults=defaults)


def experiment_yaml(cfg: ExperimentConfig) -> str:
    """The ConfigMap's experiment.yaml: every resolved value (``raysim validate``'s output), checked
    to load back to the same experiment."""
    text = dump_config(cfg)
    back = config_from_dict(yaml.safe_load(text), "rendered experiment.yaml")
    if resolved_dict(back) != resolved_dict(cfg):  # a guard, not user input
        raise RuntimeError("the rendered experiment.yaml does not load back to the same experiment")
    return text


def run_entrypoint(job_name: str) -> str:
    """``raysim run /config/experiment.yaml --resume-if-present --address auto --set output.name=JOB``:
    a retried job continues the run directory named after it."""
    return " ".join(
        ["raysim", "run", f"{CONFIG_MOUNT}/{EXPERIMENT_FILE}", "--resume-if-present", "--address", "auto",
         "--set", f"output.name={job_name}"]
    )  # fmt: skip


def tune_entrypoint() -> str:
    """``raysim tune /config/sweep.yaml --resume-if-present --address auto --storage-path ...``."""
    return " ".join(
        ["raysim", "tune", f"{CONFIG_MOUNT}/{SWEEP_FILE}", "--resume-if-present", "--address", "auto",
         "--storage-path", TUNE_DIR]
    )  # fmt: skip


def is_sweep_spec(path: str | Path) -> bool:
    """A sweep spec (``base:`` and ``space:``/``mode:``) rather than an experiment config."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and "base" in raw and ("space" in raw or "mode" in raw)


def render_sweep(
    spec_path: str | Path,
    overrides: list[str] | None = None,
    *,
    image: str = DEFAULT_IMAGE,
    max_pods: int = DEFAULT_MAX_PODS,
    name: str | None = None,
    deadline_s: int = 24 * 3600,
) -> Rendered:
    """The ConfigMap (the spec with its base inlined, as ``raysim tune`` saves it) and the RayJob of a
    sweep, on the autoscaling cluster of ``k8s/ray-cluster.yaml``."""
    from tuning.spec import load_spec, resolved_spec_yaml

    if not _IMAGE.match(image):
        raise ConfigError(f"--image {image!r} is not an image reference (e.g. ghcr.io/me/raysim:0.1.0)")
    if deadline_s < 1:
        raise ConfigError("--deadline-hours must be positive")
    loaded = load_spec(spec_path, overrides or [])
    job_name = name or job_name_for(config_from_dict({"name": loaded.spec.name}), "raysim-tune")
    _check_name(job_name)
    cm_name = f"{job_name}-config"
    spec = cluster_spec(image, config_map=cm_name)
    pods = 1 + sum(int(g["maxReplicas"]) for g in spec["workerGroupSpecs"])
    if pods > max_pods:
        raise ConfigError(
            f"the sweep's cluster grows to {pods} pods (1 head + the worker groups' maxReplicas), more than "
            f"--max-pods {max_pods}; raise --max-pods"
        )
    base = dict(loaded.base)
    base["resources"] = {**base.get("resources", {}), **cluster_max(spec)}
    loaded = loaded.model_copy(update={"base": base})
    text = resolved_spec_yaml(loaded)
    cfg = config_from_dict(yaml.safe_load(text)["base"], "the sweep's base")
    job = rayjob(
        job_name,
        tune_entrypoint(),
        spec,
        image=image,
        deadline_s=deadline_s,
        backoff_limit=BACKOFF_LIMIT,
        pre_running_deadline_s=PRE_RUNNING_DEADLINE_S,
        component="tune",
        annotations={"raysim.io/sweep": loaded.spec.name, "raysim.io/mode": loaded.spec.mode},
    )
    cm = config_map(cm_name, {SWEEP_FILE: text}, component="tune")
    return Rendered(job=job, config_map=cm, cfg=cfg, kind="tune")


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def dump_objects(objects: list[dict[str, Any]], header: str = "") -> str:
    """YAML text of the objects, one document each (multi-line strings as literal blocks)."""
    text = yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, width=100, explicit_start=True)
    if list(yaml.safe_load_all(text)) != objects:  # a guard, not a user error
        raise RuntimeError("rendered YAML does not load back to the same objects")
    return header + text


def evaluation(sizing: Sizing, cfg: ExperimentConfig, coef: Any) -> tuple[int, float, str]:
    """(evaluated rounds, seconds each, what it is) for the evaluation of an evaluated round (every
    ``rounds.eval_every`` rounds and the last): the server tests the global model on the test set and,
    with ``rounds.personal_eval``, the clients it scores test their models on their own test splits
    on the client actors, no more at once than CPUs (``raysim.bench.model.evaluate_seconds``: the
    fitted evaluation terms where the coefficients have them, else a test example timed as a forward
    pass, 1/3 of a training step, and each scored client as a training call)."""
    from raysim.bench import model

    d, r = cfg.data, cfg.rounds
    evals = math.ceil(r.num_rounds / r.eval_every)
    test_total = model.TEST_EXAMPLES.get(d.dataset, model.TEST_EXAMPLES["fashion-mnist"])
    w = model.Workload(**model.workload_of(cfg, actors=sizing.actors))
    parallel = max(1.0, min(float(sizing.actors), sizing.sized.replicas * float(sizing.sized.shape.cpus)))
    each, _ = model.evaluate_seconds(coef, w, parallel)
    server_s, _ = model.evaluate_seconds(coef, replace(w, eval_clients=0), parallel)
    n = w.eval_clients
    if not n:
        return evals, server_s, f"the global model on {test_total:,} test examples (personal_eval off)"
    what = (
        f"personal_eval of {'all' if n == d.num_clients else 'a seeded sample of'} {n:,} clients ({w.test_per_client:,.0f} test examples each, {parallel:g} actors at once) "
        f"{each - server_s:,.1f} s + the global model on {test_total:,} test examples {server_s:.1f} s"
    )
    return evals, each, what


def cost_estimate(sizing: Sizing, cfg: ExperimentConfig) -> list[str]:
    """The cost model's estimate (raysim.bench.model, docs/scaling.md) for the sized experiment:
    round time, time to the first round, memory per worker pod and in all; then what evaluation
    (:func:`evaluation`) adds and the whole run."""
    from raysim.bench import model
    from raysim.bench.coefficients import DEFAULT

    try:
        est = model.estimate(
            cfg,
            actors=sizing.actors,
            nodes=sizing.sized.replicas,
            cpus_per_node=float(sizing.sized.shape.cpus),
            gpus=float(sizing.total_gpus),
        )
    except model.FitError as exc:
        return [f"Estimate: none ({exc})."]
    lines = model.describe(est, sizing.sized.replicas)
    if est.worker_mb > sizing.sized.shape.memory_mi:  # the model's MB are MiB (its GB: MB / 1024)
        lines.append(
            f"Caveat: the estimate's {est.worker_mb / 1024:.2f} GB per worker pod is more than the pod's "
            f"{sizing.sized.shape.memory_mi / 1024:g} GiB limit (an upper bound: RSS counts shared pages in "
            "every process); if pods are OOM-killed, fewer actors a pod (--cpus-per-pod) or more CPUs each."
        )
    coef = model.Coefficients.from_dict(DEFAULT)
    evals, each, what = evaluation(sizing, cfg, coef)
    how = model.eval_rule(coef)
    rounds = cfg.rounds.num_rounds
    total = est.first_round_s + (rounds - 1) * est.round_s + evals * each
    return [
        *lines[:2],
        f"Evaluation: {evals} evaluated rounds (every {cfg.rounds.eval_every}) of about {each:,.1f} s each: "
        f"{what}; {evals * each / 60:,.1f} min in all ({how}).",
        f"Run: about {total / 60:,.1f} min ({rounds} rounds of {est.round_s:.2f} s, the first "
        f"{est.first_round_s:.0f} s after the start, + evaluation).",
        *lines[2:],
    ]


def _header(rendered: Rendered, out: str, argv: list[str]) -> str:
    cfg, name = rendered.cfg, rendered.name
    if rendered.kind == "tune":
        what = f"ConfigMap + RayJob for sweep {rendered.job['metadata']['annotations']['raysim.io/sweep']!r}"
        body = [
            "Cluster: the autoscaling cluster of k8s/ray-cluster.yaml (cpu group 1..10 pods, gpu group 0..4).",
            f"Results: {TUNE_DIR}/{rendered.job['metadata']['annotations']['raysim.io/sweep']}/ on the volume "
            "(trials.parquet, best.yaml, optuna.db); a retry continues the sweep there.",
        ]
    else:
        sizing = rendered.sizing
        assert sizing is not None
        what = f"ConfigMap + RayJob for experiment {cfg.name!r}"
        body = [
            f"Sizing: {sizing.describe()}.",
            f"Actors: {sizing.rule}.",
            *cost_estimate(sizing, cfg),
            f"Results: {RUNS_DIR}/{name}/ on the volume (output.name = the job's name; see docs/kubernetes.md).",
        ]
    if rendered.defaults:
        body.append(f"Job defaults applied (set them to change): {', '.join(rendered.defaults)}.")
    lines = [
        f"{what}, written by: raysim k8s {' '.join(argv)}",
        "Do not edit: change the experiment and render again.",
        "",
        *body,
        "",
        "  kubectl apply -f k8s/pvc.yaml            # once: the shared results volume",
        f"  kubectl apply -f {out}",
        f"  kubectl get rayjob {name} -w              # until JOB STATUS is SUCCEEDED",
        f"  kubectl logs -f job/{name}              # the driver's output",
    ]
    return "".join(f"# {' '.join(line.splitlines())}".rstrip() + "\n" for line in lines)


# ------------------------------------------------------------------------------------------ CLI

k8s_app = typer.Typer(
    no_args_is_help=True,
    help="Kubernetes (KubeRay): render a RayJob sized for an experiment (see docs/kubernetes.md).",
)


@k8s_app.callback()
def _k8s() -> None:
    """Kubernetes (KubeRay) helpers."""


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


RENAMED = (
    "--gpus-per-client is gone: it meant one client per actor, so --gpus-per-client 0.25 with 100,000 clients "
    "asked for 100,000 actors on 25,000 GPU pods. Say both halves: --gpus-per-actor F (GPUs each client "
    "actor asks for; 0.25: four actors share a GPU) and --clients-per-actor N (clients each actor hosts; "
    "left out: clients_per_actor: auto, one actor per 50 clients, at most rounds.clients_per_round actors)"
)


@k8s_app.command()
def render(
    config: Annotated[
        Path,
        typer.Argument(help="Experiment YAML (e.g. configs/quickstart.yaml) or sweep spec (configs/tune/)."),
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a config value: --set rounds.num_rounds=5 (repeatable)."),
    ] = None,
    clients: Annotated[int | None, typer.Option(min=1, help="Number of clients (data.num_clients).")] = None,
    gpus_per_actor: Annotated[
        float | None,
        typer.Option(
            min=0.0001,  # Ray's resource granularity
            help="GPUs each client actor asks for (resources.num_gpus; 0.25: four actors share a GPU).",
        ),
    ] = None,
    clients_per_actor: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Clients each actor hosts (resources.clients_per_actor; default auto: "
            f"min(ceil(clients / {K8S_CLIENTS_PER_ACTOR}), rounds.clients_per_round) actors).",
        ),
    ] = None,
    actors: Annotated[
        int | None,
        typer.Option(min=1, help="Client actors (resources.num_actors with clients_per_actor: auto)."),
    ] = None,
    gpus_per_client: Annotated[
        float | None,
        typer.Option(min=0.0001, hidden=True, help="Renamed: --gpus-per-actor and --clients-per-actor."),
    ] = None,
    image: Annotated[str, typer.Option(help="Image built from k8s/Dockerfile and pushed.")] = DEFAULT_IMAGE,
    cpus_per_pod: Annotated[int, typer.Option(min=1, help="Largest CPU worker pod (CPUs).")] = 8,
    gpus_per_pod: Annotated[int, typer.Option(min=1, help="GPUs per GPU worker pod.")] = 1,
    max_pods: Annotated[
        int, typer.Option(min=2, help="Refuse a job of more pods than this (the head included).")
    ] = DEFAULT_MAX_PODS,
    name: Annotated[
        str | None, typer.Option(help="RayJob name (default raysim-<experiment> or raysim-tune-<sweep>).")
    ] = None,
    deadline_hours: Annotated[
        float | None,
        typer.Option(min=0.01, help="activeDeadlineSeconds per attempt, in hours (default 6; sweeps 24)."),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="Output file (default <job name>.rayjob.yaml; '-': stdout)."),
    ] = None,
) -> None:
    """Write a ConfigMap + RayJob that runs CONFIG (an experiment, or a sweep spec) on KubeRay.

    Sizing rule for an experiment (details and examples: docs/kubernetes.md):

    - actors A = ceil(clients / --clients-per-actor), or --actors;
      clients_per_actor: auto becomes num_actors = min(ceil(clients / 50), clients a round);
      the header says which rule picked A
    - --gpus-per-actor F: each actor asks for F GPUs (0.25: four actors share a GPU)
    - GPU actors fill pods of --gpus-per-pod GPUs, floor(1/F) actors a GPU;
      CPU actors fill pods of --cpus-per-pod CPUs, floor(cpus_per_pod / num_cpus) a pod
    - pods = ceil(A / actors per pod), each sized for ceil(A / pods) actors; more than
      --max-pods (head included) is refused
    - the head (num-cpus 0, custom resource raysim_head) hosts the driver and the server

    A job that cannot run (more clients than the dataset gives, too many pods, a bad value)
    exits with status 2 and writes nothing. The job checkpoints every ceil(rounds / 10) rounds,
    restarts lost actors (max_restarts 3) and, retried, resumes (--resume-if-present).
    """
    if gpus_per_client is not None:
        _fail(RENAMED)
        return
    sweep = is_sweep_spec(config)
    try:
        if sweep:
            sizing_flags = {
                "--clients": clients,
                "--gpus-per-actor": gpus_per_actor,
                "--clients-per-actor": clients_per_actor,
                "--actors": actors,
                "--cpus-per-pod": None if cpus_per_pod == 8 else cpus_per_pod,
                "--gpus-per-pod": None if gpus_per_pod == 1 else gpus_per_pod,
            }
            given_flags = [k for k, v in sizing_flags.items() if v is not None]
            if given_flags:
                raise ConfigError(
                    f"{', '.join(given_flags)}: a sweep's trials are sized by its spec (base: and fixed:), "
                    "not by render's flags; set them with --set KEY=VALUE on the base (e.g. "
                    "--set data.num_clients=1000)"
                )
            rendered = render_sweep(
                config,
                set_ or [],
                image=image,
                max_pods=max_pods,
                name=name,
                deadline_s=int(round((deadline_hours or 24.0) * 3600)),
            )
        else:
            rendered = render_rayjob(
                config,
                set_ or [],
                clients=clients,
                gpus_per_actor=gpus_per_actor,
                clients_per_actor=clients_per_actor,
                actors=actors,
                image=image,
                cpus_per_pod=cpus_per_pod,
                gpus_per_pod=gpus_per_pod,
                max_pods=max_pods,
                name=name,
                deadline_s=int(round((deadline_hours or 6.0) * 3600)),
            )
    except ConfigError as err:
        _fail(str(err))
        return
    job = rendered.name
    target = out or f"{job}.rayjob.yaml"
    given = {
        "--clients": clients,
        "--gpus-per-actor": gpus_per_actor,
        "--clients-per-actor": clients_per_actor,
        "--actors": actors,
        "--image": None if image == DEFAULT_IMAGE else image,
        "--cpus-per-pod": None if cpus_per_pod == 8 else cpus_per_pod,
        "--gpus-per-pod": None if gpus_per_pod == 1 else gpus_per_pod,
        "--max-pods": None if max_pods == DEFAULT_MAX_PODS else max_pods,
        "--name": name,
        "--deadline-hours": deadline_hours,
    }
    argv = ["render", str(config), *(f"--set {s}" for s in set_ or [])]
    argv += [f"{flag} {value}" for flag, value in given.items() if value is not None]
    cfg = rendered.cfg
    if cfg.data.data_dir is not None:
        typer.echo(
            f"warning: data.data_dir={cfg.data.data_dir!r} must exist inside the pods (image or volume)",
            err=True,
        )
    text = dump_objects(rendered.objects, _header(rendered, target if target != "-" else "<file>", argv))
    if target == "-":
        typer.echo(text, nl=False)
        return
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(target), text)
    if rendered.sizing is not None:
        typer.echo(f"wrote {target}: {rendered.sizing.describe()}", err=True)
        typer.echo(f"Actors: {rendered.sizing.rule}.", err=True)
        for line in cost_estimate(rendered.sizing, cfg):
            typer.echo(line, err=True)
    else:
        typer.echo(
            f"wrote {target}: sweep {rendered.job['metadata']['annotations']['raysim.io/sweep']!r}", err=True
        )
    if rendered.defaults:
        typer.echo(f"Job defaults applied: {', '.join(rendered.defaults)}.", err=True)
    typer.echo(f"next: kubectl apply -f {target} && kubectl get rayjob {job} -w", err=True)
