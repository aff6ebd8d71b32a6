"""wcrnn benchmarks: one run, everything side by side, written as JSON and a markdown table.

    make bench                                   (full: 16-24 minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --smoke   (tiny sizes; CI runs this to keep it working)
    .venv/bin/python benchmarks/run.py --table-of benchmarks/results/benchmark.json   (the table again)

What is measured (each against a baseline measured in the same run, on the same machine):

1. Training step (forward + backward, loss on the last state) of every WCRNN residual kind,
   several head counts, the LRU, the dense linear RNN and the plain autograd loop, against
   torch.nn.RNN (tanh) at the same N, T and batch; and against a matmul lower bound,
   6·B·N²·T flops at the peak matmul rate of this machine.
2. The full Lyapunov spectrum (N = 128, T = 784, 32 sequences): time with ons_interval=auto
   and with a QR every step, and accuracy on the linear-residual check (exponents = log r).
3. Sweep orchestration: wall time of a real sweep (Ray Tune + Optuna + MLflow; 8 trials sized
   to about 20 s each on this machine, 2 at a time) against the sum of its trials' own run
   times, and MLflow's share of trial time: five times on an embedded Ray in this process (its
   start-up varies by seconds from run to run on a shared machine; the median is the result),
   twice as `wcrnn sweep run` in a new process, timed from its launch until it has exited (the
   sweep as people run it: its imports, Ray's shutdown and the exit count too), and once
   against a local Ray head kept running between sweeps (`ray start --head`). Each row also gives the
   overhead with trials of exactly 20 s (the trials run longer or shorter in the sweeps than
   when they were sized), and one trial worker's imports are timed alone. The CPU each process of
   the start-up needs (the driver's imports, each trial worker Ray prestarts, Ray's agents and
   daemons) is measured too: spread over the cores, a floor under the start-up, which the table
   sets against the fixed seconds the sweep target leaves.
4. On a GPU, when there is one: the training step against cuDNN's nn.RNN, and trials per GPU
   with fractional resources: the same trials asking for 1, 1/2 and 1/4 of a GPU each, so that
   Ray runs 1, 2 or 4 at a time on every GPU; their throughput against one trial per GPU.
   (The smoke run checks this on a logical GPU when there is no real one: Ray schedules it,
   the trials train on the CPU.)

5. Denormal floats: the training step of models whose gradients reach them (a forgetting WCRNN,
   the LRU, nn.RNN) with denormals flushed to zero, as wcrnn's training does, and kept.

The table opens with the benchmark issue's targets (STEP_TARGET and the others below), each
with what this run measured at its size and whether it is met.

Timings are the best of a few repeats after a warm-up; ratios, not seconds, are the result.
The allocator setting and the denormal flushing wcrnn trains with (wcrnn/memory.py,
wcrnn/denormals.py) are applied first, so torch.nn.RNN gets them too.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import torch
import typer

from wcrnn.dynamics import lyapunov_spectrum
from wcrnn.memory import reuse_freed_memory
from wcrnn.models import build_core, build_model
from wcrnn.models.fused_recurrence import launches as fused_launches

RESULTS = Path(__file__).parent / "results"

# The residual kinds a sweep explores, as model config fields.
RESIDUALS = {
    "homogeneous": {"residual": "homogeneous", "r": 0.99},
    "rotational": {"residual": "rotational", "r": 0.99, "phi0": 0.224},
    "heterogeneous": {"residual": "heterogeneous", "r_range": [0.9, 1.0], "phi_range": [0.0, 1.0]},
    "nonlinear": {"residual": "nonlinear", "r": 0.99},
    "none": {"residual": "none"},
}


def best_time(run: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up call."""
    synchronize = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    run()
    synchronize()  # or the first timed call would also wait for the warm-up's queued GPU work
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_matmul_flops(device: str, size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    return 2 * size**3 / best_time(lambda: a @ b, repeats)


def training_step(forward: Callable[[torch.Tensor], torch.Tensor], parameters, inputs) -> Callable[[], None]:
    """Forward + backward with the loss on the last state, as a classifier trains."""
    parameters = list(parameters)

    def step():
        for p in parameters:
            p.grad = None
        forward(inputs)[:, -1].square().sum().backward()

    return step


def recurrence_rows(hidden_sizes, steps, batch, heads_list, repeats, device, with_reference) -> list[dict]:
    rows = []
    peak = peak_matmul_flops(device)
    for n in hidden_sizes:
        inputs = torch.randn(batch, steps, 1, device=device)
        lower_bound = 6 * batch * n * n * steps / peak
        baseline = torch.nn.RNN(1, n, batch_first=True).to(device)
        baseline_s = best_time(training_step(lambda x: baseline(x)[0], baseline.parameters(), inputs), repeats)

        def add(model: str, residual: str, heads, seconds: float, passes: str = ""):
            rows.append({"device": device, "hidden_size": n, "steps": steps, "batch": batch, "model": model,
                         "residual": residual, "heads": heads, "seconds": seconds, "fused_passes": passes,
                         "ratio_to_nn_rnn": seconds / baseline_s, "ratio_to_matmul_bound": seconds / lower_bound,
                         "peak_matmul_gflops": peak / 1e9})

        add("torch.nn.RNN (tanh)", "", "", baseline_s)
        cases = [(name, 1) for name in RESIDUALS] + [("rotational", h) for h in heads_list if h > 1 and n % h == 0]
        def timed(core) -> tuple[float, str]:
            """The step's best time, and which passes ran as one GPU kernel (fused_recurrence.py) or as the loops."""
            before = dict(fused_launches)
            seconds = best_time(training_step(core, core.parameters(), inputs), repeats)
            fused = [direction for direction in ("forward", "backward") if fused_launches[direction] > before[direction]]
            return seconds, "+".join(fused) or "loops"

        for residual, heads in cases:
            core = build_core({"name": "wcrnn", "hidden_size": n, "gamma": 0.1, "heads": heads,
                               **RESIDUALS[residual]}, 1).to(device)
            add("wcrnn", residual, heads, *timed(core))
        add("lru", "", "", *timed(build_core({"name": "lru", "hidden_size": n}, 1).to(device)))
        # dense: no tanh, one matmul per step
        add("linear", "", 1, *timed(build_core({"name": "linear", "hidden_size": n}, 1).to(device)))
        if with_reference and n == 128:
            core = build_core({"name": "wcrnn", "hidden_size": n, "gamma": 0.1, **RESIDUALS["rotational"]}, 1).to(device)
            add("wcrnn, plain autograd loop", "rotational", 1,
                best_time(training_step(core.reference_forward, core.parameters(), inputs), 1))
    return rows


def denormal_rows(hidden_size, steps, batch, repeats) -> list[dict]:
    """The training step with denormals flushed (how the benchmark runs) and kept (PyTorch's default)."""
    inputs = torch.randn(batch, steps, 1)
    baseline = torch.nn.RNN(1, hidden_size, batch_first=True)
    cases = [("torch.nn.RNN (tanh)", "", lambda x: baseline(x)[0], baseline.parameters())]
    for residual in ("homogeneous", "rotational"):
        for r in (0.8, 0.99):
            core = build_core({"name": "wcrnn", "hidden_size": hidden_size, "gamma": 0.1,
                               **RESIDUALS[residual], "r": r}, 1)
            cases.append(("wcrnn", f"{residual}, r = {r}", core, core.parameters()))
    lru = build_core({"name": "lru", "hidden_size": hidden_size}, 1)
    cases.append(("lru", "", lru, lru.parameters()))
    rows = []
    for model, residual, forward, parameters in cases:
        step = training_step(forward, parameters, inputs)
        flushed = best_time(step, repeats)
        torch.set_flush_denormal(False)
        try:
            kept = best_time(step, repeats)
        finally:
            torch.set_flush_denormal(True)
        rows.append({"hidden_size": hidden_size, "steps": steps, "batch": batch, "model": model, "residual": residual,
                     "flushed_seconds": flushed, "kept_seconds": kept, "kept_vs_flushed": kept / flushed})
    return rows


def lyapunov_rows(hidden_size, steps, sequences, repeats, device="cpu") -> list[dict]:
    rows = []
    inputs = torch.rand(sequences, steps, 1, generator=torch.Generator().manual_seed(0)).to(device)
    r = 0.95
    for residual, fields in (("homogeneous", {"r": r}), ("rotational", {"r": r, "phi0": 0.224})):
        model = build_model({"name": "wcrnn", "hidden_size": hidden_size, "gamma": 1e-3, "residual": residual,
                             **fields}, 1, 1, seed=0).to(device)
        for interval in ("auto", 1):
            spectra = []
            seconds = best_time(lambda: spectra.append(lyapunov_spectrum(model.core, inputs, warmup=0,
                                                                         ons_interval=interval)), repeats)
            spectrum = spectra[-1]
            rows.append({"device": device, "hidden_size": hidden_size, "steps": steps, "sequences": sequences, "residual": residual,
                         "ons_interval": interval, "seconds": seconds, "qr_decompositions": spectrum.orthonormalisations,
                         "max_error_vs_log_r": max(abs(e - math.log(r)) for e in spectrum.exponents)})
    return rows


def sweep_spec(trials: int, epochs: int, num_train: int, length: int, hidden_size: int) -> dict:
    """A sweep without early stopping, so every trial does the same work."""
    return {
        "name": "overhead", "description": "orchestration overhead benchmark",
        "task": {"name": "adding", "length": length, "num_train": num_train, "num_val": 512, "num_test": 512},
        "model": {"name": "wcrnn", "hidden_size": hidden_size, "residual": "rotational"},
        "training": {"optimizer": "adam", "batch_size": 64},
        "search_space": {"lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-2},
                         "r": {"distribution": "uniform", "low": 0.9, "high": 1.0},
                         "gamma": {"distribution": "loguniform", "low": 0.01, "high": 0.3}},
        "objective": {"metric": "val_mse", "mode": "min"},
        "budget": {"num_trials": trials, "max_epochs": epochs},
        "search": {"algorithm": "tpe", "seed": 0},
        "resources": {"cpu": 1, "max_concurrent": 2},
        "lyapunov": {"every": 0, "at_end": True, "num_sequences": 8},
        "checkpoints": {"num_to_keep": 1},
    }


def probe_trial_seconds(fields: dict) -> float:
    """Wall time of one trial of the sweep `fields` describe, trained here on one thread as a trial runs."""
    from wcrnn.sweep import SweepSpec
    from wcrnn.train import train

    torch.set_num_threads(1)
    config = SweepSpec.model_validate(fields).trial_run_config({"training.lr": 3e-3, "model.r": 0.95, "model.gamma": 0.05})
    start = time.perf_counter()
    train(config)
    return time.perf_counter() - start


def calibrated_num_train(trial_seconds: float, epochs: int, length: int, hidden_size: int, concurrency: int,
                         probes: tuple[int, int] = (1024, 4096)) -> int:
    """The training-set size that makes a trial of `sweep_spec` take about `trial_seconds` in the sweep.

    Times whole trials (every epoch, validation, the final Lyapunov spectrum), `concurrency` at a
    time in separate processes as the sweep runs them, and solves the line through two sizes: a
    trial's time is a fixed part plus a part in proportion to the training sequences. A small
    probe underestimates the cost per sequence of a large set (it stays in cache), so the size
    found is timed too and the line redrawn through it and the larger probe.
    """
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    batch = sweep_spec(1, epochs, probes[0], length, hidden_size)["training"]["batch_size"]

    def timed(pool, size: int) -> float:
        fields = sweep_spec(1, epochs, size, length, hidden_size)
        return sum(pool.map(probe_trial_seconds, [fields] * concurrency)) / concurrency

    with ProcessPoolExecutor(concurrency, mp_context=get_context("spawn")) as pool:
        timed(pool, probes[0])  # warm-up: each process's first trial pays one-off costs
        points = [(size, timed(pool, size)) for size in probes]
        estimate = size_for_seconds(points, trial_seconds, batch)
        if estimate == probes[1]:
            return estimate
        return size_for_seconds([points[1], (estimate, timed(pool, estimate))], trial_seconds, batch)


def size_for_seconds(points: list[tuple[int, float]], trial_seconds: float, batch: int) -> int:
    """The size at `trial_seconds` on the line through two (size, seconds) points, in whole batches.

    The points may come in either order: on a slow machine the size found lies below the larger probe."""
    (small, small_seconds), (large, large_seconds) = sorted(points)
    per_sequence = max(large_seconds - small_seconds, 1e-9) / max(large - small, 1)
    fixed = max(small_seconds - per_sequence * small, 0.0)
    return max(batch, round((trial_seconds - fixed) / per_sequence / batch) * batch)


EMBEDDED, RUNNING = "embedded (started by the sweep)", "running (ray start --head, kept for many sweeps; its second sweep)"


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most (start, end) intervals open at the same moment (one ending as another starts: not both)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def sweep_row(spec_fields: dict, address: str | None = None, logical_gpus: int | None = None) -> dict:
    """One real sweep, timed from the call to its return; Ray is shut down afterwards, so that the
    next embedded sweep starts its own, as every `wcrnn sweep run` does. `logical_gpus`: start the
    embedded Ray with that many GPUs that Ray schedules but that do not exist (the smoke run's check
    of fractional GPUs on a machine without one)."""
    import ray
    import yaml
    from mlflow import MlflowClient

    from wcrnn.sweep import SweepSpec, run_sweep

    spec = SweepSpec.model_validate(spec_fields)
    with tempfile.TemporaryDirectory(prefix="wcrnn-bench-") as folder:
        client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
        client.search_experiments()  # the database exists, as after a user's first sweep: creating it is a one-off
        started_at = time.time()
        start = time.perf_counter()
        try:
            if logical_gpus:
                ray.init(num_gpus=logical_gpus, include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False)
            result = run_sweep(spec, yaml.safe_dump(spec_fields), address=address, progress=False,
                               tracking_uri=f"sqlite:///{folder}/mlflow.db", storage=f"{folder}/runs",
                               report_dir=f"{folder}/report")
            wall = time.perf_counter() - start
        finally:
            ray.shutdown()
        trial_runs = client.search_runs([result.experiment_id], "tags.`wcrnn.role` = 'trial'")
    return timed_sweep(spec, RUNNING if address else EMBEDDED, started_at, wall, result.to_dict(), trial_runs)


COMMAND_LINE = "embedded, `wcrnn sweep run`: a new process, from its launch to its exit"


def environment_without_sweep_targets() -> dict:
    """This process's environment for a child process, less the variables that would point its sweep
    at another tracking server or Ray cluster than the embedded defaults measured here."""
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}


