"""YAML config files (job specs, training configs): safe loading and ``--set KEY=VALUE`` overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from core.errors import InputError


class ConfigError(InputError):
    """A config key is missing, unknown or has an invalid value; the message names the key path."""


MAX_FILE_BYTES = 1 << 20  # a config larger than 1 MiB is not a config
MAX_VALUES = 100_000  # values after expanding YAML aliases (a "billion laughs" file expands to 10^9)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values ``node`` stands for once its aliases are expanded (shared nodes counted each time)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = MAX_VALUES + 1  # a cycle counts as too large
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo) for v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, MAX_VALUES + 1)
    return memo[id(node)]


def _duplicate_keys(node: yaml.Node, where: str) -> None:
    """Refuse a mapping that gives one key twice (YAML would keep the last one silently)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                line = key.start_mark.line + 1
                if key.value in seen:
                    raise ConfigError(f"{where}: key {key.value[:80]!r} is given twice (lines {seen[key.value]} and "
                                      f"{line}); keep one of them")  # fmt: skip
                seen[key.value] = line
            _duplicate_keys(value, where)
    elif isinstance(node, yaml.SequenceNode):
        for value in node.value:
            _duplicate_keys(value, where)


def load_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The top-level mapping of a YAML file (safe loader); errors name ``what`` and the file. Duplicate keys,
    files over 1 MiB and alias expansions over 100 000 values are refused before anything is built."""
    path = Path(path)
    where = f"{what} {str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{where}: no such file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ConfigError(f"{where}: {path.stat().st_size} bytes; a {what} is at most {MAX_FILE_BYTES} bytes")
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where}: not valid YAML ({str(err)[:300]})") from None
    if node is None or not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{where}: expected a mapping of keys at the top level")
    if _expanded_size(node, {}) > MAX_VALUES:
        raise ConfigError(f"{where}: expands to more than {MAX_VALUES} values (YAML aliases?); write the values out")
    _duplicate_keys(node, where)
    try:
        return yaml.SafeLoader(path.read_text(encoding="utf-8")).get_single_data()
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({str(err)[:300]})") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``--set a.b=value`` overrides; values are parsed as YAML (numbers, lists, strings)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set num_samples=100")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a mapping")
        node[parts[-1]] = yaml.safe_load(raw)
    return data
