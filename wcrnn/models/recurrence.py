"""The WCRNN recurrence over a whole sequence, with a hand-written backward pass through time.

    h_t = R(h_{t-1}) + γ · σ(p_t),    p_t = W h_{t-1} + d_t,    d_t = U x_t + b (given)

Autograd through a Python loop records about ten small operations per step and replays
them one by one in the backward pass; at 784 steps that bookkeeping, not arithmetic, is
most of the time. Here the forward loop runs without autograd and writes into preallocated
buffers, and the backward loop does only what feeds back from step to step:

    g_t        = ∂L/∂h_t = (from the output at t) + ∂L/∂h_t (through step t+1)
    δ_t        = γ · σ'(p_t) ⊙ g_t                                  ∂L/∂p_t
    ∂L/∂h_{t-1} through step t = R'(h_{t-1})ᵀ g_t + Wᵀ δ_t

Everything else (∂L/∂W = Σ_t δ_t h_{t-1}ᵀ, ∂L/∂d = δ, ∂L/∂γ and the residual's parameters)
is one large matmul or reduction after the loop. `WCRNN.reference_forward` is the plain
autograd loop this is tested against, values and gradients. On a GPU, where each of those small
operations costs a kernel launch, the two loops run as one Triton kernel each instead
(fused_recurrence.py); the buffers and the work after the loops are shared.

The residual must be element-wise (`ResidualCoefficients`); every residual in residuals.py is.
The linear recurrences at the end (complex diagonal: LRU and complex diagonal RNN; dense: the
linear RNN) follow the same scheme.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..memory import reuse_freed_memory
from .fused_recurrence import (fused_backward, fused_diagonal_available, fused_diagonal_backward,
                               fused_diagonal_forward, fused_forward, fused_linear_backward, fused_linear_forward,
                               fused_recurrence_available)


@dataclass
class ResidualCoefficients:
    """R in element-wise form:

    diagonal   R(h) = c ⊙ h           c real (N,)
    rotation   R(h): z_k ↦ c_k · z_k  c complex (N/2,), z_k = h_2k + i·h_2k+1 (a 2 × 2 rotation and scaling)
    tanh       R(h) = c ⊙ tanh(h)     c real (N,)

    c may require grad; gradients flow back to the residual's own parameters through autograd.
    """

    kind: Literal["diagonal", "rotation", "tanh"]
    coefficients: torch.Tensor


def wcrnn_recurrence(driven: torch.Tensor, coupling: torch.Tensor, initial_state: torch.Tensor,
                     gamma: torch.Tensor, residual: ResidualCoefficients,
                     nonlinearity: str = "tanh") -> torch.Tensor:
    """All states h_1..h_T, time-major (T, B, N), from driven = U x + b (T, B, N) and h_0 (B, N)."""
    return _Recurrence.apply(driven, coupling, initial_state, gamma, residual.coefficients,
                             residual.kind, nonlinearity)


def _as_pairs(real: torch.Tensor) -> torch.Tensor:
    """View (..., N) real as (..., N/2) complex, sharing memory."""
    return torch.view_as_complex(real.unflatten(-1, (-1, 2)))


class _Recurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, driven, coupling, initial_state, gamma, coefficients, kind, nonlinearity):
        reuse_freed_memory()
        steps, batch, size = driven.shape
        keep_activations = any(ctx.needs_input_grad)
        gamma_value = float(gamma)
        # states[0] = h_0, so states[:-1] are the h_{t-1} the backward pass needs, without a copy.
        states = driven.new_empty(steps + 1, batch, size)
        states[0] = initial_state
        activations = driven.new_empty(steps if keep_activations else 1, batch, size)  # σ(p_t)
        # a GPU: the whole loop in one kernel launch
        if not (fused_recurrence_available(driven) and
                fused_forward(driven, coupling, coefficients, kind, nonlinearity, gamma_value, states, activations)):
            _forward_through_time(driven, coupling.t().contiguous(), gamma_value, coefficients, kind, nonlinearity,
                                  states, activations)
        if keep_activations:
            ctx.save_for_backward(coupling, gamma, coefficients, states, activations)
        ctx.kind, ctx.nonlinearity = kind, nonlinearity
        return states[1:]

    @staticmethod
    def backward(ctx, grad_states):
        coupling, gamma, coefficients, states, activations = ctx.saved_tensors
        kind = ctx.kind
        steps, batch, size = activations.shape
        previous = states[:-1]  # h_0 .. h_{T-1}
        fused = fused_recurrence_available(activations)  # a GPU: the whole loop in one kernel launch
        if fused:
            total, grad_pre, carry = (torch.empty_like(activations), torch.empty_like(activations),
                                      activations.new_empty(batch, size))
            fused = fused_backward(grad_states, coupling, coefficients, kind, ctx.nonlinearity, float(gamma), states,
                                   activations, total, grad_pre, carry)
            saturated = None  # tanh(h_{t-1}), made below only if the tanh residual's gradient is wanted
        if not fused:
            total, grad_pre, carry, saturated = _backward_through_time(
                grad_states, coupling, gamma, coefficients, kind, ctx.nonlinearity, previous, activations)

        needs = ctx.needs_input_grad
        grad_coupling = grad_pre.reshape(-1, size).t() @ previous.reshape(-1, size) if needs[1] else None
        grad_gamma = (total * activations).sum().reshape(gamma.shape) if needs[3] else None
        grad_coefficients = None
        if needs[4]:
            if kind == "diagonal":
                grad_coefficients = (total * previous).sum((0, 1))
            elif kind == "rotation":
                grad_coefficients = (_as_pairs(total) * _as_pairs(previous).conj()).sum((0, 1))
            else:
                grad_coefficients = (total * (torch.tanh(previous) if saturated is None else saturated)).sum((0, 1))
        return grad_pre, grad_coupling, carry, grad_gamma, grad_coefficients, None, None


def _forward_through_time(driven, coupling_t, gamma_value, coefficients, kind, nonlinearity, states, activations):
    """The forward loop on the CPU: a few in-place operations per step into preallocated buffers."""
    steps, batch, size = driven.shape
    keep_activations = activations.shape[0] == steps
    scratch = driven.new_empty(batch, size) if kind == "tanh" else None
    states_as_pairs = _as_pairs(states) if kind == "rotation" else None
    for t in range(steps):
        a_t = activations[t if keep_activations else 0]
        h_previous, h_t = states[t], states[t + 1]
        torch.addmm(driven[t], h_previous, coupling_t, out=a_t)
        if nonlinearity == "tanh":
            a_t.tanh_()
        else:
            a_t.clamp_(min=0)
        if kind == "diagonal":
            torch.mul(h_previous, coefficients, out=h_t)
        elif kind == "rotation":
            torch.mul(states_as_pairs[t], coefficients, out=states_as_pairs[t + 1])
        else:
            torch.mul(torch.tanh(h_previous, out=scratch), coefficients, out=h_t)
        h_t.add_(a_t, alpha=gamma_value)


def _backward_through_time(grad_states, coupling, gamma, coefficients, kind, nonlinearity, previous, activations):
    """The backward loop on the CPU: (g_t for all t, δ_t for all t, ∂L/∂h_0, tanh(h_{t-1}) for the tanh residual)."""
    steps, batch, size = activations.shape
    # δ_t = γ σ'(p_t) ⊙ g_t: fill the buffer with γ σ'(p_t) for all t at once, multiply by g_t in the loop.
    grad_pre = torch.mul(activations, activations) if nonlinearity == "tanh" else (activations > 0).to(activations.dtype)
    if nonlinearity == "tanh":
        grad_pre.neg_().add_(1)
    grad_pre.mul_(gamma)
    saturated = None
    if kind == "tanh":
        saturated = torch.tanh(previous)
        residual_slope = (1 - saturated * saturated) * coefficients  # diagonal of R'(h_{t-1})
    else:
        conjugate = coefficients.conj()  # Rᵀ for a diagonal or a rotation
    total = torch.empty_like(activations)  # g_t, every path
    total[-1] = grad_states[-1]
    total_as_pairs = _as_pairs(total) if kind == "rotation" else None
    carry = torch.empty(batch, size, dtype=total.dtype, device=total.device)
    carry_as_pairs = _as_pairs(carry) if kind == "rotation" else None
    for t in range(steps - 1, -1, -1):
        g_t = total[t]
        grad_pre[t].mul_(g_t)
        if kind == "diagonal":
            torch.mul(g_t, conjugate, out=carry)
        elif kind == "rotation":
            torch.mul(total_as_pairs[t], conjugate, out=carry_as_pairs)
        else:
            torch.mul(g_t, residual_slope[t], out=carry)
        carry.addmm_(grad_pre[t], coupling)
        if t > 0:
            torch.add(grad_states[t - 1], carry, out=total[t - 1])
    return total, grad_pre, carry, saturated


def diagonal_linear_recurrence(eigenvalues: torch.Tensor, drive: torch.Tensor,
                               initial_state: torch.Tensor) -> torch.Tensor:
    """h_t = λ ⊙ h_{t-1} + u_t for complex λ (N,), drive u (T, B, N) and h_0 (B, N); returns h_1..h_T.

    The LRU's and the complex diagonal RNN's recurrence, by the same forward-without-autograd,
    hand-written-backward scheme as the WCRNN: the backward pass is g_t = ∂L/∂h_t + conj(λ) g_{t+1}.
    """
    return _DiagonalLinearRecurrence.apply(eigenvalues, drive, initial_state)


class _DiagonalLinearRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, eigenvalues, drive, initial_state):
        reuse_freed_memory()
        steps = drive.shape[0]
        states = drive.new_empty(steps + 1, *drive.shape[1:])  # states[0] = h_0
        states[0] = initial_state
        if not (fused_diagonal_available(drive) and fused_diagonal_forward(eigenvalues, drive, states)):
            for t in range(steps):
                torch.addcmul(drive[t], states[t], eigenvalues, out=states[t + 1])
        ctx.save_for_backward(eigenvalues, states)
        return states[1:]

    @staticmethod
    def backward(ctx, grad_states):
        eigenvalues, states = ctx.saved_tensors
        conjugate = eigenvalues.conj().resolve_conj()  # once, not at every step
        total = torch.empty_like(states[1:])  # g_t = ∂L/∂h_t, every path
        if not (fused_diagonal_available(total) and fused_diagonal_backward(eigenvalues, grad_states, total)):
            total[-1] = grad_states[-1]
            for t in range(total.shape[0] - 1, 0, -1):
                torch.addcmul(grad_states[t - 1], total[t], conjugate, out=total[t - 1])
        grad_eigenvalues = (total * states[:-1].conj()).sum((0, 1)) if ctx.needs_input_grad[0] else None
        grad_initial = total[0] * conjugate if ctx.needs_input_grad[2] else None
        return grad_eigenvalues, total, grad_initial


def dense_linear_recurrence(transition: torch.Tensor, drive: torch.Tensor,
                            initial_state: torch.Tensor) -> torch.Tensor:
    """h_t = A h_{t-1} + u_t for a real matrix A (N, N), drive u (T, B, N) and h_0 (B, N); returns h_1..h_T.

    The dense and multi-head linear RNN's recurrence (a block-diagonal A is passed whole), by the
    same scheme: one addmm per step forward, g_t = ∂L/∂h_t + Aᵀ g_{t+1} backward, and
    ∂L/∂A = Σ_t g_t h_{t-1}ᵀ as one matmul after the loop.
    """
    return _DenseLinearRecurrence.apply(transition, drive, initial_state)


class _DenseLinearRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, transition, drive, initial_state):
        reuse_freed_memory()
        steps = drive.shape[0]
        transition_t = transition.t().contiguous()  # row-vector states: h_t = h_{t-1} Aᵀ + u_t
        states = drive.new_empty(steps + 1, *drive.shape[1:])  # states[0] = h_0
        states[0] = initial_state
        if not (fused_recurrence_available(drive) and fused_linear_forward(transition, drive, states)):
            for t in range(steps):
                torch.addmm(drive[t], states[t], transition_t, out=states[t + 1])
        ctx.save_for_backward(transition, states)
        return states[1:]

    @staticmethod
    def backward(ctx, grad_states):
        transition, states = ctx.saved_tensors
        size = states.shape[-1]
        total = torch.empty_like(states[1:])  # g_t = ∂L/∂h_t, every path
        grad_initial = total.new_empty(total.shape[1:])
        if not (fused_recurrence_available(total) and fused_linear_backward(transition, grad_states, total, grad_initial)):
            total[-1] = grad_states[-1]
            for t in range(total.shape[0] - 1, 0, -1):
                torch.addmm(grad_states[t - 1], total[t], transition, out=total[t - 1])
            if ctx.needs_input_grad[2]:
                torch.mm(total[0], transition, out=grad_initial)
        grad_transition = total.reshape(-1, size).t() @ states[:-1].reshape(-1, size) if ctx.needs_input_grad[0] else None
        grad_initial = grad_initial if ctx.needs_input_grad[2] else None
        return grad_transition, total, grad_initial
