"""The best-config YAML (the chosen parameters, deploy settings, evidence and provenance), the
`vllm serve` line, and the ONNX Runtime JSON; the Triton entry is in report/triton.py."""

from __future__ import annotations

import json
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from autotuner._version import __version__
from autotuner.errors import UsageError
from autotuner.files import atomic_write, atomic_write_text, file_sha256
from autotuner.models.artifacts import onnx_path
from autotuner.models.builtins import model_inputs
from autotuner.models.dataset import data_sets
from autotuner.models.quantization import ort_quantization
from autotuner.report.best_config import BestConfig
from autotuner.runners.base import backend_of
from autotuner.runners.registry import runner_for
from autotuner.search.estimates import Estimate, config_key, pool, relative_spread
from autotuner.search.pick import Candidate, Pick
from autotuner.spec.schema import Spec
from autotuner.study import records as rec
from autotuner.study.storage import redact

KEY_METRICS = (
    "throughput_items_s",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "peak_memory_mb",
    "accuracy_cosine",
    "accuracy_max_abs_error",
    "accuracy_task",  # where the spec gives accuracy.metric
    "setup_s",
    # Where measured (a GPU with NVML, RAPL) or priced (the spec's cost): left out otherwise.
    "power_w",
    "energy_j_per_item",
    "usd_per_million_items",
)


def best_config(spec: Spec, study: optuna.Study, pick: Pick, storage_url: str) -> BestConfig:
    """The best config of a pick: its parameters, deploy settings, evidence and provenance."""
    trial = study.trials[pick.winner]
    config = dict(pick.config or rec.trial_config(trial))
    estimates = pool(study.get_trials(deepcopy=False), rec.race_blocks(study))
    est = estimates.get(config_key(config)) or Estimate(config_key(config), config)
    config = rec.config_now(study, config)  # as today's runners name it (a study's old int8)
    runner = runner_for(backend_of(config))
    spec_path = rec.study_attr(study, rec.SPEC_PATH, f"{spec.name}.yaml")
    sets = [a for k, v in config.items() for a in ("--set", f"{k}={v}")]
    evidence = _data_evidence(spec, trial, config, runner, spec_path, sets)
    return BestConfig(
        autotune_version=__version__,
        model=spec.model.model_dump(mode="json", exclude_none=True),
        params=config,
        deploy={"batch_size": config.get("batch_size", 1), **runner.deploy_settings(config)},
        data=evidence.get("data"),
        quantization=evidence.get("quantization"),
        metrics=_metrics(spec, trial, est, estimates, pick.confidence),
        constraints=_constraints(spec, est),
        choice=_choice(pick, est),
        environment=rec.environment(study),
        provenance=_provenance(study, trial, storage_url),
        remeasure_command=shlex.join(["autotune", "bench", spec_path, *sets]),
    )


def _metrics(
    spec: Spec, trial: Any, est: Estimate, estimates: dict[str, Estimate], confidence: float
) -> dict[str, Any]:
    """Each objective, constraint and key metric: its pooled mean, with an interval where measured
    in two blocks or more."""
    wanted = list(
        dict.fromkeys(
            [*(o.metric for o in spec.objectives), *(c.metric for c in spec.constraints), *KEY_METRICS]
        )
    )
    metrics: dict[str, Any] = {}
    for m in wanted:
        iv = est.interval(m, confidence, relative_spread(estimates, m))
        if iv is not None and len(est.values(m)) >= 2:
            entry: dict[str, Any] = {
                "mean": _r(iv[0]),
                "ci_low": _r(iv[1]),
                "ci_high": _r(iv[2]),
                "blocks": len(est.values(m)),
                "confidence": confidence,
            }
        elif est.mean(m) is not None:
            # Measured once (accuracy: by the trial; it does not vary between processes).
            entry = {"mean": _r(est.mean(m)), "blocks": max(1, len(est.values(m)))}
        elif (v := rec.metric(trial, m)) is not None:
            entry = {"mean": _r(v), "blocks": 1}
        else:
            continue
        # A declared metric says its unit and meaning (a built-in one's name says its unit).
        declared = spec.declared_metrics.get(m, {})
        entry.update({k: declared[k] for k in ("unit", "description") if k in declared})
        metrics[m] = entry
    return metrics


def _constraints(spec: Spec, est: Estimate) -> list[dict[str, Any]]:
    out = []
    for c in spec.constraints:
        v = est.mean(c.metric)
        if v is not None:
            out.append(
                {
                    "constraint": c.text,
                    "value": _r(v),
                    "margin": _r(-c.violation(v)),
                    "satisfied": c.violation(v) <= 0,
                }
            )
    return out


