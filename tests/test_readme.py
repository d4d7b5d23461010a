"""README.md's commands work as written (issue 24): every ```bash block of README.md and of the docs
it moved its measurements to (docs/results.md, docs/performance.md) is checked here.

Fast tier (default): every command parses.
- ``make T``: T is a Makefile target.
- ``raysim ...`` (``.venv/bin/raysim``): raysim's own CLI parses the arguments (the subcommand, every
  flag, its type and range); every path under configs/ or examples/ exists; a ``run``/``validate``
  config loads with the command's ``--set`` values, a ``tune`` spec with its own; ``k8s render``,
  ``bench estimate`` and ``validate`` (no Ray, seconds) actually run, in a scratch directory.
- ``python FILE`` (``.venv/bin/python``): FILE exists.
- anything else fails: README holds only commands this test can check.
Every config in configs/ is in README's table of configs.

Slow tier: README's blocks run in order in one scratch directory (so that ``raysim report
runs/quickstart ...`` finds what an earlier block wrote), on the session's Ray, at tiny sizes: one
round, at most 8 clients (4 a round), one experiment of ``reproduce --quick``;
``make run`` runs its Makefile recipe; ``make test`` (this suite) and ``pip install`` do not run.
Then README's ```python blocks run there, and every run, sweep or results directory README names in
backticks exists.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from raysim.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, ROOT / "docs" / "results.md", ROOT / "docs" / "performance.md"]
BLOCK = re.compile(r"^```(?:bash|sh)\n(.*?)^```", re.S | re.M)
PY_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
RAYSIM = {"raysim", ".venv/bin/raysim", "$(BIN)/raysim"}
PYTHON = {"python", "python3", ".venv/bin/python", "$(BIN)/python"}
# README's paths that a second run or an argument names rather than a run writes
NOT_WRITTEN = {"runs/quickstart-2/"}
TINY_CLIENTS, TINY_COHORT = 8, 4

runner = CliRunner()


# -- reading the blocks ---------------------------------------------------------------------------


def commands(text: str) -> list[list[list[str]]]:
    """Each bash block's commands, as argv lists (comments dropped, ``\\`` lines joined, ``&&`` split)."""
    out = []
    for block in BLOCK.findall(text):
        cmds = []
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            while argv:
                cut = argv.index("&&") if "&&" in argv else len(argv)
                cmds.append(argv[:cut])
                argv = argv[cut + 1 :]
        out.append(cmds)
    return out


def all_commands() -> list[tuple[str, list[str]]]:
    found = [
        (p.relative_to(ROOT).as_posix(), c) for p in DOCS for block in commands(p.read_text()) for c in block
    ]
    assert found, "no ```bash blocks found"
    return found


def make_targets() -> dict[str, list[str]]:
    """Makefile target -> its recipe lines."""
    targets: dict[str, list[str]] = {}
    current = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([a-z][\w-]*):", line)
        if m:
            current = m.group(1)
            targets[current] = []
        elif line.startswith("\t") and current:
            targets[current].append(line.strip())
        elif line and not line.startswith("#"):
            current = None
    return targets


# -- raysim's CLI, parsed without running ----------------------------------------------------------


def parse(args: list[str]) -> tuple[list[str], dict]:
    """The subcommand path and its parameters, as raysim's CLI reads ``args`` (raises its usage error)."""
    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("raysim", list(args))
    path: list[str] = []
    while hasattr(cmd, "commands"):  # a group: the next word names the subcommand
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, cmd, rest = cmd.resolve_command(ctx, rest)
        path.append(name)
        ctx = cmd.make_context(name, rest, parent=ctx)
    return path, ctx.params


def check_raysim(args: list[str], where: str) -> None:
    try:
        path, params = parse(args)
    except Exception as err:  # click's UsageError family: the message names the flag
        message = err.format_message() if hasattr(err, "format_message") else str(err)
        raise AssertionError(f"{where}: `raysim {shlex.join(args)}` does not parse: {message}") from err
    for value in params.values():
        for v in value if isinstance(value, list | tuple) else [value]:
            if isinstance(v, str | Path) and str(v).startswith(("configs/", "examples/")):
                assert (ROOT / str(v)).exists(), (
                    f"{where}: `raysim {shlex.join(args)}` names {v}, which is missing"
                )
    sets = list(params.get("set_") or [])
    if path == ["run"] and params.get("config"):
        from raysim.config import load_config

        load_config(ROOT / params["config"], sets)
    if path == ["tune"] and params.get("spec"):
        import raysim

        loaded = raysim.load_sweep_spec(ROOT / params["spec"], sets)
        if params.get("num_samples"):  # as `raysim tune --num-samples` checks it (TPE's start-up trials)
            from tuning.spec import SweepSpec

            SweepSpec.model_validate({**loaded.spec.model_dump(), "num_samples": params["num_samples"]})


