"""The fast recurrences (hand-written backward passes) against the plain autograd loops."""

import pytest
import torch

from wcrnn.models import build_core
from wcrnn.models.recurrence import ResidualCoefficients, wcrnn_recurrence

RESIDUALS = {
    "homogeneous": {"residual": "homogeneous", "r": 0.95},
    "rotational": {"residual": "rotational", "r": 0.99, "phi0": 0.3, "phi_spread": 0.2},
    "heterogeneous": {"residual": "heterogeneous", "r_range": [0.7, 1.0]},
    "heterogeneous_angles": {"residual": "heterogeneous", "r_range": [0.7, 1.0], "phi_range": [0.1, 1.2]},
    "nonlinear": {"residual": "nonlinear", "r": 0.9},
    "none": {"residual": "none"},
}


def core_for(residual, nonlinearity="tanh", heads=1, hidden_size=16, gamma=0.3, trainable=True, seed=0):
    torch.manual_seed(seed)
    return build_core({"name": "wcrnn", "hidden_size": hidden_size, "gamma": gamma, "heads": heads,
                       "nonlinearity": nonlinearity, "trainable_residual": trainable and residual != "none",
                       **RESIDUALS[residual]}, 3)


def values_and_gradients(core, forward, inputs, initial_state, output_weights):
    core.zero_grad()
    initial_state = initial_state.clone().requires_grad_()
    states = forward(inputs, initial_state)
    (states * output_weights).sum().backward()
    gradients = {name: p.grad.clone() for name, p in core.named_parameters()}
    return states.detach(), initial_state.grad, gradients


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("residual", list(RESIDUALS))
def test_fast_recurrence_equals_the_reference_loop_values_and_gradients(residual, nonlinearity, heads):
    assert_fast_path_equals_reference(core_for(residual, nonlinearity, heads).double(), state_size=16)


