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


def exit_without_final_collection() -> None:
    """Make this process skip the interpreter's last garbage collections when it exits.

    After a sweep, PyTorch, Ray, MLflow and SQLAlchemy leave so many objects that those collections
    took 2-2.5 s on 2 cores, after the result was printed and every exit handler (Ray's shutdown
    among them) had run. What they closed that matters, the local MLflow database's connections,
    is closed here first: closing the last one folds SQLite's write-ahead log into mlflow.db. The
    handler is registered at the start, so it runs after the handlers registered later."""
    import atexit

    atexit.register(_freeze_garbage_at_exit)


def _freeze_garbage_at_exit() -> None:
    import gc

    store = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    for engine in list(getattr(getattr(store, "SqlAlchemyStore", None), "_engine_map", {}).values()):
        try:
            engine.dispose()
        except Exception:  # exiting anyway; the database stays readable with its log beside it
            pass
    gc.freeze()
