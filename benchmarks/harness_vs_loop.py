"""Does the measurement harness report what a minimal hand-written timing loop sees?

For each runner config (tiny-transformer, batch_size 8, threads 1; search_spaces/tiny.yaml, the
former quickstart spec, by default), in
one process pinned to one core: build the runner as the worker does (`worker.build`, `setup`,
`prepare`), then interleave, over several rounds, (a) `harness.measure(step, ...)` with a fixed
iteration count and (b) a hand loop that calls the raw model (torch: `model(**tensors)` under
`torch.inference_mode()`; onnxruntime: `session.run(None, feeds)`) timed per call with
`time.perf_counter_ns`, same warm-up and iteration count. Reports per config the median over the
rounds of each method's p50 and the ratio harness / hand.

    python benchmarks/harness_vs_loop.py [--spec search_spaces/tiny.yaml] [--max-s 120] [--core N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import load_average, machine_lines  # noqa: E402

from autotuner.api import load_spec  # noqa: E402
from autotuner.execution.capabilities import probe  # noqa: E402
from autotuner.measure.build import build  # noqa: E402
from autotuner.measure.harness import HarnessSettings, measure  # noqa: E402
from autotuner.measure.scenarios import harness_settings  # noqa: E402
from autotuner.models.builtins import model_inputs  # noqa: E402
from autotuner.models.inputs import make_inputs  # noqa: E402
from autotuner.runners.base import Device  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "search_spaces" / "tiny.yaml"
DOC = ROOT / "docs" / "benchmarks" / "harness_vs_loop.md"
BATCH = 8
TOLERANCE = 0.05
CONFIGS = [
    {"backend": "torch-eager", "precision": "fp32", "batch_size": BATCH, "threads": 1},
    {"backend": "torch-eager", "precision": "int8-dynamic", "batch_size": BATCH, "threads": 1},
    {"backend": "onnxruntime-cpu", "precision": "fp32", "batch_size": BATCH, "threads": 1},
    {"backend": "onnxruntime-cpu", "precision": "int8-dynamic", "batch_size": BATCH, "threads": 1},
]


def shown(path: Path) -> str:
    p = path.resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def label(config: dict[str, Any]) -> str:
    return f"{config['backend']} {config['precision']}"


def fixed(base: HarnessSettings, iters: int) -> HarnessSettings:
    """The spec's harness settings with exactly `iters` timed iterations (no time or CV stop)."""
    return replace(base, min_iters=iters, max_iters=iters, min_time_s=0.0, max_time_s=1e9, keep_samples=0)


def hand_loop(call: Callable[[], None], warmup: int, iters: int) -> np.ndarray:
    """The plainest timing loop: warm-up, then perf_counter_ns around each call. Samples in ms."""
    for _ in range(warmup):
        call()
    clock = time.perf_counter_ns
    samples = [0] * iters
    for i in range(iters):
        t0 = clock()
        call()
        samples[i] = clock() - t0
    return np.asarray(samples, dtype=np.float64) / 1e6


def raw_call(runner: Any, config: dict[str, Any], batch: dict[str, np.ndarray]) -> Callable[[], None]:
    """A call of the model itself, bypassing the runner's step closure."""
    if config["backend"].startswith("torch"):
        import torch

        model = runner.model
        tensors = {k: torch.from_numpy(v) for k, v in batch.items()}  # fp32/int8 keep int64 ids as is

        def call() -> None:
            with torch.inference_mode():
                model(**tensors)

        return call
    session = runner.session
    feeds = dict(batch)

    def call() -> None:
        session.run(None, feeds)

    return call


def overhead_of_harness(base: HarnessSettings, iters: int = 20_000) -> tuple[float, float]:
    """Mean ns per iteration of a no-op step: in the harness, and in the hand loop."""

    def noop() -> None:
        return None

    metrics, _ = measure(noop, fixed(base, iters), 1, None)
    harness_ns = metrics["latency_mean_ms"] * 1e6
    hand_ns = float(hand_loop(noop, base.warmup_iters, iters).mean() * 1e6)
    return harness_ns, hand_ns


