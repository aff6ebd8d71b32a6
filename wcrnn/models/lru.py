"""Linear Recurrent Unit (Orvieto et al. 2023, arXiv 2303.06349), in the manner of minimal-LRU.

    h_t = Λ h_{t-1} + exp(γ_log) ⊙ (B x_t),   Λ = diag(exp(−exp(ν_log) + i·exp(θ_log)))
    y_t = Re(C h_t) + D x_t                   (C and D live in the SequenceModel readout)

Initialisation: |λ| uniform on the ring [r_min, r_max], arg λ uniform in [0, max_phase],
γ = sqrt(1 − |λ|²) normalises each unit's stationary variance, B ~ N(0, 1/(2·D_in)) per
real/imaginary part. The state is kept as [Re h, Im h].
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .base import RecurrentCore
from .checks import check_ring_arguments
from .recurrence import diagonal_linear_recurrence


def ring_init(n: int, r_min: float, r_max: float, max_phase: float) -> tuple[torch.Tensor, torch.Tensor]:
    """|λ| with density uniform on the ring [r_min, r_max] (as in the LRU paper), arg λ uniform."""
    u1, u2 = torch.rand(n), torch.rand(n)
    modulus = torch.sqrt(u1 * (r_max**2 - r_min**2) + r_min**2)
    return modulus, max_phase * u2


class DiagonalComplexCore(RecurrentCore):
    """Shared machinery: complex diagonal recurrence over a real [Re h, Im h] state."""

    def eigenvalues(self) -> torch.Tensor:
        raise NotImplementedError

    def input_gain(self) -> torch.Tensor:
        return torch.ones((), device=self.input_re.device)

    def driven(self, x):
        gain = self.input_gain()
        return torch.complex(F.linear(x, self.input_re), F.linear(x, self.input_im)) * gain

    def forward(self, x, state=None):
        """[Re h, Im h] for all t (B, T, 2N), by the fast recurrence (same results as reference_forward).

        Whole-sequence complex arithmetic is slow on the CPU, so the gain is folded into the
        (N, D) input weights and Re, Im of B x come out of one matmul interleaved, which is
        already the memory layout of a complex tensor; the states are rearranged only once."""
        batch, steps, size = x.shape[0], x.shape[1], self.hidden_size
        gain = self.input_gain().reshape(-1, 1)
        weight = torch.stack((self.input_re * gain, self.input_im * gain), dim=1).flatten(0, 1)  # rows Re b_1, Im b_1, ...
        drive = torch.view_as_complex(F.linear(x.transpose(0, 1), weight).unflatten(-1, (size, 2)))  # (T, B, N)
        h = torch.zeros(batch, size, dtype=drive.dtype, device=x.device)
        if state is not None:
            h = torch.complex(*state.chunk(2, dim=-1))
        h = diagonal_linear_recurrence(self.eigenvalues(), drive, h)
        return torch.view_as_real(h).permute(1, 0, 3, 2).reshape(batch, steps, 2 * size)

    def reference_forward(self, x, state=None):
        """The plain loop over time with autograd at every step: what the fast path is tested against."""
        lam = self.eigenvalues()
        drive = self.driven(x)
        h = torch.zeros(x.shape[0], self.hidden_size, dtype=drive.dtype, device=x.device)
        if state is not None:
            h = torch.complex(*state.chunk(2, dim=-1))
        states = []
        for t in range(x.shape[1]):
            h = lam * h + drive[:, t]
            states.append(h)
        h = torch.stack(states, dim=1)
        return torch.cat((h.real, h.imag), dim=-1)

    def step(self, state, x_t):
        h = torch.complex(*state.chunk(2, dim=-1))
        h = self.eigenvalues() * h + self.driven(x_t)
        return torch.cat((h.real, h.imag), dim=-1)

    def step_with_tangents(self, state, x_t, tangents):
        # The Jacobian is a fixed rotation-scaling per unit: apply Λ to the tangents.
        lam = self.eigenvalues().unsqueeze(-1)
        q = torch.complex(*tangents.chunk(2, dim=1))
        q = lam * q
        return self.step(state, x_t), torch.cat((q.real, q.imag), dim=1)


class LRU(DiagonalComplexCore):
    def __init__(self, input_size: int, hidden_size: int, r_min: float = 0.0, r_max: float = 1.0,
                 max_phase: float = 2 * math.pi):
        super().__init__()
        check_ring_arguments(r_min, r_max, max_phase)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.state_size = 2 * hidden_size
        modulus, phase = ring_init(hidden_size, r_min, r_max, max_phase)
        self.nu_log = nn.Parameter(torch.log(-torch.log(modulus.clamp(1e-6, 1 - 1e-6))))  # ν_log: |λ| = exp(−exp(ν_log))
        self.theta_log = nn.Parameter(torch.log(phase.clamp_min(1e-6)))  # θ_log: arg λ = exp(θ_log)
        self.gamma_log = nn.Parameter(0.5 * torch.log(1 - modulus.clamp(max=1 - 1e-6) ** 2))  # γ_log: input normalisation
        self.input_re = nn.Parameter(torch.randn(hidden_size, input_size) / math.sqrt(2 * input_size))  # Re B
        self.input_im = nn.Parameter(torch.randn(hidden_size, input_size) / math.sqrt(2 * input_size))  # Im B

    def eigenvalues(self):
        return torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))

    def input_gain(self):
        return torch.exp(self.gamma_log)
