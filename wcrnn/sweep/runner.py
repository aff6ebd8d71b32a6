"""Run and resume sweeps: a validated spec → Ray Tune + OptunaSearch (+ ASHA) → MLflow.

    result = run_sweep(spec, spec_text)                       # embedded: local Ray, ./mlflow.db, ./wcrnn_runs
    result = run_sweep(spec, spec_text, address="auto", tracking_uri="http://mlflow:5000")
    result = resume_sweep("my-sweep")                         # after an interruption

`stop_ray=True` shuts Ray down once the trials are over, while the report is drawn: for a process
with no more use for Ray, like `wcrnn sweep run`.

The driver loads a task read from files once and hands it to every trial through Ray's object
store (a generated task is made by each trial process instead, so the driver never imports PyTorch),
creates the MLflow parent run, and records how to find everything again in
`<storage>/<name>/wcrnn-sweep.json`, which `resume` and `report` read.
"""

from __future__ import annotations

import atexit
import gc
import json
import logging
import os
import subprocess
import threading
from concurrent.futures import Future, wait
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from ..errors import ConfigError, ServiceUnavailable
from ..tasks.config import TaskConfigAdapter
from .spec import SweepSpec, is_local_database, metric_mode

# Ray Tune, MLflow and Optuna (seconds of imports) are imported where they are used: a sweep
# starts Ray first and imports them while Ray starts (see _start_ray_while_loading).
if TYPE_CHECKING:
    from ..tasks import Task
    from .tracking import MLflowTrialCallback

METADATA_FILE = "wcrnn-sweep.json"
DEFAULT_STORAGE = "wcrnn_runs"


@dataclass
class SweepResult:
    name: str
    path: str  # the Ray experiment directory
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    counts: dict = field(default_factory=dict)  # status -> number of trials
    best: dict = field(default_factory=dict)  # best trial: run_id, trial_id, params, metrics
    report_dir: str | None = None
    trial_seconds: float = 0.0  # sum of the trials' own run times (Tune's time_total_s)
    tracking_seconds: float = 0.0  # time the driver spent on MLflow logging, rendering included (0 after a resume)
    rendering_seconds: float = 0.0  # of which drawing plots for MLflow

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def default_tracking_uri(directory: str | Path | None = None) -> str:
    """The embedded default: an SQLite database in the working directory."""
    return f"sqlite:///{Path(directory or os.getcwd()).resolve() / 'mlflow.db'}"


def storage_root(storage: str | None, spec: SweepSpec | None = None) -> str:
    root = storage or (spec.storage.path if spec else None) or os.environ.get("WCRNN_STORAGE") or DEFAULT_STORAGE
    if "://" in root:
        return root
    return str(Path(root).expanduser().resolve())


