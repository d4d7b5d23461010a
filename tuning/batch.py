"""Many fixed experiments at once, as Ray Tune trials: the one way raysim runs a batch of runs.

``raysim tune`` (a search) and ``raysim reproduce`` (a fixed list of configs: methods x seeds x
settings) both schedule experiments as Tune trials, so both get the same per-trial placement
groups sized from each config (``tuning.resources``), the same refusal of a run that can never fit,
and the same local-or-cluster execution (``--address``). Here each trial runs one config to the end
into a directory the caller chooses (``<runs_dir>/<key>``: a reproduction reuses a finished run,
and a trial continues a run an earlier attempt left there from its newest checkpoint), and a failed
run is an error with its traceback, never skipped.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from raysim.config import config_from_dict

Echo = Callable[[str], None]


def _one_run(runs_dir: str, table: dict[str, dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    def raysim_run(config: dict[str, Any]) -> None:
        from ray import tune

        from raysim.runtime.experiment import Experiment
        from tuning.resources import pinned_actors, trial_share

        key = config["key"]
        raw = {**table[key], "output": {"dir": runs_dir, "name": key, "progress": False}}
        cfg = config_from_dict(raw, f"run {key}")
        pgf = tune.get_context().get_trial_resources()
        n = pinned_actors(cfg, pgf)
        if n:
            cfg = config_from_dict({**raw, "resources": {**raw["resources"], "num_actors": n}}, f"run {key}")
        from raysim.api import BACKENDS

        # an earlier attempt's checkpoint in runs_dir/key: continued from there (the caller keeps
        # only a directory whose saved config is this one's)
        exp = Experiment.resume_if_present(
            cfg, progress=False, share=trial_share(pgf, cfg.resources.backend), backends=BACKENDS
        )
        if exp is None:  # finished already: nothing to run
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. DSAC's K clamped to the model's layers
            try:
                summary = exp.run()
            finally:
                exp.close()
        tune.report(
            {k: v for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        )

    return raysim_run


def run_experiments(
    todo: Sequence[tuple[str, dict[str, Any]]],
    runs_dir: Path,
    *,
    jobs: int = 1,
    label: str = "batch",
    echo: Echo = print,
    address: str | None = None,
) -> None:
    """Run every ``(key, raw config)`` into ``runs_dir/key`` as one Tune trial each, ``jobs`` at a
    time (every trial also needs its placement group to fit). Raises RuntimeError naming the runs
    that failed, with their errors."""
    if not todo:
        return
    from ray import tune

    from tuning.interrupt import runs_kept, stop_on_interrupt
    from tuning.resources import check_fits, trial_resources
    from tuning.sweep import cluster_size, ray_session, tune_console

    table = {k: dict(r) for k, r in todo}
    runs_dir = Path(runs_dir).resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ray_session(address) as ray:
        cpus, gpus = cluster_size(ray)
        groups = {}
        for k, r in todo:
            cfg = config_from_dict({**r, "output": {"dir": str(runs_dir), "progress": False}}, f"run {k}")
            groups[k] = trial_resources(cfg, cpus, gpus)
            check_fits(cfg, groups[k], cpus, gpus)
        trainable = tune.with_resources(_one_run(str(runs_dir), table), lambda config: groups[config["key"]])

        class Progress(tune.Callback):
            done = 0

            def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                Progress.done += 1
                echo(f"[{label}] {Progress.done}/{len(todo)} done ({time.perf_counter() - t0:.0f}s)")

        tuner = tune.Tuner(
            trainable,
            param_space={"key": tune.grid_search([k for k, _ in todo])},
            tune_config=tune.TuneConfig(max_concurrent_trials=max(1, jobs), trial_dirname_creator=_dirname),
            run_config=tune.RunConfig(
                name=f"{label}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str(runs_dir / ".tune"),
                verbose=0,
                callbacks=[Progress()],
            ),
        )
        # its own progress lines (Progress) instead of Tune's tables; Ctrl-C: Interrupted
        with tune_console(0), stop_on_interrupt(runs_kept(runs_dir)):
            results = tuner.fit()
    failed = [
        f"{(r.config or {}).get('key')}: {r.error}"
        for r in (results[i] for i in range(len(results)))
        if r.error
    ]
    if failed:
        raise RuntimeError(f"[{label}] {len(failed)} run(s) failed:\n" + "\n".join(failed))


def _dirname(trial: Any) -> str:
    return f"run_{trial.config['key']}"
