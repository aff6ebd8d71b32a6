"""Sweep specs: the shipped examples, the schema, whole-space validation, the search space.

No Ray here: a spec is checked completely before anything starts.
"""

import copy
import json
from concurrent.futures import ThreadPoolExecutor
import math
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import optuna
import pytest
import yaml

from wcrnn.errors import ConfigError
from wcrnn.sweep.space import DefineByRun
from wcrnn.sweep.spec import load_spec, spec_json_schema, validate_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "sweeps").glob("*.yaml"))
QUICKSTART = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
WCRNN = [sys.executable, "-m", "wcrnn.cli"]


def test_every_shipped_spec_is_valid_and_searches_the_papers_parameters():
    assert {p.name for p in SPECS} >= {"quickstart.yaml", "smnist_rotational.yaml", "psmnist_heterogeneous.yaml",
                                       "adding.yaml", "teacher_student_heads.yaml"}
    searched = set()
    for path in SPECS:
        spec, _ = load_spec(path)
        searched |= {p.split(".")[-1] for p in spec.parameters}
    assert {"lr", "r", "phi0", "gamma", "heads"} <= searched


def test_committed_schema_is_current_and_accepts_the_examples():
    schema = spec_json_schema()
    assert json.loads((ROOT / "sweeps" / "schema.json").read_text()) == schema, "regenerate: wcrnn sweep schema > sweeps/schema.json"
    for path in SPECS:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**QUICKSTART, "bogus": 1}, schema)


