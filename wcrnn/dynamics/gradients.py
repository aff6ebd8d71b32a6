"""Gradient diagnostics: how much gradient reaches the recurrent parameters.

Vanishing or exploding gradients through time show up first in the recurrent weights, so
we track their norm separately from the readout's.
"""

from __future__ import annotations

import math

from torch import nn


def gradient_norms(model: nn.Module) -> dict[str, float]:
    """L2 norms of all gradients and of the recurrent core's gradients (after backward)."""
    total = recurrent = 0.0
    for name, parameter in model.named_parameters():
        if parameter.grad is None:
            continue
        squared = float(parameter.grad.detach().pow(2).sum())
        total += squared
        if name.startswith("core."):
            recurrent += squared
    return {"grad_norm": math.sqrt(total), "recurrent_grad_norm": math.sqrt(recurrent)}

