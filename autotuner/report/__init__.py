"""What a study tells a person or a production system: the report data, figures and HTML, the
console summary and `show`, and the exports (best-config YAML, vLLM command line).
"""
