"""The driver: Optuna ask/tell. The only process that writes the study database."""

from __future__ import annotations

import math
import os
import random
import socket
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any, TypeVar

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from autotuner.errors import UsageError
from autotuner.execution import Executor, TrialRequest, stop_workers
from autotuner.execution.load import over_limit
from autotuner.files import pid_alive
from autotuner.progress import Progress, fmt_config
from autotuner.result import TrialResult
from autotuner.runners.base import backend_of
from autotuner.runners.registry import runner_for
from autotuner.search.estimates import NOT_LAUNCHED, budget_use, counted, uses_budget
from autotuner.search.ladder import tell_levels
from autotuner.search.space import make_sampler, suggest
from autotuner.spec.schema import Spec
from autotuner.study import records as rec
from autotuner.study.journal import DB_ERRORS, Journal, replay, retry_db

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

T = TypeVar("T")
HEARTBEAT_S = 5.0
GRACE_S = 30.0
DETERMINISTIC = ("unsupported", "oom", "predicted-oom")
# A proposed repeat of a contender is measured until it has this many blocks. Measured on the
# recorded landscapes (docs/benchmarks/search_quality.md), repeats in the search bought less than
# new configs do: the race re-measures the contenders anyway, so a repeat is told its pooled value.
REPEATS_FOR_CONTENDERS = 1
FALLBACK_AFTER = 2  # free trials in a row before the driver draws an unmeasured config itself


@dataclass
class Session:
    """One driver session over a study (created or resumed)."""

    spec: Spec
    study: optuna.Study
    storage_url: str
    budget: int
    caps: dict[str, Any]
    progress: Progress


def sized_budget(spec: Spec, trials: int) -> int:
    """The trial budget: as asked, or the size of a grid that holds fewer configs."""
    if spec.sampler.type == "grid":
        from autotuner.search.space import grid_size

        size = grid_size(spec)
        if size is not None and size < trials:
            return size
    return trials


def within_budget(study: optuna.Study, number: int, budget: int, memo: dict[int, bool] | None = None) -> bool:
    """Whether a just-asked trial is among the first `budget` counted ones (by number), so that
    drivers sharing a study agree on which one is over the budget."""
    below = 0
    for t in study.get_trials(deepcopy=False):
        if t.number < number and budget_use(t, memo):
            below += 1
    return below < budget


def surplus(study: optuna.Study, trial: Trial) -> None:
    rec.fail(study, trial, "interrupted", "not run: another driver on this study reached the budget first")


def recover_stale(study: optuna.Study, progress: Progress) -> int:
    """Fail RUNNING trials whose driver is gone, and queue their configs again."""
    host = socket.gethostname()
    now = time.time()
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = rec.owner(t)
        dead_here = owner.get("host") == host and not pid_alive(int(owner.get("pid", -1)))
        if not (dead_here or now - rec.last_beat(t) > GRACE_S):
            continue
        who = f"{owner.get('host', '?')}:{owner.get('pid', '?')}"
        rec.interrupt(study, t, f"driver {who} stopped while the trial ran")
        n += 1
    if n:
        progress.say(f"recovered {n} trial(s) left running by a stopped driver; they run again")
    return n


