"""raysim's Python API: what ``raysim run`` and ``raysim tune`` do, as functions (docs/api.md).

The command line calls these very functions (``raysim.cli``, ``tuning.cli``), and they drive the
same objects: an experiment is ``raysim.runtime.experiment.Experiment`` (``prepare``, ``rounds``,
``run``, ``save``/``restore``, ``close``), a sweep is ``tuning.sweep.run_sweep``. What this module
adds is the front door: a config from a YAML path, a dict or typed objects with overrides; the Ray
backend handed to the runtime (``BACKENDS``); a run directory read back as DataFrames.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raysim.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    dotted_keys,
    load_yaml_file,
    switch_algorithm,
)

if TYPE_CHECKING:
    import pandas as pd

    from raysim.runtime.backend import Backend, BackendFactory, Share
    from raysim.runtime.experiment import Experiment
    from raysim.runtime.server import RoundReport
    from tuning.outputs import SweepOutcome
    from tuning.spec import LoadedSpec

ConfigSource = str | Path | Mapping[str, Any] | ExperimentConfig
# overrides: ["rounds.num_rounds=5", ...] as --set takes them, or {"rounds.num_rounds": 5, ...}
Overrides = Sequence[str] | Mapping[str, Any] | None


def _ray_backend(address: str | None, share: Share | None) -> Backend:
    from actors.backend import RayBackend  # imports Ray: only when a run asks for it

    return RayBackend(address, share)


# The backends the entry points hand the runtime, by resources.backend (the core has "serial").
BACKENDS: Mapping[str, BackendFactory] = {"ray": _ray_backend}


def load_config(source: ConfigSource, overrides: Overrides = None) -> ExperimentConfig:
    """A validated experiment config from a YAML path, a dict (the YAML's shape) or an
    ``ExperimentConfig``, with ``overrides`` applied. Raises ``ConfigError`` naming the field."""
    if isinstance(source, ExperimentConfig):
        raw, where = source.to_dict(), "<ExperimentConfig>"
    elif isinstance(source, Mapping):
        raw, where = copy.deepcopy(dict(source)), "<dict>"
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; the examples live in configs/")
        raw, where = load_yaml_file(path, "config"), str(path)
    if isinstance(overrides, Mapping):
        from tuning.trainable import merge_dotted  # the sweep's own merge: values kept as they are

        # a new algorithm.name starts from that algorithm's defaults, as with --set
        raw = switch_algorithm(raw, merge_dotted(raw, overrides), dotted_keys(overrides))
    elif overrides:
        if isinstance(overrides, str):
            raise ConfigError(
                f"overrides: a list of KEY=VALUE strings or a dict, not the string {overrides!r}"
            )
        raw = apply_overrides(raw, list(overrides))
    return config_from_dict(raw, where)


def experiment(
    config: ConfigSource,
    overrides: Overrides = None,
    *,
    address: str | None = None,
    progress: bool | None = None,
    stop_when: Callable[[RoundReport], bool] | None = None,
) -> Experiment:
    """An experiment, not started yet: ``for report in exp.rounds(): ...`` steps it round by round
    (``break`` stops it), ``exp.run()`` runs it to the end; ``exp.close()`` (or ``with``) frees its
    actors. ``stop_when(report)``: a rule that ends the run early. ``progress``: the progress view
    (default: ``output.progress``)."""
    from raysim.runtime.experiment import Experiment

    cfg = load_config(config, overrides)
    return Experiment(cfg, address=address, progress=progress, stop_when=stop_when, backends=BACKENDS)


def resume(run_dir: str | Path, *, address: str | None = None, progress: bool | None = None) -> Experiment:
    """A stopped run continued from its newest periodic checkpoint (``rounds.checkpoint_every``):
    iterate ``rounds()`` or call ``run()`` as on a new one."""
    from raysim.runtime.experiment import Experiment

    return Experiment.resume(Path(run_dir), address=address, progress=progress, backends=BACKENDS)


def resume_if_present(
    config: ConfigSource,
    overrides: Overrides = None,
    *,
    address: str | None = None,
    progress: bool | None = None,
) -> Experiment | Results:
    """What ``raysim run CONFIG --resume-if-present`` does before it runs: the run directory is
    ``output.dir/<output.name or name>`` exactly (a stable name, e.g. a RayJob's, so that a job
    started again finds it). Returns the results of the run there when it finished already;
    otherwise an experiment, not started yet, that continues the run there from its newest periodic
    checkpoint or starts it there (absent or empty directory, or no checkpoint yet). A directory
    that holds another experiment (a config differing in more than where and how it is shown:
    ``raysim.runtime.rundir.HARMLESS_KEYS``) raises ``ConfigError``."""
    from raysim.runtime.experiment import Experiment
    from raysim.runtime.rundir import stable_run_dir

    cfg = load_config(config, overrides)
    exp = Experiment.resume_if_present(cfg, address=address, progress=progress, backends=BACKENDS)
    if exp is None:
        return Results(stable_run_dir(Path(cfg.output.dir), cfg.output.name or cfg.name))
    return exp


def run_or_resume(
    config: ConfigSource,
    overrides: Overrides = None,
    *,
    address: str | None = None,
    progress: bool | None = None,
) -> Results:
    """``resume_if_present`` run to the end: the results of the run in the config's run directory,
    whether it finished before, continued from its newest checkpoint, or started now."""
    got = resume_if_present(config, overrides, address=address, progress=progress)
    return got if isinstance(got, Results) else run_experiment(got)


def run(
    config: ConfigSource,
    overrides: Overrides = None,
    *,
    address: str | None = None,
    progress: bool | None = None,
) -> Results:
    """Run an experiment to the end (what ``raysim run`` does) and return its results."""
    exp = experiment(config, overrides, address=address, progress=progress)
    return run_experiment(exp)


def run_experiment(exp: Experiment) -> Results:
    """Prepare (if not yet), run to the end and close ``exp``; its results."""
    try:
        if exp.backend is None:
            exp.prepare()
        exp.run()
    finally:
        exp.close()
    assert exp.run_dir is not None
    return Results(exp.run_dir)


@dataclass(frozen=True)
class Results:
    """A run directory's tables as DataFrames (read when asked, with the readers ``raysim report``
    uses: a missing or damaged file is a ConfigError naming it)."""

    run_dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(self.run_dir))

    @property
    def rounds(self) -> pd.DataFrame:
        """rounds.parquet: one row per round (metrics, accuracy in evaluated rounds, timings)."""
        from raysim.report import load_run

        return load_run(self.run_dir)[0]

    @property
    def summary(self) -> dict[str, Any]:
        """summary.json: final/best accuracy, rounds, seconds, memory (empty while a run goes on)."""
        from raysim.report import load_run

        return load_run(self.run_dir)[1]

    @property
    def clients(self) -> pd.DataFrame:
        """clients.parquet: each round's cohort (and, with personal evaluation, every client)."""
        return self._table("clients.parquet", ("round", "client_id"))

    @property
    def system(self) -> pd.DataFrame:
        """system.parquet: memory and CPU of each actor and the driver, in evaluated rounds."""
        return self._table("system.parquet", ("round",))

    @property
    def clusters(self) -> pd.DataFrame:
        """clusters.parquet: each client's cluster per round (clustered algorithms; else no rows)."""
        import pandas as pd

        from raysim.report import load_clusters

        df = load_clusters(self.run_dir)
        return pd.DataFrame(columns=["round", "client_id", "cluster"]) if df is None else df

    @property
    def config(self) -> ExperimentConfig:
        """The run's config.yaml."""
        return load_config(self.run_dir / "config.yaml")

    def _table(self, name: str, required: tuple[str, ...]) -> pd.DataFrame:
        import pandas as pd

        from raysim.runtime.rundir import read_table

        path = self.run_dir / name
        if not path.is_file():
            if not (self.run_dir / "config.yaml").is_file():
                raise ConfigError(f"{self.run_dir}: not a run directory (no config.yaml)")
            return pd.DataFrame(columns=list(required))
        return read_table(path, required)  # type: ignore[no-any-return]


