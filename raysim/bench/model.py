"""A cost model of a raysim run: round time, time to the first round and memory, for N clients,
a cohort of C, A client actors on K nodes. Fitted by least squares to ``raysim bench scale``'s
measurements (docs/scaling.md has the fit, its validation and worked examples).

Round time (per round, its evaluation apart)::

    round  = overhead + busy
    busy   = (task_s * C + example_s * E * X) / P        the busiest actor: C clients, X examples
    overhead = overhead_s + overhead_per_client_s * N + overhead_per_actor_s * A

where X = C * n_bar is the examples the cohort holds (n_bar = training examples per client), E the
local epochs and P = min(A, CPUs for the actors, C) the actors that really work at once.

Evaluation (an evaluated round: every ``rounds.eval_every`` rounds and the last), added to
that round's time::

    evaluate = eval_s + [K > 0] * (eval_overhead_s + eval_example_s * K * t / P_e)

where ``eval_s`` is the server model on the dataset's test set, K the clients
``rounds.personal_eval`` scores (``raysim.config.personal_eval_count``: auto scores every client up
to 10,000 and a seeded sample of 10,000 above), t their local test examples each (mean) and
P_e = min(A, CPUs for the actors) the actors that evaluate at once (every actor evaluates, not only
the cohort's). With personal evaluation off (K = 0) only ``eval_s`` is left. Coefficients fitted
before the bench measured evaluation have these three as NaN (and a bench whose runs never scored
a client leaves the personal two NaN): then a test example is timed as a forward pass, a third of a
training step (``example_s / 3``), and each scored client as a training call (``task_s``), as
``raysim k8s render`` did before (:func:`evaluate_seconds`).

Time to the first round::

    first = import_s + setup_s + setup_per_client_s * N + actor_start_s * A / (K * cpus_per_node)
            + round + warmup_s

(actors start in parallel, one per CPU of each node; ``warmup_s``: what round 1 costs above the
others). An earlier model had a ``roam_setup_s * N^2 / A`` term here for a defect of
``ClientHost.__init__`` (a set rebuilt for every visiting client); the defect is fixed, the term was
fitted to 0 after the fix, and it is gone (coefficient files that still have the key load: unknown
keys are ignored).

Memory (peak RSS, MB)::

    driver = driver_mb + driver_per_client_mb * N
    server = server_mb + server_per_client_mb * N
    actor  = actor_mb + actor_per_hosted_mb * H       H = ceil(N / A): the clients an actor owns
    ray    = ray_mb                                   Ray's own processes on a node
    store  = store_mb + store_per_client_mb * N       object store per node: dataset + partition

H is the same whether clients roam (an algorithm without client state under ``clients_per_actor:
auto``: any actor trains any client) or stay on their actor. Roaming clients' partition travels as
one ``raysim.data.federation.ShardTable`` (flat index arrays in the object store, read zero-copy by
every actor of a node): an actor builds client objects for its own N / A clients only, and a
visitor's for the one call that trains it. Roaming changes which actor trains a client, not what
an actor holds (before commit 487d6f5 every roaming actor built all N clients: H = N).

The table lives in the store once per node: 8 bytes per training, validation and test index plus
56 per client. ``store_per_client_mb`` (fitted when the partition travelled as pickled
``ClientShard`` objects: 268 bytes a client at the defaults) bounds the per-client part from
above; the indices of the fitted Fashion-MNIST (about 0.5 MB) are in ``store_mb`` and are not
rescaled for other datasets. An actor's RSS also counts the table's pages it has read (shared
pages: its USS excludes them).

On a cluster: a worker pod holds A / K actors, Ray's processes and the object store; the head holds
the driver, the server, Ray's processes and the store. RSS counts shared pages (torch's libraries,
the dataset read zero-copy from the object store) in every process that touches them, so sums of
RSS overstate what a node needs; the USS figures (memory only that process holds) bound it below.

What it ignores: the network between nodes (broadcast and reply transfers; on one machine they are
shared memory), GPU speed (fitted on CPUs only; a GPU actor is modelled as a CPU actor), other models
than the one fitted (the compute terms are cnn-small's on 28x28 images), how unevenly a cohort falls
on the actors when clients cannot roam (the busiest actor is modelled as C / P clients either way),
and noise from other jobs on the machine it was fitted on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

# training examples and bytes in the object store (x and y, train and test) of each dataset
TRAIN_EXAMPLES = {
    "fashion-mnist": 60_000,
    "mnist": 60_000,
    "emnist": 112_800,
    "cifar10": 50_000,
    "digits": 1_438,
}
DATASET_MB = {
    "fashion-mnist": 55_440_000 / 2**20,
    "mnist": 55_440_000 / 2**20,
    "emnist": (131_600 * 785 + 131_600 * 7) / 2**20,
    "cifar10": (60_000 * 3073 + 60_000 * 7) / 2**20,
    "digits": 129_384 / 2**20,
}
# test examples of each dataset (the server model is evaluated on all of them)
TEST_EXAMPLES = {"fashion-mnist": 10_000, "mnist": 10_000, "emnist": 18_800, "cifar10": 10_000, "digits": 359}
MIN_EXAMPLES = 2  # raysim.data.partition.DEFAULT_MIN_SIZE: every client holds at least this many


class FitError(ValueError):
    """Not enough measurements to fit the model."""


@dataclass(frozen=True)
class Coefficients:
    # time, seconds
    overhead_s: float = 0.0
    overhead_per_client_s: float = 0.0
    overhead_per_actor_s: float = 0.0
    task_s: float = 0.0
    example_s: float = 0.0
    warmup_s: float = 0.0
    import_s: float = 0.0
    setup_s: float = 0.0
    setup_per_client_s: float = 0.0
    actor_start_s: float = 0.0
    # an evaluated round's evaluation (NaN: not fitted, the forward-pass rule of evaluate_seconds)
    eval_s: float = math.nan
    eval_overhead_s: float = math.nan
    eval_example_s: float = math.nan
    # memory, MB
    driver_mb: float = 0.0
    driver_per_client_mb: float = 0.0
    server_mb: float = 0.0
    server_per_client_mb: float = 0.0
    actor_mb: float = 0.0
    actor_per_hosted_mb: float = 0.0
    actor_uss_mb: float = math.nan
    ray_mb: float = 0.0
    store_mb: float = 0.0
    store_per_client_mb: float = 0.0
    # what it was fitted on
    cores: int = 2
    dataset: str = "fashion-mnist"
    model: str = "cnn-small"
    fitted_on: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Coefficients:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Workload:
    """What the model needs to know about an experiment."""

    n_clients: int
    cohort: int
    epochs: int = 1
    examples_per_client: float = 540.0  # training examples a client holds (mean)
    actors: int = 2
    dataset: str = "fashion-mnist"
    model: str = "cnn-small"
    eval_clients: int = 0  # clients rounds.personal_eval scores in an evaluated round (0: off)
    test_per_client: float = 0.0  # local test examples of a scored client (mean)

    @property
    def hosted(self) -> float:
        """Clients one actor holds: its own ceil(N / A), whether clients roam or not (module docstring)."""
        return float(math.ceil(self.n_clients / max(1, self.actors)))


@dataclass(frozen=True)
class Cluster:
    """Where the actors run: K nodes (pods) with this many CPUs for actors each; GPUs are counted
    but not modelled (no GPU speed was measured)."""

    nodes: int = 1
    cpus_per_node: float = 2.0
    gpus: float = 0.0


@dataclass(frozen=True)
class Estimate:
    round_s: float
    busy_s: float
    overhead_s: float
    first_round_s: float  # from the command to the end of round 1
    setup_s: float
    driver_mb: float
    server_mb: float
    actor_mb: float  # one client actor
    ray_mb: float  # Ray's own processes, one node
    store_mb: float  # object store, one node
    head_mb: float  # driver + server + Ray + store (a cluster's head pod)
    worker_mb: float  # actors of one worker pod + Ray + store
    total_mb: float  # head + every worker pod
    evaluate_s: float = 0.0  # what an evaluated round adds: the server model + personal evaluation
    eval_fitted: bool = False  # evaluate_s from fitted eval terms (else the forward-pass rule)
    notes: tuple[str, ...] = field(default_factory=tuple)


# ------------------------------------------------------------------------------------------ prediction


def predict(coef: Coefficients, w: Workload, cluster: Cluster | None = None) -> Estimate:
    """The model's figures for workload ``w`` on ``cluster`` (default: one node with the fitted
    machine's cores, where the head and the worker are the same node)."""
    local = cluster is None
    cl = cluster or Cluster(nodes=1, cpus_per_node=float(coef.cores))
    n, c, a = w.n_clients, min(w.cohort, w.n_clients), max(1, w.actors)
    parallel = max(1.0, min(float(a), cl.nodes * cl.cpus_per_node))
    examples = c * w.examples_per_client
    # a round's C clients spread over the actors: no more than C of them (or the CPUs) work at once
    busy = (coef.task_s * c + coef.example_s * w.epochs * examples) / max(1.0, min(parallel, float(c)))
    overhead = coef.overhead_s + coef.overhead_per_client_s * n + coef.overhead_per_actor_s * a
    rnd = busy + overhead
    evaluate, eval_fitted = evaluate_seconds(coef, w, max(1.0, min(float(a), cl.nodes * cl.cpus_per_node)))
    waves = a / (cl.nodes * max(cl.cpus_per_node, 1.0))
    setup = coef.setup_s + coef.setup_per_client_s * n + coef.actor_start_s * waves
    first = coef.import_s + setup + rnd + coef.warmup_s
    driver = coef.driver_mb + coef.driver_per_client_mb * n
    server = coef.server_mb + coef.server_per_client_mb * n
    actor = coef.actor_mb + coef.actor_per_hosted_mb * w.hosted
    ds_mb = DATASET_MB.get(w.dataset, DATASET_MB.get(coef.dataset, 0.0))
    store = coef.store_mb - DATASET_MB.get(coef.dataset, 0.0) + ds_mb + coef.store_per_client_mb * n
    head = driver + server + coef.ray_mb + store
    per_node = math.ceil(a / cl.nodes)
    worker = per_node * actor + coef.ray_mb + store
    total = head + worker - coef.ray_mb - store if local else head + cl.nodes * worker
    notes = []
    if w.model != coef.model or w.dataset != coef.dataset:
        notes.append(
            f"compute fitted on {coef.model}/{coef.dataset}, not {w.model}/{w.dataset}: the round time is "
            "only indicative"
        )
    if a > c:
        notes.append(
            f"{a - c:,} of the {a:,} client actors idle in every round (a round trains {c:,} clients)"
        )
    if cl.gpus > 0:
        notes.append("GPU speed is not modelled (fitted on CPUs): GPU actors are timed as CPU actors")
    if cl.nodes > 1:
        notes.append("network transfers between nodes are not modelled")
    return Estimate(
        round_s=rnd,
        busy_s=busy,
        overhead_s=overhead,
        first_round_s=first,
        setup_s=setup,
        driver_mb=driver,
        server_mb=server,
        actor_mb=actor,
        ray_mb=coef.ray_mb,
        store_mb=store,
        head_mb=head,
        worker_mb=worker,
        total_mb=total,
        evaluate_s=evaluate,
        eval_fitted=eval_fitted,
        notes=tuple(notes),
    )


