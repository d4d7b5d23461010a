"""The slow tier for pFedHT: does it beat FedAvg's personalised accuracy on the pathological split?

The setting is experiment 1 of `raysim reproduce pfedht` at full scale (Fashion-MNIST, 50 clients with
2 classes each, 10 a round, vit-tiny for both methods), cut to 10 rounds, on the reported seeds 1-3,
compared with a paired t-test. About 15 s a run on an idle core.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from raysim.config import config_from_dict
from raysim.reproduce.pfedht import FEDAVG, PFEDHT, SCALES, config, data_section, methods
from tests.helpers import experiment

pytestmark = [pytest.mark.slow]


def final_personal_accuracy(method: str, seed: int, tmp_path) -> float:
    sc = replace(SCALES["full"], rounds=10)
    raw = config(sc, seed, methods()[method], data_section(sc, "pathological", sc.clients))
    raw["output"] = {"dir": str(tmp_path), "name": f"{method}-{seed}".replace("*", ""), "progress": False}
    exp = experiment(config_from_dict(raw, "slow pFedHT test"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            exp.run()
        finally:
            exp.close()
    rounds = pd.read_parquet(exp.run_dir / "rounds.parquet")
    return float(rounds["personal_accuracy"].dropna().iloc[-1])


def test_pfedht_beats_fedavg_personalised_on_the_pathological_split(tmp_path):
    seeds = (1, 2, 3)
    ours = np.array([final_personal_accuracy(PFEDHT, s, tmp_path) for s in seeds])
    fedavg = np.array([final_personal_accuracy(FEDAVG, s, tmp_path) for s in seeds])
    # paired over the same shards, cohorts and initial shared weights
    assert (ours > fedavg).all(), (ours, fedavg)
    assert stats.ttest_rel(ours, fedavg, alternative="greater").pvalue < 0.05, (ours, fedavg)
