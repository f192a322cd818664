"""The formats `autotune export --format` writes: one entry each, read by the CLI (choices and
help) and by api.export (where the output goes, how it is written). Light: the writers import
their modules when called, so that `autotune --help` stays instant.

A new format: a writer `(spec, study, pick, target, storage_url, **options) -> Path | str` and one
entry in EXPORT_FORMATS (`options` names the keyword options it takes, e.g. k8s's --target-rps)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple


class ExportFormat(NamedTuple):
    help: str  # the --format help text
    write: Callable[[Any, Any, Any, Path, str], Path | str]  # returns the path written, or the text
    default: str | None  # the output path ("{study}" filled in); None: printed, nothing written
    what: str = ""  # how an error names the default output
    directory: bool = False  # the output is a directory (checked itself, not its parent)
    options: tuple[str, ...] = ()  # the keyword options (CLI flags) the writer takes besides


def _yaml(spec: Any, study: Any, pick: Any, target: Path, url: str) -> Path:
    from autotuner.report.export import best_config  # noqa: PLC0415 (keeps `autotune --help` light)

    return best_config(spec, study, pick, url).write(target)


def _vllm(spec: Any, study: Any, pick: Any, target: Path, url: str) -> str:
    from autotuner.report.export import vllm_serve  # noqa: PLC0415 (keeps `autotune --help` light)

    return vllm_serve(spec, pick.config)


def _triton(spec: Any, study: Any, pick: Any, target: Path, url: str) -> Path:
    from autotuner.report.triton import write_triton  # noqa: PLC0415 (keeps `autotune --help` light)

    return write_triton(spec, study, pick, target)


def _ort(spec: Any, study: Any, pick: Any, target: Path, url: str) -> Path:
    from autotuner.report.export import write_ort  # noqa: PLC0415 (keeps `autotune --help` light)

    return write_ort(spec, study, pick, target)


def _k8s(spec: Any, study: Any, pick: Any, target: Path, url: str, **options: Any) -> Path:
    from autotuner.report.k8s import write_k8s  # noqa: PLC0415 (keeps `autotune --help` light)

    return write_k8s(spec, study, pick, target, url, **options)


EXPORT_FORMATS: dict[str, ExportFormat] = {
    "yaml": ExportFormat("the best-config file", _yaml, "reports/{study}.best.yaml", "the best config"),
    "vllm": ExportFormat("print the `vllm serve` command", _vllm, None),
    "triton": ExportFormat(
        "a Triton model repository entry in -o DIR",
        _triton,
        "reports/{study}.triton",
        "the triton export",
        directory=True,
    ),
    "ort": ExportFormat(
        "ONNX Runtime session settings as JSON", _ort, "reports/{study}.ort.json", "the ort export"
    ),
    "k8s": ExportFormat(
        "a Kubernetes Deployment and Service for the chosen config",
        _k8s,
        "reports/{study}.k8s.yaml",
        "the k8s export",
        options=("target_rps", "image"),
    ),
}
