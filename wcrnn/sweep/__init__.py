"""The sweep service: specs → Ray Tune + Optuna → MLflow. Builds on the science core.

From Python, the same as `wcrnn sweep run` / `resume`:

    from wcrnn.sweep import load_spec, run_sweep, resume_sweep

    spec, text = load_spec("sweeps/quickstart.yaml", overrides=["budget.num_trials=4"])
    result = run_sweep(spec, text)                 # embedded: local Ray, ./mlflow.db, ./wcrnn_runs
    print(result.best["params"], result.best["metrics"])
    result = resume_sweep("quickstart")           # after an interruption

Ray and MLflow are imported only when a sweep runs.
"""

from .spec import SweepSpec, load_spec, validate_spec

_RUNNER = {"SweepInterrupted", "SweepResult", "resume_sweep", "run_sweep"}


def __getattr__(name):
    # The runner imports Ray; validating a spec must not pay for that.
    if name in _RUNNER:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'wcrnn.sweep' has no attribute {name!r}")


__all__ = ["SweepSpec", "SweepResult", "SweepInterrupted", "load_spec", "validate_spec", "run_sweep", "resume_sweep"]
