"""Tuning every method alike (``raysim reproduce pfedht --tune``, ``... clustered --tune``).

Before a setting's evaluation runs, each method's key learning rates, and only those, are tuned with
the sweeps layer ``raysim tune`` uses (a sweep spec built here, validated by ``tuning.spec``'s own
loader, run or reused by ``tuning.present.run_or_resume``), on the tuning seed 0, at the experiment's
own horizon, split, cohort and local budget. Every method gets the same budget: ``trials`` runs
(``--tune-trials``, default 4):

* a method with one knob (``local.lr``): a grid of ``trials`` log-spaced values over
  ``[value * low, value * high]`` around the value the reproduction runs it at (at the default
  factors (1/4, 2) and 4 trials: value x 1/4, 1/2, 1, 2, so the untuned setting is one of them);
* a method with several knobs (pFedHT and pFedHN: ``local.lr``, ``algorithm.hn_lr``,
  ``algorithm.embed_lr``; pFedMe: ``local.lr``, ``algorithm.personal_lr``): Optuna's TPE, seeded
  (seed 0), over each knob's log-uniform range, ``trials`` trials of which the first ``trials // 2``
  are TPE's random start-up draws. A grid of the same size would give each of 2-3 knobs only
  ``trials ** (1/knobs)`` values (at 4 trials: two per knob, or one); a seeded TPE spends the same
  budget on as many distinct values per knob as trials. Its trials run one at a time, so TPE sees
  the same finished trials on every invocation (the same proposals from the same seed).

The knobs per algorithm are the explicit table ``KNOBS`` (an algorithm missing from it is refused,
naming it). Genetic CFL has none: it draws and evolves every client's learning rate itself (its
genetic algorithm is its tuning, and ``raysim tune`` refuses ``local.lr`` for it), so it runs as the
reproduction configures it. The objective is the reproduction's reported metric on seed 0, its
last round (``personal_accuracy``: each client's own model on its own test split; seed 0's shards are
not the evaluation seeds' shards), never a number from an evaluation seed (1..N). The sweeps'
trials evaluate every round (``rounds.eval_every: 1``, which the tuning layer requires of a sweep on a
test metric); nothing else of the reproduction's config changes.

Each method's chosen values (the best trial's) are merged into its evaluation configs, so their
run keys change with them (a run cached at another lr is not reused by mistake). The sweeps live
under ``<out>/tune/<algorithm>-<hash of the sweep>``; rerunning the command reuses a finished one.
Each experiment's ``tuned.json`` records, per setting and method, the knobs, the values tried with
their objective, and the choice; its ``table.md`` gets a table of the chosen values.

``--tuned FILE`` carries choices from one run to another (another machine, a later session, a
tuned.json kept in the repository): a choice recorded there is reused for the sweep it came from
and no other. Sweeps are named by a hash of their whole spec (``spec_name``: base config, knobs,
ranges, trials, metric), so a recorded choice can only stand in for the very sweep that made it;
every other sweep runs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from raysim.reproduce.harness import Finished, run_reproduction, table

Echo = Callable[[str], None]

TUNING_SEED = 0  # the seed every sweep runs on; reported runs use seeds 1..N
DEFAULT_TRIALS = 4

LR = "local.lr"
LOCAL_LR = (0.25, 2.0)  # factors of the configured value: at 4 trials x 1/4, 1/2, 1, 2
HN_LR = (0.1, 10.0)  # a hypernetwork's (and embeddings') lr: a decade either side

# algorithm name -> {dotted config key: (low, high) factors of the configured value}. Only learning
# rates, and each algorithm's own ones: the local SGD step every method has, and the server-side
# or personal steps a method adds.
KNOBS: dict[str, dict[str, tuple[float, float]]] = {
    "fedavg": {LR: LOCAL_LR},
    "fedprox": {LR: LOCAL_LR},
    "fedper": {LR: LOCAL_LR},
    "fedbn": {LR: LOCAL_LR},
    "fedrod": {LR: LOCAL_LR},  # its personal head trains at local.lr (personal_lr: None)
    "local": {LR: LOCAL_LR},
    "cfl": {LR: LOCAL_LR},
    "ifca": {LR: LOCAL_LR},
    "ascfl": {LR: LOCAL_LR},  # trains at local.lr (lr_decay 1 in the reproduction)
    "dsac": {LR: LOCAL_LR},
    # pFedMe's outer step is local.lr (eta), its inner proximal steps personal_lr; x 2 keeps both
    # below 2 / lambda_ (15) at the default 0.05
    "pfedme": {LR: LOCAL_LR, "algorithm.personal_lr": LOCAL_LR},
    # the target model's local steps, the hypernetwork phi's step, the embeddings' step
    "pfedht": {LR: LOCAL_LR, "algorithm.hn_lr": HN_LR, "algorithm.embed_lr": HN_LR},
    "pfedhn": {LR: LOCAL_LR, "algorithm.hn_lr": HN_LR, "algorithm.embed_lr": HN_LR},
    "genetic-cfl": {},  # draws and evolves each client's lr itself
}


def knobs_for(algorithm: str) -> dict[str, tuple[float, float]]:
    """The knobs ``algorithm`` is tuned on (``KNOBS``); an algorithm not in the table is refused."""
    if algorithm not in KNOBS:
        raise KeyError(
            f"fair tuning: no knob table entry for algorithm {algorithm!r}; add its learning rates to "
            "KNOBS in raysim/reproduce/fair.py (or {} if it sets its own)"
        )
    return KNOBS[algorithm]


def current_value(raw: Mapping[str, Any], key: str) -> float:
    """The value ``key`` has in the run ``raw`` describes (the config's, else its default)."""
    from raysim.algorithms import algorithm_class
    from raysim.config import config_from_dict

    cfg = config_from_dict(dict(raw), "fair tuning base")
    section, _, name = key.partition(".")
    if section == "local":
        return float(getattr(cfg.local, name))
    if section == "algorithm":
        params = algorithm_class(cfg.algorithm.name).params_model.model_validate(cfg.algorithm.params)
        value = getattr(params, name)
        if value is None:
            raise ValueError(f"fair tuning: {key} is unset (None) for {cfg.algorithm.name}; give it a value")
        return float(value)
    raise ValueError(f"fair tuning: knob {key!r} is neither local.* nor algorithm.*")


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def grid_values(value: float, factors: tuple[float, float], trials: int) -> list[float]:
    """``trials`` log-spaced values from ``value * low`` to ``value * high`` (4 significant digits)."""
    lo, hi = factors
    return [_round(v) for v in np.geomspace(value * lo, value * hi, trials)]


def sweep_spec(
    name: str, base: Mapping[str, Any], trials: int, metric: str, storage: Path, jobs: int = 1
) -> dict[str, Any]:
    """The sweep spec (a ``raysim tune`` YAML, as a dict) that tunes the method of ``base``: its
    knobs (``KNOBS``), ``trials`` runs on seed 0, judged on ``metric``'s last round."""
    if trials < 2:
        raise ValueError(f"--tune-trials must be >= 2 (a choice needs two candidates), got {trials}")
    algo = str(base["algorithm"]["name"])
    knobs = knobs_for(algo)
    if not knobs:
        raise ValueError(f"fair tuning: {algo} has no knob to tune (see KNOBS)")
    tuned_base = json.loads(json.dumps(dict(base)))  # a deep copy
    tuned_base["seed"] = TUNING_SEED
    tuned_base.setdefault("rounds", {})["eval_every"] = 1  # a sweep on a test metric needs it
    spec: dict[str, Any] = {
        "name": name,
        "base": tuned_base,
        "metric": metric,
        "goal": "max",
        "seeds": [TUNING_SEED],
        "storage_path": str(storage),
        "max_failures": 0,  # a failed trial is a bug, not something to retry
    }
    if len(knobs) == 1:
        ((key, factors),) = knobs.items()
        values = grid_values(current_value(base, key), factors, trials)
        spec |= {"mode": "grid", "space": {key: {"grid": values}}, "max_concurrent_trials": jobs}
    else:
        space = {}
        for key, (lo, hi) in knobs.items():
            v = current_value(base, key)
            space[key] = {"loguniform": [_round(v * lo), _round(v * hi)]}
        spec |= {
            "mode": "optuna",
            "space": space,
            "num_samples": trials,
            "max_concurrent_trials": 1,  # TPE proposes from the same finished trials every time
            "optuna": {"sampler": "tpe", "seed": TUNING_SEED, "n_startup_trials": trials // 2},
        }
    return spec


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:40] or "method"


def spec_name(label: str, spec_body: Mapping[str, Any]) -> str:
    """A sweep's directory name: ``label`` (the algorithm's name) and a hash of everything that
    defines the sweep (its base config, space and budget), so a changed sweep never reuses another's
    results, and two rows that run the same config (one experiment's reference row and another's
    method) share one sweep."""
    body = {k: v for k, v in spec_body.items() if k not in ("name", "storage_path", "max_concurrent_trials")}
    digest = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:10]
    return f"{slug(label)}-{digest}"


