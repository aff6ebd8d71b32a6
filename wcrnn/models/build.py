"""Build any model from its config: `build_model` (core + readout), `build_core`, and the theory
for a built model's Lyapunov exponents where there is one."""

from __future__ import annotations

import torch

from .base import RecurrentCore, SequenceModel
from .complex_diagonal import ComplexDiagonalRNN
from .config import MODEL_NAMES, ModelConfig, ModelConfigAdapter
from .elman import ElmanRNN
from .gated import GRU, LSTM
from .linear import LinearRNN
from .lru import LRU, DiagonalComplexCore
from .residuals import build_residual
from .wcrnn import WCRNN

# State-space models carry a direct input-to-output term D x_t in their readout.
_INPUT_SKIP = {"lru", "complex_diagonal", "linear"}


def parse_model_config(config) -> ModelConfig:
    """Validate a dict (or pass through an already validated config)."""
    if isinstance(config, dict):
        return ModelConfigAdapter.validate_python(config)
    return config


def build_core(config, input_size: int) -> RecurrentCore:
    config = parse_model_config(config)
    n = config.hidden_size
    if config.name == "wcrnn":
        residual = build_residual(n, **config.residual_arguments())
        return WCRNN(input_size, n, residual, config.gamma, config.heads, config.nonlinearity)
    if config.name == "elman":
        if config.init == "default":
            return ElmanRNN(input_size, n)
        return ElmanRNN(input_size, n, build_residual(n, **config.residual_arguments()), config.gamma)
    if config.name == "gru":
        return GRU(input_size, n)
    if config.name == "lstm":
        return LSTM(input_size, n)
    if config.name == "lru":
        return LRU(input_size, n, config.r_min, config.r_max, config.max_phase)
    if config.name == "complex_diagonal":
        return ComplexDiagonalRNN(input_size, n, config.r_min, config.r_max, config.max_phase)
    if config.name == "linear":
        return LinearRNN(input_size, n, config.heads, config.r_min, config.r_max, config.max_phase)
    raise ValueError(f"model name {config.name!r} is unknown: use one of {', '.join(MODEL_NAMES)}")


def build_model(config, input_size: int, output_size: int, readout: str = "last",
                seed: int | None = None) -> SequenceModel:
    """Build any model from a config (dict or pydantic); `seed` makes the initialisation reproducible."""
    config = parse_model_config(config)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        core = build_core(config, input_size)
        return SequenceModel(core, output_size, readout, input_skip=config.name in _INPUT_SKIP)


def predicted_exponents(model: SequenceModel) -> list[float] | None:
    """Theory for the Lyapunov spectrum: sorted log|eig| of the state's linear map. Exact for the
    linear RNNs (LRU, complex diagonal, linear), whose map is the same at every step; for a WCRNN
    with a linear residual, log|eig(R)|, the γ → 0 limit; None where no theory applies."""
    core = model.core
    if isinstance(core, DiagonalComplexCore):  # the state is [Re h, Im h]: each λ comes with conj(λ)
        eigenvalues = core.eigenvalues().detach().repeat(2)
    elif isinstance(core, LinearRNN):
        eigenvalues = torch.linalg.eigvals(core.recurrent_matrix().detach().double().cpu())
    else:
        residual = getattr(core, "residual", None)
        return residual.predicted_exponents() if residual is not None else None
    moduli = eigenvalues.abs().double().cpu().clamp_min(1e-300)
    return sorted(torch.log(moduli).tolist(), reverse=True)
