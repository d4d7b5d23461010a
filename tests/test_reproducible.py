"""Reproducible mode (raysim/reproducible.py): its variables, its checks, how a process gets into it.

The bit-level demonstration (pinned runs identical when the libraries see another ISA) is in
``tests/runtime/test_contract.py`` beside the pins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from raysim import reproducible
from raysim.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _unpinned_env(**extra: str) -> dict[str, str]:
    """This environment less reproducible mode's variables: a process started as a user would."""
    env = {k: v for k, v in os.environ.items() if k not in reproducible.environment()}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def test_apply_env_overrides_what_a_user_exported_and_reports_what_it_changed():
    env = {"OMP_NUM_THREADS": "8", "MKL_CBWR": "COMPATIBLE", "HOME": "/h"}
    changed = reproducible.apply_env(env)
    assert "OMP_NUM_THREADS" in changed and "MKL_CBWR" not in changed  # already right: not changed
    assert env["OMP_NUM_THREADS"] == "1" and env["HOME"] == "/h"
    assert reproducible.pinned(env) and not reproducible.pinned({**env, "ATEN_CPU_CAPABILITY": "avx512"})
    assert reproducible.apply_env(env) == []


def test_the_test_process_itself_is_in_reproducible_mode():
    """tests/conftest.py set the variables before torch loaded: the libraries chose accordingly."""
    assert reproducible.check() == []
    st = reproducible.state(True)
    assert st["on"] and st["level"] == "avx2"
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"
    assert not torch.backends.mkldnn.enabled and torch.are_deterministic_algorithms_enabled()
    assert st["mkl_cbwr_branch"] in (None, reproducible.MKL_CBWR_COMPATIBLE)
    assert all(core.lower() == "haswell" for core in st.get("openblas_cores", []))


def test_cpu_flags_reads_the_model_and_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Some CPU @ 2GHz\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor: 1\n"
    )
    assert reproducible.cpu_flags(info) == ("Some CPU @ 2GHz", {"fpu", "sse2", "avx2", "fma"})
    assert reproducible.cpu_flags(tmp_path / "missing") == ("unknown", set())


def test_a_process_started_without_the_environment_says_so_instead_of_pretending():
    """A Python session that imported torch first: enter(True) warns, naming what does not hold and
    the fix; the in-process settings stay off (they would pin nothing without the variables)."""
    code = (
        "import warnings, json, torch\n"
        "from raysim import reproducible as r\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    quiet = r.enter(False)\n"
        "    st = r.enter(True)\n"
        "print(json.dumps({'warnings': [str(x.message) for x in w], 'state': st, 'quiet': quiet,\n"
        "                  'mkldnn': torch.backends.mkldnn.enabled}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=_unpinned_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(got["warnings"]) == 1  # enter(False) is silent
    msg = got["warnings"][0]
    assert (
        "not started with reproducible mode's environment" in msg and "python -m raysim.reproducible" in msg
    )
    assert not got["state"]["on"] and got["state"]["problems"] and got["mkldnn"]
    assert got["quiet"]["problems"] == []  # not asked for: nothing to report


def test_the_module_prints_the_shell_lines_that_start_a_shell_in_the_mode():
    out = subprocess.run(
        [sys.executable, "-m", "raysim.reproducible"],
        env=_unpinned_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    lines = dict(line.removeprefix("export ").split("=", 1) for line in out.stdout.splitlines())
    assert lines == reproducible.environment()


def _digits_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "name: tiny\nseed: 3\n"
        "data: {dataset: digits, partition: dirichlet, alpha: 0.5, num_clients: 4}\n"
        "model: {name: mlp}\nlocal: {epochs: 1, batch_size: 32, lr: 0.05}\n"
        "rounds: {num_rounds: 1, clients_per_round: 2, eval_every: 1}\n"
        f"resources: {{backend: serial}}\noutput: {{dir: {tmp_path / 'runs'}, progress: false}}\n"
    )
    return cfg


@pytest.mark.parametrize("flag", ["--reproducible", "--no-reproducible"])
def test_raysim_run_started_without_the_environment_restarts_itself_in_the_mode(tmp_path, flag):
    """The console script loads torch before main() can set anything, so `raysim run --reproducible`
    from a plain shell starts itself again with the variables; --no-reproducible does not."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from raysim.cli import main; main()",
            "run",
            str(_digits_config(tmp_path)),
            flag,
        ],
        env=_unpinned_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    env = json.loads((run_dir / "environment.json").read_text())
    on = flag == "--reproducible"
    assert ("restarting in reproducible mode" in out.stderr) is on
    assert env["reproducible"]["requested"] is on and env["reproducible"]["on"] is on
    assert env["reproducible"]["problems"] == []
    if on:
        assert env["cpu"]["torch_capability"] == "AVX2"
    assert "resources:\n" in (run_dir / "config.yaml").read_text()
    assert f"reproducible: {str(on).lower()}" in (run_dir / "config.yaml").read_text()


def test_resume_refuses_a_reproducible_flag(tmp_path):
    res = CliRunner().invoke(app, ["run", "--resume", str(tmp_path), "--reproducible"])
    assert res.exit_code == 2 and "--reproducible" in res.output


def test_ray_actors_get_the_variables_in_their_runtime_env():
    from actors.backend import ACTOR_ENV, actor_runtime_env
    from raysim.plugins import worker_env  # local plug-ins' folders, when a test resolved one

    assert actor_runtime_env(False) == {"env_vars": {**ACTOR_ENV, **worker_env()}}
    env = actor_runtime_env(True)["env_vars"]
    assert env == {**ACTOR_ENV, **reproducible.environment(), **worker_env()}
