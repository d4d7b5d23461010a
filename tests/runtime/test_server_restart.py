"""A lost server actor is replaced from the newest checkpoint and the run ends as if nothing
happened (Ray backend; SCAFFOLD, so every client's control variate must come back too)."""

from __future__ import annotations

import pandas as pd
import pytest

from raysim.runtime.backend import ServerLost
from tests.conftest import tiny_config
from tests.helpers import experiment

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

TIMING = ("_s", "_mb")


def _learning(df: pd.DataFrame) -> pd.DataFrame:
    return df[[c for c in sorted(df.columns) if not c.endswith(TIMING)]]


def _cfg(tmp_path, name, every):
    return tiny_config(
        tmp_path,
        name=name,
        algorithm__name="scaffold",
        rounds__num_rounds=4,
        rounds__checkpoint_every=every,
        resources__backend="ray",
        resources__num_cpus=1.0,
        resources__num_actors=2,
    )


def test_server_killed_after_round_3_restarts_from_round_2_and_ends_identical(ray_cluster, tmp_path):
    ref = experiment(_cfg(tmp_path, "ref", 2))
    try:
        ref.run()
    finally:
        ref.close()

    exp = experiment(_cfg(tmp_path, "killed", 2))
    try:
        exp.prepare()
        for t in (1, 2, 3):
            exp.run_round(t)
        ray_cluster.kill(exp.backend.server)  # round 4 finds it dead
        with pytest.warns(RuntimeWarning, match=r"restarted it from the checkpoint of round 2"):
            summary = exp.run()
    finally:
        exp.close()
    assert summary["server_restarts"] == 1 and summary["rounds"] == 4
    a = pd.read_parquet(ref.run_dir / "rounds.parquet")
    b = pd.read_parquet(exp.run_dir / "rounds.parquet")
    assert list(b["round"]) == [1, 2, 3, 4]  # round 3 replayed once, not logged twice
    pd.testing.assert_frame_equal(_learning(a), _learning(b), check_exact=True)
    ca = pd.read_parquet(ref.run_dir / "clients.parquet")
    cb = pd.read_parquet(exp.run_dir / "clients.parquet")
    pd.testing.assert_frame_equal(_learning(ca), _learning(cb), check_exact=True)


def test_a_lost_server_without_checkpoints_is_an_error_that_says_how_to_avoid_it(ray_cluster, tmp_path):
    exp = experiment(_cfg(tmp_path, "nockpt", 0))
    try:
        exp.prepare()
        exp.run_round(1)
        ray_cluster.kill(exp.backend.server)
        with pytest.raises(ServerLost, match="set rounds.checkpoint_every"):
            exp.run_round(2)
    finally:
        exp.close()
