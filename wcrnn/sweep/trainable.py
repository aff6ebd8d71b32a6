"""The Ray Tune trainable: one trial = one `wcrnn.train.train` run.

Each epoch is reported with `ray.tune.report` together with a checkpoint, so Tune can
resume the trial on any node and ASHA can stop it early. The task's data arrive through
`tune.with_parameters`, i.e. through Ray's object store: loaded once by the driver and
shared by every trial on a node instead of being loaded once per trial.

A trial never talks to MLflow; the driver's tracking callback does that from the reports.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

from ..checkpoint import CHECKPOINT_FILE
from ..train import train
from .spec import SweepSpec, metric_mode

DIVERGED = "diverged"


def trial_outcome(last_result: dict, max_epochs: int) -> str:
    """How a trial that ended without an error ended: diverged, stopped_early (ASHA) or finished."""
    if last_result.get("status") == DIVERGED:
        return DIVERGED
    return "stopped_early" if int(last_result.get("epoch", 0)) < max_epochs else "finished"


def worst_value(mode: str) -> float:
    return math.inf if mode == "min" else -math.inf


def tune_metrics(metrics: dict, spec: SweepSpec) -> dict:
    """What a trial reports: numbers, the spectrum list, and the objective (worst value when diverged)."""
    report = {key: value for key, value in metrics.items()
              if isinstance(value, (int, float, str)) or key in ("lyapunov_spectrum", "lyapunov_spread", "lyapunov_predicted")}
    if metrics.get("status") == DIVERGED:
        report[spec.objective.metric] = worst_value(spec.objective.mode)
        if spec.checkpoint_metric != spec.objective.metric:
            report[spec.checkpoint_metric] = worst_value(metric_mode(spec.checkpoint_metric))
    return report


def wcrnn_trial(config: dict, spec_json: str, task) -> None:
    """Function trainable. `config` holds the sampled values keyed by dotted path."""
    from ray import tune

    spec = SweepSpec.model_validate_json(spec_json)
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    settings = spec.trial_run_config(config)
    node_id = _node_id()
    gpu_assigned = bool(_assigned_gpus())
    settings.training.device = "cuda" if gpu_assigned and torch.cuda.is_available() else "cpu"

    def report(metrics: dict, save) -> bool:
        values = {**tune_metrics(metrics, spec), "node_id": node_id}
        if metrics.get("status") == DIVERGED:
            tune.report(values)
            return True
        with tempfile.TemporaryDirectory() as folder:
            save(Path(folder) / CHECKPOINT_FILE)
            tune.report(values, checkpoint=tune.Checkpoint.from_directory(folder))
        return False

    resume_from = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            local = Path(tempfile.mkdtemp(prefix="wcrnn-resume-"))
            (local / CHECKPOINT_FILE).write_bytes((Path(folder) / CHECKPOINT_FILE).read_bytes())
            resume_from = local / CHECKPOINT_FILE
    train(settings, callback=report, resume_from=resume_from, task=task)


def _node_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # not inside a Ray worker
        return ""


def _assigned_gpus() -> list:
    import ray

    try:
        return ray.get_gpu_ids()
    except Exception:  # not inside a Ray worker
        return []
