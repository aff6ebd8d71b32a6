"""Real sweeps: local Ray Tune + OptunaSearch + ASHA, tracked in a real MLflow database.

Each sweep runs through the `wcrnn` CLI in a fresh working directory, exactly as a user
runs it, and everything is read back with MlflowClient.
"""

import json
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from support import wait_for
import torch
import yaml
from mlflow import MlflowClient

from wcrnn.checkpoint import load_checkpoint
from wcrnn.config import RunConfig
from wcrnn.tasks import build_task
from wcrnn.train import build_for_task, evaluate

ROOT = Path(__file__).resolve().parents[1]
WCRNN = [sys.executable, "-m", "wcrnn.cli"]
ENV = {**{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "WCRNN_STORAGE", "RAY_ADDRESS")},
       "PYTHONUNBUFFERED": "1"}


def sweep(workdir: Path, *args, timeout=600) -> subprocess.CompletedProcess:
    done = subprocess.run([*WCRNN, "sweep", *args], cwd=workdir, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def runs_of(workdir: Path, experiment: str):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("wcrnn.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("wcrnn.role") == "trial"]
    return client, parents, children


# -- the README's main job: the quickstart sweep ----------------------------------------------

@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("quickstart")
    done = sweep(workdir, "run", str(ROOT / "sweeps" / "quickstart.yaml"), "--json")
    return workdir, json.loads(done.stdout), done.stderr


def test_quickstart_leaves_a_parent_run_and_one_child_per_trial(quickstart):
    workdir, summary, log = quickstart
    spec = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
    client, parents, children = runs_of(workdir, "quickstart")
    assert len(parents) == 1 and len(children) == spec["budget"]["num_trials"]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {"wcrnn.spec_hash", "wcrnn.code_version", "wcrnn.ray_address"} <= set(parent.data.tags)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    for child in children:  # the epoch tags say where each trial ended, after ASHA stopped some
        epochs = [m.step for m in client.get_metric_history(child.info.run_id, "val_mse")]
        assert child.data.tags["wcrnn.last_epoch"] == str(max(epochs)) and max(epochs) > 1
        assert child.data.tags["wcrnn.node_ip"] and child.data.tags["wcrnn.node_id"]
        assert child.data.tags["wcrnn.device"] == "cpu"  # no GPU asked for
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "spec.yaml" in parent_files
    assert {"report/param_importances.png", "report/parallel_coordinates.png", "report/optimization_history.png",
            "report/objective_vs_parameters.png", "report/lyapunov_vs_objective.png",
            "report/learning_curves.png", "report/best_trials.json"} <= report
    best = parent.data.tags["wcrnn.best_run_id"]
    best_value = min(c.data.metrics["val_mse"] for c in children if "val_mse" in c.data.metrics)
    assert parent.data.metrics["best_val_mse"] == pytest.approx(best_value)
    assert summary["best"]["run_id"] == best
    assert "trials 8/8 done" in log and "best val_mse=" in log  # the live progress line
    # in a log (not a terminal) each trial's start and end is a line with the status after it
    assert len(re.findall(r"^started \S+  \[trials \d/8 done · \d running", log, re.MULTILINE)) == 8
    assert len(re.findall(r"^(finished|stopped|diverged) \S+ after \d epochs?: val_mse=\S+  \[trials", log, re.MULTILINE)) == 8


def test_the_local_tracking_database_is_left_in_write_ahead_log_mode(quickstart):
    workdir, _, _ = quickstart
    with closing(sqlite3.connect(workdir / "mlflow.db")) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    runs_of(workdir, "quickstart")  # MLflow reads it as before


def test_the_command_line_closes_the_tracking_database_then_skips_the_last_garbage_collection(tmp_path):
    # What `wcrnn` registers when a command starts (after a sweep the interpreter's last collections
    # took 2-2.5 s on 2 cores). The handler registered before it runs after it, and reports.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = f"""
import atexit, gc
atexit.register(lambda: print("frozen objects:", gc.get_freeze_count()))
from wcrnn.console import exit_without_final_collection
exit_without_final_collection()
from mlflow import MlflowClient
from wcrnn.sweep.tracking import use_write_ahead_log
MlflowClient({uri!r}).search_experiments()
use_write_ahead_log({uri!r})
client = MlflowClient({uri!r})
run = client.create_run(client.create_experiment("exit"))
client.log_metric(run.info.run_id, "val_mse", 0.25)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split("frozen objects:")[1]) > 10_000, done.stdout
    # the connections were closed: SQLite folded its write-ahead log into mlflow.db and removed it
    assert not (tmp_path / "mlflow.db-wal").exists() and not (tmp_path / "mlflow.db-shm").exists()
    with closing(sqlite3.connect(tmp_path / "mlflow.db")) as connection:
        assert connection.execute("SELECT value FROM metrics WHERE key = 'val_mse'").fetchall() == [(0.25,)]
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_sweep_of_a_generated_task_never_imports_pytorch_in_its_driver(tmp_path):
    # The trials make the adding problem themselves (once per process), so the driver needs no
    # PyTorch: seconds of CPU less in a start-up that the trial workers' own imports share.
    # Python's import log on stderr names every module the driver imports; the trials' own logs
    # go to Ray's files.
    spec = small_spec("generated", budget={"num_trials": 2, "max_epochs": 1})  # the adding problem
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    done = subprocess.run([*WCRNN, "sweep", "run", "spec.yaml", "--json"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env={**ENV, "PYTHONPROFILEIMPORTTIME": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert {"ray.tune", "mlflow", "optuna", "matplotlib"} <= imported  # the log is there
    assert not {name for name in imported if name == "torch" or name.startswith("torch.")}
    summary = json.loads(done.stdout)
    assert summary["counts"] == {"finished": 2}
    _, _, children = runs_of(tmp_path, "generated")
    assert all(math.isfinite(child.data.metrics["val_mse"]) for child in children)
    # Tune's result files are still written (resume reads result.json), its TensorBoard files not
    trial_folders = [folder for folder in (tmp_path / "wcrnn_runs" / "generated").iterdir() if folder.is_dir()]
    assert len(trial_folders) == 2
    for folder in trial_folders:
        assert (folder / "result.json").read_text().strip() and (folder / "progress.csv").exists()
        assert not list(folder.glob("events.out.tfevents*"))


def test_the_command_line_stops_ray_when_the_sweep_is_over_unless_workers_logs_are_shown():
    # Ray's own exit handler sleeps half a second first, so that workers' last log lines print;
    # a sweep command stops Ray itself (its result, or its error, intact) unless they are shown,
    # or waits for the shutdown that the sweep started beside its report.
    script = """
import os, ray, typer
from ray._private import ray_constants
from wcrnn.errors import ConfigError
from wcrnn.sweep.commands import _run_sweep_command
from wcrnn.sweep.runner import init_ray, stop_ray_in_background

def bad_spec():
    raise ConfigError("budget.num_trials: must be at least 1")

ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
print("result:", _run_sweep_command(lambda: ray.get(ray.remote(lambda: 41).remote()) + 1))
print("running after a sweep:", ray.is_initialized())
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
try:
    _run_sweep_command(bad_spec)
except typer.Exit as exit:
    print("exit code:", exit.exit_code)
print("running after an error:", ray.is_initialized())
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
raylet = ray._private.worker._global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process

def stop_ray_then_draw_the_report():  # what run_sweep(stop_ray=True) does when the trials are over
    stop_ray_in_background()
    return "report"

print("result:", _run_sweep_command(stop_ray_then_draw_the_report))
print("stopped beside the report:", ray.is_initialized(), raylet.poll() is not None)
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
raylet = ray._private.worker._global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
stop_ray_in_background()  # and a next sweep in this process starts at once: its own Ray, not the stopping one
print("next sweep's Ray:", init_ray(None), ray.is_initialized(), raylet.poll() is not None)
ray.shutdown()
os.environ["WCRNN_RAY_LOGS"] = "1"
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=True)
_run_sweep_command(lambda: None)
print("running with logs shown:", ray.is_initialized())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["result: 42", "running after a sweep: False", "exit code: 2",
                                        "running after an error: False", "result: report",
                                        "stopped beside the report: False True", "next sweep's Ray: local True True",
                                        "running with logs shown: True"]
    assert "budget.num_trials: must be at least 1" in done.stderr


def test_no_garbage_is_collected_while_ray_stops_beside_the_report():
    # An ObjectRef freed while Ray's core worker stops ends the whole process (exit 1, "The core worker
    # has already been shutdown"; once in CI, after a sweep had finished). Ray Tune's leftovers sit in
    # reference cycles, which the collector frees wherever allocations run it: the report's drawing,
    # beside the shutdown. So it pauses until Ray has stopped, then runs again.
    script = """
import gc, ray
from wcrnn.sweep import runner

ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
stopping = [False]
shutdown = ray.shutdown

def timed_shutdown():
    stopping[0] = True
    try:
        shutdown()
    finally:
        stopping[0] = False

ray.shutdown = timed_shutdown
collections = []  # for each collection: whether Ray was stopping then
gc.callbacks.append(lambda phase, info: phase == "start" and collections.append(stopping[0]))
runner.stop_ray_in_background()
drawn = 0
while runner._ray_stopping.is_alive():
    figure = [[] for _ in range(1000)]  # what drawing a report allocates
    drawn += 1
runner.wait_for_ray_to_stop()
print("allocated while Ray stopped:", drawn > 10)
print("collections while Ray stopped:", sum(collections))
print("collector on, Ray running:", gc.isenabled(), ray.is_initialized())
figure = [[] for _ in range(100_000)]
print("collections since:", len(collections) - sum(collections) > 0)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["allocated while Ray stopped: True", "collections while Ray stopped: 0",
                                        "collector on, Ray running: True False", "collections since: True"]


def test_write_ahead_log_creates_no_database_and_leaves_servers_alone(tmp_path):
    from wcrnn.sweep.tracking import use_write_ahead_log

    use_write_ahead_log(f"sqlite:///{tmp_path / 'absent.db'}")
    use_write_ahead_log("http://127.0.0.1:9")
    assert list(tmp_path.iterdir()) == []


class _Trial:
    """What the tracking callback reads of a Ray Tune trial."""

    def __init__(self, trial_id: str, folder: Path):
        import pyarrow.fs

        self.trial_id, self.config, self.checkpoint = trial_id, {"model.r": 0.95}, None
        self.path, self.storage = str(folder / trial_id), type("Storage", (), {"storage_filesystem": pyarrow.fs.LocalFileSystem()})

    def __str__(self):
        return f"trainable_{self.trial_id}"


def _tracked(tmp_path, monkeypatch):
    """(an MLflowTrialCallback on a real local database, the MlflowClient calls it made: (method, tag keys))."""
    from mlflow import MlflowClient

    from wcrnn.sweep import SweepSpec
    from wcrnn.sweep.tracking import MLflowTrialCallback, SweepTracker

    spec = SweepSpec.model_validate(yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text()))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id, parent = SweepTracker(uri, spec).start("name: quickstart", "local", "test", str(tmp_path / "artifacts"))
    calls = []
    for method in ("search_runs", "create_run", "log_batch"):
        def spy(self, *args, _original=getattr(MlflowClient, method), _method=method, **kwargs):
            calls.append((_method, {tag.key for tag in kwargs.get("tags") or []} if _method == "log_batch" else set()))
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(MlflowClient, method, spy)
    return MLflowTrialCallback(uri, experiment_id, parent, spec.model_dump_json()), calls


def test_a_new_sweeps_trial_runs_are_created_without_searching_and_a_restored_callback_finds_them(tmp_path, monkeypatch):
    """Each MLflow call costs the driver milliseconds of CPU beside the trials: a new sweep's trials
    have no runs to look for. A callback Tune restores (a resumed sweep) looks, and continues the run."""
    import pickle

    callback, calls = _tracked(tmp_path, monkeypatch)
    saved = pickle.dumps(callback)  # Ray Tune saves the callbacks with the sweep when it starts
    trial = _Trial("t1", tmp_path)
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, {"epoch": 1, "val_mse": 0.5, "node_ip": "127.0.0.1", "node_id": "a"})
    callback.close()
    assert [method for method, _ in calls].count("search_runs") == 0
    assert [method for method, _ in calls].count("create_run") == 1
    run_id = callback.run_ids["t1"]

    restored = pickle.loads(saved)  # a resumed sweep: the saved callback with the state Tune saved last
    restored.set_state(callback.get_state())
    calls.clear()
    restored.on_trial_start(0, [], trial)
    restored.on_trial_result(0, [], trial, {"epoch": 2, "val_mse": 0.4, "node_ip": "127.0.0.1", "node_id": "a"})
    restored.close()
    assert [method for method, _ in calls].count("create_run") == 0 and restored.run_ids["t1"] == run_id
    assert [m.step for m in MlflowClient(callback.uri).get_metric_history(run_id, "val_mse")] == [1, 2]


def test_the_node_tags_are_logged_with_the_first_epoch_and_again_only_when_the_trial_moves(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    callback, calls = _tracked(tmp_path, monkeypatch)
    trial = _Trial("t1", tmp_path)
    for epoch, node in [(1, "a"), (2, "a"), (3, "b")]:
        callback.on_trial_result(0, [], trial, {"epoch": epoch, "val_mse": 1 / epoch, "node_ip": f"10.0.0.{node}",
                                                "node_id": node, "device": f"cuda (GPU {node})"})
    callback.close()
    epochs = [tags for method, tags in calls if method == "log_batch" and "wcrnn.last_epoch" in tags]
    assert [bool(tags & {"wcrnn.node_ip", "wcrnn.node_id", "wcrnn.device"}) for tags in epochs] == [True, False, True]
    run = MlflowClient(callback.uri).get_run(callback.run_ids["t1"])
    assert run.data.tags["wcrnn.node_id"] == "b" and run.data.tags["wcrnn.node_ip"] == "10.0.0.b"
    assert run.data.tags["wcrnn.device"] == "cuda (GPU b)"
    assert run.data.tags["wcrnn.last_epoch"] == "3"


def test_the_report_warms_up_when_a_trial_ends_and_no_trial_is_left_to_start():
    # From then on a CPU stays idle (the last trials run alone), so the warm-up slows no trial
    import pickle
    import threading
    from types import SimpleNamespace

    from wcrnn.sweep.idle import WhenTrialsRunOut

    def trials(*statuses):
        return [SimpleNamespace(status=status) for status in statuses]

    idle = threading.Event()
    callback = WhenTrialsRunOut(num_trials=3, event=idle)
    callback.on_trial_complete(1, trials("TERMINATED", "RUNNING"), None)  # the search suggests the third next
    assert not idle.is_set()
    callback.on_trial_complete(2, trials("TERMINATED", "TERMINATED", "PENDING"), None)  # it waits for a worker
    assert not idle.is_set()
    callback.on_trial_error(3, trials("TERMINATED", "ERROR", "RUNNING"), None)
    assert idle.is_set()
    restored = pickle.loads(pickle.dumps(callback))  # Tune saves its callbacks with the sweep's state
    assert (restored.num_trials, restored.event) == (3, None)
    restored.on_trial_complete(4, trials("TERMINATED", "TERMINATED", "TERMINATED"), None)  # a resumed sweep's: inert


def test_the_report_warm_up_runs_beside_pyplot_drawing_and_leaves_no_figure_open(tmp_path):
    """The sweep warms matplotlib in a thread while Ray starts; the tracking thread may draw meanwhile."""
    import threading

    import matplotlib.pyplot as plt

    from wcrnn.plots import plot_curves, warm_up

    open_before = plt.get_fignums()
    errors = []

    def warm():
        try:
            warm_up()
        except Exception as error:  # surfaced in the assertion below
            errors.append(error)

    thread = threading.Thread(target=warm)
    thread.start()
    drawn = plot_curves({"a": [(1, 0.5), (2, 0.25)]}, tmp_path / "curves.png", ylabel="loss", title="t")
    thread.join(timeout=60)
    assert not thread.is_alive() and errors == []
    assert drawn.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == open_before


def slow_import(module: str) -> str:
    """Script lines after which `module` takes a second longer to import, setting `half_imported` as
    it starts, so that other threads find it half imported."""
    return f"""
import importlib.abc, importlib.util, sys, threading, time

class SlowImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != {module!r}:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module
        def exec_module(module):
            half_imported.set()
            time.sleep(1)
            run(module)
        spec.loader.exec_module = exec_module
        return spec

half_imported = threading.Event()
sys.meta_path.insert(0, SlowImport())
"""


RACING_IMPORT = slow_import("matplotlib.pyplot") + """
report_warm_up = threading.Thread(target=lambda: __import__("optuna.visualization.matplotlib"))
report_warm_up.start()
assert half_imported.wait(60)
import wcrnn.plots
report_warm_up.join()
import matplotlib
print(matplotlib.get_backend())
"""


def test_plots_import_while_another_thread_is_still_importing_pyplot():
    """A sweep's report warm-up thread imports Optuna's plots, and with them pyplot, while other
    threads may import wcrnn.plots: `make bench` failed at its first sweep's report with
    'partially initialized module matplotlib.pyplot has no attribute switch_backend'."""
    completed = subprocess.run([sys.executable, "-c", RACING_IMPORT], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.split()[-1].lower() == "agg"


LOADING_BESIDE_THE_WARM_UP = """
import mlflow, torch  # imported before the sweep, as in a notebook or in benchmarks/run.py
""" + slow_import("optuna.trial") + """
from wcrnn.sweep import SweepSpec, runner
runner.init_ray = lambda address: "local"  # Ray's own start is not what this checks
runner.check_a_trial_fits = lambda *args: None
warm_up = runner._prepare_report
def warm_up_once_optuna_is_being_imported():  # the order in which the failure was seen
    assert half_imported.wait(60)
    warm_up()
runner._prepare_report = warm_up_once_optuna_is_being_imported
spec = SweepSpec.model_validate(%r)
started = runner._start_ray_while_loading(spec, "sqlite:///" + sys.argv[1] + "/mlflow.db", None)
started[2].wanted.set()  # as when the trials run out (idle.WhenTrialsRunOut)
for thread in threading.enumerate():
    if thread is not threading.main_thread():
        thread.join()
print(type(started[1]).__name__, "optuna.importance" in sys.modules, "optuna.visualization.matplotlib" in sys.modules)
"""


def test_the_data_loads_and_the_report_warms_up_when_the_caller_has_imported_mlflow_already(tmp_path):
    """The sweep imports Optuna while Ray starts, once for the search and once for the report. In two
    threads at once that failed: 'cannot import name TrialState from partially initialized module
    optuna.trial', which ended the sweep (and silently skipped the warm-up)."""
    # a task read from files: the loader thread loads it (a generated one is left to the trials)
    spec = small_spec("loading", task={"name": "smnist", "source": "mnist5k", "limit_train": 64, "limit_eval": 32},
                      objective={"metric": "val_accuracy", "mode": "max"})
    script = LOADING_BESIDE_THE_WARM_UP % (spec,)
    completed = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.split()[-3:] == ["Task", "True", "True"]


REPORT_WITHOUT_SCIKIT_LEARN = """
import sys, warnings
import optuna
from wcrnn.sweep import runner
runner._prepare_report()  # the warm-up a sweep runs while Ray starts
imported_with_the_report = "sklearn" in sys.modules or "sklearn.ensemble" in sys.modules
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
study.optimize(lambda trial: (trial.suggest_float("x", -3, 3) - 1) ** 2 + 0.01 * trial.suggest_float("y", -3, 3), 40)
default = optuna.importance.get_param_importances(study)  # PED-ANOVA, as in the report
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    optuna.visualization.matplotlib.plot_param_importances(study)
imported_by_the_default = "sklearn" in sys.modules
evaluators = [optuna.importance.FanovaImportanceEvaluator(seed=0), optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)]
forests = [optuna.importance.get_param_importances(study, evaluator=evaluator) for evaluator in evaluators]
print(imported_with_the_report, imported_by_the_default, "sklearn.ensemble" in sys.modules,
      *(max(importances, key=importances.get) for importances in (default, *forests)))
"""


def test_the_report_imports_optunas_importance_without_scikit_learn_which_its_forests_still_load():
    """Optuna's importance module imports scikit-learn (seconds of CPU in a sweep's start-up) for its
    random-forest evaluators; the report's PED-ANOVA needs none of it, and the forests import it when used."""
    completed = subprocess.run([sys.executable, "-c", REPORT_WITHOUT_SCIKIT_LEARN], capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.split() == ["False", "False", "True", "x", "x", "x"]


def test_the_ray_a_sweep_starts_preloads_the_trial_modules_and_retries_its_object_store_quickly(tmp_path):
    """Read back from Ray's GCS what the raylet was started with. ray.init adds the session's own
    settings to the dict it is given: the next Ray this process starts must not inherit them.
    Token authentication stays on (Ray's default for a local cluster) without Ray's notice saying so."""
    script = ("import json, os, ray\n"
              "from ray._private.state import state\n"
              "from wcrnn.sweep.runner import RAY_SYSTEM_CONFIG, init_ray\n"
              "init_ray(None)\n"
              "print('auth mode', os.environ.get('RAY_AUTH_MODE'))\n"
              "print(json.dumps(state.get_system_config()))\n"
              "ray.shutdown()\n"
              "print(json.dumps(RAY_SYSTEM_CONFIG))\n")
    unset_auth = {k: v for k, v in ENV.items() if k != "RAY_AUTH_MODE"}  # as on a fresh machine
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=unset_auth, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "auth mode token" in done.stdout and "Token authentication" not in done.stderr
    config, settings_after = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert "object_spilling_config" in config and "object_spilling_config" not in settings_after
    assert config["preload_python_modules"] == ["ray.tune", "wcrnn.train", "wcrnn.sweep.trainable"]
    retry_ms, attempts = config["raylet_client_connect_timeout_milliseconds"], config["raylet_client_num_connect_attempts"]
    assert retry_ms <= 100 and retry_ms * attempts >= 10_000  # Ray's default patience: 10 tries 1 s apart


PRELOADED_WORKERS_TAKE_THE_TRIALS = """
import json, os, time
import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from wcrnn.sweep.runner import init_ray

def process_table():  # pid -> (parent pid, CPU ticks, command line), from /proc
    table = {}
    for name in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()
            table[int(name)] = int(stat[1]), int(stat[11]) + int(stat[12]), open(f"/proc/{name}/cmdline").read()
        except (ValueError, OSError):
            continue
    return table

def idle_workers():  # pid -> CPU ticks of the workers the raylet (a child of this process) started
    table = process_table()
    raylets = {pid for pid, (parent, _, _) in table.items() if parent == os.getpid()}
    return {pid: ticks for pid, (parent, ticks, command) in table.items() if parent in raylets and "ray::IDLE" in command}

init_ray(None)
cpus = int(ray.cluster_resources()["CPU"])
# Until the prestarted workers have imported the trial modules: importing keeps a worker busy,
# while an idle one still uses about 1% of a core (a CPU tick, 1/100 s, every second or so).
before, settled, deadline = {}, False, time.monotonic() + 50  # well inside the kept minute
while not settled and time.monotonic() < deadline:
    time.sleep(1.0)
    now = idle_workers()
    settled = len(now) == cpus and now.keys() == before.keys() and all(now[pid] - before[pid] <= 5 for pid in now)
    before = now
time.sleep(1.5)  # idle for longer than Ray's default threshold of 1 s
groups = [placement_group([{"CPU": 1}]) for _ in range(cpus)]  # as Tune reserves its trials' CPUs
ray.get([group.ready() for group in groups])
time.sleep(0.5)  # the raylet looks for idle workers to stop every 0.2 s

@ray.remote(num_cpus=1)
class Trial:
    def pid(self):
        return os.getpid()

trials = [Trial.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group)).remote() for group in groups]
print(json.dumps({"settled": settled, "preloaded": sorted(before),
                  "trials": sorted(ray.get([trial.pid.remote() for trial in trials]))}))
"""


def test_the_first_trials_start_in_the_workers_that_ray_preloaded_even_after_tune_reserved_every_cpu(tmp_path):
    """Ray stops idle workers beyond as many as there are free CPUs; Tune reserves the first trials'
    CPUs before it asks for their workers. With Ray's default (idle for 1 s) the preloaded workers
    were stopped right there and the trials started in new processes that imported PyTorch and Ray
    Tune again: 3-4 s more before the first trials start on 2 cores."""
    done = subprocess.run([sys.executable, "-c", PRELOADED_WORKERS_TAKE_THE_TRIALS], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    processes = json.loads(done.stdout.strip().splitlines()[-1])
    assert processes["settled"], f"the preloaded workers were still busy after 50 s: {processes}"
    assert processes["preloaded"] and processes["trials"] == processes["preloaded"]


PRELOADING_WHILE_RAY_STARTS = """
import json, os, time
from ray._private import worker
from wcrnn.sweep.runner import init_ray

def started_at(pid):  # seconds since boot, as the kernel counts a process's start
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")

def children(parents):
    table = {}
    for name in os.listdir("/proc"):
        try:
            table[int(name)] = (int(open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()[1]),
                                open(f"/proc/{name}/cmdline").read())
        except (ValueError, OSError):
            continue
    return {pid: command for pid, (parent, command) in table.items() if parent in parents}

connect, connecting = worker.connect, []
def slow_connect(*args, **kwargs):  # a driver busy elsewhere (importing, say) connects late
    connecting.append(time.clock_gettime(time.CLOCK_BOOTTIME))
    time.sleep(4.0)
    return connect(*args, **kwargs)
worker.connect = slow_connect

init_ray(None)
raylets = [pid for pid, command in children({os.getpid()}).items() if "raylet" in command]
workers = [pid for pid, command in children(set(raylets)).items() if command.startswith("ray::IDLE")]
print(json.dumps({"workers": len(workers), "earliest": min(map(started_at, workers), default=None),
                  "driver_connected": connecting[0] + 4.0}))
"""


def test_the_preloading_workers_do_not_wait_for_the_driver_to_connect(tmp_path):
    """The raylet starts the workers that import the trial modules as soon as it is up, so their
    imports overlap ray.init's wait for Ray's other processes. By Ray's default it starts them when
    the first driver connects, which a driver busy importing beside ray.init does late."""
    done = subprocess.run([sys.executable, "-c", PRELOADING_WHILE_RAY_STARTS], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    times = json.loads(done.stdout.strip().splitlines()[-1])
    assert times["workers"] >= 1, times
    assert times["earliest"] < times["driver_connected"] - 1.0, times


EMBEDDED_RAY_PROCESSES = """
import json, os
import ray
from ray._private import node, utils
from wcrnn.sweep.runner import init_ray

originals = [node.Node.start_api_server, node.Node.start_monitor, node.Node.start_log_monitor,
             utils.get_dashboard_dependency_error]
init_ray(None)

@ray.remote
def square(x):
    return x * x

squares = ray.get([square.remote(x) for x in range(4)])
commands = []
for name in os.listdir("/proc"):
    try:
        commands.append(open(f"/proc/{name}/cmdline").read().replace(chr(0), " "))
    except OSError:
        continue
session = os.path.basename(ray._private.worker._global_node.get_session_dir_path())
ours = [command for command in commands if "/ray/" in command and session in command]
agents = [command for command in ours if "dashboard/agent.py" in command]
print(json.dumps({"dashboard_head": any("dashboard/dashboard.py" in command for command in ours),
                  "autoscaler_monitor": any("autoscaler/_private/monitor.py" in command for command in ours),
                  "log_monitor": any("log_monitor.py" in command for command in ours),
                  "minimal_agent": bool(agents) and all("--minimal" in command for command in agents),
                  "raylet": any("raylet/raylet" in command for command in ours),
                  "squares": squares,
                  "restored": originals == [node.Node.start_api_server, node.Node.start_monitor,
                                            node.Node.start_log_monitor, utils.get_dashboard_dependency_error]}))
"""


@pytest.mark.parametrize("logs_to_driver", [False, True], ids=["quiet", "WCRNN_RAY_LOGS"])
def test_the_embedded_ray_starts_without_cluster_services_and_still_runs_tasks(tmp_path, logs_to_driver):
    """A sweep's own Ray has no dashboard head (Ray 2.60 starts one for usage statistics even with
    include_dashboard=False, and ray.init waits for it), no autoscaler monitor, a minimal node agent,
    and a log monitor only when the workers' logs are shown (WCRNN_RAY_LOGS)."""
    env = {**ENV, "WCRNN_RAY_LOGS": "1"} if logs_to_driver else {k: v for k, v in ENV.items() if k != "WCRNN_RAY_LOGS"}
    done = subprocess.run([sys.executable, "-c", EMBEDDED_RAY_PROCESSES], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    started = json.loads(done.stdout.strip().splitlines()[-1])
    assert started == {"dashboard_head": False, "autoscaler_monitor": False, "log_monitor": logs_to_driver,
                       "minimal_agent": True, "raylet": True, "squares": [0, 1, 4, 9], "restored": True}


def test_a_sweep_asking_for_a_gpu_this_machine_lacks_stops_naming_the_field_instead_of_waiting(tmp_path):
    """An embedded Ray never gains a GPU: Tune would wait forever, warning once a minute."""
    spec = tmp_path / "gpu.yaml"
    spec.write_text(yaml.safe_dump(small_spec("wants-gpu", resources={"cpu": 1, "gpu": 0.25})))
    done = subprocess.run([*WCRNN, "sweep", "run", str(spec)], cwd=tmp_path, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert ("error: resources.gpu=0.25, but Ray on this machine has no GPU, so no trial could ever start: "
            "use --set resources.gpu=0 to train on the CPU") in done.stderr and "Traceback" not in done.stderr
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("wants-gpu") is None
    assert not (tmp_path / "wcrnn_runs").exists()


def test_what_a_trial_asks_for_is_checked_against_the_largest_node():
    """One embedded Ray, several requests: an error with the fix on one machine, a warning on a
    cluster (an autoscaler may add the node), the resume wording, and no complaint when a trial fits."""
    script = """
from wcrnn.errors import ConfigError
from wcrnn.sweep.runner import check_a_trial_fits, init_ray
from wcrnn.sweep.spec import SweepSpec
import yaml, sys
base = yaml.safe_load(sys.stdin.read())
def spec(**resources):
    return SweepSpec.model_validate({**base, "resources": resources})
init_ray(None)
import ray
cpus = ray.cluster_resources()["CPU"]
check_a_trial_fits(spec(cpu=cpus), None)
print("fits")
for resources, address, resuming in [({"cpu": cpus + 1}, None, False), ({"cpu": 1, "gpu": 2}, None, True),
                                     ({"cpu": 1, "gpu": 1}, "auto", False)]:
    try:
        check_a_trial_fits(spec(**resources), address, resuming)
        print("passed")
    except ConfigError as error:
        print("error:", error)
print("cpus", f"{cpus:g}")
"""
    done = subprocess.run([sys.executable, "-c", script], input=yaml.safe_dump(small_spec("fits")), env=ENV,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    cpus = float(lines[-1].split()[1])
    assert lines[:-1] == [
        "fits",
        f"error: resources.cpu={cpus + 1:g}, but Ray on this machine has {cpus:g} CPU{'' if cpus == 1 else 's'}, "
        f"so no trial could ever start: use --set resources.cpu={cpus:g} or less",
        "error: resources.gpu=2, but Ray on this machine has no GPU, so no trial could ever start: "
        "resume it on a Ray cluster that has them (--address)",
        "passed"]
    assert ("warning: resources.gpu=1, but no node of the Ray cluster has enough (no GPU): trials wait "
            "until one joins") in " ".join(done.stderr.split())


def test_missing_data_stops_the_sweep_before_any_run_with_the_data_message(tmp_path):
    # The data load while Ray starts (runner._start_ray_while_loading); their error still ends the sweep.
    spec = tmp_path / "missing.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "missing-data", "task": {"name": "smnist", "source": "torchvision", "root": "nodata"},
        "model": {"name": "wcrnn", "hidden_size": 16, "residual": "rotational"},
        "search_space": {"lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-2}},
        "objective": {"metric": "val_accuracy", "mode": "max"}, "budget": {"num_trials": 2, "max_epochs": 1}}))
    done = subprocess.run([*WCRNN, "sweep", "run", str(spec)], cwd=tmp_path, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "error: MNIST not found under 'nodata'" in done.stderr and "Traceback" not in done.stderr
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("missing-data") is None
    assert not (tmp_path / "wcrnn_runs").exists()


# Drawing text in matplotlib's C++ code for `seconds`, the way the report's warm-up and a trial's
# spectrum plot do. A daemon thread caught there when Python exits crashes the process.
DRAW_TEXT = """
import time
from matplotlib import font_manager
from matplotlib.ft2font import FT2Font
def draw_text(seconds):
    font, started = font_manager.findfont("DejaVu Sans"), time.monotonic()
    while time.monotonic() - started < seconds:
        FT2Font(font).set_text("val_accuracy 0.97", 0.0)
    print("drawn", flush=True)
"""


def test_an_error_while_the_report_warms_up_waits_for_it_instead_of_crashing(tmp_path):
    # CI once saw `wcrnn sweep run` end with SIGABRT instead of its error (exit 1): the warm-up thread
    # was inside matplotlib when the interpreter stopped it. Here Ray and the data are instant and
    # the warm-up draws for 2 s, so the error comes while it draws.
    script = DRAW_TEXT + """
import sys, threading, types
from wcrnn import tasks
from wcrnn.sweep import runner
runner.init_ray = lambda address: "local"
runner.check_a_trial_fits = lambda *args: None
runner._prepare_tracking_store = lambda uri: None
tasks.build_task = lambda task: 1 / 0 if sys.argv[1] == "missing" else "task"
drawing = threading.Event()
runner._prepare_report = lambda: (drawing.set(), draw_text(2.0))
try:
    spec = types.SimpleNamespace(task={"name": "smnist", "source": "mnist5k"})  # loaded by the driver
    _, _, warm_up = runner._start_ray_while_loading(spec, "sqlite:///mlflow.db", None)
except ZeroDivisionError:
    raise SystemExit("error: the data is missing")
if sys.argv[1] == "drawing":
    warm_up.wanted.set()  # as when the trials run out (idle.WhenTrialsRunOut)
    assert drawing.wait(timeout=30)
if sys.argv[1] == "closed":  # the sweep stopped before its report, in a process that goes on
    warm_up.close()
    loader = next(thread for thread in threading.enumerate() if thread.name == "wcrnn-loader")
    loader.join(timeout=30)
    raise SystemExit(f"the loader thread is done: {not loader.is_alive()}")
raise SystemExit("error: the tracking server refused the sweep")
"""

    def run(case: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", script, case], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)

    done = run("drawing")
    assert (done.returncode, done.stdout) == (1, "drawn\n"), done.stderr[-3000:]
    assert done.stderr.strip() == "error: the tracking server refused the sweep"

    for case, error in [("found", "error: the tracking server refused the sweep"),
                        ("missing", "error: the data is missing"), ("closed", "the loader thread is done: True")]:
        done = run(case)  # a warm-up not begun is skipped, and a failed data load starts none
        assert (done.returncode, done.stdout) == (1, ""), done.stderr[-3000:]
        assert done.stderr.strip() == error


def test_an_error_during_the_sweep_lets_the_mlflow_writer_finish_its_plot_instead_of_crashing(tmp_path):
    # Tune's error skips on_experiment_end, which closes the writer; its queued jobs (a spectrum plot
    # here) are done at exit, and a job that fails is not retried, since no one waits for it.
    script = DRAW_TEXT + """
import atexit
from wcrnn.sweep.tracking import _Writer
def refused(client):
    raise ConnectionError("tracking server down")
atexit.register(lambda: print(writer.failures, flush=True))  # runs after the writer's own handler
writer = _Writer(client=None, retry_limit_s=600)
writer.submit(lambda client: draw_text(2.0), "spectrum plot")
writer.submit(refused, "epoch metrics")
raise SystemExit("error: a trial's actor died")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "drawn", "['epoch metrics: tracking server down (not retried: the process was exiting)']"]


def test_sampled_hyperparameters_are_logged_inside_their_bounds(quickstart):
    workdir, _, _ = quickstart
    bounds = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())["search_space"]
    _, _, children = runs_of(workdir, "quickstart")
    for child in children:
        params = child.data.params
        assert bounds["lr"]["low"] <= float(params["training.lr"]) <= bounds["lr"]["high"]
        assert bounds["r"]["low"] <= float(params["model.r"]) <= bounds["r"]["high"]
        assert bounds["phi0"]["low"] <= float(params["model.phi0"]) <= bounds["phi0"]["high"]
        assert bounds["gamma"]["low"] <= float(params["model.gamma"]) <= bounds["gamma"]["high"]
        assert int(params["model.heads"]) in bounds["heads"]["choices"]
        assert params["model.hidden_size"] == "32" and params["task.name"] == "adding"  # fixed config too
    assert len({c.data.params["training.lr"] for c in children}) == len(children)


def test_every_epoch_and_the_lyapunov_spectrum_are_tracked(quickstart):
    workdir, _, _ = quickstart
    client, _, children = runs_of(workdir, "quickstart")
    statuses = set()
    for child in children:
        run_id = child.info.run_id
        statuses.add(child.data.tags["wcrnn.status"])
        steps = [m.step for m in client.get_metric_history(run_id, "val_mse")]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2  # ASHA's grace period is 2
        assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == steps
        assert math.isfinite(child.data.metrics["max_lyapunov"]) and "mean_lyapunov" in child.data.metrics
        lyapunov = {a.path for a in client.list_artifacts(run_id, "lyapunov")}
        assert {"lyapunov/spectrum.json", "lyapunov/spectrum.png"} <= lyapunov
        spectrum = json.loads(Path(client.download_artifacts(run_id, "lyapunov/spectrum.json", str(workdir))).read_text())
        assert len(spectrum["exponents"]) == 32 and spectrum["exponents"] == sorted(spectrum["exponents"], reverse=True)
        assert spectrum["max_exponent"] == pytest.approx(child.data.metrics["max_lyapunov"])
        assert child.info.status == "FINISHED"
        # the test set is evaluated after the last epoch, and only a trial that got there reports it
        test_steps = [m.step for m in client.get_metric_history(run_id, "test_mse")]
        assert test_steps == ([4] if child.data.tags["wcrnn.status"] == "finished" else []), child.data.tags
    assert statuses <= {"finished", "stopped_early"} and "finished" in statuses


def test_checkpoint_artifact_reproduces_the_logged_validation_metric(quickstart, tmp_path):
    workdir, _, _ = quickstart
    client, parents, _ = runs_of(workdir, "quickstart")
    run_id = parents[0].data.tags["wcrnn.best_run_id"]
    epoch = int(client.get_run(run_id).data.tags["wcrnn.checkpoint_epoch"])
    path = client.download_artifacts(run_id, "checkpoint/checkpoint.pt", str(tmp_path))
    state = load_checkpoint(path)
    assert state["epoch"] == epoch
    config = RunConfig.model_validate(state["config"])
    task = build_task(config.task)
    model = build_for_task(config, task)
    model.load_state_dict(state["model"])
    metrics = evaluate(model, task, task.val, torch.device("cpu"), config.training.eval_batch_size)
    logged = {m.step: m.value for m in client.get_metric_history(run_id, "val_mse")}
    assert metrics["mse"] == pytest.approx(logged[epoch], rel=1e-5)
    assert logged[epoch] == min(logged.values())  # the best epoch's checkpoint is the one kept


def test_learning_curves_go_on_a_log_axis_when_one_trial_is_orders_of_magnitude_off(tmp_path, monkeypatch):
    # A trial whose loss is 1000x the others' flattened every other curve into one line at zero.
    import wcrnn.plots as plots

    scales = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: scales.append(figure.axes[0].get_yscale()))
    near = {"a": [(1, 280.0), (2, 150.0)], "b": [(1, 270.0), (2, 90.0)]}
    plots.plot_curves(near, tmp_path / "near.png", ylabel="val_loss")
    plots.plot_curves({**near, "off": [(1, 2e5), (2, 2e3)]}, tmp_path / "off.png", ylabel="val_loss")
    plots.plot_curves({"acc": [(1, 0.005), (2, 0.9)], "neg": [(1, -1.0), (2, 1.0)]}, tmp_path / "signs.png",
                      ylabel="val_accuracy")  # a value <= 0 has no place on a log axis
    assert scales == ["linear", "log", "linear"]


def test_a_laid_out_figure_is_drawn_once_when_saved_and_its_labels_stay_inside(tmp_path, monkeypatch):
    # tight_layout measures the text and leaves a placeholder layout engine behind, for which
    # savefig would draw the whole figure once more before drawing it into the file.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image
    import wcrnn.plots as plots

    draws = []
    original_draw = Figure.draw
    monkeypatch.setattr(Figure, "draw", lambda figure, renderer: draws.append(figure) or original_draw(figure, renderer))
    figure = Figure(figsize=(4, 3))
    axis = figure.add_subplot()
    axis.plot([1e-4, 1e-2], [3e4, 1e5])
    axis.set(xscale="log", xlabel="a long parameter name", ylabel="val_loss", title="a title")
    path = plots.save_figure(figure, tmp_path / "figure.png")
    assert len(draws) == 1
    assert figure.get_dpi() == plots.DPI
    assert Image.open(path).size == (4 * plots.DPI, 3 * plots.DPI)
    renderer = FigureCanvasAgg(figure).get_renderer()
    page = figure.bbox
    low, high = axis.get_ylim()
    shown = [label for label, at in zip(axis.get_yticklabels(), axis.get_yticks()) if low <= at <= high]
    for text in (axis.xaxis.label, axis.yaxis.label, axis.title, *shown):
        box = text.get_window_extent(renderer)
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, (text.get_text(), box)


@pytest.mark.parametrize("scale", [1e-4, 3e-3, 0.05, 2.0, 700.0, 3e4])
def test_the_spectrum_figure_keeps_every_label_inside_its_fixed_margins(tmp_path, monkeypatch, scale):
    # Drawn for every trial, it has fixed margins instead of tight_layout's extra pass (25 ms of 80):
    # the y labels must still fit at any scale of exponents.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    import wcrnn.plots as plots

    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda figure, path, **kwargs: drawn.append(figure))
    exponents = [scale * (0.5 - i / 64) for i in range(128)]
    plots.plot_lyapunov_spectrum(exponents, tmp_path / "spectrum.png", [scale / 20] * 128, exponents,
                                 title="Lyapunov spectrum, epoch 12")
    figure = drawn[0]
    figure.set_dpi(120)  # as saved
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    axis = figure.axes[0]
    low, high = axis.get_ylim()
    drawn_labels = [label for label, at in zip(axis.get_yticklabels(), axis.get_yticks()) if low <= at <= high]
    texts = [axis.yaxis.label, axis.xaxis.label, axis.title, axis.yaxis.offsetText, *drawn_labels]
    for text in texts:
        box, page = text.get_window_extent(renderer), figure.bbox
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, \
            (text.get_text(), box, page)
    assert max(len(label.get_text()) for label in drawn_labels) <= 6  # e.g. −0.075, not −0.00012


def test_objective_vs_parameters_places_choices_evenly_and_labels_log_axes_plainly(tmp_path, monkeypatch):
    # Matplotlib's defaults put heads 1 and 4 on top of each other beside 32, and labelled every
    # minor tick of a log axis spanning under a decade as a×10^b, the labels running into each other.
    import wcrnn.sweep.report as report
    from wcrnn.sweep.spec import load_spec

    spec, _ = load_spec(ROOT / "sweeps" / "quickstart.yaml")
    sampled = [{"training.lr": lr, "model.heads": heads} for lr, heads in ((0.0011, 4), (0.0052, 32), (0.019, 4))]
    trials = report.SweepTrials(spec, [report.TrialRecord(f"run{i}", f"t{i}", "finished", params, {}, 0.2 + i, 4)
                                       for i, params in enumerate(sampled)])
    figures = []
    monkeypatch.setattr(report, "save_figure", lambda figure, path: figures.append(figure))
    report._objective_vs_parameters(trials, tmp_path)
    axes = {axis.get_xlabel(): axis for axis in figures[0].axes}
    figures[0].canvas.draw()
    heads = axes["heads"]
    assert [label.get_text() for label in heads.get_xticklabels()] == ["1", "4", "32"]
    assert sorted(heads.collections[0].get_offsets()[:, 0].tolist()) == [1, 1, 2]  # positions of 4, 4, 32
    lr = axes["lr"]
    assert lr.get_xscale() == "log"
    low, high = lr.get_xlim()
    shown = [label.get_text() for tick, label in zip(lr.get_xticks(), lr.get_xticklabels()) if low <= tick <= high]
    assert shown == ["0.001", "0.002", "0.005", "0.01", "0.02"], shown
    assert all(not label.get_text() for label in lr.get_xticklabels(minor=True))


def test_report_command_writes_table_and_figures(quickstart):
    workdir, _, _ = quickstart
    done = sweep(workdir, "report", "quickstart", "--json", "--out", "myreport")
    report = json.loads(done.stdout)
    assert len(report["table"]) == 8
    objectives = [row["objective"] for row in report["table"]]
    assert objectives == sorted(objectives)  # best (lowest val_mse) first
    for figure in ("objective_vs_parameters", "lyapunov_vs_objective", "learning_curves", "param_importances"):
        assert (workdir / "myreport" / f"{figure}.png").stat().st_size > 5000
    client, _, _ = runs_of(workdir, "quickstart")
    for row in report["table"]:  # epochs trained: all 4 when finished, fewer when ASHA stopped the trial
        trained = max(m.step for m in client.get_metric_history(row["run_id"], "val_mse"))
        assert row["epochs"] == trained and (trained == 4) == (row["status"] == "finished"), row
        assert ("test_mse" in row) == (row["status"] == "finished"), row

    # The table as people read it: one line per trial, whole even through a pipe, no library chatter.
    lines = sweep(workdir, "report", "quickstart", "--out", "myreport").stderr.splitlines()
    assert not any("study created" in line for line in lines)
    figures = next(line for line in lines if line.startswith("figures: "))  # paths stay whole on one line
    assert figures.count("myreport/") == 6 and figures.endswith("param_importances.png"), figures
    for row in report["table"]:
        line = next(line for line in lines if line.lstrip().startswith(row["trial_id"]))
        shown = line.split()
        assert f"{row['objective']:.4g}" in shown and shown[-1] == str(row["epochs"]), line

    # An 80-column terminal: three significant digits, every value whole on its trial's line.
    narrow = subprocess.run([*WCRNN, "sweep", "report", "quickstart", "--out", "myreport"], cwd=workdir,
                            env={**ENV, "COLUMNS": "80", "TTY_COMPATIBLE": "1"}, capture_output=True, text=True,
                            timeout=300)
    lines = re.sub(r"\x1b\[[0-9;]*m", "", narrow.stderr).splitlines()  # without the terminal's styles
    assert max(len(line) for line in lines if not line.startswith("figures: ")) <= 80, narrow.stderr
    assert next(line for line in lines if line.lstrip().startswith("trial")).split()[-1] == "epochs"
    for row in report["table"]:
        shown = next(line for line in lines if line.lstrip().startswith(row["trial_id"])).split()
        values = [row["objective"], *(row[path] for path in ("training.lr", "model.r", "model.gamma"))]
        assert all(f"{value:.3g}" in shown for value in values) and shown[-1] == str(row["epochs"]), shown


# -- a diverging trial -------------------------------------------------------------------------

def small_spec(name, **changes):
    spec = {
        "name": name,
        "task": {"name": "adding", "length": 20, "num_train": 256, "num_val": 64, "num_test": 64},
        "model": {"name": "wcrnn", "hidden_size": 8, "residual": "homogeneous"},
        "training": {"optimizer": "adam", "batch_size": 64},
        "search_space": {"lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-2}},
        "objective": {"metric": "val_mse", "mode": "min"},
        "budget": {"num_trials": 3, "max_epochs": 2},
        "search": {"algorithm": "random", "seed": 0},
        "resources": {"cpu": 1, "max_concurrent": 2},
        "lyapunov": {"every": 0, "at_end": False},
    }
    for key, value in changes.items():
        spec[key] = value
    return spec


def test_a_diverging_trial_is_recorded_as_diverged_and_the_sweep_completes(tmp_path):
    spec = small_spec("diverging", search_space={"r": {"distribution": "categorical", "choices": [0.9, 40.0]}},
                      budget={"num_trials": 4, "max_epochs": 2})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    done = sweep(tmp_path, "run", "spec.yaml", "--json")
    summary = json.loads(done.stdout)
    assert re.search(r"^diverged \S+ after 1 epoch: val_mse=", done.stderr, re.MULTILINE), done.stderr[-3000:]
    assert "NaN or Inf found" not in done.stderr  # Tune's TensorBoard logger on the inf, naming no trial
    _, parents, children = runs_of(tmp_path, "diverging")
    status = {float(c.data.params["model.r"]): c.data.tags["wcrnn.status"] for c in children}
    assert len(children) == 4 and parents[0].info.status == "FINISHED"
    assert status == {0.9: "finished", 40.0: "diverged"}
    for child in children:
        if child.data.tags["wcrnn.status"] == "diverged":
            assert "val_mse" not in child.data.metrics  # the worst value goes to Tune, not a fake number to MLflow
            assert child.data.tags["wcrnn.last_epoch"] == "1"  # stopped at the first non-finite loss
    assert summary["counts"]["diverged"] >= 1 and summary["counts"]["finished"] >= 1
    assert float(summary["best"]["params"]["model.r"]) == 0.9


# -- interrupt and resume ------------------------------------------------------------------------

def finished_children(workdir, name):
    try:
        _, _, children = runs_of(workdir, name)
    except Exception:  # database or experiment not created yet
        return []
    return [c for c in children if c.data.tags.get("wcrnn.status") == "finished"]


# epochs of about a second, so that a sweep is surely interrupted in the middle
SLOW_TASK = {"name": "adding", "length": 100, "num_train": 6144, "num_val": 128, "num_test": 128}


def interrupted_sweep(workdir: Path, spec: dict, ready, what: str) -> str:
    """Run the spec in `workdir`, press Ctrl-C (SIGINT) once `ready()`, check exit 130; returns stderr."""
    (workdir / "spec.yaml").write_text(yaml.safe_dump(spec))
    process = subprocess.Popen([*WCRNN, "sweep", "run", "spec.yaml"], cwd=workdir, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(ready, 240, what)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-2000:]
    return stderr


def test_resume_finishes_an_interrupted_sweep_without_rerunning_finished_trials(tmp_path):
    spec = small_spec("resumable", budget={"num_trials": 5, "max_epochs": 3},
                      resources={"cpu": 1, "max_concurrent": 1}, task=SLOW_TASK)
    stderr = interrupted_sweep(tmp_path, spec, lambda: len(finished_children(tmp_path, "resumable")) >= 2,
                               "two finished trials")
    assert "wcrnn sweep resume resumable" in stderr
    client, parents, before = runs_of(tmp_path, "resumable")
    assert parents[0].info.status == "KILLED"
    assert all(c.info.status != "RUNNING" for c in before)  # no orphan left RUNNING
    done_before = {c.data.tags["wcrnn.trial_id"]: c for c in before if c.data.tags.get("wcrnn.status") == "finished"}
    history_before = {t: [(m.step, m.value) for m in client.get_metric_history(c.info.run_id, "val_mse")]
                      for t, c in done_before.items()}
    assert len(done_before) >= 2
    # A trial started just before the stop can have a run that Ray Tune's saved state does not know.
    unrecorded = client.create_run(parents[0].info.experiment_id, tags={
        "mlflow.parentRunId": parents[0].info.run_id, "wcrnn.role": "trial", "wcrnn.trial_id": "unrecorded",
        "wcrnn.status": "running"}).info.run_id

    resumed = sweep(tmp_path, "resume", "resumable")
    # the progress counts the trials that ended before the resume too, and their best value
    assert re.search(r"^trials 5/5 done · 0 running · 5 finished · .* best val_mse=", resumed.stderr, re.MULTILINE), \
        resumed.stderr[-3000:]

    client, parents, after = runs_of(tmp_path, "resumable")
    assert parents[0].info.status == "FINISHED"
    discarded = client.get_run(unrecorded)  # deleted, not destroyed: `mlflow runs restore` brings it back
    assert discarded.info.lifecycle_stage == "deleted" and discarded.info.status == "KILLED"
    assert discarded.data.tags["wcrnn.status"] == "discarded"
    assert len(after) == 5 and len({c.data.tags["wcrnn.trial_id"] for c in after}) == 5
    assert all(c.info.status == "FINISHED" and c.data.tags["wcrnn.status"] == "finished" for c in after)
    for trial_id, child in done_before.items():
        history = [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, "val_mse")]
        assert history == history_before[trial_id]  # not re-run: no new epochs
    for child in after:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_mse")]
        assert sorted(set(steps)) == [1, 2, 3]  # every trial reached every epoch


# -- the time budget -----------------------------------------------------------------------------

def test_a_sweep_that_runs_out_of_time_ends_with_its_trials_results_instead_of_as_interrupted(tmp_path):
    """Tune stops every trial when budget.time_budget_s is spent and returns as after a Ctrl-C; the
    sweep is still done: the trial it cut short keeps its epochs and spectrum and is closed as stopped early."""
    # an epoch takes about 0.3 s here, so the first trial (up to 200 epochs) is cut short mid-run
    spec = small_spec("out-of-time", budget={"num_trials": 6, "max_epochs": 200, "time_budget_s": 12},
                      resources={"cpu": 1, "max_concurrent": 1}, task=SLOW_TASK,
                      lyapunov={"every": 1, "at_end": True, "num_sequences": 4})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    done = sweep(tmp_path, "run", "spec.yaml", "--json")  # exit 0, not 130
    assert "interrupted" not in done.stderr and "resume" not in done.stderr
    client, parents, children = runs_of(tmp_path, "out-of-time")
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["wcrnn.status"] == "finished"
    cut_short = [c for c in children if c.data.tags.get("wcrnn.stopped_by") == "time_budget"]
    assert len(cut_short) == 1 and len(children) == 1, [c.data.tags for c in children]
    run = cut_short[0]
    assert run.info.status == "FINISHED" and run.data.tags["wcrnn.status"] == "stopped_early"
    epochs = [m.step for m in client.get_metric_history(run.info.run_id, "val_mse")]
    assert epochs == list(range(1, len(epochs) + 1)) and 1 <= len(epochs) < 200
    # Tune's callbacks never hear of its end, so its spectrum is drawn from the last one logged
    lyapunov = {a.path for a in client.list_artifacts(run.info.run_id, "lyapunov")}
    assert {"lyapunov/spectrum.json", "lyapunov/spectrum.png"} <= lyapunov, lyapunov
    assert json.loads(done.stdout)["counts"] == {"stopped_early": 1}
    assert re.search(r"^trials 1/6 done · 0 running · 0 finished · 1 stopped early", done.stderr, re.MULTILINE), \
        done.stderr[-2000:]


# -- a trial that raises -------------------------------------------------------------------------

def test_a_trial_that_raises_is_retried_then_recorded_as_failed_and_the_sweep_goes_on(tmp_path):
    # The commonest real failure of a sweep over sizes: a model too big for the memory. Here the
    # recurrent matrix alone would need 10 PB, so allocating it raises at once, on every attempt.
    huge = 50_000_000
    spec = small_spec("raising", search_space={"hidden_size": {"distribution": "categorical", "choices": [8, huge]}},
                      budget={"num_trials": 4, "max_epochs": 2, "max_failures": 1})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    done = subprocess.run([*WCRNN, "sweep", "run", "spec.yaml", "--json"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]  # failed trials are results, not a failed sweep
    summary = json.loads(done.stdout)
    _, parents, children = runs_of(tmp_path, "raising")
    assert parents[0].info.status == "FINISHED" and len(children) == 4  # one run per trial, retries included
    failed = [c for c in children if int(c.data.params["model.hidden_size"]) == huge]
    healthy = [c for c in children if int(c.data.params["model.hidden_size"]) == 8]
    assert failed and healthy, "the seed should sample both sizes, or this test proves less"
    for child in failed:
        assert child.info.status == "FAILED" and child.data.tags["wcrnn.status"] == "failed"
        assert "allocate" in child.data.tags["wcrnn.error"], child.data.tags["wcrnn.error"][-500:]
        assert child.data.tags["wcrnn.restarts"] == "1"  # budget.max_failures = 1: one retry, then failed
        assert "val_mse" not in child.data.metrics
    for child in healthy:
        assert child.info.status == "FINISHED" and child.data.tags["wcrnn.status"] == "finished"
        assert "wcrnn.restarts" not in child.data.tags
    assert summary["counts"] == {"failed": len(failed), "finished": len(healthy)}
    assert int(summary["best"]["params"]["model.hidden_size"]) == 8
    assert len(re.findall(r"^failed \S+: see \S+error\.txt", done.stderr, re.MULTILINE)) == len(failed)


# -- corrupt and missing checkpoints on resume ---------------------------------------------------

def trial_epochs(workdir, name) -> dict:
    """trial_id -> epochs in MLflow (empty before the database exists)."""
    try:
        client, _, children = runs_of(workdir, name)
    except Exception:
        return {}
    return {c.data.tags["wcrnn.trial_id"]: [m.step for m in client.get_metric_history(c.info.run_id, "val_mse")]
            for c in children}


def test_a_corrupt_or_missing_checkpoint_on_resume_is_named_and_the_trial_falls_back(tmp_path):
    # Epochs to spare after the stop: one trial's worker can start seconds after the other's, and
    # MLflow shows epochs a little after Tune has them.
    epochs = 10
    spec = small_spec("fallback", budget={"num_trials": 2, "max_epochs": epochs}, task=SLOW_TASK)
    interrupted_sweep(tmp_path, spec, lambda: len([e for e in trial_epochs(tmp_path, "fallback").values()
                                                   if len(e) >= 2]) == 2, "two epochs of both trials")
    before = trial_epochs(tmp_path, "fallback")
    assert all(len(steps) < epochs for steps in before.values()), "interrupted too late to prove anything"
    # A driver killed outright loses the MLflow writes still queued; resume takes them from Tune's saved results.
    with closing(sqlite3.connect(tmp_path / "mlflow.db")) as database, database:
        lost = database.execute("DELETE FROM metrics WHERE step = 1").rowcount
    assert lost > 0

    # Trial 1: every checkpoint but its oldest is garbage. Trial 2: all its checkpoints are gone.
    trial_dirs = sorted((tmp_path / "wcrnn_runs" / "fallback").glob("wcrnn_trial_*"))
    assert len(trial_dirs) == 2
    corrupted_dir, emptied_dir = trial_dirs
    checkpoints = sorted(corrupted_dir.glob("checkpoint_*"))
    assert len(checkpoints) >= 2, "Tune keeps checkpoints.num_to_keep = 2"
    for folder in checkpoints[1:]:
        (folder / "checkpoint.pt").write_bytes(b"\x00not a checkpoint" * 100)
    for folder in emptied_dir.glob("checkpoint_*"):
        shutil.rmtree(folder)

    resumed = sweep(tmp_path, "resume", "fallback")

    client, parents, children = runs_of(tmp_path, "fallback")
    assert parents[0].info.status == "FINISHED" and len(children) == 2
    notices = {}
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["wcrnn.status"] == "finished"
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_mse"))
        assert steps == list(range(1, epochs + 1)), f"every epoch exactly once, got {steps}"
        notices[child.data.tags["wcrnn.trial_id"]] = child.data.tags["wcrnn.checkpoint_notice"]
    corrupted = next(n for t, n in notices.items() if t in corrupted_dir.name)
    emptied = next(n for t, n in notices.items() if t in emptied_dir.name)
    # Tune restores the newest checkpoint it recorded (the trial may have written one more on its way out)
    assert re.match(rf"{corrupted_dir}/checkpoint_\d+/checkpoint.pt: unreadable checkpoint \(corrupt", corrupted)
    assert corrupted.endswith(f"continuing from {checkpoints[0]} instead")
    assert emptied.startswith(f"checkpoint not found: {emptied_dir}/checkpoint_")
    assert emptied.endswith("no readable checkpoint left, so the trial restarts from scratch")
    assert f"{corrupted_dir}/checkpoint_" in resumed.stderr  # the user sees it in the terminal too
