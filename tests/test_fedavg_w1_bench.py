"""benchmarks/fedavg_w1.py's tasks are ones a host trains (the plain processes once trained nothing:
their tasks carried a dict for hparams, every client failed and was counted a dropout, unnoticed)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from raysim.algorithms.base import LocalHParams

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def w1():
    spec = importlib.util.spec_from_file_location("fedavg_w1", ROOT / "benchmarks" / "fedavg_w1.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fedavg_w1"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("fedavg_w1", None)


def test_w1_tasks_carry_the_typed_hyperparameters_of_w1(w1):
    tasks = w1.w1_tasks(1)
    assert len(tasks) == 100 and len({t.client_id for t in tasks}) == 100
    hp = tasks[0].hparams
    assert isinstance(hp, LocalHParams)
    assert (hp.epochs, hp.batch_size, hp.lr) == (1, 32, 0.05)


def test_a_reply_with_dropouts_is_an_error_naming_the_first(w1):
    ok = types.SimpleNamespace(dropouts=[], seconds=1.0)
    assert w1.trained(ok, "here") is ok
    bad = types.SimpleNamespace(dropouts=[(7, "error: AttributeError: boom"), (8, "x")], seconds=0.0)
    with pytest.raises(
        RuntimeError, match="here: 2 clients dropped out, e.g. client 7: error: AttributeError: boom"
    ):
        w1.trained(bad, "here")
