"""output.trackers: TensorBoard and MLflow get each round's row and the config, read back here with
their own readers (tensorboard's EventAccumulator, MLflow's client) and compared with rounds.parquet."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from raysim.config import ConfigError
from raysim.runtime import trackers
from tests.conftest import tiny_config
from tests.helpers import experiment, resume


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def mlflow_run(run_dir: Path):
    from mlflow.tracking import MlflowClient

    state = json.loads((run_dir / trackers.MLFLOW_STATE).read_text())
    client = MlflowClient(state["tracking_uri"])
    return client, client.get_run(state["run_id"])


def expected(rounds: pd.DataFrame) -> dict[str, list[tuple[int, float]]]:
    """rounds.parquet's numeric columns as (round, value) series, without the missing cells."""
    out = {}
    for col in rounds.columns:
        if col == "round" or not pd.api.types.is_numeric_dtype(rounds[col]):
            continue
        pairs = [(int(r), float(v)) for r, v in zip(rounds["round"], rounds[col], strict=True)]
        out[col] = [(r, v) for r, v in pairs if math.isfinite(v)]
    return {k: v for k, v in out.items() if v}


def run(cfg, stop_after: int | None = None) -> Path:
    with experiment(cfg) as exp:
        for report in exp.rounds():
            if report.round == stop_after:
                break
        assert exp.run_dir is not None
        return exp.run_dir


def test_tensorboard_and_mlflow_read_back_every_round_of_rounds_parquet(tmp_path):
    cfg = tiny_config(tmp_path, output__trackers=["tensorboard", "mlflow"], rounds__eval_every=2)
    run_dir = run(cfg)
    rounds = pd.read_parquet(run_dir / "rounds.parquet")
    want = expected(rounds)
    assert [r for r, _ in want["test_accuracy"]] == [2, 3]  # evaluated rounds only (and the last)

    tb = tensorboard_scalars(run_dir / trackers.TENSORBOARD_DIR)
    assert set(tb) == set(want)
    for key, series in want.items():
        assert [s for s, _ in tb[key]] == [r for r, _ in series], key
        np.testing.assert_allclose([v for _, v in tb[key]], [v for _, v in series], rtol=1e-6, err_msg=key)

    client, mlrun = mlflow_run(run_dir)
    assert mlrun.info.status == "FINISHED"
    assert set(mlrun.data.metrics) == set(want)
    for key, series in want.items():
        got = sorted((m.step, m.value) for m in client.get_metric_history(mlrun.info.run_id, key))
        assert got == series, key  # doubles: exactly rounds.parquet's
    assert mlrun.data.params == trackers.flat_params(cfg)
    assert mlrun.data.params["local.lr"] == "0.05"
    assert client.get_experiment(mlrun.info.experiment_id).name == "tiny"


def test_a_resumed_run_continues_its_mlflow_run_and_tensorboard_drops_the_replayed_rounds(tmp_path):
    cfg = tiny_config(
        tmp_path, output__trackers=["tensorboard", "mlflow"], rounds__checkpoint_every=2, rounds__num_rounds=4
    )
    run_dir = run(cfg, stop_after=3)  # round 3 logged everywhere, the checkpoint is round 2's
    with resume(run_dir) as exp:
        for _ in exp.rounds():  # rounds 3 (again) and 4
            pass
    want = expected(pd.read_parquet(run_dir / "rounds.parquet"))["test_accuracy"]
    assert [r for r, _ in want] == [1, 2, 3, 4]
    tb = tensorboard_scalars(run_dir / trackers.TENSORBOARD_DIR)["test_accuracy"]
    assert [s for s, _ in tb] == [1, 2, 3, 4]  # round 3 once: purged when the resumed run logged it
    np.testing.assert_allclose([v for _, v in tb], [v for _, v in want], rtol=1e-6)
    client, mlrun = mlflow_run(run_dir)
    assert len(client.search_runs([mlrun.info.experiment_id])) == 1
    history = client.get_metric_history(mlrun.info.run_id, "test_accuracy")
    assert sorted({(m.step, m.value) for m in history}) == want  # round 3 twice, the same value


def test_a_missing_extra_is_one_exit_2_message_naming_the_pip_command(tmp_path, monkeypatch):
    from raysim.cli import app

    monkeypatch.setitem(trackers.EXTRAS, "mlflow", ("raysim_no_such_module", "mlflow"))
    cfg = tiny_config(tmp_path, output__trackers=["mlflow"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.model_dump_json())
    for command in (["run", str(path)], ["validate", str(path)]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "pip install 'raysim[mlflow]'" in result.output
        assert "output.trackers" in result.output
    assert not (tmp_path / "runs").exists()  # refused before the run directory appears
    with pytest.raises(ConfigError, match="raysim_no_such_module"):
        trackers.check_trackers(["mlflow"])


def test_trackers_are_named_once_each(tmp_path):
    with pytest.raises(ConfigError, match="twice"):
        tiny_config(tmp_path, output__trackers=["mlflow", "mlflow"])
    with pytest.raises(ConfigError, match="output.trackers"):
        tiny_config(tmp_path, output__trackers=["wandb"])
