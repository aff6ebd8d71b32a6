"""What runs on a GPU: the fused recurrence kernels, training, resuming and the Lyapunov spectrum on CUDA.

Skipped where PyTorch sees no GPU (CI has none). They run on a GPU machine with
`pytest tests/test_cuda.py`; the README's benchmark section says when they last did.
"""

import copy
import math

import pytest
import torch

from test_recurrence import RESIDUALS, assert_fast_path_equals_reference, core_for, values_and_gradients
from wcrnn.checkpoint import load_checkpoint
from wcrnn.dynamics import lyapunov_spectrum
from wcrnn.models import build_core, build_model
from wcrnn.models import fused_recurrence
from wcrnn.models.fused_recurrence import fused_forward
from wcrnn.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("residual", list(RESIDUALS))
def test_wcrnn_fast_recurrence_on_cuda_equals_the_reference_loop(residual, nonlinearity, heads):
    assert_fast_path_equals_reference(core_for(residual, nonlinearity, heads).double(), state_size=16, device="cuda")


def float32_on_cuda_against_float64_on_cpu(core, batch=8, steps=200, state_tolerance=1e-5):
    """The fused kernels (float32 on the GPU) against the autograd loop in float64 on the CPU, every output weighted."""
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(batch, steps, 3, generator=generator)
    output_weights = torch.randn(batch, steps, core.state_size, generator=generator)
    reference_core = copy.deepcopy(core).double()
    reference = values_and_gradients(reference_core, reference_core.reference_forward, inputs.double(),
                                     torch.zeros(batch, core.state_size, dtype=torch.float64), output_weights.double())
    core.cuda()
    fast = values_and_gradients(core, core.forward, inputs.cuda(), torch.zeros(batch, core.state_size, device="cuda"),
                                output_weights.cuda())
    # float32 over 200 steps: both paths are ~1e-6 of the states' and gradients' scale from the float64 truth
    torch.testing.assert_close(fast[0].cpu().double(), reference[0], rtol=0,
                               atol=state_tolerance * reference[0].abs().max().item())
    for name in reference[2]:
        scale = reference[2][name].abs().max().item()
        assert scale > 0, f"{name} got no gradient"
        torch.testing.assert_close(fast[2][name].cpu().double(), reference[2][name], rtol=0, atol=1e-4 * scale, msg=name)


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("residual", ["homogeneous", "rotational", "heterogeneous_angles", "nonlinear", "none"])
def test_the_fused_gpu_kernels_in_float32_match_the_reference_loop(residual, nonlinearity, heads, monkeypatch):
    from wcrnn.models import recurrence

    launches = []
    monkeypatch.setattr(recurrence, "fused_forward", lambda *a: launches.append(a) or fused_forward(*a))
    core = core_for(residual, nonlinearity, heads, hidden_size=64, gamma=0.1, trainable=residual != "none")
    float32_on_cuda_against_float64_on_cpu(core)
    assert len(launches) == 1, "float32 on a GPU must take the fused kernels"


def test_the_fused_kernels_handle_a_batch_and_size_off_their_tile():
    # 5 sequences (the kernel's tile is 16 rows) of 48 units (padded to 64)
    float32_on_cuda_against_float64_on_cpu(core_for("rotational", hidden_size=48, gamma=0.2), batch=5, steps=50)


def test_a_size_too_large_for_the_kernels_falls_back_to_the_loops():
    float32_on_cuda_against_float64_on_cpu(core_for("rotational", hidden_size=256, gamma=0.1), batch=4, steps=20)


def test_the_fused_kernels_and_the_loops_agree_at_the_benchmarks_size(monkeypatch):
    core = core_for("rotational", hidden_size=128, gamma=0.1).cuda()
    inputs = torch.randn(64, 784, 3, device="cuda")
    results = []
    for fused in ("1", "0"):
        monkeypatch.setenv("WCRNN_FUSED_RECURRENCE", fused)
        core.zero_grad()
        states = core(inputs)
        states[:, -1].square().sum().backward()
        results.append((states.detach(), [p.grad.clone() for p in core.parameters()]))
    # float32 in two summation orders over 784 steps: ~1e-5 of the states' scale apart (measured on an H200)
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-4 * results[1][0].abs().max().item())
    for fused_grad, loop_grad in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(fused_grad, loop_grad, rtol=0, atol=1e-4 * loop_grad.abs().max().item())


