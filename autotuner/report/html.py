"""The offline HTML report: one self-contained file (plotly.js inlined once), built from studies.

Every user-provided string is escaped: text through html.escape, the figure data through a JSON
block whose '<', '>' and '&' are written as \\u escapes so that nothing can close the script.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from plotly.offline import get_plotlyjs
from plotly.utils import PlotlyJSONEncoder

from autotuner._version import __version__
from autotuner.errors import UsageError
from autotuner.files import atomic_write_text, check_writable
from autotuner.report import data as report_data
from autotuner.report import figures as figs
from autotuner.report import frames
from autotuner.report.data import StudyData
from autotuner.report.figures import esc
from autotuner.report.frames import PARAM, Results, confidence, study_frames
from autotuner.report.summary import WALL_ATTR, wall_breakdown
from autotuner.result import FAILURE_CLASSES
from autotuner.search.estimates import uses_budget
from autotuner.spec.schema import Constraint
from autotuner.study import records as rec
from autotuner.study.storage import default_url, load_study, redact

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;
padding:0 24px 48px;color:#222}
h1{margin:24px 0 4px}h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.muted{color:#666}.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:12px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}
th{background:#f4f4f4;cursor:pointer;position:sticky;top:0}tr.chosen td{background:#fff6cc}
tr.infeasible td{color:#888}
.kv td:first-child{font-weight:600;white-space:nowrap}.note{background:#f6f8fa;padding:10px 14px;
border-left:4px solid #1f77b4}.bad{border-left-color:#d62728}.scroll{max-height:520px;overflow:auto}
code{background:#f4f4f4;padding:1px 4px}
"""

SCRIPT = """
const figures = JSON.parse(document.getElementById('autotune-figures').textContent);
for (const [id, f] of Object.entries(figures)) {
  Plotly.newPlot(id, f.data, f.layout, {displaylogo: false, responsive: true});
}
document.querySelectorAll('table.sortable').forEach(table => {
  const body = table.tBodies[0];
  table.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
    const asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
    const key = r => { const t = r.cells[col].textContent.replace(/^#/, ''); const n = parseFloat(t);
                       return isNaN(n) ? t : n; };
    const rows = Array.from(body.rows).sort((a, b) => { const x = key(a), y = key(b);
      return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1); });
    rows.forEach(r => body.appendChild(r));
  }));
  const filter = document.getElementById(table.id + '-filter');
  if (filter) filter.addEventListener('input', e => {
    const q = e.target.value.toLowerCase();
    for (const r of body.rows) r.style.display = r.textContent.toLowerCase().includes(q) ? '' : 'none';
  });
});
"""


