"""Config files and `--set` overrides: the one place both the CLI and the experiment drivers load them.

A config file defines `get_config(arg=None) -> ml_collections.ConfigDict`; `load_config("PATH.py:ARG")`
calls it with ARG (None without `:ARG`). `apply_override(config, "key.sub=value")` sets one field from
text (a Python literal, else the text as a string); `set_field(config, "key.sub", value)` sets one
from a value. Both refuse a field the config does not have and a value of the wrong type
(ml_collections' type of the current value; a field named `*_dir` is a path: a string or None),
with a ConfigError (a ValueError) that names the key.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config file or override that cannot be used."""


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` by calling its get_config(arg); a relative path that does not exist
    from the current directory is taken from the repository root."""
    path, _, arg = spec.partition(":")
    from gipip_jax.assembly import resolve_path

    path = resolve_path(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location("gipip_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # a broken config file: report it as such
        raise ConfigError(f"config file {path!r} failed to load: {_one_line(error)}") from error
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config(arg)")
    try:
        config = module.get_config(arg or None)
    except Exception as error:  # e.g. an unknown PATH:ARG
        raise ConfigError(f"config {spec!r}: {_one_line(error)}") from error
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config file {path!r}: get_config returned a {type(config).__name__}, not a ConfigDict")
    return config


def parse_value(raw: str) -> Any:
    """The value of an override's text: a Python literal (3, 1e-4, None, [0, 1], 'text'), else the text."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw


def apply_override(config: ml_collections.ConfigDict, assignment: str) -> None:
    """Applies one `dotted.key=value` override in place (see parse_value)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r} is not of the form key=value")
    set_field(config, key.strip(), parse_value(raw))


def set_field(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """Sets the existing field `dotted.key` to `value` in place, type-checked (see the module doc)."""
    *parents, leaf = key.split(".")
    node, walked = config, []
    for part in parents:
        walked.append(part)
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(f"override {key!r}: the config has no field {'.'.join(walked)!r}")
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict):
        raise ConfigError(f"override {key!r}: {'.'.join(parents)!r} is {_type_name(type(node))}, not a group of fields")
    if leaf not in node:
        raise ConfigError(f"override {key!r}: the config has no field {leaf!r} (fields: {sorted(node.keys())})")
    expected = node.get_type(leaf)
    if leaf.endswith("_dir") and expected is type(None):
        expected = str   # a path left unset by default
    if value is not None and expected is str and not isinstance(value, str):
        raise ConfigError(_type_message(key, expected, value))
    try:
        node[leaf] = value
    except TypeError as error:  # ml_collections refuses a value of another type than the field's
        raise ConfigError(_type_message(key, expected, value)) from error


def _type_message(key: str, expected: type, value: Any) -> str:
    message = f"override {key!r} takes {_type_name(expected)}, got {type(value).__name__} {value!r}"
    if expected is str:
        message += f" (for the text, quote it: --set {key}=\"'{value}'\")"
    return message


def _type_name(kind: type) -> str:
    if issubclass(kind, ml_collections.ConfigDict):
        return "a group of fields (set its fields one by one)"
    return f"{'an' if kind.__name__[0] in 'aeiou' else 'a'} {kind.__name__}"


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"
