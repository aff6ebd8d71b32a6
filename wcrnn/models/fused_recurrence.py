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
The kernels are in fused_kernels.py, which is imported, with Triton, at the first launch.

The dense linear RNN's h_t = A h_{t-1} + u_t is the same kernel with no R, σ the identity and γ = 1.

The LRU's and the complex diagonal RNN's h_t = λ ⊙ h_{t-1} + u_t (g_t = ∂L/∂h_t + conj(λ) g_{t+1}
backward) is element-wise: its kernels give each program BLOCK_ELEMENTS (sequence, unit) pairs,
complex64 as interleaved float32, and need no shared memory.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

KINDS = {"diagonal": 0, "rotation": 1, "tanh": 2, "none": 3}  # "none": no R, for the linear RNN
ACTIVATIONS = {"tanh": 0, "relu": 1, "identity": 2}
BLOCK_B = 16  # batch rows per program: tl.dot's smallest tile
BLOCK_ELEMENTS = 256  # (sequence, unit) pairs per program of the element-wise complex diagonal recurrence
# W is loaded once and kept in shared memory for all steps: a 256 × 256 float32 W (256 KB) is more
# than the 227 KB an H200 gives a block (a 256-unit kernel that read W at every step asked for 278 KB).
MAX_SIZE = 128
_refused: set = set()  # launches a GPU refused (each is warned about once); the loops serve them
launches = {"forward": 0, "backward": 0}  # passes run fused so far in this process (the benchmark records them)


@functools.cache
def kernels():
    """fused_kernels.py, imported with Triton at the first launch; None without Triton (PyTorch's
    CPU-only wheels come without it)."""
    try:
        from . import fused_kernels
    except ImportError:
        return None
    return fused_kernels


def _on_gpu(tensor: torch.Tensor, dtype: torch.dtype) -> bool:
    return (tensor.is_cuda and tensor.dtype == dtype and os.environ.get("WCRNN_FUSED_RECURRENCE", "1") != "0"
            and kernels() is not None)


def _blocks(count: int, block: int) -> int:
    return -(-count // block)


def fused_recurrence_available(driven: torch.Tensor) -> bool:
    return _on_gpu(driven, torch.float32) and driven.shape[-1] <= MAX_SIZE


def _launch(kernel: str, grid: tuple, key: tuple, what: str, *arguments, **options) -> bool:
    """Launch the kernel of fused_kernels.py called `kernel` once; False (nothing written) if the GPU
    refused it. key = (direction, ...) names the launch for the refusals and the counts; `what` names
    it in the warning."""
    key = (*key, torch.cuda.current_device() if torch.cuda.is_available() else None)
    if key in _refused:
        return False
    try:
        getattr(kernels(), kernel)[grid](*arguments, **options)
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
    block_n = max(16, 1 << (size - 1).bit_length())  # a power of two
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
    return _launch("_forward_kernel", (_blocks(batch, options["BLOCK_B"]),), ("forward", kind, options["BLOCK_N"]),
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
    return _launch("_backward_kernel", (_blocks(batch, options["BLOCK_B"]),), ("backward", kind, options["BLOCK_N"]),
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
    return _launch("_diagonal_forward_kernel", (_blocks(batch * size, BLOCK_ELEMENTS),), ("forward", "complex diagonal"),
                   "forward pass of the complex diagonal recurrence",
                   _as_floats(eigenvalues), _as_floats(drive), torch.view_as_real(states), steps, batch * size, size,
                   BLOCK=BLOCK_ELEMENTS)


def fused_diagonal_backward(eigenvalues, grad_states, total) -> bool:
    """total[t] = g_t = ∂L/∂h_t + conj(λ) ⊙ g_{t+1}, for every t."""
    steps, batch, size = total.shape
    return _launch("_diagonal_backward_kernel", (_blocks(batch * size, BLOCK_ELEMENTS),), ("backward", "complex diagonal"),
                   "backward pass of the complex diagonal recurrence",
                   _as_floats(eigenvalues), _as_floats(grad_states), torch.view_as_real(total), steps, batch * size, size,
                   BLOCK=BLOCK_ELEMENTS)


def _as_floats(values: torch.Tensor) -> torch.Tensor:
    """complex64 (...) as float32 (..., 2) [re, im] pairs, contiguous: what the kernels index."""
    return torch.view_as_real(values.detach().resolve_conj().contiguous())
