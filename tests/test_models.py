"""Models: equations, structure, initialisation and clear errors."""

import math

import pytest
import torch
from pydantic import ValidationError

from wcrnn.models import (MODEL_NAMES, ModelConfigAdapter, RecurrentCore, WCRNNConfig, build_model,
                          build_residual, predicted_exponents)
from wcrnn.models.lru import LRU

ALL_CONFIGS = [
    {"name": "wcrnn", "residual": "homogeneous", "r": 0.95},
    {"name": "wcrnn", "residual": "rotational", "r": 0.99, "phi0": 0.3, "phi_spread": 0.1, "heads": 2},
    {"name": "wcrnn", "residual": "heterogeneous", "r_range": [0.8, 1.0], "phi_range": [0.0, 1.0], "heads": 8},
    {"name": "wcrnn", "residual": "heterogeneous", "r_range": [0.8, 1.0], "nonlinearity": "relu"},
    {"name": "wcrnn", "residual": "nonlinear", "r": 0.9, "gamma": 0.5},
    {"name": "wcrnn", "residual": "none", "gamma": 1.0},
    {"name": "elman"},
    {"name": "elman", "init": "weakly_coupled", "residual": "rotational", "phi0": 0.2, "gamma": 0.01},
    {"name": "gru"}, {"name": "lstm"}, {"name": "lru"}, {"name": "complex_diagonal"},
    {"name": "linear", "heads": 4},
]
IDS = [f"{c['name']}-{c.get('residual', c.get('init', ''))}" for c in ALL_CONFIGS]


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=IDS)
def test_forward_equals_the_step_by_step_update(config):
    model = build_model({**config, "hidden_size": 8}, input_size=2, output_size=3, seed=0).double()
    x = torch.randn(4, 12, 2, dtype=torch.float64)
    state = model.core.initial_state(4, dtype=torch.float64)
    for t in range(12):
        state = model.core.step(state, x[:, t])
    torch.testing.assert_close(model.core.features(state), model.core(x)[:, -1])
    assert model(x).shape == (4, 3)


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=IDS)
def test_tangent_propagation_equals_autodiff_jacobian(config):
    model = build_model({**config, "hidden_size": 8}, 2, 1, seed=1).double()
    core = model.core
    state = torch.randn(3, core.state_size, dtype=torch.float64)
    x_t = torch.randn(3, 2, dtype=torch.float64)
    tangents = torch.randn(3, core.state_size, 5, dtype=torch.float64)
    new_state, product = core.step_with_tangents(state, x_t, tangents)
    jacobian = torch.stack([torch.autograd.functional.jacobian(lambda s: core.step(s[None], x_t[i:i + 1])[0], state[i])
                            for i in range(3)])
    torch.testing.assert_close(new_state, core.step(state, x_t))
    torch.testing.assert_close(product, jacobian @ tangents)
    # the generic forward-mode path agrees with the analytic override
    torch.testing.assert_close(RecurrentCore.step_with_tangents(core, state, x_t, tangents)[1], product)


def test_wcrnn_update_is_the_documented_equation():
    model = build_model({"name": "wcrnn", "hidden_size": 6, "residual": "homogeneous", "r": 0.9, "gamma": 0.2},
                        3, 1, seed=0).double()
    core = model.core
    h, x = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    expected = 0.9 * h + 0.2 * torch.tanh(h @ core.coupling_matrix().T + x @ core.input_weight.T + core.bias)
    torch.testing.assert_close(core.step(h, x), expected)


def test_readout_modes():
    last = build_model({"name": "wcrnn", "hidden_size": 8}, 1, 10, readout="last", seed=0)
    sequence = build_model({"name": "lru", "hidden_size": 8}, 1, 1, readout="sequence", seed=0)
    x = torch.randn(5, 7, 1)
    assert last(x).shape == (5, 10)
    assert sequence(x).shape == (5, 7, 1)


