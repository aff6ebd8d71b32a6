"""The Triton kernels behind fused_recurrence.py, which describes them and launches them.

A module of their own so that only a process that launches one imports Triton (a third of a
second of CPU that a CPU-only trial worker or a sweep's driver would pay for nothing).
"""

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def _tanh(x, EXACT: tl.constexpr):
    if EXACT:
        return libdevice.tanh(x)
    return 1 - 2 / (tl.exp(2 * x) + 1)


@triton.jit
def _pair_coefficients(coefficients_ptr, size, BLOCK_N: tl.constexpr):
    """A rotation's c_k (complex64 as interleaved float32) as rows of real and imaginary parts, (1, BLOCK_N/2)."""
    pairs = tl.arange(0, BLOCK_N // 2)
    inside = pairs < size // 2
    re = tl.load(coefficients_ptr + 2 * pairs, mask=inside, other=0.0)
    im = tl.load(coefficients_ptr + 2 * pairs + 1, mask=inside, other=0.0)
    return re[None, :], im[None, :]


@triton.jit
def _rotate(h, re, im, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """z_k ↦ c_k · z_k on the pairs z_k = h_2k + i·h_2k+1, in registers: no N × N matrix, no product."""
    first, second = tl.split(tl.reshape(h, (BLOCK_B, BLOCK_N // 2, 2)))
    return tl.reshape(tl.join(re * first - im * second, im * first + re * second), (BLOCK_B, BLOCK_N))


@triton.jit
def _forward_kernel(driven_ptr, coupling_t_ptr, residual_ptr, states_ptr, activations_ptr, gamma,
                    steps, batch, size, KIND: tl.constexpr, ACTIVATION: tl.constexpr,
                    STORE_ACTIVATIONS: tl.constexpr, EXACT_TANH: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    units = tl.arange(0, BLOCK_N)
    in_batch = (rows[:, None] < batch) & (units[None, :] < size)
    tile = rows[:, None] * size + units[None, :]  # this program's rows of one (B, N) step
    square = units[:, None] * size + units[None, :]
    in_square = (units[:, None] < size) & (units[None, :] < size)
    step_elements = batch * size
    # the padding (units ≥ size, rows ≥ batch) loads as 0 and stays 0: W, R and d are 0 there
    h = tl.load(states_ptr + tile, mask=in_batch, other=0.0)
    coupling_t = tl.load(coupling_t_ptr + square, mask=in_square, other=0.0)  # Wᵀ, for every step
    if KIND == 1:
        rotation_re, rotation_im = _pair_coefficients(residual_ptr, size, BLOCK_N)
    elif KIND != 3:
        scale = tl.load(residual_ptr + units, mask=units < size, other=0.0)[None, :]  # c, for diagonal and tanh
    for _ in range(steps):
        pre = tl.dot(h, coupling_t, input_precision=PRECISION) + tl.load(driven_ptr + tile, mask=in_batch, other=0.0)
        if ACTIVATION == 0:
            activation = _tanh(pre, EXACT_TANH)
        elif ACTIVATION == 1:
            activation = tl.maximum(pre, 0.0)
        else:
            activation = pre
        if STORE_ACTIVATIONS:
            tl.store(activations_ptr + tile, activation, mask=in_batch)
            activations_ptr += step_elements
        if KIND == 0:
            h = h * scale
        elif KIND == 1:
            h = _rotate(h, rotation_re, rotation_im, BLOCK_B, BLOCK_N)
        elif KIND == 2:
            h = _tanh(h, EXACT_TANH) * scale
        else:
            h = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)  # no residual (not h · 0: inf · 0 is nan)
        h = h + gamma * activation
        states_ptr += step_elements
        tl.store(states_ptr + tile, h, mask=in_batch)
        driven_ptr += step_elements


@triton.jit
def _backward_kernel(grad_states_ptr, coupling_ptr, residual_ptr, states_ptr, activations_ptr,
                     total_ptr, grad_pre_ptr, grad_initial_ptr, gamma, steps, batch, size,
                     KIND: tl.constexpr, ACTIVATION: tl.constexpr, EXACT_TANH: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    units = tl.arange(0, BLOCK_N)
    in_batch = (rows[:, None] < batch) & (units[None, :] < size)
    tile = rows[:, None] * size + units[None, :]
    square = units[:, None] * size + units[None, :]
    in_square = (units[:, None] < size) & (units[None, :] < size)
    step_elements = batch * size
    coupling = tl.load(coupling_ptr + square, mask=in_square, other=0.0)  # W, for every step
    if KIND == 1:
        rotation_re, rotation_im = _pair_coefficients(residual_ptr, size, BLOCK_N)
    elif KIND != 3:
        scale = tl.load(residual_ptr + units, mask=units < size, other=0.0)[None, :]
    # walk from the last step back; states[t] is h_{t-1} of step t (states[0] = h_0)
    last = (steps - 1).to(tl.int64) * step_elements  # past 2³¹ elements for long, wide batches
    grad_states_ptr += last
    activations_ptr += last
    total_ptr += last
    grad_pre_ptr += last
    states_ptr += last
    carry = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)  # ∂L/∂h_t through step t+1
    for _ in range(steps):
        g = tl.load(grad_states_ptr + tile, mask=in_batch, other=0.0) + carry
        tl.store(total_ptr + tile, g, mask=in_batch)
        if ACTIVATION == 0:
            activation = tl.load(activations_ptr + tile, mask=in_batch, other=0.0)
            slope = 1 - activation * activation
        elif ACTIVATION == 1:
            activation = tl.load(activations_ptr + tile, mask=in_batch, other=0.0)
            slope = tl.where(activation > 0, 1.0, 0.0)
        else:
            slope = 1.0  # the identity: no activations to read
        delta = gamma * slope * g
        tl.store(grad_pre_ptr + tile, delta, mask=in_batch)
        if KIND == 0:
            carry = g * scale
        elif KIND == 1:
            carry = _rotate(g, rotation_re, -rotation_im, BLOCK_B, BLOCK_N)  # Rᵀ: by the conjugates
        elif KIND == 2:
            saturated = _tanh(tl.load(states_ptr + tile, mask=in_batch, other=0.0), EXACT_TANH)
            carry = g * (1 - saturated * saturated) * scale
        else:
            carry = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        carry += tl.dot(delta, coupling, input_precision=PRECISION)
        grad_states_ptr -= step_elements
        activations_ptr -= step_elements
        total_ptr -= step_elements
        grad_pre_ptr -= step_elements
        states_ptr -= step_elements
    tl.store(grad_initial_ptr + tile, carry, mask=in_batch)


@triton.jit
def _diagonal_forward_kernel(eigenvalues_ptr, drive_ptr, states_ptr, steps, elements, size, BLOCK: tl.constexpr):
    pairs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat (sequence, unit) indices of one step
    inside = pairs < elements
    unit = pairs % size
    re, im = 2 * pairs, 2 * pairs + 1  # complex64 as interleaved float32
    eigenvalue_re = tl.load(eigenvalues_ptr + 2 * unit, mask=inside, other=0.0)
    eigenvalue_im = tl.load(eigenvalues_ptr + 2 * unit + 1, mask=inside, other=0.0)
    h_re = tl.load(states_ptr + re, mask=inside, other=0.0)
    h_im = tl.load(states_ptr + im, mask=inside, other=0.0)
    step_floats = 2 * elements
    for _ in range(steps):
        drive_re = tl.load(drive_ptr + re, mask=inside, other=0.0)
        drive_im = tl.load(drive_ptr + im, mask=inside, other=0.0)
        next_re = eigenvalue_re * h_re - eigenvalue_im * h_im + drive_re
        h_im = eigenvalue_re * h_im + eigenvalue_im * h_re + drive_im
        h_re = next_re
        states_ptr += step_floats
        tl.store(states_ptr + re, h_re, mask=inside)
        tl.store(states_ptr + im, h_im, mask=inside)
        drive_ptr += step_floats


@triton.jit
def _diagonal_backward_kernel(eigenvalues_ptr, grad_states_ptr, total_ptr, steps, elements, size,
                              BLOCK: tl.constexpr):
    pairs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = pairs < elements
    unit = pairs % size
    re, im = 2 * pairs, 2 * pairs + 1
    eigenvalue_re = tl.load(eigenvalues_ptr + 2 * unit, mask=inside, other=0.0)
    eigenvalue_im = tl.load(eigenvalues_ptr + 2 * unit + 1, mask=inside, other=0.0)
    step_floats = 2 * elements
    last = (steps - 1).to(tl.int64) * step_floats
    grad_states_ptr += last
    total_ptr += last
    g_re = tl.zeros((BLOCK,), dtype=tl.float32)  # g_{t+1}, none after the last step
    g_im = tl.zeros((BLOCK,), dtype=tl.float32)
    for _ in range(steps):
        # g_t = ∂L/∂h_t + conj(λ) g_{t+1}
        next_re = tl.load(grad_states_ptr + re, mask=inside, other=0.0) + eigenvalue_re * g_re + eigenvalue_im * g_im
        g_im = tl.load(grad_states_ptr + im, mask=inside, other=0.0) + eigenvalue_re * g_im - eigenvalue_im * g_re
        g_re = next_re
        tl.store(total_ptr + re, g_re, mask=inside)
        tl.store(total_ptr + im, g_im, mask=inside)
        grad_states_ptr -= step_floats
        total_ptr -= step_floats
