"""autotune against Olive's ONNX Runtime session tuning, on the same model, knobs and batch.

    python benchmarks/vs_olive.py [--olive /path/to/olive] [--rounds 8]

The model is the tiny transformer encoder (4 layers, hidden 256, seq 64, seeded weights) exported
to ONNX with its batch fixed at 8. Both tools search the same 32 session settings on CPU:
intra-op threads {1, 2} x inter-op threads {1, 2} x execution mode {sequential, parallel} x graph
optimization level {disable, basic, extended, all}:

- Olive: its OrtSessionParamsTuning pass run as a workflow with the sequential sampler (it
  measures every combination: a grid), ranked by its own latency evaluator;
- autotune: `autotune run` on a spec with that space (its defaults: covering design, TPE,
  refinement, the race).

Then the configs each tool picked and plain ONNX Runtime defaults are measured again by a third
party: this script, in fresh processes (one per measurement), interleaved over --rounds rounds
with the order rotated, each measurement 1 s of batch-8 runs after a warm-up. Both tools' wall
times are taken from start to end of their command. Olive runs from its own virtualenv (it pins
versions that autotune's does not): pass its `olive` executable with --olive.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _machine import load_average, machine_lines, write_doc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCH = 8
MODEL = {"builtin": "tiny-transformer", "options": {"layers": 4, "hidden": 256, "heads": 4, "seq_len": 64}}
LEVELS = {"disable": 0, "basic": 1, "extended": 2, "all": 99}
MODES = {"sequential": 0, "parallel": 1}

# One measurement: a fresh process builds a session with the given options, warms up, times 1 s.
MEASURE = r"""
import json, sys, time
import numpy as np
import onnxruntime as ort
path, opts = sys.argv[1], json.loads(sys.argv[2])
so = ort.SessionOptions()
if "intra" in opts: so.intra_op_num_threads = opts["intra"]
if "inter" in opts: so.inter_op_num_threads = opts["inter"]
if "mode" in opts: so.execution_mode = ort.ExecutionMode(opts["mode"])
if "level" in opts: so.graph_optimization_level = ort.GraphOptimizationLevel(opts["level"])
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
x = np.random.default_rng(0).integers(0, 1000, size=[8, 64], dtype=np.int64)
for _ in range(5): s.run(None, {i.name: x})
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < 1.0:
    s.run(None, {i.name: x}); n += 1
