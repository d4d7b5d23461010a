"""Every file and column a run and a sweep write, with what each means: the registry behind
docs/outputs.md.

``python -m raysim.outputs > docs/outputs.md`` regenerates the page; tests/test_outputs.py checks
that the committed page is this module's output and that the files and columns of real tiny runs
are all in the registry, so the page cannot drift from the code. A column whose name holds a
``<placeholder>`` (``clients_cluster/<j>``, ``config/<knob>``) stands for every name of that shape.

What to read first per algorithm (family, headline metrics, what ``test_accuracy`` means) comes
from the algorithms' own declarations (``raysim.algorithms.base.Algorithm.family`` and friends).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from raysim.algorithms.base import FAMILY_HEADLINE, FAMILY_TEST_ACCURACY


@dataclass(frozen=True)
class Column:
    name: str  # may hold <placeholders>
    meaning: str
    when: str = ""  # when the column is there ("": always)


@dataclass(frozen=True)
class OutputFile:
    path: str  # relative to the run (or sweep) directory; may hold <placeholders>
    meaning: str
    columns: tuple[Column, ...] = ()
    when: str = ""  # when the file is written ("": always)
    columns_title: str = "columns"  # "keys" for JSON files


def _cols(*rows: tuple[str, ...]) -> tuple[Column, ...]:
    return tuple(Column(*r) for r in rows)


# -- rounds.parquet ---------------------------------------------------------------------------------
EVAL = "in evaluated rounds (every rounds.eval_every and the last); NaN or absent in the others"
PERSONAL = (
    "in evaluated rounds with rounds.personal_eval (the default, auto); over the clients scored "
    "(every client, or a seeded sample: see personal_eval_clients)"
)
CLUSTERS = "clustered algorithms (those that put clients in clusters: ifca, cfl, ascfl, dsac, genetic-cfl)"
TRUTH = CLUSTERS + ", when the partition has ground-truth groups (rotation, label permutation)"

ROUND_COLUMNS = _cols(
    ("round", "the round, from 1"),
    # evaluation
    (
        "test_accuracy",
        "accuracy of the server model on the global test set: what that model is "
        "depends on the algorithm's family (see 'What test_accuracy means' below); NaN when it has none",
        EVAL,
    ),
    ("test_loss", "mean cross-entropy of the server model on the global test set", EVAL),
    ("test_macro_f1", "macro-averaged F1 of the server model on the global test set", EVAL),
    ("test_macro_precision", "macro-averaged precision (absent when there is no server model)", EVAL),
    ("test_macro_recall", "macro-averaged recall (absent when there is no server model)", EVAL),
    (
        "personal_accuracy",
        "every client's own model (its personalised or cluster model, or the "
        "global one) on its own local test split, example-weighted over all clients",
        PERSONAL,
    ),
    ("personal_loss", "the same clients' mean test loss, example-weighted", PERSONAL),
    (
        "personal_accuracy_mean",
        "the mean over clients of each client's personal accuracy (each "
        "client counts once, whatever its size)",
        PERSONAL,
    ),
    ("personal_accuracy_p10", "the 10th percentile of the clients' personal accuracies", PERSONAL),
    (
        "personal_accuracy_worst10",
        "the mean personal accuracy of the worst 10% of clients (at least one)",
        PERSONAL,
    ),
    (
        "personal_eval_clients",
        "clients scored this round: all of them (rounds.personal_eval all, or auto up to 10,000 "
        "clients) or a sample drawn from the round's seeded stream (a count, a fraction, auto above 10,000)",
        PERSONAL,
    ),
    (
        "personal_eval_shared",
        "of those, the clients scored in a batched pass over a shared model (the global or a cluster "
        "model); the others one forward pass each with their own model",
        PERSONAL,
    ),
    (
        "personal_accuracy_ci95_low",
        "lower end of the 95% interval of personal_accuracy as an estimate of the whole federation's: "
        "normal, ratio estimator over the sampled clients with the finite-population correction "
        "(equal to personal_accuracy when every client is scored)",
        PERSONAL,
    ),
    ("personal_accuracy_ci95_high", "upper end of the same interval", PERSONAL),
    (
        "personal_accuracy_mean_ci95_low",
        "lower end of the 95% interval of personal_accuracy_mean (normal, sample mean of the "
        "clients' accuracies, finite-population correction)",
        PERSONAL,
    ),
    ("personal_accuracy_mean_ci95_high", "upper end of the same interval", PERSONAL),
    # cluster tracking (the runtime's, for every algorithm that annotates clusters)
    (
        "num_clusters",
        "distinct clusters with at least one client this round (CFL and AS-CFL log "
        "their own count under this name)",
        CLUSTERS,
    ),
    (
        "cluster_stability",
        "Jaccard similarity of who shares a cluster with whom, this round vs the "
        "last (1: the same grouping; NaN in the first round)",
        CLUSTERS,
    ),
    (
        "cluster_ari",
        "adjusted Rand index of the clusters against the ground-truth groups, over the "
        "clients in a cluster that have a group (1: perfect; about 0: chance; NaN with fewer than two)",
        TRUTH,
    ),
    (
        "cluster_nmi",
        "normalised mutual information of the clusters against the ground-truth groups, "
        "over the same clients",
        TRUTH,
    ),
    (
        "cluster_clients",
        "how many clients cluster_ari and cluster_nmi cover: those in a cluster so far "
        "(IFCA: the clients sampled so far; CFL: all)",
        TRUTH,
    ),
    # the round's training
    ("train_loss", "mean final training loss of the clients that finished this round"),
    ("aggregated_clients", "clients whose updates the algorithm aggregated"),
    ("cohort", "clients asked to train this round"),
    (
        "lr",
        "the learning rate the round's clients were given: local.lr (or its override) x "
        "local.lr_decay^(round-1), before anything an algorithm changes per client",
        "local.lr_decay < 1",
    ),
    ("completed", "clients whose results came back"),
    ("dropouts", "clients of the cohort that failed, missed rounds.deadline_s or were quarantined"),
    (
        "quarantined",
        "clients left out because their update norm was >= rounds.quarantine_factor x the median",
    ),
    ("lost_clients", "clients lost for good so far (their actor died and they have no home)"),
    ("restarted_clients", "clients whose actor restarted this round (their state comes from a checkpoint)"),
    # communication
    ("bytes_down", "bytes the cohort downloaded: each client's model and further arrays"),
    ("bytes_up", "bytes the clients uploaded, as raysim's algorithms count them (dense float32 updates)"),
    (
        "transfer_bytes_up",
        "bytes actually moved from the client actors to the server (pre-summed updates: one per actor and model)",
    ),
    # timings (seconds)
    ("configure_s", "seconds the server spent planning the round"),
    ("broadcast_s", "seconds putting the round's arrays where the actors read them"),
    ("train_s", "seconds from dispatch until the last client result came back"),
    ("actor_busy_max_s", "the busiest client actor's seconds of work this round", "when actors report it"),
    ("actor_busy_mean_s", "the mean client actor's seconds of work this round", "when actors report it"),
    (
        "actor_cpu_max_s",
        "the largest CPU seconds one client actor's process spent on the round's clients (its work, "
        "which a loaded machine stretches far less than actor_busy_max_s: waiting for a core is not counted)",
        "when actors report it",
    ),
    (
        "actor_cpu_mean_s",
        "the mean client actor's CPU seconds on the round's clients",
        "when actors report it",
    ),
    ("aggregate_s", "seconds in the algorithm's aggregate"),
    ("evaluate_s", "seconds evaluating (0 in rounds without evaluation)"),
    ("round_s", "the whole round's wall-clock seconds"),
    # set-up
    (
        "base_test_accuracy",
        "test accuracy of the pre-trained starting model (algorithm.init_from: public)",
        "algorithms that pre-train on the server's public split",
    ),
    (
        "base_test_loss",
        "test loss of the pre-trained starting model",
        "algorithms that pre-train on the server's public split",
    ),
)

# each algorithm's own rounds.parquet columns (besides the runtime's above)
ALGORITHM_COLUMNS: dict[str, tuple[Column, ...]] = {
    "ifca": _cols(
        ("clients_cluster/<j>", "clients that chose cluster j's model this round"),
        ("nonempty_clusters", "clusters some client chose this round"),
    ),
    "cfl": _cols(
        ("splits", "clusters split this round"),
        (
            "mean_update_norm",
            "largest norm of a cluster's mean update (CFL's eps1 test)",
            "when a cluster trained",
        ),
        (
            "max_update_norm",
            "largest single client update norm in a cluster (CFL's eps2 test)",
            "when a cluster trained",
        ),
    ),
    "ascfl": _cols(
        (
            "similarity_rank",
            "rank of the low-rank embedding of the compared block (algorithm.similarity_layers)",
            "algorithm.low_rank",
        ),
        ("clusters_initial", "clusters after the greedy seed-and-expand stage"),
        ("incentive_evals", "proxy-set evaluations of the positive-incentive test"),
        ("incentive_rejections", "candidates the positive-incentive test refused"),
        ("clusters_em", "clusters after the EM refinement", "algorithm.dynamic_adjustment"),
        ("splits", "clusters split by the dispersion/separation rule", "algorithm.dynamic_adjustment"),
        ("merges", "clusters merged by the dispersion/separation rule", "algorithm.dynamic_adjustment"),
        ("g_max", "largest dispersion/separation ratio G_k over the clusters", "two or more clusters"),
        ("g_min", "smallest dispersion/separation ratio G_k", "two or more clusters"),
        (
            "g_truth_max",
            "largest G_k of the ground-truth partition of the participants (a true group with G_k > beta is split)",
            "client groups known, two or more among the participants",
        ),
        (
            "g_truth_min",
            "smallest G_k of the ground-truth partition of the participants",
            "client groups known, two or more among the participants",
        ),
        ("beta_used", "the split threshold beta of the round", "algorithm.dynamic_adjustment"),
        ("dp_clipped_fraction", "fraction of updates clipped by differential privacy", "algorithm.dp"),
        ("dp_sigma", "the Gaussian noise multiplier", "algorithm.dp"),
        ("epsilon_spent", "privacy budget spent so far (epsilon at algorithm.delta)", "algorithm.dp"),
        ("update_norm_mean", "mean client update norm"),
        ("uplink_bytes_full", "uplink of the round with every update dense"),
        ("uplink_bytes_lowrank", "uplink with the output layer sent as low-rank factors"),
        (
            "output_rank_mean",
            "mean rank of the clients' output-layer factors",
            "a model with an output layer",
        ),
    ),
    "dsac": _cols(
        (
            "dropped_by_floor",
            "updates dropped because their decayed weight fell under algorithm.weight_floor",
        ),
        ("dropout_rate", "dropped_by_floor / the round's results"),
        ("jain", "Jain's fairness index of the clients' cumulative aggregation weight"),
        ("global_loss", "eq. 8's global loss: the sub-models' data-weighted training losses, combined"),
        ("num_groups", "client groups (the clusters the runtime tracks)"),
        ("num_submodels", "sub-models the model is partitioned into"),
        ("submodels_untouched", "sub-models no update reached this round"),
        ("silhouette", "mean silhouette of the round's update clusterings"),
        ("intra_cluster", "mean intra-cluster distance of the round's update clusterings"),
        ("converged", "1 once the global loss has converged (algorithm.converge_tol)"),
        (
            "rounds_missed_mean",
            "mean staleness (rounds missed) of the round's updates",
            "rounds with results",
        ),
        ("versions_held", "model versions kept for stale clients", "algorithm.staleness: last_model"),
    ),
    "genetic-cfl": _cols(
        ("diverged_clients", "clients whose training diverged this round"),
        ("val_loss", "mean validation loss of the clients that trained"),
        ("groups", "hyperparameter groups (DBSCAN clusters and noise clients)"),
        ("dbscan_clusters", "DBSCAN clusters among the groups"),
        (
            "largest_group",
            "clients in the largest group (near num_clients: DBSCAN found one population, not clusters)",
        ),
        ("noise_clients", "clients DBSCAN left as noise (each its own group)"),
        ("elites", "clients that kept their hyperparameters this generation"),
        ("redrawn", "clients whose hyperparameters were re-drawn this generation"),
        ("log10_lr_mean", "mean log10 of the clients' learning rates"),
        ("log10_lr_min", "smallest log10 learning rate"),
        ("log10_lr_max", "largest log10 learning rate"),
        ("batch_size_mean", "mean of the clients' batch sizes"),
    ),
    "pfedht": _cols(
        ("hn_update_s", "seconds updating the hypernetwork"),
        ("hn_generate_s", "seconds generating client models"),
        ("hn_generated", "client models generated this round"),
        ("hn_grad_norm", "L2 norm of the hypernetwork's gradient this round, before clipping"),
        ("embed_drift", "mean over clients of ||z_i - z_i(0)|| / ||z_i(0)||: how far the embeddings moved"),
        ("hn_params", "hypernetwork parameters"),
        ("hn_state_mb", "the server state's size in MB"),
        ("server_rss_mb", "the server process's resident memory in MB"),
    ),
}
ALGORITHM_COLUMNS["pfedhn"] = ALGORITHM_COLUMNS["pfedht"]

# columns an algorithm adds to clients.parquet (its client_annotations)
CLIENT_ANNOTATIONS = _cols(
    ("cluster", "the client's cluster id after the round (-1: none yet)", CLUSTERS),
    ("cluster_model_key", "the model the client's cluster trains (DSAC: global)", "dsac"),
    ("group", "the client's group (-1: ungrouped)", "dsac"),
    ("weight", "the client's last aggregation weight", "dsac"),
    ("lr", "the learning rate the client trained with", "genetic-cfl"),
    ("batch_size", "the batch size the client trained with", "genetic-cfl"),
    ("val_loss", "the client's last validation loss", "genetic-cfl"),
    ("elite", "1: kept its hyperparameters this generation", "genetic-cfl"),
    ("redrawn", "1: hyperparameters re-drawn this generation", "genetic-cfl"),
    ("new_client", "1: a client held out of training until algorithm.new_client_round", "pfedht, pfedhn"),
)

SUMMARY_KEYS = _cols(
    ("name", "the experiment's name"),
    ("algorithm", "algorithm.name"),
    ("family", "global, clustered or personalised: which metrics to read first"),
    (
        "headline",
        "the algorithm's headline metrics, each at the last round that logged it (null: never logged)",
    ),
    ("test_accuracy_means", "what test_accuracy measures for this algorithm"),
    ("num_clients", "clients in the federation (data.num_clients)"),
    ("rounds", "rounds run"),
    ("final_test_accuracy", "test_accuracy of the last evaluated round (null: none)"),
    ("best_test_accuracy", "the highest test_accuracy of any round"),
    ("final_personal_accuracy", "personal_accuracy of the last evaluated round"),
    ("total_seconds", "set-up plus rounds, seconds"),
    ("setup_seconds", "data, actors and everything before round 1, seconds"),
    (
        "loop_seconds",
        "the rounds, seconds (a resumed run: the rounds restored counted by their round_s, plus the rest)",
    ),
    ("resumed_from_round", "the checkpoint's round its newest resume continued after; null: run in one go"),
    ("median_round_seconds", "median round_s"),
    ("peak_rss_mb", "the largest peak resident memory of any one process (driver, server, actor), MB"),
    ("total_peak_rss_mb", "the sum of every actor's peak resident memory, MB"),
    ("dropouts", "dropouts summed over rounds"),
    ("server_restarts", "server actors lost and replaced from a checkpoint"),
    ("lost_clients", "clients lost for good by the end"),
    ("bytes_up", "bytes_up summed over rounds"),
    ("bytes_down", "bytes_down summed over rounds"),
    ("client_actors", "client actors (hosts) the clients were packed onto"),
    (
        "server_node_id",
        "the Ray node the server actor ran on (on KubeRay: the head); null on the serial backend",
    ),
    (
        "finished",
        "true: the run reached its end (last round, convergence, a stop rule); "
        "`raysim run --resume-if-present` then prints this summary instead of running again",
    ),
    ("run_dir", "this directory"),
)

RUN_FILES: tuple[OutputFile, ...] = (
    OutputFile(
        "config.yaml", "the experiment's config, every value resolved (what `raysim run config.yaml` reruns)"
    ),
    OutputFile(
        "partition.parquet",
        "one row per client: how the data was split",
        _cols(
            ("client_id", "the client"),
            ("group", "its ground-truth group (-1: the partition has none)"),
            ("rotation", "quarter turns applied to its images (rotation partitions)"),
            ("n_train", "training examples"),
            ("n_val", "validation examples"),
            ("n_test", "local test examples (personal_accuracy is measured on them)"),
            ("label_hist", "examples per class in its training split"),
        ),
    ),
    OutputFile(
        "environment.json",
        "what produced the run: commit, packages, CPU and the ISA torch used, Ray nodes (`raysim report` compares runs on it)",
        _cols(
            ("raysim", "raysim's version and git commit (+dirty: uncommitted changes)"),
            ("command", "the command line"),
            ("created", "when (UTC)"),
            ("host", "the driver's host name"),
            ("platform", "operating system and machine"),
            ("python", "Python version"),
            ("cpu", "CPU model, cores and the instruction sets torch dispatched to"),
            ("gpus", "GPUs visible to the driver"),
            ("packages", "versions of the packages that compute"),
            ("reproducible", "resources.reproducible and the settings it applied"),
            ("cluster", "the backend and, on Ray, the nodes"),
            ("resumed", "the same record for each time the run was resumed", "a resumed run"),
        ),
        columns_title="keys",
    ),
    OutputFile(
        "rounds.parquet",
        "one row per round: the run's metrics (the runtime's columns below, then the algorithm's own, "
        "listed under 'Columns each algorithm adds')",
        ROUND_COLUMNS,
    ),
    OutputFile(
        "clients.parquet",
        "per round, one row per client of the cohort (participated true) and, in evaluated rounds "
        "with rounds.personal_eval, one row per client scored (participated false: every client of "
        "the federation, or the round's seeded sample) with its personal figures",
        _cols(
            ("round", "the round"),
            ("client_id", "the client"),
            ("participated", "true: a row of the round's cohort; false: a personal-evaluation row"),
            ("dropped", "the client was asked to train and its result did not count"),
            ("reason", "why it dropped (an error, the deadline, quarantine); '' otherwise"),
            ("num_examples", "examples it trained on (0 when dropped or not in the cohort)"),
            ("train_loss", "its final training loss (NaN when dropped)"),
            ("model_key", "the model it trained from: global, cluster/<j>, ..."),
            (
                "personal_accuracy",
                "its own model's accuracy on its local test split",
                "personal-evaluation rows",
            ),
            (
                "personal_loss",
                "its own model's mean loss on its local test split",
                "personal-evaluation rows",
            ),
        )
        + CLIENT_ANNOTATIONS,
    ),
    OutputFile(
        "system.parquet",
        "per evaluated round, one row per process: the server's client actors (hosts) and the driver",
        _cols(
            ("round", "the round"),
            ("actor", "the client actor's index (-1: the driver)"),
            ("pid", "its process id"),
            ("num_clients", "clients it hosts"),
            ("rss_mb", "resident memory now, MB"),
            ("peak_rss_mb", "peak resident memory so far, MB"),
            ("cpu_percent", "CPU use since the last sample, percent of one core"),
            ("minor_faults", "page faults served without I/O since it started", "client actors"),
            ("device", "cpu, cuda:<i>, or driver"),
            ("gpu_ids", "the GPUs Ray gave it ('' : none)"),
        ),
    ),
    OutputFile(
        "clusters.parquet",
        "per round, one row per client annotated with a cluster: the membership `plots/clusters.png` draws",
        _cols(
            ("round", "the round"),
            ("client_id", "the client"),
            ("cluster", "its cluster id (-1: none yet, e.g. IFCA before it is first sampled)"),
            ("model_key", "the model its cluster trains ('' when in none)"),
            ("true_group", "its ground-truth group (-1: none)", "partitions with ground-truth groups"),
        ),
        when=CLUSTERS,
    ),
    OutputFile(
        "summary.json",
        "the run in one object: what to read first (family, headline) and totals; `raysim run` prints part of it",
        SUMMARY_KEYS,
        columns_title="keys",
    ),
    OutputFile(
        "checkpoints/round_<n>/",
        "the whole FL state after round n (`state.json`, `arrays.bin`, `config.yaml`); the newest two are kept, "
        "`raysim run --resume RUN_DIR` continues from the newest",
        when="rounds.checkpoint_every > 0",
    ),
    OutputFile(
        "tensorboard/",
        "TensorBoard event files of every round's metrics",
        when="output.trackers: [tensorboard]",
    ),
    OutputFile(
        "mlflow.db",
        "the MLflow store (`mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db`)",
        when="output.trackers: [mlflow] without output.mlflow_uri",
    ),
    OutputFile(
        "mlflow.json", "the MLflow run this directory logs to (for resume)", when="output.trackers: [mlflow]"
    ),
    OutputFile(
        "plots/summary.md",
        "the runs at a glance: each run's headline metrics and what its test_accuracy means, a table of "
        "totals, a note for every plot not drawn and why, and the environment",
        when="`raysim report RUN_DIR` or `raysim run --report`",
    ),
    OutputFile(
        "plots/<metric>.png",
        "the metric per round, one line per run, for test_accuracy, test_loss, personal_accuracy, train_loss, "
        "cluster_ari, cluster_nmi and cluster_stability (a metric no run logged is skipped; summary.md says why)",
        when="`raysim report`",
    ),
    OutputFile(
        "plots/clusters.png",
        "cluster membership over rounds (clients x rounds, coloured by cluster; true groups in a labelled grey "
        "strip) with ARI, NMI and stability under it",
        when="`raysim report` of a clustered run",
    ),
)

TRIAL_COLUMNS = _cols(
    ("trial_id", "Tune's trial id"),
    ("status", "done or error"),
    ("round", "the round this row reports"),
    ("<metric>", "every numeric column of the trial's rounds.parquet, as that round reported it"),
    ("driver_peak_rss_mb", "the trial process's peak resident memory, MB"),
    (
        "hparams/<name>",
        "the client hyperparameter the round's tasks carried, when every client had the same (PBT changes "
        "them during a trial; an algorithm may replace the config's local.*)",
    ),
    (
        "hparams/<name>_cohort_<stat>",
        "a client hyperparameter that differed between the round's clients (e.g. genetic CFL's per-client "
        "lr): its mean, min and max over the cohort",
        "an algorithm that sets it per client",
    ),
    (
        "config/<knob>",
        "the value of each knob of the sweep's space, and config/seed, that this round ran with (a PBT trial's "
        "schedule, round by round)",
    ),
    (
        "proposed_by",
        "who chose the trial's knobs: 'random start-up (Optuna)' for the trials TPE draws at random before "
        "optuna.n_startup_trials have finished, 'TPE' for those its model proposed; 'NSGA-II' or 'random' "
        "for those samplers ('': unknown)",
        "mode optuna",
    ),
    ("placement_group_id", "the Ray placement group the trial ran in"),
    (
        "restored_from_trial",
        "the trial whose checkpoint this one continued from (PBT exploit)",
        "the first report after a restore",
    ),
    ("restored_from_round", "that checkpoint's round", "the first report after a restore"),
    (
        "exploited",
        "1: the checkpoint was another trial's (a PBT exploit); 0: the trial's own (a resume or a "
        "synchronous PBT pause)",
        "the first report after a restore",
    ),
)

SWEEP_FILES: tuple[OutputFile, ...] = (
    OutputFile("sweep.yaml", "the spec with its base config inlined (what `raysim tune --resume` reads)"),
    OutputFile("trials.parquet", "one row per trial and round", TRIAL_COLUMNS),
    OutputFile(
        "best.yaml",
        "the best trial's experiment as a config `raysim run` accepts (its header says how it was picked)",
        when="a trial finished",
    ),
    OutputFile(
        "sweep.json",
        "the best trial, counts, the seeds used to tune, grid points (mean and 95% CI over seeds), "
        "the Pareto front (multi-objective)",
    ),
    OutputFile(
        "summary.md",
        "every trial with its knobs, rounds and final metric (with who proposed it in optuna "
        "mode), and a note for every promised plot that was not drawn and why",
    ),
    OutputFile(
        "optuna.db", "the Optuna study (SQLite; `optuna-dashboard sqlite:///optuna.db`)", when="mode optuna"
    ),
    OutputFile(
        "plots/curves.png",
        "the metric per round, one line per trial (grid with seeds: per point, min-max band)",
    ),
    OutputFile(
        "plots/knobs.png",
        "each knob against the final metric (hollow: trials stopped early)",
        when="a knob varied and a trial finished",
    ),
    OutputFile("plots/pareto.png", "the Pareto front", when="multi-objective sweeps"),
    OutputFile(
        "plots/importance.png",
        "fANOVA importance of each knob for the metric (Optuna's evaluator)",
        when="two or more knobs varied over at least four finished trials, not PBT",
    ),
    OutputFile(
        "validation.json",
        "the best config rerun on fresh seeds: the seeds, their values and the mean",
        when="`raysim tune --validate-best SWEEP_DIR`",
    ),
    OutputFile(
        "mlflow.db",
        "the trials' metrics as MLflow runs, one per trial",
        when="the base config's output.trackers has mlflow without output.mlflow_uri",
    ),
    OutputFile("trial_<id>/run/", "each trial's own run directory (see 'A run directory')"),
)


# -- matching and rendering --------------------------------------------------------------------------
def _pattern(name: str) -> re.Pattern[str]:
    """What ``name`` stands for; a bare placeholder (``<metric>``: the columns of another table)
    stands for nothing here, so it cannot hide a column the registry lacks."""
    if re.fullmatch(r"<[^>]+>", name):
        return re.compile(r"(?!)")
    parts = re.split(r"<[^>]+>", name)
    return re.compile("^" + ".+".join(re.escape(p) for p in parts) + "$")


def undocumented(names: Iterable[str], columns: Sequence[Column]) -> list[str]:
    """The ``names`` no column of ``columns`` stands for (placeholders match any text)."""
    pats = [_pattern(c.name) for c in columns]
    return [n for n in names if not any(p.match(n) for p in pats)]


def run_file(path: str) -> OutputFile:
    for f in RUN_FILES:
        if f.path == path:
            return f
    raise KeyError(path)


def rounds_columns(algorithm: str | None = None) -> tuple[Column, ...]:
    """rounds.parquet's documented columns: the runtime's, plus ``algorithm``'s own (all when None)."""
    if algorithm is None:
        return ROUND_COLUMNS + tuple(c for cols in ALGORITHM_COLUMNS.values() for c in cols)
    return ROUND_COLUMNS + ALGORITHM_COLUMNS.get(algorithm, ())


