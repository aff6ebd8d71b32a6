"""Errors a user can act on: one line each, naming the field and the fix."""

from __future__ import annotations

import re

from pydantic import ValidationError


class ConfigError(ValueError):
    """A configuration or spec is invalid; str(error) is the user-facing message."""


class ServiceUnavailable(RuntimeError):
    """A server the command needs (Ray cluster, MLflow tracking server) cannot be reached."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or unsafe; the message names the file."""


class DataError(RuntimeError):
    """Data missing or unreadable; the message says how to get it (one line)."""


_UNION_TAGS = {"wcrnn", "elman", "gru", "lstm", "lru", "complex_diagonal", "linear",
               "smnist", "psmnist", "scifar", "adding", "teacher_student",
               "uniform", "loguniform", "int", "categorical"}


_PYDANTIC_STEP = re.compile(r"^[a-z-]+\[.*\]$")  # pydantic's own location steps: function-after[...], list[int]


def _readable_key(key: str) -> str:
    """A key as the user can find it in their file: quoted when empty, blank-padded, dotted or unprintable."""
    if key and key.isprintable() and key.strip() == key and "." not in key and len(key) <= 60:
        return key
    shown = repr(key)
    return shown if len(shown) <= 62 else shown[:60] + "…"


def _location(loc: tuple, prefix: str) -> str:
    parts = [_readable_key(str(p)) for p in loc if str(p) not in _UNION_TAGS and not _PYDANTIC_STEP.match(str(p))]
    path = ".".join(parts)
    return ".".join(p for p in (prefix, path) if p)


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """Turn a pydantic error into lines 'field.path: what is wrong (got X)'."""
    lines = []
    for item in error.errors(include_url=False):
        where = _location(item["loc"], prefix)
        kind, message = item["type"], item["msg"]
        if kind == "extra_forbidden":
            message = "unknown key: remove it or fix its spelling (`wcrnn sweep schema` lists the keys)"
        elif kind == "missing":
            message = "required field is missing"
        elif kind == "union_tag_invalid":
            message = f"unknown name {item['input'].get('name')!r}: {item['ctx']['expected_tags']}" \
                if isinstance(item.get("input"), dict) else message
        elif kind == "union_tag_not_found":
            message = "missing 'name': say which one to use"
        else:
            message = message.removeprefix("Value error, ")
            if kind not in ("value_error", "assertion_error") and "input" in item:
                got = repr(item["input"])
                message += f" (got {got[:60] + '…' if len(got) > 60 else got})"
        # whole-model checks name their fields in the message itself
        lines.append(f"{where}: {message}" if where else message)
    return "\n".join(lines)


def config_error(error: ValidationError, prefix: str = "") -> ConfigError:
    return ConfigError(describe_validation_error(error, prefix))
