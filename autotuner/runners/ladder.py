"""Load levels: knobs that change what the client sends, never the server.

A runner that serves over the network (vllm) declares its load-side knobs (`load_knobs`: the
Poisson arrival rate, the number of requests in flight). A trial of one engine config then
measures every load level the space lists, in a fixed order, on the one server it started; the
level it was asked for is its own result, and each other level comes back in
`TrialResult.info[LADDER]` for the tell side to store as a trial of its own (`search.ladder`).
"""

from __future__ import annotations

import itertools
from typing import Any

from autotuner.spec.schema import Spec

LADDER = "ladder"  # TrialResult.info key: [{"load": {knob: value}, "metrics": {...}}, ...]


def _order(v: Any) -> tuple[bool, float]:
    return (v is not None, float(v) if isinstance(v, int | float) else 0.0)


def levels(spec: Spec, config: dict[str, Any], load_knobs: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every combination of the space's listed values of the config's load knobs, ascending,
    the config's own level among them. A knob given
    as a range, or fixed, has one level: the config's. No load knob in the config: [{}]."""
    names = [k for k in load_knobs if k in config]
    per: list[list[Any]] = []
    for k in names:
        p = spec.space.get(k)
        vals = list(p.choices or []) if p is not None and p.type == "categorical" else []
        if config[k] not in vals:
            vals.append(config[k])
        per.append(sorted(set(vals), key=_order))
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*per)]


def level_of(config: dict[str, Any], load_knobs: tuple[str, ...]) -> dict[str, Any]:
    return {k: config[k] for k in load_knobs if k in config}


__all__ = ["LADDER", "level_of", "levels"]
