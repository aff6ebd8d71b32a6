"""`wcrnn sweep …`: validate, schema, run, resume, report. Thin wrappers over wcrnn.sweep."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..console import err, print_json, run_guarded

app = typer.Typer(help="Hyperparameter sweeps: Ray Tune + Optuna search, tracked in MLflow.", no_args_is_help=True)


@app.callback()
def _every_sweep_command() -> None:
    from .runner import quiet_environment  # before any MLflow import: its usage reports are decided then

    quiet_environment()


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
    finally:
        _shut_down_ray()


def _shut_down_ray() -> None:
    """Stop (or leave) Ray as soon as the sweep is over, if the sweep has not stopped it already
    (stop_ray). Ray's own exit handler would do it later, after sleeping half a second so that its
    workers' last log lines reach the terminal, which they only do with WCRNN_RAY_LOGS set."""
    from .runner import wait_for_ray_to_stop, workers_logs_shown

    wait_for_ray_to_stop()
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized() and not workers_logs_shown():
        ray.shutdown()


def _finish(result, as_json: bool):
    from rich.table import Table

    from .spec import is_local_database

    if as_json:
        print_json(result.to_dict())
        return
    counts = ", ".join(f"{v} {k}" for k, v in sorted(result.counts.items())) or "no trial reported an epoch"
    err.print(f"[bold]sweep {result.name}[/]: {counts}", highlight=False)
    if result.best:
        table = Table(title="best trial", show_header=False)
        table.add_row("trial", result.best["trial_id"])
        table.add_row("MLflow run", result.best["run_id"])
        for key, value in result.best["params"].items():
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        for key in ("val_loss", "val_accuracy", "val_mse", "test_accuracy", "test_mse", "max_lyapunov"):
            if key in result.best["metrics"]:
                table.add_row(key, f"{result.best['metrics'][key]:.4g}")
        err.print(table)
    # soft_wrap: paths and commands stay whole on one line, to copy; a terminal wraps them itself
    err.print(f"report: {result.report_dir}   Ray state: {result.path}", highlight=False, soft_wrap=True)
    if is_local_database(result.tracking_uri):
        err.print(f"MLflow UI: mlflow ui --backend-store-uri {result.tracking_uri}  (then open http://127.0.0.1:5000)",
                  highlight=False, soft_wrap=True)
    else:
        err.print(f"MLflow: {result.tracking_uri}/#/experiments/{result.experiment_id}", highlight=False, soft_wrap=True)


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
    from .runner import run_sweep, workers_logs_shown
    from .spec import load_spec

    def action():
        loaded, text = load_spec(spec, overrides)
        return run_sweep(loaded, text, address=address, tracking_uri=tracking_uri, storage=storage,
                         report_dir=str(report_dir) if report_dir else None, stop_ray=not workers_logs_shown())

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
    from .runner import resume_sweep, workers_logs_shown

    result = _run_sweep_command(lambda: resume_sweep(sweep, address=address, storage=storage,
                                                     report_dir=str(report_dir) if report_dir else None,
                                                     stop_ray=not workers_logs_shown()))
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
    from rich import box
    from rich.console import Console
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
    headers = {"trial_id": "trial", "objective": spec.objective.metric, "max_lyapunov": "λ max"}
    columns = ["trial_id", "status", "objective", *spec.parameters, "max_lyapunov", "epochs"]

    def cell(column: str, value, digits: int) -> str:
        if isinstance(value, float):
            return f"{value:.{digits}g}"
        return str(value).replace("_", " ") if column == "status" else str(value)  # "stopped early" wraps at the space

    def best_trials_table(digits: int, padding: int) -> Table:
        table = Table(title=f"{spec.name}: best trials by {spec.objective.metric} ({spec.objective.mode})",
                      box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, padding=(0, padding))
        for column in columns:
            header = headers.get(column, column.split(".")[-1])
            # A narrow terminal wraps a value onto a second line rather than cutting its digits off.
            table.add_column(header, overflow="fold", min_width=len("finished") if column == "status" else len(header),
                             no_wrap=column == "trial_id")
        for row in summary["table"][:top]:
            table.add_row(*[cell(column, row.get(column, ""), digits) for column in columns])
        return table

    # A file or a pipe has no width to fit: the table goes there whole. A terminal too narrow for it
    # gets three significant digits (every digit is in best_trials.csv) and one space between columns.
    wide = Console(stderr=True, width=10_000)
    table = best_trials_table(4, padding=1)
    if err.is_terminal and wide.measure(table).maximum > err.width:
        table = best_trials_table(3, padding=0)
    (err if err.is_terminal else Console(stderr=True, width=wide.measure(table).maximum)).print(table)
    err.print("figures: " + ", ".join(summary["figures"]), highlight=False, soft_wrap=True)



