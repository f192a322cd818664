"""INT8 that production would ship, measured: MiniLM on real English sentences, every precision and
every static-INT8 calibration side by side.

    python benchmarks/quantization.py [--rounds 5] [--batch 8] [--threads 2]

For both backends (onnxruntime-cpu, torch-eager): fp32, fp16, int8-dynamic, and static int8 per
calibration method (ONNX Runtime: minmax, entropy, percentile; torch: minmax, histogram), plus
static minmax with the FFN down-projections kept in fp32 (`int8_exclude: re:...`). Each variant is
first run once as a search trial (quantized on the calibration set, accuracy on the held-apart
evaluation set: worst-sample cosine to fp32's embeddings, the paraphrase margin relative to
fp32's, and the paraphrase-retrieval MRR), then
re-measured in interleaved rounds, each variant in a fresh worker per round, in a rotated order;
throughput is the median over rounds, and its ratio to fp32 is taken within each round (the
same backend's fp32 measured in the same round) before the median. Model size: the ONNX file the
session loads; for torch, the serialized state_dict. Writes docs/benchmarks/quantization.md.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import load_average, machine_lines, write_doc  # noqa: E402

from autotuner.api import bench, spec_from_dict  # noqa: E402

FFN_OUT = r"re:layer\.\d+.output.dense"  # ONNX: layer.N/output/dense/MatMul; torch: layer.N.output.dense
MRR = "autotuner.models.tasks:paraphrase_mrr"
MARGIN = "autotuner.models.tasks:paraphrase_margin"

VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("fp32", {"precision": "fp32"}),
    ("fp16", {"precision": "fp16"}),
    ("int8-dynamic", {"precision": "int8-dynamic"}),
    ("int8 minmax", {"precision": "int8", "calibration": "minmax"}),
    ("int8 minmax, FFN out in fp32", {"precision": "int8", "calibration": "minmax", "int8_exclude": FFN_OUT}),
    ("int8 minmax per-tensor", {"precision": "int8", "calibration": "minmax", "per_channel": False}),
    ("int8 entropy", {"precision": "int8", "calibration": "entropy"}),
    ("int8 percentile", {"precision": "int8", "calibration": "percentile"}),
    ("int8 histogram", {"precision": "int8", "calibration": "histogram"}),
]
OFFERS = {"onnxruntime-cpu": {"histogram"}, "torch-eager": {"entropy", "percentile"}}  # calibrations left out


def spec_for(config: dict[str, Any], measure: dict[str, Any], metric: str = MARGIN) -> Any:
    space: dict[str, Any] = {k: [v] for k, v in config.items()}
    return spec_from_dict(
        {
            "name": "quantization-benchmark",
            "model": {"builtin": "minilm", "options": {"seq_len": 64}},
            "data": {"builtin": "sentences", "calibration": 128, "evaluation": 128},
            "accuracy": {"metric": metric},
            "space": space,
            "objectives": [{"metric": "throughput_items_s", "direction": "maximize"}],
            "measurement": {**measure, "trial_timeout_s": 600},
        },
        "benchmarks/quantization.py",
    )


def run_one(config: dict[str, Any], measure: dict[str, Any], metric: str = MARGIN) -> Any:
    _, result = bench(spec_for(config, measure, metric), config)
    return result


def torch_size_mb(config: dict[str, Any]) -> float:
    """The serialized state_dict of the torch model as the trial builds it."""
    import torch

    from autotuner.models.builtins import build_torch_model, model_inputs
    from autotuner.models.dataset import calibration_batches
    from autotuner.models.quantization import QUANT_KNOBS, quant_settings, quantize_torch

    spec = spec_for(config, {})
    model = build_torch_model(spec)
    if config["precision"] == "int8-dynamic":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    elif config["precision"] == "int8":
        specs = model_inputs(spec)
        cal = (tuple(torch.from_numpy(b[s.name]) for s in specs) for b in calibration_batches(spec))
        quantize_torch(model, cal, quant_settings(lambda c, k: c.get(k, QUANT_KNOBS.get(k)), config))
    elif config["precision"] == "fp16":
        model = model.half()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell() / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    load_start = load_average()
    started = time.perf_counter()
    base = {"batch_size": args.batch, "threads": args.threads}
    trial = {"warmup_iters": 3, "min_iters": 10, "min_time_s": 1.0, "max_time_s": 2.0}
    block = {"warmup_iters": 3, "min_iters": 10, "min_time_s": 1.0, "max_time_s": 1.0, "cv_target": 0.001}

    configs: dict[tuple[str, str], dict[str, Any]] = {}
    for backend in ("onnxruntime-cpu", "torch-eager"):
        for name, knobs in VARIANTS:
            if knobs.get("calibration") in OFFERS[backend]:
                continue
            configs[(backend, name)] = {"backend": backend, **base, **knobs}

    first: dict[tuple[str, str], Any] = {}
    mrr: dict[tuple[str, str], float] = {}
    for key, config in configs.items():
        t0 = time.perf_counter()
        result = run_one(config, trial)
        first[key] = result
        took = time.perf_counter() - t0
        if result.ok:
            # The same outputs scored by the other task metric (the quantized model is cached now).
            again = run_one(config, block, MRR)
            mrr[key] = float(again.metrics["accuracy_task"]) if again.ok else float("nan")
            m = result.metrics
            print(
                f"{key[0]:16} {key[1]:30} cosine {m['accuracy_cosine']:.4f} margin "
                f"{m['accuracy_task_vs_fp32']:.3f} of fp32's, MRR {mrr[key]:.4f}, "
                f"{m['throughput_items_s']:.0f} items/s ({took:.0f} s with quantization)",
                flush=True,
            )
        else:
            print(f"{key[0]:16} {key[1]:30} {result.failure_class}: {result.failure_message}", flush=True)
    runnable = [k for k, r in first.items() if r.ok]

    rounds: dict[tuple[str, str], list[float]] = {k: [] for k in runnable}
    loads = []
    for r in range(args.rounds):
        order = runnable[r % len(runnable) :] + runnable[: r % len(runnable)]
        loads.append(load_average())
        for key in order:
            result = run_one(configs[key], block)
            rounds[key].append(float(result.metrics["throughput_items_s"]) if result.ok else float("nan"))
        print(f"round {r + 1}/{args.rounds} done (load {loads[-1]})", flush=True)

    def ratio(key: tuple[str, str]) -> float:
        ref = rounds[(key[0], "fp32")]
        return statistics.median(a / b for a, b in zip(rounds[key], ref, strict=True))

    sizes: dict[tuple[str, str], float] = {}
    for key in runnable:
        info = first[key].info
        sizes[key] = float(info["model_file_mb"]) if "model_file_mb" in info else torch_size_mb(configs[key])

    lines = [
        "# INT8 that production would ship: MiniLM on real sentences",
        "",
        "all-MiniLM-L6-v2 (64-token inputs), the builtin sentences (320 English sentences in 160 paraphrase "
        "pairs, tokenized with the model's tokenizer): calibration set 128 sentences, evaluation set 128 "
        "others (whole pairs, never in both). Batch "
        f"{args.batch}, {args.threads} threads. Produced by `python benchmarks/quantization.py "
        f"--rounds {args.rounds} --batch {args.batch} --threads {args.threads}` in "
        f"{(time.perf_counter() - started) / 60:.0f} min.",
        "",
        "## Machine",
        "",
        *machine_lines(load_start),
        f"- load average before each round: {'; '.join(loads)}",
        "",
        "## Results",
        "",
        "Accuracy on the evaluation set: worst-sample cosine of the embeddings to fp32's "
        "(`accuracy_cosine`); two task scores: paraphrase retrieval (`paraphrase_mrr`: mean reciprocal "
        "rank of each sentence's paraphrase among the other 127, by cosine), and how far each "
        "paraphrase stands out (`paraphrase_margin`: cosine to the paraphrase minus the highest cosine "
        "to any other sentence, averaged), given relative to fp32's as `accuracy_task_vs_fp32` reads "
        "it. Throughput: median over "
        f"{args.rounds} interleaved rounds (fresh worker per variant per round); vs fp32: the median of "
        "the per-round ratios to the same backend's fp32.",
        "",
        "| backend | variant | items/s | vs fp32 | model MB | worst cosine | margin vs fp32 | MRR |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in runnable:
        m = first[key].metrics
        lines.append(
            f"| {key[0]} | {key[1]} | {statistics.median(rounds[key]):.0f} | {ratio(key):.2f}x | "
            f"{sizes[key]:.1f} | {m['accuracy_cosine']:.4f} | {m['accuracy_task_vs_fp32']:.4f} | "
            f"{mrr[key]:.4f} |"
        )
    for key, result in first.items():
        if not result.ok:
            why = f"{result.failure_class}: {result.failure_message}"
            lines.append(f"| {key[0]} | {key[1]} | {why} | | | | | |")
    lines += ["", "Per round (items/s):", ""]
    lines += [f"- {k[0]} {k[1]}: " + ", ".join(f"{v:.0f}" for v in rounds[k]) for k in runnable]
    int8 = [k for k in runnable if k[1].startswith("int8")]

    def said(k: tuple[str, str]) -> str:
        m = first[k].metrics
        return (
            f"{k[0]} {k[1]}: {statistics.median(rounds[k]):.0f} items/s ({ratio(k):.2f}x its fp32), worst "
            f"cosine {m['accuracy_cosine']:.4f}, margin {m['accuracy_task_vs_fp32']:.3f} of fp32's, "
            f"MRR {mrr[k]:.4f}"
        )

    fastest = max(int8, key=lambda k: statistics.median(rounds[k]))
    truest = max(int8, key=lambda k: first[k].metrics["accuracy_cosine"])
    lines += ["", "## Which INT8 wins", ""]
    lines.append(f"- fastest INT8 (items/s): {said(fastest)}.")
    lines.append(f"- most faithful INT8 (worst cosine): {said(truest)}.")
    for backend in ("onnxruntime-cpu", "torch-eager"):
        dyn = (backend, "int8-dynamic")
        static = [k for k in int8 if k[0] == backend and k != dyn]
        if dyn not in first or not static:
            continue
        quick = max(static, key=lambda k: statistics.median(rounds[k]))
        per_round = statistics.median(a / b for a, b in zip(rounds[quick], rounds[dyn], strict=True))
        lines.append(
            f"- {backend}: the fastest static variant ({quick[1]}) runs at {per_round:.2f}x int8-dynamic "
            f"(median of per-round ratios), worst cosine {first[quick].metrics['accuracy_cosine']:.4f} "
            f"against {first[dyn].metrics['accuracy_cosine']:.4f}."
        )
    ok = [k for k in int8 if first[k].metrics["accuracy_cosine"] >= 0.98]
    if ok:
        best = max(ok, key=lambda k: statistics.median(rounds[k]))
        lines.append(f"- fastest INT8 whose worst cosine is at least 0.98: {said(best)}.")
    else:
        lines.append("- no INT8 variant keeps every evaluation sentence's cosine to fp32 at 0.98 or above.")
    lines += [
        "",
        "Raw figures: `docs/benchmarks/quantization.json` (every variant's first-trial metrics and its "
        "per-round throughputs).",
    ]
    raw = {
        f"{k[0]} / {k[1]}": {
            "config": configs[k],
            "first_trial": first[k].metrics if first[k].ok else {"failure": first[k].failure_message},
            "mrr": mrr.get(k),
            "rounds_items_s": rounds.get(k),
            "model_mb": sizes.get(k),
        }
        for k in configs
    }
    import json

    (Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "quantization.json").write_text(
        json.dumps({"loads": loads, "variants": raw}, indent=1) + "\n"
    )
    write_doc("quantization.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
