"""Checks of the world a valid config points at: its dataset's files and its output folder.

Validation (``raysim.config``) looks at the config alone and is pure; these look at the disk, and
run when an experiment prepares (and in ``raysim validate``), before any data is loaded or Ray
started, so that a typo in a path fails in a second with one ``ConfigError``. Re-exported by
``raysim.config``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from raysim.config_text import ConfigError

if TYPE_CHECKING:
    from raysim.config import ExperimentConfig


def check_data_available(cfg: ExperimentConfig) -> None:
    """Raise ConfigError when the dataset's files are missing (without loading them).

    A ``data.data_dir`` that is not a directory is refused even when the dataset has a default
    location: a typo there would otherwise silently train on other files.
    """
    from raysim.data import dataset_available

    d = cfg.data
    problem = dataset_available(d.dataset, d.data_dir, d.dataset_params)
    if d.data_dir is not None and not Path(d.data_dir).expanduser().is_dir():
        what = "it is not a directory" if Path(d.data_dir).expanduser().exists() else "it does not exist"
        if d.dataset in ("digits", "synthetic"):
            fix = f" or leave it out: dataset {d.dataset!r} is built in and reads no files"
        elif problem is None:
            fix = " or leave it out: the dataset's files are found without it"
        else:
            fix = f". {problem}"
        raise ConfigError(f"data.data_dir={d.data_dir!r}: no such directory ({what}); fix the path{fix}")
    if problem is not None:
        raise ConfigError(f"data.dataset={d.dataset!r}: {problem}")


def check_output_dir(cfg: ExperimentConfig) -> None:
    """Raise ConfigError when runs could not be written under ``output.dir``; creates nothing.

    Checked before any data is loaded or Ray started, so that a typo in ``output.dir`` fails in a
    second with one message instead of after set-up (or, worse, with a half-made directory tree).
    """
    given = cfg.output.dir
    target = Path(given).absolute()  # as the run creates it: no ~ expansion
    fix = "set output.dir to a directory you can write to (e.g. --set output.dir=runs)"
    if target.is_symlink() and not target.exists():
        raise ConfigError(f"output.dir={given!r} is a dangling symbolic link; {fix}")
    if target.exists():
        if not target.is_dir():
            raise ConfigError(f"output.dir={given!r} is a file, not a directory; {fix}")
        if not os.access(target, os.W_OK | os.X_OK):
            raise ConfigError(f"output.dir={given!r} is not writable; {fix}, or make it writable")
        return
    ancestor = target.parent
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(
            f"output.dir={given!r} cannot be created: {str(ancestor)!r} is "
            f"{'a dangling symbolic link' if ancestor.is_symlink() else 'a file'}, not a directory; {fix}"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(
            f"output.dir={given!r} cannot be created: {str(ancestor)!r} is not writable; {fix}, "
            f"or create {given!r} yourself first"
        )
