"""Metrics: classification quality, clustering quality, fairness (no Ray here)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# scikit-learn is imported inside the functions that use it: importing it costs every process that
# imports this module (each client actor among them) ~1.3 s and ~137 MB (measured by raysim bench).
# The server's per-round metrics (classification_metrics) do not use it at all: it would be
# imported by the server actor's first evaluation, ~110 MB USS (benchmarks/memory_per_process.py).


def _macro_prf(labels: np.ndarray, preds: np.ndarray) -> tuple[float, float, float]:
    """Macro precision, recall and F1 over the classes present in ``labels`` or ``preds``, a
    class's score 0 where it is undefined: scikit-learn's ``precision_recall_fscore_support(...,
    average="macro", zero_division=0)``, the same operations in the same order (the same bits;
    tests/test_metrics.py compares them)."""
    classes, codes = np.unique(np.concatenate([labels, preds]), return_inverse=True)
    k = len(classes)
    true_code, pred_code = codes[: len(labels)], codes[len(labels) :]
    true_sum = np.bincount(true_code, minlength=k)
    pred_sum = np.bincount(pred_code, minlength=k)
    tp_sum = np.bincount(true_code[true_code == pred_code], minlength=k)

    def divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        zero = den == 0
        out = np.asarray(num, dtype=np.float64) / np.where(zero, 1, den).astype(np.float64)
        out[zero] = 0.0
        return out

    precision = divide(tp_sum, pred_sum)
    recall = divide(tp_sum, true_sum)
    f1 = divide(
        2.0 * tp_sum.astype(np.float64), 1.0 * true_sum.astype(np.float64) + pred_sum.astype(np.float64)
    )
    return float(np.nanmean(precision)), float(np.nanmean(recall)), float(np.nanmean(f1))


def classification_metrics(labels: np.ndarray, preds: np.ndarray, loss: float) -> dict[str, float]:
    """accuracy, mean loss, macro precision/recall/F1 (classes absent from both count 0)."""
    labels = np.asarray(labels)
    preds = np.asarray(preds)
    if len(labels) == 0:
        return {"accuracy": float("nan"), "loss": float("nan"), "macro_f1": float("nan")}
    precision, recall, f1 = _macro_prf(labels, preds)
    return {
        "accuracy": float((labels == preds).mean()),
        "loss": float(loss),
        "macro_f1": f1,
        "macro_precision": precision,
        "macro_recall": recall,
    }


def clustering_agreement(truth: np.ndarray, found: np.ndarray) -> dict[str, float]:
    """NMI and ARI of discovered client groups against ground-truth groups."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

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