def storage_filesystem(root: str):
    """(path, pyarrow filesystem or None) for Ray's storage_path/storage_filesystem.

    `s3://bucket/prefix` with WCRNN_S3_ENDPOINT set (MinIO, Ceph, …) gets an S3FileSystem with
    that endpoint, because pyarrow ignores AWS_ENDPOINT_URL; credentials come from the usual
    AWS_* variables. Anything else is left to Ray (local paths, s3://, gs://, …).
    """
    endpoint = os.environ.get("WCRNN_S3_ENDPOINT")
    if root.startswith("s3://") and endpoint:
        import pyarrow.fs

        parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
        filesystem = pyarrow.fs.S3FileSystem(
            endpoint_override=parsed.netloc, scheme=parsed.scheme,
            access_key=os.environ.get("AWS_ACCESS_KEY_ID"), secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
        return root[len("s3://"):], filesystem
    return root, None


def _open_storage(path: str):
    """(pyarrow filesystem, path inside it) for reading and writing the sweep's metadata file."""
    import pyarrow.fs

    inner, filesystem = storage_filesystem(path)
    if filesystem is not None:
        return filesystem, inner
    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def code_version() -> str:
    from .. import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def quiet_environment() -> None:
    """The settings of quiet_libraries that are environment variables: set before Ray starts, so that
    Ray's processes inherit them."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter honours verbose=0
    # Tune's own result files are passed as callbacks (result.json, which resume reads, and
    # progress.csv), not its TensorBoard files: tensorboardX imports PyTorch into the driver, a
    # second of CPU in the start-up, and MLflow has every metric. Set to 0 to have them too.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout is for --json
    # MLflow 3 reports its use to its developers' servers from every process that imports it (read
    # at the import); a sweep sends nothing anywhere but its own tracking store, as the cluster files
    # keep Ray's usage stats off (here too). MLFLOW_DISABLE_TELEMETRY=false sends them.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # The tracking writer retries on its own clock (tracking.retry_limit_s). MLflow's default of 7
    # retries with exponential backoff holds one call for minutes and would hide an outage from it.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def quiet_libraries() -> None:
    """Our progress line replaces Tune's tables; keep library chatter out of the terminal."""
    quiet_environment()
    import mlflow  # noqa: F401  (its import sets its loggers to INFO; lower them after)
    import optuna

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A diverged trial reports inf, and Tune's TensorBoard logger then warns "NaN or Inf found in
    # input tensor." with no trial named; the progress line already says which trial diverged.
    logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)


# Ray Tune gives every trial actor a runtime environment: these variables copied from the driver,
# and PL_DISABLE_FORK for PyTorch Lightning (which trials do not use). Two of our own rules override it:
# - Credentials: Ray's runtime-env agent writes a runtime environment to its log in clear text.
#   Trials get credentials the way every other process on a node does: from the environment Ray
#   was started with (inherited from this driver when it starts Ray itself; set on cluster nodes).
# - Speed: a trial whose runtime environment is empty starts in one of the worker processes that
#   ray.init already started, where TRIAL_MODULES (about 4 s of Ray Tune and PyTorch imports) were
#   imported while the driver set up MLflow and Tune; any other environment starts a new process.
CREDENTIALS_NOT_PROPAGATED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")
TRIAL_MODULES = ("ray.tune", "wcrnn.train", "wcrnn.sweep.trainable")  # the trainable itself imports no PyTorch

# The settings of a Ray that a sweep starts itself:
# - its prestarted workers import TRIAL_MODULES (see above), and the raylet starts them as soon as it
#   is up (enable_worker_prestart), not when the driver connects (Ray's default), which a driver
#   importing beside ray.init does late: the first trials started 0.3 s sooner (median of 12
#   interleaved pairs of small sweeps in one process on 2 cores, sooner in 9);
# - the raylet connects to its own object store by retrying every raylet_client_connect_timeout_milliseconds
#   (Ray's default: 10 tries, 1 s apart). In about half the starts on 2 cores the store was not
#   listening yet at the first try, and `ray.init` took a whole second longer (3.5-3.7 s instead of
#   2.5-2.8 s). 100 tries 0.1 s apart keep Ray's 10 s of patience and lose 0.1 s at most;
# - the raylet stops idle workers beyond as many as there are free CPUs once they have been idle for
#   idle_worker_killing_time_threshold_ms (Ray's default: 1 s). Tune reserves the CPUs of
#   the first trials (placement groups) before it asks for their workers, so then no CPU is free: the
#   preloaded workers, idle for a second by then, were stopped and the trials started in new
#   processes that imported everything again (the first trials 3-4 s later; seen on 2 cores in 8 of
#   30 sweep starts, the more often the sooner the driver is ready). A minute covers the time
#   between the two on a slow machine.
RAY_SYSTEM_CONFIG = {"preload_python_modules": list(TRIAL_MODULES), "enable_worker_prestart": True,
                     "idle_worker_killing_time_threshold_ms": 60_000,
                     "raylet_client_connect_timeout_milliseconds": 100, "raylet_client_num_connect_attempts": 100}