def test_schema_command_prints_the_schema():
    out = subprocess.run([*WCRNN, "sweep", "schema"], capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["title"] == "wcrnn sweep spec"


def mutated(change):
    data = copy.deepcopy(QUICKSTART)
    change(data)
    return data


BAD_SPECS = {
    "unknown key": (lambda d: d.update(bogus=1), "bogus"),
    "unknown nested key": (lambda d: d["budget"].update(trials=3), "budget.trials"),
    "low above high": (lambda d: d["search_space"].update(r={"distribution": "uniform", "low": 1.0, "high": 0.5}), "search_space.r"),
    "log-uniform low 0": (lambda d: d["search_space"].update(lr={"distribution": "loguniform", "low": 0.0, "high": 0.1}), "search_space.lr"),
    "NaN bound": (lambda d: d["search_space"].update(r={"distribution": "uniform", "low": math.nan, "high": 1.0}), "search_space.r"),
    "wrong type": (lambda d: d["budget"].update(num_trials="many"), "budget.num_trials"),
    "impossible heads": (lambda d: d["search_space"].update(heads={"distribution": "categorical", "choices": [1, 3]}), "heads=3"),
    "heads vs searched hidden size": (lambda d: d["search_space"].update(
        hidden_size={"distribution": "categorical", "choices": [32, 48]},
        heads={"distribution": "categorical", "choices": [1, 32]}), "heads=32"),
    "missing objective": (lambda d: d.pop("objective"), "objective"),
    "objective not produced": (lambda d: d.update(objective={"metric": "val_accuracy", "mode": "max"}), "objective.metric"),
    "objective mode": (lambda d: d.update(objective={"metric": "val_mse", "mode": "max"}), "objective.mode"),
    "phi0 without rotation": (lambda d: d["model"].update(residual="homogeneous"), "search_space.phi0"),
    "empty choices": (lambda d: d["search_space"].update(heads={"distribution": "categorical", "choices": []}), "search_space.heads"),
    "task field searched": (lambda d: d["search_space"].update({"task.length": {"distribution": "int", "low": 10, "high": 20}}), "task.length"),
    "unknown parameter": (lambda d: d["search_space"].update(learning_rate={"distribution": "uniform", "low": 0.1, "high": 0.2}), "learning_rate"),
    "r below zero": (lambda d: d["search_space"].update(r={"distribution": "uniform", "low": -1.0, "high": 1.0}), "r=-1.0"),
    "unknown model": (lambda d: d["model"].update(name="transformer"), "model.name"),
    "bad task field": (lambda d: d["task"].update(length=1), "task.length"),
    "epochs in training": (lambda d: d["training"].update(epochs=3), "training.epochs"),
    "bad name": (lambda d: d.update(name="../escape"), "name"),
    "unknown distribution": (lambda d: d["search_space"].update(r={"distribution": "gaussian", "low": 0, "high": 1}), "search_space.r"),
}


@pytest.mark.parametrize("case", BAD_SPECS, ids=list(BAD_SPECS))
def test_malformed_specs_are_rejected_naming_the_field(case):
    change, field = BAD_SPECS[case]
    with pytest.raises(ConfigError) as info:
        validate_spec(mutated(change))
    assert field in str(info.value)


@pytest.mark.parametrize("change, line", [
    (lambda d: d["budget"].update(max_epoch=3),
     "budget.max_epoch: unknown key: did you mean 'max_epochs'? the keys here are num_trials, max_epochs, "),
    (lambda d: d["model"].update(hiden_size=32), "model.hiden_size: unknown key: did you mean 'hidden_size'?"),
    (lambda d: d["task"].update(lenght=30), "task.lenght: unknown key: did you mean 'length'?"),
    (lambda d: d["training"].update(optimiser="sgd"), "training.optimiser: unknown key: did you mean 'optimizer'?"),
    (lambda d: d["lyapunov"].update(sequences=4), "lyapunov.sequences: unknown key: did you mean 'num_sequences'?"),
    (lambda d: d["search_space"]["r"].update(hihg=1.0),
     "search_space.r.hihg: unknown key: did you mean 'high'? the keys here are distribution, low, high"),
])
def test_an_unknown_key_gets_the_keys_allowed_in_its_place(change, line):
    # The JSON schema leaves task, model and training open (they depend on the chosen model and
    # task), so the error itself says what is allowed there, and a fixed model key is reported
    # as such, not as a problem of some sampled combination.
    with pytest.raises(ConfigError) as info:
        validate_spec(mutated(change))
    assert line in str(info.value), str(info.value)
    assert "search_space (sampling" not in str(info.value)


def test_cli_rejects_bad_specs_with_exit_2_and_starts_nothing(tmp_path):
    files = {}
    for name in ("unknown key", "impossible heads", "missing objective", "low above high", "wrong type"):
        path = tmp_path / f"{name.replace(' ', '_')}.yaml"
        path.write_text(yaml.safe_dump(mutated(BAD_SPECS[name][0])))
        files[name] = path
    files["unreadable"] = tmp_path / "unreadable.yaml"
    files["unreadable"].write_text("name: x\n  task: [unclosed\n")
    files["python tag"] = tmp_path / "tag.yaml"
    files["python tag"].write_text(f"name: !!python/object/apply:os.system ['touch {tmp_path}/PWNED']\n")
    files["binary"] = tmp_path / "binary.yaml"
    files["binary"].write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {**os.environ, "RAY_ADDRESS": ""}
    commands = [["sweep", "validate", str(path)] for path in files.values()]
    commands += [["sweep", "run", str(files[name])] for name in ("impossible heads", "unreadable", "python tag", "missing objective")]

    def call(command):
        return command, subprocess.run([*WCRNN, *command], capture_output=True, text=True, cwd=workdir, env=env, timeout=120)

    with ThreadPoolExecutor(max_workers=2) as pool:  # each call imports torch: overlap them
        for command, done in pool.map(call, commands):
            assert done.returncode == 2, (command, done.stderr)
            assert "Traceback" not in done.stderr and done.stderr.startswith("error:"), done.stderr
    assert not (tmp_path / "PWNED").exists()
    assert list(workdir.iterdir()) == [], "a rejected spec must leave nothing behind (no mlflow.db, no wcrnn_runs)"


def test_overrides_go_through_the_same_validation(tmp_path):
    spec = ROOT / "sweeps" / "quickstart.yaml"
    ok = subprocess.run([*WCRNN, "sweep", "validate", str(spec), "--set", "budget.num_trials=2"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*WCRNN, "sweep", "validate", str(spec), "--set", "budget.num_trials=0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "budget.num_trials" in bad.stderr


def test_validation_does_not_import_ray_or_mlflow():
    code = ("import sys; from wcrnn.sweep.spec import load_spec; load_spec('sweeps/adding.yaml'); "
            "print('ray' in sys.modules, 'mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_cli_reads_a_spec_and_reaches_the_runner_without_pytorch_ray_tune_mlflow_or_optuna():
    """`wcrnn sweep run` loads the spec and imports the runner before the sweep starts; the seconds
    of these imports belong after ray.init has started Ray's processes
    (runner._start_ray_while_loading), not before. `wcrnn sweep validate` never needs them."""
    code = ("import sys; import wcrnn.cli; from wcrnn.sweep import load_spec; import wcrnn.sweep.runner; "
            "spec, _ = load_spec('sweeps/quickstart.yaml'); "
            "spec.trial_run_config({}); "
            "print(*(name in sys.modules for name in ('torch', 'ray.tune', 'mlflow', 'optuna')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.split() == ["False", "False", "False", "False"]


def sample(spec, n, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trials = []
    for _ in range(n):
        trial = study.ask()
        DefineByRun(spec)(trial)
        study.tell(trial, 0.0)
        trials.append(trial.params)
    return trials


def test_define_by_run_samples_conditional_parameters_within_bounds():
    spec, _ = load_spec(ROOT / "sweeps" / "adding.yaml")
    trials = sample(spec, 60)
    residuals = {t["model.residual"] for t in trials}
    assert residuals == {"homogeneous", "rotational", "nonlinear"}
    for params in trials:
        assert ("model.phi0" in params) == (params["model.residual"] == "rotational")
        assert 0.9 <= params["model.r"] <= 1.01 and 1e-3 <= params["model.gamma"] <= 1.0
        assert params["model.heads"] in (1, 4, 16, 64)
        spec.trial_run_config(params)  # every sample is a valid run config


def test_same_seed_and_spec_give_the_same_samples_through_ray_tunes_optuna_search():
    from wcrnn.sweep.runner import _searcher

    spec, _ = load_spec(ROOT / "sweeps" / "quickstart.yaml")

    def suggestions(seed):
        searcher = _searcher(validate_spec({**QUICKSTART, "search": {"algorithm": "tpe", "seed": seed, "startup_trials": 3}}))
        out = []
        for index in range(6):  # past the startup trials, so TPE proper is exercised
            trial_id = f"t{index}"
            config = searcher.suggest(trial_id)
            out.append(config)
            searcher.on_trial_complete(trial_id, {"val_mse": 0.1 + 0.01 * index, **config})
        return out

    first, again, other = suggestions(0), suggestions(0), suggestions(1)
    assert first == again
    assert first != other
    assert set(first[0]) == {"training.lr", "model.r", "model.phi0", "model.gamma", "model.heads"}


@pytest.mark.parametrize("section, value, field", [
    ("tracking", {"uri": "http://alice:hunter2@mlflow.example:5000"}, "tracking.uri"),
    ("storage", {"path": "s3://AKIAXXXX:hunter2@bucket/sweeps"}, "storage.path"),
])
def test_credentials_in_spec_uris_are_refused_without_echoing_them(section, value, field):
    with pytest.raises(ConfigError) as info:
        validate_spec(mutated(lambda d: d.update({section: value})))
    assert field in str(info.value) and "environment" in str(info.value)
    assert "hunter2" not in str(info.value)