def eval_fitted(coef: Coefficients) -> bool:
    """Whether ``coef`` has every evaluation term (a bench whose runs scored clients fitted them)."""
    return all(math.isfinite(v) for v in (coef.eval_s, coef.eval_overhead_s, coef.eval_example_s))


def _personal_fitted(coef: Coefficients) -> bool:
    return math.isfinite(coef.eval_overhead_s) and math.isfinite(coef.eval_example_s)


def eval_rule(coef: Coefficients) -> str:
    """How :func:`evaluate_seconds` times an evaluated round with these coefficients, in words."""
    if eval_fitted(coef):
        return "evaluation terms fitted by raysim bench scale"
    if math.isfinite(coef.eval_s):
        return (
            "the server model's evaluation fitted by raysim bench scale; a scored client's test example timed "
            "as 1/3 of a training step"
        )
    return "a test example timed as 1/3 of a training step"


def evaluate_seconds(coef: Coefficients, w: Workload, parallel: float) -> tuple[float, bool]:
    """(seconds, fitted) an evaluated round of ``w`` adds, ``parallel`` actors evaluating at once:
    the fitted terms (module docstring) where ``coef`` has them, else the forward-pass rule (a test
    example a third of a training step, a scored client a training call) for the part it lacks: the
    server model's (``eval_s``) or the personal one (a bench whose runs never scored a client leaves
    ``eval_overhead_s`` and ``eval_example_s`` unfitted). ``fitted``: every part used was fitted."""
    k, t, p = float(w.eval_clients), float(w.test_per_client), max(1.0, parallel)
    fwd = coef.example_s / 3
    server_fitted = math.isfinite(coef.eval_s)
    server = (
        coef.eval_s if server_fitted else fwd * TEST_EXAMPLES.get(w.dataset, TEST_EXAMPLES["fashion-mnist"])
    )
    if k <= 0:
        return server, server_fitted
    if _personal_fitted(coef):
        return server + coef.eval_overhead_s + coef.eval_example_s * k * t / p, server_fitted
    return server + (coef.task_s * k + fwd * k * t) / p, False