def adjust_trial_runtime_environment() -> None:
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE -= set(CREDENTIALS_NOT_PROPAGATED)
    class_cache.DEFAULT_ENV_VARS.clear()


def workers_logs_shown() -> bool:
    """WCRNN_RAY_LOGS=1: the trial workers' output goes to the driver's terminal (Ray's log monitor)."""
    return bool(os.environ.get("WCRNN_RAY_LOGS"))


def init_ray(address: str | None) -> str:
    """Connect to a cluster (`auto`, `ray://…`, `HOST:PORT`) or start Ray in-process."""
    import ray

    wait_for_ray_to_stop()  # an earlier sweep in this process may still be stopping its Ray
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address or "local"
    quiet_environment()
    logs_to_driver = workers_logs_shown()
    kwargs = dict(logging_level=logging.WARNING, log_to_driver=logs_to_driver)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            # Ray 2.60 turns token authentication on for every new local cluster and says so on each
            # start, with how to opt out; for a cluster private to this process that is only noise.
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            # a copy: ray.init adds the session's own settings (its spill folder) to the dict it is given
            with _without_cluster_services(keep_log_monitor=logs_to_driver):
                ray.init(include_dashboard=False, _system_config=dict(RAY_SYSTEM_CONFIG), **kwargs)
    except ConnectionError as error:
        raise ServiceUnavailable(f"--address {address}: cannot connect to the Ray cluster ({error})") from None
    return address or "local"


@contextmanager
def _without_cluster_services(keep_log_monitor: bool):
    """Start a Ray private to this process without the processes that serve a cluster's users, which
    a sweep's own Ray never has: 4-5 s of CPU on the 2 cores its start-up is bound by.
    - The dashboard head: with include_dashboard=False Ray 2.60 still starts it, to send usage
      statistics (its only module then), and ray.init waits for it: 1.2-1.6 s on 2 cores.
    - The autoscaler's monitor (nothing to scale) and the log monitor, which sends the workers' logs
      to the driver (kept when the driver shows them).
    - The node agent's HTTP server and metrics modules: it runs with `--minimal`, as it does where Ray
      is installed without its dashboard's dependencies (then ray.init does not import them either).
    Ray has no settings for these; if its internals change, Ray simply starts as it does by default."""

    def without_api_server(self, *args, **kwargs):
        self._webui_url = None

    try:
        from ray._private import node, utils

        replacements = [(node.Node, "start_api_server", without_api_server),
                        (node.Node, "start_monitor", lambda self: None),
                        (utils, "get_dashboard_dependency_error", lambda: ImportError("a sweep's own Ray runs no dashboard"))]
        if not keep_log_monitor:
            replacements.append((node.Node, "start_log_monitor", lambda self: None))
        originals = [(owner, name, getattr(owner, name)) for owner, name, _ in replacements]
    except (ImportError, AttributeError):
        yield
        return
    for owner, name, replacement in replacements:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


_ray_stopping: threading.Thread | None = None


def stop_ray_in_background() -> None:
    """ray.shutdown() in a thread. Most of its 0.3-1 s is waiting for Ray's processes to exit, one
    after another, with the CPUs idle: a sweep spends it drawing its report instead.

    While it runs, no Ray object may be freed in another thread: an ObjectRef freed while Ray's core
    worker stops reaches the stopped worker, and Ray ends the whole process (exit 1, "The core worker
    has already been shutdown", or a segfault; seen once in CI, after a sweep had finished). Ray Tune
    leaves its controller (actor handles, pending ObjectRefs) in reference cycles that only the
    garbage collector frees, wherever it happens to run, so it pauses until Ray has stopped; the
    caller keeps its own Ray objects until `wait_for_ray_to_stop`."""
    global _ray_stopping
    import ray

    wait_for_ray_to_stop()  # an earlier sweep's, in this process
    if ray.is_initialized():
        collecting = gc.isenabled()
        gc.disable()

        def shut_down() -> None:
            try:
                ray.shutdown()
            finally:
                if collecting:  # Ray objects freed from now on find no core worker, and skip it
                    gc.enable()

        # not a daemon: Python's exit waits for it instead of leaving Ray's processes behind
        _ray_stopping = threading.Thread(target=shut_down, name="wcrnn-ray-shutdown")
        _ray_stopping.start()


