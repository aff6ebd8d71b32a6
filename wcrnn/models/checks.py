"""Checks of the models' arguments, shared by the configs (which validate a YAML file or a sweep's
sample) and the models (which validate what they are built with), so that a config that validates
always builds. Plain Python: validating a spec does not import PyTorch."""

from __future__ import annotations

import math
from typing import Literal, Sequence

ResidualKind = Literal["none", "homogeneous", "rotational", "heterogeneous", "nonlinear"]
RESIDUAL_KINDS: tuple[str, ...] = ("none", "homogeneous", "rotational", "heterogeneous", "nonlinear")
CHARACTERISTIC_FREQUENCY_SMNIST = 2 * math.pi / 28  # one image row per cycle, rad/step


def check_residual_arguments(
    hidden_size: int,
    residual: str,
    r: float | None = None,
    phi0: float | None = None,
    phi_spread: float = 0.0,
    r_range: Sequence[float] | None = None,
    phi_range: Sequence[float] | None = None,
) -> None:
    """Raise ValueError naming the offending field for every invalid combination."""
    if residual not in RESIDUAL_KINDS:
        raise ValueError(f"residual={residual!r} is unknown: use one of {', '.join(RESIDUAL_KINDS)}")
    if hidden_size < 1:
        raise ValueError(f"hidden_size={hidden_size} must be a positive integer")
    if r is not None and not r > 0:
        raise ValueError(f"r={r} must be > 0 (the residual magnitude; 1.0 is the edge of chaos)")
    uses_r = residual in ("homogeneous", "rotational", "nonlinear")
    if r is not None and not uses_r:
        hint = "set r_range instead" if residual == "heterogeneous" else "remove r"
        raise ValueError(f"r is not used by residual={residual}: {hint}")
    uses_phi0 = residual == "rotational"
    if phi0 is not None and not uses_phi0:
        raise ValueError(f"phi0 is only used by residual=rotational, not {residual}: remove phi0")
    if phi_spread and residual != "rotational":
        raise ValueError(f"phi_spread is only used by residual=rotational, not {residual}")
    if phi_spread < 0:
        raise ValueError(f"phi_spread={phi_spread} must be >= 0")
    if (r_range is not None or phi_range is not None) and residual != "heterogeneous":
        raise ValueError(f"r_range/phi_range are only used by residual=heterogeneous, not {residual}")
    if residual == "heterogeneous":
        if r_range is None:
            raise ValueError("r_range is required for residual=heterogeneous, e.g. r_range: [0.9, 1.0]")
        low, high = _as_range("r_range", r_range)
        if not 0 < low <= high:
            raise ValueError(f"r_range={list(r_range)} needs 0 < low <= high")
        if phi_range is not None:
            _as_range("phi_range", phi_range)
    needs_pairs = residual == "rotational" or (residual == "heterogeneous" and phi_range is not None)
    if needs_pairs and hidden_size % 2:
        raise ValueError(
            f"hidden_size={hidden_size} must be even for residual={residual} with angles "
            "(units rotate in pairs): use an even hidden_size"
        )


def _as_range(field: str, values: Sequence[float]) -> tuple[float, float]:
    if len(values) != 2:
        raise ValueError(f"{field} must be [low, high], got {list(values)}")
    low, high = float(values[0]), float(values[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"{field}={list(values)} must be two finite numbers with low <= high")
    return low, high


def check_coupling_arguments(hidden_size: int, heads: int, gamma: float, nonlinearity: str) -> None:
    if heads < 1 or hidden_size % heads:
        divisors = [d for d in range(1, hidden_size + 1) if hidden_size % d == 0]
        raise ValueError(
            f"heads={heads} must divide hidden_size={hidden_size}: use one of {divisors}")
    if not gamma >= 0 or not math.isfinite(gamma):
        raise ValueError(f"gamma={gamma} must be a finite number >= 0 (the coupling strength)")
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity={nonlinearity!r} is unknown: use tanh or relu")


def check_ring_arguments(r_min: float, r_max: float, max_phase: float) -> None:
    if not 0 <= r_min < r_max <= 1:
        raise ValueError(f"r_min={r_min}, r_max={r_max}: need 0 <= r_min < r_max <= 1")
    if not max_phase > 0:
        raise ValueError(f"max_phase={max_phase} must be > 0")


def check_linear_ring_arguments(r_min: float, r_max: float, max_phase: float) -> None:
    check_ring_arguments(r_min, r_max, max_phase)
    if max_phase > math.pi:
        raise ValueError(f"max_phase={max_phase} must be <= π: the phases of a real matrix's eigenvalues lie in [-π, π]")
