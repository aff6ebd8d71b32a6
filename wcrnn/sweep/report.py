"""What a sweep found, read back from MLflow: the best trials table and plots.

`finish_parent_run` runs at the end of every sweep (best trial's params and metrics on the
parent run, plots as its artifacts); `write_report` is what `wcrnn sweep report` does.
Figures: objective vs each swept parameter, Lyapunov exponent vs objective, learning curves,
and Optuna's parameter importance, parallel coordinates and optimisation history.
"""

from __future__ import annotations

import json
import math
import sys
import types
import warnings
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path

from ..plots import plot_curves, save_figure, value_scale
from .spec import SweepSpec
from .tracking import LAST_EPOCH_TAG, STATUS_TAG, TRIAL_TAG, trial_runs


@dataclass
class TrialRecord:
    run_id: str
    trial_id: str
    status: str
    params: dict  # the sampled values, keyed by dotted path
    metrics: dict  # last value of every metric
    objective: float | None
    epochs: int | None  # epochs trained (fewer than max_epochs when ASHA stopped it)

    def row(self) -> dict:
        return {"trial_id": self.trial_id, "run_id": self.run_id, "status": self.status,
                "objective": self.objective, **self.params,
                **{k: self.metrics.get(k) for k in ("max_lyapunov", "mean_lyapunov")},
                **{k: v for k, v in sorted(self.metrics.items()) if k.startswith("test_")}, "epochs": self.epochs}


@dataclass
class SweepTrials:
    spec: SweepSpec
    trials: list[TrialRecord] = field(default_factory=list)

    @property
    def sign(self) -> int:
        return -1 if self.spec.objective.mode == "min" else 1

    def ranked(self) -> list[TrialRecord]:
        usable = [t for t in self.trials if t.objective is not None and math.isfinite(t.objective)]
        return sorted(usable, key=lambda t: -self.sign * t.objective)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for trial in self.trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        return counts


def collect_trials(client, spec: SweepSpec, experiment_id: str, parent_run_id: str) -> SweepTrials:
    records = []
    for run in trial_runs(client, experiment_id, parent_run_id):
        sampled = json.loads(run.data.tags.get("wcrnn.sampled", "{}"))
        metrics = dict(run.data.metrics)
        last_epoch = run.data.tags.get(LAST_EPOCH_TAG, "")
        records.append(TrialRecord(run.info.run_id, run.data.tags.get(TRIAL_TAG, ""),
                                   run.data.tags.get(STATUS_TAG, run.info.status.lower()), sampled, metrics,
                                   metrics.get(spec.objective.metric), int(last_epoch) if last_epoch.isdigit() else None))
    records.sort(key=lambda r: r.trial_id)
    return SweepTrials(spec, records)


def finish_parent_run(client, spec: SweepSpec, metadata: dict, report_dir: str | None = None) -> dict:
    """Put the best trial's params and metrics and the plots on the parent run, then close it."""
    from mlflow.entities import Metric, Param, RunTag

    parent = metadata["parent_run_id"]
    trials = collect_trials(client, spec, metadata["experiment_id"], parent)
    folder = Path(report_dir or Path("reports") / spec.name)
    summary = write_report(trials, folder, client)
    ranked = trials.ranked()
    best = {}
    if ranked:
        top = ranked[0]
        best = {"run_id": top.run_id, "trial_id": top.trial_id, "params": top.params,
                "metrics": {k: v for k, v in top.metrics.items()}}
        existing = set(client.get_run(parent).data.params)
        params = [Param(f"best.{k}", str(v)) for k, v in top.params.items() if f"best.{k}" not in existing]
        metrics = [Metric(f"best_{k}", float(v), 0, 0) for k, v in top.metrics.items()
                   if isinstance(v, (int, float)) and math.isfinite(v)]
        client.log_batch(parent, params=params[:100], metrics=metrics[:1000],
                         tags=[RunTag("wcrnn.best_trial_id", top.trial_id), RunTag("wcrnn.best_run_id", top.run_id)])
    counts = trials.counts()
    client.log_batch(parent, tags=[RunTag(f"wcrnn.trials_{k}", str(v)) for k, v in counts.items()]
                     + [RunTag(STATUS_TAG, "finished")])
    client.log_artifacts(parent, str(folder), "report")
    client.set_terminated(parent, "FINISHED")
    return {"counts": counts, "best": best, "report_dir": str(folder), **summary}


def write_report(trials: SweepTrials, folder: Path, client=None) -> dict:
    """Write best_trials.json/.csv and the figures into `folder`; returns the table and figure paths."""
    folder.mkdir(parents=True, exist_ok=True)
    ranked = trials.ranked()
    rows = [t.row() for t in ranked] + [t.row() for t in trials.trials if t not in ranked]
    (folder / "best_trials.json").write_text(json.dumps(rows, indent=1, default=str))
    _write_csv(rows, folder / "best_trials.csv")
    figures = [p for p in (_objective_vs_parameters(trials, folder), _lyapunov_vs_objective(trials, folder),
                           learning_curves(client, trials, folder) if client is not None else None,
                           *_optuna_figures(trials, folder)) if p is not None]
    return {"table": rows, "figures": [str(p) for p in figures]}


def learning_curves(client, trials: SweepTrials, folder: Path) -> Path | None:
    metric = trials.spec.objective.metric
    curves = {}
    for trial in trials.trials:
        history = client.get_metric_history(trial.run_id, metric)
        if history:
            curves[trial.trial_id] = sorted((m.step, m.value) for m in history)
    if not curves:
        return None
    return plot_curves(curves, folder / "learning_curves.png", ylabel=metric, title="Learning curves")


