"""Plotly figures of a study (or several, overlaid), as plain dicts ready for Plotly.newPlot.

Every user-provided string that can reach the page (parameter values, study names, messages)
goes through html.escape here, because Plotly renders a subset of HTML in hover text and labels.
"""

from __future__ import annotations

import html
import math
import statistics
from collections import defaultdict
from typing import Any

import numpy as np
import plotly.graph_objects as go
from optuna._hypervolume import compute_hypervolume
from optuna.trial import FrozenTrial

from autotuner.metrics import is_number
from autotuner.report.data import StudyData
from autotuner.study import records as rec

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
Figure = dict[str, Any]


def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _hover(data: StudyData, t: FrozenTrial, metrics: list[str]) -> str:
    cfg = data.config(t)
    lines = [f"<b>{esc(data.name)} #{t.number}</b>"]
    lines += [f"{esc(k)}={esc(v)}" for k, v in cfg.items()]
    lines += [f"{esc(m)}={rec.metric(t, m):.4g}" for m in metrics if rec.metric(t, m) is not None]
    return "<br>".join(lines)


def _layout(title: str, x: str, y: str, **extra: Any) -> dict[str, Any]:
    return dict(
        title=dict(text=esc(title)),
        xaxis=dict(title=dict(text=esc(x))),
        yaxis=dict(title=dict(text=esc(y))),
        template="plotly_white",
        height=420,
        margin=dict(l=60, r=20, t=50, b=50),
        **extra,
    )


def _fig(traces: list[Any], layout: dict[str, Any]) -> Figure:
    return go.Figure(data=traces, layout=layout).to_plotly_json()


def pareto_pairs(data: StudyData) -> list[tuple[str, str]]:
    """Objective pairs: the first objective against each other one, and against latency p95,
    memory and accuracy when those are constrained but not objectives."""
    objs = data.objectives
    others = list(objs[1:])
    for c in data.constraints:
        m = c.get("metric")
        if m in ("latency_p95_ms", "peak_memory_mb", "accuracy_cosine") and m not in objs and m not in others:
            others.append(m)
    if not others and objs[0] != "latency_p95_ms":
        others.append("latency_p95_ms")
    return [(objs[0], o) for o in others]


def pareto(datas: list[StudyData], x: str, y: str) -> Figure:
    traces: list[Any] = []
    compare = len(datas) > 1
    for i, d in enumerate(datas):
        color = COLORS[i % len(COLORS)]
        tag = f"{d.name}: " if compare else ""
        on_front = {f.number for f in d.front}
        groups = {
            "infeasible": [t for t in d.completed if not d.is_feasible(t)],
            "feasible": [t for t in d.feasible if t.number not in on_front],
        }
        for label, ts in groups.items():
            ts = [t for t in ts if rec.metric(t, x) is not None and rec.metric(t, y) is not None]
            if not ts:
                continue
            traces.append(
                go.Scatter(
                    x=[rec.metric(t, x) for t in ts],
                    y=[rec.metric(t, y) for t in ts],
                    mode="markers",
                    name=esc(tag + label),
                    marker=dict(
                        color="#bbbbbb" if label == "infeasible" else color,
                        symbol="x" if label == "infeasible" else "circle",
                        size=7,
                        opacity=0.55 if label == "infeasible" else 0.7,
                    ),
                    text=[_hover(d, t, [x, y]) for t in ts],
                    hoverinfo="text",
                )
            )
        front = sorted(
            (t for t in d.front if rec.metric(t, x) is not None and rec.metric(t, y) is not None),
            key=lambda t: rec.metric(t, x),
        )
        if front:
            traces.append(
                go.Scatter(
                    x=[rec.metric(t, x) for t in front],
                    y=[rec.metric(t, y) for t in front],
                    # A line only where both axes are the objectives the front is defined on.
                    mode="lines+markers" if {x, y} <= set(d.objectives) else "markers",
                    name=esc(tag + "Pareto front"),
                    line=dict(color=color, shape="hv" if len(d.objectives) == 2 else "linear"),
                    marker=dict(color=color, size=10, line=dict(color="black", width=1)),
                    text=[_hover(d, t, [x, y]) for t in front],
                    hoverinfo="text",
                )
            )
        if d.winner is not None and d.winner < len(d.trials):
            w = d.trials[d.winner]
            if rec.metric(w, x) is not None and rec.metric(w, y) is not None:
                traces.append(
                    go.Scatter(
                        x=[rec.metric(w, x)],
                        y=[rec.metric(w, y)],
                        mode="markers",
                        name=esc(tag + "chosen"),
                        marker=dict(symbol="star", size=20, color="gold", line=dict(color="black", width=1)),
                        text=[_hover(d, w, [x, y])],
                        hoverinfo="text",
                    )
                )
    return _fig(traces, _layout(f"{y} against {x}", datas[0].label(x), datas[0].label(y)))