def wait_for_ray_to_stop() -> None:
    global _ray_stopping
    if _ray_stopping is not None:
        _ray_stopping.join()
        _ray_stopping = None


def check_a_trial_fits(spec: SweepSpec, address: str | None, resuming: bool = False) -> None:
    """A trial asking for more CPUs or GPUs than any node of the cluster has waits forever.
    An embedded Ray never gains a node, so that is an error naming the field; a cluster may (an
    autoscaler adds nodes on demand), so there it is a warning."""
    import ray

    wanted = {"CPU": spec.resources.cpu, "GPU": spec.resources.gpu}
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if any(all(node.get(name, 0) >= amount for name, amount in wanted.items()) for node in nodes):
        return
    short = [name for name, amount in wanted.items() if not any(node.get(name, 0) >= amount for node in nodes)]
    if short:
        name = short[0]
        most = max((node.get(name, 0) for node in nodes), default=0)
        field = f"resources.{name.lower()}={wanted[name]:g}"
        has = f"{most:g} {name}{'' if most == 1 else 's'}" if most else f"no {name}"
    else:  # each fits somewhere, never both on one node
        name, most = "", 0
        field, has = f"resources.cpu={wanted['CPU']:g} with resources.gpu={wanted['GPU']:g}", "no node with both"
    if address:
        from ..console import err

        shortfall = f"{has} at most" if name and most else has
        err.print(f"[yellow]warning:[/] {field}, but no node of the Ray cluster has enough ({shortfall}):"
                  " trials wait until one joins (an autoscaler adds nodes on demand)", highlight=False)
        return
    if resuming:  # a resumed sweep keeps its spec
        fix = "resume it on a Ray cluster that has them (--address)"
    elif not name:
        fix = "ask for less"
    elif name == "GPU" and not most:
        fix = "use --set resources.gpu=0 to train on the CPU"
    else:
        fix = f"use --set resources.{name.lower()}={most:g} or less"
    raise ConfigError(f"{field}, but Ray on this machine has {has}, so no trial could ever start: {fix}")


def _single_node() -> bool:
    """Reuse trial workers on one machine (saves each trial a process start, ~2 s of a short trial);
    on a cluster give each trial a fresh worker, so that trials spread over the nodes with free resources."""
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive")) <= 1


def _searcher(spec: SweepSpec):
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from .space import DefineByRun

    if spec.search.algorithm == "tpe":
        sampler = optuna.samplers.TPESampler(seed=spec.search.seed, n_startup_trials=spec.search.startup_trials)
    else:
        sampler = optuna.samplers.RandomSampler(seed=spec.search.seed)
    # With a define-by-run space OptunaSearch ignores TuneConfig's metric/mode: give it the same ones.
    searcher = OptunaSearch(space=DefineByRun(spec) if spec.search_space else None, sampler=sampler,
                            metric=spec.objective.metric, mode=spec.objective.mode)
    if spec.resources.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=spec.resources.max_concurrent)
    return searcher


def _scheduler(spec: SweepSpec):
    if spec.scheduler.kind == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # epochs, not Tune's report count: a trial that falls back to an older checkpoint repeats epochs
        return ASHAScheduler(time_attr="epoch", max_t=spec.budget.max_epochs,
                             grace_period=min(spec.scheduler.grace_period, spec.budget.max_epochs),
                             reduction_factor=spec.scheduler.reduction_factor)
    return None


def _trainable(spec: SweepSpec, task):
    from ray import tune

    from .trainable import sweep_trainable

    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    return tune.with_resources(sweep_trainable(spec, task), resources)


