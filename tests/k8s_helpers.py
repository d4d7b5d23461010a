"""Test helpers for the Kubernetes path: parse a job's entrypoint with raysim's own CLI.

Only the tests need this (it checks that what a manifest or ``raysim k8s render`` hands to
``ray job submit`` is a command line our CLI accepts), so it lives here, not in ``raysim.k8s``.
"""

from __future__ import annotations

import shlex
from typing import Any

import typer.main

from raysim.cli import app


class EntrypointError(ValueError):
    """An entrypoint that our own CLI would refuse (renamed flag, unknown command, ...)."""


def parse_entrypoint(entrypoint: str) -> tuple[str, dict[str, Any]]:
    """Parse ``raysim ...`` with the real CLI (its click parser; nothing is executed).

    Returns the subcommand path (e.g. ``"run"`` or ``"k8s render"``) and its parsed parameters;
    raises :class:`EntrypointError` when the CLI would refuse the command line (unknown command
    or flag, missing argument, bad value).
    """

    argv = shlex.split(entrypoint)
    if not argv or argv[0] != "raysim":
        raise EntrypointError(f"entrypoint must start with 'raysim', got {entrypoint[:40]!r}")
    if "--help" in argv[1:]:
        raise EntrypointError("entrypoint asks for --help: it would print help instead of running")
    cmd: Any = typer.main.get_command(app)  # click's (or typer's vendored click) command tree
    args, parent = argv[1:], None
    path: list[str] = []
    try:
        while hasattr(cmd, "resolve_command"):  # a group: parse its options, then find the subcommand
            ctx = cmd.make_context(path[-1] if path else "raysim", list(args), parent=parent)
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            if not rest:
                raise EntrypointError(f"'raysim {' '.join(path)}' needs a subcommand")
            name, sub, args = cmd.resolve_command(ctx, rest)
            if sub is None or name is None:
                raise EntrypointError(f"unknown command {rest[0]!r}")
            cmd, parent = sub, ctx
            path.append(name)
        sub_ctx = cmd.make_context(path[-1], list(args), parent=parent)
    except EntrypointError:
        raise
    except Exception as err:  # click's UsageError family, from click or from typer's vendored copy
        if type(err).__name__ == "Exit":
            raise EntrypointError("the command line would exit without running") from err
        message = getattr(err, "format_message", None)
        if not callable(message):
            raise
        raise EntrypointError(f"'{' '.join(argv[:3])} ...': {message()}") from err
    return " ".join(path), dict(sub_ctx.params)
