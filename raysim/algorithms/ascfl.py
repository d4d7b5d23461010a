"""AS-CFL (Yang et al. 2025, "Clustered Federated Learning with Adaptive Similarity for Non-IID
Data", paper 002 in docs/papers.md, Algorithm 1). Pure rules: ``ascfl_math``.

Each round the sampled clients train from their cluster's model (``cluster/<id>``; a client never
clustered trains from ``global``) for the local epochs of ``local_epochs_rule`` and upload their
updates one by one (the algorithm is not linear). The server then runs the paper's three stages.

Stage 1, initial clustering (Section 3.2). Cosine similarity (eq. 2) of the updates, restricted
to the block ``similarity_layers`` names: ``output`` (the paper's "weights near the output layer",
the last module of the model: ``OutputLayer``), ``first`` (the first module) or ``all``. With
``low_rank`` it is computed through the truncated SVD (scikit-learn's randomized SVD) of the
m x d_block matrix of those updates, at the smallest rank keeping ``variance_kept`` (95%) of its
energy (eq. 4); without it, exactly on the same block (Table 4's "w/o Low-Rank Factorization": the
two switches are independent, so the ablation of the factorisation does not also widen the layers
compared; before they were split, ``low_rank: false`` meant ``all`` layers, exact). Greedy seed-and-expand: the most
representative unassigned client (data-size weighted centrality) seeds a cluster, its
``candidate_fraction`` (top 20%) most similar unassigned clients are tested in order with the
positive incentive on the server's public split (the IID proxy set the paper's D_test is) and the
search stops at the first failure; repeat until every client is assigned.

The incentive test. The paper states it twice, differently: eq. (3) admits client i when the
accuracy of the temporary aggregate with i exceeds theta = 0.85, and the pruning paragraph stops
"at the first client that fails to improve accuracy by 3%". ``incentive="absolute"`` is eq. (3);
``incentive="relative"`` (the default) is the improvement test, acc(C u {i}) - acc(C) >= min_gain
(0.03). The default is the improvement test because it is what the mechanism is for ("a client is
assigned to C_k if its inclusion improves the cluster's model performance") and it does not depend
on the data set: theta = 0.85 was tuned on MNIST, where any model reaches it; on Fashion-MNIST or on
a rotated proxy set a young cluster model stays below it, so every test fails and Stage 1 returns
singletons only.

Stage 2, dynamic adjustment (Section 3.3, Alg. 1 lines 18-24; ``dynamic_adjustment``). EM (eq. 6-7)
from the Stage-1 clusters, at most ``em_iters`` iterations, then one pass of split (G_k > beta = 0.8:
2-means on the members) / merge (G_k < alpha = 0.2: into the nearest centroid's cluster) with
G_k = d_in / d_out of eq. (8)-(10). EM and G_k act on the vectors the similarity used: the rank-r
coordinates U_r Sigma_r of the compared block with ``low_rank``, the block itself without. When the
federation has ground-truth groups (``data.num_groups``), every round also reports the G_k of the
TRUE partition of the participants on those vectors (``g_truth_max`` / ``g_truth_min``): a true
group whose G_k exceeds beta is split by the rule, so beta below ``g_truth_max`` cuts correct
clusters. ``beta_calibration: truth`` is a variant (an oracle: it reads the ground truth, which the
method cannot know) that sets each round's beta to ``beta_margin`` x ``g_truth_max`` (reported as
``beta_used``; the fixed ``beta`` in a round whose participants span fewer than two groups).
As written, the rule merges every singleton (d_in = 0) into its nearest cluster, and it merges
compact, well-separated clusters too (small G); with one cluster there is no foreign centroid and
nothing happens.

Stage 3, intra-cluster aggregation (Section 3.4, eq. 11). With ``dp``, each update is clipped to L2
norm ``clip_norm`` and gets N(0, sigma^2 I) noise (Alg. 1 line 31), sigma calibrated for one
(epsilon, delta) = (1, 1e-5) release of sensitivity C (``calibration``: the classic Gaussian
mechanism C sqrt(2 ln(1.25/delta)) / epsilon by default; the paper gives no formula). Where the noise
is added is ``dp_site``: ``server`` (default) follows Algorithm 1, which adds it in Stage 3, after
clustering on the clean updates, so it protects the released cluster models but not the updates
from the server (and the cluster assignments, computed from the clean updates, are outside the
accountant's guarantee); ``client`` adds it before upload (local DP: everything the server does, clustering
included, is post-processing). Noise is seeded from (run seed, round, client) only. The privacy
spent by a client over the rounds so far is tracked with dp_accounting's RDP accountant
(``epsilon_spent``). Each cluster model becomes the data-size-weighted average of its members'
local models, start + noisy update: exactly eq. (11) when all members started from the same cluster
model; a cluster re-formed this round averages the local models of members that started from
different models.

Clusters are re-formed every round ("this entire three-stage process is reiterated in each
communication round"). With partial participation, a client that sat the round out follows the
plurality of its previous cluster-mates into their new cluster, or keeps its previous cluster (and
model) when none of them took part (``carry_over``). Cluster ids are renumbered 0..K-1 every round.
``global`` is the size-weighted average of all participants' local models (what an unclustered
client starts from).

Uplink. With ``low_rank`` a client uploads its output-layer weight update as rank-r factors
(Section 3.5, "return low-rank compressed updates"; r keeps ``variance_kept`` of its energy) and the
server aggregates the reconstruction. The round reports ``uplink_bytes_full`` (every update as a
dense float32 vector) and ``uplink_bytes_lowrank`` (the output-layer weight as U Sigma and V, every
other parameter dense), both from the array sizes, whichever upload actually happened; the
runtime's ``bytes_up`` is what raysim transported (always dense).

``server_model`` is the largest cluster's model (most assigned clients; ties to the lowest id), as
for CFL and IFCA, so the server's test metrics stay comparable across the clustered algorithms;
before any clustering it is ``global``. Personalised evaluation scores each client with its
cluster's model (``global`` when unclustered).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from raysim.algorithms import ascfl_math as am
from raysim.algorithms.base import (
    GLOBAL,
    AlgoParams,
    Algorithm,
    ClientBatch,
    ClientColumns,
    ClientContext,
    ClientResult,
    ClientTask,
    Family,
    LinearSum,
    Metrics,
    PersonalKeys,
    RoundContext,
    RoundPlan,
    ServerContext,
    SetupContext,
    Traits,
    sample_cohort,
)
from raysim.clustering import cosine_similarity_matrix
from raysim.models.flat import Params

ASSIGN = "assign"  # eval broadcast: each client's cluster id (-1: unclustered, scored with "global")
OUT_LAYER = "out_layer"  # task extra: OutputLayer.to_array()
NOISE_SEED = "noise_seed"  # task extra (dp_site="client"): the client's noise seed this round
BYTES = 4  # float32


def cluster_key(cid: int) -> str:
    return f"cluster/{cid}"


class ASCFLParams(AlgoParams):
    # Stage 1: positive incentive (Section 3.2.1). "relative" is the default: see the module docstring
    incentive: Literal["absolute", "relative"] = "relative"
    theta: Annotated[float, Field(ge=0, le=1)] = 0.85  # "absolute": admit when proxy accuracy > theta (eq. 3)
    min_gain: Annotated[float, Field(ge=-1, le=1)] = 0.03  # "relative": admit when accuracy rises >= this
    candidate_fraction: Annotated[float, Field(gt=0, le=1)] = 0.2  # top 20% most similar are tested
    # Stage 1: similarity through a low-rank factorisation (Section 3.2.2) and low-rank uploads (3.5)
    variance_kept: Annotated[float, Field(gt=0, le=1)] = 0.95
    # which part of the update Stage 1 compares (and Stage 2 clusters): the paper's output layer, the
    # first layer, or all of it; independent of ``low_rank`` (which only says whether through the SVD)
    similarity_layers: Literal["output", "first", "all"] = "output"
    # Stage 2: EM and split/merge on G_k = d_in / d_out (Section 3.3)
    em_iters: Annotated[int, Field(ge=1, le=100)] = 10  # "typically within 5-10 iterations"
    beta: Annotated[float, Field(gt=0)] = 0.8  # split when G_k > beta
    # "truth" (a variant, an oracle): each round beta = beta_margin x the largest G_k of the
    # ground-truth partition on that round's vectors (needs client groups, e.g. partition: rotation)
    beta_calibration: Literal["fixed", "truth"] = "fixed"
    beta_margin: Annotated[float, Field(gt=0)] = 1.1
    alpha: Annotated[float, Field(ge=0)] = 0.2  # merge when G_k < alpha
    # Stage 3: Gaussian noise on clipped updates (Alg. 1 line 31), (epsilon, delta) per round
    dp: bool = True
    dp_site: Literal["server", "client"] = "server"  # Alg. 1 adds the noise on the server, in Stage 3
    calibration: Literal["classic", "analytic"] = "classic"  # sigma = C sqrt(2 ln(1.25/delta)) / eps
    epsilon: Annotated[float, Field(gt=0)] = 1.0
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    clip_norm: Annotated[float, Field(gt=0)] = 1.0  # L2 bound C of an update (the sensitivity)
    # local epochs (Section 3.2.3 / eq. 5, Alg. 1 lines 7-8). Default "steps": the paper's 10 as SGD
    # steps (Section 3.5's "local steps"), i.e. one epoch for any client with >= 320 examples at
    # batch 32; "paper" runs 10 epochs every round (10x the cost); "config" uses local.epochs
    local_epochs_rule: Literal["paper", "steps", "config"] = "steps"
    local_floor: Annotated[int, Field(ge=1)] = 10  # the max(T_i, 10) of Alg. 1 line 8
    lr_decay: Annotated[float, Field(gt=0, le=1)] = 1.0  # round t trains at lr * lr_decay^(t-1); paper: 0.99
    # the ablation of Table 4
    positive_incentive: bool = True
    dynamic_adjustment: bool = True
    low_rank: bool = True

    @model_validator(mode="after")
    def _thresholds(self) -> ASCFLParams:
        if self.alpha >= self.beta:
            raise ValueError(
                f"alpha (merge below, {self.alpha}) must be smaller than beta (split above, {self.beta})"
            )
        return self


@dataclass(frozen=True, kw_only=True)
class ASCFLState:
    models: tuple[np.ndarray, ...]  # cluster id -> w_k (float32); ids 0..K-1
    global_model: np.ndarray  # float32: what unclustered clients train from
    assign: np.ndarray  # (num_clients,) int64 cluster id, -1 = never clustered
    client_sizes: np.ndarray  # (num_clients,) training examples (|D_i| of eq. 5)
    out_layer: np.ndarray  # OutputLayer.to_array()
    seed: int
    sampling_q: float  # the chance a client is in a round's cohort (for the accountant)
    dp_rounds: int  # rounds in which noise was added
    # ground-truth groups (-1: none): for the G of the true partition (g_truth_*) and the
    # beta_calibration "truth" variant only; the runtime scores the clusters (cluster_ari) itself
    truth: np.ndarray | None
    # [start, stop) of the block Stage 1 compares (similarity_layers); None in checkpoints saved
    # before the option existed, which compared the output layer
    sim_block: tuple[int, int] | None = None


class ASCFL(Algorithm):
    name: ClassVar[str] = "ascfl"
    family: ClassVar[Family] = "clustered"
    test_accuracy_means: ClassVar[str] = (
        "the largest cluster's model (the cluster most clients are in; before the first clustering the "
        "global model) on the global test set, which is untransformed (e.g. unrotated images) and so "
        "matches few clients' groups: read personal_accuracy and cluster_ari instead"
    )
    params_model: ClassVar[type[AlgoParams]] = ASCFLParams
    traits = Traits(linear=False, public_split=True)

    def __init__(self, params: AlgoParams | None = None) -> None:
        super().__init__(params)
        # the positive incentive is what evaluates on the public split
        self.traits = Traits(
            linear=False,
            public_split=bool(self.p.positive_incentive),
            public_split_off="algorithm.positive_incentive: false",
            truth_groups=self.p.beta_calibration == "truth",
            truth_groups_off="algorithm.beta_calibration: fixed",
        )

    @property
    def sigma(self) -> float:
        return am.gaussian_sigma(self.p.epsilon, self.p.delta, self.p.clip_norm, self.p.calibration)

    # -- server ----------------------------------------------------------------------------
    def init(self, params: Params, ctx: SetupContext) -> ASCFLState:
        truth = None if ctx.client_groups is None else np.asarray(ctx.client_groups, dtype=np.int64)
        if self.p.beta_calibration == "truth" and (truth is None or np.unique(truth[truth >= 0]).size < 2):
            raise ValueError(
                "algorithm.beta_calibration: truth calibrates beta from the ground-truth client groups, "
                "and this federation has fewer than two: use a partition with groups (e.g. data.partition: "
                "rotation with data.num_groups >= 2), or set algorithm.beta_calibration: fixed"
            )
        n = int(ctx.num_clients)
        block = am.similarity_block(ctx.layout, self.p.similarity_layers)
        return ASCFLState(
            models=(),
            global_model=params.astype(np.float32),
            assign=np.full(n, -1, np.int64),
            client_sizes=np.asarray(ctx.client_sizes, dtype=np.int64).copy(),
            out_layer=am.OutputLayer.of(ctx.layout).to_array(),
            seed=int(ctx.seed),
            sampling_q=min(1.0, min(int(ctx.clients_per_round), n) / max(n, 1)),
            dp_rounds=0,
            truth=truth,
            sim_block=(int(block.start), int(block.stop)),
        )

    def model_key(self, state: ASCFLState, client_id: int) -> str:
        k = int(state.assign[client_id])
        return cluster_key(k) if k >= 0 else GLOBAL

    def configure_round(self, state: ASCFLState, rnd: RoundContext) -> tuple[ASCFLState, RoundPlan]:
        cohort = sample_cohort(rnd.available, rnd.cohort_size, rnd.rng)
        p = self.p
        tasks = []
        for c in cohort:
            hp = rnd.hparams
            if p.lr_decay != 1.0:
                hp = replace(hp, lr=hp.lr * p.lr_decay ** max(rnd.round_idx - 1, 0))
            hp = replace(
                hp,
                epochs=am.local_epochs(
                    p.local_epochs_rule, int(state.client_sizes[c]), hp.batch_size, hp.epochs, p.local_floor
                ),
            )
            extras = {OUT_LAYER: state.out_layer}
            if p.dp and p.dp_site == "client":
                extras[NOISE_SEED] = np.array([am.noise_seed(state.seed, rnd.round_idx, c)], np.int64)
            tasks.append(
                ClientTask(client_id=c, model_key=self.model_key(state, c), hparams=hp, extras=extras)
            )
        broadcast: dict[str, np.ndarray] = {}
        for t in tasks:
            if t.model_key not in broadcast:
                broadcast[t.model_key] = (
                    state.global_model
                    if t.model_key == GLOBAL
                    else state.models[int(state.assign[t.client_id])]
                )
        return state, RoundPlan(tasks=tasks, broadcast=broadcast)

    def _start(self, state: ASCFLState, key: str) -> np.ndarray:
        if key == GLOBAL:
            return state.global_model
        prefix, _, idx = key.partition("/")
        if prefix != "cluster" or not idx.isdigit():
            raise ValueError(f"not an AS-CFL model key: {key!r}")
        return state.models[int(idx)]

    def aggregate(
        self, state: ASCFLState, results: Sequence[ClientResult | LinearSum], server: ServerContext
    ) -> tuple[ASCFLState, Metrics]:
        p = self.p
        res: list[ClientResult] = []
        for r in results:
            if not isinstance(r, ClientResult):
                raise TypeError("AS-CFL is not linear: it needs individual client results")
            if r.delta is not None and r.num_examples > 0:
                res.append(r)
        res.sort(key=lambda r: r.client_id)
        if not res:
            return state, {"aggregated_clients": 0.0}
        ids = np.array([r.client_id for r in res], np.int64)
        sizes = np.array([float(r.num_examples) for r in res])
        starts = [self._start(state, r.model_key) for r in res]
        deltas = np.stack([np.asarray(r.delta, dtype=np.float64) for r in res])
        out = am.OutputLayer.from_array(state.out_layer)
        metrics: Metrics = {"aggregated_clients": float(len(res))}
        metrics.update(self._uplink(res, out, deltas.shape[1]))

        # Stage 1: similarity (eq. 2, 4) and greedy seed-and-expand with the incentive (eq. 3)
        svd_seed = int(server.rng.integers(2**31))
        block = out.block if state.sim_block is None else slice(*state.sim_block)
        if p.low_rank:
            feats = am.lowrank_embedding(deltas[:, block], p.variance_kept, svd_seed)
            M = am.similarity(feats)
            metrics["similarity_rank"] = float(feats.shape[1])
        else:
            feats = deltas[:, block]
            M = cosine_similarity_matrix(feats)
        # the ground-truth partition's G_k on the same vectors: which beta would keep it whole
        g_truth = None if state.truth is None else am.true_partition_g(feats, state.truth[ids])
        if g_truth is not None:
            metrics["g_truth_max"] = float(g_truth.max())
            metrics["g_truth_min"] = float(g_truth.min())
        locals_ = [s.astype(np.float64) + d for s, d in zip(starts, deltas, strict=True)]
        greedy = am.seed_and_expand(
            M,
            sizes,
            candidate_fraction=p.candidate_fraction,
            accuracy=self._proxy_accuracy(locals_, sizes, server) if p.positive_incentive else None,
            rule=am.IncentiveRule(mode=p.incentive, theta=p.theta, min_gain=p.min_gain),
        )
        labels = greedy.labels
        metrics["clusters_initial"] = float(labels.max() + 1)
        metrics["incentive_evals"] = float(greedy.evaluations)
        metrics["incentive_rejections"] = float(greedy.rejections)

        # Stage 2: EM (eq. 6-7), then split / merge on G_k (eq. 8-10)
        if p.dynamic_adjustment and len(res) >= 2:
            labels = am.em_refine(feats, labels, p.em_iters)
            metrics["clusters_em"] = float(labels.max() + 1)
            beta = p.beta
            if p.beta_calibration == "truth" and g_truth is not None and np.isfinite(g_truth.max()):
                beta = p.beta_margin * float(g_truth.max())
            metrics["beta_used"] = beta
            labels, splits, merges = am.adjust_clusters(
                feats, labels, alpha=p.alpha, beta=beta, rng=server.rng
            )
            metrics["splits"], metrics["merges"] = float(splits), float(merges)
            if labels.max() >= 1:
                G, _, _ = am.dispersion_separation(feats, labels)
                metrics["g_max"] = float(G.max())
                metrics["g_min"] = float(G.min())

        # Stage 3: clipped, noised updates (Alg. 1 line 31), size-weighted cluster models (eq. 11)
        noisy = [d.astype(np.float32) for d in deltas]
        dp_rounds = state.dp_rounds
        if p.dp:
            dp_rounds += 1
            if p.dp_site == "server":
                sigma, clipped = self.sigma, 0
                for i, r in enumerate(res):
                    seed = am.noise_seed(state.seed, server.round_idx, r.client_id)
                    noisy[i], was = am.privatize(deltas[i], p.clip_norm, sigma, seed)
                    clipped += int(was)
                metrics["dp_clipped_fraction"] = clipped / len(res)
            else:
                metrics["dp_clipped_fraction"] = float(
                    np.mean([r.metrics.get("dp_clipped", 0.0) for r in res])
                )
            metrics["dp_sigma"] = self.sigma
            metrics["epsilon_spent"] = am.epsilon_spent(
                self.sigma / p.clip_norm, dp_rounds, state.sampling_q, p.delta
            )
        k_new = int(labels.max()) + 1
        new_models = []
        for k in range(k_new):
            idx = np.flatnonzero(labels == k)
            new_models.append(am.merge_models([starts[i] for i in idx], [noisy[i] for i in idx], sizes[idx]))
        global_model = am.merge_models(starts, noisy, sizes)

        assign, kept = am.carry_over(state.assign, ids, labels)
        models = tuple(new_models) + tuple(state.models[int(k)] for k in kept)
        metrics["num_clusters"] = float(len(set(assign[assign >= 0].tolist())))
        metrics["update_norm_mean"] = float(np.linalg.norm(deltas, axis=1).mean())
        return (
            replace(state, models=models, global_model=global_model, assign=assign, dp_rounds=dp_rounds),
            metrics,
        )

    @staticmethod
    def _proxy_accuracy(
        locals_: list[np.ndarray], sizes: np.ndarray, server: ServerContext
    ) -> Callable[[tuple[int, ...]], float]:
        """accuracy(members): the proxy-set accuracy of the size-weighted average of the members'
        local models (Section 3.2.1: "a single weighted average, no retraining")."""
        if server.data is None or "public" not in server.data.splits():
            raise RuntimeError(
                "AS-CFL's positive incentive evaluates on the server's public split: set "
                "data.public_fraction > 0, or algorithm.positive_incentive=false"
            )
        cache: dict[tuple[int, ...], float] = {}

        def accuracy(members: tuple[int, ...]) -> float:
            key = tuple(sorted(members))
            if key not in cache:
                w = sizes[list(key)]
                avg = sum(wi * locals_[i] for wi, i in zip(w, key, strict=True)) / w.sum()
                ev = server.evaluate(np.asarray(avg, dtype=np.float32), "public")
                cache[key] = float(ev.correct) / max(int(ev.n), 1)
            return cache[key]

        return accuracy

    @staticmethod
    def _uplink(res: Sequence[ClientResult], out: am.OutputLayer, d: int) -> Metrics:
        """Uplink of the round: every update dense, and with the output-layer weight as rank-r factors
        (r from each client's ``output_rank``; the dense matrix where the factors would be larger)."""
        full = len(res) * d * BYTES
        if out.shape is None:
            return {"uplink_bytes_full": float(full), "uplink_bytes_lowrank": float(full)}
        rows, cols = out.shape
        ranks = [int(r.metrics.get("output_rank", min(rows, cols))) for r in res]
        dense = rows * cols * BYTES  # a client whose factors would be larger sends the matrix itself
        low = sum(
            (d - rows * cols) * BYTES + min(am.factor_bytes(rows, cols, k, BYTES), dense) for k in ranks
        )
        return {
            "uplink_bytes_full": float(full),
            "uplink_bytes_lowrank": float(low),
            "output_rank_mean": float(np.mean(ranks)),
        }

    def largest_cluster(self, state: ASCFLState) -> int:
        """The cluster with the most assigned clients (ties: lowest id); -1 before any clustering."""
        if not state.models:
            return -1
        counts = np.bincount(state.assign[state.assign >= 0], minlength=len(state.models))
        return int(np.argmax(counts))

    def server_model(self, state: ASCFLState) -> Params:
        """The largest cluster's model; ``global`` before the first clustering."""
        k = self.largest_cluster(state)
        return state.global_model if k < 0 else state.models[k]

    def eval_broadcast(self, state: ASCFLState) -> Mapping[str, np.ndarray]:
        out: dict[str, np.ndarray] = {cluster_key(k): m for k, m in enumerate(state.models)}
        out[GLOBAL] = state.global_model
        out[ASSIGN] = state.assign
        return out

    def client_annotations(self, state: ASCFLState) -> ClientColumns:
        return ClientColumns.of({"cluster": np.asarray(state.assign).astype(np.float64)})

    # -- client ----------------------------------------------------------------------------
    def client_update(self, task: ClientTask, params: Params, client: ClientContext) -> ClientResult:
        p = self.p
        start = client.broadcast[task.model_key]
        fit = client.fit(start, grad_hook=None, hparams=task.hparams)
        delta = (fit.params - start).astype(np.float32)
        metrics = {"train_loss": float(fit.loss)}
        if p.dp and p.dp_site == "client":  # local DP: clip and noise before anything leaves the client
            seed = int(np.asarray(task.extras[NOISE_SEED]).reshape(-1)[0])
            delta, clipped = am.privatize(delta, p.clip_norm, self.sigma, seed)
            metrics["dp_clipped"] = float(clipped)
        out = am.OutputLayer.from_array(task.extras[OUT_LAYER]) if OUT_LAYER in task.extras else None
        # a diverged client (NaN/inf update) uploads it as is: the runtime counts it as a non-finite
        # dropout, while the SVD of the factorisation would raise on it and stop the run
        finite = bool(np.isfinite(delta).all())
        if finite and out is not None and out.weight is not None and out.shape is not None:
            W = delta[out.weight].reshape(out.shape)
            W_r, rank = am.compress_matrix(W, p.variance_kept)
            metrics["output_rank"] = float(rank)
            rows, cols = out.shape
            # upload the rank-r factors (when they are smaller than the dense matrix): the server
            # sees their product
            if p.low_rank and am.factor_bytes(rows, cols, rank, BYTES) < rows * cols * BYTES:
                delta = delta.copy()
                delta[out.weight] = W_r.reshape(-1)
        return ClientResult(
            client_id=task.client_id,
            num_examples=fit.num_examples,
            delta=delta,
            model_key=task.model_key,
            metrics=metrics,
        )

    def personal_params(self, broadcast: Mapping[str, np.ndarray], client: ClientContext) -> Params:
        k = int(broadcast[ASSIGN][client.client_id])
        return broadcast[cluster_key(k)] if k >= 0 else broadcast[GLOBAL]

    def personal_model_keys(self, broadcast: Mapping[str, np.ndarray], clients: ClientBatch) -> PersonalKeys:
        """Every client's cluster model, the global one while unclustered (``personal_params``)."""
        ks = np.asarray(broadcast[ASSIGN]).astype(np.int64)[clients.client_ids]
        return PersonalKeys.by_label(np.maximum(ks, -1), lambda k: cluster_key(k) if k >= 0 else GLOBAL)