def precheck(
    spec: Spec, config: dict[str, Any], caps: dict[str, Any], trials: list[FrozenTrial]
) -> TrialResult | None:
    """A failure known without launching: the runner refuses it, or the same config (or the
    same one at a smaller batch) already failed in a way that does not change on a rerun, or
    the engine refused one of its knob values outright in an earlier trial (vLLM's block_size 16
    on CPU: every config with that value fails the same way)."""
    try:
        cls = runner_for(backend_of(config))
    except UsageError as e:
        return TrialResult.failure("unsupported", str(e))
    reason = cls.check(spec, config, caps)
    if reason:
        return TrialResult.failure("unsupported", reason)
    predict = getattr(cls, "predict_memory", None)
    memory = predict(spec, config, caps) if predict else None
    if memory is not None and memory[0] > memory[1]:
        return TrialResult.failure(
            "predicted-oom",
            f"the memory model predicts {memory[0] / 2**20:.0f} MiB; "
            f"the device has {memory[1] / 2**20:.0f} MiB available",
            predicted_mb=memory[0] / 2**20,
            device_mb=memory[1] / 2**20,
        )
    mismatch = reference_mismatch(spec, backend_of(config), trials)
    if mismatch is not None:
        return mismatch
    rest = {k: v for k, v in config.items() if k != "batch_size"}
    for t in trials:
        cls_ = rec.failure_class(t)
        if not t.state.is_finished() or cls_ not in DETERMINISTIC:
            continue
        other = rec.trial_config(t)
        if other == config:
            # Stored as that failure again, and free: no budget for a measurement never taken.
            return TrialResult.failure(
                cls_,
                f"same config as trial #{t.number}: {rec.failure_message(t)}",
                **{rec.FAILED_BEFORE: t.number},
            )
        refused = rec.refused_values(t) if cls_ == "unsupported" else {}
        if refused and backend_of(other) == backend_of(config):
            if all(cls.value(config, k) == v for k, v in refused.items()):
                shown = ", ".join(f"{k}={v!r}" for k, v in refused.items())
                return TrialResult.failure(
                    "unsupported",
                    f"{shown} was refused by the engine in trial #{t.number}: {rec.failure_message(t)}",
                    refused=refused,
                )
        if cls_ == "oom" and {k: v for k, v in other.items() if k != "batch_size"} == rest:
            if int(config.get("batch_size", 1)) >= int(other.get("batch_size", 1)):
                return TrialResult.failure(
                    "predicted-oom",
                    f"trial #{t.number} ran out of memory at batch_size={other.get('batch_size')} "
                    "with the same other settings",
                )
    return None


def reference_mismatch(spec: Spec, backend: str, trials: list[FrozenTrial]) -> TrialResult | None:
    """The backend's fp32 disagreed with the fp32 reference on this model: every config of it is
    refused, free, until the model changes (another model digest)."""
    for t in trials:
        if rec.failure_class(t) != "reference-mismatch" or rec.failed_before(t) is not None:
            continue
        if backend_of(rec.trial_config(t)) != backend:
            continue
        if rec.info(t).get("model_sha256") != spec.model_digest:
            continue  # measured on another model: that one may have been the broken export
        return TrialResult.failure(
            "reference-mismatch",
            f"not run: fp32 on {backend} disagreed with the fp32 reference in trial #{t.number}, so "
            f"{backend} runs another model than the reference; fix the model or its export and rerun",
            **{rec.FAILED_BEFORE: t.number},
        )
    return None


def record(spec: Spec, study: optuna.Study, trial: Trial, result: TrialResult) -> tuple[str, str | None]:
    """Store every metric and end the trial, in one transaction. Returns (summary, failure class)."""
    attrs = rec.result_attrs(result)
    failure = result.failure_class
    message = result.failure_message
    if result.ok:
        wanted = [o.metric for o in spec.objectives] + [c.metric for c in spec.constraints]
        bad = [m for m in wanted if not math.isfinite(result.metrics.get(m, math.nan))]
        if bad:
            failure = "invalid-metric"
            message = f"{bad[0]} is {'missing' if bad[0] not in result.metrics else 'not finite'}"
    if failure:
        attrs.update({rec.FAILURE_CLASS: failure, rec.FAILURE_MESSAGE: message})
        if (before := result.info.get(rec.FAILED_BEFORE)) is not None:
            attrs[rec.FAILED_BEFORE] = before  # the budget does not count it (uses_budget)
        if failure in NOT_LAUNCHED:
            # Known without running: PRUNED and infeasible, so that samplers which read only
            # COMPLETE and PRUNED trials (TPE, NSGA-II) rank it last and steer away from it.
            rec.finish(study, trial, TrialState.PRUNED, attrs=attrs, constraints={rec.RUNNABLE: 1.0})
            return f"PRUNED {failure}: {message}", failure
        rec.finish(study, trial, TrialState.FAIL, attrs=attrs)
        return f"FAIL {failure}: {message}", failure
    violations = {c.text: c.violation(result.metrics[c.metric]) for c in spec.constraints}
    values = [result.metrics[o.metric] for o in spec.objectives]
    rec.finish(study, trial, TrialState.COMPLETE, attrs=attrs, constraints=violations, values=values)
    ok = all(v <= 0 for v in violations.values())
    shown = ", ".join(f"{o.metric}={result.metrics[o.metric]:.4g}" for o in spec.objectives)
    return f"{shown}{'' if ok else ' (infeasible)'}", None


