"""Residual maps R(h) of weakly coupled residual RNNs.

The residual fixes the memory of a WCRNN: for a linear residual and small coupling γ the
Lyapunov exponents of h_t = R(h_{t-1}) + γ·σ(W h_{t-1} + U x_t + b) are log|eig(R)|.

    none           R(h) = 0
    homogeneous    R(h) = r·h                                  all exponents log r
    rotational     R(h) = blockdiag(r·Rot(φ_k)) h, φ_k = φ0 (+ spread)   exponents log r (in pairs)
    heterogeneous  R(h) = diag(r_i) h, or blockdiag(r_k·Rot(φ_k)) h when angles are given
    nonlinear      R(h) = r·tanh(h)                            Jacobian r·diag(1 − tanh²(h))

Units (2k, 2k+1) form the k-th rotation pair: as a complex number z_k = h_2k + i·h_2k+1 the
rotational residual is z_k ↦ r_k·e^{iφ_k}·z_k, which is element-wise and cheap.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from .checks import CHARACTERISTIC_FREQUENCY_SMNIST, check_residual_arguments
from .recurrence import ResidualCoefficients


class Residual(nn.Module):
    """Base class. `jacobian(h)` is dR/dh at h: the matrix R (N, N) for a linear residual."""

    is_linear = True

    def jacobian(self, h: torch.Tensor) -> torch.Tensor:
        return self.matrix()

    def matrix(self) -> torch.Tensor:
        """Dense N×N matrix of a linear residual (for initialising Elman RNNs and theory)."""
        return self(torch.eye(self.hidden_size, device=self._device())).T

    def eigenvalues(self) -> torch.Tensor:
        return torch.linalg.eigvals(self.matrix().double().cpu())

    def predicted_exponents(self) -> list[float] | None:
        """Sorted log|eig(R)|, the γ → 0 limit of the Lyapunov spectrum; None if R is nonlinear."""
        if not self.is_linear:
            return None
        moduli = self.eigenvalues().abs().clamp_min(1e-300)
        return sorted(torch.log(moduli).tolist(), reverse=True)

    def coefficients(self) -> ResidualCoefficients:
        """R in the element-wise form the fast recurrence (recurrence.py) runs on."""
        raise NotImplementedError(f"{type(self).__name__} must define coefficients()")

    def _device(self):
        return next((t.device for t in self.buffers()), None) or next(
            (p.device for p in self.parameters()), torch.device("cpu"))


class NoResidual(Residual):
    """R(h) = 0: the WCRNN reduces to a γ-scaled Elman network."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.register_buffer("_anchor", torch.zeros(()))  # carries device for matrix()

    def forward(self, h):
        return torch.zeros_like(h)

    def coefficients(self):
        return ResidualCoefficients("diagonal", self._anchor.new_zeros(self.hidden_size))


class DiagonalResidual(Residual):
    """R(h) = diag(r_i)·h: homogeneous (all r_i = r) or heterogeneous magnitudes."""

    def __init__(self, magnitudes: torch.Tensor, trainable: bool = False):
        super().__init__()
        self.hidden_size = magnitudes.numel()
        magnitudes = magnitudes.float().clone()
        if trainable:
            self.magnitude = nn.Parameter(magnitudes)  # r_i, one per unit
        else:
            self.register_buffer("magnitude", magnitudes)

    def forward(self, h):
        return h * self.magnitude

    def coefficients(self):
        return ResidualCoefficients("diagonal", self.magnitude)


class RotationalResidual(Residual):
    """R = blockdiag(r_k·Rot(φ_k)) over unit pairs (2k, 2k+1); eigenvalues r_k·e^{±iφ_k}."""

    def __init__(self, magnitudes: torch.Tensor, angles: torch.Tensor, trainable: bool = False):
        super().__init__()
        self.hidden_size = 2 * magnitudes.numel()
        magnitudes, angles = magnitudes.float().clone(), angles.float().clone()
        if trainable:
            self.magnitude = nn.Parameter(magnitudes)  # r_k, one per pair
            self.angle = nn.Parameter(angles)  # φ_k in rad/step, one per pair
        else:
            self.register_buffer("magnitude", magnitudes)
            self.register_buffer("angle", angles)

    def forward(self, h):
        pairs = h.unflatten(-1, (-1, 2))
        cos = self.magnitude * torch.cos(self.angle)
        sin = self.magnitude * torch.sin(self.angle)
        first, second = pairs[..., 0], pairs[..., 1]
        return torch.stack((cos * first - sin * second, sin * first + cos * second), dim=-1).flatten(-2)

    def coefficients(self):
        return ResidualCoefficients("rotation", torch.polar(self.magnitude, self.angle))


class TanhResidual(Residual):
    """R(h) = r·tanh(h): near h = 0 it is the homogeneous residual r·h; for large activity it
    saturates, so the Jacobian r·diag(1 − tanh²(h)) varies along the trajectory and strong
    states are forgotten faster than weak ones."""

    is_linear = False

    def __init__(self, hidden_size: int, r: float, trainable: bool = False):
        super().__init__()
        self.hidden_size = hidden_size
        magnitude = torch.tensor(float(r))
        if trainable:
            self.magnitude = nn.Parameter(magnitude)  # r, the slope at h = 0
        else:
            self.register_buffer("magnitude", magnitude)

    def forward(self, h):
        return self.magnitude * torch.tanh(h)

    def coefficients(self):
        return ResidualCoefficients("tanh", self.magnitude.expand(self.hidden_size))

    def jacobian(self, h):
        return torch.diag_embed(self.magnitude * (1 - torch.tanh(h) ** 2))  # (B, N, N)


def build_residual(
    hidden_size: int,
    residual: str = "homogeneous",
    r: float | None = None,
    phi0: float | None = None,
    phi_spread: float = 0.0,
    r_range: Sequence[float] | None = None,
    phi_range: Sequence[float] | None = None,
    distribution: Literal["uniform", "linspace"] = "uniform",
    trainable: bool = False,
    generator: torch.Generator | None = None,
) -> Residual:
    """Build a residual from its description; random draws come from `generator`."""
    check_residual_arguments(hidden_size, residual, r, phi0, phi_spread, r_range, phi_range)
    r = 1.0 if r is None else float(r)
    if residual == "none":
        return NoResidual(hidden_size)
    if residual == "homogeneous":
        return DiagonalResidual(torch.full((hidden_size,), r), trainable)
    if residual == "nonlinear":
        return TanhResidual(hidden_size, r, trainable)
    if residual == "rotational":
        pairs = hidden_size // 2
        phi0 = CHARACTERISTIC_FREQUENCY_SMNIST if phi0 is None else float(phi0)
        spread = (2 * torch.rand(pairs, generator=generator) - 1) * phi_spread
        return RotationalResidual(torch.full((pairs,), r), phi0 + spread, trainable)
    # heterogeneous: magnitudes (and angles, if given) spread over their ranges
    count = hidden_size // 2 if phi_range is not None else hidden_size
    magnitudes = _draw(count, r_range, distribution, generator)
    if phi_range is None:
        return DiagonalResidual(magnitudes, trainable)
    return RotationalResidual(magnitudes, _draw(count, phi_range, distribution, generator), trainable)


def _draw(count, bounds, distribution, generator) -> torch.Tensor:
    low, high = float(bounds[0]), float(bounds[1])
    if distribution == "linspace":
        return torch.linspace(low, high, count)
    return low + (high - low) * torch.rand(count, generator=generator)