def results(run_dir: str | Path) -> Results:
    """The results of the run in ``run_dir`` (finished, stopped or still going)."""
    out = Results(Path(run_dir))
    if not (out.run_dir / "rounds.parquet").is_file():
        raise ConfigError(f"{run_dir}: no rounds.parquet here; pass a directory written by `raysim run`")
    return out


# -- sweeps -----------------------------------------------------------------------------------


def load_sweep_spec(
    spec: str | Path | Mapping[str, Any] | LoadedSpec, overrides: Overrides = None
) -> LoadedSpec:
    """A validated sweep spec (``configs/tune/*.yaml``'s shape) from a path or a dict (a dict's
    relative ``base:`` path is read from the current directory); ``overrides`` change its base
    experiment (``--set``)."""
    from tuning.spec import LoadedSpec, load_spec, spec_from_dict

    if isinstance(overrides, Mapping):
        overrides = [f"{k}={_yaml_value(v)}" for k, v in overrides.items()]
    extra = list(overrides or [])
    if isinstance(spec, LoadedSpec):
        if extra:
            raise ConfigError(
                "overrides: apply them when the spec is loaded (load_sweep_spec(path, overrides))"
            )
        return spec
    if isinstance(spec, Mapping):
        return spec_from_dict(copy.deepcopy(dict(spec)), "<dict>", Path.cwd(), extra)
    return load_spec(Path(spec), extra)


