"""A sweep whose base has output.trackers logs its trials with Ray Tune's own TensorBoard and MLflow
callbacks; read back with their readers, they hold each trial's rounds.parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raysim.config import ConfigError
from tests.conftest import tiny_config
from tuning.spec import spec_from_dict
from tuning.sweep import run_sweep
from tuning.tune_state import check_pickle, check_tune_state

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def test_tune_callbacks_log_every_trial_round_as_its_rounds_parquet(ray_cluster, tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    base = tiny_config(tmp_path, rounds__num_rounds=2, output__trackers=["tensorboard", "mlflow"]).to_dict()
    raw = {
        "name": "tracked",
        "base": base,
        "mode": "grid",
        "storage_path": str(tmp_path / "sweeps"),
        "space": {"local.lr": {"grid": [0.02, 0.1]}},
    }
    out = run_sweep(spec_from_dict(raw, "(test spec)", tmp_path), echo=lambda s: None, verbose=0)
    assert not out.errors
    check_tune_state(out.directory)  # the callbacks in tuner.pkl let `raysim tune --resume` load it
    table = pd.read_parquet(out.directory / "trials.parquet")

    client = MlflowClient(f"sqlite:///{out.directory / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracked")  # the sweep's name
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    for trial_id, rows in table.groupby("trial_id"):
        trial_dir = out.directory / f"trial_{trial_id}"
        rounds = pd.read_parquet(trial_dir / "run" / "rounds.parquet")
        assert not (trial_dir / "run" / "mlflow.db").exists()  # no second, per-trial tracking
        want = [(int(r), float(v)) for r, v in zip(rounds["round"], rounds["test_accuracy"], strict=True)]
        assert want == [(int(r), float(v)) for r, v in zip(rows["round"], rows["test_accuracy"], strict=True)]

        (run,) = [r for r in runs if r.data.tags["trial_name"].endswith(trial_id)]
        history = client.get_metric_history(run.info.run_id, "test_accuracy")
        assert sorted((m.step, m.value) for m in history) == want
        assert float(run.data.params["local.lr"]) == rows["config/local.lr"].iloc[0]

        acc = EventAccumulator(str(trial_dir), size_guidance={"scalars": 0})
        acc.Reload()
        tb = acc.Scalars("ray/tune/test_accuracy")
        assert [e.step for e in tb] == [r for r, _ in want]
        np.testing.assert_allclose([e.value for e in tb], [v for _, v in want], rtol=1e-6)


def test_a_missing_tracker_extra_refuses_the_sweep_before_its_directory(tmp_path, monkeypatch):
    from raysim.runtime import trackers

    monkeypatch.setitem(trackers.EXTRAS, "tensorboard", ("raysim_no_such_module", "tensorboard"))
    base = tiny_config(tmp_path, rounds__num_rounds=1, output__trackers=["tensorboard"]).to_dict()
    raw = {
        "name": "t",
        "base": base,
        "mode": "grid",
        "storage_path": str(tmp_path / "sweeps"),
        "space": {"local.lr": {"grid": [0.1]}},
    }
    with pytest.raises(ConfigError, match=r"pip install 'raysim\[tensorboard\]'"):
        run_sweep(spec_from_dict(raw, "(test spec)", tmp_path), echo=lambda s: None, verbose=0)
    assert not Path(tmp_path / "sweeps").exists()


def test_the_mlflow_callback_pickles_without_a_module_and_comes_back_whole(tmp_path):
    """Tune pickles its callbacks into tuner.pkl: ours must pass tune_state's check (Ray's own holds
    the mlflow module, which cloudpickle stores as an import by name) and work once loaded."""
    import ray.cloudpickle as cloudpickle
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    from tuning.trackers import tracker_callbacks

    output = {"trackers": ["tensorboard", "mlflow"]}
    callbacks = tracker_callbacks(output, "s", tmp_path)
    check_pickle(cloudpickle.dumps(callbacks), "(callbacks)")
    with pytest.raises(ConfigError, match="subimport"):
        check_pickle(cloudpickle.dumps(MLflowLoggerCallback(tracking_uri="sqlite:///x.db")), "(Ray's)")
    back = cloudpickle.loads(cloudpickle.dumps(callbacks[1]))
    back.setup()
    assert back.mlflow_util.experiment_id is not None
