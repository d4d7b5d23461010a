"""Ctrl-C during a Tune fit is an interruption, never a finished sweep or batch (tuning.interrupt):
Tune returns from an interrupted ``fit()`` as from a finished one, so without the check a sweep
wrote best.yaml from trials cut part-way and called itself finished."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from raysim._testing_runs import tiny_raw
from tuning.interrupt import Interrupted, stop_on_interrupt

REPO = Path(__file__).resolve().parents[2]
RAYSIM = str(Path(sys.executable).parent / "raysim")


def _tuner(tmp_path: Path, signals: int):
    """A Tune fit of four slow trials, two at a time, whose first result sends ``signals`` SIGINTs
    to this process (what Ctrl-C in a terminal does)."""
    from ray import tune

    def slow(config):
        for i in range(40):
            time.sleep(0.25)
            tune.report({"i": i})

    class CtrlC(tune.Callback):
        sent = False

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if not CtrlC.sent:
                CtrlC.sent = True
                for _ in range(signals):
                    os.kill(os.getpid(), signal.SIGINT)

    return tune.Tuner(
        tune.with_resources(slow, {"cpu": 0.1}),
        param_space={"x": tune.grid_search([1, 2, 3, 4])},
        tune_config=tune.TuneConfig(max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "st"), verbose=0, callbacks=[CtrlC()]),
    )


@pytest.mark.ray
@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_in_a_fit_raises_interrupted_and_puts_the_handlers_back(
    ray_cluster, tmp_path, caplog, signals
):
    sigint, usr1 = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)
    tuner = _tuner(tmp_path, signals)
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING), pytest.raises(Interrupted) as got:
        with stop_on_interrupt(Interrupted("kept here", "/some/dir")):
            tuner.fit()  # returns as from a finished fit: the context's exit raises
    # the trials sleep 10 s each, 4 of them 2 at a time: a fit that ran to its end takes 20 s
    assert time.perf_counter() - t0 < 15
    assert got.value.saved == "kept here" and got.value.where == "/some/dir"
    assert signal.getsignal(signal.SIGINT) is sigint and signal.getsignal(signal.SIGUSR1) is usr1
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ
    # Tune's hint names an API a raysim user does not call: held back
    assert "Tuner.restore" not in caplog.text


def test_ctrl_c_outside_a_fit_is_interrupted_at_once():
    with pytest.raises(Interrupted) as got:
        with stop_on_interrupt(Interrupted("nothing yet")):
            os.kill(os.getpid(), signal.SIGINT)  # no fit: Tune's SIGUSR1 handler is not there
            time.sleep(5)
            pytest.fail("the SIGINT did not stop the block")  # pragma: no cover
    assert got.value.saved == "nothing yet"


def test_a_serial_reproduction_cut_by_ctrl_c_says_so_and_exits_130(tmp_path, monkeypatch, capsys):
    """``--jobs 1`` runs in this process: a KeyboardInterrupt in a run becomes the reproduction's
    "interrupted" message and exit status 130, not a traceback."""
    import typer

    from raysim.reproduce import harness

    def cut(raw, runs_dir, key):
        raise KeyboardInterrupt

    monkeypatch.setattr(harness, "execute_run", cut)
    raw = {k: v for k, v in tiny_raw(tmp_path).items() if k != "output"}
    runner = harness.Runner(tmp_path / "out", jobs=1, echo=lambda m: None)
    with pytest.raises(Interrupted) as got:
        runner.run([raw], "t")
    assert str(tmp_path / "out" / "runs") in got.value.saved

    ctx = type("Ctx", (), {"runner": runner})()
    experiments = {1: ("one", lambda c: c.runner.run([raw], "t") and "")}
    with pytest.raises(typer.Exit) as ended:
        harness.run_reproduction([1], experiments, ctx)
    assert ended.value.exit_code == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted: ") and "run the same command again" in err


def _finished(run_dir: Path) -> bool:
    return bool(json.loads((run_dir / "summary.json").read_text()).get("finished"))


def _started(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """``cmd`` in its own process group (which the test's Ctrl-C goes to, as a terminal's would)."""
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(proc: subprocess.Popen, ready, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"it ended before {what}: {proc.communicate()}"
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"not {what} within {timeout} s")
        time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_sweep_stopped_by_ctrl_c_writes_no_outputs_and_resumes_to_every_trials_end(tmp_path):
    from tests.tuning.test_sweep_storage import KILL_ROUNDS as rounds
    from tests.tuning.test_sweep_storage import SAVE_OFTEN, resume_cli, stoppable_sweep

    _, path, sweep = stoppable_sweep(tmp_path, "cut")
    env = {**os.environ, "RAY_ADDRESS": "", **SAVE_OFTEN}
    proc = _started([RAYSIM, "tune", str(path)], env)

    def midway() -> bool:  # the first trial has reported some of its rounds
        record = [p for p in sweep.glob("trial_*/reported.jsonl")]
        return any(3 <= len(p.read_text().splitlines()) < rounds for p in record)

    _wait(proc, midway, "a trial was midway")
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: its local Ray too
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:] + err[-3000:]
    assert "interrupted: Ray Tune saved the sweep's state in" in err
    assert f"continue it with `raysim tune --resume {sweep}`" in err
    assert "Traceback" not in err and "Tuner.restore" not in err
    # nothing of a finished sweep: a rerun must not read a cut sweep as done
    for name in ("sweep.json", "trials.parquet", "best.yaml", "summary.md"):
        assert not (sweep / name).exists(), name

    resume_cli(sweep, env)
    import pandas as pd

    table = pd.read_parquet(sweep / "trials.parquet")
    assert table["trial_id"].nunique() == 3
    assert (table.groupby("trial_id")["round"].max() == rounds).all()
    info = json.loads((sweep / "sweep.json").read_text())
    assert info["trials"] == 3 and info["failed"] == [] and info["best"] is not None


@pytest.mark.slow
@pytest.mark.extended  # CI's 45 minutes: the sweep's case (above) runs there, these in make test-slow
@pytest.mark.timeout(600)
def test_a_batch_stopped_by_ctrl_c_is_interrupted_and_continues_from_its_checkpoints(tmp_path):
    """``Runner.run`` with --jobs 2 (Tune trials): Ctrl-C ends in Interrupted, not in "left no
    summary.json"; run again, the cut runs continue from their checkpoints."""
    out = tmp_path / "out"
    raws = []
    for seed in (1, 2):
        raw = {k: v for k, v in tiny_raw(tmp_path).items() if k != "output"}
        # ~0.05 s a tiny round: 960 rounds outlast the stop (96 could end before Tune stopped them)
        raws.append({**raw, "seed": seed, "rounds": {**raw["rounds"], "num_rounds": 960}})
    script = tmp_path / "drive.py"
    script.write_text(
        "import json, sys\n"
        "from pathlib import Path\n"
        "from raysim.reproduce.harness import Runner\n"
        "from tuning.interrupt import Interrupted\n"
        f"raws = json.loads({json.dumps(json.dumps(raws))})\n"
        f"runner = Runner(Path({str(out)!r}), jobs=2, echo=print)\n"
        "try:\n"
        "    runs = runner.run(raws, 't')\n"
        "except Interrupted as err:\n"
        "    print('INTERRUPTED', err.saved, flush=True)\n"
        "    sys.exit(130)\n"
        "print('DONE', [r.summary['finished'] for r in runs])\n"
    )
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}
    proc = _started([sys.executable, str(script)], env)
    runs = out / "runs"
    _wait(proc, lambda: any(runs.glob("*/checkpoints/*")), "a run had a checkpoint")
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: its local Ray too
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout[-2000:] + stderr[-3000:]
    assert f"INTERRUPTED finished runs and each cut run's newest checkpoint are kept in {runs}" in stdout
    keys = [d for d in runs.iterdir() if (d / "config.yaml").is_file()]  # not Tune's .tune folder
    cut = [d for d in keys if not (d / "summary.json").is_file() or not _finished(d)]
    assert cut, "every run had finished before the stop: nothing was cut"
    assert "left no summary.json" not in stderr and "Tuner.restore" not in stderr

    res = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=400
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "DONE [True, True]" in res.stdout
    assert "continuing from its checkpoint of round" in res.stdout


@pytest.mark.slow
@pytest.mark.extended  # CI's 45 minutes: the sweep's case (above) runs there, these in make test-slow
@pytest.mark.timeout(300)
def test_a_run_stopped_by_ctrl_c_says_how_to_continue_and_resume_finishes_it(tmp_path):
    raw = tiny_raw(tmp_path)
    raw["rounds"] = {**raw["rounds"], "num_rounds": 400, "checkpoint_every": 5, "eval_every": 5}
    raw["name"] = "cut"
    path = tmp_path / "cut.yaml"
    path.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "runs" / "cut"
    proc = _started([RAYSIM, "run", str(path)], dict(os.environ))
    _wait(proc, lambda: any((run_dir / "checkpoints").glob("round_*")), "a checkpoint was written")
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: its local Ray too
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out[-2000:] + err[-3000:]
    assert f"continue it with `raysim run --resume {run_dir}`" in err
    assert "Traceback" not in err and "Aborted" not in err
    # cut inside a round: no summary; between two (the progress view's update): one of a cut run
    summary = run_dir / "summary.json"
    assert not summary.exists() or json.loads(summary.read_text())["finished"] is False

    res = subprocess.run(
        [RAYSIM, "run", "--resume", str(run_dir)], cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["finished"] is True