# -- fast tier ---------------------------------------------------------------------------------------


def test_readme_has_the_commands_of_the_path():
    cmds = [c for block in commands(README.read_text()) for c in block]
    words = [" ".join(c[:3]) for c in cmds]
    assert "make run" in words and "make test" in words  # .ci/run starts with `make test`
    for sub in ("run", "tune", "report", "k8s", "bench"):
        assert any(c[0] in RAYSIM and c[1] == sub for c in cmds), f"README has no `raysim {sub}` command"


def test_every_command_parses(tmp_path, monkeypatch):
    targets = make_targets()
    for doc, argv in all_commands():
        tool = argv[0]
        if tool == "make":
            for t in argv[1:]:
                assert t in targets, f"{doc}: `make {t}`: the Makefile has no target {t}"
        elif tool in RAYSIM:
            check_raysim(argv[1:], doc)
        elif tool in PYTHON:
            assert (ROOT / argv[1]).is_file(), f"{doc}: `{shlex.join(argv)}`: {argv[1]} is missing"
        else:
            raise AssertionError(f"{doc}: `{shlex.join(argv)}`: a command tests/test_readme.py cannot check")


def test_the_cheap_commands_run(tmp_path, monkeypatch):
    """validate, k8s render and bench estimate need no Ray: run them as written, in a scratch directory."""
    scratch(tmp_path, monkeypatch)
    ran = 0
    for doc, argv in all_commands():
        if argv[0] in RAYSIM and argv[1] in ("validate", "k8s", "bench") and argv[1:3] != ["bench", "scale"]:
            r = runner.invoke(app, argv[1:])
            assert r.exit_code == 0, f"{doc}: `{shlex.join(argv)}` exited {r.exit_code}:\n{r.output}"
            ran += 1
            if argv[1] == "k8s":
                out = argv[argv.index("--out") + 1]
                kinds = [d.get("kind") for d in yaml.safe_load_all((tmp_path / out).read_text()) if d]
                assert "RayJob" in kinds, (out, kinds)
    assert ran >= 3


def test_every_shipped_config_is_in_readmes_table():
    text = README.read_text()
    table = {
        c for row in re.findall(r"^\| (.*?) \|", text, re.M) for c in re.findall(r"`([\w/]+\.yaml)`", row)
    }
    shipped = {p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml")}
    missing = shipped - table
    assert not missing, f"configs without a row in README's table of configs (add one): {sorted(missing)}"
    assert not table - shipped, f"README's table names configs that do not exist: {sorted(table - shipped)}"


def test_every_command_rejects_what_is_wrong():
    """The checks above can fail: a flag, a subcommand, a config and a Make target that do not exist."""
    for args in (["run", "configs/quickstart.yaml", "--rounds", "3"], ["k8s", "draw", "x.yaml"]):
        with pytest.raises(AssertionError, match="does not parse"):
            check_raysim(args, "t")
    with pytest.raises(ValueError, match="no trial would be TPE's"):
        check_raysim(["tune", "configs/tune/fedavg_lr_optuna.yaml", "--num-samples", "4"], "t")
    with pytest.raises(AssertionError, match="missing"):
        check_raysim(["validate", "configs/nope.yaml"], "t")
    assert "test" in make_targets() and "nope" not in make_targets()
    assert commands("```bash\na \\\n  b # c\nd && e\n```\n") == [[["a", "b"], ["d"], ["e"]]]


def test_no_docstring_or_doc_points_outside_the_repository():
    """Sources are cited by number (docs/papers.md), designs by docs/architecture.md's sections, which
    exist; nothing names a file beside the repository (KubeRay's schemas for the tests excepted)."""
    outside = re.compile(r"shared/papers|\bDESIGN\b|\.\./shared/(?!k8s-schemas)")
    section = re.compile(r"docs/architecture\.md,\s+(?:#\s*)?section\s+(\d+)")
    headings = set(re.findall(r"^## (\d+)\.", (ROOT / "docs" / "architecture.md").read_text(), re.M))
    bad = []
    for top in ("raysim", "actors", "tuning", "benchmarks", "configs", "docs", "examples", "tests"):
        for path in (ROOT / top).rglob("*"):
            if path.suffix not in (".py", ".md", ".yaml") or path == Path(__file__):
                continue
            text = path.read_text(errors="replace")
            bad += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in outside.finditer(text)]
            bad += [f"{path.relative_to(ROOT)}: {m.group(0)} (no such section)"
                    for m in section.finditer(text) if m.group(1) not in headings]  # fmt: skip
    assert not bad, "references outside the repository or to missing sections:\n" + "\n".join(bad)


