"""Dynamics of recurrent networks: Lyapunov spectra, input power spectra, gradient diagnostics."""

from .gradients import gradient_norms
from .lyapunov import LyapunovSpectrum, linear_map_exponents, lyapunov_spectrum, max_exponent_by_perturbation
from .spectrum import PowerSpectrum, characteristic_frequency, power_spectrum

__all__ = [
    "LyapunovSpectrum", "lyapunov_spectrum", "max_exponent_by_perturbation", "linear_map_exponents",
    "PowerSpectrum", "power_spectrum", "characteristic_frequency", "gradient_norms",
]