@pytest.mark.parametrize("heads", [1, 2, 4, 16])
def test_heads_keep_the_coupling_block_diagonal_through_training(heads):
    model = build_model({"name": "wcrnn", "hidden_size": 16, "heads": heads, "gamma": 0.5}, 1, 1, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(5):
        optimizer.zero_grad()
        model(torch.randn(8, 10, 1)).pow(2).mean().backward()
        optimizer.step()
    block = 16 // heads
    coupling = model.core.coupling_matrix().detach()
    mask = torch.block_diag(*[torch.ones(block, block)] * heads).bool()
    assert torch.all(coupling[~mask] == 0)
    assert torch.count_nonzero(coupling[mask]) == mask.sum()
    assert model.core.coupling_blocks.shape == (heads, block, block)


def test_residual_matrices_and_eigenvalues():
    homogeneous = build_residual(6, "homogeneous", r=0.9)
    torch.testing.assert_close(homogeneous.matrix(), 0.9 * torch.eye(6))
    rotational = build_residual(4, "rotational", r=0.95, phi0=0.3)
    block = 0.95 * torch.tensor([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]])
    torch.testing.assert_close(rotational.matrix(), torch.block_diag(block, block))
    eig = rotational.eigenvalues()
    assert torch.allclose(eig.abs(), torch.full((4,), 0.95, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(eig.angle().abs(), torch.full((4,), 0.3, dtype=torch.float64), atol=1e-6)
    spread = build_residual(64, "rotational", r=1.0, phi0=0.5, phi_spread=0.1, generator=torch.Generator().manual_seed(0))
    assert 0.4 <= spread.angle.min() < spread.angle.max() <= 0.6
    hetero = build_residual(64, "heterogeneous", r_range=(0.5, 0.9), generator=torch.Generator().manual_seed(0))
    assert 0.5 <= hetero.magnitude.min() < hetero.magnitude.max() <= 0.9
    rotating = build_residual(8, "heterogeneous", r_range=(0.9, 0.9), phi_range=(0.1, 0.4), distribution="linspace")
    torch.testing.assert_close(rotating.angle, torch.linspace(0.1, 0.4, 4))
    assert rotating.predicted_exponents() == pytest.approx([math.log(0.9)] * 8, abs=1e-6)
    assert build_residual(4, "nonlinear", r=0.9).predicted_exponents() is None


def test_residual_is_fixed_by_default_and_trainable_on_request():
    fixed = build_model({"name": "wcrnn", "hidden_size": 8, "residual": "rotational"}, 1, 1)
    assert not any("residual" in name for name, _ in fixed.named_parameters())
    trainable = build_model({"name": "wcrnn", "hidden_size": 8, "residual": "rotational",
                             "trainable_residual": True}, 1, 1)
    trainable(torch.randn(2, 5, 1)).sum().backward()
    grads = {name: p.grad for name, p in trainable.named_parameters() if "residual" in name}
    assert set(grads) == {"core.residual.magnitude", "core.residual.angle"}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_default_rotation_is_the_smnist_characteristic_frequency():
    model = build_model({"name": "wcrnn", "hidden_size": 4, "residual": "rotational"}, 1, 1)
    torch.testing.assert_close(model.core.residual.angle, torch.full((2,), 2 * math.pi / 28))


def test_elman_weakly_coupled_initialisation_starts_near_the_residual():
    model = build_model({"name": "elman", "hidden_size": 64, "init": "weakly_coupled", "residual": "rotational",
                         "r": 1.0, "phi0": 0.2, "gamma": 0.01}, 1, 1, seed=0)
    recurrent = model.core.rnn.weight_hh_l0.detach()
    residual = build_residual(64, "rotational", r=1.0, phi0=0.2).matrix()
    deviation = (recurrent - residual).norm() / residual.norm()
    assert 0.001 < deviation < 0.03  # γ·W with ||W||_F/||R||_F ≈ 1


def test_lru_initialisation_follows_the_paper():
    torch.manual_seed(0)
    lru = LRU(1, 256, r_min=0.4, r_max=0.9, max_phase=math.pi)
    moduli = lru.eigenvalues().abs()
    assert 0.4 - 1e-5 <= moduli.min() and moduli.max() <= 0.9 + 1e-5
    phases = torch.exp(lru.theta_log)
    assert 0 <= phases.min() and phases.max() <= math.pi
    torch.testing.assert_close(torch.exp(lru.gamma_log), torch.sqrt(1 - moduli**2), atol=1e-5, rtol=1e-5)
    # |λ|² is uniform on [r_min², r_max²]: the mean of |λ|² is their midpoint
    assert float((moduli.detach()**2).mean()) == pytest.approx((0.4**2 + 0.9**2) / 2, abs=0.04)


@pytest.mark.parametrize("heads", [1, 8, 32, 64])
@pytest.mark.parametrize("r_min", [0.0, 0.99])
def test_linear_rnn_blocks_start_inside_the_unit_circle_however_small(heads, r_min):
    # As the curse-of-memory code initialises its students: Gaussian blocks with their eigenvalues
    # moved to moduli in [r_min, 1). A 2x2 Gaussian block alone often starts above 1.
    core = build_model({"name": "linear", "hidden_size": 64, "heads": heads, "r_min": r_min}, 1, 1, seed=0).core
    moduli = torch.linalg.eigvals(core.recurrent_matrix().detach().double()).abs()
    assert r_min - 1e-4 <= float(moduli.min()) and float(moduli.max()) < 1.0
    blocks = core.recurrent_matrix().detach().reshape(heads, 64 // heads, heads, 64 // heads)
    off_block = [blocks[i, :, j] for i in range(heads) for j in range(heads) if i != j]
    assert all(torch.count_nonzero(block) == 0 for block in off_block)


def test_a_multi_head_linear_rnn_on_the_papers_long_memory_teacher_starts_finite():
    # The paper's head-count study (nu0 = 0.99, T = 300, 64 units, up to 32 heads of 2 units) at
    # initialisation: finite states, of the teacher's order of magnitude, for every head count.
    x = torch.randn(16, 300, 1, generator=torch.Generator().manual_seed(0))
    for heads in (1, 2, 4, 8, 16, 32):
        model = build_model({"name": "linear", "hidden_size": 64, "heads": heads, "r_min": 0.99}, 1, 1, seed=heads)
        with torch.no_grad():
            states = model.core(x)
        assert torch.isfinite(states).all() and float(states.abs().max()) < 1e4, heads


def test_same_seed_same_model_from_dict_or_config():
    a = build_model({"name": "wcrnn", "hidden_size": 8, "residual": "heterogeneous", "r_range": [0.8, 1.0]}, 1, 1, seed=3)
    b = build_model(WCRNNConfig(hidden_size=8, residual="heterogeneous", r_range=(0.8, 1.0)), 1, 1, seed=3)
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name


def test_predicted_exponents_only_where_a_theory_applies():
    model = build_model({"name": "wcrnn", "hidden_size": 6, "residual": "homogeneous", "r": 0.5}, 1, 1)
    assert predicted_exponents(model) == pytest.approx([math.log(0.5)] * 6)
    assert predicted_exponents(build_model({"name": "gru", "hidden_size": 4}, 1, 1)) is None


@pytest.mark.parametrize("config, field", [
    ({"name": "wcrnn", "residual": "rotational", "hidden_size": 7}, "hidden_size"),
    ({"name": "wcrnn", "heads": 3, "hidden_size": 64}, "heads"),
    ({"name": "wcrnn", "r": 0.0}, "r"),
    ({"name": "wcrnn", "r": -1.0}, "r"),
    ({"name": "wcrnn", "gamma": -0.1}, "gamma"),
    ({"name": "wcrnn", "phi0": 0.3}, "phi0"),
    ({"name": "wcrnn", "residual": "heterogeneous"}, "r_range"),
    ({"name": "wcrnn", "residual": "heterogeneous", "r_range": [1.0, 0.5]}, "r_range"),
    ({"name": "wcrnn", "residual": "heterogeneous", "r_range": [0.5, 1.0], "r": 0.9}, "r"),
    ({"name": "wcrnn", "residual": "homogeneous", "phi_spread": 0.1}, "phi_spread"),
    ({"name": "wcrnn", "residual": "sideways"}, "residual"),
    ({"name": "wcrnn", "hidden_size": 0}, "hidden_size"),
    ({"name": "wcrnn", "nonlinearity": "sigmoid"}, "nonlinearity"),
    ({"name": "wcrnn", "learning_rate": 0.1}, "learning_rate"),
    ({"name": "elman", "residual": "rotational"}, "init"),
    ({"name": "elman", "init": "weakly_coupled", "residual": "nonlinear"}, "residual"),
    ({"name": "lru", "r_min": 0.9, "r_max": 0.5}, "r_min"),
    ({"name": "linear", "heads": 5, "hidden_size": 64}, "heads"),
    ({"name": "linear", "r_min": 1.0}, "r_min"),
    ({"name": "linear", "max_phase": 4.0}, "max_phase"),
    ({"name": "transformer"}, "name"),
])
def test_invalid_combinations_name_the_field(config, field):
    with pytest.raises(ValidationError) as info:
        ModelConfigAdapter.validate_python(config)
    assert field in str(info.value)


def test_direct_construction_validates_too():
    with pytest.raises(ValueError, match="hidden_size"):
        build_residual(7, "rotational")
    from wcrnn.models import WCRNN
    with pytest.raises(ValueError, match="heads"):
        WCRNN(1, 10, build_residual(10, "homogeneous"), heads=3)


def test_every_registered_model_builds():
    for name in MODEL_NAMES:
        model = build_model({"name": name, "hidden_size": 8}, 3, 2, seed=0)
        assert model(torch.randn(2, 4, 3)).shape == (2, 2)
