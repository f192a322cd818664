"""The best-config YAML: the chosen parameters, deploy settings, evidence and provenance."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import optuna
import yaml

from autotuner import __version__
from autotuner.files import atomic_write_text
from autotuner.metrics import is_number
from autotuner.pick import Pick
from autotuner.registry import runner_for
from autotuner.spec import Spec
from autotuner.stats import mean_ci
from autotuner.storage import redact

KEY_METRICS = (
    "throughput_items_s",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "peak_memory_mb",
    "accuracy_cosine",
    "accuracy_max_abs_error",
    "setup_s",
)


def best_config(
    spec: Spec, study: optuna.Study, pick: Pick, storage_url: str, rounds: dict[str, list[dict[str, float]]]
) -> dict[str, Any]:
    trial = study.trials[pick.winner]
    config = dict(trial.user_attrs.get("config", trial.params))
    attrs = trial.user_attrs
    wanted = list(
        dict.fromkeys(
            [*(o.metric for o in spec.objectives), *(c.metric for c in spec.constraints), *KEY_METRICS]
        )
    )
    metrics: dict[str, Any] = {}
    mine = rounds.get(str(trial.number), [])
    for m in wanted:
        if not is_number(attrs.get(m)):
            continue
        entry: dict[str, Any] = {"trial": _r(attrs[m])}
        series = [r[m] for r in mine if is_number(r.get(m))]
        if len(series) >= 2:
            mean, lo, hi = mean_ci(series, pick.confidence)
            entry["remeasured"] = {
                "mean": _r(mean),
                "ci_low": _r(lo),
                "ci_high": _r(hi),
                "rounds": len(series),
                "confidence": pick.confidence,
            }
        metrics[m] = entry
    constraints = []
    for c in spec.constraints:
        v = attrs.get(c.metric)
        if is_number(v):
            constraints.append(
                {
                    "constraint": c.text,
                    "value": _r(v),
                    "margin": _r(-c.violation(v)),
                    "satisfied": c.violation(v) <= 0,
                }
            )
    runner = runner_for(str(config.get("backend", "torch-eager")))
    spec_path = study.user_attrs.get("spec_path", f"{spec.name}.yaml")
    argv = ["autotune", "bench", spec_path] + [a for k, v in config.items() for a in ("--set", f"{k}={v}")]
    return {
        "autotune_version": __version__,
        "model": spec.model.model_dump(mode="json", exclude_none=True),
        "params": config,
        "deploy": {"batch_size": config.get("batch_size", 1), **runner.deploy_settings(config)},
        "metrics": metrics,
        "constraints": constraints,
        "choice": {
            "rule": pick.rule,
            "reason": pick.reason,
            "tied_with_trials": pick.tied_with,
            "tie_break": pick.tie_break,
            "remeasured": pick.remeasured,
            "candidates": [
                {
                    "trial": c.trial,
                    "params": c.config,
                    "measured": _r(c.value),
                    **({"mean": _r(c.mean), "ci": [_r(c.ci[0]), _r(c.ci[1])]} if c.ci else {}),
                    **({"error": c.error} if c.error else {}),
                }
                for c in pick.candidates
            ],
        },
        "environment": study.user_attrs.get("environment", {}),
        "provenance": {
            "study": study.study_name,
            "storage": redact(storage_url),
            "trial": trial.number,
            "measured_at": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "autotune_version": __version__,
            "spec_fingerprint": study.user_attrs.get("spec_fingerprint"),
        },
        "remeasure_command": shlex.join(argv),
    }


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    """Write atomically: a reader never sees half a file."""
    header = f"# autotune best config for study {data['provenance']['study']}\n"
    return atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def _r(v: Any) -> Any:
    if isinstance(v, float):
        return float(f"{v:.6g}")
    return v
