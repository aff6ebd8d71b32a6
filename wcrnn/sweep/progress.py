"""Live progress of a sweep in the terminal: trials running/finished/stopped/failed and the best so far.

In a terminal it is one Rich status line that updates in place; in a log (CI, Ray Jobs) it
prints a line whenever a trial starts or ends.
"""

from __future__ import annotations

import math

from ray.tune import Callback
from rich.console import Console
from rich.text import Text

from .spec import SweepSpec
from .trainable import trial_outcome


class ProgressCallback(Callback):
    def __init__(self, spec: SweepSpec):
        self.total = spec.budget.num_trials
        self.max_epochs = spec.budget.max_epochs
        self.metric, self.mode = spec.objective.metric, spec.objective.mode
        self.status: dict[str, str] = {}  # trial_id -> running/finished/stopped/diverged/failed
        self.best: tuple[float, str] | None = None
        self.last: dict[str, dict] = {}
        self._console = None
        self._live = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_console"] = state["_live"] = None
        return state

    def _count_ended_trials(self, trials) -> None:
        """Trials that ended before a resume fire no events in it, nor do those that the time budget
        stops: count them, and their best value, from Tune's record."""
        for trial in trials:
            if self.status.get(trial.trial_id, "running") != "running" or trial.status not in ("TERMINATED", "ERROR"):
                continue
            outcome = "failed" if trial.status == "ERROR" else trial_outcome(trial.last_result, self.max_epochs)
            self.status[trial.trial_id] = outcome.replace("stopped_early", "stopped")
            self._consider(trial.metric_analysis.get(self.metric, {}).get(self.mode), trial)

    def _consider(self, value, trial) -> None:
        if isinstance(value, (int, float)) and math.isfinite(value):
            better = self.best is None or (value < self.best[0] if self.mode == "min" else value > self.best[0])
            if better:
                self.best = (float(value), str(trial))

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = Console(stderr=True)
        return self._console

    def line(self) -> str:
        counts = {s: sum(1 for v in self.status.values() if v == s)
                  for s in ("running", "finished", "stopped", "diverged", "failed")}
        done = sum(counts.values()) - counts["running"]
        best = f"best {self.metric}={self.best[0]:.4g} ({self.best[1]})" if self.best else "best: none yet"
        return (f"trials {done}/{self.total} done · {counts['running']} running · {counts['finished']} finished · "
                f"{counts['stopped']} stopped early · {counts['diverged']} diverged · {counts['failed']} failed · {best}")

    def _show(self, event: str | Text | None = None) -> None:
        event = Text(event) if isinstance(event, str) else event  # trial names and paths are not Rich markup
        if self.console.is_terminal:
            if self._live is None:
                from rich.live import Live

                self._live = Live(self.line(), console=self.console, refresh_per_second=4, transient=False)
                self._live.start()
            if event:
                self._live.console.print(event, highlight=False)
            self._live.update(self.line())
        elif event:
            self.console.print(event.append(f"  [{self.line()}]"), highlight=False, soft_wrap=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._count_ended_trials(trials)
        self.status[trial.trial_id] = "running"
        self._show(f"started {trial}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = result
        self._consider(result.get(self.metric), trial)
        notice = result.get("checkpoint_notice")
        self._show(Text.assemble(("warning:", "yellow"), f" {trial}: {notice}") if notice else None)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = self.last.get(trial.trial_id, {})
        status = trial_outcome(result, self.max_epochs).replace("stopped_early", "stopped")
        self.status[trial.trial_id] = status
        value = result.get(self.metric)
        shown = f"{value:.4g}" if isinstance(value, float) else value
        epochs = result.get("epoch", 0)
        self._show(f"{status} {trial} after {epochs} epoch{'' if epochs == 1 else 's'}: {self.metric}={shown}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.status[trial.trial_id] = "failed"
        self._show(f"failed {trial}: see {getattr(trial, 'error_file', None) or 'the trial log'}")

    def on_experiment_end(self, trials, **info):
        self._count_ended_trials(trials)
        if self._live is not None:
            self._live.update(self.line())
            self._live.stop()
            self._live = None
        else:
            self.console.print(self.line(), highlight=False, soft_wrap=True)
