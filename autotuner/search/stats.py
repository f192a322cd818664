"""The statistics that choose a winner with noise in mind, on `scipy.stats`.

Student t and normal quantiles come from SciPy at any confidence and any degrees of freedom
(fractional ones too, as Welch's interval needs); nothing here is a typed-in table. SciPy is
imported on first use, so `import autotuner` and `autotune --help` stay instant.
"""

from __future__ import annotations

import math
from functools import lru_cache


def _check(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, not {confidence}")


@lru_cache(maxsize=512)
def t_quantile(confidence: float, df: float) -> float:
    """Two-sided Student t quantile: the t with P(|T| <= t) = confidence for df degrees of freedom.

    df may be fractional (Welch); df < 1 gives inf (no interval can be had from one value)."""
    _check(confidence)
    if not df >= 1:
        return math.inf
    from scipy.stats import t  # noqa: PLC0415 (heavy: scipy)

    return float(t.ppf(0.5 + confidence / 2, df))


@lru_cache(maxsize=64)
def normal_quantile(confidence: float) -> float:
    """Two-sided standard normal quantile (the t quantile as df grows without bound)."""
    _check(confidence)
    from scipy.stats import norm  # noqa: PLC0415 (heavy: scipy)

    return float(norm.ppf(0.5 + confidence / 2))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    from scipy.stats import t as student  # noqa: PLC0415 (heavy: scipy)

    return float(student.cdf(t, df))


def _mean_sd(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, sd


def mean_ci(values: list[float], confidence: float) -> tuple[float, float, float]:
    """Mean and its two-sided confidence interval (t distribution, n - 1 degrees of freedom)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean, sd = _mean_sd(values)
    if n < 2:
        return mean, -math.inf, math.inf
    half = t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_difference(a: list[float], b: list[float], confidence: float) -> tuple[float, float, float]:
    """CI of mean(a - b) over rounds measured side by side (paired, so drift cancels)."""
    return mean_ci([x - y for x, y in zip(a, b, strict=True)], confidence)


def welch_df(a: list[float], b: list[float]) -> float:
    """Welch-Satterthwaite degrees of freedom of mean(a) - mean(b) (unequal variances)."""
    va, vb = _mean_sd(a)[1] ** 2 / len(a), _mean_sd(b)[1] ** 2 / len(b)
    if va + vb == 0:
        return math.inf
    return (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))


def welch_difference(a: list[float], b: list[float], confidence: float) -> tuple[float, float, float]:
    """CI of mean(a) - mean(b) for two samples measured apart (Welch: unequal variances).

    Fewer than two values on either side: an unbounded interval."""
    if not a or not b:
        raise ValueError("welch_difference needs values on both sides")
    ma, mb = math.fsum(a) / len(a), math.fsum(b) / len(b)
    d = ma - mb
    if len(a) < 2 or len(b) < 2:
        return d, -math.inf, math.inf
    se = math.sqrt(_mean_sd(a)[1] ** 2 / len(a) + _mean_sd(b)[1] ** 2 / len(b))
    if se == 0:
        return d, d, d
    half = t_quantile(confidence, welch_df(a, b)) * se
    return d, d - half, d + half
