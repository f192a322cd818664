"""int8 on an x86 CPU without VNNI, run for real under an emulated CPU (qemu-x86_64 -cpu Haswell:
AVX2, no AVX-512, no VNNI; ONNX Runtime's dispatch reads the emulated cpuid, so it takes the
saturating u8 x s8 kernels such a machine runs). The runner's `reduce_range: auto` must see the
CPU and take 7-bit weights; the full-range model must show the saturation it avoids."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_spec_dict

from autotuner.models.int8_cpu import SATURATING, VNNI, int8_dot_product, reduce_range

QEMU = shutil.which("qemu-x86_64")
needs_qemu = pytest.mark.skipif(
    QEMU is None or platform.machine() != "x86_64",
    reason="needs qemu-x86_64 (Debian's qemu-user) on an x86_64 machine to emulate a CPU without VNNI",
)

CHILD = """
import json, sys
from autotuner.api import spec_from_dict
from autotuner.conformance import check_timed
from autotuner.execution.capabilities import probe
from autotuner.models.int8_cpu import int8_dot_product
from autotuner.runners.base import Device

spec = spec_from_dict(json.loads(sys.argv[1]))
caps = probe()
out = {"int8_dot": int8_dot_product()}
for rr in ("auto", False):
    config = {"backend": "onnxruntime-cpu", "precision": "int8-dynamic", "batch_size": 4,
              "threads": 1, "reduce_range": rr}
    problems, acc = check_timed(spec, config, caps, Device("cpu", (0,)))
    out[str(rr)] = {"problems": problems, "cosine": acc["accuracy_cosine"]}
print("RESULT " + json.dumps(out))
"""


@needs_qemu
def test_auto_takes_seven_bit_weights_where_int8_saturates(tmp_path: Path) -> None:
    spec = make_spec_dict()
    proc = subprocess.run(
        [QEMU, "-cpu", "Haswell", sys.executable, "-c", CHILD, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-2000:]
    out = json.loads(line.removeprefix("RESULT "))
    # (The probe and the export run in child interpreters, which qemu-user starts natively.)
    assert out["int8_dot"] == SATURATING
    assert out["auto"]["problems"] == [] and out["False"]["problems"] == []
    # 7-bit weights hold the same floor as int8-dynamic on a VNNI CPU (test_runner_conformance);
    # full-range weights on this CPU fall below it.
    assert out["auto"]["cosine"] >= 0.98, out
    assert out["False"]["cosine"] < 0.98, out


def test_the_probe_records_the_cpu_and_auto_follows_it(caps: dict) -> None:
    kind = int8_dot_product()
    assert kind in (VNNI, SATURATING, "other") and caps["int8_dot"] == kind
    assert reduce_range("auto", "onnxruntime-cpu") is (kind == SATURATING)
    assert reduce_range("auto", "onnxruntime-tensorrt") is False  # GPUs do not run those kernels
    assert reduce_range(True, "onnxruntime-cuda") is True and reduce_range(False, "onnxruntime-cpu") is False


def _weight_extent(path: Path) -> int:
    """The largest |value| among the int8 weights of an ONNX model."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    values = [numpy_helper.to_array(i) for i in model.graph.initializer]
    return max(int(np.abs(v.astype(np.int32)).max()) for v in values if v.dtype == np.int8 and v.size > 1)


@pytest.mark.parametrize("precision", ["int8-dynamic", "int8"])
def test_the_model_file_the_record_and_the_deploy_section_follow_the_knob(
    precision: str, caps: dict, tmp_path: Path
) -> None:
    import numpy as np

    from autotuner.api import spec_from_dict
    from autotuner.measure.worker import build
    from autotuner.runners.base import Device
    from autotuner.runners.registry import runner_for

    ids = np.random.default_rng(0).integers(0, 200, size=(32, 16), dtype=np.int64)
    np.savez(tmp_path / "data.npz", input_ids=ids)
    data = {"file": "data.npz", "calibration": 16, "evaluation": 16}
    spec = spec_from_dict({**make_spec_dict(data=data), "base_dir": str(tmp_path)})
    files = {}
    for rr in (True, False):
        config = {"backend": "onnxruntime-cpu", "precision": precision, "batch_size": 2, "threads": 1}
        config["reduce_range"] = rr
        runner = build(spec, config, Device("cpu", (0,)), caps)
        runner.setup()
        info = runner.trial_info()
        files[rr] = runner.model_file
        runner.teardown()
        assert info["reduce_range"] == f"reduce_range {str(rr).lower()}: as the config sets it"
        deploy = runner_for("onnxruntime-cpu").deploy_settings(config)["onnxruntime"]
        assert deploy["reduce_range"] == info["reduce_range"]
        quantizer = deploy["quantization"]
        if precision == "int8-dynamic":
            assert f"reduce_range={rr}" in quantizer
        else:
            assert quantizer["reduce_range"] is rr and info["quantization"]["reduce_range"] is rr
    assert files[True] != files[False] and "-rr" in files[True].name and "-rr" not in files[False].name
    # 7-bit weights lie in [-64, 64]; 8-bit ones reach past them.
    assert _weight_extent(files[True]) <= 64 < _weight_extent(files[False])
