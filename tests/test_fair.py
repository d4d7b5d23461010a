"""Tuning every method alike (raysim/reproduce/fair.py): the knob table, the equal budget, and the
sweep specs it builds, validated by the tuning layer's own loader."""

from pathlib import Path

import pytest

from raysim.reproduce import clustered, fair, pfedht
from raysim.reproduce.harness import run_key


def pfedht_bases() -> dict[str, dict]:
    sc = pfedht.SCALES["quick"]
    data = pfedht.data_section(sc, "pathological", sc.clients)
    return {k: pfedht.config(sc, 0, m, data) for k, m in pfedht.methods().items()}


def clustered_bases() -> dict[str, dict]:
    sc = clustered.SCALES["quick"]
    data = clustered.rotation_data(sc.num_clients, sc.focus_alpha, sc.num_groups)
    algos = {
        **clustered.methods(sc.num_groups),
        **clustered.ascfl_ablation(sc.num_groups),
        **clustered.ifca_variants(sc.num_groups),
    }
    return {k: clustered.config(sc, 0, a, data) for k, a in algos.items()}


def test_every_reproduced_method_has_a_knob_entry_with_learning_rates_only():
    for base in [*pfedht_bases().values(), *clustered_bases().values()]:
        knobs = fair.knobs_for(base["algorithm"]["name"])
        assert all(k == "local.lr" or k.endswith("_lr") for k in knobs), knobs
    assert set(fair.KNOBS["pfedht"]) == {"local.lr", "algorithm.hn_lr", "algorithm.embed_lr"}
    assert set(fair.KNOBS["pfedhn"]) == set(fair.KNOBS["pfedht"])
    assert fair.KNOBS["genetic-cfl"] == {}  # it sets each client's lr itself


def test_an_algorithm_missing_from_the_table_is_refused_by_name():
    with pytest.raises(KeyError, match="no-such-algo"):
        fair.knobs_for("no-such-algo")


@pytest.mark.parametrize("trials", [2, 4, 5])
def test_every_method_gets_the_same_number_of_trials_on_seed_0(trials, tmp_path):
    for label, base in {**pfedht_bases(), **clustered_bases()}.items():
        if not fair.knobs_for(base["algorithm"]["name"]):
            continue
        spec = fair.sweep_spec("s", base, trials, "personal_accuracy", tmp_path)
        runs = (
            spec["num_samples"]
            if spec["mode"] == "optuna"
            else len(next(iter(spec["space"].values()))["grid"])
        )
        assert runs == trials, label
        assert spec["seeds"] == [0] and spec["base"]["seed"] == 0
        assert spec["base"]["rounds"]["eval_every"] == 1
        # nothing but eval_every and the seed differs from the evaluation config
        assert {**spec["base"], "seed": base["seed"], "rounds": base["rounds"]} == base
        assert spec["mode"] == ("grid" if len(spec["space"]) == 1 else "optuna")


def test_one_knob_grid_is_log_spaced_around_the_configured_lr_and_holds_it():
    base = pfedht_bases()[pfedht.FEDAVG]
    spec = fair.sweep_spec("s", base, 4, "personal_accuracy", Path("/tmp"))
    lr = base["local"]["lr"]
    assert spec["space"] == {"local.lr": {"grid": [lr / 4, lr / 2, lr, lr * 2]}}


def test_the_specs_pass_the_tuning_layers_own_loader(tmp_path):
    from tuning.spec import spec_from_dict

    bases = {**pfedht_bases(), **clustered_bases()}
    seen = set()
    for label, base in bases.items():
        algo = base["algorithm"]["name"]
        if not fair.knobs_for(algo) or (algo, base["model"]["name"]) in seen:
            continue
        seen.add((algo, base["model"]["name"]))
        raw = fair.sweep_spec(fair.spec_name(label, {"b": 1}), base, 4, "personal_accuracy", tmp_path)
        loaded = spec_from_dict(raw, label, tmp_path, probe=False)
        assert loaded.base["seed"] == 0
        assert set(loaded.spec.space) == set(fair.knobs_for(algo))