def command_line_sweep_row(spec_fields: dict) -> dict:
    """The sweep as people run it: `wcrnn sweep run` in a new process, timed from its launch until it
    has exited, so that its imports, Ray's shutdown and the interpreter's exit count too (the other
    embedded rows time `run_sweep` in this process, which has imported PyTorch and wcrnn already)."""
    import yaml
    from mlflow import MlflowClient

    from wcrnn.sweep import SweepSpec

    spec = SweepSpec.model_validate(spec_fields)
    with tempfile.TemporaryDirectory(prefix="wcrnn-bench-") as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        client = MlflowClient(uri)
        client.search_experiments()  # as in sweep_row
        spec_file, output = Path(folder) / "spec.yaml", Path(folder) / "output"
        spec_file.write_text(yaml.safe_dump(spec_fields))
        command = [str(Path(sys.executable).with_name("wcrnn")), "sweep", "run", str(spec_file), "--json",
                   "--tracking-uri", uri, "--storage", f"{folder}/runs", "--report-dir", f"{folder}/report"]
        environment = environment_without_sweep_targets()
        # files, not pipes: Ray's processes inherit the command's output and can hold a pipe open after it exits
        with output.with_suffix(".json").open("w") as stdout, output.with_suffix(".log").open("w") as stderr:
            started_at = time.time()
            start = time.perf_counter()
            code = subprocess.run(command, cwd=folder, stdout=stdout, stderr=stderr, env=environment).returncode
            wall = time.perf_counter() - start
        if code != 0:
            raise RuntimeError(f"wcrnn sweep run exited {code}: {output.with_suffix('.log').read_text()[-2000:]}")
        result = json.loads(output.with_suffix(".json").read_text())
        trial_runs = client.search_runs([result["experiment_id"]], "tags.`wcrnn.role` = 'trial'")
    return timed_sweep(spec, COMMAND_LINE, started_at, wall, result, trial_runs)