@pytest.mark.parametrize("name", ["lru", "complex_diagonal", "linear"])
def test_the_fused_linear_recurrence_kernels_in_float32_match_the_reference_loop(name):
    launched = dict(fused_recurrence.launches)
    torch.manual_seed(0)
    core = build_core({"name": name, "hidden_size": 64, "r_min": 0.9, "r_max": 0.999}, 3)
    # |λ| up to 0.999 sums ~200 float32 roundings into a state: 1.3e-5 of the scale measured on an H200
    float32_on_cuda_against_float64_on_cpu(core, state_tolerance=5e-5)
    assert fused_recurrence.launches["forward"] > launched["forward"], "a GPU must take the kernels"
    assert fused_recurrence.launches["backward"] > launched["backward"]


@pytest.mark.parametrize("name", ["lru", "complex_diagonal", "linear"])
def test_linear_recurrences_on_cuda_equal_the_reference_loop(name):
    torch.manual_seed(0)
    core = build_core({"name": name, "hidden_size": 8 if name != "linear" else 16, "r_min": 0.5}, 3).double()
    assert_fast_path_equals_reference(core, state_size=16, device="cuda")


def tiny_adding_on(device: str, **training) -> dict:
    return {"task": {"name": "adding", "length": 10, "num_train": 256, "num_val": 64, "num_test": 32},
            "model": {"name": "wcrnn", "hidden_size": 16, "r": 0.95, "gamma": 0.1},
            "training": {"device": device, "evaluate_test": False, "epochs": 4, "batch_size": 32,
                         "max_batches_per_epoch": 4, "lr": 0.01, **training}}


def test_training_on_cuda_follows_the_cpu_run_and_its_checkpoint_loads_on_the_cpu(tmp_path):
    on_gpu = train(tiny_adding_on("cuda"), checkpoint_dir=tmp_path)
    on_cpu = train(tiny_adding_on("cpu"))
    assert on_gpu.status == on_cpu.status == "finished"
    # same data, same initialisation: the runs differ only by float32 rounding on different hardware
    for gpu_epoch, cpu_epoch in zip(on_gpu.history, on_cpu.history):
        assert gpu_epoch["train_loss"] == pytest.approx(cpu_epoch["train_loss"], rel=1e-3)
    state = load_checkpoint(tmp_path)  # map_location="cpu": a GPU worker's checkpoint opens anywhere
    assert all(not tensor.is_cuda for tensor in state["model"].values())


def test_resume_on_cuda_continues_like_an_uninterrupted_run(tmp_path):
    config = tiny_adding_on("cuda", optimizer="sgd", momentum=0.9, lr=0.05)
    uninterrupted = train(config)
    train({**config, "training": {**config["training"], "epochs": 2}}, checkpoint_dir=tmp_path)
    resumed = train(config, resume_from=tmp_path)
    assert [epoch["train_loss"] for epoch in resumed.history] == pytest.approx(
        [epoch["train_loss"] for epoch in uninterrupted.history], rel=1e-6)


def test_lyapunov_spectrum_on_cuda_matches_the_cpu_and_theory():
    model = build_model({"name": "wcrnn", "hidden_size": 32, "gamma": 1e-3, "residual": "rotational",
                         "r": 0.95, "phi0": 0.224}, 1, 1, seed=0)
    inputs = torch.rand(8, 200, 1, generator=torch.Generator().manual_seed(0))
    on_cpu = lyapunov_spectrum(model.core, inputs, warmup=0)
    on_gpu = lyapunov_spectrum(model.cuda().core, inputs.cuda(), warmup=0)
    assert on_gpu.exponents == pytest.approx(on_cpu.exponents, abs=1e-4)
    assert on_gpu.exponents == pytest.approx([torch.log(torch.tensor(0.95)).item()] * 32, abs=5e-3)


def test_a_sweep_asking_for_half_a_gpu_per_trial_trains_every_trial_on_it(tmp_path):
    """The quickstart with resources.gpu = 0.5: Ray runs two trials on the GPU at a time, and
    each trial's MLflow run says it trained there."""
    from test_sweep_run import ROOT, runs_of, sweep

    sweep(tmp_path, "run", str(ROOT / "sweeps" / "quickstart.yaml"), "--set", "resources.gpu=0.5",
          "--set", "budget.num_trials=4", "--json")
    _, parents, children = runs_of(tmp_path, "quickstart")
    assert len(parents) == 1 and len(children) == 4
    assert {child.data.tags["wcrnn.device"] for child in children} == {f"cuda ({torch.cuda.get_device_name()})"}
    assert {child.data.tags["wcrnn.status"] for child in children} <= {"finished", "stopped_early"}
    assert all(math.isfinite(child.data.metrics["val_mse"]) for child in children)
