"""The onnxruntime backend: `config` (providers, optimization levels, the knob declarations),
`options` (the pure pieces: provider options, TensorRT engine caches, node placement) and
`runner` (OnnxRuntimeRunner, the only module that opens a session). `config` imports neither."""