def assert_fast_path_equals_reference(core, state_size, device="cpu"):
    """float64: values, initial-state and parameter gradients, every output step weighted; the fast
    path on `device` (tests/test_cuda.py passes "cuda"), the reference loop on the CPU."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(5, 30, 3, generator=generator, dtype=torch.float64)
    initial_state = torch.randn(5, state_size, generator=generator, dtype=torch.float64)
    output_weights = torch.randn(5, 30, state_size, generator=generator, dtype=torch.float64)
    reference = values_and_gradients(core, core.reference_forward, inputs, initial_state, output_weights)
    core.to(device)
    fast = values_and_gradients(core, core.forward, inputs.to(device), initial_state.to(device), output_weights.to(device))
    assert fast[0].device.type == device
    torch.testing.assert_close(fast[0].cpu(), reference[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast[1].cpu(), reference[1], rtol=1e-10, atol=1e-12)
    assert fast[2].keys() == reference[2].keys()
    for name in fast[2]:
        assert fast[2][name].abs().sum() > 0, f"{name} got no gradient"
        torch.testing.assert_close(fast[2][name].cpu(), reference[2][name], rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("residual", ["homogeneous", "rotational", "heterogeneous_angles"])
def test_float32_training_size_matches_the_reference_through_the_readout(residual):
    # what training does: 200 steps, N = 64, loss from the last state only (readout="last")
    core = core_for(residual, hidden_size=64, gamma=0.1, trainable=False)
    inputs = torch.randn(8, 200, 3, generator=torch.Generator().manual_seed(2))
    initial_state = torch.zeros(8, 64)
    output_weights = torch.zeros(8, 200, 64)
    output_weights[:, -1] = torch.randn(8, 64, generator=torch.Generator().manual_seed(3))
    fast = values_and_gradients(core, core.forward, inputs, initial_state, output_weights)
    reference = values_and_gradients(core, core.reference_forward, inputs, initial_state, output_weights)
    torch.testing.assert_close(fast[0], reference[0], rtol=1e-5, atol=1e-5)
    for name in fast[2]:
        # float32 sums over 200 steps: both paths are ~1e-6 of the gradient's scale from the float64 truth
        scale = reference[2][name].abs().max().item()
        torch.testing.assert_close(fast[2][name], reference[2][name], rtol=0, atol=1e-5 * scale, msg=name)


def test_inference_without_grad_gives_the_same_states():
    core = core_for("rotational")
    inputs = torch.randn(4, 25, 3)
    with torch.no_grad():
        without_grad = core(inputs)
    torch.testing.assert_close(without_grad, core(inputs).detach())
    torch.testing.assert_close(without_grad, core.reference_forward(inputs).detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["diagonal", "rotation", "tanh"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_gradcheck_of_every_input_including_gamma_and_residual_coefficients(kind, nonlinearity):
    generator = torch.Generator().manual_seed(4)
    steps, batch, size = 6, 3, 4
    as_input = lambda *shape, scale=1.0: (scale * torch.randn(*shape, generator=generator, dtype=torch.float64)
                                          ).requires_grad_()  # noqa: E731
    driven, coupling, initial_state = as_input(steps, batch, size), as_input(size, size, scale=0.5), as_input(batch, size)
    gamma = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    if kind == "rotation":
        coefficients = torch.polar(torch.tensor([0.9, 0.8], dtype=torch.float64),
                                   torch.tensor([0.3, 1.1], dtype=torch.float64)).requires_grad_()
    else:
        coefficients = as_input(size, scale=0.5)

    def run(driven, coupling, initial_state, gamma, coefficients):
        return wcrnn_recurrence(driven, coupling, initial_state, gamma,
                                ResidualCoefficients(kind, coefficients), nonlinearity)

    assert torch.autograd.gradcheck(run, (driven, coupling, initial_state, gamma, coefficients))


@pytest.mark.parametrize("name", ["lru", "complex_diagonal"])
def test_diagonal_complex_models_fast_path_equals_the_reference_loop(name):
    torch.manual_seed(0)
    core = build_core({"name": name, "hidden_size": 8, "r_min": 0.5, "r_max": 0.99}, 3).double()
    assert_fast_path_equals_reference(core, state_size=16)  # [Re h, Im h]


@pytest.mark.parametrize("name", ["lru", "complex_diagonal"])
def test_diagonal_complex_models_float32_training_size_matches_the_reference(name):
    # what training does: float32, N = 64, 200 steps, no initial state, loss from the last state;
    # the fast path folds the input gain into B and computes Re, Im of B x in one matmul
    torch.manual_seed(0)
    core = build_core({"name": name, "hidden_size": 64, "r_min": 0.9, "r_max": 0.999}, 3)
    inputs = torch.randn(8, 200, 3, generator=torch.Generator().manual_seed(2))
    readout = torch.randn(128, generator=torch.Generator().manual_seed(3))
    results = []
    for forward in (core.forward, core.reference_forward):
        core.zero_grad()
        states = forward(inputs)
        (states[:, -1] @ readout).sum().backward()
        results.append((states.detach(), {name: p.grad.clone() for name, p in core.named_parameters()}))
    (fast, fast_grads), (reference, reference_grads) = results
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    for parameter in reference_grads:
        scale = reference_grads[parameter].abs().max().item()
        assert scale > 0, f"{parameter} got no gradient"
        torch.testing.assert_close(fast_grads[parameter], reference_grads[parameter], rtol=0, atol=1e-5 * scale,
                                   msg=parameter)


def test_gradcheck_of_the_complex_diagonal_recurrence():
    from wcrnn.models.recurrence import diagonal_linear_recurrence

    generator = torch.Generator().manual_seed(6)
    complex_input = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.complex128).requires_grad_()  # noqa: E731
    eigenvalues = (0.6 * torch.randn(3, generator=generator, dtype=torch.complex128)).requires_grad_()
    assert torch.autograd.gradcheck(diagonal_linear_recurrence, (eigenvalues, complex_input(7, 2, 3), complex_input(2, 3)))


@pytest.mark.parametrize("heads", [1, 4, 16])
def test_linear_rnn_fast_path_equals_the_reference_loop(heads):
    # the gradient reaches each head's block through block_diag, and nothing off the blocks
    torch.manual_seed(0)
    core = build_core({"name": "linear", "hidden_size": 16, "heads": heads, "r_min": 0.5}, 3).double()
    assert_fast_path_equals_reference(core, state_size=16)


def test_gradcheck_of_the_dense_linear_recurrence():
    from wcrnn.models.recurrence import dense_linear_recurrence

    generator = torch.Generator().manual_seed(7)
    real_input = lambda *shape, scale=1.0: (scale * torch.randn(*shape, generator=generator, dtype=torch.float64)
                                            ).requires_grad_()  # noqa: E731
    transition = real_input(3, 3, scale=0.5)
    assert torch.autograd.gradcheck(dense_linear_recurrence, (transition, real_input(7, 2, 3), real_input(2, 3)))


FUSED_KERNELS_AGAINST_THE_LOOPS = """
import torch
from wcrnn.models.fused_recurrence import fused_backward, fused_forward
from wcrnn.models.recurrence import _backward_through_time, _forward_through_time

