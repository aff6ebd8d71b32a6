"""The interface every recurrent model in wcrnn implements.

A model is a recurrent *core* (state update) plus a linear *readout*:

    s_t = F(s_{t-1}, x_t)          the core; s is a real vector of size `state_size`
    y   = C s_T + d                readout="last"      (classification, adding problem)
    y_t = C s_t + d  (+ D x_t)     readout="sequence"  (teacher-student task)

Complex-valued models (LRU, complex diagonal) keep their state as [Re h, Im h], so every
model exposes one real state vector. That is what the Lyapunov spectrum is measured on:
`step` gives the exact one-step map F, and `step_with_tangents` propagates tangent
vectors through its Jacobian (forward-mode autodiff by default; models override it with
their analytic Jacobian where that is cheaper).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.func import jvp, vmap

Readout = Literal["last", "sequence"]


class RecurrentCore(nn.Module):
    """Base class: subclasses set input_size, state_size and define `step` and `forward`."""

    input_size: int
    state_size: int

    @property
    def feature_size(self) -> int:
        """Size of what the readout sees; the state itself unless a model says otherwise (LSTM)."""
        return self.state_size

    def features(self, states: torch.Tensor) -> torch.Tensor:
        return states

    def initial_state(self, batch_size: int, device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.zeros(batch_size, self.state_size, device=device, dtype=dtype)

    def step(self, state: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """One exact update s_t = F(s_{t-1}, x_t); state (B, S), x_t (B, D)."""
        raise NotImplementedError(f"{type(self).__name__} must define step()")

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """Run over a whole sequence x (B, T, D) and return the readout features (B, T, F).

        The default loops over `step`; subclasses override it with faster equivalents.
        """
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        states = []
        for t in range(x.shape[1]):
            state = self.step(state, x[:, t])
            states.append(state)
        return self.features(torch.stack(states, dim=1))

    def step_with_tangents(
        self, state: torch.Tensor, x_t: torch.Tensor, tangents: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (F(s, x_t), J_t Q) with J_t = dF/ds at (s, x_t) and Q = tangents (B, S, k)."""
        step = lambda s: self.step(s, x_t)  # noqa: E731
        jacobian_times = vmap(lambda q: jvp(step, (state,), (q,))[1], in_dims=2, out_dims=2)
        return step(state), jacobian_times(tangents)


class SequenceModel(nn.Module):
    """A recurrent core with a linear readout from the last state or from every state."""

    def __init__(self, core: RecurrentCore, output_size: int, readout: Readout = "last",
                 input_skip: bool = False):
        super().__init__()
        self.core = core  # the recurrent dynamics
        self.readout_mode = readout  # "last": classify from s_T; "sequence": predict y_t at every t
        self.readout = nn.Linear(core.feature_size, output_size)  # C, d
        # D x_t: the direct input-to-output term of linear state-space models (LRU, teacher-student)
        self.input_skip = nn.Linear(core.input_size, output_size, bias=False) if input_skip else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.core(x)
        if self.readout_mode == "last":
            y = self.readout(features[:, -1])
            return y if self.input_skip is None else y + self.input_skip(x[:, -1])
        y = self.readout(features)
        return y if self.input_skip is None else y + self.input_skip(x)