def timed_sweep(spec, ray: str, started_at: float, wall: float, result: dict, trial_runs: list) -> dict:
    """A sweep's row: `result` is its SweepResult as a dict, `trial_runs` its trials' MLflow runs."""
    ends = sorted(run.info.end_time / 1000 - started_at for run in trial_runs)
    # the tracking thread opens and closes the trials' runs in the order Tune starts and ends them
    intervals = [(run.info.start_time / 1000, run.info.end_time / 1000) for run in trial_runs]
    first_trial = min(run.info.start_time for run in trial_runs) / 1000 - started_at
    concurrency = min(spec.resources.max_concurrent, spec.budget.num_trials)
    trial_seconds = result["trial_seconds"]
    if not trial_seconds:
        raise RuntimeError(f"no trial of the {ray} sweep trained (trials by status: {result['counts']}): Ray Tune's log says why")
    ideal = trial_seconds / concurrency  # perfect packing of the trials on the workers
    mlflow_seconds = result["tracking_seconds"] - result["rendering_seconds"]
    return {"ray": ray, "trials": spec.budget.num_trials, "concurrency": concurrency,
            "num_train": spec.task["num_train"], "epochs": spec.budget.max_epochs,
            "wall_seconds": wall, "trial_seconds_total": trial_seconds,
            "mean_trial_seconds": trial_seconds / spec.budget.num_trials,
            "overhead_share_of_wall": 1 - ideal / wall,
            "startup_seconds": first_trial, "finish_seconds": wall - ends[-1],
            "steady_overhead_share_of_wall": 1 - ideal / (ends[-1] - first_trial),
            # how long the last trial ran alone while the other workers had nothing left to do
            "last_trial_alone_seconds": ends[-1] - ends[-2] if len(ends) > 1 else 0.0,
            "most_trials_at_once": most_at_once(intervals),
            "mlflow_seconds": mlflow_seconds, "mlflow_share_of_trial_time": mlflow_seconds / trial_seconds,
            "rendering_seconds": result["rendering_seconds"],
            "rendering_share_of_trial_time": result["rendering_seconds"] / trial_seconds,
            "devices": sorted({run.data.tags.get("wcrnn.device", "") for run in trial_runs})}


