"""One training run: seeded, resumable, with per-epoch metrics and divergence detection.

    result = train(config, callback=on_epoch)      # config: RunConfig or a plain dict

Every epoch produces a metrics dict (train/val loss, val accuracy or MSE, gradient norms,
epoch time, learning rate and, when asked, the Lyapunov spectrum). `callback(metrics,
save_checkpoint)` sees it first; the sweep layer reports it to Ray Tune from there. A NaN or
infinite loss ends the run with status "diverged" instead of raising.

Batches come from a generator seeded by (seed, epoch), and the RNG state is part of every
checkpoint, so a resumed run continues exactly as the uninterrupted one would.

Denormal floats are flushed to zero while a run trains: a forgetting recurrence's gradients
reach them, and they slow a CPU several times over (wcrnn/denormals.py).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from .config import RunConfig, validate_run_config
from .denormals import denormals_flushed
from .dynamics import gradient_norms, lyapunov_spectrum
from .models import SequenceModel, build_model, predicted_exponents
from .tasks import Task, build_task

EpochCallback = Callable[[dict, Callable[[Path], Path]], Optional[bool]]
READOUT = {"classification": "last", "regression_last": "last", "regression_sequence": "sequence"}


@dataclass
class TrainResult:
    status: str  # "finished", "diverged" or "stopped" (the callback asked to stop)
    history: list[dict] = field(default_factory=list)
    test: dict = field(default_factory=dict)
    model: Optional[SequenceModel] = field(default=None, repr=False)

    @property
    def last(self) -> dict:
        return self.history[-1] if self.history else {}

    def to_dict(self) -> dict:
        return {"status": self.status, "epochs": len(self.history), "final": self.last,
                "test": self.test, "history": self.history}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device=cuda but no CUDA device is available: use auto or cpu")
    return torch.device(name)


def build_for_task(config: RunConfig, task: Task) -> SequenceModel:
    return build_model(config.model, task.input_dim, task.output_dim, READOUT[task.kind], seed=config.training.seed)


def make_optimizer(model, training):
    if training.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=training.lr, momentum=training.momentum,
                               weight_decay=training.weight_decay)
    optimizer = torch.optim.Adam if training.optimizer == "adam" else torch.optim.AdamW
    return optimizer(model.parameters(), lr=training.lr, weight_decay=training.weight_decay)


def make_scheduler(optimizer, training):
    if training.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=training.epochs)
    if training.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, training.step_size, training.step_factor)
    return None


@torch.no_grad()
def evaluate(model, task: Task, split, device, batch_size: int) -> dict[str, float]:
    """Metrics averaged over a whole split, weighted by batch size."""
    model.eval()
    totals: dict[str, float] = {}
    count = len(split)
    for start in range(0, count, batch_size):
        index = torch.arange(start, min(start + batch_size, count))
        x, y = split.batch(index)
        metrics = task.metrics(model(x.to(device)), y.to(device))
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + value * len(index)
    model.train()
    return {key: value / count for key, value in totals.items()}


def measure_lyapunov(model, task: Task, config: RunConfig, device) -> dict:
    settings = config.training.lyapunov
    inputs = task.val.inputs(settings.num_sequences).to(device)
    warmup = settings.warmup if settings.warmup is not None else inputs.shape[1] // 4
    warmup = min(warmup, inputs.shape[1] - 1)
    spectrum = lyapunov_spectrum(model.core, inputs, settings.num_exponents, warmup,
                                 settings.ons_interval, seed=config.training.seed)
    predicted = predicted_exponents(model)
    return {"max_lyapunov": spectrum.max_exponent, "mean_lyapunov": spectrum.mean_exponent,
            "lyapunov_spectrum": spectrum.exponents, "lyapunov_spread": spectrum.spread,
            "lyapunov_predicted": predicted[: len(spectrum.exponents)] if predicted is not None else None}


@denormals_flushed()
def train(config: RunConfig | dict, *, callback: EpochCallback | None = None,
          resume_from: str | Path | None = None, task: Task | None = None,
          checkpoint_dir: str | Path | None = None) -> TrainResult:
    """Train one model. `task` may be passed pre-loaded (the sweep layer shares it between trials)."""
    config = validate_run_config(config) if isinstance(config, dict) else config
    training = config.training
    device = resolve_device(training.device)
    torch.manual_seed(training.seed)
    random.seed(training.seed)
    task = task or build_task(config.task)
    model = build_for_task(config, task).to(device)
    optimizer = make_optimizer(model, training)
    scheduler = make_scheduler(optimizer, training)
    history: list[dict] = []
    start_epoch = 1
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        history = list(state.get("history", []))
        start_epoch = int(state["epoch"]) + 1

    def save(path: Path, epoch: int) -> Path:
        return save_checkpoint(path, {
            "config": config.model_dump(mode="json"), "epoch": epoch, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(), "history": history})

    def test_metrics() -> dict:
        return {f"test_{k}": v for k, v in evaluate(model, task, task.test, device, training.eval_batch_size).items()}

    status, test = "finished", {}
    for epoch in range(start_epoch, training.epochs + 1):
        started = time.perf_counter()
        metrics = train_one_epoch(model, task, optimizer, training, epoch, device)
        if metrics["status"] == "diverged":
            status = "diverged"
        else:
            val = evaluate(model, task, task.val, device, training.eval_batch_size)
            metrics.update({f"val_{key}": value for key, value in val.items()})
            if not math.isfinite(val["loss"]):
                status = metrics["status"] = "diverged"
        measure = training.lyapunov.every and epoch % training.lyapunov.every == 0
        if status != "diverged" and (measure or (training.lyapunov.at_end and epoch == training.epochs)):
            metrics.update(measure_lyapunov(model, task, config, device))
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        metrics["epoch_time"] = time.perf_counter() - started
        if status != "diverged" and epoch == training.epochs and training.evaluate_test:
            # with the last epoch's metrics, so that they reach the callback: a sweep's trial reports them
            test = test_metrics()
            metrics.update(test)
        if scheduler is not None:
            scheduler.step()
        history.append(metrics)
        if checkpoint_dir is not None and status != "diverged":
            save(Path(checkpoint_dir), epoch)
        stop = callback(metrics, lambda path, epoch=epoch: save(Path(path), epoch)) if callback else False
        if status == "diverged":
            break
        if stop:
            status = "stopped"
            break

    if status == "finished" and training.evaluate_test and not test:  # resumed after its last epoch
        test = test_metrics()
    return TrainResult(status, history, test, model)


def train_one_epoch(model, task: Task, optimizer, training, epoch: int, device) -> dict:
    generator = torch.Generator().manual_seed(training.seed * 1_000_003 + epoch)
    order = torch.randperm(len(task.train), generator=generator)
    batches = order.split(training.batch_size)
    if training.max_batches_per_epoch:
        batches = batches[: training.max_batches_per_epoch]
    loss_sum = examples = 0.0
    norm_sum = recurrent_sum = recurrent_max = 0.0
    for index in batches:
        x, y = task.train.batch(index)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = task.loss(model(x), y)
        if not torch.isfinite(loss):
            return {"epoch": epoch, "status": "diverged", "train_loss": float("nan")}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms = gradient_norms(model)
        if not math.isfinite(norms["grad_norm"]):
            return {"epoch": epoch, "status": "diverged", "train_loss": float(loss.detach())}
        if training.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip)
        optimizer.step()
        loss_sum += float(loss.detach()) * len(index)
        examples += len(index)
        norm_sum += norms["grad_norm"]
        recurrent_sum += norms["recurrent_grad_norm"]
        recurrent_max = max(recurrent_max, norms["recurrent_grad_norm"])
    return {"epoch": epoch, "status": "running", "train_loss": loss_sum / examples,
            "grad_norm": norm_sum / len(batches), "recurrent_grad_norm": recurrent_sum / len(batches),
            "recurrent_grad_norm_max": recurrent_max}
