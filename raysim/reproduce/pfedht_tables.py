"""The tables of `raysim reproduce pfedht` (raysim/reproduce/pfedht.py): the methods' labels, the
per-run metrics read off their rounds (personal accuracy, RTA, the server's hypernetwork cost, the
held-out clients' accuracy), the runs that end below Local's, and the per-method rows of Table 1."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from raysim.reproduce.harness import Run, ci, paired_p

PFEDHT = "pFedHT"
PFEDHN = "pFedHN"
PFEDHN_VIT = "pFedHN (vit-tiny)"
OURS_STAR = "pFedHT w/o HN (ours*)"
FEDAVG = "FedAvg*"
LOCAL = "Local"


def accs(runs: Sequence[Run], col: str = "personal_accuracy") -> list[float]:
    return [r.final(col) for r in runs]


def rta(runs: Sequence[Run], local: Sequence[Run]) -> list[float]:
    """Eq. 24 per seed: personal accuracy over Local's on the same setting and seed."""
    from raysim.metrics import relative_test_accuracy

    return [
        float(relative_test_accuracy(a, b)) if math.isfinite(a) and b > 0 else math.nan
        for a, b in zip(accs(runs), accs(local), strict=True)
    ]


def below_local(by: Mapping[str, Sequence[Run]], seeds: Sequence[int]) -> dict[str, list[str]]:
    """Each personalised method's runs that end below Local's on the same seed (Local is the floor a
    personalised method should clear; issue 22: "no run below Local's accuracy at the horizon"),
    as "seed s (a % vs b %)", by method. FedAvg* and FedProx* (one global model) are not counted."""
    if LOCAL not in by:
        return {}
    out: dict[str, list[str]] = {}
    floor = accs(by[LOCAL])
    for name, runs in by.items():
        if name in (LOCAL, FEDAVG, "FedProx*"):
            continue
        low = [
            f"seed {s} ({100 * a:.2f} % vs {100 * b:.2f} %)"
            for s, a, b in zip(seeds, accs(runs), floor, strict=True)
            if not a >= b  # a NaN run counts as below
        ]
        if low:
            out[name] = low
    return out


def below_local_note(by: Mapping[str, Sequence[Run]], seeds: Sequence[int]) -> str:
    """The verdict's sentence on runs below Local (``below_local``); empty without a Local row."""
    if LOCAL not in by:
        return ""
    low = below_local(by, seeds)
    if not low:
        return " No personalised method's run ends below Local's on the same seed."
    return (
        " Runs that end below Local's on the same seed: "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in low.items())
        + "."
    )


def hn_cost(runs: Sequence[Run]) -> tuple[str, str, str]:
    """pFedHT's server cost per round: hypernetwork seconds (generate + update), its state in MB,
    the server's peak RSS in MB."""
    secs = [r.mean("hn_generate_s") + r.mean("hn_update_s") for r in runs]
    state = [r.final("hn_state_mb") for r in runs]
    rss = [float(r.rounds["server_rss_mb"].max()) if "server_rss_mb" in r.rounds else math.nan for r in runs]
    return ci(secs, 3), ci(state, 2), ci(rss, 0)


METHOD_HEADER = [
    "setting",
    "method",
    "model",
    "personal acc (%)",
    "+ fine-tuning (%)",
    "p vs FedAvg*",
    "worst-10% clients (%)",
    "RTA vs Local",
    "p vs Local",
]


def tuned(runs: Sequence[Run], epochs: int) -> list[float]:
    """Each run's personal accuracy after ``epochs`` local epochs of plain SGD from every client's
    personalised model: the same step for every method (raysim/reproduce/personal_finetune.py)."""
    from raysim.reproduce.personal_finetune import finetuned_personal_accuracy

    return [finetuned_personal_accuracy(r.path, epochs) for r in runs]


def method_rows(
    setting: str,
    by: dict[str, list[Run]],
    models: dict[str, str],
    finetune_epochs: int,
    extra: dict[str, list[str]] | None = None,
) -> list[list[Any]]:
    """One row per method; ``extra``: cells appended to each method's row (e.g. ``horizon_cells``)."""
    rows = []
    base = accs(by[FEDAVG]) if FEDAVG in by else None
    floor = accs(by[LOCAL]) if LOCAL in by else None
    for name, runs in by.items():
        a = accs(runs)
        rows.append(
            [
                setting,
                name,
                models.get(name, "vit-tiny"),
                ci(a, 2, 100),
                ci(tuned(runs, finetune_epochs), 2, 100) if finetune_epochs > 0 else "-",
                "/" if name == FEDAVG else "-" if base is None else paired_p(a, base),
                ci(accs(runs, "personal_accuracy_worst10"), 2, 100),
                ci(rta(runs, by[LOCAL]), 3) if LOCAL in by else "-",
                "/" if name == LOCAL else "-" if floor is None else paired_p(a, floor),
                *(extra or {}).get(name, []),
            ]
        )
    return rows


def new_client_accuracy(run: Run, before: int) -> tuple[float, float, float]:
    """(held-out clients at the last evaluation before round ``before``, held-out clients at the
    end, training clients at the end): the mean personal accuracy over clients, from
    clients.parquet's evaluation rows. The held-out clients are those annotated ``new_client``."""
    rows = pd.read_parquet(run.path / "clients.parquet")
    if "new_client" not in rows:
        raise RuntimeError(
            f"{run.path}: clients.parquet has no new_client column (no held-out client trained)"
        )
    new_ids = set(rows.loc[rows["new_client"].fillna(0) > 0, "client_id"].astype(int))
    ev = rows.dropna(subset=["personal_accuracy"])
    new = ev["client_id"].astype(int).isin(new_ids)

    def acc(sel: pd.DataFrame) -> float:
        return float(sel["personal_accuracy"].mean()) if len(sel) else math.nan

    last = ev["round"].max()
    early = ev.loc[ev["round"] < before, "round"]
    at_before = acc(ev[new & (ev["round"] == early.max())]) if len(early) else math.nan
    return at_before, acc(ev[new & (ev["round"] == last)]), acc(ev[~new & (ev["round"] == last)])