@contextmanager
def running_local_ray(cpus: int):
    """A local Ray head started once and kept for many sweeps, as the README's Speed section suggests
    (`ray start --head` with the trials' modules preloaded and idle workers kept), with the embedded
    Ray's settings and Ray's default token authentication. Its own port and temp dir; its processes
    are stopped afterwards."""
    from wcrnn.sweep.runner import RAY_SYSTEM_CONFIG

    folder = tempfile.mkdtemp(prefix="wcrnn-bench-ray-", dir="/tmp")  # Ray's socket paths must stay short
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:  # a `ray start` that times out may already have started some of the head's processes
        started = subprocess.run(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--node-ip-address", "127.0.0.1",
             "--port", str(port), "--num-cpus", str(cpus), "--include-dashboard=false", "--temp-dir", folder,
             "--disable-usage-stats", "--system-config", json.dumps(RAY_SYSTEM_CONFIG)],
            capture_output=True, text=True, timeout=180)
        if started.returncode != 0:
            raise RuntimeError(f"ray start failed: {started.stderr[-2000:]}")
        yield f"127.0.0.1:{port}"
    finally:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):  # the head's daemons and workers name its temp dir
            try:
                if folder in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    os.kill(int(cmdline.parent.name), signal.SIGKILL)
            except (OSError, ValueError):
                pass  # already gone
        shutil.rmtree(folder, ignore_errors=True)


def sweep_rows(spec_fields: dict, repeats: int, command_line_repeats: int,
               target_trial_seconds: float | None = None) -> list[dict]:
    """The embedded sweep `repeats` times (start-up varies by seconds from run to run on a shared
    machine), as `wcrnn sweep run` in a new process `command_line_repeats` times,
    then once against a running local Ray, as its second sweep: the raylet prestarts
    workers with the trial modules imported once, when it starts, so a sweep right after
    `ray start` finds them ready where later sweeps do not. The first sweep, not reported, runs as
    many small trials at once as the measured one, to take every prestarted worker.

    With `target_trial_seconds`, each row also gives the overhead its fixed seconds would be with
    trials of exactly that length: the trials, sized before the sweeps, run seconds longer or
    shorter in them on a shared machine, and longer trials make the same fixed seconds look smaller."""
    rows = [sweep_row(spec_fields) for _ in range(repeats)]
    rows += [command_line_sweep_row(spec_fields) for _ in range(command_line_repeats)]
    with running_local_ray(os.cpu_count() or 1) as address:
        first = copy.deepcopy(spec_fields)
        first["budget"] = {"num_trials": spec_fields["resources"]["max_concurrent"], "max_epochs": 1}
        first["task"]["num_train"] = 4 * first["training"]["batch_size"]
        sweep_row(first, address)
        rows.append(sweep_row(spec_fields, address))
    if target_trial_seconds:
        for row in rows:
            row["target_trial_seconds"] = target_trial_seconds
            row["overhead_share_with_target_trials"] = overhead_with_trials_of(row, target_trial_seconds)
    return rows


def overhead_with_trials_of(row: dict, trial_seconds: float) -> float:
    """The row's overhead if its trials had taken `trial_seconds` each and its fixed seconds (wall
    time beyond the trials' packed time: start-up, finish, idle workers) had stayed the same."""
    fixed = fixed_seconds(row)
    return fixed / (fixed + trial_seconds * row["trials"] / row["concurrency"])


def worker_import_seconds(repeats: int) -> float:
    """Median wall time of what a trial worker imports before its first trial (Ray Tune, PyTorch,
    the trainable), in a fresh process on an otherwise idle machine: the floor under a sweep's
    start-up, since each of the first workers pays it and they share the machine's cores."""
    from wcrnn.sweep.runner import TRIAL_MODULES

    probe = f"import time; t = time.perf_counter(); import {', '.join(TRIAL_MODULES)}; print(time.perf_counter() - t)"
    return statistics.median_high(float(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                                       check=True, timeout=300).stdout) for _ in range(repeats))


# What `wcrnn sweep run` imports and opens before its first trial (wcrnn/sweep/runner.py): the CLI,
# Ray, MLflow with its SQL store (a tracking database that exists), Ray Tune, Optuna's searcher.
DRIVER_START_PROBE = """
import sys
import wcrnn.cli, ray
from wcrnn.sweep import runner
runner.quiet_libraries()
runner.adjust_trial_runtime_environment()
runner._prepare_tracking_store(sys.argv[1])
from ray import tune
from ray.tune.search.optuna import OptunaSearch
from wcrnn.sweep import tracking, trainable
"""

# Ray started as a sweep starts it; once its prestarted workers have imported the trial modules and
# gone idle, the CPU each of its processes used, by kind.
RAY_START_PROBE = """
import json, time
import psutil
from wcrnn.sweep.runner import init_ray
init_ray(None)
import ray

def cpu_by_kind():
    cpu = {"trial_worker": [], "agent": [], "daemon": []}
    for process in psutil.Process().children(recursive=True):
        try:
            command, times = process.cmdline(), process.cpu_times()
        except psutil.Error:
            continue
        program = command[0].rsplit("/", 1)[-1] if command else ""
        kind = ("daemon" if program in ("gcs_server", "raylet") else "agent" if "Agent" in program
                else "trial_worker")  # ray::IDLE once it has started, before that python ... default_worker.py
        cpu[kind].append(times.user + times.system)
    return cpu

expected, last, settled_since, deadline = int(ray.cluster_resources()["CPU"]), None, time.monotonic(), time.monotonic() + 300
while time.monotonic() < deadline:
    cpu = cpu_by_kind()
    total = round(sum(cpu["trial_worker"]), 2)
    if len(cpu["trial_worker"]) < expected or total != last:
        last, settled_since = total, time.monotonic()
    elif time.monotonic() - settled_since > 1.0:
        break
    time.sleep(0.25)
print(json.dumps(cpu))
ray.shutdown()
"""


