"""The slow tier for DSAC: the shipped Fashion-MNIST comparison, run for real (minutes)."""

import warnings

import pytest

from raysim.config import load_config
from raysim.runtime.experiment import Experiment

pytestmark = [pytest.mark.slow]


def final_accuracy(path: str, tmp_path) -> float:
    cfg = load_config(path, [f"output.dir={tmp_path}", "resources.backend=serial"])
    exp = Experiment(cfg, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            summary = exp.run()
        finally:
            exp.close()
    return float(summary["final_test_accuracy"])


def test_dsac_fmnist_beats_fedavg_on_the_pathological_split(tmp_path):
    dsac = final_accuracy("configs/dsac_fmnist.yaml", tmp_path)
    fedavg = final_accuracy("configs/fedavg_pathological_fmnist.yaml", tmp_path)
    assert dsac > fedavg
