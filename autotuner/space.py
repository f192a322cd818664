"""Turning the spec's space into Optuna suggestions, conditions included."""

from __future__ import annotations

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
    s = spec.sampler
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.type == "grid":
        # BruteForceSampler walks conditional spaces, unlike GridSampler.
        return optuna.samplers.BruteForceSampler(seed=seed)
    if s.type == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed,
        multivariate=True,
        group=True,
        constant_liar=True,
        n_startup_trials=s.n_startup_trials,
    )
