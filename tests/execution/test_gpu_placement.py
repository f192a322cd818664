"""GPU placement (issue 10): what a trial asks of Ray, how many run at once, the GPUs a worker is
shown, where capabilities are probed, and that race blocks never share a GPU.

Without a GPU the logic is tested on a real local Ray cluster given fake GPUs
(ray.init(num_gpus=4)): Ray schedules, assigns ids and reports them as it would for real GPUs; the
command runner's program only reports what it was shown. Tests that need CUDA skip without it.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import NO_LOAD_CHECK, make_spec_dict

from autotuner.api import run, spec_from_dict
from autotuner.errors import SpecError
from autotuner.execution.base import TrialRequest, trial_gpus, visible_gpus
from autotuner.execution.local import LocalExecutor
from autotuner.execution.ray_executor import (
    Node,
    cluster_nodes,
    cpus_per_gpu,
    merge_caps,
    slot_count,
    trial_options,
)
from autotuner.progress import Progress

QUIET = Progress(quiet=True)
# The command runner's program: sleeps, appends what it was shown to a record file, prints metrics.
PROGRAM = r"""
import json, os, random, sys, time
record, size, sleep_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
start = time.time()
time.sleep(sleep_s)
seen = os.environ.get("CUDA_VISIBLE_DEVICES")
with open(record, "a") as f:
    f.write(json.dumps({"size": size, "cvd": seen, "start": start, "end": time.time()}) + "\n")
