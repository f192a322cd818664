"""The runner contracts and their lookup.

- `base`: `Device`, the shared knobs and their defaults, and the two contracts: `TimedRunner`
  (the harness times one step it gets from the runner: torch, onnxruntime) and `WorkloadRunner`
  (the runner measures a whole workload itself: llm, command).
- `registry`: runners by name through the `autotune.runners` entry points, loaded lazily.
- `gpu_libraries`: the CUDA / cuDNN / TensorRT libraries of pip wheels loaded before ONNX
  Runtime's first GPU session, and a one-node load probe of each GPU provider.
- `binding`: a spec bound to the installed runners: parameter names, backends, built-in model
  names and each runner's own settings section, with field paths in every error.
"""
