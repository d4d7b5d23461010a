"""Sweep specs: the YAML a user hands to ``raysim tune`` (no Ray here).

A spec names a ``base`` experiment (a config path, relative to the spec file, or an inline
mapping), the ``mode`` of the sweep, the metric(s) it optimises and a ``space`` of dotted config
keys, each with exactly one distribution::

    name: fedavg_lr
    base: ../quickstart.yaml
    mode: optuna            # optuna | pbt | grid
    metric: test_accuracy   # reported every round; the sweep judges a trial by its last round
    goal: max
    num_samples: 8
    fixed: {resources.backend: serial}   # dotted keys set on the base for every trial
    space:
      local.lr: {loguniform: [0.005, 0.3]}
      local.epochs: {int: [1, 3]}
      algorithm.central_lr: {uniform: [0.5, 1.5]}
      local.batch_size: {choice: [16, 32, 64]}
    optuna: {seed: 0, n_startup_trials: 4, asha: {grace_period: 2}}

Every value a distribution can produce is checked against the experiment schema before any trial
starts (the ends of a range, every choice and grid point), so an unknown knob or an impossible
value is one message naming ``space.<key>``, not a failed trial an hour later.
"""

from __future__ import annotations

import builtins
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raysim.config import (
    ConfigError,
    _format_validation_error,
    config_from_dict,
    dump_config,
    load_yaml_file,
    path_component_problem,
)

KINDS = ("loguniform", "uniform", "int", "choice", "grid")
RANDOM_KINDS = ("loguniform", "uniform", "int", "choice")
FIXED_KEYS = ("name", "output", "resources.backend", "resources.address")  # the sweep sets these per trial


def _fixed(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in FIXED_KEYS)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Dim(_Strict):
    """One dimension of the space: exactly one of the five kinds."""

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    int: tuple[builtins.int, builtins.int] | None = None  # inclusive
    choice: list[Any] | None = None
    grid: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Dim:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(KINDS)} (got {', '.join(given) or 'none'}), "
                "e.g. {loguniform: [0.001, 0.1]}"
            )
        kind = given[0]
        if kind in ("loguniform", "uniform", "int"):
            lo, hi = getattr(self, kind)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"{kind} bounds must be finite, got [{lo}, {hi}]")
            if kind == "int" and lo > hi:
                raise ValueError(f"empty int range [{lo}, {hi}]: the low end must be <= the high end")
            if kind != "int" and not lo < hi:
                raise ValueError(f"empty {kind} range [{lo}, {hi}]: the low end must be < the high end")
            if kind == "loguniform" and lo <= 0:
                raise ValueError(f"loguniform needs 0 < low < high, got [{lo}, {hi}]")
        elif not getattr(self, kind):
            raise ValueError(f"{kind} needs a non-empty list of values")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def args(self) -> Any:
        return getattr(self, self.kind)

    def probes(self) -> list[Any]:
        """Values to check against the experiment schema: both ends, or every listed value."""
        a = self.args
        return list(a) if self.kind in ("choice", "grid") else [a[0], a[1]]


class Objective(_Strict):
    metric: str
    goal: Literal["max", "min"] = "max"


class Asha(_Strict):
    grace_period: Annotated[int, Field(ge=1)] = 1  # rounds a trial runs before it can be stopped
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0


TPE_DEFAULT_STARTUP = 10  # Optuna's TPESampler(n_startup_trials=10)


class OptunaOptions(_Strict):
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    seed: int = 0  # the sampler's seed: the same spec proposes the same trials
    # TPE only: the first n trials are drawn at random, TPE models the finished ones after that.
    # Unset: Optuna's 10, so a sweep of 10 trials or fewer is random search (the sweep says so).
    n_startup_trials: Annotated[int, Field(ge=0)] | None = None
    asha: Asha | None = None  # early stopping over rounds (single objective only)