def _group_key(cfg: dict[str, Any]) -> str:
    return " ".join(str(cfg[k]) for k in ("backend", "precision", "device") if k in cfg) or "all"


def effect(data: StudyData, metric: str, limit: float | None = None) -> Figure | None:
    """metric against batch size, one line per backend / precision (median per batch size)."""
    by: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in data.completed:
        cfg = data.config(t)
        if is_number(cfg.get("batch_size")) and rec.metric(t, metric) is not None:
            by[_group_key(cfg)][cfg["batch_size"]].append(rec.metric(t, metric))
    if not by:
        return None
    traces = []
    for i, (group, points) in enumerate(sorted(by.items())):
        xs = sorted(points)
        traces.append(
            go.Scatter(
                x=xs,
                y=[statistics.median(points[b]) for b in xs],
                mode="lines+markers",
                name=esc(group),
                line=dict(color=COLORS[i % len(COLORS)]),
            )
        )
    layout = _layout(f"{metric} against batch size", "batch_size", metric)
    layout["xaxis"]["type"] = "log"
    if limit is not None:
        layout["shapes"] = [
            dict(
                type="line", xref="paper", x0=0, x1=1, y0=limit, y1=limit, line=dict(color="red", dash="dash")
            )
        ]
        layout["annotations"] = [
            dict(
                xref="paper",
                x=1,
                y=limit,
                text=f"limit {limit:g}",
                showarrow=False,
                yanchor="bottom",
                xanchor="right",
            )
        ]
    return _fig(traces, layout)


def accuracy_vs_speed(data: StudyData) -> Figure | None:
    by: dict[str, list[FrozenTrial]] = defaultdict(list)
    for t in data.completed:
        if rec.metric(t, "accuracy_cosine") is not None and rec.metric(t, "throughput_items_s") is not None:
            by[str(data.config(t).get("precision", "fp32"))].append(t)
    if not by:
        return None
    traces = [
        go.Scatter(
            x=[rec.metric(t, "throughput_items_s") for t in ts],
            y=[rec.metric(t, "accuracy_cosine") for t in ts],
            mode="markers",
            name=esc(p),
            marker=dict(color=COLORS[i % len(COLORS)], size=8),
            text=[_hover(data, t, ["accuracy_cosine", "accuracy_max_abs_error"]) for t in ts],
            hoverinfo="text",
        )
        for i, (p, ts) in enumerate(sorted(by.items()))
    ]
    return _fig(traces, _layout("accuracy against speed", "throughput_items_s", "accuracy_cosine"))


def importance(data: StudyData, importances: dict[str, dict[str, float]]) -> Figure | None:
    if not importances:
        return None
    traces = []
    for i, (obj, imp) in enumerate(importances.items()):
        names = list(imp)
        traces.append(
            go.Bar(
                x=[imp[n] for n in names],
                y=[esc(n) for n in names],
                orientation="h",
                name=esc(obj),
                marker=dict(color=COLORS[i % len(COLORS)]),
            )
        )
    layout = _layout(
        "parameter importance (fANOVA) per objective", "importance", "parameter", barmode="group"
    )
    return _fig(traces, layout)