def best_line(spec: Spec, arms: Any) -> str | None:
    """The best feasible config so far by its pooled estimate, with its trial and block count."""
    best = arms.leaders(1)
    if not best:
        return None
    e, metric = best[0], spec.objectives[0].metric
    return f"#{e.first_trial} {metric}={e.mean(metric):.4g}" + (f" ({e.n} blocks)" if e.n > 1 else "")


def tell_pooled(spec: Spec, study: optuna.Study, trial: Trial, e: Any, values: list[float]) -> str:
    """A repeat the sampler proposed, answered with the config's pooled estimate: no measurement."""
    violations = {}
    for c in spec.constraints:
        v = e.mean(c.metric)
        violations[c.text] = c.violation(v) if v is not None else 1.0
    rec.finish(
        study,
        trial,
        TrialState.COMPLETE,
        attrs={rec.POOLED_FROM: list(e.trials)},
        constraints=violations,
        values=values,
    )
    shown = ", ".join(f"{o.metric}={v:.4g}" for o, v in zip(spec.objectives, values, strict=True))
    return f"repeat of #{e.first_trial}: told its pooled estimate over {e.n} block(s), {shown} (free)"


def _waiting(trials: list[FrozenTrial]) -> int:
    """Queued trials (ours, or another driver's) waiting for an ask, as of a read of the study."""
    return sum(1 for t in trials if t.state == TrialState.WAITING)


def tell_failed_before(study: optuna.Study, trial: Trial, failed: tuple[int, str, str]) -> str:
    """A config that failed before is not run again on the budget: the same FAIL, free."""
    number, cls, message = failed
    why = f"not run again: trial #{number} failed ({message})"
    rec.fail(study, trial, cls, why, **{rec.FAILED_BEFORE: number})
    return f"not run again: the same config failed as {cls} in trial #{number} (free)"


