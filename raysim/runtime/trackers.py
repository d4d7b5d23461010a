"""Experiment trackers: each round's metrics and the config also go to TensorBoard and/or MLflow.

``output.trackers`` names them; the run directory's Parquet files stay the record (trackers are
views for the tools people already use). What a tracker gets each round is the round's row of
``rounds.parquet`` less what is not a finite number (a round without evaluation has no accuracy), at
step = the round; the config goes in once, flattened to dotted keys (``local.lr``).

* ``tensorboard``: event files in ``RUN_DIR/tensorboard`` (tensorboardX, a Ray Tune dependency);
  the config as a text summary. A resumed run purges the rounds it replays (``purge_step``).
* ``mlflow``: one MLflow run per raysim run, in ``output.mlflow_uri`` (default a SQLite store,
  ``RUN_DIR/mlflow.db``, which ``mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db`` opens),
  experiment ``output.mlflow_experiment`` (default the experiment's name); the config as params. A
  resumed run continues the same MLflow run (its id is kept in ``RUN_DIR/mlflow.json``).

Sweeps log their trials with Ray Tune's own callbacks instead (``tuning.sweep``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from raysim.atomic import atomic_write_text
from raysim.config import ConfigError, ExperimentConfig

# tracker -> (the module it needs, the extra that installs it)
EXTRAS = {"tensorboard": ("tensorboardX", "tensorboard"), "mlflow": ("mlflow", "mlflow")}
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DB = "mlflow.db"
MLFLOW_STATE = "mlflow.json"  # the MLflow run this run directory logs to (for resume)


def check_trackers(names: Iterable[str], field: str = "output.trackers") -> None:
    """A ConfigError naming the extra to install when a tracker's library is missing (before any
    run directory exists)."""
    for name in names:
        module, extra = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"{field}: {name} needs the {module} package, which is not installed here: "
                f"pip install 'raysim[{extra}]' (or drop {name} from {field})"
            )


def round_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, finite cells of a round's row (booleans as 0/1), without ``round`` itself."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key == "round":
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool | int | float) and math.isfinite(float(value)):
            out[str(key)] = float(value)
    return out


def flat_params(cfg: ExperimentConfig) -> dict[str, str]:
    """The config as dotted keys and text values (``local.lr: "0.05"``), as trackers take params."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = json.dumps(node) if isinstance(node, list | dict) else str(node)

    walk("", cfg.to_dict())
    return out


class Tracker(Protocol):
    def log_round(self, step: int, values: Mapping[str, float]) -> None: ...
    def rewind(self, upto_round: int) -> None:
        """The run goes back to ``upto_round`` (a resume or a replaced server): the rounds after it
        are logged again."""
        ...

    def close(self) -> None: ...


class TensorBoardTracker:
    def __init__(self, logdir: Path, params: Mapping[str, str]) -> None:
        self.logdir = Path(logdir)
        self.params = dict(params)
        self.writer: Any = None

    def log_round(self, step: int, values: Mapping[str, float]) -> None:
        if self.writer is None:
            from tensorboardX import SummaryWriter

            # purge_step: TensorBoard drops what an earlier writer logged from this round on. The
            # file name has the second it was made in; the suffix keeps a writer made again in the
            # same second (a resume, a replaced server) from overwriting the last one's file, and
            # sorts after it (TensorBoard reads a log's files in name order).
            self.writer = SummaryWriter(
                logdir=str(self.logdir), purge_step=step, filename_suffix=f".{time.time_ns()}"
            )
            table = "\n".join(f"| {k} | {v} |" for k, v in self.params.items())
            self.writer.add_text("config", "| key | value |\n|---|---|\n" + table, global_step=step)
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def rewind(self, upto_round: int) -> None:
        self.close()  # the next round reopens the log with purge_step there

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MLflowTracker:
    def __init__(self, run_dir: Path, uri: str | None, experiment: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        run_dir = Path(run_dir).resolve()
        local = uri is None
        self.uri = uri or f"sqlite:///{run_dir / MLFLOW_DB}"
        self.client: Any = MlflowClient(tracking_uri=self.uri)
        state_path = run_dir / MLFLOW_STATE
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        if state.get("tracking_uri") == self.uri:
            self.run_id = str(state["run_id"])  # a resumed run: the same MLflow run
            return
        exp_id = mlflow_experiment(self.client, experiment, run_dir if local else None)
        run = self.client.create_run(exp_id, run_name=run_dir.name, tags={"raysim.run_dir": str(run_dir)})
        self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        atomic_write_text(state_path, json.dumps({"tracking_uri": self.uri, "run_id": self.run_id}) + "\n")

    def log_round(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def rewind(self, upto_round: int) -> None:
        """MLflow keeps every value logged: the replayed rounds are logged again at their steps
        (the same values: the rounds are deterministic given the checkpoint)."""

    def close(self) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id)
            self.client = None


def mlflow_experiment(client: Any, name: str, local_dir: Path | None) -> str:
    """The id of MLflow experiment ``name``, created when missing (with a local store, its artifact
    root goes in ``local_dir``, not in the current directory where MLflow would put it)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    where = (Path(local_dir) / "mlartifacts").as_uri() if local_dir is not None else None
    return str(client.create_experiment(name, artifact_location=where))


def open_trackers(cfg: ExperimentConfig, run_dir: Path) -> list[Tracker]:
    """The trackers ``cfg.output.trackers`` names, logging to ``run_dir`` (or MLflow's URI)."""
    names: Sequence[str] = cfg.output.trackers
    check_trackers(names)
    params = flat_params(cfg)
    out: list[Tracker] = []
    for name in names:
        if name == "tensorboard":
            out.append(TensorBoardTracker(Path(run_dir) / TENSORBOARD_DIR, params))
        else:
            out.append(
                MLflowTracker(
                    run_dir, cfg.output.mlflow_uri, cfg.output.mlflow_experiment or cfg.name, params
                )
            )
    return out
