"""``plan_actors``, the one actor-count rule, on literal cases (each checked by hand in its comment)."""

import pytest

from raysim.config import ResourcesConfig
from raysim.runtime.packing import ActorPlan, follows_resources, plan_actors


def res(**kw) -> ResourcesConfig:
    return ResourcesConfig(**kw)


@pytest.mark.parametrize(
    ("kw", "clients", "call", "actors", "rule"),
    [
        # pooled: one client holds every shard, whatever the resources say
        ({"clients_per_actor": 3}, 100, {"pooled": True, "cpus": 64}, 1, "pooled"),
        ({"num_actors": 8}, 100, {"pooled": True}, 1, "pooled"),
        # clients_per_actor N: ceil(100 / 7) = 15, the cluster plays no part
        ({"clients_per_actor": 7}, 100, {"cpus": 2, "gpus": 0}, 15, "clients_per_actor"),
        ({"clients_per_actor": 1}, 10, {}, 10, "clients_per_actor"),
        # num_actors: min(clients, num_actors)
        ({"num_actors": 3, "server_cpus": 1}, 50, {"cpus": 2}, 3, "num_actors"),
        ({"num_actors": 50}, 20, {}, 20, "num_actors"),
        # auto, CPUs: 2 CPUs / 1 = 2; beside a 1-CPU server (4 - 1.5) / 0.5 = 5
        ({}, 100, {"cpus": 2, "gpus": 0}, 2, "resources"),
        ({"server_cpus": 1.5, "num_cpus": 0.5}, 50, {"cpus": 4, "gpus": 0}, 5, "resources"),
        ({"server_cpus": 1}, 50, {"cpus": 2, "gpus": 0}, 1, "resources"),
        # at least one, even when none fits (the backend's check then refuses with the numbers)
        ({"server_cpus": 4}, 50, {"cpus": 2, "gpus": 0}, 1, "resources"),
        # never more than the clients: 64 CPUs, 3 clients
        ({}, 3, {"cpus": 64, "gpus": 0}, 3, "resources"),
        # auto, GPUs: 2 / 0.25 = 8 (not 7.99); beside a 1-GPU server (2 - 1) / 0.25 = 4 < 15 CPUs' worth
        ({"num_gpus": 0.25, "num_cpus": 0.5}, 100, {"cpus": 16, "gpus": 2}, 8, "resources"),
        ({"num_gpus": 0.25, "server_gpus": 1, "server_cpus": 1}, 50, {"cpus": 16, "gpus": 2}, 4, "resources"),
        # serial backend: the server is no actor and holds nothing back, 2 / 1 = 2
        ({"server_cpus": 1, "backend": "serial"}, 50, {"cpus": 2, "gpus": 0}, 2, "resources"),
        # nothing known: min(clients, 2); with a per-actor default (k8s): min(ceil(N / 50), cohort)
        ({}, 100, {}, 2, "unsized"),
        ({}, 1, {}, 1, "unsized"),
        ({}, 120, {"per_actor_default": 50, "cohort": 10}, 3, "per_actor_default"),
        ({}, 1_000_000, {"per_actor_default": 50, "cohort": 100}, 100, "per_actor_default"),
        # actors that ask for no CPU nor GPU fill nothing: the unsized default
        ({"num_cpus": 0}, 100, {"cpus": 8, "gpus": 0}, 2, "unsized"),
    ],
)
def test_plan_actors_counts(kw, clients, call, actors, rule):
    plan = plan_actors(res(**kw), clients, **call)
    assert (plan.actors, plan.rule) == (actors, rule)


def test_the_plan_says_what_each_actor_holds_and_costs():
    plan = plan_actors(res(num_cpus=0.5, num_gpus=0.25, server_cpus=1, actor_memory_mb=400), 10, cpus=3)
    # (3 - 1) / 0.5 = 4 actors of ceil(10 / 4) = 3 clients
    assert plan == ActorPlan(
        actors=4,
        clients_per_actor=3,
        cpus=0.5,
        gpus=0.25,
        server_cpus=1.0,
        server_gpus=0.0,
        memory_mb=400.0,
        rule="resources",
        clients=10,
    )
    assert (plan.total_cpus, plan.total_gpus, plan.total_memory_mb) == (3.0, 1.0, 2000.0)  # 5 workers x 400
    serial = plan_actors(res(backend="serial", server_cpus=1, server_gpus=1), 5, pooled=True)
    assert (serial.actors, serial.clients_per_actor, serial.server_cpus, serial.server_gpus) == (
        1,
        1,
        0.0,
        0.0,
    )


@pytest.mark.parametrize(
    ("kw", "clients", "call", "text"),
    [
        (
            {"clients_per_actor": 7},
            100,
            {},
            "A = ceil(100 / 7) = 15 (--flag: resources.clients_per_actor = 7)",
        ),
        ({"num_actors": 50}, 20, {}, "A = 20 (--flag: resources.num_actors = 50, at most the 20 clients)"),
        ({}, 5, {"pooled": True}, "A = 1: fedx pools every client's data into one client"),
        (
            {},
            120,
            {"per_actor_default": 50, "cohort": 10},
            "A = ceil(120 / 50) = 3 (clients_per_actor: auto without num_actors: one actor per 50 clients, "
            "no more than the 10 a round trains)",
        ),
        (
            {},
            10_000,
            {"per_actor_default": 50, "cohort": 100},
            "A = 100, the clients a round trains (rounds.clients_per_round), not ceil(10000 / 50) = 200 "
            "(clients_per_actor: auto without num_actors): more actors than the cohort would idle every "
            "round; each holds its own ~100 clients",
        ),
    ],
)
def test_the_plan_explains_its_arithmetic(kw, clients, call, text):
    assert plan_actors(res(**kw), clients, **call).explain("--flag", "fedx") == text


def test_only_auto_without_num_actors_follows_the_resources():
    assert follows_resources(res())
    assert not follows_resources(res(num_actors=2))
    assert not follows_resources(res(clients_per_actor=4))
