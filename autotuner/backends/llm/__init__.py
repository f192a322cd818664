"""The llm backend: continuous batching over a paged KV cache (transformers).

- `config`: the knobs, declared once (page size, concurrency, batched tokens, attention, KV budget).
- `workload`: the spec's `workload` section and the requests it draws (the vllm runner reads it too).
- `memory`: the model's shape and the memory model (weights + KV cache + working memory).
- `reference`: the fp32 reference outputs, made once in a child process (`python -m` this module).
- `metrics`: TTFT, TPOT, ITL, e2e, goodput and page waste from token timestamps.
- `runner`: LlmRunner, the only module that starts the engine.
"""
