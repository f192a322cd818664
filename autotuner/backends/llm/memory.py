"""The llm runner's memory model: the model's shape, and weights + KV cache + working memory in
bytes, known before anything is loaded (the precheck's predicted-oom)."""

from __future__ import annotations

import json
from typing import Any

from autotuner.backends.llm.config import value
from autotuner.errors import UsageError
from autotuner.models.builtins import TINY_LLAMA_DEFAULTS
from autotuner.spec.schema import Spec

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def llama_shape(spec: Spec) -> dict[str, int]:
    """The sizes the memory model needs: from a local HF directory's config.json, or tiny-llama's."""

    if spec.model.hf is not None:
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
    elem = DTYPE_BYTES[value(config, "precision")]
    head_dim = s["hidden"] // s["heads"]
    kv_per_token = 2 * s["layers"] * s["kv_heads"] * head_dim * elem
    page_size = int(value(config, "page_size"))
    page_bytes = page_size * kv_per_token
    budget = int(float(value(config, "kv_budget_mb")) * 2**20)
    pages = max(1, budget // page_bytes)
    h, kv_dim = s["hidden"], s["kv_heads"] * head_dim
    per_layer = h * (h + 2 * kv_dim) + h * h + 3 * h * s["intermediate"] + 2 * h
    params = 2 * s["vocab"] * h + s["layers"] * per_layer + h
    tokens = int(value(config, "max_batch_tokens"))
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


def device_bytes(config: dict[str, Any], caps: dict[str, Any]) -> int | None:
    if value(config, "device") == "cuda":
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
