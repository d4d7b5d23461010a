"""The convergence criterion of every reproduction (``harness.flattening``) on synthetic curves, the
horizon verdict, the early-rounds column and the flattening marks of the curves plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raysim.reproduce.harness import (
    Run,
    at_round,
    evaluated_round_at_most,
    flattening,
    horizon_verdict,
    method_flattening,
)
from raysim.reproduce.plots import curve_figure, plot_curves


def fake_run(rounds: list[int], acc: list[float], every: int = 1) -> Run:
    """A run whose rounds.parquet evaluated ``personal_accuracy`` at every ``every``-th round."""
    rows = [
        {"round": r, "personal_accuracy": a if r % every == 0 else np.nan}
        for r, a in zip(rounds, acc, strict=True)
    ]
    return Run(raw={}, rounds=pd.DataFrame(rows), summary={}, path=Path("."))


def test_a_saturating_curve_flattens_where_its_windows_stop_moving():
    x = np.arange(4, 52, 4)  # 12 evaluated rounds
    v = 0.9 * (1 - np.exp(-x / 6))  # rises, then saturates
    f = flattening(x, v, window=3, delta=0.005)
    assert f.round is not None and f.points == 12 and abs(f.last_change) < 0.005
    i = list(x).index(f.round)
    # the criterion holds from there on, and did not at the evaluated round before it
    before = v[i - 3 : i].mean() - v[i - 6 : i - 3].mean() if i >= 6 else np.inf
    assert abs(before) >= 0.005
    assert f.cell() == str(f.round)


def test_a_still_rising_curve_has_not_flattened_and_says_by_how_much():
    x = np.arange(1, 21)
    v = 0.02 * x  # +2 points a round
    f = flattening(x, v, window=3, delta=0.005)
    assert f.round is None
    assert f.last_change == pytest.approx(0.06)
    assert f.cell().startswith("not flat (last change +6.00 points")


def test_a_curve_that_was_flat_then_moved_again_has_not_flattened():
    v = np.r_[np.full(10, 0.5), np.linspace(0.5, 0.7, 6)]
    assert flattening(np.arange(1, 17), v, window=3, delta=0.005).round is None


def test_too_few_points_is_its_own_answer_not_a_claim():
    f = flattening([4, 8, 12], [0.5, 0.5, 0.5], window=3, delta=0.005)
    assert f.round is None and f.too_few
    assert f.cell() == "too few points (3 evaluated rounds < 2 × 3)"
    with pytest.raises(ValueError, match="window"):
        flattening([1, 2], [0.1, 0.2], window=0, delta=0.005)


def _by(curves: dict[str, list[float]], seeds: int = 2) -> dict[str, list[Run]]:
    rounds = list(range(1, len(next(iter(curves.values()))) + 1))
    return {m: [fake_run(rounds, v) for _ in range(seeds)] for m, v in curves.items()}


def test_the_verdict_names_the_leaders_and_says_plainly_when_they_have_not_flattened():
    flat = [0.8] * 12
    rising = list(np.linspace(0.3, 0.9, 12))
    by = _by({"A": flat, "B": [0.7] * 12, "C": [0.6] * 12, "D": [0.1] * 12})
    flats = method_flattening(by, "personal_accuracy", window=3)
    text = horizon_verdict(by, flats, "personal_accuracy")
    assert text.startswith("horizon 12 is adequate") and "D:" not in text
    by["R"] = _by({"R": rising})["R"]  # the new leader is still rising
    flats = method_flattening(by, "personal_accuracy", window=3)
    text = horizon_verdict(by, flats, "personal_accuracy")
    assert "is NOT adequate: R of the leaders had not flattened" in text
    assert "R: not flat (last change +" in text


def test_the_early_column_reads_the_last_evaluated_round_at_or_before_12():
    rounds = list(range(1, 49))
    acc = [r / 100 for r in rounds]
    runs = [fake_run(rounds, acc, every=4), fake_run(rounds, [a + 0.01 for a in acc], every=4)]
    assert evaluated_round_at_most(runs, "personal_accuracy", 12) == 12
    assert at_round(runs, "personal_accuracy", 12) == pytest.approx([0.12, 0.13])
    assert evaluated_round_at_most(runs, "personal_accuracy", 14) == 12  # 13, 14 not evaluated
    runs5 = [fake_run(rounds, acc, every=5)]
    assert evaluated_round_at_most(runs5, "personal_accuracy", 12) == 10
    assert evaluated_round_at_most(runs5, "personal_accuracy", 3) is None


def test_the_plot_marks_where_curves_flattened(tmp_path):
    by = _by({"A": [0.2, 0.5, 0.7, 0.8] + [0.8] * 8, "B": list(np.linspace(0.1, 0.6, 12))})
    flats = method_flattening(by, "personal_accuracy", window=3)
    assert flats["A"].round is not None and flats["B"].round is None
    plot_curves(tmp_path / "c.png", {"s": by}, "personal_accuracy", "acc", flats={"s": flats})
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_the_curves_legend_is_one_beside_the_panels_and_a_method_keeps_its_colour():
    """Ten methods' legend inside a panel covered the curves' ends (pfedht at 48 rounds): one
    figure legend right of the panels, naming every method once, with the same colour everywhere."""
    from raysim.reproduce.plots import pyplot

    flat = {"A": [0.2, 0.5, 0.7, 0.8] + [0.8] * 8, "B": list(np.linspace(0.1, 0.6, 12))}
    panels = {"one": _by(flat), "two": _by({"B": flat["B"], "C": flat["A"]})}
    flats = {"one": method_flattening(panels["one"], "personal_accuracy", window=3)}
    fig = curve_figure(panels, "personal_accuracy", "acc", flats)
    try:
        assert all(ax.get_legend() is None for ax in fig.axes)
        (legend,) = fig.legends
        assert [t.get_text() for t in legend.get_texts()] == ["A", "B", "C", "flattened by (criterion)"]
        assert legend.get_bbox_to_anchor().x0 >= fig.bbox.x1 - 1  # right of the figure's panels
        colours = {
            ax.get_title(): {ln.get_label(): ln.get_color() for ln in ax.get_lines()} for ax in fig.axes
        }
        assert colours["one"]["B"] == colours["two"]["B"] != colours["two"]["C"]
    finally:
        pyplot().close(fig)
    # no curve flattened: the legend says so instead of showing a marker drawn nowhere
    rising = {"two": method_flattening(_by({"B": flat["B"]}), "personal_accuracy", window=3)}
    fig = curve_figure({"two": _by({"B": flat["B"]})}, "personal_accuracy", "acc", rising)
    try:
        (legend,) = fig.legends
        assert [t.get_text() for t in legend.get_texts()] == ["B", "no curve flattened (criterion)"]
    finally:
        pyplot().close(fig)


def test_a_crowded_panel_gets_a_zoomed_one_below_fitted_to_its_leaders():
    """Ten curves within 0.9-1.0 (Table 1 at 96 rounds) could not be told apart: from ZOOM_FROM
    methods a panel gets a second one below, over the last half of the rounds, its y axis fitted
    to the top half of the methods by final value; fewer methods keep one row."""
    from raysim.reproduce.plots import ZOOM_FROM, pyplot

    rounds = 20
    finals = [0.97, 0.96, 0.955, 0.95, 0.70, 0.68]
    assert len(finals) >= ZOOM_FROM
    # each rises to its final value by round 5 and stays there, as trained curves do
    crowd = {f"M{i}": list(np.linspace(0.3, f, 5)) + [f] * (rounds - 5) for i, f in enumerate(finals)}
    fig = curve_figure({"pathological": _by(crowd)}, "personal_accuracy", "acc")
    try:
        full, zoomed = fig.axes[:2]
        assert full.get_title() == "pathological"
        assert zoomed.get_title() == "pathological: last half, the top 3 of 6 (zoomed)"
        lo, hi = zoomed.get_ylim()
        # the leaders' last half is inside, spread over most of the axis; the two at ~0.7 run below
        assert lo <= 0.955 and hi >= 0.97 and lo > 0.94 and hi < 0.99
        assert zoomed.get_xlim()[0] == pytest.approx(rounds / 2)
        assert len(zoomed.get_lines()) == len(finals)  # every method drawn, the low ones below the axis
    finally:
        pyplot().close(fig)
    few = curve_figure({"s": _by(dict(list(crowd.items())[: ZOOM_FROM - 1]))}, "personal_accuracy", "acc")
    try:
        assert len(few.axes) == 1
    finally:
        pyplot().close(few)


# ------------------------------------------------------------------ pfedht's Table 1 at the horizon


def test_pfedht_converge_scale_keeps_full_and_quick_and_is_picked_by_name(tmp_path):
    from typer.testing import CliRunner

    from raysim.reproduce import reproduce_app
    from raysim.reproduce.pfedht import SCALES, config, data_section, methods

    conv, full = SCALES["converge"], SCALES["full"]
    assert (conv.rounds, conv.eval_every, conv.dirichlet) == (48, 4, 0.5)
    assert (full.rounds, full.eval_every, full.dirichlet) == (12, 4, 0.2)  # full unchanged
    raw = config(conv, 1, methods()["FedAvg*"], data_section(conv, "dirichlet", conv.clients, conv.dirichlet))
    assert raw["rounds"]["num_rounds"] == 48 and raw["data"]["alpha"] == 0.5
    for args, msg in (
        (["--scale", "nope"], "no scale 'nope'; valid: quick, full, converge"),
        (["--quick", "--scale", "converge"], "clashes with --scale converge"),
    ):
        res = CliRunner().invoke(reproduce_app, ["pfedht", *args, "--out", str(tmp_path / "x")])
        flat = " ".join(res.output.replace("│", " ").split())  # rich boxes and wraps the message
        assert res.exit_code == 2 and msg in flat, res.output
    assert not (tmp_path / "x").exists()


def test_pfedht_table_1_reads_round_12_and_the_flattening_off_the_same_curves(tmp_path, monkeypatch):
    from dataclasses import replace

    from raysim.reproduce import pfedht as P

    sc = replace(P.SCALES["converge"], finetune_epochs=0)
    rounds = list(range(1, 49))

    def curve(name: str, seed: int) -> list[float]:
        # Local saturates early; the others rise linearly (never flat); a seed offset of 1 point
        base = [min(0.9, r / 20) for r in rounds] if name == P.LOCAL else [0.3 + r / 100 for r in rounds]
        return [b + 0.01 * seed for b in base]

    def setting(self, data, label, picked):
        out = {}
        for name in picked:
            runs = []
            for seed in self.seeds:
                df = pd.DataFrame({"round": rounds, "personal_accuracy": curve(name, seed)})
                df.loc[df["round"] % 4 != 0, "personal_accuracy"] = np.nan
                df["personal_accuracy_worst10"] = df["personal_accuracy"] - 0.1
                runs.append(Run(raw={}, rounds=df, summary={}, path=tmp_path))
            out[name] = runs
        return out

    monkeypatch.setattr(P.Ctx, "setting", setting)
    ctx = P.Ctx(scale=sc, seeds=[1, 2], out=tmp_path, runner=None)  # type: ignore[arg-type]
    md = P.exp1_methods(ctx)
    header = next(x for x in md.splitlines() if x.startswith("| setting"))
    assert header.endswith("| early: round 12 (%) | flattened by round |")
    row = next(x for x in md.splitlines() if x.startswith("| pathological, 50 clients | FedAvg*"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # round 12: 0.3 + 0.12 + 0.015 (the seeds' mean offset) = 43.5 %; final: 0.3 + 0.48 + 0.015
    assert cells[-2].startswith("43.50 ±") and cells[3].startswith("79.50 ±")
    assert cells[-1].startswith("not flat (last change +12.00 points")
    local = next(x for x in md.splitlines() if x.startswith("| pathological, 50 clients | Local"))
    # at 0.9 from round 20: the windows (32, 36, 40) vs (20, 24, 28) are the first both on the plateau
    assert local.strip("|").split("|")[-1].strip() == "40"
    assert "horizon 48 is NOT adequate: pFedHT, pFedHN of the leaders" in md
    assert "less than 0.5 points" in md
    assert (tmp_path / "1_methods" / "accuracy.png").is_file()


# ------------------------------------------------------- clustered: AS-CFL at the paper's budget


def test_clustered_converge_scale_is_the_papers_budget_for_every_method_and_full_is_unchanged():
    from raysim.reproduce.clustered import SCALES, config, methods, rotation_data

    sc = SCALES["converge"]
    data = rotation_data(sc.num_clients, sc.focus_alpha, sc.num_groups)
    raws = [config(sc, 1, a, data) for a in methods(sc.num_groups).values()]
    for r in raws:  # every method alike: cnn-small, 10 epochs, lr 0.1 x 0.99 a round, all 20 train
        assert r["model"] == {"name": "cnn-small"}
        assert r["local"] == {"epochs": 10, "batch_size": 32, "lr": 0.1, "lr_decay": 0.99}
        assert r["rounds"]["clients_per_round"] == r["data"]["num_clients"] == 20
        assert r["rounds"]["num_rounds"] == sc.rounds
    assert sc.rounds == 100 and not sc.side_rows and sc.alphas == (0.6,)
    ascfl = next(r for r in raws if r["algorithm"]["name"] == "ascfl")["algorithm"]
    assert ascfl["lr_decay"] == 1.0 and ascfl["local_epochs_rule"] == "config"  # no double decay
    full = SCALES["full"]
    raw = config(full, 1, methods(4)["FedAvg"], rotation_data(20, 0.6, 4))
    assert "lr_decay" not in raw["local"]  # full's run keys (and cached runs) unchanged


def test_clustered_long_scale_is_full_run_longer_at_the_focus_alpha():
    from dataclasses import replace

    from raysim.reproduce.clustered import SCALES, config, methods, rotation_data

    full, long = SCALES["full"], SCALES["long"]
    assert long == replace(full, name="long", rounds=60, alphas=(full.focus_alpha,), side_rows=False)
    data = rotation_data(long.num_clients, long.focus_alpha, long.num_groups)
    for a in methods(long.num_groups).values():  # the same run as full's but for its horizon
        mine, theirs = config(long, 1, a, data), config(full, 1, a, data)
        assert mine["rounds"].pop("num_rounds") == 60
        theirs["rounds"].pop("num_rounds")
        assert mine == theirs


def test_clustered_rounds_option_is_range_checked(tmp_path):
    from typer.testing import CliRunner

    from raysim.reproduce import reproduce_app

    res = CliRunner().invoke(reproduce_app, ["clustered", "--rounds", "0", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--rounds" in res.output
    assert not (tmp_path / "x").exists()


def test_an_accuracy_or_ari_band_stays_within_its_range():
    """Three seeds' t-interval can reach below 0 (experiment 6's round 1: 28, 14 and 45 %) or above
    an ARI of 1 (clustered experiment 1's ari.png reached 1.35); the band is drawn up to the
    metric's bounds, a loss's band is not clipped."""
    from raysim.reproduce.plots import pyplot

    rounds = [1, 2, 3]
    runs = [fake_run(rounds, v) for v in ([0.02, 0.9, 0.99], [0.6, 0.95, 0.999], [0.3, 0.5, 0.98])]
    for r in runs:
        r.rounds["loss"] = r.rounds["personal_accuracy"]
        r.rounds["cluster_ari"] = r.rounds["personal_accuracy"]
    for col, clipped in (("personal_accuracy", True), ("cluster_ari", True), ("loss", False)):
        fig = curve_figure({"s": {"A": runs}}, col, col)
        try:
            (band,) = fig.axes[0].collections
            y = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
            assert bool(y.max() <= 1.0) is clipped, (col, y.min(), y.max())
            assert y.min() >= -1.0
        finally:
            pyplot().close(fig)
