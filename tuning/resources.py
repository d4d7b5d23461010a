"""Placement groups for Tune trials, derived from the experiment config.

A trial is one raysim experiment. Its placement group holds, in this order:

* bundle 0, the trial driver (the Tune function trainable itself):
  - serial backend: ``{CPU: resources.torch_threads}``. The whole federation trains in the trial's
    own process, so the driver bundle *is* the run's share.
  - ray backend: an empty bundle. The driver only loads the data once and relays calls to the
    server actor; reserving even 0.01 CPU for it would stop trials made of whole-CPU actors from
    packing evenly (two 2-CPU trials would no longer fit on 4 CPUs). Tune accepts an empty head
    bundle (``ResourceRequest.head_bundle_is_empty``): it schedules the trainable with no
    resources on bundle index 0 and drops the empty bundle from ``pgf.bundles``.
* ray backend only: one bundle for the server actor, ``{CPU: server_cpus, GPU: server_gpus}``,
  present only when one of them is nonzero (by default the server asks for nothing);
* ray backend only: one bundle per client actor, ``{CPU: num_cpus, GPU: num_gpus}`` (left out
  when a client actor asks for nothing). The number of client actors is
  ``raysim.runtime.packing.plan_actors`` (:func:`trial_plan`) computed on the cluster *minus* the server's share, so that
  ``resources.clients_per_actor: auto`` without ``num_actors`` sizes one trial to the whole
  cluster (trials then run one at a time: set ``resources.num_actors`` to run several at once).

Child-task capture (read in Ray 2.58's source, not guessed): Tune's default resource manager for
trials is ``PlacementGroupResourceManager`` (``ray/tune/execution/tune_controller.py``). It
schedules the trainable's actor with ``PlacementGroupSchedulingStrategy(...,
placement_group_capture_child_tasks=True)`` (``ray/air/execution/resources/placement_group.py``,
``_annotate_remote_entity``). Actors created inside the trial with no scheduling strategy of their
own then take ``worker.should_capture_child_tasks_in_placement_group`` as their capture flag
(``ray/actor.py``) and ``_configure_placement_group_based_on_context``
(``ray/util/placement_group.py``) puts them into the current (the trial's) placement group, any
bundle that fits their shape (a shape that fits no bundle is a ``ValueError`` at creation). So the
client and server actors ``actors.backend.RayBackend`` creates land inside the trial's group, and
the run sizes itself to the group (``tuning.trainable`` passes the group's share to the run).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ray import tune

from raysim.config import ConfigError, ExperimentConfig
from raysim.runtime.backend import Share
from raysim.runtime.packing import ActorPlan, follows_resources, grown, plan_actors

EPS = 1e-9


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    out: dict[str, float] = {}
    if cpus > 0:
        out["CPU"] = float(cpus)
    if gpus > 0:
        out["GPU"] = float(gpus)
    return out


def driver_bundle(cfg: ExperimentConfig) -> dict[str, float]:
    """Bundle 0: the trial's own process (see the module docstring)."""
    if cfg.resources.backend == "serial":
        return {"CPU": float(cfg.resources.torch_threads)}
    return {}


def trial_plan(cfg: ExperimentConfig, cluster_cpus: float, cluster_gpus: float) -> ActorPlan:
    """The client actors of one trial on this cluster: ``plan_actors`` on the cluster less the
    driver bundle (the server's share comes off inside the plan)."""
    cpus = max(0.0, cluster_cpus - driver_bundle(cfg).get("CPU", 0.0))
    return plan_actors(
        cfg.resources, cfg.data.num_clients, pooled=cfg.algorithm.traits.pooled, cpus=cpus, gpus=cluster_gpus
    )


def client_actor_count(cfg: ExperimentConfig, cluster_cpus: float, cluster_gpus: float) -> int:
    """How many client actors one trial starts on this cluster (0 on the serial backend)."""
    if cfg.resources.backend == "serial":
        return 0
    return trial_plan(cfg, cluster_cpus, cluster_gpus).actors


def trial_bundles(cfg: ExperimentConfig, cluster_cpus: float, cluster_gpus: float) -> list[dict[str, float]]:
    bundles = [driver_bundle(cfg)]
    if cfg.resources.backend == "ray":
        plan = trial_plan(cfg, cluster_cpus, cluster_gpus)
        server = _bundle(plan.server_cpus, plan.server_gpus)
        if server:
            bundles.append(server)
        client = _bundle(plan.cpus, plan.gpus)
        if client:
            bundles += [dict(client) for _ in range(plan.actors)]
    if not any(bundles):
        # Tune refuses an empty head bundle with nothing after it; a ray-backend trial whose
        # server and actors ask for nothing still gets a token bundle to live in.
        bundles = [{"CPU": 0.01}]
    return bundles


def trial_resources(
    cfg: ExperimentConfig, cluster_cpus: float, cluster_gpus: float
) -> tune.PlacementGroupFactory:
    """The placement group of one trial running ``cfg`` (see the module docstring)."""
    return tune.PlacementGroupFactory(trial_bundles(cfg, cluster_cpus, cluster_gpus), strategy="PACK")


