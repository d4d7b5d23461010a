"""``local.lr_decay``: a per-round learning-rate decay applied by the round loop, so every
algorithm's clients train round t at lr * lr_decay ** (t - 1); 1.0 (the default) changes nothing."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from raysim.cli import app
from raysim.config import ConfigError, config_from_dict
from raysim.runtime.trainer import Trainer
from raysim.testing import tiny_raw
from tests.conftest import tiny_config
from tests.helpers import experiment


def _fit_lrs(monkeypatch, cfg, rounds: int) -> tuple[list[set[float]], list[dict[str, float]]]:
    """The learning rates every client fit of each round was given (at the optimiser's door, the
    trainer), and each round's metrics."""
    seen: list[float] = []
    fit = Trainer.fit

    def spy(self, params, x, y, hparams, *a, **kw):
        seen.append(hparams.lr)
        return fit(self, params, x, y, hparams, *a, **kw)

    monkeypatch.setattr(Trainer, "fit", spy)
    exp = experiment(cfg)
    exp.prepare()
    per_round, metrics = [], []
    try:
        for _ in range(rounds):
            seen.clear()
            report = exp.step()
            metrics.append({**report.metrics, **{f"hparams/{k}": v for k, v in report.hparams.items()}})
            per_round.append(set(seen))
    finally:
        exp.close()
    return per_round, metrics


@pytest.mark.parametrize("algorithm", ["fedavg", "ifca"])
def test_round_three_trains_at_lr_times_decay_squared(tmp_path, monkeypatch, algorithm):
    cfg = tiny_config(tmp_path, algorithm__name=algorithm, local__lr=0.1, local__lr_decay=0.5)
    lrs, metrics = _fit_lrs(monkeypatch, cfg, 3)
    assert lrs == [{0.1}, {0.1 * 0.5}, {0.1 * 0.5**2}]
    assert [m["lr"] for m in metrics] == [0.1, 0.05, 0.1 * 0.5**2]  # rounds.parquet's lr column
    # what a sweep records as hparams/lr (the cohort's tasks, tuning/trainable.py): the decayed lr
    assert [m["hparams/lr"] for m in metrics] == [0.1, 0.05, 0.1 * 0.5**2]


def test_no_decay_by_default_and_no_lr_column(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, local__lr=0.1)
    assert cfg.local.lr_decay == 1.0
    lrs, metrics = _fit_lrs(monkeypatch, cfg, 2)
    assert lrs == [{0.1}, {0.1}]
    assert all("lr" not in m for m in metrics)


def test_decay_applies_on_top_of_a_set_hparams_override(tmp_path):
    exp = experiment(tiny_config(tmp_path, local__lr=0.1, local__lr_decay=0.9))
    exp.set_hparams(lr=0.2)
    assert exp.round_hparams(1).lr == 0.2
    assert exp.round_hparams(4).lr == pytest.approx(0.2 * 0.9**3)
    assert exp.hparams().lr == 0.2  # the record itself stays undecayed


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, "fast"])
def test_a_bad_lr_decay_is_refused_naming_the_key(tmp_path, bad):
    raw = tiny_raw(tmp_path)
    raw["local"]["lr_decay"] = bad
    with pytest.raises(ConfigError, match="lr_decay"):
        config_from_dict(raw)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["run", str(path), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "lr_decay" in res.output
    assert not (tmp_path / "runs").exists()  # nothing written


def test_an_algorithms_own_decay_and_local_lr_decay_together_are_refused(tmp_path):
    raw = {
        "data": {"dataset": "digits", "num_clients": 8},
        "algorithm": {"name": "ascfl", "lr_decay": 0.99, "positive_incentive": False},
        "rounds": {"clients_per_round": 4},
        "local": {"lr_decay": 0.99},
    }
    with pytest.raises(ConfigError, match="would both decay") as err:
        config_from_dict(raw, "t")
    assert "algorithm.lr_decay=0.99" in str(err.value) and "local.lr_decay=0.99" in str(err.value)
    # either one alone is accepted
    config_from_dict({**raw, "local": {"lr_decay": 1.0}}, "t")
    config_from_dict({**raw, "algorithm": {"name": "ascfl", "positive_incentive": False}}, "t")
