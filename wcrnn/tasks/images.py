"""Helpers shared by the image tasks: seeded splits, torchvision loading, task assembly."""

from __future__ import annotations

import os

import torch

from ..errors import DataError
from .base import PixelSequence, SequenceSplit, Task


def split_by_seed(n: int, fractions: list[float], seed: int) -> list[torch.Tensor]:
    """Split range(n) at random into len(fractions) held-out parts plus the rest.

    One torch.randperm from a generator seeded with `seed`, so identical arguments give
    identical splits in every process. Returns [rest, part_0, part_1, ...].
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [max(1, round(f * n)) for f in fractions]
    if sum(sizes) >= n:
        raise ValueError(f"held-out fractions {fractions} leave no training data out of {n}")
    parts, start = [], 0
    for size in sizes:
        parts.append(perm[start : start + size])
        start += size
    return [perm[start:], *parts]


def _missing(root: str, expected: list[str]) -> str:
    """The expected files (relative to root) that are absent, folded to their folder."""
    absent = [p for p in expected if not os.path.exists(os.path.join(root, p))]
    folders = {os.path.dirname(p) for p in absent}
    if len(folders) == 1 and not os.path.isdir(os.path.join(root, *folders)):
        return os.path.join(root, *folders)  # a whole folder is missing: name it once
    return ", ".join(os.path.join(root, p) for p in absent)


def load_torchvision(
    dataset_cls,
    root: str,
    download: bool,
    what: str,
    expected: list[str],
    fix: str,
    fix_offline: str,
):
    """(train, test) torchvision data sets, or a one-line DataError saying how to get them.

    torchvision raises RuntimeError("Dataset not found ...") for missing files, and
    RuntimeError/OSError/URLError for failed downloads or unreadable files; none of its
    tracebacks should reach the user, hence `from None`. `expected` lists the files
    torchvision reads (relative to root), `fix` says how to get the data, `fix_offline`
    what to do when a download failed.
    """
    try:
        return (
            dataset_cls(root, train=True, download=download),
            dataset_cls(root, train=False, download=download),
        )
    except Exception as err:  # noqa: BLE001 -- any failure here means "no usable data"
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(":. ")
        if download:
            msg = (
                f"{what} could not be downloaded into {root!r} (task.root, task.download=true "
                f"needs internet): {reason}. {fix_offline}"
            )
        elif "not found" in reason.lower():
            missing = _missing(root, expected) or "files unreadable or corrupted"
            msg = f"{what} not found under {root!r} (task.root; missing {missing}). {fix}"
        else:
            msg = f"{what} under {root!r} (task.root) could not be read: {reason}. {fix}"
        raise DataError(msg) from None


def image_task(
    name: str,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    parts: dict[str, torch.Tensor],
    *,
    test_pixels: torch.Tensor | None = None,
    test_labels: torch.Tensor | None = None,
    permutation: torch.Tensor | None = None,
    limit_train: int | None = None,
    limit_eval: int | None = None,
) -> Task:
    """Assemble a 10-class image task from uint8 pixels (N, T) or (N, T, C).

    parts maps "train"/"val" (and "test" when there is no official test set) to indices
    into `pixels`; an official test set comes as test_pixels/test_labels.
    """
    to_sequence = PixelSequence(permutation)

    def split(px, lab, index):
        return SequenceSplit(px[index], lab[index], to_sequence, index)

    train = split(pixels, labels, parts["train"]).head(limit_train)
    val = split(pixels, labels, parts["val"]).head(limit_eval)
    if test_pixels is None:
        test = split(pixels, labels, parts["test"])
    else:
        test = split(test_pixels, test_labels, torch.arange(len(test_pixels)))
    test = test.head(limit_eval)

    seq_len = pixels.shape[1]
    input_dim = 1 if pixels.dim() == 2 else pixels.shape[2]
    extras = {} if permutation is None else {"permutation": permutation}
    return Task(
        name=name,
        kind="classification",
        input_dim=input_dim,
        output_dim=10,
        seq_len=seq_len,
        train=train,
        val=val,
        test=test,
        extras=extras,
    )
