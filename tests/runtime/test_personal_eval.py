"""Personal evaluation that scales (issue 21): clients scored with a shared model in one batched
pass, checked against the per-client path (correct counts equal, losses close), for packing
independence (exact), and the sampled mode with its seeded sample and its 95% intervals."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest

from raysim.algorithms.base import ClientBatch, PersonalKeys
from raysim.algorithms.fedavg import FedAvg
from raysim.algorithms.ifca import IFCA, IFCAParams
from raysim.config import AUTO_PERSONAL_EVAL, ConfigError, personal_eval_count
from raysim.runtime.server import personal_intervals
from tests.conftest import tiny_config
from tests.helpers import run

COLS = ["round", "client_id", "personal_accuracy", "personal_loss"]


class PerClient:
    """Mix-in: every client through the per-client path (the reference the batched path must match)."""

    def personal_model_keys(self, broadcast: Mapping[str, np.ndarray], clients: ClientBatch) -> PersonalKeys:
        return PersonalKeys.per_client(len(clients.client_ids))


class PerClientFedAvg(PerClient, FedAvg):
    pass


class PerClientIFCA(PerClient, IFCA):
    pass


def personal_rows(ran: Any) -> pd.DataFrame:
    c = ran.clients
    return c[~c.participated][COLS].sort_values(["round", "client_id"]).reset_index(drop=True)


CASES = {
    # rotations: one batched pass per input rotation; label permutations: per-client label spaces
    "fedavg-rotation": (FedAvg, PerClientFedAvg, {"data__partition": "rotation", "data__num_groups": 2}),
    "fedavg-labels": (
        FedAvg,
        PerClientFedAvg,
        {"data__partition": "label-permutation", "data__num_groups": 2},
    ),
    "ifca-rotation": (IFCA, PerClientIFCA, {"data__partition": "rotation", "data__num_groups": 2}),
}


def algo(cls: type, name: str) -> Any:
    return cls(IFCAParams(num_clusters=2, select_on="val")) if name.startswith("ifca") else cls()


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_batched_path_matches_one_pass_per_client(tmp_path, case):
    batched_cls, reference_cls, over = CASES[case]
    name = "ifca" if case.startswith("ifca") else "fedavg"
    cfg = tiny_config(tmp_path, rounds__num_rounds=2, algorithm__name=name, **over)
    a = run(cfg, algorithm=algo(batched_cls, case))
    b = run(cfg, algorithm=algo(reference_cls, case))
    # the batched run scored every client in a shared pass, the reference none
    assert (a.rounds["personal_eval_shared"] == a.rounds["personal_eval_clients"]).all()
    assert (b.rounds["personal_eval_shared"] == 0).all()
    pa, pb = personal_rows(a), personal_rows(b)
    assert len(pa) == 2 * 6
    pd.testing.assert_frame_equal(pa[COLS[:3]], pb[COLS[:3]])  # correct counts: exactly equal
    np.testing.assert_allclose(pa["personal_loss"], pb["personal_loss"], rtol=1e-5)  # losses: last bits
    assert a.rounds["personal_accuracy"].tolist() == b.rounds["personal_accuracy"].tolist()


@pytest.mark.parametrize("name", ["fedavg", "ifca"])
def test_batched_figures_do_not_depend_on_the_packing(tmp_path, name):
    over = {"data__partition": "rotation", "data__num_groups": 2, "algorithm__name": name}
    one = run(tiny_config(tmp_path, rounds__num_rounds=2, resources__clients_per_actor=6, **over))
    three = run(tiny_config(tmp_path, rounds__num_rounds=2, resources__clients_per_actor=2, **over))
    assert one.summary["client_actors"] == 1 and three.summary["client_actors"] == 3
    pd.testing.assert_frame_equal(personal_rows(one), personal_rows(three), check_exact=True)
    cols = ["personal_accuracy", "personal_loss", "personal_accuracy_mean"]
    assert one.rounds[cols].equals(three.rounds[cols])


def test_a_sampled_evaluation_scores_a_seeded_sample_with_intervals(tmp_path):
    over = {"rounds__num_rounds": 3, "rounds__personal_eval": 3}
    one = run(tiny_config(tmp_path, resources__clients_per_actor=6, **over))
    three = run(tiny_config(tmp_path, resources__clients_per_actor=2, **over))
    p1, p3 = personal_rows(one), personal_rows(three)
    assert p1.groupby("round").size().tolist() == [3, 3, 3]
    pd.testing.assert_frame_equal(p1, p3, check_exact=True)  # the same sample whatever the packing
    samples = [tuple(g.client_id) for _, g in p1.groupby("round")]
    assert len(set(samples)) > 1  # drawn afresh every round
    r = one.rounds
    assert (r["personal_eval_clients"] == 3).all()
    for est in ("personal_accuracy", "personal_accuracy_mean"):
        lo, hi = r[f"{est}_ci95_low"], r[f"{est}_ci95_high"]
        assert ((lo <= r[est]) & (r[est] <= hi) & (hi > lo)).all(), est


def test_every_client_scored_means_an_exact_figure(tmp_path):
    r = run(tiny_config(tmp_path, rounds__num_rounds=1, rounds__personal_eval="all")).rounds
    assert r["personal_eval_clients"].tolist() == [6.0]
    assert r["personal_accuracy_ci95_low"].tolist() == r["personal_accuracy"].tolist()
    assert r["personal_accuracy_ci95_high"].tolist() == r["personal_accuracy"].tolist()


def test_personal_eval_honours_eval_every(tmp_path):
    ran = run(tiny_config(tmp_path, rounds__num_rounds=3, rounds__eval_every=2, rounds__personal_eval=0.5))
    assert sorted(set(personal_rows(ran)["round"])) == [2, 3]  # every 2nd round and the last
    assert ran.rounds["personal_accuracy"].isna().tolist() == [True, False, False]


def test_intervals_on_hand_computed_figures():
    correct, n = np.array([1, 3]), np.array([2, 4])  # accuracies 0.5 and 0.75
    out = personal_intervals(correct, n, fpc=0.5)
    # mean of accuracies 0.625, s^2 = 0.03125, se = sqrt(0.5 * 0.03125 / 2) = 0.0883883...
    assert out["personal_accuracy_mean_ci95_low"] == pytest.approx(0.625 - 1.959964 * 0.0883883, abs=1e-6)
    assert out["personal_accuracy_mean_ci95_high"] == pytest.approx(0.625 + 1.959964 * 0.0883883, abs=1e-6)
    # ratio 4/6; d = (1 - 4/3, 3 - 8/3) = (-1/3, 1/3): s_d^2 = 2/9, se = sqrt(0.5 * 2/9 / 2) / 3
    se = np.sqrt(0.5 * (2 / 9) / 2) / 3
    assert out["personal_accuracy_ci95_low"] == pytest.approx(4 / 6 - 1.959964 * se, abs=1e-6)
    exact = personal_intervals(correct, n, fpc=0.0)
    assert exact["personal_accuracy_ci95_low"] == exact["personal_accuracy_ci95_high"] == 4 / 6
    assert np.isnan(personal_intervals(correct[:1], n[:1], fpc=0.5)["personal_accuracy_ci95_low"])


@pytest.mark.parametrize(
    ("setting", "clients", "expected"),
    [
        (True, 50, 50),
        ("all", 50, 50),
        (False, 50, 0),
        (7, 50, 7),
        (70, 50, 50),
        (0.1, 50, 5),
        (1.0, 50, 50),
        ("auto", 50, 50),
        ("auto", 10**6, AUTO_PERSONAL_EVAL),
    ],
)
def test_how_many_clients_personal_eval_scores(setting, clients, expected):
    assert personal_eval_count(setting, clients) == expected


def test_the_default_is_auto_and_configs_with_true_still_load(tmp_path):
    assert tiny_config(tmp_path).rounds.personal_eval == "auto"
    assert tiny_config(tmp_path, rounds__personal_eval=True).rounds.personal_eval is True
    assert tiny_config(tmp_path, rounds__personal_eval=0.25).rounds.personal_eval == 0.25


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, "some"])
def test_a_bad_personal_eval_names_the_key(tmp_path, bad):
    with pytest.raises(ConfigError, match="personal_eval"):
        tiny_config(tmp_path, rounds__personal_eval=bad)


def test_validate_says_what_the_default_does_at_a_million_clients(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from raysim._testing_runs import tiny_raw
    from raysim.cli import app

    raw = tiny_raw(tmp_path)
    raw["data"]["num_clients"] = 1_000_000
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    r = CliRunner().invoke(app, ["validate", str(tmp_path / "c.yaml")])
    assert r.exit_code == 0, r.output
    assert yaml.safe_load(r.stdout)["rounds"]["personal_eval"] == "auto"  # still the YAML: a comment
    assert "# rounds.personal_eval auto: a seeded sample of 10,000 of the 1,000,000 clients" in r.stdout


@pytest.mark.parametrize("name", ["cfl", "ascfl", "local", "pfedme", "fedrod", "fedper", "fedbn"])
def test_each_algorithms_keys_agree_with_its_personal_params(tmp_path, name):
    """personal_model_keys must send every client to the model personal_params gives it: the
    batched run's figures equal those of the same algorithm with every client on the per-client path."""
    from raysim.algorithms import ALGORITHMS

    cls = ALGORITHMS[name]
    reference = type(f"PerClient{cls.__name__}", (PerClient, cls), {})
    over: dict[str, Any] = {"data__public_fraction": 0.1, "algorithm__name": name}
    if name == "fedbn":
        over["model__name"] = "cnn-bn"
    cfg = tiny_config(tmp_path, rounds__num_rounds=2, **over)
    a = run(cfg, algorithm=cls(cls.params_model()))
    b = run(cfg, algorithm=reference(cls.params_model()))
    pa, pb = personal_rows(a), personal_rows(b)
    pd.testing.assert_frame_equal(pa[COLS[:3]], pb[COLS[:3]])
    np.testing.assert_allclose(pa["personal_loss"], pb["personal_loss"], rtol=1e-5)
    assert (b.rounds["personal_eval_shared"] == 0).all()
    if name == "fedbn":  # its clients' own BatchNorm statistics: never a shared pass
        assert (a.rounds["personal_eval_shared"] == 0).all()
    else:  # cluster models, or the global model for clients that never trained (3 of 6 after round 1)
        assert a.rounds["personal_eval_shared"].iloc[0] > 0
