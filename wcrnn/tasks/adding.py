"""The adding problem (Hochreiter & Schmidhuber, 1997).

Each sequence has T steps and D = 2 input channels:
- channel 0: values drawn uniformly from [0, 1];
- channel 1: markers, 0 everywhere except exactly two 1s, one at a uniformly random
  step in the first half [0, T//2) and one in the second half [T//2, T).
The target, predicted after the last step, is the sum of the two marked values
(regression_last, shape (B, 1)). Predicting the constant 1 (the target's mean) gives
MSE = Var(U1 + U2) = 2/12 = 1/6, the baseline a model must beat to show memory.

Each split is generated from its own stream of `seed`, so train/val/test differ and a
config always produces the same data.
"""

from __future__ import annotations

import torch

from .base import SequenceSplit, Task, generator
from .config import AddingConfig

BASELINE_MSE = 1.0 / 6.0


def make_adding(n: int, length: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n adding-problem sequences: inputs (n, length, 2) and targets (n, 1), float32."""
    values = torch.rand(n, length, generator=gen)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=gen)
    second = torch.randint(half, length, (n,), generator=gen)
    markers = torch.zeros(n, length)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]
    return torch.stack([values, markers], dim=-1), targets.unsqueeze(-1)


def build_adding(cfg: AddingConfig) -> Task:
    sizes = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}
    splits = {
        split: SequenceSplit(*make_adding(n, cfg.length, generator(cfg.seed, f"adding/{split}")))
        for split, n in sizes.items()
    }
    return Task(
        name="adding",
        kind="regression_last",
        input_dim=2,
        output_dim=1,
        seq_len=cfg.length,
        baseline={"mse": BASELINE_MSE},
        **splits,
    )
