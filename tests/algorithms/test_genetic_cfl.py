"""Genetic clustered FL (notebook 001): the genetic operators on fixed generators, DBSCAN groups,
one generation per group, the per-client tasks, the Adam trainer path, and end-to-end on digits."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from raysim.algorithms import ALGORITHMS, build_algorithm
from raysim.algorithms.base import (
    ClientResult,
    ClientTask,
    LinearSum,
)
from raysim.algorithms.genetic_cfl import (
    ELITE,
    GRID_BATCHES,
    GRID_LRS,
    REDRAWN,
    UNRANKED,
    GeneticCFL,
    crossover,
    evolve,
    features,
    group_clients,
    mutate,
    notebook_init,
)
from raysim.models import build_model
from raysim.models.flat import FlatModel, init_params
from raysim.runtime.trainer import FitResult, Trainer, flat_parameter
from tests.conftest import tiny_config
from tests.helpers import aggregate, client_hparams, experiment, round_ctx, setup_ctx

LOCAL = client_hparams(lr=0.05, epochs=1, batch_size=32, momentum=0.0, weight_decay=0.0, optimizer="sgd")


class Scripted:
    """A stand-in generator whose ``integers`` returns scripted values and records its arguments."""

    def __init__(self, values):
        self.values, self.calls = list(values), []

    def integers(self, *args):
        self.calls.append(args)
        return self.values.pop(0)


def gcfl_setup(clients=6, seed=0, n_params=3):
    return setup_ctx(n_params, clients=clients, seed=seed, local=LOCAL)


def plan(algo, state, t=1, available=None, cohort=None, hparams=None, rng=None):
    available = list(range(len(state.lr))) if available is None else available
    rnd = round_ctx(t, available, cohort=cohort, hparams=hparams or LOCAL, rng=rng)
    new_state, p = algo.configure_round(state, rnd)
    p.check()
    return new_state, list(p.tasks)


# -- parameters --------------------------------------------------------------------------------
def test_registered_with_the_notebooks_defaults():
    assert ALGORITHMS["genetic-cfl"] is GeneticCFL
    algo = build_algorithm("genetic-cfl")
    p = algo.p
    assert (p.mutation_scale, p.keep_top_k, p.dbscan_eps, p.dbscan_min_samples) == (0.1, 2, 0.15, 2)
    assert (p.epochs, p.optimizer, p.init, p.noise) == (2, "adam", "random", "singletons")
    assert algo.traits.linear and not algo.traits.client_state


@pytest.mark.parametrize(
    "bad",
    [
        {"lr_min": 1e-2, "lr_max": 1e-3},
        {"mutation_scale": 1.0},
        {"keep_top_k": -1},
        {"dbscan_eps": 0.0},
        {"optimizer": "rmsprop"},
        {"grid_pick_lrs": 7},
        {"grid_lrs": [0.1, -0.01]},
        {"mutation_rate": 0.1},
    ],
)
def test_params_reject_bad_values(bad):
    with pytest.raises(ValidationError):
        build_algorithm("genetic-cfl", bad)


# -- the genetic operators -------------------------------------------------------------------
def test_mutate_on_a_fixed_generator():
    # default_rng(0).integers(-1, 2) gives 1, 0, 0, -1: lr * 1.1, lr, lr, lr * 0.9
    rng = np.random.default_rng(0)
    assert [mutate(1.0, rng) for _ in range(4)] == [1.1, 1.0, 1.0, 0.9]
    s = Scripted([-1, 1])
    assert mutate(2.0, s, scale=0.5) == 1.0 and mutate(2.0, s, scale=0.5) == 3.0
    assert s.calls == [(-1, 2), (-1, 2)]  # d uniform on {-1, 0, 1}


def test_crossover_on_a_fixed_generator():
    # default_rng(1).integers: 1 (parent of entry 2), 0 (d), 3 (batch parent), 3 (parent of entry 3),
    # -1 (d), 0 (batch parent): entry 2 = (2 * 1.0, 40), entry 3 = (4 * 0.9, 10)
    lrs, bs = crossover([1.0, 2.0, 3.0, 4.0], [10, 20, 30, 40], np.random.default_rng(1))
    np.testing.assert_allclose(lrs, [1.0, 2.0, 2.0, 3.6])
    np.testing.assert_array_equal(bs, [10, 20, 40, 10])
    s = Scripted([2, 1, 0])
    lrs, bs = crossover([1.0, 2.0, 3.0], [10, 20, 30], s, keep=2)
    np.testing.assert_allclose(lrs, [1.0, 2.0, 3.0 * 1.1])  # parent 2 (itself), mutated up
    np.testing.assert_array_equal(bs, [10, 20, 10])
    assert s.calls == [(3,), (-1, 2), (3,)]  # parents uniform over all 3 members
    # two members or fewer with keep 2: nothing changes and no random number is drawn
    s = Scripted([])
    lrs, bs = crossover([1.0, 2.0], [10, 20], s)
    np.testing.assert_array_equal(lrs, [1.0, 2.0])
    np.testing.assert_array_equal(bs, [10, 20])
    assert s.calls == []


def test_evolve_keeps_exactly_the_k_best_and_answers_in_input_order():
    losses = [0.5, 0.1, 0.9, 0.3, 0.7]
    lrs = [1e-3, 2e-3, 3e-3, 4e-3, 5e-3]
    bs = [16, 32, 48, 64, 80]
    # sorted best first: clients 1, 3, 0, 4, 2. Sorted position 2 (client 0): parent 4 (client 2),
    # d = +1, batch of position 0 (client 1); position 3 (client 4): parent 0 (client 1), d = -1,
    # batch of position 4 (client 2); position 4 (client 2): parent 1 (client 3), d = 0, batch of
    # position 1 (client 3)
    s = Scripted([4, 1, 0, 0, -1, 4, 1, 0, 1])
    new_l, new_b, elite = evolve(losses, lrs, bs, s, keep=2, scale=0.1)
    np.testing.assert_array_equal(elite, [False, True, False, True, False])
    np.testing.assert_allclose(new_l, [3e-3 * 1.1, 2e-3, 4e-3, 4e-3, 2e-3 * 0.9])
    np.testing.assert_array_equal(new_b, [32, 32, 64, 64, 48])
    assert new_l[1] == lrs[1] and new_l[3] == lrs[3]  # the elites exactly

    for keep in (0, 1, 3, 5, 9):
        _, _, elite = evolve(losses, lrs, bs, np.random.default_rng(2), keep=keep)
        assert elite.sum() == min(keep, 5)
        assert set(np.flatnonzero(elite)) == set(np.argsort(losses)[:keep].tolist())


def test_evolve_ranks_nan_last_and_ties_in_input_order():
    _, _, elite = evolve([np.nan, 0.2, 0.2, 0.1], [1e-3] * 4, [16] * 4, np.random.default_rng(0), keep=2)
    np.testing.assert_array_equal(elite, [False, True, False, True])
    _, _, elite = evolve([np.inf, np.nan, 5.0], [1e-3] * 3, [16] * 3, np.random.default_rng(0), keep=1)
    np.testing.assert_array_equal(elite, [False, False, True])


def test_learning_rates_stay_finite_positive_and_clipped_under_many_generations():
    rng = np.random.default_rng(3)
    lrs = np.array([1e-8, 1e-3, 0.5, 1.0])
    bs = np.array([16, 32, 64, 128])
    for _ in range(3000):
        lrs, bs, _ = evolve(rng.random(4), lrs, bs, rng, keep=1, scale=0.9, lr_range=(1e-8, 1.0))
        assert np.isfinite(lrs).all() and (lrs >= 1e-8).all() and (lrs <= 1.0).all()
    assert set(bs.tolist()) <= {16, 32, 64, 128}
    # without the clip the same walk leaves the range: the clip is what holds it
    rng = np.random.default_rng(3)
    lrs = np.array([1e-8, 1e-3, 0.5, 1.0])
    low = np.inf
    for _ in range(300):
        lrs, bs, _ = evolve(rng.random(4), lrs, bs, rng, keep=1, scale=0.9, lr_range=(0.0, np.inf))
        low = min(low, lrs.min())
    assert low < 1e-8


# -- initialisation and grouping -----------------------------------------------------------
def test_notebook_initialisation_ranges_and_seeding():
    lr, batch = notebook_init(20000, np.random.default_rng(0))
    assert batch.dtype == np.int64 and batch.min() == 16 and batch.max() == 128
    assert lr.min() > 1e-7 and lr.max() <= 1e-3
    log_lr = np.log10(lr)
    assert abs(log_lr.mean() + 5.0) < 0.05  # log10 lr uniform on (-7, -3]
    assert abs(np.mean(np.log2(batch)) - 5.5) < 0.05  # log2 batch ~ uniform on [4, 7)
    f = features(lr, batch)
    assert f.min() >= -0.01 and f.max() <= 1.01  # the initial ranges fill [0, 1]^2

    algo = build_algorithm("genetic-cfl")
    a, b = (
        algo.init(np.zeros(3, np.float32), gcfl_setup(8)),
        algo.init(np.zeros(3, np.float32), gcfl_setup(8)),
    )
    np.testing.assert_array_equal(a.lr, b.lr)
    np.testing.assert_array_equal(a.batch, b.batch)
    c = algo.init(np.zeros(3, np.float32), gcfl_setup(8, seed=1))
    assert not np.array_equal(a.lr, c.lr)
    assert (a.loss_round == -1).all() and np.isnan(a.val_loss).all() and a.searched


def test_features_are_the_notebooks_normalisation():
    np.testing.assert_allclose(features([1e-3, 1e-7, 1e-5], [16, 128, 64]), [[0, 0], [1, 1], [0.5, 2 / 3]])


def test_dbscan_groups_with_noise_points_as_singletons():
    # features: A = (0, 0), (0, 0.03); B = (0.5, 0.667), (0.49, 0.667), (0.5, 0.681);
    # noise: (1, 1) and (0.25, 1), more than eps 0.15 from everything
    lr = [1e-3, 1e-7, 1e-5, 1e-3, 1.1e-5, 1e-4, 1e-5]
    batch = [16, 128, 64, 17, 64, 128, 66]
    groups, noise = group_clients(lr, batch, eps=0.15, min_samples=2)
    np.testing.assert_array_equal(groups, [0, 2, 1, 0, 1, 3, 1])
    np.testing.assert_array_equal(noise, [False, True, False, False, False, True, False])
    groups, _ = group_clients(lr, batch, eps=0.15, min_samples=2, noise="group")
    np.testing.assert_array_equal(groups, [0, 2, 1, 0, 1, 2, 1])
    groups, noise = group_clients(lr, batch, eps=2.0, min_samples=2)
    assert (groups == 0).all() and not noise.any()
    groups, noise = group_clients(lr[:2], batch[:2], eps=0.15, min_samples=2)  # all noise
    np.testing.assert_array_equal(groups, [0, 1])


# -- server ------------------------------------------------------------------------------------
def one_group_state(algo, losses, clients=5):
    state = algo.init(np.zeros(3, np.float32), gcfl_setup(clients))
    loss = np.asarray(losses, dtype=np.float64)
    return replace(
        state,
        group=np.zeros(clients, np.int64),
        val_loss=loss,
        loss_round=np.where(np.isnan(loss), -1, 1).astype(np.int64),
    )


def test_tasks_carry_each_clients_lr_batch_epochs_and_optimizer():
    algo = build_algorithm("genetic-cfl")
    state = algo.init(np.zeros(3, np.float32), gcfl_setup(6))
    hp = replace(LOCAL, weight_decay=1e-4)
    new, tasks = plan(algo, state, available=[0, 1, 2, 3, 4, 5], cohort=4, hparams=hp)
    assert len(tasks) == 4
    assert len({t.hparams.lr for t in tasks}) == 4  # four different clients, four rates
    for t in tasks:
        c = t.client_id
        assert t.hparams.lr == new.lr[c] == state.lr[c]  # nobody measured yet: nothing evolves
        assert t.hparams.batch_size == new.batch[c]
        assert t.hparams.epochs == 2 and t.hparams.optimizer == "adam"
        assert t.hparams.weight_decay == 1e-4 and t.model_key == "global" and not t.extras
    algo = build_algorithm("genetic-cfl", {"epochs": None, "optimizer": "sgd"})
    _, tasks = plan(algo, state, hparams=replace(LOCAL, epochs=3))
    assert {t.hparams.epochs for t in tasks} == {3} and {t.hparams.optimizer for t in tasks} == {"sgd"}
    with pytest.raises(ValueError, match="momentum"):
        plan(build_algorithm("genetic-cfl"), state, hparams=replace(LOCAL, momentum=0.9))


def test_a_generation_keeps_the_two_best_by_val_loss_and_redraws_the_rest():
    algo = build_algorithm("genetic-cfl")
    # client 4 was never measured: it keeps its values and is neither ranked nor a parent
    state = one_group_state(algo, [0.9, 0.2, 0.5, 0.1, np.nan])
    new, tasks = plan(algo, state, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(new.role, [REDRAWN, ELITE, REDRAWN, ELITE, UNRANKED])
    for c in (1, 3, 4):
        assert new.lr[c] == state.lr[c] and new.batch[c] == state.batch[c]
    parents = state.lr[:4]
    for c in (0, 2):  # a measured parent's rate times 0.9, 1 or 1.1 and a measured parent's batch
        assert np.isclose(new.lr[c], np.outer(parents, [0.9, 1.0, 1.1]), rtol=1e-12).any()
        assert new.batch[c] in state.batch[:4]
    assert {t.client_id: t.hparams.lr for t in tasks} == {c: new.lr[c] for c in range(5)}
    assert not np.array_equal(new.lr, state.lr)  # this seed re-draws something


def test_singleton_groups_never_change():
    algo = build_algorithm("genetic-cfl")
    state = one_group_state(algo, [0.9, 0.2, 0.5, 0.1, 0.3])
    state = replace(state, group=np.arange(5))
    new, _ = plan(algo, state, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(new.lr, state.lr)
    assert (new.role == ELITE).all()


def test_aggregate_averages_records_losses_and_annotates():
    algo = build_algorithm("genetic-cfl")
    state = algo.init(np.zeros(2, np.float32), gcfl_setup(4, n_params=2))

    def res(c, n, delta, **metrics):
        return ClientResult(client_id=c, num_examples=n, delta=np.asarray(delta, np.float32), metrics=metrics)

    pre = LinearSum.of([res(0, 10, [1, 0], val_loss=0.4), res(2, 30, [0, 2], val_loss=0.2)])
    stubs = [
        ClientResult(client_id=0, num_examples=10, delta=None, metrics={"val_loss": 0.4}),
        ClientResult(client_id=2, num_examples=30, delta=None, metrics={"val_loss": 0.2}),
        ClientResult(client_id=3, num_examples=5, delta=None, metrics={"diverged": 1.0}),
    ]
    new, m = aggregate(algo, state, 7, [pre, *stubs])
    np.testing.assert_allclose(new.params, [0.25, 1.5], rtol=1e-6)  # (10 [1, 0] + 30 [0, 2]) / 40
    np.testing.assert_array_equal(new.val_loss, [0.4, np.nan, 0.2, np.inf])
    np.testing.assert_array_equal(new.loss_round, [7, -1, 7, 7])
    assert m["aggregated_clients"] == 2 and m["diverged_clients"] == 1
    assert m["val_loss"] == pytest.approx(0.3)
    assert m["groups"] == len(np.unique(new.group))
    assert m["largest_group"] == np.bincount(new.group).max()
    notes = algo.client_annotations(new)
    assert set(notes) == {0, 1, 2, 3}
    assert notes[2]["lr"] == new.lr[2] and notes[2]["batch_size"] == new.batch[2]
    assert notes[2]["cluster"] == new.group[2] and notes[2]["val_loss"] == 0.2
    assert np.isnan(notes[1]["val_loss"]) and notes[3]["val_loss"] == np.inf


# -- client ------------------------------------------------------------------------------------
@dataclass
class Ev:
    loss: float
    n: int = 5


class FakeClient:
    """fit() moves every parameter by -lr * batch_size; the validation loss is |params[0] + 1|."""

    def __init__(self, val_n=5, blow_up_above=None):
        self.client_id, self.num_examples, self.state, self.broadcast = 0, 10, {}, {}
        self.fits, self.splits, self.val_n, self.blow_up_above = [], [], val_n, blow_up_above

    def fit(self, params, *, hparams, grad_hook=None):
        self.fits.append(hparams)
        step = hparams.lr * hparams.batch_size
        out = params - step
        if self.blow_up_above is not None and hparams.lr > self.blow_up_above:
            out = out * np.nan
        return FitResult(params=out.astype(np.float32), loss=1.0, steps=1, num_examples=10)

    def evaluate(self, params, split="val"):
        self.splits.append(split)
        return Ev(loss=abs(float(params[0]) + 1.0), n=self.val_n if split == "val" else 10)


def test_client_trains_with_its_hparams_and_reports_the_val_loss():
    algo = build_algorithm("genetic-cfl")
    task = ClientTask(
        client_id=0, model_key="global", hparams=client_hparams(lr=0.01, batch_size=20, epochs=2)
    )
    c = FakeClient()
    r = algo.client_update(task, np.zeros(2, np.float32), c)
    assert c.fits == [task.hparams] and c.splits == ["val"]
    np.testing.assert_allclose(r.delta, -0.2, rtol=1e-6)
    assert r.metrics["val_loss"] == pytest.approx(0.8)
    c = FakeClient(val_n=0)  # no validation split: the training split ranks
    algo.client_update(task, np.zeros(2, np.float32), c)
    assert c.splits == ["val", "train"]
    r = algo.client_update(task, np.zeros(2, np.float32), FakeClient(blow_up_above=0.001))
    assert r.delta is None and r.metrics == {"diverged": 1.0}


def test_grid_search_round_trains_every_candidate_and_sends_the_best():
    algo = build_algorithm("genetic-cfl", {"init": "grid"})
    state = algo.init(np.zeros(2, np.float32), gcfl_setup(5, n_params=2))
    assert not state.searched and state.grid_lrs.shape == (5, 3) and state.grid_batches.shape == (5, 2)
    for c in range(5):
        assert len(set(state.grid_lrs[c])) == 3 and set(state.grid_lrs[c]) <= set(algo.p.grid_lrs)
        assert len(set(state.grid_batches[c])) == 2 and set(state.grid_batches[c]) <= {16, 32, 64, 128}
    new, tasks = plan(algo, state, available=[0, 1, 2, 3, 4], cohort=2)
    assert [t.client_id for t in tasks] == [0, 1, 2, 3, 4]  # the search round: every client
    assert new is state  # no generation before the search

    task = ClientTask(
        client_id=1,
        model_key="global",
        hparams=client_hparams(lr=1.0, batch_size=1, epochs=2),
        extras={GRID_LRS: np.array([0.1, 0.01, 0.001]), GRID_BATCHES: np.array([16, 64])},
    )
    c = FakeClient(blow_up_above=0.05)
    r = algo.client_update(task, np.zeros(2, np.float32), c)
    # 6 fits of 1 epoch, batch-major; loss |1 - lr * b|: lr 0.01 at batch 64 (0.36) wins, lr 0.1 diverges
    assert [(f.batch_size, f.lr) for f in c.fits] == [
        (16, 0.1), (16, 0.01), (16, 0.001), (64, 0.1), (64, 0.01), (64, 0.001)
    ]  # fmt: skip
    assert {f.epochs for f in c.fits} == {1}
    assert r.metrics["lr"] == 0.01 and r.metrics["batch_size"] == 64
    assert r.metrics["val_loss"] == pytest.approx(0.36)
    np.testing.assert_allclose(r.delta, -0.64, rtol=1e-6)

    # the server takes each client's choice, then clusters
    results = [
        ClientResult(
            client_id=k,
            num_examples=10,
            delta=np.zeros(2, np.float32),
            metrics={"val_loss": 0.1 * k, "lr": float(state.grid_lrs[k][0]), "batch_size": 64.0},
        )
        for k in range(5)
    ]
    done, _ = aggregate(algo, state, 1, results)
    assert done.searched
    np.testing.assert_array_equal(done.lr, state.grid_lrs[:, 0])
    assert (done.batch == 64).all()
    np.testing.assert_array_equal(done.group, algo.groups(done.lr, done.batch)[0])
    _, tasks = plan(algo, done, available=[0, 1, 2, 3, 4], cohort=2)
    assert len(tasks) == 2 and all(not t.extras for t in tasks)


# -- the trainer's Adam path ---------------------------------------------------------------------
def digits_batch(n=128):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:n] * 16).clip(0, 255).astype(np.uint8)[:, None]
    return x, d.target[:n]


@pytest.fixture
def one_thread():
    """The runtime trains with resources.torch_threads (1); so do these tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_trainer():
    return Trainer(model="cnn-small", input_shape=(1, 8, 8), num_classes=10, mean=(0.3,), std=(0.3,))


