"""Metrics: classification quality, clustering quality, fairness (no Ray here)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    adjusted_rand_score,
    f1_score,
    normalized_mutual_info_score,
    precision_score,
    recall_score,
)


def classification_metrics(labels: np.ndarray, preds: np.ndarray, loss: float) -> dict[str, float]:
    """accuracy, mean loss, macro precision/recall/F1 (classes absent from both count 0)."""
    labels = np.asarray(labels)
    preds = np.asarray(preds)
    if len(labels) == 0:
        return {"accuracy": float("nan"), "loss": float("nan"), "macro_f1": float("nan")}
    return {
        "accuracy": float((labels == preds).mean()),
        "loss": float(loss),
        "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0)),
        "macro_precision": float(precision_score(labels, preds, average="macro", zero_division=0)),
        "macro_recall": float(recall_score(labels, preds, average="macro", zero_division=0)),
    }


def clustering_agreement(truth: np.ndarray, found: np.ndarray) -> dict[str, float]:
    """NMI and ARI of discovered client groups against ground-truth groups."""
    return {
        "nmi": float(normalized_mutual_info_score(truth, found)),
        "ari": float(adjusted_rand_score(truth, found)),
    }


def agreement_with_truth(truth: np.ndarray | None, found: np.ndarray) -> dict[str, float]:
    """``clustering_agreement`` over the clients that have both a ground-truth group (>= 0) and a
    discovered one (>= 0); empty when there is no truth or fewer than two such clients."""
    if truth is None:
        return {}
    truth, found = np.asarray(truth), np.asarray(found)
    ok = (truth >= 0) & (found >= 0)
    return clustering_agreement(truth[ok], found[ok]) if ok.sum() >= 2 else {}


def jain_index(x: np.ndarray) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 when all equal, 1/n when one takes all.
    All-zero input is perfectly equal: 1.0."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return float("nan")
    sq = float((x * x).sum())
    return 1.0 if sq == 0 else float(x.sum() ** 2 / (len(x) * sq))


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (0 for a single value)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), 0.0
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return float(v.mean()), half