@dataclass(frozen=True, eq=False)
class Membership(Mapping[int, int]):
    """Client id -> cluster id, column-wise: two int64 arrays sorted by client id (a negative
    cluster: in none). A read-only ``Mapping`` (``membership[cid]``, ``dict(membership)``, ``==``
    a dict), with O(N) arrays and no per-client Python object; checkpointed as its two arrays."""

    client_id: np.ndarray  # int64, sorted, distinct
    cluster: np.ndarray  # int64, same length

    @classmethod
    def of(cls, members: Mapping[int, int]) -> Membership:
        """From any mapping (a dict of an older checkpoint, a test's literal memberships)."""
        if isinstance(members, Membership):
            return members
        ids = np.fromiter((int(c) for c in members), np.int64, len(members))
        order = np.argsort(ids, kind="stable")
        ks = np.fromiter((int(members[c]) for c in members), np.int64, len(members))
        return cls(client_id=ids[order], cluster=ks[order])

    def _pos(self, cid: int) -> int:
        i = int(np.searchsorted(self.client_id, cid))
        if i >= len(self.client_id) or self.client_id[i] != cid:
            raise KeyError(cid)
        return i

    def __getitem__(self, cid: int) -> int:
        return int(self.cluster[self._pos(cid)])

    def __iter__(self) -> Iterator[int]:
        return iter(self.client_id.tolist())

    def __len__(self) -> int:
        return len(self.client_id)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """The cluster of each of ``ids`` (int64; -1 for an id not in the membership)."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.full(len(ids), -1, dtype=np.int64)
        if len(self.client_id) and len(ids):
            pos = np.minimum(np.searchsorted(self.client_id, ids), len(self.client_id) - 1)
            hit = self.client_id[pos] == ids
            out[hit] = self.cluster[pos[hit]]
        return out


def _dense(x: np.ndarray) -> np.ndarray:
    """Non-negative int codes with the same equalities as ``x``: itself when its values are small
    non-negative ints (cluster ids: no sort), else their rank among the distinct values."""
    if len(x) and x.dtype.kind in "iu" and int(x.min()) >= 0 and int(x.max()) < 1 << 20:
        return x.astype(np.int64)
    return np.unique(x, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _counts(codes: np.ndarray) -> np.ndarray:
    """For each element, how many elements equal it."""
    d = _dense(codes)
    return np.bincount(d)[d]


def cluster_stability(prev: Mapping[int, int], cur: Mapping[int, int]) -> float:
    """How much the cluster memberships changed from one round to the next, in [0, 1].

    ``prev`` and ``cur`` map client id -> cluster id (a negative id: not in any cluster). Let S be
    the clients in a cluster in both rounds and, for i in S, C_t(i) = {j in S : c_t(j) = c_t(i)}
    the clients of S sharing i's cluster in round t (i included). The stability is the mean over
    i in S of the Jaccard similarity

        |C_t(i) & C_{t-1}(i)| / |C_t(i) | C_{t-1}(i)|.

    It only looks at who is grouped with whom, so relabelling the clusters changes nothing: 1
    exactly when S is partitioned the same way in both rounds; splitting one cluster of 4 into
    two of 2 gives 2/4 = 0.5. NaN when S is empty (e.g. no previous round).

    O(|S| log |S|) from the counts of each cluster and of each (previous, current) pair, in client
    id order: the same per-client ratios, and so the same mean to the last bit, as comparing every
    pair of clients (O(|S|^2) memory, 10 GB at 10^5 clients).
    """
    p, c = Membership.of(prev), Membership.of(cur)
    same_clients = len(p.client_id) == len(c.client_id) and np.array_equal(p.client_id, c.client_id)
    a = p.cluster if same_clients else p.lookup(c.client_id)  # every client both rounds (IFCA, CFL)
    keep = (c.cluster >= 0) & (a >= 0)
    if not keep.any():
        return float("nan")
    ia, ib = _dense(a[keep]), _dense(c.cluster[keep])
    inter = _counts(ia * (int(ib.max()) + 1) + ib)
    union = _counts(ia) + _counts(ib) - inter  # >= 1: i is in both of its own sets
    return float((inter / union).mean())


def cluster_tracking(
    cur: Mapping[int, int], prev: Mapping[int, int] | None, truth: np.ndarray | None
) -> dict[str, float]:
    """The runtime's uniform per-round columns of a clustered algorithm (see ``cluster_stability``).

    ``cur``/``prev``: client id -> cluster id this round and last round (None: no last round), a
    ``Membership`` or any mapping; negative ids are unassigned clients and count nowhere.
    ``truth``: ground-truth group per client id (-1: none), or None when the federation has none.
    Returns ``num_clusters`` (distinct clusters with at least one client), ``cluster_stability``
    and, with a truth, ``cluster_ari``/``cluster_nmi`` over the clients that have both (NaN with
    fewer than two) and ``cluster_clients``, how many clients that is (e.g. IFCA: the clients
    sampled so far). Column-wise: O(N) in arrays.
    """
    members = Membership.of(cur)
    found = members.cluster >= 0
    out = {
        "num_clusters": float(np.count_nonzero(np.bincount(_dense(members.cluster[found])))),
        "cluster_stability": float("nan") if prev is None else cluster_stability(prev, members),
    }
    if truth is not None:
        ids, ks = members.client_id[found], members.cluster[found]  # sorted by client id
        inside = ids < len(truth)
        ids, ks = ids[inside], ks[inside]
        truth_of = np.asarray(truth)[ids]
        agree = agreement_with_truth(truth_of, ks)
        out["cluster_ari"] = agree.get("ari", float("nan"))
        out["cluster_nmi"] = agree.get("nmi", float("nan"))
        out["cluster_clients"] = float((truth_of >= 0).sum())
    return out


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


def worst_fraction_mean(values: np.ndarray, fraction: float = 0.1) -> float:
    """Mean of the lowest ``ceil(fraction * n)`` values (at least one): the "worst-10% client
    accuracy" of personalised FL with ``fraction`` 0.1. Non-finite values are ignored; NaN when
    none is left."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    v = np.asarray(values, dtype=np.float64)
    v = np.sort(v[np.isfinite(v)])
    if len(v) == 0:
        return float("nan")
    k = max(1, int(np.ceil(fraction * len(v) - 1e-9)))
    return float(v[:k].mean())


