"""Ctrl-C during a Ray Tune fit, told apart from the fit's end.

Ray Tune catches the first SIGINT itself: it stops its trials, saves its experiment state and then
returns from ``Tuner.fit()`` as from a finished fit, its trials marked TERMINATED (measured with Ray
2.58). Without a check, a sweep stopped by Ctrl-C would write its outputs from trials cut part-way
(and a best.yaml picked among them) and call itself finished; a batch of runs would end in a
confusing "left no summary.json". :func:`stop_on_interrupt` keeps Tune's graceful stop but
remembers that it happened, and raises :class:`Interrupted` when the fit returns; a second Ctrl-C
stops at once and raises it too. Tune's own lines about it (which name ``Tuner.restore(...)``, an
API a raysim user does not call) are replaced by raysim's, and each command says how to continue
(``raysim tune --resume DIR``, or the same ``raysim reproduce`` command again) and exits 130.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import NoReturn

# the two warnings ray.tune.tune logs on an interrupt; raysim says what to do instead
_TUNE_LINES = ("Stop signal received", "Experiment has been interrupted")
_DISABLE = "TUNE_DISABLE_SIGINT_HANDLER"


class Interrupted(KeyboardInterrupt):
    """The user stopped the work (Ctrl-C): a KeyboardInterrupt (no ``except Exception`` on the way
    up handles it as a failure, and a Python caller catches it as one) that says what is kept
    (``saved``) and where the work continues from (``where``)."""

    def __init__(self, saved: str, where: str | None = None) -> None:
        super().__init__(saved)
        self.saved = saved
        self.where = where  # the directory the work continues from, when there is one


def runs_kept(runs_dir: object) -> Interrupted:
    """The interruption of a batch of runs into ``runs_dir`` (``tuning.batch`` as Tune trials, a
    reproduction's ``--jobs 1`` loop in its own process): what both keep, said once."""
    return Interrupted(
        f"finished runs and each cut run's newest checkpoint are kept in {runs_dir}", str(runs_dir)
    )


class _DropTuneLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TUNE_LINES)


@contextlib.contextmanager
def stop_on_interrupt(kept: Interrupted) -> Iterator[None]:
    """Around one ``Tuner.fit()`` in the main thread: the first Ctrl-C asks Tune to stop gracefully
    (Tune's own SIGUSR1 handler, which it installs for every fit, sets the same event as its SIGINT
    handler) and the fit's return raises ``kept`` (an :class:`Interrupted` saying what is kept on
    disk); a second Ctrl-C raises it at once. Elsewhere (not the main thread, no SIGUSR1) a plain
    KeyboardInterrupt is turned into :class:`Interrupted` as well."""
    hit = threading.Event()
    main = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGUSR1")

    def on_sigint(signum: int, frame: object) -> None:
        usr1 = signal.getsignal(signal.SIGUSR1)
        if hit.is_set() or not callable(usr1):  # again, or no fit under way to stop gracefully
            raise KeyboardInterrupt
        hit.set()
        # stderr whatever the caller's echo (a reproduction's sweeps run with none)
        print(
            "stopping: Ray Tune stops the runs and saves its state (Ctrl-C again: at once)", file=sys.stderr
        )
        os.kill(os.getpid(), signal.SIGUSR1)

    drop = _DropTuneLines()
    tune_log = logging.getLogger("ray.tune.tune")
    before_env = os.environ.get(_DISABLE)
    before = signal.getsignal(signal.SIGINT) if main else None
    before_usr1 = signal.getsignal(signal.SIGUSR1) if main else None
    if main:
        os.environ[_DISABLE] = "1"  # read when the fit starts: Tune leaves SIGINT to on_sigint
        signal.signal(signal.SIGINT, on_sigint)
    tune_log.addFilter(drop)
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise kept from None
    finally:
        tune_log.removeFilter(drop)
        if main:  # None: a handler not set from Python, which cannot be put back from here
            if before is not None:
                signal.signal(signal.SIGINT, before)
            if before_usr1 is not None:
                signal.signal(signal.SIGUSR1, before_usr1)
            if before_env is None:
                os.environ.pop(_DISABLE, None)
            else:
                os.environ[_DISABLE] = before_env
    if hit.is_set():
        raise kept


def exit_interrupted(err: Interrupted, then: str) -> NoReturn:
    """A command's end after Ctrl-C: what is kept and how to continue on stderr, exit status 130
    (128 + SIGINT, as a shell reports a process SIGINT stopped)."""
    import typer

    typer.echo(f"interrupted: {err.saved}; {then}", err=True)
    raise typer.Exit(130)
