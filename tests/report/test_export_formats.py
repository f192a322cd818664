"""`autotune export --format triton | ort` on a real study: the files, Triton's own schema, a real
ONNX Runtime session configured from the JSON; GPU and serving configs through the same writer."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from helpers import SMALL_MODEL, make_spec_dict, write_spec
from tritonclient.grpc import model_config_pb2 as mc

EXPORTS_DOC = Path(__file__).parents[2] / "docs" / "exports.md"
SEQ = SMALL_MODEL["options"]["seq_len"]
LABELS = 8  # the tiny transformer's classifier head (its default labels)
# The TensorRT accelerator keys Triton's onnxruntime_backend accepts (any other fails the load);
# the text format cannot tell, since parameters is a map of strings.
TRITON_TRT_KEYS = {
    "precision_mode",
    "max_workspace_size_bytes",
    "trt_engine_cache_enable",
    "trt_engine_cache_path",
    "trt_timing_cache_enable",
    "trt_timing_cache_path",
    "trt_builder_optimization_level",
    "trt_cuda_graph_enable",
    "trt_profile_min_shapes",
    "trt_profile_opt_shapes",
    "trt_profile_max_shapes",
}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autotuner.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse(text: str) -> Any:
    return text_format.Parse(text, mc.ModelConfig())


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A two-trial study of the int8 ONNX variant on onnxruntime-cpu; its folder and winner."""
    from autotuner.api import run

    d = tmp_path_factory.mktemp("export-formats")
    spec = write_spec(
        d,
        space={
            "backend": ["onnxruntime-cpu"],
            "precision": ["int8-dynamic"],
            "batch_size": [2, 4],
            "threads": [1],
        },
        constraints=[],
        budget={"trials": 2},
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        out = run(spec)
    assert out.pick is not None
    return d, dict(out.pick.config)


@pytest.fixture
def in_study(study: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.chdir(study[0])
    return study[1]


def spec_of(folder: Path) -> Any:
    from autotuner.api import load_spec

    return load_spec(folder / "spec.yaml")


def test_triton_repository_parses_with_tritons_schema_and_runs(in_study: dict[str, Any]) -> None:
    import onnxruntime as ort

    from autotuner.api import export
    from autotuner.models.artifacts import onnx_path

    folder = export("t", fmt="triton", output="repo")
    assert folder == Path("repo/t")
    text = (folder / "config.pbtxt").read_text()
    cfg = parse(text)
    batch = int(in_study["batch_size"])
    assert (cfg.name, cfg.backend, cfg.platform) == ("t", "onnxruntime", "onnxruntime_onnx")
    assert cfg.max_batch_size == batch  # the batch scenario: no batcher was tuned
    assert not cfg.HasField("dynamic_batching")
    [inp] = cfg.input
    assert (inp.name, inp.data_type, list(inp.dims)) == ("input_ids", mc.TYPE_INT64, [SEQ])
    [out] = cfg.output  # from the ONNX graph, batch dimension left out
    assert (out.name, out.data_type, list(out.dims)) == ("output", mc.TYPE_FP32, [LABELS])
    [group] = cfg.instance_group
    assert (group.count, group.kind, list(group.gpus)) == (1, mc.ModelInstanceGroup.KIND_CPU, [])
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params == {"intra_op_thread_count": "1", "inter_op_thread_count": "1", "execution_mode": "0"}
    assert cfg.optimization.graph.level == 0  # ORT_ENABLE_ALL
    assert not cfg.optimization.HasField("execution_accelerators")
    assert "# Providers: measured on CPUExecutionProvider; there is nothing to fall back to" in text

    model = folder / "1" / "model.onnx"
    assert sha(model) == sha(onnx_path(spec_of(Path.cwd()), "int8-dynamic"))  # the file the trials ran
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(0, 200, size=(batch, SEQ), dtype=np.int64)
    assert sess.run(None, {"input_ids": ids})[0].shape == (batch, LABELS)


@pytest.mark.parametrize(
    ("good", "bad", "needle"),
    [
        ("max_batch_size:", "max_batch_sise:", 'no field named "max_batch_sise"'),
        ("kind: KIND_CPU", "kind: KIND_CPUS", "KIND_CPUS"),
        ("data_type: TYPE_INT64", "data_type: TYPE_I64", "TYPE_I64"),
        ('name: "t"', "name: t", "t"),
    ],
)
def test_a_typo_in_the_config_fails_tritons_parse(
    in_study: dict[str, Any], good: str, bad: str, needle: str
) -> None:
    from autotuner.api import export

    text = (export("t", fmt="triton", output="typo") / "config.pbtxt").read_text()
    parse(text)
    assert good in text
    with pytest.raises(text_format.ParseError, match=re.escape(needle)):
        parse(text.replace(good, bad, 1))


def test_ort_json_configures_a_real_session(in_study: dict[str, Any]) -> None:
    import onnxruntime as ort

    from autotuner.api import export
    from autotuner.models.artifacts import onnx_path

    path = export("t", fmt="ort")
    assert path == Path("reports/t.ort.json")
    cfg = json.loads(path.read_text())
    assert cfg["providers"] == [{"name": "CPUExecutionProvider", "options": {}}]
    assert cfg["session_options"] == {
        "intra_op_num_threads": 1,
        "inter_op_num_threads": 1,
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "execution_mode": "ORT_SEQUENTIAL",
    }
    assert cfg["io_binding"] is False and cfg["batch_size"] == int(in_study["batch_size"])
    assert cfg["model"]["precision"] == "int8-dynamic" and "quantize_dynamic" in cfg["model"]["quantization"]
    model = path.parent / cfg["model"]["file"]
    assert sha(model) == cfg["model"]["sha256"] == sha(onnx_path(spec_of(Path.cwd()), "int8-dynamic"))

    # The manual's snippet (docs/exports.md), as written there.
    block = re.search(r"```python\n# load a `--format ort` export\n(.*?)```", EXPORTS_DOC.read_text(), re.S)
    assert block, "the loading snippet of docs/exports.md"
    scope: dict[str, Any] = {}
    exec(block.group(1), scope)  # noqa: S102 - our own documentation
    so, session = scope["so"], scope["session"]
    assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 1
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert session.get_providers()[0] == "CPUExecutionProvider"
    b = cfg["batch_size"]
    ids = np.random.default_rng(1).integers(0, 200, size=(b, SEQ), dtype=np.int64)
    got = session.run(None, {"input_ids": ids})[0]
    plain = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert np.allclose(got, plain.run(None, {"input_ids": ids})[0], atol=1e-5)
    assert got.shape == (b, LABELS)


def test_tensorrt_serving_config_states_its_accelerators(tmp_path: Path) -> None:
    """A GPU winner behind a batcher, written without a GPU: the same writer, parsed the same way."""
    from autotuner.report.export import OnnxDeployment
    from autotuner.report.triton import Batching, Tensor, config_pbtxt
    from autotuner.runners.registry import runner_for

    config = {
        "backend": "onnxruntime-tensorrt",
        "precision": "fp16",
        "batch_size": 8,
        "threads": 4,
        "tf32": True,
    }
    settings = runner_for("onnxruntime-tensorrt").deploy_settings(config)["onnxruntime"]
    dep = OnnxDeployment(tmp_path / "m.onnx", "fp32", settings)
    inputs = [Tensor("input_ids", "TYPE_INT64", [-1, SEQ])]
    outputs = [Tensor("output", "TYPE_FP32", [-1, LABELS])]
    batching = Batching(max_batch_size=16, batcher=True, queue_delay_us=2500, preferred=16, instances=2)
    text = config_pbtxt("t", dep, inputs, outputs, batching, ["header"])
    cfg = parse(text)
    assert cfg.max_batch_size == 16
    assert list(cfg.dynamic_batching.preferred_batch_size) == [16]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2500
    [group] = cfg.instance_group
    assert (group.count, group.kind, list(group.gpus)) == (2, mc.ModelInstanceGroup.KIND_GPU, [0])
    trt, cuda = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and cuda.name == "cuda"
    assert set(trt.parameters) <= TRITON_TRT_KEYS
    assert trt.parameters["precision_mode"] == "FP16"
    assert trt.parameters["trt_builder_optimization_level"] == "3"
    assert trt.parameters["trt_profile_min_shapes"] == f"input_ids:1x{SEQ}"
    assert trt.parameters["trt_profile_max_shapes"] == f"input_ids:16x{SEQ}"
    assert dict(cuda.parameters) == {"use_tf32": "1", "cudnn_conv_algo_search": "EXHAUSTIVE"}
    assert cfg.parameters["intra_op_thread_count"].string_value == "2"  # 4 threads over 2 instances
    assert "measured on TensorrtExecutionProvider with CUDAExecutionProvider, never falling back" in text
    assert "may fall back in this order: TensorrtExecutionProvider -> CUDAExecutionProvider -> CPU" in text


def test_serving_knobs_set_the_batcher() -> None:
    from autotuner.api import spec_from_dict
    from autotuner.report.triton import Tensor, batching_of
    from autotuner.spec.schema import Spec

    if "scenario" not in Spec.model_fields:
        pytest.skip("the serving scenario is not in this tree")

    spec = spec_from_dict(
        make_spec_dict(
            scenario="serving",
            serving={"rate_rps": 50},
            space={
                "backend": ["onnxruntime-cpu"],
                "max_batch_size": [16],
                "batch_timeout_ms": [2],
                "instances": [2],
            },
            constraints=[],
        )
    )
    config = {"backend": "onnxruntime-cpu", "max_batch_size": 16, "batch_timeout_ms": 2, "instances": 2}
    t = [Tensor("x", "TYPE_FP32", [-1, 4])]
    b = batching_of(spec, config, t, t)
    assert (b.max_batch_size, b.batcher, b.queue_delay_us) == (16, True, 2000)
    assert (b.preferred, b.instances) == (16, 2)


@pytest.fixture(scope="module")
def torch_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from autotuner.api import run

    d = tmp_path_factory.mktemp("export-torch")
    spec = write_spec(
        d,
        name="torchy",
        space={"backend": ["torch-eager"], "precision": ["fp32"], "batch_size": [2], "threads": [1]},
        constraints=[],
        budget={"trials": 1},
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        assert run(spec).pick is not None
    return d


@pytest.mark.parametrize("fmt", ["triton", "ort"])
def test_a_torch_winner_is_refused_in_one_line(torch_study: Path, fmt: str) -> None:
    out = cli("export", "torchy", "--format", fmt, cwd=torch_study)
    assert out.returncode == 2, out.stderr
    [line] = out.stderr.strip().splitlines()
    assert f"--format {fmt} needs an onnxruntime config; the chosen one runs torch-eager" in line
    assert not (torch_study / "reports" / "torchy.triton").exists()
    assert not (torch_study / "reports" / "torchy.ort.json").exists()


def test_an_unknown_format_is_one_line_exit_2(study: tuple[Path, dict[str, Any]]) -> None:
    out = cli("export", "t", "--format", "tensorflow", cwd=study[0])
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert "invalid choice: 'tensorflow'" in line and "triton" in line and "ort" in line


def test_the_cli_writes_the_triton_entry(study: tuple[Path, dict[str, Any]]) -> None:
    out = cli("export", "t", "--format", "triton", "-o", "models", cwd=study[0])
    assert out.returncode == 0, out.stderr
    assert (study[0] / "models" / "t" / "config.pbtxt").is_file()
    assert (study[0] / "models" / "t" / "1" / "model.onnx").is_file()


def test_ort_json_of_a_tensorrt_config_keeps_the_measured_profile(in_study: dict[str, Any]) -> None:
    """min = opt = max at the tuned batch, as the trial's engine was built; fallbacks stated."""
    from types import SimpleNamespace

    from autotuner.report.export import chosen_config, onnx_deployment, ort_config

    config = {"backend": "onnxruntime-tensorrt", "precision": "fp16", "batch_size": 4, "tf32": True}
    pick: Any = SimpleNamespace(config=config, winner=0)
    study: Any = SimpleNamespace(study_name="t", user_attrs={})  # a study with no stored spec
    spec = spec_of(Path.cwd())
    dep = onnx_deployment(spec, chosen_config(study, pick), "ort")
    assert dep.precision == "fp32"  # TensorRT builds fp16 from the fp32 graph
    cfg = ort_config(spec, study, pick, dep, "m.onnx")
    assert [p["name"] for p in cfg["providers"]] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    trt = cfg["providers"][0]["options"]
    assert trt["trt_fp16_enable"] == "1"
    for key in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
        assert trt[key] == f"input_ids:4x{SEQ}"
    assert cfg["io_binding"] is True and "conversion" not in cfg["model"]
    assert "may fall back in this order" in cfg["fallbacks"]


def test_a_model_without_a_leading_batch_dimension_is_not_batched_by_triton() -> None:
    from autotuner.api import spec_from_dict
    from autotuner.report.triton import Tensor, batching_of

    spec = spec_from_dict(make_spec_dict())
    fixed = [Tensor("x", "TYPE_FP32", [4, 16])]
    b = batching_of(spec, {"backend": "onnxruntime-cpu", "batch_size": 4}, fixed, fixed)
    assert (b.max_batch_size, b.batcher, b.instances) == (0, False, 1)
