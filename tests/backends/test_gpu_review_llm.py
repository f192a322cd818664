"""The llm runner's decode path (second GPU review, H3): flash-attn 2's block-table decode takes
pages of a multiple of 256 tokens only, so any other page size runs the varlen path
(max_blocks_per_request=0), and the result says which path ran. The config goes through
transformers' own resolution on this CPU; the flash-attn run needs a CUDA device."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

pytest.importorskip("transformers", reason="pip install -e '.[minilm]' brings transformers")
import torch  # noqa: E402
from test_llm_runner import llm_spec  # noqa: E402

from autotuner.api import spec_from_dict  # noqa: E402
from autotuner.backends.llm.runner import LlmRunner, decode_path  # noqa: E402
from autotuner.runners.base import Device  # noqa: E402

SPEC = spec_from_dict(llm_spec())


def _runner(**config: Any) -> LlmRunner:
    full = {"backend": "llm", "device": "cuda", "batch_size": 8, "kv_budget_mb": 0.25, **config}
    return LlmRunner(SPEC, full, Device("cuda", (0,), 0))


@pytest.mark.parametrize(
    ("attn", "page_size", "path", "blocks"),
    [
        ("flash_attention_2", 16, "varlen", 0),
        ("flash_attention_2", 128, "varlen", 0),
        ("flash_attention_2", 256, "block-table", None),
        ("flash_attention_2", 512, "block-table", None),
        ("sdpa", 256, "varlen", 0),
        ("eager", 16, "varlen", 0),
    ],
)
def test_the_block_table_path_only_where_flash_attn_2_takes_the_page_size(
    attn: str, page_size: int, path: str, blocks: int | None
) -> None:
    assert decode_path(attn, page_size) == (path, blocks)


def test_page_size_16_with_flash_attention_2_turns_the_fast_path_off_in_transformers() -> None:
    """The config survives transformers' own resolution: 0 stays 0 (None would become 32 and
    call flash_attn_with_kvcache with 16-token pages, which flash-attn 2 refuses)."""
    from transformers.generation.continuous_batching.initialization import (
        resolve_continuous_batching_config,
    )

    from autotuner.backends.llm.reference import load_causal_lm

    model_config = load_causal_lm(SPEC).config
    model_config._attn_implementation = "flash_attention_2"
    runner = _runner(attn_implementation="flash_attention_2", precision="bf16", page_size=16)
    cb = runner._cb_config()
    assert cb.max_blocks_per_request == 0
    resolved = resolve_continuous_batching_config(model_config, cb, None, False, torch.device("cpu"))
    assert resolved.max_blocks_per_request == 0
    assert runner.trial_info() == {"decode_path": "varlen"}
    wide = _runner(attn_implementation="flash_attention_2", precision="bf16", page_size=256)
    assert wide._cb_config().max_blocks_per_request is None  # the library's default: the fast path
    assert wide.trial_info() == {"decode_path": "block-table"}


def test_a_cpu_run_records_its_decode_path_in_the_result() -> None:
    import os

    from autotuner.measure.worker import run_trial

    config = {"backend": "llm", "batch_size": 8, "kv_budget_mb": 0.25, "threads": 1, "page_size": 8}
    device = Device("cpu", tuple(sorted(os.sched_getaffinity(0)))[:1])
    result = run_trial(SPEC, config, device, {"cpu_cores": 2, "cuda_devices": 0})
    assert result.ok, result.failure_message
    assert result.info["decode_path"] == "varlen"


@pytest.mark.skipif(
    not (torch.cuda.is_available() and importlib.util.find_spec("flash_attn")),
    reason="needs a CUDA device and the flash-attn package",
)
def test_flash_attention_2_with_16_token_pages_serves_on_cuda() -> None:
    runner = _runner(attn_implementation="flash_attention_2", precision="bf16", page_size=16)
    m = runner.run_workload()
    assert m["output_tokens_s"] > 0 and runner.trial_info()["decode_path"] == "varlen"
    assert 0.0 < m["accuracy_max_logit_diff"] < 0.05
