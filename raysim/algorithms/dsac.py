"""DSAC: Dynamic Sub-model Aggregation and Clustering via hierarchical FL with pre-training.

Paper: J. Wang et al., "Dynamic Sub-Model Aggregation and Clustering for Intelligence Data via
Hierarchical Federated Learning with Pre-Training" (paper 000, docs/papers.md),
Algorithm 1. The pure math lives in ``raysim.algorithms.dsac_math`` and ``raysim.clustering``; this
module wires it into the round loop. Every mechanism has a switch (``DSACParams``), so the ablation of
Table 6 is a config change. docs/dsac.md explains each reading of the paper and why.

One round t (Algorithm 1, lines 3-21):

* **Pre-training (eq. 9)**, before round 1 (line 1): the initial model is trained for
  ``pretrain_epochs`` on the public ("historical") split no client holds (``data.public_fraction`` >
  0; ``raysim.algorithms.pretrain``, the helper the baselines' ``init_from: pretrained`` shares) and
  kept as M_base; its test accuracy is logged as ``base_test_accuracy``. Local objectives then carry
  λ‖M − M_base‖², i.e. the gradient hook adds 2λ(M − M_base) (``hooks.proximal(base, 2λ)``). M_base
  is broadcast as its own key ``"base"``.
* **Decomposition (eq. 1)**: ``SubModelPartition.from_layout`` splits the flat vector into K contiguous
  runs of whole layers (fixed, structured; neither learned nor random). K is clamped to the model's
  layer blocks with a warning: cnn-small has 3 (conv1, conv2, fc), mlp 3 (three Linear layers),
  cnn-mcmahan 4, cnn-cifar 8. ``decomposition: false`` means K = 1 (the whole model).
* **Assignment rule** (``dsac_math.assign_submodels``): the sorted cohort c_0 < ... < c_{n-1}; client
  c_j trains the p = max(``submodels_per_client``, ceil(K/n)) consecutive sub-models starting at
  (t + floor(j·K/n)) mod K. Every sub-model goes to at least one client every round, and the starts
  rotate by one each round. Training is masked (the gradient, weight decay included, is zeroed outside
  the assigned sub-models: the decay is applied in the hook before the mask, so ``local.weight_decay``
  never moves a layer the client was not assigned); a client uploads only its assigned sub-vectors
  (``extras["sub/k"]``, no full delta), so ``upload_bytes`` counts sub-model bytes. It downloads the
  full model (the forward pass needs every layer).
* **Which model a client trains from** (``staleness``): ``sync`` (default): the current global model,
  every round. ``last_model``: the model it last received: a participating client receives the
  aggregated model at the end of its round and, when next selected, trains from that version however
  many rounds old (never-selected clients hold the initial model). The update is applied to the current
  model, so it is Δt versions stale, Δt the rounds the client missed: an asynchronous, stale-client
  setting in which eq. (14)'s decay discounts real staleness. The server keeps every version some
  client still holds: at most min(N, rounds) + 1 models (``DSACState.versions``).
* **Feature vector D_u** (Algorithm 1 line 9, eq. 11): the mean penultimate-layer activation of the
  client's training data under the model it trains from (before local training and without its input
  adapter): it describes the client's data as the shared model sees it (labels never leave). A forward
  pass over the local data costs about half a local epoch on CPU, so the server asks for D_u only in
  rounds that regroup and from clients it has none of yet (``extras["want_feature"]``); the server
  keeps each client's latest D_u.
* **Feature mapping (eq. 10)**, ``feature_mapping: true``: a per-client input adapter z = W⊙x + b with a
  diagonal W (one scale and one shift per input value), kept in ``client.state``, trained jointly with
  the sub-models at the local learning rate and used for the client's personalised evaluation. It
  never leaves the client. The server's global test set has no adapter. Off by default (see docs/dsac.md).
* **Client grouping (eq. 11-12)**, lines 13-16, every ``cluster_every`` = E_c rounds (and in every round
  until a first grouping exists): cosine similarity of the D_u, an average-linkage dendrogram suggests
  the number of groups (largest merge-height gap, at most ``max_groups``), spherical K-means forms the
  groups and eq. (12) names each group's central client. ``hierarchical_clustering: false`` is flat
  (Euclidean) K-means on the D_u with k = ``max_groups``. Between regroupings a client that uploads its
  first D_u joins the group whose mean D_u is most similar (cosine).
* **Temporal decay (eq. 14)**, ``dynamic_weights: true``: client u's weight is
  w_u(t) = w_u · exp(−γ Δt) (``dsac_math.temporal_decay``), w_u its data size over the mean data
  size, Δt the rounds it missed since it last contributed (0 when it also contributed the previous
  round; round 0 = the shared start). A client whose decay factor exp(−γ Δt) falls below
  ``weight_floor`` counts as dropped: its update is excluded this round (it then receives the current
  model, so its clock restarts). Off: w_u(t) = w_u.
* **Update clustering and combination (eq. 3-6, lines 17-19)**, per sub-model: K-means of the kept
  clients' updates (C = ``num_clusters``), the clusters' plain centres (eq. 4) combined with
  α_c ∝ |S_c| exp(−β Var(S_c)) (eq. 6, renormalised; ``dsac_math.cluster_weights``), then the decayed
  weights w_u(t) applied to each client's share of that combination and renormalised
  (``dsac_math.clustered_merge``: decay after combining, line 19). Var(S_c) is measured on updates
  divided by their RMS norm, so β is dimensionless. ``variance_prior`` = n0 > 0 shrinks each cluster's
  variance toward the spread of all updates (``dsac_math.shrunk_variances``; our variant: eq. 6 as
  written gives a one-member cluster variance 0 and the largest trust per client).
* **Hierarchy (lines 13-20, eq. 13)**, ``hierarchical_clustering: true``: the combination above runs
  *within each client group*, giving the group's update Δ_g (its model M_g = m + η_g Δ_g, eq. 13);
  the global update is Σ_g ω_g Δ_g with ω_g the group's share of decayed client weight
  (``dsac_math.two_level_merge``). So eq. (6)'s variance trust moves weight only between clients of
  similar data and every group keeps its data share. ``false``: one level, the combination runs over
  the whole cohort (groups still give the personalised M_g). m_k ← m_k + η_g Δ_k (eq. 5); a
  sub-model whose every client dropped keeps its previous values; recombination (eq. 7) is a scatter.
* **Sub-model weights (eq. 15)**: β_k = data size behind sub-model k / total. Sub-models are disjoint
  slices, so recombination (eq. 7) is a plain scatter and β_k cannot weight it; it weights the global
  loss of eq. (8): L_global = Σ_k β_k L_k, L_k the data-weighted training loss of sub-model k's clients
  (β_k = 1/K reproduces the paper's plain mean). Logged every round. L_k is the clients' loss during
  local training, i.e. before the merge (the merged model is not re-scored on client data).
* **Personalisation (eq. 13)**: a client is scored with its group's model M_g after one full-batch
  gradient step of size ε on its local training data (m_u = M_g − ε∇L_u(M_g); the paper's "+" is a
  sign slip for a loss); the global model while it is ungrouped.
* **Loss (eq. 2)**: local training uses cross-entropy, as every raysim algorithm; the paper writes a
  squared error ‖y − m_k(x)‖² (the trainer has no squared-error option yet; docs/dsac.md).
* **Convergence stop**: with ``converge_tol`` > 0 training stops (empty cohorts) once |ΔL_global| <
  tol for ``converge_patience`` consecutive rounds. The global model is archived into the state at
  that round and at the last round (``DSACState.archive``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from raysim.algorithms import dsac_aggregate as da
from raysim.algorithms import hooks
from raysim.algorithms.base import (
    GLOBAL,
    AlgoParams,
    Algorithm,
    ClientColumns,
    ClientContext,
    ClientResult,
    ClientTask,
    Family,
    GradHook,
    LinearSum,
    Metrics,
    RoundContext,
    RoundPlan,
    ServerContext,
    SetupContext,
    Traits,
    plain_sgd,
    sample_cohort,
)
from raysim.algorithms.dsac_math import (
    SubModelPartition,
    assign_submodels,
    temporal_decay,
)
from raysim.algorithms.pretrain import base_metrics, pretrain
from raysim.metrics import jain_index
from raysim.models.flat import Params


class DSACParams(AlgoParams):
    """DSAC's knobs (``algorithm:`` section). Defaults follow the paper's Table 4 where it has one."""

    # K of eq. (1): sub-models per global model (Table 4: 5). Clamped, with a warning, to the model's
    # layer blocks: cnn-small and mlp have 3, cnn-mcmahan 4, cnn-cifar 8.
    num_submodels: Annotated[int, Field(ge=1)] = 5
    # sub-models each client trains per round (raised to ceil(K / cohort) so all are trained); 1 costs
    # ~17 accuracy points on pathological Fashion-MNIST in 10 rounds, 2 matches FedAvg (docs/dsac.md)
    submodels_per_client: Annotated[int, Field(ge=1)] = 2
    # C of eq. (4): K-means clusters of one sub-model's client updates (Table 4: 3)
    num_clusters: Annotated[int, Field(ge=1)] = 3
    # β of eq. (6): variance penalty; Var is relative to the updates' mean squared norm (dimensionless)
    beta: Annotated[float, Field(ge=0)] = 1.0
    # n0 of the variance prior (our variant of eq. 6): each cluster's variance is shrunk toward the
    # spread of all updates as if it had n0 more members; 0 = eq. (6) as the paper writes it
    variance_prior: Annotated[float, Field(ge=0)] = 0.0
    # γ of eq. (14): temporal decay per missed round (Table 4: 0.05)
    decay: Annotated[float, Field(ge=0)] = 0.05
    # a client whose decay factor exp(-γ Δt) is below this is dropped for the round (0: never)
    weight_floor: Annotated[float, Field(ge=0, lt=1)] = 0.6
    # "sync": clients train from the current global model (the decay is a participation-recency
    # weight); "last_model": from the model they last received (stale updates: the decay discounts
    # real staleness; the server keeps the versions clients hold)
    staleness: Literal["sync", "last_model"] = "sync"
    # E_c of Algorithm 1: re-group clients every E_c rounds
    cluster_every: Annotated[int, Field(ge=1)] = 5
    # upper bound on client groups (the dendrogram's suggestion is capped; flat k-means uses it as k)
    max_groups: Annotated[int, Field(ge=1)] = 4
    # cut the dendrogram at this cosine distance instead of at its largest gap (None: largest gap)
    group_threshold: Annotated[float, Field(gt=0, le=2)] | None = None
    # λ of eq. (9): pull toward the pre-trained base model (gradient 2λ(M - M_base))
    lambda_pretrain: Annotated[float, Field(ge=0)] = 0.05
    # epochs of pre-training on the public split before round 1
    pretrain_epochs: Annotated[int, Field(ge=1)] = 5
    # pre-training learning rate (None: local.lr)
    pretrain_lr: Annotated[float, Field(gt=0)] | None = None
    # ε of eq. (13): personalised fine-tuning step (one full-batch gradient step); 0 disables it
    finetune_eps: Annotated[float, Field(ge=0)] = 0.01
    # None: that step is one full-batch gradient (eq. 13 exactly; memory grows with the local data);
    # a number caps the batch, making the fine-tuning one local epoch of SGD at lr ε with that batch
    finetune_batch: Annotated[int, Field(ge=1)] | None = None
    # eq. (10): learn a per-client diagonal input map kept on the client
    feature_mapping: bool = False
    # the switches of the ablation (Table 6)
    pretraining: bool = True  # eq. (9); needs data.public_fraction > 0
    decomposition: bool = True  # eq. (1)/(7); false: K = 1
    # eq. (11)-(13): true: dendrogram + spherical k-means groups, and the update combination runs
    # within each group, then across groups; false: flat k-means groups (personalisation only) and
    # one combination over the whole cohort
    hierarchical_clustering: bool = True
    dynamic_weights: bool = True  # eq. (14); false: data-size weights, nobody dropped
    # η_g: server step on the merged update (1 = eq. 5 as written)
    central_lr: Annotated[float, Field(gt=0)] = 1.0
    # stop training once |L_global(t) - L_global(t-1)| < converge_tol for converge_patience rounds (0: never)
    converge_tol: Annotated[float, Field(ge=0)] = 0.0
    converge_patience: Annotated[int, Field(ge=1)] = 3


@dataclass(frozen=True, kw_only=True)
class DSACState:
    params: np.ndarray  # the global model M
    base: np.ndarray | None  # M_base of eq. (9), None without pre-training
    partition: SubModelPartition
    group_models: Mapping[int, np.ndarray]  # M_g of eq. (13)
    assign: np.ndarray  # (N,) int64 group of each client, -1: not grouped yet
    medoids: np.ndarray  # (groups,) central client of each group (eq. 12), -1: empty
    features: np.ndarray | None  # (N, d) latest D_u per client (rows of never-seen clients are 0)
    has_feature: np.ndarray  # (N,) bool
    base_weight: np.ndarray  # (N,) w_u: data size / mean data size
    last_round: np.ndarray  # (N,) int64 last round a client contributed (0: the shared start)
    weight_now: np.ndarray  # (N,) weight used in the last aggregation it took part in (0: dropped)
    cum_weight: np.ndarray  # (N,) cumulative share of aggregation weight (Jain's index of Table 2)
    # ground-truth groups (-1: none); unused since the runtime scores the clusters (cluster_nmi),
    # kept so saved checkpoints still load
    truth: np.ndarray | None
    num_rounds: int
    base_accuracy: float = math.nan  # M_base on the test set (round 0), NaN without pre-training
    base_loss: float = math.nan
    # staleness "last_model": global model v (the model at the start of round v) for every v that
    # some client still holds, except the current one (``params``); client c holds last_round[c] + 1
    versions: Mapping[int, np.ndarray] = field(default_factory=dict)
    loss_history: tuple[float, ...] = ()
    converged_round: int = 0
    grouped_round: int = 0
    archive: tuple[tuple[int, np.ndarray], ...] = field(default_factory=tuple)


def _identity_adapter() -> tuple[np.ndarray, np.ndarray]:
    # size-1 arrays: the trainer expands them to one input's shape (scale 1, shift 0)
    return np.ones(1, np.float32), np.zeros(1, np.float32)


BASE = "base"  # broadcast key of M_base (eq. 9)


def version_key(v: int) -> str:
    """Broadcast key of global model version v (the model at the start of round v)."""
    return f"version/{v}"


def _decay_hook(weight_decay: float) -> GradHook:
    """grad += wd * w, as the trainer's own weight decay, but placed before the sub-model mask."""

    def hook(w: Any, g: Any) -> None:
        g.add_(w, alpha=weight_decay)

    return hook


