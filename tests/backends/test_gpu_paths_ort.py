"""The GPU paths of the ONNX Runtime and torch runners, checked without a GPU where they are pure
logic (provider options, TensorRT profiles and engine folders, node placement, nvidia-smi
parsing, refusals), and on a GPU where one exists (skipped with a reason otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import make_spec_dict

from autotuner.api import spec_from_dict
from autotuner.backends.onnxruntime import options as ortr
from autotuner.backends.onnxruntime.config import CPU, CUDA, TENSORRT
from autotuner.backends.onnxruntime.options import (
    claim_engine_dir,
    engine_folder_name,
    input_shapes,
    node_placement,
    output_shapes,
    process_memory_mb,
    profile_shapes,
    provider_options,
    publish_engine_dir,
    refusal_of,
)
from autotuner.backends.onnxruntime.runner import OnnxRuntimeRunner
from autotuner.backends.torch_runner import TorchRunner
from autotuner.errors import SpecError, UnsupportedConfig
from autotuner.runners.base import DEVICE_RESIDENT, Device

SPEC = spec_from_dict(make_spec_dict())
GPU_CAPS: dict[str, Any] = {
    "cpu_cores": 4,
    "cuda_devices": 1,
    "cuda_bf16": True,
    "ort_providers": [TENSORRT, CUDA, CPU],
    "libraries": {"onnxruntime-gpu": "1.22.0"},
}
SHAPES = {"input_ids": (4, 16), "attention_mask": (4, 16)}


# --- item 5: GPU memory from nvidia-smi, read defensively -------------------------------------


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([["123", "512"], ["456", "2048"]], 2048.0),
        ([["456", "2048 MiB"]], 2048.0),
        ([["456", "100"], ["456", "50"]], 150.0),  # the same process on two GPUs
        ([["456", "[N/A]"]], None),  # MIG
        ([["456", "[Insufficient Permissions]"]], None),  # containers
        ([["456", "100"], ["456", "[N/A]"]], None),  # part unreadable: no partial number
        ([["123", "512"]], None),  # not listed (another pid namespace)
        ([["456"]], None),
        ([], None),
        (None, None),  # no nvidia-smi
    ],
)
def test_process_memory_is_parsed_defensively(rows: Any, expected: float | None) -> None:
    assert process_memory_mb(rows, 456) == expected


# --- the pure provider options (items 6, 11, 12, 13, telemetry knobs) -----------------------


def test_cpu_registers_the_cpu_provider_alone() -> None:
    assert provider_options({"backend": "onnxruntime-cpu"}, 0, Path("x"), SHAPES) == [(CPU, {})]


def test_cuda_options_set_tf32_conv_search_and_cuda_graph_explicitly() -> None:
    [(name, opts)] = provider_options({"backend": "onnxruntime-cuda"}, 2, Path("x"), SHAPES)
    assert name == CUDA
    assert opts == {
        "device_id": "2",
        "use_tf32": "0",  # ORT's CUDA default is on: fp32 must mean fp32 unless tf32 is asked
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "enable_cuda_graph": "0",
    }
    config = {
        "backend": "onnxruntime-cuda",
        "tf32": True,
        "cudnn_conv_algo_search": "heuristic",
        "cuda_graph": True,
    }
    [(_, opts)] = provider_options(config, 0, Path("x"), SHAPES)
    assert (opts["use_tf32"], opts["cudnn_conv_algo_search"], opts["enable_cuda_graph"]) == (
        "1",
        "HEURISTIC",
        "1",
    )


def test_tensorrt_registers_cuda_under_it_with_a_fixed_profile_and_its_own_cache(tmp_path: Path) -> None:
    config = {"backend": "onnxruntime-tensorrt", "precision": "fp16", "tf32": True, "batch_size": 4}
    (trt_name, trt), (cuda_name, cuda) = provider_options(config, 1, tmp_path, SHAPES)
    assert (trt_name, cuda_name) == (TENSORRT, CUDA)
    profile = "input_ids:4x16,attention_mask:4x16"
    assert (
        trt["trt_profile_min_shapes"]
        == trt["trt_profile_opt_shapes"]
        == trt["trt_profile_max_shapes"]
        == profile
    )
    assert trt["trt_engine_cache_enable"] == "1" and trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_timing_cache_enable"] == "1" and trt["trt_timing_cache_path"] == str(tmp_path)
    assert trt["trt_fp16_enable"] == "1" and trt["trt_builder_optimization_level"] == "3"
    assert trt["trt_cuda_graph_enable"] == "0" and trt["device_id"] == "1"
    assert cuda["device_id"] == "1" and cuda["use_tf32"] == "1" and "enable_cuda_graph" not in cuda
    assert all(isinstance(v, str) for v in trt.values())
    config = {**config, "precision": "fp32", "trt_timing_cache": False, "trt_builder_optimization_level": 5}
    (_, trt), _ = provider_options(config, 0, tmp_path, SHAPES)
    assert trt["trt_fp16_enable"] == "0" and trt["trt_timing_cache_enable"] == "0"
    assert "trt_timing_cache_path" not in trt and trt["trt_builder_optimization_level"] == "5"


def test_profile_shapes_use_the_trials_batch_on_the_batch_axis() -> None:
    spec = spec_from_dict(
        make_spec_dict(
            model={"builtin": "minilm", "options": {"seq_len": 8}},
            space={"backend": ["onnxruntime-cpu"], "batch_size": [3]},
        )
    )
    shapes = input_shapes(spec, 3)
    assert shapes == {"input_ids": (3, 8), "attention_mask": (3, 8)}
    assert profile_shapes(shapes) == "input_ids:3x8,attention_mask:3x8"
    assert profile_shapes({"x": (8, 3, 224, 224)}) == "x:8x3x224x224"


# --- items 6 and 7: one engine folder per config, built aside, renamed into place ----------


def test_engine_folder_names_one_engine() -> None:
    base = {"backend": "onnxruntime-tensorrt", "precision": "fp32", "batch_size": 4, "tf32": True}
    name = engine_folder_name("ab" * 32, base, SHAPES, "1.22.0")
    assert name.startswith("abababababab-fp32-b4-")
    assert engine_folder_name("ab" * 32, {**base, "threads": 2}, SHAPES, "1.22.0") == name
    others = [
        engine_folder_name("cd" * 32, base, SHAPES, "1.22.0"),
        engine_folder_name("ab" * 32, {**base, "precision": "fp16"}, SHAPES, "1.22.0"),
        engine_folder_name("ab" * 32, {**base, "batch_size": 8}, {"input_ids": (8, 16)}, "1.22.0"),
        engine_folder_name("ab" * 32, base, {"input_ids": (4, 32)}, "1.22.0"),
        engine_folder_name("ab" * 32, {**base, "trt_builder_optimization_level": 5}, SHAPES, "1.22.0"),
        engine_folder_name("ab" * 32, base, SHAPES, "1.23.0"),
    ]
    assert len({name, *others}) == 1 + len(others)


def test_an_engine_folder_is_built_aside_with_its_parents_then_published(tmp_path: Path) -> None:
    final = tmp_path / "not" / "yet" / "there" / "engine-a"
    work = claim_engine_dir(final)
    assert work.is_dir() and work.parent == final.parent and work != final and not final.exists()
    (work / "model.engine").write_text("built")
    publish_engine_dir(work, final)
    assert (final / "model.engine").read_text() == "built" and not work.exists()
    assert claim_engine_dir(final) == final  # reused as it is


def test_the_second_trial_to_finish_an_engine_drops_its_copy(tmp_path: Path) -> None:
    final = tmp_path / "engine-b"
    first, second = claim_engine_dir(final), claim_engine_dir(final)
    assert first != second  # two trials never write into one folder
    (first / "e").write_text("first")
    (second / "e").write_text("second")
    publish_engine_dir(first, final)
    publish_engine_dir(second, final)
    assert (final / "e").read_text() == "first" and not second.exists()


def test_folders_left_by_dead_trials_are_removed(tmp_path: Path) -> None:
    final = tmp_path / "engine-c"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".engine-c.{int(dead.stdout)}.xyz.tmp"
    stale.mkdir()
    live = tmp_path / f".engine-c.{os.getpid()}.abc.tmp"
    live.mkdir()
    claim_engine_dir(final)
    assert not stale.exists() and live.exists()


# --- item 13: where the nodes ran; a CPU share is refused ------------------------------------


def _event(op: str, provider: str, out_type: str) -> dict[str, Any]:
    return {
        "cat": "Node",
        "name": f"/{op}_0_kernel_time",
        "args": {"op_name": op, "provider": provider, "output_type_shape": [{out_type: [4, 16, 64]}]},
    }


def test_node_placement_counts_providers_and_names_cpu_compute() -> None:
    events = [
        {"cat": "Session", "name": "model_run", "args": {}},
        {"cat": "Node", "name": "/MatMul_0_fence_before", "args": {}},
        _event("MatMul", CUDA, "float"),
        _event("TRTKernel_graph_main_0", TENSORRT, "float16"),
        _event("Shape", CPU, "int64"),  # shape arithmetic ORT keeps on the CPU on purpose
        _event("Gather", CPU, "int64"),
        _event("LayerNormalization", CPU, "float"),
    ]
    placed = node_placement(events)
    assert placed["by_provider"] == {CUDA: 1, TENSORRT: 1, CPU: 3}
    assert placed["cpu_compute"] == ["LayerNormalization"]
    assert node_placement([_event("Shape", CPU, "int64"), _event("Add", CUDA, "float")])["cpu_compute"] == []


def test_cuda_graph_refusals_from_ort_are_unsupported_not_errors() -> None:
    msg = "This session cannot use the CUDA Graph feature as requested by the user as all ..."
    reason = refusal_of(msg, TENSORRT)
    assert reason is not None and reason.startswith("cuda_graph")
    assert refusal_of("CUDA failure 2: out of memory", CUDA) is None


def test_output_shapes_for_cuda_graph_buffers_come_from_the_fed_inputs() -> None:
    inputs = [("input_ids", ["batch", 16])]
    assert output_shapes(inputs, [("output", ["batch", 16, 200])], {"input_ids": (4, 16)}) == {
        "output": (4, 16, 200)
    }
    with pytest.raises(UnsupportedConfig, match="cuda_graph needs every output's shape"):
        output_shapes(inputs, [("output", ["tokens", 200])], {"input_ids": (4, 16)})
    with pytest.raises(UnsupportedConfig):
        output_shapes(inputs, [("output", [None, 200])], {"input_ids": (4, 16)})


# --- check(): refusals with a reason (items 10, 11, 16, telemetry knobs) --------------------


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"backend": "onnxruntime-cuda", "execution_mode": "parallel"}, "execution_mode parallel"),
        ({"backend": "onnxruntime-tensorrt", "tf32": True, "execution_mode": "parallel"}, "sequentially"),
        ({"backend": "onnxruntime-cuda", "io_binding": False}, "io_binding: false"),
        ({"backend": "onnxruntime-cpu", "io_binding": True}, "io_binding applies to the CUDA"),
        ({"backend": "onnxruntime-cpu", "tf32": True}, "tf32 applies to the CUDA and TensorRT"),
        ({"backend": "onnxruntime-cpu", "cuda_graph": True}, "cuda_graph applies"),
        (
            {"backend": "onnxruntime-cpu", "cudnn_conv_algo_search": "heuristic"},
            "cudnn_conv_algo_search applies",
        ),
        ({"backend": "onnxruntime-cuda", "trt_builder_optimization_level": 5}, "applies to the TensorRT"),
        ({"backend": "onnxruntime-cuda", "trt_timing_cache": False}, "trt_timing_cache applies"),
        ({"backend": "onnxruntime-tensorrt"}, "give tf32: true"),
        ({"backend": "onnxruntime-tensorrt", "tf32": True, "trt_builder_optimization_level": 7}, "0 to 5"),
        ({"backend": "onnxruntime-cuda", "cudnn_conv_algo_search": "fast"}, "is not one of"),
        ({"backend": "onnxruntime-cuda", "tf32": "yes"}, "must be true or false"),
    ],
)
def test_check_refuses_what_cannot_apply(config: dict, needle: str) -> None:
    reason = OnnxRuntimeRunner.check(SPEC, config, GPU_CAPS)
    assert reason is not None and needle in reason, reason


@pytest.mark.parametrize(
    "config",
    [
        {"backend": "onnxruntime-cpu"},
        {"backend": "onnxruntime-cpu", "cudnn_conv_algo_search": "exhaustive", "trt_timing_cache": True},
        {"backend": "onnxruntime-cuda"},
        {"backend": "onnxruntime-cuda", "io_binding": True, "tf32": True, "cuda_graph": True},
        {"backend": "onnxruntime-cuda", "cudnn_conv_algo_search": "default"},
        {"backend": "onnxruntime-tensorrt", "tf32": True, "precision": "fp16", "cuda_graph": True},
        {"backend": "onnxruntime-tensorrt", "tf32": True, "trt_builder_optimization_level": 0},
    ],
)
def test_check_accepts_what_applies(config: dict) -> None:
    assert OnnxRuntimeRunner.check(SPEC, config, GPU_CAPS) is None


def test_torch_tf32_is_a_cuda_knob() -> None:
    assert (
        TorchRunner.check(SPEC, {"backend": "torch-eager", "device": "cuda", "tf32": True}, GPU_CAPS) is None
    )
    reason = TorchRunner.check(SPEC, {"backend": "torch-eager", "tf32": True}, GPU_CAPS)
    assert reason is not None and "tf32 applies to device cuda" in reason
    reason = TorchRunner.check(SPEC, {"backend": "torch-eager", "tf32": 1}, GPU_CAPS)
    assert reason is not None and "must be true or false" in reason


def test_the_new_knobs_load_in_a_spec_and_a_closed_set_is_checked_there() -> None:
    space = {
        "backend": ["onnxruntime-cuda", "torch-eager"],
        "tf32": [True, False],
        "cuda_graph": [True, False],
        "cudnn_conv_algo_search": ["exhaustive", "heuristic"],
    }
    spec_from_dict(make_spec_dict(space=space))
    spec_from_dict(
        make_spec_dict(space={"backend": ["onnxruntime-tensorrt"], "trt_builder_optimization_level": [0, 5]})
    )
    for name, bad in [
        ("cudnn_conv_algo_search", "fastest"),
        ("tf32", "yes"),
        ("cuda_graph", 1),
        ("trt_builder_optimization_level", 7),
        ("trt_timing_cache", "on"),
    ]:
        with pytest.raises(SpecError, match=name):
            spec_from_dict(make_spec_dict(space={**space, "backend": ["onnxruntime-tensorrt"], name: [bad]}))


# --- item 10: one transfer policy, said in the result; deploy carries every option -----------


def test_gpu_runners_state_the_transfer_policy() -> None:
    gpu, cpu = Device("cuda", (0,), 0), Device("cpu", (0,))
    assert OnnxRuntimeRunner(SPEC, {"backend": "onnxruntime-cuda"}, gpu).trial_info() == {
        "transfer_policy": DEVICE_RESIDENT
    }
    assert (
        TorchRunner(SPEC, {"backend": "torch-eager", "device": "cuda"}, gpu).transfer_policy
        == DEVICE_RESIDENT
    )
    assert OnnxRuntimeRunner(SPEC, {"backend": "onnxruntime-cpu"}, cpu).trial_info() == {}
    assert TorchRunner(SPEC, {"backend": "torch-eager"}, cpu).trial_info() == {}


def test_deploy_settings_carry_the_measured_options_and_state_the_fallbacks() -> None:
    config = {"backend": "onnxruntime-tensorrt", "precision": "fp16", "tf32": True, "cuda_graph": True}
    d = OnnxRuntimeRunner.deploy_settings(config)["onnxruntime"]
    assert [p["name"] for p in d["providers"]] == [TENSORRT, CUDA, CPU]
    trt = d["providers"][0]["options"]
    assert trt["trt_cuda_graph_enable"] == "1" and trt["trt_fp16_enable"] == "1"
    assert trt["trt_engine_cache_path"] == ortr.DEPLOY_CACHE
    assert d["providers"][1]["options"]["use_tf32"] == "1"
    assert d["io_binding"] is True and d["transfer_policy"] == DEVICE_RESIDENT and "trt_profile_shapes" in d
    d = OnnxRuntimeRunner.deploy_settings({"backend": "onnxruntime-cuda"})["onnxruntime"]
    assert [p["name"] for p in d["providers"]] == [CUDA, CPU]
    assert d["providers"][0]["options"]["use_tf32"] == "0"
    d = OnnxRuntimeRunner.deploy_settings({"backend": "onnxruntime-cpu"})["onnxruntime"]
    assert d["providers"] == [{"name": CPU, "options": {}}] and d["io_binding"] is False
    t = TorchRunner.deploy_settings({"backend": "torch-eager", "device": "cuda"})["torch"]
    assert t["tf32"] == {
        "torch.backends.cuda.matmul.allow_tf32": False,
        "torch.backends.cudnn.allow_tf32": False,
    }


def test_torch_sets_tf32_explicitly_in_setup() -> None:
    torch = pytest.importorskip("torch")
    runner = TorchRunner(SPEC, {"backend": "torch-eager", "threads": 1}, Device("cpu", (0,)))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    runner.setup()
    assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
    runner.teardown()


# --- on a GPU ----------------------------------------------------------------------------


def _ort_gpu(provider: str) -> bool:
    try:
        import onnxruntime as ort
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() and provider in ort.get_available_providers()


@pytest.mark.skipif(not _ort_gpu(CUDA), reason="no CUDA device with onnxruntime's CUDA provider here")
@pytest.mark.parametrize("extra", [{}, {"tf32": True}, {"cuda_graph": True}])
def test_ort_cuda_device_resident_trial(extra: dict, caps: dict) -> None:
    from autotuner.conformance import check_timed
    from autotuner.measure.worker import build

    config = {"backend": "onnxruntime-cuda", "precision": "fp32", "batch_size": 4, **extra}
    reason = OnnxRuntimeRunner.check(SPEC, config, caps)
    assert reason is None, reason
    problems, acc = check_timed(SPEC, config, caps, Device("cuda", (0,), 0))
    assert problems == [] and acc["accuracy_cosine"] >= 0.999
    runner = build(SPEC, config, Device("cuda", (0,), 0), caps)
    runner.setup()
    runner.prepare({k: v for k, v in _batch(4).items()})
    info = runner.trial_info()
    assert info["transfer_policy"] == DEVICE_RESIDENT and info["node_placement"]["cpu_compute"] == []
    runner.teardown()


@pytest.mark.skipif(not _ort_gpu(TENSORRT), reason="no CUDA device with onnxruntime's TensorRT provider here")
def test_ort_tensorrt_publishes_one_engine_folder_per_config(caps: dict) -> None:
    from autotuner.conformance import check_timed
    from autotuner.files import cache_dir

    config = {"backend": "onnxruntime-tensorrt", "precision": "fp32", "tf32": True, "batch_size": 2}
    reason = OnnxRuntimeRunner.check(SPEC, config, caps)
    if reason:
        pytest.skip(reason)
    problems, acc = check_timed(SPEC, config, caps, Device("cuda", (0,), 0))
    assert problems == [] and acc["accuracy_cosine"] >= 0.99
    root = cache_dir() / "tensorrt"
    folders = [p for p in root.iterdir() if "-fp32-b2-" in p.name]
    assert len(folders) == 1 and any(folders[0].iterdir())
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def _batch(n: int) -> dict[str, Any]:
    from autotuner.models.builtins import model_inputs
    from autotuner.models.inputs import make_inputs

    return make_inputs(model_inputs(SPEC), n, SPEC.data_seed)