def test_a_knobless_method_is_refused_by_sweep_spec():
    base = clustered_bases()["Genetic CFL"]
    with pytest.raises(ValueError, match="no knob"):
        fair.sweep_spec("s", base, 4, "personal_accuracy", Path("/tmp"))


def test_sweep_names_change_with_the_sweep_and_tuned_values_change_run_keys():
    base = pfedht_bases()[pfedht.FEDAVG]
    a = fair.sweep_spec("s", base, 4, "personal_accuracy", Path("/tmp"))
    b = fair.sweep_spec("s", base, 5, "personal_accuracy", Path("/tmp"))
    assert fair.spec_name("fedavg", a) != fair.spec_name("fedavg", b)
    assert fair.spec_name("fedavg", a).startswith("fedavg-")
    c = fair.sweep_spec("s", base, 4, "personal_accuracy", Path("/tmp"), jobs=2)
    assert fair.spec_name("fedavg", c) == fair.spec_name("fedavg", a)  # --jobs is not the sweep
    tuned = fair.with_values(base, {"local.lr": 0.0125})
    assert tuned["local"]["lr"] == 0.0125 and run_key(tuned) != run_key(base)
    assert fair.with_values(base, {}) == base


def test_untuned_reproduction_configs_are_unchanged():
    sc = pfedht.SCALES["quick"]
    data = pfedht.data_section(sc, "pathological", sc.clients)
    m = pfedht.methods()[pfedht.FEDAVG]
    raws = fair.tuned_raws(None, "x", {"a": lambda s: pfedht.config(sc, s, m, data)}, [1, 2])
    assert raws == [pfedht.config(sc, s, m, data) for s in (1, 2)]


def test_current_value_reads_the_algorithms_defaults():
    base = pfedht_bases()[pfedht.PFEDHT]
    assert fair.current_value(base, "algorithm.hn_lr") == 0.01
    assert fair.current_value(base, "algorithm.embed_lr") == 1.0
    assert fair.current_value(base, "local.lr") == base["local"]["lr"]


@pytest.mark.slow
@pytest.mark.extended
def test_quick_tuned_reproduction_end_to_end(tmp_path):
    """`raysim reproduce clustered --quick --tune`: every method tuned on seed 0 with the sweeps
    layer, evaluated on seeds 1..2 at its chosen lr; a rerun reuses the finished sweeps."""
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from raysim.reproduce import reproduce_app

    out = tmp_path / "results"
    args = ["clustered", "--quick", "--only", "3", "--seeds", "2", "--jobs", "2"]
    args += ["--tune", "--tune-trials", "2", "--out", str(out)]
    res = CliRunner().invoke(reproduce_app, args)
    assert res.exit_code == 0, res.output
    name = clustered.EXPERIMENTS[3][0]
    tuned = json.loads((out / name / "tuned.json").read_text())
    assert tuned["tuning_seed"] == 0 and tuned["trials_per_method"] == 2
    ((setting, by),) = tuned["settings"].items()
    assert set(by) == set(clustered.methods(4))  # one entry per method
    assert by["Genetic CFL"]["knobs"] == [] and by["Genetic CFL"]["mode"] == "none"
    runs = {}
    for d in (out / "runs").iterdir():
        if (d / "config.yaml").is_file():
            import yaml

            cfg = yaml.safe_load((d / "config.yaml").read_text())
            runs[d.name] = cfg
    assert runs and all(c["seed"] in (1, 2) for c in runs.values())  # seed 0 never reported
    for method, c in by.items():
        if not c["knobs"]:
            continue
        assert len(c["trials"]) == 2
        (lr,) = c["chosen"].values()
        assert lr in [t["local.lr"] for t in c["trials"]]  # the choice is one of the trials
        assert c["objective"] == max(t["personal_accuracy"] for t in c["trials"])
        carried = [r for r in runs.values() if r["algorithm"]["name"] == c["algorithm"]]
        assert len(carried) == 2 and all(r["local"]["lr"] == lr for r in carried), method
        trials = pd.read_parquet(Path(c["sweep"]) / "trials.parquet")
        assert set(trials["config/seed"].dropna()) == {0}
    assert "Tuned learning rates (seed 0, 2 trials each)" in (out / name / "table.md").read_text()
    # the header names the runs' lrs as tuned, not the scale's untuned one alone
    sc_lr = clustered.SCALES["quick"].lr
    assert (
        f'each method\'s tuned lr ("Tuned learning rates" below; untuned: {sc_lr:g})'
        in (out / "README.md").read_text()
    )
    # the finished sweeps and runs are reused, at another --jobs too (not part of a sweep's identity)
    args[args.index("--jobs") + 1] = "1"
    again = CliRunner().invoke(reproduce_app, args)
    assert again.exit_code == 0, again.output
    assert "to do" not in again.output and "trials on seed 0" in again.output