def startup_cpu(repeats: int) -> dict:
    """The CPU each process of a sweep's start-up spends before a first trial can run, measured on the
    otherwise idle machine (medians of `repeats`): the driver's imports (what `wcrnn sweep run`
    imports before its first trial; a driver that has them imported already, as the benchmark's
    process after its first sweep, skips them), and in a Ray started as a sweep starts it, each
    prestarted trial worker (Ray Tune, PyTorch and the trainable, imported beside one another), Ray's
    two agents, and its GCS and raylet. Spread perfectly over the cores, that CPU is a floor under the
    start-up that no order of the work can beat; the sweep's fixed seconds are compared with it."""
    environment = environment_without_sweep_targets()

    def driver_seconds() -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", DRIVER_START_PROBE, tracking_uri], check=True, timeout=300,
                       env=environment, capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    def ray_processes() -> dict:
        output = subprocess.run([sys.executable, "-c", RAY_START_PROBE], check=True, timeout=400, env=environment,
                                capture_output=True, text=True).stdout
        return json.loads(output.strip().splitlines()[-1])

    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="wcrnn-bench-") as folder:
        tracking_uri = f"sqlite:///{folder}/mlflow.db"
        MlflowClient(tracking_uri).search_experiments()  # it exists, as in the sweeps measured
        drivers = [driver_seconds() for _ in range(repeats)]
    rays = [ray_processes() for _ in range(repeats)]
    cores = os.cpu_count() or 1
    result = {"driver_imports": statistics.median_high(drivers),
              "trial_worker": statistics.median_high(cpu for ray in rays for cpu in ray["trial_worker"]),
              "trial_workers": statistics.median_high(len(ray["trial_worker"]) for ray in rays),
              "agents": statistics.median_high(sum(ray["agent"]) for ray in rays),
              "daemons": statistics.median_high(sum(ray["daemon"]) for ray in rays), "cores": cores}
    ray_start = result["trial_worker"] * result["trial_workers"] + result["agents"] + result["daemons"]
    result["floor_seconds"] = {"in_process": ray_start / cores, "command_line": (ray_start + result["driver_imports"]) / cores}
    return result


def gpu_packing_rows(spec_fields: dict, shares: tuple[int, ...], gpus: int, logical: bool = False) -> list[dict]:
    """Trials per GPU: the same trials asking for 1/k of a GPU each (`resources.gpu`), so that Ray runs
    k at a time on every GPU. A small recurrent model leaves most of a GPU idle; the throughput
    (trials per hour between the first trial's start and the last one's end) against k = 1 says
    how much of it packing wins back."""
    rows = []
    for share in shares:
        fields = copy.deepcopy(spec_fields)
        fields["resources"] = {"cpu": 1, "gpu": 1 / share, "max_concurrent": share * gpus}
        row = sweep_row(fields, logical_gpus=gpus if logical else None)
        window = row["wall_seconds"] - row["startup_seconds"] - row["finish_seconds"]
        row.update(trials_per_gpu=share, gpus=gpus, logical_gpus=logical,
                   trials_per_hour=row["trials"] / window * 3600)
        rows.append(row)
    for row in rows:
        row["throughput_vs_one_per_gpu"] = row["trials_per_hour"] / rows[0]["trials_per_hour"]
    return rows


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "python": platform.python_version()}


# The benchmark issue's targets, on a 2-core machine like the build machine.
STEP_TARGET = 1.2  # WCRNN training step / torch.nn.RNN's at N = 128, T = 784, batch 64 ...
STEP_TARGET_RESIDUALS = ("homogeneous", "rotational", "heterogeneous")  # ... for these residual kinds
SPECTRUM_TARGET_SECONDS = 5.0  # full Lyapunov spectrum, N = 128, T = 784, 32 sequences
OVERHEAD_TARGET = 0.10  # share of a sweep's wall time (8 trials of about 20 s, 2 at a time)
MLFLOW_TARGET = 0.01  # MLflow calls' share of trial time
# The build machine the targets were set on, as the issue measured it (N = 128, T = 784, batch 64):
TARGETS_MACHINE_NN_RNN_SECONDS = 0.16  # torch.nn.RNN's training step: its arithmetic speed
TARGETS_MACHINE_PLAIN_LOOP_SECONDS = 2.3  # the WCRNN's plain autograd loop: its speed at small operations one at a time


def target_rows(results: dict) -> list[dict]:
    """Each target with what this run measured for it and whether it is met. A run that did not
    measure at a target's size (a smoke run, `--devices cuda`) has no row for that target."""
    def span(values, fmt: str) -> str:
        low, high = min(values), max(values)
        return fmt.format(low) if fmt.format(low) == fmt.format(high) else f"{fmt.format(low)}–{fmt.format(high)}"

    targets = []
    steps = [row for row in results.get("recurrence", []) if row["device"] == "cpu" and row["model"] == "wcrnn"
             and row["heads"] == 1 and row["residual"] in STEP_TARGET_RESIDUALS
             and (row["hidden_size"], row["steps"], row["batch"]) == (128, 784, 64)]
    if steps:
        ratios = [row["ratio_to_nn_rnn"] for row in steps]
        targets.append({"target": f"WCRNN training step ≤ {STEP_TARGET:g}× torch.nn.RNN (CPU, N = 128, T = 784, "
                                  f"batch 64; {', '.join(STEP_TARGET_RESIDUALS)})",
                        "measured": span(ratios, "{:.2f}") + "×", "met": max(ratios) <= STEP_TARGET})
    spectra = [row for row in results.get("lyapunov", []) if row.get("device", "cpu") == "cpu"
               and row["ons_interval"] == "auto" and (row["hidden_size"], row["steps"], row["sequences"]) == (128, 784, 32)]
    if spectra:
        seconds = [row["seconds"] for row in spectra]
        targets.append({"target": f"Full Lyapunov spectrum (N = 128, T = 784, 32 sequences) under "
                                  f"{SPECTRUM_TARGET_SECONDS:g} s", "measured": span(seconds, "{:.2f}") + " s",
                        "met": max(seconds) < SPECTRUM_TARGET_SECONDS})
    sweeps = [row for row in results.get("sweep", []) if row.get("target_trial_seconds")]
    for label, kind, pick in (("the sweep in the benchmark's process (median)", EMBEDDED, statistics.median_high),
                              ("`wcrnn sweep run`, launch to exit (the worst run)", COMMAND_LINE, max)):
        rows = [row for row in sweeps if row["ray"] == kind]
        if rows:
            measured = pick(row["overhead_share_of_wall"] for row in rows)
            with_target_trials = pick(row["overhead_share_with_target_trials"] for row in rows)
            # met only if both are: the trials run longer or shorter than the 20 s they were sized to
            targets.append({"target": f"Sweep overhead under {OVERHEAD_TARGET:.0%} of wall time: {label}",
                            "measured": f"{measured:.1%} ({with_target_trials:.1%} with "
                                        f"{rows[0]['target_trial_seconds']:g}-s trials)",
                            "met": max(measured, with_target_trials) < OVERHEAD_TARGET})
    if sweeps:
        shares = [row["mlflow_share_of_trial_time"] for row in sweeps]
        targets.append({"target": f"MLflow logging under {MLFLOW_TARGET:.0%} of trial time (every sweep)",
                        "measured": span([100 * share for share in shares], "{:.2f}") + "%",
                        "met": max(shares) < MLFLOW_TARGET})
    return targets


