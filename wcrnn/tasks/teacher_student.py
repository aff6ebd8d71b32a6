"""Linear teacher-student regression of Zucchet & Orvieto (NeurIPS 2024, "curse of memory").

A fixed linear recurrent teacher with `teacher_units` units maps a Gaussian input
sequence x_t ~ N(0, 1) (1-D) to an output at every step:

    h_t = lambda * h_{t-1} + B x_t,   h_0 = 0,   t = 1..T
    y_t = Re(C h_t) + D x_t

written in the teacher's complex diagonal (eigen) basis: lambda (n,), B (n, 1), C (1, n)
complex, D (1, 1) real. The student sees x and must output y_t at every step
(regression_sequence, loss 0.5 * MSE averaged over steps and batch). The closer the
eigenvalue moduli are to 1 (nu0 -> 1), the longer the teacher's memory.

How the teacher is drawn follows the public code's default teacher, the "dense"
parametrization of `LinearSystem` in source/dataloaders/regression.py of
github.com/NicolasZucchet/Vanishing-and-exploding-gradients-are-not-the-end-of-the-story
(run_train.py defaults: lsi_parametrization="dense", lsi_d_hidden=10, lsi_max_nu=1,
lsi_normalization="none", lsi_use_B_C_D=True; the paper's scans set lsi_min_nu = nu0):

    A ~ N(0, 1/n) (n x n real),  B ~ N(0, 1) (n x 1),  C ~ N(0, 1/n) (1 x n),  D ~ N(0, 1)
    eigenvalues lambda_raw, eigenvectors V of A; each eigenvalue is remapped to
    modulus nu0 + (1 - nu0) * tanh(|lambda_raw|)  (in [nu0, 1))
    phase   angle(lambda_raw) * theta0 / pi        (in [-theta0, theta0])
    A = Re(V diag(lambda) V^-1); no normalisation of B.

and the same step convention (the state is updated with x_t before y_t is read out).
Here the teacher is kept diagonal: B_diag = V^-1 B, C_diag = C V, which for theta0 = pi
(the default, where the remapped spectrum stays closed under conjugation) gives exactly
the public code's real system; `teacher["A_dense"]`, `["B_dense"]`, `["C_dense"]` hold
that real realisation. For theta0 < pi a negative real eigenvalue gets an unpaired
phase theta0; the public code then takes the real part of the reconstructed A, which
changes its spectrum, whereas here the complex diagonal teacher (with Re(C h)) is the
definition, so the moduli and phases stated above hold exactly.
Random numbers come from torch generators (not JAX), so the draws differ from theirs.
"""

from __future__ import annotations

import math

import torch

from .base import SequenceSplit, Task, generator
from .config import TeacherStudentConfig


def make_teacher(units: int, nu0: float, theta0: float, gen: torch.Generator) -> dict:
    """Teacher parameters (float64/complex128), see the module docstring."""
    f64 = dict(generator=gen, dtype=torch.float64)
    a = torch.randn(units, units, **f64) / math.sqrt(units)
    b = torch.randn(units, 1, **f64)  # / sqrt(d_input), d_input = 1
    c = torch.randn(1, units, **f64) / math.sqrt(units)
    d = torch.randn(1, 1, **f64)  # / sqrt(d_input)

    lambda_raw, v = torch.linalg.eig(a)
    modulus = nu0 + (1.0 - nu0) * torch.tanh(lambda_raw.abs())
    phase = lambda_raw.angle() * (theta0 / math.pi)
    lam = torch.polar(modulus, phase)

    return {
        "lambda": lam,
        "B": torch.linalg.solve(v, b.to(torch.complex128)),
        "C": c.to(torch.complex128) @ v,
        "D": d,
        "lambda_raw": lambda_raw,
        "A_dense": (v @ torch.diag(lam) @ torch.linalg.inv(v)).real,
        "B_dense": b,
        "C_dense": c,
    }


def teacher_kernel(teacher: dict, length: int) -> torch.Tensor:
    """Impulse response K (length,) float64: y_t = sum_k K_k x_{t-k}.

    K_0 = Re(C B) + D and K_k = Re(C diag(lambda)^k B) for k >= 1.
    """
    lam, b, c = teacher["lambda"], teacher["B"][:, 0], teacher["C"][0]
    powers = lam[None, :] ** torch.arange(length, dtype=torch.float64)[:, None]  # (T, n)
    kernel = (powers * (c * b)[None, :]).sum(-1).real
    kernel[0] += teacher["D"][0, 0]
    return kernel


def run_teacher(teacher: dict, x: torch.Tensor) -> torch.Tensor:
    """Teacher outputs y (N, T, 1) float32 for inputs x (N, T, 1), computed in float64.

    The linear recurrence equals a causal convolution with its impulse response; doing it
    with an FFT is ~100x faster than a Python loop over steps (tests check the two agree).
    """
    length = x.shape[1]
    n_fft = 2 * length  # zero padding: circular convolution becomes linear convolution
    x64 = x[..., 0].to(torch.float64)
    spectrum = torch.fft.rfft(x64, n=n_fft) * torch.fft.rfft(teacher_kernel(teacher, length), n=n_fft)
    y = torch.fft.irfft(spectrum, n=n_fft)[:, :length]
    return y.unsqueeze(-1).to(torch.float32)


def build_teacher_student(cfg: TeacherStudentConfig) -> Task:
    teacher = make_teacher(
        cfg.teacher_units, cfg.nu0, cfg.theta0, generator(cfg.seed, "teacher_student/teacher")
    )
    sizes = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}
    splits = {}
    for split, n in sizes.items():
        gen = generator(cfg.seed, f"teacher_student/{split}")
        x = torch.randn(n, cfg.length, 1, generator=gen)
        splits[split] = SequenceSplit(x, run_teacher(teacher, x))
    return Task(
        name="teacher_student",
        kind="regression_sequence",
        input_dim=1,
        output_dim=1,
        seq_len=cfg.length,
        extras={"teacher": teacher},
        **splits,
    )
