"""Figures where a picture says more than a number: Lyapunov spectra, power spectra, loss curves.

Matplotlib with the non-interactive Agg backend, so plots work on headless workers.
"""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt

# Agg after the import: matplotlib.use("Agg") before it calls switch_backend on whatever pyplot
# sys.modules holds, which fails while another thread is still importing it (a sweep imports
# Optuna's plots in its report warm-up thread).
plt.switch_backend("Agg")


DPI = 120


def save_figure(figure, path, tight_layout: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Laid out at the dpi it is saved at, the figure's text is measured once: the saving pass finds
    # the sizes in matplotlib's cache, which is kept per renderer, i.e. per dpi.
    figure.set_dpi(DPI)
    if tight_layout:  # an extra measuring pass; the spectrum figure has fixed margins instead
        figure.tight_layout()
        # tight_layout leaves a placeholder layout engine behind, and savefig makes one more full
        # drawing pass for any engine; the picture is the same without it
        figure.set_layout_engine(None)
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


@functools.cache  # once per process: the caches it fills stay filled
def warm_up() -> None:
    """Draw a throwaway figure with a log axis, so that the next figure of this process does not pay
    for loading the fonts and building the math-text parser (log axes label their ticks as 10^k),
    about 0.4 s. Uses no pyplot state, so another thread may draw meanwhile."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2, 2), dpi=DPI)
    axis = figure.add_subplot()
    axis.plot([1e-3, 1e-2], [0.0, 1.0])
    axis.set(xscale="log", xlabel="lr", ylabel="loss", title="warm-up")
    figure.tight_layout()
    figure.savefig(io.BytesIO(), format="png", dpi=DPI)


def plot_lyapunov_spectrum(exponents: Sequence[float], path, spread: Sequence[float] | None = None,
                           predicted: Sequence[float] | None = None, title: str = "Lyapunov spectrum") -> Path:
    """Drawn for every trial of a sweep, in its tracking thread beside the trials, so built to be cheap
    (55 ms instead of 80): no pyplot, fixed margins instead of tight_layout's extra drawing pass, a
    fixed title position and legend corner (sorted exponents fall to the right, leaving it empty)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    figure.subplots_adjust(left=0.14, right=0.97, bottom=0.12, top=0.92)
    axis = figure.add_subplot()
    index = range(1, len(exponents) + 1)
    axis.errorbar(index, exponents, yerr=spread, fmt="o", ms=3, label="measured (QR method)")
    if predicted is not None:
        axis.plot(range(1, len(predicted) + 1), predicted, "-", color="C3", label="theory: log|eig| of the linear map")
    axis.axhline(0, color="grey", lw=0.8, ls="--")
    axis.set(xlabel="index i", ylabel="λ_i (per step)")
    axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))  # 0.002 as 2 and ×1e−3: labels fit the margin
    axis.set_title(title, y=1.0)  # a given height skips the title's placement pass
    axis.legend(loc="upper right")
    return save_figure(figure, path, tight_layout=False)


def plot_power_spectrum(frequencies: Sequence[float], power: Sequence[float], path,
                        characteristic_frequency: float | None = None, title: str = "Input power spectrum") -> Path:
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.semilogy(frequencies[1:], power[1:])
    if characteristic_frequency is not None:
        axis.axvline(characteristic_frequency, color="C3", ls="--",
                     label=f"peak {characteristic_frequency:.3f} rad/step (period {2 * math.pi / characteristic_frequency:.1f})")
        axis.legend()
    axis.set(xlabel="frequency (rad/step)", ylabel="average power", title=title)
    return save_figure(figure, path)


def value_scale(values: Sequence[float], decades: float = 2.0) -> str:
    """'log' for positive values spread over more than `decades` orders of magnitude, else 'linear':
    one trial whose loss is 1000× the others' would flatten every other curve on a linear axis."""
    finite = [v for v in values if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) > 10**decades * min(finite):
        return "log"
    return "linear"


def plot_curves(curves: dict[str, Sequence[tuple[float, float]]], path, ylabel: str, title: str = "") -> Path:
    """One line per named curve of (step, value) points, e.g. each trial's validation metric per epoch."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        steps, values = zip(*points)
        axis.plot(steps, values, marker="o", ms=2, lw=1, label=name if len(curves) <= 12 else None)
    axis.set(xlabel="epoch", ylabel=ylabel, title=title,
             yscale=value_scale([value for points in curves.values() for _, value in points]))
    if len(curves) <= 12:
        axis.legend(fontsize=6)
    return save_figure(figure, path)
