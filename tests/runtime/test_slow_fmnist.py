"""The slow tier: the shipped Fashion-MNIST experiments, run for real (minutes)."""

import pandas as pd
import pytest

from raysim.config import load_config
from tests.helpers import experiment

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# docs/results.md's FedAvg row (configs/fedavg_fmnist.yaml, seed 0): test accuracy at rounds 10, 15, 50.
# Measured by this test on a 2-core AVX-512 Xeon: 0.8149, 0.8244, 0.8727 (3 min 27 s).
README_FEDAVG = {10: 0.815, 15: 0.825, 50: 0.873}
# The run is seeded and, on one CPU, bit-identical from run to run (Ray equals serial for any
# packing), so on the machine that measured them the numbers come back exactly; the docs round them
# to 3 decimals (+-0.0005). On another CPU model other kernels round differently (losses ~1e-7
# relative), which moved the quick start's accuracy by 4e-4 (0.8315 -> 0.8311, issue 19): 0.005 is
# ten times that, and a tenth of what the old bound (>= 0.82) let a regression take away.
TOLERANCE = 0.005


def test_fedavg_fmnist_reaches_the_readme_accuracy_at_rounds_10_15_and_50(ray_cluster, tmp_path):
    cfg = load_config("configs/fedavg_fmnist.yaml", [f"output.dir={tmp_path}"])
    exp = experiment(cfg)
    try:
        summary = exp.run()
    finally:
        exp.close()
    rounds = pd.read_parquet(exp.run_dir / "rounds.parquet").set_index("round")
    assert len(rounds) == 50
    assert summary["dropouts"] == 0
    got = {r: float(rounds.loc[r, "test_accuracy"]) for r in README_FEDAVG}
    print(f"fedavg_fmnist test accuracy by round: {got}")
    for r, documented in README_FEDAVG.items():
        assert got[r] == pytest.approx(documented, abs=TOLERANCE), (r, got)