def _json_for_script(obj: Any) -> str:
    text = json.dumps(obj, cls=PlotlyJSONEncoder, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "nan"
    return "" if v is None else str(v)


def _kv(pairs: list[tuple[str, Any]]) -> str:
    return (
        "<table class='kv'>"
        + "".join(f"<tr><td>{esc(k)}</td><td>{esc(_fmt(v))}</td></tr>" for k, v in pairs)
        + "</table>"
    )


def importances(study: optuna.Study, data: StudyData) -> dict[str, dict[str, float]]:
    """fANOVA importance per objective; empty where Optuna cannot compute it (too few trials)."""
    out: dict[str, dict[str, float]] = {}
    if len(data.completed) < 3:
        return out

    for i, name in enumerate(data.objectives):
        try:
            imp = get_param_importances(
                study,
                target=lambda t, i=i: t.values[i],
                evaluator=FanovaImportanceEvaluator(n_trees=16, seed=0),
            )
        except (RuntimeError, ValueError, ZeroDivisionError):
            continue
        if imp:
            out[name] = {k: float(v) for k, v in imp.items()}
    return out


MODEBAR_STRIP = 34  # px at the top of each figure that plotly's mode bar (about 26 px high) owns


def _title_below_modebar(fig: dict[str, Any]) -> dict[str, Any]:
    """Plotly draws its mode bar over the top right of a figure, where a centred title runs in a
    half-width grid column. The title goes on the plot area's top edge, left-aligned, and the top
    margin grows so that the strip above it is the mode bar's alone, at any width."""
    layout = fig.setdefault("layout", {})
    title = layout.get("title")
    if isinstance(title, dict) and title.get("text"):
        title.update(x=0, xref="paper", xanchor="left", y=1, yref="paper", yanchor="bottom", pad={"b": 10})
        margin = layout.setdefault("margin", {})
        margin["t"] = max(int(margin.get("t", 0) or 0), MODEBAR_STRIP + 46)
    return fig


class Page:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.figures: dict[str, Any] = {}
        self.tables = 0

    def add(self, html_text: str) -> None:
        self.parts.append(html_text)

    def figure(self, fig: dict[str, Any] | None, note: str = "") -> None:
        if fig is None:
            if note:
                self.add(f"<p class='muted'>{esc(note)}</p>")
            return
        fid = f"fig{len(self.figures)}"
        self.figures[fid] = _title_below_modebar(fig)
        self.add(f"<div id='{fid}' class='figure'></div>")

    def render(self, title: str) -> str:
        return (
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
            + "".join(self.parts)
            + f"<script id='autotune-figures' type='application/json'>{_json_for_script(self.figures)}"
            + f"</script><script>{SCRIPT}</script></body></html>"
        )


def build(studies: list[tuple[optuna.Study, StudyData]]) -> str:
    datas = [d for _, d in studies]
    page = Page()
    names = ", ".join(d.name for d in datas)
    page.add(
        f"<h1>autotune report: {esc(names)}</h1><p class='muted'>written "
        f"{esc(time.strftime('%Y-%m-%d %H:%M:%S %z'))} by autotune {esc(__version__)} from the "
        "stored studies; nothing was re-measured.</p>"
    )
    if len(datas) > 1:
        page.add("<h2>Fronts compared</h2><div class='grid'>")
        for x, y in figs.pareto_pairs(datas[0]):
            page.figure(figs.pareto(datas, x, y))
        page.add("</div>")
    for study, d in studies:
        _study_sections(page, study, d, prefix=f"{d.name}: " if len(datas) > 1 else "")
    _definitions(page, datas)
    return page.render(f"autotune report: {names}")


def _wall(page: Page, study: optuna.Study) -> None:
    """Where the last run's wall time went (start-up, setup, warm-up, timed, driver), if stored;
    else the blocks' sums without the driver's share."""
    parts = study.user_attrs.get(WALL_ATTR) or wall_breakdown(study)
    total = parts.get("wall")
    head = f"Wall time {total:.1f} s: " if total else "Seconds in the measurement blocks: "
    shown = ", ".join(f"{esc(k)} {v:.1f} s" for k, v in parts.items() if k != "wall")
    page.add(f"<p class='wall'>{head}{shown}.</p>")


def _study_sections(page: Page, study: optuna.Study, d: StudyData, prefix: str) -> None:
    page.add(f"<h2>{esc(prefix)}Summary</h2>")
    _summary(page, d)
    _wall(page, study)
    if not d.completed:
        return
    page.add(
        f"<h2>{esc(prefix)}Pareto fronts</h2><p class='muted'>Grey crosses break a constraint; "
        "the line joins the feasible Pareto-optimal configs; the star is the chosen one. "
        "Hover a point for its parameters.</p><div class='grid'>"
    )
    for x, y in figs.pareto_pairs(d):
        page.figure(figs.pareto([d], x, y))
    page.add(f"</div><h2>{esc(prefix)}Effects of the knobs</h2><div class='grid'>")
    limit = next((c["bound"] for c in d.constraints if c.get("metric") == "peak_memory_mb"), None)
    for metric, lim in (("throughput_items_s", None), ("latency_p95_ms", None), ("peak_memory_mb", limit)):
        page.figure(figs.effect(d, metric, lim), f"{metric}: no batch_size parameter to plot against")
    page.figure(figs.accuracy_vs_speed(d))
    page.add(f"</div><h2>{esc(prefix)}Search</h2><div class='grid'>")
    page.figure(
        figs.importance(d, importances(study, d)),
        "parameter importance needs at least 3 completed trials that vary the parameters",
    )
    page.figure(figs.history(d))
    page.add("</div>")
    page.figure(figs.parallel(d))
    top = [c["trial"] for c in (d.pick or {}).get("candidates", []) if c["trial"] >= 0] or [
        t.number
        for t in sorted(d.feasible, key=lambda t: t.values[0], reverse=d.directions[0] == "maximize")[:5]
    ]
    page.add(f"<h2>{esc(prefix)}Latency distributions</h2>")
    page.figure(figs.latency_boxes(d, top), "no latency samples were kept for the top candidates")
    page.figure(figs.load_curves(d, top))  # LLM serving: TTFT/TPOT against rate or concurrency
    if d.spec.get("scenario") == "serving":
        page.add(f"<h2>{esc(prefix)}Latency under load</h2>")
        page.figure(
            figs.rate_curves(d, top),
            "no rate/latency curve: give serving.max_rate to measure the top candidates at several rates",
        )
    res = study_frames(d)
    _estimates_table(page, d, prefix, res)
    _failures(page, d, prefix)
    _trial_table(page, d, prefix, res)


def _summary(page: Page, d: StudyData) -> None:
    env = d.environment
    states = Counter(t.state.name.lower() for t in d.trials)
    classes = Counter(rec.failure_class(t) for t in d.trials if rec.failure_class(t))
    budget = d.spec.get("budget", {}).get("trials")
    model = d.spec.get("model", {})
    libs = env.get("libraries", {})
    pairs: list[tuple[str, Any]] = [
        ("study", d.name),
        ("storage", d.storage),
        ("model", " ".join(f"{k}={v}" for k, v in model.items() if v not in (None, {}))),
        ("objectives", ", ".join(f"{d_} {m}" for m, d_ in zip(d.objectives, d.directions, strict=False))),
        (
            "constraints",
            ", ".join(Constraint(**c).text for c in d.constraints) or "none",
        ),
        (
            "machine",
            f"{env.get('cpu_model', '?')}, {env.get('cpu_cores', '?')} cores"
            + (f"; GPUs: {', '.join(env['gpus'])}" if env.get("gpus") else "; no GPU"),
        ),
        ("libraries", ", ".join(f"{k} {v}" for k, v in libs.items())),
        ("autotune", d.version),
        ("budget used", _budget_used(d, budget)),
        ("trials by state", ", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "none"),
        ("failures by class", ", ".join(f"{k} {v}" for k, v in sorted(classes.items())) or "none"),
    ]
    page.add(_kv(pairs))
    if not d.completed:
        why = ", ".join(f"{v} {k}" for k, v in sorted(classes.items())) or "no trial has run yet"
        page.add(
            f"<p class='note bad'>No trial completed, so there is no front and no winner: {esc(why)}. "
            "The failures below say why.</p>"
        )
        _failures(page, d, "")
        return
    if d.pick is None or d.winner is None:
        page.add("<p class='note bad'>No feasible config: every completed trial breaks a constraint.</p>")
        return
    w = d.trials[d.winner]
    pick = d.pick
    chosen = dict(pick.get("config") or d.config(w))
    cand = next(
        (c for c in pick.get("candidates", []) if c["trial"] == d.winner and not c.get("baseline")), {}
    )
    ci = cand.get("ci")
    pct = int(pick["confidence"] * 100)
    interval = (
        f"race mean {_fmt(cand.get('mean'))} over {len(cand.get('rounds', []))} interleaved rounds, "
        f"{pct}% CI {_fmt(ci[0])} .. {_fmt(ci[1])}"
        if ci
        else f"pooled estimate {_fmt(cand.get('value'))} over {cand.get('blocks', 1)} block(s); not raced"
    )
    base = pick.get("baseline") or {}
    page.add(
        f"<p class='note'><b>Chosen: trial #{d.winner}</b> "
        f"{esc(' '.join(f'{k}={v}' for k, v in chosen.items()))}<br>"
        f"rule {esc(pick['rule'])}: {esc(interval)}<br>{esc(pick['reason'])}"
        + (f"<br>baseline: {esc(base.get('text', ''))}" if base else "")
        + "</p>"
    )


def _budget_used(d: StudyData, budget: Any) -> str:
    """Measurements against the budget; the trials that measured nothing are said apart."""

    n = sum(1 for t in d.trials if uses_budget(t))
    free = len(d.trials) - n
    text = f"{n} measurements" + (f" of {budget}" if budget else "")
    return text + (
        f" ({free} more trials were free: refusals, pooled repeats, loaded blocks)" if free else ""
    )


def _estimates_table(page: Page, d: StudyData, prefix: str, res: Results) -> None:
    """Every config once, with its pooled estimate: what the pick reads (the configs frame)."""
    conf = confidence(d)
    metrics = [m for m in d.objectives if m in res.configs.columns]
    headers = ["first trial", *d.params, "feasible", "breaks", "blocks", "under load"]
    head = "".join(f"<th>{esc(h)}</th>" for h in [*headers, *map(d.label, metrics), "measure s"])
    body = []
    ests = res.configs[res.configs[metrics[0]].notna()] if metrics else res.configs.iloc[0:0]
    for _, r in ests.head(50).iterrows():
        first = f"#{int(r['first_trial'])}" if r["first_trial"] == r["first_trial"] else "race only"
        cells = [first, *[_cell(r.get(PARAM + p)) for p in d.params], r["feasible"], r["broken"] or ""]
        cells += [r["blocks"], r["under_load"]]
        for m in metrics:
            lo, hi = r[f"{m}_low"], r[f"{m}_high"]
            cells.append(f"{_fmt(r[m])} [{_fmt(lo)}, {_fmt(hi)}]" if lo == lo and hi == hi else _fmt(r[m]))
        cells.append(round(float(r["measure_s"]), 2))
        cls = " class='chosen'" if r["chosen"] else " class='infeasible'" if r["feasible"] != "yes" else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{esc(_fmt(c))}</td>" for c in cells) + "</tr>")
    page.add(
        f"<h2>{esc(prefix)}Configs by pooled estimate</h2><p class='muted'>Each config once: the mean of "
        f"its measurement blocks (search trials, repeats, race rounds; blocks under foreign load left out) "
        f"and its {int(conf * 100)}% interval over blocks in separate processes. A config measured once "
        "takes the study's between-block spread. Greyed rows break a constraint (named under 'breaks') "
        "and are never chosen.</p><div class='scroll'><table><thead><tr>"
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )
    if not len(res.race) or not res.race["rounds"].astype(int).any():
        return
    rows = []
    per_round = res.race_rounds.groupby("candidate")["value"].apply(list).to_dict()
    for _, c in res.race.iterrows():
        config = " ".join(f"{p}={_cell(c.get(PARAM + p))}" for p in d.params if _cell(c.get(PARAM + p)) != "")
        lo, hi = c["ci_low"], c["ci_high"]
        cells = [
            f"#{int(c['trial'])}" if c["trial"] == c["trial"] and c["trial"] is not None else "-",
            config,
            c["before_race"] if c["before_race"] == c["before_race"] else "",
            int(c["rounds"]),
            c["mean"] if c["mean"] == c["mean"] else "",
            f"{_fmt(lo)} .. {_fmt(hi)}" if lo == lo and lo is not None else "",
            " ".join(_fmt(v) for v in per_round.get(c["candidate"], [])),
            c["status"],
        ]
        rows.append("<tr>" + "".join(f"<td>{esc(_fmt(x))}</td>" for x in cells) + "</tr>")
    page.add(
        f"<h2>{esc(prefix)}The race</h2><p class='muted'>The contenders measured side by side in "
        f"interleaved rounds, each block in a fresh worker process, on {esc(d.pick['rule'])}.</p>"
        "<div class='scroll'><table><thead><tr><th>trial</th><th>config</th><th>before race</th>"
        "<th>rounds</th><th>race mean</th><th>interval</th><th>per round</th><th>status</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _cell(v: Any) -> Any:
    """A frame cell as the table shows it: missing (None, NaN) as empty, whole floats as ints."""
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _failures(page: Page, d: StudyData, prefix: str) -> None:
    failed = [t for t in d.trials if rec.failure_class(t)]
    page.add(f"<h2>{esc(prefix)}Failures</h2>")
    if not failed:
        page.add("<p class='muted'>No trial failed.</p>")
        return
    rows = "".join(
        f"<tr><td>#{t.number}</td><td>{esc(t.state.name)}</td><td>{esc(rec.failure_class(t))}</td>"
        f"<td>{esc(' '.join(f'{k}={v}' for k, v in d.config(t).items()))}</td>"
        f"<td>{esc(rec.failure_message(t))}</td></tr>"
        for t in failed
    )
    page.add(
        "<div class='scroll'><table><thead><tr><th>trial</th><th>state</th><th>class</th><th>config</th>"
        f"<th>message</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )


def _trial_table(page: Page, d: StudyData, prefix: str, res: Results) -> None:
    """Every trial (the trials frame), with the columns a reader scans first."""
    metrics = list(
        dict.fromkeys(
            [
                *d.objectives,
                *(c["metric"] for c in d.constraints),
                "latency_p50_ms",
                "latency_p95_ms",
                "throughput_items_s",
                "peak_memory_mb",
                "usd_per_million_items",
                "energy_j_per_item",
                "accuracy_cosine",
                "unstable",
            ]
        )
    )
    metrics = [m for m in metrics if m in d.metric_names and m in res.trials.columns]
    head = "".join(
        f"<th>{esc(h)}</th>"
        for h in ["trial", "state", "feasible", "block", "failure", *d.params, *map(d.label, metrics)]
    )
    body = []
    for r in res.trials.to_dict(orient="records"):
        cells = [
            f"#{r['trial']}",
            r["state"],
            "yes" if r["feasible"] else "no",
            r["block"],
            r["failure_class"] or "",
            *[_cell(r.get(PARAM + p)) for p in d.params],
            *[_cell(r[m]) for m in metrics],
        ]
        cls = " class='chosen'" if r["trial"] == d.winner else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{esc(_fmt(c))}</td>" for c in cells) + "</tr>")
    table_id = f"trials{page.tables}"
    page.tables += 1
    page.add(
        f"<h2>{esc(prefix)}All trials</h2><p><input id='{table_id}-filter' placeholder='filter rows' "
        f"size='40'> <span class='muted'>click a header to sort</span></p><div class='scroll'>"
        f"<table id='{table_id}' class='sortable'><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _definitions(page: Page, datas: list[StudyData]) -> None:
    metrics: dict[str, str] = {}
    for d in datas:  # the built-in metrics, then those the studies' specs declare
        metrics.update(d.definitions())
    page.add(
        "<h2>Definitions</h2>"
        + _kv(list(metrics.items()))
        + "<h3>Failure classes</h3>"
        + _kv(list(FAILURE_CLASSES.items()))
        + "<p>The chosen config: every measurement block of a config (search trials, repeats, race "
        "rounds, each in a fresh worker process) pools into one estimate with an interval. The feasible "
        "configs whose interval reaches the leader's are raced in interleaved rounds; one beaten with "
        "confidence leaves the race, which ends when one leads with confidence, the rest are ties "
        "within the tolerance, or its rounds run out. Ties go to a tie-break rule only where that rule "
        "separates them beyond the noise; else the best mean on the rule stands. The gain over the "
        "baseline comes from the baseline raced in the same rounds.</p>"
    )


def write_report(studies: list[str], storage: str | None, output: str | Path | None, fmt: str) -> Path:
    """Write the HTML report (several studies: fronts overlaid), or the results frames of the
    studies (report/frames.py) as CSV, JSON or parquet."""

    if fmt not in ("html", *frames.TABLE_FORMATS):
        raise UsageError(f"--format {fmt!r}: allowed: html, {', '.join(frames.TABLE_FORMATS)}")
    if not studies:
        raise UsageError("name at least one study")
    path = Path(output or f"reports/{'-vs-'.join(studies)}.{fmt}")
    check_writable(path.parent, "-o" if output else "the report")
    loaded = []
    for name in studies:
        url = storage or default_url(name)
        st = load_study(name, url)
        loaded.append((st, report_data.load(st, redact(url))))
    if fmt != "html":
        return frames.write_frames(frames.frames_of([d for _, d in loaded]), path, fmt, studies)[0]
    return atomic_write_text(path, build(loaded))