def comparison_with_targets_machine(results: dict) -> str:
    """How this machine compares with the one the targets were set on, in the two speeds the issue
    gave for it: arithmetic (torch.nn.RNN's step) and small operations one at a time (the plain
    autograd loop). Empty where the run did not time both at N = 128 on the CPU."""
    at_128 = {row["model"]: row["seconds"] for row in results.get("recurrence", [])
              if row["device"] == "cpu" and (row["hidden_size"], row["steps"], row["batch"]) == (128, 784, 64)}
    if "torch.nn.RNN (tanh)" not in at_128 or "wcrnn, plain autograd loop" not in at_128:
        return ""
    return (f"The targets were set on a 2-core build machine where torch.nn.RNN's training step (N = 128) took "
            f"{TARGETS_MACHINE_NN_RNN_SECONDS:g} s and the WCRNN's plain autograd loop "
            f"{TARGETS_MACHINE_PLAIN_LOOP_SECONDS:g} s; on this one: {at_128['torch.nn.RNN (tanh)']:.3f} s and "
            f"{at_128['wcrnn, plain autograd loop']:.2f} s: the first measures arithmetic, the second small operations "
            "one at a time (Python and PyTorch's dispatch).")


def fixed_seconds(row: dict) -> float:
    """A sweep's wall time beyond its trials' time packed perfectly on its workers: start-up, finish
    (the report), idle workers (the last trial alone)."""
    return row["wall_seconds"] - row["trial_seconds_total"] / row["concurrency"]


def startup_floor_under_target(results: dict) -> str:
    """The fixed seconds the sweep target leaves, against the part of them this machine's CPUs need
    only to start the sweep's processes. Empty where the run did not measure both."""
    floor, sweeps = results.get("startup_cpu"), [row for row in results.get("sweep", []) if row.get("target_trial_seconds")]
    if not floor or not sweeps:
        return ""
    concurrency, trials = sweeps[0]["concurrency"], sweeps[0]["trials"]
    packed = trials * sweeps[0]["target_trial_seconds"] / concurrency
    allowed = packed * OVERHEAD_TARGET / (1 - OVERHEAD_TARGET)

    def median_fixed(kind: str) -> str:
        rows = [fixed_seconds(row) for row in sweeps if row["ray"] == kind]
        return f"{statistics.median_high(rows):.1f} s" if rows else "not measured"

    return (f"With {trials} trials of {sweeps[0]['target_trial_seconds']:g} s, {concurrency} at a time, the sweep "
            f"target leaves {allowed:.1f} s of fixed seconds (wall time beyond the trials' packed time). Only "
            f"to start the sweep's processes (their imports, Ray's start), this machine's {floor['cores']} cores "
            f"need at least {floor['floor_seconds']['in_process']:.1f} s in the benchmark's process and "
            f"{floor['floor_seconds']['command_line']:.1f} s for `wcrnn sweep run` (the start-up's CPU, below); "
            f"the fixed seconds measured: {median_fixed(EMBEDDED)} and {median_fixed(COMMAND_LINE)} (medians).")