# -- Ray clusters: submit a sweep as a Ray Job and follow it --------------------------------------

ADDRESS_OPT = typer.Option(None, "--address", help="Ray dashboard / Jobs API, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS).")


@app.command()
def submit(
    spec: Path = SPEC_ARG,
    address: Optional[str] = ADDRESS_OPT,
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow server the cluster logs to (sets MLFLOW_TRACKING_URI for the job)."),
    storage: Optional[str] = typer.Option(None, help="Shared trial storage for all nodes: a shared path or s3://bucket/prefix."),
    overrides: Optional[List[str]] = SET_OPT,
    resume: bool = typer.Option(False, "--resume", help="Continue this spec's sweep (stopped, or its driver lost) "
                                "from the same --storage instead of starting it: finished trials are not re-run."),
    as_json: bool = typer.Option(False, "--json", help="Print job id and URLs as JSON."),
):
    """Validate a spec here, then run it on a Ray cluster as a Ray Job (prints the job id and where to watch)."""
    from .jobs import submit_sweep
    from .spec import load_spec

    def action():
        loaded, _ = load_spec(spec, overrides)
        return submit_sweep(loaded, address, tracking_uri, storage, resume=resume)

    info = run_guarded(action)
    if as_json:
        print_json(info)
        return
    typer.echo(info["job_id"])
    if info.get("warning"):
        err.print(f"[yellow]warning:[/] {info['warning']}", highlight=False)
    err.print(f"submitted sweep as Ray Job {info['job_id']}", highlight=False)
    err.print(f"  Ray dashboard: {info['dashboard']}", highlight=False, soft_wrap=True)
    err.print(f"  MLflow:        {info['mlflow_experiment'] or 'the cluster default MLFLOW_TRACKING_URI'}", highlight=False,
              soft_wrap=True)
    err.print(f"  follow it:     wcrnn sweep logs {info['job_id']} --follow --address ...", highlight=False, soft_wrap=True)


@app.command()
def status(job: str = typer.Argument(..., help="Job id printed by submit."), address: Optional[str] = ADDRESS_OPT,
           as_json: bool = typer.Option(False, "--json", help="Print as JSON.")):
    """Status of a submitted sweep (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    from .jobs import job_status

    info = run_guarded(lambda: job_status(address, job))
    if as_json:
        print_json(info)
    else:
        typer.echo(f"{info['job_id']}: {info['status']}" + (f" ({info['message']})" if info["message"] else ""))


@app.command()
def logs(job: str = typer.Argument(..., help="Job id printed by submit."), address: Optional[str] = ADDRESS_OPT,
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job ends.")):
    """The driver log of a submitted sweep (progress lines, errors)."""
    from .jobs import job_logs

    run_guarded(lambda: job_logs(address, job, follow, write=lambda text, end="": typer.echo(text, nl=False)))


@app.command()
def stop(job: str = typer.Argument(..., help="Job id printed by submit."), address: Optional[str] = ADDRESS_OPT):
    """Stop a submitted sweep (its state stays in storage: `wcrnn sweep resume` on the cluster continues it)."""
    from .jobs import stop_job

    stopped = run_guarded(lambda: stop_job(address, job))
    typer.echo(f"{job}: {'stop requested' if stopped else 'already ended'}")


@app.command("list")
def list_command(address: Optional[str] = ADDRESS_OPT, as_json: bool = typer.Option(False, "--json", help="Print as JSON.")):
    """Sweeps (Ray Jobs) on the cluster, oldest first."""
    from rich.table import Table

    from .jobs import list_jobs

    rows = run_guarded(lambda: list_jobs(address))
    if as_json:
        print_json(rows)
        return
    table = Table("job id", "status", "sweep", "entrypoint")
    for row in rows:
        table.add_row(row["job_id"], row["status"], row["sweep"], row["entrypoint"])
    err.print(table)
