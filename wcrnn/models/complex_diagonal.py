"""Complex diagonal linear RNN: the LRU without its exponential parameterisation or γ normalisation.

    h_t = λ ⊙ h_{t-1} + B x_t,   λ = λ_re + i·λ_im (trained directly),   y_t = Re(C h_t) + D x_t
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .checks import check_ring_arguments
from .lru import DiagonalComplexCore, ring_init


class ComplexDiagonalRNN(DiagonalComplexCore):
    def __init__(self, input_size: int, hidden_size: int, r_min: float = 0.0, r_max: float = 1.0,
                 max_phase: float = 2 * math.pi):
        super().__init__()
        check_ring_arguments(r_min, r_max, max_phase)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.state_size = 2 * hidden_size
        modulus, phase = ring_init(hidden_size, r_min, r_max, max_phase)
        self.eigen_re = nn.Parameter(modulus * torch.cos(phase))  # Re λ
        self.eigen_im = nn.Parameter(modulus * torch.sin(phase))  # Im λ
        self.input_re = nn.Parameter(torch.randn(hidden_size, input_size) / math.sqrt(2 * input_size))  # Re B
        self.input_im = nn.Parameter(torch.randn(hidden_size, input_size) / math.sqrt(2 * input_size))  # Im B

    def eigenvalues(self):
        return torch.complex(self.eigen_re, self.eigen_im)
