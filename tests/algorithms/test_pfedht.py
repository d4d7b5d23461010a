"""pFedHT: hypernetwork shapes, the cohort-only generation, eq. (15) by hand, the VJP update of
eq. (17)-(20) against autograd and an explicit Jacobian, exact checkpoints, new clients, and a
run on digits."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from raysim.algorithms import ALGORITHMS, build_algorithm
from raysim.algorithms.base import ClientResult
from raysim.algorithms.personal import PERSONAL_RANGES, ranges_to_mask
from raysim.algorithms.pfedht import ALL_PERSONAL, PFedHN, PFedHT, build_hypernet, client_key, new_clients
from raysim.models import ParamLayout, build_model, init_params
from raysim.runtime.trainer import FitResult
from tests.conftest import tiny_config
from tests.helpers import client_hparams, round_ctx, run, server_ctx, setup_ctx

HP = client_hparams(lr=0.1, epochs=1, batch_size=4)
# a tiny "transformer" layout: two personal tensors (6 values) around one shared tensor (3 values)
TINY = ParamLayout(
    names=("b.attn.q.weight", "b.norm.weight", "b.attn.v.bias"),
    shapes=((2, 2), (3,), (2,)),
    offsets=(0, 4, 7),
    size=9,
)


def ctx(layout, clients=4, sizes=None, seed=0):
    return setup_ctx(layout, clients=clients, sizes=sizes, num_classes=10, seed=seed, local=HP)


def plan(algo, state, t, available, cohort):
    return algo.configure_round(
        state, round_ctx(t, available, cohort=cohort, hparams=HP, rng=np.random.default_rng(t))
    )


def aggregate(algo, state, t, results):
    return algo.aggregate(state, results, server_ctx(t, hparams=HP))


class StepClient:
    """fit() returns params + step(params) (and records the hook); no data."""

    def __init__(self, cid, broadcast, step, n=10):
        self.client_id, self.num_examples, self.state, self.broadcast = cid, n, {}, broadcast
        self.step, self.hooks = step, []

    def fit(self, params, *, grad_hook=None, **hp):
        self.hooks.append(grad_hook)
        new = (params + self.step(params)).astype(np.float32)
        if grad_hook is not None:  # what a masked hook does to an SGD step
            g = torch.from_numpy(new - params)
            grad_hook(torch.from_numpy(params.copy()), g)
            new = params + g.numpy()
        return FitResult(params=new, loss=1.0, steps=1, num_examples=self.num_examples)


def vit_setup(clients=6, **params):
    layout = ParamLayout.of(build_model("vit-tiny", (1, 8, 8), 10))
    algo = build_algorithm("pfedht", params)
    p0 = init_params("vit-tiny", (1, 8, 8), 10, seed=0)
    return algo, algo.init(p0, ctx(layout, clients)), p0, layout


def test_registered_with_defaults():
    assert ALGORITHMS["pfedht"] is PFedHT
    algo = build_algorithm("pfedht")
    assert algo.p.hn_optimizer == "adam" and algo.p.new_client_round == 0
    assert not algo.traits.linear and not algo.traits.client_state
    with pytest.raises(ValueError, match="new_client_fraction"):
        build_algorithm("pfedht", {"new_client_round": 3})
    with pytest.raises(ValueError, match="Q/K/V"):
        algo.init(np.zeros(20490, np.float32), ctx(ParamLayout.of(build_model("cnn-small", (1, 28, 28), 10))))


def test_hypernetwork_output_shapes_and_start_at_the_shared_init():
    algo, state, p0, layout = vit_setup(clients=6, head_init_std=0.0)
    mask = ranges_to_mask(state.ranges, layout.size)
    assert mask.sum() == 6336  # 2 blocks x 3 x (32 x 32 + 32)
    w = algo.generate(state, [0, 3, 5])
    assert w.shape == (3, 6336) and w.dtype == np.float32
    # head weight 0: every client starts from the runtime's initial Q/K/V
    np.testing.assert_array_equal(w, np.tile(p0[mask], (3, 1)))
    np.testing.assert_array_equal(state.shared, p0)
    assert state.z.shape == (6, 16)
    _, spread = vit_setup(clients=6, head_init_std=0.01)[:2]
    w = algo.generate(spread, [0, 1])
    assert 0 < np.abs(w[0] - w[1]).max() < 0.1  # small per-client perturbations


def test_generates_only_for_the_cohort():
    algo, state, _, layout = vit_setup(clients=10)
    calls = []
    real = algo.generate
    algo.generate = lambda s, ids: calls.append(list(ids)) or real(s, ids)
    state, rp = plan(algo, state, 1, range(10), cohort=3)
    rp.check()
    cohort = [t.client_id for t in rp.tasks]
    assert len(cohort) == 3 and calls == [cohort]  # one batched pass, the cohort only
    assert set(rp.broadcast) == {client_key(c) for c in cohort}
    assert state.generated == 3
    for task in rp.tasks:
        assert task.model_key == client_key(task.client_id) and task.broadcast_keys == ()
        assert rp.broadcast[task.model_key].shape == (layout.size,)


def test_shared_part_is_the_data_weighted_mean_eq15():
    algo = build_algorithm("pfedht", {"embed_dim": 2, "hidden": 3, "hidden_layers": 1})
    state = algo.init(np.arange(9, dtype=np.float32), ctx(TINY))
    shared = ~ranges_to_mask(state.ranges, 9)
    np.testing.assert_array_equal(np.flatnonzero(shared), [4, 5, 6])
    d0, d1 = np.zeros(9, np.float32), np.zeros(9, np.float32)
    d0[shared], d1[shared] = [1, 0, 3], [0, 2, 3]
    d0[~shared] = 5.0  # personal parts never enter eta
    results = [
        ClientResult(client_id=1, num_examples=30, delta=d1, model_key=client_key(1)),
        ClientResult(client_id=0, num_examples=10, delta=d0, model_key=client_key(0)),
    ]
    new, m = aggregate(algo, state, 1, results)
    # (10 [1, 0, 3] + 30 [0, 2, 3]) / 40 = [0.25, 1.5, 3]
    np.testing.assert_allclose(new.shared[shared], np.array([4, 5, 6]) + [0.25, 1.5, 3.0], rtol=1e-6)
    np.testing.assert_array_equal(new.shared[~shared], state.shared[~shared])
    assert m["aggregated_clients"] == 2 and m["hn_params"] == 2 * 3 + 3 + 3 * 6 + 6
    for col in ("hn_update_s", "hn_generate_s", "hn_state_mb", "server_rss_mb"):
        assert np.isfinite(m[col])


def test_phi_and_z_updates_equal_autograd_and_the_explicit_jacobian():
    beta, beta_z = 0.3, 0.7
    algo = build_algorithm(
        "pfedht",
        {
            "embed_dim": 2,
            "hidden": 3,
            "hidden_layers": 2,
            "hn_optimizer": "sgd",
            "hn_lr": beta,
            "embed_lr": beta_z,
        },
    )
    state = algo.init(np.arange(9, dtype=np.float32) / 9, ctx(TINY, clients=4, seed=1))
    mask = ranges_to_mask(state.ranges, 9)
    rng = np.random.default_rng(0)
    ids, n = [0, 2], np.array([10.0, 30.0])
    deltas = rng.normal(size=(2, 9)).astype(np.float32)
    results = [
        ClientResult(client_id=c, num_examples=int(k), delta=d, model_key=client_key(c))
        for c, k, d in zip(ids, n, deltas, strict=True)
    ]
    new, _ = aggregate(algo, state, 1, results)

    # reference 1: backward of the pseudo-loss sum_i w_i <HN(phi, z_i), -dW_i> on a fresh copy
    hn = build_hypernet(2, 3, 2, 6)
    with torch.no_grad():
        for p, a in zip(hn.parameters(), state.phi, strict=True):
            p.copy_(torch.from_numpy(a))
    w = torch.tensor(n / n.sum(), dtype=torch.float32)
    dw = torch.from_numpy(deltas[:, mask])
    loss = (w[:, None] * hn(torch.from_numpy(state.z[ids])) * -dw).sum()
    loss.backward()
    for p, a in zip(hn.parameters(), new.phi, strict=True):
        np.testing.assert_allclose(a, (p - beta * p.grad).detach().numpy(), rtol=1e-5, atol=1e-7)

    # reference 2: z_i <- z_i - beta_z J_i^T (-dW_i) with the explicit Jacobian of HN at z_i
    for row, c in enumerate(ids):
        jac = torch.autograd.functional.jacobian(hn, torch.from_numpy(state.z[c : c + 1]))[
            0, :, 0, :
        ]  # (6, 2)
        expected = state.z[c] - beta_z * (jac.T @ -dw[row]).numpy()
        np.testing.assert_allclose(new.z[c], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(new.z[[1, 3]], state.z[[1, 3]])  # not in the cohort: untouched


def _pseudo_grads(state, deltas, n, ids, mask, dims=(2, 3, 2, 6)):
    """Reference gradients of sum_i w_i <HN(phi, z_i), -dW_i>: phi's (weighted) and each z_i's
    (unweighted), by backward on a fresh copy of the hypernetwork."""
    hn = build_hypernet(*dims)
    with torch.no_grad():
        for p, a in zip(hn.parameters(), state.phi, strict=True):
            p.copy_(torch.from_numpy(a))
    w = torch.tensor(n / n.sum(), dtype=torch.float32)
    dw = torch.from_numpy(deltas[:, mask])
    (w[:, None] * hn(torch.from_numpy(state.z[ids])) * -dw).sum().backward()
    z = torch.from_numpy(state.z[ids]).requires_grad_(True)
    (g_z,) = torch.autograd.grad((hn(z) * -dw).sum(), [z])  # phi's .grad stays the first loss's
    return [p.grad.double().numpy() for p in hn.parameters()], g_z.double().numpy()


def test_sgd_momentum_weight_decay_and_clipping_match_a_hand_computation():
    lr, mu, wd, clip, lr_z, mu_z, wd_z, clip_z = 0.3, 0.9, 0.01, 0.05, 0.7, 0.5, 0.02, 0.04
    algo = build_algorithm(
        "pfedht",
        {
            "embed_dim": 2,
            "hidden": 3,
            "hidden_layers": 2,
            "hn_optimizer": "sgd",
            "hn_lr": lr,
            "hn_momentum": mu,
            "hn_weight_decay": wd,
            "hn_clip": clip,
            "embed_lr": lr_z,
            "embed_momentum": mu_z,
            "embed_weight_decay": wd_z,
            "embed_clip": clip_z,
        },
    )
    state = algo.init(np.arange(9, dtype=np.float32) / 9, ctx(TINY, clients=4, seed=1))
    mask = ranges_to_mask(state.ranges, 9)
    rng = np.random.default_rng(0)
    phi = [a.astype(np.float64) for a in state.phi]
    z = state.z.astype(np.float64)
    buf_phi = [np.zeros_like(a) for a in phi]
    buf_z = np.zeros_like(z)
    # round 1 trains clients 0 and 2, round 2 clients 0 and 1: client 0's buffer carries over
    for t, ids in ((1, [0, 2]), (2, [0, 1])):
        n = np.array([10.0, 30.0])
        deltas = rng.normal(size=(2, 9)).astype(np.float32)
        g_phi, g_z = _pseudo_grads(state, deltas, n, ids, mask)
        norm = np.sqrt(sum((g**2).sum() for g in g_phi))
        assert norm > clip  # the clip is active in this case
        scale = clip / norm
        for k, g in enumerate(g_phi):
            buf_phi[k] = (mu * buf_phi[k] if t > 1 else 0) + g * scale + wd * phi[k]
            phi[k] = phi[k] - lr * buf_phi[k]
        for row, c in enumerate(ids):
            g = g_z[row] * min(1.0, clip_z / np.linalg.norm(g_z[row]))
            buf_z[c] = mu_z * buf_z[c] + g + wd_z * z[c]
            z[c] = z[c] - lr_z * buf_z[c]
        results = [
            ClientResult(client_id=c, num_examples=int(k), delta=d, model_key=client_key(c))
            for c, k, d in zip(ids, n, deltas, strict=True)
        ]
        state, m = aggregate(algo, state, t, results)
        assert m["hn_grad_norm"] == pytest.approx(norm, rel=1e-5)
        for a, b in zip(state.phi, phi, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.z, z, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(state.z[3], state.z0[3])  # never trained: never decayed
    moved = np.linalg.norm(state.z - state.z0, axis=1) / np.linalg.norm(state.z0, axis=1)
    assert m["embed_drift"] == pytest.approx(moved.mean(), rel=1e-5) and m["embed_drift"] > 0


def test_clipping_bounds_the_step_of_phi_and_of_each_embedding():
    def step(**knobs):
        algo = build_algorithm(
            "pfedht", {"embed_dim": 2, "hidden": 3, "hidden_layers": 2, "hn_optimizer": "sgd", **knobs}
        )
        state = algo.init(np.arange(9, dtype=np.float32) / 9, ctx(TINY, clients=4, seed=1))
        deltas = np.random.default_rng(0).normal(0, 1e3, size=(2, 9)).astype(np.float32)  # huge
        results = [
            ClientResult(client_id=c, num_examples=10, delta=d, model_key=client_key(c))
            for c, d in zip([0, 2], deltas, strict=True)
        ]
        new, _ = aggregate(algo, state, 1, results)
        d_phi = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(new.phi, state.phi, strict=True)))
        return d_phi, np.linalg.norm(new.z - state.z, axis=1)

    lr, lr_z = 0.1, 0.2
    free_phi, free_z = step(hn_lr=lr, embed_lr=lr_z)
    assert free_phi > 10 * lr and free_z.max() > 10 * lr_z  # unclipped, these steps are large
    d_phi, d_z = step(hn_lr=lr, embed_lr=lr_z, hn_clip=1.0, embed_clip=1.0)
    assert d_phi == pytest.approx(lr * 1.0, rel=1e-4)  # the step's length is lr x the clip
    assert d_z.max() == pytest.approx(lr_z * 1.0, rel=1e-4) and d_z[[1, 3]].max() == 0
    with pytest.raises(ValueError, match="hn_clip"):
        build_algorithm("pfedht", {"hn_clip": 0})
    with pytest.raises(ValueError, match="hn_momentum is an SGD knob"):
        build_algorithm("pfedhn", {"hn_optimizer": "adam"})  # pFedHN's momentum 0.9 is SGD's


def test_one_step_per_client_is_the_clients_taken_one_at_a_time():
    knobs = {"embed_dim": 2, "hidden": 3, "hidden_layers": 2, "hn_optimizer": "sgd", "hn_momentum": 0.9}
    knobs |= {"hn_clip": 0.05, "embed_momentum": 0.5}
    per_client = build_algorithm("pfedht", {**knobs, "hn_step": "client"})
    cohort = build_algorithm("pfedht", knobs)
    state = per_client.init(np.arange(9, dtype=np.float32) / 9, ctx(TINY, clients=4, seed=1))
    deltas = np.random.default_rng(0).normal(size=(2, 9)).astype(np.float32)
    res = [
        ClientResult(client_id=c, num_examples=10 * (c + 1), delta=d, model_key=client_key(c))
        for c, d in zip([2, 0], deltas, strict=True)
    ]
    both, m = aggregate(per_client, state, 1, res)
    one = state
    for r in sorted(res, key=lambda r: r.client_id):  # client-id order, each alone: weight 1
        one, _ = aggregate(cohort, one, 1, [r])
    for a, b in zip(both.phi, one.phi, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(both.z, one.z, rtol=1e-6, atol=1e-7)
    together, _ = aggregate(cohort, state, 1, res)
    assert not np.allclose(together.phi[0], both.phi[0])  # a cohort step is another step
    assert np.isfinite(m["hn_grad_norm"])


def test_pfedhn_defaults_are_the_reference_settings_and_pfedht_keeps_its_own():
    hn, ht = build_algorithm("pfedhn").p, build_algorithm("pfedht").p
    assert (hn.hn_optimizer, hn.hn_lr, hn.hn_momentum, hn.hn_weight_decay, hn.hn_clip) == (
        "sgd",
        0.01,
        0.9,
        1e-3,
        50.0,
    )
    assert (hn.embed_lr, hn.embed_momentum, hn.embed_weight_decay, hn.embed_clip) == (0.01, 0.9, 1e-3, 50.0)
    assert (hn.hn_step, ht.hn_step) == ("client", "cohort")
    assert (ht.hn_optimizer, ht.hn_lr, ht.embed_lr, ht.hn_clip, ht.embed_clip) == (
        "adam",
        0.01,
        1.0,
        None,
        None,
    )
    assert (ht.embed_momentum, ht.embed_weight_decay) == (0.0, 0.0)


def test_checkpointed_state_restores_the_hypernetwork_and_adam_exactly():
    algo, state, _, layout = vit_setup(clients=4, hn_lr=0.01)
    rng = np.random.default_rng(0)

    def results():
        return [
            ClientResult(
                client_id=c, num_examples=10 + c, delta=rng.normal(0, 0.01, layout.size).astype(np.float32)
            )
            for c in (0, 1, 3)
        ]

    state, _ = aggregate(algo, state, 1, results())
    assert state.opt["state"]  # Adam's moments exist after one step
    restored = pickle.loads(pickle.dumps(state))
    again = results()
    a, _ = aggregate(algo, state, 2, again)
    b, _ = aggregate(build_algorithm("pfedht", {"hn_lr": 0.01}), restored, 2, again)
    for x, y in zip(a.phi, b.phi, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.z, b.z)
    np.testing.assert_array_equal(a.shared, b.shared)
    # the old state was not mutated by the second step (the optimiser state was copied)
    c, _ = aggregate(algo, state, 2, again)
    for x, y in zip(a.phi, c.phi, strict=True):
        np.testing.assert_array_equal(x, y)


def test_new_clients_are_held_out_then_learn_only_their_embedding():
    held = new_clients(10, 0.2, seed=0)
    assert len(held) == 2 and np.array_equal(held, new_clients(10, 0.2, seed=0))
    algo, state, _, layout = vit_setup(clients=10, new_client_fraction=0.2, new_client_round=3, hn_lr=0.01)
    np.testing.assert_array_equal(state.new, held)
    _, train_plan = plan(algo, state, 2, range(10), cohort=10)
    assert {t.client_id for t in train_plan.tasks} == set(range(10)) - set(held.tolist())

    _, rp = plan(algo, state, 3, range(10), cohort=10)
    assert sorted(t.client_id for t in rp.tasks) == held.tolist()
    task = rp.tasks[0]
    assert task.broadcast_keys == (PERSONAL_RANGES,)
    mask = ranges_to_mask(state.ranges, layout.size)
    client = StepClient(task.client_id, rp.broadcast, lambda p: np.full_like(p, 0.01))
    r = algo.client_update(task, rp.broadcast[task.model_key], client)
    assert r.delta.shape == (int(mask.sum()),)  # W^i's update only: eta was frozen
    np.testing.assert_allclose(r.delta, 0.01, rtol=1e-5)

    new, m = aggregate(algo, state, 3, [r])
    assert m["aggregated_clients"] == 1
    for x, y in zip(new.phi, state.phi, strict=True):
        np.testing.assert_array_equal(x, y)  # phi frozen
    np.testing.assert_array_equal(new.shared, state.shared)  # eta frozen
    assert new.opt is state.opt  # no optimiser step
    others = np.arange(10) != task.client_id
    np.testing.assert_array_equal(new.z[others], state.z[others])
    assert not np.array_equal(new.z[task.client_id], state.z[task.client_id])


def test_learning_only_z_fits_a_held_out_clients_target():
    """With phi frozen, repeated eq.-(20) steps on a client whose local training pulls W toward a
    target W* bring HN(phi, z) closer to W* (z alone is optimised)."""
    algo, state, _, layout = vit_setup(clients=5, new_client_fraction=0.2, new_client_round=1, embed_lr=30.0)
    (cid,) = state.new.tolist()
    target = algo.generate(state, [(cid + 1) % 5])[0]  # another client's W: reachable through z

    def dist(s):
        return float(np.linalg.norm(algo.generate(s, [cid])[0] - target))

    start = dist(state)
    for t in range(1, 6):
        _, rp = plan(algo, state, t, range(5), cohort=5)
        mask = ranges_to_mask(rp.broadcast[PERSONAL_RANGES], layout.size)

        def pull(p, mask=mask):
            step = np.zeros_like(p)
            step[mask] = 0.5 * (target - p[mask])  # a gradient step on 1/2 ||W - W*||^2
            return step

        client = StepClient(cid, rp.broadcast, pull)
        r = algo.client_update(rp.tasks[0], rp.broadcast[rp.tasks[0].model_key], client)
        state, _ = aggregate(algo, state, t, [r])
    assert dist(state) < 0.5 * start


def test_personal_params_combine_eta_with_each_clients_generated_projections():
    algo, state, _, layout = vit_setup(clients=3)
    bc = algo.eval_broadcast(state)
    assert bc[ALL_PERSONAL].shape == (3, 6336)
    mask = ranges_to_mask(state.ranges, layout.size)
    for c in range(3):
        client = StepClient(c, bc, lambda p: p)
        v = algo.personal_params(bc, client)
        np.testing.assert_array_equal(v[~mask], state.shared[~mask])
        # generated in one batch for everyone: equal to the single pass up to float rounding
        np.testing.assert_allclose(v[mask], algo.generate(state, [c])[0], rtol=1e-5, atol=1e-7)
    assert algo.server_model(state).shape == (layout.size,)


def test_end_to_end_on_digits_with_new_clients(tmp_path):
    cfg = tiny_config(
        tmp_path,
        model__name="vit-tiny",
        algorithm__name="pfedht",
        algorithm__new_client_fraction=0.2,
        algorithm__new_client_round=3,
        rounds__num_rounds=3,
    )
    rounds, clients = run(cfg).unpack("rounds", "clients")
    for col in ("test_accuracy", "train_loss", "personal_accuracy", "hn_update_s", "hn_state_mb"):
        assert np.isfinite(rounds[col]).all(), col
    assert rounds["hn_generated"].tolist() == [3.0, 3.0, 1.0]  # cohort of 3, then the one new client
    trained = clients[clients["participated"]]
    held = set(new_clients(6, 0.2, 3).tolist())
    assert set(trained[trained["round"] < 3]["client_id"]).isdisjoint(held)
    assert set(trained[trained["round"] == 3]["client_id"]) == held


def test_pfedhn_generates_every_weight_of_a_cnn(tmp_path):
    assert ALGORITHMS["pfedhn"] is PFedHN
    layout = ParamLayout.of(build_model("cnn-small", (1, 8, 8), 10))
    algo = build_algorithm("pfedhn", {"head_init_std": 0.0})
    p0 = init_params("cnn-small", (1, 8, 8), 10, seed=0)
    state = algo.init(p0, ctx(layout, clients=3))
    assert ranges_to_mask(state.ranges, layout.size).all()  # nothing is shared
    np.testing.assert_array_equal(algo.generate(state, [1])[0], p0)
    rounds, _ = run(tiny_config(tmp_path, algorithm__name="pfedhn", rounds__num_rounds=2)).unpack(
        "rounds", "clients"
    )
    assert np.isfinite(rounds[["personal_accuracy", "test_accuracy", "hn_update_s"]]).all().all()


# the slow-tier comparison with FedAvg*, paired over seeds 1-3: tests/algorithms/test_pfedht_slow.py