def test_flat_parameter_aliases_the_models_buffer():
    fm = FlatModel(build_model("cnn-small", (1, 8, 8), 10))
    p = flat_parameter(fm)
    assert p.data_ptr() == fm.flat.data_ptr() and isinstance(p, torch.nn.Parameter)
    with torch.no_grad():
        p.add_(1.0)
    first = next(fm.module.parameters())
    assert torch.equal(fm.flat, p.detach()) and first.data_ptr() == fm.flat.data_ptr()
    np.testing.assert_array_equal(fm.read(), p.detach().numpy())


def test_adam_path_matches_torch_adam_and_lowers_the_loss(one_thread):
    x, y = digits_batch()
    p0 = init_params("cnn-small", (1, 8, 8), 10, 0)
    tr = make_trainer()
    out = tr.fit(
        p0,
        x,
        y,
        client_hparams(epochs=2, batch_size=32, lr=1e-3, weight_decay=1e-4, optimizer="adam"),
        seed=5,
    )
    assert out.steps == 8

    ref = FlatModel(build_model("cnn-small", (1, 8, 8), 10))
    ref.load(p0)
    opt = torch.optim.Adam(list(ref.module.parameters()), lr=1e-3, weight_decay=1e-4)
    order_rng = np.random.default_rng(5)
    xt = (torch.from_numpy(x).float() / 255.0 - 0.3) / 0.3
    for _ in range(2):
        order = order_rng.permutation(len(y))
        for s in range(0, len(y), 32):
            b = order[s : s + 32]
            opt.zero_grad(set_to_none=False)
            torch.nn.functional.cross_entropy(ref.module(xt[b]), torch.from_numpy(y[b])).backward()
            opt.step()
    np.testing.assert_allclose(out.params, ref.read(), rtol=1e-4, atol=1e-5)
    sgd = tr.fit(p0, x, y, client_hparams(epochs=2, batch_size=32, lr=1e-3, weight_decay=1e-4), seed=5)
    assert not np.allclose(sgd.params, out.params, atol=1e-5)  # Adam is not the SGD step

    before = tr.evaluate(p0, x, y).loss
    trained = tr.fit(p0, x, y, client_hparams(epochs=5, batch_size=16, lr=3e-3, optimizer="adam"), seed=1)
    assert tr.evaluate(trained.params, x, y).loss < 0.5 * before
    # a second fit starts a fresh optimizer: the same call gives the same result
    again = tr.fit(p0, x, y, client_hparams(epochs=5, batch_size=16, lr=3e-3, optimizer="adam"), seed=1)
    np.testing.assert_array_equal(again.params, trained.params)