@dataclass
class Choice:
    """One method's tuning on one setting: what was tried and what was chosen."""

    algorithm: str
    knobs: list[str]
    start: dict[str, float]  # the values the reproduction would run it at untuned
    chosen: dict[str, float]
    objective: float  # the chosen trial's metric on seed 0
    trials: list[dict[str, float]]  # every trial: its knob values and metric
    mode: str
    sweep: str  # the sweep directory

    def as_json(self) -> dict[str, Any]:
        out = self.__dict__.copy()
        out["objective"] = self.objective if math.isfinite(self.objective) else None
        return out


@dataclass
class FairTuner:
    """Tunes each method of a setting before its evaluation runs (see the module docstring) and
    records the choices of the experiment being run (``experiment``)."""

    out: Path
    trials: int = DEFAULT_TRIALS
    jobs: int = 1
    echo: Echo = print
    experiment: str = ""
    records: dict[str, dict[str, dict[str, Choice]]] = field(default_factory=dict)  # exp -> setting -> method
    recorded: dict[str, Choice] = field(default_factory=dict)  # sweep name -> choice (--tuned files)
    _memo: dict[str, Choice] = field(default_factory=dict)
    _ray: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _started: bool = False

    def close(self) -> None:
        """Stop the Ray session the sweeps shared (if this tuner started one)."""
        self._ray.close()

    def _session(self) -> None:
        """One Ray session for every sweep of the reproduction (started on the first sweep that runs;
        ``tuning.sweep.ray_session`` reuses it for each sweep and for ``--jobs`` batches)."""
        if not self._started:
            from tuning.sweep import ray_session

            self._ray.enter_context(ray_session(None))  # starts none when Ray is up already
            self._started = True

    def tune(self, label: str, method: str, base: Mapping[str, Any], metric: str) -> Choice | None:
        """Tune ``method`` (its seed-0 config ``base``), recorded under setting ``label``. A method
        with no knob (``KNOBS``) is recorded as such and runs as configured."""
        algo = str(base["algorithm"]["name"])
        if not knobs_for(algo):
            none = Choice(algo, [], {}, {}, math.nan, [], "none", "")
            self.records.setdefault(self.experiment, {}).setdefault(label, {})[method] = none
            return none
        storage = (self.out / "tune").resolve()
        raw = sweep_spec("x", base, self.trials, metric, storage, self.jobs)
        raw["name"] = spec_name(algo, raw)
        choice = self._memo.get(raw["name"])
        if choice is None and raw["name"] in self.recorded:
            choice = self.recorded[raw["name"]]
            self.echo(
                f"[tune {label}] {method}: {fmt_values(choice.chosen)}, recorded for sweep {raw['name']} "
                "(--tuned; not run here)"
            )
            self._memo[raw["name"]] = choice
        if choice is None:
            choice = self._run(raw, algo, metric, label, method)
            self._memo[raw["name"]] = choice
        self.records.setdefault(self.experiment, {}).setdefault(label, {})[method] = choice
        self.save()  # at once, not after the evaluation runs: an interrupted reproduction keeps it
        return choice

    def _run(self, raw: dict[str, Any], algo: str, metric: str, label: str, method: str) -> Choice:
        from tuning.present import failed_trials, run_or_resume, sweep_state
        from tuning.spec import spec_from_dict

        directory = Path(raw["storage_path"]) / raw["name"]
        fresh = sweep_state(directory) != "finished"
        saved = directory / "sweep.yaml"
        if saved.is_file():  # the same sweep run with another --jobs: keep the concurrency it ran at
            import yaml

            ran = yaml.safe_load(saved.read_text()) or {}
            raw["max_concurrent_trials"] = ran.get("max_concurrent_trials", raw["max_concurrent_trials"])
        # the tuning layer's own loader validates the spec (every grid point / range end against the
        # experiment schema, every knob one the algorithm reads, the metric one a probe round reports)
        loaded = spec_from_dict(raw, f"fair tuning of {method}", self.out, probe=fresh)
        self.echo(f"[tune {label}] {method}: {self.trials} trials on seed {TUNING_SEED} ({raw['mode']})")
        retry = not fresh and bool(failed_trials(directory))  # they run again (retry_failed below)
        if fresh or retry:
            self._session()
        if retry:
            self.echo(f"[tune {label}] {method}: retrying the failed trials of {directory}")
        outcome = run_or_resume(loaded, echo=lambda m: None, verbose=0, retry_failed=True)
        if outcome.errors or outcome.best is None:
            raise RuntimeError(
                f"fair tuning of {method} ({label}): sweep {outcome.directory} failed: "
                + ("; ".join(outcome.errors) or "no trial finished")
                + " (each failed trial's error is in error.txt in its folder there; running the "
                "command again retries the failed trials from their newest checkpoints)"
            )
        knobs = list(raw["space"])
        trials = trial_values(outcome.directory, knobs, metric)
        chosen = {k: float(outcome.best["config"][k]) for k in knobs}
        start = {k: current_value(raw["base"], k) for k in knobs}
        self.echo(
            f"[tune {label}] {method}: chose {fmt_values(chosen)} ({metric} {outcome.best[metric]:.4f})"
        )
        return Choice(
            algorithm=algo,
            knobs=knobs,
            start=start,
            chosen=chosen,
            objective=float(outcome.best[metric]),
            trials=trials,
            mode=str(raw["mode"]),
            sweep=str(outcome.directory),
        )

    def save(self, folder: Path | None = None) -> None:
        """The current experiment's ``tuned.json`` (in ``<out>/<experiment>`` by default), written
        whole each time a choice is made, so that the choices of a reproduction stopped during its
        evaluation runs can be carried over (``--tuned``)."""
        from raysim.atomic import atomic_write_text

        rec = self.records.get(self.experiment, {})
        body = {
            "tuning_seed": TUNING_SEED,
            "trials_per_method": self.trials,
            "settings": {s: {m: c.as_json() for m, c in by.items()} for s, by in rec.items()},
        }
        folder = self.out / self.experiment if folder is None else folder
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "tuned.json", json.dumps(body, indent=2) + "\n")

    def write(self, folder: Path) -> None:
        """The current experiment's ``tuned.json``, and the chosen values appended to its table.md."""
        rec = self.records.get(self.experiment, {})
        self.save(folder)
        md = folder / "table.md"
        if md.is_file():
            md.write_text(md.read_text().rstrip() + "\n\n" + tuned_table(rec, self.trials) + "\n")