print(json.dumps({"items_s": 8 * n / (time.perf_counter() - t0)}))
"""


def export_model(work: Path) -> Path:
    """The tiny encoder as ONNX (autotune's cached export), its batch dimension fixed at 8."""
    from autotuner.api import spec_from_dict
    from autotuner.models.artifacts import onnx_path

    spec = spec_from_dict(
        {
            "name": "export",
            "model": MODEL,
            "space": {"backend": "onnxruntime-cpu"},
            "objectives": [{"metric": "throughput_items_s", "direction": "maximize"}],
        },
        "vs_olive",
    )
    src = onnx_path(spec, "fp32")
    out = work / "tiny_b8.onnx"
    subprocess.run(
        [sys.executable, "-m", "onnxruntime.tools.make_dynamic_shape_fixed", "--dim_param", "batch",
         "--dim_value", str(BATCH), str(src), str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


def run_autotune(work: Path, model: Path) -> tuple[dict[str, Any], float, str]:
    spec = {
        "name": "vs-olive",
        "model": {"onnx": str(model)},
        "inputs": [{"name": "input_ids", "shape": ["batch", 64], "dtype": "int64", "low": 0, "high": 1000}],
        "space": {
            "backend": "onnxruntime-cpu",
            "precision": "fp32",
            "batch_size": BATCH,
            "threads": [1, 2],
            "inter_op_threads": [1, 2],
            "execution_mode": ["sequential", "parallel"],
            "graph_optimization_level": ["disable", "basic", "extended", "all"],
        },
        "objectives": [{"metric": "throughput_items_s", "direction": "maximize"}],
        "budget": {"trials": 12},
        "measurement": {"warmup_iters": 2, "min_iters": 8, "min_time_s": 0.4, "max_time_s": 1.2},
        "pick": {"round_time_s": 0.4},
        "baseline": {"threads": 2, "inter_op_threads": 1, "execution_mode": "sequential",
                     "graph_optimization_level": "all"},
    }  # fmt: skip
    path = work / "vs_olive.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    started = time.monotonic()
    proc = subprocess.run(["autotune", "run", str(path)], cwd=work, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"autotune failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    best = yaml.safe_load((work / "reports" / "vs-olive.best.yaml").read_text())
    p = best["params"]
    opts = {
        "intra": p["threads"],
        "inter": p["inter_op_threads"],
        "mode": MODES[p["execution_mode"]],
        "level": LEVELS[p["graph_optimization_level"]],
    }
    return opts, wall, best["choice"]["reason"]


def olive_workflow(model: Path, out: Path) -> dict[str, Any]:
    """Olive's session tuning as a workflow: the OrtSessionParamsTuning pass over the 32 settings
    with the sequential (grid) sampler, ranked by Olive's own latency evaluator. (In olive-ai
    0.13 the `tune-session-params` command cannot be used here: it feeds a dummy input of shape
    (1, 1) named "input", and its list options fail validation.)"""

    def cat(values: list[int]) -> dict[str, Any]:
        return {"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": values}

    data = {
        "name": "d",
        "type": "DummyDataContainer",
        "load_dataset_config": {
            "type": "dummy_dataset",
            "input_shapes": [[BATCH, 64]],
            "input_names": ["input_ids"],
            "input_types": ["int64"],
            "max_samples": 32,
        },
    }
    latency = {
        "name": "latency",
        "type": "latency",
        "sub_types": [{"name": "avg", "priority": 1}],
        "data_config": "d",
    }
    return {
        "input_model": {"type": "ONNXModel", "model_path": str(model)},
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
            }
        },
        "data_configs": [data],
        "evaluators": {"lat": {"type": "OnnxEvaluator", "metrics": [latency]}},
        "passes": {
            "tune": {
                "type": "OrtSessionParamsTuning",
                "data_config": "d",
                "cpu_cores": 2,
                "intra_thread_num_list": cat([1, 2]),
                "inter_thread_num_list": cat([1, 2]),
                "execution_mode_list": cat([0, 1]),
                "opt_level_list": cat([0, 1, 2, 99]),
            }
        },
        "search_strategy": {"execution_order": "joint", "sampler": "sequential"},
        "evaluator": "lat",
        "host": "local_system",
        "target": "local_system",
        "output_dir": str(out),
        "log_severity_level": 3,
    }


def run_olive(work: Path, model: Path, olive: str) -> tuple[dict[str, Any], float]:
    out = work / "olive-out"
    config = work / "olive.json"
    config.write_text(json.dumps(olive_workflow(model, out), indent=1))
    env = {**os.environ, "OLIVE_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    proc = subprocess.run(
        [olive, "run", "--config", str(config), "--disable_telemetry"],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.monotonic() - started
    if proc.returncode != 0 or not (out / "model_config.json").exists():
        raise SystemExit(f"olive failed ({proc.returncode}): {proc.stdout[-1500:]} {proc.stderr[-1500:]}")
    so = json.loads((out / "model_config.json").read_text())["config"]["inference_settings"][
        "session_options"
    ]
    opts = {
        "intra": int(so["intra_op_num_threads"]),
        "inter": int(so["inter_op_num_threads"]),
        "mode": int(so["execution_mode"]),
        "level": int(so["graph_optimization_level"]),
    }
    return opts, wall


def recheck(model: Path, configs: dict[str, dict[str, Any]], rounds: int) -> dict[str, list[float]]:
    names = list(configs)
    got: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            out = subprocess.run(
                [sys.executable, "-c", MEASURE, str(model), json.dumps(configs[n])],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            got[n].append(json.loads(out.stdout.strip().splitlines()[-1])["items_s"])
        print(f"round {r + 1}: " + ", ".join(f"{n} {got[n][-1]:.0f}" for n in names), flush=True)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--olive", default="olive")
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    from autotuner.search.stats import mean_ci, paired_difference

    load0 = load_average()
    probe = "import olive, onnxruntime; print(olive.__version__, onnxruntime.__version__)"
    olive_python = str(Path(args.olive).with_name("python"))
    olive_version = subprocess.run([olive_python, "-c", probe], capture_output=True, text=True).stdout.split()
    with tempfile.TemporaryDirectory(prefix="autotune-vs-olive-") as d:
        work = Path(d)
        model = export_model(work)
        at_opts, at_wall, at_reason = run_autotune(work, model)
        print(f"autotune: {at_opts} in {at_wall:.1f} s ({at_reason})", flush=True)
        ol_opts, ol_wall = run_olive(work, model, args.olive)
        print(f"olive: {ol_opts} in {ol_wall:.1f} s", flush=True)
        configs = {"ort-defaults": {}, "autotune": at_opts, "olive": ol_opts}
        got = recheck(model, configs, args.rounds)
    rows = []
    for n, vals in got.items():
        m, lo, hi = mean_ci(vals, 0.95)
        _, dlo, dhi = paired_difference(vals, got["ort-defaults"], 0.95) if n != "ort-defaults" else (0, 0, 0)
        rows.append((n, m, lo, hi, statistics.median(vals), dlo, dhi))
    _, alo, ahi = paired_difference(got["autotune"], got["olive"], 0.95)
    lines = [
        "# autotune against Olive's session-parameter tuning",
        "",
        "Produced by `python benchmarks/vs_olive.py --olive OLIVE` (see its docstring). The tiny",
        f"transformer encoder (ONNX, batch fixed at {BATCH}), 32 ONNX Runtime session settings on CPU; each",
        "tool's pick and plain ONNX Runtime defaults re-measured in fresh processes, "
        f"{args.rounds} interleaved rounds of 1 s.",
        "",
        "## Machine",
        "",
        *machine_lines(load0),
        f"- olive-ai: {olive_version[0] if olive_version else '?'} (its own virtualenv, onnxruntime "
        f"{olive_version[1] if len(olive_version) > 1 else '?'})",
        "",
        "## Wall time of the tuning run",
        "",
        "| tool | wall s | picked |",
        "|---|---|---|",
        f"| autotune run (12 measurements + race) | {at_wall:.1f} | {at_opts} |",
        f"| olive run, OrtSessionParamsTuning (grid of 32) | {ol_wall:.1f} | {ol_opts} |",
        "",
        "## Re-check (items/s, fresh process per measurement)",
        "",
        "| config | mean | 95% CI | median | paired difference to defaults, 95% CI |",
        "|---|---|---|---|---|",
    ]
    for n, m, lo, hi, med, dlo, dhi in rows:
        diff = "-" if n == "ort-defaults" else f"{dlo:+.0f} .. {dhi:+.0f}"
        lines.append(f"| {n} | {m:.0f} | {lo:.0f} .. {hi:.0f} | {med:.0f} | {diff} |")
    lines += [
        "",
        f"autotune minus Olive, paired 95% CI: {alo:+.0f} .. {ahi:+.0f} items/s.",
        "",
        f"autotune's stated reason: {at_reason}",
    ]
    write_doc("vs_olive.md", lines)


if __name__ == "__main__":
    main()
