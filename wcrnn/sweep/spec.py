"""The sweep spec: one YAML (or JSON) file that says what to search and how.

    name: smnist-rotational
    task:     {name: smnist, source: mnist5k}
    model:    {name: wcrnn, hidden_size: 64, residual: rotational}
    training: {optimizer: sgd, momentum: 0.9, batch_size: 64}
    search_space:
      lr:    {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}
      r:     {distribution: uniform, low: 0.9, high: 1.0}
      phi0:  {distribution: uniform, low: 0.05, high: 0.6}
      gamma: {distribution: loguniform, low: 1.0e-3, high: 0.5}
      heads: {distribution: categorical, choices: [1, 4, 16]}
    objective: {metric: val_accuracy, mode: max}
    budget:    {num_trials: 20, max_epochs: 10}

`task`, `model` and `training` are a run config (see wcrnn.config); each sampled value
overrides one of its fields. Search-space keys are dotted paths (`model.r`, `training.lr`) or
the short name of a model or training field (`r`, `lr`). Everything is checked before
anything starts: unknown keys, bad bounds, and every combination the search could sample
(heads that do not divide a hidden size, φ0 on a residual that does not rotate, …).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from ..config import RunConfig, TrainingConfig, read_mapping, set_path
from ..errors import ConfigError, describe_validation_error, unknown_key_hint
from ..models.config import ComplexDiagonalConfig, ElmanConfig, GRUConfig, LinearConfig, LRUConfig, LSTMConfig, WCRNNConfig

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _finite(value: float, what: str) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value}")


class Uniform(_Strict):
    distribution: Literal["uniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _check(self):
        _finite(self.low, "low")
        _finite(self.high, "high")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        return self

    def corners(self):
        return [self.low, self.high]


class LogUniform(Uniform):
    distribution: Literal["loguniform"]

    @model_validator(mode="after")
    def _positive(self):
        if not self.low > 0:
            raise ValueError(f"low ({self.low}) must be > 0 for a log-uniform distribution: use uniform, or a positive low")
        return self


class IntRange(_Strict):
    distribution: Literal["int"]
    low: int
    high: int
    step: int = Field(1, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _check(self):
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("log=true needs low >= 1 and step 1")
        return self

    def corners(self):
        values = list(range(self.low, self.high + 1, self.step))
        return values if len(values) <= 16 else [values[0], values[-1]]


Choice = Union[bool, int, float, str, None]


class Categorical(_Strict):
    distribution: Literal["categorical"]
    choices: list[Choice] = Field(min_length=1, max_length=1000)

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices):
        for value in choices:
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"choices must be finite numbers, got {value}")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise ValueError("choices must be distinct")
        return choices

    def corners(self):
        return list(self.choices)


Distribution = Annotated[Union[Uniform, LogUniform, IntRange, Categorical], Field(discriminator="distribution")]


class Objective(_Strict):
    metric: str = Field(description="A metric the task produces, e.g. val_loss, val_accuracy, val_mse.")
    mode: Literal["min", "max"] = "min"


class Budget(_Strict):
    num_trials: int = Field(8, gt=0, le=100_000, description="Trials to run (Tune num_samples).")
    max_epochs: int = Field(5, gt=0, le=100_000, description="Epochs per trial (the longest a trial can run).")
    time_budget_s: Optional[float] = Field(None, gt=0, description="Stop starting/running trials after this many seconds.")
    max_failures: int = Field(1, ge=-1, le=100, description="Retries per trial after a crash (-1: unlimited).")


class Search(_Strict):
    algorithm: Literal["tpe", "random"] = "tpe"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    startup_trials: int = Field(5, ge=0, le=100_000, description="Random trials before TPE takes over.")


class Scheduler(_Strict):
    kind: Literal["none", "asha"] = "none"
    grace_period: int = Field(1, gt=0, description="ASHA: epochs every trial gets before it can be stopped.")
    reduction_factor: float = Field(2.0, gt=1, le=100, description="ASHA: keep the best 1/reduction_factor at each rung.")


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0, le=1024, description="CPUs per trial.")
    gpu: float = Field(0.0, ge=0, le=64, description="GPUs per trial; fractions pack trials onto one GPU (0.25: four per GPU).")
    max_concurrent: Optional[int] = Field(None, gt=0, le=10_000, description="At most this many trials at once.")

    @model_validator(mode="after")
    def _fraction(self):
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError(f"gpu={self.gpu}: more than one GPU must be a whole number")
        return self


class Lyapunov(_Strict):
    every: int = Field(0, ge=0, description="Measure every k epochs (0: not during training).")
    at_end: bool = Field(True, description="Measure after the last epoch.")
    num_exponents: Optional[int] = Field(None, gt=0, description="Top-k exponents (default: the full spectrum).")
    num_sequences: int = Field(8, gt=0, le=100_000)
    warmup: Optional[int] = Field(None, ge=0)
    ons_interval: Union[Literal["auto"], PositiveInt] = Field(
        "auto", description="Re-orthonormalise every this many steps; auto: as rarely as the spread of the spectrum allows.")


class Checkpoints(_Strict):
    num_to_keep: int = Field(2, gt=0, le=1000, description="Checkpoints kept per trial.")
    metric: Optional[str] = Field(None, description="Rank checkpoints by this metric (default: the objective).")


def _no_credentials(uri: Optional[str], variables: str) -> Optional[str]:
    # The spec is stored verbatim in MLflow and in Ray's state: secrets belong in the environment.
    if uri and "://" in uri and "@" in uri.split("://", 1)[1].split("/", 1)[0]:
        raise ValueError(f"credentials in a URI are stored with the spec for everyone to read: remove "
                         f"'user:password@' and set {variables} in the environment instead")
    return uri


class Tracking(_Strict):
    uri: Optional[str] = Field(None, description="MLflow tracking URI (default: sqlite:///mlflow.db in the working directory).")
    experiment: Optional[str] = Field(None, description="MLflow experiment name (default: the sweep name).")
    retry_limit_s: float = Field(600.0, gt=0, le=7 * 24 * 3600, description=(
        "How long writes wait for an unreachable tracking server (buffered, retried) before the sweep "
        "stops with an error; resume it once the server is back."))

    @field_validator("uri")
    @classmethod
    def _uri_without_credentials(cls, uri):
        return _no_credentials(uri, "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")


def is_local_database(tracking_uri: str) -> bool:
    """An SQLite file on this machine (the embedded default), not a tracking server or a shared database."""
    return tracking_uri.startswith("sqlite:")


class Storage(_Strict):
    path: Optional[str] = Field(None, description="Where Ray keeps trial state (default: ./wcrnn_runs).")

    @field_validator("path")
    @classmethod
    def _path_without_credentials(cls, path):
        return _no_credentials(path, "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")


class SweepSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN, description="Sweep name: letters, digits, _ . - (used for folders and MLflow).")
    description: str = Field("", max_length=10_000)
    task: dict[str, Any] = Field(description="Task section of a run config (see wcrnn train).")
    model: dict[str, Any] = Field(description="Model section: fixed settings; searched fields may be omitted.")
    training: dict[str, Any] = Field(default_factory=dict, description="Training section: fixed settings.")
    search_space: dict[str, Distribution] = Field(default_factory=dict, description="Per parameter: a distribution.")
    objective: Objective = Field(description="What the search optimises: a metric the task produces and min or max.")
    budget: Budget = Field(default_factory=Budget)
    search: Search = Field(default_factory=Search)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    resources: Resources = Field(default_factory=Resources)
    lyapunov: Lyapunov = Field(default_factory=Lyapunov)
    checkpoints: Checkpoints = Field(default_factory=Checkpoints)
    tracking: Tracking = Field(default_factory=Tracking)
    storage: Storage = Field(default_factory=Storage)

    @model_validator(mode="after")
    def _check_whole_sweep(self):
        problems = check_sweep(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # -- what a trial runs -------------------------------------------------------------

    @property
    def parameters(self) -> dict[str, Distribution]:
        """Search space keyed by full dotted path, residual-deciding parameters first."""
        resolved = {resolve_parameter(key, _scalar(self.model.get("name", "wcrnn"))): dist
                    for key, dist in self.search_space.items()}
        return dict(sorted(resolved.items(), key=lambda item: item[0] not in _DECIDERS))

    def base_run_config(self) -> dict:
        """The run config every trial starts from (before its sampled values)."""
        training = dict(self.training)
        training["epochs"] = self.budget.max_epochs
        training["lyapunov"] = self.lyapunov.model_dump()
        return {"task": dict(self.task), "model": dict(self.model), "training": training}

    def trial_run_config(self, sampled: dict[str, Any]) -> RunConfig:
        data = self.base_run_config()
        for path, value in sampled.items():
            set_path(data, path, value)
        return RunConfig.model_validate(data)

    @property
    def checkpoint_metric(self) -> str:
        return self.checkpoints.metric or self.objective.metric

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    def spec_hash(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


# -- parameters ------------------------------------------------------------------------

_MODEL_CLASSES = {"wcrnn": WCRNNConfig, "elman": ElmanConfig, "gru": GRUConfig, "lstm": LSTMConfig,
                  "lru": LRUConfig, "complex_diagonal": ComplexDiagonalConfig, "linear": LinearConfig}
_TRAINING_FIELDS = set(TrainingConfig.model_fields) - {"lyapunov", "epochs"}
# Which residual kinds use a residual field; the others must not sample it.
RESIDUAL_USES = {"model.r": {"homogeneous", "rotational", "nonlinear"}, "model.phi0": {"rotational"},
                 "model.phi_spread": {"rotational"}, "model.r_range": {"heterogeneous"},
                 "model.phi_range": {"heterogeneous"}}
_DECIDERS = ("model.residual",)


def resolve_parameter(key: str, model_name: str) -> str:
    """'r' -> 'model.r', 'lr' -> 'training.lr'; dotted paths are checked and kept."""
    model_fields = set(_MODEL_CLASSES.get(model_name, WCRNNConfig).model_fields) - {"name"}
    if "." in key:
        section, _, field = key.partition(".")
        if section == "task":
            raise ValueError(f"{key}: task fields cannot be searched (the data set is loaded once per sweep)")
        if section == "model" and field in model_fields:
            return key
        if section == "training" and field in _TRAINING_FIELDS:
            return key
        allowed = model_fields if section == "model" else _TRAINING_FIELDS
        if section in ("model", "training"):
            raise ValueError(f"{key}: {section} has no searchable field {field!r}; choose from {', '.join(sorted(allowed))}")
        raise ValueError(f"{key}: only model.* and training.* fields can be searched")
    in_model, in_training = key in model_fields, key in _TRAINING_FIELDS
    if in_model and in_training:
        raise ValueError(f"{key}: ambiguous, write model.{key} or training.{key}")
    if in_model:
        return f"model.{key}"
    if in_training:
        return f"training.{key}"
    raise ValueError(f"{key}: not a field of model {model_name!r} or of training; model fields: "
                     f"{', '.join(sorted(model_fields))}; training fields: {', '.join(sorted(_TRAINING_FIELDS))}")


def parameter_applies(path: str, assignment: dict[str, Any], base_model: dict) -> bool:
    """False where a residual-specific field would be meaningless for the residual in use."""
    uses = RESIDUAL_USES.get(path)
    if uses is None:
        return True
    residual = assignment.get("model.residual", base_model.get("residual", "homogeneous"))
    return residual in uses


# -- validation of the whole space -------------------------------------------------------

_MAX_COMBINATIONS = 512
_METRICS_BY_KIND = {"classification": {"val_loss", "val_accuracy", "train_loss"},
                    "regression": {"val_loss", "val_mse", "train_loss"}}
_KIND_OF_TASK = {"smnist": "classification", "psmnist": "classification", "scifar": "classification",
                 "adding": "regression", "teacher_student": "regression"}
_LYAPUNOV_METRICS = {"max_lyapunov", "mean_lyapunov"}


def metric_mode(metric: str) -> str:
    """Whether a metric is better high ("max": accuracies) or low ("min": losses, MSE, exponents)."""
    return "max" if metric.endswith("accuracy") else "min"


def _scalar(value):
    """A section's value as a lookup key: the sections are checked field by field later, and a list or
    mapping where a name belongs must reach that check, not crash a dictionary lookup here."""
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def produced_metrics(spec: "SweepSpec") -> set[str]:
    metrics = set(_METRICS_BY_KIND[_KIND_OF_TASK.get(_scalar(spec.task.get("name")), "regression")])
    if spec.lyapunov.every:
        metrics |= _LYAPUNOV_METRICS
    return metrics


def _check_metric(metric: str, where: str, spec: "SweepSpec") -> list[str]:
    produced = produced_metrics(spec)
    if metric not in produced:
        return [f"{where}: {metric!r} is not produced by task {spec.task.get('name')!r}; use one of "
                f"{', '.join(sorted(produced))}"]
    return []


def check_sweep(spec: "SweepSpec") -> list[str]:
    """Every problem with the spec as a whole, as 'field.path: message' lines."""
    problems: list[str] = []
    problems += _check_metric(spec.objective.metric, "objective.metric", spec)
    expected_mode = metric_mode(spec.objective.metric)
    if not problems and spec.objective.mode != expected_mode:
        problems.append(f"objective.mode: {spec.objective.metric} should be maximised/minimised: use mode: {expected_mode}")
    if spec.checkpoints.metric:
        problems += _check_metric(spec.checkpoints.metric, "checkpoints.metric", spec)
    for key in ("epochs", "lyapunov"):
        if key in spec.training:
            problems.append(f"training.{key}: set it in the sweep's "
                            f"{'budget.max_epochs' if key == 'epochs' else 'lyapunov section'} instead")
    model_name = _scalar(spec.model.get("name", "wcrnn"))
    parameters: dict[str, Distribution] = {}
    keys: dict[str, str] = {}
    for key, distribution in spec.search_space.items():
        try:
            path = resolve_parameter(key, model_name)
        except ValueError as error:
            problems.append(f"search_space.{error}")
            continue
        if path in parameters:
            problems.append(f"search_space.{key}: {path} is searched twice")
        parameters[path], keys[path] = distribution, key
    residuals = (set(parameters["model.residual"].corners()) if "model.residual" in parameters
                 else {_scalar(spec.model.get("residual", "homogeneous"))})
    for path in parameters.keys() & RESIDUAL_USES.keys():
        if not residuals & RESIDUAL_USES[path]:
            problems.append(f"search_space.{keys[path]}: model.residual is {' or '.join(map(repr, sorted(residuals, key=str)))}, "
                            f"which does not use {path.split('.')[-1]} (used by residual "
                            f"{' or '.join(sorted(RESIDUAL_USES[path]))}): remove it or change the residual")
    problems += _check_fixed_sections(spec)
    if problems:
        return problems
    ordered = dict(sorted(parameters.items(), key=lambda item: item[0] not in _DECIDERS))
    return _check_combinations(spec, ordered)


def _check_fixed_sections(spec: "SweepSpec") -> list[str]:
    """Task and training sections, and the model section's keys, are checked on their own, so their
    errors carry their own path."""
    from ..tasks import TaskConfig, TaskConfigAdapter

    base = spec.base_run_config()
    problems = []
    model_class = _MODEL_CLASSES.get(_scalar(base["model"].get("name", "wcrnn")))
    if model_class is None:
        problems.append(f"model.name: unknown model {base['model']['name']!r}: use one of {', '.join(_MODEL_CLASSES)}")
    else:
        # Whether the fixed fields fit together can depend on the sampled ones; unknown keys cannot.
        known = list(model_class.model_fields)
        problems += [f"model.{key}: unknown key: {unknown_key_hint(key, known)}"
                     for key in base["model"] if key not in known]
    for section, validate, validated in (("task", TaskConfigAdapter.validate_python, TaskConfig),
                                         ("training", TrainingConfig.model_validate, TrainingConfig)):
        try:
            validate(base[section])
        except ValidationError as error:
            problems += describe_validation_error(error, section, validated).splitlines()
    return problems


def _combinations(parameters: dict[str, Distribution]):
    corners = {path: dist.corners() for path, dist in parameters.items()}
    total = math.prod(len(values) for values in corners.values())
    if total <= _MAX_COMBINATIONS:
        yield from (dict(zip(corners, values)) for values in itertools.product(*corners.values()))
        return
    # Too many to enumerate: every categorical/integer combination of the structural
    # parameters, each continuous bound on its own.
    structural = {p: v for p, v in corners.items() if not isinstance(parameters[p], Uniform)}
    if math.prod(len(v) for v in structural.values()) <= _MAX_COMBINATIONS:
        yield from (dict(zip(structural, values)) for values in itertools.product(*structural.values()))
    for path, values in corners.items():
        for value in values:
            yield {path: value}


def _check_combinations(spec: "SweepSpec", parameters: dict[str, Distribution]) -> list[str]:
    base = spec.base_run_config()
    seen: set[str] = set()
    problems: list[str] = []
    for combination in _combinations(parameters):
        # conditional parameters are not sampled where the residual does not use them
        assignment = {p: v for p, v in combination.items() if parameter_applies(p, combination, spec.model)}
        data = json.loads(json.dumps(base))
        for path, value in assignment.items():
            set_path(data, path, value)
        try:
            RunConfig.model_validate(data)
        except ValidationError as error:
            context = ", ".join(f"{p.split('.')[-1]}={v!r}" for p, v in assignment.items())
            for line in describe_validation_error(error, validated=RunConfig).splitlines():
                if line not in seen:
                    seen.add(line)
                    problems.append(f"search_space (sampling {context}): {line}" if assignment else line)
        except ValueError as error:  # model validators raise plain ValueErrors too
            problems.append(f"search_space: {error}")
        if len(problems) >= 10:
            break
    return problems


# -- reading specs ---------------------------------------------------------------------------

MAX_SPEC_BYTES = 1_000_000


def load_spec(path: str | Path, overrides: list[str] | None = None) -> tuple[SweepSpec, str]:
    """Read, override and validate a spec file; returns (spec, the file's text)."""
    from ..config import apply_overrides

    path = Path(path)
    if path.is_file() and path.stat().st_size > MAX_SPEC_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size} bytes; a sweep spec must be under {MAX_SPEC_BYTES} bytes")
    data = read_mapping(path)
    text = path.read_text(encoding="utf-8")
    return validate_spec(apply_overrides(data, overrides), str(path)), text


def validate_spec(data: dict, source: str = "spec") -> SweepSpec:
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, validated=SweepSpec)) from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a sweep spec") from None


def spec_json_schema() -> dict:
    schema = SweepSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "wcrnn sweep spec"
    return schema