def trial_values(directory: Path, knobs: Sequence[str], metric: str) -> list[dict[str, float]]:
    """Every trial of a finished sweep: its knob values and its metric's last value."""
    import pandas as pd

    from tuning.outputs import final_value

    t = pd.read_parquet(directory / "trials.parquet")
    out = []
    for _, df in t.groupby("trial_id", sort=False):
        row = {k: float(df[f"config/{k}"].dropna().iloc[-1]) for k in knobs}
        row[metric] = final_value(df, metric)
        out.append(row)
    return out


def fmt_values(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in values.items())


def edge_note(c: Choice) -> str:
    """ " (top of the grid)" / " (bottom of the grid)" when a one-knob method's choice is an end of
    its grid (the best value may lie beyond it: a wider range or more trials would tell)."""
    if c.mode != "grid" or len(c.knobs) != 1 or not c.trials:
        return ""
    (key,) = c.knobs
    tried = [t[key] for t in c.trials]
    if c.chosen[key] == max(tried):
        return " (top of the grid)"
    if c.chosen[key] == min(tried):
        return " (bottom of the grid)"
    return ""


def tuned_table(rec: Mapping[str, Mapping[str, Choice]], trials: int) -> str:
    rows = []
    for setting, by in rec.items():
        for method, c in by.items():
            search = {"grid": "grid", "optuna": "TPE (seeded)"}.get(c.mode, "none: sets its own lr")
            rows.append(
                [
                    setting,
                    method,
                    search,
                    (fmt_values(c.chosen) or "-") + edge_note(c),
                    fmt_values(c.start) or "-",
                    f"{100 * c.objective:.2f}" if math.isfinite(c.objective) else "-",
                ]
            )
    return (
        f"#### Tuned learning rates (seed {TUNING_SEED}, {trials} trials each)\n\n"
        "Each method's learning rates tuned alike before the evaluation runs (`--tune`; "
        "raysim/reproduce/fair.py): chosen = the best of its trials on the tuning seed, by the last "
        "round's metric there; the rows above ran at these values on the evaluation seeds. A choice at an "
        "end of its grid may have its best beyond it.\n\n"
        + table(["setting", "method", "search", "chosen", "untuned", "seed-0 metric (%)"], rows)
    )


