"""Kubernetes (KubeRay) support: ``raysim k8s render`` writes a RayJob sized for one experiment.

The manifests in ``k8s/`` are the hand-readable reference (a RayCluster and two RayJobs); this
module builds the same objects in code, so that ``render`` can size the worker groups from an
experiment and ``tests/test_k8s.py`` can check that ``k8s/ray-cluster.yaml`` and
:func:`cluster_spec` never drift apart.

Sizing rule (``render``; also in docs/kubernetes.md)
----------------------------------------------------
1. The experiment is CONFIG plus ``--set`` overrides plus the flags: ``--clients N`` sets
   ``data.num_clients``; ``--gpus-per-client F`` selects the literal one-client-per-actor mode
   (``clients_per_actor: 1``, ``num_gpus: F`` per actor); ``--actors A`` pins
   ``clients_per_actor: auto`` with ``num_actors: A``.
2. The actor count A must not depend on the cluster (the cluster is sized from it), so
   ``clients_per_actor: auto`` without ``num_actors`` is pinned to ``num_actors =
   min(ceil(clients / 50), C)`` (:func:`default_actors`; 50 is :data:`K8S_CLIENTS_PER_ACTOR`;
   C = ``rounds.clients_per_round``), or to 1 for an algorithm that pools every client into one:
   one actor per 50 clients, but never more actors than a round trains clients. A round of C
   clients keeps at most C actors busy and every actor costs ~800 MB RSS for the whole run,
   while an actor holds only its own N / A clients (roaming or not: ``raysim.bench.model``), so
   the cap costs memory per actor only as N / C grows. A value the experiment sets wins:
   ``num_actors`` (or ``--actors``), ``clients_per_actor: k`` (or ``--gpus-per-client``). Then
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
   the other group has none; autoscaling is off (the run checks the cluster's resources when it
   starts and never grows, and KubeRay submits the job once every pod is ready).
   Example: 10 clients x 0.25 GPU (c = 1) -> 10 actors, 4 per 1-GPU pod -> 3 pods of
   1 GPU + 4 CPUs: 3 GPUs for the 2.5 asked. 1000 clients on CPU, 100 a round (auto, c = 1) ->
   min(20, 100) = 20 actors, 8 per 8-CPU pod -> 3 pods of 7 CPUs: 21 CPUs for the 20 asked.
   10^6 clients, 100 a round -> min(20000, 100) = 100 actors -> 13 pods of 8 CPUs.
5. The head schedules no client actors (``num-cpus: "0"``); the driver and a server actor that
   asks for nothing (``resources.server_cpus`` = ``server_gpus`` = 0) use its real CPUs. A server
   that asks for resources (a hypernetwork trains there) cannot be placed on the head, so it gets
   a worker group of its own, ``server``: one pod of ``max(1, ceil(server_cpus))`` CPUs and
   ``ceil(server_gpus)`` GPUs (memory as above), on top of the client pods.
6. The rendered file's header (and ``render``'s stderr) also gives the cost model's estimate for
   the sized experiment (:func:`cost_estimate`, ``raysim.bench.model``, docs/scaling.md): round
   time, time to the first round, memory per worker pod and in all; fitted on a 2-core machine,
   it ignores the network between pods and GPU speed.

How the experiment reaches the cluster
--------------------------------------
The image bakes ``configs/`` (used by the static ``k8s/ray-job.*.yaml``) and an empty
``k8s/inline-config.yaml``. A rendered job does not depend on either: its entrypoint is
``raysim run /home/ray/raysim/k8s/inline-config.yaml --set KEY=VALUE ...`` with every value of
the fully resolved, sized experiment, so changing the experiment never needs an image rebuild,
and the job runs exactly what was sized. ``render`` also forces ``resources.backend=ray``,
``resources.address=null`` (a Ray job finds its cluster through RAY_ADDRESS) and
``output.dir=/mnt/results/runs`` (the shared results volume).

KubeRay passes an entrypoint through two shells (the submitter's ``sh -c`` and, after
``ray job submit`` re-joins it, Ray's ``shell=True``), so every rendered token is restricted to
characters neither shell interprets; a value that needs quoting is refused with exit status 2.

This module must import without Ray (the CLI loads it on a laptop with no cluster).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from raysim.atomic import atomic_write_text
from raysim.config import ConfigError, ExperimentConfig, ResourcesConfig, config_from_dict, load_config
from raysim.k8s_manifest import (
    DEFAULT_IMAGE,
    INLINE_CONFIG,
    RUNS_DIR,
    GroupSize,
    PodShape,
    cluster_spec,
    rayjob,
)
from raysim.runtime.packing import ActorPlan, follows_resources, plan_actors

K8S_CLIENTS_PER_ACTOR = 50  # clients_per_actor: auto on Kubernetes without num_actors (capped at the cohort)
MAX_JOB_NAME = 47  # KubeRay appends 6 characters to name the RayCluster (limit 53)
_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_.,:/@%+=-]+$")
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


# ---------------------------------------------------------------------------------- entrypoint


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out.append((prefix, value))


def _format_value(key: str, value: Any) -> str:
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if math.isnan(value):
            raise ConfigError(f"{key}: NaN cannot be passed to a Kubernetes job")
        text = repr(value) if math.isfinite(value) else (".inf" if value > 0 else "-.inf")
        if "e" in text and "." not in text:  # YAML 1.1 (PyYAML) reads 1e-05 as a string
            mantissa, exp = text.split("e")
            text = f"{mantissa}.0e{exp}"
    elif isinstance(value, str):
        text = value
    else:
        raise ConfigError(
            f"{key}: {type(value).__name__} values cannot be passed with --set to a Kubernetes job (the job's "
            "command line carries single tokens only): leave it out of the rendered config, or build an "
            "image holding your config file and run it there"
        )
    back = yaml.safe_load(text) if text else None
    if type(back) is not type(value) or back != value or not _SAFE_TOKEN.match(f"{key}={text}"):
        raise ConfigError(
            f"{key}={value!r} cannot travel safely through the job's shell command line; use a value made "
            "of letters, digits and ._-/:@+=,% that YAML reads back unchanged (e.g. not 'yes' or '1.0' as a name)"
        )
    return text


def run_entrypoint(cfg: ExperimentConfig, config_path: str = INLINE_CONFIG) -> str:
    """``raysim run <empty config> --set ...`` carrying every value of ``cfg``."""
    leaves: list[tuple[str, Any]] = []
    _flatten("", cfg.to_dict(), leaves)
    defaults: list[tuple[str, Any]] = []
    _flatten("", ExperimentConfig().to_dict(), defaults)
    # a list cannot be one shell-safe token (brackets need quoting): an empty one that is also
    # the default (output.trackers) is left out, the job's config then has it as it is
    empty_by_default = {key for key, value in defaults if value == []}
    sets = [
        f"--set {key}={_format_value(key, value)}"
        for key, value in leaves
        if not (value == [] and key in empty_by_default)
    ]
    return " ".join(["raysim", "run", config_path, *sets])


# ------------------------------------------------------------------------------------- render


def job_name_for(cfg: ExperimentConfig) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", cfg.name.lower()).strip("-")
    return f"raysim-{slug}"[:MAX_JOB_NAME].rstrip("-") if slug else "raysim-run"


def render_rayjob(
    config: str | Path,
    overrides: list[str] | None = None,
    *,
    clients: int | None = None,
    gpus_per_client: float | None = None,
    actors: int | None = None,
    image: str = DEFAULT_IMAGE,
    cpus_per_pod: int = 8,
    gpus_per_pod: int = 1,
    name: str | None = None,
    deadline_s: int = 6 * 3600,
) -> tuple[dict[str, Any], Sizing, ExperimentConfig]:
    """Build the RayJob for one experiment (raises ConfigError for anything a user can fix)."""
    flags: list[str] = []
    if clients is not None:
        if clients < 1:
            raise ConfigError(f"--clients {clients}: need at least 1 client")
        flags.append(f"data.num_clients={clients}")
    if gpus_per_client is not None:
        if not gpus_per_client > 0:
            raise ConfigError(
                f"--gpus-per-client {gpus_per_client:g}: must be > 0 (leave it out for CPU runs)"
            )
        if actors is not None:
            raise ConfigError(
                "--actors and --gpus-per-client exclude each other: --gpus-per-client hosts one "
                "client per actor, so there are as many actors as clients"
            )
        flags += [
            "resources.clients_per_actor=1",
            "resources.num_actors=null",
            f"resources.num_gpus={gpus_per_client!r}",
        ]
    if actors is not None:
        if actors < 1:
            raise ConfigError(f"--actors {actors}: need at least 1 actor")
        flags += ["resources.clients_per_actor=auto", f"resources.num_actors={actors}"]
    if cpus_per_pod < 1 or gpus_per_pod < 1:
        raise ConfigError("--cpus-per-pod and --gpus-per-pod must be at least 1")
    if not _IMAGE.match(image):
        raise ConfigError(f"--image {image!r} is not an image reference (e.g. ghcr.io/me/raysim:0.1.0)")
    if deadline_s < 1:
        raise ConfigError("--deadline-hours must be positive")
    fixed = ["resources.backend=ray", "resources.address=null", f"output.dir={RUNS_DIR}"]
    cfg = load_config(config, [*(overrides or []), *flags, *fixed])
    res = cfg.resources
    if gpus_per_client is not None:
        why = "--gpus-per-client: one client per actor"
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
    job_name = name or job_name_for(cfg)
    if len(job_name) > MAX_JOB_NAME or not _DNS1035.match(job_name):
        raise ConfigError(
            f"--name {job_name!r}: a RayJob name is at most {MAX_JOB_NAME} characters of a-z, 0-9 and '-', "
            "starting with a letter"
        )
    entrypoint = run_entrypoint(cfg)
    doc = rayjob(
        job_name,
        entrypoint,
        cluster_spec(image, cpu, gpu, autoscaling=False, server=server),
        image=image,
        deadline_s=deadline_s,
        annotations={
            "raysim.io/experiment": cfg.name,
            "raysim.io/clients": str(sizing.clients),
            "raysim.io/actors": str(sizing.actors),
            "raysim.io/sizing": sizing.describe(),
        },
    )
    return doc, sizing, cfg


def dump_rayjob(doc: dict[str, Any], header: str = "") -> str:
    """YAML text of a RayJob with the entrypoint folded one ``--set`` a line (same string once loaded)."""
    marker = "RAYSIM_ENTRYPOINT_PLACEHOLDER"
    shown = {**doc, "spec": {**doc["spec"], "entrypoint": marker}}
    text = yaml.safe_dump(shown, sort_keys=False, width=100)
    parts = doc["spec"]["entrypoint"].split(" --set ")
    block = ">-\n" + "".join(f"    {line}\n" for line in [parts[0], *(f"--set {p}" for p in parts[1:])])
    text = text.replace(f"  entrypoint: {marker}\n", f"  entrypoint: {block}", 1)
    if yaml.safe_load(text) != doc:  # a guard, not a user error: the folding must not change the command
        raise RuntimeError("rendered YAML does not load back to the same RayJob")
    return header + text


def cost_estimate(sizing: Sizing, cfg: ExperimentConfig) -> list[str]:
    """The cost model's estimate (raysim.bench.model, docs/scaling.md) for the sized experiment:
    round time, time to the first round, memory per worker pod and in all."""
    from raysim.bench import model

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
    return model.describe(est, sizing.sized.replicas)


def _header(sizing: Sizing, cfg: ExperimentConfig, name: str, out: str, argv: list[str]) -> str:
    lines = [
        f"RayJob for experiment {cfg.name!r}, written by: raysim k8s {' '.join(argv)}",
        "Do not edit: change the experiment and render again.",
        "",
        f"Sizing: {sizing.describe()}.",
        f"Actors: {sizing.rule}.",
        *cost_estimate(sizing, cfg),
        "",
        "  kubectl apply -f k8s/pvc.yaml            # once: the shared results volume",
        f"  kubectl apply -f {out}",
        f"  kubectl get rayjob {name} -w              # until JOB STATUS is SUCCEEDED",
        f"  kubectl logs -f job/{name}              # the driver's output",
        f"Results: {RUNS_DIR}/{cfg.output.name or cfg.name}/ on the volume (see docs/kubernetes.md).",
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


@k8s_app.command()
def render(
    config: Annotated[Path, typer.Argument(help="Experiment YAML (e.g. configs/quickstart.yaml).")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a config value: --set rounds.num_rounds=5 (repeatable)."),
    ] = None,
    clients: Annotated[int | None, typer.Option(min=1, help="Number of clients (data.num_clients).")] = None,
    gpus_per_client: Annotated[
        float | None,
        typer.Option(
            min=0.0001,  # Ray's resource granularity
            help="One client per actor with this many GPUs each (0.25: four clients share a GPU).",
        ),
    ] = None,
    actors: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=f"Client actors (default with clients_per_actor: auto: "
            f"min(ceil(clients / {K8S_CLIENTS_PER_ACTOR}), rounds.clients_per_round)).",
        ),
    ] = None,
    image: Annotated[str, typer.Option(help="Image built from k8s/Dockerfile and pushed.")] = DEFAULT_IMAGE,
    cpus_per_pod: Annotated[int, typer.Option(min=1, help="Largest CPU worker pod (CPUs).")] = 8,
    gpus_per_pod: Annotated[int, typer.Option(min=1, help="GPUs per GPU worker pod.")] = 1,
    name: Annotated[str | None, typer.Option(help="RayJob name (default raysim-<experiment name>).")] = None,
    deadline_hours: Annotated[
        float, typer.Option(min=0.01, help="activeDeadlineSeconds, in hours (at least 0.01: 36 s).")
    ] = 6.0,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="Output file (default <job name>.rayjob.yaml; '-': stdout)."),
    ] = None,
) -> None:
    """Write a RayJob that runs CONFIG on a KubeRay cluster sized from the experiment.

    Sizing rule (details and examples: docs/kubernetes.md):

    - actors A = ceil(clients / clients_per_actor), or num_actors;
      clients_per_actor: auto becomes num_actors = min(ceil(clients / 50), clients a round):
      no more actors than a round trains clients; the header says which rule picked A
    - --gpus-per-client F: one client per actor with F GPUs (0.25: four share a GPU)
    - GPU actors fill pods of --gpus-per-pod GPUs, floor(1/F) actors a GPU;
      CPU actors fill pods of --cpus-per-pod CPUs, floor(cpus_per_pod / num_cpus) a pod
    - pods = ceil(A / actors per pod), each sized for ceil(A / pods) actors
    - the head (num-cpus 0) hosts no client actor; autoscaling is off
    - resources.server_cpus/server_gpus > 0: one more pod, group 'server', sized for the server

    The entrypoint carries every value of the resolved experiment
    (raysim run <empty base config> --set ...): the job runs exactly what was sized.
    """
    try:
        doc, sizing, cfg = render_rayjob(
            config,
            set_ or [],
            clients=clients,
            gpus_per_client=gpus_per_client,
            actors=actors,
            image=image,
            cpus_per_pod=cpus_per_pod,
            gpus_per_pod=gpus_per_pod,
            name=name,
            deadline_s=int(round(deadline_hours * 3600)),
        )
    except ConfigError as err:
        _fail(str(err))
        return
    job = doc["metadata"]["name"]
    target = out or f"{job}.rayjob.yaml"
    given = {
        "--clients": clients,
        "--gpus-per-client": gpus_per_client,
        "--actors": actors,
        "--image": None if image == DEFAULT_IMAGE else image,
        "--cpus-per-pod": None if cpus_per_pod == 8 else cpus_per_pod,
        "--gpus-per-pod": None if gpus_per_pod == 1 else gpus_per_pod,
        "--name": name,
        "--deadline-hours": None if deadline_hours == 6.0 else deadline_hours,
    }
    argv = ["render", str(config), *(f"--set {s}" for s in set_ or [])]
    argv += [f"{flag} {value}" for flag, value in given.items() if value is not None]
    if cfg.data.data_dir is not None:
        typer.echo(
            f"warning: data.data_dir={cfg.data.data_dir!r} must exist inside the pods (image or volume)",
            err=True,
        )
    text = dump_rayjob(doc, _header(sizing, cfg, job, target if target != "-" else "<file>", argv))
    if target == "-":
        typer.echo(text, nl=False)
        return
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(target), text)
    typer.echo(f"wrote {target}: {sizing.describe()}", err=True)
    typer.echo(f"Actors: {sizing.rule}.", err=True)
    for line in cost_estimate(sizing, cfg):
        typer.echo(line, err=True)
    typer.echo(f"next: kubectl apply -f {target} && kubectl get rayjob {job} -w", err=True)
