"""FedBN and what it needs from the runtime: module kinds in the layout, per-client BatchNorm
buffers (FlatModel/Trainer/host), BN layers never averaged nor uploaded, no leak of one client's
running statistics into another's on a shared host, a run on digits and save/restore."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from raysim.algorithms import ALGORITHMS, build_algorithm
from raysim.algorithms.base import GLOBAL
from raysim.algorithms.fedbn import FedBN, batchnorm_mask
from raysim.algorithms.personal import PERSONAL_RANGES
from raysim.models import FlatModel, ParamLayout, build_model, init_params
from raysim.runtime.host import ClientHost, HostSpec
from raysim.runtime.trainer import FitResult, Trainer
from tests.conftest import tiny_config
from tests.helpers import aggregate, client_hparams, configure, run, setup_ctx

SHAPE = (1, 8, 8)
BN_PARAMS = 2 * 16 + 2 * 32  # gamma and beta of BatchNorm2d(16) and BatchNorm2d(32)


def layout():
    return ParamLayout.of(build_model("cnn-bn", SHAPE, 10))


def ctx(lay, clients=3):
    return setup_ctx(lay, clients=clients, num_classes=10, num_rounds=3)


# -- runtime support -------------------------------------------------------------------------
def test_layout_records_module_kinds_and_masks_batchnorm():
    lay = layout()
    assert (
        lay.kinds
        == ("Conv2d",) * 2 + ("BatchNorm2d",) * 2 + ("Conv2d",) * 2 + ("BatchNorm2d",) * 2 + ("Linear",) * 2
    )
    mask = batchnorm_mask(lay)
    assert mask.sum() == BN_PARAMS
    assert mask[lay.slice(2)].all() and not mask[lay.slice(1)].any()  # "1.weight" is BN, "0.bias" conv
    hand = ParamLayout(names=("w",), shapes=((2,),), offsets=(0,), size=2)
    with pytest.raises(ValueError, match="no module kinds"):
        batchnorm_mask(hand)


def test_flat_model_reads_loads_and_resets_buffers():
    fm = FlatModel(build_model("cnn-bn", SHAPE, 10))
    names = {"1.running_mean", "1.running_var", "1.num_batches_tracked", "5.running_mean"}
    assert names <= set(fm.initial_buffers)
    other = {k: v + 3 for k, v in fm.initial_buffers.items()}
    fm.load_buffers(other)
    np.testing.assert_array_equal(fm.module[1].running_mean.numpy(), np.full(16, 3.0))
    assert int(fm.module[1].num_batches_tracked) == 3
    np.testing.assert_array_equal(fm.read_buffers()["5.running_var"], np.full(32, 4.0))
    fm.reset_buffers()
    np.testing.assert_array_equal(fm.module[1].running_var.numpy(), np.ones(16))
    with pytest.raises(ValueError, match="do not match"):
        fm.load_buffers({"1.running_mean": np.zeros(16)})
    with pytest.raises(ValueError, match="shape"):
        fm.load_buffers({**other, "1.running_mean": np.zeros(3)})


def test_trainer_trains_from_the_given_buffers_and_returns_them():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, size=(40, *SHAPE)).astype(np.uint8), rng.integers(0, 10, size=40)
    bright = (x // 4 + 190).astype(np.uint8)
    t = Trainer(model="cnn-bn", input_shape=SHAPE, num_classes=10)
    p0 = init_params("cnn-bn", SHAPE, 10, seed=0)
    kw = {"hparams": client_hparams(epochs=1, batch_size=8, lr=0.05), "seed": 1}
    a = t.fit(p0, x, y, buffers={}, **kw)
    assert a.buffers is not None and int(a.buffers["1.num_batches_tracked"]) == 5  # 40 / 8 steps
    t.fit(p0, bright, y, buffers={}, **kw)  # another client's statistics now sit in the module
    again = t.fit(p0, x, y, buffers={}, **kw)  # {}: from the initial buffers, not the leftovers
    for k in a.buffers:
        np.testing.assert_array_equal(again.buffers[k], a.buffers[k])
    assert t.fit(p0, x, y, **kw).buffers is None  # no buffers asked: none returned (and none reset)
    # evaluation with a client's buffers ignores what the module holds
    ev_a = t.evaluate(a.params, x, y, buffers=a.buffers)
    t.fit(p0, bright, y, buffers={}, **kw)
    np.testing.assert_array_equal(t.evaluate(a.params, x, y, buffers=a.buffers).preds, ev_a.preds)
    assert t.evaluate(a.params, x, y, buffers=a.buffers).loss == ev_a.loss


# -- the algorithm ---------------------------------------------------------------------------
class AddClient:
    """fit() adds ``step`` to every parameter and returns buffers marked with the client id."""

    def __init__(self, cid, broadcast, step, n=10):
        self.client_id, self.num_examples, self.state, self.broadcast = cid, n, {}, broadcast
        self.step, self.buffers_in = step, []

    def fit(self, params, *, grad_hook=None, buffers=None, **hp):
        self.buffers_in.append(buffers)
        return FitResult(
            params=(params + self.step).astype(np.float32),
            loss=1.0,
            steps=1,
            num_examples=self.num_examples,
            buffers={"m": np.array([float(self.client_id)])},
        )


def test_registered_and_refuses_a_model_without_batchnorm():
    assert ALGORITHMS["fedbn"] is FedBN
    algo = build_algorithm("fedbn")
    assert algo.traits.linear and algo.traits.client_state
    with pytest.raises(ValueError, match="cnn-bn"):
        algo.init(np.zeros(6090, np.float32), ctx(ParamLayout.of(build_model("cnn-small", SHAPE, 10))))
    with pytest.raises(ValueError, match="personal"):
        build_algorithm("fedbn", {"personal": "head"})  # FedPer's knob is not FedBN's


def test_bn_layers_stay_local_never_uploaded_never_averaged():
    lay = layout()
    bn = batchnorm_mask(lay)
    algo = build_algorithm("fedbn")
    p0 = init_params("cnn-bn", SHAPE, 10, seed=0)
    state = algo.init(p0, ctx(lay))
    bc = algo.eval_broadcast(state)
    tasks = configure(algo, state, 1, [0, 1])
    clients = [AddClient(0, bc, 1.0), AddClient(1, bc, 3.0, n=30)]
    results = [algo.client_update(t, bc[GLOBAL], c) for t, c in zip(tasks, clients, strict=True)]
    for r, c in zip(results, clients, strict=True):
        assert r.delta.size == lay.size - BN_PARAMS  # the BN parameters never leave
        np.testing.assert_allclose(r.delta, c.step)
        np.testing.assert_allclose(c.state["personal"], p0[bn] + c.step)
        assert c.buffers_in == [{}]  # a first-time client trains from the initial statistics
        np.testing.assert_array_equal(c.state["buffers"]["m"], [c.client_id])
    new, _ = aggregate(algo, state, 1, results)
    np.testing.assert_array_equal(new.params[bn], p0[bn])  # global BN entries: still the init
    np.testing.assert_allclose(new.params[~bn], p0[~bn] + 2.5, rtol=1e-6)  # (10 * 1 + 30 * 3) / 40
    assert algo.server_model(new) is None
    # round 2: a client starts from the new shared part, its own BN parameters and statistics
    bc2 = algo.eval_broadcast(new)
    clients[1].broadcast = bc2
    start = algo.personal_params(bc2, clients[1])
    np.testing.assert_allclose(start[bn], p0[bn] + 3.0)
    np.testing.assert_array_equal(start[~bn], new.params[~bn])
    algo.client_update(tasks[1], bc2[GLOBAL], clients[1])
    np.testing.assert_array_equal(clients[1].buffers_in[-1]["m"], [1.0])
    assert algo.personal_buffers(AddClient(2, bc2, 0.0)) == {}
    np.testing.assert_array_equal(bc2[PERSONAL_RANGES], state.ranges)


def two_client_host(algo):
    """One host with two clients whose images differ in brightness (different BN statistics)."""
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 60, size=(60, *SHAPE))
    bright = rng.integers(180, 255, size=(60, *SHAPE))
    x = np.concatenate([dark, bright]).astype(np.uint8)
    y = rng.integers(0, 10, size=120)
    data = SimpleNamespace(x_train=x, y_train=y, x_test=x, y_test=y)

    def shard(cid, lo):
        idx = np.arange(lo, lo + 60)
        return SimpleNamespace(
            client_id=cid,
            train_idx=idx[:40],
            val_idx=idx[40:50],
            test_idx=idx[50:],
            label_perm=None,
            rotation=0,
            group=-1,
        )

    spec = HostSpec(model="cnn-bn", input_shape=SHAPE, num_classes=10, mean=(), std=(), seed=0)
    return ClientHost(0, algo, data, [shard(0, 0), shard(1, 60)], spec)


def test_two_clients_on_one_host_keep_their_own_statistics():
    lay = layout()
    algo = build_algorithm("fedbn")
    state = algo.init(init_params("cnn-bn", SHAPE, 10, seed=0), ctx(lay, clients=2))
    bc = algo.eval_broadcast(state)
    host = two_client_host(algo)
    hp = {"lr": 0.05, "epochs": 1, "batch_size": 8}

    (task_a,) = configure(algo, state, 1, [0], hparams=hp)
    host.run(1, [task_a], bc)
    assert host.commit(1) == 1
    a_stats = {k: v.copy() for k, v in host.state[0]["buffers"].items()}
    a_eval = host.evaluate(bc).row(0)

    (task_b,) = configure(algo, state, 2, [1], hparams=hp)
    host.run(2, [task_b], bc)
    assert host.commit(2) == 1
    b_stats = host.state[1]["buffers"]
    for k, v in a_stats.items():  # B's training left A's statistics alone
        np.testing.assert_array_equal(host.state[0]["buffers"][k], v)
    # brighter inputs (raw 180..255 against 0..60): far larger first-layer activations
    assert np.abs(b_stats["1.running_mean"]).mean() > 2 * np.abs(a_stats["1.running_mean"]).mean()
    assert host.evaluate(bc).row(0) == a_eval  # A is scored with its own statistics, as before
    # the module now holds B's statistics: scoring A without its own would differ (the leak)
    np.testing.assert_array_equal(host.trainer.fm.read_buffers()["1.running_mean"], b_stats["1.running_mean"])
    a_params = algo.personal_params(bc, SimpleNamespace(state=host.state[0]))
    leaky = host.trainer.evaluate(a_params, host.x_test, host.client(0).y_test, idx=host.client(0).test_idx)
    assert leaky.loss != a_eval["loss"]


def test_end_to_end_on_digits(tmp_path):
    cfg = tiny_config(
        tmp_path,
        algorithm__name="fedbn",
        model__name="cnn-bn",
        rounds__num_rounds=4,
        rounds__clients_per_round=6,
    )
    rounds = run(cfg).rounds
    assert np.isfinite(rounds[["personal_accuracy", "train_loss"]]).all().all()
    assert rounds["test_accuracy"].isna().all()  # no single global model
    assert rounds["personal_accuracy"].iloc[-1] > 0.5  # 10 classes: chance is 0.1
    assert (rounds["bytes_up"] == 6 * 4 * (layout().size - BN_PARAMS)).all()
