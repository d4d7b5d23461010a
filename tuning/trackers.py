"""Ray Tune's own logger callbacks for a sweep whose base experiment names ``output.trackers``.

The trials run without raysim's trackers (``tuning.trainable.trial_config`` drops them); the sweep
logs them instead: TensorBoard event files in each trial directory (``TBXLoggerCallback``), one
MLflow run per trial (``MLflowLoggerCallback``) in ``output.mlflow_uri`` (default
``SWEEP_DIR/mlflow.db``), experiment ``output.mlflow_experiment`` (default the sweep's name). Each
reported round goes in at step = Tune's iteration (the round, for a trial that did not start from
another trial's checkpoint), the trial's knobs as params. Imported only when a sweep has trackers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.air._internal.mlflow import _MLflowLoggerUtil
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.logger import TBXLoggerCallback

from raysim.runtime.trackers import MLFLOW_DB, mlflow_experiment


class MLflowCallback(MLflowLoggerCallback):  # type: ignore[misc]
    """Tune's MLflow callback, pickled without the ``mlflow`` module its helper holds: Tune pickles
    callbacks into the sweep state (``tuner.pkl``), where cloudpickle would store the module as an
    import by name, which ``tuning.tune_state`` refuses to let ``--resume`` load. The helper is left
    out and made again when the state is loaded."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("mlflow_util", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.mlflow_util = _MLflowLoggerUtil()


def tracker_callbacks(output: dict[str, Any], sweep_name: str, directory: Path) -> list[Any]:
    """The callbacks for the base's ``output`` section (none when it names no tracker)."""
    names = list(output.get("trackers") or [])
    callbacks: list[Any] = []
    if "tensorboard" in names:
        callbacks.append(TBXLoggerCallback())
    if "mlflow" in names:
        from mlflow.tracking import MlflowClient

        uri = output.get("mlflow_uri") or f"sqlite:///{directory / MLFLOW_DB}"
        name = output.get("mlflow_experiment") or sweep_name
        # made here so that a local store keeps its artifact root in the sweep directory
        mlflow_experiment(
            MlflowClient(tracking_uri=uri), name, None if output.get("mlflow_uri") else directory
        )
        callbacks.append(
            MLflowCallback(tracking_uri=uri, experiment_name=name, tags={"raysim.sweep": str(directory)})
        )
    return callbacks
