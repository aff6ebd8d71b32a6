"""The `wcrnn` command line: thin wrappers over the library.

    wcrnn train     one training run (no Ray)
    wcrnn lyapunov  Lyapunov spectrum of a model (fresh or from a checkpoint)
    wcrnn spectrum  power spectrum and characteristic frequency of a task's inputs
    wcrnn sweep     hyperparameter sweeps on Ray Tune + Optuna, tracked in MLflow

Bad input prints one line per problem on stderr and exits 2; missing data or checkpoints exit 1.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer
from pydantic import ValidationError

from .console import err, exit_without_final_collection, print_json, run_guarded
from .errors import ConfigError, config_error

app = typer.Typer(
    help="Weakly coupled residual RNNs: training, Lyapunov spectra and memory sweeps.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


@app.callback()
def _every_command() -> None:
    exit_without_final_collection()


SET_HELP = "Override a field, e.g. --set model.r=0.95 --set training.epochs=3 (repeatable)."


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Run config (YAML/JSON) with task, model, training sections."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result (history, test metrics) as JSON on stdout."),
    checkpoint_dir: Optional[Path] = typer.Option(None, "--checkpoint-dir", help="Write checkpoint.pt here after every epoch."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue from this checkpoint file or directory."),
):
    """Train one model on one task, without Ray. Progress goes to stderr."""
    from .config import load_run_config, validate_run_config
    from .train import train as run_training

    def action():
        if resume is not None and config is None:
            from .checkpoint import load_checkpoint
            from .config import apply_overrides
            settings = validate_run_config(apply_overrides(load_checkpoint(resume)["config"], overrides))
        else:
            settings = load_run_config(config, overrides)
        err.print(f"[bold]train[/] {settings.model.name} on {settings.task.name} for {settings.training.epochs} epochs")

        def report(metrics, _save):
            shown = {k: v for k, v in metrics.items() if isinstance(v, float) and k in (
                "train_loss", "val_loss", "val_accuracy", "val_mse", "max_lyapunov", "recurrent_grad_norm", "epoch_time")}
            err.print(f"epoch {metrics['epoch']:>3}  " + "  ".join(f"{k}={v:.4g}" for k, v in shown.items()),
                      highlight=False, soft_wrap=True)  # one line per epoch in a log, too
            return False

        result = run_training(settings, callback=report, resume_from=resume, checkpoint_dir=checkpoint_dir)
        err.print(f"[bold]{result.status}[/] " + "  ".join(f"{k}={v:.4g}" for k, v in result.test.items()))
        if as_json:
            print_json({"config": settings.model_dump(mode="json"), **result.to_dict()})
        return result

    result = run_guarded(action)
    if result.status == "diverged":
        raise typer.Exit(3)


def _range(text: Optional[str], flag: str):
    if text is None:
        return None
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected two numbers 'low,high', e.g. {flag} 0.9,1.0") from None
    return [low, high]


def _ons_interval(text: str):
    if text == "auto":
        return "auto"
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ConfigError(f"--ons-interval {text!r}: expected 'auto' or a whole number >= 1, e.g. --ons-interval 4")


@app.command()
def lyapunov(
    model: str = typer.Option("wcrnn", help="Model: wcrnn, elman, gru, lstm, lru, complex_diagonal, linear."),
    residual: Optional[str] = typer.Option(None, help="Residual: none, homogeneous, rotational, heterogeneous, nonlinear."),
    hidden: Optional[int] = typer.Option(None, help="Hidden size N."),
    r: Optional[float] = typer.Option(None, help="Residual magnitude r."),
    phi0: Optional[float] = typer.Option(None, help="Rotation angle φ0 (rad/step), rotational residual."),
    phi_spread: Optional[float] = typer.Option(None, help="Rotational: angles uniform in φ0 ± spread."),
    r_range: Optional[str] = typer.Option(None, help="Heterogeneous magnitudes 'low,high'."),
    phi_range: Optional[str] = typer.Option(None, help="Heterogeneous angles 'low,high'."),
    gamma: Optional[float] = typer.Option(None, help="Coupling γ."),
    heads: Optional[int] = typer.Option(None, help="Heads (blocks of W)."),
    nonlinearity: Optional[str] = typer.Option(None, help="tanh or relu."),
    task: str = typer.Option("adding", help="Task whose validation inputs drive the network."),
    source: Optional[str] = typer.Option(None, help="Image tasks: torchvision or mnist5k."),
    checkpoint: Optional[Path] = typer.Option(None, help="Measure a trained model from this checkpoint (its config is used)."),
    sequences: int = typer.Option(8, min=1, help="Input sequences to average over."),
    warmup: Optional[int] = typer.Option(None, min=0, help="Steps not counted (default: a quarter of the sequence)."),
    ons_interval: str = typer.Option("auto", help="Re-orthonormalise every this many steps, or 'auto': as rarely as the spread of the spectrum allows."),
    exponents: Optional[int] = typer.Option(None, min=1, help="Top-k exponents (default: full spectrum)."),
    seed: int = typer.Option(0, help="Seed for the model initialisation and tangent vectors."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Override task/model fields, e.g. --set task.length=200."),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG of the spectrum (with theory) here."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: exponents, spread, predicted, max_exponent, …"),
):
    """Lyapunov spectrum (QR method) of a model driven by a task's inputs, with the theory for linear maps."""

    def action():
        from .checkpoint import load_checkpoint
        from .config import apply_overrides, validate_run_config
        from .dynamics import lyapunov_spectrum
        from .models import predicted_exponents
        from .tasks import build_task
        from .train import build_for_task

        state = None
        if checkpoint is not None:
            state = load_checkpoint(checkpoint)
            data = state["config"]
            if task != "adding" or source:
                data["task"] = {"name": task, **({"source": source} if source else {})}
        else:
            model_fields = {"name": model, "residual": residual, "hidden_size": hidden, "r": r, "phi0": phi0,
                            "phi_spread": phi_spread, "r_range": _range(r_range, "--r-range"),
                            "phi_range": _range(phi_range, "--phi-range"), "gamma": gamma, "heads": heads,
                            "nonlinearity": nonlinearity}
            model_fields = {k: v for k, v in model_fields.items() if v is not None}
            if model == "elman" and residual is not None:
                model_fields["init"] = "weakly_coupled"
            task_fields = {"name": task, **({"source": source} if source else {})}
            data = {"task": task_fields, "model": model_fields, "training": {"seed": seed}}
        settings = validate_run_config(apply_overrides(data, overrides))
        task_data = build_task(settings.task)
        network = build_for_task(settings, task_data)
        if state is not None:
            network.load_state_dict(state["model"])
        inputs = task_data.val.inputs(sequences)
        steps = inputs.shape[1]
        start = warmup if warmup is not None else steps // 4
        if start >= steps:
            raise ConfigError(f"--warmup {start} must be shorter than the sequences ({steps} steps)")
        interval = _ons_interval(ons_interval)
        spectrum = lyapunov_spectrum(network.core, inputs, exponents, start, interval, seed)
        predicted = predicted_exponents(network)
        if predicted is not None and exponents:
            predicted = predicted[:exponents]
        result = {"model": settings.model.model_dump(mode="json"), "task": settings.task.name,
                  **spectrum.to_dict(), "predicted": predicted, "warmup": start, "ons_interval": interval}
        if predicted is not None:
            result["max_deviation_from_theory"] = max(abs(a - b) for a, b in zip(spectrum.exponents, predicted))
        if plot is not None:
            from .plots import plot_lyapunov_spectrum
            plot_lyapunov_spectrum(spectrum.exponents, plot, spectrum.spread, predicted,
                                   title=f"{settings.model.name} on {settings.task.name}")
        if as_json:
            print_json(result)
        else:
            err.print(f"max exponent {spectrum.max_exponent:.5f}, mean {spectrum.mean_exponent:.5f} "
                      f"over {spectrum.steps} steps × {inputs.shape[0]} sequences", highlight=False)
            if predicted is not None:
                err.print(f"theory (log|eig|): max {predicted[0]:.5f}; max deviation "
                          f"{result['max_deviation_from_theory']:.2e}", highlight=False)
            typer.echo(" ".join(f"{v:.5f}" for v in spectrum.exponents))

    run_guarded(action)


