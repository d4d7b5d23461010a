"""FedAvg variants that report what the processes they run in look like (picklable by value for
Ray actors: ``cloudpickle.register_pickle_by_value`` this module first)."""

from __future__ import annotations

import os
from dataclasses import replace

import torch

from raysim.algorithms.fedavg import FedAvg


class ReportsTorchThreads(FedAvg):
    """Each client reports ``torch.get_num_threads()`` of the process that trained it and whether
    that process runs with raysim's allocator settings; the server reports its own from ``aggregate``."""

    name = "reports-torch-threads"

    def client_update(self, task, params, client):
        r = super().client_update(task, params, client)
        env = float(os.environ.get("MALLOC_MMAP_THRESHOLD_") == str(32 * 2**20))
        return replace(
            r, metrics={**r.metrics, "torch_threads": float(torch.get_num_threads()), "malloc_env": env}
        )

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
            "client_malloc_env_min": min(r.metrics["malloc_env"] for r in results if hasattr(r, "metrics")),
            "server_malloc_env": float(os.environ.get("MALLOC_TRIM_THRESHOLD_") == str(2**30)),
        }
