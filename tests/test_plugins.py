"""Plug-ins (raysim.plugins): a researcher's algorithm, model, dataset and partition named by import
path or entry point work like the built-ins, and every way of getting one wrong is one exit-2
message naming the field. The plug-ins themselves are in tests/plugin_fixtures.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from raysim import plugins
from raysim.cli import app
from raysim.config import ConfigError, config_from_dict
from raysim.data import DATASETS, build_federation, load_dataset
from raysim.models.registry import build_model, count_params, model_structure
from raysim.plugins import PluginError, resolve
from tests import plugin_fixtures as fx

FX = "tests.plugin_fixtures"
ALGO, MODEL, DATA, PART = f"{FX}:DampedAvg", f"{FX}:tiny_mlp", f"{FX}:blobs", f"{FX}:stripes"
runner = CliRunner()


def raw_config(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "plug",
        "seed": 1,
        "data": {"dataset": "digits", "num_clients": 4},
        "local": {"batch_size": 16},
        "rounds": {"num_rounds": 2, "clients_per_round": 2},
        "resources": {"backend": "serial"},
        "output": {"dir": str(tmp_path / "runs"), "progress": False},
    }
    raw.update(sections)
    return raw


def write(tmp_path: Path, **sections: Any) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(raw_config(tmp_path, **sections)))
    return p


def refused(
    tmp_path: Path, *needles: str, commands: tuple[str, ...] = ("validate", "run"), **sections: Any
) -> str:
    """``raysim validate`` and ``raysim run`` both exit 2 with every needle, and write nothing."""
    cfg = write(tmp_path, **sections)
    for cmd in commands:
        r = runner.invoke(app, [cmd, str(cfg)])
        assert r.exit_code == 2, r.output
        for needle in needles:
            assert needle in r.output, r.output
    assert not (tmp_path / "runs").exists()
    return r.output


# ---------------------------------------------------------------------------------------- resolve


def test_builtins_of_every_kind_resolve_and_are_listed():
    from raysim.algorithms import FedAvg
    from raysim.models.registry import cnn_small

    assert resolve("algorithms", "fedavg") is FedAvg
    assert resolve("models", "cnn-small") is cnn_small
    assert callable(resolve("datasets", "digits")) and callable(resolve("partitions", "dirichlet"))
    assert {"fedavg", "fedprox"} <= set(plugins.names("algorithms"))
    assert plugins.names("partitions")[:2] == ["iid", "dirichlet"]
    # the file datasets are import paths, imported on first use only (pyarrow, torchvision)
    assert DATASETS["npz"] == "raysim.data.files:load_npz"
    assert DATASETS["parquet"] == "raysim.data.files:load_parquet"
    assert DATASETS["imagefolder"] == "raysim.data.files:load_imagefolder"
    assert {"npz", "parquet", "imagefolder"} <= set(plugins.names("datasets"))


def test_a_builtin_given_as_an_import_path_string_is_imported_when_resolved(monkeypatch):
    monkeypatch.setitem(DATASETS, "lazy-blobs", DATA)
    assert resolve("datasets", "lazy-blobs") is fx.blobs
    monkeypatch.setitem(DATASETS, "lazy-gone", "no_such_module_xyz:load")
    with pytest.raises(
        PluginError, match=r"dataset 'lazy-gone': cannot import module 'no_such_module_xyz' \(built-in\)"
    ):
        resolve("datasets", "lazy-gone")


def test_import_paths_of_every_kind_resolve():
    assert resolve("algorithms", ALGO) is fx.DampedAvg
    assert resolve("models", MODEL) is fx.tiny_mlp
    assert resolve("datasets", DATA) is fx.blobs
    assert resolve("partitions", PART) is fx.stripes


@pytest.mark.parametrize(
    ("kind", "name", "needles"),
    [
        ("algorithms", "nope", ["unknown algorithm 'nope'; valid names: ascfl, centralised", "import path"]),
        ("models", "vgg", ["unknown model 'vgg'; valid names: cnn-bn"]),
        (
            "datasets",
            "no_such_module_xyz:load",
            ["cannot import module 'no_such_module_xyz'", "ModuleNotFoundError"],
        ),
        ("models", f"{FX}:nope", [f"{FX} has no attribute 'nope'", "tiny_mlp"]),
        ("partitions", f"{FX}:stripes.nope", ["has no attribute 'nope'"]),
        ("algorithms", "a b:c", ["is not an import path: write package.module:Name"]),
        (
            "algorithms",
            f"{FX}:NotAnAlgorithm",
            ["is not a raysim algorithm", "has no params_model, traits, init"],
        ),
        ("algorithms", f"{FX}:tiny_mlp", ["an algorithm is a class"]),
        ("models", f"{FX}:NOT_CALLABLE", ["is not a raysim model: a model is a callable, got int"]),
        ("models", f"{FX}:bad_params_model", ["params_model must be a pydantic BaseModel subclass"]),
    ],
)
def test_what_is_no_plugin_says_why_and_what_is_valid(kind, name, needles):
    with pytest.raises(PluginError) as err:
        resolve(kind, name)
    assert isinstance(err.value, ValueError)
    for needle in needles:
        assert needle in str(err.value)


# ------------------------------------------------------------------------------- config and CLI


@pytest.mark.parametrize(
    ("sections", "needles"),
    [
        (
            {"algorithm": {"name": "no_such_module_xyz:Algo"}},
            ["algorithm.name: algorithm 'no_such_module_xyz:Algo': cannot import module"],
        ),
        (
            {"algorithm": {"name": f"{FX}:NotAnAlgorithm"}},
            ["algorithm.name: algorithm", "has no params_model"],
        ),
        ({"model": {"name": f"{FX}:missing"}}, ["model.name: model", "has no attribute 'missing'"]),
        ({"model": {"name": "vgg"}}, ["model.name: unknown model 'vgg'; valid names:"]),
        (
            {"data": {"dataset": "no_such_module_xyz:load", "num_clients": 4}},
            ["data.dataset: dataset 'no_such_module_xyz:load'"],
        ),
        (
            {"data": {"dataset": "cifar100", "num_clients": 4}},
            ["data.dataset: unknown dataset 'cifar100'; valid names: fashion-mnist"],
        ),
        (
            {"data": {"dataset": "digits", "partition": f"{FX}:NOT_CALLABLE", "num_clients": 4}},
            ["data.partition: partition", "a partition is a callable"],
        ),
        (
            {"data": {"dataset": "digits", "partition": "shards", "num_clients": 4}},
            ["data.partition: unknown partition 'shards'; valid names: iid"],
        ),
    ],
)
def test_a_bad_plugin_name_exits_2_naming_the_field(tmp_path, sections, needles):
    refused(tmp_path, *needles, **sections)


@pytest.mark.parametrize(
    ("sections", "needle"),
    [
        (
            {"algorithm": {"name": ALGO, "dampen": 0.1}},
            f"algorithm.dampen: unknown key (check the spelling); valid keys of algorithm '{ALGO}': damping, name",
        ),
        (
            {"algorithm": {"name": ALGO, "damping": 2}},
            "algorithm.damping: Input should be less than or equal to 1",
        ),
        (
            {"model": {"name": MODEL, "depth": 3}},
            f"model.depth: unknown key (check the spelling); valid keys of model '{MODEL}': name, width",
        ),
        ({"model": {"name": MODEL, "width": 0}}, "model.width: Input should be greater than or equal to 1"),
        ({"model": {"name": f"{FX}:bare_model", "width": 3}}, f"model '{FX}:bare_model' takes no parameters"),
        ({"model": {"name": "cnn-small", "hidden": 3}}, "model 'cnn-small' takes no parameters"),
        (
            {"model": {"name": "mlp", "hiden": 3}},
            "model.hiden: unknown key (check the spelling); valid keys of model 'mlp': hidden, name",
        ),
        (
            {
                "data": {
                    "dataset": DATA,
                    "partition": "natural",
                    "num_clients": 4,
                    "dataset_params": {"size": 3},
                }
            },
            f"data.dataset_params.size: unknown key (check the spelling); valid keys of dataset '{DATA}': "
            "missing, natural, per_client",
        ),
        (
            {"data": {"dataset": DATA, "num_clients": 4, "dataset_params": {"per_client": 2}}},
            "data.dataset_params.per_client: Input should be greater than or equal to 4",
        ),
        (
            {
                "data": {
                    "dataset": "digits",
                    "partition": PART,
                    "num_clients": 4,
                    "partition_params": {"shfit": 1},
                }
            },
            f"data.partition_params.shfit: unknown key (check the spelling); valid keys of partition '{PART}': shift",
        ),
        (
            {"data": {"dataset": "digits", "num_clients": 4, "partition_params": {"alpha": 1}}},
            "data.partition_params: built-in partition 'dirichlet' takes its knobs from data:",
        ),
        (
            {"data": {"dataset": "digits", "num_clients": 4, "dataset_params": {"x": 1}}},
            "dataset 'digits' takes no parameters",
        ),
    ],
)
def test_plugin_params_are_validated_by_their_own_model(tmp_path, sections, needle):
    refused(tmp_path, needle, **sections)


def test_validate_prints_every_resolved_plugin_parameter(tmp_path):
    cfg = write(
        tmp_path,
        algorithm={"name": ALGO},
        model={"name": MODEL, "width": 8},
        data={"dataset": DATA, "partition": PART, "num_clients": 4, "partition_params": {"shift": 1}},
    )
    r = runner.invoke(app, ["validate", str(cfg)])
    assert r.exit_code == 0, r.output
    shown = yaml.safe_load(r.output)
    assert shown["algorithm"] == {"name": ALGO, "damping": 0.5}
    assert shown["model"] == {"name": MODEL, "width": 8}
    assert shown["data"]["dataset_params"] == {"per_client": 40, "natural": True, "missing": False}
    assert shown["data"]["partition_params"] == {"shift": 1}
    # what it prints loads again as the same config
    again = tmp_path / "again.yaml"
    again.write_text(r.output)
    assert runner.invoke(app, ["validate", str(again)]).output == r.output


def test_a_plugin_dataset_check_is_asked_before_loading(tmp_path):
    refused(
        tmp_path,
        f"data.dataset={DATA!r}: blobs: the data is not there",
        data={"dataset": DATA, "num_clients": 4, "dataset_params": {"missing": True}},
    )


def test_vector_data_refuses_the_builtin_image_models_only(tmp_path):
    synthetic = {"dataset": "synthetic", "partition": "natural", "num_clients": 4}
    with pytest.raises(ConfigError, match="data.dataset 'synthetic' is vector data: set model.name to 'mlp'"):
        config_from_dict(raw_config(tmp_path, data=synthetic, model={"name": "cnn-small"}))
    cfg = config_from_dict(raw_config(tmp_path, data=synthetic, model={"name": MODEL, "width": 4}))
    assert cfg.model.params == {"width": 4}


def test_partition_natural_is_refused_at_config_time_for_builtins_known_not_to_be_natural():
    with pytest.raises(
        ConfigError, match="'natural' needs a federated-by-nature dataset, and 'digits' is not one"
    ):
        config_from_dict({"data": {"dataset": "digits", "partition": "natural", "num_clients": 40}})


def test_partition_natural_of_a_plugin_dataset_is_checked_when_it_loads(tmp_path):
    ok = {"dataset": DATA, "partition": "natural", "num_clients": 4}
    cfg = config_from_dict(raw_config(tmp_path, data=ok))  # not refused: the loader decides
    assert cfg.data.dataset == DATA
    refused(  # validate reads no data: only the run can tell
        tmp_path,
        "data: scheme 'natural' needs a dataset that is federated by nature",
        "'blobs' has no natural clients",
        commands=("run",),
        data={**ok, "dataset_params": {"natural": False}},
    )


# ------------------------------------------------------------------------------------ dispatch


def test_model_params_reach_the_builder():
    assert count_params(build_model(MODEL, (5,), 3, {"width": 7})) == 5 * 7 + 7 + 7 * 3 + 3
    assert count_params(build_model("mlp", (4,), 2, {"hidden": 3})) == 4 * 3 + 3 + 3 * 3 + 3 + 3 * 2 + 2
    layout, buffers = model_structure(MODEL, {"width": 7})
    assert layout.size == 784 * 7 + 7 + 7 * 10 + 10  # built for 1x28x28 and 10 classes
    assert not buffers


def test_a_model_made_for_one_input_shape_passes_the_config_checks():
    layout, _ = model_structure(f"{FX}:colour_only")
    assert layout.size == 3 * 32 * 32 * 10 + 10
    config_from_dict({"model": {"name": f"{FX}:colour_only"}, "data": {"dataset": "cifar10"}})


def test_a_partition_plugin_builds_the_federation_like_a_builtin():
    ds = load_dataset("digits", seed=0)
    fed = build_federation(
        ds, scheme=PART, num_clients=4, seed=0, val_fraction=0.0, partition_params={"shift": 1}
    )
    for k, c in enumerate(fed.clients):
        assert np.all((np.sort(c.train_idx) + 1) % 4 == k)
    again = build_federation(
        ds, scheme=PART, num_clients=4, seed=0, val_fraction=0.0, partition_params={"shift": 1}
    )
    assert all(
        np.array_equal(a.train_idx, b.train_idx) for a, b in zip(fed.clients, again.clients, strict=True)
    )
    with pytest.raises(
        ValueError,
        match=r"partition 'tests.plugin_fixtures:too_few' must return a list of 4 index arrays, got 3",
    ):
        build_federation(ds, scheme=f"{FX}:too_few", num_clients=4, seed=0)


def test_a_dataset_plugin_loads_with_its_params():
    ds = load_dataset(DATA, seed=2, num_clients=3, params={"per_client": 8})
    assert ds.name == "blobs" and len(ds.y_train) == 3 * 6 and ds.natural_train is not None
    with pytest.raises(PluginError, match="dataset 'digits' takes no parameters"):
        load_dataset("digits", params={"x": 1})


def run_cli(tmp_path: Path, **sections: Any) -> tuple[dict[str, Any], pd.DataFrame]:
    cfg = write(tmp_path, **sections)
    r = runner.invoke(app, ["run", str(cfg), "--no-progress"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{") :])
    return out, pd.read_parquet(Path(out["run_dir"]) / "rounds.parquet")


def test_all_four_plugins_run_on_the_serial_backend(tmp_path):
    out, rounds = run_cli(
        tmp_path,
        algorithm={"name": ALGO, "damping": 0.7},
        model={"name": MODEL, "width": 7},  # not the default: the actors' trainer must build it so
        data={
            "dataset": DATA,
            "partition": "natural",
            "num_clients": 4,
            "dataset_params": {"per_client": 24},
        },
    )
    assert out["rounds"] == 2 and len(rounds) == 2
    assert np.isfinite(rounds["test_accuracy"]).all()
    saved = yaml.safe_load((Path(out["run_dir"]) / "config.yaml").read_text())
    assert saved["algorithm"] == {"name": ALGO, "damping": 0.7} and saved["model"]["width"] == 7

    _, striped = run_cli(tmp_path / "b", data={"dataset": "digits", "partition": PART, "num_clients": 4})
    assert len(striped) == 2


def test_damping_changes_the_run(tmp_path):
    """The plug-in's own parameter reaches the algorithm object (a run with another value differs)."""
    common = {"model": {"name": MODEL}, "data": {"dataset": DATA, "partition": "natural", "num_clients": 4}}
    _, a = run_cli(tmp_path / "a", algorithm={"name": ALGO, "damping": 1.0}, **common)
    _, b = run_cli(tmp_path / "b", algorithm={"name": ALGO, "damping": 0.1}, **common)
    assert not np.array_equal(a["test_loss"].to_numpy(), b["test_loss"].to_numpy())