def workload_of(cfg: Any, actors: int | None = None, cores: float | None = None) -> dict[str, Any]:
    """The :class:`Workload` of an ``ExperimentConfig`` (or of the bench's config dict), as a dict."""
    if isinstance(cfg, dict):
        from raysim.config import config_from_dict

        cfg = config_from_dict(cfg)
    d = cfg.data
    n = d.num_clients
    train = TRAIN_EXAMPLES.get(d.dataset, TRAIN_EXAMPLES["fashion-mnist"])
    if d.partition == "sampled":  # clients draw their examples independently: N does not divide them
        per_client = d.examples_per_client * (1 - d.val_fraction)
    else:
        per_client = train * (1 - d.public_fraction) * (1 - d.val_fraction) / n
    a = actors if actors is not None else cfg.num_client_actors(cores if cores is not None else 2.0)
    from raysim.config import personal_eval_count

    test_total = TEST_EXAMPLES.get(d.dataset, TEST_EXAMPLES["fashion-mnist"])
    # a client's test split: test_per_client, else in proportion to its training examples
    test_pc = float(d.test_per_client) if d.test_per_client else per_client * test_total / train
    return asdict(
        Workload(
            n_clients=n,
            cohort=min(cfg.rounds.clients_per_round, n),
            epochs=cfg.local.epochs,
            examples_per_client=per_client,
            actors=a,
            dataset=d.dataset,
            model=cfg.model.name,
            eval_clients=personal_eval_count(cfg.rounds.personal_eval, n),
            test_per_client=test_pc,
        )
    )