def _prepare_tracking_store(uri: str) -> None:
    from .tracking import check_tracking_server, use_write_ahead_log

    check_tracking_server(uri)  # a local database is created here the first time (seconds)
    use_write_ahead_log(uri)


@dataclass
class ReportWarmUp:
    """The final report's imports and caches (_prepare_report: about 1 s of CPU), warmed in the
    loader thread once a CPU is idle for good (idle.WhenTrialsRunOut sets `wanted`), typically while
    the last trial runs alone, instead of in the CPU-bound start-up, where it delayed the first
    trials by 0.4 s (median of 6 interleaved pairs of small sweeps on 2 cores)."""

    wanted: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)  # not wanted after all
    ready: Future = field(default_factory=Future)

    def wait(self) -> None:
        self.wanted.set()
        self.ready.result()

    def close(self) -> None:
        """A warm-up not begun never begins: the sweep stopped before its report (an error, Ctrl-C)."""
        self.closed.set()
        self.wanted.set()


def _start_ray_while_loading(spec: SweepSpec, uri: str, address: str | None,
                             resuming: bool = False) -> tuple[str, Task | None, ReportWarmUp]:
    """(Ray address, the sweep's task or None for a generated one, the report's warm-up): Ray starts
    (or connects) while another thread imports Ray Tune, MLflow and Optuna, opens a local tracking
    database and loads the data of a task read from files (PyTorch's import included), since each
    takes seconds. Later, once a CPU is idle for good, the same thread imports
    what the final report needs.

    One thread does both, in that order: two threads importing the same package at once can each
    be handed the other's half-initialised modules (seen: "cannot import name 'TrialState' from
    partially initialized module 'optuna.trial'" when the caller had imported MLflow already).
    A tracking server is checked first, so that an unreachable one starts nothing; the other
    errors still stop the sweep before its first trial."""
    # Ray's start and then its first workers' imports are the longer way to the first trial; Ray's own
    # import (0.4 s of CPU) goes first, alone: beside the loading thread it would get the GIL half the time
    import ray  # noqa: F401

    local_store = is_local_database(uri)
    if not local_store:
        quiet_libraries()
        _prepare_tracking_store(uri)

    def load() -> Task | None:
        quiet_libraries()
        adjust_trial_runtime_environment()
        if local_store:
            _prepare_tracking_store(uri)
        if TaskConfigAdapter.validate_python(spec.task).generated:
            return None  # made by each trial process: it imports PyTorch anyway, this one need not
        from ..tasks import build_task  # and PyTorch, a second or two

        return build_task(spec.task)

    loading, warm_up = Future(), ReportWarmUp()

    def in_background() -> None:
        try:
            loading.set_result(load())
        except BaseException as error:  # raised in the main thread by .result()
            loading.set_exception(error)
        if loading.exception() is None:  # no report without a sweep
            warm_up.wanted.wait()
            if not warm_up.closed.is_set():
                _prepare_report()
        warm_up.ready.set_result(None)
        atexit.unregister(let_the_warm_up_finish)

    def let_the_warm_up_finish() -> None:
        # Python stops daemon threads abruptly at exit; one inside matplotlib's C++ code then
        # crashes the process (SIGSEGV or SIGABRT, seen in CI), which buries the sweep's own error
        warm_up.close()
        if loading.done():
            wait([warm_up.ready], timeout=60)

    atexit.register(let_the_warm_up_finish)
    threading.Thread(target=in_background, name="wcrnn-loader", daemon=True).start()
    try:
        ray_address = init_ray(address)
        check_a_trial_fits(spec, address, resuming)
    finally:
        wait([loading])  # it may be creating the local MLflow database: an error here must not cut that short
    return ray_address, loading.result(), warm_up


