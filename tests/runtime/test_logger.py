"""RunLogger: clients.parquet from cohort dicts and column-wise personal-evaluation blocks is
exactly the file one dict per row gave (issue 13), also after a resume."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from raysim.runtime.logger import RunLogger, write_parquet
from raysim.runtime.server import PersonalEval

N = 6  # clients of the federation


def cohort(t, ids, dropped=(), by_client=None):
    """Round ``t``'s cohort rows as Server._client_rows makes them, with the annotations
    ``by_client`` ({client: {column: value}})."""
    rows = []
    for c in ids:
        gone = c in dropped
        rows.append(
            {
                "round": t,
                "client_id": c,
                "participated": True,
                "dropped": gone,
                "reason": "non-finite update" if gone else "",
                "num_examples": 0 if gone else 10 + c,
                "train_loss": float("nan") if gone else 0.1 * c + t,
                "model_key": "global",
            }
        )
    for r in rows:
        r.update((by_client or {}).get(r["client_id"], {}))
    return rows


def personal(t, ids=range(N)):
    ids = np.asarray(list(ids), dtype=np.int64)
    rng = np.random.default_rng(t)
    return PersonalEval(
        round=t, client_id=ids, personal_accuracy=rng.random(len(ids)), personal_loss=rng.random(len(ids))
    )


# (cohort rows, personal block or None) per round: a first round without dropouts, dropouts later,
# a round without evaluation, one whose cohort is empty, annotations of every kind (int, sparse
# bool, str, None) and one (new_client) whose column first appears after the personal ones
ROUNDS = [
    (cohort(1, [0, 1, 2], by_client={c: {"cluster": c % 2} for c in range(N)}), personal(1)),
    (cohort(2, [3, 4, 5], dropped={5}, by_client={3: {"cluster": 1, "elite": True}}), None),
    ([], personal(3)),
    (
        cohort(4, [0, 5], dropped={0}, by_client={5: {"cluster_model_key": "cluster/1", "new_client": 1.0}}),
        personal(4, [0, 2, 5]),
    ),
    (cohort(5, [1, 2], by_client={1: {"cluster": 0}}), personal(5)),
]


def old_rows(rounds):
    """The rows as the server used to hand them over: one dict each."""
    out = []
    for rows, block in rounds:
        out += rows + (block.rows() if block is not None else [])
    return out


def log(logger, rounds, first=1):
    for t, (rows, block) in enumerate(rounds, start=first):
        logger.log_round({"round": float(t)}, rows, personal=block)


def written(logger):
    logger.flush()
    return (logger.run_dir / "clients.parquet").read_bytes()


def reference(tmp_path, rows):
    write_parquet(pd.DataFrame(rows), tmp_path / "reference.parquet")
    return (tmp_path / "reference.parquet").read_bytes()


def test_clients_parquet_is_the_file_of_one_dict_per_row(tmp_path):
    (tmp_path / "run").mkdir()
    logger = RunLogger(tmp_path / "run")
    log(logger, ROUNDS)
    assert written(logger) == reference(tmp_path, old_rows(ROUNDS))
    got = pd.read_parquet(logger.run_dir / "clients.parquet")
    want = pd.read_parquet(tmp_path / "reference.parquet")
    pd.testing.assert_frame_equal(got, want, check_dtype=True, check_exact=True)
    assert list(got.columns)[-1] == "new_client"  # first seen in round 4, after the personal columns
    assert len(got.query("not participated")) == 6 + 6 + 3 + 6


@pytest.mark.parametrize(
    "rounds",
    [
        [([], personal(1, []))],  # an empty evaluation adds no row and no column
        [(cohort(1, [0, 1]), personal(1, []))],
        [(cohort(1, [0, 1], dropped={1}), None)],
        [([], personal(1))],
        [(cohort(1, [0, 1], by_client={0: {"maybe": None}}), personal(1))],
    ],
    ids=["nothing", "empty evaluation", "no evaluation", "evaluation only", "a None annotation"],
)
def test_sparse_logs_give_the_file_of_one_dict_per_row(tmp_path, rounds):
    logger = RunLogger(tmp_path)
    log(logger, rounds)
    rows = old_rows(rounds)
    if not rows:
        logger.flush()
        assert not (tmp_path / "clients.parquet").exists()
        return
    assert written(logger) == reference(tmp_path, rows)


def test_dtypes_do_not_depend_on_which_rows_a_round_had(tmp_path):
    """Round 1 without dropouts and round 2 with them, or the other way round: the same dtypes."""
    dtypes = []
    for first, second in (({}, {2}), ({1}, {})):
        rounds = [
            (cohort(1, [0, 1], dropped=first), personal(1)),
            (cohort(2, [2, 3], dropped=second), personal(2)),
        ]
        d = tmp_path / f"run{len(dtypes)}"
        d.mkdir()
        logger = RunLogger(d)
        log(logger, rounds)
        logger.flush()
        dtypes.append(pd.read_parquet(d / "clients.parquet").dtypes.astype(str).to_dict())
    want = {"round": "int64", "client_id": "int64", "participated": "bool", "dropped": "bool"}
    want |= {"reason": "str", "num_examples": "int64", "train_loss": "float64", "model_key": "str"}
    want |= {"personal_accuracy": "float64", "personal_loss": "float64"}
    assert dtypes[0] == dtypes[1] == want


@pytest.mark.parametrize("upto", [0, 1, 2, 3, 4, 5])
def test_reload_continues_exactly_like_the_uninterrupted_log(tmp_path, upto):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    full.mkdir(), resumed.mkdir()
    logger = RunLogger(full)
    log(logger, ROUNDS)
    want = written(logger)
    crashed = RunLogger(resumed)
    log(crashed, ROUNDS[: min(upto + 1, len(ROUNDS))])  # one round past the checkpoint, then lost
    crashed.flush()
    again = RunLogger(resumed)
    again.reload(upto_round=upto)
    assert [b.round for b in again.personal] == [t for t in (1, 3, 4, 5) if t <= upto]
    log(again, ROUNDS[upto:], first=upto + 1)
    assert written(again) == want


def test_reload_keeps_the_personal_figures_column_wise(tmp_path):
    logger = RunLogger(tmp_path)
    log(logger, ROUNDS)
    logger.flush()
    again = RunLogger(tmp_path)
    again.reload(upto_round=4)
    assert [r["round"] for r in again.cohort] == [1, 1, 1, 2, 2, 2, 4, 4]
    block = again.personal[-1]
    assert block.round == 4 and block.client_id.tolist() == [0, 2, 5]
    np.testing.assert_array_equal(block.personal_accuracy, personal(4, [0, 2, 5]).personal_accuracy)
    np.testing.assert_array_equal(block.personal_loss, personal(4, [0, 2, 5]).personal_loss)


def test_a_personal_row_costs_its_three_numbers(tmp_path):
    """24 bytes a row (client id, accuracy, loss) where a dict a row cost 384 (issue 13)."""
    clients, rounds = 20_000, 10
    logger = RunLogger(tmp_path)
    tracemalloc.start()
    try:
        for t in range(1, rounds + 1):
            logger.log_round({"round": float(t)}, cohort(t, [0, 1]), personal=personal(t, range(clients)))
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held / (clients * rounds) < 32


def test_flush_writes_only_the_files_with_new_rows(tmp_path, monkeypatch):
    import raysim.runtime.logger as L

    logger = RunLogger(tmp_path)
    log(logger, ROUNDS[:2])
    logger.log_system(1, [{"actor": 0, "rss_mb": 1.0}])
    wrote = []
    real = L.write_parquet
    monkeypatch.setattr(L, "write_parquet", lambda df, path: (wrote.append(path.name), real(df, path)))
    logger.flush()
    assert sorted(wrote) == ["clients.parquet", "rounds.parquet", "system.parquet"]
    wrote.clear()
    logger.flush()  # e.g. the end of a run whose last round was a checkpoint
    assert wrote == []
    log(logger, ROUNDS[2:3], first=3)
    logger.flush()
    assert sorted(wrote) == ["clients.parquet", "rounds.parquet"]


def test_the_logger_keeps_its_own_copy_of_the_figures(tmp_path):
    """ray.get hands back read-only views of the object store: kept, they would pin every
    evaluated round's reply there for the rest of the run."""
    block = personal(1)
    for c in ("client_id", "personal_accuracy", "personal_loss"):
        getattr(block, c).setflags(write=False)
    logger = RunLogger(tmp_path)
    logger.log_round({"round": 1.0}, [], personal=block)
    kept = logger.personal[0]
    for c in ("client_id", "personal_accuracy", "personal_loss"):
        assert not np.shares_memory(getattr(kept, c), getattr(block, c)), c
        np.testing.assert_array_equal(getattr(kept, c), getattr(block, c))
