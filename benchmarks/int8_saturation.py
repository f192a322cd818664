"""int8 accuracy on a CPU without VNNI, with full-range and 7-bit weights (`reduce_range`).

    python benchmarks/int8_saturation.py [SPEC] [--cpu Haswell]

Builds the spec's int8-dynamic model and its static int8 (minmax, per channel) model twice each,
with 8-bit and with 7-bit weights, through autotune's own artifact cache (natively: quantizing
is numpy arithmetic), then reads each against the fp32 reference at the graph optimisation
levels basic, extended and all: once on this CPU and once under `qemu-x86_64 -cpu CPU` (Debian's
qemu-user), which shows ONNX Runtime an emulated cpuid (Haswell: AVX2, no AVX-512, no VNNI), so
its int8 kernels are the ones such a machine runs. Only accuracy is read under emulation (its
speed means nothing). Default spec: the sessions landscape's (benchmarks/landscapes/sessions.yaml).
Writes docs/benchmarks/int8_saturation.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import load_average, machine_lines, write_doc  # noqa: E402

HERE = Path(__file__).resolve().parent
LEVELS = ("basic", "extended", "all")


def build(spec_path: Path, folder: Path) -> list[str]:
    """The models and the reference into `folder`; the model names."""
    import numpy as np

    from autotuner.backends.onnxruntime.runner import OnnxRuntimeRunner
    from autotuner.models.artifacts import accuracy_inputs, onnx_path, reference_outputs
    from autotuner.models.quantization import ort_quantization
    from autotuner.spec.loading import read_spec

    spec = read_spec(spec_path)
    models = {"fp32": onnx_path(spec, "fp32")}
    for rr in (False, True):
        bits = "7-bit" if rr else "8-bit"
        for precision, label in (("int8-dynamic", "int8-dynamic"), ("int8", "int8 static")):
            if precision == "int8" and spec.data is None:
                continue
            # The file a trial of this config runs (the knobs' defaults: minmax, per channel).
            config = {"backend": "onnxruntime-cpu", "precision": precision, "reduce_range": rr}
            quant = ort_quantization(OnnxRuntimeRunner.knob, config)
            models[f"{label}, {bits}"] = onnx_path(spec, precision, quant)
    for i, source in enumerate(models.values()):
        shutil.copy(source, folder / f"m{i}.onnx")
    inputs = accuracy_inputs(spec)
    np.savez(folder / "io.npz", ref=reference_outputs(spec), **{f"in_{k}": v for k, v in inputs.items()})
    (folder / "names.json").write_text(json.dumps(list(models)))
    return list(models)


def read(folder: Path) -> dict[str, dict[str, float]]:
    """Every model's worst-sample cosine at each graph level, on the CPU this process sees."""
    import numpy as np
    import onnxruntime as ort

    from autotuner.measure.accuracy import compare
    from autotuner.models.int8_cpu import int8_dot_product

    z = np.load(folder / "io.npz")
    inputs = {k[3:]: z[k] for k in z.files if k.startswith("in_")}
    n = len(next(iter(inputs.values())))
    out: dict[str, dict[str, float]] = {"_cpu": {"int8_dot": int8_dot_product()}}  # type: ignore[dict-item]
    for i, name in enumerate(json.loads((folder / "names.json").read_text())):
        out[name] = {}
        for level in LEVELS:
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level.upper()}")
            s = ort.InferenceSession(str(folder / f"m{i}.onnx"), so, providers=["CPUExecutionProvider"])
            res = [s.run(None, {k: v[j : j + 16] for k, v in inputs.items()})[0] for j in range(0, n, 16)]
            out[name][level] = compare(np.concatenate(res), z["ref"])["accuracy_cosine"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("spec", nargs="?", type=Path, default=HERE / "landscapes" / "sessions.yaml")
    ap.add_argument("--cpu", default="Haswell", help="qemu's CPU model to emulate (default Haswell)")
    ap.add_argument("--read", type=Path, help=argparse.SUPPRESS)  # the child's part
    args = ap.parse_args()
    if args.read:
        print("RESULT " + json.dumps(read(args.read)))
        return
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        print("int8_saturation: needs qemu-x86_64 (apt-get install qemu-user)", file=sys.stderr)
        raise SystemExit(2)
    load_at_start = load_average()
    with tempfile.TemporaryDirectory(prefix="autotune-int8-") as tmp:
        folder = Path(tmp)
        names = build(args.spec, folder)
        runs = {}
        for label, prefix in (("this CPU", []), (f"emulated {args.cpu}", [qemu, "-cpu", args.cpu])):
            started = time.perf_counter()
            cmd = [*prefix, sys.executable, __file__, "--read", str(folder)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(proc.stderr[-2000:], file=sys.stderr)
                raise SystemExit(1)
            runs[label] = json.loads(line.removeprefix("RESULT "))
            print(f"{label}: read in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    heads = [f"{lb} ({runs[lb]['_cpu']['int8_dot']}), {v}" for lb in runs for v in LEVELS]
    lines = [
        "# int8 on a CPU without VNNI: full-range against 7-bit weights",
        "",
        f"`python benchmarks/int8_saturation.py {shown(args.spec)} --cpu {args.cpu}`: "
        "each model's worst-sample cosine against the fp32 reference on the spec's evaluation set, "
        "with ONNX Runtime's CPU provider at three graph optimisation levels; on this CPU and under "
        f"`qemu-x86_64 -cpu {args.cpu}` (ONNX Runtime reads the emulated cpuid and runs that CPU's "
        "int8 kernels). Static int8: minmax, per channel, uint8 activations.",
        "",
        "| model | " + " | ".join(heads) + " |",
        "|---|" + "---|" * (len(runs) * len(LEVELS)),
    ]
    for name in names:
        cells = [f"{runs[label][name][lv]:.4f}" for label in runs for lv in LEVELS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Where the kernels saturate (x86 without VNNI: VPMADDUBSW adds u8 x s8 pairs into 16 bits with",
        "saturation), full-range int8 bends wherever ONNX Runtime runs integer kernels: int8-dynamic",
        "(MatMulInteger) at every level, static int8 once the QDQ pairs are fused (extended, all;",
        "at basic DequantizeLinear feeds the fp32 MatMul). 7-bit weights cannot overflow a pair.",
        "autotune's `reduce_range: auto` (the default) takes 7-bit weights where `int8_dot` is",
        "saturating (tests/runners/test_int8_saturation.py runs a trial under the same emulation).",
        "",
        "## Machine",
        "",
        *machine_lines(load_at_start),
    ]
    print("\n".join(lines))
    write_doc("int8_saturation.md", lines)


def shown(path: Path) -> str:
    root = HERE.parent
    return str(path.resolve().relative_to(root)) if path.resolve().is_relative_to(root) else str(path)


if __name__ == "__main__":
    main()
