"""A real multi-node Ray cluster and a real MLflow server on loopback.

`ray start --head` plus one `ray start --address` worker (own ports, own temp dirs, token
authentication on), and `mlflow server` with the local PostgreSQL as its backend store and
artifacts proxied by the server. A sweep is submitted with `wcrnn sweep submit` exactly as a
user on a laptop would, followed with status/logs/list, and read back from the server.
Every process started here is stopped at the end.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from support import free_port, http_ok, wait_for
import yaml
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
WCRNN = [sys.executable, "-m", "wcrnn.cli"]
BIN = Path(sys.executable).parent


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def kill_tree(marker: str, groups: list[int]) -> None:
    """Kill every process whose command line mentions `marker`, and the process groups we started."""
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass  # already gone


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    short = Path(tempfile.mkdtemp(prefix="wc", dir="/tmp"))  # Ray's socket paths must stay under 107 bytes
    marker = str(short)
    token = secrets.token_hex(32)
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "WCRNN_STORAGE")},
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "PATH": f"{BIN}:{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
    groups = []
    database = f"wcrnn_test_{secrets.token_hex(4)}"
    import psycopg2

    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {database}")
    try:
        gcs, dashboard, mlflow_port = free_port(), free_port(), free_port()

        def ray_ports(worker_low):
            return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                    "--min-worker-port", str(worker_low), "--max-worker-port", str(worker_low + 40),
                    "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                    "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]

        def start(command, log):
            process = subprocess.Popen(command, env=env, cwd=base, stdout=open(base / log, "w"),
                                       stderr=subprocess.STDOUT, start_new_session=True)
            groups.append(process.pid)
            return process

        head = start([str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
                      "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "1",
                      "--ray-client-server-port", str(free_port()), "--temp-dir", str(short / "h"),
                      "--disable-usage-stats", *ray_ports(21000)], "head.log")
        assert head.wait(timeout=120) == 0, (base / "head.log").read_text()[-3000:]
        worker = start([str(BIN / "ray"), "start", "--address", f"127.0.0.1:{gcs}", "--node-ip-address", "127.0.0.1",
                        "--num-cpus", "1", "--temp-dir", str(short / "w"), "--disable-usage-stats",
                        *ray_ports(22000)], "worker.log")
        assert worker.wait(timeout=120) == 0, (base / "worker.log").read_text()[-3000:]
        start([str(BIN / "mlflow"), "server", "--backend-store-uri",
               f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}", "--artifacts-destination",
               (base / "mlflow-artifacts").as_uri(), "--serve-artifacts", "--host", "127.0.0.1",
               "--port", str(mlflow_port), "--workers", "1"], "mlflow.log")
        tracking = f"http://127.0.0.1:{mlflow_port}"
        wait_for(lambda: http_ok(f"{tracking}/health"), 120, "the MLflow server")
        address = f"http://127.0.0.1:{dashboard}"
        wait_for(lambda: port_open(dashboard), 60, "the Ray dashboard")

        def alive_nodes():
            done = subprocess.run([str(BIN / "ray"), "list", "nodes", "--address", f"127.0.0.1:{gcs}", "--format", "json",
                                   "--filter", "state=ALIVE"], env=env, capture_output=True, text=True)
            return done.returncode == 0 and len(json.loads(done.stdout or "[]")) == 2

        wait_for(alive_nodes, 90, "two alive Ray nodes")
        yield {"address": address, "tracking": tracking, "env": env, "base": base, "gcs": gcs}
    finally:
        kill_tree(marker, groups)
        shutil.rmtree(short, ignore_errors=True)
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        admin.close()


def wcrnn(cluster, *args, timeout=300, check=True):
    done = subprocess.run([*WCRNN, *args], env=cluster["env"], cwd=cluster["base"], capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def spec_file(cluster, name, trials, epochs):
    spec = {
        "name": name,
        "task": {"name": "adding", "length": 20, "num_train": 512, "num_val": 128, "num_test": 128},
        "model": {"name": "wcrnn", "hidden_size": 16, "residual": "rotational"},
        "training": {"optimizer": "adam", "batch_size": 64},
        "search_space": {"lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-2},
                         "phi0": {"distribution": "uniform", "low": 0.1, "high": 0.5},
                         "heads": {"distribution": "categorical", "choices": [1, 4]}},
        "objective": {"metric": "val_mse", "mode": "min"},
        "budget": {"num_trials": trials, "max_epochs": epochs},
        "search": {"algorithm": "random", "seed": 1},
        "resources": {"cpu": 1, "max_concurrent": 2},
        "lyapunov": {"every": 0, "at_end": True, "num_sequences": 4},
    }
    path = cluster["base"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def wait_job(cluster, job, timeout=420):
    def ended():
        out = wcrnn(cluster, "sweep", "status", job, "--address", cluster["address"], "--json").stdout
        status = json.loads(out)["status"]
        return status if status in ("SUCCEEDED", "FAILED", "STOPPED") else None

    return wait_for(ended, timeout, f"job {job} to end")


@pytest.fixture(scope="module")
def submitted(cluster):
    spec = spec_file(cluster, "cluster-sweep", trials=4, epochs=2)
    info = json.loads(wcrnn(cluster, "sweep", "submit", str(spec), "--address", cluster["address"], "--tracking-uri",
                            cluster["tracking"], "--storage", str(cluster["base"] / "shared-storage"), "--json").stdout)
    status = wait_job(cluster, info["job_id"])
    return info, status


def test_submitted_sweep_succeeds_across_two_nodes_and_everything_is_on_the_server(cluster, submitted):
    info, status = submitted
    logs = wcrnn(cluster, "sweep", "logs", info["job_id"], "--address", cluster["address"]).stdout
    assert status == "SUCCEEDED", logs[-4000:]
    assert info["dashboard"].startswith(cluster["address"]) and info["job_id"] in info["dashboard"]
    assert info["mlflow_experiment"].startswith(f"{cluster['tracking']}/#/experiments/")
    client = MlflowClient(cluster["tracking"])
    experiment = client.get_experiment_by_name("cluster-sweep")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("wcrnn.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("wcrnn.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 4
    assert len({c.data.tags["wcrnn.node_id"] for c in children}) >= 2, "trials should run on both nodes"
    for child in children:
        run_id = child.info.run_id
        assert child.data.tags["wcrnn.status"] == "finished"
        assert 1e-3 <= float(child.data.params["training.lr"]) <= 1e-2
        assert [m.step for m in client.get_metric_history(run_id, "val_mse")] == [1, 2]
        assert "max_lyapunov" in child.data.metrics
        files = {a.path for a in client.list_artifacts(run_id, "lyapunov")} | {
            a.path for a in client.list_artifacts(run_id, "checkpoint")}
        assert {"lyapunov/spectrum.json", "lyapunov/spectrum.png", "checkpoint/checkpoint.pt"} <= files
    # artifacts went through the server's proxy into its artifact destination
    assert list((cluster["base"] / "mlflow-artifacts").rglob("checkpoint.pt"))
    checkpoint = client.download_artifacts(children[0].info.run_id, "checkpoint/checkpoint.pt", str(cluster["base"]))
    from wcrnn.checkpoint import load_checkpoint

    assert load_checkpoint(checkpoint)["config"]["model"]["hidden_size"] == 16
    assert "trials 4/4 done" in logs


def test_status_logs_and_list_follow_the_job(cluster, submitted):
    info, _ = submitted
    listed = json.loads(wcrnn(cluster, "sweep", "list", "--address", cluster["address"], "--json").stdout)
    assert {row["job_id"]: row["sweep"] for row in listed}[info["job_id"]] == "cluster-sweep"
    plain = wcrnn(cluster, "sweep", "status", info["job_id"], "--address", cluster["address"]).stdout
    assert "SUCCEEDED" in plain
    followed = wcrnn(cluster, "sweep", "logs", info["job_id"], "--follow", "--address", cluster["address"]).stdout
    assert "trials 4/4 done" in followed


def test_stop_ends_a_running_sweep(cluster):
    spec = spec_file(cluster, "long-sweep", trials=40, epochs=5)
    info = json.loads(wcrnn(cluster, "sweep", "submit", str(spec), "--address", cluster["address"], "--tracking-uri",
                            cluster["tracking"], "--storage", str(cluster["base"] / "shared-storage"), "--json").stdout)

    def running():
        out = wcrnn(cluster, "sweep", "status", info["job_id"], "--address", cluster["address"], "--json").stdout
        return json.loads(out)["status"] == "RUNNING"

    wait_for(running, 120, "the long sweep to run")
    stopped = wcrnn(cluster, "sweep", "stop", info["job_id"], "--address", cluster["address"]).stdout
    assert "stop requested" in stopped
    assert wait_job(cluster, info["job_id"], timeout=120) == "STOPPED"


def test_bad_spec_is_not_submitted(cluster, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "task": {"name": "adding"}, "model": {"name": "wcrnn", "heads": 3}}))
    before = json.loads(wcrnn(cluster, "sweep", "list", "--address", cluster["address"], "--json").stdout)
    done = wcrnn(cluster, "sweep", "submit", str(bad), "--address", cluster["address"], check=False)
    assert done.returncode == 2 and "objective" in done.stderr
    after = json.loads(wcrnn(cluster, "sweep", "list", "--address", cluster["address"], "--json").stdout)
    assert len(after) == len(before)


def test_jobs_api_refuses_a_client_without_the_token(cluster):
    env = {k: v for k, v in cluster["env"].items() if k != "RAY_AUTH_TOKEN"}
    env["RAY_AUTH_TOKEN"] = "0" * 64
    done = subprocess.run([*WCRNN, "sweep", "list", "--address", cluster["address"]], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "RAY_AUTH_TOKEN" in done.stderr


def test_unreachable_cluster_and_tracking_server_fail_fast_and_clearly(tmp_path):
    closed = free_port()
    spec = ROOT / "sweeps" / "quickstart.yaml"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    started = time.monotonic()
    done = subprocess.run([*WCRNN, "sweep", "submit", str(spec), "--address", f"http://127.0.0.1:{closed}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 1 and "cannot reach the Ray cluster" in done.stderr
    done = subprocess.run([*WCRNN, "sweep", "run", str(spec), "--tracking-uri", f"http://127.0.0.1:{closed}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 1 and "cannot reach the MLflow tracking store" in done.stderr
    assert not (tmp_path / "wcrnn_runs").exists()  # nothing started
    assert time.monotonic() - started < 90


def test_run_from_a_cluster_node_with_an_explicit_address(cluster):
    spec = spec_file(cluster, "node-sweep", trials=2, epochs=1)
    done = wcrnn(cluster, "sweep", "run", str(spec), "--address", f"127.0.0.1:{cluster['gcs']}", "--tracking-uri",
                 cluster["tracking"], "--storage", str(cluster["base"] / "shared-storage"), "--json")
    assert done.stdout.lstrip().startswith("{"), done.stdout[:2000]
    summary = json.loads(done.stdout)
    assert summary["counts"] == {"finished": 2}
    client = MlflowClient(cluster["tracking"])
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.tags["wcrnn.ray_address"] == f"127.0.0.1:{cluster['gcs']}"
