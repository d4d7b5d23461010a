"""In-process timings behind docs/scaling.md's "what grows with N" (no Ray needed):

    python -m raysim.bench.profile data  --clients 1000,10000,30000   # data path and packing, new vs replaced
    python -m raysim.bench.profile host  --clients 2000,4000,8000     # ClientHost with every client visiting
    python -m raysim.bench.profile rows                               # RunLogger memory per client row
    python -m raysim.bench.profile imports                            # what a client actor imports
    python -m raysim.bench.profile cohort --clients 10000,1000000     # the server's per-round bookkeeping

The implementations the scaling fixes replaced are kept here (``old_*``), for the A/B timings and
for the tests that check the new code gives exactly the same results (tests/test_bench.py).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import numpy as np

# ------------------------------------------------------------------ the replaced implementations


def old_top_up(counts: np.ndarray, weights: np.ndarray, min_size: int) -> np.ndarray:
    """raysim.data.partition._top_up before the heap: a scan of all K clients for every move."""
    counts = counts.copy()
    sizes = counts.sum(axis=1)
    for k in np.flatnonzero(sizes < min_size):
        for c in np.argsort(-weights[:, k], kind="stable"):
            while sizes[k] < min_size:
                spare = np.minimum(counts[:, c], sizes - min_size)
                spare[k] = 0
                j = int(np.argmax(spare))
                if spare[j] <= 0:
                    break
                move = min(int(spare[j]), int(min_size - sizes[k]))
                counts[j, c] -= move
                counts[k, c] += move
                sizes[j] -= move
                sizes[k] += move
            if sizes[k] >= min_size:
                break
    return counts


def old_pack(shards: list[Any], num_hosts: int) -> list[list[Any]]:
    """raysim.runtime.packing.pack_clients before the heap: a scan of all A actors per client."""
    num_hosts = max(1, min(num_hosts, len(shards)))
    cap = math.ceil(len(shards) / num_hosts)
    loads, counts = [0] * num_hosts, [0] * num_hosts
    hosts: list[list[Any]] = [[] for _ in range(num_hosts)]
    for s in sorted(shards, key=lambda s: (-len(s.train_idx), s.client_id)):
        h = min((i for i in range(num_hosts) if counts[i] < cap), key=lambda i: (loads[i], counts[i], i))
        hosts[h].append(s)
        loads[h] += len(s.train_idx)
        counts[h] += 1
    return [sorted(h, key=lambda s: s.client_id) for h in hosts]


def old_deal(
    y: np.ndarray, classes: np.ndarray, counts: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """raysim.data.partition._deal before vectorising: np.split per class, a list per client."""
    parts: list[list[np.ndarray]] = [[] for _ in range(counts.shape[0])]
    for c, label in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(y == label))
        for k, piece in enumerate(np.split(idx, np.cumsum(counts[:, c])[:-1])):
            if len(piece):
                parts[k].append(piece)
    return [np.concatenate(p) if p else np.empty(0, dtype=np.int64) for p in parts]


def old_sample_test(
    train_labels: np.ndarray, size: int, test_by_class: list[np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """raysim.data.federation._sample_test before the counts were computed for all clients at once."""
    from raysim.data.partition import apportion

    hist = np.bincount(train_labels, minlength=len(test_by_class)).astype(np.float64)
    hist[[len(t) == 0 for t in test_by_class]] = 0
    if hist.sum() == 0:
        hist = np.array([float(len(t) > 0) for t in test_by_class])
    want = apportion(size, hist)
    out = []
    for c, m in enumerate(want):
        if m > 0:
            cand = test_by_class[c]
            out.append(rng.choice(cand, size=int(m), replace=bool(m > len(cand))))
    return np.sort(np.concatenate(out)).astype(np.int64)


def old_federation(ds: Any, num_clients: int, seed: int, alpha: float = 0.5) -> list[tuple[np.ndarray, ...]]:
    """build_federation's Dirichlet path with the replaced pieces (train, val, test per client)."""
    from raysim.data import federation as F
    from raysim.data import partition as P

    saved, saved_top = P._deal, P._top_up
    P._deal, P._top_up = old_deal, old_top_up  # type: ignore[assignment]
    try:
        _, rng_part, rng_val, rng_test = (
            np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
        )
        y = ds.y_train
        local = P.dirichlet(y, num_clients, alpha, rng_part)
        tbc = [np.flatnonzero(ds.y_test == c) for c in range(ds.num_classes)]
        out: list[tuple[np.ndarray, ...]] = []
        for shard in local:
            tr, va = F._split_val(shard.astype(np.int64), 0.1, rng_val)
            size = max(10, int(round(len(ds.y_test) * len(tr) / len(y))))
            out.append((tr, va, old_sample_test(y[tr], size, tbc, rng_test)))
        return out
    finally:
        P._deal, P._top_up = saved, saved_top  # type: ignore[assignment]


