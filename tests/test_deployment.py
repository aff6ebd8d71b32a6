"""Static checks of the deployment files (no Docker engine, no network, no Ray started).

docker-compose.yml, .env.example, .dockerignore and cluster/: the Dockerfile, the Ray cluster
launcher files (on-premises and AWS GPU), the KubeRay RayCluster and RayJob manifests, the MLflow
server settings and the MinIO bucket script. They cannot be run here, so these tests check what
can be checked without running them: every file parses; every reference inside docker-compose.yml
resolves (services, volumes, health checks, bind-mounted files); ports bind to localhost unless
asked; no secret is written in; the commands agree with the code's CLI (`wcrnn` subcommands and
their options), with `ray start`'s and `mlflow server`'s options, and with the environment
variables that wcrnn, Ray and MLflow read; Ray's own validator accepts the launcher files; the
sweep spec shipped in the RayJob validates.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
from fnmatch import fnmatch
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
DOCKERFILE = CLUSTER / "Dockerfile"
MLFLOW_ENV = CLUSTER / "mlflow-server.env.example"
MINIO_INIT = CLUSTER / "minio-init.sh"
LAUNCHER_FILES = [CLUSTER / "ray-cluster.onprem.yaml", CLUSTER / "ray-cluster.aws-gpu.yaml"]
KUBERAY_CLUSTER = CLUSTER / "kuberay-raycluster.yaml"
KUBERAY_JOB = CLUSTER / "kuberay-rayjob.yaml"
KUBERAY_FILES = [KUBERAY_CLUSTER, KUBERAY_JOB]
YAML_FILES = [COMPOSE, *LAUNCHER_FILES, *KUBERAY_FILES]
# Every file that may mention a `wcrnn ...` command or an environment variable.
TEXT_FILES = [*YAML_FILES, DOCKERFILE, CLUSTER / "README.md", MLFLOW_ENV, MINIO_INIT, ENV_EXAMPLE]

SERVICES = {"postgres", "minio", "minio-init", "mlflow", "ray-head", "ray-worker"}
LOCAL_BIND = ("${WCRNN_BIND:-127.0.0.1}:", "127.0.0.1:")
# What every Ray node needs (the contract with wcrnn.sweep: tracking, storage, S3, Ray token).
RAY_NODE_ENV = {"MLFLOW_TRACKING_URI", "WCRNN_STORAGE", "WCRNN_S3_ENDPOINT", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY")
CHECKED_PREFIXES = ("WCRNN_", "MLFLOW_", "RAY_", "AWS_")
# `${VAR}`, `${VAR:-default}`, `${VAR:?error}`, `${VAR:+alt}` and the forms without ':'; `$${...}`
# is an escaped `$` (expanded by the container's shell, not by compose).
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


# -- helpers -------------------------------------------------------------------------------------

def load_docs(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


@lru_cache(maxsize=None)
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def service(name: str) -> dict:
    return compose()["services"][name]


def command_text(value) -> str:
    """A compose command (string or list) as one line."""
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(str(part) for part in value)
    return " ".join(str(value).split())


def healthcheck_text(svc: dict) -> str:
    test = svc.get("healthcheck", {}).get("test")
    return command_text(test)


def env_file_keys(path: Path, commented: bool = False) -> dict:
    """KEY=value lines of an env file (with commented=True also `# KEY=value` lines)."""
    pattern = re.compile(r"^\s*(#\s*)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
    keys = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = pattern.match(line)
        if match and (commented or not match.group(1)):
            keys[match.group(2)] = match.group(3).strip()
    return keys


def package_dir(name: str) -> Path:
    """Where an installed package lives, without importing it."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=None)
def source_text(package: str, *relative: str) -> str:
    base = package_dir(package)
    parts = []
    for rel in relative:
        for path in sorted(base.glob(rel)):
            parts.append(path.read_text(encoding="utf-8", errors="replace"))
    assert parts, f"none of {relative} found in {base}"
    return "\n".join(parts)


@lru_cache(maxsize=None)
def wcrnn_source() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "wcrnn").rglob("*.py")))


