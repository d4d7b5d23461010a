"""pFedHT (paper 003, "Personalised FL based on Hypernetworks and Attention Mechanism Ensembles
for IoT", section 3.3 and Algorithm 2): a hypernetwork on the server generates each client's
self-attention projections; every other parameter is shared.

The model must have explicit Q/K/V projections (``vit-tiny``, ``raysim/models/vit.py``). Its flat
vector splits into the personal part W = [W_Q, W_K, W_V] of every block (eq. 11) and the shared
part eta (patch embedding, attention output projections, MLPs, norms, head).

Server, round t:

* ``configure_round``: sample the cohort S; the hypernetwork generates W^i = HN(phi, z_i) for
  the clients in S only (eq. 11; one batched forward pass over their embeddings z_i) and sends
  client i the personalised model P(W^i, eta) (eq. 12-13 run inside the model).
* clients train it locally (cross-entropy, eq. 14/16) and return Delta_i = (W^i, eta^i)_new -
  (W^i, eta)_start, both parts (Algorithm 2, line 12).
* ``aggregate``: eta <- sum_i (m_i / M) eta^i (eq. 15, M = the accepted cohort's examples), and
  the hypernetwork learns from the personal part Delta W^i by a vector-Jacobian product, as
  pFedHN does (Shamsian et al. 2021): the pseudo-loss sum_i w_i <HN(phi, z_i), -Delta W^i> has
  gradient
      grad_phi = sum_i (m_i / M) (dW^i/dphi)^T (-Delta W^i)          (eq. 17)
      grad_z_i =                 (dW^i/dz_i)^T (-Delta W^i)          (eq. 18 / 20, see below)
  computed with ``torch.autograd.grad(outputs=HN(phi, z_S), inputs=..., grad_outputs=-Delta W)``;
  phi takes one optimiser step with this gradient at lr beta (eq. 19: plain SGD, or Adam), and
  each z_i one plain gradient step z_i <- z_i - beta_z grad_z_i (eq. 20).

Where the paper is ambiguous, and what this module does:

* eq. 18 writes grad_z_i with the cohort sum and the weight m_i/M, but only the i-th term depends
  on z_i, and eq. 20 steps along grad L_i (client i's own loss). The weight m_i/M would make an
  embedding's step shrink with the cohort size; z_i here takes its own client's VJP unweighted.
* eq. 15 averages eta over "N clients" with M the total of all m_i; with partial participation
  the average runs over the clients whose update was accepted this round (FedAvg's convention).
* The hypernetwork's architecture is not given. Here (as in pFedHN): an embedding z_i per client
  (``embed_dim``), an MLP of ``hidden_layers`` ReLU layers of width ``hidden`` and one linear
  output head producing all of W^i. The head's bias starts at the model's initial Q/K/V and its
  weight at N(0, ``head_init_std``), so that round 1 starts from the same network every
  baseline starts from, with a small per-client perturbation.
* beta is not given, nor the optimiser: phi defaults to Adam at ``hn_lr`` = 0.01 (on Fashion-MNIST,
  50 clients, pathological split, 15 rounds: personalised accuracy 0.75 vs 0.70 at 1e-3, 0.34 at
  0.03, and 0.54 / 0.46 for plain SGD at beta = 1 / 0.1); each z_i takes plain SGD steps at
  ``embed_lr`` = 1 (eq. 20; 10 gave 0.77, within noise). Options beyond the paper, off by
  default for pFedHT (``PFedHN`` turns them on): SGD momentum and weight decay for phi
  (``hn_momentum``, ``hn_weight_decay``) and for z_i (``embed_momentum``, ``embed_weight_decay``),
  and gradient-norm clipping of phi's cohort gradient (``hn_clip``) and of each z_i's
  (``embed_clip``). rounds.parquet reports phi's gradient norm before clipping
  (``hn_grad_norm``) and how far the embeddings moved (``embed_drift``: the mean over clients of
  ||z_i - z_i(0)|| / ||z_i(0)||).
* the personalised model a client is *scored* with is P(HN(phi, z_i), eta) under the current
  phi, z_i and eta; the personalised evaluation therefore generates W for every client (that is
  evaluation cost, every ``rounds.eval_every`` rounds; training rounds generate for the cohort
  only). The server's global test metrics score the "population" model P(HN(phi, mean z), eta)
  (the mean embedding of the training clients).

New clients (paper section 4.4, Figure 7): with ``new_client_fraction`` > 0 that fraction of the
clients (a seeded draw) is held out of training. From round ``new_client_round`` on, cohorts are
drawn from the new clients only, and they learn ONLY their embedding: phi, its optimiser state and
eta stay frozen; the client trains W^i with eta fixed (the shared gradients are masked) and
uploads Delta W^i alone; the server steps z_i by eq. 20. ``adapt_embeddings`` is that update.

State (``PFedHTState``) is a plain picklable record: phi as numpy arrays, the optimiser's
``state_dict`` (deep-copied), the embeddings and eta; each ``aggregate`` rebuilds the torch
hypernetwork from it, so a checkpoint restores the hypernetwork and its optimiser exactly.
Server-side costs go to rounds.parquet: ``hn_generate_s``, ``hn_update_s``, ``hn_params``,
``hn_state_mb``, ``server_rss_mb``.

``PFedHN`` (below) is the same machinery with the personal part = every parameter: pFedHN, the
baseline that generates a whole (e.g. CNN) model per client. pFedHT without its hypernetwork
(Q/K/V kept on each client) is ``fedper`` with ``personal: qkv`` (raysim/algorithms/personal.py).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import psutil
import torch
from pydantic import Field, model_validator
from torch import nn

from raysim.algorithms import hooks
from raysim.algorithms.base import (
    GLOBAL,
    AlgoParams,
    Algorithm,
    ClientContext,
    ClientResult,
    ClientTask,
    Family,
    LinearSum,
    Metrics,
    RoundContext,
    RoundPlan,
    ServerContext,
    SetupContext,
    Traits,
    sample_cohort,
)
from raysim.algorithms.personal import PERSONAL_RANGES, mask_to_ranges, ranges_to_mask
from raysim.models.flat import ParamLayout, Params
from raysim.models.vit import personal_mask

ALL_PERSONAL = "personal/all"  # eval broadcast: (N, P) generated Q/K/V of every client
SALT_HN = 0x4EF7  # RNG purpose of the hypernetwork's and the embeddings' initialisation
SALT_NEW = 0x4E3C  # RNG purpose of the held-out (new) clients' draw


def client_key(cid: int) -> str:
    """Broadcast key of client ``cid``'s personalised model this round."""
    return f"client/{cid}"


