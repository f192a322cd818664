"""LLM serving runner: continuous batching over a paged KV cache (transformers' generate_batch
machinery), with page size, concurrency, batched tokens, precision, attention and a KV budget in
bytes as knobs (declared in `config`). The budget is fixed in bytes so that the number of pages
follows from the page size; a fixed number of pages would make page size meaningless. The
memory model, the fp32 reference and the serving metrics are modules of their own beside this.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from autotuner.backends.llm.config import KNOBS
from autotuner.backends.llm.memory import device_bytes, llama_shape, memory_model
from autotuner.backends.llm.metrics import serving_metrics
from autotuner.backends.llm.reference import (
    REFERENCE_REQUESTS,
    REFERENCE_TOKENS,
    generation_config,
    in_order,
    load_causal_lm,
    reference,
)
from autotuner.backends.llm.workload import WorkloadSpec, requests
from autotuner.runners.base import WorkloadRunner, common_check, host_peak_rss_mb
from autotuner.runners.knobs import Knob
from autotuner.spec.schema import Spec

WARMUP_REQUESTS = 2  # through the same manager before timing: CUDA/cuBLAS initialisation, not counted
WARMUP_TOKENS = 4


class LlmRunner(WorkloadRunner):
    name = "llm"
    backends = ("llm",)
    knobs: ClassVar[dict[str, Knob]] = KNOBS  # declared in config.py
    settings_key = "workload"
    Settings = WorkloadSpec
    settings: WorkloadSpec

    @classmethod
    def check(cls, spec: Spec, config: dict[str, Any], caps: dict[str, Any]) -> str | None:
        reason = common_check(cls, config, caps)
        if reason:
            return reason
        if spec.model.builtin != "tiny-llama" and spec.model.hf is None:
            return "the llm backend serves model.builtin tiny-llama or a local directory in model.hf"
        device = cls.knob(config, "device")
        attn = cls.knob(config, "attn_implementation")
        if device == "cuda" and not caps.get("cuda_devices"):
            return "device=cuda but torch sees no CUDA device on this machine"
        if attn == "flash_attention_2":
            if device != "cuda":
                return "flash_attention_2 reads the paged cache on CUDA only"
            if cls.knob(config, "precision") == "fp32":
                return "flash_attention_2 runs in fp16 or bf16 only; use sdpa or eager for fp32"
            if not caps.get("flash_attn"):
                return "flash_attention_2 needs the flash-attn package (pip install flash-attn)"
        if cls.knob(config, "precision") == "fp16" and device != "cuda":
            return "fp16 generation on CPU is not offered; use bf16 or fp32"
        if int(cls.knob(config, "page_size")) < 4:
            return "page_size must be at least 4 tokens"
        return None

    @classmethod
    def predict_memory(
        cls, spec: Spec, config: dict[str, Any], caps: dict[str, Any]
    ) -> tuple[int, int] | None:
        """(predicted bytes, bytes the device has) for the predicted-oom check."""
        limit = device_bytes(config, caps)
        return (memory_model(spec, config)["total_bytes"], limit) if limit else None

    def setup(self) -> None:
        import torch  # noqa: PLC0415 (heavy: torch)

        if self.knob(self.config, "threads"):
            torch.set_num_threads(int(self.config["threads"]))
        self.torch = torch
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
            self.knob(self.config, "precision")
        ]
        self.dev = (
            torch.device("cuda", 0) if self.knob(self.config, "device") == "cuda" else torch.device("cpu")
        )
        if self.dev.type == "cuda":  # explicit either way, so that a library default does not decide
            tf32 = bool(self.knob(self.config, "tf32"))
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        model = load_causal_lm(self.spec).to(self.dtype).to(self.dev)
        self.attn = self.knob(self.config, "attn_implementation")
        model.set_attn_implementation(self.attn)
        self.model = model

    def _cb_config(self) -> Any:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig  # noqa: PLC0415 (heavy: transformers)

        mm = memory_model(self.spec, self.config)
        self.decode_path, max_blocks = decode_path(
            str(self.knob(self.config, "attn_implementation")), int(self.knob(self.config, "page_size"))
        )
        return ContinuousBatchingConfig(
            max_blocks_per_request=max_blocks,
            page_size=int(self.knob(self.config, "page_size")),
            num_blocks=mm["pages"],
            max_batch_tokens=int(self.knob(self.config, "max_batch_tokens")),
            max_requests_per_batch=int(self.knob(self.config, "batch_size")),
            allow_block_sharing=False,
            use_cuda_graph=bool(self.knob(self.config, "cuda_graph")),
            use_async_batching=False,
            auto_switch_to_flash=False,  # measure the attention the config names
            seed=self.spec.data_seed,
        )

    _generation_config = staticmethod(generation_config)

    def run_workload(self) -> dict[str, float]:
        logging.getLogger("ContinuousBatchingLogger").setLevel(logging.CRITICAL)
        reqs = requests(self.spec, self.settings, llama_shape(self.spec)["vocab"])
        precision = self.knob(self.config, "precision")
        on_cuda = self.knob(self.config, "device") == "cuda"
        # The fp32 reference is made (or read from the cache) in a child process before this
        # trial loads anything: it never shares the device with this trial's weights or KV cache.
        exact = precision == "fp32" and not (on_cuda and self.knob(self.config, "tf32"))
        ref = None if exact else reference(self.spec, reqs, "cuda" if on_cuda else "cpu")
        started = time.perf_counter()
        self.setup()
        manager = self.model.init_continuous_batching(
            generation_config=self._generation_config(max(r.output_len for r in reqs)),
            continuous_batching_config=self._cb_config(),
        )
        preemptions = _count_offloads()
        if self.knob(self.config, "cuda_graph"):
            manager.warmup()  # graph capture is setup, not serving
        peak = _PeakSampler(manager)
        manager.start()
        try:
            warmup_s = _warm_up(manager, reqs, self.spec.measurement.trial_timeout_s)
            setup_s = time.perf_counter() - started
            peak.reset()  # the warm-up requests have finished and returned their pages
            offloads_before = preemptions()
            with self.timed():  # power and energy over serving only
                results = self._serve(manager, reqs)
            cache = manager.batch_processor.cache if manager.batch_processor is not None else None
            kv_bytes = int(cache.cache_tensor.numel()) if cache is not None else 0
            pages = int(cache.num_blocks) if cache is not None else 0
            del cache  # a reference kept here would keep the KV cache alive through the accuracy step
        finally:
            manager.stop(block=True)
        n_preempted = preemptions() - offloads_before
        peak_share = peak.peak
        del manager, peak
        self._restore_attention()
        metrics = serving_metrics(
            [results[f"r{i}"] for i in range(len(reqs))],
            reqs,
            int(self.knob(self.config, "page_size")),
            self.settings,
        )
        mm = memory_model(self.spec, self.config)
        metrics.update(
            setup_s=setup_s,
            warmup_s=warmup_s,
            kv_cache_mb=kv_bytes / 2**20,
            kv_predicted_mb=mm["kv_allocated_bytes"] / 2**20,
            predicted_memory_mb=mm["total_bytes"] / 2**20,
            kv_pages=float(pages),
            peak_pages_used=float(round(peak_share * pages)),
            preemptions=float(n_preempted),
            host_rss_mb=host_peak_rss_mb(),
        )
        if self.dev.type == "cuda":
            # peak_memory_mb is the NVML device figure, as for every GPU runner (the worker sets
            # it); torch's allocated peak (no context, no allocator reserve) is kept apart, and
            # stands in only where NVML reads nothing (the window's probe is off).
            metrics["torch_allocated_mb"] = self.torch.cuda.max_memory_allocated(self.dev) / 2**20
            if getattr(self.window, "why_off", "no probe"):
                metrics["peak_memory_mb"] = metrics["torch_allocated_mb"]
        else:
            metrics["peak_memory_mb"] = metrics["host_rss_mb"]
        gc.collect()
        if self.dev.type == "cuda":
            self.torch.cuda.empty_cache()
        if ref is None:
            metrics.update(accuracy_token_agreement=1.0, accuracy_max_logit_diff=0.0)
        else:
            metrics.update(self._accuracy(reqs, ref))
        return metrics

    def _serve(self, manager: Any, reqs: list[Any]) -> dict[str, Any]:
        """Submit the workload at its arrival times; the finished outputs by request id."""
        t0 = time.perf_counter()
        for i, r in enumerate(reqs):
            delay = r.arrival_s - (time.perf_counter() - t0)
            if delay > 0:
                time.sleep(delay)
            manager.add_request(
                r.prompt, request_id=f"r{i}", max_new_tokens=r.output_len, record_timestamps=True
            )
        return _collect(manager, {f"r{i}" for i in range(len(reqs))}, self.spec.measurement.trial_timeout_s)

    def trial_info(self) -> dict[str, Any]:
        path = getattr(self, "decode_path", None)
        return {"decode_path": path} if path else {}

    def _restore_attention(self) -> None:
        """The plain (uncached) forward needs the attention the model was loaded with, not the
        paged variant the engine may have switched it to ("paged|eager" for eager)."""
        if self.model.config._attn_implementation != self.attn:
            self.model.set_attn_implementation(self.attn)

    def _accuracy(self, reqs: list[Any], ref: dict[str, Any]) -> dict[str, float]:
        """Greedy tokens and next-token logits against the fp32 reference on the same prompts."""
        torch = self.torch
        prompts = [r.prompt for r in reqs[:REFERENCE_REQUESTS]]
        diff = 0.0
        with torch.inference_mode():
            for p, a in zip(prompts, ref["logits"], strict=True):
                b = self.model(torch.tensor([p], device=self.dev)).logits[0, -1].float().cpu().numpy()
                diff = max(diff, float(np.abs(a - b).max()))
        outs = self.model.generate_batch(
            prompts,
            generation_config=self._generation_config(REFERENCE_TOKENS),
            continuous_batching_config=self._cb_config(),
            warmup=False,
        )
        self._restore_attention()
        agree = total = 0
        for x, y in zip(ref["tokens"], in_order(outs), strict=True):
            agree += sum(int(u == v) for u, v in zip(x, y, strict=False))
            total += max(len(x), len(y))
        return {
            "accuracy_token_agreement": agree / total if total else math.nan,
            "accuracy_max_logit_diff": diff,
        }

    @classmethod
    def deploy_settings(cls, config: dict[str, Any]) -> dict[str, Any]:
        keys = (
            "page_size",
            "batch_size",
            "max_batch_tokens",
            "attn_implementation",
            "kv_budget_mb",
        )
        batching = {k: config[k] for k in keys if k in config}
        if "cuda_graph" in config:
            batching["use_cuda_graph"] = config["cuda_graph"]  # transformers' name for it
        return {
            "continuous_batching": batching,
            "dtype": cls.knob(config, "precision"),
            "tf32": bool(cls.knob(config, "tf32")),
        }


# flash-attn 2's paged KV cache (flash_attn_with_kvcache with a block table) takes pages whose
# size is a multiple of this ("Paged KV cache block size must be divisible by 256").
FLASH_PAGED_BLOCK = 256


def decode_path(attn: str, page_size: int) -> tuple[str, int | None]:
    """The decode path a config runs, and the max_blocks_per_request that chooses it: the block
    table fast path (None: the library's default) only for flash_attention_2 with a page size
    flash-attn 2 accepts, else 0 (the varlen path, as transformers resolves it for sdpa/eager)."""
    if attn == "flash_attention_2" and page_size % FLASH_PAGED_BLOCK == 0:
        return "block-table", None
    return "varlen", 0


class _PeakSampler:
    """The largest share of the KV cache held by requests, read in the generation thread at each
    engine step (when the step's pages have been allocated): no polling thread competes with
    the batching loop for the GIL, and no step is missed between two samples."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.peak = 0.0
        step = manager._generation_step  # called once per batch by the generation loop

        def sampled() -> None:
            bp = manager.batch_processor
            if bp is not None:
                try:
                    self.peak = max(self.peak, 1.0 - float(bp.cache.compute_free_capacity()))
                except (AttributeError, RuntimeError, ZeroDivisionError):
                    pass
            step()

        manager._generation_step = sampled

    def reset(self) -> None:
        self.peak = 0.0


def _collect(manager: Any, ids: set[str], timeout_s: float) -> dict[str, Any]:
    """Wait for the finished outputs of these requests."""
    results: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while len(results) < len(ids):
        out = manager.get_result(timeout=1)
        if out is not None and out.is_finished() and out.request_id in ids:
            if out.error:
                raise RuntimeError(f"request {out.request_id}: {out.error}")
            results[out.request_id] = out
        elif out is None and not manager.is_running():
            raise RuntimeError("the generation thread stopped before the workload finished")
        if time.monotonic() > deadline:
            raise TimeoutError("the workload did not finish before trial_timeout_s")
    return results


def _warm_up(manager: Any, reqs: list[Any], timeout_s: float) -> float:
    """A few short requests through the manager before timing (first-use CUDA / cuBLAS set-up,
    allocator growth), so that the first timed requests' TTFT does not carry it. Their outputs
    are read and dropped: no metric counts them. Returns the seconds it took."""
    t0 = time.perf_counter()
    ids = set()
    for i, r in enumerate(reqs[:WARMUP_REQUESTS]):
        rid = f"warmup{i}"
        manager.add_request(r.prompt, request_id=rid, max_new_tokens=min(WARMUP_TOKENS, r.output_len))
        ids.add(rid)
    _collect(manager, ids, timeout_s)
    return time.perf_counter() - t0


def _count_offloads() -> Callable[[], int]:
    """Count requests the engine evicts to make room (its offloading manager), as preemptions."""
    from transformers.generation.continuous_batching import offloading_manager as om  # noqa: PLC0415 (heavy: transformers)

    counter = {"n": 0}
    original = om.OffloadingManager.offload_requests

    def counting(self: Any) -> bool:
        before = len(self.scheduler.starved_requests)
        ok = original(self)
        counter["n"] += max(0, before - len(self.scheduler.starved_requests))
        return ok

    om.OffloadingManager.offload_requests = counting  # the worker process runs one trial
    return lambda: counter["n"]