def _choice(pick: Pick, est: Estimate) -> dict[str, Any]:
    """Why this config: the rule, the race, the estimate it was chosen on, every candidate."""
    return {
        "rule": pick.rule,
        "reason": pick.reason,
        "tied_with_trials": pick.tied_with,
        "tie_break": pick.tie_break,
        "remeasured": pick.remeasured,
        "race_rounds": pick.rounds,
        "baseline": pick.baseline,
        "estimate": {
            "blocks": est.n,
            "blocks_under_load_left_out": est.under_load,
            "measure_s": round(est.measure_s, 3),
            "trials": est.trials,
        },
        "candidates": [_candidate(c) for c in pick.candidates],
    }


def _candidate(c: Candidate) -> dict[str, Any]:
    return {
        "trial": c.trial,
        "params": c.config,
        "before_race": _r(c.value) if c.value == c.value else None,
        "blocks_before_race": c.blocks,
        "race_rounds": len(c.rounds),
        **({"mean": _r(c.mean), "ci": [_r(c.ci[0]), _r(c.ci[1])]} if c.ci and c.mean is not None else {}),
        **({"left_race": c.dropped} if c.dropped else {}),
        **({"error": c.error} if c.error else {}),
        **({"baseline": True} if c.baseline else {}),
    }


def _provenance(study: optuna.Study, trial: Any, storage_url: str) -> dict[str, Any]:
    return {
        "study": study.study_name,
        "storage": redact(storage_url),
        "trial": trial.number,
        "measured_at": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "autotune_version": __version__,
        "spec_fingerprint": rec.study_attr(study, rec.SPEC_FINGERPRINT),
        # What the model computed when this config was measured (its weights and graph, not its
        # name): a retrained model has another.
        **({"model_sha256": m} if (m := _model_sha256(study, trial)) else {}),
    }


def _model_sha256(study: Any, trial: Any) -> str | None:
    """The measured model's digest: as the trial recorded it, else as the study did."""
    info = rec.marker(trial, rec.INFO) or {}
    return info.get("model_sha256") or rec.study_attr(study, rec.MODEL_SHA256)


def _data_evidence(
    spec: Spec, trial: Any, config: dict[str, Any], runner: Any, spec_path: str, sets: list[str]
) -> dict[str, Any]:
    """The data the accuracy was measured on (and the int8 calibrated on), and for static int8
    how it was quantized and the command that re-creates the model."""
    out: dict[str, Any] = {}
    info = rec.marker(trial, rec.INFO) or {}
    if spec.data is not None:
        # As the trial recorded it; else read now (a study from before trials recorded it).
        out["data"] = dict(info.get("data") or {})
        if not out["data"]:
            try:
                out["data"] = data_sets(spec).summary(spec)
            except Exception as e:  # noqa: BLE001 - not readable here: say so, keep the rest
                out["data"] = {"source": spec.data.source, "note": f"not readable here ({e})"}
        out["data"]["accuracy_on"] = "evaluation set"
        if spec.accuracy.metric:
            out["data"]["task_metric"] = spec.accuracy.metric
    if runner.knob(config, "precision") != "int8":
        return out
    record = dict(info.get("quantization") or {})
    quant: dict[str, Any] = {"precision": "int8 (static, calibrated)"}
    quant.update(record.pop("settings", {}))
    quant.update(record)
    if backend_of(config).startswith("onnxruntime-"):
        argv = ["autotune", "quantize", spec_path, *sets, "-o", "model.int8.onnx"]
        quant["recreate_command"] = shlex.join(argv)
    else:
        quant["recreate"] = (
            "in the serving process: autotuner.models.quantization.quantize_torch(model, batches of the "
            "data's calibration set, settings above)"
        )
    out["quantization"] = quant
    return out


def _r(v: Any) -> Any:
    if isinstance(v, float):
        return float(f"{v:.6g}")
    return v


def vllm_serve(spec: Spec, config: dict[str, Any]) -> str:
    """`vllm serve MODEL --block-size 16 ...` from a vLLM study's chosen parameters."""

    if backend_of(config) == "vllm":  # the vllm runner's own server line, with its environment
        serve_command = getattr(runner_for("vllm"), "serve_command", None)
        if serve_command is not None:
            env, argv = serve_command(spec, config)
            return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())), shlex.join(argv)])
    if spec.model.external is None:
        raise UsageError("--format vllm needs a study whose model is external (the vLLM model name)")
    argv = ["vllm", "serve", spec.model.external]
    for k, v in config.items():
        if k in ("backend", "threads"):
            continue
        flag = "--" + k.replace("_", "-")
        if v is True:
            argv.append(flag)
        elif v is not False:
            argv += [flag, str(v)]
    return shlex.join(argv)


# ---- the ONNX Runtime formats (--format ort here, --format triton in report/triton.py) ----------

TENSORRT_PROVIDER = "TensorrtExecutionProvider"


@dataclass(frozen=True)
class OnnxDeployment:
    """What an onnxruntime config deploys: the ONNX file its trials ran and its deploy settings."""

    model: Path
    precision: str  # of the ONNX file (TensorRT runs the fp32 graph, built fp16 by TensorRT, or int8's QDQ)
    settings: dict[str, Any]  # the runner's deploy_settings(config)["onnxruntime"]

    @property
    def providers(self) -> list[dict[str, Any]]:
        return list(self.settings["providers"])


