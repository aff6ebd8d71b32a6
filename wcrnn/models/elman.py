"""Elman RNN, optionally with the weakly coupled residual initialisation.

    h_t = tanh(W_hh h_{t-1} + W_ih x_t + b)

`init="weakly_coupled"` starts the recurrent matrix at W_hh = R + γ·W (R a linear residual
matrix, W ~ N(0, 1/N)), the Elman counterpart of a WCRNN; `init="default"` keeps torch's.
Training runs on torch.nn.RNN (cuDNN on a GPU); `step` re-implements one update for the
Lyapunov spectrum.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .base import RecurrentCore
from .residuals import Residual


class ElmanRNN(RecurrentCore):
    def __init__(self, input_size: int, hidden_size: int, residual: Residual | None = None,
                 gamma: float = 0.1):
        super().__init__()
        self.input_size = input_size
        self.state_size = hidden_size
        self.rnn = nn.RNN(input_size, hidden_size, nonlinearity="tanh", batch_first=True)  # W_ih, W_hh, biases
        if residual is not None:
            self.init_weakly_coupled(residual, gamma)

    @torch.no_grad()
    def init_weakly_coupled(self, residual: Residual, gamma: float):
        if not residual.is_linear:
            raise ValueError("init=weakly_coupled needs a linear residual (not nonlinear)")
        n = self.state_size
        coupling = torch.randn(n, n) / math.sqrt(n)
        self.rnn.weight_hh_l0.copy_(residual.matrix().cpu() + gamma * coupling)
        self.rnn.bias_hh_l0.zero_()
        self.rnn.bias_ih_l0.zero_()

    def forward(self, x, state=None):
        return self.rnn(x, None if state is None else state.unsqueeze(0))[0]

    def step(self, state, x_t):
        rnn = self.rnn
        return torch.tanh(F.linear(x_t, rnn.weight_ih_l0, rnn.bias_ih_l0)
                          + F.linear(state, rnn.weight_hh_l0, rnn.bias_hh_l0))
