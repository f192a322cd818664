"""The model under test: built-in models, factories and ONNX files; its seeded inputs; and the
artifacts made from it once and cached by content hash (ONNX exports, fp32 reference outputs).

Runners and the worker both read these; nothing here knows about runners, trials or studies.
"""
