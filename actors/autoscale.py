"""Autoscaling clusters: size a run to what the Ray cluster can grow to, ask the autoscaler for it,
and wait until it is there.

An autoscaling cluster (KubeRay with ``enableInTreeAutoscaling``, a GPU worker group at
``minReplicas: 0``) has, before a run, only its minimum: say 8 CPUs and no GPU. Checking a run
against that refuses every GPU run, and ``clients_per_actor: auto`` sizes it to the minimum. So:

* the target (:func:`cluster_target`) is what the cluster can grow to: per resource, the larger of
  what it has now and ``resources.cluster_max_cpus`` / ``cluster_max_gpus`` / ``cluster_max_memory_gb``
  (what the RayJob passes: its worker groups' ``maxReplicas`` x each pod's share, plus the head's;
  without ``cluster_max_memory_gb``, a cluster that grows in CPUs or GPUs has unknown memory, checked
  once the new nodes are there).
  Ray 2.58 has no public, reliable way for a driver to read the autoscaler's node-group maxima:
  ``ray._private.state.state.get_max_resources_from_cluster_config()`` reads a cluster config that
  only a platform reporting it over ``ReportClusterConfig`` writes, and neither Ray's own v1/v2
  autoscaler nor KubeRay's does (read in 2.58's source), so with the keys unset the target is the
  current cluster and nothing changes;
* ``clients_per_actor: auto`` sizes to the target (``raysim.runtime.packing.plan_actors``);
* a run that fits the cluster as it is starts as before, without asking for anything; one that fits
  only the target is checked against the target's totals (no node is known yet: the per-node check
  runs once the nodes are there), then the autoscaler is asked for the run's actors
  (``ray.autoscaler.sdk.request_resources`` with one bundle per actor) and the run waits, at most
  ``resources.scale_wait_s``, until the cluster as it is passes the full resource check
  (``actors.placement.check_resources``, per node included), printing progress on stderr; past the
  deadline it stops with a ``ConfigError`` (exit 2) naming what was asked, what arrived and the knobs.

``request_resources`` is persistent (until the next call) and cluster-wide (a later call from any
driver replaces it): the run withdraws its request (:func:`release`) once its actors hold the
resources, so that an idle long-lived cluster can shrink again after the run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import ray

from actors.placement import check_resources
from raysim.config import ConfigError
from raysim.runtime.backend import Share

EPS = 1e-9
POLL_S = 1.0  # how often the cluster's resources are read while waiting
PROGRESS_S = 15.0  # how often a progress line is printed while waiting

Bundle = dict[str, float]
Echo = Callable[[str], None]


def stderr_line(line: str) -> None:
    """Where progress goes by default: stderr, flushed (a RayJob's log shows it at once)."""
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Limits:
    """What the config says the cluster can grow to (None: what it has now) and the wait for it."""

    cpus: float | None = None
    gpus: float | None = None
    memory_mb: float | None = None
    wait_s: float = 600.0

    @classmethod
    def of(cls, resources: object) -> Limits:
        """From a ``ResourcesConfig`` (or anything with its ``cluster_max_*`` / ``scale_wait_s``)."""
        mem = getattr(resources, "cluster_max_memory_gb", None)
        return cls(
            cpus=getattr(resources, "cluster_max_cpus", None),
            gpus=getattr(resources, "cluster_max_gpus", None),
            memory_mb=None if mem is None else float(mem) * 1024,
            wait_s=float(getattr(resources, "scale_wait_s", 600.0)),
        )

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.cpus, self.gpus, self.memory_mb))


def _grow(have: float | None, most: float | None) -> float | None:
    if most is None:
        return have
    return max(have or 0.0, float(most))


