"""``raysim tune``: run a sweep spec with Ray Tune (+ Optuna, ASHA, PBT), resume it, validate its best.

A sweep directory (``<storage_path>/<name>/``) holds Tune's experiment state and trial directories
(each trial's raysim run lives in ``<trial>/run/``), plus what this module writes:

* ``sweep.yaml``: the spec with its base config inlined (what ``--resume`` reads back);
* ``optuna.db``: the Optuna study (mode optuna), an SQLite RDB storage ``optuna-dashboard`` opens,
  exported whole from the driver's in-memory study after each finished trial (tuning.optuna_store);
* ``trials.parquet``: one row per trial and round: every reported metric, ``hparams/*`` (the
  hyperparameters that round trained with) and ``config/*`` (the trial's knobs);
* ``best.yaml``: the best trial's experiment as a config ``raysim run`` accepts;
* ``sweep.json`` and ``summary.md``: the best trial, counts, the seeds used to tune;
* ``plots/``: metric vs round per trial, each knob vs the final metric, the Pareto front
  (multi-objective), parameter importance (fANOVA, from Optuna).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raysim.atomic import atomic_write_text
from raysim.config import ConfigError, check_data_available, config_from_dict, load_yaml_file
from raysim.runtime.trackers import check_trackers
from tuning.interrupt import Interrupted, stop_on_interrupt
from tuning.outputs import (  # noqa: F401 - pareto_mask: its home before tuning.outputs
    Echo,
    SweepOutcome,
    final_value,
    pareto_mask,
    tuning_seeds,
    write_outputs,
)
from tuning.spec import LoadedSpec, OptunaOptions, SweepSpec, load_spec, resolved_spec_yaml, spec_from_dict

SPEC_FILE = "sweep.yaml"
OPTUNA_DB = "optuna.db"


def sweep_dir(loaded: LoadedSpec) -> Path:
    spec = loaded.spec
    root = spec.storage_path or str(Path(loaded.base["output"]["dir"]) / "tune")
    return Path(root).expanduser().resolve() / spec.name


# -- the search space as Tune sees it ---------------------------------------------------------


def tune_domain(dim: Any) -> Any:
    from ray import tune

    kind, a = dim.kind, dim.args
    if kind == "loguniform":
        return tune.loguniform(a[0], a[1])
    if kind == "uniform":
        return tune.uniform(a[0], a[1])
    if kind == "int":
        return tune.randint(a[0], a[1] + 1)  # Tune's upper bound is exclusive; ours is not
    if kind == "choice":
        return tune.choice(list(a))
    return tune.grid_search(list(a))


def param_space(loaded: LoadedSpec) -> dict[str, Any]:
    from ray import tune

    spec = loaded.spec
    space: dict[str, Any] = {key: tune_domain(dim) for key, dim in spec.space.items()}
    seeds = tuning_seeds(loaded)
    if "seed" not in spec.space:
        space["seed"] = tune.grid_search(seeds) if spec.mode == "grid" and len(seeds) > 1 else seeds[0]
    return space


class GeneticExplore:
    """Paper 001's mutation as PBT's explore step: the learning rate times (1 - s) or (1 + s), each
    with probability 1/2, from the explore step's own seeded stream. Paper 001 also draws x 1 (its
    d = 0); ``unchanged=True`` restores that third factor, each then with probability 1/3. It is
    left out by default because an exploit at x 1 restores the donor's checkpoint with the donor's
    own learning rate: with no other knob in the space, the trial then re-runs its donor round for
    round (same state, same seed), and the population has one member fewer than it seems.

    A class, not a closure: Tune pickles it into the sweep state, and a class pickles by name (a
    closure would pickle its code, which ``tuning.tune_state`` refuses to let a resume load)."""

    def __init__(self, key: str, scale: float, seed: int, unchanged: bool = False) -> None:
        self.key = key
        self.factors = (1.0 - scale, 1.0, 1.0 + scale) if unchanged else (1.0 - scale, 1.0 + scale)
        self.rng = random.Random(seed)

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        config[self.key] = float(config[self.key]) * self.rng.choice(self.factors)
        return config


def genetic_explore(
    key: str, scale: float, seed: int, unchanged: bool = False
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The explore step for ``key`` (see GeneticExplore)."""
    return GeneticExplore(key, scale, seed, unchanged)


