"""Sweep specs: what a user writes in configs/tune/*.yaml, and every way of getting it wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from raysim.cli import app
from raysim.config import ConfigError
from tests.conftest import tiny_config
from tuning.spec import load_spec, spec_from_dict
from tuning.sweep import genetic_explore, pareto_mask

REPO = Path(__file__).resolve().parents[2]


def _spec(tmp_path: Path, **over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "s",
        "base": tiny_config(tmp_path).to_dict(),
        "mode": "optuna",
        "num_samples": 2,
        "space": {"local.lr": {"loguniform": [0.01, 0.1]}},
    }
    raw.update(over)
    return raw


def test_every_shipped_spec_loads_and_names_knobs_the_experiment_has():
    specs = sorted((REPO / "configs" / "tune").glob("*.yaml"))
    assert len(specs) >= 2, specs  # the glob is anchored to the repository, not the cwd
    for path in specs:
        loaded = load_spec(path)
        assert loaded.spec.space and loaded.base["name"]


def test_a_valid_spec_resolves_its_base_path_relative_to_the_spec_file(tmp_path):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "base.yaml").write_text(yaml.safe_dump(tiny_config(tmp_path).to_dict()))
    (tmp_path / "tune").mkdir()
    spec = _spec(tmp_path, base="../exp/base.yaml", fixed={"rounds.num_rounds": 2})
    path = tmp_path / "tune" / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    loaded = load_spec(path, ["local.batch_size=8"])
    assert loaded.base["rounds"]["num_rounds"] == 2  # fixed:
    assert loaded.base["local"]["batch_size"] == 8  # --set
    assert loaded.spec.space["local.lr"].kind == "loguniform"


BAD = [
    ({"space": {"local.lrr": {"uniform": [0.1, 0.2]}}}, r"space\.local\.lrr.*unknown key"),
    ({"space": {"local.lr": {"uniform": [0.2, 0.1]}}}, r"space\.local\.lr.*empty uniform range"),
    ({"space": {"local.lr": {"loguniform": [0.0, 0.1]}}}, r"space\.local\.lr.*0 < low"),
    ({"space": {"local.epochs": {"int": [3, 1]}}}, r"space\.local\.epochs.*empty int range"),
    ({"space": {"local.lr": {"choice": []}}}, r"space\.local\.lr.*non-empty list"),
    ({"space": {"local.lr": {"uniform": [0.1, 0.2], "choice": [1]}}}, r"space\.local\.lr.*exactly one"),
    ({"space": {"local.lr": {"uniform": [-1.0, 0.2]}}}, r"space\.local\.lr: value -1\.0"),
    ({"space": {"local.lr": {"grid": [0.1, 0.2]}}}, r"space\.local\.lr.*`grid:` is for mode grid"),
    ({"mode": "grid"}, r"space\.local\.lr: mode grid takes only `grid:`"),
    ({"mode": "pbt"}, r"pbt: mode pbt needs a pbt: section"),
    ({"mode": "pbt", "pbt": {"perturbation_interval": 2}}, r"checkpoint_every.*divide"),
    (
        {"mode": "pbt", "pbt": {"lr_key": "local.momentum"}, "checkpoint_every": 2},
        r"pbt\.lr_key.*not in space",
    ),
    (
        {"mode": "grid", "num_samples": 1, "space": {"local.lr": {"grid": [0.1]}}, "pbt": {}},
        r"pbt: options for mode pbt",
    ),
    ({"objectives": [{"metric": "test_accuracy"}]}, r"objectives: give two or more"),
    (
        {
            "objectives": [{"metric": "test_accuracy"}, {"metric": "round_s", "goal": "min"}],
            "optuna": {"asha": {"grace_period": 1}},
        },
        r"optuna\.asha: Tune's schedulers stop trials on one metric",
    ),
    ({"seeds": [1, 2]}, r"seeds: mode optuna trials run one seed each"),
    (
        {"optuna": {"n_startup_trials": 2}},
        r"optuna\.n_startup_trials: TPE draws its first 2 trials at random and the sweep runs 2 .*below",
    ),
    (
        {"optuna": {"sampler": "random", "n_startup_trials": 1}, "num_samples": 4},
        r"optuna\.n_startup_trials: TPE's random start-up trials, but sampler is random",
    ),
    ({"space": {"output.dir": {"choice": ["a", "b"]}}}, r"space\.output\.dir: not a knob"),
    ({"space": {}}, r"space: give at least one knob"),
    ({"mode": "bayes"}, r"mode: Input should be 'optuna', 'pbt' or 'grid'"),
    ({"num_samples": 0}, r"num_samples"),
    ({"typo": 1}, r"typo: unknown key"),
]


@pytest.mark.parametrize("over, message", BAD, ids=[m.split("\\")[0][:30] for _, m in BAD])
def test_a_bad_spec_is_one_message_naming_the_key(tmp_path, over, message):
    with pytest.raises(ConfigError, match=message):
        spec_from_dict(_spec(tmp_path, **over), "spec.yaml", tmp_path)


def test_a_tpe_sweep_that_never_leaves_its_random_start_up_trials_says_it_is_random_search(tmp_path):
    def note(**over):
        return spec_from_dict(_spec(tmp_path, **over), "spec.yaml", tmp_path).spec.random_search_note()

    assert "random search" in note(num_samples=10)  # Optuna's 10 start-up trials: all random
    assert note(num_samples=11) is None
    assert note(num_samples=4, optuna={"n_startup_trials": 3}) is None
    assert note(num_samples=4, optuna={"sampler": "random"}) is None  # random by choice


def test_the_shipped_optuna_spec_runs_tpe_after_its_start_up_trials():
    spec = load_spec(REPO / "configs" / "tune" / "fedavg_lr_optuna.yaml").spec
    assert spec.optuna is not None and spec.optuna.sampler == "tpe"
    assert spec.optuna.n_startup_trials is not None and spec.optuna.n_startup_trials < spec.num_samples
    assert spec.random_search_note() is None


def test_num_samples_from_the_cli_below_the_start_up_trials_exits_2_naming_both(tmp_path):
    spec = REPO / "configs" / "tune" / "fedavg_lr_optuna.yaml"
    args = ["tune", str(spec), "--num-samples", "3", "--storage-path", str(tmp_path / "sw")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "--num-samples 3" in res.output and "optuna.n_startup_trials" in res.output
    assert not (tmp_path / "sw").exists()


def test_eval_every_above_one_is_refused_for_test_metrics(tmp_path):
    base = tiny_config(tmp_path, rounds__eval_every=2).to_dict()
    with pytest.raises(ConfigError, match="rounds.eval_every: 1"):
        spec_from_dict(_spec(tmp_path, base=base), "spec.yaml", tmp_path)
    spec_from_dict(_spec(tmp_path, base=base, metric="train_loss", goal="min"), "spec.yaml", tmp_path)


def test_cli_bad_spec_exits_2_with_the_key_and_leaves_no_sweep_directory(tmp_path):
    raw = _spec(tmp_path, space={"algorithm.nope": {"uniform": [0, 1]}}, storage_path=str(tmp_path / "sw"))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["tune", str(path)])
    assert res.exit_code == 2, res.output
    assert "space.algorithm.nope" in res.output
    assert not (tmp_path / "sw").exists()
    res = CliRunner().invoke(app, ["tune"])
    assert res.exit_code == 2 and "exactly one of SPEC" in res.output
    res = CliRunner().invoke(app, ["tune", "--resume", str(tmp_path)])
    assert res.exit_code == 2 and "no sweep.yaml here" in res.output
    res = CliRunner().invoke(app, ["tune", "--validate-best", str(tmp_path)])
    assert res.exit_code == 2 and "no sweep.json/best.yaml" in res.output
    res = CliRunner().invoke(app, ["tune", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "no sweep spec at" in res.output


def test_genetic_explore_multiplies_the_lr_by_exactly_its_factors_and_never_clones_by_default():
    explore = genetic_explore("local.lr", 0.1, seed=7)
    seen = [explore({"local.lr": 0.05, "x": 1})["local.lr"] / 0.05 for _ in range(300)]
    # x 1 left out: an exploit at x 1 would re-run the donor exactly
    assert set(np.round(seen, 12)) == {0.9, 1.1}
    # seeded: the same stream twice
    again = genetic_explore("local.lr", 0.1, seed=7)
    assert [again({"local.lr": 0.05})["local.lr"] / 0.05 for _ in range(300)] == seen
    # paper 001's three factors on request (pbt.lr_unchanged: true)
    three = genetic_explore("local.lr", 0.1, seed=7, unchanged=True)
    assert set(np.round([three({"local.lr": 0.05})["local.lr"] / 0.05 for _ in range(300)], 12)) == {
        0.9,
        1.0,
        1.1,
    }


def test_pareto_mask_on_hand_made_points():
    # (accuracy max, seconds min): b dominates d; a, b, c trade off
    v = np.array([[0.9, 10.0], [0.8, 5.0], [0.7, 1.0], [0.75, 6.0], [0.9, 12.0]])
    assert pareto_mask(v, ["max", "min"]).tolist() == [True, True, True, False, False]


def _genetic_base(tmp_path: Path, **algo: Any) -> dict[str, Any]:
    base = tiny_config(tmp_path).to_dict()
    base["algorithm"] = {"name": "genetic-cfl", **algo}
    return base


def test_a_pbt_lr_key_the_algorithm_never_reads_is_refused_naming_key_and_algorithm(tmp_path):
    # genetic CFL draws each client's own lr: PBT's local.lr would label identical trials apart
    raw = _spec(
        tmp_path,
        base=_genetic_base(tmp_path),
        mode="pbt",
        checkpoint_every=1,
        pbt={"perturbation_interval": 1},
    )
    with pytest.raises(ConfigError, match=r"pbt\.lr_key: algorithm 'genetic-cfl' does not read local\.lr"):
        spec_from_dict(raw, "spec.yaml", tmp_path)
    # the same knob on an algorithm that reads it is a sweep (the base tiny config is FedAvg)
    spec_from_dict({**raw, "base": tiny_config(tmp_path).to_dict()}, "spec.yaml", tmp_path)


def test_any_knob_the_algorithm_ignores_is_refused_and_its_own_keys_are_not(tmp_path):
    base = _genetic_base(tmp_path)
    for key, dim in (("local.batch_size", {"choice": [8, 16]}), ("local.epochs", {"int": [1, 2]})):
        with pytest.raises(ConfigError, match=rf"space\.{key}: algorithm 'genetic-cfl' does not read"):
            spec_from_dict(_spec(tmp_path, base=base, space={key: dim}), "spec.yaml", tmp_path)
    # with algorithm.epochs null, genetic CFL trains local.epochs: then it is a knob
    spec_from_dict(
        _spec(tmp_path, base=_genetic_base(tmp_path, epochs=None), space={"local.epochs": {"int": [1, 2]}}),
        "spec.yaml",
        tmp_path,
    )
    spec_from_dict(
        _spec(tmp_path, base=base, space={"algorithm.mutation_scale": {"uniform": [0.05, 0.2]}}),
        "spec.yaml",
        tmp_path,
    )


def test_cli_refuses_an_ignored_knob_with_exit_2_and_writes_nothing(tmp_path):
    raw = _spec(tmp_path, base=_genetic_base(tmp_path), storage_path=str(tmp_path / "sw"))
    path = tmp_path / "ignored.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["tune", str(path)])
    assert res.exit_code == 2, res.output
    assert "space.local.lr" in res.output and "genetic-cfl" in res.output
    assert not (tmp_path / "sw").exists()


def test_every_algorithm_declares_only_local_keys():
    """What tuning trusts is a set of local.* fields (genetic CFL's behaviour behind its
    declaration is tested in tests/algorithms/test_genetic_cfl.py)."""
    from raysim.algorithms import ALGORITHMS, build_algorithm
    from raysim.config import LocalConfig

    fields = {f"local.{n}" for n in LocalConfig.model_fields}  # the fit's knobs and local.lr_decay
    for name in ALGORITHMS:
        ignored = build_algorithm(name).ignored_config_keys()
        assert ignored <= fields, (name, ignored - fields)
    assert build_algorithm("fedavg").ignored_config_keys() == frozenset()
