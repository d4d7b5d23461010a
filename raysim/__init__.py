"""raysim: federated-learning experiments on Ray.

The public Python API is the names in ``__all__`` (docs/api.md) and, for plug-in authors
(docs/extending.md), the contract modules ``raysim.algorithms.base`` (Algorithm, Traits, the round's
records), ``raysim.data`` (``Dataset``, ``DatasetNotFoundError``), ``raysim.plugins`` (``resolve``,
``names``, ``PluginError``), ``raysim.clustering`` and ``raysim.testing``. Everything else
(``raysim.runtime``, the algorithm modules, ``actors``, ``tuning``, ...) is internal and may change
between versions.
``import raysim`` stays light: the names load on first use (torch and Ray only when a run starts).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers know the name)

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access, PEP 562)
_PUBLIC = {
    # configs: from YAML, a dict or these typed objects
    "ConfigError": "raysim.config",
    "ExperimentConfig": "raysim.config",
    "DataConfig": "raysim.config",
    "ModelConfig": "raysim.config",
    "AlgorithmConfig": "raysim.config",
    "LocalConfig": "raysim.config",
    "RoundsConfig": "raysim.config",
    "ResourcesConfig": "raysim.config",
    "OutputConfig": "raysim.config",
    "load_config": "raysim.api",
    # experiments: run, step round by round, resume, read back
    "Experiment": "raysim.runtime.experiment",
    "RoundReport": "raysim.runtime.server",
    "experiment": "raysim.api",
    "run": "raysim.api",
    "resume": "raysim.api",
    "run_or_resume": "raysim.api",
    "resume_if_present": "raysim.api",
    "Results": "raysim.api",
    "results": "raysim.api",
    # sweeps (Ray Tune)
    "load_sweep_spec": "raysim.api",
    "sweep": "raysim.api",
    "resume_sweep": "raysim.api",
    "sweep_trials": "raysim.api",
    "SweepOutcome": "tuning.outputs",
}

__all__ = [  # the public names: _PUBLIC's, spelled out for tools that read __all__ literally
    "__version__",
    "ConfigError",
    "ExperimentConfig",
    "DataConfig",
    "ModelConfig",
    "AlgorithmConfig",
    "LocalConfig",
    "RoundsConfig",
    "ResourcesConfig",
    "OutputConfig",
    "load_config",
    "Experiment",
    "RoundReport",
    "experiment",
    "run",
    "resume",
    "run_or_resume",
    "resume_if_present",
    "Results",
    "results",
    "load_sweep_spec",
    "sweep",
    "resume_sweep",
    "sweep_trials",
    "SweepOutcome",
]


def __getattr__(name: str) -> object:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'raysim' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from raysim.api import (
        Results,
        experiment,
        load_config,
        load_sweep_spec,
        results,
        resume,
        resume_sweep,
        run,
        sweep,
        sweep_trials,
    )
    from raysim.config import (
        AlgorithmConfig,
        ConfigError,
        DataConfig,
        ExperimentConfig,
        LocalConfig,
        ModelConfig,
        OutputConfig,
        ResourcesConfig,
        RoundsConfig,
    )
    from raysim.runtime.experiment import Experiment
    from raysim.runtime.server import RoundReport
    from tuning.outputs import SweepOutcome