class PicklableLock:
    """A ``threading.Lock`` that pickles, as a fresh unlocked one (a lock holds no state to keep)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()

    def __getattr__(self, name: str) -> Any:  # acquire, release, locked
        if name == "_lock":  # not set yet (while unpickling)
            raise AttributeError(name)
        return getattr(self._lock, name)

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._lock = threading.Lock()


def nsga2_sampler(seed: int) -> Any:
    """Optuna's NSGA-II, made picklable. Tune pickles the searcher with its sampler (the Tuner's
    state when it is built, the searcher checkpoints ``--resume`` reads), and from Optuna 5 the
    genetic samplers keep a ``threading.Lock`` (``BaseGASampler._thread_lock``) that pickle refuses:
    each lock attribute becomes a :class:`PicklableLock`. The sampler stays Optuna's own class, so
    the study records its generations under the keys Optuna's NSGA-II reads."""
    import optuna

    sampler = optuna.samplers.NSGAIISampler(seed=seed)
    for key, value in list(vars(sampler).items()):
        if isinstance(value, type(threading.Lock())):
            setattr(sampler, key, PicklableLock())
    return sampler


def _searcher_and_scheduler(loaded: LoadedSpec, directory: Path) -> tuple[Any, Any]:
    spec = loaded.spec
    num_rounds = int(loaded.base["rounds"]["num_rounds"])
    if spec.mode == "optuna":
        import optuna
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch

        opts = spec.optuna or OptunaOptions()
        sampler: optuna.samplers.BaseSampler
        if opts.sampler == "tpe":
            sampler = optuna.samplers.TPESampler(
                seed=opts.seed,
                multivariate=spec.objectives is not None,
                n_startup_trials=10
                if opts.n_startup_trials is None
                else opts.n_startup_trials,  # Optuna's default
            )
        elif opts.sampler == "nsga2":
            sampler = nsga2_sampler(opts.seed)
        else:
            sampler = optuna.samplers.RandomSampler(seed=opts.seed)
        multi = spec.objectives is not None
        # the study lives in the driver's memory (OptunaSearch runs there; Tune's searcher
        # checkpoints carry it to a resume) and OptunaExport copies it to optuna.db: no SQLite file
        # on the shared volume is ever open while the sweep runs (SQLite's locks are unsafe on NFS)
        searcher = OptunaSearch(
            sampler=sampler,
            study_name=spec.name,
            metric=[o.metric for o in spec.objective_list] if multi else None,
            mode=[o.goal for o in spec.objective_list] if multi else None,
        )
        scheduler = None
        if opts.asha is not None:
            scheduler = ASHAScheduler(
                time_attr="round",
                max_t=num_rounds,
                grace_period=min(opts.asha.grace_period, num_rounds),
                reduction_factor=opts.asha.reduction_factor,
            )
        return searcher, scheduler
    if spec.mode == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining

        from tuning.variants import VariantGenerator

        pbt = spec.pbt
        assert pbt is not None  # the spec validator guarantees it
        mutations = {k: tune_domain(d) for k, d in spec.space.items() if k != pbt.lr_key}
        # the initial population is drawn from pbt.seed too, so a PBT sweep starts the same way twice
        return VariantGenerator(random_state=pbt.seed), PopulationBasedTraining(
            time_attr="round",
            perturbation_interval=pbt.perturbation_interval,
            hyperparam_mutations=mutations,  # type: ignore[arg-type]
            custom_explore_fn=genetic_explore(pbt.lr_key, pbt.lr_scale, pbt.seed, pbt.lr_unchanged),
            quantile_fraction=pbt.quantile_fraction,
            resample_probability=pbt.resample_probability,
            synch=pbt.synch,
        )
    from tuning.variants import VariantGenerator

    # what Tune would make for search_alg=None, in the subclass whose saved state holds no code
    return VariantGenerator(max_concurrent=spec.max_concurrent_trials or 0), None


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


