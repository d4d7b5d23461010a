"""One registry for the four kinds of plug-in: algorithms, models, datasets and partitions.

A name in a config (``algorithm.name``, ``model.name``, ``data.dataset``, ``data.partition``) is
looked up in this order:

1. **a built-in name** (``fedavg``, ``cnn-small``, ``digits``, ``dirichlet``, ...): raysim's own
   tables (``raysim.algorithms.ALGORITHMS``, ``raysim.models.registry.MODELS``,
   ``raysim.data.datasets.DATASETS``, ``raysim.data.schemes.PARTITIONS``). A table entry may be
   an import-path string, imported on first use (the file datasets ``npz``, ``parquet``,
   ``imagefolder``: ``raysim.data.files`` loads pyarrow/torchvision only when asked for).
2. **an entry point** of an installed package, in the group ``raysim.<kind>``
   (``raysim.algorithms``, ``raysim.models``, ``raysim.datasets``, ``raysim.partitions``), e.g. in
   the package's ``pyproject.toml``::

       [project.entry-points."raysim.algorithms"]
       kmeans-cfl = "my_package.algo:KMeansCFL"

   Read once per process through ``importlib.metadata`` (``clear_cache`` forgets them, for tests
   and for a package installed while the process runs). A built-in name wins over an entry point
   of the same name: a package cannot silently replace ``fedavg``.
3. **an import path** ``package.module:Attr`` (``Attr`` may be dotted: ``module:Class.builder``),
   imported when the config is validated. When the module cannot be imported from ``sys.path``,
   the current directory is tried too (as ``python -m`` would), so ``my_algo:MyAlgo`` next to the
   config works from the ``raysim`` command.

What each kind must be (checked by :func:`resolve`; ``PluginError`` says which attribute is
missing): an **algorithm** is a class like the built-ins (``raysim.algorithms.base.Algorithm``:
``name``, ``params_model``, ``traits``, ``init``, ``configure_round``, ``aggregate``,
``client_update``), built as ``cls(params)``; a **model** is a callable ``(input_shape,
num_classes, **params) -> torch.nn.Module``; a **dataset** a callable ``(*, data_dir, seed,
num_clients, params) -> raysim.data.Dataset`` with an optional ``check(*, data_dir, params) ->
str | None``; a **partition** a callable ``(labels, num_clients, rng, params) -> list[np.ndarray]``.
Any of them may carry ``params_model`` (a pydantic ``BaseModel`` subclass) validating its section's
other keys (``algorithm:``/``model:``) or ``data.dataset_params`` / ``data.partition_params``.

**Where the code must be (Ray).** Actors rebuild the model by name and unpickle the algorithm
object, so a plug-in's module must import in every Ray worker: an installed package must be
installed (same version) on every node; a local module given by import path is found on a local
cluster because the client and server actors get the folder it was imported from on their
``PYTHONPATH`` (:func:`worker_env`), but on a multi-node cluster that folder must exist at the same
path on every node (or be installed there as a package). ``actors.plugin_check`` imports the run's
plug-ins on every node before the actors start and refuses the run with the node's name and what
to install. Datasets and partitions run on the driver only.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import os
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

KINDS: tuple[str, ...] = ("algorithms", "models", "datasets", "partitions")
SINGULAR = {"algorithms": "algorithm", "models": "model", "datasets": "dataset", "partitions": "partition"}
# what an algorithm class must have: the attributes raysim reads and the four it calls every round
ALGORITHM_ATTRS = ("name", "params_model", "traits", "init", "configure_round", "aggregate", "client_update")


class PluginError(ValueError):
    """A name that is no plug-in: unknown, not importable, or not what its kind must be. The message
    names the kind, the name, why, and the valid names."""


def group(kind: str) -> str:
    """The entry-point group of ``kind`` (``raysim.algorithms``, ...)."""
    return f"raysim.{kind}"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown plug-in kind {kind!r}; kinds: {', '.join(KINDS)}")


def builtins(kind: str) -> Mapping[str, Any]:
    """raysim's own table of ``kind`` (values: the object, or an import-path string)."""
    _check_kind(kind)
    if kind == "algorithms":
        from raysim.algorithms import ALGORITHMS

        return ALGORITHMS
    if kind == "models":
        from raysim.models.registry import MODELS

        return MODELS
    if kind == "datasets":
        from raysim.data.datasets import DATASETS

        return DATASETS
    from raysim.data.schemes import PARTITIONS

    return PARTITIONS


@functools.cache
def entry_points(kind: str) -> dict[str, importlib.metadata.EntryPoint]:
    """The installed packages' entry points of ``kind`` by name (read once; ``clear_cache``)."""
    _check_kind(kind)
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=group(kind))}