class PFedHTParams(AlgoParams):
    embed_dim: Annotated[int, Field(ge=1)] = 16  # |z_i|
    hidden: Annotated[int, Field(ge=1)] = 64  # width of the hypernetwork's MLP
    hidden_layers: Annotated[int, Field(ge=1)] = 2
    head_init_std: Annotated[float, Field(ge=0)] = 0.01  # initial per-client spread of W^i
    embed_init_std: Annotated[float, Field(gt=0)] = 1.0  # z_i ~ N(0, std^2), as nn.Embedding
    hn_optimizer: Literal["sgd", "adam"] = "adam"  # the optimiser of phi (eq. 19: plain SGD)
    hn_lr: Annotated[float, Field(gt=0)] = 0.01  # beta of eq. 19 (Adam: a step of ~hn_lr per entry)
    hn_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0  # SGD only
    hn_weight_decay: Annotated[float, Field(ge=0)] = 0.0
    # phi's gradient (all tensors together) is rescaled to this L2 norm when longer
    hn_clip: Annotated[float, Field(gt=0)] | None = None
    # phi's steps a round: "cohort", one on the cohort's data-weighted gradient (eq. 17); "client",
    # one per client of the cohort, each on its own gradient (pFedHN's server loop)
    hn_step: Literal["cohort", "client"] = "cohort"
    embed_lr: Annotated[float, Field(gt=0)] = 1.0  # beta of eq. 20 (plain gradient step on z_i)
    # z_i's SGD step: momentum (one buffer per client, moved only when the client trains) and
    # weight decay (0, 0: eq. 20's plain step); embed_clip rescales each client's gradient to
    # this L2 norm when longer
    embed_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    embed_weight_decay: Annotated[float, Field(ge=0)] = 0.0
    embed_clip: Annotated[float, Field(gt=0)] | None = None
    # new-client generalisation (Figure 7): a held-out fraction of clients, personalised by
    # learning z only from round new_client_round on (0: never; they are only scored)
    new_client_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0
    new_client_round: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _consistent(self) -> PFedHTParams:
        if self.hn_optimizer == "adam" and self.hn_momentum > 0:
            raise ValueError(
                "hn_momentum is an SGD knob (Adam has its own): set it to 0 with hn_optimizer 'adam', "
                "or set hn_optimizer to 'sgd'"
            )
        if self.new_client_round > 0 and self.new_client_fraction <= 0:
            raise ValueError("new_client_round needs new clients: set new_client_fraction > 0 (e.g. 0.2)")
        return self


