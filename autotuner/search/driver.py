"""The driver: Optuna ask/tell. The only process that writes the study database.

`Driver` holds one session's state; `run` is its loop: resume (journal replay, stale trials,
reseed), then fill the executor's slots (ask, answer free what is known without launching, else
launch), collect what finished (load retries, store), beat for the running trials, repeat. The
tell side is `search.tell`; what is known before launch is `search.precheck`.
"""

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
from typing import Any, NamedTuple, TypeVar

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from autotuner.execution import Executor, TrialRequest, stop_workers
from autotuner.files import pid_alive
from autotuner.measure.load import over_limit
from autotuner.progress import Progress, fmt_config
from autotuner.result import TrialResult
from autotuner.search.estimates import budget_use, config_key, counted, uses_budget
from autotuner.search.ladder import recover_levels, tell_levels
from autotuner.search.pick import Rule
from autotuner.search.precheck import precheck
from autotuner.search.proposals import Arms, Proposal
from autotuner.search.space import grid_size, initial_design, make_sampler, sampled_params, suggest
from autotuner.search.tell import record, surplus, tell_failed_before, tell_pooled
from autotuner.spec.schema import Spec
from autotuner.study import records as rec
from autotuner.study.journal import DB_ERRORS, Journal, replay, retry_db

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

T = TypeVar("T")
HEARTBEAT_S = 5.0
GRACE_S = 30.0
CLAIM_POLL_S = 0.5
# A proposed repeat of a contender is measured until it has this many blocks. Measured on the
# recorded landscapes (docs/benchmarks/search_quality.md), repeats in the search bought less than
# new configs do: the race re-measures the contenders anyway, so a repeat is told its pooled value.
REPEATS_FOR_CONTENDERS = 1
# A new config's search trial stops early once even its optimistic throughput is below this share
# of the leader's (measure.harness: "out-of-running"); its numbers are a real, shorter block.
GIVE_UP_SHARE = 0.5
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


def recover_stale(
    study: optuna.Study, progress: Progress, sleep: Callable[[float], None] = time.sleep
) -> int:
    """Fail RUNNING trials whose driver is gone, and queue their configs again.

    A trial is its driver's from the claim that follows its ask. One asked but not yet claimed
    (its driver killed between the two, or a live driver in that instant) is judged once it is
    GRACE_S old, as one whose heartbeat stopped: a rerun started at once waits for that, rather
    than leave it RUNNING for good."""
    said = False
    until = time.monotonic() + GRACE_S + 1  # a start stamped by a clock ahead of ours waits no longer
    while time.monotonic() < until:  # a live driver claims within milliseconds: only an orphan waits
        unclaimed = [
            t.datetime_start.timestamp()
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not rec.owner(t) and t.datetime_start is not None
        ]
        wait_s = GRACE_S - (time.time() - min(unclaimed)) if unclaimed else 0.0
        if wait_s <= 0:
            break
        if not said:
            progress.say(
                f"a trial was asked {GRACE_S - wait_s:.0f} s ago but not claimed; waiting up to "
                f"{wait_s:.0f} s to see whether its driver is alive"
            )
            said = True
        sleep(min(wait_s + 0.1, CLAIM_POLL_S))
    host = socket.gethostname()
    now = time.time()
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = rec.owner(t)
        dead_here = owner.get("host") == host and not pid_alive(int(owner.get("pid", -1)))
        if not (dead_here or now - rec.last_beat(t) > GRACE_S):
            continue
        who = f"{owner.get('host', '?')}:{owner.get('pid', '?')}" if owner else "unknown (before its claim)"
        rec.interrupt(study, t, f"driver {who} stopped while the trial ran")
        n += 1
    if n:
        progress.say(f"recovered {n} trial(s) left running by a stopped driver; they run again")
    return n


def best_line(spec: Spec, arms: Any) -> str | None:
    """The best feasible config so far by its pooled estimate, with its trial and block count."""
    best = arms.leaders(1)
    if not best:
        return None
    e, metric = best[0], spec.objectives[0].metric
    return f"#{e.first_trial} {metric}={e.mean(metric):.4g}" + (f" ({e.n} blocks)" if e.n > 1 else "")


def _waiting(trials: list[FrozenTrial]) -> int:
    """Queued trials (ours, or another driver's) waiting for an ask, as of a read of the study."""
    return sum(1 for t in trials if t.state == TrialState.WAITING)


