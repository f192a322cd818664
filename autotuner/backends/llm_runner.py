"""LLM serving runner: continuous batching over a paged KV cache (transformers' generate_batch
machinery), with page size, concurrency, batched tokens, precision, attention and a KV budget in
bytes as knobs. The budget is fixed in bytes so that the number of pages follows from the page
size; a fixed number of pages would make page size meaningless.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from autotuner.backends.llm_workload import WorkloadSpec
from autotuner.errors import UsageError
from autotuner.runners.base import WorkloadRunner, common_check, host_peak_rss_mb
from autotuner.spec.schema import Spec

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
ATTENTION = ("sdpa", "eager", "flash_attention_2")
REFERENCE_REQUESTS = 4
REFERENCE_TOKENS = 8
WARMUP_REQUESTS = 2  # through the same manager before timing: CUDA/cuBLAS initialisation, not counted
WARMUP_TOKENS = 4


def llama_shape(spec: Spec) -> dict[str, int]:
    """The sizes the memory model needs: from a local HF directory's config.json, or tiny-llama's."""
    from autotuner.models.builtins import TINY_LLAMA_DEFAULTS

    if spec.model.hf is not None:
        import json

        try:
            c = json.loads((spec.resolve(spec.model.hf) / "config.json").read_text())
            heads = int(c["num_attention_heads"])
            return {
                "vocab": int(c["vocab_size"]),
                "hidden": int(c["hidden_size"]),
                "layers": int(c["num_hidden_layers"]),
                "heads": heads,
                "kv_heads": int(c.get("num_key_value_heads", heads)),
                "intermediate": int(c.get("intermediate_size", 4 * int(c["hidden_size"]))),
            }
        except (OSError, KeyError, ValueError) as e:
            raise UsageError(f"model.hf: cannot read {spec.model.hf}/config.json: {e}") from None
    o = {**TINY_LLAMA_DEFAULTS, **spec.model.options}
    return {
        "vocab": int(o["vocab"]),
        "hidden": int(o["hidden"]),
        "layers": int(o["layers"]),
        "heads": int(o["heads"]),
        "kv_heads": int(o["kv_heads"]),
        "intermediate": int(o["intermediate"]),
    }


def memory_model(spec: Spec, config: dict[str, Any]) -> dict[str, int]:
    """Weights + KV cache + working memory, in bytes, before anything is loaded.

    KV bytes per token = 2 (K and V) x layers x kv_heads x head_dim x bytes per element; a page
    holds page_size tokens of every layer; the budget holds floor(budget / page bytes) pages.
    """
    s = llama_shape(spec)
    elem = DTYPE_BYTES[LlmRunner.value(config, "precision")]
    head_dim = s["hidden"] // s["heads"]
    kv_per_token = 2 * s["layers"] * s["kv_heads"] * head_dim * elem
    page_size = int(LlmRunner.value(config, "page_size"))
    page_bytes = page_size * kv_per_token
    budget = int(float(LlmRunner.value(config, "kv_budget_mb")) * 2**20)
    pages = max(1, budget // page_bytes)
    h, kv_dim = s["hidden"], s["kv_heads"] * head_dim
    per_layer = h * (h + 2 * kv_dim) + h * h + 3 * h * s["intermediate"] + 2 * h
    params = 2 * s["vocab"] * h + s["layers"] * per_layer + h
    tokens = int(LlmRunner.value(config, "max_batch_tokens"))
    working = (
        tokens * (4 * h + s["intermediate"]) * elem + tokens * s["vocab"] * 4
    )  # activations + fp32 logits
    return {
        "kv_per_token": kv_per_token,
        "page_bytes": page_bytes,
        "pages": pages,
        "kv_bytes": pages * page_bytes,
        # The engine keeps two reserved ("trash") pages beside the budget's pages.
        "kv_allocated_bytes": (pages + 2) * page_bytes,
        "weights_bytes": params * elem,
        "working_bytes": working,
        "total_bytes": (pages + 2) * page_bytes + params * elem + working,
    }


class LlmRunner(WorkloadRunner):
    name = "llm"
    backends = ("llm",)
    knobs: ClassVar[dict[str, Any]] = {
        "device": "cpu",
        "page_size": 16,
        "max_batch_tokens": 256,
        "attn_implementation": "sdpa",
        "kv_budget_mb": 16,
        "batch_size": 8,  # concurrent requests
        "tf32": False,  # TF32 matmuls on CUDA (set explicitly either way); no effect on CPU
        "cuda_graph": False,  # the engine's CUDA graphs for the varlen and decode paths
    }
    exclusive_knobs: ClassVar[dict[str, str]] = {
        "page_size": "applies to LLM serving; the {runner} runner has no KV cache"
    }
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "bf16", "fp16")
    choices: ClassVar[dict[str, tuple[Any, ...]]] = {
        "device": ("cpu", "cuda"),
        "attn_implementation": ATTENTION,
        "tf32": (False, True),
        "cuda_graph": (False, True),
    }
    switches: ClassVar[tuple[str, ...]] = ("tf32", "cuda_graph")  # true or false
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
        for name in cls.switches:
            if not isinstance(cls.value(config, name), bool):
                return f"{name} is true or false, not {cls.value(config, name)!r}"
        device = cls.value(config, "device")
        attn = cls.value(config, "attn_implementation")
        if attn not in ATTENTION:
            return f"attn_implementation {attn!r} is not one of {', '.join(ATTENTION)}"
        if device == "cuda" and not caps.get("cuda_devices"):
            return "device=cuda but torch sees no CUDA device on this machine"
        if attn == "flash_attention_2":
            if device != "cuda":
                return "flash_attention_2 reads the paged cache on CUDA only"
            if cls.value(config, "precision") == "fp32":
                return "flash_attention_2 runs in fp16 or bf16 only; use sdpa or eager for fp32"
            if not caps.get("flash_attn"):
                return "flash_attention_2 needs the flash-attn package (pip install flash-attn)"
        if cls.value(config, "cuda_graph") and device != "cuda":
            return "cuda_graph captures CUDA graphs; it needs device=cuda"
        if cls.value(config, "tf32") and device != "cuda":
            return "tf32 is a CUDA matmul mode; it needs device=cuda"
        if cls.value(config, "precision") == "fp16" and device != "cuda":
            return "fp16 generation on CPU is not offered; use bf16 or fp32"
        if int(cls.value(config, "page_size")) < 4:
            return "page_size must be at least 4 tokens"
        return None

    @classmethod
    def predict_memory(
        cls, spec: Spec, config: dict[str, Any], caps: dict[str, Any]
    ) -> tuple[int, int] | None:
        """(predicted bytes, bytes the device has) for the predicted-oom check."""
        limit = _device_bytes(config, caps)
        return (memory_model(spec, config)["total_bytes"], limit) if limit else None

    def setup(self) -> None:
        import torch

        if self.value(self.config, "threads"):
            torch.set_num_threads(int(self.config["threads"]))
        self.torch = torch
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
            self.value(self.config, "precision")
        ]
        self.dev = (
            torch.device("cuda", 0) if self.value(self.config, "device") == "cuda" else torch.device("cpu")
        )
        if self.dev.type == "cuda":  # explicit either way, so that a library default does not decide
            tf32 = bool(self.value(self.config, "tf32"))
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        model = load_causal_lm(self.spec).to(self.dtype).to(self.dev)
        self.attn = self.value(self.config, "attn_implementation")
        model.set_attn_implementation(self.attn)
        self.model = model

    def _cb_config(self) -> Any:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        mm = memory_model(self.spec, self.config)
        self.decode_path, max_blocks = decode_path(
            str(self.value(self.config, "attn_implementation")), int(self.value(self.config, "page_size"))
        )
        return ContinuousBatchingConfig(
            max_blocks_per_request=max_blocks,
            page_size=int(self.value(self.config, "page_size")),
            num_blocks=mm["pages"],
            max_batch_tokens=int(self.value(self.config, "max_batch_tokens")),
            max_requests_per_batch=int(self.value(self.config, "batch_size")),
            allow_block_sharing=False,
            use_cuda_graph=bool(self.value(self.config, "cuda_graph")),
            use_async_batching=False,
            auto_switch_to_flash=False,  # measure the attention the config names
            seed=self.spec.data_seed,
        )

    @staticmethod
    def _generation_config(max_new: int) -> Any:
        from transformers import GenerationConfig

        return GenerationConfig(max_new_tokens=max_new, do_sample=False, eos_token_id=-1, pad_token_id=0)

    def run_workload(self) -> dict[str, float]:
        import gc
        import logging

        from autotuner.backends.llm_workload import requests

        logging.getLogger("ContinuousBatchingLogger").setLevel(logging.CRITICAL)
        reqs = requests(self.spec, self.settings, llama_shape(self.spec)["vocab"])
        precision = self.value(self.config, "precision")
        on_cuda = self.value(self.config, "device") == "cuda"
        # The fp32 reference is made (or read from the cache) in a child process before this
        # trial loads anything: it never shares the device with this trial's weights or KV cache.
        exact = precision == "fp32" and not (on_cuda and self.value(self.config, "tf32"))
        ref = None if exact else reference(self.spec, reqs, "cuda" if on_cuda else "cpu")
        started = time.perf_counter()
        self.setup()
        manager = self.model.init_continuous_batching(
            generation_config=self._generation_config(max(r.output_len for r in reqs)),
            continuous_batching_config=self._cb_config(),
        )
        preemptions = _count_offloads()
        if self.value(self.config, "cuda_graph"):
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
            int(self.value(self.config, "page_size")),
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
        for x, y in zip(ref["tokens"], _in_order(outs), strict=True):
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
            "dtype": cls.value(config, "precision"),
            "tf32": bool(cls.value(config, "tf32")),
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


def load_causal_lm(spec: Spec) -> Any:
    """The fp32 causal LM: tiny-llama from its seed, or a local Hugging Face directory (offline)."""
    from autotuner.models.builtins import tiny_llama

    if spec.model.hf is None:
        return tiny_llama({**spec.model.options, "seed": spec.model_seed})
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(spec.resolve(spec.model.hf)), dtype="float32").eval()


def serving_metrics(outs: list[Any], reqs: list[Any], page_size: int, w: WorkloadSpec) -> dict[str, float]:
    """TTFT, TPOT, ITL, e2e, throughput, goodput, page waste and concurrency from token timestamps."""
    ttft, tpot, itl, e2e, spans = [], [], [], [], []
    allocated = used = generated = 0
    for out, req in zip(outs, reqs, strict=True):
        ts = list(out.timestamps or [])
        if not ts:
            continue
        first, last = (ts[0] - out.created_time) * 1e3, (ts[-1] - out.created_time) * 1e3
        ttft.append(first)
        e2e.append(last)
        if len(ts) > 1:
            tpot.append((last - first) / (len(ts) - 1))
            itl.extend(np.diff(ts) * 1e3)
        spans.append((ts[0], ts[-1]))
        n = len(req.prompt) + len(out.generated_tokens)
        allocated += math.ceil(n / page_size) * page_size
        used += n
        generated += len(out.generated_tokens)
    begin = min(o.created_time for o in outs)
    end = max((o.timestamps or [o.created_time])[-1] for o in outs)
    wall = max(end - begin, 1e-9)
    good = sum(
        1
        for i, t in enumerate(ttft)
        if (w.slo_ttft_ms is None or t <= w.slo_ttft_ms)
        and (w.slo_tpot_ms is None or i >= len(tpot) or tpot[i] <= w.slo_tpot_ms)
    )

    def pct(xs: list[float], q: float) -> float:
        return float(np.percentile(xs, q)) if xs else math.nan

    return {
        "ttft_p50_ms": pct(ttft, 50),
        "ttft_p95_ms": pct(ttft, 95),
        "tpot_p50_ms": pct(tpot, 50),
        "tpot_p95_ms": pct(tpot, 95),
        "itl_p50_ms": pct(itl, 50),
        "e2e_p50_ms": pct(e2e, 50),
        "e2e_p95_ms": pct(e2e, 95),
        "output_tokens_s": generated / wall,
        "requests_s": len(outs) / wall,
        "goodput_requests_s": good / wall,
        "page_waste_pct": 100.0 * (allocated - used) / allocated if allocated else math.nan,
        "concurrency_reached": float(_max_overlap(spans)),
    }


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


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


def _in_order(outs: dict[str, Any]) -> list[list[int]]:
    """generate_batch's outputs (ids req_0, req_1, ...) as token lists in prompt order."""
    return [list(outs[k].generated_tokens) for k in sorted(outs, key=lambda k: int(k.rpartition("_")[2]))]


