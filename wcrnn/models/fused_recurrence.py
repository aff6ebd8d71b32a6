"""The recurrences on a GPU: the loop over time inside one Triton kernel per pass.

    forward   p_t = W h_{t-1} + d_t,   a_t = σ(p_t),   h_t = R(h_{t-1}) + γ · a_t
    backward  g_t = ∂L/∂h_t (output) + c_t,   δ_t = γ · σ'(p_t) ⊙ g_t,   c_{t-1} = R'(h_{t-1})ᵀ g_t + Wᵀ δ_t

recurrence.py's loops launch a few small kernels per step; on a GPU each launch costs more than
its arithmetic, so a 784-step training step took about 55 times as long as cuDNN's nn.RNN on an
H200 (README, Speed). Here each program of the kernel owns BLOCK_B rows of the batch and walks
all T steps itself, so a pass is one launch. The matrix products are float32's (IEEE, or tf32x3 on
tensor cores from 128 units: `_wcrnn_options`), so the results are the loops' up to rounding; the
tests compare both with the autograd reference.

Row-vector states, as in recurrence.py: W h is h @ Wᵀ. R is element-wise for the diagonal and
tanh residuals; a rotation, 2 × 2 blocks on pairs of units, multiplies the pairs as complex numbers.
Only float32 CUDA tensors of at most MAX_SIZE units take this path (`fused_recurrence_available`);
the hand-written loops serve everything else, and any launch the GPU refuses (for lack of shared
memory, say), with a warning. Set WCRNN_FUSED_RECURRENCE=0 to use the loops on a GPU too.

The dense linear RNN's h_t = A h_{t-1} + u_t is the same kernel with no R, σ the identity and γ = 1.

The LRU's and the complex diagonal RNN's h_t = λ ⊙ h_{t-1} + u_t (g_t = ∂L/∂h_t + conj(λ) g_{t+1}
backward) is element-wise: its kernels give each program BLOCK_ELEMENTS (sequence, unit) pairs,
complex64 as interleaved float32, and need no shared memory.
"""

from __future__ import annotations

import os
import warnings

import torch

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # PyTorch's CPU-only wheels come without Triton
    triton = None

KINDS = {"diagonal": 0, "rotation": 1, "tanh": 2, "none": 3}  # "none": no R, for the linear RNN
ACTIVATIONS = {"tanh": 0, "relu": 1, "identity": 2}
BLOCK_B = 16  # batch rows per program: tl.dot's smallest tile
BLOCK_ELEMENTS = 256  # (sequence, unit) pairs per program of the element-wise complex diagonal recurrence
# W is loaded once and kept in shared memory for all steps: a 256 × 256 float32 W (256 KB) is more
# than the 227 KB an H200 gives a block (a 256-unit kernel that read W at every step asked for 278 KB).
MAX_SIZE = 128
_refused: set = set()  # launches a GPU refused (each is warned about once); the loops serve them
launches = {"forward": 0, "backward": 0}  # passes run fused so far in this process (the benchmark records them)


def _on_gpu(tensor: torch.Tensor, dtype: torch.dtype) -> bool:
    return (triton is not None and tensor.is_cuda and tensor.dtype == dtype
            and os.environ.get("WCRNN_FUSED_RECURRENCE", "1") != "0")


def fused_recurrence_available(driven: torch.Tensor) -> bool:
    return _on_gpu(driven, torch.float32) and driven.shape[-1] <= MAX_SIZE


def _launch(kernel, grid: tuple, key: tuple, what: str, *arguments, **options) -> bool:
    """Launch `kernel` once; False (nothing written) if the GPU refused it. key = (direction, ...) names the
    launch for the refusals and the counts; `what` names it in the warning."""
    key = (*key, torch.cuda.current_device() if torch.cuda.is_available() else None)
    if key in _refused:
        return False
    try:
        kernel[grid](*arguments, **options)
    except Exception as error:  # refused before it ran: shared memory, or a Triton or GPU it does not compile for
        _refused.add(key)
        reason = (str(error).strip().splitlines() or [""])[0]
        warnings.warn(f"wcrnn: the fused GPU recurrence could not run ({type(error).__name__}: {reason}); its "
                      f"{what} uses the loops instead: the same results, slower", RuntimeWarning, stacklevel=4)
        return False
    launches[key[0]] += 1
    return True


def _wcrnn_options(size: int) -> dict:
    """How the kernels are compiled, as benchmarks/tune_kernels.py chose on an H200 (T = 784, batch 64;
    benchmarks/results/gpu-h200-kernel-options.json). W is loaded once, before the loop, and kept for all steps.
    Up to 64 units the products are IEEE float32. At 128, IEEE products (on CUDA cores) spill hundreds of
    registers, and the forward pass ran 6-9 times slower, so there they are tf32x3: three TF32 tensor-core
    products, with float32's accuracy (states 1.5e-7 of their scale from the loops after 784 steps)."""
    block_n = max(16, triton.next_power_of_2(size))
    return {"BLOCK_B": BLOCK_B, "BLOCK_N": block_n, "num_warps": 8,
            "num_stages": 1,  # nothing to prefetch: W stays, and each step's input is one small tile
            "PRECISION": "tf32x3" if block_n > 64 else "ieee",  # tl.dot's input_precision
            "EXACT_TANH": os.environ.get("TRITON_INTERPRET") != "1"}  # the interpreter lacks libdevice


