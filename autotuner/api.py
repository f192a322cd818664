"""The Python API: each command a few lines over the stages, and the stages themselves.

The stages, in the order `run` calls them, are public so that code (and the benchmarks) can
compose them without reaching into a stage's modules:

    spec = load_spec("spec.yaml")                      # spec: read and bound to the runners
    caps = probe()                                     # execution: what this machine offers
    study = open_study(spec, caps=caps)                # study: created or resumed
    with make_executor("local", spec, caps) as ex:     # execution: where blocks run
        search(spec, study, ex, caps=caps)             # search: the ask/tell driver
        pick = choose(spec, study, executor=ex)        # search: the race and the pick
    write_best_config(spec, study, pick, "best.yaml")  # report: the best-config YAML
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from autotuner.errors import UsageError
from autotuner.execution import check_executor, start_warm_workers
from autotuner.execution import make_executor as _make
from autotuner.execution.base import TrialRequest
from autotuner.execution.capabilities import probe as _probe
from autotuner.files import check_writable
from autotuner.models.checks import checked_model
from autotuner.progress import Progress
from autotuner.report.export import best_config
from autotuner.report.formats import EXPORT_FORMATS
from autotuner.report.model_file import write_model
from autotuner.report.show import list_studies, show_study
from autotuner.report.summary import WALL_ATTR, say_wall, summary
from autotuner.report.verify import verify as _verify
from autotuner.result import TrialResult
from autotuner.runners.binding import bind
from autotuner.runners.refusals import refusal
from autotuner.search.driver import Session, drive, sized_budget
from autotuner.search.runnable import check_runnable
from autotuner.search.selection import choose as _choose
from autotuner.search.space import bench_config
from autotuner.spec.loading import field_error, parse_spec, read_spec, spec_to_dict
from autotuner.spec.schema import FieldError, Spec
from autotuner.study import records as rec
from autotuner.study.storage import default_url, load_study, redact
from autotuner.study.storage import open_study as _open

if TYPE_CHECKING:
    from autotuner.execution.base import Executor
    from autotuner.report.verify import Verification
    from autotuner.search.pick import Pick


@dataclass
class RunOutcome:
    study: str
    storage: str  # redacted
    best_config_path: Path | None
    pick: Pick | None
    trials: int


# ---- the stages ----------------------------------------------------------------------------------


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> Spec:
    """Read SPEC.yaml and bind it to the installed runners. Bad input: SpecError (exit 2)."""

    return bind(read_spec(path, overrides), str(path))


def spec_from_dict(data: dict[str, Any], source: str = "<spec>") -> Spec:
    """A spec from plain data (as YAML would give it), validated and bound to the runners."""

    return bind(parse_spec(data, source), source)


def check_model(spec: Spec, source: str = "<spec>") -> Spec:
    """The spec with its model's and data's content hashes found (models.identity), which every
    trial's artifacts are keyed on. SpecError (exit 2) when the model's source cannot be loaded (a
    factory that is not there or raises, an ONNX file that is missing or not ONNX): before a study
    is created, not once per trial."""

    return checked_model(spec, source)


def check_space(spec: Spec, caps: dict[str, Any], source: str = "<spec>") -> None:
    """SpecError (exit 2) when every config of the space is refused before launch on a machine
    with these capabilities: said before a study exists, with a change that would make one run."""

    try:
        check_runnable(spec, caps)
    except FieldError as e:
        raise field_error(source, e) from None


def probe() -> dict[str, Any]:
    """What this machine offers (cores, GPUs, providers, library versions), probed in a child."""

    return _probe()


def make_executor(name: str, spec: Spec, caps: dict[str, Any], address: str | None = None) -> Executor:
    """An executor by name: "local" (the default) or "ray"."""

    return _make(name, spec, caps, address)


def open_study(
    spec: Spec,
    *,
    storage: str | None = None,
    caps: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> optuna.Study:
    """The spec's study in its storage (the spec's, or SQLite under studies/): created or resumed."""

    url = _url(spec, storage)
    return _open(spec, url, caps if caps is not None else {}, progress or Progress(quiet=True))


def search(
    spec: Spec,
    study: optuna.Study,
    executor: Executor,
    *,
    trials: int | None = None,
    caps: dict[str, Any] | None = None,
    progress: Progress | None = None,
    storage: str | None = None,
) -> int:
    """Run the ask/tell search on the executor until the budget is spent. Returns the budget."""

    progress = progress or Progress(quiet=True)
    url = _url(spec, storage)
    budget = sized_budget(spec, trials or spec.budget.trials)
    caps = caps if caps is not None else getattr(executor, "caps", {})
    drive(Session(spec, study, url, budget, caps, progress), executor, spec.budget.wall_time_s)
    return budget


def choose(
    spec: Spec,
    study: optuna.Study,
    rule: str | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> Pick | None:
    """Pick the winner. With an executor, race the contenders first; without one, read the last race."""

    return _choose(spec, study, rule, executor, progress or Progress(quiet=True))


def precheck(spec: Spec, config: dict[str, Any], caps: dict[str, Any]) -> TrialResult | None:
    """The failure a config meets without being launched (its runner refuses it, or the memory
    model predicts it runs out), or None: what `run` stores for free instead of measuring."""

    return refusal(spec, config, caps)


def write_best_config(
    spec: Spec, study: optuna.Study, pick: Pick, path: str | Path, storage: str = ""
) -> Path:
    """The best-config YAML of a pick: parameters, deploy settings, evidence and provenance."""

    return best_config(spec, study, pick, _url(spec, storage)).write(Path(path))


# ---- the commands --------------------------------------------------------------------------------


def run(
    spec: Spec | str | Path,
    *,
    trials: int | None = None,
    study: str | None = None,
    storage: str | None = None,
    executor: str = "local",
    address: str | None = None,
    progress: Progress | None = None,
    reports_dir: str | Path = "reports",
) -> RunOutcome:
    """Search, race the contenders, pick, and write the best-config YAML and the report."""

    started = time.perf_counter()
    s = _spec(spec, study, storage)
    source = _source(spec)
    if trials is not None and trials < 1:
        raise UsageError("--trials must be at least 1")
    check_executor(executor, address)
    # Everything that would fail every trial, or the end of the run, is refused before a study exists.
    s = check_model(s, source)
    check_writable(Path(reports_dir), "reports")
    progress = progress or Progress()
    url = _url(s, None)
    warm = start_warm_workers(s) if executor == "local" else None  # its imports overlap the probe
    try:
        caps = probe()
        ex = _make(executor, s, caps, address, warm)
    except BaseException:
        if warm is not None:
            warm.close()
        raise
    # Where trials run: the executor's (a Ray cluster's GPU node's GPU facts), not the driver's.
    caps = ex.caps
    if ex.cluster_note:
        progress.say(ex.cluster_note)
    if ex.caps_note:
        progress.say(ex.caps_note)
    try:
        check_space(s, caps, source)
        st = open_study(s, storage=url, caps=caps, progress=progress)
        if isinstance(spec, str | Path):
            rec.set_spec_path(st, str(spec))
        asked = trials or s.budget.trials
        budget = sized_budget(s, asked)
        if budget < asked:
            progress.say(f"the grid holds {budget} configs: the budget is {budget} trials, not {asked}")
        progress.say(
            f"study {s.study_name} in {redact(url)}: budget {budget} trials, executor {executor} "
            f"({ex.slots} at once)"
        )
        search(s, st, ex, trials=budget, caps=caps, progress=progress, storage=url)
        pick = choose(s, st, None, ex, progress)
    finally:
        ex.close()
    path = None
    if pick is not None:
        path = write_best_config(s, st, pick, Path(reports_dir) / f"{s.study_name}.best.yaml", url)
    summary(s, st, pick, progress)
    st.set_user_attr(WALL_ATTR, say_wall(st, time.perf_counter() - started, progress))
    if path:
        progress.say(f"best config: {path}")
    html_path = report([s.study_name], storage=url, output=Path(reports_dir) / f"{s.study_name}.html")
    progress.say(f"report: {html_path}")
    db = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else redact(url)
    progress.say(f"study: {db}")
    return RunOutcome(s.study_name, redact(url), path, pick, len(st.trials))


def export(
    study_name: str,
    *,
    storage: str | None = None,
    output: str | Path | None = None,
    rule: str | None = None,
    fmt: str = "yaml",
    progress: Progress | None = None,
    target_rps: float | None = None,
    image: str | None = None,
) -> Path | str:
    """Write the best-config YAML of a stored study again, by a chosen rule. Measures nothing.

    The formats are report.formats.EXPORT_FORMATS. fmt="vllm" returns the `vllm serve` command
    line of the chosen config instead; fmt="triton" writes a Triton model repository entry
    (DIR/MODEL/config.pbtxt, DIR/MODEL/1/model.onnx) and returns DIR/MODEL; fmt="ort" writes the
    ONNX Runtime session settings as JSON, the ONNX file beside it. Both need an onnxruntime config.
    """

    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"--format {fmt!r}: allowed: {', '.join(EXPORT_FORMATS)}")
    form = EXPORT_FORMATS[fmt]
    given = {k: v for k, v in {"target_rps": target_rps, "image": image}.items() if v is not None}
    for k in given:
        if k not in form.options:
            raise UsageError(f"--{k.replace('_', '-')} applies to --format k8s, not {fmt}")
    target = Path(output or (form.default.format(study=study_name) if form.default else "."))
    if form.default is not None:
        check_writable(target if form.directory else target.parent, "-o" if output else form.what)
    progress = progress or Progress()
    url = storage or default_url(study_name)
    st = load_study(study_name, url)
    spec = spec_from_dict(rec.stored_spec(st), f"study {study_name}")
    pick = choose(spec, st, rule, None, Progress(quiet=True) if form.default is None else progress)
    if pick is None:
        raise UsageError(f"study {study_name!r} has no feasible completed trial to export")
    return form.write(spec, st, pick, target, url, **given)


def report(
    studies: list[str], *, storage: str | None = None, output: str | Path | None = None, fmt: str = "html"
) -> Path:
    """Write the HTML report (several studies: fronts overlaid), or the trial table as CSV/JSON."""
    from autotuner.report.html import write_report  # noqa: PLC0415 (heavy: plotly)

    return write_report(studies, storage, output, fmt)


def bench(spec: Spec | str | Path, config: dict[str, Any]) -> tuple[dict[str, Any], TrialResult]:
    """Measure one config (no search, nothing stored). Unset parameters take their first value."""

    s = _checked(spec)
    full = bench_config(s, config)
    caps = probe()
    known = precheck(s, full, caps)
    if known is not None:
        return full, known
    with make_executor("local", s, caps) as ex:
        return full, ex.submit(TrialRequest(0, full)).result()


def quantize(
    spec: Spec | str | Path, config: dict[str, Any], output: str | Path
) -> tuple[Path, dict[str, Any]]:
    """Write the ONNX model an onnxruntime config runs (static int8: calibrated on the spec's data,
    as its trials were) to `output`; the path and what was done. The same settings and data give
    the same file the trials measured (its sha256 is in the record)."""

    s = _checked(spec)
    return Path(output), write_model(s, bench_config(s, config), output)


def verify(
    best: str | Path,
    *,
    against: str | Path | None = None,
    baseline: bool = False,
    spec: str | None = None,
    storage: str | None = None,
    rounds: int | None = None,
    require_gain: float | None = None,
    progress: Progress | None = None,
) -> Verification:
    """A/B check before rollout: BEST.yaml against OTHER.yaml (or the spec's baseline), measured
    here in interleaved rounds, nothing stored. The spec: `spec`, else the one the study named in
    BEST.yaml's provenance ran (in `storage`, else the recorded storage). Bad input: UsageError."""

    return _verify(
        best,
        against=against,
        baseline=baseline,
        spec=spec,
        storage=storage,
        rounds=rounds,
        require_gain=require_gain,
        progress=progress or Progress(quiet=True),
    )


def studies(storage: str | None = None) -> int:
    """Print the stored studies (in `storage`, else every studies/*.db). Returns the exit status."""

    return list_studies(storage)


def show(study: str, storage: str | None = None) -> int:
    """Print one study at a glance. Returns the exit status."""

    return show_study(study, storage)


def _url(spec: Spec, storage: str | None) -> str:
    """Where the spec's study lives: as given, else the spec's storage, else SQLite under studies/."""
    return storage or spec.storage or default_url(spec.study_name)


def _source(spec: Spec | str | Path) -> str:
    """How errors name where a spec came from."""
    return str(spec) if isinstance(spec, str | Path) else "<spec>"


def _checked(spec: Spec | str | Path) -> Spec:
    """The spec loaded (where a path) with its model checked and its digests found."""
    return check_model(_spec(spec, None, None), _source(spec))


def _spec(spec: Spec | str | Path, study: str | None, storage: str | None) -> Spec:
    s = spec if isinstance(spec, Spec) else load_spec(spec)
    updates = {k: v for k, v in (("study", study), ("storage", storage)) if v is not None}
    if updates:
        s = spec_from_dict({**spec_to_dict(s), **updates}, "command line")
    return s


__all__ = [
    "RunOutcome",
    "bench",
    "check_model",
    "choose",
    "export",
    "load_spec",
    "make_executor",
    "open_study",
    "precheck",
    "probe",
    "quantize",
    "report",
    "run",
    "search",
    "show",
    "spec_from_dict",
    "studies",
    "verify",
    "write_best_config",
]
