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
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from support import free_port, http_ok, kill_processes, wait_for
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


def ray_ports(worker_low):
    """Every port of a Ray node chosen here, so that nodes on one machine do not collide."""
    return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--min-worker-port", str(worker_low), "--max-worker-port", str(worker_low + 40),
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]


def alive_nodes(cluster) -> list[dict]:
    done = subprocess.run([str(BIN / "ray"), "list", "nodes", "--address", f"127.0.0.1:{cluster['gcs']}", "--format",
                           "json", "--filter", "state=ALIVE", "--detail"], env=cluster["env"], capture_output=True,
                          text=True)
    return json.loads(done.stdout or "[]") if done.returncode == 0 else []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    short = Path(tempfile.mkdtemp(prefix="wc", dir="/tmp"))  # Ray's socket paths must stay under 107 bytes
    marker = str(short)
    token = secrets.token_hex(32)
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "WCRNN_STORAGE")},
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "PATH": f"{BIN}:{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
           # a node that stops answering is declared dead after 5 missed checks: 5 s here instead of 15 s
           "RAY_health_check_period_ms": "1000"}
    groups = []
    database = f"wcrnn_test_{secrets.token_hex(4)}"
    import psycopg2

    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {database}")
    try:
        gcs, dashboard, mlflow_port = free_port(), free_port(), free_port()

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

        started = {"address": address, "tracking": tracking, "env": env, "base": base, "gcs": gcs}
        wait_for(lambda: len(alive_nodes(started)) == 2, 90, "two alive Ray nodes")
        yield started
    finally:
        kill_processes(marker, groups)
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


def test_a_stopped_sweep_is_resubmitted_with_resume_and_finishes_without_rerunning(cluster):
    spec = spec_file(cluster, "long-sweep", trials=6, epochs=4)
    submit = ["sweep", "submit", str(spec), "--address", cluster["address"], "--tracking-uri", cluster["tracking"],
              "--storage", str(cluster["base"] / "shared-storage"), "--json"]
    info = json.loads(wcrnn(cluster, *submit).stdout)
    client = MlflowClient(cluster["tracking"])

    def finished_trials():
        experiment = client.get_experiment_by_name("long-sweep")
        return experiment and client.search_runs([experiment.experiment_id], "tags.`wcrnn.status` = 'finished'")

    done_before = wait_for(finished_trials, 180, "a finished trial")
    stopped = wcrnn(cluster, "sweep", "stop", info["job_id"], "--address", cluster["address"]).stdout
    assert "stop requested" in stopped
    assert wait_job(cluster, info["job_id"], timeout=120) == "STOPPED"
    experiment_id = client.get_experiment_by_name("long-sweep").experiment_id

    def history(run_id):
        return [(m.step, m.value) for m in client.get_metric_history(run_id, "val_mse")]

    before = {run.info.run_id: history(run.info.run_id) for run in done_before}

    resumed = json.loads(wcrnn(cluster, *submit, "--resume").stdout)
    assert wait_job(cluster, resumed["job_id"]) == "SUCCEEDED", \
        wcrnn(cluster, "sweep", "logs", resumed["job_id"], "--address", cluster["address"]).stdout[-3000:]
    runs = client.search_runs([experiment_id])
    assert [run.info.status for run in runs if run.data.tags.get("wcrnn.role") == "sweep"] == ["FINISHED"]
    trials = [run for run in runs if run.data.tags.get("wcrnn.role") == "trial"]
    assert len(trials) == 6 and all(run.info.status == "FINISHED" for run in trials)
    for run in trials:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_mse"))
        assert steps == [1, 2, 3, 4], f"every epoch exactly once, got {steps}"
    for run_id, metrics in before.items():  # finished before the stop: not re-run
        assert history(run_id) == metrics


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


def test_a_lost_worker_nodes_trial_continues_its_run_on_the_other_nodes(cluster):
    """A third node joins, takes a trial, and is killed without clean-up (SIGKILL) mid-trial."""
    marker = tempfile.mkdtemp(prefix="wx", dir="/tmp")
    node = subprocess.Popen([str(BIN / "ray"), "start", "--address", f"127.0.0.1:{cluster['gcs']}", "--node-ip-address",
                             "127.0.0.1", "--num-cpus", "1", "--resources", '{"doomed": 1}', "--temp-dir", marker,
                             "--disable-usage-stats", *ray_ports(23000)],
                            env=cluster["env"], cwd=cluster["base"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert node.wait(timeout=120) == 0
        nodes = wait_for(lambda: [n for n in alive_nodes(cluster) if "doomed" in n.get("resources_total", {})], 90,
                         "the third node")
        doomed = nodes[0]["node_id"]
        # 12 epochs: the kill comes after two are in MLflow, and must find the trial with epochs left
        # to train even when the epochs are fast and MLflow's copy lags a few epochs behind
        path = spec_file(cluster, "lost-node", trials=3, epochs=12)
        spec = yaml.safe_load(path.read_text())
        # epochs of about a second, so that the node dies in the middle of its trial
        spec["task"].update(length=100, num_train=6144)
        spec["budget"]["max_failures"] = 2
        spec["resources"]["max_concurrent"] = 3  # one trial per node
        path.write_text(yaml.safe_dump(spec))
        info = json.loads(wcrnn(cluster, "sweep", "submit", str(path), "--address", cluster["address"], "--tracking-uri",
                                cluster["tracking"], "--storage", str(cluster["base"] / "shared-storage"), "--json").stdout)
        client = MlflowClient(cluster["tracking"])

        def doomed_trial_running():
            experiment = client.get_experiment_by_name("lost-node")
            runs = client.search_runs([experiment.experiment_id], f"tags.`wcrnn.node_id` = '{doomed}'") if experiment else []
            for run in runs:
                if len(client.get_metric_history(run.info.run_id, "val_mse")) >= 2:
                    return run
            return None

        victim = wait_for(doomed_trial_running, 300, "two epochs of a trial on the third node")
        kill_processes(marker, [node.pid])  # raylet, its agents and its workers: the node is gone
        status = wait_job(cluster, info["job_id"])
    finally:
        kill_processes(marker, [node.pid])
        shutil.rmtree(marker, ignore_errors=True)

    assert status == "SUCCEEDED", wcrnn(cluster, "sweep", "logs", info["job_id"], "--address", cluster["address"]).stdout[-3000:]
    experiment_id = client.get_experiment_by_name("lost-node").experiment_id
    trials = [r for r in client.search_runs([experiment_id]) if r.data.tags.get("wcrnn.role") == "trial"]
    assert len(trials) == 3, "one run per trial: the restarted trial continues its run"
    run = client.get_run(victim.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["wcrnn.status"] == "finished"
    assert run.data.tags["wcrnn.restarts"] == "1"  # the restart is visible as a tag
    assert run.data.tags["wcrnn.node_id"] != doomed  # it ended on a surviving node
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_mse"))
    assert steps == list(range(1, 13)), f"epochs continue without gaps or duplicates, got {steps}"
    for other in trials:
        assert other.info.status == "FINISHED"