class PbtOptions(_Strict):
    perturbation_interval: Annotated[int, Field(ge=1)] = 2  # rounds between exploit/explore steps
    lr_key: str = "local.lr"  # mutated by paper 001's genetic rule
    lr_scale: Annotated[float, Field(gt=0, lt=1)] = 0.1  # lr x (1 - s) or x (1 + s)
    # also x 1 (paper 001's d = 0): off, since an exploit at x 1 re-runs its donor exactly when the
    # lr is the only knob (tuning.sweep.GeneticExplore)
    lr_unchanged: bool = False
    quantile_fraction: Annotated[float, Field(gt=0, le=0.5)] = 0.25
    resample_probability: Annotated[float, Field(ge=0, le=1)] = 0.25  # for the other knobs
    seed: int = 0  # the explore step's own random stream
    # synchronous: every member reaches the perturbation round before anyone exploits. FL rounds
    # cost about the same for every trial, so waiting is cheap, and the population is compared at
    # the same round whatever order the cluster happens to run the trials in (asynchronous PBT
    # never exploits when the cluster fits one trial at a time: a finished trial is no donor).
    synch: bool = True


class SweepSpec(_Strict):
    name: Annotated[str, Field(max_length=150)]  # the sweep directory's name: storage_path/<name>/
    base: str | dict[str, Any]
    fixed: dict[str, Any] = {}  # dotted keys set on the base for every trial (e.g. resources.backend)
    mode: Literal["optuna", "pbt", "grid"]
    metric: str = "test_accuracy"
    goal: Literal["max", "min"] = "max"
    objectives: list[Objective] | None = None  # multi-objective (optuna only)
    space: dict[str, Dim]
    num_samples: Annotated[int, Field(ge=1)] = 1  # optuna: trials; pbt: population; grid: must be 1
    seeds: list[int] | None = None  # grid: every point on each seed; others: one seed
    max_concurrent_trials: Annotated[int, Field(ge=1)] | None = None
    checkpoint_every: Annotated[int, Field(ge=0)] = 0  # rounds; 0: only after the last round
    # Tune's FailureConfig: how often a failed trial is retried (from its newest checkpoint, so set
    # checkpoint_every to lose fewer rounds); 0: never, -1: without limit
    max_failures: Annotated[int, Field(ge=-1)] = 2
    # the resources.backend/address best.yaml carries: the base config's own (before fixed: and
    # with --set), recorded here when the sweep starts; a spec may set them to choose best.yaml's
    best_resources: dict[str, Any] | None = None
    storage_path: str | None = None  # where the sweep directory goes (default: base output.dir/tune)
    optuna: OptunaOptions | None = None
    pbt: PbtOptions | None = None

    @field_validator("name")
    @classmethod
    def _one_name(cls, v: str) -> str:
        problem = path_component_problem(v)
        if problem is not None:
            raise ValueError(f"name {v!r} names the sweep directory (storage_path/<name>): {problem}")
        return v

    @field_validator("best_resources")
    @classmethod
    def _deploy_keys(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            unknown = sorted(set(v) - {"backend", "address"})
            if unknown:
                raise ValueError(
                    f"best_resources: only backend and address (what best.yaml runs on), got {unknown}"
                )
            if v.get("backend", "ray") not in ("ray", "serial"):
                raise ValueError(f"best_resources.backend: ray or serial, got {v['backend']!r}")
        return v

    @model_validator(mode="after")
    def _mode_fields(self) -> SweepSpec:
        if not self.space:
            raise ValueError("space: give at least one knob, e.g. local.lr: {loguniform: [0.001, 0.1]}")
        kinds = {k: d.kind for k, d in self.space.items()}
        if self.mode == "grid":
            random = [k for k, v in kinds.items() if v in RANDOM_KINDS]
            if random:
                raise ValueError(
                    f"space.{random[0]}: mode grid takes only `grid:` lists (got {kinds[random[0]]}); "
                    "use mode optuna to sample ranges"
                )
            if self.num_samples != 1:
                raise ValueError("num_samples: mode grid runs every point once per seed; use seeds:")
        else:
            grids = [k for k, v in kinds.items() if v == "grid"]
            if grids:
                raise ValueError(
                    f"space.{grids[0]}: `grid:` is for mode grid; in mode {self.mode} use `choice:`"
                )
            if self.seeds is not None and len(self.seeds) != 1:
                raise ValueError(
                    f"seeds: mode {self.mode} trials run one seed each (got {len(self.seeds)}); "
                    "check the best config on fresh seeds with `raysim tune --validate-best`"
                )
        if self.objectives is not None:
            if self.mode != "optuna":
                raise ValueError("objectives: multi-objective sweeps need mode optuna")
            if len(self.objectives) < 2:
                raise ValueError("objectives: give two or more, or use metric/goal for one")
            if self.optuna is not None and self.optuna.asha is not None:
                raise ValueError(
                    "optuna.asha: Tune's schedulers stop trials on one metric; a multi-objective "
                    "sweep runs every trial to the end (drop asha or the objectives)"
                )
        k = self.optuna.n_startup_trials if self.optuna is not None else None
        if k is not None and self.optuna is not None:
            if self.optuna.sampler != "tpe":
                raise ValueError(
                    f"optuna.n_startup_trials: TPE's random start-up trials, but sampler is "
                    f"{self.optuna.sampler}; drop it or use sampler: tpe"
                )
            if k >= self.num_samples:
                raise ValueError(
                    f"optuna.n_startup_trials: TPE draws its first {k} trials at random and the sweep "
                    f"runs {self.num_samples} (num_samples): no trial would be TPE's. Set it below "
                    f"num_samples (e.g. {max(1, self.num_samples // 2)}), or use sampler: random"
                )
        if self.mode != "optuna" and self.optuna is not None:
            raise ValueError(f"optuna: options for mode optuna, but mode is {self.mode}")
        if self.mode != "pbt" and self.pbt is not None:
            raise ValueError(f"pbt: options for mode pbt, but mode is {self.mode}")
        if self.mode == "pbt":
            if self.pbt is None:
                raise ValueError("pbt: mode pbt needs a pbt: section, e.g. pbt: {perturbation_interval: 2}")
            if self.pbt.lr_key not in self.space:
                raise ValueError(
                    f"pbt.lr_key: {self.pbt.lr_key!r} is not in space; PBT mutates the learning rate "
                    f"it starts from there (add space.{self.pbt.lr_key})"
                )
            k = self.pbt.perturbation_interval
            if self.checkpoint_every == 0 or k % self.checkpoint_every:
                raise ValueError(
                    f"checkpoint_every: PBT exploits from FL checkpoints every {k} rounds, so "
                    f"checkpoint_every must divide pbt.perturbation_interval (e.g. {k})"
                )
            if self.num_samples < 2:
                raise ValueError("num_samples: a PBT population needs at least 2 trials")
        return self

    @property
    def objective_list(self) -> list[Objective]:
        return self.objectives or [Objective(metric=self.metric, goal=self.goal)]

    def random_search_note(self) -> str | None:
        """What to tell the user when a TPE sweep never gets past TPE's random start-up trials."""
        if self.mode != "optuna":
            return None
        opts = self.optuna or OptunaOptions()
        if opts.sampler != "tpe" or opts.n_startup_trials is not None:
            return None  # an explicit start-up count is checked to be below num_samples
        if self.num_samples > TPE_DEFAULT_STARTUP:
            return None
        return (
            f"note: TPE draws its first {TPE_DEFAULT_STARTUP} trials at random (Optuna's default) and "
            f"this sweep runs {self.num_samples}: it is random search. Set optuna.n_startup_trials "
            "below num_samples to let TPE propose the rest"
        )


def _base_dict(spec: SweepSpec, spec_dir: Path, overrides: list[str]) -> dict[str, Any]:
    from raysim.config import apply_overrides

    if isinstance(spec.base, dict):
        raw = dict(spec.base)
    else:
        path = Path(spec.base)
        if not path.is_absolute():
            path = spec_dir / path
        if not path.is_file():
            raise ConfigError(f"base: no experiment config at {path} (a path relative to the spec file)")
        raw = load_yaml_file(path, "base: config")
    from tuning.trainable import merge_dotted

    # --set comes after fixed:, so it overrides a fixed key too (raysim tune SPEC --set KEY=VALUE)
    raw = apply_overrides(merge_dotted(raw, spec.fixed), overrides)
    return config_from_dict(raw, "base (with fixed: and --set)").to_dict()


def _own_resources(spec: SweepSpec, spec_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """The base's resources.backend/address without the spec's ``fixed:`` (with ``--set``): what
    ``best.yaml`` runs on, when a sweep fixes e.g. ``resources.backend: serial`` for its trials."""
    from raysim.config import apply_overrides

    if spec.best_resources is not None:
        return dict(spec.best_resources)
    if isinstance(spec.base, dict):
        raw = dict(spec.base)
    else:
        path = Path(spec.base)
        raw = load_yaml_file(path if path.is_absolute() else spec_dir / path, "base: config")
    from raysim.config import ResourcesConfig

    res = apply_overrides(raw, overrides).get("resources") or {}  # validated with fixed: by _base_dict
    fields = ResourcesConfig.model_fields
    return {
        "backend": res.get("backend", fields["backend"].default),
        "address": res.get("address", fields["address"].default),
    }


def check_space(spec: SweepSpec, base: dict[str, Any]) -> None:
    """Every value the space can produce is a valid experiment (one message naming the key)."""
    from tuning.trainable import trial_config

    for key, dim in spec.space.items():
        if _fixed(key):
            raise ConfigError(f"space.{key}: not a knob a sweep can vary (the sweep sets it per trial)")
        if key == "seed" and spec.seeds is not None:
            raise ConfigError("space.seed: give the seeds with seeds:, not as a knob")
        for value in dim.probes():
            try:
                trial_config(base, {key: value})
            except ConfigError as err:
                lines = str(err).splitlines()
                why = "; ".join(line.strip() for line in lines[1:]) if len(lines) > 1 else str(err)
                raise ConfigError(f"space.{key}: value {value!r} is not a valid experiment: {why}") from None
    check_knobs_read(spec, base)
    every = int(base.get("rounds", {}).get("eval_every", 1))
    for obj in spec.objective_list:
        if not obj.metric:
            raise ConfigError("metric: empty metric name")
        if every != 1 and obj.metric.startswith(("test_", "personal_")):
            raise ConfigError(
                f"base rounds.eval_every is {every}, but the sweep judges trials on {obj.metric!r} "
                "every round (schedulers compare trials round by round): set rounds.eval_every: 1"
            )


def check_knobs_read(spec: SweepSpec, base: dict[str, Any]) -> None:
    """Every knob is one the trial's algorithm reads: a key the algorithm declares it never reads
    (``Algorithm.ignored_config_keys``, e.g. a ``local.lr`` it replaces with its own per-client
    learning rate) would give every trial the same run under different labels. PBT's ``lr_key``
    is checked first, with its own message. The algorithm is built from each value the space can
    produce for the knob (an ``algorithm.*`` knob may change what the algorithm reads)."""
    from raysim.algorithms import build_algorithm
    from tuning.trainable import trial_config

    keys = list(spec.space)
    if spec.pbt is not None and spec.pbt.lr_key in keys:
        keys.remove(spec.pbt.lr_key)
        keys.insert(0, spec.pbt.lr_key)
    for key in keys:
        for value in spec.space[key].probes():
            cfg = trial_config(base, {key: value})
            algo = build_algorithm(cfg.algorithm.name, cfg.algorithm.params)
            ignored = algo.ignored_config_keys()
            if key not in ignored:
                continue
            field = "pbt.lr_key" if spec.pbt is not None and key == spec.pbt.lr_key else f"space.{key}"
            raise ConfigError(
                f"{field}: algorithm {cfg.algorithm.name!r} does not read {key} (it sets that client "
                f"hyperparameter itself in every task; it ignores {', '.join(sorted(ignored))}), so "
                "every trial would run the same experiment under a different label. Tune one of the "
                "algorithm's own keys (algorithm.*) instead, or a base algorithm that reads "
                f"{key}"
            )


# reported every round whatever the algorithm (raysim/runtime/server.py run_round, and round and
# driver_peak_rss_mb from tuning/trainable.py): a sweep on one of these needs no probe round
ALWAYS_REPORTED = frozenset(
    {
        "round",
        "driver_peak_rss_mb",
        "cohort",
        "completed",
        "dropouts",
        "lost_clients",
        "quarantined",
        "restarted_clients",
        "bytes_down",
        "bytes_up",
        "transfer_bytes_up",
        "configure_s",
        "broadcast_s",
        "train_s",
        "aggregate_s",
        "evaluate_s",
        "round_s",
    }
)
_PROBED: dict[str, frozenset[str]] = {}


def probe_metrics(base: dict[str, Any]) -> frozenset[str]:
    """The metrics a trial of ``base`` reports to Tune in round 1: that round run once, serially,
    in a temporary directory (cached per base). Tune stops a trial whose result lacks the sweep's
    metric, and which metrics exist depends on the algorithm (its aggregate's figures; no test
    metrics without a server model, as in clustered FL), so the experiment itself says."""
    import json
    import tempfile

    key = json.dumps(base, sort_keys=True, default=str)
    if key in _PROBED:
        return _PROBED[key]
    from raysim.config import check_data_available
    from raysim.runtime.experiment import Experiment
    from tuning.trainable import trial_config, tune_metrics

    with tempfile.TemporaryDirectory(prefix="raysim-metric-probe-") as tmp:
        cfg = trial_config(
            base, {"resources.backend": "serial", "resources.address": None}, output_dir=Path(tmp)
        )
        check_data_available(cfg)
        exp = Experiment(cfg, progress=False)
        try:
            exp.prepare()
            report = exp.step()
            hparams = report.hparams  # what the cohort's tasks carried (tuning.trainable.round_metrics)
        finally:
            exp.close()
    names = {*tune_metrics(report.metrics), *ALWAYS_REPORTED}
    names |= {f"hparams/{k}" for k in tune_metrics(hparams)}
    _PROBED[key] = frozenset(names)
    return _PROBED[key]


def check_metrics(spec: SweepSpec, base: dict[str, Any]) -> None:
    """Every objective's metric is one the trials report (one message listing the valid names),
    before any trial starts. The runtime's counters are known; anything else is checked against
    round 1 of the base experiment (``probe_metrics``)."""
    wanted = [o.metric for o in spec.objective_list]
    if all(m in ALWAYS_REPORTED for m in wanted):
        return
    valid = probe_metrics(base)
    for obj in spec.objective_list:
        if obj.metric not in valid:
            field = "metric" if spec.objectives is None else "objectives"
            raise ConfigError(
                f"{field}: {obj.metric!r} is not reported by this experiment's trials (its round 1 reports "
                f"no finite value of that name, so Tune would stop every trial); valid metrics: "
                f"{', '.join(sorted(valid))}"
            )


class LoadedSpec(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    spec: SweepSpec
    base: dict[str, Any]  # the resolved experiment dict every trial starts from
    path: Path | None = None


def spec_from_dict(
    raw: Any,
    source: str,
    spec_dir: Path,
    overrides: list[str] | None = None,
    *,
    probe: bool = True,
) -> LoadedSpec:
    """A validated spec. ``probe=False`` skips checking the metric against a probe round (a
    saved sweep.yaml, checked when its sweep started)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a sweep spec is a YAML mapping with base:, mode: and space:")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
    base = _base_dict(spec, spec_dir, overrides or [])
    check_space(spec, base)
    if probe:
        check_metrics(spec, base)
    if spec.best_resources is None:
        spec.best_resources = _own_resources(spec, spec_dir, overrides or [])
    return LoadedSpec(spec=spec, base=base)


def load_spec(path: str | Path, overrides: list[str] | None = None) -> LoadedSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no sweep spec at {path} (see configs/tune/)")
    raw = load_yaml_file(path, "sweep spec", mapping=False)
    loaded = spec_from_dict(raw, str(path), path.parent, overrides)
    loaded.path = path
    return loaded


def resolved_spec_yaml(loaded: LoadedSpec) -> str:
    """The spec with its base inlined: what ``--resume`` reads back from the sweep directory (its
    ``best_resources`` recorded, since the inlined base has ``fixed:`` applied)."""
    raw = loaded.spec.model_dump(mode="json", exclude_none=True)
    if loaded.spec.best_resources is not None:
        raw["best_resources"] = dict(loaded.spec.best_resources)  # address: null kept
    raw["base"] = yaml.safe_load(dump_config(config_from_dict(dict(loaded.base), "base")))
    return yaml.safe_dump(raw, sort_keys=False)