def estimate(
    cfg: Any,
    *,
    actors: int,
    nodes: int,
    cpus_per_node: float,
    gpus: float = 0.0,
    coef: Coefficients | None = None,
) -> Estimate:
    """The model's estimate for experiment ``cfg`` on ``nodes`` worker nodes (what ``raysim k8s
    render`` prints), with the default coefficients (:mod:`raysim.bench.coefficients`)."""
    if coef is None:
        from raysim.bench.coefficients import DEFAULT

        if not DEFAULT:
            raise FitError("no fitted coefficients: run `raysim bench scale --write-coefficients`")
        coef = Coefficients.from_dict(DEFAULT)
    w = Workload(**workload_of(cfg, actors=actors))
    e = predict(coef, w, Cluster(nodes=max(1, nodes), cpus_per_node=cpus_per_node, gpus=gpus))
    d = cfg.data
    pool = TRAIN_EXAMPLES.get(d.dataset)
    if pool is not None and d.partition not in ("natural", "sampled"):
        pool -= int(round(d.public_fraction * pool))
        if w.n_clients * MIN_EXAMPLES > pool:
            e = replace(
                e,
                notes=(
                    *e.notes,
                    f"{d.dataset} has {pool:,} training examples for the clients: {w.n_clients:,} clients of "
                    f"at least {MIN_EXAMPLES} each do not fit, and `raysim run` will refuse the job (at most "
                    f"{pool // MIN_EXAMPLES:,} clients)",
                ),
            )
    return e