def _write_csv(rows: list[dict], path: Path) -> None:
    import csv

    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _objective_vs_parameters(trials: SweepTrials, folder: Path) -> Path | None:
    import matplotlib.pyplot as plt

    parameters = list(trials.spec.parameters)
    usable = trials.ranked()
    if not parameters or not usable:
        return None
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    figure, axes = plt.subplots(1, len(parameters), figsize=(3.2 * len(parameters), 3), squeeze=False)
    for axis, path in zip(axes[0], parameters):
        points = [(t.params[path], t.objective) for t in usable if path in t.params]
        distribution = trials.spec.parameters[path]
        if points and distribution.distribution == "categorical":
            # one evenly spaced place per choice, in the spec's order (heads 1, 4, 32 side by side),
            # an untried choice included
            labels = [str(choice) for choice in distribution.choices]
            axis.scatter([labels.index(str(x)) for x, _ in points], [y for _, y in points], s=14)
            axis.set_xticks(range(len(labels)), labels)
        elif points:
            axis.scatter(*zip(*points), s=14)
            if distribution.distribution == "loguniform":
                # ticks at 1, 2 and 5 per decade (each decade, over wider ranges), written as plain
                # numbers: matplotlib labels every minor tick of a range under a decade as a×10^b,
                # and the labels run into each other
                values = [x for x, _ in points]
                decades = math.log10(max(values) / min(values))
                axis.set_xscale("log")
                axis.xaxis.set_major_locator(LogLocator(subs=(1.0,) if decades > 1.5 else (1.0, 2.0, 5.0)))
                axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
                axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set(xlabel=path.split(".")[-1], ylabel=trials.spec.objective.metric,
                 yscale=value_scale([t.objective for t in usable]))
    return save_figure(figure, folder / "objective_vs_parameters.png")


def _lyapunov_vs_objective(trials: SweepTrials, folder: Path) -> Path | None:
    import matplotlib.pyplot as plt

    points = [(t.metrics["max_lyapunov"], t.objective) for t in trials.ranked() if "max_lyapunov" in t.metrics]
    if not points:
        return None
    figure, axis = plt.subplots(figsize=(4.5, 3.5))
    axis.scatter(*zip(*points), s=14)
    axis.axvline(0, color="grey", lw=0.8, ls="--")
    axis.set(xlabel="largest Lyapunov exponent", ylabel=trials.spec.objective.metric,
             title="Memory (λ_max) vs objective", yscale=value_scale([y for _, y in points]))
    return save_figure(figure, folder / "lyapunov_vs_objective.png")


def import_optuna_plots():
    """optuna.visualization.matplotlib, with optuna.importance imported but scikit-learn not yet.

    `import optuna.importance` imports scikit-learn's random forest for two of its evaluators,
    fANOVA and mean decrease impurity: 2.5 s of CPU on a 2-core build machine, the largest import
    of a sweep's driver, whose start-up is bound by its CPUs. The report's importance plot uses
    PED-ANOVA (Optuna's default), which needs no scikit-learn. So while optuna.importance is first
    imported, `sklearn.ensemble` is a placeholder whose classes import the real ones when they are
    called: the two evaluators still work, and pay for scikit-learn when they are created."""
    if "optuna.importance" not in sys.modules and "sklearn.ensemble" not in sys.modules:
        placeholder = types.ModuleType("sklearn.ensemble")

        def deferred(name: str):
            if name.startswith("_"):  # __path__, __spec__, ...: the import system's questions
                raise AttributeError(name)

            def construct(*args, **kwargs):
                return getattr(import_module("sklearn.ensemble"), name)(*args, **kwargs)
            return construct

        placeholder.__getattr__ = deferred
        sys.modules["sklearn.ensemble"] = placeholder
        try:
            import_module("optuna.importance")
        finally:
            if sys.modules.get("sklearn.ensemble") is placeholder:
                del sys.modules["sklearn.ensemble"]
    return import_module("optuna.visualization.matplotlib")


def _optuna_figures(trials: SweepTrials, folder: Path) -> list[Path]:
    """Optuna's own plots, from a study rebuilt from the MLflow runs."""
    import optuna

    optuna_plots = import_optuna_plots()
    from .space import optuna_distribution

    spec = trials.spec
    distributions = {path: optuna_distribution(dist) for path, dist in spec.parameters.items()}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "a new study created in memory" is not news here
    try:
        study = optuna.create_study(direction="minimize" if spec.objective.mode == "min" else "maximize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    for trial in trials.ranked():
        params = {k: v for k, v in trial.params.items() if k in distributions}
        study.add_trial(optuna.trial.create_trial(params=params, value=trial.objective,
                                                  distributions={k: distributions[k] for k in params}))
    paths = []
    plots = [("optimization_history", optuna_plots.plot_optimization_history, 1),
             ("parallel_coordinates", optuna_plots.plot_parallel_coordinate, 2),
             ("param_importances", optuna_plots.plot_param_importances, 3)]
    for name, plot, minimum in plots:
        if len(study.trials) < minimum or (name != "optimization_history" and not distributions):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue  # e.g. importance needs parameters that vary across trials
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        figure.set_size_inches(7, 4.5)
        paths.append(save_figure(figure, folder / f"{name}.png"))
    return paths