def cluster_target(current: Share, limits: Limits) -> Share:
    """What the cluster can grow to: per resource the larger of what it has now and the limit the
    config gives. When it grows, its nodes are unknown (empty: the resource check then checks the
    totals only) and so is its memory unless ``cluster_max_memory_gb`` says it (new CPU or GPU
    nodes bring memory of their own: it is checked once they are there)."""
    cpus = float(_grow(current.cpus, limits.cpus) or 0.0)
    gpus = float(_grow(current.gpus, limits.gpus) or 0.0)
    memory = _grow(current.memory_mb, limits.memory_mb)
    grows = cpus > current.cpus + EPS or gpus > current.gpus + EPS
    if not grows and (memory or 0.0) <= (current.memory_mb or 0.0) + EPS:
        return current
    if limits.memory_mb is None:
        memory = None
    return Share(cpus=cpus, gpus=gpus, memory_mb=memory, nodes=())


@dataclass(frozen=True)
class RunAsk:
    """What a run's actors ask of Ray (the arguments of ``check_resources``)."""

    num_actors: int
    num_cpus: float
    num_gpus: float
    server_cpus: float
    server_gpus: float
    actor_memory_mb: float = 0.0

    def check(self, share: Share, grown_from: Share | None = None) -> None:
        check_resources(
            share,
            self.num_actors,
            self.num_cpus,
            self.num_gpus,
            self.server_cpus,
            self.server_gpus,
            self.actor_memory_mb,
            grown_from=grown_from,
        )

    def fits(self, share: Share) -> bool:
        try:
            self.check(share)
        except ConfigError:
            return False
        return True

    def bundles(self, memory: bool) -> list[Bundle]:
        """One bundle per actor, the server's first (an actor asking for nothing: none); with
        ``memory``, each also asks for its ``actor_memory_mb`` of Ray's ``memory`` resource."""
        mem = self.actor_memory_mb * 2**20 if memory and self.actor_memory_mb > 0 else 0.0
        server = _bundle(self.server_cpus, self.server_gpus, mem)
        client = _bundle(self.num_cpus, self.num_gpus, mem)
        out = [server] if server else []
        if client:
            out += [dict(client) for _ in range(self.num_actors)]
        return out


def _bundle(cpus: float, gpus: float, memory_bytes: float = 0.0) -> Bundle:
    out: Bundle = {}
    if cpus > 0:
        out["CPU"] = float(cpus)
    if gpus > 0:
        out["GPU"] = float(gpus)
    if memory_bytes > 0:
        out["memory"] = float(int(memory_bytes))
    return out


def describe(bundles: Sequence[Mapping[str, float]]) -> str:
    """Bundles grouped by shape, with the totals: ``4 x {CPU: 1, GPU: 0.5} (4 CPUs, 2 GPUs)``."""
    if not bundles:
        return "nothing"
    shapes: dict[tuple[tuple[str, float], ...], int] = {}
    for b in bundles:
        key = tuple(sorted(b.items()))
        shapes[key] = shapes.get(key, 0) + 1

    def shape(key: tuple[tuple[str, float], ...]) -> str:
        return "{" + ", ".join(f"{k}: {_amount(k, v)}" for k, v in key) + "}"

    parts = " + ".join(f"{n} x {shape(k)}" for k, n in shapes.items())
    return f"{parts} ({_totals(_sum(bundles))})"


def _amount(key: str, value: float) -> str:
    return f"{value / 2**30:.1f} GB" if key == "memory" else f"{value:g}"


def _sum(bundles: Sequence[Mapping[str, float]]) -> Bundle:
    out: Bundle = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out


def _totals(res: Mapping[str, float]) -> str:
    parts = [f"{res.get('CPU', 0.0):g} CPUs", f"{res.get('GPU', 0.0):g} GPUs"]
    if "memory" in res:
        parts.append(f"{res['memory'] / 2**30:.1f} GB memory")
    return ", ".join(parts)


def covers(have: Mapping[str, float], bundles: Sequence[Mapping[str, float]]) -> bool:
    """Whether resource totals ``have`` (``ray.cluster_resources()``) cover the bundles' sum."""
    return all(have.get(k, 0.0) + EPS >= v for k, v in _sum(bundles).items())


# -- talking to the autoscaler (the tests replace these two) -----------------------------------