def test_sgd_is_the_default_and_unknown_optimizers_are_refused(one_thread):
    x, y = digits_batch(64)
    p0 = init_params("cnn-small", (1, 8, 8), 10, 0)
    tr = make_trainer()
    a = tr.fit(p0, x, y, client_hparams(epochs=1, batch_size=16, lr=0.1, momentum=0.5), seed=2)
    b = tr.fit(
        p0, x, y, client_hparams(epochs=1, batch_size=16, lr=0.1, momentum=0.5, optimizer="sgd"), seed=2
    )
    np.testing.assert_array_equal(a.params, b.params)
    with pytest.raises(ValueError, match="valid names: sgd, adam"):
        tr.fit(
            p0, x, y, replace(client_hparams(epochs=1, batch_size=16, lr=0.1), optimizer="rmsprop"), seed=2
        )
    with pytest.raises(ValueError, match="momentum"):
        tr.fit(
            p0, x, y, client_hparams(epochs=1, batch_size=16, lr=0.1, momentum=0.5, optimizer="adam"), seed=2
        )


def test_local_optimizer_reaches_the_trainer_through_the_host(tmp_path, monkeypatch):
    seen = []
    original = Trainer.fit

    def spy(self, *args, **kw):
        seen.append(args[3].optimizer)  # (params, x, y, hparams)
        return original(self, *args, **kw)

    monkeypatch.setattr(Trainer, "fit", spy)
    cfg = tiny_config(
        tmp_path, local__optimizer="adam", local__lr=1e-3, rounds__num_rounds=1, rounds__personal_eval=False
    )
    exp = experiment(cfg)
    try:
        exp.run()
    finally:
        exp.close()
    assert seen == ["adam"] * 3


