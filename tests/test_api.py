"""The public Python API (raysim.api, docs/api.md): its examples run, its names are stated, it is
the path the command line takes, and the runtime gets its backend from the entry points."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import raysim
from raysim.config import ConfigError
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "api.md"
BLOCK = re.compile(r"(<!-- test: (\w+) -->\n)?```python\n(.*?)```", re.S)


def doc_blocks(tier: str) -> list[str]:
    """docs/api.md's python blocks of one tier: "serial" (unmarked) or "ray" (<!-- test: ray -->)."""
    blocks = [(m.group(2) or "serial", m.group(3)) for m in BLOCK.finditer(DOCS.read_text())]
    assert blocks, "docs/api.md has no python blocks"
    return [code for t, code in blocks if t == tier]


def run_blocks(blocks: list[str], where: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    (where / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(where)
    namespace: dict[str, object] = {"__name__": "docs_api"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"docs/api.md block {i + 1}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"docs/api.md block {i + 1} failed:\n{code}") from exc
    return namespace


def test_every_serial_example_of_docs_api_md_runs(tmp_path, monkeypatch):
    ns = run_blocks(doc_blocks("serial"), tmp_path, monkeypatch)
    assert (tmp_path / "runs" / "whole" / "summary.json").is_file()
    assert (tmp_path / "runs" / "tracked" / "tensorboard").is_dir()
    assert isinstance(ns["typed"], raysim.ExperimentConfig)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_the_sweep_example_of_docs_api_md_runs(ray_cluster, tmp_path, monkeypatch):
    ns = run_blocks(doc_blocks("ray"), tmp_path, monkeypatch)
    trials = ns["trials"]
    assert sorted(trials["config/local.lr"].unique()) == [0.02, 0.1]
    assert (tmp_path / "sweeps" / "seeds" / "best.yaml").is_file()


def test_public_names_are_stated_and_all_resolve():
    assert raysim.__version__ == "0.1.0"
    assert set(raysim.__all__) == {"__version__", *raysim._PUBLIC}
    for name in raysim.__all__:
        assert getattr(raysim, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'runtime_internals'"):
        raysim.runtime_internals  # noqa: B018


def test_import_raysim_loads_neither_torch_nor_ray_nor_numpy():
    code = "import sys, raysim; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'numpy', 'pandas'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_config_sources_and_overrides_agree(tmp_path):
    cfg = tiny_config(tmp_path)
    from_typed = raysim.load_config(cfg, ["local.lr=0.01"])
    from_dict = raysim.load_config(cfg.to_dict(), {"local.lr": 0.01})
    path = tmp_path / "c.yaml"
    path.write_text(raysim.load_config(cfg).model_dump_json())  # JSON is YAML
    from_yaml = raysim.load_config(path, ["local.lr=1e-2"])
    assert from_typed == from_dict == from_yaml
    assert from_typed.local.lr == 0.01
    with pytest.raises(ConfigError, match="rounds.num_rounds"):
        raysim.load_config(cfg, {"rounds.num_rounds": 0})
    with pytest.raises(ConfigError, match="not the string"):
        raysim.load_config(cfg, "local.lr=0.1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="does not exist"):
        raysim.load_config(tmp_path / "missing.yaml")


def test_results_name_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match="no rounds.parquet"):
        raysim.results(tmp_path)
    res = raysim.Results(tmp_path)
    with pytest.raises(ConfigError, match="not a run directory"):
        res.clients  # noqa: B018


def test_the_cli_runs_through_the_api(tmp_path, monkeypatch):
    """`raysim run` is raysim.api's path: the experiment it runs is the API's, with its backends."""
    from raysim import api
    from raysim.cli import app

    seen = []
    real = api.run_experiment

    def spy(exp):
        seen.append(exp)
        return real(exp)

    monkeypatch.setattr(api, "run_experiment", spy)
    cfg = tiny_config(tmp_path, rounds__num_rounds=1)
    path = tmp_path / "c.yaml"
    path.write_text(cfg.model_dump_json())
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    (exp,) = seen
    assert exp.backends is api.BACKENDS
    assert (exp.run_dir / "summary.json").is_file()


def test_a_backend_handed_in_is_the_one_used_and_ray_is_never_found_by_name(tmp_path):
    from raysim import api
    from raysim.runtime.backend import make_backend
    from raysim.runtime.experiment import Experiment
    from raysim.runtime.serial import SerialBackend

    made = []

    def factory(address, share):
        made.append((address, share))
        return SerialBackend(share)

    cfg = tiny_config(tmp_path, rounds__num_rounds=1)
    with Experiment(cfg, progress=False, backends={"serial": factory}) as exp:
        exp.run()
    assert made == [(None, None)]
    # the API's own factory is the Ray backend (constructed only: nothing starts before share()/start())
    assert type(make_backend("ray", backends=api.BACKENDS)).__name__ == "RayBackend"
    # nothing handed in: refused when the experiment is built, naming what to pass, nothing written
    ray_cfg = tiny_config(tmp_path / "ray", rounds__num_rounds=1, resources__backend="ray")
    with pytest.raises(ValueError, match=r"'ray': no backend of that name was handed in") as info:
        Experiment(ray_cfg, progress=False)
    assert "backends=raysim.api.BACKENDS" in str(info.value) and "raysim.api.experiment" in str(info.value)
    assert not (tmp_path / "ray").exists()
    with pytest.raises(ValueError, match=r"'nope'.*handed in: serial"):
        make_backend("nope", backends={"serial": factory})
