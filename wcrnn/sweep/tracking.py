"""MLflow tracking of a sweep: one parent run, one nested child run per trial.

Everything is logged by the driver from what trials report to Tune, so trials never need
MLflow, and a trial restarted on another node keeps its one MLflow run (found again by its
`wcrnn.trial_id` tag). Writes go through a background thread that batches each epoch into
one `log_batch` call and retries while the server is unreachable, so training and Tune's
event loop never wait on the network.

Child runs carry: every resolved config field as a param (`model.r`, `training.lr`, …), every
epoch's metrics with `step = epoch`, `max_lyapunov`/`mean_lyapunov` and the spectrum as JSON
and PNG artifacts (`lyapunov/`), the best checkpoint so far (`checkpoint/checkpoint.pt`) and
a status tag `wcrnn.status` ∈ {finished, stopped_early, diverged, failed}.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import queue
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from ray.air.constants import EXPR_RESULT_FILE
from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from ..errors import ServiceUnavailable
from .spec import SweepSpec, is_local_database, metric_mode
from .trainable import trial_outcome

log = logging.getLogger("wcrnn.sweep")

STATUS_TAG = "wcrnn.status"
TRIAL_TAG = "wcrnn.trial_id"
SWEEP_TAG = "wcrnn.sweep"
LAST_EPOCH_TAG = "wcrnn.last_epoch"
NODE_TAGS = ("wcrnn.node_ip", "wcrnn.node_id", "wcrnn.device")  # where the trial trains
_NOT_METRICS = set(AUTO_RESULT_KEYS) | {"done", "epoch", "status", "should_checkpoint", "checkpoint_dir_name",
                                        "iterations_since_restore", "time_since_restore", "experiment_tag"}


def trial_runs(client, experiment_id: str, parent_run_id: str, where: str = "", max_results: int = 50_000) -> list:
    """The trial runs of one sweep (the children of its parent run), optionally narrowed by an MLflow
    filter such as `attributes.status = 'RUNNING'`. Deleted runs are left out, as in the MLflow UI."""
    filter_string = f"tags.mlflow.parentRunId = '{parent_run_id}'" + (f" and {where}" if where else "")
    return client.search_runs([experiment_id], filter_string=filter_string, max_results=max_results)


def epoch_record(result: dict, at: float | None = None) -> tuple[int, list, list]:
    """One reported Tune result as MLflow sees it: (epoch, its metrics at step = epoch and time `at`,
    by default now, the run's tags)."""
    from mlflow.entities import Metric, RunTag

    step = int(result.get("epoch", result.get("training_iteration", 0)))
    stamp = int((time.time() if at is None else at) * 1000)
    metrics = [Metric(name, float(value), stamp, step) for name, value in result.items()
               if name not in _NOT_METRICS and isinstance(value, (int, float)) and not isinstance(value, bool)
               and math.isfinite(value)]
    tags = [RunTag(NODE_TAGS[0], str(result.get("node_ip", ""))), RunTag(LAST_EPOCH_TAG, str(step)),
            RunTag(NODE_TAGS[1], str(result.get("node_id", ""))), RunTag(NODE_TAGS[2], str(result.get("device", "")))]
    if result.get("status") == "diverged":
        tags.append(RunTag(STATUS_TAG, "diverged"))
    return step, metrics, tags


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    items: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            items.update(flatten(value, path + "."))
        else:
            items[path] = value
    return items


@contextmanager
def _quick_failure():
    """Make MLflow's HTTP client fail fast instead of retrying for minutes."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_tracking_server(uri: str) -> None:
    """Fail before any trial starts if the tracking store cannot be reached."""
    from mlflow import MlflowClient

    try:
        with _quick_failure():
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:  # connection refused, DNS, auth, bad URI
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ServiceUnavailable(f"tracking.uri: cannot reach the MLflow tracking store at {uri} ({reason}). "
                          "Start the server, fix --tracking-uri, or omit it to use the local database") from None


def use_write_ahead_log(uri: str) -> None:
    """Put a local SQLite tracking database into write-ahead-log mode (SQLite keeps it in the file).

    Every MLflow call is a transaction. With a write-ahead log a commit is one append and one sync
    instead of the rollback journal's several, so the calls a sweep logs take less time, and the
    MLflow UI can read the database while a sweep writes to it. A database that
    cannot switch (another process holds it, a read-only file) keeps working as it is.
    """
    if not is_local_database(uri):
        return
    import sqlite3
    from contextlib import closing

    from sqlalchemy.engine import make_url

    path = make_url(uri).database
    if not path or path == ":memory:" or not Path(path).is_file():
        return
    try:
        with closing(sqlite3.connect(path, timeout=5)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as error:
        log.debug("MLflow database %s stays in its journal mode: %s", path, error)


def log_spectrum_plot(client, run_id: str, spectrum: dict) -> float:
    """Draw a spectrum (as in lyapunov/spectrum.json) into the run's lyapunov/spectrum.png; returns
    the seconds spent drawing."""
    from ..plots import plot_lyapunov_spectrum

    with tempfile.TemporaryDirectory() as folder:
        started = time.monotonic()
        plot_lyapunov_spectrum(spectrum["exponents"], Path(folder) / "spectrum.png", spectrum["spread"],
                               spectrum["predicted"], title=f"Lyapunov spectrum, epoch {spectrum['epoch']}")
        seconds = time.monotonic() - started
        client.log_artifacts(run_id, folder, "lyapunov")
    return seconds


def plot_logged_spectrum(client, run_id: str) -> None:
    """The picture of a run's last logged spectrum, for a trial whose end Tune does not report to
    callbacks (one the time budget stopped), even when the callback is not this process's (resume)."""
    if "lyapunov/spectrum.json" not in {artifact.path for artifact in client.list_artifacts(run_id, "lyapunov")}:
        return
    with tempfile.TemporaryDirectory() as folder:
        logged = client.download_artifacts(run_id, "lyapunov/spectrum.json", folder)
        spectrum = json.loads(Path(logged).read_text())
    log_spectrum_plot(client, run_id, spectrum)


def ensure_experiment(client, name: str, artifact_root: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root)
    except Exception:  # created concurrently by another driver
        return client.get_experiment_by_name(name).experiment_id


class TrackingLost(ServiceUnavailable):
    """The tracking server stayed unreachable longer than tracking.retry_limit_s."""


class _Untracked(Exception):
    """A job for a trial whose MLflow run could not be opened."""


class _Writer:
    """A background thread that applies MLflow calls in order, retrying while the server is down."""

    def __init__(self, client, retry_limit_s: float):
        self.client = client
        self.retry_limit_s = retry_limit_s
        self.jobs: queue.Queue = queue.Queue()
        self.failures: list[str] = []
        self.lost = False  # gave up once: the server is gone for longer than the limit
        self.busy_seconds = 0.0  # time spent in MLflow calls, for the overhead benchmark
        self.exiting = False  # Python is exiting: write what is queued, retry nothing
        self.thread = threading.Thread(target=self._work, name="wcrnn-mlflow-writer", daemon=True)
        self.thread.start()
        atexit.register(self._finish_before_exit)

    def submit(self, job: Callable[[Any], None], what: str) -> None:
        self.jobs.put((job, what))

    def _work(self) -> None:
        while True:
            item = self.jobs.get()
            if item is None:
                self.jobs.task_done()
                return
            job, what = item
            started = deadline = time.monotonic()
            deadline += self.retry_limit_s
            delay = 0.5
            while True:
                if self.lost:
                    self.failures.append(f"{what}: not attempted, the tracking server was lost")
                    break
                try:
                    job(self.client)
                    break
                except _Untracked as error:  # nothing to retry: its run was never opened
                    self.failures.append(f"{what}: {error}")
                    break
                except Exception as error:  # network errors, server restarts
                    if self.exiting:  # no one is left to wait for a retry
                        self.failures.append(f"{what}: {error} (not retried: the process was exiting)")
                        break
                    if time.monotonic() + delay > deadline:
                        self.failures.append(f"{what}: {error}")
                        self.lost = True
                        log.error("MLflow: giving up on %s after %.0f s: %s", what, self.retry_limit_s, error)
                        break
                    time.sleep(delay)  # back off before retrying an unreachable server
                    delay = min(delay * 2, 10.0)
            self.busy_seconds += time.monotonic() - started
            self.jobs.task_done()

    def flush(self) -> None:
        self.jobs.join()

    def close(self) -> None:
        atexit.unregister(self._finish_before_exit)
        self.jobs.put(None)
        self.thread.join(timeout=max(self.retry_limit_s, 30) + 5)

    def _finish_before_exit(self) -> None:
        """Left open by an error: Python stops daemon threads abruptly at exit, and one drawing a plot
        (matplotlib's C++ code) then crashes the process, burying the error; what is queued is written first."""
        self.exiting = True
        self.jobs.put(None)
        self.thread.join(timeout=60)


class SweepTracker:
    """Driver-side MLflow access for one sweep: the parent run and its finishing touches."""

    def __init__(self, uri: str, spec: SweepSpec):
        self.uri = uri
        self.spec = spec

    @property
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.uri)

    def start(self, spec_text: str, ray_address: str, code_version: str, artifact_root: str | None) -> tuple[str, str]:
        """Create the experiment (if needed) and the sweep's parent run; returns (experiment_id, run_id)."""
        from mlflow.entities import Param, RunTag

        client = self.client
        experiment_id = ensure_experiment(client, self.spec.experiment_name, artifact_root)
        run = client.create_run(experiment_id, run_name=self.spec.name, tags={
            SWEEP_TAG: self.spec.name, "wcrnn.role": "sweep", "wcrnn.spec_hash": self.spec.spec_hash(),
            "wcrnn.code_version": code_version, "wcrnn.ray_address": ray_address,
            "mlflow.note.content": self.spec.description or f"wcrnn sweep {self.spec.name}"})
        run_id = run.info.run_id
        searched = {f"search.{k}": json.dumps(v.model_dump()) for k, v in self.spec.search_space.items()}
        params = [Param(k, str(v)[:6000]) for k, v in {
            "task": self.spec.task.get("name"), "model": self.spec.model.get("name", "wcrnn"),
            "objective": f"{self.spec.objective.metric} ({self.spec.objective.mode})",
            "num_trials": self.spec.budget.num_trials, "max_epochs": self.spec.budget.max_epochs,
            "search": self.spec.search.algorithm, "scheduler": self.spec.scheduler.kind, **searched}.items()]
        client.log_batch(run_id, params=params[:100], tags=[RunTag("wcrnn.trials", str(self.spec.budget.num_trials))])
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "spec.yaml"
            path.write_text(spec_text, encoding="utf-8")
            client.log_artifact(run_id, str(path))
        return experiment_id, run_id


