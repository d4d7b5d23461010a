"""Ray equals serial to the last bit on Fashion-MNIST, not on digits only.

On digits (8x8 float images) the layout bug of 98c5597 changed no bit, so the digits checks
passed with it. Fashion-MNIST is the dataset that shows it: numpy's own uint8 array has a zero
stride on its size-1 channel axis (batches ran channels-last) while the same array out of Ray's
object store has ordinary strides (batches ran NCHW, rounding differently)."""

from __future__ import annotations

import pandas as pd
import pytest

from raysim.data.datasets import FASHION_MNIST_DEFAULT_DIR
from tests.conftest import tiny_config
from tests.helpers import experiment
from tests.runtime.exact import assert_same_learning

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(
        not FASHION_MNIST_DEFAULT_DIR.is_dir(),
        reason=f"Fashion-MNIST is not installed at {FASHION_MNIST_DEFAULT_DIR} (apt: dataset-fashion-mnist)",
    ),
]


def _rounds(cfg) -> pd.DataFrame:
    exp = experiment(cfg)
    try:
        exp.run()
    finally:
        exp.close()
    return pd.read_parquet(exp.run_dir / "rounds.parquet")


@pytest.mark.slow  # 51 s here (2 shared cores, load ~17): Ray actors, Fashion-MNIST, 10,000 test images
def test_fedavg_on_fashion_mnist_is_bit_identical_on_ray_and_serial(ray_cluster, tmp_path):
    """4 clients of 100 sampled images each, 2 rounds, two client actors on Ray. Without
    ``trainer.channels_last`` it fails: train_loss and the evaluations differ at ~1e-8."""
    over = {
        "data__dataset": "fashion-mnist",
        "data__partition": "sampled",
        "data__examples_per_client": 100,
        "data__num_clients": 4,
        "rounds__clients_per_round": 4,
        "rounds__num_rounds": 2,
        "rounds__eval_every": 2,  # the 10,000 test images once, after round 2: most of the time
    }
    serial = _rounds(tiny_config(tmp_path, **over))
    ray = _rounds(tiny_config(tmp_path, resources__backend="ray", resources__num_cpus=2.0, **over))
    assert len(serial) == 2 and serial["test_accuracy"].notna().iloc[-1]
    assert_same_learning(serial, ray, "fedavg on fashion-mnist: serial vs ray")
