"""The check that stands between a sweep directory and Tune's unpickling on ``--resume``: what
raysim's own sweeps pickle passes, anything that would run code (or reach outside the file) is
refused naming the file, and nothing is loaded to find out."""

from __future__ import annotations

import datetime
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import ray.cloudpickle as cloudpickle
import ray.exceptions

from raysim.config import ConfigError
from tuning.sweep import GeneticExplore, _trial_dirname
from tuning.tune_state import check_pickle, check_tune_state, pickle_globals


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Memmap:  # np.memmap(path, mode="w+") would create or truncate any file
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (np.memmap, (str(self.path), np.uint8, "w+", 0, (4,)))


class _Eval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def _variant_state():
    from ray import tune
    from ray.tune.experiment import Experiment

    from tuning.variants import VariantGenerator

    gen = VariantGenerator(random_state=1)
    gen.add_configurations(
        [Experiment("e", run=_trial_dirname, config={"x": tune.grid_search([1, 2])}, storage_path="/tmp")]
    )
    return gen.get_state()


def test_what_raysim_sweeps_pickle_passes():
    import optuna

    for obj in [
        {"a": [1, 2.5, "x", None], "t": (1, 2)},
        np.arange(5.0),
        np.random.default_rng(3),
        datetime.datetime(2026, 1, 1),
        GeneticExplore("local.lr", 0.1, 7),  # PBT's explore step: a class, pickled by name
        optuna.samplers.TPESampler(seed=0),
        optuna.trial.TrialState.COMPLETE,  # an enum member: the class called with its value
        _variant_state(),  # the grid/PBT generator, saved without argparse's function
        # a failed trial's error.pkl: the exception Ray raised (here an actor that was lost)
        ray.exceptions.ActorUnavailableError("The actor is temporarily unavailable", b"\x01" * 16),
    ]:
        check_pickle(cloudpickle.dumps(obj), "ok")


@pytest.mark.parametrize(
    "make,why",
    [
        (lambda m: pickle.dumps(_System(m)), "imports posix.system"),
        (lambda m: cloudpickle.dumps(lambda: os.system(f"touch {m}")), "_make_function"),
        (lambda m: pickle.dumps(_Memmap(m)), "calls numpy.memmap with arguments"),
        (lambda m: pickle.dumps(_Eval()), "imports builtins.eval"),
        (lambda m: b"\x80\x04)\x94h\x00\x8c\x06system\x93.", "computed"),  # STACK_GLOBAL on a tuple
        (lambda m: b"\x80\x02\x82\x01.", "EXT1"),  # the extension registry
        (lambda m: pickle.dumps({"a": np.arange(3)})[:-9], "not a readable pickle"),
        (
            lambda m: cloudpickle.dumps({"raysim": GeneticExplore, "f": lambda: 0}),
            "_make_function",
        ),
    ],
    ids=["os.system", "lambda", "memmap", "eval", "computed-name", "ext-opcode", "truncated", "mixed"],
)
def test_a_pickle_that_could_run_code_is_refused_without_loading_it(tmp_path, make, why):
    marker = tmp_path / "PWNED"
    with pytest.raises(ConfigError, match=why) as err:
        check_pickle(make(marker), "tuner.pkl")
    assert "tuner.pkl: refusing to let Ray Tune load this sweep state" in str(err.value)
    assert not marker.exists() and not any(tmp_path.iterdir())


def test_the_scanner_reports_how_each_import_is_used():
    found = set(pickle_globals(pickle.dumps(datetime.timedelta(days=1))))
    assert ("datetime", "timedelta", "import") in found and ("datetime", "timedelta", "call") in found


def test_a_sweep_directory_is_checked_file_by_file(tmp_path):
    d = tmp_path / "sweep"
    (d / "trial_1").mkdir(parents=True)
    (d / "tuner.pkl").write_bytes(cloudpickle.dumps({"_is_restored": False}))
    (d / "searcher-state.pkl").write_bytes(cloudpickle.dumps(GeneticExplore("local.lr", 0.1, 0)))
    (d / "notes.txt").write_text("not a pickle")
    assert check_tune_state(d) == 2
    (d / "trial_1" / "params.pkl").write_bytes(pickle.dumps(_System(tmp_path / "PWNED")))
    with pytest.raises(ConfigError, match=r"trial_1/params\.pkl"):
        check_tune_state(d)
    assert not (tmp_path / "PWNED").exists()


def test_a_ray_id_that_starts_like_a_pickle_is_not_checked_as_one(tmp_path):
    """Tune's state holds each trial's last result, with Ray ids in hex. A placement_group_id
    "80f0b038..." (1 in 256 starts with 80) was read as a pickle and refused the resume of a sweep
    stopped by Ctrl-C; a real pickle beside it is still checked."""
    d = tmp_path / "sweep"
    d.mkdir()
    result = {"placement_group_id": "80f0b03843d6c22bd273a2402cbf01000000"}
    state = {"trial_data": [[json.dumps({"last_result": result}), cloudpickle.dumps({"a": 1}).hex()]]}
    (d / "experiment_state-1.json").write_text(json.dumps(state))
    assert check_tune_state(d) == 1
    state["trial_data"][0].append(pickle.dumps(_System(tmp_path / "PWNED")).hex())
    (d / "experiment_state-1.json").write_text(json.dumps(state))
    with pytest.raises(ConfigError, match=r"experiment_state-1\.json \(pickled value 2\)"):
        check_tune_state(d)
    assert not (tmp_path / "PWNED").exists()
