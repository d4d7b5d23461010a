"""`raysim reproduce pfedht` (raysim.reproduce.pfedht): the metrics on hand-made runs, and the quick
scale end to end, its numbers checked against the runs it made."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from raysim.reproduce import reproduce_app
from raysim.reproduce.harness import Run, run_key
from raysim.reproduce.pfedht import (
    FEDAVG,
    LOCAL,
    PFEDHN,
    PFEDHN_VIT,
    PFEDHT,
    SCALES,
    config,
    data_section,
    exp1_settings,
    methods,
    new_client_accuracy,
    rta,
    settings,
)


def fake_run(path: Path, personal: list[float]) -> Run:
    rounds = pd.DataFrame({"round": np.arange(1, len(personal) + 1), "personal_accuracy": personal})
    return Run(raw={}, rounds=rounds, summary={}, path=path)


def test_rta_is_eq_24_per_seed(tmp_path):
    runs = [fake_run(tmp_path, [0.1, 0.6]), fake_run(tmp_path, [0.2, 0.9])]
    local = [fake_run(tmp_path, [0.5, 0.5]), fake_run(tmp_path, [0.3, 0.6])]
    assert rta(runs, local) == pytest.approx([1.2, 1.5])


def test_new_client_accuracy_reads_the_annotated_clients_from_the_evaluation_rows(tmp_path):
    # clients 1 and 3 are held out: annotated on their training rows only (round 3), scored in
    # every evaluation round like everyone else
    rows = [
        {"round": 2, "client_id": c, "personal_accuracy": a, "new_client": np.nan}
        for c, a in [(0, 0.8), (1, 0.1), (2, 0.6), (3, 0.3)]
    ]
    rows += [{"round": 3, "client_id": c, "personal_accuracy": np.nan, "new_client": 1.0} for c in (1, 3)]
    rows += [
        {"round": 4, "client_id": c, "personal_accuracy": a, "new_client": np.nan}
        for c, a in [(0, 0.9), (1, 0.5), (2, 0.7), (3, 0.7)]
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "clients.parquet")
    before, after, train = new_client_accuracy(fake_run(tmp_path, [0.5]), before=3)
    assert (before, after, train) == pytest.approx((0.2, 0.6, 0.8))


def test_every_method_of_a_setting_shares_data_seed_and_budget():
    sc = SCALES["full"]
    data = data_section(sc, "pathological", sc.clients)
    raws = [config(sc, 1, m, data) for m in methods().values()]
    for r in raws:
        assert r["data"] == raws[0]["data"] and r["seed"] == 1
        assert r["local"] == raws[0]["local"] and r["rounds"] == raws[0]["rounds"]
    assert len({run_key(r) for r in raws}) == len(raws)
    assert {PFEDHT, FEDAVG, LOCAL} <= set(methods())


def test_pfedhn_runs_at_its_reference_defaults_on_both_models_and_alpha_sets_the_label_skew():
    from dataclasses import replace

    from raysim.algorithms import build_algorithm

    ms = methods()
    # pFedHN's own defaults (the reference settings), spelled out so that a run at others is not reused
    hn = ms[PFEDHN].algorithm
    assert hn == ms[PFEDHN_VIT].algorithm and hn["name"] == "pfedhn" and hn["hn_optimizer"] == "sgd"
    defaults = build_algorithm("pfedhn").p
    assert all(getattr(defaults, k) == v for k, v in hn.items() if k != "name")
    assert (ms[PFEDHN].model, ms[PFEDHN_VIT].model) == ("cnn-small", "vit-tiny")
    sc = SCALES["full"]
    raws = [config(sc, 1, m, data_section(sc, "pathological", sc.clients)) for m in ms.values()]
    assert all(r["rounds"]["checkpoint_every"] == sc.rounds for r in raws)  # the fine-tuning reads it
    labels = list(settings(replace(sc, dirichlet=0.5)))
    assert labels[1] == "Dirichlet(0.5), 50 clients" and labels[0] == "pathological, 50 clients"
    assert settings(replace(sc, dirichlet=0.5))[labels[1]]["alpha"] == 0.5
    assert settings(sc)["Dirichlet(0.2), 50 clients"]["alpha"] == 0.2


def test_quick_reproduction_tables_come_from_the_runs(tmp_path):
    out = tmp_path / "res"
    res = CliRunner().invoke(
        reproduce_app, ["pfedht", "--quick", "--seeds", "2", "--only", "3,4", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    md = (out / "3_hypernetwork" / "table.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| pathological, 8 clients"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # the pFedHT cell is the mean over seeds of that run's last personal accuracy
    sc = SCALES["quick"]
    data = data_section(sc, "pathological", sc.clients)
    finals = []
    for seed in (1, 2):
        key = run_key(config(sc, seed, methods()[PFEDHT], data))
        r = pd.read_parquet(out / "runs" / key / "rounds.parquet")
        finals.append(float(r["personal_accuracy"].dropna().iloc[-1]))
    assert float(cells[1].split("±")[0]) == pytest.approx(100 * np.mean(finals), abs=0.006)
    new = (out / "4_new_clients" / "table.md").read_text()
    row = next(x for x in new.splitlines() if x.startswith("| pathological, 8 clients"))
    assert all(math.isfinite(float(c.split("±")[0])) for c in row.strip("|").split("|")[1:4])
    again = CliRunner().invoke(
        reproduce_app, ["pfedht", "--quick", "--seeds", "2", "--only", "3", "--out", str(out)]
    )
    assert again.exit_code == 0 and "0 new runs" in again.output


def test_an_unknown_experiment_number_exits_2(tmp_path):
    res = CliRunner().invoke(
        reproduce_app, ["pfedht", "--quick", "--only", "9", "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "--only: no experiment [9]" in res.output
    assert not (tmp_path / "x").exists()


def test_federations_picks_experiment_1s_federations_and_a_bad_one_exits_2(tmp_path):
    from dataclasses import replace

    sc = SCALES["converge"]
    assert list(exp1_settings(sc)) == list(settings(sc))  # all four by default
    two = exp1_settings(replace(sc, federations=(1, 2)))
    assert list(two) == ["pathological, 50 clients", "Dirichlet(0.5), 50 clients"]
    assert two == {k: settings(sc)[k] for k in two}  # the same data sections, so the same cached runs
    res = CliRunner().invoke(
        reproduce_app, ["pfedht", "--quick", "--federations", "1,5", "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "--federations: no federation [5]" in res.output
    assert not (tmp_path / "x").exists()


def test_methods_picks_experiment_1s_methods_in_table_order_and_a_bad_one_exits_2(tmp_path):
    from raysim.reproduce.pfedht import parse_methods

    assert parse_methods("") is None
    assert parse_methods(" local, PFEDHN ") == (PFEDHN, LOCAL)  # any case, methods()' order
    res = CliRunner().invoke(
        reproduce_app, ["pfedht", "--quick", "--methods", "pFedHN,FedSGD", "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "no method 'FedSGD'" in res.output and "pFedHN (vit-tiny)" in res.output
    assert not (tmp_path / "x").exists()


def test_below_local_names_each_personalised_run_under_locals_on_its_seed(tmp_path):
    from raysim.reproduce.pfedht_tables import below_local, below_local_note

    by = {
        PFEDHN: [fake_run(tmp_path, [0.5, 0.9]), fake_run(tmp_path, [0.5, 0.7])],
        PFEDHT: [fake_run(tmp_path, [0.5, 0.95]), fake_run(tmp_path, [math.nan, math.nan])],
        FEDAVG: [fake_run(tmp_path, [0.1, 0.2]), fake_run(tmp_path, [0.1, 0.2])],  # global: not counted
        LOCAL: [fake_run(tmp_path, [0.5, 0.9]), fake_run(tmp_path, [0.5, 0.8])],
    }
    low = below_local(by, [4, 5])
    assert low == {PFEDHN: ["seed 5 (70.00 % vs 80.00 %)"], PFEDHT: ["seed 5 (nan % vs 80.00 %)"]}
    assert "pFedHN: seed 5 (70.00 % vs 80.00 %)" in below_local_note(by, [4, 5])
    assert below_local_note({k: by[k] for k in (PFEDHN, LOCAL)}, [4, 5]).count("seed ") == 1
    assert "No personalised method" in below_local_note({LOCAL: by[LOCAL]}, [4, 5])
    assert below_local_note({PFEDHN: by[PFEDHN]}, [4, 5]) == ""  # no floor to compare with


def test_a_methods_subset_runs_only_those_and_says_so(tmp_path):
    out = tmp_path / "res"
    args = ["pfedht", "--quick", "--seeds", "2", "--only", "1", "--federations", "1"]
    res = CliRunner().invoke(reproduce_app, [*args, "--methods", "pfedhn,local", "--out", str(out)])
    assert res.exit_code == 0, res.output
    md = (out / "1_methods" / "table.md").read_text()
    rows = [x.split("|")[2].strip() for x in md.splitlines() if x.startswith("| pathological, 8 clients")]
    assert rows == [PFEDHN, LOCAL]
    p_vs_fedavg = [x.split("|")[6].strip() for x in md.splitlines() if x.startswith("| pathological, 8")]
    assert p_vs_fedavg == ["-", "-"]  # FedAvg* did not run: no test, and not "/" (the reference's own cell)
    header = next(x for x in md.splitlines() if x.startswith("| setting"))
    col = [c.strip() for c in header.strip("|").split("|")].index("p vs Local")
    p_vs_local = [
        x.strip("|").split("|")[col].strip() for x in md.splitlines() if x.startswith("| pathological, 8")
    ]
    assert p_vs_local[1] == "/" and p_vs_local[0] not in ("-", "/")  # pFedHN paired with Local's seeds
    assert "ran pFedHN, Local only (`--methods`)" in md and "server cost" not in md  # pFedHT did not run
    assert "the horizon verdicts are over these methods" in md  # a later method can turn them
    assert "end below Local's" in md or "No personalised method's run ends below Local's" in md
    assert len(list((out / "runs").iterdir())) == 4  # 2 methods x 2 seeds, nothing else
    readme = (out / "README.md").read_text()
    assert "--methods 'pFedHN,Local'" in readme and f"lr {SCALES['quick'].lr:g}, batch" in readme  # untuned


def test_the_long_scale_is_converge_at_96_rounds():
    long, conv = SCALES["long"], SCALES["converge"]
    assert (long.rounds, long.new_client_round) == (96, 73) and long.rounds == 2 * conv.rounds
    assert long.new_client_round > 3 * long.rounds // 4 - 1  # held-out clients join in the last quarter
    assert replace_rounds(long) == replace_rounds(conv)


def replace_rounds(sc):
    from dataclasses import replace

    return replace(sc, name="x", rounds=0, new_client_round=0)
