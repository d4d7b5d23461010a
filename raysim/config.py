"""Typed, validated experiment configuration.

A config is YAML with the sections below; ``load_config`` reads it, applies dotted
``--set a.b=c`` overrides and validates everything a user can get wrong *before* any run
directory exists. Every error names the field and how to fix it (``ConfigError``); the CLI
turns it into one message and exit status 2.

This module is the schema: the typed sections, their cross-checks and the messages of a failed
validation. Reading YAML and ``--set`` overrides are ``raysim.config_text``'s, the checks against
the disk (data files, output folder) ``raysim.config_checks``'; both are re-exported here.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from raysim.algorithms import DEFAULT_ALGORITHM

# re-exported for every importer of raysim.config: the text side (errors, YAML, --set) and the
# checks against the disk live in modules of their own (their docstrings say why)
from raysim.config_checks import check_data_available as check_data_available
from raysim.config_checks import check_output_dir as check_output_dir
from raysim.config_text import MAX_NAME as MAX_NAME
from raysim.config_text import ConfigError as ConfigError
from raysim.config_text import apply_overrides as apply_overrides
from raysim.config_text import load_yaml_file as load_yaml_file
from raysim.config_text import parse_override as parse_override
from raysim.config_text import path_component_problem as path_component_problem
from raysim.config_text import yaml_loads as yaml_loads
from raysim.data import DATASETS, SCHEMES
from raysim.data.datasets import NOT_NATURAL
from raysim.data.schemes import GROUP_SCHEMES
from raysim.plugins import SINGULAR


def _check_name(value: str | None, field: str) -> str | None:
    if value is None:
        return value
    problem = path_component_problem(value)
    if problem is not None:
        raise ValueError(
            f"{field} {value!r} names a directory raysim creates: {problem} (e.g. {field}: my_run)"
        )
    return value


class _Section(BaseModel):
    # allow_inf_nan=False: YAML reads .inf/.nan as floats, and no knob has a meaning at infinity
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


DATASET_NAMES = tuple(DATASETS)  # the built-in names; plug-ins add theirs (raysim.plugins)
PARTITION_NAMES = SCHEMES


def _image_models() -> set[str]:
    """The built-in models that need image input (every one but ``mlp``)."""
    from raysim.models.registry import MODELS

    return set(MODELS) - {"mlp"}


def _plugin_name(kind: str, name: str) -> str:
    """``name`` when it resolves to a plug-in of ``kind`` (imported now), else a ValueError with
    ``raysim.plugins``' reason (pydantic puts the field's place in front of it)."""
    from raysim.plugins import PluginError, resolve

    try:
        resolve(kind, name)
    except PluginError as err:
        raise ValueError(str(err)) from None
    return name


def _plugin_params(kind: str, name: str, params: Any) -> Any:
    """``params`` validated by plug-in ``name``'s params_model, its instance (None: it has none). A
    ``ValidationError`` raised from a field validator keeps each key's place (``data.dataset_params.x``)."""
    from raysim.plugins import PluginError, resolve, validate_params

    try:
        return validate_params(kind, name, resolve(kind, name), params)
    except PluginError as err:
        raise ValueError(str(err)) from None


