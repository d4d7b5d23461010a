"""Check Ray Tune's pickled sweep state before ``raysim tune --resume`` lets Tune load it.

Tune keeps a sweep's state as pickles (``tuner.pkl``, the searcher's and the variant generator's
state files, the trial records hex-encoded inside ``experiment_state-*.json``), and
``Tuner.restore`` loads them with ``cloudpickle``: a crafted file on a shared results volume
would run any code in whoever resumes. raysim cannot change Tune's format, so it reads every one
of those pickles first *without loading it*: ``pickletools`` walks the opcodes, a symbolic stack
resolves what each one imports, and the sweep is refused (naming the file and the import) unless

* every import is a class of the libraries a sweep's state is made of (Ray Tune/Train/AIR,
  Optuna, numpy, raysim, argparse, and Ray's exceptions, which a failed trial's ``error.pkl``
  holds) or one of a few named functions (numpy's and Python's
  reconstructors, ``tuning.sweep._trial_dirname``), and
* a function that the state only refers to (Ray's upload helper) is never called, and
* no opcode reaches code another way (the extension registry, persistent ids).

raysim's own sweeps pickle no function by value (PBT's explore step is a class,
``tuning.sweep.GeneticExplore``), so ``cloudpickle``'s code-building functions are refused too.
What remains possible is what the allowed classes do with crafted arguments; nothing in this list
runs code given as data.
"""

from __future__ import annotations

import importlib
import json
import pickletools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raysim.config import ConfigError