def clear_cache() -> None:
    """Forget the entry points read so far (a package installed or removed since)."""
    entry_points.cache_clear()


def names(kind: str) -> list[str]:
    """Every name ``kind`` answers to without an import path: built-ins first (algorithms and
    models alphabetically, datasets and partitions in their table's order), then entry points."""
    own = sorted(builtins(kind)) if kind in ("algorithms", "models") else list(builtins(kind))
    return own + sorted(n for n in entry_points(kind) if n not in own)


def is_import_path(name: str) -> bool:
    return ":" in name


def _valid(kind: str) -> str:
    return f"valid names: {', '.join(names(kind))} (or an import path package.module:Name)"


def resolve(kind: str, name: str) -> Any:
    """The plug-in ``name`` of ``kind`` (built-in, entry point or import path), contract-checked;
    ``PluginError`` otherwise."""
    _check_kind(kind)
    what = SINGULAR[kind]
    if not isinstance(name, str) or not name.strip():
        raise PluginError(f"{what} name must be a non-empty string, got {name!r}; {_valid(kind)}")
    table = builtins(kind)
    if name in table:
        obj = table[name]
        if isinstance(obj, str):
            obj = _import(kind, name, obj, "built-in")
    elif name in entry_points(kind):
        ep = entry_points(kind)[name]
        where = f"entry point {name!r} ({ep.value}) of group {group(kind)}"
        try:
            obj = ep.load()
        except ImportError as err:
            raise PluginError(
                f"{what} {name!r}: the {where} cannot be imported: {type(err).__name__}: {err}. "
                f"Install the package that provides {ep.module!r} (the same version on every node)"
            ) from None
        except AttributeError as err:
            raise PluginError(f"{what} {name!r}: the {where} names nothing there: {err}") from None
    elif is_import_path(name):
        obj = _import(kind, name, name, "import path")
    else:
        raise PluginError(f"unknown {what} {name!r}; {_valid(kind)}")
    problem = contract_problem(kind, obj)
    if problem is not None:
        raise PluginError(f"{what} {name!r} is not a raysim {what}: {problem}")
    if kind == "algorithms" and not str(obj.__module__).startswith("raysim."):
        _STATE_MODULES.add(str(obj.__module__))
    return obj


# the modules of the plug-in algorithms this process resolved: a checkpoint may hold dataclasses
# defined there (raysim.runtime.statecodec), as it may raysim's own. Only a module the config
# already imported can be named, so a checkpoint file cannot make raysim import anything new.
_STATE_MODULES: set[str] = set()


def state_modules() -> tuple[str, ...]:
    """The modules whose dataclasses an algorithm's checkpointed state may hold (see above)."""
    return tuple(sorted(_STATE_MODULES))


def _import(kind: str, name: str, path: str, how: str) -> Any:
    what = SINGULAR[kind]
    module_name, _, attr = path.partition(":")
    parts = module_name.split(".")
    if not module_name or not attr or not all(p.isidentifier() for p in parts + attr.split(".")):
        raise PluginError(
            f"{what} {name!r} is not an import path: write package.module:Name (e.g. my_algo:MyAlgo); "
            f"{_valid(kind)}"
        )
    try:
        module = _import_module(module_name)
    except ImportError as err:
        raise PluginError(
            f"{what} {name!r}: cannot import module {module_name!r} ({how}): {type(err).__name__}: {err}. "
            f"Install the package that provides it, or run from the folder that holds {parts[0]!r}; "
            f"{_valid(kind)}"
        ) from None
    obj: Any = module
    for i, piece in enumerate(attr.split(".")):
        if not hasattr(obj, piece):
            owner = module_name + (":" + ".".join(attr.split(".")[:i]) if i else "")
            found = _candidates(kind, obj, module_name)
            raise PluginError(
                f"{what} {name!r}: {owner} has no attribute {piece!r} "
                f"({kind} defined there: {', '.join(found) or 'none'})"
            )
        obj = getattr(obj, piece)
    _remember_root(module)
    return obj


def _candidates(kind: str, owner: Any, module_name: str) -> list[str]:
    """The names defined in ``owner`` (a module or class) that would satisfy ``kind``'s contract."""
    out = []
    for attr, value in vars(owner).items():
        if attr.startswith("_") or getattr(value, "__module__", None) != module_name:
            continue
        if inspect.isclass(value) and issubclass(value, BaseModel):
            continue  # a params model, not a plug-in
        if contract_problem(kind, value) is None:
            out.append(attr)
    return sorted(out)