# -------------------------------------------------------------------------------- entry points


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A package 'raysim-fixture' installed with entry points of all four groups (a dist-info
    folder on sys.path, as pip leaves one)."""
    site = tmp_path / "site"
    info = site / "raysim_fixture-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: raysim-fixture\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[raysim.algorithms]\ndamped = tests.plugin_fixtures:DampedAvg\n"
        "gone = no_such_module_xyz:Algo\nfedavg = tests.plugin_fixtures:DampedAvg\n\n"
        "[raysim.models]\ntiny = tests.plugin_fixtures:tiny_mlp\n\n"
        "[raysim.datasets]\nblobs = tests.plugin_fixtures:blobs\n\n"
        "[raysim.partitions]\nstripes = tests.plugin_fixtures:stripes\n"
    )
    monkeypatch.syspath_prepend(str(site))
    plugins.clear_cache()
    yield
    plugins.clear_cache()


def test_entry_points_are_names_like_the_builtins(installed, tmp_path):
    assert resolve("algorithms", "damped") is fx.DampedAvg
    assert resolve("models", "tiny") is fx.tiny_mlp
    assert resolve("datasets", "blobs") is fx.blobs
    assert resolve("partitions", "stripes") is fx.stripes
    assert "damped" in plugins.names("algorithms") and "tiny" in plugins.names("models")
    from raysim.algorithms import FedAvg

    assert resolve("algorithms", "fedavg") is FedAvg  # a package cannot replace a built-in
    with pytest.raises(PluginError, match=r"unknown model 'vgg'; valid names: .*vit-tiny, tiny"):
        resolve("models", "vgg")
    with pytest.raises(
        PluginError,
        match=r"algorithm 'gone': the entry point 'gone' \(no_such_module_xyz:Algo\) of group raysim.algorithms cannot be imported: ModuleNotFoundError",
    ):
        resolve("algorithms", "gone")
    out, rounds = run_cli(
        tmp_path,
        algorithm={"name": "damped", "damping": 0.5},
        model={"name": "tiny", "width": 5},
        data={"dataset": "blobs", "partition": "stripes", "num_clients": 4, "partition_params": {"shift": 2}},
    )
    assert len(rounds) == 2
    refused(
        tmp_path / "r", "algorithm.name: algorithm 'gone'", "Install the package", algorithm={"name": "gone"}
    )


def test_entry_points_are_read_once_until_the_cache_is_cleared(installed, tmp_path):
    assert "damped" in plugins.entry_points("algorithms")
    ep = tmp_path / "site" / "raysim_fixture-0.1.dist-info" / "entry_points.txt"
    ep.write_text("[raysim.algorithms]\nother = tests.plugin_fixtures:DampedAvg\n")
    assert "damped" in plugins.entry_points("algorithms")  # cached
    plugins.clear_cache()
    assert "other" in plugins.entry_points("algorithms") and "damped" not in plugins.entry_points(
        "algorithms"
    )


# ---------------------------------------------------------------------------- local modules


def test_a_local_module_is_found_in_the_current_directory_and_given_to_workers(tmp_path, monkeypatch):
    (tmp_path / "my_local_model.py").write_text(
        "from torch import nn\n\ndef net(input_shape, num_classes):\n    return nn.Linear(5, num_classes)\n"
    )
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.setattr(plugins, "_LOCAL_ROOTS", {})
    monkeypatch.delitem(sys.modules, "my_local_model", raising=False)
    monkeypatch.chdir(tmp_path)
    assert plugins.worker_env() == {}
    builder = resolve("models", "my_local_model:net")
    assert builder.__module__ == "my_local_model"
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    assert plugins.worker_env() == {"PYTHONPATH": f"{tmp_path.resolve()}:/somewhere"}
    sys.modules.pop("my_local_model", None)


def test_an_installed_or_raysim_module_adds_nothing_to_the_workers_path(monkeypatch):
    monkeypatch.setattr(plugins, "_LOCAL_ROOTS", {})
    resolve("models", "raysim.models.registry:mlp")
    resolve("partitions", "numpy.random:default_rng")  # from site-packages (callable: contract holds)
    assert plugins.worker_env() == {}


# --------------------------------------------------------------------------- the file datasets


def test_a_parquet_dataset_with_a_client_column_runs_with_its_natural_partition(tmp_path):
    """The built-in name 'parquet' (raysim.data.files, imported on first use) through the config:
    its dataset_params validated by its params model, its natural clients used by partition natural."""
    rng = np.random.default_rng(0)
    n = 240
    frame = pd.DataFrame({f"f{i}": rng.normal(size=n).astype(np.float32) for i in range(4)})
    frame["label"] = (frame.f0 > 0).astype(int) + (frame.f1 > 0).astype(int)
    frame["user"] = rng.choice(["u1", "u2", "u3", "u4"], size=n)
    (tmp_path / "data").mkdir()
    frame.to_parquet(tmp_path / "data" / "d.parquet")
    data = {
        "dataset": "parquet",
        "data_dir": str(tmp_path / "data"),
        "partition": "natural",
        "num_clients": 4,
    }
    out, rounds = run_cli(
        tmp_path / "a",
        model={"name": "mlp", "hidden": 8},
        data={**data, "dataset_params": {"client": "user"}},
    )
    assert len(rounds) == 2 and out["rounds"] == 2
    refused(
        tmp_path / "b",
        "data.dataset_params.clinet: unknown key (check the spelling); valid keys of dataset 'parquet':",
        model={"name": "mlp"},
        data={**data, "dataset_params": {"clinet": "user"}},
    )
    refused(  # no client column: not federated by nature, which only loading can tell
        tmp_path / "c",
        "scheme 'natural' needs a dataset that is federated by nature",
        commands=("run",),
        model={"name": "mlp"},
        data={**data, "dataset_params": {"features": ["f0", "f1", "f2", "f3"]}},
    )


def test_a_plugin_algorithms_own_state_dataclass_survives_save_and_restore(tmp_path):
    """A checkpoint keeps dataclasses of raysim's modules and of the configured plug-in
    algorithm's module (and no other: tests/runtime/test_rundir.py's foreign dataclass)."""
    from raysim.runtime.statecodec import decode_state, encode_state
    from raysim.testing import check_save_restore

    check_save_restore("tests.plugin_fixtures:TallyAvg", workdir=tmp_path)
    state = fx.TallyState(inner=fx.GlobalState(params=np.arange(3, dtype=np.float32)), aggregations=2)
    back = decode_state(*encode_state(state))
    assert type(back) is fx.TallyState and back.aggregations == 2
    np.testing.assert_array_equal(back.inner.params, state.inner.params)
    assert "tests.plugin_fixtures" in plugins.state_modules()