def run_sweep(spec: SweepSpec, spec_text: str, *, address: str | None = None, tracking_uri: str | None = None,
              storage: str | None = None, progress: bool = True, report_dir: str | None = None,
              stop_ray: bool = False) -> SweepResult:
    """Run a sweep to completion (or until interrupted: then `resume_sweep` continues it).
    `stop_ray`: shut Ray down (or disconnect from the cluster) when the trials are over, beside the report."""
    uri = tracking_uri or spec.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    root = storage_root(storage, spec)
    path = f"{root}/{spec.name}"
    storage_path, filesystem = storage_filesystem(root)
    # Ray Tune's check costs its import (a second), worth paying early only where a sweep may be
    if ("://" in path or filesystem is not None or Path(path).exists()) and _holds_tune_state(path, filesystem):
        raise ConfigError(f"name: a sweep called {spec.name!r} already exists in {root}; "
                          f"continue it with `wcrnn sweep resume {spec.name}` or choose another name or --storage")
    ray_address, task, warm_up = _start_ray_while_loading(spec, uri, address)
    with closing(warm_up):  # stopped before its report (an error, Ctrl-C), it leaves no thread waiting
        from ray import tune

        from .budget import TimeBudget
        from .idle import WhenTrialsRunOut
        from .tracking import MLflowTrialCallback, SweepTracker
        artifact_root = None if "://" in uri and not is_local_database(uri) else str(Path("mlartifacts").resolve())
        tracker = SweepTracker(uri, spec)
        experiment_id, parent_run_id = tracker.start(spec_text, ray_address, code_version(), artifact_root)
        metadata = {"name": spec.name, "spec": spec.model_dump(mode="json"), "spec_text": spec_text,
                    "tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": parent_run_id,
                    "storage": root, "path": path}
        _write_metadata(path, metadata)
        callback = MLflowTrialCallback(uri, experiment_id, parent_run_id, spec.model_dump_json(),
                                       retry_limit_s=spec.tracking.retry_limit_s)
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

        callbacks = [callback, WhenTrialsRunOut(spec.budget.num_trials, warm_up.wanted), CSVLoggerCallback(),
                     JsonLoggerCallback()]  # Tune's defaults but TensorBoard's (quiet_environment)
        if progress:
            from .progress import ProgressCallback

            callbacks.append(ProgressCallback(spec))
        tuner = tune.Tuner(
            _trainable(spec, task),
            tune_config=tune.TuneConfig(
                metric=spec.objective.metric, mode=spec.objective.mode, search_alg=_searcher(spec),
                scheduler=_scheduler(spec), num_samples=spec.budget.num_trials, reuse_actors=_single_node()),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=storage_path, storage_filesystem=filesystem, verbose=0, callbacks=callbacks,
                stop=TimeBudget(spec.budget.time_budget_s) if spec.budget.time_budget_s else None,
                failure_config=tune.FailureConfig(max_failures=spec.budget.max_failures),
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=spec.checkpoints.num_to_keep, checkpoint_score_attribute=spec.checkpoint_metric,
                    checkpoint_score_order=metric_mode(spec.checkpoint_metric))),
        )
        return _fit_and_finish(tuner, spec, metadata, callback, report_dir, warm_up, stop_ray)


def _holds_tune_state(path: str, filesystem) -> bool:
    from ray import tune

    return tune.Tuner.can_restore(storage_filesystem(path)[0], storage_filesystem=filesystem)


