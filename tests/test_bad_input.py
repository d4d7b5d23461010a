"""Bad input, closed by class: every way of handing raysim something wrong through its command
line exits with status 2, one message naming the option, field or file, and nothing written.

Classes covered: numeric options out of range (every command, checked by walking the CLI);
names from configs and specs that are paths; files raysim reads back (checkpoints, run
directories, sweep state, bench results) that are missing, truncated, from another format or not
raysim's, including pickles that would run code; empty configs and duplicated YAML keys; sweep
metrics no trial reports; federations and datasets too large for memory."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from raysim.cli import app
from raysim.config import ConfigError, load_config
from raysim.data.budget import check_dataset_fits, check_federation_fits
from raysim.runtime import rundir
from tests.conftest import tiny_config

runner = CliRunner()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def refused(args: list[str], *expected: str, cwd: Path | None = None) -> str:
    """Run ``raysim ARGS``; it must exit 2 with every ``expected`` text in its output."""
    res = runner.invoke(app, args)
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    out = " ".join(res.output.split())  # rich may wrap a usage error's lines
    for text in expected:
        assert text in out, (text, res.output)
    return out


def write_cfg(tmp_path: Path, filename: str = "cfg.yaml", **over: Any) -> Path:
    raw = tiny_config(tmp_path, **over).to_dict()
    path = tmp_path / filename
    path.write_text(yaml.safe_dump(raw))
    return path


# ------------------------------------------------------------------------- 1. option ranges


def _params(cmd: Any, path: str = "raysim") -> list[tuple[str, Any]]:
    out = [(path, p) for p in cmd.params]
    for name, sub in (getattr(cmd, "commands", None) or {}).items():
        out += _params(sub, f"{path} {name}")
    return out


def test_every_numeric_option_of_every_command_has_a_range():
    """A new numeric option without min=/max= fails here, so none can forget its range."""
    params = _params(typer.main.get_command(app))
    numeric = [(where, p) for where, p in params if p.type_descriptor.annotation in (int, float)]
    names = {f"{w} --{p.name}" for w, p in numeric}
    assert {
        "raysim tune --num_samples",
        "raysim k8s render --gpus_per_actor",
        "raysim privacy-eval --batch_size",
    } <= names
    assert len(numeric) >= 20, names  # the walk reached the subcommands
    unbounded = [f"{w} --{p.name}" for w, p in numeric if p.min is None and p.max is None]
    assert not unbounded, f"numeric options without a range (give them min=/max=): {unbounded}"


OUT_OF_RANGE = [
    (["tune", "x.yaml", "--num-samples", "0"], "--num-samples"),
    (["tune", "--validate-best", ".", "--seeds", "0"], "--seeds"),
    (["k8s", "render", "c.yaml", "--clients", "0"], "--clients"),
    (["k8s", "render", "c.yaml", "--gpus-per-actor", "0"], "--gpus-per-actor"),
    (["k8s", "render", "c.yaml", "--clients-per-actor", "0"], "--clients-per-actor"),
    (["k8s", "render", "c.yaml", "--max-pods", "1"], "--max-pods"),
    (["k8s", "render", "c.yaml", "--actors", "-3"], "--actors"),
    (["k8s", "render", "c.yaml", "--cpus-per-pod", "0"], "--cpus-per-pod"),
    (["k8s", "render", "c.yaml", "--deadline-hours", "0"], "--deadline-hours"),
    (["bench", "scale", "--rounds", "1"], "--rounds"),
    (["bench", "scale", "--timeout-min", "0"], "--timeout-min"),
    (["bench", "estimate", "--cohort", "0"], "--cohort"),
    (["bench", "estimate", "--cpus-per-node", "0"], "--cpus-per-node"),
    (["bench", "estimate", "--examples-per-client", "-1"], "--examples-per-client"),
    (["privacy-eval", "--batch-size", "5"], "--batch-size"),
    (["privacy-eval", "--samples", "0"], "--samples"),
    (["reproduce", "dsac", "--seeds", "0"], "--seeds"),
    (["reproduce", "clustered", "--jobs", "0"], "--jobs"),
    (["reproduce", "pfedht", "--seeds", "-1"], "--seeds"),
]


@pytest.mark.parametrize(
    "args,option", OUT_OF_RANGE, ids=[" ".join(a[:2]) + " " + o for a, o in OUT_OF_RANGE]
)
def test_an_option_out_of_its_range_exits_2_at_parse_time_and_writes_nothing(
    tmp_path, monkeypatch, args, option
):
    monkeypatch.chdir(tmp_path)
    refused(args, option, "Invalid value")
    assert not any(tmp_path.iterdir())  # parse-time: not even an output folder


# ------------------------------------------------------------------ 2. names that are paths

BAD_NAMES = ["../escape", "/tmp/abs", "a/b", "..", ".", "", "a\\b", "tab\tname"]


@pytest.mark.parametrize("field", ["name", "output.name"])
@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
def test_a_run_name_that_is_a_path_is_refused_naming_the_field(tmp_path, field, bad):
    cfg = write_cfg(tmp_path)
    before = snapshot(tmp_path)
    refused(["run", str(cfg), "--set", f"{field}={json.dumps(bad)}", "--no-progress"], f"{field} ")
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "escape").exists() and not (tmp_path / "runs").exists()


def test_a_config_name_with_a_nul_byte_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="output.name"):
        tiny_config(tmp_path, output__name="a\0b")
    assert tiny_config(tmp_path, name="my run (2)").name == "my run (2)"  # spaces, parentheses: a name


def test_a_sweep_name_that_is_a_path_is_refused(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "../../outside",
                "base": tiny_config(tmp_path).to_dict(),
                "mode": "grid",
                "storage_path": str(tmp_path / "sw"),
                "space": {"local.lr": {"grid": [0.1]}},
            }
        )
    )
    refused(["tune", str(spec)], "name '../../outside' names the sweep directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_k8s_render_refuses_a_job_name_that_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = write_cfg(tmp_path)
    refused(["k8s", "render", str(cfg), "--name", "../evil"], "--name '../evil'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]


# ---------------------------------------------------------------- 3. files raysim reads back


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A two-round serial run with a checkpoint every round (copied by each test that damages it)."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = write_cfg(tmp, rounds__num_rounds=2, rounds__checkpoint_every=1, name="resumable")
    assert yaml.safe_load(cfg.read_text())["name"] == "resumable"
    res = runner.invoke(app, ["run", str(cfg), "--no-progress"])
    assert res.exit_code == 0, res.output
    run_dir = tmp / "runs" / "resumable"
    assert (rundir.periodic_dir(run_dir, 2) / rundir.STATE_FILE).is_file()
    return run_dir


class Boom:
    """A pickle that runs a shell command the moment it is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _newest(run: Path) -> Path:
    return rundir.periodic_dir(run, 2)