class MLflowTrialCallback(Callback):
    """Tune callback: logs every trial as a nested child run of the sweep's parent run."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, spec_json: str,
                 retry_limit_s: float = 600.0):
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.spec_json = spec_json
        self.retry_limit_s = retry_limit_s
        self.run_ids: dict[str, str] = {}  # trial_id -> MLflow run id
        self.best: dict[str, float] = {}  # trial_id -> best checkpoint metric so far
        self.last: dict[str, dict] = {}  # trial_id -> last result
        self.tracking_seconds = 0.0  # time the tracking writer was busy (this driver session), rendering included
        self.rendering_seconds = 0.0  # of which drawing plots for MLflow
        self.last_spectrum: dict[str, dict] = {}  # trial_id -> last Lyapunov spectrum, plotted when the trial ends
        self._opening: set[str] = set()  # trials whose run-opening job is queued
        self.logged_through: dict[str, int] = {}  # trial_id -> last epoch whose metrics are in MLflow
        self.node_logged: dict[str, dict] = {}  # trial_id -> the node tags MLflow has (sent again only when they change)
        # Made for a new sweep, whose trials have no MLflow runs to look for yet. Every MLflow call costs
        # the driver milliseconds of CPU beside the trials; a callback restored from Tune's state looks.
        self._new_sweep = True
        self._failures: list[str] = []  # writes given up on, kept after the writer closes
        self._lost = False
        self._writer: _Writer | None = None
        self._spec: SweepSpec | None = None

    # Tune pickles callbacks with the experiment; threads, clients and the parsed spec are rebuilt on demand.
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_writer"] = state["_spec"] = None
        state["_opening"], state["_failures"], state["_lost"] = set(), [], False
        state["_new_sweep"], state["node_logged"] = False, {}  # unpickled: a resumed sweep
        return state

    @property
    def spec(self) -> SweepSpec:
        # Parsing validates the whole search space: do it once, not on every Tune event.
        if self._spec is None:
            self._spec = SweepSpec.model_validate_json(self.spec_json)
        return self._spec

    @property
    def writer(self) -> _Writer:
        if self._writer is None:
            from mlflow import MlflowClient

            self._writer = _Writer(MlflowClient(self.uri), self.retry_limit_s)
        return self._writer

    def get_state(self):
        return {"best": dict(self.best), "last_spectrum": dict(self.last_spectrum)}

    def set_state(self, state):
        # Run ids are not restored: Tune saves this state every few seconds, so after a crash it can
        # be behind MLflow. Each trial finds its run again by its tag (see _open_run) and reads which
        # epochs MLflow already has.
        self.best.update(state.get("best", {}))
        self.last_spectrum.update(state.get("last_spectrum", {}))

    # -- trial lifecycle -------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info):
        self._open_run(trial)

    def on_trial_restore(self, iteration, trials, trial, **info):
        key = self._open_run(trial)
        stamp = str(int(time.time()))
        self._submit(key, lambda c, run_id: c.set_tag(run_id, "wcrnn.restored_at", stamp), "restore tag")

    def on_trial_recover(self, iteration, trials, trial, **info):
        key = self._open_run(trial)
        failures = str(getattr(trial.run_metadata, "num_failures", 0))
        self._submit(key, lambda c, run_id: c.set_tag(run_id, "wcrnn.restarts", failures), "restart tag")

    def _open_run(self, trial) -> str:
        """Make sure the trial has its MLflow run (found again after a resume, else created) and return
        the key its jobs find the run id by. Opening is itself a queued job, so that an unreachable
        server never blocks Tune's event loop: the trial trains on while the writer retries."""
        key = trial.trial_id
        if key in self.run_ids or key in self._opening:
            return key
        self._opening.add(key)
        name, sampled = str(trial), dict(trial.config)
        # A trial restored from Tune's saved state (a resumed sweep) has its saved results in storage.
        saved_results = (trial.storage.storage_filesystem, Path(trial.path, EXPR_RESULT_FILE).as_posix()) \
            if trial.checkpoint is not None else None
        may_have_a_run = saved_results is not None or not self._new_sweep

        def job(client):
            existing = trial_runs(client, self.experiment_id, self.parent_run_id, f"tags.{TRIAL_TAG} = '{key}'", 1) \
                if may_have_a_run else []
            if existing:  # after a resume: continue the same run, after the epochs it already has
                run_id = existing[0].info.run_id
                client.update_run(run_id, status="RUNNING")
                logged = {m.step for m in client.get_metric_history(run_id, self.spec.objective.metric)}
            else:
                run_id = client.create_run(self.experiment_id, run_name=name, tags={
                    "mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: key, SWEEP_TAG: self.spec.name,
                    "wcrnn.role": "trial", STATUS_TAG: "running"}).info.run_id
                self._log_params(client, run_id, sampled)
                logged = set()
            if saved_results is not None:
                self._log_saved_epochs(client, run_id, *saved_results, logged)
            self.logged_through[key] = max(logged, default=0)
            self.run_ids[key] = run_id

        self.writer.submit(job, f"the run of trial {key}")
        return key

    @staticmethod
    def _log_saved_epochs(client, run_id: str, filesystem, path: str, logged: set[int]) -> None:
        """Log the epochs in Ray Tune's saved results of a restored trial that MLflow lacks, and add
        them to `logged`. A driver killed outright loses the writes still queued for MLflow, and the
        trial, restored from the checkpoint Tune saved with those results, never reports them again."""
        try:
            with filesystem.open_input_stream(path) as stream:
                lines = stream.read().decode("utf-8", errors="replace").splitlines()
        except OSError as error:  # nothing saved (restarted from scratch) or storage unreadable: nothing to add
            log.debug("no saved results at %s: %s", path, error)
            return
        for line in lines:
            try:
                result = json.loads(line)
            except json.JSONDecodeError:  # the last line of a file cut off mid-write
                continue
            step, metrics, tags = epoch_record(result, at=result.get("timestamp"))  # when it was trained
            if step < 1 or step in logged:
                continue
            newest = step > max(logged, default=0)  # tags describe the newest epoch only
            client.log_batch(run_id, metrics=metrics, tags=tags if newest else [])
            logged.add(step)

    def _submit(self, key: str, job: Callable[[Any, str], None], what: str) -> None:
        """Queue `job(client, run_id)` for the trial's run, after the job that opens it."""

        def with_run_id(client):
            if key not in self.run_ids:
                raise _Untracked(f"trial {key} has no MLflow run (opening it failed)")
            job(client, self.run_ids[key])

        self.writer.submit(with_run_id, f"{what} of trial {key}")

    def _log_params(self, client, run_id: str, sampled: dict) -> None:
        from mlflow.entities import Param, RunTag

        resolved = self.spec.trial_run_config(sampled).model_dump(mode="json")
        params = [Param(key, json.dumps(value) if isinstance(value, (list, dict)) else str(value))
                  for key, value in flatten(resolved).items()]
        tags = [RunTag("wcrnn.sampled", json.dumps(sampled, sort_keys=True))]
        for start in range(0, len(params), 100):
            client.log_batch(run_id, params=params[start:start + 100], tags=tags if start == 0 else [])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._raise_if_tracking_lost()
        key = self._open_run(trial)
        self.last[key] = result
        step, metrics, tags = epoch_record(result)
        notice = result.get("checkpoint_notice")

        def job(client, run_id):
            if notice:
                client.set_tag(run_id, "wcrnn.checkpoint_notice", str(notice)[:5000])
            # A trial restored from a checkpoint older than its last logged epoch (a lost worker, a
            # driver killed between a report and Tune's next state save, a corrupt checkpoint)
            # reports those epochs again: MLflow keeps the first report of each.
            if step <= self.logged_through.get(key, 0):
                return
            node = {tag.key: tag.value for tag in tags if tag.key in NODE_TAGS}
            unchanged = self.node_logged.get(key) == node
            client.log_batch(run_id, metrics=metrics, tags=[tag for tag in tags if not (unchanged and tag.key in NODE_TAGS)])
            self.logged_through[key] = step
            self.node_logged[key] = node

        self._submit(key, job, f"epoch {step}")
        if result.get("lyapunov_spectrum"):
            self._log_spectrum(key, step, result)

    def _log_spectrum(self, key: str, step: int, result: dict) -> None:
        # Data every time it is measured; the picture once, when the trial ends (_plot_last_spectrum):
        # rendering is most of the tracking cost, and only the final spectrum is looked at in the UI.
        spectrum = {"epoch": step, "exponents": result["lyapunov_spectrum"],
                    "spread": result.get("lyapunov_spread"), "predicted": result.get("lyapunov_predicted"),
                    "max_exponent": result.get("max_lyapunov"), "mean_exponent": result.get("mean_lyapunov")}
        self.last_spectrum[key] = spectrum

        def job(client, run_id):
            with tempfile.TemporaryDirectory() as folder:
                for name in (f"spectrum_epoch{step:04d}", "spectrum"):
                    (Path(folder) / f"{name}.json").write_text(json.dumps(spectrum, indent=1))
                client.log_artifacts(run_id, folder, "lyapunov")

        self._submit(key, job, "Lyapunov spectrum")

    def _plot_last_spectrum(self, client, key: str, run_id: str) -> None:
        spectrum = self.last_spectrum.get(key)
        if spectrum is not None:
            self.rendering_seconds += log_spectrum_plot(client, run_id, spectrum)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        spec = self.spec
        result = self.last.get(trial.trial_id, {})
        metric = spec.checkpoint_metric
        value = result.get(metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        sign = 1 if metric_mode(metric) == "max" else -1
        best = self.best.get(trial.trial_id)
        if best is not None and sign * value <= sign * best:
            return
        self.best[trial.trial_id] = value
        key = self._open_run(trial)
        folder = tempfile.mkdtemp(prefix="wcrnn-ckpt-")
        checkpoint.to_directory(folder)  # copy now: Tune may delete it once better ones exist
        epoch = str(result.get("epoch", ""))

        def job(client, run_id):
            client.log_artifacts(run_id, folder, "checkpoint")
            client.set_tag(run_id, "wcrnn.checkpoint_epoch", epoch)
            shutil.rmtree(folder, ignore_errors=True)  # kept until logged: a retry needs it

        self._submit(key, job, "checkpoint")

    def on_trial_complete(self, iteration, trials, trial, **info):
        key = self._open_run(trial)
        status = trial_outcome(self.last.get(key, trial.last_result or {}), self.spec.budget.max_epochs)

        def job(client, run_id):
            self._plot_last_spectrum(client, key, run_id)
            client.set_tag(run_id, STATUS_TAG, status)
            client.set_terminated(run_id, "FINISHED")

        self._submit(key, job, "completion")

    def on_trial_error(self, iteration, trials, trial, **info):
        key = self._open_run(trial)
        message = ""
        error_file = getattr(trial, "error_file", None)
        if error_file and os.path.exists(error_file):
            message = Path(error_file).read_text(errors="replace")[-4000:]

        def job(client, run_id):
            self._plot_last_spectrum(client, key, run_id)
            client.set_tag(run_id, STATUS_TAG, "failed")
            if message:
                client.set_tag(run_id, "wcrnn.error", message[-5000:])
            client.set_terminated(run_id, "FAILED")

        self._submit(key, job, "failure")

    @property
    def tracking_lost(self) -> bool:
        return self._lost or (self._writer is not None and self._writer.lost)

    def lost_error(self) -> TrackingLost:
        failures = self.failures
        return TrackingLost(
            f"MLflow at {self.uri} was unreachable for more than {self.retry_limit_s:.0f} s "
            f"(tracking.retry_limit_s), so the sweep stopped; {len(failures)} writes were not recorded"
            + (f" (first: {failures[0]})" if failures else "")
            + f". Bring the server back, then continue with `wcrnn sweep resume {self.spec.name}`.")

    def _raise_if_tracking_lost(self) -> None:
        if self.tracking_lost:
            raise self.lost_error()

    def on_experiment_end(self, trials, **info):
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self.tracking_seconds += self._writer.busy_seconds
            self._failures += self._writer.failures
            self._lost = self._lost or self._writer.lost
            self._writer = None

    @property
    def failures(self) -> list[str]:
        return self._failures + ([] if self._writer is None else list(self._writer.failures))