# -- end to end on digits -------------------------------------------------------------------------
def gcfl_config(tmp_path, **over):
    base = {
        "algorithm__name": "genetic-cfl",
        "algorithm__dbscan_eps": 2.0,  # one group of all 6 clients: 2 elites, 4 re-drawn per round
        "rounds__num_rounds": 3,
        "rounds__clients_per_round": 6,
        "rounds__personal_eval": False,
    }
    return tiny_config(tmp_path, **{**base, **over})


def participants(clients):
    return clients[clients.participated & ~clients.dropped].set_index(["round", "client_id"]).sort_index()


def test_end_to_end_clients_parquet_tracks_each_clients_lr_and_batch(tmp_path):
    exp = experiment(gcfl_config(tmp_path))
    try:
        exp.run()
    finally:
        exp.close()
    rounds = pd.read_parquet(exp.run_dir / "rounds.parquet")
    part = participants(pd.read_parquet(exp.run_dir / "clients.parquet"))
    assert len(rounds) == 3 and np.isfinite(rounds["test_accuracy"]).all()
    assert (rounds["groups"] == 1).all() and (rounds["aggregated_clients"] == 6).all()
    r = sorted(part.index.get_level_values("round").unique())
    assert len(r) == 3
    for prev, cur in zip(r, r[1:], strict=False):
        a, b = part.loc[prev], part.loc[cur]
        best = a["val_loss"].nsmallest(2).index  # the two best of the previous round...
        assert set(b.index[b["elite"] == 1]) == set(best)  # ...are this round's elites
        pd.testing.assert_frame_equal(a.loc[best, ["lr", "batch_size"]], b.loc[best, ["lr", "batch_size"]])
        others = b.index.difference(best)
        assert (b.loc[others, "redrawn"] == 1).all()
        changed = (a.loc[others, "lr"] != b.loc[others, "lr"]) | (
            a.loc[others, "batch_size"] != b.loc[others, "batch_size"]
        )
        assert changed.any()
    assert (part["lr"] > 0).all() and part["batch_size"].between(16, 128).all()


