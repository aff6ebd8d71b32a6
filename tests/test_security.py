"""Credentials from the environment never reach MLflow, Ray's state, reports or logs."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from mlflow import MlflowClient

WCRNN = [sys.executable, "-m", "wcrnn.cli"]

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAWCRNNLEAKTEST0001",
    "AWS_SECRET_ACCESS_KEY": "wcrnn-leaktest-aws-secret-7f3a9b",
    "MLFLOW_TRACKING_USERNAME": "wcrnn-leaktest-user",
    "MLFLOW_TRACKING_PASSWORD": "wcrnn-leaktest-mlflow-pass-9c1e",
    "PGPASSWORD": "wcrnn-leaktest-db-pass-44d2",
}

SPEC = {
    "name": "leak-check",
    "task": {"name": "adding", "length": 20, "num_train": 256, "num_val": 64, "num_test": 64},
    "model": {"name": "wcrnn", "hidden_size": 8, "residual": "rotational"},
    "training": {"optimizer": "adam", "batch_size": 64},
    "search_space": {"lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-2}},
    "objective": {"metric": "val_mse", "mode": "min"},
    "budget": {"num_trials": 2, "max_epochs": 1},
    "search": {"algorithm": "random", "seed": 0},
    "resources": {"cpu": 1, "max_concurrent": 2},
    "lyapunov": {"every": 0, "at_end": True, "num_sequences": 4},
}


def files_containing(folder: Path, needles: list[bytes]) -> dict[str, list[str]]:
    found = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            content = path.read_bytes()
            hits = [needle.decode() for needle in needles if needle in content]
            if hits:
                found[str(path)] = hits
    return found


def test_environment_credentials_appear_nowhere_a_sweep_writes(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    ray_temp = Path(tempfile.mkdtemp(prefix="wcs", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {**{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "WCRNN_STORAGE", "RAY_ADDRESS")},
           **SECRETS, "RAY_TMPDIR": str(ray_temp)}
    try:
        done = subprocess.run([*WCRNN, "sweep", "run", "spec.yaml", "--json"], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        needles = [value.encode() for value in SECRETS.values()]

        # MLflow, read back through its API: params, tags and metric names of every run
        client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("leak-check").experiment_id])
        assert len(runs) == 3
        for run in runs:
            recorded = " ".join([*run.data.params.values(), *run.data.tags.values(), *run.data.metrics, *run.data.params])
            assert not any(secret in recorded for secret in SECRETS.values()), run.info.run_id

        # and every byte on disk: the MLflow database and artifacts, Ray Tune's state, the report,
        # Ray's own session logs; plus what the command printed
        leaks = files_containing(workdir, needles)
        leaks.update(files_containing(ray_temp, needles))
        assert leaks == {}, leaks
        assert not any(secret in done.stdout + done.stderr for secret in SECRETS.values())
        assert (workdir / "mlartifacts").is_dir() and any(ray_temp.rglob("*.log")), "the scan must have had files to read"
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)  # the local Ray ended with the command


USAGE_REPORT_CHECK = """
import sys
from typer.testing import CliRunner
from wcrnn.cli import app

if sys.argv[1] == "cli":  # any sweep command, then MLflow as the command would import it
    assert CliRunner().invoke(app, ["sweep", "validate", "sweeps/quickstart.yaml"]).exit_code == 0
else:  # the library: run_sweep's first MLflow import
    from wcrnn.sweep.runner import quiet_libraries
    quiet_libraries()
from mlflow.telemetry.client import get_telemetry_client
import os
print("usage reports:", "off" if get_telemetry_client() is None else "on", os.environ.get("RAY_USAGE_STATS_ENABLED"))
"""


def test_sweeps_send_no_usage_reports_to_mlflows_developers_unless_asked_to():
    """MLflow 3 starts a client that reports its use to its developers' servers in every process
    that imports it, outside CI (it looks for pytest's and CI's variables, removed here)."""
    outside_ci = {key: value for key, value in os.environ.items()
                  if key not in ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK",
                                 "RAY_USAGE_STATS_ENABLED")}
    root = Path(__file__).resolve().parents[1]
    for how in ("cli", "library"):
        for setting, expected in ((None, "off"), ("false", "on")):
            env = {**outside_ci, "MLFLOW_DISABLE_TELEMETRY": setting} if setting else outside_ci
            done = subprocess.run([sys.executable, "-c", USAGE_REPORT_CHECK, how], cwd=root, env=env,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-2000:]
            assert f"usage reports: {expected} 0" in done.stdout, (how, setting, done.stdout)  # and Ray's stats off
