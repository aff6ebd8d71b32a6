"""Sweeps on a Ray cluster through Ray Jobs: submit, status, logs, stop, list.

`submit` validates the spec on the laptop first (a bad spec never reaches the cluster), then
sends a Ray Job whose entrypoint is `wcrnn sweep run spec.yaml --address auto` and whose
runtime environment carries the spec (as its working directory) and the tracking and storage
settings (as environment variables) to the driver and every worker. The cluster runs the same
code as a laptop does; only the addresses differ.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import yaml

from ..errors import ConfigError, ServiceUnavailable
from .spec import SweepSpec

# Settings a sweep's driver and trials need on the cluster, passed on when set here.
# Settings travel with a job; credentials never do: Ray logs a job's runtime environment and shows
# it on the dashboard. The cluster has its own (docker-compose env, a KubeRay secret, an instance role).
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "WCRNN_STORAGE", "WCRNN_S3_ENDPOINT", "AWS_DEFAULT_REGION")


def job_client(address: str | None):
    """A JobSubmissionClient for http://HEAD:8265, failing fast with a clear error if unreachable."""
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ConfigError("--address: give the Ray dashboard address, e.g. --address http://127.0.0.1:8265")
    if "://" not in address:
        address = f"http://{address}"
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https"):
        raise ConfigError(f"--address {address}: Ray Jobs needs the dashboard's http(s)://HOST:8265 address")
    try:
        socket.create_connection((parsed.hostname, parsed.port or 8265), timeout=5).close()
    except OSError as error:
        raise ServiceUnavailable(f"--address {address}: cannot reach the Ray cluster ({error.strerror or error}); "
                          "is the head node up and its dashboard port open?") from None
    from ray.exceptions import AuthenticationError

    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise ServiceUnavailable(f"--address {address}: the cluster refused our Ray token; set RAY_AUTH_TOKEN "
                                 "(or RAY_AUTH_TOKEN_PATH) to the cluster's token (`ray get-auth-token` on the head)") from None
    except (ConnectionError, RuntimeError) as error:
        raise ServiceUnavailable(f"--address {address}: {str(error).strip().splitlines()[0]}") from None


def submit_sweep(spec: SweepSpec, address: str | None, tracking_uri: str | None = None,
                 storage: str | None = None, submission_id: str | None = None, resume: bool = False) -> dict:
    """Submit a validated sweep as a Ray Job; returns job id and the URLs to follow it.

    `resume=True` submits `wcrnn sweep resume NAME` instead: it continues the sweep of that name
    in the storage (after its job was stopped or its driver lost), with the tracking server it began with.
    """
    client = job_client(address)
    env = {key: os.environ[key] for key in FORWARDED_ENV if os.environ.get(key)}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    if storage:
        env["WCRNN_STORAGE"] = storage
    if resume:
        command = ["wcrnn", "sweep", "resume", spec.name, "--address", "auto"]
    else:
        command = ["wcrnn", "sweep", "run", "spec.yaml", "--address", "auto"]
    submission_id = submission_id or f"wcrnn-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory(prefix="wcrnn-job-") as folder:
        # The validated spec (overrides applied) travels as the job's working directory.
        Path(folder, "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        try:
            job_id = client.submit_job(
                entrypoint=shlex.join(command), submission_id=submission_id,
                runtime_env={"working_dir": folder, "env_vars": env},
                metadata={"wcrnn.sweep": spec.name, "wcrnn.spec_hash": spec.spec_hash()})
        except RuntimeError as error:
            raise ConfigError(f"the cluster refused the job: {str(error).strip().splitlines()[0]}") from None
    dashboard = client.get_address()
    tracking = env.get("MLFLOW_TRACKING_URI")
    warning = None
    if tracking and _is_loopback(tracking) and not _is_loopback(dashboard):
        warning = (f"the job will log to {tracking}, which on the cluster means the cluster node itself; "
                   "pass --tracking-uri with an address the cluster can reach (e.g. http://mlflow:5000)")
    return {"job_id": job_id, "dashboard": f"{dashboard}/#/jobs/{job_id}", "tracking_uri": tracking,
            "mlflow_experiment": experiment_url(tracking, spec.experiment_name) if tracking else None,
            "experiment": spec.experiment_name, "warning": warning}


def _is_loopback(url: str) -> bool:
    host = urlparse(url if "://" in url else f"http://{url}").hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def experiment_url(tracking_uri: str, experiment: str) -> str:
    """The MLflow UI address of an experiment (created here if the server is reachable)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return tracking_uri
    try:
        from mlflow import MlflowClient

        from .tracking import _quick_failure, ensure_experiment

        with _quick_failure():
            experiment_id = ensure_experiment(MlflowClient(tracking_uri), experiment, None)
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}"
    except Exception:  # the server may only be reachable from inside the cluster
        return f"{tracking_uri.rstrip('/')} (experiment {experiment!r})"


def job_status(address: str | None, job_id: str) -> dict:
    client = job_client(address)
    info = _job_info(client, job_id)
    return {"job_id": job_id, "status": str(info.status.value), "message": info.message,
            "entrypoint": info.entrypoint, "start_time": info.start_time, "end_time": info.end_time,
            "metadata": info.metadata}


def job_logs(address: str | None, job_id: str, follow: bool = False, write=print) -> None:
    client = job_client(address)
    _job_info(client, job_id)
    if not follow:
        write(client.get_job_logs(job_id), end="")
        return

    async def tail():
        async for lines in client.tail_job_logs(job_id):
            write(lines, end="")

    asyncio.run(tail())


def stop_job(address: str | None, job_id: str) -> bool:
    client = job_client(address)
    _job_info(client, job_id)
    return client.stop_job(job_id)


def list_jobs(address: str | None) -> list[dict]:
    client = job_client(address)
    rows = []
    for info in client.list_jobs():
        rows.append({"job_id": info.submission_id or info.job_id, "status": str(info.status.value),
                     "sweep": (info.metadata or {}).get("wcrnn.sweep", ""), "entrypoint": info.entrypoint,
                     "start_time": info.start_time})
    return sorted(rows, key=lambda row: row["start_time"] or 0)


def _job_info(client, job_id: str):
    try:
        return client.get_job_info(job_id)
    except RuntimeError as error:
        if "404" in str(error) or "does not exist" in str(error):
            raise ConfigError(f"no job {job_id!r} on this cluster (`wcrnn sweep list` shows the jobs)") from None
        raise


__all__ = ["submit_sweep", "job_status", "job_logs", "stop_job", "list_jobs", "job_client",
           "FORWARDED_ENV"]
