"""Recurrent models: WCRNN and its baselines, all built through `build_model`.

The configs (and their checks) are plain Python and load at once; the models import PyTorch,
seconds on a small machine, so they load on first use: `wcrnn sweep validate` and the sweep
driver's start-up do not wait for PyTorch.
"""

from __future__ import annotations

import importlib

from .checks import RESIDUAL_KINDS
from .config import (MODEL_NAMES, ComplexDiagonalConfig, ElmanConfig, GRUConfig, LinearConfig,
                     LRUConfig, LSTMConfig, ModelConfig, ModelConfigAdapter, WCRNNConfig)

_MODULE_OF = {
    "RecurrentCore": "base", "SequenceModel": "base", "WCRNN": "wcrnn", "ElmanRNN": "elman", "GRU": "gated",
    "LSTM": "gated", "LRU": "lru", "ComplexDiagonalRNN": "complex_diagonal", "LinearRNN": "linear",
    "Residual": "residuals", "build_residual": "residuals", "build_core": "build", "build_model": "build",
    "parse_model_config": "build", "predicted_exponents": "build",
}


def __getattr__(name):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MODEL_NAMES", "RESIDUAL_KINDS", "ModelConfig", "ModelConfigAdapter", "WCRNNConfig", "ElmanConfig",
    "GRUConfig", "LSTMConfig", "LRUConfig", "ComplexDiagonalConfig", "LinearConfig", "RecurrentCore",
    "SequenceModel", "WCRNN", "ElmanRNN", "GRU", "LSTM", "LRU", "ComplexDiagonalRNN", "LinearRNN",
    "Residual", "build_residual", "build_core", "build_model", "parse_model_config",
    "predicted_exponents",
]
