"""An algorithm whose client 0 takes 10 s, for the round-deadline test."""

import time

from raysim.algorithms.fedavg import FedAvg


class SleepsForClient0(FedAvg):
    name = "sleep-test"

    def client_update(self, task, params, client):
        if task.client_id == 0:
            time.sleep(10)
        return super().client_update(task, params, client)
