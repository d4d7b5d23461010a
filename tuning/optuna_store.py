"""The Optuna study of a sweep (mode optuna), kept in the driver's memory and exported to the
sweep directory's ``optuna.db`` whole, never written in place on the shared volume."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray.tune import Callback


class OptunaExport(Callback):
    """A Tune callback (in the driver) writing the sweep's in-memory Optuna study to ``optuna.db``
    (SQLite, what ``optuna-dashboard`` opens) after every finished trial and at the end: built in a
    local temporary folder, copied next to its destination and renamed over it, so the file on the
    shared volume is always a whole study and no SQLite database is ever written in place there.

    It holds the searcher itself, not its study: a resumed sweep restores the searcher's state
    (its study included) into the same object, which this callback shares through Tune's pickled
    state."""

    def __init__(self, searcher: Any, path: str, study_name: str) -> None:
        self.searcher = searcher
        self.path = str(path)  # a str: the resume's state check allows no pathlib classes
        self.study_name = study_name

    def export(self) -> None:
        import shutil
        import tempfile

        import optuna

        study = getattr(self.searcher, "_ot_study", None)  # OptunaSearch's study (set up at fit)
        if study is None:
            return
        dest = Path(self.path)
        with tempfile.TemporaryDirectory(prefix="raysim-optuna-") as tmp:
            local = Path(tmp) / dest.name
            optuna.copy_study(
                from_study_name=study.study_name,
                from_storage=study._storage,
                to_storage=f"sqlite:///{local}",
                to_study_name=self.study_name,
            )
            part = dest.with_name(f".{dest.name}.part-{os.getpid()}")
            shutil.copyfile(local, part)
            os.replace(part, dest)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.export()

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.export()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.export()
