"""Turning the spec's space into Optuna suggestions, conditions included."""

from __future__ import annotations

import math
import warnings
from itertools import combinations
from typing import Any

import optuna

from autotuner.errors import UsageError
from autotuner.spec.schema import ParamSpec, Spec


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


def first_value(p: ParamSpec) -> Any:
    if p.type == "categorical":
        return (p.choices or [None])[0]
    if p.type == "fixed":
        return p.value
    return int(p.low) if p.type == "int" else p.low  # type: ignore[arg-type]


def complete(spec: Spec, values: dict[str, Any]) -> dict[str, Any]:
    """The config the given values make, conditions applied: each active parameter takes its given
    value or, where none is given, its first; inactive ones are left out."""
    config: dict[str, Any] = {}
    for name in order(spec.space):
        p = spec.space[name]
        if active(p, config):
            config[name] = values[name] if name in values else first_value(p)
    return config


def defaults(spec: Spec) -> dict[str, Any]:
    """A config with each parameter at its first value (baseline when `bench` is given none)."""
    return complete(spec, {})


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
    if s.type == "gp":
        try:
            import scipy  # noqa: F401, PLC0415 - GPSampler's optimizer
        except ImportError:
            from autotuner.errors import UsageError  # noqa: PLC0415 (optional dependency)

            raise UsageError("sampler.type gp needs SciPy: pip install 'autotune[gp]'") from None
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.n_startup_trials)
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
    read = {dep for p in spec.space.values() for dep in (p.when or {})}  # by some condition

    def count(i: int, config: dict[str, Any]) -> int | None:
        if i == len(names):
            return 1
        p = spec.space[names[i]]
        if not active(p, config):
            return count(i + 1, config)
        if names[i] not in read:  # no condition reads it: its values multiply, unlisted
            size, rest = p.size(), count(i + 1, config)
            return None if size is None or rest is None else size * rest
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


def all_configs(spec: Spec, limit: int = 100_000) -> list[dict[str, Any]] | None:
    """Every config of a finite space (conditions applied), or None if unbounded or over `limit`."""
    size = grid_size(spec)
    if size is None or size > limit:
        return None
    names = order(spec.space)
    out: list[dict[str, Any]] = []

    def walk(i: int, config: dict[str, Any]) -> None:
        if i == len(names):
            out.append(dict(config))
            return
        p = spec.space[names[i]]
        if not active(p, config):
            walk(i + 1, config)
            return
        for v in p.values() or []:
            walk(i + 1, {**config, names[i]: v})

    walk(0, {})
    return out


def random_config(spec: Spec, rng: Any) -> dict[str, Any]:
    """A config drawn uniformly per parameter (log-uniform for log ranges), conditions applied."""

    config: dict[str, Any] = {}
    for name in order(spec.space):
        p = spec.space[name]
        if not active(p, config):
            continue
        if p.type == "fixed":
            config[name] = p.value
        elif p.type == "categorical":
            config[name] = rng.choice(p.choices)
        elif p.type == "int":
            lo, hi = int(p.low), int(p.high)  # type: ignore[arg-type]
            if p.log:
                config[name] = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
            else:  # a step of the range, drawn without listing the range
                config[name] = lo + int(p.step or 1) * rng.randrange(p.size() or 1)
        else:
            lo_f, hi_f = float(p.low), float(p.high)  # type: ignore[arg-type]
            config[name] = (
                math.exp(rng.uniform(math.log(lo_f), math.log(hi_f))) if p.log else rng.uniform(lo_f, hi_f)
            )
    return config


