"""Which compile options make the fused WCRNN kernels (wcrnn/models/fused_kernels.py) fastest on this GPU.

    python benchmarks/tune_kernels.py [--sizes 64,128,256] [--output results/gpu/kernel-options.json]

For each state size and residual kind (T = 784, batch 64, tanh), every variant of the options in
VARIANTS runs the forward and the backward kernel once against the loops (float32 on the same GPU)
and is then timed with triton.testing.do_bench. A row records the times (ms), the largest difference
from the loops relative to their scale, the compiled kernel's registers, spills and shared memory,
or why the GPU refused it. `_wcrnn_options` in fused_recurrence.py holds the chosen defaults.
Needs a CUDA GPU and Triton; it is not part of `make bench`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wcrnn.models import fused_recurrence  # noqa: E402
from wcrnn.models.recurrence import _backward_through_time, _forward_through_time  # noqa: E402

# (BLOCK_B, num_warps, PRECISION): batch rows per program, warps per program, tl.dot's input_precision
VARIANTS = [(16, 8, "ieee"), (16, 4, "ieee"), (16, 16, "ieee"), (16, 8, "tf32x3"), (16, 4, "tf32x3"),
            (16, 16, "tf32x3"), (32, 8, "tf32x3"), (32, 8, "ieee"), (16, 8, "tf32")]


class Recorded:
    """A Triton kernel whose launches keep the compiled kernel (registers, spills, shared memory)."""

    def __init__(self, kernel):
        self.kernel, self.compiled = kernel, None

    def __getitem__(self, grid):
        def launch(*arguments, **options):
            self.compiled = self.kernel[grid](*arguments, **options)
            return self.compiled
        return launch


def problem(kind: str, size: int, batch: int = 64, steps: int = 784, seed: int = 0, device: str = "cuda") -> dict:
    generator = torch.Generator().manual_seed(seed)
    coupling = torch.randn(size, size, generator=generator) / math.sqrt(size)
    if kind == "rotation":
        angles = torch.rand(size // 2, generator=generator) * math.pi
        coefficients = torch.polar(torch.full((size // 2,), 0.95), angles)
    else:
        coefficients = 0.9 + 0.09 * torch.rand(size, generator=generator)
    return {"driven": torch.randn(steps, batch, size, generator=generator).to(device), "coupling": coupling.to(device),
            "coefficients": coefficients.to(device), "initial": torch.randn(batch, size, generator=generator).to(device),
            "grad_states": torch.randn(steps, batch, size, generator=generator).to(device), "gamma": 0.1}


def buffers(p: dict) -> dict:
    steps, batch, size = p["driven"].shape
    states = p["driven"].new_empty(steps + 1, batch, size)
    states[0] = p["initial"]
    empty = lambda: torch.empty_like(p["driven"])  # noqa: E731
    return {"states": states, "activations": empty(), "total": empty(), "grad_pre": empty(),
            "grad_initial": p["initial"].new_empty(batch, size)}


def loops(kind: str, p: dict) -> dict:
    b = buffers(p)
    _forward_through_time(p["driven"], p["coupling"].t().contiguous(), p["gamma"], p["coefficients"], kind, "tanh",
                          b["states"], b["activations"])
    total, grad_pre, carry, _ = _backward_through_time(p["grad_states"], p["coupling"], torch.tensor(p["gamma"]),
                                                       p["coefficients"], kind, "tanh", b["states"][:-1], b["activations"])
    return {"states": b["states"], "activations": b["activations"], "total": total, "grad_pre": grad_pre,
            "grad_initial": carry}


def relative_difference(fused: torch.Tensor, reference: torch.Tensor) -> float:
    return ((fused - reference).abs().max() / reference.abs().max()).item()


def do_bench(run) -> float:
    """Milliseconds per call: Triton's CUDA-event timing on a GPU, a plain clock in the interpreter (a dry run)."""
    if torch.cuda.is_available():
        from triton.testing import do_bench as triton_do_bench
        return triton_do_bench(run, warmup=10, rep=60)
    started = time.perf_counter()
    run()
    return 1000 * (time.perf_counter() - started)


