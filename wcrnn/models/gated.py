"""GRU and LSTM baselines: torch's own modules for training, an explicit step for Lyapunov spectra.

GRU (torch's convention):
    r = σ(W_ir x + b_ir + W_hr h + b_hr),  z = σ(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),  h' = (1 − z) ⊙ n + z ⊙ h
LSTM: the state is [h, c] (2N numbers); the readout sees h.
    i, f, g, o = σ, σ, tanh, σ of (W_ih x + b_ih + W_hh h + b_hh)
    c' = f ⊙ c + i ⊙ g,  h' = o ⊙ tanh(c')
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import RecurrentCore


class GRU(RecurrentCore):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size = input_size
        self.state_size = hidden_size
        self.rnn = nn.GRU(input_size, hidden_size, batch_first=True)  # gates' weights and biases

    def forward(self, x, state=None):
        return self.rnn(x, None if state is None else state.unsqueeze(0))[0]

    def step(self, state, x_t):
        rnn = self.rnn
        gi = F.linear(x_t, rnn.weight_ih_l0, rnn.bias_ih_l0).chunk(3, dim=-1)
        gh = F.linear(state, rnn.weight_hh_l0, rnn.bias_hh_l0).chunk(3, dim=-1)
        reset = torch.sigmoid(gi[0] + gh[0])
        update = torch.sigmoid(gi[1] + gh[1])
        candidate = torch.tanh(gi[2] + reset * gh[2])
        return (1 - update) * candidate + update * state


class LSTM(RecurrentCore):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.state_size = 2 * hidden_size  # [h, c]
        self.rnn = nn.LSTM(input_size, hidden_size, batch_first=True)  # gates' weights and biases

    @property
    def feature_size(self):
        return self.hidden_size

    def features(self, states):
        return states[..., : self.hidden_size]

    def forward(self, x, state=None):
        if state is not None:
            h, c = state.chunk(2, dim=-1)
            state = (h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous())
        return self.rnn(x, state)[0]

    def step(self, state, x_t):
        rnn = self.rnn
        h, c = state.chunk(2, dim=-1)
        gates = F.linear(x_t, rnn.weight_ih_l0, rnn.bias_ih_l0) + F.linear(h, rnn.weight_hh_l0, rnn.bias_hh_l0)
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return torch.cat((h, c), dim=-1)
