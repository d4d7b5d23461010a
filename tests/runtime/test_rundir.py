"""Checkpoints as arrays plus JSON (format 3): every built-in algorithm's state comes back exactly,
a damaged, foreign, old or crafted checkpoint is refused naming the file, and nothing in a
checkpoint is ever run. Run directories stay inside their base."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raysim.algorithms import ALGORITHMS
from raysim.algorithms.fedavg import GlobalState
from raysim.config import ConfigError
from raysim.runtime import rundir
from tests.conftest import tiny_config
from tests.helpers import experiment

# what an algorithm needs beyond tiny_config to be configured at all
NEEDS = {
    "ascfl": {"data__public_fraction": 0.1},
    "dsac": {"data__public_fraction": 0.1},
    "fedbn": {"model__name": "cnn-bn"},
    "pfedht": {"model__name": "vit-tiny"},
}


def same(a: Any, b: Any, where: str = "state") -> None:
    """``a`` and ``b`` are the same tree: the same types everywhere, the same bits in every array
    (nan included), the same keys in the same order."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray | np.generic):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b), where
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), where
    elif isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.device, a.requires_grad) == (b.dtype, b.shape, b.device, b.requires_grad)
        assert (
            a.detach()
            .contiguous()
            .reshape(-1)
            .view(torch.uint8)
            .equal(b.detach().reshape(-1).view(torch.uint8))
        ), where
    elif isinstance(a, float):
        assert repr(a) == repr(b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.random.Generator):
        same(a.bit_generator.state, b.bit_generator.state, where)
        sa, sb = a.bit_generator.seed_seq, b.bit_generator.seed_seq
        assert (sa.entropy, sa.spawn_key, sa.n_children_spawned) == (
            sb.entropy,
            sb.spawn_key,
            sb.n_children_spawned,
        )
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, np.random.RandomState):
        same(a.get_state(legacy=False), b.get_state(legacy=False), where)
    elif isinstance(a, random.Random):
        assert a.getstate() == b.getstate(), where
    else:
        assert a == b, where


def roundtrip(state: Any, tmp_path: Path, rnd: int = 7) -> Any:
    rundir.write_checkpoint(tmp_path / "ck", rnd, state, "name: x\n")
    blob = rundir.read_checkpoint(tmp_path / "ck")
    assert blob["round"] == rnd and blob["format"] == rundir.FORMAT == 3
    return blob["server"]


@dataclasses.dataclass(frozen=True)
class _Foreign:  # a dataclass of a test module: not raysim's, so a checkpoint refuses it
    x: int = 1