def describe(e: Estimate, nodes: int) -> list[str]:
    """Lines for a header: the estimate, its parts and its caveats."""
    gb = 1024.0
    lines = [
        f"Estimate (raysim.bench.model, fitted on a 2-core machine; docs/scaling.md): round "
        f"{e.round_s:.2f} s ({e.busy_s:.2f} s training + {e.overhead_s:.2f} s runtime), first round "
        f"{e.first_round_s:.0f} s after the start;",
        f"memory {e.worker_mb / gb:.2f} GB per worker pod ({nodes} pods; {e.actor_mb:.0f} MB per client actor), "
        f"{e.head_mb / gb:.2f} GB on the head (driver {e.driver_mb:.0f} MB, server {e.server_mb:.0f} MB), "
        f"{e.total_mb / gb:.1f} GB in all (peak RSS sums: an upper bound).",
    ]
    lines += [f"Caveat: {n}." for n in e.notes]
    return lines


# ------------------------------------------------------------------------------------------ fitting


@dataclass
class BenchData:
    """The bench's tables as lists of rows (scale.parquet, actors.parquet, rounds.parquet)."""

    scale: Sequence[dict[str, Any]]
    actors: Sequence[dict[str, Any]] = ()
    rounds: Sequence[dict[str, Any]] = ()
    cores: int = 2
    dataset: str = "fashion-mnist"
    model: str = "cnn-small"
    fitted_on: str = ""

    def without(self, n_clients: int) -> BenchData:
        """The data with the scale run of ``n_clients`` (and its rounds) held back."""
        return BenchData(
            scale=[r for r in self.scale if r["n_clients"] != n_clients],
            actors=self.actors,
            rounds=[r for r in self.rounds if not (r["kind"] == "scale" and r["n_clients"] == n_clients)],
            cores=self.cores,
            dataset=self.dataset,
            model=self.model,
            fitted_on=self.fitted_on,
        )