# ------------------------------------------------------------------------------------ commands


def _timed(fn: Any, *args: Any, **kw: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def profile_data(clients: list[int]) -> None:
    from raysim.data import build_federation, load_dataset, summary_table
    from raysim.runtime.packing import pack_clients

    ds, t = _timed(load_dataset, "fashion-mnist")
    print(f"load_dataset(fashion-mnist): {t:.2f} s")
    for n in clients:
        fed, t_new = _timed(build_federation, ds, scheme="dirichlet", num_clients=n, seed=0, alpha=0.5)
        old, t_old = _timed(old_federation, ds, n, 0)
        same = all(
            np.array_equal(a, c.train_idx) and np.array_equal(b, c.val_idx) and np.array_equal(d, c.test_idx)
            for (a, b, d), c in zip(old, fed.clients, strict=True)
        )
        _, t_sum = _timed(summary_table, fed, ds)
        # the top-up of a Dirichlet(0.5) draw of N clients (the clients left below 2 examples)
        from raysim.data import partition as P

        rng = np.random.default_rng(0)
        classes, sizes = np.unique(ds.y_train, return_counts=True)
        w = np.stack([rng.dirichlet(np.full(n, 0.5)) for _ in classes])
        counts = P._class_counts(w, sizes)
        new_c, t_top = _timed(P._top_up, counts, w, 2)
        old_c, t_top_old = _timed(old_top_up, counts, w, 2)
        short = int((counts.sum(axis=1) < 2).sum())
        tracemalloc.start()
        kept = build_federation(ds, scheme="dirichlet", num_clients=n, seed=0, alpha=0.5)
        mem = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del kept
        line = f"N={n:,}: build_federation {t_new:.2f} s (replaced code {t_old:.2f} s, same shards: {same})"
        line += f", the federation holds {mem / 2**20:.1f} MB ({mem / n:.0f} bytes per client)"
        line += f"; _top_up of {short:,} short clients {t_top:.3f} s (replaced {t_top_old:.3f} s, same: "
        line += f"{bool(np.array_equal(new_c, old_c))})"
        line += f"; summary_table {t_sum:.2f} s"
        shards = list(fed.clients)
        for a in sorted({2, 50, n}):
            if a == n and n > 10_000:
                continue
            new, t_p = _timed(pack_clients, shards, a)
            ref, t_o = _timed(old_pack, shards, a)
            ok = [[s.client_id for s in h] for h in new] == [[s.client_id for s in h] for h in ref]
            line += f"; pack_clients A={a:,} {t_p:.3f} s (replaced {t_o:.3f} s, same: {ok})"
        print(line, flush=True)


def host_seconds(n: int, dataset: str = "fashion-mnist", actors: int = 2) -> tuple[float, float]:
    """Seconds to build one roaming actor's ClientHost (its N / A own clients, every other client
    visiting, as ``actors/backend.py`` starts them), and the bytes it holds per client."""
    from raysim.algorithms import build_algorithm
    from raysim.config import ExperimentConfig
    from raysim.data import ShardTable, build_federation, load_dataset
    from raysim.runtime.host import ClientHost, HostSpec
    from raysim.runtime.packing import pack_clients

    ds = load_dataset(dataset, seed=0)
    cfg = ExperimentConfig()
    algo = build_algorithm(cfg.algorithm.name, cfg.algorithm.params)
    spec = HostSpec(
        model="cnn-small",
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        mean=ds.mean,
        std=ds.std,
        seed=0,
    )
    fed = build_federation(ds, scheme="iid", num_clients=n, seed=0)
    home = pack_clients(list(fed.clients), actors)[0]
    visitors = ShardTable(list(fed.clients))  # built by the driver, zero-copy in every actor
    tracemalloc.start()
    _, t = _timed(ClientHost, 0, algo, ds, home, spec, visitors=visitors)
    mem = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return t, mem / n


def profile_host(clients: list[int]) -> None:
    for n in clients:
        t, per = host_seconds(n)
        print(
            f"N={n:,} (2 actors, every client visiting): ClientHost() {t:.2f} s, {per:.0f} bytes per federation client (its own N/2 built, the rest visiting)"
        )


def profile_cohort(clients: list[int]) -> None:
    """What a round costs the server per client: the pool's available clients, the server's removal
    of lost ones and sample_cohort. Today's path (``ClientIndex``, one vectorised mask, no sort) next
    to the one it replaced (sorting the owner map's N ids, a Python filter, sample_cohort sorting
    again), in the same run."""
    from raysim.algorithms.base import sample_cohort
    from raysim.runtime.pool import ClientIndex

    def old(owner: dict[int, int], lost: set[int], r: int) -> list[int]:
        available = [c for c in sorted(owner) if c not in lost]
        return sample_cohort(sorted(available), 100, np.random.default_rng(r))

    def new(index: ClientIndex, lost: set[int], r: int) -> list[int]:
        available = index.on_hosts_except({19})  # one dead host
        available = available[~np.isin(available, np.fromiter(lost, np.int64, len(lost)))]
        return sample_cohort(available, 100, np.random.default_rng(r))

    for n in clients:
        owner = {c: c % 20 for c in np.random.default_rng(0).permutation(n).tolist()}
        lost = set(range(0, n, 97))
        index = ClientIndex(owner)
        alive = {c: h for c, h in owner.items() if h != 19}
        times = {}
        t0 = time.perf_counter()
        want = [old(alive, lost, r) for r in range(5)]
        times["old"] = (time.perf_counter() - t0) / 5
        t0 = time.perf_counter()
        got = [new(index, lost, r) for r in range(5)]
        times["new"] = (time.perf_counter() - t0) / 5
        if got != want:
            raise AssertionError("the vectorised cohort differs from the sorted one")
        print(
            f"N={n:,}: the server's per-round client bookkeeping {times['new'] * 1000:.1f} ms "
            f"(sorting every id as before: {times['old'] * 1000:.1f} ms, {times['old'] / times['new']:.0f}x)"
        )


def profile_rows(n: int = 100_000, rounds: int = 10) -> None:
    """What RunLogger keeps per personal-evaluation row of clients.parquet (one per client of the
    federation and evaluated round): the server's column-wise ``PersonalEval`` today, next to the
    dict a row it replaced, in the same run; and a flush of ``rounds`` such rounds both ways (the
    same file, byte for byte)."""
    import tempfile
    from pathlib import Path

    import pandas as pd

    from raysim.runtime.logger import RunLogger, write_parquet
    from raysim.runtime.server import PersonalEval

    def block(t: int) -> PersonalEval:
        rng = np.random.default_rng(t)
        return PersonalEval(
            round=t,
            client_id=np.arange(n, dtype=np.int64),
            personal_accuracy=rng.random(n),
            personal_loss=rng.random(n),
        )

    tracemalloc.start()
    rows = block(3).rows()  # the dicts Server.evaluate handed over before
    old = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del rows
    tracemalloc.start()
    kept = block(3)
    new = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    print(
        f"bytes per personal-evaluation row kept by RunLogger ({n:,} rows): {new / n:.0f} column-wise "
        f"({new / 2**20:.1f} MB), {old / n:.0f} as one dict a row before ({old / 2**20:.0f} MB)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        logger = RunLogger(d)
        for t in range(1, rounds + 1):
            logger.log_round({"round": float(t)}, [], personal=block(t))
        t0 = time.perf_counter()
        logger.flush()
        t_new = time.perf_counter() - t0
        dicts = [r for b in logger.personal for r in b.rows()]
        t0 = time.perf_counter()
        write_parquet(pd.DataFrame(dicts), d / "dicts.parquet")
        t_old = time.perf_counter() - t0
        same = (d / "dicts.parquet").read_bytes() == (d / "clients.parquet").read_bytes()
    print(
        f"RunLogger.flush of {rounds} evaluated rounds x {n:,} clients: {t_new:.2f} s "
        f"(a DataFrame of one dict a row as before: {t_old:.2f} s; the same file: {same})"
    )


def profile_imports() -> None:
    code = (
        "import time, psutil; t = time.perf_counter(); import {m}; dt = time.perf_counter() - t; "
        "i = psutil.Process().memory_full_info(); "
        "print(f'import {m}: {{dt:.1f}} s, RSS {{i.rss / 2**20:.0f}} MB, USS {{i.uss / 2**20:.0f}} MB')"
    )
    for m in ("torch, ray", "torch, ray, sklearn.metrics", "torch, ray, actors.client, actors.server"):
        subprocess.run([sys.executable, "-c", code.format(m=m)], check=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m raysim.bench.profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["data", "host", "rows", "imports", "cohort"])
    ap.add_argument("--clients", default="1000,10000,30000")
    a = ap.parse_args(argv)
    ns = [int(x) for x in a.clients.split(",") if x]
    {"data": lambda: profile_data(ns), "host": lambda: profile_host(ns), "rows": profile_rows,
     "imports": profile_imports, "cohort": lambda: profile_cohort(ns)}[a.what]()  # fmt: skip


if __name__ == "__main__":
    main()
