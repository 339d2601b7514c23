"""Typed job specs: one field list per task gives the YAML keys, the CLI flags, their defaults and checks.

A task's spec is a frozen dataclass whose fields are declared with :func:`option`. The same field list
builds the spec from a YAML mapping (``rsgen run``) and from ``argparse`` (``rsgen <command>``): flags are
generated from the fields, so a CLI default is the spec default and both go through the same checks.
The YAML key of a field is its name; its flag is ``--name-with-dashes``.

Errors are :class:`SpecError` and name the key the way the user wrote it: ``change_fraction`` in a spec
file, ``--change-fraction`` on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.config_file import ConfigError
from core.errors import InputError

MISSING = dataclasses.MISSING


class SpecError(ConfigError):
    """A job spec key (or CLI flag) is missing, unknown, unused by the task or has an invalid value."""


class FieldError(InputError):
    """A check failed for field ``name`` (``str()``: "name: message"); :func:`build_spec` and the CLI name the
    field as the user wrote it (YAML key or CLI flag)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message

    def named(self, source: str) -> SpecError:
        """The same error naming the field as a YAML key (``source`` "yaml") or a CLI flag ("cli")."""
        return SpecError(f"{flag_name(self.name) if source == 'cli' else self.name}: {self.message}")


Check = Callable[[Any], Any]


@dataclass(frozen=True)
class Option:
    """How one spec field is written, checked and offered on the command line."""

    help: str
    check: Check
    cli: Callable[[str], Any] | None = None  # one CLI string -> a YAML value (default: the string)
    repeat: str | None = None  # "list": a repeatable flag collected into a list; "dict": merged mappings
    short: str | None = None  # e.g. "-n"
    metavar: str | None = None
    on_cli: bool = True  # False: YAML only
    boolean: bool = False  # --flag / --no-flag


def option(default: Any, help: str, check: Check, **kwargs: Any) -> Any:
    """A spec field: ``default`` (``MISSING``: required; a list/dict is copied per spec), help text and check."""
    meta = {"option": Option(help=help, check=check, **kwargs)}
    if default is MISSING:
        return field(metadata=meta)
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def spec_options(cls: type) -> list[tuple[dataclasses.Field, Option]]:
    return [(f, f.metadata["option"]) for f in dataclasses.fields(cls) if "option" in f.metadata]


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


# ---------------------------------------------------------------------- building specs
def build_spec(cls: type, data: Mapping[str, Any], *, source: str = "yaml") -> Any:
    """Check ``data`` (YAML keys -> values) and build ``cls``; ``source`` is "yaml" or "cli" for messages."""
    name_of = flag_name if source == "cli" else (lambda n: n)
    options = spec_options(cls)
    known = {f.name for f, _ in options}
    unknown = sorted(set(data) - known)
    if unknown:
        used = ", ".join(sorted(known))
        raise SpecError(f"{name_of(unknown[0])}: not used by task {cls.task!r}; it uses: {used}")
    try:
        from_model = cls.model_defaults(data) if hasattr(cls, "model_defaults") else {}
    except ValueError as err:  # an unreadable model card
        raise SpecError(f"{name_of('model')}: {err}") from None
    values = {}
    for f, opt in options:
        value = data.get(f.name, from_model.get(f.name, _default(f)))
        if value is MISSING:
            raise SpecError(f"{name_of(f.name)}: required by task {cls.task!r} ({opt.help})")
        try:
            values[f.name] = opt.check(value)
        except FieldError as err:
            raise err.named(source) from None
        except ValueError as err:
            raise SpecError(f"{name_of(f.name)}: {err}") from None
    spec = cls(**values)
    try:
        spec.validate()
    except FieldError as err:
        raise err.named(source) from None
    return spec


