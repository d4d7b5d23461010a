"""The client hyperparameter record (``LocalHParams``): built from ``LocalConfig`` only, checked on
every construction (``replace`` included), cheap to ship, and carried through checkpoints."""

from __future__ import annotations

import json
import pickle
from dataclasses import fields, replace

import pandas as pd
import pytest
from pydantic import ValidationError

from raysim.algorithms.base import LocalHParams, plain_sgd
from raysim.config import ROUND_SCHEDULE, ConfigError, LocalConfig
from raysim.runtime import rundir
from tests.conftest import tiny_config
from tests.helpers import experiment


def test_the_record_has_localconfigs_fields_and_defaults_and_no_others():
    # every local.* knob but the per-round schedule (lr_decay), which the round loop applies to lr
    fit_knobs = tuple(k for k in LocalConfig.model_fields if k not in ROUND_SCHEDULE)
    assert LocalHParams.names() == fit_knobs
    assert LocalHParams.of().as_dict() == LocalConfig().model_dump(include=set(fit_knobs))
    cfg = LocalConfig(epochs=3, lr=0.2, momentum=0.5, loss="squared_error")
    assert LocalHParams.of(cfg).as_dict() == cfg.model_dump(exclude=set(ROUND_SCHEDULE))
    assert LocalHParams.of(cfg, lr=0.3) == replace(LocalHParams.of(cfg), lr=0.3)
    with pytest.raises(ValidationError, match="nope"):
        LocalHParams.of(nope=1)  # the config's own checks: unknown names, ranges
    with pytest.raises(ValidationError, match="lr"):
        LocalHParams.of(lr=-1.0)


def test_every_construction_coerces_and_checks_the_cross_field_rules():
    hp = replace(LocalHParams.of(), epochs=2.0, batch_size="8", lr=1)
    assert (type(hp.epochs), type(hp.batch_size), type(hp.lr)) == (int, int, float)
    assert (hp.epochs, hp.batch_size, hp.lr) == (2, 8, 1.0)
    with pytest.raises(ValueError, match="momentum 0.9 is an SGD knob"):
        replace(LocalHParams.of(momentum=0.9), optimizer="adam")  # e.g. an algorithm's own optimizer
    with pytest.raises(ValueError, match="valid names: sgd, adam"):
        replace(LocalHParams.of(), optimizer="rmsprop")
    with pytest.raises(ValueError, match="valid names: cross_entropy, squared_error"):
        replace(LocalHParams.of(), loss="l1")
    # the config refuses the same combination by building the record: one rule, one message
    with pytest.raises(ValidationError, match="momentum 0.5 is an SGD knob"):
        LocalConfig(optimizer="adam", momentum=0.5)


def test_plain_sgd_is_spelled_out_not_taken_from_the_config():
    step = plain_sgd(lr=0.02, epochs=1, batch_size=40)
    assert (step.momentum, step.weight_decay, step.optimizer, step.loss) == (0.0, 0.0, "sgd", "cross_entropy")


def test_the_record_pickles_small_and_round_trips_a_checkpoint(tmp_path):
    hp = LocalHParams.of(lr=0.1, optimizer="adam", loss="squared_error")
    blob = pickle.dumps(hp)
    assert pickle.loads(blob) == hp and len(blob) < 400
    # inside an algorithm's state it is a dataclass of raysim's: stored field by field, no code run
    rundir.write_checkpoint(tmp_path, 4, {"state": {"hp": hp}}, "", hparams={"lr": 0.2})
    header = json.loads((tmp_path / rundir.STATE_FILE).read_text())
    assert header["hparams"] == {"lr": 0.2}
    got = rundir.read_checkpoint(tmp_path)
    assert got["server"]["state"]["hp"] == hp and type(got["server"]["state"]["hp"]) is LocalHParams
    assert got["hparams"] == {"lr": 0.2}
    assert {f.name for f in fields(hp)} == set(header["server"]["state"]["hp"]["fields"])


def test_a_checkpoint_without_hparams_reads_and_a_bad_entry_is_refused(tmp_path):
    rundir.write_checkpoint(tmp_path, 1, {"x": 1}, "")
    path = tmp_path / rundir.STATE_FILE
    header = json.loads(path.read_text())
    del header["hparams"]  # written before the overrides were stored
    path.write_text(json.dumps(header))
    assert rundir.read_checkpoint(tmp_path)["hparams"] == {}
    header["hparams"] = {"nope": 1}
    path.write_text(json.dumps(header))
    with pytest.raises(ConfigError, match="'nope' is not a local"):
        rundir.read_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="not a plain finite number"):
        rundir.write_checkpoint(tmp_path / "b", 1, {}, "", hparams={"lr": [0.1]})


def _steps(cfg, n: int, *, lr_after_round_1: float | None = None, save=None, restore=None) -> pd.DataFrame:
    exp = experiment(cfg)
    exp.prepare()
    try:
        if restore is not None:
            exp.restore(restore)
        out = []
        for _ in range(n):
            out.append(exp.step().metrics)
            if lr_after_round_1 is not None and exp.next_round == 2:
                exp.set_hparams(lr=lr_after_round_1)
                if save is not None:
                    exp.save(save)
        return pd.DataFrame(out)
    finally:
        exp.close()


COLS = ["round", "train_loss", "test_loss", "test_accuracy"]


def test_set_hparams_overrides_are_checked(tmp_path):
    exp = experiment(tiny_config(tmp_path))
    with pytest.raises(ValueError, match="unknown client hyperparameters"):
        exp.set_hparams(nope=1)
    with pytest.raises(ValueError, match="SGD knob"):
        exp.set_hparams(optimizer="adam", momentum=0.5)
    with pytest.raises(ValueError, match="lr"):
        exp.set_hparams(lr=0.0)
    assert exp.overrides == {}  # a refused override leaves nothing behind
    exp.set_hparams(lr=0.2)
    assert exp.hparams().lr == 0.2 and exp.hparams(lr=0.3).lr == 0.3 and exp.hparams().epochs == 1


def test_set_hparams_overrides_survive_save_and_restore(tmp_path):
    """A schedule's override set after round 1 is saved with round 1's checkpoint: a fresh
    experiment restored from it trains rounds 2-3 exactly as the uninterrupted run did; the same
    checkpoint without the stored override (as older raysims wrote it) trains with the config's lr."""
    cfg = tiny_config(tmp_path, rounds__num_rounds=3)
    whole = _steps(cfg, 3, lr_after_round_1=0.2, save=tmp_path / "r1")
    state = json.loads((tmp_path / "r1" / rundir.STATE_FILE).read_text())
    assert state["hparams"] == {"lr": 0.2}
    resumed = _steps(cfg, 2, restore=tmp_path / "r1")
    pd.testing.assert_frame_equal(
        whole[COLS].iloc[1:].reset_index(drop=True), resumed[COLS], check_exact=True
    )
    del state["hparams"]
    (tmp_path / "r1" / rundir.STATE_FILE).write_text(json.dumps(state))
    plain = _steps(cfg, 2, restore=tmp_path / "r1")
    assert (plain["train_loss"] != resumed["train_loss"]).all()