@contextlib.contextmanager
def tune_console(verbose: int) -> Iterator[None]:
    """Tune's console output for one ``fit()`` at ``verbose``. At 0 it is silent: Tune's newer
    console output (Ray 2.58) prints its "Configuration for experiment" table and result paths
    whatever the verbosity, so the fit runs with Ray's older reporter, which honours 0
    (``RAY_AIR_NEW_OUTPUT=0``, read when a fit starts; restored afterwards). The reproductions'
    sweeps and batches run at 0 and say what happens in their own lines. At 0 Optuna's INFO lines
    ("A new study created ...", one per sweep and per exported trial) are held back too."""
    if verbose > 0:
        yield
        return
    import optuna

    key = "RAY_AIR_NEW_OUTPUT"
    before = os.environ.get(key)
    level = optuna.logging.get_verbosity()
    os.environ[key] = "0"
    optuna.logging.set_verbosity(max(level, optuna.logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


@contextlib.contextmanager
def ray_session(address: str | None, reproducible: bool = False) -> Iterator[Any]:
    """Ray for the sweep: the one already initialised (tests), the cluster at ``address`` (or
    RAY_ADDRESS; refused in seconds when nothing answers there), or a new local one started here and
    stopped at the end, never some other Ray that happens to run on this machine (as ``raysim run``,
    ``actors.backend.ensure_ray``). ``reproducible``: every worker of the job (trials, their actors)
    starts with reproducible mode's variables, which must precede its torch."""
    import ray

    from actors.backend import ensure_ray
    from raysim.plugins import worker_env
    from raysim.reproducible import environment

    started = False
    if not ray.is_initialized():
        # local plug-ins' folders on the workers' path, as `raysim run` does for its actors
        env = {**(environment() if reproducible else {}), **worker_env()}
        extra = {"runtime_env": {"env_vars": env}} if env else {}
        ensure_ray(address, log_to_driver=False, **extra)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _reproducible(base: dict[str, Any]) -> bool:
    """Whether the sweep's base experiment asks for reproducible mode (resources.reproducible)."""
    return bool((base.get("resources") or {}).get("reproducible", False))


def cluster_size(ray: Any) -> tuple[float, float]:
    res = ray.cluster_resources()
    return float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))


def _trainable(loaded: LoadedSpec, cpus: float, gpus: float) -> Any:
    from ray import tune

    from tuning.resources import check_fits, scale_for_trial, trial_resources
    from tuning.trainable import make_trainable, trial_config

    # the largest trial the space can produce decides whether the sweep can ever run
    cfg = trial_config(loaded.base, {})
    pgf = trial_resources(cfg, cpus, gpus)  # sized to resources.cluster_max_* when set
    check_fits(cfg, pgf, cpus, gpus)  # against what the cluster can grow to
    scale_for_trial(cfg, pgf)  # an autoscaling cluster short of one trial: ask for it, wait
    # trials read the base config's relative data paths from where the sweep starts (os.getcwd())
    trainable = make_trainable(
        loaded.base, checkpoint_every=loaded.spec.checkpoint_every, workdir=os.getcwd()
    )
    return tune.with_resources(trainable, pgf)


def tracker_callbacks(loaded: LoadedSpec, directory: Path) -> list[Any]:
    """Ray Tune's logger callbacks for the base's ``output.trackers`` (tuning.trackers)."""
    output = loaded.base.get("output") or {}
    if not output.get("trackers"):
        return []
    from tuning.trackers import tracker_callbacks as callbacks

    return callbacks(output, loaded.spec.name, directory)


def _tuner(loaded: LoadedSpec, directory: Path, cpus: float, gpus: float, verbose: int) -> Any:
    from ray import tune

    spec = loaded.spec
    trainable = _trainable(loaded, cpus, gpus)  # refuses a sweep that can never fit, before any file
    directory.mkdir(parents=True, exist_ok=True)
    searcher, scheduler = _searcher_and_scheduler(loaded, directory)
    callbacks = tracker_callbacks(loaded, directory)
    if spec.mode == "optuna":
        from tuning.optuna_store import OptunaExport

        callbacks.append(OptunaExport(searcher, str(directory / OPTUNA_DB), spec.name))
    multi = spec.objectives is not None
    obj = spec.objective_list[0]
    return tune.Tuner(
        trainable,
        param_space=param_space(loaded),
        tune_config=tune.TuneConfig(
            metric=None if multi else obj.metric,
            mode=None if multi else obj.goal,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=spec.num_samples,
            # grid and PBT: the variant generator itself limits them (Tune ignores this then)
            max_concurrent_trials=spec.max_concurrent_trials if spec.mode == "optuna" else None,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=directory.name,
            storage_path=str(directory.parent),
            verbose=verbose,
            callbacks=callbacks,
            # a failed trial is retried from its newest checkpoint (spec max_failures)
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            # PBT exploits any population member's latest checkpoint, so keep them all there
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if spec.mode == "pbt" else 2),
        ),
    )