class PFedHNParams(PFedHTParams):
    """pFedHN's defaults: the settings of the authors' published experiments, as we read them
    (their code and paper): phi and the embeddings trained by SGD with momentum 0.9 and weight
    decay 1e-3, at lr 1e-2 for both, and the gradient's norm clipped at 50. Re-declared here, so a
    config switched from ``pfedht`` to ``pfedhn`` drops pFedHT's optimiser keys (a different
    setting) and keeps the architecture's."""

    hn_optimizer: Literal["sgd", "adam"] = "sgd"
    hn_lr: Annotated[float, Field(gt=0)] = 0.01
    hn_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    hn_weight_decay: Annotated[float, Field(ge=0)] = 1e-3
    hn_clip: Annotated[float, Field(gt=0)] | None = 50.0
    hn_step: Literal["cohort", "client"] = "client"
    embed_lr: Annotated[float, Field(gt=0)] = 0.01
    embed_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    embed_weight_decay: Annotated[float, Field(ge=0)] = 1e-3
    embed_clip: Annotated[float, Field(gt=0)] | None = 50.0


def build_hypernet(embed_dim: int, hidden: int, hidden_layers: int, out_dim: int) -> nn.Sequential:
    """phi: z (k, embed_dim) -> W (k, out_dim), an MLP with one linear output head."""
    layers: list[nn.Module] = [nn.Linear(embed_dim, hidden), nn.ReLU()]
    for _ in range(hidden_layers - 1):
        layers += [nn.Linear(hidden, hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden, out_dim))
    return nn.Sequential(*layers)


def new_clients(num_clients: int, fraction: float, seed: int) -> np.ndarray:
    """The held-out clients: round(fraction * N) of them (at least one when fraction > 0, at
    most N - 1), a seeded draw, sorted."""
    if fraction <= 0:
        return np.zeros(0, dtype=np.int64)
    k = min(num_clients - 1, max(1, round(fraction * num_clients)))
    rng = np.random.default_rng([seed, SALT_NEW])
    return np.sort(rng.choice(num_clients, size=k, replace=False)).astype(np.int64)


def clip_norm(grads: Sequence[torch.Tensor], max_norm: float | None) -> float:
    """The L2 norm of all ``grads`` together, before they are scaled in place to ``max_norm``
    when longer (None: not clipped)."""
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    if max_norm is not None and norm > max_norm:
        for g in grads:
            g.mul_(max_norm / norm)
    return norm


def embed_drift(state: PFedHTState) -> float:
    """How far the embeddings moved from their initialisation: the mean over clients of
    ||z_i - z_i(0)|| / ||z_i(0)|| (NaN for a state without the initial embeddings)."""
    if state.z0 is None:
        return float("nan")
    moved = np.linalg.norm(state.z - state.z0, axis=1) / np.maximum(np.linalg.norm(state.z0, axis=1), 1e-12)
    return float(moved.mean())


def personal_size(ranges: np.ndarray) -> int:
    """How many entries [start, stop) ranges cover."""
    return int((ranges[:, 1] - ranges[:, 0]).sum()) if len(ranges) else 0