DAMAGES = {
    "truncated-arrays": (lambda run: _truncate(_newest(run) / "arrays.bin"), "arrays.bin"),
    "missing-arrays": (lambda run: (_newest(run) / "arrays.bin").unlink(), "arrays.bin: missing"),
    "truncated-state": (
        lambda run: _truncate(_newest(run) / "state.json"),
        "state.json: not a raysim checkpoint",
    ),
    "foreign-state": (
        lambda run: (_newest(run) / "state.json").write_text('{"model": "resnet"}'),
        "state.json: not a raysim checkpoint",
    ),
    "other-format": (
        lambda run: (_newest(run) / "state.json").write_text(
            (_newest(run) / "state.json").read_text().replace('"format":3', '"format":4', 1)
        ),
        "checkpoint format 4, this raysim reads format 3",
    ),
    "old-pickle": (
        lambda run: (
            (_newest(run) / "state.json").unlink(),
            (_newest(run) / "state.pkl").write_bytes(pickle.dumps(Boom(run.parent / "PWNED"))),
        ),
        "state.pkl: a checkpoint of an older raysim",
    ),
    "truncated-rounds": (
        lambda run: _truncate(run / "rounds.parquet"),
        "rounds.parquet: not a readable Parquet",
    ),
    "foreign-rounds": (
        lambda run: __import__("pandas").DataFrame({"x": [1]}).to_parquet(run / "rounds.parquet"),
        "rounds.parquet: no column round",
    ),
    "empty-config": (lambda run: (run / "config.yaml").write_text("# nothing\n"), "config.yaml is empty"),
    "duplicate-key-config": (
        lambda run: (run / "config.yaml").write_text((run / "config.yaml").read_text() + "seed: 4\n"),
        "key 'seed' appears twice",
    ),
    "not-a-run": (lambda run: (run / "config.yaml").unlink(), "not a run directory (no config.yaml)"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_resume_from_a_damaged_foreign_or_old_run_directory_exits_2_naming_the_file(
    tmp_path, finished_run, damage
):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    fn, message = DAMAGES[damage]
    fn(run)
    before = snapshot(tmp_path)
    refused(["run", "--resume", str(run), "--no-progress"], message, str(run))
    assert snapshot(tmp_path) == before  # nothing written, nothing run
    assert not (tmp_path / "PWNED").exists()


def test_resume_of_a_missing_directory_exits_2(tmp_path):
    refused(["run", "--resume", str(tmp_path / "nope")], "no such directory")


REPORT_DAMAGES = {
    "truncated-rounds": (
        lambda run: _truncate(run / "rounds.parquet"),
        "rounds.parquet: not a readable Parquet",
    ),
    "foreign-rounds": (
        lambda run: __import__("pandas").DataFrame({"x": [1]}).to_parquet(run / "rounds.parquet"),
        "no column round",
    ),
    "truncated-summary": (lambda run: _truncate(run / "summary.json"), "summary.json: not valid JSON"),
    "list-summary": (lambda run: (run / "summary.json").write_text("[1]"), "summary.json: not a summary"),
    "no-rounds": (lambda run: (run / "rounds.parquet").unlink(), "no rounds.parquet here"),
}


@pytest.mark.parametrize("damage", sorted(REPORT_DAMAGES))
def test_report_on_a_damaged_run_directory_exits_2_and_writes_no_plots(tmp_path, finished_run, damage):
    good, run = tmp_path / "good", tmp_path / "bad"
    shutil.copytree(finished_run, good)
    shutil.copytree(finished_run, run)
    fn, message = REPORT_DAMAGES[damage]
    fn(run)
    before = snapshot(tmp_path)
    refused(["report", str(good), str(run), "--out", str(tmp_path / "report")], message)
    assert snapshot(tmp_path) == before and not (tmp_path / "report").exists()


def test_checkpoint_written_by_a_run_is_arrays_and_json_only(finished_run):
    names = sorted(p.name for p in _newest(finished_run).iterdir())
    assert names == ["arrays.bin", "config.yaml", "state.json"]
    assert rundir.read_checkpoint(_newest(finished_run))["round"] == 2


def _sweep_dir(tmp_path: Path) -> Path:
    """A directory with what `raysim tune --resume` looks at first: a valid sweep.yaml and Tune's
    tuner.pkl (here a harmless one; each test plants its own poison)."""
    from tuning.spec import resolved_spec_yaml, spec_from_dict

    d = tmp_path / "sweep"
    d.mkdir()
    loaded = spec_from_dict(
        {
            "name": "sweep",
            "base": tiny_config(tmp_path).to_dict(),
            "mode": "grid",
            "space": {"local.lr": {"grid": [0.1]}},
        },
        "t",
        tmp_path,
        probe=False,
    )
    (d / "sweep.yaml").write_text(resolved_spec_yaml(loaded))
    (d / "tuner.pkl").write_bytes(pickle.dumps({"_is_restored": False}))
    return d


def _plant(kind: str, d: Path, marker: Path) -> str:
    import ray.cloudpickle as cloudpickle

    if kind == "tuner":
        (d / "tuner.pkl").write_bytes(pickle.dumps(Boom(marker)))
        return "tuner.pkl"
    if kind == "searcher":
        (d / "searcher-state-2026.pkl").write_bytes(
            cloudpickle.dumps({"f": lambda: os.system(f"touch {marker}")})
        )
        return "searcher-state-2026.pkl"
    if kind == "variant-json":  # Tune names some pickles .json
        (d / "basic-variant-state-2026.json").write_bytes(pickle.dumps(Boom(marker)))
        return "basic-variant-state-2026.json"
    blob = pickle.dumps(Boom(marker)).hex()
    state = {
        "trial_data": [[json.dumps({"storage": {"_type": "CLOUDPICKLE_FALLBACK", "value": blob}}), "{}"]]
    }
    (d / "experiment_state-2026.json").write_text(json.dumps(state))
    return "experiment_state-2026.json (pickled value 1)"


@pytest.mark.parametrize("kind", ["tuner", "searcher", "variant-json", "experiment-state"])
def test_resuming_a_sweep_whose_tune_state_would_run_code_exits_2_and_runs_nothing(tmp_path, kind):
    d = _sweep_dir(tmp_path)
    where = _plant(kind, d, tmp_path / "PWNED")
    before = snapshot(tmp_path)
    refused(["tune", "--resume", str(d)], where, "refusing to let Ray Tune load this sweep state")
    assert not (tmp_path / "PWNED").exists()
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "saved sweep spec"),
        ("name: a\nname: b\n", "key 'name' appears twice"),
        ("mode: [", "not valid YAML"),
    ],
    ids=["empty", "duplicate", "truncated"],
)
def test_resuming_a_sweep_with_a_damaged_sweep_yaml_exits_2(tmp_path, content, message):
    d = _sweep_dir(tmp_path)
    (d / "sweep.yaml").write_text(content)
    refused(["tune", "--resume", str(d)], message, "sweep.yaml")