def resume_sweep(name_or_path: str, *, address: str | None = None, storage: str | None = None,
                 report_dir: str | None = None, stop_ray: bool = False) -> SweepResult:
    """Continue an interrupted sweep: finished trials stay finished, the search state is kept.

    Tune restores the sweep's callbacks (MLflow tracking, progress) with their state.
    """
    from ray import tune

    metadata = read_metadata(name_or_path, storage)
    spec = SweepSpec.model_validate(metadata["spec"])
    uri = metadata["tracking_uri"]
    path = metadata["path"]
    inner, filesystem = storage_filesystem(path)
    if not tune.Tuner.can_restore(inner, storage_filesystem=filesystem):
        raise ConfigError(f"{path}: no Ray Tune state to resume (the sweep never started its first trial?)")
    # Tune restores the sweep's callbacks from its saved state, WhenTrialsRunOut without its event:
    # a resumed sweep warms the report up at its end
    _, task, warm_up = _start_ray_while_loading(spec, uri, address, resuming=True)
    with closing(warm_up):  # stopped before its report (an error, Ctrl-C), it leaves no thread waiting
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        _discard_unrecorded_trial_runs(client, metadata, tune.ExperimentAnalysis(inner, storage_filesystem=filesystem))
        client.update_run(metadata["parent_run_id"], status="RUNNING")
        tuner = tune.Tuner.restore(inner, trainable=_trainable(spec, task), resume_unfinished=True,
                                   resume_errored=True, storage_filesystem=filesystem)
        return _fit_and_finish(tuner, spec, metadata, None, report_dir, warm_up, stop_ray)


DISCARDED = "discarded"


def _discard_unrecorded_trial_runs(client, metadata: dict, analysis) -> None:
    """A trial that started just before the sweep stopped can have an MLflow run but no place in the
    state Ray Tune saved last; the resumed search does not know it and may suggest its configuration
    again as a new trial. Its run would stay beside the sweep's trials for ever (open, or interrupted):
    tag it as discarded and delete it (MLflow keeps deleted runs, and `mlflow runs restore` brings one back)."""
    from .tracking import STATUS_TAG, TRIAL_TAG, trial_runs

    recorded = {trial.trial_id for trial in analysis.trials}
    for run in trial_runs(client, metadata["experiment_id"], metadata["parent_run_id"], "tags.`wcrnn.role` = 'trial'"):
        if run.data.tags.get(TRIAL_TAG) in recorded:
            continue
        client.set_tag(run.info.run_id, STATUS_TAG, DISCARDED)
        client.set_tag(run.info.run_id, "wcrnn.discarded_because",
                       "the sweep stopped before Ray Tune saved this trial in its state; the resumed sweep did not run it")
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
        client.delete_run(run.info.run_id)


class SweepInterrupted(RuntimeError):
    """The sweep stopped before all trials ended (Ctrl-C, SIGTERM); `resume` continues it."""


def _fit_and_finish(tuner, spec: SweepSpec, metadata: dict, callback: MLflowTrialCallback | None,
                    report_dir: str | None, warm_up: ReportWarmUp, stop_ray: bool = False) -> SweepResult:
    from mlflow import MlflowClient

    from .budget import TimeBudget
    from .report import finish_parent_run

    client = MlflowClient(metadata["tracking_uri"])
    TimeBudget.ran_out = False
    try:
        results = tuner.fit()  # the tracking callback flushes its writes in on_experiment_end
    except KeyboardInterrupt:
        _mark_interrupted(client, metadata, callback)
        raise SweepInterrupted(f"sweep {spec.name} interrupted; continue it with `wcrnn sweep resume {spec.name}`") from None
    except Exception:
        if callback is not None and callback.tracking_lost:
            raise callback.lost_error() from None  # Tune wraps the callback's error; say it plainly
        raise
    if stop_ray:  # nothing below uses Ray
        stop_ray_in_background()
    try:
        if callback is not None:
            callback.close()
            if callback.tracking_lost or callback.failures:
                raise callback.lost_error()
        # After a first Ctrl-C, Tune saves its state and returns normally with trials unfinished. It
        # counts a trial it stopped there as terminated, but its MLflow run was never ended.
        unfinished = max(len(results) - results.num_terminated - results.num_errors,
                         len(_open_trial_runs(client, metadata)))
        missing = spec.budget.num_trials - len(results)
        if TimeBudget.ran_out:  # the sweep is done: what the stopped trials trained is their result
            _close_trials_out_of_time(client, metadata)
        elif unfinished > 0 or missing > 0:
            _mark_interrupted(client, metadata, callback)
            raise SweepInterrupted(f"sweep {spec.name} interrupted with {unfinished + missing} trials to go; "
                                   f"continue it with `wcrnn sweep resume {spec.name}`")
        warm_up.wait()  # begins it if no CPU went idle before the end
        summary = finish_parent_run(client, spec, metadata, report_dir)
        trial_seconds = sum(float(result.metrics.get("time_total_s", 0.0)) for result in results)
        return SweepResult(spec.name, metadata["path"], metadata["tracking_uri"], metadata["experiment_id"],
                           metadata["parent_run_id"], summary["counts"], summary["best"], summary["report_dir"],
                           trial_seconds, callback.tracking_seconds if callback is not None else 0.0,
                           callback.rendering_seconds if callback is not None else 0.0)
    finally:
        wait_for_ray_to_stop()  # the caller then drops the tuner and its results: with Ray stopped


