"""Flush denormal floats to zero while training (CPU only; a no-op where the CPU cannot).

Backpropagation through time multiplies the gradient by the recurrent Jacobian once per step, so
over hundreds of steps it falls below float32's smallest normal number (1.2e-38) whenever the
network forgets: a WCRNN with r = 0.8 on 784 steps, an LRU, torch.nn.RNN with its default
initialisation. x86 CPUs compute with such denormal numbers in microcode, many times slower:
`make bench`'s "Denormal floats" table (README, Speed) had a WCRNN training step at r = 0.8
take 4.7-5.2x as long with them on 2 Intel Xeon cores (N = 128, T = 784, batch 64), nn.RNN
1.5x (3.9-4.5x and 5.1-5.5x for the WCRNN in earlier runs). Flushing them to zero changes only values below
1.2e-38 (2.2e-308 in float64), which are lost next to any normal-sized gradient term anyway.

The setting belongs to the calling thread, which runs a CPU model's forward and backward passes.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def denormals_flushed():
    """Flush denormals to zero inside the block (or the decorated function); restore the caller's setting after."""
    was_flushing = flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_flushing)


def flushing_denormals() -> bool:
    """Whether this thread flushes denormals to zero now (PyTorch has no getter for it)."""
    half_the_smallest_normal = torch.finfo(torch.float32).tiny / 2
    return (torch.tensor(half_the_smallest_normal) * 1.0).item() == 0.0
