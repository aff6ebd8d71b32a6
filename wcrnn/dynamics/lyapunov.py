"""Lyapunov spectra of input-driven recurrent networks by the QR (Benettin) method.

Along a trajectory s_t = F(s_{t-1}, x_t), k orthonormal tangent vectors Q are pushed
through the step Jacobians, Q ← J_t Q (J·Q, not Jᵀ·Q), and re-orthonormalised every
`ons_interval` steps by a QR decomposition with diag(R) > 0. The exponents are the time
averages of log R_ii (natural log, per step).

The QR is most of the cost, and between two QRs the tangents only lose orthogonality at the
rate the exponents spread apart. ons_interval="auto" (the default) therefore re-orthonormalises
as rarely as that spread allows: after each QR it picks the next interval so that the growth
of the fastest direction over the slowest stays below AUTO_CONDITION_LOG (e^5 in float32,
leaving ~5 significant digits to the slowest direction), from 1 step up to AUTO_MAX_INTERVAL.
Contracting, near-isometric networks such as weakly coupled RNNs get long intervals; chaotic
networks with a wide spectrum fall back to every step. Warm-up steps let both the state and Q settle
and are not counted. Sequences are processed as one batch; the spectrum is reported as the
mean and spread over sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Union

import torch

from ..models.base import RecurrentCore


@dataclass
class LyapunovSpectrum:
    exponents: list[float]  # mean over sequences, descending
    spread: list[float]  # standard deviation over sequences
    per_sequence: torch.Tensor = field(repr=False)  # (sequences, k)
    steps: int  # steps averaged over (after warm-up)
    orthonormalisations: int = 0  # QR decompositions done, warm-up included

    @property
    def max_exponent(self) -> float:
        return self.exponents[0]

    @property
    def mean_exponent(self) -> float:
        return sum(self.exponents) / len(self.exponents)

    def to_dict(self) -> dict:
        return {"exponents": self.exponents, "spread": self.spread, "max_exponent": self.max_exponent,
                "mean_exponent": self.mean_exponent, "steps": self.steps,
                "sequences": int(self.per_sequence.shape[0]), "orthonormalisations": self.orthonormalisations}


AUTO_CONDITION_LOG = {torch.float32: 5.0, torch.float64: 15.0}
AUTO_MAX_INTERVAL = 16
OnsInterval = Union[int, Literal["auto"]]


def _next_interval(log_diagonal: torch.Tensor, steps: int, interval: int, dtype) -> int:
    """Interval that keeps log(fastest/slowest growth) within budget, at most doubling each time."""
    spread_per_step = float((log_diagonal.amax(1) - log_diagonal.amin(1)).max()) / steps
    budget = AUTO_CONDITION_LOG.get(dtype, AUTO_CONDITION_LOG[torch.float32])
    affordable = int(budget / spread_per_step) if spread_per_step > 0 else AUTO_MAX_INTERVAL
    return max(1, min(affordable, 2 * interval, AUTO_MAX_INTERVAL))


def _check(core: RecurrentCore, inputs: torch.Tensor, num_exponents, warmup, ons_interval):
    if inputs.ndim != 3 or inputs.shape[-1] != core.input_size:
        raise ValueError(f"inputs must be (sequences, steps, {core.input_size}), got {tuple(inputs.shape)}")
    if num_exponents is not None and not 1 <= num_exponents <= core.state_size:
        raise ValueError(f"num_exponents={num_exponents} must be between 1 and the state size {core.state_size}")
    if ons_interval != "auto" and not (isinstance(ons_interval, int) and ons_interval >= 1):
        raise ValueError(f"ons_interval={ons_interval!r} must be an integer >= 1 or 'auto'")
    if not 0 <= warmup < inputs.shape[1]:
        raise ValueError(f"warmup={warmup} must be >= 0 and shorter than the sequences ({inputs.shape[1]} steps)")


@torch.no_grad()
def lyapunov_spectrum(
    core: RecurrentCore,
    inputs: torch.Tensor,
    num_exponents: int | None = None,
    warmup: int = 0,
    ons_interval: OnsInterval = "auto",
    seed: int = 0,
) -> LyapunovSpectrum:
    """Top `num_exponents` (default: all) Lyapunov exponents of `core` driven by `inputs` (B, T, D)."""
    _check(core, inputs, num_exponents, warmup, ons_interval)
    batch, steps, _ = inputs.shape
    k = num_exponents or core.state_size
    dtype = next(core.parameters()).dtype
    inputs = inputs.to(dtype)
    generator = torch.Generator().manual_seed(seed)
    tangents = torch.linalg.qr(torch.randn(batch, core.state_size, k, generator=generator, dtype=dtype))[0]
    tangents = tangents.to(inputs.device)
    state = core.initial_state(batch, inputs.device, dtype)
    log_growth = torch.zeros(batch, k, dtype=torch.float64, device=inputs.device)
    tiny = torch.finfo(dtype).tiny
    counted = since_qr = orthonormalisations = 0
    interval = 1 if ons_interval == "auto" else ons_interval
    for t in range(steps):
        state, tangents = core.step_with_tangents(state, inputs[:, t], tangents)
        since_qr += 1
        if since_qr == interval or t == warmup - 1 or t == steps - 1:
            tangents, upper = torch.linalg.qr(tangents)
            orthonormalisations += 1
            diagonal = upper.diagonal(dim1=-2, dim2=-1)
            signs = torch.where(diagonal < 0, -1.0, 1.0).to(dtype)
            tangents = tangents * signs.unsqueeze(1)
            log_diagonal = diagonal.abs().clamp_min(tiny).log()
            if t >= warmup:
                log_growth += log_diagonal.double()
                counted += since_qr
            if ons_interval == "auto":
                interval = _next_interval(log_diagonal, since_qr, interval, dtype)
            since_qr = 0
    per_sequence = (log_growth / counted).float().cpu()
    # Exponents come out ordered by the QR; sort to guarantee a descending spectrum.
    per_sequence = per_sequence.sort(dim=1, descending=True).values
    spread = per_sequence.std(dim=0, unbiased=False) if batch > 1 else torch.zeros(k)
    return LyapunovSpectrum(per_sequence.mean(0).tolist(), spread.tolist(), per_sequence, counted,
                            orthonormalisations)


@torch.no_grad()
def max_exponent_by_perturbation(
    core: RecurrentCore, inputs: torch.Tensor, warmup: int = 0, epsilon: float = 1e-7, seed: int = 0,
) -> float:
    """Largest exponent from a directly simulated perturbed trajectory (renormalised every step).

    An independent check of the QR method: it uses only `step`, never a Jacobian. Best run in
    float64 (`core.double()`) so that `epsilon` is far above rounding error.
    """
    dtype = next(core.parameters()).dtype
    inputs = inputs.to(dtype)
    batch, steps, _ = inputs.shape
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(batch, core.state_size, generator=generator, dtype=dtype).to(inputs.device)
    direction = direction / direction.norm(dim=1, keepdim=True)
    state = core.initial_state(batch, inputs.device, dtype)
    perturbed = state + epsilon * direction
    log_growth = torch.zeros(batch, dtype=torch.float64, device=inputs.device)
    for t in range(steps):
        state = core.step(state, inputs[:, t])
        perturbed = core.step(perturbed, inputs[:, t])
        distance = (perturbed - state).norm(dim=1).clamp_min(torch.finfo(dtype).tiny)
        if t >= warmup:
            log_growth += torch.log(distance / epsilon).double()
        perturbed = state + (perturbed - state) * (epsilon / distance).unsqueeze(1)
    return float((log_growth / (steps - warmup)).mean())


def linear_map_exponents(matrix: torch.Tensor) -> list[float]:
    """Theory for a fixed linear map h → A h: sorted log|eig(A)| (complex pairs give two equal values)."""
    moduli = torch.linalg.eigvals(matrix.double()).abs().clamp_min(1e-300)
    return sorted((math.log(m) for m in moduli.tolist()), reverse=True)