def test_the_record_is_tuned_json_and_a_table_appended_to_table_md(tmp_path):
    import json
    import math

    tuner = fair.FairTuner(tmp_path, trials=2, experiment="3_x")
    tried = [{"local.lr": v, "personal_accuracy": 0.5} for v in (0.0125, 0.025, 0.05)]
    lr = fair.Choice("fedavg", ["local.lr"], {"local.lr": 0.05}, {"local.lr": 0.025}, 0.7, tried, "grid", "s")
    top = fair.Choice("fedavg", ["local.lr"], {"local.lr": 0.05}, {"local.lr": 0.05}, 0.7, tried, "grid", "s")
    assert fair.edge_note(top) == " (top of the grid)" and fair.edge_note(lr) == ""
    none = fair.Choice("genetic-cfl", [], {}, {}, math.nan, [], "none", "")
    tuner.records["3_x"] = {"setting A": {"FedAvg": lr, "Genetic CFL": none}}
    folder = tmp_path / "3_x"
    folder.mkdir()
    (folder / "table.md").write_text("### 3. x\n\n| a |\n|---|\n| 1 |\n")
    tuner.write(folder)
    body = json.loads((folder / "tuned.json").read_text())
    assert body["settings"]["setting A"]["FedAvg"]["chosen"] == {"local.lr": 0.025}
    assert body["settings"]["setting A"]["Genetic CFL"]["objective"] is None  # strict JSON, no NaN
    md = (folder / "table.md").read_text()
    assert md.startswith("### 3. x") and "#### Tuned learning rates (seed 0, 2 trials each)" in md
    assert "| setting A | FedAvg | grid | local.lr 0.025 | local.lr 0.05 | 70.00 |" in md
    assert "| setting A | Genetic CFL | none: sets its own lr | - | - | - |" in md


def test_with_tuning_leaves_the_experiments_alone_without_a_tuner():
    exps = {1: ("1_a", lambda ctx: "md")}
    assert fair.with_tuning(exps, None) == exps


def _written_record(tmp_path: Path, choices: dict[str, "fair.Choice"]) -> Path:
    """A tuned.json as a --tune run writes it, holding ``choices`` (method -> Choice)."""
    tuner = fair.FairTuner(tmp_path / "earlier", trials=4, experiment="1_x")
    tuner.records["1_x"] = {"setting A": choices}
    folder = tmp_path / "earlier" / "1_x"
    folder.mkdir(parents=True)
    tuner.write(folder)
    return folder / "tuned.json"