def tuned_raws(
    tuner: FairTuner | None,
    label: str,
    make: Mapping[str, Callable[[int], dict[str, Any]]],
    seeds: Sequence[int],
    metric: str = "personal_accuracy",
) -> list[dict[str, Any]]:
    """Every method's configs over the seeds, method by method (``make[method](seed)``), each with
    its tuned values when ``tuner`` is given (untuned when None: the reproduction as before)."""
    raws = []
    for method, fn in make.items():
        chosen: dict[str, float] = {}
        if tuner is not None:
            c = tuner.tune(label, method, fn(TUNING_SEED), metric)
            chosen = c.chosen if c is not None else {}
        for s in seeds:
            raws.append(with_values(fn(s), chosen))
    return raws


def with_values(raw: Mapping[str, Any], values: Mapping[str, float]) -> dict[str, Any]:
    """``raw`` with each dotted key of ``values`` set (the tuned learning rates)."""
    if not values:
        return dict(raw)
    from tuning.trainable import merge_dotted

    return merge_dotted(raw, values)


def with_tuning(
    experiments: Mapping[int, tuple[str, Callable[[Any], str]]], tuner: FairTuner | None
) -> dict[int, tuple[str, Callable[[Any], str]]]:
    """The experiments, each writing its ``tuned.json`` and tuned-values table when ``tuner``."""
    if tuner is None:
        return dict(experiments)

    def wrap(name: str, fn: Callable[[Any], str]) -> Callable[[Any], str]:
        def run(ctx: Any) -> str:
            tuner.experiment = name
            md = fn(ctx)
            if tuner.records.get(name):
                tuner.write(ctx.out / name)
            return md

        return run

    return {i: (name, wrap(name, fn)) for i, (name, fn) in experiments.items()}


