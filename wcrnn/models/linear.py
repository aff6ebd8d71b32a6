"""Linear RNN, dense or multi-head (Zucchet & Orvieto 2024, the curse of memory).

    h_t = A h_{t-1} + B x_t,   y_t = C h_t + D x_t

A is block-diagonal with `heads` independent blocks of N/heads units: heads = 1 is the dense
linear RNN, larger head counts move it towards a diagonal network. Each block starts as a
random Gaussian matrix scaled to spectral radius ≈ `radius`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .base import RecurrentCore


class LinearRNN(RecurrentCore):
    def __init__(self, input_size: int, hidden_size: int, heads: int = 1, radius: float = 0.9):
        super().__init__()
        if heads < 1 or hidden_size % heads:
            divisors = [d for d in range(1, hidden_size + 1) if hidden_size % d == 0]
            raise ValueError(f"heads={heads} must divide hidden_size={hidden_size}: use one of {divisors}")
        if not radius > 0:
            raise ValueError(f"radius={radius} must be > 0")
        self.input_size = input_size
        self.state_size = hidden_size
        self.heads = heads
        block = hidden_size // heads
        self.recurrent_blocks = nn.Parameter(torch.randn(heads, block, block) * radius / math.sqrt(block))  # A
        self.input_weight = nn.Parameter(torch.randn(hidden_size, input_size) / math.sqrt(input_size))  # B

    def recurrent_matrix(self) -> torch.Tensor:
        if self.heads == 1:
            return self.recurrent_blocks[0]
        return torch.block_diag(*self.recurrent_blocks)

    def step(self, state, x_t):
        return F.linear(state, self.recurrent_matrix()) + F.linear(x_t, self.input_weight)

    def forward(self, x, state=None):
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
