"""A Ray Tune function trainable that runs one raysim experiment round by round.

``make_trainable(base)`` returns ``train(config)`` for ``tune.Tuner``. The trial's ``config`` maps
dotted keys (``"local.lr"``, ``"algorithm.mu"``) to values; they are merged into the ``base``
experiment dict and validated like any config. Each round is reported to Tune (``round`` is the
time attribute) and the whole FL state is saved as a ``tune.Checkpoint`` every ``checkpoint_every``
rounds and after the last round. A trial started from a checkpoint (Tune's restore, or a PBT
exploit) continues from that FL state under the trial's *current* config: a mutated learning rate
trains from the next round on.

The per-trial loop is the plain function ``run_trial`` (no Tune in it), which ``train`` wraps.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from raysim.config import ConfigError, ExperimentConfig, config_from_dict
from raysim.runtime.backend import Share
from raysim.runtime.experiment import Experiment, driver_stats
from raysim.runtime.packing import follows_resources

# report(metrics, checkpoint_dir): checkpoint_dir is a directory holding this round's FL state
# (valid only during the call), or None on rounds without a checkpoint.
Report = Callable[[dict[str, Any], str | None], None]

ORIGIN = "origin.json"  # in each checkpoint: the trial and round that wrote it
# in each trial directory: every report, one JSON line each, appended as it happens. Tune's own
# result.json loses rows when a trial is paused and resumed often (synchronous PBT pauses every
# member at every perturbation; on resume Tune copies the not-yet-synced storage copy over the
# driver's file), so trials.parquet is built from this record instead.
REPORTED = "reported.jsonl"  # tuning.outputs reads it by this name too
CONFIG_PREFIX = "config/"  # a record's knobs: config/<dotted key>, the value its round ran with
RUN_NAME = "run"  # the experiment's run directory inside the trial directory: run, run-2, ...


def merge_dotted(base: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with each dotted key of ``config`` set to its value (nested dicts merge too).

    Values are set as they are. (``raysim.config.apply_overrides`` takes ``KEY=VALUE`` text and
    reads the value back as YAML, where a sampled ``1e-05`` would come back as a string.)
    """
    out = copy.deepcopy(dict(base))
    for key, value in config.items():
        parts = [p for p in str(key).split(".") if p]
        if not parts:
            raise ConfigError(f"trial config: empty key {key!r}")
        node = out
        for i, p in enumerate(parts[:-1]):
            child = node.get(p)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"trial config key {key!r}: {'.'.join(parts[: i + 1])!r} is a value, not a section"
                )
            node[p] = child = dict(child)
            node = child
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = merge_dotted(node[leaf], value)
        else:
            node[leaf] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    """numpy scalars (Tune's samplers return them) as Python values, for pydantic and YAML."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def trial_config(
    base: Mapping[str, Any], config: Mapping[str, Any], *, output_dir: Path | str | None = None
) -> ExperimentConfig:
    """The experiment a trial runs: ``base`` with the trial's dotted keys, no progress view, and
    its output under ``output_dir`` (the trial directory). Raises ConfigError naming the key."""
    raw = merge_dotted(base, config)
    output = dict(raw.get("output") or {})
    output["progress"] = False
    output["trackers"] = []  # a sweep tracks its trials with Ray Tune's callbacks (tuning.sweep)
    if output_dir is not None:
        output["dir"] = str(output_dir)
        output["name"] = RUN_NAME
    raw["output"] = output
    shown = ", ".join(f"{k}={v!r}" for k, v in config.items()) or "no keys"
    return config_from_dict(raw, f"(trial config: {shown})")


def tune_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The numeric, finite entries of a round's metrics (Tune cannot aggregate None or NaN:
    a metric that a round did not measure, such as accuracy between evaluations, is left out)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, int):
            out[key] = value
        elif isinstance(value, float) and math.isfinite(value):
            out[key] = value
    return out


DONE = "done"  # Tune's result key (ray.tune.result.DONE): the trial's last report


def round_metrics(metrics: Mapping[str, Any], hparams: Mapping[str, Any], rnd: int) -> dict[str, Any]:
    """One round's report to Tune: the round's finite metrics, ``round``, the driver's peak RSS and
    ``hparams/<name>``: what the cohort's tasks carried (``RoundReport.hparams``; a value that
    differs between clients, such as a per-client learning rate, as ``hparams/<name>_cohort_mean``
    / ``_min`` / ``_max``), not the config's local.* (which an algorithm may replace)."""
    out = tune_metrics(metrics)
    out["round"] = int(rnd)
    out["driver_peak_rss_mb"] = float(driver_stats()["peak_rss_mb"])
    out.update({f"hparams/{k}": v for k, v in tune_metrics(hparams).items()})
    return out


