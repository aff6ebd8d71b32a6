"""The Ray Tune trainable: one trial = one `wcrnn.train.train` run.

Each epoch is reported with `ray.tune.report` together with a checkpoint, so Tune can
resume the trial on any node and ASHA can stop it early. A task read from files arrives through
`tune.with_parameters`, i.e. through Ray's object store: loaded once by the driver and
shared by every trial on a node instead of being loaded once per trial. A generated task
(adding problem, teacher-student) is made by each trial process from its config, once per
process: the driver then never imports PyTorch.

A trial never talks to MLflow; the driver's tracking callback does that from the reports.

A trial restored by Tune (after a lost worker or a resumed sweep) whose checkpoint is corrupt or
missing says so, naming the file, and continues from its newest readable older checkpoint, or
from scratch when none is left; the notice rides on its next report (`checkpoint_notice`).
"""

from __future__ import annotations

import math
import re
import sys
import tempfile
from pathlib import Path

from ..errors import CheckpointError
from .spec import SweepSpec, metric_mode

# PyTorch and the training code (seconds of imports) are imported by the trial: the driver imports
# this module too, for the trainable and its helpers. Trial workers preload them (runner.TRIAL_MODULES).

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
    """Function trainable. `config` holds the sampled values keyed by dotted path; `task` is the
    sweep's task, or None for a generated task, which `train` then builds (once per process)."""
    import torch
    from ray import tune

    from ..checkpoint import CHECKPOINT_FILE
    from ..train import train

    spec = SweepSpec.model_validate_json(spec_json)
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    settings = spec.trial_run_config(config)
    node_id = _node_id()
    gpu_assigned = bool(_assigned_gpus())
    settings.training.device = "cuda" if gpu_assigned and torch.cuda.is_available() else "cpu"
    device = f"cuda ({torch.cuda.get_device_name()})" if settings.training.device == "cuda" else "cpu"

    def report(metrics: dict, save) -> bool:
        nonlocal notice
        values = {**tune_metrics(metrics, spec), "node_id": node_id, "device": device}
        if notice:
            values["checkpoint_notice"], notice = notice, None
        if metrics.get("status") == DIVERGED:
            tune.report(values)
            return True
        with tempfile.TemporaryDirectory() as folder:
            save(Path(folder) / CHECKPOINT_FILE)
            tune.report(values, checkpoint=tune.Checkpoint.from_directory(folder))
        return False

    with tempfile.TemporaryDirectory(prefix="wcrnn-resume-") as scratch:
        resume_from, notice = None, None
        if tune.get_checkpoint() is not None:
            resume_from, notice = readable_checkpoint(tune.get_checkpoint(), Path(scratch))
        if notice:
            print(f"wcrnn: {notice}", file=sys.stderr)  # the trial's log; the driver shows the report's copy
        train(settings, callback=report, resume_from=resume_from, task=task)


def sweep_trainable(spec: SweepSpec, task):
    """`wcrnn_trial` as a Tune trainable, with the spec and the shared task bound to it."""
    from ray import tune

    trainable = tune.with_parameters(wcrnn_trial, spec_json=spec.model_dump_json(), task=task)
    trainable.__mixins__ = (RestoreDespiteMissingCheckpoint,)  # Tune's hook for extending function trainables
    return trainable


class RestoreDespiteMissingCheckpoint:
    """Plain Tune fails a trial whose checkpoint folder is gone, on every retry. Let it start instead:
    `wcrnn_trial` names the missing folder and continues from an older checkpoint, or from scratch."""

    def restore(self, checkpoint_path):
        from ray.train._internal.storage import _exists_at_fs_path

        checkpoint = getattr(checkpoint_path, "checkpoint", None)
        if checkpoint is not None and not _exists_at_fs_path(checkpoint.filesystem, checkpoint.path):
            self.load_checkpoint(checkpoint_path)  # hands it to wcrnn_trial as tune.get_checkpoint()
            return
        super().restore(checkpoint_path)


CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")  # how Tune names a trial's checkpoints


def readable_checkpoint(checkpoint, scratch: Path) -> tuple[Path | None, str | None]:
    """(copy in `scratch` of the newest readable checkpoint, notice) starting from Tune's latest one.

    Older candidates are the trial's other `checkpoint_NNNNNN` folders (Tune keeps
    `checkpoints.num_to_keep` of them). The notice is None when the latest one is fine.
    """
    from ray import tune

    candidates = [checkpoint.path] + _older_checkpoints(checkpoint)
    problems = []
    for index, path in enumerate(candidates):
        try:
            local = _fetch(tune.Checkpoint(path, filesystem=checkpoint.filesystem), path, scratch / str(index))
        except CheckpointError as error:
            problems.append(str(error))
            continue
        if not problems:
            return local, None
        return local, f"{'; '.join(problems)}; continuing from {path} instead"
    return None, f"{'; '.join(problems)}; no readable checkpoint left, so the trial restarts from scratch"


def _older_checkpoints(checkpoint) -> list[str]:
    import pyarrow.fs

    latest = Path(checkpoint.path)
    match = CHECKPOINT_DIR.match(latest.name)
    if match is None:
        return []
    try:
        entries = checkpoint.filesystem.get_file_info(pyarrow.fs.FileSelector(str(latest.parent)))
    except OSError:  # the trial's folder is gone too
        return []
    older = [(int(m.group(1)), entry.path) for entry in entries
             if entry.type == pyarrow.fs.FileType.Directory and (m := CHECKPOINT_DIR.match(Path(entry.path).name))
             and int(m.group(1)) < int(match.group(1))]
    return [path for _, path in sorted(older, reverse=True)]


def _fetch(checkpoint, shown: str, folder: Path) -> Path:
    """Copy a Tune checkpoint's file into `folder` and check that it loads; errors name `shown`."""
    from ..checkpoint import CHECKPOINT_FILE, load_checkpoint

    named = f"{shown.rstrip('/')}/{CHECKPOINT_FILE}"
    folder.mkdir(parents=True)
    local = folder / CHECKPOINT_FILE
    try:
        with checkpoint.as_directory() as downloaded:
            local.write_bytes((Path(downloaded) / CHECKPOINT_FILE).read_bytes())
    except OSError:  # FileNotFoundError included
        raise CheckpointError(f"checkpoint not found: {named}") from None
    try:
        load_checkpoint(local)
    except CheckpointError as error:
        raise CheckpointError(str(error).replace(str(local), named)) from None
    return local


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