def test_end_to_end_grid_start_searches_every_client_in_round_one(tmp_path):
    cfg = gcfl_config(
        tmp_path, algorithm__init="grid", rounds__num_rounds=2, rounds__clients_per_round=3, seed=4
    )
    exp = experiment(cfg)
    try:
        exp.run()
    finally:
        exp.close()
    part = participants(pd.read_parquet(exp.run_dir / "clients.parquet")).reset_index()
    first, second = sorted(part["round"].unique())
    assert (part["round"] == first).sum() == 6 and (part["round"] == second).sum() == 3
    grid = set(build_algorithm("genetic-cfl").p.grid_lrs)
    chosen = part[part["round"] == first]
    assert set(chosen["lr"]) <= grid and set(chosen["batch_size"]) <= {16.0, 32.0, 64.0, 128.0}
    assert np.isfinite(chosen["val_loss"]).all()


def test_the_local_keys_it_declares_ignored_never_reach_a_task():
    """``ignored_config_keys`` (what `raysim tune` refuses as knobs) is what configure_round does:
    local.lr, local.batch_size, local.optimizer and local.epochs change no task; with
    ``epochs: null`` local.epochs does."""
    algo = build_algorithm("genetic-cfl")
    assert algo.ignored_config_keys() == {
        "local.lr",
        "local.lr_decay",
        "local.batch_size",
        "local.optimizer",
        "local.epochs",
    }
    state = algo.init(np.zeros(3, np.float32), gcfl_setup())
    other = replace(LOCAL, lr=0.9, batch_size=7, epochs=5, optimizer="adam")

    def genes(hp):
        return [
            (t.hparams.lr, t.hparams.batch_size, t.hparams.epochs, t.hparams.optimizer)
            for t in plan(algo, state, hparams=hp)[1]
        ]

    assert genes(LOCAL) == genes(other)
    assert not {lr for lr, *_ in genes(LOCAL)} & {LOCAL.lr, other.lr}
    free = build_algorithm("genetic-cfl", {"epochs": None})
    assert "local.epochs" not in free.ignored_config_keys()
    state = free.init(np.zeros(3, np.float32), gcfl_setup())
    assert {t.hparams.epochs for t in plan(free, state, hparams=other)[1]} == {5}


def test_at_100_clients_dbscan_finds_one_population_and_at_30_several_groups():
    """What docs/clustered.md quotes: the notebook's eps 0.15 on 100 clients' initial draws puts
    87-100 clients in one group (seeds 0-9); its own 30 clients split into several groups."""
    largest, counts = [], []
    for seed in range(10):
        for n, out in ((100, largest), (30, counts)):
            algo = build_algorithm("genetic-cfl", {"noise": "group"})
            state = algo.init(np.zeros(2, np.float32), gcfl_setup(n, seed=seed, n_params=2))
            out.append(np.bincount(state.group).max() if n == 100 else len(np.unique(state.group)))
    assert min(largest) >= 87 and max(largest) == 100, largest
    assert min(counts) >= 5, counts