CLASS_MODULES = ("ray.tune.", "ray.train.", "ray.air.", "optuna.", "numpy.", "tuning.", "raysim.")
# a failed trial's error.pkl holds the exception it failed with: Ray's own exception classes (an
# actor lost, say) may be called with their arguments, which an exception's constructor only stores
EXCEPTION_MODULES = {"ray.exceptions"}
CLASS_PACKAGES = {"ray.tune", "ray.train", "optuna", "numpy", "argparse", *EXCEPTION_MODULES}
CLASSES = {  # classes outside those packages
    ("collections", "deque"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("datetime", "datetime"),
    ("datetime", "date"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("uuid", "UUID"),
    ("random", "Random"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("builtins", "slice"),
    ("builtins", "range"),
    ("builtins", "object"),
}
# classes a state may call with arguments (their constructors only build a value); any other
# class only gets ``cls.__new__(cls)`` (NEWOBJ without arguments) and its state set, as
# unpickling a plain object does. Enums may be called too (a member by value).
CALLABLE_CLASSES = CLASSES | {("numpy", "dtype"), ("numpy", "ndarray")}
FUNCTIONS = {  # functions a state may call: numpy's and pyarrow's rebuilders, raysim's own
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
    ("pyarrow._fs", "FileSystem._from_uri"),
    ("tuning.sweep", "_trial_dirname"),
    ("optuna.samplers._tpe.sampler", "default_weights"),
    ("optuna.samplers._tpe.sampler", "default_gamma"),
    ("optuna.samplers._tpe.sampler", "hyperopt_default_gamma"),
}
REFERENCE_ONLY = {  # a state holds them, nothing in it may call them (this one copies files)
    ("ray.train._internal.storage", "_upload_to_fs_path"),
    ("tensorboardX.writer", "SummaryWriter"),  # Tune's TBX callback (output.trackers) keeps the class
}
_STRINGS = {
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
    "UNICODE",
    "BINUNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE8",
}
_NO_STACK = {"PROTO", "FRAME", "STOP"}
_REFUSED_OPS = {"EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"}
_MARK = object()
_EMPTY = ("tuple", ())


class UnsafePickle(ValueError):
    pass


class _Global:
    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class _Str:
    def __init__(self, value: str) -> None:
        self.value = value


def pickle_globals(data: bytes) -> Iterator[tuple[str, str, str]]:
    """``(module, name, how)`` for every import of a pickle, read without loading it: ``how`` is
    "import", "call" (called with arguments) or "new" (``cls.__new__(cls)``, no arguments)."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name in _REFUSED_OPS:
                raise UnsafePickle(f"opcode {name} (reaches objects outside the pickle)")
            if name in _NO_STACK:
                continue
            if name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg or 0)] = stack[-1] if stack else None  # PUT opcodes always carry an index
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(int(arg or 0)))
            elif name in _STRINGS:
                stack.append(_Str(arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)))
            elif name == "MARK":
                stack.append(_MARK)
            elif name == "EMPTY_TUPLE":
                stack.append(_EMPTY)
            elif name == "GLOBAL":
                module, qual = str(arg).split(" ", 1)
                yield module, qual, "import"
                stack.append(_Global(module, qual))
            elif name == "INST":  # INST module name: calls the class on the items since the mark
                module, qual = str(arg).split(" ", 1)
                _pop_mark(stack)
                yield module, qual, "call"
                stack.append(None)
            elif name == "STACK_GLOBAL":
                qual_s = stack.pop() if stack else None
                module_s = stack.pop() if stack else None
                if not (isinstance(module_s, _Str) and isinstance(qual_s, _Str)):
                    raise UnsafePickle("an import whose name is computed, not written in the file")
                yield module_s.value, qual_s.value, "import"
                stack.append(_Global(module_s.value, qual_s.value))
            elif name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX"):
                if name == "NEWOBJ_EX":
                    kwargs = stack.pop() if stack else None
                args = stack.pop() if stack else None
                fn = stack.pop() if stack else None
                no_args = args == _EMPTY and (name != "NEWOBJ_EX" or kwargs is None or kwargs == ("dict",))
                how = "new" if name != "REDUCE" and no_args else "call"
                if isinstance(fn, _Global):
                    yield fn.module, fn.name, how
                elif how == "call" and name == "REDUCE":
                    pass  # calling a value built earlier: built only from what was checked
                stack.append(None)
            elif name == "OBJ":
                items = _pop_mark(stack)
                if items and isinstance(items[0], _Global):
                    yield items[0].module, items[0].name, "call"
                stack.append(None)
            elif name == "EMPTY_DICT":
                stack.append(("dict",))
            else:
                _generic(op, stack)
    except UnsafePickle:
        raise
    except Exception as exc:  # pickletools raises ValueError on a truncated or malformed stream
        raise UnsafePickle(f"not a readable pickle ({exc})") from None


def _pop_mark(stack: list[Any]) -> list[Any]:
    items: list[Any] = []
    while stack:
        x = stack.pop()
        if x is _MARK:
            return items[::-1]
        items.append(x)
    raise UnsafePickle("no MARK on the stack")


def _generic(op: Any, stack: list[Any]) -> None:
    """Any other opcode: its documented stack effect, the values unknown."""
    before = list(op.stack_before)
    if pickletools.markobject in before:
        _pop_mark(stack)
        before = before[: before.index(pickletools.markobject)]
    for _ in before:
        if stack:
            stack.pop()
    stack.extend([None] * len(op.stack_after))


def _resolve(module: str, qual: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def _allowed_class(module: str, qual: str) -> type | None:
    if not ((module, qual) in CLASSES or module in CLASS_PACKAGES or module.startswith(CLASS_MODULES)):
        return None
    try:
        obj = _resolve(module, qual)
    except Exception:  # noqa: BLE001 - a name this installation lacks is refused, whatever the reason
        return None
    return obj if isinstance(obj, type) else None


def check_pickle(data: bytes, source: str) -> None:
    """Raise ConfigError naming ``source`` unless every import of the pickle is allowed."""
    import enum

    try:
        for module, qual, how in pickle_globals(data):
            key = (module, qual)
            if key in REFERENCE_ONLY:
                if how != "import":
                    raise UnsafePickle(f"it calls {module}.{qual}")
            elif key in FUNCTIONS:
                continue
            else:
                cls = _allowed_class(module, qual)
                if cls is None:
                    raise UnsafePickle(f"it imports {module}.{qual}, which no raysim sweep state holds")
                plain = (  # an enum member, a namedtuple, a Ray exception: built from its values
                    issubclass(cls, enum.Enum)
                    or (issubclass(cls, tuple) and hasattr(cls, "_fields"))
                    or (module in EXCEPTION_MODULES and issubclass(cls, BaseException))
                )
                if how == "call" and key not in CALLABLE_CLASSES and not plain:
                    raise UnsafePickle(f"it calls {module}.{qual} with arguments")
    except UnsafePickle as exc:
        raise ConfigError(
            f"{source}: refusing to let Ray Tune load this sweep state: {exc}. Loading it could run "
            "code from the file; resume only sweeps this raysim wrote (or pass --trust-sweep-state "
            "for one you wrote yourself with another version)"
        ) from None


# A pickle of protocol 2-5 starts with PROTO (0x80) and its protocol: what Tune hex-encodes. A Ray
# id that happens to start with "80" (a placement_group_id "80f0b0...") is not one; pickle.loads
# refuses any other protocol byte, so nothing that could run code is left unchecked.
PICKLE_STARTS = frozenset(f"80{p:02x}" for p in range(2, 6))


def _hex_pickles(value: Any) -> Iterator[bytes]:
    """The pickles Tune hex-encodes inside its JSON state (and JSON inside JSON strings)."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _hex_pickles(v)
    elif isinstance(value, list):
        for v in value:
            yield from _hex_pickles(v)
    elif isinstance(value, str):
        text = value.strip()
        if text[:1] in "{[":
            try:
                yield from _hex_pickles(json.loads(text))
            except ValueError:
                return
        elif len(text) >= 4 and len(text) % 2 == 0 and text[:4] in PICKLE_STARTS:
            try:
                yield bytes.fromhex(text)
            except ValueError:
                return


def state_files(directory: Path) -> list[Path]:
    """The files of a sweep directory Tune may unpickle: its own and its trials' top-level files."""
    out = [p for p in sorted(directory.iterdir()) if p.is_file()]
    for trial in sorted(directory.glob("trial_*")):
        if trial.is_dir():
            out += [p for p in sorted(trial.iterdir()) if p.is_file() and p.suffix in (".pkl", ".json")]
    return out


def check_tune_state(directory: Path) -> int:
    """Check every pickle Tune's restore would load from ``directory``; returns how many were
    checked. ConfigError names the first file that is not a sweep state raysim would write."""
    n = 0
    for path in state_files(Path(directory)):
        head = path.read_bytes()[:1]
        if head == b"\x80":  # a pickle, whatever the file is called (Tune names some of them .json)
            check_pickle(path.read_bytes(), str(path))
            n += 1
        elif path.suffix == ".json" and path.name.startswith("experiment_state"):
            try:
                state = json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}: Tune's experiment state is not readable JSON ({exc})") from None
            for i, blob in enumerate(_hex_pickles(state)):
                check_pickle(blob, f"{path} (pickled value {i + 1})")
                n += 1
    return n