def test_validate_best_with_a_foreign_sweep_json_exits_2(tmp_path):
    d = tmp_path / "sweep"
    d.mkdir()
    (d / "best.yaml").write_text(yaml.safe_dump(tiny_config(tmp_path).to_dict()))
    (d / "sweep.json").write_text('{"hello": 1}')
    refused(["tune", "--validate-best", str(d)], "sweep.json: not a sweep.json written by `raysim tune`")
    (d / "sweep.json").write_text('{"objectives": [{"metric": "test_accuracy"')
    refused(["tune", "--validate-best", str(d)], "sweep.json: not valid JSON")
    assert sorted(p.name for p in d.iterdir()) == ["best.yaml", "sweep.json"]


def test_bench_fit_and_estimate_refuse_damaged_results(tmp_path):
    import pandas as pd

    out = tmp_path / "bench"
    out.mkdir()
    pd.DataFrame({"n_clients": [10]}).to_parquet(out / "scale.parquet")
    (out / "config.yaml").write_text("data: {dataset: digits}\n")
    _truncate(out / "scale.parquet")
    before = snapshot(tmp_path)
    refused(["bench", "fit", str(out)], "scale.parquet: not a readable Parquet file")
    (out / "config.yaml").write_text("")
    refused(["bench", "fit", str(out)], "config.yaml is empty")
    (tmp_path / "model.json").write_text('{"no": "coefficients"}')
    refused(["bench", "estimate", "--fit", str(tmp_path / "model.json")], "not a bench's model.json")
    _truncate(tmp_path / "model.json")
    refused(["bench", "estimate", "--fit", str(tmp_path / "model.json")], "model.json: not valid JSON")
    assert set(snapshot(tmp_path)) == set(before) | {"model.json"}