# -- slow tier ---------------------------------------------------------------------------------------


def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A working directory like the repository's root: configs/ linked, examples/ copied (make_data
    writes under it), runs/ empty."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    shutil.copytree(
        ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("data", "build", "*.egg-info")
    )
    monkeypatch.chdir(tmp_path)


def set_values(argv: list[str]) -> dict[str, str]:
    return {
        a.split("=", 1)[0]: a.split("=", 1)[1]
        for i, a in enumerate(argv)
        if i and argv[i - 1] in ("--set", "-s")
    }


def with_sets(argv: list[str], new: dict[str, str]) -> list[str]:
    """argv with each of ``new``'s keys set (replacing the command's own value)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in ("--set", "-s") and argv[i + 1].split("=", 1)[0] in new:
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out + [x for k, v in new.items() for x in ("--set", f"{k}={v}")]


def tiny(argv: list[str]) -> list[str] | None:
    """The raysim command at tiny size, or None where it is not run."""
    from raysim.config import load_config

    sub = argv[0]
    if sub == "run" and (config := parse(argv)[1].get("config")):  # not `run --resume DIR`
        cfg = load_config(config, [f"{k}={v}" for k, v in set_values(argv).items()])
        small = {"rounds.num_rounds": "1"}
        if cfg.data.num_clients > TINY_CLIENTS and cfg.data.partition != "natural":
            small["data.num_clients"] = str(TINY_CLIENTS)
        small["rounds.clients_per_round"] = str(
            min(cfg.rounds.clients_per_round, TINY_COHORT, cfg.data.num_clients)
        )
        return [*with_sets(argv, small), "--no-progress"]
    if sub == "tune" and "--validate-best" not in argv:
        return with_sets(argv, {"rounds.num_rounds": "1"})  # its trials (TPE needs its start-up ones)
    if sub == "reproduce":
        return [*argv, "--only", "1"] if "--quick" in argv else None
    if argv[:2] == ["bench", "scale"]:
        return None
    return argv


@pytest.mark.slow
@pytest.mark.extended  # ~6 min here; CI's fast tier parses every command, `make test-slow` runs them
@pytest.mark.ray
@pytest.mark.timeout(1800)  # a loaded 2-core machine runs it many times slower than a quiet one
def test_readmes_commands_run_at_tiny_sizes(ray_cluster, tmp_path, monkeypatch):
    scratch(tmp_path, monkeypatch)
    targets = make_targets()
    ran = []
    for block in commands(README.read_text()):
        for argv in block:
            if argv[0] == "make":
                recipe = [shlex.split(line) for t in argv[1:] for line in targets[t]]
                todo = [c for c in recipe if c and c[0] in RAYSIM]  # `make run`: its raysim command
            else:
                todo = [argv]
            for cmd in todo:
                t0 = time.perf_counter()
                if cmd[0] in PYTHON:
                    proc = subprocess.run([sys.executable, *cmd[1:]], capture_output=True, text=True)
                    assert proc.returncode == 0, f"`{shlex.join(cmd)}`:\n{proc.stdout}\n{proc.stderr}"
                    ran.append(cmd)
                elif cmd[0] in RAYSIM and (small := tiny(cmd[1:])) is not None:
                    r = runner.invoke(app, small)
                    assert r.exit_code == 0, (
                        f"`{shlex.join(cmd)}` as `raysim {shlex.join(small)}`:\n{r.output}"
                    )
                    ran.append(cmd)
                print(f"{time.perf_counter() - t0:6.1f} s  {shlex.join(cmd)}", flush=True)
    assert len(ran) >= 8, ran
    for i, code in enumerate(PY_BLOCK.findall(README.read_text())):  # README's Python, on what ran
        exec(compile(code, f"README.md python block {i + 1}", "exec"), {"__name__": "readme"})
    named = set(re.findall(r"`((?:runs|results|report)/[\w./-]*)`", README.read_text())) - NOT_WRITTEN
    missing = sorted(p for p in named if not (tmp_path / p).exists())
    assert not missing, f"README says these are written, but its commands did not write them: {missing}"
