"""The Lyapunov spectrum and the input power spectrum against theory (science.md, section 3)."""

import math

import pytest
import torch

from wcrnn.dynamics import (characteristic_frequency, gradient_norms, linear_map_exponents, lyapunov_spectrum,
                            max_exponent_by_perturbation, power_spectrum)
from wcrnn.models import LinearRNN, build_model, predicted_exponents
from wcrnn.tasks import build_task


def wcrnn_core(seed=0, hidden_size=32, **model):
    return build_model({"name": "wcrnn", "hidden_size": hidden_size, **model}, 1, 1, seed=seed).core.double()


def random_inputs(sequences=4, steps=400, seed=0):
    return torch.rand(sequences, steps, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_map_exponents_are_log_moduli_of_eigenvalues(seed):
    torch.manual_seed(seed)
    matrix = torch.randn(8, 8, dtype=torch.float64) / math.sqrt(8)
    assert (torch.linalg.eigvals(matrix).imag.abs() > 1e-6).any(), "want complex pairs in the test"
    core = LinearRNN(1, 8).double()
    core.recurrent_blocks.data[0] = matrix
    core.input_weight.data.zero_()
    spectrum = lyapunov_spectrum(core, torch.zeros(2, 3000, 1, dtype=torch.float64), warmup=300)
    assert spectrum.exponents == pytest.approx(linear_map_exponents(matrix), abs=1e-3)


@pytest.mark.parametrize("model", [{"name": "lru", "r_min": 0.5, "r_max": 0.99},
                                   {"name": "complex_diagonal", "r_min": 0.5, "r_max": 0.99},
                                   {"name": "linear", "heads": 1, "r_min": 0.5}, {"name": "linear", "heads": 4, "r_min": 0.5}])
def test_linear_rnns_spectrum_equals_their_predicted_exponents(model):
    # Their state map is the same matrix at every step, whatever the input: the theory is exact.
    network = build_model({**model, "hidden_size": 8}, 1, 1, seed=0).double()
    predicted = predicted_exponents(network)
    assert predicted is not None and len(predicted) == network.core.state_size
    spectrum = lyapunov_spectrum(network.core, random_inputs(sequences=2, steps=3000), warmup=300)
    assert spectrum.exponents == pytest.approx(predicted, abs=2e-3)


@pytest.mark.parametrize("r", [0.9, 0.99, 1.0])
def test_homogeneous_wcrnn_exponents_are_log_r(r):
    core = wcrnn_core(residual="homogeneous", r=r, gamma=1e-3)
    spectrum = lyapunov_spectrum(core, random_inputs(), warmup=100)
    assert max(abs(e - math.log(r)) for e in spectrum.exponents) < 0.01


@pytest.mark.parametrize("r, phi0", [(0.95, 0.3), (1.0, 2 * math.pi / 28)])
def test_rotational_wcrnn_exponents_are_log_r(r, phi0):
    core = wcrnn_core(residual="rotational", r=r, phi0=phi0, gamma=1e-3)
    spectrum = lyapunov_spectrum(core, random_inputs(), warmup=100)
    assert max(abs(e - math.log(r)) for e in spectrum.exponents) < 0.01


def heterogeneous_deviation(gamma):
    model = build_model({"name": "wcrnn", "hidden_size": 16, "residual": "heterogeneous", "r_range": [0.6, 1.0],
                         "phi_range": [0.0, 1.0], "gamma": gamma}, 1, 1, seed=0).double()
    spectrum = lyapunov_spectrum(model.core, random_inputs(steps=1500), warmup=300)
    return max(abs(a - b) for a, b in zip(spectrum.exponents, predicted_exponents(model)))


def test_heterogeneous_spectrum_matches_log_eig_and_deviation_grows_with_gamma():
    deviations = [heterogeneous_deviation(gamma) for gamma in (1e-3, 3e-2, 3e-1)]
    assert deviations[0] < 0.005
    assert deviations[0] < deviations[1] < deviations[2]


def chaotic_core():
    # γ = 1 and no residual: an Elman network with gain 2, which is chaotic (largest exponent > 0)
    core = wcrnn_core(residual="none", gamma=1.0, hidden_size=32)
    with torch.no_grad():
        core.coupling_blocks.mul_(2.0)
    return core


def test_largest_exponent_agrees_with_a_perturbed_trajectory():
    core, inputs = chaotic_core(), 0.1 * random_inputs(sequences=4, steps=3000)
    spectrum = lyapunov_spectrum(core, inputs, num_exponents=3, warmup=500)
    direct = max_exponent_by_perturbation(core, inputs, warmup=500)
    assert spectrum.max_exponent > 0.05, "the test network should be chaotic"
    assert spectrum.max_exponent == pytest.approx(direct, rel=0.05)


def test_spectrum_does_not_depend_on_reorthonormalisation_interval_or_warmup():
    core, inputs = chaotic_core(), 0.1 * random_inputs(sequences=2, steps=1200)
    reference = lyapunov_spectrum(core, inputs, num_exponents=6, warmup=300, ons_interval=1).exponents
    for interval in (3, 10):
        other = lyapunov_spectrum(core, inputs, num_exponents=6, warmup=300, ons_interval=interval).exponents
        assert other == pytest.approx(reference, abs=0.01)
    later = lyapunov_spectrum(core, inputs, num_exponents=6, warmup=600).exponents
    assert later == pytest.approx(reference, abs=0.02)


def test_top_k_is_the_head_of_the_full_spectrum_and_sorted():
    core, inputs = chaotic_core(), 0.1 * random_inputs(sequences=2, steps=1500)
    full = lyapunov_spectrum(core, inputs, warmup=300)
    top = lyapunov_spectrum(core, inputs, num_exponents=4, warmup=300)
    assert full.exponents == sorted(full.exponents, reverse=True)
    assert top.exponents == pytest.approx(full.exponents[:4], abs=0.01)
    assert len(full.spread) == 32 and full.per_sequence.shape == (2, 32)


def test_lru_exponents_are_log_moduli_of_its_eigenvalues():
    model = build_model({"name": "lru", "hidden_size": 8, "r_min": 0.5, "r_max": 0.95}, 1, 1, seed=0).double()
    # nearby moduli separate at a rate of their gap per step, hence the long run
    spectrum = lyapunov_spectrum(model.core, random_inputs(sequences=1, steps=4000), warmup=500)
    moduli = model.core.eigenvalues().abs().log().repeat(2).sort(descending=True).values.tolist()
    assert spectrum.exponents == pytest.approx(moduli, abs=1e-3)


@pytest.mark.parametrize("name", ["gru", "lstm", "elman"])
def test_gated_and_elman_spectra_are_finite_and_stable(name):
    model = build_model({"name": name, "hidden_size": 8}, 1, 1, seed=0)
    spectrum = lyapunov_spectrum(model.core, random_inputs(steps=200).float(), warmup=50)
    assert all(math.isfinite(e) for e in spectrum.exponents)
    assert spectrum.max_exponent < 0.1  # these small untrained networks are not chaotic


def test_bad_arguments_are_clear():
    core = wcrnn_core()
    with pytest.raises(ValueError, match="num_exponents"):
        lyapunov_spectrum(core, random_inputs(steps=20), num_exponents=99)
    with pytest.raises(ValueError, match="warmup"):
        lyapunov_spectrum(core, random_inputs(steps=20), warmup=20)
    with pytest.raises(ValueError, match="inputs"):
        lyapunov_spectrum(core, torch.zeros(2, 20, 3))


def test_power_spectrum_peaks_at_a_sinusoids_frequency():
    steps = torch.arange(512, dtype=torch.float64)
    frequency = 2 * math.pi * 40 / 512
    x = torch.sin(frequency * steps)[None, :, None] + 5.0  # a DC offset must not win
    assert characteristic_frequency(x) == pytest.approx(frequency)


def test_smnist_characteristic_frequency_is_one_row_per_cycle():
    task = build_task({"name": "smnist", "source": "mnist5k"})
    result = power_spectrum(task.train.inputs())
    assert result.characteristic_frequency == pytest.approx(2 * math.pi / 28, abs=0.02)
    assert len(result.frequencies) == len(result.power) == 784 // 2 + 1


def test_gradient_norms_separate_recurrent_parameters():
    model = build_model({"name": "wcrnn", "hidden_size": 8}, 1, 1, seed=0)
    model(torch.randn(4, 10, 1)).pow(2).mean().backward()
    norms = gradient_norms(model)
    readout = math.sqrt(sum(float(p.grad.pow(2).sum()) for n, p in model.named_parameters() if n.startswith("readout")))
    assert norms["grad_norm"] == pytest.approx(math.hypot(norms["recurrent_grad_norm"], readout), rel=1e-5)
    assert norms["recurrent_grad_norm"] > 0


def test_auto_interval_matches_every_step_and_saves_most_qrs_on_a_weakly_coupled_network():
    core = wcrnn_core(residual="rotational", r=0.99, phi0=0.3, gamma=0.05, hidden_size=32)
    inputs = random_inputs(sequences=4, steps=800)
    every_step = lyapunov_spectrum(core, inputs, warmup=100, ons_interval=1)
    auto = lyapunov_spectrum(core, inputs, warmup=100)
    assert auto.exponents == pytest.approx(every_step.exponents, abs=1e-6)
    assert every_step.orthonormalisations == 800
    assert auto.orthonormalisations < 800 / 8


@pytest.mark.parametrize("dtype, most_steps", [(torch.float32, 0.9), (torch.float64, 0.3)])
def test_auto_interval_stays_short_on_a_wide_chaotic_spectrum(dtype, most_steps):
    # the spread is several nats per step, so float32 (budget e^5) must re-orthonormalise nearly every step
    core, inputs = chaotic_core().to(dtype), 0.1 * random_inputs(sequences=2, steps=600).to(dtype)
    every_step = lyapunov_spectrum(core, inputs, warmup=100, ons_interval=1)
    auto = lyapunov_spectrum(core, inputs, warmup=100)
    assert auto.exponents == pytest.approx(every_step.exponents, rel=1e-4, abs=1e-4)
    assert auto.orthonormalisations > most_steps * 600


def test_auto_interval_in_float32_stays_accurate_on_the_linear_residual_check():
    core = build_model({"name": "wcrnn", "hidden_size": 64, "residual": "homogeneous", "r": 0.95, "gamma": 1e-3},
                       1, 1, seed=0).core
    spectrum = lyapunov_spectrum(core, random_inputs(sequences=4, steps=784).float(), warmup=0)
    assert max(abs(e - math.log(0.95)) for e in spectrum.exponents) < 1e-3


@pytest.mark.parametrize("interval", [0, -1, 2.5, "sometimes"])
def test_bad_ons_interval_is_refused(interval):
    with pytest.raises(ValueError, match="ons_interval"):
        lyapunov_spectrum(wcrnn_core(), random_inputs(steps=10), ons_interval=interval)
