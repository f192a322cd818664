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

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from autotuner.errors import UsageError
from autotuner.files import check_writable
from autotuner.progress import Progress
from autotuner.result import TrialResult
from autotuner.spec.schema import Spec
from autotuner.study import records as rec
from autotuner.study.storage import default_url, redact

if TYPE_CHECKING:
    from autotuner.execution.base import Executor
    from autotuner.search.pick import Pick
    from autotuner.search.verify import Verification


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
    from autotuner.runners.binding import bind
    from autotuner.spec.loading import read_spec

    return bind(read_spec(path, overrides), str(path))


def spec_from_dict(data: dict[str, Any], source: str = "<spec>") -> Spec:
    """A spec from plain data (as YAML would give it), validated and bound to the runners."""
    from autotuner.runners.binding import bind
    from autotuner.spec.loading import parse_spec

    return bind(parse_spec(data, source), source)


def check_model(spec: Spec, source: str = "<spec>") -> Spec:
    """The spec with its model's and data's content hashes found (models.identity), which every
    trial's artifacts are keyed on. SpecError (exit 2) when the model's source cannot be loaded (a
    factory that is not there or raises, an ONNX file that is missing or not ONNX): before a study
    is created, not once per trial."""
    from autotuner.models.dataset import forget_factory_reads
    from autotuner.models.identity import with_digests
    from autotuner.models.sources import check_source
    from autotuner.spec.loading import field_error
    from autotuner.spec.schema import FieldError

    try:
        forget_factory_reads()  # a data factory is called once a command: by the data check below
        check_source(spec)
        return with_digests(spec)
    except FieldError as e:
        raise field_error(source, e) from None


def check_space(spec: Spec, caps: dict[str, Any], source: str = "<spec>") -> None:
    """SpecError (exit 2) when every config of the space is refused before launch on a machine
    with these capabilities: said before a study exists, with a change that would make one run."""
    from autotuner.search.runnable import check_runnable
    from autotuner.spec.loading import field_error
    from autotuner.spec.schema import FieldError

    try:
        check_runnable(spec, caps)
    except FieldError as e:
        raise field_error(source, e) from None


def probe() -> dict[str, Any]:
    """What this machine offers (cores, GPUs, providers, library versions), probed in a child."""
    from autotuner.execution.capabilities import probe as _probe

    return _probe()


def make_executor(name: str, spec: Spec, caps: dict[str, Any], address: str | None = None) -> Executor:
    """An executor by name: "local" (the default) or "ray"."""
    from autotuner.execution import make_executor as _make

    return _make(name, spec, caps, address)


