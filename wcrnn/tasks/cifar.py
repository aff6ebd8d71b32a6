"""Sequential CIFAR-10 (sCIFAR).

Each 32x32 colour image is read one pixel per step in row-major order, the three colour
channels being the features: T = 1024 steps, D = 3, values in [0, 1], 10 classes
predicted after the last step. Data: torchvision.datasets.CIFAR10; the 50,000 training
images are split at random (by `seed`) into train/val with val_fraction, the official
10,000 test images are the test split. Pixels stay uint8 in memory (150 MB for the
training set) and become float only per batch.
"""

from __future__ import annotations

import torch

from .base import Task
from .config import SCIFARConfig
from .images import image_task, load_torchvision, split_by_seed

SEQ_LEN = 32 * 32

_FILES = [
    f"cifar-10-batches-py/{name}"
    for name in ("batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6)))
]
_MISSING_FIX = (
    "Set task.download=true to download it with torchvision (needs internet); "
    "there is no offline source for CIFAR-10."
)
_DOWNLOAD_FIX = (
    "Copy cifar-10-batches-py there yourself; there is no offline source for CIFAR-10."
)


def _as_sequences(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    # torchvision keeps CIFAR as uint8 numpy (N, 32, 32, 3): rows, columns, channels.
    pixels = torch.as_tensor(dataset.data, dtype=torch.uint8).reshape(-1, SEQ_LEN, 3)
    return pixels, torch.as_tensor(dataset.targets, dtype=torch.int64)


def build_scifar(cfg: SCIFARConfig) -> Task:
    from torchvision.datasets import CIFAR10

    train, test = load_torchvision(
        CIFAR10, cfg.root, cfg.download, "CIFAR-10", _FILES, _MISSING_FIX, _DOWNLOAD_FIX
    )
    pixels, labels = _as_sequences(train)
    test_pixels, test_labels = _as_sequences(test)
    rest, val = split_by_seed(len(pixels), [cfg.val_fraction], cfg.seed)
    return image_task(
        cfg.name,
        pixels,
        labels,
        {"train": rest, "val": val},
        test_pixels=test_pixels,
        test_labels=test_labels,
        limit_train=cfg.limit_train,
        limit_eval=cfg.limit_eval,
    )