def _yaml_value(v: Any) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def sweep(
    spec: str | Path | Mapping[str, Any] | LoadedSpec,
    overrides: Overrides = None,
    *,
    address: str | None = None,
    num_samples: int | None = None,
    storage_path: str | Path | None = None,
    echo: Callable[[str], None] = print,
    verbose: int = 1,
    resume_if_present: bool = False,
    trust_state: bool = False,
) -> SweepOutcome:
    """Run a sweep to the end (what ``raysim tune SPEC`` does): its directory holds trials.parquet,
    best.yaml, summary.md and plots/ (``sweep_trials`` reads the table back).

    ``resume_if_present`` (``--resume-if-present``): a sweep directory that exists is continued
    (interrupted) or reported (finished) instead of refused (``tuning.present``); ``trust_state``:
    ``--trust-sweep-state`` for that resume."""
    from tuning.sweep import run_sweep

    loaded = load_sweep_spec(spec, overrides)
    if storage_path is not None:
        loaded.spec = loaded.spec.model_copy(update={"storage_path": str(storage_path)})
    if resume_if_present:
        from tuning.present import run_or_resume

        return run_or_resume(
            loaded,
            address=address,
            num_samples=num_samples,
            echo=echo,
            verbose=verbose,
            trust_state=trust_state,
        )
    return run_sweep(loaded, address=address, num_samples=num_samples, echo=echo, verbose=verbose)


def resume_sweep(
    directory: str | Path,
    *,
    address: str | None = None,
    echo: Callable[[str], None] = print,
    trust_state: bool = False,
) -> SweepOutcome:
    """Continue a stopped sweep (``raysim tune --resume``; ``trust_state``: ``--trust-sweep-state``)."""
    from tuning.sweep import resume_sweep as resume_it

    return resume_it(Path(directory), address=address, echo=echo, trust_state=trust_state)


def sweep_trials(directory: str | Path) -> pd.DataFrame:
    """A sweep's trials.parquet: one row per trial and round (metrics, ``config/*`` knobs)."""
    from raysim.runtime.rundir import read_table

    return read_table(Path(directory) / "trials.parquet", ("trial_id",))  # type: ignore[no-any-return]
