"""FedAvg variants that report what the processes they run in look like (picklable by value for
Ray actors: ``cloudpickle.register_pickle_by_value`` this module first)."""

from __future__ import annotations

from dataclasses import replace

import torch

from raysim.algorithms.fedavg import FedAvg


class ReportsTorchThreads(FedAvg):
    """Each client reports ``torch.get_num_threads()`` of the process that trained it; the server
    reports its own from ``aggregate``."""

    name = "reports-torch-threads"

    def client_update(self, task, params, client):
        r = super().client_update(task, params, client)
        return replace(r, metrics={**r.metrics, "torch_threads": float(torch.get_num_threads())})

    def aggregate(self, state, results, server):
        state, m = super().aggregate(state, results, server)
        threads = [
            r.metrics["torch_threads"] for r in results if "torch_threads" in getattr(r, "metrics", {})
        ]
        return state, {
            **m,
            "client_torch_threads_min": min(threads),
            "client_torch_threads_max": max(threads),
            "server_torch_threads": float(torch.get_num_threads()),
        }
