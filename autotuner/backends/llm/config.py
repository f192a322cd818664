"""The llm runner's knobs, declared once. Imports neither the runner nor torch."""

from __future__ import annotations

from typing import Any

from autotuner.runners.knobs import Knob, precisions
from autotuner.runners.knobs import value as knob_value

ATTENTION = ("sdpa", "eager", "flash_attention_2")
ON_CUDA = {"device": ("cuda",)}

KNOBS: dict[str, Knob] = {
    "precision": precisions("fp32", "bf16", "fp16"),
    "device": Knob("cpu", choices=("cpu", "cuda")),
    "page_size": Knob(16, exclusive="applies to LLM serving; the {runner} runner has no KV cache"),
    "max_batch_tokens": Knob(256),
    "attn_implementation": Knob("sdpa", choices=ATTENTION),
    "kv_budget_mb": Knob(16),
    "batch_size": Knob(8),  # concurrent requests
    # TF32 matmuls on CUDA (set explicitly either way); no effect on CPU.
    "tf32": Knob(False, kind=bool, applies_to=ON_CUDA, where="to device=cuda (a CUDA matmul mode)"),
    # The engine's CUDA graphs for the varlen and decode paths.
    "cuda_graph": Knob(
        False, kind=bool, applies_to=ON_CUDA, where="to device=cuda (it captures CUDA graphs)"
    ),
}


def value(config: dict[str, Any], name: str) -> Any:
    """A knob's value in a config, or its default (LlmRunner.knob, without the runner)."""
    return knob_value(KNOBS, config, name)
