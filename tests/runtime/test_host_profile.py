"""RAYSIM_PROFILE_DIR: a host profiles its training calls (benchmarks/fedavg_w1.py --profile)."""

from __future__ import annotations

import os
import pstats

import numpy as np

from tests.helpers import client_hparams


def _run_digits_host(tmp_path, monkeypatch, profile: bool):
    from raysim.algorithms import build_algorithm
    from raysim.algorithms.base import ClientTask
    from raysim.data import build_federation, load_dataset
    from raysim.models.flat import init_params
    from raysim.runtime.host import PROFILE_ENV, ClientHost, HostSpec

    if profile:
        monkeypatch.setenv(PROFILE_ENV, str(tmp_path))
    else:
        monkeypatch.delenv(PROFILE_ENV, raising=False)
    ds = load_dataset("digits")
    fed = build_federation(ds, scheme="dirichlet", num_clients=4, seed=0, alpha=0.5)
    spec = HostSpec(
        model="mlp", input_shape=ds.input_shape, num_classes=ds.num_classes, mean=ds.mean, std=ds.std, seed=0
    )
    host = ClientHost(3, build_algorithm("fedavg"), ds, list(fed.clients), spec)
    params = init_params("mlp", ds.input_shape, ds.num_classes, 0)
    tasks = [ClientTask(client_id=c, model_key="global", hparams=client_hparams(lr=0.1)) for c in (0, 1)]
    replies = [host.run(t, tasks, {"global": params}) for t in (1, 2)]
    return replies


def test_a_host_profiles_its_training_calls_into_the_folder_when_asked(tmp_path, monkeypatch):
    replies = _run_digits_host(tmp_path, monkeypatch, profile=True)
    path = tmp_path / f"host-3-{os.getpid()}.prof"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # one file, both calls summed
    stats = pstats.Stats(str(path))
    fit = [v for k, v in stats.stats.items() if k[2] == "fit" and k[0].endswith("trainer.py")]  # type: ignore[attr-defined]
    assert fit and fit[0][1] == 4  # Trainer.fit: 2 clients x 2 calls
    # profiling changes nothing of the results
    plain = _run_digits_host(tmp_path / "unused", monkeypatch, profile=False)
    for a, b in zip(replies, plain, strict=True):
        np.testing.assert_array_equal(a.partials[0].fixed_delta, b.partials[0].fixed_delta)
    assert not (tmp_path / "unused").exists()


def test_a_host_reports_its_cpu_seconds_beside_its_busy_time(tmp_path, monkeypatch):
    """HostReply.cpu_seconds (rounds.parquet's actor_cpu_max_s): the work, which load does not stretch."""
    for r in _run_digits_host(tmp_path, monkeypatch, profile=False):
        assert 0 < r.cpu_seconds and np.isfinite(r.cpu_seconds)
        assert r.seconds > 0