def test_every_supported_type_comes_back_exactly(tmp_path):
    gen = np.random.default_rng(11)
    gen.normal(size=3)
    child = np.random.default_rng(np.random.SeedSequence(5, spawn_key=(2, 3))).spawn(2)[1]
    legacy = np.random.RandomState(4)
    legacy.normal()  # a cached gaussian in its state
    pyr = random.Random(9)
    pyr.gauss(0, 1)
    shared = np.arange(4.0)
    state = {
        "floats": [0.1, -0.0, math.nan, math.inf, -math.inf, 1e308, 5e-324],
        "ints": [0, -1, 2**63, -(2**100), True, False, None],
        "strs": ["", "é", "$array", "\udc80"],
        "bytes": b"\x00\xff",
        "tuple": (1, (2.5, "a"), ()),
        "set": {1, 2, 3},
        "frozen": frozenset({"a"}),
        "int_keys": {0: "a", 7: {"b": 1}, (1, 2): None, "$not_a_tag": 1, 2.5: 0},
        "empty": {},
        "arrays": {
            str(dt): np.arange(6).astype(dt).reshape(2, 3)
            for dt in (
                "f2",
                "f4",
                "f8",
                "c8",
                "c16",
                "i1",
                "u2",
                "i8",
                "?",
                ">f8",
                "M8[ns]",
                "m8[s]",
                "U3",
                "S2",
            )
        },
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "zero_d": np.array(3.5),
        "empty_array": np.zeros((0, 3), np.float32),
        "nan_array": np.array([np.nan, -np.nan, np.inf], np.float32),
        "structured": np.zeros(2, dtype=[("a", "<f4", (2,)), ("b", "<i8")]),
        "scalars": [
            np.float32(1.5),
            np.int64(-3),
            np.bool_(True),
            np.float64(np.nan),
            np.str_("x"),
            np.uint8(7),
        ],
        "shared": [shared, shared],
        "gen": gen,
        "child": child,
        "legacy": legacy,
        "pyrandom": pyr,
        "tensors": [
            torch.arange(6, dtype=torch.float32).reshape(2, 3),
            torch.tensor(2.0),
            torch.ones(3, dtype=torch.bfloat16) / 3,
            torch.nn.Parameter(torch.zeros(2)),
            torch.arange(4, dtype=torch.int64)[::2],
        ],
        "dataclass": GlobalState(params=np.ones(3, np.float32), base_loss=0.25),
    }
    back = roundtrip(state, tmp_path)
    same(state, back)
    assert back["shared"][0] is back["shared"][1]  # an array met twice is one array, as with pickle
    assert back["fortran"].flags.f_contiguous
    assert isinstance(back["tensors"][3], torch.nn.Parameter)
    np.testing.assert_array_equal(back["gen"].normal(size=4), gen.normal(size=4))  # the streams go on alike
    assert back["legacy"].normal() == legacy.normal()
    assert back["pyrandom"].random() == pyr.random()
    assert [g.integers(1 << 30) for g in back["child"].spawn(2)] == [
        g.integers(1 << 30) for g in child.spawn(2)
    ]


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithms_checkpoint_round_trips_and_continues_identically(tmp_path, name):
    cfg = tiny_config(tmp_path, algorithm__name=name, rounds__num_rounds=3, **NEEDS.get(name, {}))
    exp = experiment(cfg)
    exp.prepare()
    try:
        exp.step()
        exp.step()
        saved = exp._backend().checkpoint()
        exp.save(tmp_path / "ck")
        third = exp.step().metrics
    finally:
        exp.close()
    blob = rundir.read_checkpoint(tmp_path / "ck")
    same(saved, blob["server"])
    assert blob["round"] == 2
    assert not (tmp_path / "ck" / "state.pkl").exists()
    fresh = experiment(cfg)
    fresh.prepare()
    try:
        assert fresh.restore(tmp_path / "ck") == 2
        again = fresh.step().metrics
    finally:
        fresh.close()
    keys = [k for k in third if not k.endswith(("_s", "_mb"))]  # timings and memory vary
    assert "train_loss" in keys
    same({k: third[k] for k in keys}, {k: again[k] for k in keys})


@pytest.mark.parametrize(
    "thing",
    [object(), lambda: 1, np.array([object()]), _Foreign(), Path("x"), (lambda: 0).__code__],
    ids=["object", "function", "object-array", "foreign-dataclass", "path", "code"],
)
def test_what_a_checkpoint_cannot_store_is_refused_when_written_naming_where(tmp_path, thing):
    with pytest.raises(TypeError, match=r"state\['a'\]\[0\]"):
        rundir.write_checkpoint(tmp_path / "ck", 1, {"a": [thing]}, "")
    assert not (tmp_path / "ck" / rundir.STATE_FILE).exists()


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {Path.cwd() / 'PWNED'}",))


def test_an_old_pickled_checkpoint_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "state.pkl").write_bytes(pickle.dumps({"format": 2, "round": 1, "server": _Boom()}))
    with pytest.raises(ConfigError, match=r"state\.pkl: a checkpoint of an older raysim \(a pickle"):
        rundir.read_checkpoint(ck)
    assert not (tmp_path / "PWNED").exists()
    assert rundir.periodic_checkpoints(tmp_path / "nothing") == []


def _good(tmp_path: Path) -> Path:
    return rundir.write_checkpoint(
        tmp_path / "ck",
        3,
        {"w": np.arange(100, dtype=np.float32), "d": GlobalState(params=np.ones(2))},
        "x: 1\n",
    )


def _edit_header(ck: Path, fn) -> None:
    header = json.loads((ck / rundir.STATE_FILE).read_text())
    fn(header)
    (ck / rundir.STATE_FILE).write_text(json.dumps(header))