def onnx_deployment(spec: Spec, config: dict[str, Any], fmt: str) -> OnnxDeployment:
    """The ONNX file and settings of an onnxruntime config; UsageError for any other backend.

    A torch (or command, llm) winner is refused rather than exported to ONNX: its measurements
    belong to the engine it ran, and an ONNX Runtime session would be another one.
    """

    backend = backend_of(config)
    runner = runner_for(backend)
    settings = runner.deploy_settings(config).get("onnxruntime")
    if not settings:
        raise UsageError(
            f"--format {fmt} needs an onnxruntime config; the chosen one runs {backend} "
            "(restrict the spec's space.backend to onnxruntime-* to tune one, or use --format yaml)"
        )
    first = settings["providers"][0]["name"]
    precision = str(runner.knob(config, "precision"))
    # int8: the calibrated QDQ model (TensorRT too: explicit quantization); int8-dynamic: 7-bit
    # weights or not, as the trials ran it.
    quant = ort_quantization(runner.knob, config)
    if precision != "int8" and first == TENSORRT_PROVIDER:
        precision = "fp32"
    model = onnx_path(spec, precision, quant)
    if not model.is_file():  # a spec's own ONNX file, moved or on another machine
        raise UsageError(f"--format {fmt}: the model file {model} is not there (run from the spec's machine)")
    return OnnxDeployment(model, precision, settings)


def input_shapes(spec: Spec, batch_size: int) -> dict[str, list[int]]:
    return {s.name: [batch_size if d == "batch" else int(d) for d in s.shape] for s in model_inputs(spec)}


def profile_shapes(shapes: dict[str, list[int]]) -> str:
    """ORT's TensorRT profile string: 'name:1x16,other:1x16'."""
    return ",".join(f"{n}:{'x'.join(str(d) for d in dims)}" for n, dims in shapes.items())


def chosen_config(study: optuna.Study, pick: Pick) -> dict[str, Any]:
    return rec.config_now(study, dict(pick.config or rec.trial_config(study.trials[pick.winner])))


def ort_config(
    spec: Spec, study: optuna.Study, pick: Pick, dep: OnnxDeployment, model_file: str
) -> dict[str, Any]:
    """The `--format ort` JSON: providers in order with their options, session options (enum
    members by name), io_binding and the recipe of the model file, which lies beside it."""

    config = chosen_config(study, pick)
    batch = int(config.get("batch_size", 1))
    providers = []
    for p in dep.providers:
        entry = {"name": p["name"], **({"options": dict(p["options"])} if "options" in p else {})}
        if p["name"] == TENSORRT_PROVIDER:  # the measured profile: min = opt = max at the batch
            profile = profile_shapes(input_shapes(spec, batch))
            for key in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
                entry["options"][key] = profile
        providers.append(entry)
    recipe = {k: dep.settings[k] for k in ("quantization", "conversion") if k in dep.settings}
    return {
        "autotune_version": __version__,
        "study": study.study_name,
        "trial": pick.winner,
        "model": {
            "file": model_file,
            "sha256": file_sha256(dep.model),
            "precision": dep.precision,
            **recipe,
        },
        "inputs": [s.model_dump(mode="json", include={"name", "shape", "dtype"}) for s in model_inputs(spec)],
        "batch_size": batch,
        "providers": providers,
        "fallbacks": fallback_note(providers),
        "session_options": dict(dep.settings["session_options"]),
        "io_binding": bool(dep.settings.get("io_binding")),
        **({"transfer_policy": dep.settings["transfer_policy"]} if "transfer_policy" in dep.settings else {}),
    }


def fallback_note(providers: list[dict[str, Any]]) -> str:
    """The README's rule in one line: a measurement never falls back; a deployment may, and says
    so. `providers` as deploy_settings lists them: the measured ones carry options, fallbacks not."""
    names = [p["name"] for p in providers]
    measured = " with ".join(p["name"] for p in providers if "options" in p) or names[0]
    if len(names) == 1:
        return f"measured on {measured}; there is nothing to fall back to"
    return (
        f"measured on {measured}, never falling back (a trial with compute elsewhere was refused); "
        "deployed, ONNX Runtime may fall back in this order: " + " -> ".join(names)
    )


def write_ort(spec: Spec, study: optuna.Study, pick: Pick, path: Path) -> Path:
    """PATH (JSON) and the ONNX file it names beside it (PATH less .json, plus .onnx)."""

    dep = onnx_deployment(spec, chosen_config(study, pick), "ort")
    model = path.with_name(path.name.removesuffix(".json") + ".onnx")
    atomic_write(model, lambda tmp: shutil.copyfile(dep.model, tmp), ".onnx")
    data = ort_config(spec, study, pick, dep, model.name)
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")