def vjp_grads(
    hn: nn.Module, z: torch.Tensor, delta: torch.Tensor, weights: torch.Tensor, train_phi: bool
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The gradients of eq. 17 (phi, data-weighted over the cohort) and eq. 20 (each z_i, its own
    client's) of the pseudo-loss <HN(phi, z_i), -Delta W^i>: vector-Jacobian products of the
    hypernetwork's output with -Delta W. ``train_phi`` False: phi's gradients are not computed
    (an empty list)."""
    zc = z.detach().clone().requires_grad_(True)
    out = hn(zc)
    phi = list(hn.parameters())
    g_phi: list[torch.Tensor] = []
    if train_phi:
        g_phi = list(
            torch.autograd.grad(
                outputs=out, inputs=phi, grad_outputs=-delta * weights[:, None], retain_graph=True
            )
        )
    (g_z,) = torch.autograd.grad(outputs=out, inputs=[zc], grad_outputs=-delta)
    return g_phi, g_z


@dataclass(frozen=True, kw_only=True)
class PFedHTState:
    shared: np.ndarray  # eta in the full flat vector (personal entries: the initial Q/K/V)
    ranges: np.ndarray  # the personal entries as [start, stop) ranges
    phi: tuple[np.ndarray, ...]  # the hypernetwork's parameters, in module order
    opt: Mapping[str, Any]  # its optimiser's state_dict (deep copy)
    z: np.ndarray  # (N, embed_dim) float32 client embeddings
    # z_i's momentum buffers (N, embed_dim) and the initial embeddings (for ``embed_drift``);
    # None in a state made without them (zero buffers; no drift: NaN)
    z_mom: np.ndarray | None = None
    z0: np.ndarray | None = None
    new: np.ndarray  # held-out (new) client ids, sorted
    generate_s: float = 0.0  # the last configure_round's hypernetwork time
    grad_norm: float = float("nan")  # the last phi gradient's L2 norm, before clipping
    generated: int = 0  # how many clients it generated W for


class PFedHT(Algorithm):
    name: ClassVar[str] = "pfedht"
    family: ClassVar[Family] = "personalised"
    test_accuracy_means: ClassVar[str] = (
        "the population model (the hypernetwork at the training clients' mean embedding) on the "
        "global test set; each client's generated model is scored in personal_accuracy_mean"
    )
    params_model: ClassVar[type[AlgoParams]] = PFedHTParams
    # per-client Delta W feeds the hypernetwork's VJP: results are not pre-summed. No client
    # state: W^i comes from the server every round, so a client may train on any actor.
    traits = Traits()

    # -- the hypernetwork --------------------------------------------------------------------
    def _module(self, state: PFedHTState) -> nn.Sequential:
        p = self.p
        hn = build_hypernet(p.embed_dim, p.hidden, p.hidden_layers, personal_size(state.ranges))
        with torch.no_grad():
            for param, arr in zip(hn.parameters(), state.phi, strict=True):
                param.copy_(torch.from_numpy(arr))
        return hn

    def _optimizer(self, hn: nn.Module, saved: Mapping[str, Any] | None) -> torch.optim.Optimizer:
        p = self.p
        opt: torch.optim.Optimizer
        if p.hn_optimizer == "adam":
            opt = torch.optim.Adam(hn.parameters(), lr=p.hn_lr, weight_decay=p.hn_weight_decay)
        else:
            opt = torch.optim.SGD(
                hn.parameters(), lr=p.hn_lr, momentum=p.hn_momentum, weight_decay=p.hn_weight_decay
            )
        if saved is not None:
            opt.load_state_dict(copy.deepcopy(dict(saved)))
            for group in opt.param_groups:  # the configured knobs win over the checkpoint's
                group["lr"], group["weight_decay"] = p.hn_lr, p.hn_weight_decay
                if p.hn_optimizer == "sgd":
                    group["momentum"] = p.hn_momentum
        return opt

    def generate(self, state: PFedHTState, client_ids: Sequence[int]) -> np.ndarray:
        """W^i = HN(phi, z_i) for the given clients: (len(ids), P) float32 (eq. 11)."""
        if len(client_ids) == 0:
            return np.zeros((0, personal_size(state.ranges)), dtype=np.float32)
        hn = self._module(state)
        with torch.no_grad():
            out = hn(torch.from_numpy(state.z[np.asarray(client_ids, dtype=np.int64)]))
        return out.numpy().astype(np.float32)

    def personalised(self, state: PFedHTState, w: np.ndarray) -> np.ndarray:
        """P(W, eta): the shared vector with the personal entries replaced by ``w``."""
        full = state.shared.copy()
        full[ranges_to_mask(state.ranges, full.size)] = w
        return full

    # -- server ------------------------------------------------------------------------------
    def check_model(self, layout: ParamLayout) -> None:
        self.personal_part(layout)

    def personal_part(self, layout: ParamLayout) -> np.ndarray:
        """The entries the hypernetwork generates: the Q/K/V projections (eq. 11)."""
        return personal_mask(layout)  # ValueError for a model without Q/K/V projections

    def init(self, params: Params, ctx: SetupContext) -> PFedHTState:
        mask = self.personal_part(ctx.layout)
        p = self.p
        base = params.astype(np.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(np.random.SeedSequence([ctx.seed, SALT_HN]).generate_state(1)[0]))
            hn = build_hypernet(p.embed_dim, p.hidden, p.hidden_layers, int(mask.sum()))
            head = hn[-1]
            assert isinstance(head, nn.Linear)
            with torch.no_grad():
                head.weight.normal_(0.0, p.head_init_std)
                head.bias.copy_(torch.from_numpy(base[mask]))  # round 1 starts from the shared init
        rng = np.random.default_rng([ctx.seed, SALT_HN])
        z = (rng.standard_normal((ctx.num_clients, p.embed_dim)) * p.embed_init_std).astype(np.float32)
        return PFedHTState(
            shared=base,
            ranges=mask_to_ranges(mask),
            phi=tuple(t.detach().numpy().copy() for t in hn.parameters()),
            opt=copy.deepcopy(self._optimizer(hn, None).state_dict()),
            z=z,
            z_mom=np.zeros_like(z),
            z0=z.copy(),
            new=new_clients(ctx.num_clients, p.new_client_fraction, ctx.seed),
        )

    def new_client_phase(self, round_idx: int) -> bool:
        """True in the rounds where the held-out clients learn their embeddings."""
        return self.p.new_client_round > 0 and round_idx >= self.p.new_client_round

    def configure_round(self, state: PFedHTState, rnd: RoundContext) -> tuple[PFedHTState, RoundPlan]:
        t0 = time.perf_counter()
        phase_new = self.new_client_phase(rnd.round_idx)
        pool = rnd.available[np.isin(rnd.available, state.new) == phase_new]
        cohort = sample_cohort(pool, rnd.cohort_size, rnd.rng)
        w = self.generate(state, cohort)  # the cohort only, one batched pass (eq. 11)
        broadcast: dict[str, np.ndarray] = {
            client_key(c): self.personalised(state, w[j]) for j, c in enumerate(cohort)
        }
        extra: tuple[str, ...] = ()
        if phase_new:  # new clients train W^i with eta frozen: they need to know which is which
            broadcast[PERSONAL_RANGES] = state.ranges
            extra = (PERSONAL_RANGES,)
        tasks = [
            ClientTask(client_id=c, model_key=client_key(c), hparams=rnd.hparams, broadcast_keys=extra)
            for c in cohort
        ]
        state = replace(state, generate_s=time.perf_counter() - t0, generated=len(cohort))
        return state, RoundPlan(tasks=tasks, broadcast=broadcast)

    def aggregate(
        self, state: PFedHTState, results: Sequence[ClientResult | LinearSum], server: ServerContext
    ) -> tuple[PFedHTState, Metrics]:
        t0 = time.perf_counter()
        got = sorted(
            (r for r in results if isinstance(r, ClientResult) and r.delta is not None),
            key=lambda r: r.client_id,
        )
        m: Metrics = {"aggregated_clients": float(len(got))}
        state = replace(state, grad_norm=float("nan"))  # set again only by a step of phi
        if got:
            ids = [r.client_id for r in got]
            n = np.array([r.num_examples for r in got], dtype=np.float64)
            if self.new_client_phase(server.round_idx):
                state = self.adapt_embeddings(state, ids, np.stack([r.delta for r in got]))  # type: ignore[misc]
            else:
                state = self._train_step(state, ids, n, np.stack([r.delta for r in got]))  # type: ignore[misc]
        m["hn_update_s"] = time.perf_counter() - t0
        m["hn_grad_norm"] = state.grad_norm
        m["embed_drift"] = embed_drift(state)
        m["hn_generate_s"] = state.generate_s
        m["hn_generated"] = float(state.generated)
        m["hn_params"] = float(sum(a.size for a in state.phi))
        m["hn_state_mb"] = self.state_bytes(state) / 2**20
        m["server_rss_mb"] = psutil.Process(os.getpid()).memory_info().rss / 2**20
        return state, m

    def _train_step(
        self, state: PFedHTState, ids: list[int], n: np.ndarray, deltas: np.ndarray
    ) -> PFedHTState:
        """eq. 15 for eta, eq. 17/19 for phi and eq. 18/20 for the cohort's z_i."""
        mask = ranges_to_mask(state.ranges, state.shared.size)
        weights = n / n.sum()  # m_i / M over the accepted cohort
        shared = state.shared.astype(np.float64)
        shared[~mask] += (weights[:, None] * deltas[:, ~mask].astype(np.float64)).sum(0)  # eq. (15)
        hn = self._module(state)
        opt = self._optimizer(hn, state.opt)
        idx = np.asarray(ids, dtype=np.int64)
        dw = torch.from_numpy(np.ascontiguousarray(deltas[:, mask], dtype=np.float32))
        z = torch.from_numpy(state.z[idx])
        # "cohort": one step on the data-weighted cohort gradient; "client": one step per client
        # (client-id order, each unweighted at the phi the previous step left)
        steps = (
            [slice(0, len(idx))] if self.p.hn_step == "cohort" else [slice(j, j + 1) for j in range(len(idx))]
        )
        w = (
            torch.from_numpy(weights.astype(np.float32))
            if self.p.hn_step == "cohort"
            else torch.ones(len(idx))
        )
        norms, rows = [], []
        for sl in steps:
            g_phi, g_z = vjp_grads(hn, z[sl], dw[sl], w[sl], train_phi=True)
            for param, g in zip(hn.parameters(), g_phi, strict=True):
                param.grad = g
            norms.append(clip_norm(g_phi, self.p.hn_clip))
            opt.step()  # eq. (19)
            rows.append(g_z.numpy())
        state = self.step_embeddings(state, idx, np.concatenate(rows))  # eq. (20)
        norm = float(np.mean(norms))
        return replace(
            state,
            shared=shared.astype(np.float32),
            phi=tuple(t.detach().numpy().copy() for t in hn.parameters()),
            opt=copy.deepcopy(opt.state_dict()),
            grad_norm=norm,
        )

    def step_embeddings(self, state: PFedHTState, idx: np.ndarray, g_z: np.ndarray) -> PFedHTState:
        """z_i's SGD step for the clients ``idx`` with their gradients ``g_z`` (k, embed_dim): each
        row clipped to ``embed_clip``, plus ``embed_weight_decay`` z_i, through client i's own
        momentum buffer, times ``embed_lr`` (all off: eq. 20's plain step z_i - beta_z g_i)."""
        p = self.p
        g = g_z.astype(np.float64)
        if p.embed_clip is not None:
            norms = np.linalg.norm(g, axis=1, keepdims=True)
            g = g * np.minimum(1.0, p.embed_clip / np.maximum(norms, 1e-12))
        z = state.z.copy()
        mom = np.zeros_like(z) if state.z_mom is None else state.z_mom.copy()
        g = g + p.embed_weight_decay * z[idx]
        if p.embed_momentum > 0:
            g = p.embed_momentum * mom[idx] + g
            mom[idx] = g
        z[idx] = (z[idx] - p.embed_lr * g).astype(np.float32)
        return replace(state, z=z, z_mom=mom.astype(np.float32))

    def adapt_embeddings(self, state: PFedHTState, ids: Sequence[int], delta_w: np.ndarray) -> PFedHTState:
        """New clients: z_i <- z_i - beta_z (dW^i/dz_i)^T (-Delta W^i) (eq. 20) with phi, its
        optimiser state and eta frozen. ``delta_w``: (k, P) updates of the personal part."""
        hn = self._module(state)
        idx = np.asarray(ids, dtype=np.int64)
        _, g_z = vjp_grads(
            hn,
            torch.from_numpy(state.z[idx]),
            torch.from_numpy(np.ascontiguousarray(delta_w, dtype=np.float32)),
            torch.ones(len(idx)),
            train_phi=False,
        )
        return self.step_embeddings(state, idx, g_z.numpy())

    def state_bytes(self, state: PFedHTState) -> int:
        """What the hypernetwork holds on the server: phi, the embeddings and the optimiser state."""
        opt = sum(
            int(v.numel() * v.element_size())
            for per in state.opt.get("state", {}).values()
            for v in per.values()
            if isinstance(v, torch.Tensor)
        )
        return int(sum(a.nbytes for a in state.phi) + state.z.nbytes + opt)

    def server_model(self, state: PFedHTState) -> Params:
        """The population model P(HN(phi, mean z), eta), mean over the training clients."""
        held = np.zeros(state.z.shape[0], dtype=bool)
        held[state.new] = True
        zbar = state.z[~held].mean(0, keepdims=True)
        hn = self._module(state)
        with torch.no_grad():
            w = hn(torch.from_numpy(zbar))[0].numpy()
        return self.personalised(state, w)

    def eval_broadcast(self, state: PFedHTState) -> Mapping[str, np.ndarray]:
        """eta, the ranges, and W^i of every client (personalised evaluation scores them all)."""
        everyone = self.generate(state, list(range(state.z.shape[0])))
        return {GLOBAL: state.shared, PERSONAL_RANGES: state.ranges, ALL_PERSONAL: everyone}

    def client_annotations(self, state: PFedHTState) -> Mapping[int, Mapping[str, float]]:
        return {int(c): {"new_client": 1.0} for c in state.new}

    # -- client ------------------------------------------------------------------------------
    def client_update(self, task: ClientTask, params: Params, client: ClientContext) -> ClientResult:
        """Train P(W^i, eta) locally; return both parts' update, or with eta frozen (a new
        client: the task reads PERSONAL_RANGES) the update of W^i alone."""
        if PERSONAL_RANGES in task.broadcast_keys:
            mask = ranges_to_mask(client.broadcast[PERSONAL_RANGES], params.size)
            fit = client.fit(params, grad_hook=hooks.masked(mask), hparams=task.hparams)
            delta = (fit.params - params)[mask]
        else:
            fit = client.fit(params, grad_hook=None, hparams=task.hparams)
            delta = fit.params - params
        return ClientResult(
            client_id=task.client_id,
            num_examples=fit.num_examples,
            delta=delta.astype(np.float32),
            model_key=task.model_key,
            metrics={"train_loss": fit.loss},
        )

    def personal_params(self, broadcast: Mapping[str, np.ndarray], client: ClientContext) -> Params:
        """P(HN(phi, z_i), eta) for this client."""
        full = np.array(broadcast[GLOBAL], dtype=np.float32)
        full[ranges_to_mask(broadcast[PERSONAL_RANGES], full.size)] = broadcast[ALL_PERSONAL][
            client.client_id
        ]
        return full


class PFedHN(PFedHT):
    """pFedHN (Shamsian et al. 2021, "Personalized Federated Learning using Hypernetworks"), the
    baseline of paper 003's Tables 1, 3 and 4: the hypernetwork generates ALL of a client's
    weights (any registry model, e.g. cnn-small), nothing is shared, and phi and z_i learn from
    the clients' Delta theta_i by the same vector-Jacobian product (pFedHN's eq. 4-5).

    Differences from the published algorithm, all shared with pFedHT above: one linear output
    head for the whole flat vector (the same function class as pFedHN's one head per layer,
    stacked), its bias starting at the runtime's initial model, and the clients of a round all
    training from the round's start (the reference trains one client at a time).

    Defaults (``PFedHNParams``): the optimiser settings of the authors' experiments, not pFedHT's
    Adam at 0.01, and their server loop's one hypernetwork step per client (``hn_step: client``:
    each client of the cohort in turn, on its own unweighted gradient; the reference generates
    each client's model from the phi the previous step left, here every client of a round trained
    from the round's start). Adam moves every generated weight by about hn_lr x ||h||_1 in its first steps
    whatever the layer's scale, which a whole generated CNN (weights ~ +-0.025) does not survive.
    Here phi takes SGD at 1e-2 with momentum 0.9 and weight decay 1e-3, its gradient's norm clipped
    at 50; the embeddings take the same SGD (lr 1e-2, momentum 0.9, weight decay 1e-3) with each
    client's gradient clipped at 50. The reference clips phi and the one sampled client's embedding
    together and, with one optimiser over a dense embedding table, decays and carries momentum for
    every embedding at every step; here phi and each z_i are clipped separately and z_i's decay and
    momentum move only in the rounds client i trains."""

    name: ClassVar[str] = "pfedhn"
    params_model: ClassVar[type[AlgoParams]] = PFedHNParams

    def personal_part(self, layout: ParamLayout) -> np.ndarray:
        return np.ones(layout.size, dtype=bool)
