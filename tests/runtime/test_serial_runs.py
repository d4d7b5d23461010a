"""End-to-end runs on the serial backend: determinism, packing invariance, faults, resume."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from raysim.algorithms.base import LocalHParams
from raysim.algorithms.fedavg import FedAvg
from raysim.runtime.backend import Share
from tests.conftest import tiny_config
from tests.helpers import experiment, resume, run
from tests.runtime.exact import assert_same_learning, client_actors


def test_run_writes_every_file_and_learns(tmp_path):
    summary, rounds, exp = run(tiny_config(tmp_path, rounds__num_rounds=4)).unpack("summary", "rounds", "exp")
    for f in (
        "config.yaml",
        "rounds.parquet",
        "clients.parquet",
        "system.parquet",
        "summary.json",
        "partition.parquet",
    ):
        assert (exp.run_dir / f).is_file(), f
    assert len(rounds) == 4
    assert rounds["test_accuracy"].iloc[-1] > rounds["test_accuracy"].iloc[0]
    assert summary["final_test_accuracy"] == pytest.approx(rounds["test_accuracy"].iloc[-1])
    # every cohort member downloads the 20k-float model once and uploads one update
    n_params = (1 * 16 * 9 + 16) + (16 * 32 * 9 + 32) + (32 * 2 * 2 * 10 + 10)  # cnn-small on 8x8 digits
    assert rounds["bytes_down"].iloc[0] == 3 * 4 * n_params
    assert rounds["bytes_up"].iloc[0] == 3 * 4 * n_params
    clients = pd.read_parquet(exp.run_dir / "clients.parquet")
    assert set(clients[clients.participated & ~clients.dropped].groupby("round").size()) == {3}


def test_same_seed_gives_identical_metrics(tmp_path):
    _, a, _ = run(tiny_config(tmp_path)).unpack("summary", "rounds", "exp")
    _, b, _ = run(tiny_config(tmp_path)).unpack("summary", "rounds", "exp")
    assert_same_learning(a, b, "seed 3 twice")
    _, c, _ = run(tiny_config(tmp_path, seed=4)).unpack("summary", "rounds", "exp")
    assert not np.allclose(a["test_loss"], c["test_loss"])


def test_auto_packing_fills_the_share_one_cpu_an_actor(tmp_path):
    """`auto` on a 3-CPU share at one CPU an actor: 3 hosts (the packing kit check, raysim.testing,
    fixes the number with resources.num_actors instead)."""
    cfg = tiny_config(
        tmp_path, resources__clients_per_actor="auto", resources__num_cpus=1.0, rounds__num_rounds=1
    )
    summary, _, exp = run(cfg, share=Share(cpus=3.0)).unpack("summary", "rounds", "exp")
    assert summary["client_actors"] == 3 == client_actors(exp.run_dir)


class NaNForClient0(FedAvg):
    name = "nan-test"

    def client_update(self, task, params, client):
        r = super().client_update(task, params, client)
        if task.client_id == 0:
            return replace(r, delta=np.full_like(r.delta, np.nan))
        return r


def test_non_finite_update_is_a_counted_dropout(tmp_path):
    cfg = tiny_config(tmp_path, rounds__clients_per_round=6, rounds__num_rounds=2)
    exp = experiment(cfg)
    exp.algorithm = NaNForClient0()
    summary = exp.run()
    exp.close()
    rounds = pd.read_parquet(exp.run_dir / "rounds.parquet")
    assert list(rounds["dropouts"]) == [1.0, 1.0]
    assert list(rounds["completed"]) == [5.0, 5.0]
    assert np.isfinite(rounds["test_loss"]).all()
    clients = pd.read_parquet(exp.run_dir / "clients.parquet")
    bad = clients[clients.dropped]
    assert set(bad.client_id) == {0} and set(bad.reason) == {"non-finite update"}
    assert summary["dropouts"] == 2


@pytest.mark.parametrize("algo", ["scaffold", "local"])
def test_resume_matches_uninterrupted_run(tmp_path, algo):
    cfg = tiny_config(tmp_path, algorithm__name=algo, rounds__num_rounds=4, rounds__checkpoint_every=2)
    _, full, full_exp = run(cfg).unpack("summary", "rounds", "exp")

    first = experiment(cfg)
    first.run(until=3)  # checkpoint at round 2, then round 3 is lost with the "crash"
    first.close()
    resumed = resume(first.run_dir)
    assert resumed.next_round == 3
    resumed.run()
    resumed.close()
    after = pd.read_parquet(first.run_dir / "rounds.parquet")
    assert_same_learning(full, after, f"{algo}: resumed from round 2")
    # every client row too, the personal-evaluation rows of the reloaded rounds included
    pd.testing.assert_frame_equal(
        pd.read_parquet(first.run_dir / "clients.parquet"),
        pd.read_parquet(full_exp.run_dir / "clients.parquet"),
        check_dtype=True,
        check_exact=True,
    )


class SleepsInTraining(FedAvg):
    name = "sleep-in-training"

    def client_update(self, task, params, client):
        time.sleep(0.2)
        return super().client_update(task, params, client)


def test_phase_times_measure_their_own_phase(tmp_path):
    cfg = tiny_config(tmp_path, rounds__num_rounds=2)
    exp = experiment(cfg)
    exp.algorithm = SleepsInTraining()
    exp.run()
    exp.close()
    rounds = pd.read_parquet(exp.run_dir / "rounds.parquet")
    # three clients sleep 0.2 s each inside training: train_s holds that, no other phase does
    assert (rounds["train_s"] >= 0.6).all(), rounds["train_s"]
    for other in ("configure_s", "broadcast_s", "aggregate_s"):
        assert (rounds[other] < 0.6).all(), (other, rounds[other])
    assert (rounds["evaluate_s"] > 0).all()  # a test-set pass ran every round
    # the phases are disjoint parts of the round
    phases = rounds[["configure_s", "broadcast_s", "train_s", "aggregate_s", "evaluate_s"]].sum(axis=1)
    assert (phases <= rounds["round_s"]).all()


class DivergesForClient2(FedAvg):
    name = "diverge-test"

    def client_update(self, task, params, client):
        r = super().client_update(task, params, client)
        if task.client_id == 2:
            return replace(r, delta=np.full_like(r.delta, 1e9))  # finite, but far off the fixed-point grid
        return r


def test_a_divergent_update_is_a_counted_dropout(tmp_path):
    cfg = tiny_config(tmp_path, rounds__clients_per_round=6, rounds__num_rounds=2)
    exp = experiment(cfg)
    exp.algorithm = DivergesForClient2()
    exp.run()
    exp.close()
    rounds = pd.read_parquet(exp.run_dir / "rounds.parquet")
    assert list(rounds["dropouts"]) == [1.0, 1.0] and list(rounds["completed"]) == [5.0, 5.0]
    assert list(rounds["aggregated_clients"]) == [5.0, 5.0]
    assert np.isfinite(rounds["test_loss"]).all() and rounds["test_accuracy"].iloc[-1] > 0.3
    clients = pd.read_parquet(exp.run_dir / "clients.parquet")
    bad = clients[clients.dropped]
    assert set(bad.client_id) == {2}
    assert bad.reason.str.contains(r"client 2: \|examples x update\| reaches .* \(diverged\?\)").all()


def test_personal_eval_false_skips_the_client_side_evaluation(tmp_path):
    _, on, exp_on = run(tiny_config(tmp_path, rounds__num_rounds=2)).unpack("summary", "rounds", "exp")
    _, off, exp_off = run(tiny_config(tmp_path, rounds__num_rounds=2, rounds__personal_eval=False)).unpack(
        "summary", "rounds", "exp"
    )
    assert on["personal_accuracy"].notna().all()
    assert "personal_accuracy" not in off.columns and "personal_loss" not in off.columns
    assert np.isfinite(off["test_accuracy"]).all()  # the server still evaluates
    # clients.parquet: one evaluation row per client and round only with personal_eval
    evals_on = pd.read_parquet(exp_on.run_dir / "clients.parquet").query("not participated")
    evals_off = pd.read_parquet(exp_off.run_dir / "clients.parquet").query("not participated")
    assert len(evals_on) == 2 * 6 and len(evals_off) == 0
    # and nothing learned changes
    pd.testing.assert_series_equal(on["test_loss"], off["test_loss"], check_exact=True)


def test_label_noise_replaces_training_labels_with_uniform_random_ones(tmp_path):
    cfg = tiny_config(tmp_path, data__label_noise=0.5, rounds__num_rounds=1)
    exp = experiment(cfg)
    exp.prepare()
    try:
        ds = exp.dataset
        hosted = {cid: host.client(cid) for host in exp.backend.hosts for cid in host.client_ids()}
        noisy = []
        for cid, c in sorted(hosted.items()):
            clean = ds.y_train[c.train_idx]
            if not np.array_equal(c.y_train, clean):
                noisy.append(cid)
                # random draws, not a shuffle: a shuffle would keep the label histogram
                assert not np.array_equal(
                    np.bincount(c.y_train, minlength=10), np.bincount(clean, minlength=10)
                )
                assert c.y_train.min() >= 0 and c.y_train.max() < ds.num_classes
                assert not np.array_equal(c.y_val, ds.y_train[c.val_idx])
            np.testing.assert_array_equal(c.y_test, ds.y_test[c.test_idx])  # scored on clean labels
        assert len(noisy) == 3  # round(0.5 x 6) clients
    finally:
        exp.close()
    # every client noisy: nothing to learn; the same run without noise learns
    _, all_noisy, _ = run(tiny_config(tmp_path, data__label_noise=1.0, rounds__clients_per_round=6)).unpack(
        "summary", "rounds", "exp"
    )
    _, clean, _ = run(tiny_config(tmp_path, rounds__clients_per_round=6)).unpack("summary", "rounds", "exp")
    assert clean["test_accuracy"].iloc[-1] > 0.35  # 0.40 after 3 rounds
    assert all_noisy["test_accuracy"].iloc[-1] < 0.2  # chance is 0.1


def test_centralised_trains_one_pooled_client_exactly_like_plain_sgd(tmp_path):
    from raysim.models.flat import init_params
    from raysim.runtime.host import client_seed
    from raysim.runtime.trainer import Trainer

    cfg = tiny_config(tmp_path, algorithm__name="centralised", rounds__num_rounds=2)
    exp = experiment(cfg)
    exp.prepare()
    try:
        assert exp.num_hosts == 1 and exp.backend.hosts[0].client_ids() == [0]
        exp.run(until=1)
        after_one = exp.backend.eval_broadcast()["global"]
    finally:
        exp.close()
    ds, clients = exp.dataset, exp.federation.clients
    pooled = np.concatenate([c.train_idx for c in clients])
    assert len(pooled) == sum(len(c.train_idx) for c in clients) and len(np.unique(pooled)) == len(pooled)
    rounds = pd.read_parquet(exp.run_dir / "rounds.parquet")
    assert list(rounds["completed"]) == [1.0] and list(rounds["cohort"]) == [1.0]
    trained = pd.read_parquet(exp.run_dir / "clients.parquet").query("participated")
    assert list(trained["num_examples"]) == [len(pooled)]
    # round 1 = one epoch of SGD over the pooled examples from the seeded start (central_lr 1)
    trainer = Trainer(
        model=cfg.model.name,
        input_shape=tuple(ds.input_shape),
        num_classes=ds.num_classes,
        mean=tuple(ds.mean),
        std=tuple(ds.std),
    )
    start = init_params(cfg.model.name, tuple(ds.input_shape), ds.num_classes, cfg.seed)
    fit = trainer.fit(
        start,
        ds.x_train,
        ds.y_train[pooled],
        LocalHParams.of(cfg.local),
        idx=pooled,
        seed=client_seed(cfg.seed, 1, 0),
    )
    assert not np.allclose(fit.params, start)
    # equal up to the 2^-32 fixed-point grid the update is summed on
    np.testing.assert_allclose(after_one, fit.params, rtol=0, atol=1e-7)


def test_num_actors_sets_the_number_of_hosts(tmp_path):
    summary, _, exp = run(tiny_config(tmp_path, resources__num_actors=4, rounds__num_rounds=1)).unpack(
        "summary", "rounds", "exp"
    )
    assert summary["client_actors"] == 4 == client_actors(exp.run_dir)
    summary, _, exp = run(tiny_config(tmp_path, resources__num_actors=2, rounds__num_rounds=1)).unpack(
        "summary", "rounds", "exp"
    )
    assert summary["client_actors"] == 2 == client_actors(exp.run_dir)


def test_a_round_hands_back_cohort_rows_and_the_personal_figures_as_columns(tmp_path):
    """Personal evaluation scores every client of the federation (issue 13): its N figures travel
    as three arrays, not as N row dicts; ``report.clients`` holds the cohort's rows only."""
    exp = experiment(tiny_config(tmp_path, rounds__num_rounds=2, rounds__eval_every=2))
    exp.prepare()
    try:
        first, second = exp.step(), exp.step()
    finally:
        exp.close()
    assert first.personal is None and len(first.clients) == 3  # round 1 is not evaluated
    assert len(second.clients) == 3 and all(r["participated"] for r in second.clients)
    p = second.personal
    assert p.round == 2 and len(p) == 6 and p.client_id.tolist() == list(range(6))
    assert p.client_id.dtype == np.int64
    assert p.personal_accuracy.dtype == np.float64 and p.personal_loss.dtype == np.float64
    assert second.metrics["personal_accuracy_mean"] == float(p.personal_accuracy.mean())
    # the round's figures are the sums over the clients in id order, as with one dict a client
    n = [len(exp.federation.clients[c].test_idx) for c in p.client_id.tolist()]
    correct = [round(a * k) for a, k in zip(p.personal_accuracy.tolist(), n, strict=True)]
    assert second.metrics["personal_accuracy"] == sum(correct) / sum(n)
    assert second.metrics["personal_loss"] == sum(
        x * k for x, k in zip(p.personal_loss.tolist(), n, strict=True)
    ) / sum(n)


