"""benchmarks/gpu_check.py's CPU-side logic (the GPU runs themselves need a CUDA machine)."""

from __future__ import annotations

import importlib.util
import math
import stat
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from raysim.runtime.trainer import pick_device

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("gpu_check", None)


def test_without_cuda_it_exits_2_saying_so(gc, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gc.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().out


def _row(actor, **kw):
    row = {
        "round": 6,
        "actor": actor,
        "device": "cuda:0",
        "gpu_ids": "0",
        "gpu_share": 0.25,
        "gpu_memory_cap": 0.25,
        "peak_gpu_mb": 120.5,
    }
    return {**row, **kw}


def test_system_checks_pass_four_capped_actors_on_one_gpu(gc):
    rows = [_row(a) for a in range(4)] + [_row(-1, device="driver", gpu_ids="")]
    checks = gc.system_checks(rows, 4, 0.25)
    assert all(c.ok for c in checks), gc.render(checks)
    assert gc.exit_code(checks) == 0


@pytest.mark.parametrize(
    "bad,failing",
    [
        ({"gpu_memory_cap": math.nan}, "actor 2: gpu_memory_cap"),  # the cap was not set
        ({"peak_gpu_mb": math.nan}, "actor 2: peak_gpu_mb"),  # no GPU peak reported
        ({"device": "cpu"}, "actor 2: device, gpu_ids"),  # trained on the CPU with a GPU assigned
        ({"gpu_ids": "1"}, "GPUs the actors share"),  # spread over two GPUs
    ],
)
def test_system_checks_name_what_is_wrong(gc, bad, failing):
    rows = [_row(a, **(bad if a == 2 else {})) for a in range(4)]
    checks = gc.system_checks(rows, 4, 0.25)
    assert [c.name for c in checks if not c.ok] == [failing]
    assert gc.exit_code(checks) == 1
    assert "FAILED" in gc.render(checks)


def test_system_checks_count_the_actors_of_the_last_round(gc):
    rows = [_row(a, round=1) for a in range(4)] + [_row(a) for a in range(3)]
    checks = gc.system_checks(rows, 4, 0.25)
    assert [c.name for c in checks if not c.ok] == []  # four distinct actors over the rounds
    assert not gc.system_checks([_row(a) for a in range(3)], 4, 0.25)[0].ok


def test_round_seconds_leave_out_the_warm_up_and_evaluation(gc):
    rounds = [
        {"round": 2, "round_s": 1.0, "evaluate_s": 0.0},
        {"round": 1, "round_s": 9.0, "evaluate_s": 0.0},
        {"round": 3, "round_s": 3.0, "evaluate_s": 1.5},
    ]
    assert gc.round_seconds(rounds) == [1.0, 1.5]


def test_accuracy_check(gc):
    assert gc.accuracy_check(0.71, 0.70).ok
    assert not gc.accuracy_check(0.60, 0.70).ok
    assert not gc.accuracy_check(math.nan, 0.70).ok


def test_strip_wheel_drops_the_jars_and_their_record_lines_keeping_modes(gc, tmp_path):
    src, dst = tmp_path / "ray-1.0-cp312-cp312-x.whl", tmp_path / "out.whl"
    exe = zipfile.ZipInfo("ray/core/raylet")
    exe.external_attr = (stat.S_IFREG | 0o755) << 16
    record = "ray/__init__.py,sha256=a,1\nray/jars/ray_dist.jar,sha256=b,2\nray/core/raylet,sha256=c,3\n"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("ray/__init__.py", "x = 1\n")
        z.writestr("ray/jars/ray_dist.jar", b"\0" * 1000)
        z.writestr(exe, b"ELF")
        z.writestr("ray-1.0.dist-info/RECORD", record)
    assert gc.strip_wheel(src, dst) == 1
    with zipfile.ZipFile(dst) as z:
        assert sorted(z.namelist()) == ["ray-1.0.dist-info/RECORD", "ray/__init__.py", "ray/core/raylet"]
        assert "jars" not in z.read("ray-1.0.dist-info/RECORD").decode()
        assert z.read("ray/__init__.py") == b"x = 1\n"
        assert (z.getinfo("ray/core/raylet").external_attr >> 16) & 0o111  # still executable
        assert all(i.compress_type == zipfile.ZIP_LZMA for i in z.infolist())


def test_pick_device_takes_the_gpu_ray_assigned_only_when_cuda_is_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU: inside the actor it is always device 0
    assert pick_device(["3"]) == torch.device("cuda", 0)
    assert pick_device([]) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(["3"]) == torch.device("cpu")  # Ray's logical GPUs on a CPU machine
