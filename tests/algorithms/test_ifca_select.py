"""IFCA's cluster choice: the per-client ``select`` (what a training client runs) and the batched
``personal_model_keys`` (personal evaluation) pick the same models, with and without
``select_examples``, whose fixed subset is ``subset_positions``."""

from __future__ import annotations

import numpy as np
import pytest

from raysim.algorithms.base import subset_positions
from raysim.algorithms.ifca import IFCA, IFCAParams, cluster_key, model_seed
from raysim.data import build_federation, load_dataset
from raysim.models.flat import init_params
from raysim.runtime.host import ClientHost, HostSpec, _Batch, _Context


def test_subset_positions_are_evenly_spaced_and_fixed():
    assert subset_positions(5, None).tolist() == [0, 1, 2, 3, 4]
    assert subset_positions(5, 10).tolist() == [0, 1, 2, 3, 4]
    assert subset_positions(10, 4).tolist() == [0, 2, 5, 7]
    assert subset_positions(np.array([3, 0, 10]), 4).tolist() == [0, 1, 2, 0, 2, 5, 7]
    assert subset_positions(np.array([3, 0, 10]), None).tolist() == [0, 1, 2, *range(10)]


def host_and_models(select_examples: int | None, seed: int, select_on: str = "train"):
    ds = load_dataset("digits")
    fed = build_federation(ds, scheme="rotation", num_clients=12, seed=seed, num_groups=4)
    spec = HostSpec(
        model="cnn-small",
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        mean=ds.mean,
        std=ds.std,
        seed=seed,
        noisy_clients=frozenset({1, 5}),  # their own random training labels, in both paths
    )
    algo = IFCA(IFCAParams(num_clusters=4, select_on=select_on, select_examples=select_examples))
    host = ClientHost(0, algo, ds, list(fed.clients), spec)
    models = [init_params("cnn-small", ds.input_shape, ds.num_classes, model_seed(seed, j)) for j in range(4)]
    return host, algo, {cluster_key(j): m for j, m in enumerate(models)}


@pytest.mark.parametrize(
    ("select_examples", "select_on"), [(None, "train"), (7, "train"), (None, "val"), (3, "val")]
)
def test_the_batched_choice_equals_each_clients_select(select_examples, select_on):
    picked: set[str] = set()
    for seed in range(3):
        host, algo, broadcast = host_and_models(select_examples, seed, select_on)
        rows = np.arange(len(host.own), dtype=np.int64)
        keys = algo.personal_model_keys(broadcast, _Batch(host, rows))
        batched = [keys.keys[w] for w in keys.which]
        one_by_one = [
            algo.select(broadcast, _Context(host, host.client(cid), 0, broadcast))
            for cid in host.client_ids()
        ]
        assert batched == one_by_one, seed
        picked.update(one_by_one)
    assert len(picked) > 1  # the models really compete


def test_select_examples_scores_the_fixed_subset_only():
    host, algo, broadcast = host_and_models(7, 0)
    cid = host.client_ids()[0]
    c = host.client(cid)
    assert c is not None and len(c.train_idx) > 7
    ctx = _Context(host, c, 0, broadcast)
    pos = subset_positions(len(c.train_idx), 7)
    for key, params in broadcast.items():
        got = ctx.evaluate(params, "train", limit=7)
        want = host.trainer.evaluate(
            params, host.x_train, c.y_train[pos], idx=c.train_idx[pos], rotation=c.rotation
        )
        assert (got.n, got.loss, got.correct) == (7, want.loss, want.correct), key
    full = ctx.evaluate(broadcast[cluster_key(0)], "train")
    assert full.n == len(c.train_idx)


def test_select_examples_is_off_by_default_and_validated():
    assert IFCAParams().select_examples is None
    with pytest.raises(ValueError, match="select_examples"):
        IFCAParams(select_examples=0)
