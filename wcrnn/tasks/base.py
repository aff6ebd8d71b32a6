"""Containers shared by all tasks: a data split and the task itself.

A split stores its data in the most compact form available (uint8 pixels for images,
float tensors for generated tasks) and turns it into float32 sequences one batch at a
time, so that the full sCIFAR training set (50,000 x 3072 bytes) stays small in memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F

Kind = Literal["classification", "regression_last", "regression_sequence"]


def derive_seed(seed: int, stream: str) -> int:
    """A stable 63-bit seed for one named random stream (e.g. "train", "teacher").

    Hashing keeps streams of different seeds and names apart (seed 0's "test" never
    equals seed 1's "train"), and unlike hash() it is the same in every process.
    """
    digest = hashlib.sha256(f"{seed}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, stream: str) -> torch.Generator:
    """A CPU torch.Generator for one named stream of a seed."""
    return torch.Generator().manual_seed(derive_seed(seed, stream))


class PixelSequence:
    """Turn stored uint8 images into float32 pixel sequences in [0, 1].

    Input (B, T) or (B, T, C) uint8, T pixels in row-major order, C channels;
    output (B, T, C) float32 (C = 1 for grey images). An optional fixed permutation
    of the T steps gives permuted sMNIST. A class (not a lambda) so splits pickle.
    """

    def __init__(self, permutation: torch.Tensor | None = None):
        self.permutation = permutation

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.permutation is not None:
            # Permute the uint8 data before converting: 4x fewer bytes to move.
            pixels = pixels[:, self.permutation.to(pixels.device)]
        x = pixels.to(torch.float32).div_(255.0)
        return x.unsqueeze(-1) if x.dim() == 2 else x


class SequenceSplit:
    """One split: stores compact raw tensors, returns float sequences per batch.

    data:        (N, ...) stored examples; `to_sequence(data[index])` gives (B, T, D) float32.
                 Without `to_sequence`, data must already be (N, T, D) and is cast to float32.
    targets:     (N,) int64 class labels, (N, 1) or (N, T, 1) float32 regression targets.
    index:       optional positions of the examples in the source data set (provenance,
                 and a cheap way to check that splits are deterministic).
    """

    def __init__(
        self,
        data: torch.Tensor,
        targets: torch.Tensor,
        to_sequence: Callable[[torch.Tensor], torch.Tensor] | None = None,
        index: torch.Tensor | None = None,
    ):
        if len(data) != len(targets):
            raise ValueError(f"{len(data)} examples but {len(targets)} targets")
        self.data = data
        self.targets = targets
        self.to_sequence = to_sequence
        self.index = index

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"SequenceSplit(n={len(self)}, data={tuple(self.data.shape)} {self.data.dtype})"

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples at `index` as (x float32 (B, T, D), y); y as stored (see class docstring)."""
        index = torch.as_tensor(index, device=self.data.device)
        raw = self.data[index]
        x = self.to_sequence(raw) if self.to_sequence is not None else raw.to(torch.float32)
        return x, self.targets[index]

    def inputs(self, n: int | None = None) -> torch.Tensor:
        """The first n input sequences as float32 (n, T, D) (all of them if n is None)."""
        n = len(self) if n is None else min(n, len(self))
        return self.batch(torch.arange(n, device=self.data.device))[0]

    def head(self, n: int | None) -> SequenceSplit:
        """The first n examples (all if n is None); used for the limit_* options."""
        if n is None or n >= len(self):
            return self
        index = None if self.index is None else self.index[:n]
        return SequenceSplit(self.data[:n], self.targets[:n], self.to_sequence, index)

    def to(self, device: torch.device | str) -> SequenceSplit:
        """A copy whose stored tensors live on `device` (still compact: uint8 stays uint8)."""
        return SequenceSplit(
            self.data.to(device), self.targets.to(device), self.to_sequence, self.index
        )


@dataclass
class Task:
    """A sequence task: three splits, its loss and metrics.

    Output shapes the model must produce: (B, output_dim) logits for "classification",
    (B, 1) for "regression_last" (one prediction after the last step), (B, T, 1) for
    "regression_sequence" (a prediction at every step).
    """

    name: str
    kind: Kind
    input_dim: int
    output_dim: int
    seq_len: int
    train: SequenceSplit
    val: SequenceSplit
    test: SequenceSplit
    baseline: dict[str, float] = field(default_factory=dict)  # e.g. {"mse": 1/6} for adding
    extras: dict[str, Any] = field(default_factory=dict)  # task-specific: permutation, teacher

    @property
    def teacher(self) -> dict[str, torch.Tensor] | None:
        """The teacher's parameters (teacher_student only), else None."""
        return self.extras.get("teacher")

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Training loss: cross-entropy on logits, MSE, or 0.5*MSE over all steps."""
        if self.kind == "classification":
            return F.cross_entropy(outputs, targets)
        if self.kind == "regression_last":
            return F.mse_loss(outputs, targets)
        # Zucchet & Orvieto's loss: 0.5 * squared error, averaged over steps and batch.
        return 0.5 * F.mse_loss(outputs, targets)

    @torch.no_grad()
    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Batch means as python floats; weight by batch size to average over batches."""
        loss = float(self.loss(outputs, targets))
        if self.kind == "classification":
            accuracy = (outputs.argmax(dim=-1) == targets).float().mean()
            return {"loss": loss, "accuracy": float(accuracy)}
        return {"loss": loss, "mse": float(F.mse_loss(outputs, targets))}

    @property
    def objective_metrics(self) -> dict[str, str]:
        """Validation metrics this task reports, with the direction that is better."""
        if self.kind == "classification":
            return {"val_loss": "min", "val_accuracy": "max"}
        return {"val_loss": "min", "val_mse": "min"}