def spec_digest(spec: Any) -> str:
    """sha256 of the resolved spec (every field, defaults included): what a resume must match."""
    text = json.dumps(spec_mapping(spec), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def spec_mapping(spec: Any) -> dict[str, Any]:
    """The spec as plain YAML-able values (the resolved ``spec.yaml`` of a job)."""
    return {"task": spec.task, **{f.name: _plain(getattr(spec, f.name)) for f, _ in spec_options(type(spec))}}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


# ---------------------------------------------------------------------- the command line
def add_spec_arguments(parser: argparse.ArgumentParser, cls: type, groups: Mapping[str, str] | None = None) -> None:
    """One flag per CLI field of ``cls``; ``groups`` maps field names to an argument-group title."""
    titled: dict[str, argparse._ArgumentGroup] = {}
    for f, opt in spec_options(cls):
        if not opt.on_cli:
            continue
        target: Any = parser
        title = (groups or {}).get(f.name)
        if title:
            target = titled.setdefault(title, parser.add_argument_group(title))
        default = _default(f)
        shown = "" if default in (None, MISSING, [], {}, "", [""]) else f" (default {_shown(default)})"
        names = [flag_name(f.name)] + ([opt.short] if opt.short else [])
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": opt.help + shown}
        if opt.boolean:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = opt.cli or str
            kwargs["metavar"] = opt.metavar or f.name.upper()
            if opt.repeat:
                kwargs["action"] = "append"
        target.add_argument(*names, **kwargs)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def mapping_from_args(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The YAML mapping of the flags given on the command line (left-out flags keep the spec defaults)."""
    given = vars(args)
    data: dict[str, Any] = {}
    for f, opt in spec_options(cls):
        if not opt.on_cli or f.name not in given:
            continue
        value = given[f.name]
        if opt.repeat == "dict":
            merged: dict[str, Any] = {}
            for part in value:
                merged.update(part)
            value = merged
        data[f.name] = value
    return data


# ---------------------------------------------------------------------- checks
def integer(low: int | None = None, high: int | None = None) -> Check:
    def check(value: Any) -> int:
        bad = isinstance(value, bool) or not isinstance(value, int)
        if bad or (low is not None and value < low) or (high is not None and value > high):
            bounds = f" >= {low}" if low is not None else ""
            bounds += (" and" if bounds else "") + f" <= {high}" if high is not None else ""
            raise ValueError(f"expected an integer{bounds}, got {_short(value)}")
        return value

    return check


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False) -> Check:
    def check(value: Any) -> float:
        bad = isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
        if not bad and low is not None:
            bad = value <= low if low_open else value < low
        if not bad and high is not None:
            bad = value > high
        if bad:
            if low is not None and high is not None:
                want = f"a number in {'(' if low_open else '['}{low}, {high}]"
            elif low is not None:
                want = f"a number {'>' if low_open else '>='} {low}"
            else:
                want = "a finite number"
            raise ValueError(f"expected {want}, got {_short(value)}")
        return float(value)

    return check


def optional(inner: Check) -> Check:
    return lambda value: None if value is None else inner(value)


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_short(value)}")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_short(value)}")
    return value


def choice(*values: str) -> Check:
    def check(value: Any) -> str:
        if value not in values:
            raise ValueError(f"expected one of {', '.join(values)}, got {_short(value)}")
        return value

    return check


def string_list(*, non_empty: bool = False, allowed: tuple[str, ...] | None = None) -> Check:
    """A string or a list of strings -> a tuple of strings."""

    def check(value: Any) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
            raise ValueError(f"expected a string or a list of strings, got {_short(value)}")
        if non_empty and not items:
            raise ValueError("expected at least one entry")
        bad = [v for v in items if allowed is not None and v not in allowed]
        if bad:
            raise ValueError(f"{bad[0]!r} is not one of {', '.join(allowed)}")
        return tuple(items)

    return check


def mapping(value_check: Check, *, keys: tuple[str, ...] | None = None) -> Check:
    """A mapping of names to values checked by ``value_check`` (keys restricted to ``keys`` when given)."""

    def check(value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a mapping of NAME: VALUE, got {_short(value)}")
        out = {}
        for key, item in value.items():
            if keys is not None and key not in keys:
                raise ValueError(f"unknown name {key!r}; use {', '.join(keys)}")
            try:
                out[str(key)] = value_check(item)
            except ValueError as err:
                raise ValueError(f"{key}: {err}") from None
        return out

    return check


def path(kind: str = "any") -> Check:
    """A path that exists: ``kind`` is "file", "dir" or "any" (either)."""

    def check(value: Any) -> str:
        if not isinstance(value, str | Path) or not str(value):
            raise ValueError(f"expected a path, got {_short(value)}")
        p = Path(value)
        ok = p.is_file() if kind == "file" else p.is_dir() if kind == "dir" else p.exists()
        if not ok:
            what = {"file": "no such file", "dir": "no such folder", "any": "no such file or folder"}[kind]
            raise ValueError(f"{str(value)!r}: {what}")
        return str(value)

    return check


# ---------------------------------------------------------------------- CLI value parsers
def cli_yaml(text: str) -> Any:
    """A CLI value parsed as YAML: ``0.5`` -> 0.5, ``'{loguniform: [0.3, 2]}'`` -> a distribution."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def cli_comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def cli_pairs(value_parser: Callable[[str], Any], example: str) -> Callable[[str], dict[str, Any]]:
    """``NAME=VALUE[,NAME=VALUE]`` -> {NAME: value}; errors give ``example``."""

    def parse(text: str) -> dict[str, Any]:
        out = {}
        for item in text.split(","):
            name, sep, raw = item.partition("=")
            if not sep or not name.strip() or not raw.strip():
                raise argparse.ArgumentTypeError(f"{item!r}: expected NAME=VALUE, e.g. {example}")
            try:
                out[name.strip()] = value_parser(raw.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(f"{item!r}: bad value {raw!r}, e.g. {example}") from None
        return out

    return parse


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` of a user value, cut to ``limit`` characters (never repr an unbounded value whole)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
