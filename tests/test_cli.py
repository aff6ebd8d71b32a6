"""The `wcrnn` console script, run for real in subprocesses.

Each command starts a Python process that imports torch (a few seconds), so every command
of this file is launched up front by a module fixture, two at a time, and each test waits
only for the commands it checks.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(sys.executable).parent / "wcrnn"
WCRNN = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "wcrnn.cli"]
LOG_R = math.log(0.95)

# Theory checks: h_t = R h_{t-1} + γ·tanh(...) with γ = 0.001, so the spectrum is log|eig R|.
LINEAR_THEORY = ["lyapunov", "--model", "wcrnn", "--hidden", "64", "--gamma", "0.001", "--task", "adding",
                 "--sequences", "4", "--json"]
TINY_TRAIN = ["--set", "task.length=10", "--set", "task.num_train=64", "--set", "task.num_val=32",
              "--set", "task.num_test=32", "--set", "training.batch_size=32", "--set", "training.device=cpu"]

COMMANDS: dict[str, list[list[str]]] = {
    # (longest chain first) train (config file + overrides) -> lyapunov of the checkpoint -> resume to a third epoch
    "train": [
        ["train", "--config", "{tmp}/tiny.yaml", *TINY_TRAIN, "--json", "--checkpoint-dir", "{tmp}/run"],
        ["lyapunov", "--checkpoint", "{tmp}/run", "--sequences", "2", "--json"],
        ["train", "--resume", "{tmp}/run", "--set", "training.epochs=3", "--json"],
    ],
    "help": [["--help"]],
    "help-train": [["train", "--help"]],
    "help-lyapunov": [["lyapunov", "--help"]],
    "lyapunov-homogeneous": [LINEAR_THEORY + ["--residual", "homogeneous", "--r", "0.95"]],
    "lyapunov-rotational": [LINEAR_THEORY + ["--residual", "rotational", "--r", "0.95", "--phi0", "0.3"]],
    "lyapunov-heads": [LINEAR_THEORY + ["--residual", "homogeneous", "--r", "0.95", "--heads", "4"]],
    # Close-by exponents need longer averaging for the QR method to separate them: T = 400.
    "lyapunov-heterogeneous": [LINEAR_THEORY + ["--residual", "heterogeneous", "--r-range", "0.9,1.0",
                                                "--set", "task.length=400"]],
    "lyapunov-nonlinear": [LINEAR_THEORY + ["--residual", "nonlinear", "--r", "0.95"]],
    "lyapunov-gru": [["lyapunov", "--model", "gru", "--hidden", "16", "--sequences", "2", "--json"]],
    "spectrum": [["spectrum", "--task", "smnist", "--source", "mnist5k", "--json"]],
    "train-diverges": [["train", *TINY_TRAIN, "--set", "training.optimizer=sgd", "--set", "training.lr=1e6",
                        "--set", "training.epochs=2", "--json"]],
    # bad input: exit 2
    "bad-odd-rotational": [["lyapunov", "--residual", "rotational", "--hidden", "7"]],
    "bad-heads": [["lyapunov", "--heads", "3", "--hidden", "64"]],
    "bad-r": [["lyapunov", "--r", "-1"]],
    "bad-gamma": [["lyapunov", "--gamma", "-1"]],
    "bad-phi0": [["lyapunov", "--residual", "homogeneous", "--phi0", "0.3"]],
    "bad-r-range": [["lyapunov", "--residual", "heterogeneous", "--r-range", "0.9"]],
    "bad-set-key": [["train", "--set", "model.name=linear", "--set", "model.rmin=0.9"]],
    "bad-set-syntax": [["train", "--set", "model.r"]],
    "missing-config": [["train", "--config", "{tmp}/missing.yaml"]],
    "broken-yaml": [["train", "--config", "{tmp}/broken.yaml"]],
    "python-tag-yaml": [["train", "--config", "{tmp}/evil.yaml"]],
    # missing data or checkpoint: exit 1
    "missing-mnist": [["lyapunov", "--task", "smnist", "--source", "torchvision", "--set", "task.root={tmp}/empty"]],
    "missing-mnist-spectrum": [["spectrum", "--task", "smnist", "--source", "torchvision",
                                "--set", "task.root={tmp}/empty"]],
    "not-a-checkpoint": [["lyapunov", "--checkpoint", "{tmp}/notes.pt"]],
    "missing-checkpoint": [["lyapunov", "--checkpoint", "{tmp}/nowhere.pt"]],
}


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self):
        assert self.returncode == 0, self.stderr
        return json.loads(self.stdout)


def run(args: list[str], cwd: Path) -> Run:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "NO_COLOR": "1"}
    done = subprocess.run(WCRNN + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return Run(args, done.returncode, done.stdout, done.stderr)


def run_chain(chain: list[list[str]], tmp: Path) -> list[Run]:
    results = []
    for args in chain:
        results.append(run([a.replace("{tmp}", str(tmp)) for a in args], tmp))
        if results[-1].returncode != 0:
            break
    return results


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    (folder / "tiny.yaml").write_text(
        "task: {name: adding}\n"
        "model: {name: wcrnn, hidden_size: 8, residual: homogeneous, r: 0.9, gamma: 0.1}\n"
        "training: {epochs: 2, lr: 0.01, seed: 3}\n")
    (folder / "broken.yaml").write_text("task: {name: adding\nmodel: [\n")
    (folder / "evil.yaml").write_text('task: !!python/object/apply:os.system ["touch MARKER"]\n')
    (folder / "notes.pt").write_text("not a checkpoint\n")
    (folder / "empty").mkdir()
    return folder


@pytest.fixture(scope="module")
def cli(tmp):
    """name -> Future of the list of Runs of that command chain (all started at once)."""
    pool = ThreadPoolExecutor(max_workers=2)
    futures: dict[str, Future] = {name: pool.submit(run_chain, chain, tmp) for name, chain in COMMANDS.items()}
    yield lambda name: futures[name].result()
    pool.shutdown(wait=True, cancel_futures=True)


def result(cli, name: str) -> Run:
    runs = cli(name)
    assert len(runs) == len(COMMANDS[name]), f"{runs[-1].args} failed: {runs[-1].stderr}"
    return runs[-1]


def assert_descending(values):
    assert all(math.isfinite(v) for v in values)
    assert values == sorted(values, reverse=True)


# --------------------------------------------------------------------------------------------
# wcrnn lyapunov: the spectrum against the theory log|eig R|
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lyapunov-homogeneous", "lyapunov-rotational", "lyapunov-heads"])
def test_lyapunov_matches_log_r(cli, name):
    data = result(cli, name).json()
    exponents, predicted = data["exponents"], data["predicted"]
    assert len(exponents) == len(predicted) == 64
    assert_descending(exponents)
    assert data["max_exponent"] == exponents[0]
    assert predicted == pytest.approx([LOG_R] * 64, abs=1e-6)
    assert all(abs(e - LOG_R) < 0.01 for e in exponents)
    assert data["max_deviation_from_theory"] < 0.01
    assert data["model"]["hidden_size"] == 64 and data["model"]["gamma"] == 0.001


def test_lyapunov_reports_model_settings(cli):
    assert result(cli, "lyapunov-heads").json()["model"]["heads"] == 4
    rotational = result(cli, "lyapunov-rotational").json()["model"]
    assert rotational["residual"] == "rotational" and rotational["phi0"] == 0.3


def test_lyapunov_heterogeneous_matches_its_own_magnitudes(cli):
    data = result(cli, "lyapunov-heterogeneous").json()
    exponents, predicted = data["exponents"], data["predicted"]
    assert len(exponents) == len(predicted) == 64
    assert_descending(exponents)
    assert_descending(predicted)
    assert all(math.log(0.9) - 1e-6 <= p <= 1e-6 for p in predicted)
    assert predicted[0] - predicted[-1] > 0.05  # really a spread of timescales
    assert all(abs(e - p) < 0.01 for e, p in zip(exponents, predicted))


def test_lyapunov_nonlinear_residual_has_no_theory(cli):
    data = result(cli, "lyapunov-nonlinear").json()
    assert data["predicted"] is None and "max_deviation_from_theory" not in data
    assert len(data["exponents"]) == 64
    assert_descending(data["exponents"])
    # Near h = 0, r·tanh(h) is r·h: the weakly driven network still contracts at log r.
    assert all(abs(e - LOG_R) < 0.01 for e in data["exponents"])


def test_lyapunov_gru_has_no_theory(cli):
    data = result(cli, "lyapunov-gru").json()
    assert data["predicted"] is None
    assert len(data["exponents"]) == 16 and data["max_exponent"] == data["exponents"][0]
    assert_descending(data["exponents"])


# --------------------------------------------------------------------------------------------
# wcrnn spectrum
# --------------------------------------------------------------------------------------------

def test_spectrum_of_smnist_peaks_at_one_row_per_cycle(cli):
    data = result(cli, "spectrum").json()
    assert abs(data["characteristic_frequency"] - 2 * math.pi / 28) < 0.02
    frequencies, power = data["frequencies"], data["power"]
    assert len(frequencies) == len(power) == 784 // 2 + 1
    assert frequencies[0] == 0 and frequencies[-1] == pytest.approx(math.pi)
    assert all(p >= 0 for p in power)
    peak = max(range(1, len(power)), key=power.__getitem__)
    assert frequencies[peak] == data["characteristic_frequency"]


# --------------------------------------------------------------------------------------------
# wcrnn train, checkpoints and resume
# --------------------------------------------------------------------------------------------

def test_train_prints_json_and_writes_a_checkpoint(cli, tmp):
    runs = cli("train")
    assert len(runs) == 3, f"{runs[-1].args} failed: {runs[-1].stderr}"
    trained, measured, resumed = runs
    data = trained.json()
    assert data["status"] == "finished" and data["epochs"] == 2 and len(data["history"]) == 2
    assert data["config"]["model"]["hidden_size"] == 8  # from the file
    assert data["config"]["task"]["length"] == 10  # from --set
    assert data["config"]["training"]["seed"] == 3
    assert all(math.isfinite(m["train_loss"]) and math.isfinite(m["val_mse"]) for m in data["history"])
    assert set(data["test"]) == {"test_loss", "test_mse"}
    assert data["final"] == data["history"][-1]
    assert (tmp / "run" / "checkpoint.pt").is_file()
    assert "finished" in trained.stderr and "epoch" in trained.stderr  # progress goes to stderr

    spectrum = measured.json()
    assert len(spectrum["exponents"]) == 8 and spectrum["predicted"] is not None
    assert spectrum["model"]["hidden_size"] == 8 and spectrum["model"]["r"] == 0.9
    assert_descending(spectrum["exponents"])

    more = resumed.json()
    assert more["status"] == "finished" and [m["epoch"] for m in more["history"]] == [1, 2, 3]
    assert more["history"][:2] == data["history"]


def test_train_divergence_exits_3_with_json(cli):
    runs = cli("train-diverges")
    assert runs[-1].returncode == 3, runs[-1].stderr
    data = json.loads(runs[-1].stdout)
    assert data["status"] == "diverged" and data["history"][-1]["status"] == "diverged"
    assert "Traceback" not in runs[-1].stderr


# --------------------------------------------------------------------------------------------
# Bad input: one line on stderr naming the field, no traceback
# --------------------------------------------------------------------------------------------

def error_line(run_: Run) -> str:
    assert "Traceback" not in run_.stderr, run_.stderr
    lines = [line for line in run_.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run_.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert run_.stdout == ""
    return lines[0]


@pytest.mark.parametrize("name, code, words", [
    ("bad-odd-rotational", 2, ["hidden_size=7", "even"]),
    ("bad-heads", 2, ["heads=3", "hidden_size=64"]),
    ("bad-r", 2, ["r=-1", "> 0"]),
    ("bad-gamma", 2, ["model.gamma", "greater than or equal to 0"]),
    ("bad-phi0", 2, ["phi0", "rotational"]),
    ("bad-r-range", 2, ["--r-range", "low,high"]),
    ("bad-set-key", 2, ["model.rmin", "unknown key", "did you mean 'r_min'?", "hidden_size, heads, r_min, r_max"]),
    ("bad-set-syntax", 2, ["model.r", "key.path=value"]),
    ("missing-config", 2, ["missing.yaml", "not found"]),
    ("broken-yaml", 2, ["broken.yaml", "YAML"]),
    ("python-tag-yaml", 2, ["evil.yaml", "python/object/apply"]),
    ("missing-mnist", 1, ["MNIST", "task.root", "task.download=true", "mnist5k"]),
    ("missing-mnist-spectrum", 1, ["MNIST", "task.download=true"]),
    ("not-a-checkpoint", 1, ["notes.pt", "checkpoint"]),
    ("missing-checkpoint", 1, ["nowhere.pt", "not found"]),
])
def test_bad_input_gives_one_line_error(cli, name, code, words):
    run_ = result(cli, name)
    assert run_.returncode == code, run_.stderr
    line = error_line(run_)
    for word in words:
        assert word in line, (word, line)


def test_yaml_tags_are_never_executed(cli, tmp):
    result(cli, "python-tag-yaml")
    assert not (tmp / "MARKER").exists()
    assert not (Path.cwd() / "MARKER").exists()


def test_missing_data_is_not_downloaded(cli, tmp):
    result(cli, "missing-mnist")
    result(cli, "missing-mnist-spectrum")
    assert list((tmp / "empty").iterdir()) == []


# --------------------------------------------------------------------------------------------
# Help
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, words", [
    ("help", ["train", "lyapunov", "spectrum"]),
    ("help-train", ["--config", "--set", "--json", "--checkpoint-dir", "--resume", "model.r=0.95"]),
    ("help-lyapunov", ["--model", "--residual", "--hidden", "--r ", "--phi0", "--r-range", "--gamma", "--heads",
                       "--checkpoint", "--json", "homogeneous", "rotational"]),
])
def test_help_explains_the_options(cli, name, words):
    run_ = result(cli, name)
    assert run_.returncode == 0, run_.stderr
    for word in words:
        assert word in run_.stdout, (word, run_.stdout)


def test_script_is_installed_next_to_the_interpreter():
    assert SCRIPT.exists() or shutil.which("wcrnn"), "the wcrnn console script is not installed"