def drive(session: Session, executor: Executor, wall_time_s: float | None) -> None:
    from autotuner.search.estimates import config_key
    from autotuner.search.proposals import Arms
    from autotuner.search.space import grid_size, sampled_params

    spec, study, progress = session.spec, session.study, session.progress
    say = progress.say

    def db(fn: Callable[[], T], what: str) -> T:
        return retry_db(fn, what, say, session.storage_url)

    journal = Journal(study.study_name, session.storage_url)

    def store(trial: Trial, result: TrialResult) -> tuple[str, str | None]:
        """Journal first (never lose a measurement), then the study, waiting out outages."""
        journal.add(rec.trial_id(trial), trial.number, result)
        try:
            out = db(lambda: record(spec, study, trial, result), f"storing trial #{trial.number}")
        except optuna.exceptions.UpdateFinishedTrialError:
            out = ("stored before the connection dropped", None)
        journal.done(rec.trial_id(trial))
        return out

    db(
        lambda: replay(journal, study, lambda trial, res: record(spec, study, trial, res), say),
        "replaying the journal",
    )
    db(lambda: recover_stale(study, progress), "recovering stale trials")
    trials = db(lambda: study.get_trials(deepcopy=False), "reading the study")
    # A resumed study gets a new seed, so the sampler does not replay the configs it began with.
    base_seed = spec.seed if spec.seed is not None else int(rec.study_attr(study, rec.SAMPLER_SEED, 0))
    study.sampler = make_sampler(spec, seed=base_seed + len(trials))
    rng = random.Random(base_seed + len(trials) + 1)
    arms = Arms(spec, trials, REPEATS_FOR_CONTENDERS)
    memo: dict[int, bool] = {}  # finished trial number -> uses the budget
    last_beat = time.monotonic()  # a trial's start stands in for its first beat
    limit = spec.measurement.max_foreign_load
    measured_s = sum(rec.metric(t, "measure_s") or 0.0 for t in trials if uses_budget(t))
    owner = {"host": socket.gethostname(), "pid": os.getpid()}
    running: dict[Future[TrialResult], tuple[Trial, float, int, dict[str, Any]]] = {}
    deadline = time.monotonic() + wall_time_s if wall_time_s else None
    total = session.budget
    free_streak = 0
    free_total = 0
    exhausted = False
    space_size = grid_size(spec)
    # The last share of the budget refines around the leaders (none for a grid: it walks it all).
    reserve = 0 if spec.sampler.type == "grid" else math.ceil(spec.sampler.refine_share * total)

    def runnable(config: dict[str, Any]) -> bool:
        return precheck(spec, config, session.caps, []) is None and not arms.predicted_infeasible(config)

    def time_left() -> bool:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        return spec.budget.measure_s is None or measured_s < spec.budget.measure_s

    def queue(config: dict[str, Any], **attrs: Any) -> None:
        """Have the next ask return this config (the sampler is not asked for it)."""
        db(lambda: rec.queue(study, sampled_params(spec, config), **attrs), "queueing a config")

    def free(trial: Trial) -> None:
        """A trial that measured nothing; after a few in a row, queue an unmeasured config."""
        nonlocal free_streak, free_total, exhausted
        free_streak += 1
        free_total += 1
        if free_streak < FALLBACK_AFTER:
            return
        pick = arms.unmeasured(rng, runnable)
        if pick is None:
            exhausted = True
            say(f"every runnable config of the space is measured; the search ends at trial #{trial.number}")
            return
        free_streak = 0
        queue(pick, **{rec.DRAWN: "unmeasured"})

    design: list[dict[str, Any]] = []
    if not trials and spec.sampler.type in ("tpe", "gp", "random") and spec.sampler.n_startup_trials:
        # The sampler's startup draws, made a covering design: each value and pair of values of
        # the space is seen as early as it can be (a random start leaves whole backends out).
        # Queued one at a time, so that a run stopped early leaves nothing waiting.
        from autotuner.search.space import initial_design

        design = initial_design(spec, min(spec.sampler.n_startup_trials, total), rng, runnable)
    try:
        while True:
            trials = db(lambda: study.get_trials(deepcopy=False), "reading the study")
            fresh = 0
            arms.update(trials)
            room = total - counted(trials, memo)
            # Queued trials waiting as of that read; each ask takes one. Queueing another on top of
            # one would only push it back.
            waiting = _waiting(trials)
            while (
                room > 0
                and len(running) < executor.slots
                and time_left()
                and not exhausted
                and free_total <= max(50, 10 * total)
                and not (space_size is not None and arms.tried() >= space_size)
            ):
                if design:
                    present = {config_key(rec.trial_config(t)) for t in trials}
                    while design and config_key(design[0]) in present:
                        design.pop(0)  # another driver sharing the study has it already
                if design and not waiting:
                    queue(design.pop(0), **{rec.DRAWN: "initial design"})
                elif room <= reserve and not waiting:
                    near = arms.surrogate_pick(runnable) or arms.next_neighbor(runnable)
                    if near is not None:
                        queue(near, **{rec.DRAWN: "refinement"})
                trial = db(study.ask, "asking for a trial")
                waiting = max(0, waiting - 1)
                db(
                    lambda t=trial: rec.claim(study, t, owner),
                    "claiming the trial",
                )
                if not db(lambda t=trial: within_budget(study, t.number, total, memo), "reading the study"):
                    # Another driver sharing the study took the last place between our count and ask.
                    db(lambda t=trial: surplus(study, t), "returning a surplus trial")
                    break
                config = db(lambda t=trial: suggest(t, spec), "sampling a config")
                db(lambda t=trial, c=config: rec.start(study, t, c), "storing the config")
                # The trials read since the last look hold every one running then; the ones
                # submitted since, and this one, come on top.
                n = counted(trials, memo) + fresh + 1
                known = precheck(spec, config, session.caps, trials)
                if known is None and (why := arms.predicted_infeasible(config)):
                    known = TrialResult.failure("predicted-infeasible", why)
                proposal = arms.propose(config) if known is None else None
                free_summary, failure = None, None
                if known is not None:
                    summary, failure = store(trial, known)
                    arms.fail(trial.number, config, failure or "unsupported", known.failure_message or "")
                    free_summary = f"{summary} (free)"
                elif proposal is not None and proposal.action == "failed" and proposal.failed is not None:
                    free_summary = db(
                        lambda t=trial, f=proposal.failed: tell_failed_before(study, t, f), "storing a repeat"
                    )
                elif proposal is not None and proposal.action == "pooled" and proposal.estimate is not None:
                    e = proposal.estimate
                    values = arms.pooled_values(e)
                    if values is not None:
                        free_summary = db(
                            lambda t=trial, e=e, v=values: tell_pooled(spec, study, t, e, v),
                            "storing a repeat",
                        )
                if free_summary is not None:
                    progress.trial_finished(
                        n - 1, total, trial.number, f"{fmt_config(config)} {free_summary}", 0.0, failure, None
                    )
                    free(trial)
                    trials = db(lambda: study.get_trials(deepcopy=False), "reading the study")
                    waiting = _waiting(trials)
                    fresh = 0
                    continue
                if proposal is not None and proposal.action == "remeasure" and proposal.estimate is not None:
                    e = proposal.estimate
                    db(lambda t=trial, n=e.first_trial: rec.set_marker(t, rec.REPEAT_OF, n), "marking")
                    say(f"  trial #{trial.number} re-measures contender #{e.first_trial} (block {e.n + 1})")
                free_streak = 0
                progress.trial_started(n, total, trial.number, config)
                req = TrialRequest(trial.number, config)
                running[executor.submit(req)] = (trial, time.monotonic(), n, config)
                fresh += 1
                room -= 1
            if not running:
                break
            done, _ = wait(list(running), timeout=HEARTBEAT_S, return_when=FIRST_COMPLETED)
            for fut in done:
                trial, started, n, config = running.pop(fut)
                try:
                    result = fut.result()
                except Exception as e:  # noqa: BLE001 - an executor fault fails the trial only
                    result = TrialResult.failure("error", f"executor: {type(e).__name__}: {e}")
                loaded = result.ok and over_limit(result.metrics, limit)
                if loaded:
                    depth = int(rec.marker(trial, rec.LOAD_RETRY, 0))
                    load = result.metrics.get("foreign_load", 0.0)
                    if depth < spec.measurement.load_repeats:
                        result = TrialResult(
                            ok=False,
                            metrics=result.metrics,
                            failure_class="under-load",
                            failure_message=(
                                f"other processes took {load:.2f} cores of the trial's cores while it "
                                f"measured (limit {limit:g}); kept, and measured again"
                            ),
                            latency_samples_ms=result.latency_samples_ms,
                            info=result.info,
                        )
                        queue(config, **{rec.REPEAT_OF: trial.number, rec.LOAD_RETRY: depth + 1})
                    else:
                        result.info["under_load"] = True
                summary, failure = store(trial, result)
                if failure is None:  # the other load levels its server measured (search.ladder)
                    summary += db(
                        lambda t=trial, c=config, r=result: tell_levels(spec, study, t, c, r), "storing"
                    )
                if result.ok or failure == "under-load":
                    arms.add(trial.number, config, result.metrics, loaded)
                if result.ok:
                    measured_s += float(result.metrics.get("measure_s") or 0.0)
                elif failure and failure not in ("interrupted", "under-load"):
                    arms.fail(trial.number, config, failure, result.failure_message or "")
                if result.ok and result.metrics.get("unstable"):
                    summary += " [unstable: CV target not met]"
                best = best_line(spec, arms)
                progress.trial_finished(
                    n, total, trial.number, summary, time.monotonic() - started, failure, best
                )
            # At most one heartbeat per HEARTBEAT_S (trials that end at once would write one each).
            if running and time.monotonic() - last_beat >= HEARTBEAT_S:
                try:
                    rec.heartbeat(study, [t for t, _, _, _ in running.values()], time.time())
                    last_beat = time.monotonic()
                except DB_ERRORS:
                    pass  # a missed heartbeat is harmless; the next one retries
    except KeyboardInterrupt:
        # Every trial this driver holds, including one asked but not yet submitted.
        mine = {rec.trial_id(t) for t, _, _, _ in running.values()}
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if rec.trial_id(t) in mine or rec.owner(t) == owner:
                rec.interrupt(study, t, "stopped by the user (Ctrl-C)")
        raise
    finally:
        stop_workers()
    if spec.budget.measure_s is not None and measured_s >= spec.budget.measure_s:
        say(f"the measurement budget ({spec.budget.measure_s:g} s) is spent")
    journal.compact()
