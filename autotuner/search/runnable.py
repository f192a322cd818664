"""Whether any point of the space can run here. A space whose every config its runners refuse
before launch (decidable from their declarations, no model run) is a spec error, said before a
study exists, with a change that would make a config run."""

from __future__ import annotations

import random
from typing import Any

from autotuner.progress import fmt_config
from autotuner.runners.base import backend_of
from autotuner.runners.registry import all_backends, runner_for
from autotuner.search.precheck import precheck
from autotuner.search.space import all_configs, random_config
from autotuner.spec.fields import FieldError
from autotuner.spec.schema import Spec

SCAN_CONFIGS = 20_000  # a finite space up to this size is checked whole, a bigger one by samples
SAMPLES = 2_000


def _refusal(spec: Spec, config: dict[str, Any], caps: dict[str, Any]) -> str | None:
    known = precheck(spec, config, caps, [])
    if known is None or known.failure_class != "unsupported":
        return None  # runs (or is refused only by the machine's memory, which a trial measures)
    return known.failure_message or "unsupported"


def check_runnable(spec: Spec, caps: dict[str, Any]) -> None:
    """FieldError at `space` when every config of the space is refused before launch."""

    configs = all_configs(spec, limit=SCAN_CONFIGS)
    whole = configs is not None
    if configs is None:
        rng = random.Random(0)
        configs = [random_config(spec, rng) for _ in range(SAMPLES)]
    first: tuple[dict[str, Any], str] | None = None
    for config in configs:
        reason = _refusal(spec, config, caps)
        if reason is None:
            return
        first = first or (config, reason)
    assert first is not None
    config, reason = first
    fixes = _fixes(spec, config, caps)
    hint = f"; it would run with {' or '.join(fixes)}" if fixes else ""
    shown = f"all {len(configs)} configs" if whole else f"all {len(configs)} sampled configs"
    raise FieldError(
        "space",
        f"no config of the space can run here: {shown} are refused before launch "
        f"(e.g. {fmt_config(config)}: {reason}){hint}",
    )


def _fixes(spec: Spec, config: dict[str, Any], caps: dict[str, Any], most: int = 3) -> list[str]:
    """Single changes to a refused config that make it run: a knob left out, or another value of
    it that its runner offers."""

    out: list[str] = []
    for name in config:
        if name == "backend":
            continue
        rest = {k: v for k, v in config.items() if k != name}
        if _refusal(spec, rest, caps) is None:
            out.append(f"{name} left out of the space (or given a `when` condition)")
        if len(out) >= most:
            return out
    cls = runner_for(backend_of(config))
    precision = cls.declared("precision")
    candidates: dict[str, list[Any]] = {"precision": list(precision.choices or ()) if precision else []}
    candidates.update({k: list(kn.choices) for k, kn in cls.knobs.items() if kn.choices and k != "precision"})
    candidates["backend"] = sorted(all_backends())
    calibrated = precision.calibrated if precision else ()
    for name, values in candidates.items():
        for v in values:
            if name not in config or v == config[name]:
                continue
            if name == "precision" and v in calibrated and spec.data is None:
                continue  # calibrated on the data, which this spec does not give
            if _refusal(spec, {**config, name: v}, caps) is None:
                out.append(f"{name}={v}")
                break  # one value per knob is enough to show the way
        if len(out) >= most:
            break
    return out
