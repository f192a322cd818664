"""Turning the spec's space into Optuna suggestions, conditions included."""

from __future__ import annotations

import warnings
from typing import Any

import optuna

from autotuner.spec import ParamSpec, Spec


def order(space: dict[str, ParamSpec]) -> list[str]:
    """Parameters after the ones their conditions read."""
    done: list[str] = []

    def visit(n: str) -> None:
        if n in done:
            return
        for dep in space[n].when or {}:
            visit(dep)
        done.append(n)

    for n in space:
        visit(n)
    return done


def active(p: ParamSpec, config: dict[str, Any]) -> bool:
    return all(config.get(dep) in vals for dep, vals in (p.when or {}).items())


def suggest(trial: optuna.trial.Trial, spec: Spec) -> dict[str, Any]:
    """The full config of a trial: suggested parameters plus fixed ones, inactive ones left out."""
    config: dict[str, Any] = {}
    for name in order(spec.space):
        p = spec.space[name]
        if not active(p, config):
            continue
        if p.type == "fixed":
            config[name] = p.value
        elif p.type == "categorical":
            config[name] = trial.suggest_categorical(name, p.choices)  # type: ignore[arg-type]
        elif p.type == "int":
            config[name] = trial.suggest_int(
                name,
                int(p.low),
                int(p.high),
                step=int(p.step or 1),
                log=p.log,  # type: ignore[arg-type]
            )
        else:
            config[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)  # type: ignore[arg-type]
    return config


def defaults(spec: Spec) -> dict[str, Any]:
    """A config with each parameter at its first value (baseline when `bench` is given none)."""
    config: dict[str, Any] = {}
    for name in order(spec.space):
        p = spec.space[name]
        if not active(p, config):
            continue
        if p.type == "categorical":
            config[name] = (p.choices or [None])[0]
        elif p.type == "fixed":
            config[name] = p.value
        else:
            config[name] = int(p.low) if p.type == "int" else p.low  # type: ignore[arg-type]
    return config


def make_sampler(spec: Spec, seed: int) -> optuna.samplers.BaseSampler:
    # TPE's multivariate/group options and BruteForceSampler are marked experimental; they are
    # chosen deliberately, so their warnings would only be noise to a user.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _make_sampler(spec, seed)


def _make_sampler(spec: Spec, seed: int) -> optuna.samplers.BaseSampler:
    s = spec.sampler
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.type == "grid":
        return _Grid(seed=seed)
    if s.type == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed,
        multivariate=True,
        group=True,
        constant_liar=True,
        n_startup_trials=s.n_startup_trials,
    )


class _Grid(optuna.samplers.BruteForceSampler):
    """BruteForceSampler walks conditional spaces (GridSampler does not). Its after_trial calls
    study.stop() once the grid is done, which only works inside study.optimize; the driver
    bounds the budget by grid_size() instead."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


def grid_size(spec: Spec) -> int | None:
    """How many distinct configs the space holds, conditions included; None if unbounded."""
    names = order(spec.space)

    def count(i: int, config: dict[str, Any]) -> int | None:
        if i == len(names):
            return 1
        p = spec.space[names[i]]
        if not active(p, config):
            return count(i + 1, config)
        values = p.values()
        if values is None:
            return None
        total = 0
        for v in values:
            n = count(i + 1, {**config, names[i]: v})
            if n is None:
                return None
            total += n
        return total

    return count(0, {})
