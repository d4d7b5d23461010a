"""Personalised evaluation of one client actor at scale (issue 21): the batched path against one
forward pass per client, in one run on this machine.

Fashion-MNIST, cnn-small, the ``sampled`` partition (50 training examples a client, clients
overlap, any N fits), every client on ONE ClientHost in this process (one torch thread, as an
actor): what one of the quick start's two actors does for its half of a federation of 2N clients.

  * batched: ``ClientHost.evaluate`` for FedAvg (every client on the global model: one pass over
    the union of their test examples) and for IFCA with 4 cluster models (each model first scored
    on every client's training split to pick its cluster, then one pass per cluster model);
  * per-client: the same call with every client sent through the per-client path (one
    ``Trainer.evaluate`` a client, the path every client took before), timed on a seeded sample
    of ``--reference`` clients and scaled to N (it is linear in the clients);
  * check: on that sample both paths give the same correct counts and losses within 1e-5.

    python benchmarks/personal_eval.py [--clients 50000] [--reference 2000]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping

import numpy as np
import torch

from raysim.algorithms.base import ClientBatch, PersonalKeys
from raysim.algorithms.fedavg import FedAvg
from raysim.algorithms.ifca import IFCA, IFCAParams
from raysim.data import ShardTable, build_federation, load_dataset
from raysim.models.flat import init_params
from raysim.runtime.host import ClientHost, HostSpec


class PerClientFedAvg(FedAvg):
    """FedAvg with every client scored one by one (the reference)."""

    def personal_model_keys(self, broadcast: Mapping[str, np.ndarray], clients: ClientBatch) -> PersonalKeys:
        return PersonalKeys.per_client(len(clients.client_ids))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50_000, help="clients on the host (half a federation)")
    ap.add_argument("--reference", type=int, default=2_000, help="clients timed on the per-client path")
    args = ap.parse_args()
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")
    torch.set_num_threads(1)
    ds = load_dataset("fashion-mnist")
    t0 = time.perf_counter()
    fed = build_federation(ds, scheme="sampled", num_clients=args.clients, seed=0)
    table = ShardTable(list(fed.clients))
    print(f"set-up: {args.clients:,} clients partitioned in {time.perf_counter() - t0:.1f} s")
    spec = HostSpec(
        model="cnn-small", input_shape=ds.input_shape, num_classes=10, mean=ds.mean, std=ds.std, seed=0
    )
    params = init_params("cnn-small", ds.input_shape, ds.num_classes, 0).astype(np.float32)
    rng = np.random.default_rng(0)
    models = {f"cluster/{k}": params + rng.normal(0, 0.01, params.shape).astype(np.float32) for k in range(4)}

    def timed(algo: object, broadcast: Mapping[str, np.ndarray], ids: np.ndarray | None = None) -> tuple:
        host = ClientHost(0, algo, ds, table, spec)  # type: ignore[arg-type]
        t, c = time.perf_counter(), time.process_time()
        cols = host.evaluate(broadcast, ids)
        cpu[id(cols)] = time.process_time() - c  # this process's CPU seconds: what a loaded machine hides
        return time.perf_counter() - t, cols

    cpu: dict[int, float] = {}
    n = args.clients
    fed_s, fed_cols = timed(FedAvg(), {"global": params})
    ifca_s, ifca_cols = timed(IFCA(IFCAParams(num_clusters=4)), models)
    sample = np.sort(rng.choice(table.client_ids, size=min(args.reference, n), replace=False))
    ref_s, ref_cols = timed(PerClientFedAvg(), {"global": params}, sample)
    _, bat_cols = timed(FedAvg(), {"global": params}, sample)
    per_client_s = ref_s / len(ref_cols) * len(fed_cols)
    same = np.array_equal(ref_cols.correct, bat_cols.correct) and np.array_equal(ref_cols.n, bat_cols.n)
    close = bool(np.allclose(ref_cols.loss, bat_cols.loss, rtol=1e-5, atol=0))
    print(f"clients scored: {len(fed_cols):,} of {n:,} (the others have no test examples)")
    ref_cpu = cpu[id(ref_cols)] / len(ref_cols) * len(fed_cols)
    print("                              wall s    CPU s")
    print(f"fedavg batched:             {fed_s:8.2f} {cpu[id(fed_cols)]:8.2f}  ({fed_cols.shared:,} shared)")
    print(
        f"ifca (4 clusters) batched:  {ifca_s:8.2f} {cpu[id(ifca_cols)]:8.2f}  ({ifca_cols.shared:,} shared)"
    )
    print(
        f"fedavg per-client:          {per_client_s:8.2f} {ref_cpu:8.2f}  (timed on {len(ref_cols):,} "
        f"clients: {1e3 * ref_s / len(ref_cols):.2f} ms a client)"
    )
    print(
        f"ratio per-client / batched: {per_client_s / fed_s:8.1f}x wall, {ref_cpu / cpu[id(fed_cols)]:.1f}x CPU"
    )
    print(f"same correct counts on the sample: {same}; losses within 1e-5 relative: {close}")
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")


if __name__ == "__main__":
    main()