def sampled_params(spec: Spec, config: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a config that the sampler suggests (fixed ones left out), to enqueue."""
    return {k: v for k, v in config.items() if k in spec.space and spec.space[k].type != "fixed"}


def neighbors(spec: Spec, config: dict[str, Any]) -> list[dict[str, Any]]:
    """Configs one step away: one parameter changed (to an adjacent value where the values are
    ordered numbers, a doubling or halving on a log range, any other choice otherwise), with the
    conditions applied again (a parameter that becomes active takes its first value)."""
    out: list[dict[str, Any]] = []
    for name in order(spec.space):
        p = spec.space[name]
        if name not in config or p.type == "fixed":
            continue
        v = config[name]
        values = p.values()
        steps: list[Any] = []
        if values is not None:
            numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in values)
            if numeric:
                ordered = sorted(set(values))
                i = ordered.index(v) if v in ordered else -1
                steps = [ordered[j] for j in (i - 1, i + 1) if 0 <= j < len(ordered) and i >= 0]
            else:
                steps = [x for x in values if x != v]
        elif p.type == "int" and p.log:
            lo, hi = int(p.low), int(p.high)  # type: ignore[arg-type]
            steps = sorted({x for x in (int(v) // 2, int(v) * 2) if lo <= x <= hi and x != v})
        out += [complete(spec, {**config, name: x}) for x in steps]
    return out


# How much more an uncovered pair with a conditional parameter's value weighs in the covering start.
CONDITIONAL_PAIR_WEIGHT = 3


def initial_design(spec: Spec, n: int, rng: Any, runnable: Any, pool_size: int = 300) -> list[dict[str, Any]]:
    """n runnable configs that cover the space's values and pairs of values as evenly as they can
    (a greedy pairwise covering design), to start the search instead of n random draws: every
    backend, precision and thread count is seen early, and in combination."""

    every = all_configs(spec, limit=5_000)
    pool = every if every is not None else [random_config(spec, rng) for _ in range(pool_size)]
    pool = list(pool)
    rng.shuffle(pool)
    conditional = {k for k, p in spec.space.items() if p.when}
    seen_one: dict[tuple[str, str], int] = {}
    seen_two: dict[tuple[str, str, str, str], int] = {}

    def items(c: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str, str, str]]]:
        ones = [(k, repr(v)) for k, v in sorted(c.items()) if spec.space[k].type != "fixed"]
        twos = [(a[0], a[1], b[0], b[1]) for a, b in combinations(ones, 2)]
        return ones, twos

    def weight(y: tuple[str, str, str, str]) -> int:
        """A pair with a conditional parameter's value counts more: such a value is seen in fewer
        configs (only where its condition holds), so an even cover would pair it with little."""
        return CONDITIONAL_PAIR_WEIGHT if y[0] in conditional or y[2] in conditional else 1

    out: list[dict[str, Any]] = []
    keys: set[str] = set()
    checked: dict[str, bool] = {}
    while len(out) < n:
        best, best_score = None, None
        for c in pool:
            k = repr(sorted(c.items()))
            if k in keys:
                continue
            ones, twos = items(c)
            score = (
                sum(1 for x in ones if x not in seen_one),
                sum(weight(y) for y in twos if y not in seen_two),
            )
            score = (score[0], score[1], -sum(seen_one.get(x, 0) for x in ones))
            if best_score is None or score > best_score:
                if k not in checked:
                    checked[k] = bool(runnable(c))
                if checked[k]:
                    best, best_score = c, score
        if best is None:
            break
        keys.add(repr(sorted(best.items())))
        ones, twos = items(best)
        for x in ones:
            seen_one[x] = seen_one.get(x, 0) + 1
        for y in twos:
            seen_two[y] = seen_two.get(y, 0) + 1
        out.append(best)
    return out


def bench_config(spec: Spec, config: dict[str, Any]) -> dict[str, Any]:
    """A full config for `bench`: the given values (type-checked; values outside the searched
    range are fine, bench measures what it is told) over the baseline and the defaults."""

    for k, v in config.items():
        if k not in spec.space:
            raise UsageError(
                f"--set {k}: not a parameter of the spec's space; allowed: {', '.join(spec.space)}"
            )
        kind = spec.space[k].type
        if kind == "int" and (isinstance(v, bool) or not isinstance(v, int)):
            raise UsageError(f"--set {k}={v}: {k} is an int parameter; give a whole number")
        if kind == "float" and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise UsageError(f"--set {k}={v}: {k} is a float parameter; give a number")
    return {**defaults(spec), **(spec.baseline or {}), **config}