def parallel(data: StudyData) -> Figure | None:
    ts = [t for t in data.completed if t.values]
    if len(ts) < 2:
        return None
    dims = []
    for p in data.params:
        vals = [data.config(t).get(p) for t in ts]
        if all(is_number(v) for v in vals):
            dims.append(dict(label=esc(p), values=vals))
        else:
            cats = sorted({str(v) for v in vals})
            dims.append(
                dict(
                    label=esc(p),
                    values=[cats.index(str(v)) for v in vals],
                    tickvals=list(range(len(cats))),
                    ticktext=[esc(c) for c in cats],
                )
            )
    for i, m in enumerate(data.objectives):
        dims.append(dict(label=esc(m), values=[t.values[i] for t in ts]))
    color = [t.values[0] for t in ts]
    trace = go.Parcoords(line=dict(color=color, colorscale="Viridis", showscale=True), dimensions=dims)
    layout = _layout("parallel coordinates (completed trials)", "", "")
    return _fig([trace], layout)


def history(data: StudyData) -> Figure | None:
    ts = sorted((t for t in data.completed if t.values), key=lambda t: t.number)
    if not ts:
        return None
    if len(data.objectives) == 1:
        sign = -1 if data.directions[0] == "maximize" else 1
        best, line = math.inf, []
        for t in ts:
            if data.is_feasible(t):
                best = min(best, sign * t.values[0])
            line.append(sign * best if math.isfinite(best) else None)
        traces = [
            go.Scatter(x=[t.number for t in ts], y=[t.values[0] for t in ts], mode="markers", name="trial"),
            go.Scatter(x=[t.number for t in ts], y=line, mode="lines", name="best feasible"),
        ]
        return _fig(traces, _layout("optimization history", "trial", data.objectives[0]))
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in data.directions])
    feas = [t for t in ts if data.is_feasible(t)]
    if not feas:
        return None

    losses = np.array([signs * np.array(t.values) for t in feas])
    span = losses.max(axis=0) - losses.min(axis=0)
    ref = losses.max(axis=0) + np.where(span > 0, 0.1 * span, 1.0)
    xs, ys = [], []
    for k in range(1, len(feas) + 1):
        xs.append(feas[k - 1].number)
        ys.append(float(compute_hypervolume(losses[:k], ref)))
    return _fig(
        [go.Scatter(x=xs, y=ys, mode="lines+markers", name="hypervolume")],
        _layout("hypervolume of the feasible trials (reference: worst + 10%)", "trial", "hypervolume"),
    )


def latency_boxes(data: StudyData, numbers: list[int]) -> Figure | None:
    traces = []
    for n in numbers:
        if n >= len(data.trials):
            continue
        t = data.trials[n]
        samples = rec.samples(t)
        if samples:
            cfg = " ".join(f"{k}={v}" for k, v in data.config(t).items())
            traces.append(
                go.Box(
                    y=samples, name=esc(f"#{n}"), boxpoints="outliers", hovertext=esc(cfg), hoverinfo="y+name"
                )
            )
    if not traces:
        return None
    return _fig(traces, _layout("latency samples of the top candidates", "trial", "latency per batch (ms)"))


