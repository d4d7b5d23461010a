"""Personal accuracy with a local fine-tuning step, scored the same way for every method.

Methods personalise differently (a generated model, a kept head, a Moreau-envelope solution, the
global model itself), and a method whose personal model is the global one gains most from a few
local steps. So that every method is scored alike, a reproduction reports, beside each run's
``personal_accuracy``, the accuracy after one common fine-tuning step: every client starts from the
model the method scores it with (``personal_params``, with its ``personal_buffers`` and
``personal_adapter``), trains ``epochs`` epochs of plain SGD (no momentum, no weight decay) at the
run's ``local.lr`` and ``local.batch_size`` on its own training split, and is scored on its own test
split; the figure is example-weighted over clients, as ``personal_accuracy`` is.

It is computed after the run, from the run's checkpoint of its last round (the reproduction sets
``rounds.checkpoint_every`` to the horizon): the run is rebuilt in this process on the serial
backend and restored from it, so the run itself is untouched and every method goes through this one
code path. ``epochs`` 0 scores the restored models without fine-tuning, which must give the run's
own last ``personal_accuracy`` (the test checks it). The result is cached in the run's directory
(``finetuned_e<epochs>.json``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from raysim.algorithms.base import plain_sgd
from raysim.atomic import atomic_write_bytes
from raysim.runtime import rundir


def finetuned_personal_accuracy(run_dir: Path, epochs: int = 1) -> float:
    """The example-weighted personal accuracy of the run in ``run_dir`` after ``epochs`` local
    epochs of plain SGD from each client's personalised model (0: none). Needs the run's
    checkpoint of its last round (RuntimeError naming the run when there is none)."""
    run_dir = Path(run_dir)
    cache = run_dir / f"finetuned_e{epochs}.json"
    if cache.is_file():
        return float(json.loads(cache.read_text())["personal_accuracy"])
    acc = _score(run_dir, epochs)
    atomic_write_bytes(cache, json.dumps({"epochs": epochs, "personal_accuracy": acc}).encode())
    return acc


def _score(run_dir: Path, epochs: int) -> float:
    from raysim.api import load_config
    from raysim.runtime.experiment import Experiment
    from raysim.runtime.serial import SerialBackend

    cfg = load_config(
        run_dir / "config.yaml",
        ["resources.backend=serial", "rounds.checkpoint_every=0", "output.progress=false"],
    )
    ckpts = rundir.periodic_checkpoints(run_dir)
    if not ckpts:
        raise RuntimeError(
            f"{run_dir}: no checkpoint to fine-tune from (the run needs rounds.checkpoint_every = its "
            "rounds, so that its last round is saved)"
        )
    with tempfile.TemporaryDirectory(prefix="raysim-finetune-") as tmp:
        exp = Experiment(cfg, progress=False, run_dir=Path(tmp) / "run")
        try:
            exp.prepare()
            done = exp.restore(ckpts[-1])
            if done != cfg.rounds.num_rounds:
                raise RuntimeError(
                    f"{run_dir}: the newest checkpoint is of round {done}, not the last ({cfg.rounds.num_rounds})"
                )
            backend = exp.backend
            assert isinstance(backend, SerialBackend) and backend.server is not None
            broadcast = backend.server.eval_broadcast()
            hp = plain_sgd(lr=cfg.local.lr, epochs=max(epochs, 1), batch_size=cfg.local.batch_size)
            correct = total = 0
            for host in backend.hosts:
                for cid in host.home:
                    c = host.client(cid)
                    assert c is not None  # one of this host's own
                    if len(c.test_idx) == 0:
                        continue
                    ev = host.score_one(cid, broadcast, hp if epochs > 0 else None)
                    correct += int(ev.correct)
                    total += int(ev.n)
        finally:
            exp.close()
    return correct / total if total else float("nan")
