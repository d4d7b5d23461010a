"""A sweep on an autoscaling cluster (issue 23): one trial's placement group is sized and checked
against what the cluster can grow to (``resources.cluster_max_*``, from the base or ``fixed:``), and
the autoscaler is asked for it before Tune starts. The calls that reach Ray are replaced: no Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors import autoscale
from raysim.config import ConfigError
from tests.conftest import tiny_config
from tuning.resources import check_fits, client_bundle_count, scale_for_trial, trial_resources
from tuning.spec import spec_from_dict
from tuning.sweep import _trainable


class Cluster:
    """8 CPUs, no GPU until asked; ``grows``: a GPU node (4 CPUs, 1 GPU) arrives once asked."""

    def __init__(self, grows: bool = True) -> None:
        self.requests: list[list[dict[str, float]]] = []
        self.grows = grows

    def request(self, bundles: Any) -> None:
        self.requests.append([dict(b) for b in bundles])

    def resources(self) -> dict[str, float]:
        asked = any(self.requests)
        return {"CPU": 12.0, "GPU": 1.0} if asked and self.grows else {"CPU": 8.0, "GPU": 0.0}


@pytest.fixture
def cluster(monkeypatch) -> Cluster:
    c = Cluster()
    monkeypatch.setattr(autoscale, "request", c.request)
    monkeypatch.setattr(autoscale, "cluster_resources", c.resources)
    monkeypatch.setattr(autoscale, "POLL_S", 0.001)
    return c


GPU_TRIAL = {
    "resources__backend": "ray",
    "resources__num_cpus": 1.0,
    "resources__num_gpus": 0.5,
    "resources__actor_memory_mb": 0,
}


def test_a_gpu_trial_is_checked_and_sized_against_what_the_cluster_can_grow_to(tmp_path):
    now = tiny_config(tmp_path, **GPU_TRIAL)
    pgf = trial_resources(now, 8, 0)  # auto packing on 8 CPUs, no GPU: one actor, refused
    assert client_bundle_count(now, pgf) == 1
    with pytest.raises(
        ConfigError, match=r"one trial needs 0.5 GPUs \(1 client actors x 0.5 = 0.5\) but the "
    ):
        check_fits(now, pgf, 8, 0)

    grows = tiny_config(tmp_path, **GPU_TRIAL, resources__cluster_max_gpus=1)
    pgf = trial_resources(grows, 8, 0)  # sized to 1 GPU: min(8 / 1, 1 / 0.5) = 2 actors
    assert pgf.bundles == [{"CPU": 1.0, "GPU": 0.5}] * 2
    check_fits(grows, pgf, 8, 0)

    short = tiny_config(tmp_path, **GPU_TRIAL, resources__num_actors=3, resources__cluster_max_gpus=1)
    pgf = trial_resources(short, 8, 0)
    with pytest.raises(ConfigError) as err:
        check_fits(short, pgf, 8, 0)
    msg = str(err.value)
    assert "one trial needs 1.5 GPUs (3 client actors x 0.5 = 1.5)" in msg, msg
    assert "the Ray cluster can grow to 1 (resources.cluster_max_gpus; it has 0 now)" in msg, msg


def test_the_autoscaler_is_asked_for_one_trial_and_the_request_withdrawn(cluster, tmp_path):
    cfg = tiny_config(tmp_path, **GPU_TRIAL, resources__cluster_max_gpus=1)
    pgf = trial_resources(cfg, 8, 0)
    lines: list[str] = []
    assert scale_for_trial(cfg, pgf, echo=lines.append)
    assert cluster.requests == [[{"CPU": 1.0, "GPU": 0.5}] * 2, []]
    assert "one trial's placement group: 2 x {CPU: 1, GPU: 0.5} (2 CPUs, 1 GPUs)" in lines[0]
    # a trial the cluster holds already: nothing asked
    cpu = tiny_config(
        tmp_path, resources__backend="ray", resources__num_actors=2, resources__cluster_max_cpus=64
    )
    assert not scale_for_trial(cpu, trial_resources(cpu, 8, 0))
    assert len(cluster.requests) == 2


def test_a_trial_the_autoscaler_never_provides_stops_after_scale_wait_s(cluster, tmp_path):
    cluster.grows = False
    cfg = tiny_config(tmp_path, **GPU_TRIAL, resources__cluster_max_gpus=1, resources__scale_wait_s=0.2)
    with pytest.raises(ConfigError) as err:
        scale_for_trial(cfg, trial_resources(cfg, 8, 0), echo=lambda s: None)
    msg = str(err.value)
    assert "did not provide one trial's placement group within resources.scale_wait_s=0.2 s" in msg, msg
    assert "the cluster has 8 CPUs, 0 GPUs" in msg
    assert cluster.requests[-1] == []  # withdrawn


def _spec(tmp_path: Path, **over: Any):
    base = tiny_config(tmp_path, rounds__num_rounds=1, **GPU_TRIAL).to_dict()
    raw: dict[str, Any] = {
        "name": "gpu",
        "mode": "grid",
        "base": base,
        "storage_path": str(tmp_path / "sweeps"),
        "space": {"local.lr": {"grid": [0.05, 0.1]}},
        **over,
    }
    return spec_from_dict(raw, "(test spec)", tmp_path, probe=False)


def test_a_sweep_with_cluster_max_in_fixed_asks_before_tune_starts_and_one_without_is_refused(
    cluster, tmp_path
):
    with pytest.raises(ConfigError, match=r"but the Ray cluster has 0: it could never start"):
        _trainable(_spec(tmp_path), 8.0, 0.0)
    assert cluster.requests == []

    loaded = _spec(tmp_path, fixed={"resources.cluster_max_gpus": 1})
    trainable = _trainable(loaded, 8.0, 0.0)
    assert cluster.requests == [[{"CPU": 1.0, "GPU": 0.5}] * 2, []]  # asked, held, withdrawn
    assert trainable is not None