def with_num_samples(loaded: LoadedSpec, num_samples: int | None) -> LoadedSpec:
    """``loaded`` with ``--num-samples`` applied (validated like the spec's own num_samples)."""
    if num_samples is None:
        return loaded
    if num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {num_samples}")
    from pydantic import ValidationError

    from raysim.config import _format_validation_error

    try:  # e.g. grid refuses num_samples > 1, TPE's start-up trials must stay below it
        spec = SweepSpec.model_validate({**loaded.spec.model_dump(), "num_samples": num_samples})
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, f"--num-samples {num_samples}")) from None
    return LoadedSpec(spec=spec, base=loaded.base, path=loaded.path)


def tune_state_saved(directory: Path) -> bool:
    """Whether Ray Tune saved a sweep's experiment state in ``directory`` (its ``tuner.pkl`` and an
    ``experiment_state-*.json``, written once trials are under way): what a resume needs to
    continue trials rather than start them again."""
    return (directory / "tuner.pkl").is_file() and any(directory.glob("experiment_state-*.json"))


def run_sweep(
    loaded: LoadedSpec,
    *,
    address: str | None = None,
    num_samples: int | None = None,
    echo: Echo = print,
    verbose: int = 1,
    existing_ok: bool = False,
) -> SweepOutcome:
    """Run the sweep to the end and write its outputs (see the module docstring).

    ``existing_ok``: start it in a sweep directory that exists already (``tuning.present``: one
    stopped before Tune saved any state); otherwise an existing directory is refused."""
    loaded = with_num_samples(loaded, num_samples)
    check_data_available(config_from_dict(dict(loaded.base), "base"))
    check_trackers((loaded.base.get("output") or {}).get("trackers") or [], "base: output.trackers")
    directory = sweep_dir(loaded)
    if directory.exists() and not existing_ok:
        raise ConfigError(
            f"sweep directory {directory} exists: continue it with `raysim tune --resume {directory}` "
            "(or `raysim tune SPEC --resume-if-present`), or change name:/storage_path:"
        )
    with ray_session(address, _reproducible(loaded.base)) as ray, tune_console(verbose):
        cpus, gpus = cluster_size(ray)
        tuner = _tuner(loaded, directory, cpus, gpus, verbose)  # refuses a sweep that cannot fit
        atomic_write_text(directory / SPEC_FILE, resolved_spec_yaml(loaded))
        _write_environment(directory, loaded)
        echo(f"sweep {loaded.spec.name}: {loaded.spec.mode}, writing {directory}")
        note = loaded.spec.random_search_note()
        if note:
            echo(note)
        with stop_on_interrupt(_kept(directory)):  # never outputs from trials cut part-way
            results = tuner.fit()
    return write_outputs(loaded, results, directory, echo)


def _write_environment(directory: Path, loaded: LoadedSpec) -> None:
    """The sweep directory's environment.json (raysim.provenance): what the driver and cluster were."""
    from actors.backend import cluster_nodes
    from raysim import provenance, reproducible

    asked = bool(loaded.base.get("resources", {}).get("reproducible", False))
    provenance.write(
        directory,
        provenance.collect(
            backend="ray", nodes=cluster_nodes(), reproducible_state=reproducible.state(asked)
        ),
    )


def load_sweep(directory: Path) -> LoadedSpec:
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise ConfigError(f"{directory}: no {SPEC_FILE} here; pass a directory written by `raysim tune`")
    raw = load_yaml_file(path, "saved sweep spec", mapping=False)
    return spec_from_dict(raw, str(path), path.parent, probe=False)  # its metric was checked at the start


def resume_sweep(
    directory: Path,
    *,
    address: str | None = None,
    echo: Echo = print,
    verbose: int = 1,
    trust_state: bool = False,
) -> SweepOutcome:
    """Continue a stopped sweep (trials restart from their newest FL checkpoint; the searcher's
    state comes back with Tune's experiment state) and write its outputs."""
    from ray import tune

    directory = Path(directory).resolve()
    loaded = load_sweep(directory)
    if not tune.Tuner.can_restore(str(directory)):
        raise ConfigError(f"{directory}: Tune left no experiment state to resume from")
    if not trust_state:
        from tuning.tune_state import check_tune_state

        check_tune_state(directory)  # Tune's restore unpickles these files: nothing in them may run
    with ray_session(address, _reproducible(loaded.base)) as ray:
        cpus, gpus = cluster_size(ray)
        tuner = tune.Tuner.restore(
            str(directory),
            trainable=_trainable(loaded, cpus, gpus),
            resume_unfinished=True,
            resume_errored=True,
        )
        echo(f"resuming sweep {loaded.spec.name} in {directory}")
        with tune_console(verbose), stop_on_interrupt(_kept(directory)):
            results = tuner.fit()
    return write_outputs(loaded, results, directory, echo)


