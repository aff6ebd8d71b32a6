"""Sequence tasks: sMNIST, psMNIST, sCIFAR, the adding problem, linear teacher-student.

    task = build_task({"name": "smnist", "source": "mnist5k"})
    x, y = task.train.batch(torch.arange(32))      # x float32 (32, 784, 1), y int64 (32,)
    loss = task.loss(model(x), y)
"""

from __future__ import annotations

import importlib

from ..errors import DataError
from .config import (
    AddingConfig,
    PSMNISTConfig,
    SCIFARConfig,
    SMNISTConfig,
    TaskConfig,
    TaskConfigAdapter,
    TeacherStudentConfig,
)

TASK_NAMES = ("smnist", "psmnist", "scifar", "adding", "teacher_student")

# The configs are plain Python; the tasks import PyTorch (seconds), so they load on first use.
_MODULE_OF = {"build_task": "build", "Task": "base", "SequenceSplit": "base"}


def __getattr__(name):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AddingConfig",
    "DataError",
    "PSMNISTConfig",
    "SCIFARConfig",
    "SMNISTConfig",
    "SequenceSplit",
    "TASK_NAMES",
    "Task",
    "TaskConfig",
    "TaskConfigAdapter",
    "TeacherStudentConfig",
    "build_task",
]
