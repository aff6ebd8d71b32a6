"""Errors a user can act on: one line each, naming the field and the fix."""

from __future__ import annotations

import difflib
import re
import typing

from pydantic import BaseModel, ValidationError


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


def _config_classes(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold: itself, or those inside Optional, unions, lists, dicts."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in typing.get_args(annotation) for model in _config_classes(argument)]


def _tagged(model: type[BaseModel], tag) -> bool:
    """Is `tag` the value that picks `model` out of a tagged union (its `name` or `distribution`)?"""
    fields = (model.model_fields[key] for key in ("name", "distribution") if key in model.model_fields)
    return any(typing.get_origin(field.annotation) is typing.Literal and tag in typing.get_args(field.annotation)
               for field in fields)


def _keys_around(validated, loc: tuple) -> list[str]:
    """The keys allowed beside an unknown key at `loc` in data validated as `validated` (a pydantic
    model or a tagged union of them); empty when the path does not lead to exactly one model."""
    candidates = _config_classes(validated)
    for step in loc[:-1]:
        tagged = [model for model in candidates if _tagged(model, step)]
        inside = [inner for model in candidates if step in model.model_fields
                  for inner in _config_classes(model.model_fields[step].annotation)]
        # neither a tag nor a field: a list index or a dict key, still among the same models
        candidates = tagged or inside or candidates
    return list(candidates[0].model_fields) if len(candidates) == 1 else []


def unknown_key_hint(key: str, known: list[str]) -> str:
    """What to say about an unknown key, given the keys allowed in its place."""
    if not known:
        return "remove it or fix its spelling"
    close = difflib.get_close_matches(str(key), known, n=1)
    suggestion = f"did you mean {close[0]!r}? " if close else ""
    return f"{suggestion}the keys here are {', '.join(known)}"


def describe_validation_error(error: ValidationError, prefix: str = "", validated=None) -> str:
    """Turn a pydantic error into lines 'field.path: what is wrong (got X)'. `validated` (the model
    or tagged union the data was validated as) lets an unknown key's line list the keys allowed there."""
    lines = []
    for item in error.errors(include_url=False):
        where = _location(item["loc"], prefix)
        kind, message = item["type"], item["msg"]
        if kind == "extra_forbidden":
            message = f"unknown key: {unknown_key_hint(item['loc'][-1], _keys_around(validated, item['loc']))}"
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


def config_error(error: ValidationError, prefix: str = "", validated=None) -> ConfigError:
    return ConfigError(describe_validation_error(error, prefix, validated))
