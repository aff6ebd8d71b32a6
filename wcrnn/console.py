"""Shared by the CLI commands: stderr console, one-line errors with exit codes, JSON output."""

from __future__ import annotations

import json
import sys

import typer
from pydantic import ValidationError
from rich.console import Console

from .errors import CheckpointError, ConfigError, ServiceUnavailable, config_error

err = Console(stderr=True)


def fail(message: str, code: int = 2):
    for line in str(message).strip().splitlines() or ["failed"]:
        err.print(f"[bold red]error:[/] {line}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run_guarded(action):
    """Run `action`, turning known user errors into one-line messages and exit codes."""
    from .tasks import DataError

    try:
        return action()
    except ConfigError as error:
        fail(str(error), 2)
    except ValidationError as error:
        fail(str(config_error(error)), 2)
    except (DataError, CheckpointError, ServiceUnavailable) as error:
        fail(str(error), 1)
    except ValueError as error:
        fail(str(error), 2)


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=float) + "\n")