def request(bundles: Sequence[Mapping[str, float]]) -> None:
    """Ask the autoscaler for room for ``bundles`` (persistent, cluster-wide: replaces any earlier
    request); an empty list withdraws the request."""
    asked = [dict(b) for b in bundles]
    if ray.util.client.ray.is_connected():  # Ray Client (ray://): this process has no GCS client of
        # its own, which request_resources needs; a task on the cluster asks for it
        ray.get(ray.remote(num_cpus=0)(_request_here).remote(asked))
    else:
        _request_here(asked)


def _request_here(bundles: list[Bundle]) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)


def cluster_resources() -> dict[str, float]:
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def release() -> None:
    """Withdraw this driver's request (the cluster may shrink again once its nodes are idle)."""
    request([])


def request_and_wait(
    bundles: Sequence[Mapping[str, float]],
    wait_s: float,
    arrived: Callable[[], bool],
    what: str = "the run",
    echo: Echo = stderr_line,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Ask the autoscaler for ``bundles`` and wait until ``arrived()`` (the cluster as it is now
    holds them), at most ``wait_s`` seconds, with a progress line on stderr every ``PROGRESS_S``.
    Returns the seconds waited. Past the deadline the request is withdrawn and ``ConfigError``
    says what was asked, what the cluster has and what to change."""
    asked = describe(bundles)
    request(bundles)
    t0 = clock()
    echo(
        f"raysim: asked the Ray autoscaler for {what}: {asked}; waiting up to {wait_s:g} s (resources.scale_wait_s)"
    )
    next_line = t0 + PROGRESS_S
    while not arrived():
        now = clock()
        if now - t0 >= wait_s:
            release()
            raise ConfigError(
                f"the Ray autoscaler did not provide {what} within resources.scale_wait_s={wait_s:g} s: "
                f"asked for {asked}; the cluster has {_totals(cluster_resources())}. Raise "
                "resources.scale_wait_s if its nodes are slow to start (GPU nodes often take minutes), "
                "check that the worker groups' maxReplicas allow it and that their pods can be scheduled "
                "(kubectl get pods; kubectl describe raycluster), or lower resources.cluster_max_cpus / "
                "cluster_max_gpus / cluster_max_memory_gb to what the cluster can really reach"
            )
        if now >= next_line:
            echo(
                f"raysim: waiting for the autoscaler ({now - t0:.0f} s of {wait_s:g} s): the cluster has "
                f"{_totals(cluster_resources())}, {what} needs {_totals(_sum(bundles))}"
            )
            next_line = now + PROGRESS_S
        sleep(POLL_S)
    waited = clock() - t0
    echo(f"raysim: the cluster holds {what} after {waited:.0f} s: {_totals(cluster_resources())}")
    return waited


def ensure_room(current: Callable[[], Share], ask: RunAsk, limits: Limits, echo: Echo = stderr_line) -> bool:
    """Refuse a run that can never fit, else make sure the cluster holds it now: as before when
    it already fits (or no limit is set: the current cluster is all there is); else check it
    against :func:`cluster_target`, ask the autoscaler for its actors and wait. True when a
    request was made (the caller withdraws it with :func:`release` once its actors are placed).
    ``current()`` reads the cluster's resources as they are now (``RayBackend.share``)."""
    now = current()
    if not limits.any or ask.fits(now):
        ask.check(now)  # fits, or refused exactly as without autoscaling
        return False
    target = cluster_target(now, limits)
    if not target.nodes:  # it grows: the totals it can reach must hold the run
        ask.check(target, grown_from=now)
    else:  # nothing to grow into: refused with the current cluster's numbers
        ask.check(now)
    try:
        request_and_wait(
            ask.bundles(memory=limits.memory_mb is not None),
            limits.wait_s,
            lambda: ask.fits(current()),
            what=f"the server and {ask.num_actors} client actors",
            echo=echo,
        )
    except ConfigError as timeout:
        try:
            ask.check(current())
        except ConfigError as why:  # what still does not fit (a node too small, the memory ...)
            raise ConfigError(f"{timeout}\nthe resource check on the cluster as it is now: {why}") from None
        raise
    return True
