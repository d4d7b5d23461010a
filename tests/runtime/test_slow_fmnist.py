"""The slow tier: the shipped Fashion-MNIST experiments, run for real (minutes)."""

import pandas as pd
import pytest

from raysim.config import load_config
from raysim.runtime.experiment import Experiment

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_fedavg_fmnist_reaches_082_within_50_rounds(ray_cluster, tmp_path):
    cfg = load_config("configs/fedavg_fmnist.yaml", [f"output.dir={tmp_path}"])
    exp = Experiment(cfg, progress=False)
    try:
        summary = exp.run()
    finally:
        exp.close()
    rounds = pd.read_parquet(exp.run_dir / "rounds.parquet")
    assert len(rounds) == 50
    assert summary["best_test_accuracy"] >= 0.82
    assert rounds["test_accuracy"].dropna().iloc[-1] >= 0.82
    assert summary["dropouts"] == 0
