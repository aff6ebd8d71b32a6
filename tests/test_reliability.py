"""Faults a long sweep must survive, with real processes on loopback.

The tracking server (a real `mlflow server`) goes away mid-sweep: writes are buffered and retried
while training goes on, and arrive once it is back; if it stays away longer than
tracking.retry_limit_s the sweep stops with a clear error instead of losing results silently.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from support import free_port, http_ok, kill_processes, wait_for

WCRNN = [sys.executable, "-m", "wcrnn.cli"]
BIN = Path(sys.executable).parent
ENV = {**{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "WCRNN_STORAGE", "RAY_ADDRESS")},
       "PYTHONUNBUFFERED": "1"}
EPOCHS = 6


class TrackingServer:
    """`mlflow server` on SQLite, stoppable and restartable on the same port and database."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.process = folder, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self):
        log = open(self.folder / "mlflow.log", "ab")
        self.process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", (self.folder / "artifacts").as_uri(), "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=ENV)
        wait_for(lambda: http_ok(f"{self.uri}/health"), 120, "the MLflow server")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server and its uvicorn worker
            self.process.wait(timeout=30)
        wait_for(lambda: not http_ok(f"{self.uri}/health"), 30, "the MLflow server to go away")


@pytest.fixture
def server(tmp_path):
    tracking = TrackingServer(tmp_path)
    tracking.start()
    yield tracking
    tracking.stop()


def spec_file(folder: Path, retry_limit_s: float, trials: int = 2) -> Path:
    spec = {
        "name": "outage",
        # epochs of about a second, so that several are reported while the server is away
        "task": {"name": "adding", "length": 100, "num_train": 6144, "num_val": 128, "num_test": 128},
        "model": {"name": "wcrnn", "hidden_size": 16, "residual": "rotational"},
        "training": {"optimizer": "adam", "batch_size": 64},
        "search_space": {"lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-2}},
        "objective": {"metric": "val_mse", "mode": "min"},
        "budget": {"num_trials": trials, "max_epochs": EPOCHS},
        "search": {"algorithm": "random", "seed": 0},
        "resources": {"cpu": 1, "max_concurrent": 2},
        "lyapunov": {"every": 0, "at_end": True, "num_sequences": 4},
        "tracking": {"retry_limit_s": retry_limit_s},
    }
    path = folder / "outage.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@contextmanager
def sweep_after_first_epoch(folder: Path, server: TrackingServer, retry_limit_s: float, trials: int = 2, env=ENV):
    """A `wcrnn sweep run` against the server, handed over once its first epoch is in MLflow."""
    workdir = folder / "work"
    workdir.mkdir()
    sweep = subprocess.Popen([*WCRNN, "sweep", "run", str(spec_file(folder, retry_limit_s, trials)), "--tracking-uri",
                              server.uri], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        wait_for(lambda: first_epoch_logged(server) or sweep.poll() is not None, 180, "the first logged epoch")
        assert sweep.poll() is None, sweep.communicate()[1][-3000:]
        yield sweep
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)


def first_epoch_logged(server: TrackingServer):
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("outage")
    if experiment is None:
        return False
    return any("val_mse" in run.data.metrics for run in client.search_runs([experiment.experiment_id]))


def test_a_tracking_outage_mid_sweep_loses_nothing(tmp_path, server):
    with sweep_after_first_epoch(tmp_path, server, retry_limit_s=120) as sweep:
        server.stop()
        down_at = time.time()
        time.sleep(6)  # training goes on; its epochs queue up in the driver
        up_at = time.time()
        server.start()
        _, stderr = sweep.communicate(timeout=300)
        assert sweep.returncode == 0, stderr[-3000:]

    client = MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
    trials = [run for run in runs if run.data.tags.get("wcrnn.role") == "trial"]
    assert len(trials) == 2
    during_outage = 0
    for run in trials:
        assert run.info.status == "FINISHED" and run.data.tags["wcrnn.status"] == "finished"
        history = client.get_metric_history(run.info.run_id, "val_mse")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), "every epoch exactly once"
        during_outage += sum(down_at <= m.timestamp / 1000 <= up_at for m in history)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "lyapunov")}
        assert "lyapunov/spectrum.json" in artifacts
    assert during_outage >= 2, "epochs reported while the server was down must have been buffered, then logged"


def test_an_outage_longer_than_the_limit_stops_the_sweep_clearly(tmp_path, server):
    with sweep_after_first_epoch(tmp_path, server, retry_limit_s=3) as sweep:
        server.stop()
        _, stderr = sweep.communicate(timeout=240)
    assert sweep.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and server.uri in last and "unreachable for more than 3 s" in last, last
    assert "wcrnn sweep resume outage" in last


def test_a_killed_driver_is_resumed_without_orphans_gaps_or_duplicates(tmp_path, server):
    ray_temp = Path(tempfile.mkdtemp(prefix="wcr", dir="/tmp"))  # short (Ray's socket paths); marks our Ray's processes
    env = {**ENV, "RAY_TMPDIR": str(ray_temp)}
    client = MlflowClient(server.uri)
    try:
        with sweep_after_first_epoch(tmp_path, server, retry_limit_s=120, trials=3, env=env) as sweep:
            state = tmp_path / "work" / "wcrnn_runs" / "outage"
            wait_for(lambda: list(state.glob("experiment_state*.json")), 60, "Tune's first saved state")
            os.killpg(sweep.pid, signal.SIGKILL)  # the driver and the local Ray it started, no cleanup
            sweep.wait(timeout=30)
        kill_processes(str(ray_temp))
        experiment_id = client.get_experiment_by_name("outage").experiment_id
        orphans = client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
        assert orphans, "the kill should leave runs open, or this test proves nothing"

        resumed = subprocess.run([*WCRNN, "sweep", "resume", "outage"], cwd=tmp_path / "work", env=env,
                                 capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    finally:
        kill_processes(str(ray_temp))
        shutil.rmtree(ray_temp, ignore_errors=True)

    runs = client.search_runs([experiment_id])
    assert not [run.info.run_id for run in runs if run.info.status == "RUNNING"], "no run may stay RUNNING"
    trials = [run for run in runs if run.data.tags.get("wcrnn.role") == "trial"]
    assert len(trials) == 3, "one run per trial: a resumed trial continues its run"
    for run in trials:
        assert run.info.status == "FINISHED", run.data.tags
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_mse"))
        assert steps == list(range(1, EPOCHS + 1)), f"every epoch exactly once, got {steps}"