def _table(columns: Sequence[Column], title: str) -> list[str]:
    head = f"| {title[:-1] if title.endswith('s') else title} | meaning | when |"
    lines = [head, "|---|---|---|"]
    for c in columns:
        lines.append(f"| `{c.name}` | {_cell(c.meaning)} | {_cell(c.when) or 'always'} |")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _files(files: Sequence[OutputFile], prefix: str) -> list[str]:
    lines = ["| file | what | when |", "|---|---|---|"]
    for f in files:
        lines.append(f"| `{prefix}{f.path}` | {_cell(f.meaning)} | {_cell(f.when) or 'always'} |")
    for f in files:
        if f.columns:
            meaning = _cell(f.meaning)
            lines += ["", f"### `{prefix}{f.path}`", "", meaning[:1].upper() + meaning[1:] + ".", ""]
            lines += _table(f.columns, f.columns_title)
    return lines


def _algorithms() -> list[str]:
    from raysim.algorithms import ALGORITHMS

    lines = [
        "| algorithm | family | headline metrics | test_accuracy is |",
        "|---|---|---|---|",
    ]
    for name in sorted(ALGORITHMS):
        cls = ALGORITHMS[name]
        head = ", ".join(f"`{m}`" for m in cls.headline_metrics())
        lines.append(f"| `{name}` | {cls.family} | {head} | {_cell(cls.test_accuracy_meaning())} |")
    return lines