def test_a_recorded_choice_stands_in_for_its_own_sweep_only(tmp_path, monkeypatch):
    """--tuned: a choice from an earlier run's tuned.json is reused for the sweep that made it (same
    spec hash, whatever the --out), and a sweep it does not record still runs."""
    import json
    import math

    bases = pfedht_bases()
    fedavg, local = bases[pfedht.FEDAVG], bases[pfedht.LOCAL]
    name = fair.spec_name(
        "fedavg", fair.sweep_spec("x", fedavg, 4, "personal_accuracy", tmp_path / "elsewhere")
    )
    tried = [{"local.lr": v, "personal_accuracy": 0.5} for v in (0.0125, 0.025, 0.05, 0.1)]
    chosen = fair.Choice(
        "fedavg",
        ["local.lr"],
        {"local.lr": 0.05},
        {"local.lr": 0.025},
        0.61,
        tried,
        "grid",
        f"/gone/tune/{name}",
    )
    none = fair.Choice("genetic-cfl", [], {}, {}, math.nan, [], "none", "")
    record = _written_record(tmp_path, {"FedAvg": chosen, "Genetic CFL": none})

    ran: list[str] = []
    monkeypatch.setattr(fair.FairTuner, "_run", lambda self, raw, *a: ran.append(raw["name"]) or chosen)
    said: list[str] = []
    tuner = fair.tuner_for(tmp_path / "new", True, 4, 2, said.append, [record])
    assert tuner is not None and set(tuner.recorded) == {name}  # the knobless method records nothing
    tuner.experiment = "1_x"
    got = tuner.tune("setting A", "FedAvg", fedavg, "personal_accuracy")
    assert got is not None and got.chosen == {"local.lr": 0.025} and got.objective == 0.61
    assert ran == [] and "recorded for sweep" in said[-1] and "not run here" in said[-1]
    # saved at once, before any evaluation run: a reproduction stopped later keeps its choices
    saved = json.loads((tmp_path / "new" / "1_x" / "tuned.json").read_text())
    assert saved["settings"]["setting A"]["FedAvg"]["chosen"] == {"local.lr": 0.025}
    tuner.tune("setting A", "Local", local, "personal_accuracy")  # not in the record: it runs
    assert len(ran) == 1 and ran[0].startswith("local-")
    other = fair.sweep_spec("x", fedavg, 5, "personal_accuracy", tmp_path)  # another budget: another sweep
    assert fair.spec_name("fedavg", other) not in tuner.recorded


def test_a_bad_tuned_file_exits_2_naming_it_before_anything_is_written(tmp_path):
    from typer.testing import CliRunner

    from raysim.reproduce import reproduce_app

    (tmp_path / "not.json").write_text("{ nope")
    (tmp_path / "other.json").write_text('{"rounds": 3}')
    (tmp_path / "short.json").write_text('{"settings": {"s": {"FedAvg": {"algorithm": "fedavg"}}}}')
    out = tmp_path / "results"
    cases = {
        "missing.json": "no such file",
        "not.json": "cannot be read as JSON",
        "other.json": "no 'settings' mapping",
        "short.json": "lacks knobs, start, chosen",
    }
    for file, why in cases.items():
        res = CliRunner().invoke(
            reproduce_app,
            ["clustered", "--quick", "--tune", "--tuned", str(tmp_path / file), "--out", str(out)],
        )
        assert res.exit_code == 2, res.output
        assert file in res.output and why in res.output
    res = CliRunner().invoke(reproduce_app, ["pfedht", "--quick", "--tuned", str(tmp_path / "other.json")])
    assert res.exit_code == 2 and "add --tune" in res.output
    assert not out.exists()  # refused before the results folder was made


def test_every_kept_tuned_file_loads_as_a_tuned_record_and_is_listed_in_its_readme():
    """docs/tuned/*.json are what `--tuned` reads in later sessions: each must pass the same loader
    (a malformed one would only fail hours into a reproduction otherwise) and be named, with the
    command that made it, in docs/tuned/README.md."""
    folder = Path(__file__).resolve().parents[1] / "docs" / "tuned"
    files = sorted(folder.glob("*.json"))
    assert files
    readme = (folder / "README.md").read_text()
    for f in files:
        assert fair.recorded_choices([f]), f"{f.name} records no choice"
        assert f"`{f.name}`" in readme, f"{f.name} is not listed in docs/tuned/README.md"