def _promotions_waiting(trials: list[FrozenTrial]) -> int:
    return sum(1 for t in trials if t.state == TrialState.WAITING and rec.is_promotion(t))


class Launched(NamedTuple):
    """A trial handed to the executor: what `collect` needs when its result comes back."""

    trial: Trial
    started: float  # time.monotonic() at submit
    n: int  # its place in the budget, as the console shows it
    config: dict[str, Any]


class Driver:
    """One session's ask/tell loop over a study, on an executor, until the budget is spent."""

    def __init__(self, session: Session, executor: Executor, wall_time_s: float | None) -> None:
        self.session = session
        self.spec, self.study, self.progress = session.spec, session.study, session.progress
        self.say = self.progress.say
        self.executor = executor
        self.total = session.budget
        self.journal = Journal(self.study.study_name, session.storage_url)
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}
        self.wall_time_s = wall_time_s
        self.deadline: float | None = None  # set when the loop starts, after resuming
        self.limit = self.spec.measurement.max_foreign_load
        self.space_size = grid_size(self.spec)
        # The last share of the budget refines around the leaders (none for a grid: it walks it all).
        share = 0.0 if self.spec.sampler.type == "grid" else self.spec.sampler.refine_share
        self.reserve = math.ceil(share * self.total)
        self.running: dict[Future[TrialResult], Launched] = {}
        self.memo: dict[int, bool] = {}  # finished trial number -> uses the budget
        self.free_streak = 0  # free trials in a row
        self.free_total = 0
        self.exhausted = False  # every runnable config of the space is measured
        self.design: list[dict[str, Any]] = []  # the covering design's configs not yet queued
        # Per fill: the last read of the study, the trials submitted since, the budget left, and
        # the queued trials waiting as of that read.
        self.trials: list[FrozenTrial] = []
        self.fresh = 0
        self.room = 0
        self.waiting = 0
        self.promotions = 0  # of them, promotions after a first look (not trials of the budget)
        self.arms: Arms
        self.rng: random.Random
        self.measured_s = 0.0
        self.last_beat = time.monotonic()

    def run(self) -> None:
        self.resume()
        try:
            while True:
                self.fill_slots()
                if not self.running:
                    break
                self.collect()
                self.heartbeat()
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                self.interrupted()
            stop_workers()  # what still runs ends with the driver
            raise
        # A search that ended on its own leaves nothing running; the warm zygote stays, for the
        # race's blocks (killing it here cost the race's first round a restart: 3-7 s).
        budget_s = self.spec.budget.measure_s
        if budget_s is not None and self.measured_s >= budget_s:
            self.say(f"the measurement budget ({budget_s:g} s) is spent")
        self.journal.compact()

    # ---- helpers ---------------------------------------------------------------------------------

    def _db(self, fn: Callable[[], T], what: str) -> T:
        return retry_db(fn, what, self.say, self.session.storage_url)

    def _read(self) -> list[FrozenTrial]:
        return self._db(lambda: self.study.get_trials(deepcopy=False), "reading the study")

    def _store(self, trial: Trial, result: TrialResult) -> tuple[str, str | None]:
        """Journal first (never lose a measurement), then the study, waiting out outages."""
        self.journal.add(rec.trial_id(trial), trial.number, result)
        try:
            out = self._db(
                lambda: record(self.spec, self.study, trial, result), f"storing trial #{trial.number}"
            )
        except optuna.exceptions.UpdateFinishedTrialError:
            out = ("stored before the connection dropped", None)
        self.journal.done(rec.trial_id(trial))
        return out

    def _queue(self, config: dict[str, Any], **attrs: Any) -> None:
        """Have the next ask return this config (the sampler is not asked for it)."""
        self._db(
            lambda: rec.queue(self.study, sampled_params(self.spec, config), **attrs), "queueing a config"
        )

    def _runnable(self, config: dict[str, Any]) -> bool:
        known = precheck(self.spec, config, self.session.caps, [])
        return known is None and not self.arms.predicted_infeasible(config)

    def _time_left(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        return self.spec.budget.measure_s is None or self.measured_s < self.spec.budget.measure_s

    # ---- the steps -------------------------------------------------------------------------------

    def resume(self) -> None:
        """Replay the journal, fail stale trials, reseed the sampler, pool what the study holds."""
        spec, study = self.spec, self.study
        self._db(
            lambda: replay(self.journal, study, lambda trial, res: record(spec, study, trial, res), self.say),
            "replaying the journal",
        )
        self._db(lambda: recover_stale(study, self.progress), "recovering stale trials")
        trials = self._read()
        # The trials just read serve the first try; a try after a dropped connection reads them
        # again (a level stored before the drop is then not stored twice).
        known = [trials]
        levels = self._db(
            lambda: recover_levels(spec, study, known.pop() if known else None), "storing load levels"
        )
        if levels:
            self.say(f"stored {levels} load level(s) that an earlier run measured but did not store")
            trials = self._read()
        # A resumed study gets a new seed, so the sampler does not replay the configs it began with.
        base_seed = spec.seed if spec.seed is not None else int(rec.study_attr(study, rec.SAMPLER_SEED, 0))
        study.sampler = make_sampler(spec, seed=base_seed + len(trials))
        self.rng = random.Random(base_seed + len(trials) + 1)
        self.arms = Arms(spec, trials, REPEATS_FOR_CONTENDERS)
        self.last_beat = time.monotonic()  # a trial's start stands in for its first beat
        self.measured_s = sum(rec.metric(t, "measure_s") or 0.0 for t in trials if uses_budget(t))
        self.deadline = time.monotonic() + self.wall_time_s if self.wall_time_s else None
        if not trials and spec.sampler.type in ("tpe", "gp", "random") and spec.sampler.n_startup_trials:
            # The sampler's startup draws, made a covering design: each value and pair of values of
            # the space is seen as early as it can be (a random start leaves whole backends out).
            # Queued one at a time, so that a run stopped early leaves nothing waiting.
            n = min(spec.sampler.n_startup_trials, self.total)
            self.design = initial_design(spec, n, self.rng, self._runnable)

    def fill_slots(self) -> None:
        """Ask and launch until the slots are full, or the budget, the time or the space is spent."""
        self._reread()
        self.arms.update(self.trials)
        self.room = self.total - counted(self.trials, self.memo)
        while self._may_ask():
            self._queue_next()
            asked = self.ask_one()
            if asked is None:
                break  # another driver sharing the study took the last place
            trial, config, n = asked
            known = precheck(self.spec, config, self.session.caps, self.trials)
            if known is None and (why := self.arms.predicted_infeasible(config)):
                known = TrialResult.failure("predicted-infeasible", why)
            proposal = self.arms.propose(config) if known is None else None
            if self.answer_free(trial, config, n, known, proposal):
                continue
            self._launch(trial, config, n, proposal)

    def _reread(self) -> None:
        self.trials = self._read()
        # Queued trials waiting as of that read; each ask takes one. Queueing another on top of
        # one would only push it back.
        self.waiting = _waiting(self.trials)
        self.promotions = _promotions_waiting(self.trials)
        self.fresh = 0

    def _may_ask(self) -> bool:
        return (
            (self.room > 0 or self.promotions > 0)  # a promotion is not a trial of the budget
            and len(self.running) < self.executor.slots
            and self._time_left()
            and not self.exhausted
            and self.free_total <= max(50, 10 * self.total)
            and not (
                self.space_size is not None and self.arms.tried() >= self.space_size and not self.waiting
            )
        )

    def _queue_next(self) -> None:
        """Queue the covering design's next config, or in the reserve a refinement near the leaders."""
        if self.design:
            present = {config_key(rec.trial_config(t)) for t in self.trials}
            while self.design and config_key(self.design[0]) in present:
                self.design.pop(0)  # another driver sharing the study has it already
        if self.design and not self.waiting:
            self._queue(self.design.pop(0), **{rec.DRAWN: "initial design"})
        elif self.room <= self.reserve and not self.waiting:
            near = self.arms.refinement(self._runnable)
            if near is not None:
                self._queue(near, **{rec.DRAWN: "refinement"})

    def ask_one(self) -> tuple[Trial, dict[str, Any], int] | None:
        """Ask, claim and sample one trial: (trial, config, its place in the budget), or None when
        it is over the budget (returned as a surplus)."""
        study = self.study
        trial = self._db(study.ask, "asking for a trial")
        self.waiting = max(0, self.waiting - 1)
        promotion = rec.is_promotion(trial)
        self.promotions = max(0, self.promotions - promotion)
        self._db(lambda: rec.claim(study, trial, self.owner), "claiming the trial")
        if not promotion and not self._db(
            lambda: within_budget(study, trial.number, self.total, self.memo), "reading the study"
        ):
            # Another driver sharing the study took the last place between our count and ask.
            self._db(lambda: surplus(study, trial), "returning a surplus trial")
            return None
        config = self._db(lambda: suggest(trial, self.spec), "sampling a config")
        self._db(lambda: rec.start(study, trial, config), "storing the config")
        # The trials read since the last look hold every one running then; the ones
        # submitted since, and this one, come on top.
        # A promotion keeps its look's place (it is not a trial of the budget).
        return trial, config, counted(self.trials, self.memo) + self.fresh + (0 if promotion else 1)

    def answer_free(
        self,
        trial: Trial,
        config: dict[str, Any],
        n: int,
        known: TrialResult | None,
        proposal: Proposal | None,
    ) -> bool:
        """Tell a trial without launching it where its outcome is known (refused, failed before,
        or a repeat answered by its pooled estimate). Returns whether it was told."""
        told = self._tell_free(trial, config, known, proposal)
        if told is None:
            return False
        summary, failure = told
        self.progress.trial_finished(
            n - 1, self.total, trial.number, f"{fmt_config(config)} {summary}", 0.0, failure, None
        )
        self._free(trial)
        self._reread()
        return True

    def _tell_free(
        self, trial: Trial, config: dict[str, Any], known: TrialResult | None, proposal: Proposal | None
    ) -> tuple[str, str | None] | None:
        if known is not None:
            summary, failure = self._store(trial, known)
            self.arms.fail(trial.number, config, failure or "unsupported", known.failure_message or "")
            return f"{summary} (free)", failure
        if proposal is None:
            return None
        if proposal.action == "failed" and proposal.failed is not None:
            failed = proposal.failed
            return self._db(lambda: tell_failed_before(self.study, trial, failed), "storing a repeat"), None
        if proposal.action == "pooled" and proposal.estimate is not None:
            e = proposal.estimate
            values = self.arms.pooled_values(e)
            if values is not None:
                told = self._db(
                    lambda: tell_pooled(self.spec, self.study, trial, e, values), "storing a repeat"
                )
                return told, None
        return None

    def _free(self, trial: Trial) -> None:
        """A trial that measured nothing; after a few in a row, queue an unmeasured config."""
        self.free_streak += 1
        self.free_total += 1
        if self.free_streak < FALLBACK_AFTER:
            return
        pick = self.arms.unmeasured(self.rng, self._runnable)
        if pick is None:
            self.exhausted = True
            self.say(
                f"every runnable config of the space is measured; the search ends at trial #{trial.number}"
            )
            return
        self.free_streak = 0
        self._queue(pick, **{rec.DRAWN: "unmeasured"})

    def _launch(self, trial: Trial, config: dict[str, Any], n: int, proposal: Proposal | None) -> None:
        if proposal is not None and proposal.action == "remeasure" and proposal.estimate is not None:
            e = proposal.estimate
            self._db(lambda: rec.set_marker(trial, rec.REPEAT_OF, e.first_trial), "marking")
            if rec.is_promotion(trial):
                self.say(f"  trial #{trial.number} measures #{e.first_trial}'s config at full length")
            else:
                self.say(f"  trial #{trial.number} re-measures contender #{e.first_trial} (block {e.n + 1})")
        self.free_streak = 0
        self.progress.trial_started(n, self.total, trial.number, config)
        new = proposal is not None and proposal.action == "measure"
        floor = self.give_up_floor() if new else None
        meta: dict[str, Any] = {} if floor is None else {"give_up_below": floor}
        # A config never measured gets a short first look where the spec asks for one; a config
        # that may still win is promoted to a trial-length block when its look is back.
        look = self.spec.measurement.first_look_s if new else None
        if look is not None:
            meta["first_look_s"] = look
        request = TrialRequest(trial.number, config, meta, fidelity="short" if look is not None else None)
        future = self.executor.submit(request)
        self.running[future] = Launched(trial, time.monotonic(), n, config)
        budgeted = not rec.is_promotion(trial)
        self.fresh += budgeted
        self.room -= budgeted

    def give_up_floor(self) -> float | None:
        """The throughput under which a new config's search trial stops early, out of the
        running: GIVE_UP_SHARE of the leader's pooled throughput, where the first objective is
        throughput to maximize and a leader is measured (None otherwise)."""
        rule = Rule.first_objective(self.spec)
        if rule.metric != "throughput_items_s" or rule.direction != "max":
            return None
        leaders = self.arms.leaders(1)
        best = leaders[0].mean(rule.metric) if leaders else None
        return GIVE_UP_SHARE * best if best else None

    def collect(self) -> None:
        """Wait for a trial to finish (a heartbeat at most), and store each that did."""
        done, _ = wait(list(self.running), timeout=HEARTBEAT_S, return_when=FIRST_COMPLETED)
        for fut in done:
            launched = self.running.pop(fut)
            try:
                result = fut.result()
            except Exception as e:  # noqa: BLE001 - an executor fault fails the trial only
                result = TrialResult.failure("error", f"executor: {type(e).__name__}: {e}")
            self._finished(launched, result)

    def _finished(self, launched: Launched, result: TrialResult) -> None:
        trial, started, n, config = launched
        # A first look, as its worker says (a serving or workload trial measures at full length).
        first_look = result.info.get("fidelity") == "short"
        loaded = result.ok and over_limit(result.metrics, self.limit)
        if loaded:
            result = self._under_load(trial, config, result)
        summary, failure = self._store(trial, result)
        if failure is None:  # the other load levels its server measured (search.ladder)
            summary += self._db(lambda: tell_levels(self.spec, self.study, trial, config, result), "storing")
        if result.ok or failure == "under-load":
            self.arms.add(trial.number, config, result.metrics, loaded, first_look)
        if result.ok:
            self.measured_s += float(result.metrics.get("measure_s") or 0.0)
        elif failure and failure not in ("interrupted", "under-load"):
            self.arms.fail(trial.number, config, failure, result.failure_message or "")
        if result.ok and result.metrics.get("unstable") and not first_look:  # a look has a fixed length
            summary += " [unstable: CV target not met]"
        if first_look and result.ok and not loaded:
            summary += self._promote(trial, config)
        best = best_line(self.spec, self.arms)
        self.progress.trial_finished(
            n, self.total, trial.number, summary, time.monotonic() - started, failure, best
        )

    def _promote(self, trial: Trial, config: dict[str, Any]) -> str:
        """After a first look: queue a trial-length block of the config if it may still win. A
        promotion completes its config's measurement and is not a trial of the budget (the
        trials count the configs looked at; measurement seconds count both). Returns what the
        console line says of it."""
        if not self.arms.promotes(config):
            return " (first look)"
        if not self._time_left():
            return " (first look; may still win, but the time budget is spent)"
        self._queue(config, **{rec.REPEAT_OF: trial.number, rec.DRAWN: rec.PROMOTION})
        self.waiting += 1
        self.promotions += 1
        return " (first look; may still win: queued at full length)"

    def _under_load(self, trial: Trial, config: dict[str, Any], result: TrialResult) -> TrialResult:
        """A measurement disturbed by other processes: kept as under-load and queued again, up
        to load_repeats times; after that kept as measured, marked."""
        depth = int(rec.marker(trial, rec.LOAD_RETRY, 0))
        if depth >= self.spec.measurement.load_repeats:
            result.info["under_load"] = True
            return result
        load = result.metrics.get("foreign_load", 0.0)
        self._queue(config, **{rec.REPEAT_OF: trial.number, rec.LOAD_RETRY: depth + 1})
        return TrialResult(
            ok=False,
            metrics=result.metrics,
            failure_class="under-load",
            failure_message=(
                f"other processes took {load:.2f} cores of the trial's cores while it "
                f"measured (limit {self.limit:g}); kept, and measured again"
            ),
            latency_samples_ms=result.latency_samples_ms,
            info=result.info,
        )

    def heartbeat(self) -> None:
        """At most one heartbeat per HEARTBEAT_S (trials that end at once would write one each)."""
        if not self.running or time.monotonic() - self.last_beat < HEARTBEAT_S:
            return
        try:
            rec.heartbeat(self.study, [x.trial for x in self.running.values()], time.time())
            self.last_beat = time.monotonic()
        except DB_ERRORS:
            pass  # a missed heartbeat is harmless; the next one retries

    def interrupted(self) -> None:
        """Ctrl-C: every trial this driver holds, including one asked but not yet submitted."""
        mine = {rec.trial_id(x.trial) for x in self.running.values()}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if rec.trial_id(t) in mine or rec.owner(t) == self.owner:
                rec.interrupt(self.study, t, "stopped by the user (Ctrl-C)")


def drive(session: Session, executor: Executor, wall_time_s: float | None) -> None:
    """Run the ask/tell search of a session on an executor until its budget is spent."""
    Driver(session, executor, wall_time_s).run()
