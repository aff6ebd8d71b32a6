"""What one training run is: a task, a model and how to train it (validated with Pydantic).

A run config is a plain mapping (YAML, JSON or a dict), e.g.

    task:     {name: smnist, source: mnist5k}
    model:    {name: wcrnn, hidden_size: 64, residual: rotational, r: 1.0, phi0: 0.224, gamma: 0.1}
    training: {optimizer: sgd, lr: 0.01, momentum: 0.9, epochs: 10, batch_size: 64}

`--set key.path=value` overrides any field; values are parsed as YAML scalars/lists.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from .errors import ConfigError, config_error
from .models.config import ModelConfig, WCRNNConfig
from .tasks import AddingConfig, TaskConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LyapunovSettings(_Strict):
    """When and how to measure the Lyapunov spectrum during training."""

    every: int = Field(0, ge=0, description="Measure every k epochs (0: never during training).")
    at_end: bool = Field(False, description="Measure once after the last epoch.")
    num_exponents: Optional[int] = Field(None, gt=0, description="Top-k exponents (default: the full spectrum).")
    num_sequences: int = Field(8, gt=0, description="Validation sequences to average over.")
    warmup: Optional[int] = Field(None, ge=0, description="Steps not counted (default: a quarter of the sequence).")
    ons_interval: Union[Literal["auto"], PositiveInt] = Field(
        "auto", description="Re-orthonormalise every this many steps; auto: as rarely as the spread of the spectrum allows.")


class TrainingConfig(_Strict):
    optimizer: Literal["sgd", "adam", "adamw"] = Field("adam", description="sgd uses momentum (the WCRNN paper's optimiser).")
    lr: float = Field(1e-3, gt=0, description="Learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(0.0, ge=0)
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)
    eval_batch_size: int = Field(256, gt=0)
    max_batches_per_epoch: Optional[int] = Field(None, gt=0, description="Cap on training batches per epoch (quick runs).")
    grad_clip: Optional[float] = Field(None, gt=0, description="Clip the global gradient norm to this value.")
    lr_schedule: Literal["none", "cosine", "step"] = "none"
    step_size: int = Field(10, gt=0, description="lr_schedule=step: epochs between decays.")
    step_factor: float = Field(0.5, gt=0, le=1, description="lr_schedule=step: decay factor.")
    seed: int = Field(0, description="Seeds model initialisation, batching and Lyapunov tangents.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available.")
    evaluate_test: bool = Field(True, description="Evaluate the test set after the last epoch; its test_* metrics go with that epoch's (in a sweep: with the trial's last report, to MLflow).")
    lyapunov: LyapunovSettings = Field(default_factory=LyapunovSettings)


class RunConfig(_Strict):
    task: TaskConfig = Field(default_factory=lambda: AddingConfig(name="adding"))
    model: ModelConfig = Field(default_factory=WCRNNConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_names(cls, data):
        # A section without `name` means the default task/model, as when the section is absent.
        if isinstance(data, dict):
            data = dict(data)
            for section, default in (("task", "adding"), ("model", "wcrnn")):
                if isinstance(data.get(section), dict) and "name" not in data[section]:
                    data[section] = {"name": default, **data[section]}
        return data

    @model_validator(mode="after")
    def _check(self):
        lyapunov = self.training.lyapunov
        state = getattr(self.model, "hidden_size", 0) * (2 if self.model.name in ("lstm", "lru", "complex_diagonal") else 1)
        if lyapunov.num_exponents is not None and lyapunov.num_exponents > state:
            raise ValueError(f"training.lyapunov.num_exponents={lyapunov.num_exponents} exceeds the state size {state}")
        return self


def set_path(data: dict, dotted: str, value: Any) -> None:
    """data['a']['b'] = value for dotted='a.b', creating mappings on the way."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section, cannot set a key inside it")
        node = child
    node[keys[-1]] = value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply 'key.path=value' strings; values are parsed as YAML (numbers, booleans, lists)."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set model.r=0.95")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        set_path(data, key.strip(), value)
    return data


def read_mapping(path: str | Path) -> dict:
    """Read a YAML or JSON file safely (no tags, no code); errors name the file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML or JSON file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; expected a YAML or JSON file") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config (more than {MAX_NESTING} levels)") from None
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        first = str(error).strip().splitlines()[0]
        mark = getattr(error, "problem_mark", None)
        if mark is not None:
            first += f" at line {mark.line + 1}, column {mark.column + 1}"
        raise ConfigError(f"{path}: unreadable {'JSON' if path.suffix == '.json' else 'YAML'} ({first})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    if _nesting(data) > MAX_NESTING:
        raise ConfigError(f"{path}: nested too deeply to be a config (more than {MAX_NESTING} levels)")
    return data


MAX_NESTING = 32  # real configs use 4; deeper ones are mistakes or attacks on the recursive validators


def _nesting(data) -> int:
    """Depth of nested mappings and lists, without recursion (and without expanding YAML aliases twice)."""
    deepest, stack, seen = 0, [(data, 1)], set()
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (dict, list)) or id(item) in seen:
            continue
        seen.add(id(item))
        deepest = max(deepest, depth)
        if deepest > MAX_NESTING:
            break
        stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None,
                    base: dict | None = None) -> RunConfig:
    data = read_mapping(path) if path else dict(base or {})
    return validate_run_config(apply_overrides(data, overrides))


def validate_run_config(data: dict) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise config_error(error, validated=RunConfig) from None
