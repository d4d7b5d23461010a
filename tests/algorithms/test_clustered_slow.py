"""The slow tier for clustered FL: does any method recover 4 rotation groups of Fashion-MNIST?

The setting is experiment 1 of `raysim reproduce clustered` at full scale (20 clients in 4 rotation
groups, Dirichlet(0.6) labels within groups, every client every round, mlp, 15 rounds), with the
method settings the reproduction uses (chosen on seed 0), on the reported seeds 1-3. About a minute a
run on an idle core.
"""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from raysim.config import config_from_dict
from raysim.reproduce.clustered import SCALES, config, methods, rotation_data
from tests.helpers import experiment

pytestmark = [pytest.mark.slow]


def final_clustering(method: str, tmp_path, seed: int = 1) -> pd.Series:
    sc = SCALES["full"]
    raw = config(sc, seed, methods(4)[method], rotation_data(sc.num_clients, 0.6, 4))
    raw["output"] = {"dir": str(tmp_path), "name": method, "progress": False}
    exp = experiment(config_from_dict(raw, "slow clustered test"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            exp.run()
        finally:
            exp.close()
    return pd.read_parquet(exp.run_dir / "rounds.parquet").iloc[-1]


def test_cfl_recovers_the_four_rotation_groups_on_most_seeds(tmp_path):
    """CFL (the best of CFL, IFCA and AS-CFL here) ends with the 4 rotation groups, ARI >= 0.9, on
    at least 2 of the reported seeds 1-3. Not on every seed: with fixed thresholds the second level
    of bipartition sometimes happens in only one of the two halves (seed 1: 3 clusters, ARI 0.68)."""
    aris = {s: float(final_clustering("CFL", tmp_path / str(s), seed=s)["cluster_ari"]) for s in (1, 2, 3)}
    assert sum(a >= 0.9 for a in aris.values()) >= 2, aris
