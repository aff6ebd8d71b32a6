"""Linear RNN, dense or multi-head (Zucchet & Orvieto 2024, the curse of memory).

    h_t = A h_{t-1} + B x_t,   y_t = C h_t + D x_t   (C and D live in the SequenceModel readout)

A is block-diagonal with `heads` independent blocks of N/heads units: heads = 1 is the dense
linear RNN, larger head counts move it towards a diagonal network.

Initialisation, as the paper's public code initialises its RNN students: each block starts as a
Gaussian matrix N(0, 1/block) whose eigenvalues are moved to modulus
r_min + (r_max − r_min)·tanh(|λ|) and phase arg(λ)·max_phase/π, so every block's spectral
radius is below r_max ≤ 1 however small the block (a 2×2 Gaussian block alone would often
start above 1 and overflow within a few hundred steps). The paper's head-count study uses
r_min = ν0 of the teacher. For max_phase < π a negative real eigenvalue loses its partner
and the real part of the reconstructed block moves the spectrum, as in that code.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .base import RecurrentCore
from .checks import check_coupling_arguments, check_linear_ring_arguments
from .recurrence import dense_linear_recurrence


def recurrent_blocks_init(heads: int, block: int, r_min: float, r_max: float, max_phase: float) -> torch.Tensor:
    """`heads` real block × block matrices with eigenvalues remapped into the ring [r_min, r_max)."""
    gaussian = torch.randn(heads, block, block, dtype=torch.float64) / math.sqrt(block)
    eigenvalues, eigenvectors = torch.linalg.eig(gaussian)
    modulus = r_min + (r_max - r_min) * torch.tanh(eigenvalues.abs())
    remapped = torch.polar(modulus, eigenvalues.angle() * (max_phase / math.pi))
    blocks = eigenvectors @ torch.diag_embed(remapped) @ torch.linalg.inv(eigenvectors)
    return blocks.real.to(torch.get_default_dtype())


class LinearRNN(RecurrentCore):
    def __init__(self, input_size: int, hidden_size: int, heads: int = 1, r_min: float = 0.0, r_max: float = 1.0,
                 max_phase: float = math.pi):
        super().__init__()
        check_coupling_arguments(hidden_size, heads, 0.0, "tanh")
        check_linear_ring_arguments(r_min, r_max, max_phase)
        self.input_size = input_size
        self.state_size = hidden_size
        self.heads = heads
        block = hidden_size // heads
        # A, as `heads` diagonal blocks
        self.recurrent_blocks = nn.Parameter(recurrent_blocks_init(heads, block, r_min, r_max, max_phase))
        # B ~ N(0, 1/input_size)
        self.input_weight = nn.Parameter(torch.randn(hidden_size, input_size) / math.sqrt(input_size))

    def recurrent_matrix(self) -> torch.Tensor:
        if self.heads == 1:
            return self.recurrent_blocks[0]
        return torch.block_diag(*self.recurrent_blocks)

    def step(self, state, x_t):
        return F.linear(state, self.recurrent_matrix()) + F.linear(x_t, self.input_weight)

    def forward(self, x, state=None):
        """All states (B, T, N), by the fast recurrence (same results as reference_forward)."""
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        driven = F.linear(x.transpose(0, 1), self.input_weight).contiguous()  # time-major
        return dense_linear_recurrence(self.recurrent_matrix(), driven, state).transpose(0, 1)

    def reference_forward(self, x, state=None):
        """The plain loop over time with autograd at every step: what the fast path is tested against."""
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        driven = F.linear(x, self.input_weight)
        transition = self.recurrent_matrix().T
        states = []
        for t in range(x.shape[1]):
            state = state @ transition + driven[:, t]
            states.append(state)
        return torch.stack(states, dim=1)

    def step_with_tangents(self, state, x_t, tangents):
        return self.step(state, x_t), self.recurrent_matrix() @ tangents