n = len([v for v in seen.split(",") if v]) if seen is not None else -1
print(json.dumps({"throughput": 100.0 * size + random.random(), "gpus_seen": n}))
"""


def command_spec(tmp: Path, gpus: int | None, sleep_s: float = 0.0, **extra: Any) -> dict[str, Any]:
    (tmp / "program.py").write_text(PROGRAM)
    command: dict[str, Any] = {
        "argv": [sys.executable, "program.py", str(tmp / "record.jsonl"), "{size}", str(sleep_s)],
        "metrics": {"throughput_items_s": "throughput", "gpus_seen": "gpus_seen"},
    }
    if gpus is not None:
        command["resources"] = {"gpus": gpus}
    return {
        "name": "gpu",
        "model": {"external": "program"},
        "space": {"backend": "command", "size": [1, 2]},
        "metrics": {"gpus_seen": {"description": "GPUs in CUDA_VISIBLE_DEVICES"}},
        "objectives": [{"metric": "throughput_items_s", "direction": "maximize"}],
        "budget": {"trials": 2},
        "sampler": {"type": "grid"},
        "pick": {"rounds": 0},
        "measurement": {"max_foreign_load": NO_LOAD_CHECK, "trial_timeout_s": 120},
        "command": command,
        "base_dir": str(tmp),
        **extra,
    }


def records(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "record.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def cuda_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


needs_cuda = pytest.mark.skipif(cuda_count() == 0, reason="no CUDA device on this machine")


# ---- the pure computations -----------------------------------------------------------------------


def test_a_gpu_trial_asks_for_its_share_of_the_node_not_every_cpu() -> None:
    node = [Node("n", "ip", cpus=8, gpus=4)]
    share = cpus_per_gpu(node)
    assert share == 2
    assert trial_options(None, 1, per_trial=8, gpu_share=share) == {"num_cpus": 2, "num_gpus": 1}
    assert trial_options(None, 2, per_trial=8, gpu_share=share) == {"num_cpus": 4, "num_gpus": 2}
    # threads set in the config: those, GPU trial or not
    assert trial_options(3, 1, per_trial=8, gpu_share=share) == {"num_cpus": 3, "num_gpus": 1}
    # a CPU trial: the space's most threads (per_trial)
    assert trial_options(None, 0, per_trial=8, gpu_share=share) == {"num_cpus": 8, "num_gpus": 0}


def test_the_gpu_share_is_the_smallest_over_gpu_nodes_and_at_least_one() -> None:
    assert cpus_per_gpu([Node("a", "", 8, 4), Node("b", "", 64, 8), Node("c", "", 2, 0)]) == 2
    assert cpus_per_gpu([Node("a", "", 2, 8)]) == 1
    assert cpus_per_gpu([Node("a", "", 16, 0)]) == 1


def test_slots_are_what_the_cluster_runs_at_once() -> None:
    eight = [Node("n", "", 64, 8)]
    gpu_trial = trial_options(None, 1, per_trial=64, gpu_share=cpus_per_gpu(eight))
    assert gpu_trial == {"num_cpus": 8, "num_gpus": 1}
    assert slot_count(eight, [gpu_trial]) == 8  # was 64 // 64 + 8 = 9, with one running at a time
    tp = trial_options(None, 2, per_trial=64, gpu_share=8)
    assert slot_count(eight, [tp]) == 4
    cpu_trial = trial_options(None, 0, per_trial=4, gpu_share=8)
    assert slot_count([Node("c", "", 16, 0)], [cpu_trial]) == 4
    # mixed: GPU trials first, CPU trials on the CPUs they leave
    mixed = [Node("n", "", 12, 2)]
    assert slot_count(mixed, [trial_options(None, 1, 4, 6), cpu_trial]) == 2 + 0
    assert slot_count(mixed, [trial_options(2, 1, 4, 6), cpu_trial]) == 2 + 2
    # GPU trials on a cluster without GPUs are refused; the CPU ones still get their slots
    assert slot_count([Node("c", "", 8, 0)], [gpu_trial, cpu_trial]) == 2
    assert slot_count([Node("c", "", 1, 0)], [cpu_trial]) == 1  # never 0
    assert cluster_nodes([{"NodeID": "x", "Alive": False, "Resources": {"CPU": 4}}]) == []


def test_a_gpu_nodes_capabilities_replace_a_cpu_only_drivers(tmp_path: Path) -> None:
    from autotuner.backends.torch_runner import TorchRunner

    driver = {
        "cpu_model": "head",
        "cpu_cores": 4,
        "cuda_devices": 0,
        "gpus": [],
        "ort_providers": ["CPUExecutionProvider"],
    }
    node = {
        "cpu_model": "worker",
        "cuda_devices": 1,
        "gpus": ["NVIDIA H100"],
        "cuda_bf16": True,
        "gpu_memory_mb": 81559.0,
        "ort_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    }
    caps = merge_caps(driver, node, node_gpus=8)
    assert caps["cuda_devices"] == 8 and caps["gpus"] == ["NVIDIA H100"] and caps["cuda_bf16"] is True
    assert caps["gpu_memory_mb"] == 81559.0 and "CUDAExecutionProvider" in caps["ort_providers"]
    assert caps["cpu_model"] == "head" and caps["cpu_cores"] == 4  # the rest stays the driver's
    spec = spec_from_dict(make_spec_dict(space={"backend": "torch-eager", "device": ["cuda"]}))
    config = {"backend": "torch-eager", "device": "cuda", "precision": "bf16"}
    assert "no CUDA device" in (TorchRunner.check(spec, config, driver) or "")
    assert TorchRunner.check(spec, config, caps) is None
    # a node whose probe saw no CUDA (no torch, or Ray's GPUs declared by hand) claims none
    assert merge_caps(driver, {"cuda_devices": 0}, node_gpus=4)["cuda_devices"] == 0


# ---- the spec: command.resources.gpus ------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True, [1]])
def test_resources_gpus_must_be_a_whole_number_of_at_least_zero(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(SpecError) as e:
        spec_from_dict(command_spec(tmp_path, bad))
    assert "command.resources.gpus" in str(e.value)


def test_resources_takes_only_gpus(tmp_path: Path) -> None:
    d = command_spec(tmp_path, 1)
    d["command"]["resources"]["cpus"] = 4
    with pytest.raises(SpecError) as e:
        spec_from_dict(d)
    assert "command.resources.cpus" in str(e.value)


def test_the_gpus_a_config_holds(tmp_path: Path) -> None:
    cmd = {"backend": "command", "size": 1}
    assert trial_gpus(spec_from_dict(command_spec(tmp_path, 2)), cmd) == 2
    assert trial_gpus(spec_from_dict(command_spec(tmp_path, None)), cmd) == 0  # default
    spec = spec_from_dict(command_spec(tmp_path, 0))
    assert trial_gpus(spec, {"backend": "torch-eager", "device": "cuda"}) == 1
    assert trial_gpus(spec, {"backend": "torch-eager"}) == 0
    assert trial_gpus(spec, {"backend": "onnxruntime-cuda"}) == 1
    assert trial_gpus(spec, {"backend": "no-such-backend"}) == 0


# ---- the local executor --------------------------------------------------------------------------


def test_local_executor_gives_gpus_0_to_n_minus_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    spec = spec_from_dict(command_spec(tmp_path, 2))
    ex = LocalExecutor(spec, {"cpu_cores": 2, "cuda_devices": 2})
    try:
        config = {"backend": "command", "size": 1}
        assert ex.payload_for(config)["device"]["kind"] == "cuda"
        assert ex.payload_for(config)["device"]["cuda_index"] == 0
        assert ex.gpu_ids(2) == ["0", "1"]
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")
        assert ex.gpu_ids(2) == ["3", "5"]  # CUDA's 0 and 1 are the driver's first two
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
        res = ex.submit(TrialRequest(0, config)).result()
        assert res.ok, res.failure_message
        assert res.metrics["gpus_seen"] == 2 and records(tmp_path)[-1]["cvd"] == "0,1"
        assert "CUDA_VISIBLE_DEVICES" not in os.environ  # the driver's own environment is restored
    finally:
        ex.close()


def test_local_executor_refuses_more_gpus_than_the_machine_has(tmp_path: Path) -> None:
    ex = LocalExecutor(spec_from_dict(command_spec(tmp_path, 3)), {"cpu_cores": 2, "cuda_devices": 2})
    try:
        res = ex.submit(TrialRequest(0, {"backend": "command", "size": 1})).result()
        assert res.failure_class == "unsupported"
        assert res.failure_message == "the config holds 3 GPU(s); this machine has 2"
        assert not records(tmp_path)  # nothing was launched
    finally:
        ex.close()


def test_a_local_cpu_trial_keeps_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    ex = LocalExecutor(spec_from_dict(command_spec(tmp_path, 0)), {"cpu_cores": 2, "cuda_devices": 0})
    try:
        assert ex.submit(TrialRequest(0, {"backend": "command", "size": 1})).result().ok
        assert records(tmp_path)[-1]["cvd"] == "1"
    finally:
        ex.close()


def test_visible_gpus_restores_what_was_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    with visible_gpus(["4", 5]):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    with visible_gpus([]):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    with visible_gpus(None):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"


# ---- Ray: a real local cluster with fake GPUs ----------------------------------------------------


@pytest.fixture(scope="module")
def fake_gpus() -> Any:
    """A local Ray cluster of 8 CPUs and 4 (fake) GPUs, shared by the Ray tests of this module:
    an executor that finds Ray running uses that cluster and leaves it running."""
    ray = pytest.importorskip("ray", reason="pip install 'autotune[ray]'")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=8,
        num_gpus=4,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


def ray_executor(spec_dict: dict[str, Any], **caps: Any) -> Any:
    from autotuner.api import probe
    from autotuner.execution.ray_executor import RayExecutor

    return RayExecutor(spec_from_dict(spec_dict), {**probe(), **caps})


def test_ray_gpu_trial_gets_two_cpus_and_one_gpu_and_sees_that_gpu(fake_gpus: Any, tmp_path: Path) -> None:
    # A driver of 8 cores: a CPU trial would ask for all 8 (the space sets no threads).
    ex = ray_executor(command_spec(tmp_path, 1), cpu_cores=8)
    try:
        config = {"backend": "command", "size": 1}
        assert ex.per_trial == 8
        assert ex.options_for(config) == {"num_cpus": 2, "num_gpus": 1}
        assert ex.slots == 4  # four GPU trials at once, not one holding every CPU
        # the capabilities probe ran as a task holding one GPU, and says where
        assert ex.caps_note and ex.caps_note.startswith("capabilities of GPU node ")
        assert len(ex.caps["probed_on"]["gpu_ids"]) == 1
        for block_s in (None, 0.1):  # a search trial and a race block ask the same
            res = ex.submit(TrialRequest(0, config, meta={"block_s": block_s})).result()
            assert res.ok, res.failure_message
            assert res.info["ray_resources"] == {"CPU": 2.0, "GPU": 1.0}
            assert len(res.info["gpu_ids"]) == 1 and res.metrics["gpus_seen"] == 1
            assert records(tmp_path)[-1]["cvd"] == ",".join(res.info["gpu_ids"])
    finally:
        ex.close()


def test_ray_tensor_parallel_trial_holds_two_gpus(fake_gpus: Any, tmp_path: Path) -> None:
    ex = ray_executor(command_spec(tmp_path, 2))
    try:
        assert ex.slots == 2
        res = ex.submit(TrialRequest(0, {"backend": "command", "size": 1})).result()
        assert res.ok, res.failure_message
        assert res.info["ray_resources"] == {"CPU": 4.0, "GPU": 2.0}
        assert len(set(res.info["gpu_ids"])) == 2
        assert records(tmp_path)[-1]["cvd"] == ",".join(res.info["gpu_ids"])
    finally:
        ex.close()


def test_ray_cpu_trial_sees_no_gpu_and_too_many_gpus_are_refused(fake_gpus: Any, tmp_path: Path) -> None:
    ex = ray_executor(command_spec(tmp_path, 0))
    try:
        res = ex.submit(TrialRequest(0, {"backend": "command", "size": 1})).result()
        assert res.ok, res.failure_message
        assert res.info["ray_resources"].get("GPU", 0) == 0 and res.info["gpu_ids"] == []
        assert records(tmp_path)[-1]["cvd"] == ""  # hidden: it holds none of the node's GPUs
    finally:
        ex.close()
    ex = ray_executor(command_spec(tmp_path, 5))
    try:
        res = ex.submit(TrialRequest(0, {"backend": "command", "size": 1})).result()
        assert res.failure_class == "unsupported"
        assert "holds 5 GPU(s); no node of the Ray cluster has more than 4" in res.failure_message
    finally:
        ex.close()


def test_ray_run_side_by_side_trials_and_one_race_block_at_a_time(fake_gpus: Any, in_tmp: Path) -> None:
    """Search trials run side by side on the fake GPUs; the race re-measures one block at a time
    (choose waits for each block), so two contenders are never loaded on GPUs at once."""
    spec = command_spec(
        in_tmp,
        1,
        sleep_s=1.0,
        baseline={"size": 1},
        pick={"top_k": 2, "rounds": 2, "max_rounds": 2, "round_time_s": 0.1},
    )
    out = io.StringIO()
    run(spec_from_dict(spec), executor="ray", progress=Progress(out=out))
    said = out.getvalue()
    assert "capabilities of GPU node " in said, said
    trials = optuna.load_study(study_name="gpu", storage="sqlite:///studies/gpu.db").trials
    assert len(trials) == 2
    for t in trials:
        assert t.user_attrs["info"]["ray_resources"] == {"CPU": 2.0, "GPU": 1.0}
    rec = sorted(records(in_tmp), key=lambda r: r["start"])
    assert all(r["cvd"] and len(r["cvd"].split(",")) == 1 for r in rec)
    search, race = rec[:2], rec[2:]
    assert search[1]["start"] < search[0]["end"], "the two GPU trials did not run side by side"
    assert len(race) >= 4, said
    for a, b in zip(race, race[1:], strict=False):
        assert b["start"] >= a["end"], "two race blocks overlapped"


# ---- real GPUs -----------------------------------------------------------------------------------


@needs_cuda
def test_real_gpu_local_trial_sees_gpu_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autotuner.api import probe

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    caps = probe()
    assert caps["cuda_devices"] >= 1
    ex = LocalExecutor(spec_from_dict(command_spec(tmp_path, 1)), caps)
    try:
        res = ex.submit(TrialRequest(0, {"backend": "command", "size": 1})).result()
        assert res.ok and records(tmp_path)[-1]["cvd"] == "0"
    finally:
        ex.close()


@needs_cuda
def test_real_gpu_ray_probe_and_torch_cuda_trial(tmp_path: Path) -> None:
    """A real cluster detects the GPUs; the probe runs on a GPU node; a torch CUDA trial is
    measured on the GPU Ray assigned."""
    ray = pytest.importorskip("ray", reason="pip install 'autotune[ray]'")
    from autotuner.api import probe
    from autotuner.execution.ray_executor import RayExecutor

    if ray.is_initialized():
        ray.shutdown()
    spec = spec_from_dict(make_spec_dict(space={"backend": "torch-eager", "device": ["cuda"]}))
    ex = RayExecutor(spec, probe())
    try:
        assert ex.caps["cuda_devices"] == cuda_count() and ex.caps_note
        config = {"backend": "torch-eager", "device": "cuda", "precision": "fp32", "batch_size": 1}
        res = ex.submit(TrialRequest(0, config)).result()
        assert res.ok, res.failure_message
        assert res.info["ray_resources"]["GPU"] == 1.0 and len(res.info["gpu_ids"]) == 1
    finally:
        ex.close()
        if ray.is_initialized():
            ray.shutdown()


def test_a_gpu_nodes_own_facts_decide_its_trials_not_the_heads() -> None:
    """Issue 23 M6: flash-attn, the C compiler, the providers that load, the libraries and the
    cores come from the GPU node's probe, so a CPU-only head neither refuses nor admits for it."""
    from autotuner.backends.llm.runner import LlmRunner
    from autotuner.spec.loading import parse_spec

    driver = {
        "flash_attn": False,
        "cpu_cores": 2,
        "c_compiler": None,
        "ort_provider_errors": {},
        "libraries": {"onnxruntime": "1.32.0"},
        "cuda_devices": 0,
        "gpus": [],
    }
    node = {
        "flash_attn": True,
        "cpu_cores": 32,
        "c_compiler": "/usr/bin/cc",
        "libraries": {"onnxruntime-gpu": "1.31.1"},
        "cuda_devices": 1,
        "gpus": ["NVIDIA H100"],
        "cuda_bf16": True,
        "gpu_memory_mb": 81559.0,
        "torch_cuda": "12.8",
    }
    caps = merge_caps(driver, node, node_gpus=1)
    assert caps["flash_attn"] is True and caps["c_compiler"] == "/usr/bin/cc"
    assert caps["libraries"] == {"onnxruntime-gpu": "1.31.1"}
    spec = parse_spec(
        {
            "name": "m6",
            "model": {"builtin": "tiny-llama"},
            "space": {"backend": ["llm"]},
            "objectives": [{"metric": "output_tokens_s", "direction": "maximize"}],
        }
    )
    config = {
        "backend": "llm",
        "device": "cuda",
        "precision": "bf16",
        "attn_implementation": "flash_attention_2",
    }
    assert LlmRunner.check(spec, config, driver) is not None, "the head alone refuses it"
    assert LlmRunner.check(spec, config, caps) is None, "the GPU node's facts admit it"