class DataConfig(_Section):
    """``dataset`` and ``partition`` are built-in names, entry-point names or import paths
    (``raysim.plugins``); ``dataset_params`` / ``partition_params`` are a plug-in's own keys,
    validated by its ``params_model`` (the built-ins take theirs from the fields below)."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    partition: str = "dirichlet"
    num_clients: Annotated[int, Field(ge=1)] = 100
    alpha: Annotated[float, Field(gt=0)] = 0.5
    classes_per_client: Annotated[int, Field(ge=1)] = 2
    sigma: Annotated[float, Field(gt=0)] = 1.0
    num_groups: Annotated[int, Field(ge=1)] = 4
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    test_per_client: Annotated[int, Field(ge=1)] | None = None
    public_fraction: Annotated[float, Field(ge=0, lt=0.9)] = 0.0
    # partition "sampled" only: examples each client draws (clients overlap; any num_clients fits)
    examples_per_client: Annotated[int, Field(ge=2)] = 50
    # fraction of clients (drawn once per seed) whose training and validation labels are replaced by
    # uniform random labels; their local test labels stay clean
    label_noise: Annotated[float, Field(ge=0, le=1)] = 0.0
    synthetic_alpha: Annotated[float, Field(ge=0)] = 1.0
    synthetic_beta: Annotated[float, Field(ge=0)] = 1.0
    # a dataset / partition plug-in's own keys (validated by its params_model; after the fields above
    # so that the validators below see dataset and partition)
    dataset_params: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    partition_params: dict[str, Any] = Field(default_factory=dict, validate_default=True)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return _plugin_name("datasets", v)

    @field_validator("partition")
    @classmethod
    def _partition(cls, v: str) -> str:
        return _plugin_name("partitions", v)

    @field_validator("dataset_params")
    @classmethod
    def _dataset_params(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("dataset")
        if name is None:  # data.dataset itself failed: its own message says why
            return v
        if name == "synthetic" and v:
            raise ValueError(
                "dataset 'synthetic' takes its knobs from data.synthetic_alpha and data.synthetic_beta"
            )
        _plugin_params("datasets", name, v)
        return v

    @field_validator("partition_params")
    @classmethod
    def _partition_params(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("partition")
        if name is None:
            return v
        if name in SCHEMES:
            if v:
                raise ValueError(
                    f"built-in partition {name!r} takes its knobs from data: (alpha, classes_per_client, sigma, "
                    "num_groups, examples_per_client); partition_params is for partition plug-ins"
                )
            return v
        _plugin_params("partitions", name, v)
        return v

    @property
    def dataset_params_model(self) -> BaseModel | None:
        """``dataset_params`` validated (the loader's params_model instance; None: it has none)."""
        if self.dataset == "synthetic":
            return _plugin_params(
                "datasets", "synthetic", {"alpha": self.synthetic_alpha, "beta": self.synthetic_beta}
            )  # type: ignore[no-any-return]
        return _plugin_params("datasets", self.dataset, self.dataset_params)  # type: ignore[no-any-return]

    @property
    def partition_params_model(self) -> BaseModel | None:
        """``partition_params`` validated for a partition plug-in (None for a built-in scheme)."""
        if self.partition in SCHEMES:
            return None
        return _plugin_params("partitions", self.partition, self.partition_params)  # type: ignore[no-any-return]


class ModelConfig(BaseModel):
    """``name`` picks the model (a built-in name, an entry-point name or an import path,
    ``raysim.plugins``); every other key is a parameter of the model, validated by its builder's
    ``params_model`` (a builder without one takes none)."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)
    name: str = "cnn-small"

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return _plugin_name("models", v)

    @model_validator(mode="after")
    def _params(self) -> ModelConfig:
        _plugin_params("models", self.name, self.model_extra or {})
        return self

    @property
    def params(self) -> dict[str, Any]:
        """The model's parameters as given (the section's keys other than ``name``)."""
        return dict(self.model_extra or {})

    @property
    def params_model(self) -> BaseModel | None:
        """The parameters validated (the builder's params_model instance; None: it has none)."""
        return _plugin_params("models", self.name, self.params)  # type: ignore[no-any-return]


# local.* knobs that schedule the rounds rather than describe one fit: the round loop applies them
# (Experiment.round_hparams), so the fit record (algorithms.base.LocalHParams) does not carry them
ROUND_SCHEDULE = ("lr_decay",)


class LocalConfig(_Section):
    """Client-side training knobs (the design's local_* knobs)."""

    epochs: Annotated[int, Field(ge=1)] = 1
    batch_size: Annotated[int, Field(ge=1)] = 32
    lr: Annotated[float, Field(gt=0)] = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    # "adam": torch.optim.Adam at lr (fresh per local training; momentum must be 0), e.g. the
    # genetic-CFL notebook's FedAvg baseline (Adam, lr 1e-4, batch 32)
    optimizer: Literal["sgd", "adam"] = "sgd"
    # the local training loss. "squared_error" is DSAC's eq. 2, ||y - m(x)||^2 with y one-hot and
    # m(x) the softmax output, summed over classes and averaged over examples. Evaluation losses
    # (test_loss, val_loss) stay cross-entropy so that runs with either loss are comparable.
    loss: Literal["cross_entropy", "squared_error"] = "cross_entropy"
    # a per-round learning-rate decay for every algorithm's clients: round t trains at
    # lr * lr_decay ** (t - 1) (lr: local.lr or a set_hparams override). 1.0 (the default): no decay.
    # Paper 002's budget is lr 0.1 with 0.99. Applied by the round loop (Experiment.round_hparams),
    # for every algorithm alike (with an algorithm's own lr_decay, e.g. ascfl's, both set is refused).
    lr_decay: Annotated[float, Field(gt=0, le=1)] = 1.0

    @model_validator(mode="after")
    def _a_valid_record(self) -> LocalConfig:
        from raysim.algorithms.base import LocalHParams

        LocalHParams.of(self)  # the record's own rules (momentum is an SGD knob), checked at load
        return self


class RoundsConfig(_Section):
    num_rounds: Annotated[int, Field(ge=1)] = 50
    clients_per_round: Annotated[int, Field(ge=1)] = 10
    eval_every: Annotated[int, Field(ge=1)] = 1
    # personalised evaluation: every evaluated round (rounds.eval_every, and the last), clients
    # score their own model (personalised, cluster or global) on their local test split.
    #   all (or true): every client; an int k: a seeded sample of k clients; a float f in (0, 1]:
    #   a seeded sample of ceil(f x N) clients; false: none.
    #   auto (the default): every client up to AUTO_PERSONAL_EVAL clients (10,000), above that a
    #   seeded sample of 10,000. Why: a sample of 10,000 puts the 95% interval of the mean personal
    #   accuracy within about +-0.003 (client accuracies spread ~0.15), costs the same whatever N
    #   (10^6 clients included) and, for algorithms that score clients with a per-client model,
    #   bounds the per-client path (one forward pass a client); all of 10^4 clients is exact and
    #   cheap. A sample is drawn from the round's seeded stream (the same clients whatever the
    #   packing); rounds.parquet then has the interval (personal_accuracy_ci95_low/high).
    personal_eval: bool | Literal["all", "auto"] | Annotated[int, Field(ge=1)] | float = "auto"
    deadline_s: Annotated[float, Field(gt=0)] | None = None
    # a client whose update norm is >= this many times the round's median update norm is
    # quarantined for that round: left out of the aggregate (exactly, pre-summed or not), its state
    # not committed, counted in rounds.parquet's `quarantined` and as a dropout with the reason.
    # 0 switches it off. (NaN/Inf updates are always dropped.)
    quarantine_factor: Annotated[float, Field(ge=0)] = 1000.0
    checkpoint_every: Annotated[int, Field(ge=0)] = 0  # 0: no checkpoints

    @field_validator("personal_eval")
    @classmethod
    def _personal_eval(cls, v: bool | str | int | float) -> bool | str | int | float:
        if isinstance(v, float) and not isinstance(v, bool) and not 0.0 < v <= 1.0:
            raise ValueError(
                f"rounds.personal_eval: a float is a fraction of the clients in (0, 1], got {v}; "
                "use all, auto, false, a count (an int >= 1) or a fraction such as 0.01"
            )
        return v


AUTO_PERSONAL_EVAL = 10_000  # rounds.personal_eval auto: every client up to this many, else a sample of it


def personal_eval_count(setting: bool | str | int | float, num_clients: int) -> int:
    """How many clients ``rounds.personal_eval`` scores in an evaluated round of a federation of
    ``num_clients``: 0 (off) to ``num_clients`` (every client: exact)."""
    if setting is False:
        return 0
    if setting is True or setting == "all":
        return num_clients
    if setting == "auto":
        return min(num_clients, AUTO_PERSONAL_EVAL)
    if isinstance(setting, int):
        return min(num_clients, setting)
    if isinstance(setting, float):
        return min(num_clients, math.ceil(setting * num_clients))
    raise ValueError(f"rounds.personal_eval: {setting!r} is not all, auto, false, a count or a fraction")


def describe_personal_eval(setting: bool | str | int | float, num_clients: int) -> str:
    """One line: what ``rounds.personal_eval`` does for a federation of ``num_clients`` (``raysim validate``)."""
    k = personal_eval_count(setting, num_clients)
    if k == 0:
        return f"rounds.personal_eval {setting}: no personalised evaluation"
    if k >= num_clients:
        return f"rounds.personal_eval {setting}: every one of the {num_clients:,} clients each evaluated round (exact)"
    return (
        f"rounds.personal_eval {setting}: a seeded sample of {k:,} of the {num_clients:,} clients each "
        "evaluated round, with 95% intervals in rounds.parquet"
    )


class ResourcesConfig(_Section):
    backend: Literal["ray", "serial"] = "ray"
    address: str | None = None  # Ray cluster address; None starts a local Ray in-process
    clients_per_actor: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    num_actors: Annotated[int, Field(ge=1)] | None = None  # with clients_per_actor=auto; None: fill the CPUs
    num_cpus: Annotated[float, Field(ge=0)] = 1.0  # per client actor
    num_gpus: Annotated[float, Field(ge=0)] = 0.0  # per client actor; fractions share a GPU
    torch_threads: Annotated[int, Field(ge=1)] = 1
    # the same bits on any x86-64 machine with AVX2 (raysim.reproducible): AVX2 kernels, MKL's
    # reproducible branch instead of oneDNN convolutions, one BLAS thread, deterministic algorithms.
    # Costs ~2x a round of cnn-small (quickstart, serial: 7.4 s instead of 3.4 s of CPU); tests run
    # in it always. The CLI flag --reproducible/--no-reproducible overrides it
    reproducible: bool = False
    # > 0: a client actor that dies (its process, its node) or stays stuck in a call past the round
    # deadline is started again (by Ray, on any node with room); with client state, its clients'
    # results of that round are dropped and their state comes back from the newest checkpoint
    # (rounds.checkpoint_every), else from the start. 0: its clients are lost for the run.
    max_restarts: Annotated[int, Field(ge=0)] = 0
    # a lost server actor (its node went away, it was killed or ran out of memory) is replaced from
    # the newest checkpoint (rounds.checkpoint_every) at most this many times in a run; one that
    # dies every time (say, out of memory in aggregate) then stops the run with an error. 0: never.
    max_server_restarts: Annotated[int, Field(ge=0)] = 3
    # what one client actor costs in private memory (a worker that imported torch, its trainer and
    # its clients' index arrays; the dataset is shared per node): before any actor starts, the run
    # is refused when actors x this (+ the server) exceeds the memory Ray offers. 0: no check.
    actor_memory_mb: Annotated[float, Field(ge=0)] = 450.0
    server_cpus: Annotated[float, Field(ge=0)] = 0.0  # the server actor: a hypernetwork trains there
    server_gpus: Annotated[float, Field(ge=0)] = 0.0  # the server actor: a hypernetwork trains there
    # what the Ray cluster can grow to (an autoscaling cluster: its worker groups' maxReplicas x each
    # pod's CPUs / GPUs / Ray memory, plus the head's); None: what it has now. The resource checks and
    # clients_per_actor: auto size the run to these, and the run asks the autoscaler for what it
    # needs (ray.autoscaler.sdk.request_resources) and waits up to scale_wait_s for it (actors.autoscale)
    cluster_max_cpus: float | None = None
    cluster_max_gpus: float | None = None
    cluster_max_memory_gb: float | None = None  # Ray's `memory` resource (KubeRay: the pods' memory limits)
    scale_wait_s: float = 600.0

    @field_validator("cluster_max_cpus", "cluster_max_gpus", "cluster_max_memory_gb")
    @classmethod
    def _cluster_max(cls, v: float | None, info: ValidationInfo) -> float | None:
        gpus = info.field_name == "cluster_max_gpus"  # a cluster without GPUs is one; without CPUs not
        if v is not None and (v < 0 or (v == 0 and not gpus)):
            what = {"cluster_max_cpus": "CPUs", "cluster_max_gpus": "GPUs", "cluster_max_memory_gb": "GB"}
            raise ValueError(
                f"must be {'>= 0' if gpus else '> 0'}, got {v:g}: the {what[str(info.field_name)]} the Ray "
                "cluster can grow to (an autoscaling cluster's maxima); leave it out (null) to size runs "
                "to the cluster's current resources"
            )
        return v

    @field_validator("scale_wait_s")
    @classmethod
    def _scale_wait(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(
                f"must be > 0, got {v:g}: the seconds a run waits for the autoscaler to provide what it "
                "asked for (default 600)"
            )
        return v

    @field_validator("num_gpus", "server_gpus")
    @classmethod
    def _gpu_fraction(cls, v: float, info: ValidationInfo) -> float:
        if v > 1 and not float(v).is_integer():
            who = "the server actor" if info.field_name == "server_gpus" else "a client actor"
            raise ValueError(
                f"{v} GPUs for {who} cannot be placed: use a fraction <= 1 (e.g. 0.25 shares a GPU four ways) "
                "or a whole number"
            )
        return v


TRACKERS = ("tensorboard", "mlflow")


class OutputConfig(_Section):
    dir: str = "runs"
    name: str | None = None  # default: the experiment name; one directory name under dir
    progress: bool = True
    # where each round's metrics and the config also go (raysim.runtime.trackers): RUN_DIR/tensorboard
    # event files, an MLflow run; a sweep logs its trials with Ray Tune's own callbacks instead
    trackers: tuple[Literal["tensorboard", "mlflow"], ...] = ()
    mlflow_uri: str | None = None  # default: sqlite:///RUN_DIR/mlflow.db (a sweep's: SWEEP_DIR/mlflow.db)
    mlflow_experiment: str | None = None  # default: the experiment's name (a sweep's: the sweep's)

    @field_validator("trackers")
    @classmethod
    def _once_each(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"output.trackers names a tracker twice: {list(v)}")
        return v

    @field_validator("name")
    @classmethod
    def _one_name(cls, v: str | None) -> str | None:
        return _check_name(v, "output.name")

    @field_validator("dir")
    @classmethod
    def _some_dir(cls, v: str) -> str:
        if not v.strip() or "\0" in v:
            raise ValueError("output.dir must be a folder's path (e.g. runs)")
        return v


class AlgorithmConfig(BaseModel):
    """``name`` picks the algorithm (a built-in name, an entry-point name or an import path,
    ``raysim.plugins``); every other key is that algorithm's own parameter."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)
    name: str = DEFAULT_ALGORITHM

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return _plugin_name("algorithms", v)

    @model_validator(mode="after")
    def _params(self) -> AlgorithmConfig:
        from raysim.algorithms import algorithm_class

        algorithm_class(self.name).params_model.model_validate(self.model_extra or {})
        return self

    @property
    def params(self) -> BaseModel:
        from raysim.algorithms import algorithm_class

        return algorithm_class(self.name).params_model.model_validate(self.model_extra or {})

    @property
    def traits(self) -> Any:
        """The configured algorithm's declared traits (``raysim.algorithms.base.Traits``)."""
        from raysim.algorithms import build_algorithm

        return build_algorithm(self.name, self.params).traits


class ExperimentConfig(_Section):
    name: str = "experiment"
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    local: LocalConfig = LocalConfig()
    rounds: RoundsConfig = RoundsConfig()
    resources: ResourcesConfig = ResourcesConfig()
    output: OutputConfig = OutputConfig()

    @field_validator("name")
    @classmethod
    def _one_name(cls, v: str) -> str:  # the run directory's name unless output.name is set
        return _check_name(v, "name") or v

    @model_validator(mode="after")
    def _cross(self) -> ExperimentConfig:
        d, r = self.data, self.rounds
        if r.clients_per_round > d.num_clients:
            raise ValueError(
                f"rounds.clients_per_round={r.clients_per_round} is larger than data.num_clients="
                f"{d.num_clients}; lower the cohort or add clients"
            )
        if d.partition == "rotation" and d.num_groups > 4:
            raise ValueError("data.num_groups must be <= 4 with partition 'rotation' (0/90/180/270 degrees)")
        if d.partition == "natural" and d.dataset in NOT_NATURAL:
            # the built-ins known not to be; any other dataset is checked when it is loaded
            raise ValueError(
                f"data.partition 'natural' needs a federated-by-nature dataset, and {d.dataset!r} is not one: "
                "use dataset 'synthetic', or a dataset that fills natural_train (e.g. 'parquet' with a "
                "client-id column)"
            )
        # the built-in image models cannot take vectors; a plug-in model may
        if d.dataset == "synthetic" and self.model.name in _image_models():
            raise ValueError("data.dataset 'synthetic' is vector data: set model.name to 'mlp'")
        if self.resources.clients_per_actor != "auto" and self.resources.num_actors is not None:
            raise ValueError("set either resources.clients_per_actor or resources.num_actors, not both")
        from raysim.algorithms import build_algorithm
        from raysim.models.registry import model_structure

        algo = build_algorithm(self.algorithm.name, self.algorithm.params)
        layout, has_buffers = model_structure(self.model.name, self.model.params)
        try:
            algo.check_model(layout)
        except ValueError as exc:
            raise ValueError(
                f"model.name {self.model.name!r} cannot serve algorithm {self.algorithm.name!r}: {exc}"
            ) from None
        if has_buffers and not algo.traits.client_buffers:
            from raysim.algorithms import ALGORITHMS

            keepers = sorted(n for n, cls in ALGORITHMS.items() if cls.traits.client_buffers)
            raise ValueError(
                f"model.name {self.model.name!r} has BatchNorm running statistics, which algorithm "
                f"{self.algorithm.name!r} does not keep per client (they would be shared by the clients an "
                f"actor hosts): use an algorithm that keeps them ({', '.join(keepers)}), or a model "
                "without BatchNorm (e.g. cnn-small)"
            )
        traits = algo.traits
        if traits.public_split and d.public_fraction <= 0:
            off = (
                f"set {traits.public_split_off}"
                if traits.public_split_off
                else "switch off the option that needs it"
            )
            raise ValueError(
                f"algorithm {self.algorithm.name!r} as configured trains or evaluates on the server's "
                f"public split, which no client holds: set data.public_fraction > 0 (e.g. 0.05), or {off}"
            )
        own_decay = getattr(self.algorithm.params, "lr_decay", None)
        if own_decay not in (None, 1.0) and self.local.lr_decay != 1.0:
            # an algorithm with its own per-round decay (e.g. AS-CFL's) would decay twice
            raise ValueError(
                f"algorithm.lr_decay={own_decay} and local.lr_decay={self.local.lr_decay} would both decay "
                f"algorithm {self.algorithm.name!r}'s learning rate every round (compounded): set one of "
                "them to 1 (local.lr_decay applies to every algorithm alike)"
            )
        if traits.truth_groups and not (d.partition in GROUP_SCHEMES and d.num_groups >= 2):
            has = (
                f"data.num_groups={d.num_groups}"
                if d.partition in GROUP_SCHEMES
                else f"data.partition {d.partition!r} makes no groups"
            )
            raise ValueError(
                f"algorithm {self.algorithm.name!r} as configured reads the federation's ground-truth "
                f"client groups, and {has}: use a partition with groups (data.partition: "
                f"{' or '.join(GROUP_SCHEMES)} with data.num_groups >= 2), or set {traits.truth_groups_off}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def num_client_actors(self, cluster_cpus: float | None = None, cluster_gpus: float | None = None) -> int:
        """How many client actors the run starts: ``raysim.runtime.packing.plan_actors``, the one
        rule. ``cluster_cpus``/``cluster_gpus`` are what the whole run may use, the server's share
        included."""
        from raysim.runtime.packing import plan_actors

        pooled = self.algorithm.traits.pooled
        plan = plan_actors(
            self.resources, self.data.num_clients, pooled=pooled, cpus=cluster_cpus, gpus=cluster_gpus
        )
        return plan.actors


def _valid_keys(model: type[BaseModel], loc: tuple[str, ...], raw: Any) -> tuple[str, list[str]] | None:
    """Where an unknown key ``loc`` was found and the keys allowed there (None when that place is
    not a section of ``model``). The ``algorithm`` section's keys are ``name`` and the parameters
    of the algorithm it names."""
    node = raw
    for depth, part in enumerate(loc[:-1]):
        parent, node = node, node.get(part) if isinstance(node, dict) else None
        last = depth == len(loc) - 2
        if last and model is ExperimentConfig and part in ("algorithm", "model"):
            kind = "algorithms" if part == "algorithm" else "models"
            default = DEFAULT_ALGORITHM if part == "algorithm" else ModelConfig().name
            name = node.get("name", default) if isinstance(node, dict) else default
            fields = _plugin_fields(kind, name)
            return None if fields is None else (f"of {part} {name!r}", sorted({"name", *fields}))
        if last and model is DataConfig and part in ("dataset_params", "partition_params"):
            kind, key = ("datasets", "dataset") if part == "dataset_params" else ("partitions", "partition")
            name = parent.get(key, DataConfig.model_fields[key].default) if isinstance(parent, dict) else None
            fields = _plugin_fields(kind, name)
            return None if fields is None else (f"of {SINGULAR[kind]} {name!r}", sorted(fields))
        field = model.model_fields.get(part)
        sub = field.annotation if field is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None
        model = sub
    where = f"of {'.'.join(loc[:-1])}" if len(loc) > 1 else "at the top level"
    return where, sorted(model.model_fields)


def _plugin_fields(kind: str, name: Any) -> list[str] | None:
    """The parameter names plug-in ``name`` takes (None: it is no plug-in)."""
    from raysim.plugins import PluginError, params_model, resolve

    try:
        pm = params_model(resolve(kind, name))
    except PluginError:
        return None
    return list(pm.model_fields) if pm is not None else []


def _format_validation_error(
    err: ValidationError, source: str, raw: Any = None, model: type[BaseModel] | None = None
) -> str:
    """One line per problem. With the ``model`` that was validated (and its ``raw`` input), an
    unknown key's line lists the keys valid in its section."""
    lines = []
    for e in err.errors():
        parts = tuple(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        loc = ".".join(parts)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling)"
            valid = _valid_keys(model, parts, raw) if model is not None else None
            if valid is not None:
                msg += f"; valid keys {valid[0]}: {', '.join(valid[1])}"
        elif e["type"] == "finite_number":
            msg = "must be a finite number: .inf and .nan are not allowed"
        where = f"{loc}: " if loc else ""
        got = e.get("input")
        shown = (
            ""
            if e["type"] in ("extra_forbidden", "value_error") or isinstance(got, dict)
            else f" (got {got!r})"
        )
        lines.append(f"{where}{msg}{shown}")
    return f"invalid config {source}:\n  " + "\n  ".join(lines)


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source, raw, ExperimentConfig)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; the examples live in configs/")
    raw = load_yaml_file(p, "config")
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, str(p))


def _param_owners(name: Any) -> dict[str, type] | None:
    """Each parameter of algorithm ``name`` and the params class that declares it (None: ``name``
    is no algorithm). Two algorithms share a parameter's meaning when one class declares it for
    both (FedProx's ``central_lr`` is FedAvg's); the same name declared twice may mean two things
    (AS-CFL's ``beta`` splits clusters, pFedMe's steps the server)."""
    from raysim.plugins import PluginError, params_model, resolve

    try:
        pm = params_model(resolve("algorithms", name))
    except PluginError:
        return None
    if pm is None:
        return {}
    owners: dict[str, type] = {}
    for field in pm.model_fields:
        owners[field] = next((k for k in pm.__mro__ if field in k.__dict__.get("__annotations__", {})), pm)
    return owners


def switch_algorithm(
    before: Mapping[str, Any], after: dict[str, Any], set_keys: Iterable[Sequence[str]]
) -> dict[str, Any]:
    """``after`` (``before`` with overrides applied, each override's dotted key in ``set_keys``)
    started from the new algorithm's defaults when the overrides changed ``algorithm.name``.

    The previous algorithm's keys are dropped, with a note on stderr naming them, instead of each
    failing validation as an unknown key. Kept: the keys the overrides set themselves, and the keys
    whose parameter both algorithms take from one params class (the same knob, e.g. ``central_lr``
    from ``fedavg`` to ``fedprox``, or every pFedHT knob to ``pfedhn``). A key of the same name that
    the new algorithm declares itself is dropped too: its meaning may differ. Nothing is dropped when
    the new name is no algorithm (validation names that)."""
    old_section, new_section = before.get("algorithm"), after.get("algorithm")
    if not isinstance(old_section, Mapping) or not isinstance(new_section, dict):
        return after
    old_name = old_section.get("name", DEFAULT_ALGORITHM)
    new_name = new_section.get("name", DEFAULT_ALGORITHM)
    if old_name == new_name:
        return after
    new_owners = _param_owners(new_name)
    if new_owners is None:
        return after
    old_owners = _param_owners(old_name) or {}
    explicit = {keys[1] for keys in set_keys if len(keys) >= 2 and keys[0] == "algorithm"}
    dropped = [
        key
        for key in old_section
        if key != "name"
        and key not in explicit
        and key in new_section
        and not (key in new_owners and old_owners.get(key, new_owners[key]) is new_owners[key])
    ]
    if not dropped:
        return after
    out = dict(after)
    out["algorithm"] = {k: v for k, v in new_section.items() if k not in dropped}
    print(
        f"note: algorithm.name {old_name!r} -> {new_name!r}: dropped {old_name}'s keys: {', '.join(dropped)}; "
        f"{new_name} starts from its own defaults (raysim validate prints them; set one with "
        "algorithm.KEY=VALUE)",
        file=sys.stderr,
    )
    return out


def dotted_keys(overrides: Mapping[str, Any]) -> list[list[str]]:
    """The keys a dict of overrides sets, as ``switch_algorithm`` takes them: ``{"algorithm.name":
    "X"}`` and ``{"algorithm": {"name": "X"}}`` both set ``["algorithm", "name"]``."""
    keys: list[list[str]] = []
    for key, value in overrides.items():
        parts = [p for p in str(key).split(".") if p]
        if isinstance(value, Mapping) and value:
            keys.extend([*parts, *sub] for sub in dotted_keys(value))
        else:
            keys.append(parts)
    return keys


def resolved_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """``cfg.to_dict()`` with every algorithm, model and plug-in parameter spelled out (defaults
    included), as the run uses them: what ``raysim validate`` prints and ``config.yaml`` keeps.
    Loading it again gives the same config."""
    raw = cfg.to_dict()
    raw["algorithm"] = {"name": cfg.algorithm.name, **cfg.algorithm.params.model_dump(mode="json")}
    model_params = cfg.model.params_model
    if model_params is not None:
        raw["model"] = {"name": cfg.model.name, **model_params.model_dump(mode="json")}
    if cfg.data.dataset != "synthetic":  # its knobs are data.synthetic_alpha/beta
        dp = cfg.data.dataset_params_model
        raw["data"]["dataset_params"] = dp.model_dump(mode="json") if dp is not None else {}
    pp = cfg.data.partition_params_model
    raw["data"]["partition_params"] = pp.model_dump(mode="json") if pp is not None else {}
    return raw


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(resolved_dict(cfg), sort_keys=False)