# clients.parquet as it was written when every row was one dict: dropouts in some rounds, rounds
# without personal evaluation (eval_every 2), algorithm annotations of every kind (float, str,
# and pFedHT's sparse new_client, whose column first appears after the personal ones)
ROW_CASES = {
    "dropouts, evaluated every 2nd round": {"rounds__num_rounds": 3, "rounds__eval_every": 2},
    "dsac annotations": {"algorithm__name": "dsac", "data__public_fraction": 0.1, "rounds__num_rounds": 2},
    "pfedht new clients": {
        "model__name": "vit-tiny",
        "algorithm__name": "pfedht",
        "algorithm__new_client_fraction": 0.2,
        "algorithm__new_client_round": 3,
        "rounds__num_rounds": 3,
    },
}


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_clients_parquet_is_the_frame_of_one_dict_per_row(tmp_path, case):
    from raysim.runtime.logger import write_parquet

    exp = experiment(tiny_config(tmp_path, **ROW_CASES[case]))
    if case.startswith("dropouts"):
        exp.algorithm = NaNForClient0()
    exp.prepare()
    rows = []
    try:
        while not exp.should_stop():
            rep = exp.run_round(exp.next_round)
            rows += rep.clients + (rep.personal.rows() if rep.personal is not None else [])
        exp.run()  # nothing left to run: writes the files
    finally:
        exp.close()
    write_parquet(pd.DataFrame(rows), tmp_path / "reference.parquet")
    want = pd.read_parquet(tmp_path / "reference.parquet")
    got = pd.read_parquet(exp.run_dir / "clients.parquet")
    pd.testing.assert_frame_equal(got, want, check_dtype=True, check_exact=True)