__all__ = [
    "KNOBS",
    "FairTuner",
    "knobs_for",
    "lr_text",
    "recorded_choices",
    "sweep_spec",
    "tuned_raws",
    "with_tuning",
]


# the command-line options every reproduction with a tuning stage shares
TuneOption = Annotated[
    bool,
    typer.Option(
        "--tune",
        help="first tune every method's learning rates alike with the sweeps layer of `raysim tune` "
        "(seed 0, --tune-trials runs each; raysim/reproduce/fair.py), then run it at the chosen values",
    ),
]
TuneTrialsOption = Annotated[
    int, typer.Option(min=2, help="with --tune: runs per method and setting (the same for every method)")
]


TunedOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--tuned",
        help="with --tune: reuse the choices recorded in this tuned.json (an earlier run's, from "
        "another machine or session) for the very sweeps that made them (same spec hash); every other "
        "sweep runs. Repeatable",
    ),
]


def _bad_tuned_file(path: Path, why: str) -> typer.BadParameter:
    return typer.BadParameter(
        f"--tuned {path}: {why}; pass a tuned.json that `raysim reproduce ... --tune` wrote "
        "(<out>/<experiment>/tuned.json)"
    )


def recorded_choices(paths: Sequence[Path]) -> dict[str, Choice]:
    """The tuned choices that ``tuned.json`` files record, by the name of the sweep that made each
    (its directory's name: ``spec_name``). A file that is missing or not a tuned.json is a
    ``typer.BadParameter`` naming it (exit 2, before anything runs)."""
    fields = ("algorithm", "knobs", "start", "chosen", "objective", "trials", "mode", "sweep")
    out: dict[str, Choice] = {}
    for path in paths:
        bad = functools.partial(_bad_tuned_file, path)
        try:
            body = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise bad("no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise bad(f"cannot be read as JSON ({err})") from None
        settings = body.get("settings") if isinstance(body, dict) else None
        if not isinstance(settings, dict):
            raise bad("it has no 'settings' mapping")
        for setting, by_method in settings.items():
            if not isinstance(by_method, dict):
                raise bad(f"setting {setting!r} is not a mapping of methods")
            for method, rec in by_method.items():
                missing = [k for k in fields if not isinstance(rec, dict) or k not in rec]
                if missing:
                    raise bad(f"the record of {method} under {setting!r} lacks {', '.join(missing)}")
                if rec["mode"] == "none":  # a method without knobs: nothing was tuned
                    continue
                values = {k: rec[k] for k in fields}
                values["objective"] = math.nan if rec["objective"] is None else float(rec["objective"])
                out[Path(str(rec["sweep"])).name] = Choice(**values)
    return out


def tuner_for(
    out: Path, tune: bool, trials: int, jobs: int, echo: Echo, tuned: Sequence[Path] | None = None
) -> FairTuner | None:
    """The reproduction's tuner when ``--tune`` is given, else None (the configs stay untuned);
    ``tuned``: the ``--tuned`` files whose recorded choices it reuses."""
    if tuned and not tune:
        raise typer.BadParameter(
            "--tuned reuses the choices of a --tune run: add --tune (and its --tune-trials)"
        )
    if not tune:
        return None
    return FairTuner(out, trials, jobs, echo, recorded=recorded_choices(tuned or []))


def run_tuned_reproduction(
    picked: Sequence[int], experiments: Mapping[int, tuple[str, Callable[[Any], str]]], ctx: Any
) -> Finished:
    """``harness.run_reproduction`` with the tuning stage of ``ctx.tuner`` (if any), whose Ray
    session is stopped afterwards whatever happens."""
    try:
        return run_reproduction(picked, with_tuning(experiments, ctx.tuner), ctx)
    finally:
        if ctx.tuner is not None:
            ctx.tuner.close()


def lr_text(lr: float, tuned: bool) -> str:
    """How a table's header names the learning rate its runs trained at: the scale's ``lr`` when
    untuned; with ``--tune`` each method's own tuned value, which the table of tuned learning rates
    gives (the scale's value is the untuned one the grids are built around)."""
    if not tuned:
        return f"lr {lr:g}"
    return f'each method\'s tuned lr ("Tuned learning rates" below; untuned: {lr:g})'


def tune_flags(tune: bool, trials: int, tuned: Sequence[Path] | None = None) -> str:
    """`` --tune --tune-trials T [--tuned FILE ...]`` for a README's command line when tuning
    ran, else nothing."""
    if not tune:
        return ""
    return f" --tune --tune-trials {trials}" + "".join(f" --tuned {p}" for p in tuned or [])