def rate_curves(data: StudyData, numbers: list[int]) -> Figure | None:
    """Serving: request latency percentiles against the offered rate, for the top candidates
    (each point one open-loop run of a trial: the fixed rate and the max-rate probes); the SLO as
    a line."""
    traces = []
    dashes = {
        "request_latency_p50_ms": "dot",
        "request_latency_p95_ms": "solid",
        "request_latency_p99_ms": "dash",
    }
    for n in numbers:
        if n >= len(data.trials):
            continue
        t = data.trials[n]
        curve = (t.user_attrs.get(rec.INFO) or {}).get("rate_curve") or []
        if len(curve) < 2:
            continue
        cfg = " ".join(f"{k}={v}" for k, v in data.config(t).items())
        for key, dash in dashes.items():
            points = [p for p in curve if key in p]
            traces.append(
                go.Scatter(
                    x=[p["offered_rps"] for p in points],
                    y=[p[key] for p in points],
                    mode="lines+markers",
                    line=dict(dash=dash),
                    name=esc(f"#{n} {key.removeprefix('request_latency_').removesuffix('_ms')}"),
                    hovertext=esc(cfg),
                )
            )
    if not traces:
        return None
    slo = (data.spec.get("serving") or {}).get("slo_p95_ms")
    layout = _layout(
        "request latency against offered rate (top candidates)", "offered rate (requests/s)", "latency (ms)"
    )
    if slo:
        layout["shapes"] = [
            dict(type="line", xref="paper", x0=0, x1=1, y0=slo, y1=slo, line=dict(color="grey", dash="dot"))
        ]
    return _fig(traces, layout)


def load_curves(data: StudyData, numbers: list[int]) -> Figure | None:
    """LLM serving: p95 TTFT (left axis) and p95 TPOT (right axis) against the load level, for
    the top candidates' engine configs. A family is one server's ladder (search.ladder): the
    trial that started it and the levels stored beside it; x is the knob that differs among
    them (rate_rps or concurrency). The workload's SLOs are dotted lines."""
    by_number = {t.number: t for t in data.trials}
    traces: list[Any] = []
    roots: list[int] = []
    for n in numbers:
        t = by_number.get(n)
        if t is None:
            continue
        root = int(rec.marker(t, rec.LADDER_OF, t.number))
        if root not in roots:
            roots.append(root)
    knob = None
    for root in roots:
        family = [by_number[root]] if root in by_number else []
        family += [t for t in data.completed if rec.marker(t, rec.LADDER_OF) == root]
        configs = [data.config(t) for t in family]
        varying = [k for k in configs[0] if len({repr(c.get(k)) for c in configs}) > 1] if configs else []
        if len(family) < 2 or len(varying) != 1:
            continue
        knob = varying[0]
        points = sorted(
            ((c[knob], t) for c, t in zip(configs, family, strict=True) if is_number(c[knob])),
            key=lambda p: float(p[0]),
        )
        if len(points) < 2:
            continue
        fixed = {k: v for k, v in configs[0].items() if k != knob}
        cfg = esc(" ".join(f"{k}={v}" for k, v in fixed.items()))
        for metric, axis, dash in (("ttft_p95_ms", "y", "solid"), ("tpot_p95_ms", "y2", "dash")):
            traces.append(
                go.Scatter(
                    x=[x for x, _ in points],
                    y=[rec.metric(t, metric) for _, t in points],
                    yaxis=axis,
                    mode="lines+markers",
                    line=dict(dash=dash),
                    name=esc(f"#{root} {metric.removesuffix('_ms').replace('_p95', ' p95')}"),
                    hovertext=cfg,
                )
            )
    if not traces or knob is None:
        return None
    layout = _layout(
        "TTFT and TPOT against load, one server per engine config (top candidates)",
        {"rate_rps": "offered rate (requests/s)", "concurrency": "requests in flight"}.get(knob, knob),
        "TTFT p95 (ms), solid",
        yaxis2=dict(title=dict(text="TPOT p95 (ms), dashed"), overlaying="y", side="right"),
    )
    layout["margin"] = {**layout["margin"], "r": 70}  # room for the right axis's title
    workload = data.spec.get("workload") or {}
    shapes = []
    for key, ref in (("slo_ttft_ms", "y"), ("slo_tpot_ms", "y2")):
        if workload.get(key):
            v = float(workload[key])
            shapes.append(dict(type="line", xref="paper", x0=0, x1=1, yref=ref, y0=v, y1=v,
                               line=dict(color="grey", dash="dot")))  # fmt: skip
    if shapes:
        layout["shapes"] = shapes
    return _fig(traces, layout)