def markdown(results: dict) -> str:
    info = results["machine"]
    lines = [f"Measured {results['date']} on {info['cpu']}, {info['cores']} cores, torch {info['torch']} "
             f"({info['torch_threads']} threads){', GPU ' + info['gpu'] if info['gpu'] else ', no GPU'}; "
             f"`{results['command']}`.", ""]
    targets = target_rows(results)
    if targets:
        lines += [f"**Targets**: {sum(row['met'] for row in targets)} of {len(targets)} met in this run"
                  + ("" if info["cores"] == 2 else f" (they are set for 2 cores; this machine has {info['cores']})") + ".",
                  "", "| target | measured | |", "|---|---|---|"]
        lines += [f"| {row['target']} | {row['measured']} | {'met' if row['met'] else '**missed**'} |" for row in targets]
        lines.append("")
        for line in (comparison_with_targets_machine(results), startup_floor_under_target(results)):
            if line:
                lines += [line, ""]
    if results.get("recurrence"):
        first = results["recurrence"][0]
        peaks = {row["device"]: row.get("peak_matmul_gflops", results["peak_matmul_gflops"]) for row in results["recurrence"]}
        on_gpu = "cuda" in peaks  # then say which WCRNN passes ran as one kernel (fused) and which as the loops
        lines += [f"**Training step** (forward + backward), T = {first['steps']}, batch {first['batch']}; "
                  "ratio < 1 is faster than torch.nn.RNN. Matmul bound: 6·B·N²·T flops at the device's peak "
                  "matmul rate (" + ", ".join(f"{device} {gflops:.0f} GFLOP/s" for device, gflops in peaks.items()) + ").",
                  "", "| device | N | model | residual | heads | seconds | × nn.RNN | × matmul bound |"
                  + (" GPU kernels |" if on_gpu else ""), "|---|---|---|---|---|---|---|---|" + ("---|" if on_gpu else "")]
        for row in results["recurrence"]:
            lines.append(f"| {row['device']} | {row['hidden_size']} | {row['model']} | {row['residual']} | {row['heads']} "
                         f"| {row['seconds']:.3f} | {row['ratio_to_nn_rnn']:.2f} | {row['ratio_to_matmul_bound']:.1f} |"
                         + (f" {row.get('fused_passes', '') if row['device'] == 'cuda' else ''} |" if on_gpu else ""))
        lines.append("")
    if results.get("denormals"):
        first = results["denormals"][0]
        lines += [f"**Denormal floats**: the training step (CPU, N = {first['hidden_size']}, T = {first['steps']}, "
                  f"batch {first['batch']}) with denormals flushed to zero, as wcrnn trains and as every row above "
                  "was timed, and kept (PyTorch's default). A forgetting network's gradients reach them.", "",
                  "| model | residual | flushed s | kept s | kept / flushed |", "|---|---|---|---|---|"]
        for row in results["denormals"]:
            lines.append(f"| {row['model']} | {row['residual']} | {row['flushed_seconds']:.3f} | {row['kept_seconds']:.3f} "
                         f"| {row['kept_vs_flushed']:.2f} |")
        lines.append("")
    if results.get("lyapunov"):
        first = results["lyapunov"][0]
        lines += [f"**Lyapunov spectrum**, full ({first['hidden_size']} exponents), T = {first['steps']}, "
                  f"{first['sequences']} sequences, γ = 1e-3, r = 0.95 (theory: every exponent = log r).", "",
                  "| device | residual | ons_interval | QR decompositions | seconds | max abs error vs log r |",
                  "|---|---|---|---|---|---|"]
        for row in results["lyapunov"]:
            lines.append(f"| {row.get('device', 'cpu')} | {row['residual']} | {row['ons_interval']} | {row['qr_decompositions']} | "
                         f"{row['seconds']:.2f} | {row['max_error_vs_log_r']:.1e} |")
        lines.append("")
    if results.get("sweep"):
        rows = results["sweep"]
        embedded = [row for row in rows if row["ray"] == EMBEDDED]
        target = rows[0].get("target_trial_seconds")
        lines += ["**Sweep orchestration** (Ray Tune + Optuna TPE + MLflow on SQLite, local Ray, no early stopping): "
                  f"{rows[0]['trials']} trials, {rows[0]['concurrency']} at a time, each {rows[0]['epochs']} epochs of "
                  f"{rows[0]['num_train']} adding-problem sequences: the size whose trials, timed {rows[0]['concurrency']} "
                  "at a time before the sweeps, take about 20 s. The first embedded sweep also imports the sweep's "
                  "libraries (Ray Tune, MLflow, Optuna, the report's), as every `wcrnn sweep run` process does; the "
                  "later ones run in the same process and find them imported. The `wcrnn sweep run` rows are the "
                  "sweep as people run it, in a new process timed from its launch until it has exited: its own "
                  "imports (PyTorch included), Ray's shutdown and the interpreter's exit count too. The running Ray's row is its second "
                  "sweep (a sweep of small trials, as many at once, ran first): its raylet prestarts workers with the "
                  "trial modules imported once, when it starts.", "",
                  "Overhead = 1 − (Σ trial time / concurrency) / wall time; startup = until the first trial started "
                  "(Ray, Optuna, MLflow parent run, first workers); finish = after the last trial ended (report); "
                  "steady = the same ratio between the first trial's start and the last one's end, which includes the "
                  "last trial running alone (its own column) once the other worker has nothing left. MLflow = the "
                  "driver's tracking thread in MLflow calls; plots = drawing the per-trial spectrum for MLflow (same "
                  "thread, concurrent with the trials)."
                  + (f" With {target:g}-s trials = the overhead the row's fixed seconds (wall time beyond the trials' "
                     f"packed time) would be with trials of exactly {target:g} s." if target else ""), "",
                  "| Ray | mean trial s | wall s | startup s | finish s | last trial alone s | overhead "
                  + (f"| overhead with {target:g}-s trials " if target else "")
                  + "| steady overhead | MLflow / trial time | plots / trial time |",
                  "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if target else "")]
        for row in rows:
            lines.append(f"| {row['ray']} | {row['mean_trial_seconds']:.1f} | {row['wall_seconds']:.1f} "
                         f"| {row['startup_seconds']:.1f} | {row['finish_seconds']:.1f} | {row['last_trial_alone_seconds']:.1f} "
                         f"| {100 * row['overhead_share_of_wall']:.1f}% "
                         + (f"| {100 * row['overhead_share_with_target_trials']:.1f}% " if target else "")
                         + f"| {100 * row['steady_overhead_share_of_wall']:.1f}% "
                         f"| {100 * row['mlflow_share_of_trial_time']:.2f}% | {100 * row['rendering_share_of_trial_time']:.2f}% |")
        def median(key: str, kind: list[dict]) -> float:  # the upper one of an even count
            return 100 * statistics.median_high(row[key] for row in kind)

        medians = [f"{label}, median overhead of {len(kind)} runs: {median('overhead_share_of_wall', kind):.1f}%"
                   + (f"; with {target:g}-s trials: {median('overhead_share_with_target_trials', kind):.1f}%" if target else "")
                   + "." for label, kind in (("Embedded Ray, in this process", embedded),
                                             ("`wcrnn sweep run`, launch to exit",
                                              [row for row in rows if row["ray"] == COMMAND_LINE])) if kind]
        lines += ["", "  \n".join(medians)]  # a markdown line break between them
        if results.get("worker_import_seconds"):
            lines += ["", f"A trial worker's imports (Ray Tune, PyTorch, the trainable), timed alone in a fresh process on "
                          f"the idle machine: {results['worker_import_seconds']:.1f} s. Each of the first workers pays them "
                          "before its first trial, beside Ray's own start on the same cores: the floor under the start-up."]
        if results.get("startup_cpu"):
            cpu = results["startup_cpu"]
            lines += ["", f"The start-up's CPU, process by process, on the idle machine: each of the {cpu['trial_workers']} "
                          f"trial workers Ray prestarts {cpu['trial_worker']:.1f} s (Ray Tune, PyTorch and the trainable, "
                          f"imported beside one another), Ray's two agents {cpu['agents']:.1f} s, its GCS and raylet "
                          f"{cpu['daemons']:.1f} s, and for `wcrnn sweep run` the driver's imports {cpu['driver_imports']:.1f} s "
                          "(Ray, MLflow and its SQL store, Ray Tune, Optuna; the benchmark's process has them after its "
                          f"first sweep). Spread perfectly over the {cpu['cores']} cores: at least "
                          f"{cpu['floor_seconds']['in_process']:.1f} s and {cpu['floor_seconds']['command_line']:.1f} s "
                          "before the first trials can train, whatever order the work is done in."]
        lines.append("")
    if results.get("gpu_packing"):
        rows = results["gpu_packing"]
        where = (f"{rows[0]['gpus']} logical GPU(s) that Ray schedules but that do not exist: the trials trained on "
                 "the CPU, so only the scheduling is checked" if rows[0]["logical_gpus"] else
                 f"{rows[0]['gpus']} GPU(s); the trials trained on {', '.join(rows[0]['devices'])}")
        lines += [f"**Trials per GPU** (fractional resources, {where}): {rows[0]['trials']} trials of {rows[0]['epochs']} "
                  f"epoch(s) on {rows[0]['num_train']} adding-problem sequences, each asking for 1/k of a GPU. Trials "
                  "per hour between the first trial's start and the last one's end.", "",
                  "| trials per GPU (k) | most at once | mean trial s | wall s | trials per hour | × one per GPU |",
                  "|---|---|---|---|---|---|"]
        for row in rows:
            lines.append(f"| {row['trials_per_gpu']} | {row['most_trials_at_once']} | {row['mean_trial_seconds']:.1f} "
                         f"| {row['wall_seconds']:.1f} | {row['trials_per_hour']:.0f} | {row['throughput_vs_one_per_gpu']:.2f} |")
        lines.append("")
    if not info["gpu"]:
        lines.append("No GPU on this machine: the cuDNN comparison and the trials per GPU were not measured"
                     + (" (the trials-per-GPU rows above ran on a logical GPU)." if results.get("gpu_packing") else "."))
    return "\n".join(lines) + "\n"


app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


@app.command()
def main(
    smoke: bool = typer.Option(False, help="Tiny sizes: checks the benchmark works, measures nothing meaningful."),
    output: Path = typer.Option(RESULTS, help="Folder for benchmark.json and benchmark.md."),
    only: Optional[str] = typer.Option(None, help="Comma-separated sections: recurrence, denormals, lyapunov, sweep, gpu."),
    devices: Optional[str] = typer.Option(None, help="Comma-separated devices for the training step and the Lyapunov "
                                          "spectrum: cpu, cuda. Default: cpu, and cuda when there is a GPU."),
    table_of: Optional[Path] = typer.Option(None, "--table-of", exists=True, dir_okay=False,
                                            help="Measure nothing: print the markdown table of an earlier run's "
                                                 "JSON file and write it beside it, as a .md file of the same name."),
):
    """Run the benchmarks and write benchmark.json and benchmark.md."""
    if table_of is not None:
        try:
            table = markdown(json.loads(table_of.read_text()))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise typer.BadParameter(f"not a benchmark result written by this script ({error!r})", param_hint="--table-of")
        table_of.with_suffix(".md").write_text(table)
        print(table)
        return
    reuse_freed_memory()
    torch.set_flush_denormal(True)  # as wcrnn.train does, for every model timed here
    sections = set((only or "recurrence,denormals,lyapunov,sweep,gpu").split(","))
    unknown = sections - {"recurrence", "denormals", "lyapunov", "sweep", "gpu"}
    if unknown:
        raise typer.BadParameter(f"unknown section(s) {sorted(unknown)}: use recurrence, denormals, lyapunov, sweep, gpu",
                                 param_hint="--only")
    command = ("make bench" if not smoke and only is None and devices is None else "python benchmarks/run.py"
               + (" --smoke" if smoke else "") + (f" --only {only}" if only else "") + (f" --devices {devices}" if devices else ""))
    results = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "command": command, "smoke": smoke,
               "machine": machine(), "peak_matmul_gflops": peak_matmul_flops("cpu") / 1e9}
    devices = devices.split(",") if devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if set(devices) - {"cpu", "cuda"} or ("cuda" in devices and not torch.cuda.is_available()):
        raise typer.BadParameter(f"{','.join(devices)}: use cpu, and cuda only where PyTorch sees a GPU",
                                 param_hint="--devices")
    if "recurrence" in sections:
        print("training step ...", flush=True)
        results["recurrence"] = []
        for device in devices:
            if smoke:
                results["recurrence"] += recurrence_rows([16], 50, 8, [1, 4], 1, device, with_reference=False)
            else:
                results["recurrence"] += recurrence_rows([64, 128, 256], 784, 64, [1, 4, 16], 3, device, with_reference=True)
    if "denormals" in sections:
        print("denormal floats ...", flush=True)
        results["denormals"] = denormal_rows(16, 100, 8, 1) if smoke else denormal_rows(128, 784, 64, 3)
    if "lyapunov" in sections:
        print("Lyapunov spectrum ...", flush=True)
        results["lyapunov"] = [row for device in devices for row in
                               (lyapunov_rows(16, 100, 4, 1, device) if smoke else lyapunov_rows(128, 784, 32, 2, device))]
    if "sweep" in sections:
        print("sweep overhead ...", flush=True)
        # The target's sweep: 8 trials of about 20 s each (4 epochs), 2 at a time on 2 cores.
        trial_seconds = 20
        fields = (sweep_spec(2, 1, 256, 20, 8) if smoke else
                  sweep_spec(8, 4, calibrated_num_train(trial_seconds, 4, 200, 64, concurrency=2), 200, 64))
        results["worker_import_seconds"] = worker_import_seconds(1 if smoke else 3)
        results["startup_cpu"] = startup_cpu(1 if smoke else 3)
        results["sweep"] = sweep_rows(fields, repeats=1 if smoke else 5, command_line_repeats=1 if smoke else 2,
                                      target_trial_seconds=None if smoke else trial_seconds)
    gpus = torch.cuda.device_count()
    if "gpu" in sections and (gpus or smoke):
        print("trials per GPU ...", flush=True)
        if smoke:  # a logical GPU where there is none: checks that Ray packs the trials, measures nothing
            results["gpu_packing"] = gpu_packing_rows(sweep_spec(2, 1, 256, 20, 8), (1, 2), max(gpus, 1), logical=not gpus)
        else:  # sMNIST-length sequences; 4 trials per GPU, so that at k = 4 they all run at once
            results["gpu_packing"] = gpu_packing_rows(sweep_spec(4 * gpus, 1, 4096, 784, 128), (1, 2, 4), gpus)
    output.mkdir(parents=True, exist_ok=True)
    (output / "benchmark.json").write_text(json.dumps(results, indent=1) + "\n")
    table = markdown(results)
    (output / "benchmark.md").write_text(table)
    print(table)


if __name__ == "__main__":
    app()
