"""`wcrnn sweep …`: validate, schema, run, resume, report. Thin wrappers over wcrnn.sweep."""

from __future__ import annotations


from pathlib import Path
from typing import List, Optional

import typer

from ..console import err, print_json, run_guarded

app = typer.Typer(help="Hyperparameter sweeps: Ray Tune + Optuna search, tracked in MLflow.", no_args_is_help=True)

SPEC_ARG = typer.Argument(..., help="Sweep spec file (YAML or JSON), e.g. sweeps/quickstart.yaml.")
SET_OPT = typer.Option(None, "--set", help="Override a spec field, e.g. --set budget.num_trials=4 (repeatable).")


@app.command()
def validate(spec: Path = SPEC_ARG, overrides: Optional[List[str]] = SET_OPT):
    """Check a spec and the whole search space; start nothing. Exit 0 if valid, 2 with the errors."""
    from .spec import load_spec

    def action():
        loaded, _ = load_spec(spec, overrides)
        err.print(f"[green]valid[/]: {loaded.name}: {loaded.budget.num_trials} trials of {loaded.model.get('name', 'wcrnn')} "
                  f"on {loaded.task.get('name')}, searching {', '.join(loaded.parameters) or 'nothing'}; "
                  f"objective {loaded.objective.metric} ({loaded.objective.mode})", highlight=False)

    run_guarded(action)


@app.command()
def schema():
    """Print the JSON Schema of sweep specs (for editors: yaml-language-server $schema)."""
    from .spec import spec_json_schema

    print_json(spec_json_schema())


def _run_sweep_command(action):
    """Like run_guarded, and an interrupted sweep exits 130 with how to resume it."""
    from .runner import SweepInterrupted

    try:
        return run_guarded(action)
    except SweepInterrupted as interrupted:
        err.print(f"[yellow]interrupted:[/] {interrupted}", highlight=False)
        raise typer.Exit(130)


def _finish(result, as_json: bool):
    from rich.table import Table

    if as_json:
        print_json(result.to_dict())
        return
    counts = ", ".join(f"{v} {k}" for k, v in sorted(result.counts.items()))
    err.print(f"[bold]sweep {result.name}[/]: {counts}", highlight=False)
    if result.best:
        table = Table(title="best trial", show_header=False)
        table.add_row("trial", result.best["trial_id"])
        table.add_row("MLflow run", result.best["run_id"])
        for key, value in result.best["params"].items():
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        for key in ("val_loss", "val_accuracy", "val_mse", "max_lyapunov"):
            if key in result.best["metrics"]:
                table.add_row(key, f"{result.best['metrics'][key]:.4g}")
        err.print(table)
    err.print(f"report: {result.report_dir}   Ray state: {result.path}", highlight=False)
    if result.tracking_uri.startswith("sqlite"):
        err.print(f"MLflow UI: mlflow ui --backend-store-uri {result.tracking_uri}  (then open http://127.0.0.1:5000)",
                  highlight=False)
    else:
        err.print(f"MLflow: {result.tracking_uri}/#/experiments/{result.experiment_id}", highlight=False)


@app.command()
def run(
    spec: Path = SPEC_ARG,
    address: Optional[str] = typer.Option(None, help="Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: local Ray in-process)."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: the spec's, else sqlite:///mlflow.db here)."),
    storage: Optional[str] = typer.Option(None, help="Where Ray keeps trial state (default: the spec's, else ./wcrnn_runs)."),
    overrides: Optional[List[str]] = SET_OPT,
    report_dir: Optional[Path] = typer.Option(None, help="Where to write the report (default: reports/NAME)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result summary as JSON on stdout."),
):
    """Run a sweep: Ray Tune trials with Optuna search (and ASHA if asked), every trial tracked in MLflow."""
    from .runner import run_sweep
    from .spec import load_spec

    def action():
        loaded, text = load_spec(spec, overrides)
        return run_sweep(loaded, text, address=address, tracking_uri=tracking_uri, storage=storage,
                         report_dir=str(report_dir) if report_dir else None)

    _finish(_run_sweep_command(action), as_json)


@app.command()
def resume(
    sweep: str = typer.Argument(..., help="Sweep name (under --storage) or its Ray experiment directory."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: local Ray)."),
    storage: Optional[str] = typer.Option(None, help="Storage root the sweep ran with (default: ./wcrnn_runs)."),
    report_dir: Optional[Path] = typer.Option(None, help="Where to write the report."),
    as_json: bool = typer.Option(False, "--json", help="Print the result summary as JSON."),
):
    """Continue an interrupted sweep: finished trials are not re-run and the search state is kept."""
    from .runner import resume_sweep

    result = _run_sweep_command(lambda: resume_sweep(sweep, address=address, storage=storage,
                                              report_dir=str(report_dir) if report_dir else None))
    _finish(result, as_json)


@app.command()
def report(
    sweep: str = typer.Argument(..., help="Sweep name (under --storage) or its Ray experiment directory."),
    storage: Optional[str] = typer.Option(None, help="Storage root the sweep ran with (default: ./wcrnn_runs)."),
    out: Optional[Path] = typer.Option(None, help="Folder for the table and plots (default: reports/NAME)."),
    top: int = typer.Option(10, min=1, help="Rows of the best-trials table to print."),
    as_json: bool = typer.Option(False, "--json", help="Print the table and figure paths as JSON."),
):
    """The best trials table and plots (objective vs parameters, Lyapunov vs objective, learning curves, Optuna plots)."""
    from mlflow import MlflowClient
    from rich.table import Table

    from .report import collect_trials, write_report
    from .runner import read_metadata
    from .spec import SweepSpec
    from .tracking import check_tracking_server

    def action():
        metadata = read_metadata(sweep, storage)
        spec = SweepSpec.model_validate(metadata["spec"])
        check_tracking_server(metadata["tracking_uri"])
        client = MlflowClient(metadata["tracking_uri"])
        trials = collect_trials(client, spec, metadata["experiment_id"], metadata["parent_run_id"])
        folder = out or Path("reports") / spec.name
        return spec, folder, write_report(trials, folder, client)

    spec, folder, summary = run_guarded(action)
    if as_json:
        print_json({"name": spec.name, "objective": spec.objective.model_dump(), "report_dir": str(folder), **summary})
        return
    table = Table(title=f"{spec.name}: best trials by {spec.objective.metric} ({spec.objective.mode})")
    columns = ["trial_id", "status", "objective", *spec.parameters, "max_lyapunov", "epoch"]
    for column in columns:
        table.add_column(column.split(".")[-1])
    for row in summary["table"][:top]:
        table.add_row(*[f"{row.get(c):.4g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns])
    err.print(table)
    err.print("figures: " + ", ".join(summary["figures"]), highlight=False)