@pytest.mark.parametrize(
    "damage,match",
    [
        (
            lambda ck: (ck / "arrays.bin").write_bytes((ck / "arrays.bin").read_bytes()[:-5]),
            r"arrays\.bin: \d+ bytes",
        ),
        (lambda ck: (ck / "arrays.bin").unlink(), r"arrays\.bin: missing"),
        (lambda ck: (ck / "arrays.bin").write_bytes(b"\0" * (ck / "arrays.bin").stat().st_size), "SHA-256"),
        (
            lambda ck: (ck / "state.json").write_text((ck / "state.json").read_text()[:40]),
            r"state\.json: not a raysim checkpoint \(not JSON",
        ),
        (lambda ck: (ck / "state.json").write_text('{"hello": 1}'), r"state\.json: not a raysim checkpoint"),
        (
            lambda ck: (ck / "state.json").write_bytes(b"\x80\x04K\x01."),
            r"state\.json: not a raysim checkpoint",
        ),
        (lambda ck: (ck / "state.json").unlink(), r"is not a raysim checkpoint \(no state\.json"),
        (
            lambda ck: _edit_header(ck, lambda h: h.update(format=99)),
            r"checkpoint format 99, this raysim reads format 3",
        ),
        (
            lambda ck: _edit_header(
                ck, lambda h: h["server"].update(x={"$dataclass": "os:system", "fields": {}})
            ),
            "not one of raysim's",
        ),
        (
            lambda ck: _edit_header(
                ck, lambda h: h["server"].update(x={"$dataclass": "raysim.cli:app", "fields": {}})
            ),
            "not a dataclass",
        ),
        (lambda ck: _edit_header(ck, lambda h: h["server"].update(x={"$array": 99})), "out of range"),
        (lambda ck: _edit_header(ck, lambda h: h["server"].update(x={"$eval": "1"})), "unknown tag"),
        (
            lambda ck: _edit_header(ck, lambda h: h["arrays"]["dtypes"].__setitem__(0, "|O")),
            "holds Python objects",
        ),
        (
            lambda ck: _edit_header(ck, lambda h: h["arrays"]["index"][0].__setitem__(1, [10**12])),
            "add up to",
        ),
        (
            lambda ck: _edit_header(ck, lambda h: h["server"].update(x={"$generator": {"name": "os"}})),
            "bit generator",
        ),
    ],
    ids=[
        "truncated-arrays",
        "missing-arrays",
        "corrupt-arrays",
        "truncated-json",
        "foreign-json",
        "pickle-as-json",
        "no-state",
        "other-format",
        "non-raysim-class",
        "not-a-dataclass",
        "bad-index",
        "unknown-tag",
        "object-dtype",
        "huge-shape",
        "bad-generator",
    ],
)
def test_a_damaged_or_foreign_checkpoint_is_a_config_error_naming_the_file(tmp_path, damage, match):
    ck = _good(tmp_path)
    rundir.read_checkpoint(ck)  # fine before the damage
    damage(ck)
    with pytest.raises(ConfigError, match=match) as err:
        rundir.read_checkpoint(ck)
    assert str(ck) in str(err.value)


def test_a_dataclass_whose_fields_changed_is_refused(tmp_path):
    ck = _good(tmp_path)
    _edit_header(ck, lambda h: h["server"]["d"]["fields"].pop(next(iter(h["server"]["d"]["fields"]))))
    with pytest.raises(ConfigError, match="another version"):
        rundir.read_checkpoint(ck)


@pytest.mark.parametrize("name", ["../up", "/abs", "a/b", "..", ".", "", "a\0b", "x" * 300])
def test_unique_run_dir_refuses_a_name_that_is_not_one_folder_name(tmp_path, name):
    with pytest.raises(ConfigError, match="run name"):
        rundir.unique_run_dir(tmp_path / "runs", name)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "up").exists()


def test_unique_run_dir_numbers_instead_of_overwriting(tmp_path):
    (tmp_path / "r").mkdir()
    assert rundir.unique_run_dir(tmp_path, "r") == tmp_path / "r-2"
    assert rundir.unique_run_dir(tmp_path, "s") == tmp_path / "s"