def _kept(directory: Path) -> Interrupted:
    """What an interrupted sweep keeps, and where it continues from (``tuning.interrupt``)."""
    return Interrupted(
        f"Ray Tune saved the sweep's state in {directory} (each trial keeps its newest checkpoint; "
        "no best.yaml is written from trials cut part-way)",
        str(directory),
    )


# -- validation of the best config on fresh seeds ---------------------------------------------


def validate_best(
    directory: Path, *, seeds: int = 3, address: str | None = None, echo: Echo = print, verbose: int = 1
) -> dict[str, Any]:
    """Rerun ``best.yaml`` on ``seeds`` fresh seeds (never the tuning seeds) as a grid sweep and
    compare the mean and 95% CI of the final metric with the sweep's own number."""
    from raysim.metrics import mean_ci95

    directory = Path(directory).resolve()
    info_path, best_path = directory / "sweep.json", directory / "best.yaml"
    if not info_path.is_file() or not best_path.is_file():
        raise ConfigError(
            f"{directory}: no sweep.json/best.yaml here; run `raysim tune SPEC` to the end first"
        )
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    from raysim.runtime.rundir import read_json

    info = read_json(info_path)
    if isinstance(info, dict) and "best" in info and info["best"] is None:
        raise ConfigError(
            f"{info_path}: the sweep has no best trial (no trial finished): nothing to validate"
        )
    try:
        obj = info["objectives"][0]
        used = [int(s) for s in info["tuning_seeds"]]
        swept = float(info["best"][obj["metric"]])
        metric, goal = str(obj["metric"]), obj["goal"]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{info_path}: not a sweep.json written by `raysim tune` ({exc!r} missing)"
        ) from None
    fresh = [max(used, default=-1) + 1 + i for i in range(seeds)]
    best_raw = load_yaml_file(best_path, "best config")
    # best.yaml names the base's own backend; its fresh-seed trials run as the sweep's trials did
    ran = (load_sweep(directory).base.get("resources") or {}) if (directory / SPEC_FILE).is_file() else {}
    raw = {
        "name": "validate",
        "base": best_raw,
        "fixed": {f"resources.{k}": ran[k] for k in ("backend", "address") if k in ran},
        "mode": "grid",
        "metric": metric,
        "goal": goal,
        "space": {"seed": {"grid": fresh}},
        "storage_path": str(directory),
    }
    loaded = spec_from_dict(raw, "(validate-best)", directory, probe=False)  # the sweep's own metric
    from tuning.present import check_same_sweep, run_or_resume, sweep_state

    target = sweep_dir(loaded)
    if sweep_state(target) != "absent":
        try:
            check_same_sweep(loaded, target)
        except ConfigError:
            raise ConfigError(
                f"{target} holds a validation of another best.yaml or other seeds; move it away to "
                f"validate on seeds {fresh} (it is not overwritten)"
            ) from None
    # an interrupted validation continues (the same fresh seeds), a finished one is read back
    out = run_or_resume(loaded, address=address, echo=echo, verbose=verbose)
    table = pd.read_parquet(out.directory / "trials.parquet")
    finals = [final_value(df, metric) for _, df in table.groupby("trial_id")]
    mean, half = mean_ci95(np.array(finals))
    result = {
        "metric": metric,
        "sweep_best": swept,
        "tuning_seeds": used,
        "fresh_seeds": fresh,
        "fresh_values": finals,
        "mean": mean,
        "ci95_half_width": half,
        "sweep_best_within_ci": bool(abs(swept - mean) <= half),
    }
    atomic_write_text(directory / "validation.json", json.dumps(result, indent=2) + "\n")
    echo(
        f"{metric}: sweep best {swept:.4f} (seeds {used}); fresh seeds {fresh}: "
        f"{mean:.4f} ± {half:.4f} (95% CI); "
        + (
            "the sweep's number is inside the interval"
            if result["sweep_best_within_ci"]
            else "the sweep's number is OUTSIDE the interval (it overfit its seed)"
        )
    )
    return result


__all__ = ["load_spec", "resume_sweep", "run_sweep", "validate_best"]