def _residual_operand(coefficients: torch.Tensor, kind: str) -> torch.Tensor:
    """R's coefficients as the kernels index them: a rotation's complex c as interleaved float32."""
    return _as_floats(coefficients) if kind == "rotation" else coefficients.detach().contiguous()


def fused_forward(driven, coupling, coefficients, kind, nonlinearity, gamma, states, activations) -> bool:
    """Fill states[1:] (states[0] = h_0 on entry) and, when it has one slot per step, activations.
    False if the GPU could not run it (then nothing was written)."""
    steps, batch, size = driven.shape
    residual = _residual_operand(coefficients, kind)
    options = _wcrnn_options(size)
    return _launch(_forward_kernel, (triton.cdiv(batch, options["BLOCK_B"]),), ("forward", kind, options["BLOCK_N"]),
                   f"forward pass for the {kind} residual at {size} units",
                   driven, coupling.t().contiguous(), residual, states, activations, gamma,
                   steps, batch, size, KIND=KINDS[kind], ACTIVATION=ACTIVATIONS[nonlinearity],
                   STORE_ACTIVATIONS=activations.shape[0] == steps, **options)


def fused_backward(grad_states, coupling, coefficients, kind, nonlinearity, gamma, states, activations,
                   total, grad_pre, grad_initial) -> bool:
    """Fill total (g_t), grad_pre (δ_t) and grad_initial (∂L/∂h_0); False if the GPU could not run it."""
    steps, batch, size = activations.shape
    residual = _residual_operand(coefficients, kind)
    options = _wcrnn_options(size)
    return _launch(_backward_kernel, (triton.cdiv(batch, options["BLOCK_B"]),), ("backward", kind, options["BLOCK_N"]),
                   f"backward pass for the {kind} residual at {size} units",
                   grad_states.contiguous(), coupling.contiguous(), residual, states,
                   activations, total, grad_pre, grad_initial, gamma, steps, batch, size,
                   KIND=KINDS[kind], ACTIVATION=ACTIVATIONS[nonlinearity], **options)


def fused_linear_forward(transition, drive, states) -> bool:
    """The dense linear RNN's h_t = A h_{t-1} + u_t: the WCRNN kernel with no R, σ the identity and γ = 1
    (exactly A h_{t-1} + u_t). Fills states[1:] from states[0] = h_0; keeps no activations."""
    steps, batch, size = drive.shape
    scratch = drive.new_empty(1, batch, size)  # the activations buffer, written only if steps == 1
    return fused_forward(drive.contiguous(), transition, drive.new_zeros(size), "none", "identity", 1.0, states, scratch)


def fused_linear_backward(transition, grad_states, total, grad_initial) -> bool:
    """g_t = ∂L/∂h_t + Aᵀ g_{t+1} into total and ∂L/∂h_0 = Aᵀ g_1 into grad_initial. With σ the identity and
    γ = 1, δ_t is g_t, so total serves as δ's buffer too; the states and activations are not read."""
    size = total.shape[-1]
    return fused_backward(grad_states, transition, total.new_zeros(size), "none", "identity", 1.0, total, total,
                          total, total, grad_initial)


def fused_diagonal_available(drive: torch.Tensor) -> bool:
    return _on_gpu(drive, torch.complex64)


def fused_diagonal_forward(eigenvalues, drive, states) -> bool:
    """The LRU's and the complex diagonal RNN's h_t = λ ⊙ h_{t-1} + u_t: fill states[1:] from states[0] = h_0.
    Element-wise, so each program takes BLOCK_ELEMENTS (sequence, unit) pairs through all the steps."""
    steps, batch, size = drive.shape
    return _launch(_diagonal_forward_kernel, (triton.cdiv(batch * size, BLOCK_ELEMENTS),), ("forward", "complex diagonal"),
                   "forward pass of the complex diagonal recurrence",
                   _as_floats(eigenvalues), _as_floats(drive), torch.view_as_real(states), steps, batch * size, size,
                   BLOCK=BLOCK_ELEMENTS)


def fused_diagonal_backward(eigenvalues, grad_states, total) -> bool:
    """total[t] = g_t = ∂L/∂h_t + conj(λ) ⊙ g_{t+1}, for every t."""
    steps, batch, size = total.shape
    return _launch(_diagonal_backward_kernel, (triton.cdiv(batch * size, BLOCK_ELEMENTS),), ("backward", "complex diagonal"),
                   "backward pass of the complex diagonal recurrence",
                   _as_floats(eigenvalues), _as_floats(grad_states), torch.view_as_real(total), steps, batch * size, size,
                   BLOCK=BLOCK_ELEMENTS)


def _as_floats(values: torch.Tensor) -> torch.Tensor:
    """complex64 (...) as float32 (..., 2) [re, im] pairs, contiguous: what the kernels index."""
    return torch.view_as_real(values.detach().resolve_conj().contiguous())


if triton is not None:

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
