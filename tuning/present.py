"""``raysim tune SPEC --resume-if-present``: one command a resubmitted job can run again and again.

The sweep directory (``<storage_path>/<name>``, a stable name such as the RayJob's) decides:

* absent: the sweep starts there (``tuning.sweep.run_sweep``);
* finished (``sweep.json`` and ``trials.parquet`` written): its result is printed and nothing runs;
  with ``retry_failed`` (the reproductions' fair tuning), a finished sweep whose ``sweep.json`` lists
  failed trials continues instead, as an interrupted one does, so those trials run again from their
  newest FL checkpoint (a trial that fails again stays failed);
* interrupted, with Tune's experiment state: it continues (``tuning.sweep.resume_sweep``: Tune's
  ``Tuner.restore(resume_unfinished=True, resume_errored=True)``; trials continue from their newest
  FL checkpoint, the searcher and scheduler from Tune's state);
* interrupted before Tune saved any experiment state: nothing can be resumed, so the sweep starts
  again in the same directory (any trial folder it holds is from that first attempt).

The spec given must be the sweep the directory holds (its saved ``sweep.yaml``); another spec under
the same name is refused (exit 2) rather than resumed as something it is not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml

from raysim.config import ConfigError
from raysim.runtime.rundir import config_differences
from tuning.outputs import Echo, SweepOutcome
from tuning.spec import LoadedSpec, resolved_spec_yaml

State = Literal["absent", "finished", "interrupted", "unstarted"]


def sweep_state(directory: Path) -> State:
    """What ``--resume-if-present`` finds in ``directory``."""
    from tuning.sweep import SPEC_FILE, tune_state_saved

    if not directory.exists():
        return "absent"
    if (directory / "sweep.json").is_file() and (directory / "trials.parquet").is_file():
        return "finished"
    if not (directory / SPEC_FILE).is_file():
        raise ConfigError(
            f"{directory} exists but holds no {SPEC_FILE}: not a sweep directory raysim wrote; "
            "change name:/storage_path:, or move it away"
        )
    return "interrupted" if tune_state_saved(directory) else "unstarted"


def check_same_sweep(loaded: LoadedSpec, directory: Path) -> None:
    """Refuse a spec that is not the sweep saved in ``directory`` (naming the keys that differ)."""
    from tuning.sweep import SPEC_FILE

    saved = yaml.safe_load((directory / SPEC_FILE).read_text())
    given = yaml.safe_load(resolved_spec_yaml(loaded))
    diff = config_differences(saved or {}, given, ignore=frozenset())
    if diff:
        raise ConfigError(
            f"{directory} holds another sweep than this spec (they differ in {'; '.join(diff)}): "
            "--resume-if-present continues only the same sweep; give it another name: or "
            f"storage_path:, or continue the saved one with `raysim tune --resume {directory}`"
        )


def failed_trials(directory: Path) -> list[str]:
    """The trials a finished sweep's ``sweep.json`` lists as failed."""
    return [str(t) for t in json.loads((directory / "sweep.json").read_text()).get("failed", [])]


def finished_outcome(directory: Path, echo: Echo) -> SweepOutcome:
    """A finished sweep's result, read back from its ``sweep.json``."""
    info = json.loads((directory / "sweep.json").read_text())
    best = info.get("best")
    metric = info["objectives"][0]["metric"]
    shown = f"best {metric}={best[metric]:.4f} {best['config']}" if best else "no best trial"
    echo(f"sweep {info['name']} already finished in {directory}: {info['trials']} trials, {shown}")
    echo(f"see {directory}/summary.md, best.yaml, trials.parquet")
    failed = [f"trial_{t}: failed" for t in info.get("failed", [])]
    return SweepOutcome(
        directory=directory,
        trials=int(info["trials"]),
        errors=failed,
        best=best,
        no_record=list(info.get("no_record", [])),
    )


def run_or_resume(
    loaded: LoadedSpec,
    *,
    address: str | None = None,
    num_samples: int | None = None,
    echo: Echo = print,
    verbose: int = 1,
    trust_state: bool = False,
    retry_failed: bool = False,
) -> SweepOutcome:
    """Start, continue or report the sweep of ``loaded`` (see the module docstring)."""
    from tuning.sweep import resume_sweep, run_sweep, sweep_dir, with_num_samples

    loaded = with_num_samples(loaded, num_samples)
    directory = sweep_dir(loaded)
    state = sweep_state(directory)
    if state == "absent":
        return run_sweep(loaded, address=address, echo=echo, verbose=verbose)
    check_same_sweep(loaded, directory)
    failed = failed_trials(directory) if state == "finished" and retry_failed else []
    if failed:
        echo(f"sweep {loaded.spec.name}: retrying the failed trials {', '.join(failed)} of {directory}")
        return resume_sweep(directory, address=address, echo=echo, verbose=verbose, trust_state=trust_state)
    if state == "finished":
        return finished_outcome(directory, echo)
    if state == "interrupted":
        echo(f"sweep {loaded.spec.name}: continuing the interrupted sweep in {directory}")
        return resume_sweep(directory, address=address, echo=echo, verbose=verbose, trust_state=trust_state)
    echo(
        f"sweep {loaded.spec.name}: {directory} was stopped before Ray Tune saved any state; "
        "starting the sweep again there"
    )
    return run_sweep(loaded, address=address, echo=echo, verbose=verbose, existing_ok=True)
