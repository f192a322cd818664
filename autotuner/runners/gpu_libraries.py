"""The GPU libraries ONNX Runtime loads, made loadable and probed.

With CUDA, cuDNN and TensorRT from pip wheels (what the CUDA build of torch brings, and the
`gpu` extra), nothing puts their folders on the loader path: onnxruntime's CUDA provider then
fails on libcudnn.so.9 and ONNX Runtime builds a CPU session with a warning. `load_ort_libraries`
loads them first (onnxruntime.preload_dlls, >= 1.21; before that, torch imported first), and
the TensorRT libraries from the `tensorrt_libs` folder of the tensorrt wheel.
`provider_load_probe` then opens a one-node session on each GPU provider and says which load
and, for those that do not, what ONNX Runtime printed.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_loaded: str | None = None  # what load_ort_libraries did, once a process


def load_ort_libraries(ort: Any = None) -> str:
    """Load the CUDA / cuDNN / TensorRT libraries of pip wheels into this process before the
    first GPU session; idempotent. Returns what was done, in words (kept in caps)."""
    global _loaded
    if _loaded is not None:
        return _loaded
    if ort is None:
        import onnxruntime as ort  # noqa: PLC0415 (heavy: onnxruntime)
    done: list[str] = []
    if not set(GPU_PROVIDERS) & set(ort.get_available_providers()):
        _loaded = "nothing to load: this onnxruntime has no GPU provider"
        return _loaded
    trt = _load_tensorrt_libs()
    if trt:
        done.append(trt)
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:  # onnxruntime < 1.21: torch, imported first, loads the CUDA wheels
        try:
            import torch  # noqa: F401, PLC0415 (heavy: torch)

            done.append("torch imported first (onnxruntime has no preload_dlls)")
        except ImportError:
            done.append("no preload_dlls and no torch: the system loader path decides")
    else:
        try:
            preload()
            done.append("onnxruntime.preload_dlls()")
        except Exception as e:  # noqa: BLE001 - the provider probe reports what then fails
            done.append(f"onnxruntime.preload_dlls() failed: {type(e).__name__}: {e}"[:300])
    _loaded = "; ".join(done)
    return _loaded


def _load_tensorrt_libs() -> str | None:
    """dlopen libnvinfer* from the tensorrt wheel's `tensorrt_libs` folder (global symbols, so
    that the TensorRT provider's own dlopen finds them), or None when that wheel is absent."""

    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    names = []
    for lib in sorted(folder.glob("libnvinfer*.so*")):
        try:
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            names.append(lib.name)
        except OSError:
            continue
    return f"TensorRT from {folder} ({', '.join(names) or 'nothing loaded'})"


def _one_node_model() -> bytes:
    from onnx import TensorProto, helper  # noqa: PLC0415 (heavy: onnx)

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def provider_load_probe(ort: Any = None) -> dict[str, Any]:
    """Open a one-node session on each GPU provider onnxruntime was built with: the providers
    whose session really has them (`ort_providers_loaded`, CPU always) and, for each that did
    not load, the text ONNX Runtime printed (`ort_provider_errors`)."""
    if ort is None:
        import onnxruntime as ort  # noqa: PLC0415 (heavy: onnxruntime)
    built = list(ort.get_available_providers())
    loaded = [p for p in built if p not in GPU_PROVIDERS]
    errors: dict[str, str] = {}
    model = _one_node_model()
    for provider in (p for p in GPU_PROVIDERS if p in built):
        so = ort.SessionOptions()
        so.log_severity_level = 2  # the warning that says why a provider did not load
        failure = ""
        with StderrCapture() as captured, warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            try:
                session = ort.InferenceSession(model, so, providers=[provider, "CPUExecutionProvider"])
                active = list(session.get_providers())
            except Exception as e:  # noqa: BLE001 - a provider that cannot open is data
                active, failure = [], f"{type(e).__name__}: {e}"
        if provider in active:
            loaded.append(provider)
        else:
            texts = [failure, *(str(w.message) for w in warned), _why(captured.text)]
            said = " | ".join(t for t in texts if t)
            errors[provider] = (said or "the session was created without it")[:500]
    return {"ort_providers_loaded": [p for p in built if p in loaded], "ort_provider_errors": errors}


def _why(text: str) -> str:
    """The lines of ONNX Runtime's log that say why (the last few, else all)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    useful = [ln for ln in lines if any(w in ln for w in ("rror", "ailed", "load", "cannot", "not found"))]
    return " | ".join((useful or lines)[-4:])


class StderrCapture:
    """File descriptor 2 into a temporary file while open (ONNX Runtime's C++ logger writes
    there, not to sys.stderr); `text` holds what was written once closed."""

    text = ""

    def __enter__(self) -> StderrCapture:
        self._fd, name = tempfile.mkstemp(prefix="autotune-ort-probe-")
        self._path = Path(name)
        self._saved = os.dup(2)
        os.dup2(self._fd, 2)
        return self

    def __exit__(self, *exc: object) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        os.close(self._fd)
        self.text = self._path.read_text(errors="replace")
        self._path.unlink(missing_ok=True)