def open_study(
    spec: Spec,
    *,
    storage: str | None = None,
    caps: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> optuna.Study:
    """The spec's study in its storage (the spec's, or SQLite under studies/): created or resumed."""
    from autotuner.study.storage import open_study as _open

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
    from autotuner.search.driver import Session, drive, sized_budget

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
    from autotuner.search.choose import choose as _choose

    return _choose(spec, study, rule, executor, progress or Progress(quiet=True))


def precheck(spec: Spec, config: dict[str, Any], caps: dict[str, Any]) -> TrialResult | None:
    """The failure a config meets without being launched (its runner refuses it, or the memory
    model predicts it runs out), or None: what `run` stores for free instead of measuring."""
    from autotuner.search.driver import precheck as _precheck

    return _precheck(spec, config, caps, [])


def write_best_config(
    spec: Spec, study: optuna.Study, pick: Pick, path: str | Path, storage: str = ""
) -> Path:
    """The best-config YAML of a pick: parameters, deploy settings, evidence and provenance."""
    from autotuner.report.export import best_config, write_yaml

    url = _url(spec, storage)
    return write_yaml(Path(path), best_config(spec, study, pick, url))


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
    from autotuner.execution import check_executor
    from autotuner.report.summary import summary
    from autotuner.search.driver import sized_budget

    s = _spec(spec, study, storage)
    if trials is not None and trials < 1:
        raise UsageError("--trials must be at least 1")
    check_executor(executor, address)
    # Everything that would fail every trial, or the end of the run, is refused before a study exists.
    s = check_model(s, str(spec) if isinstance(spec, str | Path) else "<spec>")
    check_writable(Path(reports_dir), "reports")
    progress = progress or Progress()
    url = _url(s, None)
    caps = probe()
    ex = make_executor(executor, s, caps, address)
    # Where trials run: the executor's (a Ray cluster's GPU node's GPU facts), not the driver's.
    caps = ex.caps
    if ex.cluster_note:
        progress.say(ex.cluster_note)
    if ex.caps_note:
        progress.say(ex.caps_note)
    try:
        check_space(s, caps, str(spec) if isinstance(spec, str | Path) else "<spec>")
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

    fmt="vllm" returns the `vllm serve` command line of the chosen config instead; fmt="triton"
    writes a Triton model repository entry (DIR/MODEL/config.pbtxt, DIR/MODEL/1/model.onnx) and
    returns DIR/MODEL; fmt="ort" writes the ONNX Runtime session settings as JSON, the ONNX file
    beside it. Both need an onnxruntime config.
    """
    from autotuner.report.export import vllm_serve, write_ort
    from autotuner.report.triton import write_triton
    from autotuner.study.storage import load_study

    defaults = {
        "yaml": f"reports/{study_name}.best.yaml",
        "triton": f"reports/{study_name}.triton",
        "ort": f"reports/{study_name}.ort.json",
        "k8s": f"reports/{study_name}.k8s.yaml",
    }
    if fmt not in (*defaults, "vllm"):
        raise UsageError(f"--format {fmt!r}: allowed: yaml, vllm, triton, ort, k8s")
    target = Path(output or defaults.get(fmt, "."))
    if fmt in defaults:
        what = "-o" if output else ("the best config" if fmt == "yaml" else f"the {fmt} export")
        check_writable(target if fmt == "triton" else target.parent, what)
    progress = progress or Progress()
    url = storage or default_url(study_name)
    st = load_study(study_name, url)
    spec = spec_from_dict(rec.stored_spec(st), f"study {study_name}")
    pick = choose(spec, st, rule, None, Progress(quiet=True) if fmt == "vllm" else progress)
    if pick is None:
        raise UsageError(f"study {study_name!r} has no feasible completed trial to export")
    if fmt == "vllm":
        return vllm_serve(spec, pick.config)
    if fmt == "triton":
        return write_triton(spec, st, pick, target)
    if fmt == "ort":
        return write_ort(spec, st, pick, target)
    if fmt == "k8s":  # report/k8s.py: a Deployment and a Service (and the Triton repository beside)
        from autotuner.report.k8s import write_k8s

        return write_k8s(spec, st, pick, target, url, target_rps=target_rps, image=image)
    return write_best_config(spec, st, pick, target, url)


def report(
    studies: list[str], *, storage: str | None = None, output: str | Path | None = None, fmt: str = "html"
) -> Path:
    """Write the HTML report (several studies: fronts overlaid), or the trial table as CSV/JSON."""
    from autotuner.report.html import write_report

    return write_report(studies, storage, output, fmt)


def bench(spec: Spec | str | Path, config: dict[str, Any]) -> tuple[dict[str, Any], TrialResult]:
    """Measure one config (no search, nothing stored). Unset parameters take their first value."""
    from autotuner.search.driver import precheck
    from autotuner.search.space import bench_config

    s = _spec(spec, None, None)
    s = check_model(s, str(spec) if isinstance(spec, str | Path) else "<spec>")
    full = bench_config(s, config)
    caps = probe()
    known = precheck(s, full, caps, [])
    if known is not None:
        return full, known
    from autotuner.execution.base import TrialRequest

    ex = make_executor("local", s, caps)
    try:
        return full, ex.submit(TrialRequest(0, full)).result()
    finally:
        ex.close()


def quantize(
    spec: Spec | str | Path, config: dict[str, Any], output: str | Path
) -> tuple[Path, dict[str, Any]]:
    """Write the ONNX model an onnxruntime config runs (static int8: calibrated on the spec's data,
    as its trials were) to `output`; the path and what was done. The same settings and data give
    the same file the trials measured (its sha256 is in the record)."""
    import shutil

    from autotuner.files import atomic_write, file_sha256
    from autotuner.models.artifacts import onnx_path, quantization_record
    from autotuner.models.quantization import settings_of
    from autotuner.runners.base import backend_of
    from autotuner.runners.registry import runner_for
    from autotuner.search.space import bench_config

    s = _spec(spec, None, None)
    s = check_model(s, str(spec) if isinstance(spec, str | Path) else "<spec>")
    full = bench_config(s, config)
    backend = backend_of(full)
    if not backend.startswith("onnxruntime-"):
        raise UsageError(
            f"quantize writes ONNX models; {backend} quantizes in the serving process "
            "(the best-config YAML's deploy section gives the code)"
        )
    cls = runner_for(backend)
    reason = cls.check(s, full, probe())
    if reason:
        raise UsageError(f"quantize: this config does not run here: {reason}")
    precision = str(cls.value(full, "precision"))
    quant = settings_of(cls.value, full) if precision == "int8" else None
    source = onnx_path(s, precision, quant)
    out = Path(output)
    atomic_write(out, lambda tmp: shutil.copyfile(source, tmp), ".onnx")
    record: dict[str, Any] = {"sha256": file_sha256(out), "precision": precision, "params": full}
    record.update(quantization_record(source))
    if s.data is not None:
        from autotuner.models.dataset import data_sets

        record["data"] = data_sets(s).summary(s)
    return out, record


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
    import math

    from autotuner.search import verify as v
    from autotuner.search.choose import baseline_config

    if (against is None) == (not baseline):
        raise UsageError("give one of --against OTHER.yaml or --baseline")
    if rounds is not None and rounds < v.MIN_ROUNDS:
        raise UsageError(f"--rounds must be at least {v.MIN_ROUNDS}")
    if require_gain is not None and not (math.isfinite(require_gain) and require_gain >= 0):
        raise UsageError(f"--require-gain {require_gain}: give a percentage of 0 or more")
    progress = progress or Progress(quiet=True)
    best_data = v.read_best_config(best)
    other_data = v.read_best_config(against) if against is not None else None
    s, source = v.resolve_spec(best_data, str(best), spec, storage)
    fp = best_data["provenance"].get("spec_fingerprint")
    if spec is not None and fp and fp != s.fingerprint():
        study = best_data["provenance"].get("study")
        progress.say(f"note: {spec} is not the spec study {study} ran; measuring with {spec}")
    s = check_model(s, source)
    cand = v.Arm("candidate", str(best), v.arm_config(s, best_data, str(best)))
    if other_data is not None:
        other = v.Arm("other", str(against), v.arm_config(s, other_data, str(against)))
    else:
        base = baseline_config(s)
        if base is None:
            raise UsageError(f"--baseline: the spec ({source}) has no baseline")
        other = v.Arm("other", "the spec's baseline", base)
    n = rounds or max(s.pick.rounds, v.MIN_ROUNDS)
    caps = probe()
    for arm in (cand, other):
        known = precheck(s, arm.config, caps)
        if known is not None:
            arm.error = f"before launch: {known.failure_class}: {known.failure_message}"
            return v.judge(s, cand, other, 0, 0.0, require_gain)
    progress.say(
        f"verify {best} against {other.source} (spec: {source}): a full trial each, then {n} "
        "interleaved rounds, each block in a fresh worker"
    )
    with make_executor("local", s, caps) as ex:
        block_s = v.measure(s, ex, (cand, other), n, progress.say)
    return v.judge(s, cand, other, min(len(cand.rounds), len(other.rounds)), block_s, require_gain)


def _url(spec: Spec, storage: str | None) -> str:
    """Where the spec's study lives: as given, else the spec's storage, else SQLite under studies/."""
    return storage or spec.storage or default_url(spec.study_name)


def _spec(spec: Spec | str | Path, study: str | None, storage: str | None) -> Spec:
    s = spec if isinstance(spec, Spec) else load_spec(spec)
    updates = {k: v for k, v in (("study", study), ("storage", storage)) if v is not None}
    if updates:
        from autotuner.spec.loading import spec_to_dict

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
    "report",
    "run",
    "search",
    "spec_from_dict",
    "verify",
    "write_best_config",
]