def run_trial(
    config: Mapping[str, Any],
    base: Mapping[str, Any],
    checkpoint_dir: str | Path | None,
    report: Report,
    *,
    checkpoint_every: int = 1,
    output_dir: Path | str | None = None,
    share: Share | None = None,
    num_actors: int | None = None,
) -> int:
    """Run one trial: restore from ``checkpoint_dir`` when given, then round by round until the
    experiment stops, calling ``report`` every round. Returns the last round run.

    ``num_actors``: pin ``resources.num_actors`` (the trainable passes its placement group's
    client-bundle count, ``tuning.resources.pinned_actors``, when the config leaves the actor count
    to the resources).
    """
    if checkpoint_every < 0:
        raise ValueError(
            f"checkpoint_every must be >= 0 (0: only after the last round), got {checkpoint_every}"
        )
    cfg = trial_config(base, config, output_dir=output_dir)
    if num_actors is not None and follows_resources(cfg.resources):
        cfg = trial_config(base, {**config, "resources.num_actors": num_actors}, output_dir=output_dir)
    from raysim.api import BACKENDS  # the Ray backend, handed to the runtime by the entry point

    exp = Experiment(cfg, progress=False, share=share, backends=BACKENDS)
    last = 0
    closed = False
    try:
        exp.prepare()
        if checkpoint_dir is not None:
            last = exp.restore(checkpoint_dir)
        while not exp.should_stop():
            rep = exp.step()
            last = rep.round
            metrics = round_metrics(rep.metrics, rep.hparams, rep.round)
            done = exp.should_stop()
            if done:
                # the last report says so: Tune then ends the trial instead of handing the result
                # to its scheduler, so PBT never exploits after the last round (a config no round
                # trained with). Tune may stop the trial at that report, so the run is closed first
                metrics[DONE] = True
            if done or (checkpoint_every and rep.round % checkpoint_every == 0):
                if exp.logger is not None:
                    exp.logger.flush()
                with tempfile.TemporaryDirectory(prefix="raysim-ckpt-") as tmp:
                    exp.save(tmp)
                    if done:
                        exp.close()
                        closed = True
                    report(metrics, tmp)
            else:
                report(metrics, None)
        if exp.logger is not None and not closed:
            exp.logger.flush()
    finally:
        if not closed:
            exp.close()
    return last