generator = torch.Generator().manual_seed(0)
random = lambda *shape: torch.randn(*shape, generator=generator)
for kind in ("diagonal", "rotation", "tanh"):
    for nonlinearity in ("tanh", "relu"):
        # a batch that is not a multiple of the kernel's 16 rows, sizes that are not a power of two
        for steps, batch, size in ((7, 5, 6), (12, 20, 16), (9, 3, 40)):
            driven, coupling, initial_state = random(steps, batch, size), random(size, size) / size**0.5, random(batch, size)
            if kind == "rotation":
                coefficients = torch.polar(0.5 + 0.5 * torch.rand(size // 2, generator=generator), random(size // 2))
            else:
                coefficients = 0.5 + 0.5 * torch.rand(size, generator=generator)
            grad_states, gamma = random(steps, batch, size), 0.3
            results = []
            for fused in (False, True):
                states, activations = torch.empty(steps + 1, batch, size), torch.empty(steps, batch, size)
                states[0] = initial_state
                if fused:
                    fused_forward(driven, coupling, coefficients, kind, nonlinearity, gamma, states, activations)
                    total, grad_pre, grad_initial = torch.empty_like(activations), torch.empty_like(activations), torch.empty(batch, size)
                    fused_backward(grad_states, coupling, coefficients, kind, nonlinearity, gamma, states, activations,
                                   total, grad_pre, grad_initial)
                else:
                    _forward_through_time(driven, coupling.t().contiguous(), gamma, coefficients, kind, nonlinearity,
                                          states, activations)
                    total, grad_pre, grad_initial, _ = _backward_through_time(
                        grad_states, coupling, torch.tensor(gamma), coefficients, kind, nonlinearity, states[:-1], activations)
                results.append((states, activations, total, grad_pre, grad_initial))
            for name, loop, kernel in zip(("states", "activations", "g", "delta", "grad_initial"), *results):
                torch.testing.assert_close(kernel, loop, rtol=1e-5, atol=1e-5, msg=f"{kind} {nonlinearity} {steps, batch, size} {name}")

# the linear recurrences through their autograd Functions, with and without the kernels, as on a GPU
from wcrnn.models import fused_recurrence, recurrence


def loops_against_kernels(recurrence_function, availability, operands, output_weights, names):
    results = []
    for fused in (False, True):
        setattr(recurrence, availability, lambda tensor, fused=fused: fused)
        launched = dict(fused_recurrence.launches)
        states = recurrence_function(*operands)
        gradients = torch.autograd.grad((states * output_weights).real.sum(), operands)
        assert (fused_recurrence.launches["forward"] > launched["forward"]) == fused
        assert (fused_recurrence.launches["backward"] > launched["backward"]) == fused
        results.append((states.detach(), *gradients))
    for name, loop, kernel in zip(("states", *names), *results):
        # sums over steps and sequences in another order: float32's rounding of the tensor's largest values
        # (seen on an AMD EPYC: 5e-5 in a transition gradient of scale 139, over an absolute 1e-5)
        torch.testing.assert_close(kernel, loop, rtol=1e-5, atol=2e-6 * loop.abs().max().item(),
                                   msg=f"{recurrence_function.__name__} {name}")


# the LRU's and the complex diagonal RNN's: an element-wise kernel of their own
complex_random = lambda *shape: torch.complex(random(*shape), random(*shape))
for steps, batch, size in ((7, 5, 6), (30, 20, 300)):  # 6000 (sequence, unit) pairs: 24 programs of 256
    eigenvalues = torch.polar(0.5 + 0.5 * torch.rand(size, generator=generator), random(size)).requires_grad_()
    operands = (eigenvalues, complex_random(steps, batch, size).requires_grad_(), complex_random(batch, size).requires_grad_())
    loops_against_kernels(recurrence.diagonal_linear_recurrence, "fused_diagonal_available", operands,
                          complex_random(steps, batch, size), ("eigenvalues", "drive", "initial_state"))

# the dense linear RNN's: the WCRNN kernel with no residual, σ the identity and γ = 1
for steps, batch, size in ((1, 3, 8), (9, 20, 24)):
    operands = ((0.9 * random(size, size) / size**0.5).requires_grad_(), random(steps, batch, size).requires_grad_(),
                random(batch, size).requires_grad_())
    loops_against_kernels(recurrence.dense_linear_recurrence, "fused_recurrence_available", operands,
                          random(steps, batch, size), ("transition", "drive", "initial_state"))
print("fused kernels agree")
"""


def test_the_gpu_kernels_compute_what_the_loops_compute_in_tritons_interpreter():
    """The Triton kernels that replace the loops on a GPU (the WCRNN's, and the LRU's and complex
    diagonal RNN's), run on the CPU by Triton's interpreter (CI has no GPU; tests/test_cuda.py
    runs them compiled where there is one)."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FUSED_KERNELS_AGAINST_THE_LOOPS], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=600)
    assert done.returncode == 0 and "fused kernels agree" in done.stdout, done.stderr[-3000:]


def test_a_gpu_that_refuses_the_fused_kernels_gets_the_loops_and_one_warning_per_pass(monkeypatch):
    """As on the H200 at 128 units with a rotation: the launch fails for lack of shared memory before it runs."""
    import warnings

    pytest.importorskip("triton")
    from triton.runtime.errors import OutOfResources

    from wcrnn.models import fused_recurrence, recurrence

    class Refused:
        def __getitem__(self, grid):
            def launch(*arguments, **constants):
                raise OutOfResources(270336, 232448, "shared memory")
            return launch

    monkeypatch.setattr(fused_recurrence.kernels(), "_forward_kernel", Refused())
    monkeypatch.setattr(fused_recurrence.kernels(), "_backward_kernel", Refused())
    monkeypatch.setattr(fused_recurrence, "_refused", set())
    monkeypatch.setattr(recurrence, "fused_recurrence_available", lambda tensor: True)  # as if on a GPU
    core = core_for("rotational").double()
    inputs = torch.randn(4, 25, 3, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="shared memory") as caught:
        core(inputs).square().sum().backward()
    assert sorted(str(w.message).split(" pass ")[0].rsplit(" ", 1)[1] for w in caught) == ["backward", "forward"]
    fast_grads = [p.grad.clone() for p in core.parameters()]
    core.zero_grad()
    core.reference_forward(inputs).square().sum().backward()
    for fast, reference in zip(fast_grads, [p.grad for p in core.parameters()]):
        torch.testing.assert_close(fast, reference, rtol=1e-9, atol=1e-11)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused once: not tried, nor warned about, again
        core(inputs).square().sum().backward()