@lru_cache(maxsize=None)
def known_env_names() -> set:
    """Environment variable names that wcrnn, MLflow and Ray read (found in their sources)."""
    names = set(re.findall(r"[\"']([A-Z][A-Z0-9_]+)[\"']", wcrnn_source()))
    mlflow = source_text("mlflow", "environment_variables.py", "cli/__init__.py", "utils/cli_args.py")
    names |= set(re.findall(r"\b(MLFLOW_[A-Z0-9_]+)\b", mlflow))
    ray = source_text("ray", "_private/authentication/*.py", "_private/runtime_env/image_uri.py", "exceptions.py",
                      "_common/usage/usage_constants.py", "_private/ray_constants.py")
    names |= set(re.findall(r"\b(RAY_[A-Z0-9_]+)\b", ray))
    return names


def check_env_name(name: str, where: str, consumed_locally: str = "") -> None:
    """A variable with a wcrnn/MLflow/Ray/AWS prefix must be one somebody reads."""
    if not name.startswith(CHECKED_PREFIXES):
        return
    if name in known_env_names():
        return
    # A setting used only inside the same service's own command (`$${NAME}` in compose).
    assert re.search(r"\$\{?" + re.escape(name) + r"\b", consumed_locally), (
        f"{where}: {name} is read neither by wcrnn, MLflow nor Ray, nor by the command it is set for "
        f"(a misspelling?)")


@lru_cache(maxsize=None)
def cli():
    """The `wcrnn` click command tree (typer), to check subcommands and options."""
    import typer.main

    from wcrnn.cli import app

    return typer.main.get_command(app)


def check_wcrnn_argv(argv: list[str], where: str) -> None:
    """`wcrnn [group] command [args] [--options]`: the command and every --option exist."""
    assert argv and argv[0] == "wcrnn", argv
    command = cli()
    path = ["wcrnn"]
    rest = argv[1:]
    # A group has .commands (typer may vendor its own click, so no isinstance check).
    while rest and isinstance(getattr(command, "commands", None), dict) and not rest[0].startswith("-"):
        names = [part for part in rest[0].split("/") if part]  # "submit/status/logs" in prose
        for name in names:
            assert name in command.commands, (
                f"{where}: `{' '.join(path + [name])}` is not a command (has: {sorted(command.commands)})")
        if len(names) > 1:
            return
        command = command.commands[names[0]]
        path.append(names[0])
        rest = rest[1:]
    options = {opt for param in command.params for opt in [*param.opts, *getattr(param, "secondary_opts", [])]}
    options.add("--help")
    for token in rest:
        if token.startswith("--"):
            option = token.split("=", 1)[0]
            assert option in options, f"{where}: `{' '.join(path)}` has no option {option} (has: {sorted(options)})"


