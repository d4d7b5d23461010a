"""A checkpoint's state as JSON plus raw arrays, and back, building only known types.

``rundir`` writes and reads checkpoints (files, sizes, hashes, formats); this module is the codec
underneath: ``encode_state`` turns a state tree (dicts, lists, tuples, sets, str, int, float incl.
nan/inf, bool, None, bytes, numpy arrays and scalars, torch tensors, numpy Generators and
RandomStates, ``random.Random``, dataclasses of raysim's own modules) into JSON-able placeholders
and the list of its arrays; ``decode_state`` rebuilds it without running code from the file (a
dataclass is looked up by name, must come from a ``raysim.`` module or the module of a plug-in
algorithm the config named (its own state), and is filled field by field).
Separate from ``rundir`` because it is a pure function of the tree: no files, and every type rule
of what a checkpoint may hold is here in one place.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import math
import random
import sys
from typing import Any

import numpy as np

from raysim.config import ConfigError

DATACLASS_MODULES = ("raysim.",)  # where a checkpoint's dataclasses may come from
BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def _allowed_module(module: str) -> bool:
    """raysim's own modules, and the modules of the plug-in algorithms this process resolved by
    name (``raysim.plugins.state_modules``: a plug-in's state may be dataclasses defined beside it)."""
    if module.startswith(DATACLASS_MODULES):
        return True
    from raysim.plugins import state_modules

    return module in state_modules()


Where = tuple[Any, ...] | str  # (parent, key) or (parent, ".", field): formatted only for an error


def _where(w: Where) -> str:
    keys = []
    while isinstance(w, tuple):
        keys.append(f".{w[2]}" if len(w) == 3 else f"[{w[1]!r}]")
        w = w[0]
    return w + "".join(reversed(keys))


class _Encoder:
    """A state tree to JSON-able placeholders; the arrays are collected in order."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []
        self._seen: dict[int, int] = {}  # id(ndarray) -> index: an array met twice is stored once

    def array(self, a: np.ndarray, where: Where) -> int:
        i = self._seen.get(id(a))
        if i is None:
            if a.dtype.hasobject or a.dtype.kind == "T":
                raise TypeError(
                    f"checkpoint: {_where(where)} is an array of Python objects ({a.dtype}); store numbers"
                )
            i = self._seen[id(a)] = len(self.arrays)
            self.arrays.append(a)  # (the list keeps ``a`` alive, so its id stays its own)
        return i

    def __call__(self, x: Any, where: Where = "state") -> Any:
        t = type(x)
        if t is str or t is int or t is bool or x is None:  # exact types: a subclass (an IntEnum) is refused
            return x
        if t is dict:
            if all(type(k) is str and k[:1] != "$" for k in x):
                return {k: self(v, (where, k)) for k, v in x.items()}
            return {"$dict": [[self(k, (where, k)), self(v, (where, k))] for k, v in x.items()]}
        if t is np.ndarray:
            return {"$array": self.array(x, where)}
        if t is float:
            return x if math.isfinite(x) else {"$float": repr(x)}
        if t is list:
            return [self(v, (where, i)) for i, v in enumerate(x)]
        if t is tuple:
            return {"$tuple": [self(v, (where, i)) for i, v in enumerate(x)]}
        if isinstance(x, np.generic):  # before str/float below: np.str_ is a str, np.float64 a float
            return {"$scalar": self.array(np.asarray(x), where)}
        if isinstance(x, np.ndarray):  # a subclass (memmap): its values, as a plain array
            return {"$array": self.array(np.asarray(x), where)}
        if t is set or t is frozenset:
            return {f"${t.__name__}": [self(v, (where, v)) for v in x]}
        if t is bytes:
            return {"$bytes": base64.b64encode(x).decode()}
        if t is np.random.Generator:
            return {"$generator": self._bit_generator(x.bit_generator, where)}
        if t is np.random.RandomState:
            return {"$randomstate": self(x.get_state(legacy=False), where)}
        if t is random.Random:
            return {"$pyrandom": self(x.getstate(), where)}
        torch = sys.modules.get("torch")  # a state holding tensors has imported torch
        if torch is not None and t in (torch.Tensor, torch.nn.Parameter):
            return self._tensor(x, where)
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            if not _allowed_module(t.__module__):
                raise TypeError(
                    f"checkpoint: {_where(where)} is a {t.__module__}.{t.__qualname__}; a checkpoint keeps "
                    f"dataclasses of raysim's modules and of the configured plug-in algorithm's module only"
                )
            return {
                "$dataclass": f"{t.__module__}:{t.__qualname__}",
                "fields": {
                    f.name: self(getattr(x, f.name), (where, ".", f.name)) for f in dataclasses.fields(x)
                },
            }
        raise TypeError(
            f"checkpoint: {_where(where)} is a {t.__module__}.{t.__qualname__}, which a checkpoint cannot "
            "store (it keeps containers, numbers, strings, arrays, tensors, random generators and raysim "
            "dataclasses)"
        )

    def _bit_generator(self, bg: Any, where: Where) -> dict[str, Any]:
        name = type(bg).__name__
        if name not in BIT_GENERATORS:
            raise TypeError(
                f"checkpoint: {_where(where)} uses bit generator {name}; supported: {', '.join(BIT_GENERATORS)}"
            )
        out: dict[str, Any] = {"name": name, "state": self(bg.state, where)}
        seq = getattr(bg, "seed_seq", None)  # what spawn() continues from
        if isinstance(seq, np.random.SeedSequence):
            out["seed_seq"] = self(
                {
                    "entropy": seq.entropy,
                    "spawn_key": tuple(seq.spawn_key),
                    "pool_size": seq.pool_size,
                    "n_children_spawned": seq.n_children_spawned,
                },
                where,
            )
        return out

    def _tensor(self, t: Any, where: Where) -> dict[str, Any]:
        import torch

        if t.layout != torch.strided or t.is_quantized:
            raise TypeError(f"checkpoint: {_where(where)} is a {t.layout} tensor; store dense tensors")
        c = t.detach().cpu().contiguous()
        try:
            a, raw = c.numpy(), False
        except TypeError:  # bfloat16, float8...: numpy has no such dtype, keep the bytes
            a, raw = c.reshape(-1).view(torch.uint8).numpy(), True
        return {
            "$tensor": self.array(a, where),
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
            "raw": raw,
            "device": str(t.device),
            "requires_grad": bool(t.requires_grad),
            "parameter": isinstance(t, torch.nn.Parameter),
        }


class _Decoder:
    """JSON placeholders back into the state tree; builds nothing but the types listed above."""

    def __init__(self, arrays: list[np.ndarray], source: str) -> None:
        self.arrays = arrays
        self.source = source

    def bad(self, why: str) -> ConfigError:
        return ConfigError(f"{self.source}: not a raysim checkpoint state ({why})")

    def array(self, i: Any) -> np.ndarray:
        if type(i) is not int or not 0 <= i < len(self.arrays):
            raise self.bad(f"array index {i!r} out of range")
        return self.arrays[i]

    def __call__(self, x: Any) -> Any:
        t = type(x)
        if t is dict:
            if not x:
                return {}
            tag = next(iter(x))
            if tag[:1] != "$":
                return {k: self(v) for k, v in x.items()}
            if tag == "$array":
                return self.array(x[tag])
            return self._tagged(tag, x[tag], x)
        if t is list:
            return [self(v) for v in x]
        if t is str or t is int or t is float or t is bool or x is None:
            return x
        raise self.bad(f"unexpected {t.__name__}")

    def _tagged(self, tag: str, body: Any, x: dict[str, Any]) -> Any:
        if tag == "$scalar":
            return self.array(body)[()]
        if tag == "$float":
            if body not in ("nan", "inf", "-inf"):
                raise self.bad(f"float {body!r}")
            return float(body)
        if tag == "$dict":
            if type(body) is not list or not all(type(p) is list and len(p) == 2 for p in body):
                raise self.bad("$dict must hold [key, value] pairs")
            return {self(k): self(v) for k, v in body}
        if tag == "$tuple":
            return tuple(self(v) for v in self._list(body, tag))
        if tag == "$set":
            return {self(v) for v in self._list(body, tag)}
        if tag == "$frozenset":
            return frozenset(self(v) for v in self._list(body, tag))
        if tag == "$bytes":
            try:
                return base64.b64decode(body, validate=True)
            except (TypeError, ValueError) as exc:
                raise self.bad(f"$bytes: {exc}") from None
        if tag == "$generator":
            return np.random.Generator(self._bit_generator(body))
        if tag == "$randomstate":
            rs = np.random.RandomState()
            rs.set_state(self(body))
            return rs
        if tag == "$pyrandom":
            r = random.Random()
            r.setstate(self(body))
            return r
        if tag == "$tensor":
            return self._tensor(x)
        if tag == "$dataclass":
            return self._dataclass(body, x.get("fields"))
        raise self.bad(f"unknown tag {tag}")

    def _list(self, body: Any, tag: str) -> list[Any]:
        if type(body) is not list:
            raise self.bad(f"{tag} must hold a list")
        return body

    def _bit_generator(self, body: Any) -> Any:
        if type(body) is not dict or body.get("name") not in BIT_GENERATORS:
            raise self.bad(f"bit generator {body.get('name') if type(body) is dict else body!r}")
        cls = getattr(np.random, body["name"])
        seq = None
        if "seed_seq" in body:
            s = self(body["seed_seq"])
            seq = np.random.SeedSequence(
                s["entropy"],
                spawn_key=s["spawn_key"],
                pool_size=s["pool_size"],
                n_children_spawned=s["n_children_spawned"],
            )
        bg = cls(seq) if seq is not None else cls()
        bg.state = self(body["state"])
        return bg

    def _tensor(self, x: dict[str, Any]) -> Any:
        import torch

        a = self.array(x["$tensor"])
        dtype = getattr(torch, str(x.get("dtype")), None)
        if not isinstance(dtype, torch.dtype):
            raise self.bad(f"tensor dtype {x.get('dtype')!r}")
        t = torch.from_numpy(a)
        if x.get("raw"):
            t = t.view(dtype).reshape(x["shape"])
        t = t.to(torch.device(str(x.get("device", "cpu"))))
        if x.get("parameter"):
            return torch.nn.Parameter(t, requires_grad=bool(x.get("requires_grad")))
        return t.requires_grad_(bool(x.get("requires_grad")))

    def _dataclass(self, name: Any, fields: Any) -> Any:
        if type(name) is not str or ":" not in name or type(fields) is not dict:
            raise self.bad(f"dataclass {name!r}")
        module, qualname = name.split(":", 1)
        if not _allowed_module(module):
            raise self.bad(
                f"dataclass {name} is not one of raysim's nor of the configured plug-in algorithm's module"
            )
        try:
            cls: Any = importlib.import_module(module)
            for part in qualname.split("."):
                cls = getattr(cls, part)
        except (ImportError, AttributeError):
            raise self.bad(f"no dataclass {name} in this raysim (written by another version?)") from None
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise self.bad(f"{name} is not a dataclass")
        names = [f.name for f in dataclasses.fields(cls)]
        if sorted(names) != sorted(fields):
            raise self.bad(
                f"{name} has fields {', '.join(names)} here, the checkpoint {', '.join(fields)} "
                "(written by another version?)"
            )
        obj = object.__new__(cls)
        for key in names:  # as unpickling does: no __init__, no __post_init__
            object.__setattr__(obj, key, self(fields[key]))
        return obj


def encode_state(state: Any) -> tuple[Any, list[np.ndarray]]:
    """``(tree, arrays)``: ``state`` as JSON-able placeholders plus its arrays, in order."""
    enc = _Encoder()
    return enc(state), enc.arrays


def decode_state(tree: Any, arrays: list[np.ndarray], source: str = "<state>") -> Any:
    return _Decoder(arrays, source)(tree)