def relative_test_accuracy(accuracy: float | np.ndarray, baseline: float | np.ndarray) -> np.ndarray:
    """RTA = Accuracy_model / Accuracy_baseline (paper 003, eq. 24; the baseline is Local-only
    training), elementwise, as a ratio (the paper's "x 100%" is a display choice: 1.12 = 112%)."""
    a = np.asarray(accuracy, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if (b <= 0).any() or not np.isfinite(b).all():
        raise ValueError(f"baseline accuracies must be finite and > 0, got {b.tolist()}")
    return a / b


def mean_relative_test_accuracy(accuracies: np.ndarray, baselines: np.ndarray) -> float:
    """MRTA: the mean of the RTAs of paired experiments (same setting and seed for the model and
    its Local baseline; paper 003 reports MRTA 1.12 on CIFAR-10 and 1.51 on CIFAR-100)."""
    a = np.asarray(accuracies, dtype=np.float64)
    b = np.asarray(baselines, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"need paired, non-empty accuracies and baselines, got shapes {a.shape} and {b.shape}"
        )
    return float(relative_test_accuracy(a, b).mean())


# short names of headline metrics on one line (the progress line, `raysim run`'s last words)
HEADLINE_LABELS = {
    "test_accuracy": "acc",
    "personal_accuracy": "pers acc",
    "personal_accuracy_mean": "pers acc mean",
    "personal_accuracy_worst10": "worst-10% acc",
    "cluster_ari": "ARI",
    "cluster_nmi": "NMI",
    "cluster_clients": "clients scored",
    "num_clusters": "clusters",
}
COUNTS = ("cluster_clients", "num_clusters")  # headline metrics that are whole numbers


def headline_values(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, float | None]:
    """Each headline metric's last finite value over the logged rounds ``rows`` (None: never
    logged, e.g. personalised accuracy with ``rounds.personal_eval`` off)."""
    out: dict[str, float | None] = {}
    for name in names:
        vals = [float(r[name]) for r in rows if name in r and np.isfinite(float(r[name]))]
        out[name] = vals[-1] if vals else None
    return out


def format_headline(values: Mapping[str, float | None], num_clients: int | None = None) -> str:
    """``values`` on one line, e.g. ``pers acc 0.8312 ARI 0.9120 NMI 0.9000 (over 80 of 200
    clients) clusters 4`` (metrics with no value are left out; ``num_clients``: the federation's)."""
    parts = []
    for name, v in values.items():
        if v is None or not np.isfinite(v):
            continue
        if name == "cluster_clients":  # whom ARI/NMI cover: said right after them
            of = f" of {num_clients}" if num_clients else ""
            parts.append(f"(over {int(v)}{of} clients)")
            continue
        shown = f"{int(v)}" if name in COUNTS else f"{v:.4f}"
        parts.append(f"{HEADLINE_LABELS.get(name, name)} {shown}")
    return " ".join(parts)