def _sum(bundles: Sequence[Mapping[str, float]], key: str) -> float:
    return float(sum(b.get(key, 0.0) for b in bundles))


def check_fits(
    cfg: ExperimentConfig, pgf: tune.PlacementGroupFactory, cluster_cpus: float, cluster_gpus: float
) -> None:
    """Raise ConfigError, with the arithmetic, when one trial can never fit on the cluster (Tune
    would otherwise leave it pending forever). ``cluster_cpus``/``cluster_gpus`` are what the
    cluster has now; an autoscaling cluster is checked against what it can grow to
    (``resources.cluster_max_cpus``/``cluster_max_gpus``, :func:`raysim.runtime.packing.grown`)."""
    bundles = pgf.bundles
    res = cfg.resources
    for key, now, most, what in (
        ("CPU", cluster_cpus, res.cluster_max_cpus, "CPUs"),
        ("GPU", cluster_gpus, res.cluster_max_gpus, "GPUs"),
    ):
        need = _sum(bundles, key)
        have = float(grown(now, most) or 0.0)
        if need <= have + EPS:
            continue
        parts = []
        driver = 0.0 if pgf.head_bundle_is_empty else bundles[0].get(key, 0.0)
        if driver:
            parts.append(f"driver {driver:g}")
        server = res.server_cpus if key == "CPU" else res.server_gpus
        if res.backend == "ray" and server:
            parts.append(f"server {server:g}")
        per_client = res.num_cpus if key == "CPU" else res.num_gpus
        n = client_bundle_count(cfg, pgf)
        if res.backend == "ray" and per_client and n:
            parts.append(f"{n} client actors x {per_client:g}")
        detail = " + ".join(parts) if parts else f"{need:g}"
        knob = f"resources.cluster_max_{'cpus' if key == 'CPU' else 'gpus'}"
        has = f"the Ray cluster has {have:g}"
        if have > now + EPS:
            has = f"the Ray cluster can grow to {have:g} ({knob}; it has {now:g} now)"
        raise ConfigError(
            f"one trial needs {need:g} {what} ({detail} = {need:g}) but {has}: it could never start. "
            f"Lower resources.num_{'cpus' if key == 'CPU' else 'gpus'}, set resources.num_actors or "
            f"clients_per_actor, or add nodes ({knob} on an autoscaling cluster)"
        )


def scale_for_trial(
    cfg: ExperimentConfig, pgf: tune.PlacementGroupFactory, echo: Callable[[str], None] | None = None
) -> bool:
    """Before a sweep starts: when the cluster as it is cannot hold one trial's placement group and
    the config says it can grow (``resources.cluster_max_*``), ask the autoscaler for the group's
    bundles and wait for them (``resources.scale_wait_s``; ``actors.autoscale.request_and_wait``
    raises ConfigError past it). The request is withdrawn once they are there: Tune's pending
    placement groups are the autoscaler's demand from then on. True when it asked."""
    from actors import autoscale

    limits = autoscale.Limits.of(cfg.resources)
    bundles = [dict(b) for b in pgf.bundles if b]
    if not limits.any or autoscale.covers(autoscale.cluster_resources(), bundles):
        return False
    autoscale.request_and_wait(
        bundles,
        limits.wait_s,
        lambda: autoscale.covers(autoscale.cluster_resources(), bundles),
        what="one trial's placement group",
        echo=echo or autoscale.stderr_line,
    )
    autoscale.release()
    return True


def trial_share(pgf: tune.PlacementGroupFactory, backend: str) -> Share:
    """The resources a trial's run may use: on the ray backend every bundle after the driver's
    (the server and the client actors), on the serial backend the driver bundle itself."""
    bundles = pgf.bundles
    if backend == "ray" and not pgf.head_bundle_is_empty:
        bundles = bundles[1:]
    return Share(cpus=_sum(bundles, "CPU"), gpus=_sum(bundles, "GPU"))


def client_bundle_count(cfg: ExperimentConfig, pgf: tune.PlacementGroupFactory) -> int:
    """Client-actor bundles in a group made by ``trial_resources`` (0 when actors ask for nothing)."""
    res = cfg.resources
    if res.backend != "ray" or not _bundle(res.num_cpus, res.num_gpus):
        return 0
    n = len(pgf.bundles) - (0 if pgf.head_bundle_is_empty else 1)
    return max(0, n - (1 if _bundle(res.server_cpus, res.server_gpus) else 0))


def pinned_actors(cfg: ExperimentConfig, pgf: tune.PlacementGroupFactory) -> int | None:
    """The ``resources.num_actors`` a trial's run pins so that it starts exactly the client actors
    its group holds, or None when the config fixes the count itself (``follows_resources``) or its
    actors ask for nothing."""
    if not follows_resources(cfg.resources):
        return None
    return client_bundle_count(cfg, pgf) or None