def reference(spec: Spec, reqs: list[Any], device: str) -> dict[str, Any]:
    """The fp32 model's next-token logits and greedy tokens on the first prompts, made once per
    model, prompts and device in a child process and cached by content hash (like the torch and
    ONNX references): trials only read it, and no trial holds two models at once."""
    import hashlib
    import json

    from autotuner.files import cache_dir

    prompts = [r.prompt for r in reqs[:REFERENCE_REQUESTS]]
    from autotuner.models.identity import artifact_key

    h = hashlib.sha256()
    h.update(artifact_key(spec).encode())  # the model's content (an HF folder's files), not its path
    h.update(json.dumps([prompts, REFERENCE_TOKENS, device]).encode())
    path = cache_dir() / "llm-reference" / f"{h.hexdigest()[:24]}.npz"
    if not path.exists():
        from autotuner.errors import AutotuneError
        from autotuner.spec.loading import public_spec_dict
        from autotuner.subprocesses import ChildFailed, run_module

        payload = {"spec": public_spec_dict(spec), "prompts": prompts, "device": device, "path": str(path)}
        try:
            run_module("autotuner.backends.llm_runner", payload)
        except ChildFailed as e:
            raise AutotuneError(
                f"preparing the fp32 reference failed (exit {e.code}): {e.last_line}"
            ) from None
    with np.load(path) as z:
        logits, tokens = z["logits"], z["tokens"]
    return {"logits": list(logits), "tokens": [[int(t) for t in row if t >= 0] for row in tokens]}


