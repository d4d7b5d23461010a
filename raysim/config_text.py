"""The text side of a config: the error every user mistake raises, names that become folders, YAML
read strictly, and the CLI's dotted ``--set key=value`` overrides.

Kept apart from ``raysim.config`` (the typed sections and their validation) because none of it
needs the schema: a sweep spec, a saved ``sweep.yaml`` and a config are all read with
``load_yaml_file``, and reading one should not need the algorithm, model and dataset registries
that the schema imports. ``raysim.config`` re-exports every name here, so ``from raysim.config
import ConfigError, load_yaml_file`` keeps working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A user-fixable problem with an experiment config (the CLI exits with status 2)."""


MAX_NAME = 200  # bytes: a name plus raysim's "-NN" suffix stays below the file systems' 255


def path_component_problem(name: object) -> str | None:
    """Why ``name`` cannot be one directory name inside a folder raysim writes to (None: it can).

    Names from configs and specs become directories (``output.dir/<name>``, ``storage_path/<name>``);
    a ``/``, a ``..`` or an absolute path would put them anywhere on the disk."""
    if not isinstance(name, str):
        return f"a name must be a string, got {type(name).__name__}"
    if not name.strip():
        return "a name must not be empty"
    if name in (".", ".."):
        return f"{name!r} is not a name but a reference to a folder"
    bad = sorted({c for c in name if c in "/\\\0" or ord(c) < 32 or ord(c) == 127})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        return f"a name is one directory name: no path separators or control characters (found {shown})"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME:
        return f"a name is at most {MAX_NAME} bytes"
    return None


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a mapping with the same key twice is an error: plain YAML
    keeps the last value silently, so a key pasted twice (an edited lr further down) would change a
    run without a word. Merge keys (``<<: *base``) still override as YAML says."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base class says so
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    f"while reading the mapping that starts on line {node.start_mark.line + 1}",
                    node.start_mark,
                    f"key {key!r} appears twice (lines {first.line + 1} and {key_node.start_mark.line + 1}); "
                    "YAML would keep the last one silently: delete one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def yaml_loads(text: str, source: str) -> Any:
    """``text`` as YAML (duplicate keys refused), or a ConfigError naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{source} is not valid YAML{where}: {problem}") from None


def load_yaml_file(path: str | Path, what: str = "config", *, mapping: bool = True) -> Any:
    """A YAML file raysim reads (a config, a sweep spec, a saved sweep.yaml): missing, unreadable,
    invalid, empty or (with ``mapping``) not a mapping, or holding a key twice, is one ConfigError
    naming the file. An empty file (or comments only) is refused rather than read as "all
    defaults"; a file meant to take every default says so with ``{}``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{what} {p} cannot be read as UTF-8 text: {err}") from None
    raw = yaml_loads(text, f"{what} {p}")
    if raw is None:
        raise ConfigError(
            f"{what} {p} is empty (no settings, only blank lines or comments): refusing to run every "
            "default; write its settings (see configs/), or `{}` to take every default on purpose"
        )
    if mapping and not isinstance(raw, dict):
        raise ConfigError(
            f"{what} {p} must be a mapping of keys (data:, model:, ...), got {type(raw).__name__}"
        )
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(
            f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. --set rounds.num_rounds=5"
        )
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    return parts, yaml_loads(value, f"--set {text!r}") if value.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``raw`` with each ``KEY=VALUE`` of ``overrides`` set (``raw`` is not changed). When they
    change ``algorithm.name``, the new algorithm starts from its defaults: the previous one's keys
    are dropped with a note on stderr (``raysim.config.switch_algorithm``), the keys set here kept."""
    out = dict(raw)
    set_keys: list[list[str]] = []
    for text in overrides:
        parts, value = parse_override(text)
        set_keys.append(parts)
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {p!r} is a value, not a section")
            node[p] = child = dict(child)
            node = child
        node[parts[-1]] = value
    if any(parts[0] == "algorithm" for parts in set_keys):
        from raysim.config import switch_algorithm  # the algorithm registry: only when it may matter

        out = switch_algorithm(raw, out, set_keys)
    return out