def block(method: str, s: dict[str, Any], base: HarnessSettings) -> tuple[float, float]:
    """One measured block of a config: (p50, mean) in ms."""
    runner, iters = s["runner"], s["iters"]
    runner.activate()
    if method == "harness":
        metrics, _ = measure(s["step"], fixed(base, iters), BATCH, runner.synchronize)
        assert metrics["n_iterations"] == iters, metrics["n_iterations"]
        return metrics["latency_p50_ms"], metrics["latency_mean_ms"]
    ms = hand_loop(s["hand"], base.warmup_iters, iters)
    return float(np.percentile(ms, 50)), float(ms.mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30, help="most rounds (default 30)")
    ap.add_argument("--min-rounds", type=int, default=10, help="rounds run even past --max-s")
    ap.add_argument("--max-s", type=float, default=140.0, help="start no new round after this (s)")
    ap.add_argument("--block-s", type=float, default=0.3, help="target seconds per measured block")
    ap.add_argument("--min-iters", type=int, default=10, help="fewest timed iterations per block")
    ap.add_argument("--core", type=int, default=None, help="core to pin to (default: the last usable)")
    ap.add_argument("--spec", type=Path, default=SPEC, help="spec whose model is timed (default tiny.yaml)")
    ap.add_argument("--out", type=Path, default=DOC)
    args = ap.parse_args(argv)
    load0 = load_average()

    import torch

    usable = sorted(os.sched_getaffinity(0))
    core = args.core if args.core is not None else usable[-1]
    caps = probe()  # in a child process, before pinning
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    spec = load_spec(args.spec)
    base = harness_settings(spec)
    device = Device("cpu", (core,))
    batch = make_inputs(model_inputs(spec), BATCH, spec.data_seed)

    setups = []
    for config in CONFIGS:
        t0 = time.perf_counter()
        runner = build(spec, config, device, caps)
        runner.setup()
        step = runner.prepare(batch)
        step()
        runner.synchronize()
        hand = raw_call(runner, config, batch)
        hand()
        runner.activate()
        est = measure(step, fixed(base, 6), BATCH, runner.synchronize)[0]["latency_p50_ms"]
        iters = int(np.clip(round(args.block_s * 1e3 / est), args.min_iters, 2000))
        iters += iters % 2
        setups.append(
            {"config": config, "runner": runner, "step": step, "hand": hand, "iters": iters, "est": est}
        )
        print(
            f"{label(config)}: set up in {time.perf_counter() - t0:.1f}s, ~{est:.2f} ms/step, "
            f"{iters} iterations per block",
            flush=True,
        )

    harness_ns, hand_ns = overhead_of_harness(base)
    print(f"no-op step: harness {harness_ns:.0f} ns/iter, hand loop {hand_ns:.0f} ns/iter")

    results: dict[str, dict[str, list[float]]] = {
        label(s["config"]): {"harness_p50": [], "hand_p50": [], "harness_mean": [], "hand_mean": []}
        for s in setups
    }
    started = time.perf_counter()
    done = 0
    for rnd in range(args.rounds):
        if rnd >= args.min_rounds and time.perf_counter() - started > args.max_s:
            break
        for s in setups:
            r = results[label(s["config"])]
            # Alternate which method goes first, so that neither always follows the other config.
            for method in ("harness", "hand") if rnd % 2 == 0 else ("hand", "harness"):
                p50, mean = block(method, s, base)
                r[f"{method}_p50"].append(p50)
                r[f"{method}_mean"].append(mean)
        done = rnd + 1
        print(f"round {done}/{args.rounds} done ({time.perf_counter() - started:.0f}s)", flush=True)
    elapsed = time.perf_counter() - started

    rows = []
    for s in setups:
        name = label(s["config"])
        r = results[name]
        hp, kp = np.asarray(r["harness_p50"]), np.asarray(r["hand_p50"])
        ratio = float(np.median(hp) / np.median(kp))
        pr = hp / kp
        paired = float(np.median(pr))
        q1, q3 = (float(x) for x in np.percentile(pr, [25, 75]))
        mean_ratio = float(np.median(np.asarray(r["harness_mean"])) / np.median(np.asarray(r["hand_mean"])))
        rows.append(
            {
                "name": name,
                "iters": s["iters"],
                "h_med": float(np.median(hp)),
                "h_lo": float(hp.min()),
                "h_hi": float(hp.max()),
                "k_med": float(np.median(kp)),
                "k_lo": float(kp.min()),
                "k_hi": float(kp.max()),
                "ratio": ratio,
                "paired": paired,
                "q1": q1,
                "q3": q3,
                "mean_ratio": mean_ratio,
                "min_ratio": float(hp.min() / kp.min()),
                "ok": abs(paired - 1.0) <= TOLERANCE,
            }
        )

    head = (
        "| config | iters/block | harness p50 ms: median [min-max] | hand loop p50 ms: median [min-max] "
        "| harness/hand, ratio of the medians | harness/hand per round: median [IQR] | ratio of the minima "
        "| mean ratio | paired ratio within 5% |"
    )
    table = [head, "|" + "---|" * 9]
    for x in rows:
        table.append(
            f"| {x['name']} | {x['iters']} | {x['h_med']:.3f} [{x['h_lo']:.3f}-{x['h_hi']:.3f}] | "
            f"{x['k_med']:.3f} [{x['k_lo']:.3f}-{x['k_hi']:.3f}] | {x['ratio']:.3f} | "
            f"{x['paired']:.3f} [{x['q1']:.3f}-{x['q3']:.3f}] | {x['min_ratio']:.3f} | "
            f"{x['mean_ratio']:.3f} | {'yes' if x['ok'] else 'NO'} |"
        )
    print()
    for line in table:
        print(line)

    doc = [
        "# Harness against a hand-written timing loop",
        "",
        "Does `autotuner.measure.harness.measure` report the latency a minimal hand loop sees on the same",
        "model? Both time the same runner instance in one process, interleaved over the rounds.",
        "",
        "Produced by `python benchmarks/harness_vs_loop.py`.",
        "",
        "## Machine",
        "",
        *machine_lines(load0),
        "",
        "## Method",
        "",
        f"- model: `{spec.model.builtin}` {spec.model.options} from `{shown(args.spec)}`, "
        f"batch_size {BATCH}, threads 1, inputs from `make_inputs(model_inputs(spec), {BATCH}, seed)`",
        f"- process pinned to core {core} (`os.sched_setaffinity`), `torch.set_num_threads(1)`, "
        "onnxruntime `intra_op_num_threads=1`, `inter_op_num_threads=1` (the runner's settings)",
        "- runner built as the worker does: `worker.build(spec, config, Device('cpu', cores), "
        "capabilities.probe())`, `setup()`, `step = prepare(batch)`, one first call",
        f"- (a) harness: `measure(step, settings, {BATCH}, runner.synchronize)` with the spec's settings "
        f"made fixed-length (warm-up {base.warmup_iters}, min_iters = max_iters = N, no time or CV stop)",
        "- (b) hand loop: the same warm-up, then N calls of the raw model, each timed with "
        "`time.perf_counter_ns`; torch: `with torch.inference_mode(): runner.model(**tensors)`, "
        "onnxruntime: `runner.session.run(None, feeds)`",
        f"- {done} rounds in {elapsed:.0f} s; in each, every config is measured by both methods back to "
        "back, the first method alternating from round to round; N is chosen per config for about "
        f"{args.block_s:g} s per block (at least {args.min_iters})",
        "- the paired ratio compares the two blocks of the same config in the same round (a few tenths",
        "  of a second apart), so it cancels load that changes slowly; the ratio of the medians over",
        "  the rounds is shown too. The ratio of the minima (the least disturbed block of each method)",
        '  is the figure least moved by other work on the machine; "mean ratio" is the ratio of the',
        "  medians of the block means.",
        "",
        "## Results",
        "",
        "A load average near the core count means other work shared the machine while this ran; the",
        "interleaving, the paired ratio and the ratio of the minima are there for that.",
        "",
        *table,
        "",
        f"No-op step (the fixed cost per iteration, 20,000 iterations): harness {harness_ns:.0f} ns, "
        f"hand loop {hand_ns:.0f} ns.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(doc))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