def trial_storage_dir(storage: Any) -> Path:
    """The trial's directory on the sweep's storage path (Tune's ``StorageContext.trial_fs_path``),
    created if needed: where the trial writes its ``run/`` and ``reported.jsonl``.

    Not ``get_trial_dir()``: in Ray 2.58 that is a node-local staging folder
    (``/tmp/ray/session_*/.../driver_artifacts/<trial>``) that only the driver's node syncs to
    storage, so a trial on a worker node would leave nothing there. raysim's storage path is always a
    mounted folder (``tuning.sweep.sweep_dir``: shared by every node on a multi-node cluster, as the
    checkpoints Tune persists there require), so the trial writes to it directly, and a file written
    before a crash is already where the sweep reads it.
    """
    import pyarrow.fs

    if not isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
        raise ConfigError(
            f"sweep storage {storage.storage_path!r} is not a mounted folder "
            f"({type(storage.storage_filesystem).__name__}); raysim sweeps write each trial's run to "
            "a shared folder every node mounts (e.g. /mnt/results/tune)"
        )
    path = Path(storage.trial_fs_path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_trainable(
    base: Mapping[str, Any], *, checkpoint_every: int = 1, workdir: str | None = None
) -> Callable[[dict[str, Any]], None]:
    """A Tune function trainable running ``base`` with each trial's dotted keys merged in.

    ``workdir``: the folder the sweep started in. Tune starts a trial in its trial directory (or
    wherever its worker process started), where the base config's relative data paths
    (``data.data_dir``, ``dataset_params.path``) name nothing; a trial moves to ``workdir`` when
    that folder exists on its node, so they name the same files as in ``raysim run``. Trials write
    only to absolute paths.

    Use it with ``tune.with_resources(make_trainable(base), tuning.resources.trial_resources(...))``
    so that the trial's placement group holds its actors; the run sizes itself to that group.
    """
    frozen: dict[str, Any] = copy.deepcopy(dict(base))
    config_from_dict(
        copy.deepcopy(frozen), "(the sweep's base config)"
    )  # a bad base fails here, not in every trial
    if checkpoint_every < 0:
        raise ValueError(
            f"checkpoint_every must be >= 0 (0: only after the last round), got {checkpoint_every}"
        )

    def raysim_trial(config: dict[str, Any]) -> None:
        from ray import tune

        from tuning.resources import pinned_actors, trial_share

        if workdir is not None and Path(workdir).is_dir():
            os.chdir(workdir)
        ctx = tune.get_context()
        trial_dir = trial_storage_dir(ctx.get_storage())
        pgf = ctx.get_trial_resources()
        cfg = trial_config(frozen, config, output_dir=trial_dir)
        share = trial_share(pgf, cfg.resources.backend)

        trial_id = ctx.get_trial_id()
        import ray

        group = ray.get_runtime_context().get_placement_group_id() or ""  # the trial's own group
        restored: dict[str, Any] = {}  # where this trial's FL state came from, on its first report

        # the knobs this run trains with (PBT changes them between runs of one trial): each
        # record carries the config its round ran with, so a schedule is read from the record
        knobs = {f"{CONFIG_PREFIX}{k}": _plain(v) for k, v in config.items()}

        def report(metrics: dict[str, Any], directory: str | None) -> None:
            metrics = {**metrics, **restored, "placement_group_id": group}
            restored.clear()
            ckpt = None
            if directory is not None:
                origin = {"trial_id": trial_id, "round": metrics["round"]}
                (Path(directory) / ORIGIN).write_text(json.dumps(origin))
                ckpt = tune.Checkpoint.from_directory(directory)
            record = {k: v for k, v in metrics.items() if k != DONE}
            with (trial_dir / REPORTED).open("a") as f:  # before Tune may pause us at this report
                f.write(json.dumps({**record, **knobs, "trial_id": trial_id}, default=str) + "\n")
            tune.report(metrics, checkpoint=ckpt)  # persists the checkpoint before returning

        kwargs: dict[str, Any] = {
            "checkpoint_every": checkpoint_every,
            "output_dir": trial_dir,
            "share": share,
            "num_actors": pinned_actors(cfg, pgf),
        }
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            run_trial(config, frozen, None, report, **kwargs)
        else:
            with checkpoint.as_directory() as directory:
                origin_file = Path(directory) / ORIGIN
                if origin_file.is_file():
                    origin = json.loads(origin_file.read_text())
                    # a PBT exploit restores another trial's state; a resume, this trial's own
                    restored.update(
                        restored_from_trial=str(origin["trial_id"]),
                        restored_from_round=int(origin["round"]),
                        exploited=int(origin["trial_id"] != trial_id),
                    )
                run_trial(config, frozen, directory, report, **kwargs)

    return raysim_trial
