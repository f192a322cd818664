"""The fp32 reference of an llm trial: next-token logits and greedy tokens on the first prompts,
made once per model, prompts and device in a child process (`python -m` this module) and cached
by content hash, so that no trial holds two models at once."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from autotuner.errors import AutotuneError
from autotuner.files import atomic_write, cache_dir
from autotuner.models.builtins import tiny_llama
from autotuner.models.identity import artifact_key
from autotuner.spec.loading import public_spec_dict
from autotuner.spec.schema import Spec
from autotuner.subprocesses import ChildFailed, run_module

REFERENCE_REQUESTS = 4
REFERENCE_TOKENS = 8


def load_causal_lm(spec: Spec) -> Any:
    """The fp32 causal LM: tiny-llama from its seed, or a local Hugging Face directory (offline)."""

    if spec.model.hf is None:
        return tiny_llama({**spec.model.options, "seed": spec.model_seed})
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 (heavy: transformers)

    return AutoModelForCausalLM.from_pretrained(str(spec.resolve(spec.model.hf)), dtype="float32").eval()


def generation_config(max_new: int) -> Any:
    """Greedy decoding of exactly max_new tokens (no end-of-sequence token stops it)."""
    from transformers import GenerationConfig  # noqa: PLC0415 (heavy: transformers)

    return GenerationConfig(max_new_tokens=max_new, do_sample=False, eos_token_id=-1, pad_token_id=0)


def in_order(outs: dict[str, Any]) -> list[list[int]]:
    """generate_batch's outputs (ids req_0, req_1, ...) as token lists in prompt order."""
    return [list(outs[k].generated_tokens) for k in sorted(outs, key=lambda k: int(k.rpartition("_")[2]))]


def reference(spec: Spec, reqs: list[Any], device: str) -> dict[str, Any]:
    """The fp32 model's next-token logits and greedy tokens on the first prompts, made once per
    model, prompts and device in a child process and cached by content hash (like the torch and
    ONNX references): trials only read it, and no trial holds two models at once."""

    prompts = [r.prompt for r in reqs[:REFERENCE_REQUESTS]]

    h = hashlib.sha256()
    h.update(artifact_key(spec).encode())  # the model's content (an HF folder's files), not its path
    h.update(json.dumps([prompts, REFERENCE_TOKENS, device]).encode())
    path = cache_dir() / "llm-reference" / f"{h.hexdigest()[:24]}.npz"
    if not path.exists():
        payload = {"spec": public_spec_dict(spec), "prompts": prompts, "device": device, "path": str(path)}
        try:
            run_module("autotuner.backends.llm.reference", payload)
        except ChildFailed as e:
            raise AutotuneError(
                f"preparing the fp32 reference failed (exit {e.code}): {e.last_line}"
            ) from None
    with np.load(path) as z:
        logits, tokens = z["logits"], z["tokens"]
    return {"logits": list(logits), "tokens": [[int(t) for t in row if t >= 0] for row in tokens]}


def _make_reference(spec: Spec, prompts: list[list[int]], device: str, path: str) -> None:
    """In the child: the fp32 model with sdpa (flash-attn refuses fp32) and strict fp32 matmuls."""
    import torch  # noqa: PLC0415 (heavy: torch)
    from transformers.generation.configuration_utils import ContinuousBatchingConfig  # noqa: PLC0415 (heavy: transformers)

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
        generation_config=generation_config(REFERENCE_TOKENS),
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
    rows = in_order(outs)
    tokens = np.full((len(rows), max(map(len, rows), default=0)), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    atomic_write(Path(path), lambda tmp: np.savez(tmp, logits=logits, tokens=tokens), ".npz")


if __name__ == "__main__":
    import json
    import sys

    from autotuner.watchdog import arm_from_env

    arm_from_env()  # end with the process that asked, whoever kills it
    from autotuner.spec.loading import parse_spec

    req = json.loads(sys.stdin.read())
    _make_reference(parse_spec(req["spec"]), req["prompts"], req["device"], req["path"])