def _ok(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status", "ok") == "ok"]


def nonneg_lstsq(x: Any, y: Any) -> np.ndarray:
    """Least squares with every coefficient >= 0 (a cost cannot be negative): scipy's NNLS, with
    the columns scaled to unit norm first so that tiny per-client slopes are not lost."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise FitError(f"bad least-squares shapes {x.shape} and {y.shape}")
    from scipy.optimize import nnls

    scale = np.linalg.norm(x, axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(x / scale, y)
    return np.asarray(coef / scale)


def _line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Intercept and slope (both >= 0) of ys against xs; a constant when xs do not vary."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(y) == 0:
        raise FitError("no finite measurement to fit")
    if np.ptp(x) == 0:
        return float(np.mean(y)), 0.0
    a, b = nonneg_lstsq(np.column_stack([np.ones_like(x), x]), y)
    return float(a), float(b)


def _hosted(row: dict[str, Any]) -> float:
    """Clients one actor of this run held: the row's ``hosted`` when it has one, else ceil(N / A)
    (its own clients, roaming or not; the actor-per-client runs: 1). Scale runs measured before
    commit 487d6f5 held all N clients per roaming actor: without ``hosted = N`` on those rows the
    fitted ``actor_per_hosted_mb`` comes out A times too steep."""
    held = row.get("hosted")
    if held is not None and math.isfinite(float(held)):
        return float(held)
    n, a = float(row["n_clients"]), max(1.0, float(row.get("actors") or 1))
    return float(math.ceil(n / a))


def fit(data: BenchData) -> Coefficients:
    """Least-squares fit of every coefficient to the bench's measurements (see the module docstring)."""
    scale = _ok(data.scale)
    every = scale + _ok(data.actors)
    if len(scale) < 2:
        raise FitError(f"need at least 2 federation sizes that ran, got {len(scale)}")
    cores = float(data.cores)
    rounds = [r for r in data.rounds if r["round"] >= 2 and math.isfinite(r["busy_s"])]
    if len(rounds) < 3:
        raise FitError(f"need at least 3 timed rounds (round 2 on), got {len(rounds)}")
    par = np.array([max(1.0, min(r["actors"], cores)) for r in rounds])
    epochs = np.array([float(r.get("epochs", 1)) for r in rounds])
    busy = np.array([r["busy_s"] for r in rounds])
    xb = np.column_stack(
        [[r["cohort"] for r in rounds] / par, epochs * [r["examples"] for r in rounds] / par]
    )
    # relative least squares: a 0.2 s round counts as much as a 20 s one
    task_s, example_s = nonneg_lstsq(xb / busy[:, None], np.ones(len(busy)))
    over = [r["round_s"] - r["evaluate_s"] - r["busy_s"] for r in rounds]
    xo = np.column_stack(
        [np.ones(len(rounds)), [r["n_clients"] for r in rounds], [r["actors"] for r in rounds]]
    )
    o0, o1, o2 = nonneg_lstsq(xo, over)
    warm = [
        r["first_round_s"] - r["median_round_s"]
        for r in every
        if math.isfinite(r.get("first_round_s", math.nan))
    ]
    cols: list[Any] = [np.ones(len(every)), [float(r["n_clients"]) for r in every]]
    if len({r["actors"] for r in every}) > 1:  # the actors' start needs runs with different counts
        cols.append([r["actors"] / cores for r in every])
    sol = list(nonneg_lstsq(np.column_stack(cols), [r["setup_s"] for r in every]))
    s0, s1 = sol[0], sol[1]
    s_actor = sol[2] if len(sol) > 2 else 0.0
    d0, d1 = _line([r["n_clients"] for r in every], [r["driver_rss_mb"] for r in every])
    v0, v1 = _line([r["n_clients"] for r in every], [r["server_rss_mb"] for r in every])
    a0, a1 = _line([_hosted(r) for r in every], [r["client_rss_mb_mean"] for r in every])
    uss = [r.get("client_uss_mb_mean", math.nan) for r in _ok(data.actors)]
    uss = [u for u in uss if math.isfinite(u)] or [
        u for u in (r.get("client_uss_mb_mean", math.nan) for r in scale) if math.isfinite(u)
    ]
    st0, st1 = _line([r["n_clients"] for r in scale], [r.get("object_store_mb", math.nan) for r in scale])
    e0, e1, e2 = fit_evaluation(data.rounds, cores)
    return Coefficients(
        overhead_s=float(o0),
        overhead_per_client_s=float(o1),
        overhead_per_actor_s=float(o2),
        task_s=float(task_s),
        example_s=float(example_s),
        warmup_s=float(max(0.0, np.median(warm))) if warm else 0.0,
        import_s=float(np.median([r["import_s"] for r in every])),
        setup_s=float(s0),
        setup_per_client_s=float(s1),
        actor_start_s=float(s_actor),
        eval_s=e0,
        eval_overhead_s=e1,
        eval_example_s=e2,
        driver_mb=d0,
        driver_per_client_mb=d1,
        server_mb=v0,
        server_per_client_mb=v1,
        actor_mb=a0,
        actor_per_hosted_mb=a1,
        actor_uss_mb=float(np.median(uss)) if uss else math.nan,
        ray_mb=float(np.median([r["ray_system_rss_mb"] for r in every])),
        store_mb=st0,
        store_per_client_mb=st1,
        cores=int(data.cores),
        dataset=data.dataset,
        model=data.model,
        fitted_on=data.fitted_on,
    )


def evaluated(row: dict[str, Any]) -> bool:
    """Whether a round row of the bench evaluated (tables written before the bench recorded it:
    a round whose ``evaluate_s`` is above a millisecond, i.e. the last one)."""
    flag = row.get("evaluated")
    if flag is not None and not (isinstance(flag, float) and math.isnan(flag)):
        return bool(flag)
    return float(row.get("evaluate_s", 0.0)) > 1e-3


def fit_evaluation(rounds: Sequence[dict[str, Any]], cores: float) -> tuple[float, float, float]:
    """``eval_s``, ``eval_overhead_s``, ``eval_example_s`` (module docstring) by relative non-negative
    least squares on the evaluated rounds (round 2 on) of the bench's runs. Personal evaluation off
    in every run: the personal terms are NaN (not measured: a prediction that scores clients falls
    back to the forward-pass rule for them, not to 0). On in every run: ``[K > 0]`` is the
    intercept's column again, so ``eval_overhead_s`` is 0 and ``eval_s`` holds both (the server
    model's part is not separable). No evaluated round: all three NaN (not fitted)."""
    rows = [
        r
        for r in rounds
        if r["round"] >= 2 and evaluated(r) and math.isfinite(float(r.get("evaluate_s", math.nan)))
    ]
    rows = [r for r in rows if float(r["evaluate_s"]) > 0]
    if not rows:
        return math.nan, math.nan, math.nan
    k = np.array([float(r.get("personal_eval_clients", 0.0) or 0.0) for r in rows])
    k[~np.isfinite(k)] = 0.0
    t = np.array([float(r.get("test_per_client", 0.0) or 0.0) for r in rows])
    t[~np.isfinite(t)] = 0.0
    par = np.array([max(1.0, min(float(r["actors"]), cores)) for r in rows])
    y = np.array([float(r["evaluate_s"]) for r in rows])
    on = (k > 0).astype(np.float64)
    x = np.column_stack([np.ones(len(rows)), on, k * t / par])
    if not on.any():  # only the server model was ever evaluated: its mean (relative) time
        return float(nonneg_lstsq(x[:, :1] / y[:, None], np.ones(len(rows)))[0]), math.nan, math.nan
    keep = [0, 2] if on.all() else [0, 1, 2]
    sol = np.zeros(3)
    sol[keep] = nonneg_lstsq(x[:, keep] / y[:, None], np.ones(len(rows)))
    return float(sol[0]), float(sol[1]), float(sol[2])


def bench_workload(row: dict[str, Any], coef: Coefficients, train_examples: float | None = None) -> Workload:
    """The workload of one bench run (its measured examples per round when it has them)."""
    n = int(row["n_clients"])
    cohort = int(row.get("cohort") or min(100, n))
    per_client = (
        row["examples_per_round"] / cohort
        if math.isfinite(row.get("examples_per_round", math.nan))
        else (train_examples or TRAIN_EXAMPLES[coef.dataset] * 0.9) / n
    )
    return Workload(
        n_clients=n,
        cohort=cohort,
        epochs=int(row.get("epochs", 1)),
        examples_per_client=per_client,
        actors=int(row.get("actors") or coef.cores),
        dataset=coef.dataset,
        model=coef.model,
        eval_clients=int(_finite(row.get("personal_eval_clients"))),
        test_per_client=_finite(row.get("test_per_client")),
    )


def _finite(v: Any) -> float:
    """A table's number, 0 where the row has none (NaN, None: an older bench's table)."""
    x = float(v) if v is not None else 0.0
    return x if math.isfinite(x) else 0.0


def total_rss(e: Estimate, actors: int) -> float:
    """The bench's ``total_rss_mb`` as the model sees it on one machine: driver + server + every
    actor + Ray's processes."""
    return e.driver_mb + e.server_mb + actors * e.actor_mb + e.ray_mb


VALIDATED = {
    "time_to_first_round_s": lambda e, w: e.first_round_s,
    "median_round_s": lambda e, w: e.round_s,
    "total_rss_mb": lambda e, w: total_rss(e, w.actors),
    "median_evaluate_s": lambda e, w: e.evaluate_s,
}


def validate(data: BenchData, hold_out: int | None = None) -> dict[str, Any]:
    """Fit without one federation size (default: the largest that ran) and predict it: the model's
    figures against the measured ones, with the relative error (predicted / measured - 1)."""
    ok = sorted(_ok(data.scale), key=lambda r: r["n_clients"])
    if hold_out is None:
        if len(ok) < 3:
            return {"held_out": None, "note": f"needs 3 sizes that ran (fit on 2, predict 1), got {len(ok)}"}
        hold_out = int(ok[-1]["n_clients"])
    row = next((r for r in ok if r["n_clients"] == hold_out), None)
    if row is None:
        raise FitError(f"N={hold_out} did not run: nothing to validate against")
    coef = fit(data.without(hold_out))
    w = bench_workload(row, coef)
    e = predict(coef, w)
    figures = {}
    for key, get in VALIDATED.items():
        if not math.isfinite(float(row.get(key, math.nan))):  # an older bench's table has no evaluation
            continue
        p, m = float(get(e, w)), float(row[key])
        figures[key] = {"predicted": p, "measured": m, "error": p / m - 1 if m else math.nan}
    return {
        "held_out": hold_out,
        "fitted_on": [r["n_clients"] for r in ok if r["n_clients"] != hold_out],
        "figures": figures,
    }


def validate_each(data: BenchData) -> list[dict[str, Any]]:
    """:func:`validate` holding back each size in turn that leaves two others to fit on
    (leave-one-out: the smallest and largest sizes are extrapolations, the others interpolations)."""
    sizes = sorted({int(r["n_clients"]) for r in _ok(data.scale)})
    if len(sizes) < 3:
        return []
    # a size two benches ran (``bench fit --also``) is held out once, against the first bench's row
    return [validate(data, n) for n in sizes]


def scale_curves(
    coef: Coefficients, scale: Sequence[dict[str, Any]]
) -> dict[str, tuple[list[float], list[float]]]:
    """The model's lines for the scale figure's panels (keyed by panel title), over the sizes that ran."""
    ok = sorted(_ok(scale), key=lambda r: r["n_clients"])
    if not ok:
        return {}
    ns = [float(x) for x in np.geomspace(ok[0]["n_clients"], ok[-1]["n_clients"], 30)]
    ref = ok[-1]
    # the examples a round trains and the clients an evaluation scores, between the sizes that ran:
    # log-log interpolation of the measured figures (Dirichlet: examples per round fall as 1 / N;
    # partition sampled: constant; personal_eval auto: N up to 10,000, then 10,000), exact at each size
    log_n = np.log([float(r["n_clients"]) for r in ok])

    def between(col: str, n: float) -> float:
        ys = np.array([_finite(r.get(col)) for r in ok])
        if (ys <= 0).any():
            return float(np.interp(np.log(n), log_n, ys))
        return float(np.exp(np.interp(np.log(n), log_n, np.log(ys))))

    out_t, out_r, out_m = [], [], []
    for n in ns:
        row = {
            **ref,
            "n_clients": n,
            "examples_per_round": between("examples_per_round", n),
            "personal_eval_clients": between("personal_eval_clients", n),
        }
        w = bench_workload(row, coef)
        w = Workload(**{**asdict(w), "n_clients": int(round(n))})
        e = predict(coef, w)
        out_t.append(e.first_round_s)
        out_r.append(e.round_s)
        out_m.append(total_rss(e, w.actors))
    return {
        "Time to first round": (ns, out_t),
        "Median round time": (ns, out_r),
        "Total peak RSS (sum of every process)": (ns, out_m),
    }
