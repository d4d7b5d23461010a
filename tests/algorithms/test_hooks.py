"""Gradient hooks on the vectors Ray hands a client: read-only views of the object store.

PyTorch warns ("The given NumPy array is not writable ... undefined behavior") when a tensor is
made to share a read-only array's memory. A hook that did so printed that warning from every
actor of every FedProx and DSAC run, which a user cannot tell from a real problem. PyTorch gives
that warning once per process: ``torch.set_warn_always`` makes every test here see it again."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from raysim.algorithms import hooks
from raysim.runtime.serial import SerialPool
from tests.conftest import tiny_config
from tests.helpers import experiment


@pytest.fixture(autouse=True)
def warn_always():
    before = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    yield
    torch.set_warn_always(before)


def _read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda v: hooks.proximal(v, 0.5), [0.5 * (3 - 1), 0.5 * (2 - 2)]),
        (lambda v: hooks.correction(v), [1.0, 2.0]),
        (lambda v: hooks.masked(v), [0.0, 0.0]),  # g starts at zero: zero times anything
    ],
    ids=["proximal", "correction", "masked"],
)
def test_a_hook_on_a_read_only_vector_warns_nothing_and_converts_it_once(monkeypatch, make, expected):
    calls = []
    as_tensor = torch.as_tensor

    def counting(*a, **kw):
        calls.append(1)
        return as_tensor(*a, **kw)

    monkeypatch.setattr(torch, "as_tensor", counting)
    hook = make(_read_only(np.array([1.0, 2.0], np.float32)))
    w = torch.tensor([3.0, 2.0])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(5):  # five training steps
            g = torch.zeros(2)
            hook(w, g)
    assert [str(r.message) for r in rec] == []
    torch.testing.assert_close(g, torch.tensor(expected))
    assert len(calls) == 1  # one conversion per hook, not one per step


@pytest.fixture
def ray_like_broadcast(monkeypatch):
    """Serial clients get the server's arrays as they are; Ray's get read-only views of the object
    store. Hand serial clients read-only views too, so that a serial run meets what an actor does."""
    run = SerialPool.run

    def read_only_run(self, round_idx, tasks, broadcast, deadline_s):
        return run(self, round_idx, tasks, {k: _read_only(v) for k, v in broadcast.items()}, deadline_s)

    monkeypatch.setattr(SerialPool, "run", read_only_run)


@pytest.mark.parametrize(
    "algo,extra",
    [
        ("fedprox", {"algorithm__mu": 0.01}),
        # the shipped DSAC config's sub-models (cnn-small has 3 layer blocks: 5 would warn, rightly)
        ("dsac", {"data__public_fraction": 0.1, "algorithm__num_submodels": 3}),
    ],
)
def test_fedprox_and_dsac_runs_print_no_warning(ray_like_broadcast, tmp_path: Path, algo, extra):
    cfg = tiny_config(tmp_path, algorithm__name=algo, rounds__num_rounds=2, **extra)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        exp = experiment(cfg)
        try:
            exp.run()
        finally:
            exp.close()
    assert [f"{r.filename}:{r.lineno}: {r.message}" for r in rec] == []
    assert exp.next_round == 3  # both rounds ran
