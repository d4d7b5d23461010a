"""An algorithm whose client 0 takes 10 s, for the round-deadline test."""

import time

from raysim.algorithms.fedavg import FedAvg


class SleepsForClient0(FedAvg):
    name = "sleep-test"

    def client_update(self, task, params, client):
        if task.client_id == 0:
            time.sleep(10)
        return super().client_update(task, params, client)


class HangsOnce(FedAvg):
    """Client 0 hangs inside its update (``hang_s``) the first time it trains after ``flag`` is
    created, and never reaches the runtime's cancellation check (it checks between clients)."""

    name = "hang-test"

    def __init__(self, flag: str, hang_s: float = 60.0, **kw):
        super().__init__(**kw)
        self.flag, self.hang_s = flag, hang_s

    def client_update(self, task, params, client):
        import os

        if task.client_id == 0 and os.path.exists(self.flag):
            os.unlink(self.flag)
            time.sleep(self.hang_s)
        return super().client_update(task, params, client)
