"""Weakly coupled residual RNN (Dubinin & Effenberger 2024, arXiv 2307.14823).

    h_t = R(h_{t-1}) + γ · σ(W h_{t-1} + U x_t + b)

R is a residual map (see residuals.py) that sets the memory timescales; γ ≥ 0 is the weak
coupling; σ is tanh (default) or relu. W is block-diagonal with `heads` blocks of N/heads
units: heads = 1 is a dense coupling, heads = N an element-wise one. The blocks are the only
parameters, so entries outside them are exactly zero at all times.

Step Jacobian: J_t = R'(h_{t-1}) + γ · diag(σ'(a_t)) · W, a_t = W h_{t-1} + U x_t + b,
so for a linear residual and γ → 0 the Lyapunov exponents approach log|eig(R)|.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .base import RecurrentCore
from .checks import check_coupling_arguments
from .recurrence import wcrnn_recurrence
from .residuals import Residual


class WCRNN(RecurrentCore):
    def __init__(self, input_size: int, hidden_size: int, residual: Residual, gamma: float = 0.1,
                 heads: int = 1, nonlinearity: str = "tanh"):
        super().__init__()
        check_coupling_arguments(hidden_size, heads, gamma, nonlinearity)
        if residual.hidden_size != hidden_size:
            raise ValueError(f"residual has {residual.hidden_size} units, hidden_size is {hidden_size}")
        self.input_size = input_size
        self.state_size = hidden_size
        self.heads = heads
        self.nonlinearity = nonlinearity
        block = hidden_size // heads
        self.residual = residual  # R(h): the memory of the network
        self.register_buffer("gamma", torch.tensor(float(gamma)))  # γ: weak coupling strength
        self.coupling_blocks = nn.Parameter(torch.empty(heads, block, block))  # W, one block per head
        self.input_weight = nn.Parameter(torch.empty(hidden_size, input_size))  # U
        self.bias = nn.Parameter(torch.zeros(hidden_size))  # b
        self.init_coupling_blocks()
        self.init_input_weight()

    def init_coupling_blocks(self):
        # N(0, 1/block): each block has spectral radius ≈ 1, so γ alone sets the coupling scale
        nn.init.normal_(self.coupling_blocks, std=1 / math.sqrt(self.coupling_blocks.shape[-1]))

    def init_input_weight(self):
        nn.init.normal_(self.input_weight, std=1 / math.sqrt(self.input_size))

    def coupling_matrix(self) -> torch.Tensor:
        """Dense block-diagonal W (N × N)."""
        if self.heads == 1:
            return self.coupling_blocks[0]
        return torch.block_diag(*self.coupling_blocks)

    def activation(self, a):
        return torch.tanh(a) if self.nonlinearity == "tanh" else F.relu(a)

    def activation_slope(self, a):
        return 1 - torch.tanh(a) ** 2 if self.nonlinearity == "tanh" else (a > 0).to(a.dtype)

    def step(self, state, x_t):
        pre = F.linear(state, self.coupling_matrix()) + F.linear(x_t, self.input_weight, self.bias)
        return self.residual(state) + self.gamma * self.activation(pre)

    def forward(self, x, state=None):
        """All states (B, T, N), by the fast recurrence (same results as reference_forward)."""
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        driven = F.linear(x.transpose(0, 1), self.input_weight, self.bias)  # U x_t + b, time-major
        states = wcrnn_recurrence(driven.contiguous(), self.coupling_matrix(), state, self.gamma,
                                  self.residual.coefficients(), self.nonlinearity)
        return states.transpose(0, 1)

    def reference_forward(self, x, state=None):
        """The plain loop over time with autograd at every step: the definition the fast path is tested against."""
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        driven = F.linear(x, self.input_weight, self.bias)  # U x_t + b for all t at once
        coupling = self.coupling_matrix().T
        states = []
        for t in range(x.shape[1]):
            state = self.residual(state) + self.gamma * self.activation(state @ coupling + driven[:, t])
            states.append(state)
        return torch.stack(states, dim=1)

    def step_with_tangents(self, state, x_t, tangents):
        coupling = self.coupling_matrix()
        pre = F.linear(state, coupling) + F.linear(x_t, self.input_weight, self.bias)
        new_state = self.residual(state) + self.gamma * self.activation(pre)
        slope = (self.gamma * self.activation_slope(pre)).unsqueeze(-1)
        jacobian = torch.addcmul(self.residual.jacobian(state), slope, coupling)  # (B, N, N), one per sequence
        return new_state, jacobian @ tangents