class DSAC(Algorithm):
    name: ClassVar[str] = "dsac"
    family: ClassVar[Family] = "clustered"
    test_accuracy_means: ClassVar[str] = (
        "the one global model every client trains, on the global test set; each group's "
        "personalised model (eq. 13) is scored in personal_accuracy"
    )
    params_model: ClassVar[type[AlgoParams]] = DSACParams
    p: DSACParams

    def __init__(self, params: AlgoParams | None = None) -> None:
        super().__init__(params)
        # only the eq. (10) input map lives on the client: without it any actor may train a client;
        # pre-training (eq. 9) fits on the server's public split
        self.traits = Traits(
            client_state=self.p.feature_mapping,
            public_split=self.p.pretraining,
            public_split_off="algorithm.pretraining: false",
        )

    # -- server: set-up --------------------------------------------------------------------
    def init(self, params: Params, ctx: SetupContext) -> DSACState:
        p = self.p
        k = p.num_submodels if p.decomposition else 1
        partition = SubModelPartition.from_layout(ctx.layout, k)
        params = params.astype(np.float32)
        base = None
        base_acc = base_loss = math.nan
        if p.pretraining:
            pre = pretrain(
                params,
                ctx,
                epochs=p.pretrain_epochs,
                lr=p.pretrain_lr,
                who="algorithm.pretraining",
                switch="set algorithm.pretraining: false",
            )
            params = base = pre.params
            base_acc, base_loss = pre.test_accuracy, pre.test_loss
        n = ctx.num_clients
        sizes = np.asarray(ctx.client_sizes, dtype=np.float64)
        base_weight = sizes / sizes.mean() if sizes.size and sizes.mean() > 0 else np.ones(n)
        truth = None if ctx.client_groups is None else np.asarray(ctx.client_groups, dtype=np.int64)
        return DSACState(
            params=params,
            base=base,
            partition=partition,
            group_models={},
            assign=np.full(n, -1, np.int64),
            medoids=np.zeros(0, np.int64),
            features=None,
            has_feature=np.zeros(n, bool),
            base_weight=base_weight,
            last_round=np.zeros(n, np.int64),
            weight_now=np.zeros(n),
            cum_weight=np.zeros(n),
            truth=truth,
            num_rounds=ctx.num_rounds,
            base_accuracy=base_acc,
            base_loss=base_loss,
        )

    # -- server: step 1 --------------------------------------------------------------------
    def start_key(self, state: DSACState, client_id: int, t: int) -> str:
        """The broadcast key of the model a client trains from in round t: the current global model
        (``sync``), or the version it last received (``last_model``: held version last_round + 1;
        a version the server no longer holds falls back to the current model)."""
        if self.p.staleness == "sync":
            return GLOBAL
        v = int(state.last_round[client_id]) + 1
        return version_key(v) if v != t and v in state.versions else GLOBAL

    def configure_round(self, state: DSACState, rnd: RoundContext) -> tuple[DSACState, RoundPlan]:
        broadcast: dict[str, np.ndarray] = {GLOBAL: state.params}
        if state.base is not None:
            broadcast[BASE] = state.base
        if state.converged_round:
            return state, RoundPlan(tasks=[], broadcast=broadcast)
        cohort = sample_cohort(rnd.available, rnd.cohort_size, rnd.rng)
        k = state.partition.k
        subs = assign_submodels(cohort, k, rnd.round_idx, self.p.submodels_per_client)
        bounds = np.asarray(state.partition.bounds, np.int64)
        keys = (BASE,) if state.base is not None else ()
        regroup = rnd.round_idx % self.p.cluster_every == 0 or not state.grouped_round
        tasks = []
        for c in cohort:
            key = self.start_key(state, c, rnd.round_idx)
            if key != GLOBAL:
                broadcast[key] = state.versions[int(key.split("/")[1])]
            tasks.append(
                ClientTask(
                    client_id=c,
                    model_key=key,
                    hparams=rnd.hparams,
                    extras={
                        "submodels": np.asarray(subs[c], np.int64),
                        "bounds": bounds,
                        # D_u is needed where this round regroups, and from clients the server has none of
                        "want_feature": np.asarray(int(regroup or not state.has_feature[c])),
                    },
                    broadcast_keys=keys,
                )
            )
        return state, RoundPlan(tasks=tasks, broadcast=broadcast)

    # -- client ----------------------------------------------------------------------------
    def client_update(self, task: ClientTask, params: Params, client: ClientContext) -> ClientResult:
        bounds = np.asarray(task.extras["bounds"], np.int64)
        subs = [int(s) for s in task.extras["submodels"]]
        k = len(bounds) - 1
        want = int(task.extras.get("want_feature", 1))
        feature = np.asarray(client.embed(params), np.float32) if want else None  # D_u (Algorithm 1, l. 9)
        prox = None
        if BASE in client.broadcast and self.p.lambda_pretrain > 0:  # eq. (9)
            prox = hooks.proximal(client.broadcast[BASE], 2.0 * self.p.lambda_pretrain)
        hparams = task.hparams
        decay_hook = mask_hook = None
        if len(subs) < k:  # eq. (1): train only the assigned sub-models
            mask = np.zeros(int(bounds[-1]), bool)
            for s in subs:
                mask[bounds[s] : bounds[s + 1]] = True
            mask_hook = hooks.masked(mask)
            if hparams.weight_decay:  # the trainer adds weight decay after the hook: move it before the mask
                decay_hook = _decay_hook(hparams.weight_decay)
                hparams = replace(hparams, weight_decay=0.0)
        hook = hooks.chain(prox, decay_hook, mask_hook)
        if self.p.feature_mapping:  # eq. (10)
            adapter = client.state.get("adapter") or _identity_adapter()
            fit = client.fit(params, grad_hook=hook, adapter=adapter, hparams=hparams)
            client.state["adapter"] = fit.adapter
        else:
            fit = client.fit(params, grad_hook=hook, hparams=hparams)
        delta = (fit.params - params).astype(np.float32)
        extras = {f"sub/{s}": delta[bounds[s] : bounds[s + 1]].copy() for s in subs}
        if feature is not None:
            extras["feature"] = feature
        return ClientResult(
            client_id=task.client_id,
            num_examples=fit.num_examples,
            delta=None,
            model_key=task.model_key,
            metrics={"train_loss": fit.loss},
            extras=extras,
        )

    # -- server: step 5 --------------------------------------------------------------------
    def aggregate(
        self, state: DSACState, results: Sequence[ClientResult | LinearSum], server: ServerContext
    ) -> tuple[DSACState, Metrics]:
        """Algorithm 1, lines 9-20, as named steps (each reuses the tested ``dsac_math`` functions)."""
        t, rng = server.round_idx, server.rng
        res = [r for r in results if isinstance(r, ClientResult)]
        state = self._store_features(state, res)  # line 9
        assign, medoids, grouped = state.assign, state.medoids, state.grouped_round
        if res and (t % self.p.cluster_every == 0 or not grouped):  # lines 13-16, eq. (11)-(12)
            assign, medoids = da.regroup(self.p, state, rng)
            grouped = t
        else:
            assign = da.join_groups(state, assign, res)
        kept, last, weight_now, dropped, missed = self._decayed_weights(state, t, res)  # eq. (14)
        cum = state.cum_weight.copy()
        wsum = sum(w for _, w in kept)
        if wsum > 0:
            for r, w in kept:
                cum[r.client_id] += w / wsum
        merge = da.merge_submodels(self.p, state, kept, assign, rng)  # lines 17-20, eq. (3)-(7)
        group_models = da.group_models(state, merge, assign, self.p.central_lr)  # eq. (13)
        global_loss = da.global_loss(merge)  # eq. (15) + (8)
        history = state.loss_history + (global_loss,)
        converged = state.converged_round or (t if self._has_converged(history) else 0)
        archive = state.archive
        if t == state.num_rounds or (converged and converged == t):
            archive = archive + ((t, merge.params.copy()),)

        state = replace(
            state,
            params=merge.params,
            group_models=group_models,
            assign=assign,
            medoids=medoids,
            last_round=last,
            weight_now=weight_now,
            cum_weight=cum,
            versions=self._held_versions(state, last, t),
            loss_history=history,
            converged_round=converged,
            grouped_round=grouped,
            archive=archive,
        )
        m: Metrics = {
            "aggregated_clients": float(len(kept)),
            "dropped_by_floor": float(dropped),
            "dropout_rate": float(dropped / len(res)) if res else 0.0,
            "jain": jain_index(cum),
            "global_loss": global_loss,
            "num_groups": float(len(group_models)),
            "num_submodels": float(state.partition.k),
            "submodels_untouched": float(merge.untouched),
            "silhouette": float(np.mean(merge.silhouettes)) if merge.silhouettes else math.nan,
            "intra_cluster": float(np.mean(merge.intra)) if merge.intra else math.nan,
            "converged": float(bool(converged)),
            **base_metrics(state.base_accuracy, state.base_loss),
        }
        if res:  # in the last_model mode: how many versions stale the updates were
            m["rounds_missed_mean"] = float(np.mean(missed))
        if self.p.staleness == "last_model":
            m["versions_held"] = float(len(state.versions) + 1)
        return state, m

    def _held_versions(self, state: DSACState, last: np.ndarray, t: int) -> dict[int, np.ndarray]:
        """Staleness ``last_model``: the model versions some client still holds after round t (client
        c holds version last[c] + 1; version t + 1 is the new global model, kept as ``params``)."""
        if self.p.staleness == "sync":
            return {}
        held = {int(v) for v in np.unique(last + 1)} - {t + 1}
        out = {v: a for v, a in state.versions.items() if v in held}
        if t in held and t not in out:  # the model this round started from
            out[t] = state.params
        return out

    @staticmethod
    def _store_features(state: DSACState, res: Sequence[ClientResult]) -> DSACState:
        """Keep each client's latest uploaded D_u (Algorithm 1, line 9)."""
        features, has_feature = state.features, state.has_feature.copy()
        for r in res:
            f = r.extras.get("feature")
            if f is None:
                continue
            if features is None or features.shape[1] != f.size:
                features = np.zeros((len(has_feature), f.size), np.float32)
                has_feature[:] = False
            elif features is state.features:
                features = features.copy()
            features[r.client_id] = f
            has_feature[r.client_id] = True
        return replace(state, features=features, has_feature=has_feature)

    def decayed_weights(
        self, state: DSACState, t: int, client_ids: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Eq. (14) before normalisation: (w_u(t) = w_u exp(-γ Δt), Δt) for the given clients, Δt the
        rounds each missed since it last contributed; in the ``last_model`` mode Δt is also how many
        versions behind the current model its update was computed (the staleness)."""
        cids = np.asarray(client_ids, np.int64)
        missed = np.maximum(t - state.last_round[cids] - 1, 0) if cids.size else np.zeros(0, np.int64)
        base = state.base_weight[cids] if cids.size else np.zeros(0)
        if not self.p.dynamic_weights:
            return np.asarray(base, np.float64), missed
        return temporal_decay(base, missed, self.p.decay), missed

    def _decayed_weights(
        self, state: DSACState, t: int, res: Sequence[ClientResult]
    ) -> tuple[list[tuple[ClientResult, float]], np.ndarray, np.ndarray, int, np.ndarray]:
        """Eq. (14) for this round's results; a client whose decay factor is below the floor is
        dropped. Returns the kept (result, weight) pairs, last-contribution rounds, weights now, drops
        and each result's Δt."""
        p = self.p
        last = state.last_round.copy()
        weight_now = state.weight_now.copy()
        weights, missed = self.decayed_weights(state, t, [r.client_id for r in res])
        kept: list[tuple[ClientResult, float]] = []
        dropped = 0
        for r, w, dt in zip(res, weights, missed, strict=True):
            cid = r.client_id
            last[cid] = t
            if p.dynamic_weights and math.exp(-p.decay * float(dt)) < p.weight_floor:
                dropped += 1
                weight_now[cid] = 0.0
                continue
            weight_now[cid] = float(w)
            kept.append((r, float(w)))
        return kept, last, weight_now, dropped, missed

    def _has_converged(self, history: tuple[float, ...]) -> bool:
        """|L_global(t) - L_global(t-1)| < converge_tol for converge_patience rounds in a row."""
        p = self.p
        if p.converge_tol <= 0 or len(history) <= p.converge_patience:
            return False
        tail = np.asarray(history[-(p.converge_patience + 1) :])
        return bool(np.all(np.isfinite(tail)) and np.all(np.abs(np.diff(tail)) < p.converge_tol))

    def converged(self, state: DSACState) -> bool:
        return bool(state.converged_round)

    # -- broadcast, evaluation, logging ------------------------------------------------------
    def server_model(self, state: DSACState) -> Params:
        return state.params

    def eval_broadcast(self, state: DSACState) -> Mapping[str, Params]:
        out: dict[str, Params] = {GLOBAL: state.params, "assign": state.assign.astype(np.float32)}
        if state.base is not None:
            out[BASE] = state.base
        for g, mg in state.group_models.items():
            out[f"group/{g}"] = mg
        return out

    def personal_params(self, broadcast: Mapping[str, np.ndarray], client: ClientContext) -> Params:
        """Eq. (13): the client's group model M_g (the global model while ungrouped), then one
        full-batch gradient step of size ε on its local training data (``finetune_batch`` caps the
        batch: then one local epoch at lr ε)."""
        start = broadcast[GLOBAL]
        assign = broadcast.get("assign")
        if assign is not None and client.client_id < len(assign):
            start = broadcast.get(f"group/{int(assign[client.client_id])}", start)
        eps = self.p.finetune_eps
        if eps <= 0 or client.num_examples == 0:
            return start
        batch = client.num_examples if self.p.finetune_batch is None else self.p.finetune_batch
        step = plain_sgd(lr=eps, epochs=1, batch_size=min(batch, client.num_examples))
        adapter = (client.state.get("adapter") or _identity_adapter()) if self.p.feature_mapping else None
        return client.fit(start, hparams=step, grad_hook=None, adapter=adapter).params

    def personal_adapter(self, client: ClientContext) -> Any:
        """The client's eq. (10) input map for its personalised evaluation (None when off)."""
        return client.state.get("adapter") if self.p.feature_mapping else None

    def client_annotations(self, state: DSACState) -> ClientColumns:
        """Per-client columns for clients.parquet: group id and the last aggregation weight. The
        group is also the runtime's ``cluster`` (clusters.parquet, ARI/NMI, stability); every
        client trains the one global model, its group only picks its personalised model M_g."""
        group = np.asarray(state.assign).astype(np.float64)
        key = np.empty(len(group), dtype=object)
        key[:] = GLOBAL  # one str object, referenced per client
        return ClientColumns.of(
            {
                "group": group,
                "cluster": group.copy(),
                "cluster_model_key": key,
                "weight": np.asarray(state.weight_now).astype(np.float64),
            }
        )
