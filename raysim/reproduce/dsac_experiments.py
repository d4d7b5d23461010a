"""The DSAC reproduction's seven experiments (``raysim reproduce dsac``; the scales, configs and the
command are in ``raysim.reproduce.dsac``). Each runs its configs over the seeds through the
context's runner and writes ``<out>/<experiment>/table.md`` with its plots.

One module of ~600 lines on purpose: each experiment is one function that reads top to bottom
(configs, runs, table, plots), and splitting them across files would only scatter the paper's
tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from raysim.reproduce.dsac import (
    BASELINES,
    DSAC_DEFAULT,
    KMEANS_ONLY,
    KMEANS_PRIOR,
    PAPER_T2,
    PAPER_T3,
    PAPER_T6,
    PRE,
    Ctx,
    base_note,
    dsac,
    methods,
    pretrained,
    start_of,
)
from raysim.reproduce.harness import Run, ci, finals, means, paired_diff, paired_p, table
from raysim.reproduce.plots import plot_bars, plot_curves, plot_points


def dropout_rate(run: Run) -> float:
    r = run.rounds
    if "dropped_by_floor" not in r:
        return math.nan
    return float(r["dropped_by_floor"].sum() / max(r["completed"].sum(), 1))


def exp1_decay(c: Ctx) -> str:
    d = c.folder("1_decay")
    stale = {g: dsac(decay=g, staleness="last_model") for g in c.scale.gammas}
    c.prefetch("1 decay", [(a, "pathological", {}) for a in [*stale.values(), DSAC_DEFAULT]])
    by = {g: c.over_seeds(a, "pathological", f"1 decay {g}") for g, a in stale.items()}
    sync = c.over_seeds(DSAC_DEFAULT, "pathological", "1 sync")
    ref_g = 0.0 if 0.0 in by else min(by)
    ref = finals(by[ref_g], "test_accuracy")
    rows, accs, drops, fair = [], [], [], []
    for g, runs in by.items():
        acc = finals(runs, "test_accuracy")
        drop = [dropout_rate(r) for r in runs]
        accs.append(acc)
        drops.append(drop)
        fair.append(finals(runs, "jain"))
        paper = PAPER_T2.get(round(g, 2))
        rows.append(
            [
                "last_model",
                g,
                ci(acc, 2, 100),
                "/" if g == ref_g else paired_diff(acc, ref, 2, 100),
                "/" if g == ref_g else paired_p(acc, ref),
                ci(drop, 1, 100),
                ci(fair[-1], 3),
                ci(means(runs, "rounds_missed_mean"), 2),
                "-" if paper is None else f"{paper[0]} / {paper[2]} / {paper[3]}",
            ]
        )
    sacc = finals(sync, "test_accuracy")
    rows.append(
        [
            "sync",
            DSAC_DEFAULT["decay"],
            ci(sacc, 2, 100),
            paired_diff(sacc, ref, 2, 100),
            paired_p(sacc, ref),
            ci([dropout_rate(r) for r in sync], 1, 100),
            ci(finals(sync, "jain"), 3),
            "0 (fresh model)",
            "",
        ]
    )
    xs = list(c.scale.gammas)
    plot_points(d / "accuracy.png", {"DSAC, stale clients": (xs, accs)}, "decay γ", "test accuracy")
    plot_points(
        d / "dropout_fairness.png", {"dropout rate": (xs, drops), "Jain fairness": (xs, fair)}, "decay γ", ""
    )
    q = c.scale.cohort / c.scale.num_clients
    floor = DSAC_DEFAULT["weight_floor"]
    md = (
        "## 1. Decay coefficient γ (Table 2 analogue)\n\n"
        "DSAC on the pathological split in the **stale-client mode** (`staleness: last_model`): a selected "
        "client trains from the model it received at the end of its last round, so its update is Δt "
        "versions stale (Δt = rounds it missed) and eq. (14)'s factor exp(−γΔt) discounts real staleness; "
        "γ = 0 is the reference without decay (and without drops). The last row is the synchronous default "
        "(every client trains from the current model; there the decay is only a participation-recency "
        "weight). Δ: paired difference against γ = 0 (percentage points, 95% CI), p: paired t-test. "
        f"Dropout rate: share of delivered updates whose factor fell below `weight_floor` ({floor}); with "
        f"{c.scale.cohort} of {c.scale.num_clients} clients a round a client misses m or more rounds with "
        f"probability ≈ {1 - q:.1f}^m, so this column follows from the threshold ln(1/{floor})/γ by "
        "construction, not from learning. Fairness: Jain's index over the clients' cumulative share of "
        "aggregation weight after the last round. Staleness: mean Δt of the delivered updates.\n\n"
        + base_note({"g": by[ref_g]})
        + "\n\n"
        + table(
            [
                "mode",
                "γ",
                "accuracy (%)",
                "Δ vs γ = 0 (pp)",
                "p (paired)",
                "dropout rate (%)",
                "fairness (Jain)",
                "staleness (rounds)",
                "paper MNIST acc / dropout / fairness",
            ],
            rows,
        )
    )
    (d / "table.md").write_text(md + "\n\n![accuracy](accuracy.png) ![dropout](dropout_fairness.png)\n")
    return md


def exp2_noise(c: Ctx) -> str:
    d = c.folder("2_noise")
    fedavg = pretrained(BASELINES["FedAvg"])
    aggs = {
        "FedAvg" + PRE: fedavg,
        "K-means, eq. 6": KMEANS_ONLY,
        "K-means, variance prior (n0 = 1)": KMEANS_PRIOR,
    }
    c.prefetch(
        "2 noise",
        [(a, "real-world", {"data": {"label_noise": nz}}) for nz in c.scale.noise for a in aggs.values()],
    )
    rows = []
    series: dict[str, list[list[float]]] = {m: [] for m in aggs}
    everything: dict[str, list[Run]] = {}
    for nz in c.scale.noise:
        by = {
            m: c.over_seeds(a, "real-world", f"2 noise {nz} {m}", data={"label_noise": nz})
            for m, a in aggs.items()
        }
        everything.update({f"{m} {nz}": r for m, r in by.items()})
        ref = finals(by["FedAvg" + PRE], "test_accuracy")
        paper = PAPER_T3.get(round(nz, 1))
        for i, (m, runs) in enumerate(by.items()):
            acc = finals(runs, "test_accuracy")
            series[m].append(acc)
            km = m != "FedAvg" + PRE
            rows.append(
                [
                    f"{nz:.0%}" if i == 0 else "",
                    m,
                    ci(acc, 2, 100),
                    paired_diff(acc, ref, 2, 100) if km else "/",
                    paired_p(acc, ref) if km else "/",
                    ci(means(runs, "silhouette"), 3) if km else "n/a",
                    ci(means(runs, "intra_cluster"), 3) if km else "n/a",
                    ("-" if paper is None else f"{paper[0]} / {paper[1]} / {paper[2]} / {paper[3]}")
                    if i == 0
                    else "",
                ]
            )
    xs = [100 * n for n in c.scale.noise]
    plot_points(
        d / "accuracy.png", {m: (xs, v) for m, v in series.items()}, "noisy clients (%)", "test accuracy"
    )
    md = (
        "## 2. Noisy clients (Table 3 analogue)\n\n"
        "Real-world split; a share of clients has uniformly random training labels (`data.label_noise`); the "
        'test set is clean. Every method starts from the same pre-trained base model. "K-means" is FedAvg\'s '
        "round with DSAC's update aggregation only (eq. 3-6 over the whole cohort: K-means into 3 clusters, "
        "α_c ∝ |S_c|·exp(−β Var), β = 1; data-size client weights; decomposition, dynamic weights, grouping "
        "and the λ pull off), with eq. (6) as the paper writes it or with the variance prior for small "
        "clusters (`variance_prior: 1`: each cluster's variance shrunk toward the spread of all updates as "
        "if it had one more member, so a one-member cluster no longer gets the largest trust). Δ: paired "
        "difference against FedAvg from the same start (pp), p: paired t-test. Silhouette and intra-cluster "
        "distance (majority cluster) are averaged over rounds, on updates scaled to unit RMS norm.\n\n"
        + base_note(everything)
        + "\n\n"
        + table(
            [
                "noise",
                "aggregation",
                "accuracy (%)",
                "Δ vs FedAvg (pp)",
                "p (paired)",
                "silhouette",
                "intra-cluster dist.",
                "paper FedAvg / K-means acc, silhouette, intra",
            ],
            rows,
        )
    )
    (d / "table.md").write_text(md + "\n\n![accuracy](accuracy.png)\n")
    return md


def exp3_baselines(c: Ctx) -> str:
    d = c.folder("3_baselines")
    ms = methods(c.scale)
    splits = ("pathological", "real-world")
    c.prefetch("3 baselines", [(a, split, {}) for split in splits for a in ms.values()])
    panels_acc: dict[str, dict[str, list[Run]]] = {}
    rows, notes = [], []
    for split in splits:
        by = {m: c.over_seeds(a, split, f"3 {split} {m}") for m, a in ms.items()}
        panels_acc[split] = by
        notes.append(f"*{split}*: " + base_note(by))
        ref_acc, ref_loss = finals(by["DSAC"], "test_accuracy"), finals(by["DSAC"], "test_loss")
        for m, runs in by.items():
            acc, loss = finals(runs, "test_accuracy"), finals(runs, "test_loss")
            rows.append(
                [
                    split,
                    m,
                    start_of(runs),
                    ci(acc, 2, 100),
                    ci(loss, 3),
                    ci(finals(runs, "personal_accuracy"), 2, 100),
                    "/" if m == "DSAC" else paired_diff(ref_acc, acc, 2, 100),
                    "/" if m == "DSAC" else paired_p(ref_acc, acc),
                    "/" if m == "DSAC" else paired_p(ref_loss, loss),
                ]
            )
    plot_curves(d / "accuracy.png", panels_acc, "test_accuracy", "test accuracy")
    plot_curves(d / "loss.png", panels_acc, "test_loss", "test loss")
    md = (
        "## 3. DSAC vs FedAvg, FedProx, SCAFFOLD (Figures 6-7, Table 5 analogue)\n\n"
        "Final-round test accuracy and loss of the global model; personal: each client's model on its own "
        "test split, averaged over clients (DSAC: its group model after the ε-step of eq. 13; the "
        "baselines: the global model, no fine-tuning). Δ: DSAC minus the method, paired by seed "
        "(percentage points, 95% CI); p: paired t-tests of DSAC against the method. "
        "Curves: mean ± 95% CI over seeds.\n\n"
        + "\n\n".join(notes)
        + "\n\n"
        + table(
            [
                "split",
                "method",
                "start",
                "accuracy (%)",
                "loss",
                "personal acc. (%)",
                "Δ acc DSAC − method (pp)",
                "p (acc)",
                "p (loss)",
            ],
            rows,
        )
    )
    (d / "table.md").write_text(md + "\n\n![accuracy](accuracy.png)\n![loss](loss.png)\n")
    return md


def exp4_submodels_epochs(c: Ctx) -> str:
    from raysim.algorithms.dsac_math import SubModelPartition
    from raysim.data import load_dataset
    from raysim.models import ParamLayout, build_model

    d = c.folder("4_submodels_epochs")
    ds = load_dataset(c.scale.dataset, seed=0, num_clients=c.scale.num_clients)
    layout = ParamLayout.of(build_model(c.scale.model, tuple(ds.input_shape), ds.num_classes))
    blocks = len(layout.module_blocks())

    def algo_k(k: int) -> dict[str, Any]:
        # the same effective K is the same run: K > blocks is clamped (with a warning) to the blocks
        eff = min(k, blocks)
        return dsac(decomposition=False) if eff == 1 else dsac(num_submodels=eff)  # K=1: "no decomposition"

    specs: list[tuple[dict[str, Any], str, dict[str, Any]]]
    specs = [(algo_k(k), "pathological", {}) for k in c.scale.ks]
    specs += [(DSAC_DEFAULT, "pathological", {"local": {"epochs": e}}) for e in c.scale.epochs_list]
    c.prefetch("4 K/epochs", specs)
    ref = finals(c.over_seeds(algo_k(3), "pathological", "4 ref"), "test_accuracy")
    rows_k, ks, accs_k = [], [], []
    for k in c.scale.ks:
        eff = min(k, blocks)
        acc = finals(c.over_seeds(algo_k(k), "pathological", f"4 K={k}"), "test_accuracy")
        ks.append(k)
        accs_k.append(acc)
        sizes = SubModelPartition.from_layout(layout, eff).sizes
        rows_k.append(
            [
                k,
                eff,
                "/".join(str(s) for s in sizes),
                ci(acc, 2, 100),
                "/" if eff == min(3, blocks) else paired_diff(acc, ref, 2, 100),
                "/" if eff == min(3, blocks) else paired_p(acc, ref),
            ]
        )
    rows_e, es, accs_e = [], [], []
    ref_e = finals(
        c.over_seeds(DSAC_DEFAULT, "pathological", "4 epochs ref", local={"epochs": c.scale.epochs}),
        "test_accuracy",
    )
    for e in c.scale.epochs_list:
        acc = finals(
            c.over_seeds(DSAC_DEFAULT, "pathological", f"4 epochs={e}", local={"epochs": e}), "test_accuracy"
        )
        es.append(e)
        accs_e.append(acc)
        same = e == c.scale.epochs
        rows_e.append(
            [
                e,
                ci(acc, 2, 100),
                "/" if same else paired_diff(acc, ref_e, 2, 100),
                "/" if same else paired_p(acc, ref_e),
            ]
        )
    plot_points(d / "submodels.png", {"DSAC": (ks, accs_k)}, "sub-models K (requested)", "test accuracy")
    plot_points(d / "epochs.png", {"DSAC": (es, accs_e)}, "local epochs", "test accuracy")
    md = (
        "## 4. Number of sub-models and local epochs (Figure 8 analogue)\n\n"
        f"Pathological split. The model ({c.scale.model}) has {blocks} layer blocks, so K is clamped to "
        f"{blocks} (a sub-model is a run of whole layers, eq. 1); requested K above that repeat the K = "
        f"{blocks} runs. Each client trains min(2, K) sub-models a round (`submodels_per_client: 2`). "
        "Δ: paired difference against the default (K = 3, 1 local epoch), pp; p: paired t-test.\n\n"
        + base_note({"K": c.over_seeds(algo_k(3), "pathological", "4 ref")})
        + "\n\n"
        + table(
            [
                "K requested",
                "K used",
                "parameters per sub-model",
                "accuracy (%)",
                "Δ vs K = 3 (pp)",
                "p (paired)",
            ],
            rows_k,
        )
        + "\n\n"
        + table(
            ["local epochs", "accuracy (%)", f"Δ vs {c.scale.epochs} epoch(s) (pp)", "p (paired)"], rows_e
        )
    )
    (d / "table.md").write_text(md + "\n\n![K](submodels.png) ![epochs](epochs.png)\n")
    return md


def rounds_to(run: Run, target: float) -> float:
    r = run.rounds[["round", "test_accuracy"]].dropna()
    hit = r[r["test_accuracy"] >= target]
    return float(hit["round"].iloc[0]) if len(hit) else math.nan


def exp5_groups(c: Ctx) -> str:
    d = c.folder("5_groups")
    variants = {
        "DSAC (hierarchical)": DSAC_DEFAULT,
        "DSAC (flat k-means)": dsac(hierarchical_clustering=False),
        "FedAvg": BASELINES["FedAvg"],
        "FedAvg" + PRE: pretrained(BASELINES["FedAvg"]),
    }
    c.prefetch("5 groups", [(a, "rotation", {}) for a in variants.values()])
    by = {m: c.over_seeds(a, "rotation", f"5 {m}") for m, a in variants.items()}
    hier_nmi = finals(by["DSAC (hierarchical)"], "cluster_nmi")
    rows, names, nmis, rtt = [], [], [], []
    for m, runs in by.items():
        nmi = finals(runs, "cluster_nmi") if m.startswith("DSAC") else []
        reach = [rounds_to(r, c.scale.target) for r in runs]
        reached = [x for x in reach if math.isfinite(x)]
        names.append(m)
        nmis.append(nmi)
        rtt.append(reached)
        rows.append(
            [
                m,
                start_of(runs),
                ci(nmi, 3) if nmi else "n/a (no grouping)",
                "/" if m == "DSAC (hierarchical)" or not nmi else paired_p(hier_nmi, nmi),
                f"{ci(reached, 1) if reached else '-'} ({len(reached)}/{len(runs)} reached)",
                ci(finals(runs, "test_accuracy"), 2, 100),
                ci(finals(runs, "personal_accuracy"), 2, 100),
            ]
        )
    plot_bars(d / "nmi.png", names[:2], nmis[:2], "NMI vs ground-truth rotation groups")
    plot_bars(
        d / "rounds_to_target.png",
        names,
        [v if v else [math.nan] for v in rtt],
        f"rounds to {c.scale.target:.0%}",
    )
    md = (
        "## 5. Client grouping and rounds to a target (Figure 9 analogue)\n\n"
        "Feature-skew split: 4 ground-truth groups rotated by 0/90/180/270° (Dirichlet(0.5) labels within "
        "groups). NMI of DSAC's final client groups (eq. 11-12 on D_u = mean penultimate activation) against "
        "the rotation groups (p: paired t-test of hierarchical against flat); the baselines form no groups. "
        f"Rounds to reach {c.scale.target:.0%} test accuracy (evaluated every {c.scale.eval_every} rounds, "
        "so this is a multiple of that; mean over the seeds that reached it).\n\n"
        + base_note(by)
        + "\n\n"
        + table(
            [
                "method",
                "start",
                "NMI",
                "p (NMI vs hierarchical)",
                "rounds to target",
                "final accuracy (%)",
                "personal acc. (%)",
            ],
            rows,
        )
    )
    (d / "table.md").write_text(md + "\n\n![nmi](nmi.png) ![rounds](rounds_to_target.png)\n")
    return md


def _acts(row: str, full: list[Run], this: list[Run], c: Ctx) -> str:
    """Why an ablation row differs from the complete method by construction, with the evidence
    measured in these runs (or why it cannot)."""
    if row == "No decomposition":
        up_full, up = np.mean(means(full, "bytes_up")), np.mean(means(this, "bytes_up"))
        return f"yes: K = 1, every client trains and uploads the whole model ({up / 1e6:.2f} vs {up_full / 1e6:.2f} MB up a round)"
    if row == "No pre-training":
        return "yes: random start instead of M_base, no λ pull"
    if row == "Non-hierarchical clustering":
        g = np.mean(means(full, "num_groups"))
        return (
            f"yes when a round's updates span ≥ 2 groups (complete method: {g:.1f} groups on average): flat "
            "k-means groups and one combination over the cohort instead of within groups, then across"
        )
    if row == "No dynamic weights":
        dt = np.mean(means(full, "rounds_missed_mean"))
        drop = np.mean([dropout_rate(r) for r in full])
        return (
            f"yes when clients missed different numbers of rounds (complete method: mean Δt {dt:.1f}, "
            f"{100 * drop:.1f}% of updates dropped by the floor); synchronous mode, so a recency weight"
        )
    return ""


def exp6_ablation(c: Ctx) -> str:
    d = c.folder("6_ablation")
    variants = {
        "Complete method": DSAC_DEFAULT,
        "No decomposition": dsac(decomposition=False),
        "No pre-training": dsac(pretraining=False),
        "Non-hierarchical clustering": dsac(hierarchical_clustering=False),
        "No dynamic weights": dsac(dynamic_weights=False),
        "FedAvg": BASELINES["FedAvg"],
        "FedAvg" + PRE: pretrained(BASELINES["FedAvg"]),
    }
    c.prefetch("6 ablation", [(a, "pathological", {}) for a in variants.values()])
    by = {m: c.over_seeds(a, "pathological", f"6 {m}") for m, a in variants.items()}
    full = by["Complete method"]
    ref_full, ref_fed = finals(full, "test_macro_f1"), finals(by["FedAvg"], "test_macro_f1")
    rows = []
    for m, runs in by.items():
        p = PAPER_T6.get(m)
        f1 = finals(runs, "test_macro_f1")
        rows.append(
            [
                m,
                start_of(runs),
                ci(finals(runs, "test_macro_precision"), 3),
                ci(finals(runs, "test_macro_recall"), 3),
                ci(f1, 3),
                ci(finals(runs, "personal_accuracy"), 2, 100),
                "/" if m == "Complete method" else paired_diff(f1, ref_full, 3),
                "/" if m == "Complete method" else paired_p(f1, ref_full),
                "/" if m == "FedAvg" else paired_p(f1, ref_fed),
                _acts(m, full, runs, c),
                "-" if p is None else f"{p[0]} / {p[1]} / {p[2]}",
            ]
        )
    plot_bars(d / "f1.png", list(by), [finals(r, "test_macro_f1") for r in by.values()], "macro F1")
    md = (
        "## 6. Ablation (Table 6 analogue)\n\n"
        "Pathological split; macro precision / recall / F1 of the global model on the test set after the "
        "last round, and the personalised accuracy. ΔF1: the row minus the complete method, paired by seed "
        "(95% CI); p: paired t-tests of the F1 against the complete method and against FedAvg (the paper's "
        "column). *Acts?*: whether the switch changes the computation in this setting, by construction, "
        "with the evidence from these runs.\n\n"
        + base_note(by)
        + "\n\n"
        + table(
            [
                "configuration",
                "start",
                "precision",
                "recall",
                "macro F1",
                "personal acc. (%)",
                "ΔF1 vs complete",
                "p (vs complete)",
                "p (vs FedAvg)",
                "acts?",
                "paper MNIST P / R / F1",
            ],
            rows,
        )
    )
    (d / "table.md").write_text(md + "\n\n![f1](f1.png)\n")
    return md


def exp7_complexity(c: Ctx) -> str:
    from raysim.data import load_dataset
    from raysim.models import build_model
    from raysim.models.registry import count_flops, count_params

    d = c.folder("7_complexity")
    ds = load_dataset(c.scale.dataset, seed=0, num_clients=c.scale.num_clients)
    shape = tuple(ds.input_shape)
    net = build_model(c.scale.model, shape, ds.num_classes)
    n_params, flops = count_params(net), count_flops(net, shape)
    adapter = 2 * int(np.prod(shape))
    static = [
        ["FedAvg", n_params, flops, 0, f"{n_params} (global)"],
        ["FedProx", n_params, flops, 0, f"{n_params} (global)"],
        ["SCAFFOLD", n_params, flops, n_params, f"{2 * n_params} (global + control)"],
        [
            "DSAC",
            n_params,
            flops,
            f"0 ({adapter} with feature_mapping)",
            f"{n_params} × (2 + groups) (global, base, ≤ {DSAC_DEFAULT['max_groups']} group models; "
            "stale mode: + one per model version clients hold, ≤ min(N, rounds))",
        ],
    ]
    seeds = c.seeds[: c.scale.complexity_seeds] if c.scale.complexity_seeds else c.seeds
    ms = {"DSAC": DSAC_DEFAULT, **BASELINES}

    def kw(n: int) -> dict[str, Any]:
        return {
            "data": {"num_clients": n},
            "rounds": {
                "num_rounds": c.scale.complexity_rounds,
                "clients_per_round": max(1, n // 2),
                "eval_every": c.scale.complexity_rounds,
                "personal_eval": False,
            },
        }

    fresh = c.scale.name != "micro"
    jobs, c.runner.jobs = c.runner.jobs, 1  # timing runs one at a time, whatever --jobs says
    c.prefetch(
        "7 complexity",
        [(a, "real-world", kw(n)) for a in ms.values() for n in c.scale.client_counts],
        seeds,
        fresh,
    )
    rows: list[list[Any]] = []
    dsac_runs: list[list[Run]] = []
    rt: dict[str, list[list[float]]] = {}
    mem: dict[str, list[list[float]]] = {}
    for m, a in ms.items():
        rt[m], mem[m] = [], []
        for n in c.scale.client_counts:
            runs = c.runner.run(
                [c.cfg(s, a, "real-world", **kw(n)) for s in seeds], f"7 {m} N={n}", fresh_process=fresh
            )
            secs = [float(r.summary["loop_seconds"]) / max(int(r.summary["rounds"]), 1) for r in runs]
            peak = [r.training_peak_rss_mb() for r in runs]
            if m == "DSAC":
                dsac_runs.append(runs)
            rt[m].append(secs)
            mem[m].append(peak)
            rows.append([m, n, ci(secs, 2), ci(peak, 0)])
    c.runner.jobs = jobs
    xs = list(c.scale.client_counts)
    plot_points(d / "runtime.png", {m: (xs, v) for m, v in rt.items()}, "clients", "seconds per round")
    plot_points(d / "memory.png", {m: (xs, v) for m, v in mem.items()}, "clients", "peak RSS (MB)")
    md = (
        "## 7. Complexity, runtime and memory (Table 7, Figures 10-11 analogue)\n\n"
        f"Model {c.scale.model} on {c.scale.dataset}; FLOPs of one forward example by torch's FlopCounterMode. "
        "DSAC trains the same network as the baselines (its sub-models are slices of it), so parameter count "
        "and FLOPs are identical; what it adds is server-side state and, optionally, a per-client input map.\n\n"
        + table(
            ["method", "parameters", "FLOPs / example", "extra per-client state", "server-held parameters"],
            static,
        )
        + "\n\n"
        + base_note({"DSAC": dsac_runs[0] if dsac_runs else []})
        + " DSAC pre-trains during set-up, outside the per-round seconds below.\n\n"
        f"Runtime per round and peak RSS (serial backend: one process holds server and clients; each run in "
        f"a fresh process, except at the micro scale) with N clients, N/2 a round, {c.scale.complexity_rounds} "
        f"rounds, real-world split, {len(seeds)} seed(s) (timing only; the machine was shared, so treat "
        "differences under ~30% as noise).\n\n"
        + "Peak RSS is the peak the client host saw during the rounds; the process-wide peak (summary.json) is "
        "set by decompressing the dataset and is the same for every method.\n\n"
        + table(["method", "clients", "seconds / round", "peak RSS during rounds (MB)"], rows)
    )
    (d / "table.md").write_text(md + "\n\n![runtime](runtime.png) ![memory](memory.png)\n")
    return md


EXPERIMENTS: dict[int, tuple[str, Callable[[Ctx], str]]] = {
    1: ("1_decay", exp1_decay),
    2: ("2_noise", exp2_noise),
    3: ("3_baselines", exp3_baselines),
    4: ("4_submodels_epochs", exp4_submodels_epochs),
    5: ("5_groups", exp5_groups),
    6: ("6_ablation", exp6_ablation),
    7: ("7_complexity", exp7_complexity),
}