def render() -> str:
    """docs/outputs.md."""
    lines = [
        "# What a run and a sweep write",
        "",
        "<!-- generated by `python -m raysim.outputs > docs/outputs.md` from raysim/outputs.py and the",
        "algorithms' declarations; edit those, not this page (tests/test_outputs.py checks they agree) -->",
        "",
        "A run directory is `output.dir/<name>` (`runs/quickstart`, `runs/quickstart-2`, ...); a sweep",
        "directory is the spec's `storage_path/<name>`. Tables are Parquet (`pandas.read_parquet`).",
        "",
        "## What to read first",
        "",
        'Each algorithm belongs to a family, and the family says which numbers answer "did it work".',
        "`summary.json` (`family`, `headline`), `plots/summary.md`, the progress line and the JSON",
        "`raysim run` prints lead with them.",
        "",
        "| family | headline metrics | test_accuracy is |",
        "|---|---|---|",
    ]
    for fam, names in FAMILY_HEADLINE.items():
        head = ", ".join(f"`{m}`" for m in names)
        lines.append(f"| {fam} | {head} | {_cell(FAMILY_TEST_ACCURACY[fam])} |")
    lines += [
        "",
        "### What test_accuracy means, per algorithm",
        "",
        "`test_accuracy` always scores one model, the server's (`Algorithm.server_model`), on the",
        "global test set: the dataset's test split, untransformed, which no client holds. Only for a",
        "global algorithm is that the result. A clustered method's clients each use their cluster's",
        "model on data like their own (`personal_accuracy`); a personalised method's clients each use",
        "their own (`personal_accuracy_mean`, `personal_accuracy_worst10`).",
        "",
        *_algorithms(),
        "",
        "A plug-in algorithm declares `family` (and optionally `headline`, `test_accuracy_means`) on",
        "its class (docs/extending.md); undeclared, it is `global`.",
        "",
        "## A run directory",
        "",
        *_files(RUN_FILES, ""),
        "",
        "### Columns each algorithm adds to `rounds.parquet`",
        "",
        "Besides the runtime's columns above. A plug-in algorithm's metrics (what its `aggregate`",
        "returns) become columns too, under the names it gives them.",
    ]
    for algo, cols in ALGORITHM_COLUMNS.items():
        lines += ["", f"#### `{algo}`", "", *_table(cols, "columns")]
    lines += [
        "",
        "## A sweep directory (`raysim tune`)",
        "",
        "Besides Ray Tune's own experiment state and trial directories.",
        "",
        *_files(SWEEP_FILES, ""),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