def _prepare_report() -> None:
    """Import what the final report needs (matplotlib, Optuna's plots and importance) and warm
    matplotlib's caches, so that the report after the last trial does not pay for them."""
    try:
        from .. import plots
        from .report import import_optuna_plots

        import_optuna_plots()
        plots.warm_up()
    except Exception:  # the report will raise it properly, in the main thread
        pass


def _open_trial_runs(client, metadata: dict) -> list:
    from .tracking import trial_runs

    return trial_runs(client, metadata["experiment_id"], metadata["parent_run_id"], "attributes.status = 'RUNNING'")


def _close_trials_out_of_time(client, metadata: dict) -> None:
    """Tune stops the trials still running when the time budget runs out without telling callbacks,
    so what the tracking callback does when a trial ends (spectrum picture, status) is done here."""
    from .tracking import STATUS_TAG, plot_logged_spectrum

    for run in _open_trial_runs(client, metadata):
        plot_logged_spectrum(client, run.info.run_id)
        client.set_tag(run.info.run_id, STATUS_TAG, "stopped_early")
        client.set_tag(run.info.run_id, "wcrnn.stopped_by", "time_budget")
        client.set_terminated(run.info.run_id, "FINISHED")


def _mark_interrupted(client, metadata: dict, callback: MLflowTrialCallback | None) -> None:
    """Leave no run RUNNING: open trials and the parent are closed as KILLED until `resume` reopens them."""
    from .tracking import STATUS_TAG

    if callback is not None:
        callback.close()
    parent = metadata["parent_run_id"]
    for run in _open_trial_runs(client, metadata):
        client.set_tag(run.info.run_id, STATUS_TAG, "interrupted")
        client.set_terminated(run.info.run_id, "KILLED")
    client.set_tag(parent, STATUS_TAG, "interrupted")
    client.set_terminated(parent, "KILLED")


def _write_metadata(path: str, metadata: dict) -> None:
    filesystem, inner = _open_storage(path)
    filesystem.create_dir(inner, recursive=True)
    with filesystem.open_output_stream(f"{inner}/{METADATA_FILE}") as stream:
        stream.write(json.dumps(metadata, indent=1).encode())


def read_metadata(name_or_path: str, storage: str | None = None) -> dict:
    """Find a sweep by its name (under --storage, $WCRNN_STORAGE or ./wcrnn_runs) or by its directory."""
    candidates = [name_or_path, f"{storage_root(storage)}/{name_or_path}"]
    for candidate in candidates:
        if "://" not in candidate:
            candidate = str(Path(candidate).resolve())
        try:
            filesystem, inner = _open_storage(candidate)
            with filesystem.open_input_stream(f"{inner}/{METADATA_FILE}") as stream:
                return json.loads(stream.read())
        except (OSError, ValueError):
            continue
    raise ConfigError(f"no sweep {name_or_path!r} found (looked for {METADATA_FILE} in "
                      f"{' and '.join(candidates)}); pass the sweep's directory or --storage")
