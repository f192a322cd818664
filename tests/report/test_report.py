"""The HTML report, built from real small studies and opened in headless Chromium offline."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from helpers import FAST_MEASUREMENT, study_of_refusals, write_spec

from autotuner.api import report, run
from autotuner.progress import Progress

QUIET = Progress(quiet=True)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MARKUP = "<script>window.__pwned = 2</script>"
PASSWORD = "hunter2-secret"


def _pg() -> str | None:
    url = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:5432/test"  # trust auth ignores it
    try:
        import sqlalchemy

        with sqlalchemy.create_engine(url).connect():
            return url
    except Exception:  # noqa: BLE001
        return None


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real small studies: two objectives with markup in a parameter value, one objective with a
    failure message holding markup, three objectives, and one where no trial could complete."""
    d = tmp_path_factory.mktemp("report")
    shutil.copy(Path(__file__).parents[1] / "models_for_tests.py", d)
    import os

    old = os.getcwd()
    os.chdir(d)
    try:
        two = write_spec(
            d,
            "two.yaml",
            name="two",
            # The grid walks every config, the refused one with the markup in its reason too.
            budget={"trials": 6},
            sampler={"type": "grid"},
            baseline={"backend": "torch-eager"},
            space={
                "backend": ["torch-eager", "onnxruntime-cpu"],
                "batch_size": [1, 4],
                "threads": [1],
                "graph_optimization_level": {
                    "choices": ["all", "basic"],
                    "when": {"backend": ["onnxruntime-cpu"]},
                },
            },
        )
        run(two, progress=QUIET)
        one = write_spec(
            d,
            "one.yaml",
            name="one",
            model={"factory": "models_for_tests:misbehaving"},
            inputs=[{"name": "x", "shape": ["batch", 16]}],
            sampler={"type": "grid"},
            space={"backend": ["torch-eager"], "batch_size": [1, 3], "threads": [1]},
            objectives=[{"metric": "latency_p50_ms", "direction": "minimize"}],
            measurement=FAST_MEASUREMENT,
        )
        run(one, progress=QUIET)
        # A parameter value that only an external program reads may be any text, markup too
        # (the torch and onnxruntime knobs take closed sets, refused when the spec is loaded).
        shutil.copy(Path(__file__).parents[1] / "bench_script.py", d)
        markup = write_spec(
            d,
            "markup.yaml",
            name="markup",
            model={"external": "matrix-product"},
            space={"backend": "command", "size": [16], "label": [MARKUP]},
            objectives=[{"metric": "throughput_items_s", "direction": "maximize"}],
            constraints=[],
            budget={"trials": 1},
            command={
                "argv": [
                    sys.executable,
                    "bench_script.py",
                    "--size",
                    "{size}",
                    "--label",
                    "{label}",
                    "--reps",
                    "3",
                ],
                "metrics": {"throughput_items_s": "results.throughput"},
            },
        )
        run(markup, progress=QUIET)
        # A serving study: its rate/latency curves are a figure of their own.
        serving = write_spec(
            d,
            "serving.yaml",
            name="serving",
            scenario="serving",
            serving={
                "rate_rps": 80,
                "duration_s": 0.5,
                "slo_p95_ms": 200,
                "max_rate": {"low": 20, "high": 300, "steps": 1, "duration_s": 0.4},
            },
            space={
                "backend": ["onnxruntime-cpu"],
                "max_batch_size": [4],
                "batch_timeout_ms": [0, 2],
                "instances": [1],
                "threads": [1],
            },
            objectives=[{"metric": "request_latency_p95_ms", "direction": "minimize"}],
            sampler={"type": "grid"},
            budget={"trials": 2},
            pick={"top_k": 2, "rounds": 0},
        )
        run(serving, progress=QUIET)
        three = write_spec(
            d,
            "three.yaml",
            name="three",
            budget={"trials": 3},
            objectives=[
                {"metric": "throughput_items_s", "direction": "maximize"},
                {"metric": "latency_p95_ms", "direction": "minimize"},
                {"metric": "peak_memory_mb", "direction": "minimize"},
            ],
        )
        run(three, progress=QUIET)
        none = write_spec(
            d,
            "none.yaml",
            name="none",
            budget={"trials": 2},
            space={"backend": ["torch-eager"], "batch_size": [1, 2], "threads": [999]},
        )
        study_of_refusals(none, "sqlite:///studies/none.db")
        paths = {n: report([n]) for n in ("two", "one", "three", "none", "markup", "serving")}
        paths["compare"] = report(["two", "three"])
        pg = _pg()
        if pg:
            name = f"pw-{uuid.uuid4().hex[:8]}"
            try:
                run(write_spec(d, "pg.yaml", name=name, budget={"trials": 2}), storage=pg, progress=QUIET)
                paths["postgres"] = report([name], storage=pg)
            finally:
                optuna.delete_study(study_name=name, storage=pg)
        return {k: d / v for k, v in paths.items()}
    finally:
        os.chdir(old)


