"""Plain, validated descriptions of every model: what a YAML file, a dict or a sweep sample holds.

The field `name` picks the model. Unknown keys are errors, and every invalid combination is
reported with the field it concerns (the checks are the models' own, so a config that
validates always builds).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from .checks import (ResidualKind, check_coupling_arguments, check_linear_ring_arguments, check_residual_arguments,
                     check_ring_arguments)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResidualFields(_Strict):
    residual: ResidualKind = Field("homogeneous", description="Residual map R(h).")
    r: Optional[float] = Field(None, description="Residual magnitude r > 0 (homogeneous, rotational, nonlinear); default 1.0.")
    phi0: Optional[float] = Field(None, description="Rotation angle φ0 in rad/step (rotational); default 2π/28.")
    phi_spread: float = Field(0.0, ge=0, description="Rotational: angles drawn uniformly from φ0 ± phi_spread.")
    r_range: Optional[tuple[float, float]] = Field(None, description="Heterogeneous: per-unit magnitudes drawn from [low, high].")
    phi_range: Optional[tuple[float, float]] = Field(None, description="Heterogeneous: per-pair angles drawn from [low, high]; omit for a diagonal residual.")
    distribution: Literal["uniform", "linspace"] = Field("uniform", description="Heterogeneous: random uniform draws or evenly spaced values.")
    trainable_residual: bool = Field(False, description="Train R's magnitudes/angles (fixed by default).")
    gamma: float = Field(0.1, ge=0, description="Coupling strength γ >= 0.")

    def residual_arguments(self) -> dict:
        return dict(residual=self.residual, r=self.r, phi0=self.phi0, phi_spread=self.phi_spread,
                    r_range=self.r_range, phi_range=self.phi_range, distribution=self.distribution,
                    trainable=self.trainable_residual)


class WCRNNConfig(ResidualFields):
    """h_t = R(h_{t-1}) + γ·σ(W h_{t-1} + U x_t + b) with block-diagonal W."""

    name: Literal["wcrnn"] = "wcrnn"
    hidden_size: int = Field(64, gt=0)
    heads: int = Field(1, gt=0, description="Blocks of W; must divide hidden_size (hidden_size = element-wise).")
    nonlinearity: Literal["tanh", "relu"] = "tanh"

    @model_validator(mode="after")
    def _check(self):
        check_residual_arguments(self.hidden_size, self.residual, self.r, self.phi0, self.phi_spread,
                                 self.r_range, self.phi_range)
        check_coupling_arguments(self.hidden_size, self.heads, self.gamma, self.nonlinearity)
        return self


class ElmanConfig(ResidualFields):
    """Elman RNN; init=weakly_coupled starts the recurrent matrix at R + γW."""

    name: Literal["elman"] = "elman"
    hidden_size: int = Field(64, gt=0)
    init: Literal["default", "weakly_coupled"] = "default"

    @model_validator(mode="after")
    def _check(self):
        check_residual_arguments(self.hidden_size, self.residual, self.r, self.phi0, self.phi_spread,
                                 self.r_range, self.phi_range)
        if self.init == "weakly_coupled" and self.residual == "nonlinear":
            raise ValueError("init=weakly_coupled needs a linear residual: residual=nonlinear has no matrix")
        residual_fields = self.model_fields_set & set(ResidualFields.model_fields)
        if self.init == "default" and residual_fields:
            raise ValueError(f"{', '.join(sorted(residual_fields))} only apply with init=weakly_coupled: "
                             "set init: weakly_coupled or remove them")
        return self


class GRUConfig(_Strict):
    name: Literal["gru"] = "gru"
    hidden_size: int = Field(64, gt=0)


class LSTMConfig(_Strict):
    name: Literal["lstm"] = "lstm"
    hidden_size: int = Field(64, gt=0)


class _RingFields(_Strict):
    hidden_size: int = Field(64, gt=0)
    r_min: float = Field(0.0, ge=0, lt=1, description="Smallest initial eigenvalue modulus.")
    r_max: float = Field(1.0, gt=0, le=1, description="Largest initial eigenvalue modulus.")
    max_phase: float = Field(2 * math.pi, gt=0, description="Initial eigenvalue phases in [0, max_phase].")

    @model_validator(mode="after")
    def _check(self):
        check_ring_arguments(self.r_min, self.r_max, self.max_phase)
        return self


class LRUConfig(_RingFields):
    name: Literal["lru"] = "lru"


class ComplexDiagonalConfig(_RingFields):
    name: Literal["complex_diagonal"] = "complex_diagonal"


class LinearConfig(_Strict):
    """Dense (heads=1) or multi-head block-diagonal linear RNN."""

    name: Literal["linear"] = "linear"
    hidden_size: int = Field(64, gt=0)
    heads: int = Field(1, gt=0, description="Independent blocks of A; must divide hidden_size.")
    r_min: float = Field(0.0, ge=0, lt=1, description="Smallest initial eigenvalue modulus of each block (the paper's heads study: the teacher's nu0).")
    r_max: float = Field(1.0, gt=0, le=1, description="Initial eigenvalue moduli stay below this.")
    max_phase: float = Field(math.pi, gt=0, le=math.pi, description="Initial eigenvalue phases scaled into [-max_phase, max_phase].")

    @model_validator(mode="after")
    def _check(self):
        check_coupling_arguments(self.hidden_size, self.heads, 0.0, "tanh")
        check_linear_ring_arguments(self.r_min, self.r_max, self.max_phase)
        return self


ModelConfig = Annotated[
    Union[WCRNNConfig, ElmanConfig, GRUConfig, LSTMConfig, LRUConfig, ComplexDiagonalConfig, LinearConfig],
    Field(discriminator="name"),
]
ModelConfigAdapter: TypeAdapter = TypeAdapter(ModelConfig)
MODEL_NAMES = ("wcrnn", "elman", "gru", "lstm", "lru", "complex_diagonal", "linear")
