"""The WCRNN recurrence on a GPU: the loop over time inside one Triton kernel per pass.

    forward   p_t = W h_{t-1} + d_t,   a_t = σ(p_t),   h_t = R(h_{t-1}) + γ · a_t
    backward  g_t = ∂L/∂h_t (output) + c_t,   δ_t = γ · σ'(p_t) ⊙ g_t,   c_{t-1} = R'(h_{t-1})ᵀ g_t + Wᵀ δ_t

recurrence.py's loops launch a few small kernels per step; on a GPU each launch costs more than
its arithmetic, so a 784-step training step took about 55 times as long as cuDNN's nn.RNN on an
H200 (README, Speed). Here each program of the kernel owns BLOCK_B rows of the batch and walks
all T steps itself, so a pass is one launch. The matrix products use IEEE float32 (no TF32), so
the results are the loops' up to rounding; the tests compare both with the autograd reference.

Row-vector states, as in recurrence.py: W h is h @ Wᵀ. R is element-wise for the diagonal and
tanh residuals; a rotation, 2 × 2 blocks on pairs of units, is passed as its dense matrix Rᵀ.
Only float32 CUDA tensors of at most MAX_SIZE units take this path (`fused_recurrence_available`);
the hand-written loops serve everything else, and any launch the GPU refuses for lack of memory. Set WCRNN_FUSED_RECURRENCE=0 to use the loops on a GPU too.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
    from triton.runtime.errors import OutOfResources
except ImportError:  # PyTorch's CPU-only wheels come without Triton
    triton = None

KINDS = {"diagonal": 0, "rotation": 1, "tanh": 2}
BLOCK_B = 16  # batch rows per program: tl.dot's smallest tile
# W (and a rotation's R) is read whole at every step and staged in shared memory: 128 × 128 float32
# matrices fit (64 KB each; an H200 has 227 KB per block), 256 × 256 ones (256 KB) do not.
MAX_SIZE = 128
_too_large: set = set()  # launches a GPU refused for lack of shared memory; the loops serve them


def fused_recurrence_available(driven: torch.Tensor) -> bool:
    return (triton is not None and driven.is_cuda and driven.dtype == torch.float32
            and driven.shape[-1] <= MAX_SIZE and os.environ.get("WCRNN_FUSED_RECURRENCE", "1") != "0")


def _launch(kernel, key, size: int, batch: int, *arguments, **constants) -> bool:
    """Launch one program per BLOCK_B rows of the batch; False (nothing written) if the GPU lacks the shared memory."""
    block_n = max(16, triton.next_power_of_2(size))
    key = (key, block_n, torch.cuda.current_device() if torch.cuda.is_available() else None)
    if key in _too_large:
        return False
    try:
        kernel[(triton.cdiv(batch, BLOCK_B),)](
            *arguments, BLOCK_B=BLOCK_B, BLOCK_N=block_n, num_warps=4 if block_n <= 64 else 8,
            num_stages=1,  # W is the same at every step: prefetching the next step's copy would only double it
            EXACT_TANH=os.environ.get("TRITON_INTERPRET") != "1", **constants)  # the interpreter lacks libdevice
    except OutOfResources:
        _too_large.add(key)
        return False
    return True


def rotation_matrix_transposed(coefficients: torch.Tensor) -> torch.Tensor:
    """Rᵀ (N, N) for R acting on pairs z_k = h_2k + i·h_2k+1 as z_k ↦ c_k z_k: h @ Rᵀ = R(h)."""
    re, im = coefficients.real, coefficients.imag
    blocks = torch.stack([torch.stack([re, im], -1), torch.stack([-im, re], -1)], -2)  # (N/2, 2, 2), each [[re, im], [-im, re]]
    return torch.block_diag(*blocks)


def fused_forward(driven, coupling, coefficients, kind, nonlinearity, gamma, states, activations) -> bool:
    """Fill states[1:] (states[0] = h_0 on entry) and, when it has one slot per step, activations.
    False if the GPU could not run it (then nothing was written)."""
    steps, batch, size = driven.shape
    residual = rotation_matrix_transposed(coefficients) if kind == "rotation" else coefficients
    return _launch(_forward_kernel, ("forward", kind), size, batch,
                   driven, coupling.t().contiguous(), residual.detach().contiguous(), states, activations, gamma,
                   steps, batch, size, KIND=KINDS[kind], RELU=nonlinearity == "relu",
                   STORE_ACTIVATIONS=activations.shape[0] == steps)


def fused_backward(grad_states, coupling, coefficients, kind, nonlinearity, gamma, states, activations,
                   total, grad_pre, grad_initial) -> bool:
    """Fill total (g_t), grad_pre (δ_t) and grad_initial (∂L/∂h_0); False if the GPU could not run it."""
    steps, batch, size = activations.shape
    # the transpose of the step's linear parts: g @ R for a rotation, δ @ W for the coupling
    residual = rotation_matrix_transposed(coefficients).t() if kind == "rotation" else coefficients
    return _launch(_backward_kernel, ("backward", kind), size, batch,
                   grad_states.contiguous(), coupling.contiguous(), residual.detach().contiguous(), states,
                   activations, total, grad_pre, grad_initial, gamma, steps, batch, size,
                   KIND=KINDS[kind], RELU=nonlinearity == "relu")


if triton is not None:

    @triton.jit
    def _tanh(x, EXACT: tl.constexpr):
        if EXACT:
            return libdevice.tanh(x)
        return 1 - 2 / (tl.exp(2 * x) + 1)

    @triton.jit
    def _forward_kernel(driven_ptr, coupling_t_ptr, residual_ptr, states_ptr, activations_ptr, gamma,
                        steps, batch, size, KIND: tl.constexpr, RELU: tl.constexpr,
                        STORE_ACTIVATIONS: tl.constexpr, EXACT_TANH: tl.constexpr,
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
        scale = tl.load(residual_ptr + units, mask=units < size, other=0.0)[None, :]  # c, for diagonal and tanh
        for _ in range(steps):
            coupling_t = tl.load(coupling_t_ptr + square, mask=in_square, other=0.0)  # from L1/L2 after step 1
            pre = tl.dot(h, coupling_t, input_precision="ieee") + tl.load(driven_ptr + tile, mask=in_batch, other=0.0)
            if RELU:
                activation = tl.maximum(pre, 0.0)
            else:
                activation = _tanh(pre, EXACT_TANH)
            if STORE_ACTIVATIONS:
                tl.store(activations_ptr + tile, activation, mask=in_batch)
                activations_ptr += step_elements
            if KIND == 0:
                h = h * scale
            elif KIND == 1:
                h = tl.dot(h, tl.load(residual_ptr + square, mask=in_square, other=0.0), input_precision="ieee")
            else:
                h = _tanh(h, EXACT_TANH) * scale
            h = h + gamma * activation
            states_ptr += step_elements
            tl.store(states_ptr + tile, h, mask=in_batch)
            driven_ptr += step_elements

    @triton.jit
    def _backward_kernel(grad_states_ptr, coupling_ptr, residual_ptr, states_ptr, activations_ptr,
                         total_ptr, grad_pre_ptr, grad_initial_ptr, gamma, steps, batch, size,
                         KIND: tl.constexpr, RELU: tl.constexpr, EXACT_TANH: tl.constexpr,
                         BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        units = tl.arange(0, BLOCK_N)
        in_batch = (rows[:, None] < batch) & (units[None, :] < size)
        tile = rows[:, None] * size + units[None, :]
        square = units[:, None] * size + units[None, :]
        in_square = (units[:, None] < size) & (units[None, :] < size)
        step_elements = batch * size
        scale = tl.load(residual_ptr + units, mask=units < size, other=0.0)[None, :]
        # walk from the last step back; states[t] is h_{t-1} of step t (states[0] = h_0)
        last = (steps - 1) * step_elements
        grad_states_ptr += last
        activations_ptr += last
        total_ptr += last
        grad_pre_ptr += last
        states_ptr += last
        carry = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)  # ∂L/∂h_t through step t+1
        for _ in range(steps):
            g = tl.load(grad_states_ptr + tile, mask=in_batch, other=0.0) + carry
            tl.store(total_ptr + tile, g, mask=in_batch)
            activation = tl.load(activations_ptr + tile, mask=in_batch, other=0.0)
            if RELU:
                slope = tl.where(activation > 0, 1.0, 0.0)
            else:
                slope = 1 - activation * activation
            delta = gamma * slope * g
            tl.store(grad_pre_ptr + tile, delta, mask=in_batch)
            if KIND == 0:
                carry = g * scale
            elif KIND == 1:
                carry = tl.dot(g, tl.load(residual_ptr + square, mask=in_square, other=0.0), input_precision="ieee")
            else:
                saturated = _tanh(tl.load(states_ptr + tile, mask=in_batch, other=0.0), EXACT_TANH)
                carry = g * (1 - saturated * saturated) * scale
            coupling = tl.load(coupling_ptr + square, mask=in_square, other=0.0)
            carry += tl.dot(delta, coupling, input_precision="ieee")
            grad_states_ptr -= step_elements
            activations_ptr -= step_elements
            total_ptr -= step_elements
            grad_pre_ptr -= step_elements
            states_ptr -= step_elements
        tl.store(grad_initial_ptr + tile, carry, mask=in_batch)