def measure(kind: str, p: dict, reference: dict, options: dict) -> dict:
    fused_recurrence._wcrnn_options = lambda size: dict(options)
    row = {}
    b = buffers(p)
    for direction in ("forward", "backward"):
        fused_recurrence._refused.clear()
        if direction == "forward":
            run = lambda: fused_recurrence.fused_forward(p["driven"], p["coupling"], p["coefficients"], kind,  # noqa: E731
                                                         "tanh", p["gamma"], b["states"], b["activations"])
        else:
            b["activations"].copy_(reference["activations"])  # every backward variant starts from the same σ(p_t)
            run = lambda: fused_recurrence.fused_backward(p["grad_states"], p["coupling"], p["coefficients"], kind,  # noqa: E731
                                                          "tanh", p["gamma"], reference["states"], b["activations"],
                                                          b["total"], b["grad_pre"], b["grad_initial"])
        kernels = fused_recurrence.kernels()
        recorded = Recorded(getattr(kernels, f"_{direction}_kernel"))
        setattr(kernels, f"_{direction}_kernel", recorded)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                started = time.perf_counter()
                ran = run()
                synchronize()
                row[f"{direction}_compile_s"] = round(time.perf_counter() - started, 2)
            if not ran:
                row[f"{direction}_refused"] = str(caught[0].message) if caught else "refused"
                continue
            compiled = recorded.compiled
            row[f"{direction}_registers"] = getattr(compiled, "n_regs", None)
            row[f"{direction}_spills"] = getattr(compiled, "n_spills", None)
            row[f"{direction}_shared_bytes"] = getattr(getattr(compiled, "metadata", None), "shared", None)
            if direction == "forward":
                row["states_difference"] = relative_difference(b["states"], reference["states"])
            else:
                row["total_difference"] = relative_difference(b["total"], reference["total"])
                row["grad_initial_difference"] = relative_difference(b["grad_initial"], reference["grad_initial"])
            row[f"{direction}_ms"] = round(do_bench(run), 3)
        finally:
            setattr(kernels, f"_{direction}_kernel", recorded.kernel)
    return row


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(sizes: str = typer.Option("64,128", help="Comma-separated state sizes."),
         kinds: str = typer.Option("diagonal,rotation,tanh", help="Residual kinds: diagonal, rotation, tanh."),
         output: Path = typer.Option(Path("benchmarks/results/gpu/kernel-options.json")),
         budget_seconds: float = typer.Option(240, help="Stop starting new variants after this long."),
         steps: int = typer.Option(784), batch: int = typer.Option(64)):
    dry_run = os.environ.get("TRITON_INTERPRET") == "1"  # the kernels in Triton's CPU interpreter: checks this script
    if fused_recurrence.kernels() is None or not (torch.cuda.is_available() or dry_run):
        raise typer.BadParameter("needs a CUDA GPU with Triton (or TRITON_INTERPRET=1 for a dry run)", param_hint="(machine)")
    started = time.perf_counter()
    rows = []
    default = fused_recurrence._wcrnn_options
    for size in (int(s) for s in sizes.split(",")):
        for kind in kinds.split(","):
            if time.perf_counter() - started > budget_seconds:
                break
            p = problem(kind, size, batch, steps, device="cpu" if dry_run else "cuda")
            started_loops = time.perf_counter()
            reference = loops(kind, p)
            synchronize()
            loops_seconds = time.perf_counter() - started_loops
            for block_b, warps, precision in VARIANTS:
                if time.perf_counter() - started > budget_seconds:
                    break
                options = {"BLOCK_B": block_b, "BLOCK_N": default(size)["BLOCK_N"], "num_warps": warps,
                           "num_stages": 1, "PRECISION": precision, "EXACT_TANH": not dry_run}
                row = {"size": size, "kind": kind, "block_b": block_b, "num_warps": warps, "precision": precision,
                       "loops_seconds_both": round(loops_seconds, 3)}
                try:
                    row.update(measure(kind, p, reference, options))
                except Exception as error:  # noqa: BLE001 - a probe records every failure and goes on
                    row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
                finally:
                    fused_recurrence._wcrnn_options = default
                rows.append(row)
                print(json.dumps(row), flush=True)
                write(output, rows)  # after every row: a probe cut short keeps what it measured
    print(f"wrote {output} ({len(rows)} rows, {time.perf_counter() - started:.0f} s)")


def write(output: Path, rows: list) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                                  "torch": torch.__version__, "triton": fused_recurrence.kernels().triton.__version__,
                                  "rows": rows}, indent=1))


if __name__ == "__main__":
    typer.run(main)