# --------------------------------------------------------------------------------- 4. configs


@pytest.mark.parametrize(
    "content", ["", "\n\n", "# only a comment\n# and another\n", "---\n", "~\n"], ids=repr
)
def test_an_empty_config_is_refused_not_run_with_the_defaults(tmp_path, content):
    cfg = tmp_path / "empty.yaml"
    cfg.write_text(content)
    for cmd in ("run", "validate"):
        refused([cmd, str(cfg)], str(cfg))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.yaml"]


def test_an_explicit_empty_mapping_means_every_default_on_purpose(tmp_path):
    cfg = tmp_path / "defaults.yaml"
    cfg.write_text("{}\n")
    res = runner.invoke(app, ["validate", str(cfg)])
    assert res.exit_code == 0, res.output


DUPLICATES = [
    ("seed: 1\nseed: 2\n", "key 'seed' appears twice (lines 1 and 2)"),
    ("local:\n  lr: 0.1\n  epochs: 1\n  lr: 0.5\n", "key 'lr' appears twice (lines 2 and 4)"),
    ("data:\n  dataset: digits\nrounds: {num_rounds: 2, num_rounds: 3}\n", "key 'num_rounds' appears twice"),
    (
        "algorithm:\n  name: fedavg\nlocal: {}\nalgorithm:\n  name: fedprox\n",
        "key 'algorithm' appears twice (lines 1 and 4)",
    ),
]


@pytest.mark.parametrize("text,message", DUPLICATES, ids=["top", "nested", "flow", "section"])
def test_a_duplicated_key_at_any_depth_is_refused_naming_key_and_lines(tmp_path, text, message):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text(text)
    refused(["validate", str(cfg)], message, str(cfg))
    with pytest.raises(ConfigError, match="appears twice"):
        load_config(cfg)


def test_yaml_merge_keys_still_override_as_yaml_says(tmp_path):
    cfg = tmp_path / "merge.yaml"
    cfg.write_text("defaults: &d {lr: 0.1, epochs: 2}\n")
    from raysim.config import yaml_loads

    assert yaml_loads("a: &d {lr: 0.1, epochs: 2}\nb:\n  <<: *d\n  lr: 0.5\n", "t") == {
        "a": {"lr": 0.1, "epochs": 2},
        "b": {"lr": 0.5, "epochs": 2},
    }


