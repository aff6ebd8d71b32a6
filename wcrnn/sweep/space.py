"""The search space as an Optuna define-by-run function, and how a sample becomes a trial.

Define-by-run lets parameters be conditional: φ0 is only sampled when the residual
(fixed, or sampled first) rotates; r only when the residual has a magnitude. The function
is a small class holding plain data, so Tune can pickle the searcher with the experiment.
"""

from __future__ import annotations

from typing import Any

from .spec import Categorical, IntRange, LogUniform, SweepSpec, parameter_applies


class DefineByRun:
    def __init__(self, spec: SweepSpec):
        self.parameters = {path: dist.model_dump() for path, dist in spec.parameters.items()}
        self.base_model = dict(spec.model)

    def __call__(self, trial) -> None:
        sampled: dict[str, Any] = {}
        for path, dist in self.parameters.items():
            if not parameter_applies(path, sampled, self.base_model):
                continue
            sampled[path] = suggest(trial, path, dist)


def suggest(trial, name: str, dist: dict):
    kind = dist["distribution"]
    if kind == "uniform":
        return trial.suggest_float(name, dist["low"], dist["high"])
    if kind == "loguniform":
        return trial.suggest_float(name, dist["low"], dist["high"], log=True)
    if kind == "int":
        return trial.suggest_int(name, dist["low"], dist["high"], step=dist["step"], log=dist["log"])
    return trial.suggest_categorical(name, dist["choices"])


def optuna_distribution(dist):
    """The Optuna distribution a spec distribution samples from (for rebuilding studies)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, Categorical):
        return CategoricalDistribution(dist.choices)
    if isinstance(dist, IntRange):
        return IntDistribution(dist.low, dist.high, step=dist.step, log=dist.log)
    return FloatDistribution(dist.low, dist.high, log=isinstance(dist, LogUniform))


__all__ = ["DefineByRun", "suggest", "optuna_distribution"]
