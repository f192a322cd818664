"""`autotune verify`: the A/B check of a best config before rollout.

The candidate (a best-config YAML) and the other config (a second best-config YAML, or the spec's
baseline) are measured on this machine as the race measures: first one full trial each (the
spec's measurement, with the accuracy check), then N interleaved rounds (A B, B A, ...), each
block a fresh worker measuring for a fixed time. Nothing is written to a study. `judge` turns the
rounds into a paired interval of the difference (candidate - other) for every objective and
constraint metric and one verdict with an exit status: 0 as good (or better by the required
gain), 1 a regression, a broken constraint or a config that did not run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autotuner.errors import AutotuneError, UsageError
from autotuner.execution import Executor, TrialRequest, make_executor
from autotuner.execution.capabilities import probe
from autotuner.measure.load import over_limit
from autotuner.models.checks import checked_model
from autotuner.progress import Progress
from autotuner.report.best_config import BestConfig
from autotuner.result import TrialResult
from autotuner.runners.binding import bind
from autotuner.runners.refusals import refusal
from autotuner.search.estimates import Block, Estimate, config_key
from autotuner.search.selection import baseline_config, block_seconds
from autotuner.search.space import complete
from autotuner.search.stats import mean_ci, paired_difference
from autotuner.spec.loading import parse_spec, read_spec
from autotuner.spec.schema import Spec
from autotuner.study import records as rec
from autotuner.study.storage import load_study, redact

MIN_ROUNDS = 3


@dataclass
class Arm:
    """One side of the A/B: its config and what was measured of it."""

    role: str  # "candidate" or "other"
    source: str  # the file it came from, or "the spec's baseline"
    config: dict[str, Any]
    check: dict[str, float] = field(default_factory=dict)  # the full trial (accuracy included)
    rounds: list[dict[str, float]] = field(default_factory=list)  # one block per round
    under_load: int = 0  # blocks kept although measured under foreign load
    error: str | None = None


@dataclass
class MetricDiff:
    metric: str
    role: str  # "objective", "constraint" or "objective, constraint"
    direction: str  # "max" or "min": which way is better
    candidate: float | None
    other: float | None
    measured: str  # "rounds" (paired interval) or "once" (the full trial: no interval)
    pairs: int
    difference: tuple[float, float, float] | None  # mean, low, high of candidate - other
    relative_pct: tuple[float, float, float] | None  # the same, in % of the other's mean
    verdict: str  # "better", "worse", "no significant difference", "no interval (measured once)"


@dataclass
class Verification:
    candidate: Arm
    other: Arm
    rounds: int
    confidence: float
    block_s: float
    require_gain_pct: float | None
    metrics: list[MetricDiff]
    constraints: list[dict[str, Any]]
    verdict: str
    exit_code: int

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for m in out["metrics"]:
            for k in ("difference", "relative_pct"):
                t = m[k]
                m[k] = None if t is None else {"mean": _r(t[0]), "ci_low": _r(t[1]), "ci_high": _r(t[2])}
            m["candidate"], m["other"] = _r(m["candidate"]), _r(m["other"])
        for arm in ("candidate", "other"):
            out[arm].pop("check")
            out[arm]["means"] = {m.metric: _r(getattr(m, arm)) for m in self.metrics}
            out[arm]["rounds"] = len(out[arm]["rounds"])
        return out

    def lines(self) -> list[str]:
        """The human report: one table row per metric, the constraints, the one-line verdict."""
        pct = f"{self.confidence:.0%}"
        head = ["metric", "candidate", "other", f"difference [{pct} CI]", f"relative [{pct} CI]", "verdict"]
        rows = [head]
        for m in self.metrics:
            d, r = m.difference, m.relative_pct
            paired = m.measured == "rounds"
            diff = "-" if d is None else _v(d[0], sign=True)
            rel = "-" if r is None else f"{r[0]:+.1f}%"
            if paired and d is not None:
                diff += f" [{_v(d[1], sign=True)}, {_v(d[2], sign=True)}]"
            if paired and r is not None:
                rel += f" [{r[1]:+.1f}%, {r[2]:+.1f}%]"
            rows.append([m.metric, _v(m.candidate), _v(m.other), diff, rel, m.verdict])
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        out = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        for c in self.constraints:
            state = "holds" if c["satisfied"] else "BROKEN"
            out.append(f"constraint {c['constraint']}: {state} (candidate {_v(c['value'])})")
        loaded = self.candidate.under_load + self.other.under_load
        if loaded:
            out.append(f"note: {loaded} block(s) kept although measured under foreign load")
        out.append(self.verdict)
        return out


# ---- the command ---------------------------------------------------------------------------------


def verify(
    best: str | Path,
    *,
    against: str | Path | None = None,
    baseline: bool = False,
    spec: str | None = None,
    storage: str | None = None,
    rounds: int | None = None,
    require_gain: float | None = None,
    progress: Progress,
) -> Verification:
    """`autotune verify` (see api.verify): read the files, resolve the spec, measure, judge."""
    _check_options(against, baseline, rounds, require_gain)
    best_config = BestConfig.read(best)
    other_config = BestConfig.read(against) if against is not None else None
    s, source = resolve_spec(best_config, str(best), spec, storage)
    fp = best_config.provenance.get("spec_fingerprint")
    if spec is not None and fp and fp != s.fingerprint():
        study = best_config.provenance.get("study")
        progress.say(f"note: {spec} is not the spec study {study} ran; measuring with {spec}")
    s = checked_model(s, source)
    cand = Arm("candidate", str(best), arm_config(s, best_config, str(best)))
    if other_config is not None:
        other = Arm("other", str(against), arm_config(s, other_config, str(against)))
    else:
        base = baseline_config(s)
        if base is None:
            raise UsageError(f"--baseline: the spec ({source}) has no baseline")
        other = Arm("other", "the spec's baseline", base)
    n = rounds or max(s.pick.rounds, MIN_ROUNDS)
    caps = probe()
    for arm in (cand, other):
        known = refusal(s, arm.config, caps)
        if known is not None:
            arm.error = f"before launch: {known.failure_class}: {known.failure_message}"
            return judge(s, cand, other, 0, 0.0, require_gain)
    progress.say(
        f"verify {best} against {other.source} (spec: {source}): a full trial each, then {n} "
        "interleaved rounds, each block in a fresh worker"
    )
    with make_executor("local", s, caps) as ex:
        block_s = measure_arms(s, ex, (cand, other), n, progress.say)
    return judge(s, cand, other, min(len(cand.rounds), len(other.rounds)), block_s, require_gain)


def _check_options(
    against: str | Path | None, baseline: bool, rounds: int | None, require_gain: float | None
) -> None:
    if (against is None) == (not baseline):
        raise UsageError("give one of --against OTHER.yaml or --baseline")
    if rounds is not None and rounds < MIN_ROUNDS:
        raise UsageError(f"--rounds must be at least {MIN_ROUNDS}")
    if require_gain is not None and not (math.isfinite(require_gain) and require_gain >= 0):
        raise UsageError(f"--require-gain {require_gain}: give a percentage of 0 or more")


# ---- the input ------------------------------------------------------------------------------------


def resolve_spec(
    best: BestConfig, shown: str, spec_path: str | None, storage: str | None
) -> tuple[Spec, str]:
    """The spec to measure with, and where it came from. A best-config YAML does not hold the spec;
    its provenance names the study, whose storage holds the spec the study ran. --spec overrides;
    --storage says where the study lives when the recorded URL does not reach it."""

    if spec_path is not None:
        return bind(read_spec(spec_path), spec_path), spec_path
    prov = best.provenance
    name = prov.get("study")
    url = storage or prov.get("storage")
    if not name or not url:
        raise UsageError(f"{shown}: its provenance names no study and storage; pass --spec SPEC.yaml")
    if storage is None and "***" in str(url):
        raise UsageError(
            f"{shown}: the study's storage URL has its password hidden ({url}); "
            "pass --storage URL or --spec SPEC.yaml"
        )
    try:
        study = load_study(str(name), str(url), say=lambda _line: None)
    except UsageError as e:
        raise UsageError(
            f"{shown}: cannot read the spec of study {name!r} ({e}); pass --spec SPEC.yaml or --storage URL"
        ) from None
    data = rec.stored_spec(study)
    if not data:
        raise UsageError(f"{shown}: study {name!r} holds no spec; pass --spec SPEC.yaml")
    source = f"study {name} in {redact(str(url))}"
    return bind(parse_spec(data, source), source), source


def arm_config(spec: Spec, best: BestConfig, shown: str) -> dict[str, Any]:
    """The config a best-config YAML names, checked against the spec (its model and parameters)."""

    model = spec.model.model_dump(mode="json", exclude_none=True)
    if best.model is not None and best.model != model:
        raise UsageError(f"{shown}: its model {best.model} is not the spec's ({model})")
    params = dict(best.params)
    precisions = spec.space["precision"].values() or [] if "precision" in spec.space else []
    if params.get("precision") == "int8" and spec.data is None and "int8-dynamic" in precisions:
        params["precision"] = "int8-dynamic"  # a YAML from before static INT8, whose int8 was dynamic
    for k in params:
        if k not in spec.space:
            raise UsageError(
                f"{shown}: params.{k}: not a parameter of the spec; allowed: {', '.join(spec.space)}"
            )
    return complete(spec, dict(params))


# ---- measuring -------------------------------------------------------------------------------------


def measure_arms(
    spec: Spec,
    executor: Executor,
    arms: tuple[Arm, Arm],
    rounds: int,
    say: Callable[[str], None],
) -> float:
    """One full trial of each arm, then `rounds` interleaved rounds of fixed-time blocks (the
    order alternating: A B, B A, ...). Stops at the first block that fails (its arm's `error`).
    Returns the block seconds (the longer of the two arms' race block lengths)."""

    def run(arm: Arm, block_s: float | None) -> TrialResult | None:
        meta = {} if block_s is None else {"block_s": block_s}
        res = _submit(executor, TrialRequest(-1, arm.config, meta=meta))
        tries = 0
        while res.ok and over_limit(res.metrics, limit) and tries < spec.measurement.load_repeats:
            say(
                f"  {arm.role} measured under foreign load ({res.metrics.get('foreign_load', 0):.2f} cores); "
                "measuring again"
            )
            res = _submit(executor, TrialRequest(-1, arm.config, meta=meta))
            tries += 1
        if not res.ok:
            when = "in its full trial" if block_s is None else f"in round {len(arm.rounds) + 1}"
            arm.error = f"{when}: {res.failure_class}: {res.failure_message}"
            return None
        if block_s is not None and over_limit(res.metrics, limit):
            arm.under_load += 1
        return res

    limit = spec.measurement.max_foreign_load
    for arm in arms:
        res = run(arm, None)
        if res is None:
            return 0.0
        arm.check = {k: float(v) for k, v in res.metrics.items() if _finite(v)}
    estimates = {
        config_key(a.config): Estimate(config_key(a.config), a.config, blocks=[Block(a.check)]) for a in arms
    }
    block_s = max(block_seconds(spec, estimates, a.config) for a in arms)
    metric = spec.objectives[0].metric
    for r in range(rounds):
        for arm in arms if r % 2 == 0 else arms[::-1]:
            res = run(arm, block_s)
            if res is None:
                return block_s
            arm.rounds.append({k: float(v) for k, v in res.metrics.items() if _finite(v)})
        a, b = (x.rounds[-1].get(metric) for x in arms)
        say(f"  round {r + 1}/{rounds}: {metric} candidate {_v(a)}, other {_v(b)}")
    return block_s


def _submit(executor: Executor, request: TrialRequest) -> TrialResult:
    try:
        return executor.submit(request).result()
    except AutotuneError:
        raise
    except Exception as e:  # noqa: BLE001 - an executor fault is a failed measurement
        return TrialResult.failure("error", f"executor: {type(e).__name__}: {e}")


# ---- judging ---------------------------------------------------------------------------------------


def judge(
    spec: Spec,
    cand: Arm,
    other: Arm,
    rounds: int,
    block_s: float = 0.0,
    require_gain_pct: float | None = None,
) -> Verification:
    """The paired comparison of every objective and constraint metric, and the verdict.

    Exit 0: no objective significantly worse (the paired interval of candidate - other at
    pick.confidence excludes 0 on the worse side) and every constraint holds on the candidate's
    mean; with require_gain_pct, also the first objective's relative gain interval lies at or
    above that many percent. Exit 1 otherwise, naming the metric; also when an arm did not run.
    """
    conf = spec.pick.confidence
    roles: dict[str, list[str]] = {}
    direction: dict[str, str] = {}
    for o in spec.objectives:
        roles.setdefault(o.metric, []).append("objective")
        direction[o.metric] = "max" if o.direction == "maximize" else "min"
    for c in spec.constraints:
        if "constraint" not in roles.setdefault(c.metric, []):
            roles[c.metric].append("constraint")
        direction.setdefault(c.metric, "min" if c.op in ("<=", "<") else "max")
    diffs = [_diff(m, ", ".join(r), direction[m], cand, other, conf) for m, r in roles.items()]
    constraints = []
    for c in spec.constraints:
        v = next(d.candidate for d in diffs if d.metric == c.metric)
        constraints.append(
            {
                "constraint": c.text,
                "value": _r(v),
                "satisfied": v is not None and c.violation(v) <= 0,
                **({} if v is not None else {"why": "not measured"}),
            }
        )

    def result(verdict: str, code: int) -> Verification:
        line = f"{verdict} (exit {code})"
        return Verification(
            cand, other, rounds, conf, block_s, require_gain_pct, diffs, constraints, line, code
        )

    for arm in (cand, other):
        if arm.error:
            return result(f"not verified: the {arm.role} ({arm.source}) failed {arm.error}", 1)
    objectives = [d for d in diffs if "objective" in d.role]
    problems = [f"regression: {_change(d)}" for d in objectives if d.verdict == "worse"]
    for c in constraints:
        if not c["satisfied"]:
            shown = "not measured" if c["value"] is None else f"candidate {_v(c['value'])}"
            problems.append(f"constraint broken: {c['constraint']} ({shown})")
    if problems:
        return result("; ".join(problems), 1)
    if require_gain_pct is not None:
        first = objectives[0]
        gain = _gain(first)
        want = f"at least {require_gain_pct:+g}% required"
        if gain is None:
            return result(f"no gain shown: {first.metric} has no paired interval; {want}", 1)
        if gain[1] < require_gain_pct:
            return result(f"gain not shown: {_change(first)}; {want}", 1)
        return result(f"gain: {_change(first)}, {want}", 0)
    better = [d for d in objectives if d.verdict == "better"]
    if better:
        return result("better: " + "; ".join(_change(d) for d in better), 0)
    return result("no significant difference", 0)


def _diff(metric: str, role: str, direction: str, cand: Arm, other: Arm, conf: float) -> MetricDiff:
    xs, ys = _paired(cand.rounds, other.rounds, metric)
    if len(xs) >= 2:
        d = paired_difference(xs, ys, conf)
        base = sum(ys) / len(ys)
        rel = _ratio_pct(xs, ys, conf) or _percent(d, base)
        side = rel or d  # the same sign as d where rel is d in % of the other's mean
        if side[1] > 0:
            verdict = "better" if direction == "max" else "worse"
        elif side[2] < 0:
            verdict = "worse" if direction == "max" else "better"
        else:
            verdict = "no significant difference"
        mean = sum(xs) / len(xs)
        return MetricDiff(metric, role, direction, mean, base, "rounds", len(xs), d, rel, verdict)
    # Not in the blocks (accuracy: measured by the full trial; it does not vary between processes).
    a, b = cand.check.get(metric), other.check.get(metric)
    d1 = (a - b, a - b, a - b) if a is not None and b is not None else None
    rel1 = _percent(d1, b) if d1 is not None and b is not None else None
    return MetricDiff(metric, role, direction, a, b, "once", 0, d1, rel1, "no interval (measured once)")


def _ratio_pct(xs: list[float], ys: list[float], conf: float) -> tuple[float, float, float] | None:
    """candidate / other - 1 in %, from the paired interval of the per-round log ratios (their
    geometric mean): a slower or faster machine multiplies both configs' numbers, so the ratio
    holds steadier over rounds than the difference, and two identical configs are symmetric
    (a mean of plain ratios is not). None where a value is not positive."""
    if any(v <= 0 for v in (*xs, *ys)):
        return None
    m, lo, hi = mean_ci([math.log(x / y) for x, y in zip(xs, ys, strict=True)], conf)
    return (_pct(m), _pct(lo), _pct(hi))


def _pct(log_ratio: float) -> float:
    return 100 * (math.exp(min(log_ratio, 700.0)) - 1)


def _percent(d: tuple[float, float, float], base: float) -> tuple[float, float, float] | None:
    """A difference in % of the other's mean (None where that mean is 0)."""
    if not base:
        return None
    return (100 * d[0] / abs(base), 100 * d[1] / abs(base), 100 * d[2] / abs(base))


def _paired(
    a: list[dict[str, float]], b: list[dict[str, float]], metric: str
) -> tuple[list[float], list[float]]:
    pairs = [(x.get(metric), y.get(metric)) for x, y in zip(a, b, strict=False)]
    kept = [(x, y) for x, y in pairs if x is not None and y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def _gain(d: MetricDiff) -> tuple[float, float, float] | None:
    """The relative change in the better direction (mean, low, high), where it has an interval."""
    r = d.relative_pct
    if r is None or d.measured != "rounds":
        return None
    return r if d.direction == "max" else (-r[0], -r[2], -r[1])


def _change(d: MetricDiff) -> str:
    r = d.relative_pct
    if r is None:
        diff = d.difference
        return f"{d.metric} {_v(diff[0], sign=True) if diff else '?'}"
    return f"{d.metric} {r[0]:+.1f}% [{r[1]:+.1f}%, {r[2]:+.1f}%]"


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _v(v: float | None, sign: bool = False) -> str:
    if v is None:
        return "-"
    s = "+" if sign else ""
    return f"{v:{s}.0f}" if 1e4 <= abs(v) < 1e9 else f"{v:{s}.4g}"


def _r(v: Any) -> Any:
    """Six significant digits; a non-finite number is null (JSON has no infinity)."""
    if isinstance(v, float):
        return float(f"{v:.6g}") if math.isfinite(v) else None
    return v