def test_user_strings_are_escaped_and_no_password_appears(studies: dict[str, Path]) -> None:
    for path in studies.values():
        text = path.read_text()
        assert "<script>window.__pwned" not in text
        assert PASSWORD not in text
    assert "&lt;script&gt;window.__pwned = 2" in studies["markup"].read_text()
    assert "&lt;script&gt;window.__pwned = 1" in studies["one"].read_text()
    if "postgres" in studies:
        assert "postgres:***@" in studies["postgres"].read_text()


def test_zero_completed_trials_says_why(studies: dict[str, Path]) -> None:
    text = studies["none"].read_text()
    assert "No trial completed" in text and "unsupported" in text


def test_csv_and_json_tables(studies: dict[str, Path]) -> None:
    d = studies["two"].parent.parent
    import os

    old = os.getcwd()
    os.chdir(d)
    try:
        c = report(["one"], fmt="csv")
        j = report(["one"], fmt="json")
    finally:
        os.chdir(old)
    rows = list(csv.DictReader(io.StringIO((d / c).read_text())))
    assert [r["state"] for r in rows] == ["COMPLETE", "FAIL"] or sorted(r["state"] for r in rows) == [
        "COMPLETE",
        "FAIL",
    ]
    failed = next(r for r in rows if r["state"] == "FAIL")
    assert failed["failure_class"] == "error" and "refuses batches" in failed["failure_message"]
    assert "param:batch_size" in rows[0] and "latency_p95_ms" in rows[0]
    data = json.loads((d / j).read_text())
    assert data["study"] == "one" and len(data["trials"]) == 2


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_figure_titles_clear_the_mode_bar_in_a_1400px_window(
    studies: dict[str, Path], tmp_path: Path
) -> None:
    """Every figure title and plotly's mode bar (shown, as on hover) do not overlap, at the width
    where they did: two figures a row in a 1400-pixel window."""
    pytest.importorskip("playwright", reason="pip install playwright")
    from PIL import Image
    from playwright.sync_api import sync_playwright

    overlap_js = """() => Array.from(document.querySelectorAll('.figure')).map(f => {
        const bar = f.querySelector('.modebar'); const title = f.querySelector('.gtitle');
        if (!bar || !title) return {id: f.id, bar: !!bar, title: !!title};
        const a = bar.getBoundingClientRect(), b = title.getBoundingClientRect();
        const hit = a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
        return {id: f.id, bar: true, title: true, hit, text: title.textContent,
                a: [a.left, a.top, a.right, a.bottom], b: [b.left, b.top, b.right, b.bottom]};
    })"""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            ctx = browser.new_context(offline=True, viewport={"width": 1400, "height": 1000})
            page = ctx.new_page()
            page.goto(studies["two"].as_uri())
            page.wait_for_load_state("load")
            page.add_style_tag(content=".modebar, .modebar--hover > *{opacity:1 !important}")  # as on hover
            figures = page.evaluate(overlap_js)
            titled = [f for f in figures if f["title"]]
            assert len(titled) >= 5 and all(f["bar"] for f in titled), figures
            assert [f for f in titled if f["hit"]] == [], [f for f in titled if f["hit"]]
            # The first figure as a reader sees it, mode bar shown: a screenshot for the record.
            first = page.locator(".figure").first
            first.hover()
            shot = tmp_path / "figure-1400.png"
            first.screenshot(path=str(shot))
            img = Image.open(shot)
            assert img.width >= 500, img.size  # two figures a row, each about 590 px wide
            ctx.close()
        finally:
            browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_reports_render_in_chromium_offline(studies: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("playwright", reason="pip install playwright")
    from PIL import Image
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            for name, path in studies.items():
                ctx = browser.new_context(offline=True, viewport={"width": 1280, "height": 1000})
                page = ctx.new_page()
                errors: list[str] = []
                page.on(
                    "console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None
                )
                page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
                page.goto(path.as_uri())
                page.wait_for_load_state("load")
                assert errors == [], (name, errors)
                assert page.evaluate("window.__pwned") is None, name
                n = page.evaluate("document.querySelectorAll('.figure').length")
                drawn = page.evaluate(
                    "Array.from(document.querySelectorAll('.figure')).filter(d => d.data && "
                    "d.data.some(t => (t.x && t.x.length) || (t.y && t.y.length) || (t.dimensions && "
                    "t.dimensions.length)) && d.querySelector('.main-svg')).length"
                )
                if name == "none":
                    assert n == 0
                elif name == "markup":  # one trial of an external program: few figures apply
                    assert n >= 1 and drawn >= 1, (name, n, drawn)
                elif name == "serving":  # one objective, no batch_size: fewer figures apply
                    assert n >= 3 and drawn == n, (name, n, drawn)
                    assert "request latency against offered rate" in path.read_text()
                else:
                    assert n >= 5 and drawn == n, (name, n, drawn)
                shot = tmp_path / f"{name}.png"
                page.screenshot(path=str(shot))
                img = Image.open(shot).convert("L")
                lo, hi = img.getextrema()
                assert hi - lo > 100 and len(img.getcolors(maxcolors=1 << 16) or []) > 20, name
                ctx.close()
        finally:
            browser.close()
