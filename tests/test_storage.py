"""Shared trial storage on an S3-compatible store (moto's S3 server standing in for MinIO).

Ray keeps trial state and checkpoints in s3://bucket/prefix through the WCRNN_S3_ENDPOINT
override; the driver reads the checkpoints back from there to put them into MLflow, and
`report` finds the sweep by its S3 path.
"""

import json
import os
import subprocess
import sys

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer
from mlflow import MlflowClient
from support import free_port

from wcrnn.checkpoint import load_checkpoint


@pytest.fixture
def s3(monkeypatch):
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    bucket = boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in credentials.items()
                                                          if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")
    bucket.create_bucket(Bucket="wcrnn")
    yield endpoint, credentials, bucket
    server.stop()


def test_sweep_keeps_trial_state_and_checkpoints_in_s3(s3, tmp_path):
    endpoint, credentials, client = s3
    spec = {
        "name": "s3-sweep",
        "task": {"name": "adding", "length": 20, "num_train": 256, "num_val": 64, "num_test": 64},
        "model": {"name": "wcrnn", "hidden_size": 8, "residual": "rotational"},
        "search_space": {"lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-2}},
        "objective": {"metric": "val_mse", "mode": "min"},
        "budget": {"num_trials": 2, "max_epochs": 2},
        "search": {"algorithm": "random", "seed": 0},
        "lyapunov": {"every": 0, "at_end": False},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")},
           **credentials, "WCRNN_S3_ENDPOINT": endpoint, "WCRNN_STORAGE": "s3://wcrnn/runs"}
    done = subprocess.run([sys.executable, "-m", "wcrnn.cli", "sweep", "run", "spec.yaml", "--json"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["path"] == "s3://wcrnn/runs/s3-sweep"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="wcrnn", Prefix="runs/s3-sweep/")["Contents"]]
    assert "runs/s3-sweep/wcrnn-sweep.json" in keys and "runs/s3-sweep/tuner.pkl" in keys
    assert sum(key.endswith("/checkpoint.pt") for key in keys) >= 2  # every trial checkpointed into S3
    assert not (tmp_path / "wcrnn_runs").exists()
    # the driver copied the best checkpoint from S3 into MLflow
    mlflow = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = summary["best"]["run_id"]
    state = load_checkpoint(mlflow.download_artifacts(run_id, "checkpoint/checkpoint.pt", str(tmp_path)))
    assert state["config"]["task"]["name"] == "adding"
    # `report` finds the sweep through its S3 path
    report = subprocess.run([sys.executable, "-m", "wcrnn.cli", "sweep", "report", "s3://wcrnn/runs/s3-sweep", "--json"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert len(json.loads(report.stdout)["table"]) == 2