def _import_module(module_name: str) -> Any:
    """``importlib.import_module``, retried with the current directory on ``sys.path`` when the
    top-level package is missing and the directory is not there already (the ``raysim`` command's
    ``sys.path`` starts at its script's folder, not where the user stands)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        top = module_name.split(".")[0]
        cwd = os.getcwd()
        if err.name != top or cwd in sys.path or "" in sys.path or not _has_module(Path(cwd), top):
            raise
        sys.path.append(cwd)
        return importlib.import_module(module_name)


def _has_module(folder: Path, top: str) -> bool:
    return (folder / f"{top}.py").is_file() or (folder / top).is_dir()


# the folders plug-ins were imported from by import path that an installed interpreter would not
# find by itself (not site-packages): what the Ray workers need on their PYTHONPATH
_LOCAL_ROOTS: dict[str, None] = {}


def _site_dirs() -> set[str]:
    paths = sysconfig.get_paths()
    return {str(Path(paths[k]).resolve()) for k in ("purelib", "platlib", "stdlib") if k in paths}


def _remember_root(module: Any) -> None:
    """Note the ``sys.path`` folder ``module`` was imported from, unless workers find it anyway
    (site-packages, the standard library) or it is raysim's own."""
    file = getattr(module, "__file__", None)
    if not file or module.__name__.split(".")[0] == "raysim":
        return
    path = Path(file).resolve()
    depth = module.__name__.count(".") + (1 if path.name == "__init__.py" else 0)
    if depth >= len(path.parents):
        return
    root = path.parents[depth]
    if str(root) not in _site_dirs():
        _LOCAL_ROOTS[str(root)] = None


def local_roots() -> list[str]:
    """The folders this process imported plug-ins from by import path (outside site-packages)."""
    return list(_LOCAL_ROOTS)


def worker_env() -> dict[str, str]:
    """Environment variables Ray actors need to import this process's local plug-ins: the folders
    they were imported from, ahead of the driver's own ``PYTHONPATH`` (empty when there are none).
    On a multi-node cluster the folders must exist at the same path on every node."""
    if not _LOCAL_ROOTS:
        return {}
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    there = {str(Path(p).resolve()) for p in current}
    roots = [r for r in _LOCAL_ROOTS if r not in there]
    return {"PYTHONPATH": os.pathsep.join(roots + current)} if roots else {}


def contract_problem(kind: str, obj: Any) -> str | None:
    """Why ``obj`` cannot be a plug-in of ``kind`` (None: it can)."""
    pm = getattr(obj, "params_model", None)
    if kind == "algorithms":
        if not inspect.isclass(obj):
            return f"an algorithm is a class (like raysim.algorithms.FedAvg), got {type(obj).__name__}"
        missing = [a for a in ALGORITHM_ATTRS if not hasattr(obj, a)]
        if missing:
            return f"{obj.__qualname__} has no {', '.join(missing)} (subclass raysim.algorithms.Algorithm)"
        if pm is None:
            return f"{obj.__qualname__}.params_model is None: use raysim.algorithms.AlgoParams for none"
    elif not callable(obj):
        return f"a {SINGULAR[kind]} is a callable, got {type(obj).__name__}"
    if pm is not None and not (inspect.isclass(pm) and issubclass(pm, BaseModel)):
        return f"its params_model must be a pydantic BaseModel subclass, got {pm!r}"
    return None


def params_model(obj: Any) -> type[BaseModel] | None:
    return getattr(obj, "params_model", None)


def validate_params(kind: str, name: str, obj: Any, params: Mapping[str, Any] | BaseModel | None) -> Any:
    """``params`` validated by ``obj``'s ``params_model`` (its instance), or ``None`` when it has
    none and ``params`` is empty. A ``pydantic.ValidationError`` for bad values (callers inside a
    config validator let it through, so each key's line names its place); ``PluginError`` for keys
    given to a plug-in without ``params_model``."""
    pm = params_model(obj)
    if isinstance(params, BaseModel):
        if pm is not None and isinstance(params, pm):
            return params
        params = params.model_dump()
    if pm is None:
        if params:
            keys = sorted(params)
            raise PluginError(
                f"{SINGULAR[kind]} {name!r} takes no parameters (it has no params_model): unknown "
                f"key{'s' if len(keys) > 1 else ''} {', '.join(keys)} (check the spelling)"
            )
        return None
    return pm.model_validate(dict(params or {}))


def call_params(pm_instance: BaseModel | None) -> dict[str, Any]:
    """A model's keyword arguments from its validated params (attribute values, not a JSON dump)."""
    if pm_instance is None:
        return {}
    return {k: getattr(pm_instance, k) for k in type(pm_instance).model_fields}


__all__ = [
    "KINDS",
    "PluginError",
    "builtins",
    "call_params",
    "clear_cache",
    "contract_problem",
    "entry_points",
    "group",
    "is_import_path",
    "local_roots",
    "names",
    "params_model",
    "resolve",
    "validate_params",
    "worker_env",
]
