"""YAML config files (job specs, training configs): safe loading and ``--set KEY=VALUE`` overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key is missing, unknown or has an invalid value; the message names the key path."""


def load_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The top-level mapping of a YAML file (safe loader); errors name ``what`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {str(path)!r}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r}: expected a mapping of keys at the top level")
    return data


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