@app.command()
def spectrum(
    task: str = typer.Option("smnist", help="Task whose training inputs are analysed."),
    source: Optional[str] = typer.Option(None, help="Image tasks: torchvision or mnist5k."),
    sequences: Optional[int] = typer.Option(None, min=1, help="Use the first N training sequences (default: all)."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Override task fields, e.g. --set task.root=/data."),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG of the power spectrum here."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: characteristic_frequency (rad/step), frequencies, power."),
):
    """Average power spectrum of a task's input sequences and its characteristic frequency."""

    def action():
        from .config import apply_overrides
        from .dynamics import power_spectrum
        from .tasks import TaskConfig, TaskConfigAdapter, build_task

        data = apply_overrides({"task": {"name": task, **({"source": source} if source else {})}}, overrides)
        try:
            task_config = TaskConfigAdapter.validate_python(data["task"])
        except ValidationError as error:
            raise config_error(error, "task", TaskConfig) from None
        task_data = build_task(task_config)
        result = power_spectrum(task_data.train.inputs(sequences))
        if plot is not None:
            from .plots import plot_power_spectrum
            plot_power_spectrum(result.frequencies, result.power, plot, result.characteristic_frequency,
                                title=f"{task} input power spectrum")
        if as_json:
            print_json({"task": task, **result.to_dict()})
        else:
            typer.echo(f"characteristic frequency {result.characteristic_frequency:.4f} rad/step "
                       f"(period {2 * math.pi / result.characteristic_frequency:.2f} steps)")

    run_guarded(action)


def _add_sweep_commands() -> None:
    from .sweep.commands import app as sweep_app

    app.add_typer(sweep_app, name="sweep")


_add_sweep_commands()

if __name__ == "__main__":
    app()
