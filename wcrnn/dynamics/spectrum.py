"""Power spectrum of a task's input sequences and its characteristic frequency.

The characteristic frequency is the peak (above zero frequency) of the average power
spectrum |FFT(x - mean)|² over sequences and input channels, in rad/step. For sMNIST it is
2π/28 ≈ 0.224: one image row per cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class PowerSpectrum:
    frequencies: list[float]  # rad/step, 0 … π
    power: list[float]  # average power at each frequency
    characteristic_frequency: float  # rad/step, the peak above zero frequency

    @property
    def characteristic_period(self) -> float:
        return 2 * math.pi / self.characteristic_frequency

    def to_dict(self) -> dict:
        return {"characteristic_frequency": self.characteristic_frequency,
                "characteristic_period": self.characteristic_period,
                "frequencies": self.frequencies, "power": self.power}


def power_spectrum(inputs: torch.Tensor) -> PowerSpectrum:
    """Average power spectrum of sequences `inputs` (B, T, D)."""
    if inputs.ndim != 3 or inputs.shape[1] < 4:
        raise ValueError(f"inputs must be (sequences, steps >= 4, channels), got {tuple(inputs.shape)}")
    x = inputs.double()
    x = x - x.mean(dim=1, keepdim=True)  # remove each sequence's DC level
    power = (torch.fft.rfft(x, dim=1).abs() ** 2).mean(dim=(0, 2))
    frequencies = 2 * math.pi * torch.fft.rfftfreq(x.shape[1], dtype=torch.float64)
    peak = int(power[1:].argmax()) + 1
    return PowerSpectrum(frequencies.tolist(), power.tolist(), float(frequencies[peak]))


def characteristic_frequency(inputs: torch.Tensor) -> float:
    return power_spectrum(inputs).characteristic_frequency
