"""Build a task from its config, once per process and config."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

from .adding import build_adding
from .base import Task
from .cifar import build_scifar
from .config import TaskConfig, TaskConfigAdapter
from .mnist import build_mnist
from .teacher_student import build_teacher_student

_BUILDERS: dict[str, Callable[[Any], Task]] = {
    "smnist": build_mnist,
    "psmnist": build_mnist,
    "scifar": build_scifar,
    "adding": build_adding,
    "teacher_student": build_teacher_student,
}


@functools.lru_cache(maxsize=4)
def _build_cached(config_json: str, cwd: str) -> Task:
    # cwd is part of the key because a relative task.root means a different folder elsewhere.
    cfg = TaskConfigAdapter.validate_json(config_json)
    return _BUILDERS[cfg.name](cfg)


def build_task(config: TaskConfig | dict[str, Any]) -> Task:
    """Build (or reuse, within this process) the task a config describes.

    Accepts a config object or a plain dict (validated, so unknown keys and bad values
    raise pydantic.ValidationError). Identical configs return the same Task object: treat
    it as read-only. Raises DataError when data files are missing or unreadable.
    """
    cfg = TaskConfigAdapter.validate_python(config)
    return _build_cached(cfg.model_dump_json(), os.getcwd())