def split_command(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def ray_start_flags(text: str) -> list[str]:
    """The --options of every `ray start` in a command line."""
    flags = []
    for chunk in re.split(r"&&|;|\|\|", text):
        tokens = split_command(chunk)
        for index in range(len(tokens) - 1):
            if tokens[index] == "ray" and tokens[index + 1] == "start":
                flags += [token.split("=", 1)[0] for token in tokens[index + 2:] if token.startswith("--")]
    return flags


def check_ray_start(text: str, where: str) -> None:
    scripts = source_text("ray", "scripts/scripts.py")
    flags = ray_start_flags(text)
    assert flags, f"{where}: no `ray start` in {text!r}"
    for flag in flags:
        assert f'"{flag}"' in scripts, f"{where}: `ray start` has no option {flag}"


def interpolations(text: str) -> list[tuple[str, str, str]]:
    """(name, operator, argument) of every compose interpolation in the text, comments excluded."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return INTERPOLATION.findall("\n".join(lines))


# -- every file parses -----------------------------------------------------------------------------

@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_files_parse(path):
    docs = load_docs(path)
    assert docs and all(isinstance(doc, dict) for doc in docs), f"{path}: expected one or more mappings"


def test_all_deployment_files_exist():
    for path in [*TEXT_FILES, DOCKERIGNORE]:
        assert path.is_file(), f"missing {path.relative_to(ROOT)}"
    readme = (CLUSTER / "README.md").read_text(encoding="utf-8")
    for path in sorted(CLUSTER.iterdir()):
        if path.name != "README.md" and not path.name.startswith("."):
            assert path.name in readme, f"cluster/README.md does not mention {path.name}"
    for name in ("docker-compose.yml", ".env.example"):
        assert name in readme


# -- docker-compose.yml ------------------------------------------------------------------------------

def test_compose_services_and_dependencies():
    services = compose()["services"]
    assert set(services) == SERVICES
    for name, svc in services.items():
        assert svc.get("image"), f"{name}: no image"
        assert "restart" in svc, f"{name}: no restart policy"
        depends = svc.get("depends_on", {})
        if isinstance(depends, list):
            depends = {target: {"condition": "service_started"} for target in depends}
        for target, spec in depends.items():
            assert target in services, f"{name} depends on undefined service {target}"
            condition = spec.get("condition")
            assert condition in ("service_healthy", "service_completed_successfully"), (name, target, condition)
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy; it has no healthcheck"
            else:
                assert services[target].get("restart") == "no", f"{target} is waited on to complete, so it must not restart"
    # The order the stack needs.
    assert set(service("mlflow")["depends_on"]) >= {"postgres", "minio-init"}
    assert "minio" in service("minio-init")["depends_on"]
    assert "ray-head" in service("ray-worker")["depends_on"]
    # The project image (cluster/Dockerfile) runs MLflow and Ray.
    for name in ("mlflow", "ray-head", "ray-worker"):
        build = service(name)["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert service(name)["image"] == service("ray-head")["image"]


def test_compose_volumes_declared_and_used():
    declared = set(compose().get("volumes") or {})
    used = set()
    for name, svc in compose()["services"].items():
        for entry in svc.get("volumes", []):
            if isinstance(entry, dict):
                source, kind = entry.get("source", ""), entry.get("type", "volume")
            else:
                source = entry.split(":", 1)[0]
                kind = "bind" if source.startswith((".", "/", "~", "$")) else "volume"
            if kind == "volume":
                assert source in declared, f"{name}: volume {source} is not declared under top-level volumes"
                used.add(source)
            elif kind == "bind" and source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: bind-mounted {source} does not exist"
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"
    # Nothing that matters is lost on restart.
    for name, path in (("postgres", "/var/lib/postgresql/data"), ("minio", "/data"), ("mlflow", "/home/ray/mlflow")):
        mounts = [entry.split(":")[1] for entry in service(name)["volumes"] if isinstance(entry, str)]
        assert path in mounts, f"{name} keeps {path} in no volume"


def test_compose_ports_bind_to_localhost_by_default():
    published = {}
    for name, svc in compose()["services"].items():
        for port in svc.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") in ("${WCRNN_BIND:-127.0.0.1}", "127.0.0.1"), (name, port)
                published[int(port["published"])] = name
                continue
            port = str(port)
            assert port.startswith(LOCAL_BIND), f"{name}: port {port} is not bound to ${{WCRNN_BIND:-127.0.0.1}}"
            host_port = port[len(next(p for p in LOCAL_BIND if port.startswith(p))):].split(":")[0]
            published[int(host_port)] = name
    assert published[8265] == "ray-head" and published[5000] == "mlflow" and published[9001] == "minio"
    assert 6379 not in published and 9000 not in published, "GCS and the S3 API stay inside the compose network"


def test_ray_worker_scales_and_reserves_gpus():
    worker = service("ray-worker")
    assert "container_name" not in worker and "ports" not in worker and "hostname" not in worker, (
        "ray-worker must scale with --scale ray-worker=N: no container_name, hostname or host ports")
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
               and (d.get("count") == "all" or isinstance(d.get("count"), int)) for d in devices), devices
    for name in ("ray-head", "ray-worker"):
        assert service(name).get("shm_size"), f"{name}: Ray's object store needs shm_size"


def test_compose_healthchecks():
    for name in ("postgres", "minio", "mlflow", "ray-head"):
        assert healthcheck_text(service(name)), f"{name} has no healthcheck"
        assert not service(name)["healthcheck"].get("disable")
    assert "pg_isready" in healthcheck_text(service("postgres"))
    assert "ready local" in healthcheck_text(service("minio")) or "/minio/health" in healthcheck_text(service("minio"))
    assert "127.0.0.1:5000/health" in healthcheck_text(service("mlflow"))
    assert "8265/api/gcs_healthz" in healthcheck_text(service("ray-head"))  # public even with token auth


def test_mlflow_server_command():
    svc = service("mlflow")
    text = command_text(svc["command"])
    assert "mlflow server" in text
    backend = re.search(r"--backend-store-uri\s+\"?(\S+?)\"?(\s|$)", text).group(1)
    # MLflow 3 maps plain postgresql:// to psycopg 3; the image ships psycopg2 (pyproject.toml)
    assert backend.startswith("postgresql+psycopg2://") and "@postgres:5432/" in backend, backend
    assert re.search(r"--artifacts-destination\s+s3://\w", text)
    assert "--serve-artifacts" in text and "--no-serve-artifacts" not in text
    assert "--allowed-hosts" in text and "--host 0.0.0.0" in text and "--port 5000" in text
    assert "--app-name" in text, "basic auth (MLFLOW_APP_NAME=basic-auth) must be possible"
    environment = svc["environment"]
    assert environment["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "mlflow" in environment["MLFLOW_SERVER_ALLOWED_HOSTS"], "the cluster reaches MLflow as http://mlflow:5000"
    # Every flag is one `mlflow server` has.
    mlflow_cli = source_text("mlflow", "cli/__init__.py", "utils/cli_args.py")
    for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", text):
        assert f'"{flag}"' in mlflow_cli or f'"{flag}/' in mlflow_cli, f"mlflow server has no option {flag}"
    # The buckets it writes to are the ones minio-init creates.
    buckets = service("minio-init")["environment"]["WCRNN_BUCKETS"].split()
    artifact_bucket = re.search(r"--artifacts-destination\s+s3://([\w.-]+)", text).group(1)
    storage_default = re.search(r"s3://([\w.-]+)", service("ray-head")["environment"]["WCRNN_STORAGE"]).group(1)
    assert artifact_bucket in buckets and storage_default in buckets, (buckets, artifact_bucket, storage_default)


def test_ray_commands():
    head = command_text(service("ray-head")["command"])
    worker = command_text(service("ray-worker")["command"])
    for flag in ("--head", "--port=6379", "--dashboard-host=0.0.0.0", "--num-cpus=0", "--block"):
        assert flag in head.split(), f"ray-head: {flag} missing"
    assert "--address=ray-head:6379" in worker and "--block" in worker.split()
    check_ray_start(head, "ray-head")
    check_ray_start(worker, "ray-worker")


def test_ray_nodes_get_tracking_storage_and_token():
    for name in ("ray-head", "ray-worker"):
        environment = service(name)["environment"]
        assert RAY_NODE_ENV <= set(environment), f"{name} lacks {sorted(RAY_NODE_ENV - set(environment))}"
        assert environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert environment["WCRNN_S3_ENDPOINT"] == "http://minio:9000"
        assert str(environment["WCRNN_STORAGE"]).startswith("${WCRNN_STORAGE:-s3://")
        assert environment["RAY_AUTH_MODE"] == "token"
        assert environment["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN")
    # The names are the ones the code reads.
    for name in ("MLFLOW_TRACKING_URI", "WCRNN_STORAGE", "WCRNN_S3_ENDPOINT", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        assert f'"{name}"' in wcrnn_source(), f"wcrnn no longer reads {name}: update the deployment files"


def test_compose_variables_are_documented_in_env_example():
    text = COMPOSE.read_text(encoding="utf-8")
    documented = env_file_keys(ENV_EXAMPLE)
    referenced = set()
    for name, operator, _ in interpolations(text):
        referenced.add(name)
        assert name in documented, f"docker-compose.yml uses ${{{name}}}; document it in .env.example"
        if operator in ("", "?", ":?"):
            assert documented[name], f"{name} is required: .env.example must give it an example value"
    assert set(documented) <= referenced, f".env.example documents unused {sorted(set(documented) - referenced)}"
    assert "WCRNN_BIND" in referenced and documented["WCRNN_BIND"] == "127.0.0.1"


def test_no_secrets_written_in():
    def literal_secret(value) -> bool:
        value = "" if value is None else str(value).strip()
        return bool(value) and not re.fullmatch(r"(\$\{[^}]*\}\s*)+", value)

    for name, svc in compose()["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert not literal_secret(value), f"{name}: {key} is written in; take it from .env (${{{key}}})"
        text = command_text(svc.get("command"))
        for credentials in re.findall(r"://([^/@\s\"]+)@", text):
            password = credentials.split(":", 1)[-1]
            assert password.startswith("$"), f"{name}: a password is written into {text!r}"
    example_secrets = {value for key, value in env_file_keys(ENV_EXAMPLE).items() if SECRET_NAME.search(key) and value}
    example_secrets |= {value for key, value in env_file_keys(MLFLOW_ENV).items() if SECRET_NAME.search(key) and value}
    for path in [*YAML_FILES, DOCKERFILE, MINIO_INIT]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY", text), f"{path}: credentials"
        for secret in example_secrets - {"change-me"}:
            assert secret not in text, f"{path}: contains the example secret {secret!r}"
    for value in example_secrets:
        assert "change-me" in value, f"example secrets must be obvious placeholders: {value!r}"
    # Kubernetes: secrets come from Secrets (env valueFrom / envFrom), never from values or ConfigMaps.
    for path in KUBERAY_FILES:
        for doc in load_docs(path):
            if doc["kind"] == "ConfigMap":
                assert not any(SECRET_NAME.search(key) for key in doc["data"]), f"{path}: secret in a ConfigMap"
            for container in kuberay_containers(doc):
                for env in container.get("env", []):
                    if SECRET_NAME.search(env["name"]):
                        assert "valueFrom" in env and "value" not in env, f"{path}: {env['name']} is written in"
            runtime_env = yaml.safe_load(doc.get("spec", {}).get("runtimeEnvYAML", "") or "{}")
            for key in (runtime_env.get("env_vars") or {}):
                assert not SECRET_NAME.search(key), f"{path}: {key} in runtimeEnvYAML (Ray logs it); use a Secret"
    for path in LAUNCHER_FILES:
        for command in launcher_commands(yaml.safe_load(path.read_text(encoding="utf-8"))):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY[A-Z_]*)=[^$\s]", command), f"{path}: {command}"


def test_compose_environment_names_are_read_by_someone():
    for name, svc in compose()["services"].items():
        own = command_text(svc.get("command")) + " " + command_text(svc.get("entrypoint")) + " " + healthcheck_text(svc)
        if name == "minio-init":
            own += MINIO_INIT.read_text(encoding="utf-8")
        for key in svc.get("environment") or {}:
            check_env_name(key, f"docker-compose.yml {name}", own)


def test_minio_init_script():
    mount = next(entry for entry in service("minio-init")["volumes"] if "minio-init.sh" in entry)
    assert (ROOT / mount.split(":")[0]).resolve() == MINIO_INIT
    assert "/minio-init.sh" in command_text(service("minio-init")["entrypoint"])
    text = MINIO_INIT.read_text(encoding="utf-8")
    assert "mc mb --ignore-existing" in text and "WCRNN_BUCKETS" in text
    subprocess.run(["sh", "-n", str(MINIO_INIT)], check=True, timeout=10)


def test_compose_header_explains_use():
    header = COMPOSE.read_text(encoding="utf-8").split("\nname:", 1)[0]
    for needle in ("docker compose up -d --scale ray-worker=2", "wcrnn sweep submit sweeps/quickstart.yaml",
                   "--address http://127.0.0.1:8265", "http://127.0.0.1:5000", "http://127.0.0.1:8265",
                   "WCRNN_BIND=0.0.0.0", "basic-auth", "RAY_AUTH_TOKEN"):
        assert needle in header, f"docker-compose.yml's header comment does not mention {needle}"
    assert (ROOT / "sweeps/quickstart.yaml").is_file()


# -- `wcrnn ...` commands and environment variable names in every file ------------------------------

def test_wcrnn_commands_exist_with_their_options():
    """Every `wcrnn ...` command line in the deployment files names a real command and real options."""
    found = 0
    for path in TEXT_FILES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in re.finditer(r"(?<![\w/.:-])wcrnn (?=sweep |train\b|lyapunov\b|spectrum\b|--help)", line):
                rest = line[match.start():]
                rest = re.split(r"`|\s#|\)|\s\|\s|;|&&|>", rest)[0]  # end of the command in prose or shell
                argv = split_command(rest)
                check_wcrnn_argv(argv, f"{path.relative_to(ROOT)}:{number}")
                found += 1
    assert found >= 10


def test_structured_commands_use_the_cli():
    """The commands that really run (compose, launcher, KubeRay, Dockerfile) parse as CLI calls."""
    commands = []
    for doc in load_docs(KUBERAY_JOB):
        if doc["kind"] == "RayJob":
            commands.append(doc["spec"]["entrypoint"])
    for path in LAUNCHER_FILES:
        commands += [c for c in launcher_commands(yaml.safe_load(path.read_text(encoding="utf-8"))) if "wcrnn" in c]
    for instruction in dockerfile_instructions():
        keyword, _, rest = instruction.partition(" ")
        if keyword.upper() == "RUN" and "wcrnn " in rest:
            commands.append(rest)
        elif keyword.upper() in ("CMD", "ENTRYPOINT") and "wcrnn" in rest:
            commands.append(shlex.join(json.loads(rest)) if rest.startswith("[") else rest)
    assert len(commands) >= 5
    for command in commands:
        for chunk in re.split(r"&&|;|>|\|", command):
            tokens = split_command(chunk)
            if "wcrnn" in tokens:
                check_wcrnn_argv(tokens[tokens.index("wcrnn"):], command)


def test_environment_names_in_cluster_files():
    # KubeRay ConfigMaps, container env and runtimeEnvYAML.
    for path in KUBERAY_FILES:
        for doc in load_docs(path):
            if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-env"):
                for key in doc["data"]:
                    check_env_name(key, f"{path.name} ConfigMap")
            for container in kuberay_containers(doc):
                for env in container.get("env", []):
                    check_env_name(env["name"], f"{path.name} {container['name']}")
            runtime_env = yaml.safe_load(doc.get("spec", {}).get("runtimeEnvYAML", "") or "{}")
            for key in runtime_env.get("env_vars") or {}:
                check_env_name(key, f"{path.name} runtimeEnvYAML")
    # The nodes.env the launcher files and the README describe, and the MLflow server settings.
    for path in [*LAUNCHER_FILES, CLUSTER / "README.md"]:
        for key in re.findall(r"^\s*#?\s*([A-Z][A-Z0-9_]+)=", path.read_text(encoding="utf-8"), re.M):
            check_env_name(key, path.name)
    for key in env_file_keys(MLFLOW_ENV, commented=True):
        check_env_name(key, MLFLOW_ENV.name)


# -- Ray cluster launcher --------------------------------------------------------------------------

def launcher_commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [" ".join(str(c).split()) for key in keys for c in config.get(key) or []]


def test_launcher_files_pass_rays_validation():
    """What `ray up` checks first: Ray's config schema, after filling in the provider defaults."""
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError:  # a private module: fall back to the schema file Ray ships
        import jsonschema

        schema = json.loads((package_dir("ray") / "autoscaler" / "ray-schema.json").read_text(encoding="utf-8"))
        prepare_config, validate_config = (lambda config: config), (lambda config: jsonschema.validate(config, schema))
    for path in LAUNCHER_FILES:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        validate_config(prepare_config(config))


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_commands(path):
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    for flag in ("--head", "--port=6379", "--dashboard-host=0.0.0.0", "--num-cpus=0",
                 "--autoscaling-config=~/ray_bootstrap_config.yaml"):
        assert flag in head.split(), f"{path.name}: head start lacks {flag}"
    assert "--address=$RAY_HEAD_IP:6379" in worker
    assert "--block" not in head + worker, "the launcher returns after `ray start`; --block would hang it"
    check_ray_start(" ".join(config["head_start_ray_commands"][1:]), f"{path.name} head")
    check_ray_start(" ".join(config["worker_start_ray_commands"][1:]), f"{path.name} worker")
    # Every node sources the settings file the launcher copies to it.
    (destination, source), = config["file_mounts"].items()
    assert f". {destination}" in head and f". {destination}" in worker
    assert source.endswith(".env") and Path(source).name in (CLUSTER / "README.md").read_text(encoding="utf-8")
    assert re.search(r"(^|/)wcrnn(:[\w.-]+)?$", config["docker"]["image"]), "the wcrnn image (cluster/Dockerfile)"


def test_launcher_providers_and_gpus():
    onprem = yaml.safe_load(LAUNCHER_FILES[0].read_text(encoding="utf-8"))
    assert onprem["provider"]["type"] == "local" and onprem["provider"]["head_ip"] and onprem["provider"]["worker_ips"]
    assert any("--gpus" in option for option in onprem["docker"]["run_options"])
    aws = yaml.safe_load(LAUNCHER_FILES[1].read_text(encoding="utf-8"))
    assert aws["provider"]["type"] == "aws"
    gpu_types = {name: node for name, node in aws["available_node_types"].items()
                 if node.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu_types, "the cloud example needs a GPU node type"
    for node in gpu_types.values():
        assert re.match(r"(g4dn|g5|g6|g6e|p3|p4d|p5)\.", node["node_config"]["InstanceType"])
    head = aws["available_node_types"][aws["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "no trials on the head"


# -- KubeRay ---------------------------------------------------------------------------------------

def kuberay_containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    if doc.get("kind") == "RayJob":
        spec = spec.get("rayClusterSpec", {})
    if doc.get("kind") not in ("RayCluster", "RayJob"):
        return []
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def check_ray_cluster_spec(spec: dict, where: str, configmaps: set) -> None:
    head = spec["headGroupSpec"]
    params = head["rayStartParams"]
    assert params["dashboard-host"] == "0.0.0.0" and params["num-cpus"] == "0", where
    groups = [head, *spec["workerGroupSpecs"]]
    for group in groups:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), f"{where}: rayStartParams are strings"
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports == {"gcs": 6379, "dashboard": 8265, "client": 10001}, ports
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if any(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
                         for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, f"{where}: no worker group requests nvidia.com/gpu"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], f"{where}: {group['groupName']}"
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token authentication"
    images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1, f"{where}: head and workers must run the same image: {images}"
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps, f"{where}: ConfigMap not in the file"


def test_kuberay_raycluster():
    docs = load_docs(KUBERAY_CLUSTER)
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    clusters = [d for d in docs if d["kind"] == "RayCluster"]
    assert len(clusters) == 1 and clusters[0]["apiVersion"] == "ray.io/v1"
    check_ray_cluster_spec(clusters[0]["spec"], KUBERAY_CLUSTER.name, configmaps)
    env = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert {"MLFLOW_TRACKING_URI", "WCRNN_STORAGE"} <= set(env)


def test_kuberay_rayjob():
    docs = load_docs(KUBERAY_JOB)
    jobs = [d for d in docs if d["kind"] == "RayJob"]
    assert len(jobs) == 1 and jobs[0]["apiVersion"] == "ray.io/v1"
    spec = jobs[0]["spec"]
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    assert "rayClusterSpec" in spec or "clusterSelector" in spec
    assert spec["shutdownAfterJobFinishes"] is True and isinstance(spec["ttlSecondsAfterFinished"], int)
    argv = split_command(spec["entrypoint"])
    assert argv[:3] == ["wcrnn", "sweep", "run"] and "--address" in argv and argv[argv.index("--address") + 1] == "auto"
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert {"MLFLOW_TRACKING_URI", "WCRNN_STORAGE"} <= set(runtime_env["env_vars"])
    check_ray_cluster_spec(spec["rayClusterSpec"], KUBERAY_JOB.name, set(configmaps))
    # The spec file of the entrypoint is in a ConfigMap of this file, mounted on the head.
    spec_path = Path(argv[3])
    head_pod = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mount = next(m for m in head_pod["containers"][0]["volumeMounts"] if Path(m["mountPath"]) == spec_path.parent)
    volume = next(v for v in head_pod["volumes"] if v["name"] == mount["name"])
    specs = configmaps[volume["configMap"]["name"]]["data"]
    assert spec_path.name in specs, f"{spec_path} is not in ConfigMap {volume['configMap']['name']}"
    # ... and it is a valid sweep spec that packs several trials on each GPU.
    from wcrnn.sweep.spec import validate_spec

    sweep = validate_spec(yaml.safe_load(specs[spec_path.name]), f"{KUBERAY_JOB.name}:{spec_path.name}")
    assert 0 < sweep.resources.gpu < 1


# -- Dockerfile and .dockerignore --------------------------------------------------------------------

@lru_cache(maxsize=None)
def dockerfile_instructions() -> tuple:
    """Instructions with their continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            instructions.append(" ".join(current.split()))
            current = ""
    return tuple(instructions)


def dockerignored(path: str) -> bool:
    """Whether a .dockerignore pattern (with ! exceptions, last match wins) excludes the path."""
    excluded = False
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        candidates = [path] + [str(parent) for parent in Path(path).parents if str(parent) != "."]
        if any(fnmatch(c, pattern) or fnmatch(c, pattern.replace("**/", "")) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerfile():
    instructions = dockerfile_instructions()
    keywords = [i.split()[0].upper() for i in instructions]
    assert "FROM" in keywords and set(keywords[:keywords.index("FROM")]) <= {"ARG"}, "FROM first (after ARGs)"
    runs = [i for i in instructions if i.upper().startswith("RUN ")]
    assert any(re.search(r"pip install .*torch==2\.14\.1", r) and "torchvision==0.29.1" in r for r in runs)
    assert any(re.search(r"pip install (--\S+ )*\.( |$)", r) for r in runs), "the project: pip install ."
    copies = [i for i in instructions if i.upper().startswith("COPY ")]
    sources = []
    for copy in copies:
        parts = [p for p in copy.split()[1:] if not p.startswith("--")]
        sources += parts[:-1]
    assert {"pyproject.toml", "wcrnn"} <= set(sources) and "README.md" in sources  # pyproject's readme
    for source in sources:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
        assert not dockerignored(source), f".dockerignore excludes {source}, which the Dockerfile copies"
    assert any(i.upper().startswith(("ENTRYPOINT", "CMD")) for i in instructions)
    # The pins are within what pyproject.toml allows.
    from packaging.requirements import Requirement

    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for name, version in (("torch", "2.14.1"), ("torchvision", "0.29.1")):
        line = re.search(rf'"({name}[<>=!~].*?)"', pyproject).group(1)
        assert Requirement(line).specifier.contains(version), f"pyproject.toml's {line} excludes {version}"


def test_dockerignore_keeps_secrets_and_environments_out():
    for path in (".env", ".venv", ".git", "cluster/nodes.env", "cluster/mlflow-server.env", "mlflow.db", "wcrnn_runs"):
        assert dockerignored(path), f".dockerignore lets {path} into the build context"


# -- MLflow server settings ------------------------------------------------------------------------------

def test_mlflow_server_env_example():
    settings = env_file_keys(MLFLOW_ENV)
    assert settings["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert settings["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert settings["MLFLOW_SERVE_ARTIFACTS"] == "true"
    assert settings["MLFLOW_SERVER_ALLOWED_HOSTS"] and settings["MLFLOW_S3_ENDPOINT_URL"]
    # Every option is one `mlflow server` takes from the environment (or MLflow reads).
    mlflow_cli = source_text("mlflow", "cli/__init__.py", "utils/cli_args.py")
    for key in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION", "MLFLOW_SERVE_ARTIFACTS", "MLFLOW_HOST",
                "MLFLOW_PORT", "MLFLOW_SERVER_ALLOWED_HOSTS", "MLFLOW_DEFAULT_ARTIFACT_ROOT"):
        assert f'envvar="{key}"' in mlflow_cli, f"mlflow server does not read {key}"