def _make_reference(spec: Spec, prompts: list[list[int]], device: str, path: str) -> None:
    """In the child: the fp32 model with sdpa (flash-attn refuses fp32) and strict fp32 matmuls."""
    import torch
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from autotuner.files import atomic_write

    dev = torch.device(device, 0) if device == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model = load_causal_lm(spec).to(dev)
    model.set_attn_implementation("sdpa")
    with torch.inference_mode():
        logits = np.stack(
            [model(torch.tensor([p], device=dev)).logits[0, -1].float().cpu().numpy() for p in prompts]
        )
    page = 16
    outs = model.generate_batch(
        prompts,
        generation_config=LlmRunner._generation_config(REFERENCE_TOKENS),
        continuous_batching_config=ContinuousBatchingConfig(
            page_size=page,
            num_blocks=sum(math.ceil((len(p) + REFERENCE_TOKENS) / page) for p in prompts) + 2,
            max_batch_tokens=sum(len(p) for p in prompts) + len(prompts),
            max_requests_per_batch=len(prompts),
            allow_block_sharing=False,
            use_cuda_graph=False,
            use_async_batching=False,
            auto_switch_to_flash=False,
            seed=spec.data_seed,
        ),
        warmup=False,
    )
    rows = _in_order(outs)
    tokens = np.full((len(rows), max(map(len, rows), default=0)), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    atomic_write(Path(path), lambda tmp: np.savez(tmp, logits=logits, tokens=tokens), ".npz")


def _count_offloads() -> Callable[[], int]:
    """Count requests the engine evicts to make room (its offloading manager), as preemptions."""
    from transformers.generation.continuous_batching import offloading_manager as om

    counter = {"n": 0}
    original = om.OffloadingManager.offload_requests

    def counting(self: Any) -> bool:
        before = len(self.scheduler.starved_requests)
        ok = original(self)
        counter["n"] += max(0, before - len(self.scheduler.starved_requests))
        return ok

    om.OffloadingManager.offload_requests = counting  # the worker process runs one trial
    return lambda: counter["n"]


def _device_bytes(config: dict[str, Any], caps: dict[str, Any]) -> int | None:
    if LlmRunner.value(config, "device") == "cuda":
        mb = caps.get("gpu_memory_mb")
        return int(mb * 2**20) if mb else None
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


__all__ = ["LlmRunner", "memory_model", "serving_metrics"]


if __name__ == "__main__":
    import json
    import sys

    from autotuner.watchdog import arm_from_env

    arm_from_env()  # end with the process that asked, whoever kills it
    from autotuner.spec.loading import parse_spec

    req = json.loads(sys.stdin.read())
    _make_reference(parse_spec(req["spec"]), req["prompts"], req["device"], req["path"])