def test_a_duplicated_key_in_a_set_value_is_refused(tmp_path):
    cfg = write_cfg(tmp_path)
    refused(["validate", str(cfg), "--set", "local={lr: 0.1, lr: 0.2}"], "key 'lr' appears twice")


def _spec_file(tmp_path: Path, text: str | None = None, **over: Any) -> Path:
    raw = {
        "name": "s",
        "base": tiny_config(tmp_path).to_dict(),
        "mode": "optuna",
        "num_samples": 2,
        "storage_path": str(tmp_path / "sw"),
        "space": {"local.lr": {"loguniform": [0.01, 0.1]}},
        **over,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(raw))
    return path


def test_tune_specs_refuse_empty_files_and_duplicate_keys_too(tmp_path):
    refused(["tune", str(_spec_file(tmp_path, ""))], "sweep spec", "is empty")
    text = _spec_file(tmp_path).read_text() + "mode: grid\n"
    refused(["tune", str(_spec_file(tmp_path, text))], "key 'mode' appears twice")
    (tmp_path / "base.yaml").write_text("# nothing yet\n")
    refused(["tune", str(_spec_file(tmp_path, base="base.yaml"))], "base: config", "base.yaml is empty")
    assert not (tmp_path / "sw").exists()


def test_an_unknown_sweep_metric_is_refused_when_the_spec_loads_listing_the_valid_ones(tmp_path):
    out = refused(
        ["tune", str(_spec_file(tmp_path, metric="test_acuracy"))], "metric: 'test_acuracy' is not reported"
    )
    valid = out[out.index("valid metrics:") :]
    for name in ("test_accuracy", "train_loss", "aggregated_clients", "round_s", "hparams/lr"):
        assert name in valid, name
    over = {"objectives": [{"metric": "test_accuracy"}, {"metric": "bytes_upp", "goal": "min"}]}
    refused(["tune", str(_spec_file(tmp_path, **over))], "objectives: 'bytes_upp'")
    assert not (tmp_path / "sw").exists()


def test_a_metric_the_algorithm_never_reports_finite_is_refused(tmp_path):
    # local training has no server model: test_accuracy is NaN every round, Tune would stop each trial
    base = tiny_config(tmp_path, algorithm__name="local").to_dict()
    refused(["tune", str(_spec_file(tmp_path, base=base))], "'test_accuracy' is not reported")
    from tuning.spec import spec_from_dict

    raw = yaml.safe_load(_spec_file(tmp_path, base=base, metric="personal_accuracy").read_text())
    spec_from_dict(raw, "t", tmp_path)  # what it does report is accepted


@pytest.mark.parametrize("field,value,message", [("goal", "maximise", "goal"), ("mode", "bayes", "mode")])
def test_an_unknown_goal_or_mode_is_refused(tmp_path, field, value, message):
    refused(["tune", str(_spec_file(tmp_path, **{field: value}))], message)


# ----------------------------------------------------------------------- 5. memory arithmetic


def test_a_federation_that_cannot_fit_in_memory_is_refused_with_the_arithmetic(tmp_path):
    cfg = write_cfg(tmp_path)
    out = refused(
        [
            "run",
            str(cfg),
            "--set",
            "data.partition=sampled",
            "--set",
            f"data.num_clients={10**9}",
            "--no-progress",
        ],
        "a federation of 1,000,000,000 clients",
        "GiB of memory",
        "available",
    )
    assert "1,000,000,000 clients x (2,400 + 50 x" in out
    assert not (tmp_path / "runs").exists()


def test_a_synthetic_dataset_that_cannot_fit_is_refused_before_it_is_generated(tmp_path):
    cfg = write_cfg(tmp_path, data__dataset="synthetic", data__partition="natural", model__name="mlp")
    refused(
        ["run", str(cfg), "--set", f"data.num_clients={10**8}", "--no-progress"],
        "dataset 'synthetic' with 100,000,000 clients",
        "available",
    )
    assert not (tmp_path / "runs").exists()


def test_the_memory_checks_compare_with_what_is_available():
    check_federation_fits(1000, 50, 10, available=10**9)  # 5.4 MB: fits
    with pytest.raises(
        ValueError, match=r"needs about 5\.0 GiB.*1,000,000 clients x \(2,400 \+ 50 x 60 indices\)"
    ):
        check_federation_fits(10**6, 50, 10, available=10**9)
    check_dataset_fits("fashion-mnist", 10**9, available=1)  # a file-backed dataset has its own size
    with pytest.raises(ValueError, match="synthetic"):
        check_dataset_fits("synthetic", 10**5, available=10**9)
