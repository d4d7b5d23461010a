"""The progress view of a run: a rich bar on a terminal, a plain line per evaluation otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from raysim.metrics import format_headline


class ProgressView:
    """A rich progress bar (round, the headline metrics, ETA) on a terminal; a plain line per evaluation
    otherwise (CI logs, files)."""

    def __init__(
        self,
        total: int,
        start: int,
        enabled: bool,
        headline: Sequence[str] = ("test_accuracy",),
        num_clients: int | None = None,
    ) -> None:
        """``headline``: the metrics to show (the algorithm's ``headline_metrics()``), each as soon
        as a round logs it."""
        self.total, self.start, self.enabled = total, start, enabled
        self.headline, self.num_clients = tuple(headline), num_clients
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.t0 = time.perf_counter()

    def __enter__(self) -> ProgressView:
        if self.enabled and self.tty:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("round {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("rounds", total=self.total, completed=self.start - 1, info="")
        return self

    def update(self, t: int, m: dict[str, float]) -> None:
        if not self.enabled:
            return
        shown = format_headline({k: m.get(k) for k in self.headline}, self.num_clients)
        info = [shown] if shown else []
        if m.get("dropouts"):
            info.append(f"drop {int(m['dropouts'])}")
        if self.bar is not None:
            if info:
                self.bar.update(self.task, completed=t, info=" ".join(info))
            else:
                self.bar.update(self.task, completed=t)
        elif info:
            done = t - self.start + 1
            eta = (time.perf_counter() - self.t0) / done * (self.total - t)
            print(f"round {t}/{self.total} {' '.join(info)} eta {eta:.0f}s", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """A line the user should see (e.g. why the run stopped early)."""
        if self.enabled:
            (self.bar.console.print if self.bar is not None else lambda s: print(s, file=sys.stderr))(text)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
